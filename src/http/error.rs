//! Every error an HTTP client can see, mapped to a status and a JSON reason in one place.
//! Internal details (I/O errors, paths) are logged, never sent.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::ingest::IngestError;
use crate::spool::SpoolError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("empty body: send {{\"site\": KEY, \"events\": [...]}}")]
    EmptyBody,
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("field {0}: required in the batch envelope {{\"site\": KEY, \"events\": [...]}}")]
    MissingEnvelopeField(&'static str),
    #[error("invalid gzip body: {0}")]
    InvalidGzip(String),
    #[error("body larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("body larger than {limit} bytes once decompressed")]
    DecompressedTooLarge { limit: usize },
    #[error("too many events: {count} in one batch, at most {limit}")]
    TooManyEvents { count: usize, limit: usize },
    #[error("unsupported Content-Type `{0}`: use application/json or text/plain")]
    UnsupportedMediaType(String),
    #[error("unsupported Content-Encoding `{0}`: use gzip or none")]
    UnsupportedEncoding(String),
    #[error("unknown site key `{0}`")]
    UnknownSite(String),
    #[error("origin `{origin}` is not allowed to send events for site `{site}`")]
    OriginNotAllowed { origin: String, site: String },
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Spool(#[from] SpoolError),
    #[error("request timed out waiting for the spool")]
    Timeout,
    #[error("could not read the request body")]
    BodyRead,
    #[error("admin token missing or wrong (see <data_dir>/admin.json)")]
    AdminUnauthorized,
    /// An internal failure; the detail is logged, the client sees only the operation.
    #[error("{0} failed; see the collector's log")]
    Internal(&'static str),
    #[error("missing bearer token: send Authorization: Bearer TOKEN (a read token of the site)")]
    MissingToken,
    #[error("invalid bearer token")]
    InvalidToken,
    #[error("this token may not read site `{0}`")]
    TokenNotForSite(String),
    #[error("parameter `{param}`: {problem}")]
    BadParameter {
        param: &'static str,
        problem: String,
    },
    #[error("the report did not finish within {0:?}; narrow the range or the page")]
    QueryTimeout(std::time::Duration),
    /// The cause (a ClickHouse error) is logged where it happens, not sent.
    #[error("reports are unavailable right now")]
    QueryUnavailable,
    #[error("rate limit of the {scope} reached: retry in {retry_after_secs} s")]
    RateLimited {
        scope: &'static str,
        retry_after_secs: u32,
    },
    #[error("the collector is busy with other requests' bodies; retry later")]
    Overloaded,
    #[error("live view: {0}")]
    LiveUnavailable(#[from] crate::live::SubscribeError),
}

/// The body of every error answer: what the collector refused and a stable code. The CLI
/// decodes admin errors with it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub code: String,
}

/// Seconds for `Retry-After`; filled in by the handler from config.
#[derive(Debug, Clone, Copy)]
pub struct RetryAfter(pub u32);

impl ApiError {
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            EmptyBody
            | MalformedJson(_)
            | MissingEnvelopeField(_)
            | InvalidGzip(_)
            | BodyRead
            | BadParameter { .. } => StatusCode::BAD_REQUEST,
            MissingToken | InvalidToken => StatusCode::UNAUTHORIZED,
            BodyTooLarge { .. } | DecompressedTooLarge { .. } | TooManyEvents { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            UnsupportedMediaType(_) | UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            UnknownSite(_) | OriginNotAllowed { .. } | TokenNotForSite(_) => StatusCode::FORBIDDEN,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            NotFound => StatusCode::NOT_FOUND,
            AdminUnauthorized => StatusCode::UNAUTHORIZED,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Spool(_) | Timeout | QueryUnavailable | Overloaded | LiveUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            QueryTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// A stable machine-readable code, for SDKs and dashboards.
    pub fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            EmptyBody => "empty_body",
            MalformedJson(_) => "malformed_json",
            MissingEnvelopeField(_) => "missing_field",
            InvalidGzip(_) => "invalid_gzip",
            BodyTooLarge { .. } | DecompressedTooLarge { .. } => "body_too_large",
            TooManyEvents { .. } => "too_many_events",
            UnsupportedMediaType(_) => "unsupported_media_type",
            UnsupportedEncoding(_) => "unsupported_encoding",
            UnknownSite(_) => "unknown_site",
            OriginNotAllowed { .. } => "origin_not_allowed",
            MethodNotAllowed => "method_not_allowed",
            NotFound => "not_found",
            Spool(SpoolError::Full) => "spool_full",
            Spool(SpoolError::Closed) => "shutting_down",
            Spool(_) => "unavailable",
            Timeout => "timeout",
            BodyRead => "body_read",
            AdminUnauthorized => "unauthorized",
            Internal(_) => "internal",
            MissingToken => "missing_token",
            InvalidToken => "invalid_token",
            TokenNotForSite(_) => "token_not_for_site",
            BadParameter { .. } => "bad_parameter",
            QueryTimeout(_) => "query_timeout",
            QueryUnavailable => "reports_unavailable",
            RateLimited { .. } => "rate_limited",
            Overloaded => "overloaded",
            LiveUnavailable(crate::live::SubscribeError::TooMany(_)) => "too_many_subscribers",
            LiveUnavailable(crate::live::SubscribeError::Closed) => "shutting_down",
        }
    }

    pub fn into_response_with(self, retry_after: RetryAfter) -> Response {
        let status = self.status();
        let message = match &self {
            // The cause of a spool I/O failure is for the operator's log, not for the client.
            ApiError::Spool(SpoolError::Io(detail))
            | ApiError::Spool(SpoolError::Failed(detail)) => {
                tracing::error!(%detail, "spool unavailable");
                "the collector cannot store events right now".to_string()
            }
            other => other.to_string(),
        };
        let body = ErrorBody {
            error: message,
            code: self.code().to_string(),
        };
        let mut resp = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after.0));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let ApiError::RateLimited {
            retry_after_secs, ..
        } = self
        {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        resp
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::MalformedJson(m) => ApiError::MalformedJson(m),
            IngestError::MissingEnvelopeField(f) => ApiError::MissingEnvelopeField(f),
            IngestError::UnknownSite(s) => ApiError::UnknownSite(s),
            IngestError::OriginNotAllowed { origin, site } => {
                ApiError::OriginNotAllowed { origin, site }
            }
            IngestError::TooManyEvents { count, limit } => ApiError::TooManyEvents { count, limit },
            IngestError::Spool(e) => ApiError::Spool(e),
            IngestError::SiteRateLimited { retry_after } => ApiError::RateLimited {
                scope: "site",
                retry_after_secs: crate::ratelimit::retry_after_secs(retry_after),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.into_response_with(RetryAfter(5))
    }
}
