//! The collector's HTTP face: router, handlers, CORS, request ids, request metrics. What a
//! batch of events means (policy, validation, dead letters, the spool) is [`crate::ingest`]'s;
//! this module only reads bodies and headers and maps answers to statuses.
//!
//! The read-only reports under `/v1/query/*` are [`crate::query`]'s; they are routed here, as
//! is the live view `/v1/live` (`live.rs`, over [`crate::live`]).
//!
//! Invariants:
//! - `POST /v1/events` answers 200 only after every accepted event of the request is committed
//!   to the spool; the handler never talks to ClickHouse.
//! - Every answer, errors and 404/405 included, carries CORS headers for an allowed origin,
//!   so a browser SDK can read the reason; 503s and 429s carry `Retry-After`.
//! - A request over its address's rate, or one whose body would take the in-flight body bytes
//!   past `server.max_inflight_body_bytes`, is refused before its body is read.
//!
//! (Just over 500 lines: the router and its small routes; the larger parts already live in
//! `decode.rs`, `error.rs`, `admin.rs`, `server.rs`, `limits.rs` and `live.rs`.)

pub mod admin;
mod client;
mod decode;
mod error;
mod limits;
mod live;
pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::json;
use tokio::sync::watch;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use error::RetryAfter;
pub use error::{ApiError, ErrorBody};

use crate::clock::Clock;
use crate::config::{Config, HttpConfig};
use crate::ingest::{Answer, Ingest, Meta};
use crate::metrics::{Metrics, ReasonLabel, RouteLabel, RouteStatus, ScopeLabel};
use crate::sink::SinkStatus;

/// The tracker served at `/v1/snippet.js` (built from `snippet/src`, committed so the Rust
/// build needs no Node).
const SNIPPET: &str = include_str!("../../snippet/dist/clicktrail.min.js");
/// The heatmap overlay, loaded by the snippet in heatmap mode only (`snippet/src/overlay.js`).
const OVERLAY: &str = include_str!("../../snippet/dist/overlay.min.js");
/// The reports page (`ui/index.html`, one self-contained file).
const UI_PAGE: &str = include_str!("../../ui/index.html");
const DEMO_PAGE: &str = include_str!("../../snippet/demo.html");

/// Health of ClickHouse as seen by the periodic probe: `Ok` or the last error.
pub type ProbeStatus = Result<(), crate::clickhouse::PingError>;

/// Everything handlers share, built once per server.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    ingest: Ingest,
    http: HttpConfig,
    clock: Clock,
    metrics: Metrics,
    sink: watch::Receiver<SinkStatus>,
    probe: watch::Receiver<ProbeStatus>,
    snippet: Bytes,
    snippet_etag: String,
    admin_token: Option<String>,
    reports: crate::query::Reports,
    limits: limits::ClientLimits,
    inflight: limits::InflightBytes,
    trusted_proxies: Vec<ipnet::IpNet>,
}

impl AppState {
    /// `ingest` is the use case the events route calls; the rest is what the other routes
    /// report on.
    pub fn new(
        config: &Config,
        ingest: Ingest,
        clock: Clock,
        metrics: Metrics,
        status: (watch::Receiver<SinkStatus>, watch::Receiver<ProbeStatus>),
        admin_token: Option<String>,
    ) -> std::io::Result<Self> {
        let snippet = match &config.http.snippet_file {
            Some(p) => Bytes::from(std::fs::read(p).map_err(|e| {
                std::io::Error::new(e.kind(), format!("http.snippet_file {}: {e}", p.display()))
            })?),
            None => Bytes::from_static(SNIPPET.as_bytes()),
        };
        let snippet_etag = format!("\"{}\"", &blake3::hash(&snippet).to_hex()[..16]);
        let reports = crate::query::Reports::new(config, metrics.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                ingest,
                http: config.http.clone(),
                clock,
                metrics,
                sink: status.0,
                probe: status.1,
                snippet,
                snippet_etag,
                admin_token,
                reports,
                limits: limits::ClientLimits::new(&config.rate_limit),
                inflight: limits::InflightBytes::new(config.server.max_inflight_body_bytes),
                // Validated with the config; an unvalidated one trusts nobody.
                trusted_proxies: config.server.trusted_proxy_nets().unwrap_or_default(),
            }),
        })
    }

    /// The live view's hub (shutdown ends its streams).
    pub fn live(&self) -> &crate::live::Live {
        self.inner.ingest.live()
    }

    /// What the `/v1/query/*` handlers share.
    pub(crate) fn reports(&self) -> &crate::query::Reports {
        &self.inner.reports
    }

    /// Forgets rate-limit state of clients that are back to a full burst; call now and then
    /// (serve does, every minute) so that memory follows the active clients only.
    pub fn housekeeping(&self) {
        self.inner.limits.per_ip.housekeeping();
        self.inner.ingest.housekeeping(self.inner.clock.now_ms());
    }
}

/// Every route on one listener (`[admin] listen` empty).
pub fn router(state: AppState) -> Router {
    layered(public_routes().merge(admin_routes()), state)
}

/// The public routes, and the admin routes with `/metrics` for a listener of their own: the
/// public router answers 404 for those.
pub fn split_routers(state: AppState) -> (Router, Router) {
    (
        layered(public_routes(), state.clone()),
        layered(admin_routes(), state),
    )
}

fn public_routes() -> Router<AppState> {
    Router::new()
        .route("/v1/events", post(post_events))
        .route("/v1/snippet.js", get(get_snippet))
        .route("/v1/overlay.js", get(get_overlay))
        .route("/", get(demo_page))
        .route("/ui/", get(ui_page))
        .route(
            "/ui",
            get(|| async { axum::response::Redirect::permanent("/ui/") }),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/query/pages", get(crate::query::pages))
        .route("/v1/query/heatmap", get(crate::query::heatmap))
        .route("/v1/query/elements", get(crate::query::elements))
        .route("/v1/query/scroll", get(crate::query::scroll))
        .route("/v1/live", get(live::live))
}

fn admin_routes() -> Router<AppState> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/admin/replay", post(admin::replay))
        .route("/v1/admin/status", get(admin::status))
}

fn layered(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .fallback(|| async { ApiError::NotFound })
        .layer(cors_layer(state.inner.ingest.clone()))
        .layer(middleware::from_fn(refusals_readable_anywhere))
        .layer(middleware::from_fn_with_state(state.clone(), record_metrics))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request| {
                let id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
            }),
        )
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// Route label from a closed set, so clients cannot create metric series.
fn route_label(req: &Request) -> &'static str {
    match req.extensions().get::<MatchedPath>().map(|p| p.as_str()) {
        Some("/v1/events") => "/v1/events",
        Some("/v1/snippet.js") => "/v1/snippet.js",
        Some("/v1/overlay.js") => "/v1/overlay.js",
        Some("/") => "/",
        Some("/ui/") | Some("/ui") => "/ui/",
        Some("/healthz") => "/healthz",
        Some("/readyz") => "/readyz",
        Some("/metrics") => "/metrics",
        Some("/v1/query/pages") => "/v1/query/pages",
        Some("/v1/query/heatmap") => "/v1/query/heatmap",
        Some("/v1/query/elements") => "/v1/query/elements",
        Some("/v1/query/scroll") => "/v1/query/scroll",
        Some("/v1/live") => "/v1/live",
        _ => "other",
    }
}

async fn record_metrics(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = route_label(&req);
    let resp = next.run(req).await;
    let m = &st.inner.metrics;
    m.http_requests
        .get_or_create(&RouteStatus {
            route,
            status: resp.status().as_u16(),
        })
        .inc();
    m.http_duration
        .get_or_create(&RouteLabel { route })
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// CORS for every answer, errors and 404/405 included, for any origin that some configured
/// site accepts; preflights are answered by the layer. Per-site rules are the events
/// handler's, which can then explain a refusal in a body the browser may read.
fn cors_layer(ingest: Ingest) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin: &HeaderValue, _| {
            origin
                .to_str()
                .is_ok_and(|o| ingest.origin_allowed_anywhere(o))
        }))
        .allow_methods([Method::POST, Method::GET, Method::OPTIONS])
        .allow_headers([
            header::CONTENT_TYPE,
            header::CONTENT_ENCODING,
            header::AUTHORIZATION,
        ])
        .expose_headers([header::RETRY_AFTER, HeaderName::from_static("x-request-id")])
        .max_age(Duration::from_secs(86_400))
}

/// A refusal is readable by any origin: it carries no data, and a snippet installed on a page
/// that is not allowed can then drop its batch instead of retrying for minutes.
async fn refusals_readable_anywhere(req: Request, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut resp = next.run(req).await;
    if resp.status() == StatusCode::FORBIDDEN {
        let h = resp.headers_mut();
        if let (Some(o), false) = (origin, h.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
            h.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static("retry-after,x-request-id"),
            );
        }
    }
    resp
}

async fn post_events(State(st): State<AppState>, req: Request) -> Response {
    let retry = RetryAfter(st.inner.http.retry_after_secs);
    let timeout = st.inner.http.request_timeout;
    match tokio::time::timeout(timeout, receive(&st, req)).await {
        Ok(Ok(answer)) => Json(answer).into_response(),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, status = %e.status(), "request refused");
            e.into_response_with(retry)
        }
        Err(_) => ApiError::Timeout.into_response_with(retry),
    }
}

/// The HTTP part of taking a batch: the body and what the request says about its sender.
async fn receive(st: &AppState, req: Request) -> Result<Answer, ApiError> {
    let received_at_ms = st.inner.clock.now_ms();
    let (parts, body) = req.into_parts();
    let client_ip = client::client_ip(
        &parts.headers,
        parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0),
        &st.inner.trusted_proxies,
    );
    if let Some(ip) = client_ip {
        if let Err(wait) = st.inner.limits.per_ip.check(&limits::ip_key(ip)) {
            st.inner
                .metrics
                .http_rate_limited
                .get_or_create(&ScopeLabel { scope: "ip" })
                .inc();
            return Err(ApiError::RateLimited {
                scope: "client address",
                retry_after_secs: limits::retry_after_secs(wait),
            });
        }
    }
    // The body's bytes are reserved before it is read, and held until the answer.
    let max_body = st.inner.http.max_body_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(max_body, |n| n.min(max_body));
    let overloaded = || {
        st.inner.metrics.http_overloaded.inc();
        ApiError::Overloaded
    };
    let _wire = st
        .inner
        .inflight
        .try_take(declared)
        .ok_or_else(overloaded)?;
    let bytes = match decode::read_body(&parts.headers, body, &st.inner.http).await {
        Ok(b) => b,
        Err(e) => {
            if matches!(e, ApiError::EmptyBody) {
                st.inner
                    .metrics
                    .events_rejected
                    .get_or_create(&ReasonLabel {
                        reason: "malformed",
                    })
                    .inc();
            }
            return Err(e);
        }
    };
    let _inflated = match bytes.len().checked_sub(declared) {
        Some(more) if more > 0 => Some(st.inner.inflight.try_take(more).ok_or_else(overloaded)?),
        _ => None,
    };
    let origin = parts
        .headers
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok());
    let meta = Meta {
        received_at_ms,
        user_agent: user_agent(&parts.headers).to_string(),
        client_ip,
        same_origin: origin.is_some_and(|o| same_origin(o, &parts.headers)),
        origin: origin.map(str::to_string),
        do_not_track: client::do_not_track(&parts.headers),
    };
    Ok(st.inner.ingest.accept(&bytes, meta).await?)
}

/// A page the collector served itself (the demo page) posts from the collector's own origin,
/// whatever address it listens on; that is not a cross-site request to police.
fn same_origin(origin: &str, headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    origin
        .split_once("://")
        .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host))
}

fn user_agent(headers: &HeaderMap) -> &str {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn get_snippet(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let etag = &st.inner.snippet_etag;
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            )],
            st.inner.snippet.clone(),
        )
            .into_response()
    };
    let h = resp.headers_mut();
    // The URL is not versioned, so a day (then revalidation by ETag) bounds how long an old
    // snippet can stay in browsers after an upgrade.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=86400, stale-while-revalidate=604800"),
    );
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    resp
}

/// Only analysts load it, rarely: a short cache, no revalidation machinery.
async fn get_overlay() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        OVERLAY,
    )
        .into_response()
}

/// The page holds no data: everything it shows comes from `/v1/query/*` with the token the
/// analyst types in. It must not be framed by another site (the token is in its memory).
async fn ui_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        UI_PAGE,
    )
        .into_response()
}

async fn demo_page() -> Html<&'static str> {
    Html(DEMO_PAGE)
}

/// Alive = the process can still do its job without a restart. A spool writer in its failed
/// state cannot (see `spool::writer`): 503 with the reason, so a supervisor restarts it.
/// Transient faults (a full disk, ClickHouse down) are readiness problems, not health ones.
async fn healthz(State(st): State<AppState>) -> Response {
    match st.inner.ingest.spool().status().failed {
        None => Json(json!({"status": "ok"})).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "failed", "reason": format!("spool: {reason}")})),
        )
            .into_response(),
    }
}

/// Ready = able to take events *and* deliver them: ClickHouse answers, the sink's last insert
/// worked, the spool has room. The body says which check failed and whether the collector is
/// still accepting (it is, into the spool, while only ClickHouse is down).
async fn readyz(State(st): State<AppState>) -> Response {
    let probe = st.inner.probe.borrow().clone();
    let sink = st.inner.sink.borrow().clone();
    let spool = st.inner.ingest.spool().status();
    let mut problems = Vec::new();
    if let Err(e) = &probe {
        problems.push(format!("clickhouse: {e}"));
    }
    if sink.held {
        let why = match sink.held_reason {
            Some("schema") => "the table refuses the rows' schema",
            Some("dead_letters") => "refused rows cannot be stored as dead letters",
            _ => "destination missing or forbidden",
        };
        problems.push(format!("sink: {why}; batches are held"));
    } else if let Some(e) = &sink.last_error {
        problems.push(format!("sink: last insert failed: {e}"));
    }
    if let Some(f) = &spool.failed {
        problems.push(format!("spool: failed: {f}"));
    } else if let Some(d) = &spool.degraded {
        problems.push(format!(
            "spool: cannot write ({d}); new events are refused with 503 and retried"
        ));
    } else if spool.full {
        problems.push("spool: full; new events are refused with 503".to_string());
    }
    let accepting = spool.failed.is_none() && spool.degraded.is_none() && !spool.full;
    let body = json!({
        "status": if problems.is_empty() { "ready" } else { "not_ready" },
        "accepting_events": accepting,
        "problems": problems,
        "spool": {"bytes": spool.bytes, "quota": spool.quota},
        "clickhouse": if probe.is_ok() { "ok" } else { "unreachable" },
    });
    let status = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(st): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.inner.metrics.encode(),
    )
        .into_response()
}
