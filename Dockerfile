# The collector image. Build: docker build -t clicktrail .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked && strip target/release/clicktrail

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* && useradd --system --home /var/lib/clicktrail clicktrail \
    && mkdir -p /var/lib/clicktrail && chown clicktrail /var/lib/clicktrail
COPY --from=build /src/target/release/clicktrail /usr/local/bin/clicktrail
COPY config/clicktrail.toml /etc/clicktrail/clicktrail.toml
USER clicktrail
ENV CLICKTRAIL_CONFIG=/etc/clicktrail/clicktrail.toml \
    CLICKTRAIL_DATA_DIR=/var/lib/clicktrail \
    CLICKTRAIL_LISTEN=0.0.0.0:8080
VOLUME /var/lib/clicktrail
EXPOSE 8080
HEALTHCHECK CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
CMD ["sh", "-c", "clicktrail migrate && exec clicktrail serve"]
