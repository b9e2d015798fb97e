//! The admin API used by `clicktrail dlq replay`: replay dead-letter entries through this
//! process's spool, and report delivery progress.
//!
//! Authentication: `serve` writes `<data_dir>/admin.json` (mode 0600) with its URL and a random
//! token at start. Whoever can read the data directory may replay (they can read the dead
//! letters anyway); nobody else can, so the routes can live on the public listener. With
//! `[admin] listen` they (and `/metrics`) are served only there, and the file names it.

use std::io::Write;
use std::path::{Path, PathBuf};

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState};
use crate::dlq::replay::{replay_entry, ReplayError, ReplayOutcome};
use crate::spool::Lsn;

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

/// `POST /v1/admin/replay`: replay these dead-letter entries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplayRequest {
    pub ids: Vec<u64>,
}

/// The answer to a replay: one outcome per entry found, and the ids that were not.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplayAnswer {
    pub results: Vec<ReplayOutcome>,
    pub missing: Vec<u64>,
}

/// `GET /v1/admin/status`: how far the spool is committed and ClickHouse has confirmed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusAnswer {
    pub committed: Lsn,
    pub delivered: Lsn,
    pub last_insert_error: Option<String>,
}

pub async fn replay(
    State(st): State<AppState>,
    headers: HeaderMap,
    Json(req): Json<ReplayRequest>,
) -> Result<Json<ReplayAnswer>, ApiError> {
    if !authorized(&st, &headers) {
        return Err(ApiError::AdminUnauthorized);
    }
    let mut results = Vec::with_capacity(req.ids.len());
    let mut missing = Vec::new();
    for id in req.ids {
        match replay_entry(&st.inner.ingest, id, &st.inner.clock).await {
            Ok(o) => results.push(o),
            Err(ReplayError::NotFound(id)) => missing.push(id),
            // Nothing of this entry was removed; the CLI can rerun later.
            Err(ReplayError::Spool(e)) => return Err(ApiError::Spool(e)),
            Err(ReplayError::Io(e)) => {
                tracing::error!(error = %e, entry = id, "replay failed");
                return Err(ApiError::Internal("the replay"));
            }
        }
    }
    Ok(Json(ReplayAnswer { results, missing }))
}

pub async fn status(
    State(st): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<StatusAnswer>, ApiError> {
    if !authorized(&st, &headers) {
        return Err(ApiError::AdminUnauthorized);
    }
    let sink = st.inner.sink.borrow().clone();
    let spool = st.inner.ingest.spool().status();
    Ok(Json(StatusAnswer {
        committed: spool.committed,
        delivered: sink.delivered,
        last_insert_error: sink.last_error,
    }))
}
