# The collector image. Build: docker build -t clicktrail .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked && strip target/release/clicktrail

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 clicktrail \
    && useradd --system --uid 10001 --gid 10001 --home /var/lib/clicktrail clicktrail \
    && mkdir -p /var/lib/clicktrail && chown clicktrail:clicktrail /var/lib/clicktrail
COPY --from=build /src/target/release/clicktrail /usr/local/bin/clicktrail
COPY config/clicktrail.toml /etc/clicktrail/clicktrail.toml
# Numeric, so Kubernetes can verify runAsNonRoot (deploy/k8s runs as 10001).
USER 10001:10001
ENV CLICKTRAIL_CONFIG=/etc/clicktrail/clicktrail.toml \
    CLICKTRAIL_DATA_DIR=/var/lib/clicktrail \
    CLICKTRAIL_LISTEN=0.0.0.0:8080 \
    CLICKTRAIL_ADMIN_LISTEN=0.0.0.0:9091
VOLUME /var/lib/clicktrail
# 9091: /metrics and the admin routes, for the container network only (do not publish it).
EXPOSE 8080 9091
HEALTHCHECK CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
CMD ["sh", "-c", "clicktrail migrate && exec clicktrail serve"]
