//! Dead letters: events ClickHouse refused for good, kept with the reason so nothing
//! acknowledged is ever silently dropped.
//!
//! This is the seam the sink reports permanent failures to. Today it is an append-only,
//! fsynced JSON-lines file (`<data_dir>/dlq/insert-failures.jsonl`), one line per refused row
//! set; the full store (CRC framing, quota, `clicktrail dlq list|show|replay`) is issue 4 and
//! replaces the body of [`DeadLetters`] without changing its callers.
//!
//! Invariant: [`DeadLetters::record_insert_failure`] returns only once the entry is on disk;
//! the sink advances its checkpoint past those rows only after that.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::event::Event;
use crate::metrics::{Metrics, StageReason};

#[derive(Clone)]
pub struct DeadLetters {
    dir: PathBuf,
    // One writer at a time keeps lines whole; held only for a blocking write, never across await.
    lock: Arc<Mutex<()>>,
    metrics: Metrics,
}

#[derive(Serialize)]
struct Entry<'a> {
    stage: &'static str,
    reason_class: &'static str,
    code: Option<u32>,
    reason: &'a str,
    attempts: u32,
    failed_at_ms: i64,
    events: &'a [Event],
}

impl DeadLetters {
    pub fn new(dir: PathBuf, metrics: Metrics) -> Self {
        Self {
            dir,
            lock: Arc::new(Mutex::new(())),
            metrics,
        }
    }

    /// Bounded label for metrics from a ClickHouse exception code.
    pub fn reason_class(code: Option<u32>) -> &'static str {
        match code {
            Some(16) => "no_such_column",
            Some(53) | Some(70) => "type_mismatch",
            Some(469) => "constraint",
            Some(6) | Some(26) | Some(27) | Some(117) => "invalid_value",
            _ => "other",
        }
    }

    pub fn record_insert_failure(
        &self,
        events: &[Event],
        code: Option<u32>,
        reason: &str,
        attempts: u32,
    ) -> std::io::Result<()> {
        let class = Self::reason_class(code);
        let mut line = serde_json::to_vec(&Entry {
            stage: "insert",
            reason_class: class,
            code,
            reason,
            attempts,
            failed_at_ms: crate::event::RequestContext::now_ms(),
            events,
        })
        .map_err(std::io::Error::other)?;
        line.push(b'\n');
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        std::fs::create_dir_all(&self.dir)?;
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("insert-failures.jsonl"))?;
        f.write_all(&line)?;
        f.sync_data()?;
        self.metrics
            .dlq_events
            .get_or_create(&StageReason {
                stage: "insert",
                reason: class,
            })
            .inc_by(events.len() as u64);
        Ok(())
    }
}

impl DeadLetters {
    /// A spool record that passed its CRC but does not decode (written by another build).
    pub fn record_undecodable(
        &self,
        lsn: u64,
        payload: &[u8],
        reason: &str,
    ) -> std::io::Result<()> {
        #[derive(Serialize)]
        struct Raw<'a> {
            stage: &'static str,
            lsn: u64,
            reason: &'a str,
            failed_at_ms: i64,
            payload: std::borrow::Cow<'a, str>,
        }
        let mut line = serde_json::to_vec(&Raw {
            stage: "decode",
            lsn,
            reason,
            failed_at_ms: crate::event::RequestContext::now_ms(),
            payload: String::from_utf8_lossy(payload),
        })
        .map_err(std::io::Error::other)?;
        line.push(b'\n');
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        std::fs::create_dir_all(&self.dir)?;
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("decode-failures.jsonl"))?;
        f.write_all(&line)?;
        f.sync_data()?;
        self.metrics
            .dlq_events
            .get_or_create(&StageReason {
                stage: "decode",
                reason: "other",
            })
            .inc();
        Ok(())
    }
}
