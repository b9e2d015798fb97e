//! The admin API used by `clicktrail dlq replay`: replay dead-letter entries through this
//! process's spool, and report delivery progress.
//!
//! Authentication: `serve` writes `<data_dir>/admin.json` (mode 0600) with its URL and a random
//! token at start. Whoever can read the data directory may replay (they can read the dead
//! letters anyway); nobody else can, so the routes can live on the public listener.

use std::io::Write;
use std::path::{Path, PathBuf};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::AppState;
use crate::dlq::replay::{replay_entry, ReplayError};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminFile {
    pub url: String,
    pub token: String,
}

pub fn admin_file_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.json")
}

/// Writes the admin file for a server reachable at `url`; returns the token.
pub fn write_admin_file(data_dir: &Path, url: String) -> std::io::Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let token =
        uuid::Uuid::new_v4().simple().to_string() + &uuid::Uuid::new_v4().simple().to_string();
    std::fs::create_dir_all(data_dir)?;
    let tmp = data_dir.join("admin.json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(
        &serde_json::to_vec(&AdminFile {
            url,
            token: token.clone(),
        })
        .map_err(std::io::Error::other)?,
    )?;
    f.sync_all()?;
    std::fs::rename(&tmp, admin_file_path(data_dir))?;
    Ok(token)
}

fn authorized(st: &AppState, headers: &HeaderMap) -> bool {
    let Some(expected) = st.inner.admin_token.as_deref() else {
        return false;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // No early exit on the first differing byte (the length is not secret: it is fixed).
    use subtle::ConstantTimeEq;
    bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": "admin token missing or wrong (see <data_dir>/admin.json)", "code": "unauthorized"})),
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct ReplayRequest {
    pub ids: Vec<u64>,
}

pub async fn replay(
    State(st): State<AppState>,
    headers: HeaderMap,
    Json(req): Json<ReplayRequest>,
) -> Response {
    if !authorized(&st, &headers) {
        return unauthorized();
    }
    let mut results = Vec::with_capacity(req.ids.len());
    let mut missing = Vec::new();
    for id in req.ids {
        match replay_entry(&st.inner.ingest, id, &st.inner.clock).await {
            Ok(o) => results.push(o),
            Err(ReplayError::NotFound(id)) => missing.push(id),
            Err(ReplayError::Spool(e)) => {
                // Nothing of this entry was removed; the CLI can rerun later.
                return super::ApiError::Spool(e)
                    .into_response_with(super::RetryAfter(st.inner.http.retry_after_secs));
            }
            Err(ReplayError::Io(e)) => {
                tracing::error!(error = %e, entry = id, "replay failed");
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(json!({"error": format!("replay of entry {id} failed: {e}"), "code": "replay_failed"})),
                )
                    .into_response();
            }
        }
    }
    Json(json!({"results": results, "missing": missing})).into_response()
}

pub async fn status(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if !authorized(&st, &headers) {
        return unauthorized();
    }
    let sink = st.inner.sink.borrow().clone();
    let spool = st.inner.ingest.spool().status();
    Json(json!({
        "committed": spool.committed,
        "delivered": sink.delivered,
        "last_insert_error": sink.last_error,
    }))
    .into_response()
}
