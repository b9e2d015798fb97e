//! Replay, collector side: re-validates a dead-letter entry and re-enqueues what now passes
//! through the normal path (the spool, then the sink, with its deduplication). Runs inside
//! `serve` (reached through the admin API) because the spool has one writer.
//!
//! Invariants: an entry is removed only after everything in it is committed to the spool;
//! an entry that still partly fails is rewritten with only the failing events. Replaying the
//! same entry twice (an interrupted replay rerun) re-enqueues identical rows: same event ids,
//! same receive time, so ClickHouse deduplicates them.

use std::io;

use serde::{Deserialize, Serialize};

use super::{read, Entry, Stage};
use crate::clock::Clock;
use crate::event::{Event, RawBatch, ReplayContext, RequestContext};
use crate::ingest::{Ingest, Source};
use crate::spool::{Lsn, SpoolError};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplayOutcome {
    pub id: u64,
    pub stage: Stage,
    pub replayed: usize,
    pub still_failing: usize,
    /// Why what still fails fails (distinct reasons).
    pub errors: Vec<String>,
    pub removed: bool,
    /// The spool record holding the replayed events, to wait for its delivery.
    pub lsn: Option<Lsn>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("dead-letter entry {0} does not exist (already replayed?)")]
    NotFound(u64),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// Replays one entry through `ingest` (validation and the spool, as a client's batch).
pub async fn replay_entry(
    ingest: &Ingest,
    id: u64,
    clock: &Clock,
) -> Result<ReplayOutcome, ReplayError> {
    let store = ingest.dead_letters();
    let dir = store.dir().to_path_buf();
    let mut entry = match tokio::task::spawn_blocking(move || read(&dir, id))
        .await
        .map_err(io::Error::other)?
    {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ReplayError::NotFound(id)),
        Err(e) => return Err(e.into()),
    };
    let mut out = ReplayOutcome {
        id,
        stage: entry.stage,
        replayed: 0,
        still_failing: 0,
        errors: Vec::new(),
        removed: false,
        lsn: None,
    };
    let (accepted, still): (Vec<Event>, Option<Entry>) = match entry.stage {
        Stage::Insert => (std::mem::take(&mut entry.rows), None),
        Stage::Decode => match entry.raw.as_deref().map(serde_json::from_str::<Vec<Event>>) {
            Some(Ok(rows)) => (rows, None),
            Some(Err(e)) => {
                out.errors.push(format!("still does not decode: {e}"));
                (Vec::new(), Some(entry.clone()))
            }
            None => (Vec::new(), None),
        },
        Stage::Validation | Stage::Parse => {
            let ctx = RequestContext {
                site: entry.origin.site.clone(),
                received_at_ms: entry.origin.received_at_ms,
                user_agent: entry.origin.user_agent.clone(),
                client_ip: None,
                keep_query_params: ingest.site_query_params(&entry.origin.site),
                replay: Some(ReplayContext {
                    stored_ip: entry.origin.ip.clone(),
                    id_seed: format!("dlq{id}"),
                    agent: entry.origin.agent.clone(),
                }),
            };
            let parsed_events: Vec<Box<serde_json::value::RawValue>> =
                if entry.stage == Stage::Parse {
                    match entry
                        .raw
                        .as_deref()
                        .map(serde_json::from_str::<RawBatch<'_>>)
                    {
                        Some(Ok(b)) => b
                            .events
                            .unwrap_or_default()
                            .into_iter()
                            .map(|r| r.to_owned())
                            .collect(),
                        Some(Err(e)) => {
                            out.errors
                                .push(format!("body is still not valid JSON: {e}"));
                            Vec::new()
                        }
                        None => Vec::new(),
                    }
                } else {
                    std::mem::take(&mut entry.events)
                };
            if entry.stage == Stage::Parse && parsed_events.is_empty() {
                (Vec::new(), Some(entry.clone()))
            } else {
                let refs: Vec<&serde_json::value::RawValue> =
                    parsed_events.iter().map(|b| b.as_ref()).collect();
                let v = ingest.validate(&ctx, &refs);
                let still = match v.failure() {
                    None => None,
                    Some((reason, class)) => {
                        let mut e = entry.clone();
                        e.stage = Stage::Validation;
                        e.raw = None;
                        e.events = v
                            .rejected
                            .iter()
                            .map(|(i, _)| parsed_events[*i].clone())
                            .collect();
                        e.errors = v.rejected.iter().map(|(_, r)| r.to_string()).collect();
                        e.reason_class = class.to_string();
                        e.reason = reason;
                        for r in &e.errors {
                            if !out.errors.contains(r) {
                                out.errors.push(r.clone());
                            }
                        }
                        Some(e)
                    }
                };
                (v.accepted, still)
            }
        }
    };
    out.replayed = accepted.len();
    out.lsn = ingest.commit(&accepted, Source::Replay).await?;
    match still {
        None => {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.remove(id))
                .await
                .map_err(io::Error::other)??;
            out.removed = true;
        }
        Some(mut e) => {
            out.still_failing = e.event_count();
            e.attempts += 1;
            e.last_failed_ms = clock.now_ms();
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.rewrite(&e))
                .await
                .map_err(io::Error::other)??;
        }
    }
    Ok(out)
}
