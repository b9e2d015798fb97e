//! Dead letters: events that failed validation, rows ClickHouse refused for good, and bodies
//! that could not be parsed at all, each kept with the reason so that nothing is silently
//! dropped and an operator can inspect and replay them once the cause is fixed.
//!
//! Layout: `<data_dir>/dlq/entries/<id, 20 digits>.entry`, one file per entry, each a single
//! CRC32C-framed record (the spool's framing, see `spool::record`) holding the entry as JSON.
//! One file per entry lets `clicktrail dlq replay` delete delivered entries while `serve`
//! keeps appending, with no lock between the two processes.
//!
//! Invariants:
//! - An entry is durable (written to a temp name, fsynced, renamed, directory fsynced) before
//!   [`DeadLetters::put`] returns; the sink advances its checkpoint past refused rows only then.
//! - Only `serve` creates entries (ids increase); the CLI only reads and deletes them.
//! - The store has a quota (`dlq.max_bytes`): when a new entry does not fit, the oldest entries
//!   are evicted and counted in `clicktrail_dlq_evictions_total`. That is the one place where
//!   clicktrail drops data, so it is alerted on.

pub mod replay;

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::event::Event;
use crate::metrics::{Metrics, StageReason};
use crate::spool::record;

/// Where in the pipeline an entry failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// The request body could not be parsed at all.
    Parse,
    /// Events the collector refused (their per-event reasons are in `errors`).
    Validation,
    /// Rows ClickHouse refused with a permanent error.
    Insert,
    /// A spool record that passed its CRC but does not decode (written by another build).
    Decode,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Parse => "parse",
            Stage::Validation => "validation",
            Stage::Insert => "insert",
            Stage::Decode => "decode",
        }
    }
}

/// The request context a validation entry needs to be re-validated as it was received.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Origin {
    pub site: String,
    pub received_at_ms: i64,
    pub user_agent: String,
    /// As stored: anonymised or empty, never the raw address.
    pub ip: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub id: u64,
    pub stage: Stage,
    /// Bounded class for metrics and filters (`missing_field`, `no_such_column`, ...).
    pub reason_class: String,
    /// Human-readable reason; for inserts, ClickHouse's exception message.
    pub reason: String,
    /// ClickHouse exception code, for insert failures.
    pub code: Option<u32>,
    pub first_failed_ms: i64,
    pub last_failed_ms: i64,
    pub attempts: u32,
    pub origin: Origin,
    /// Validation: the events as received, with `errors[i]` the reason for `events[i]`.
    #[serde(default)]
    pub events: Vec<Box<RawValue>>,
    #[serde(default)]
    pub errors: Vec<String>,
    /// Insert: the validated rows ClickHouse refused.
    #[serde(default)]
    pub rows: Vec<Event>,
    /// Parse / decode: the body or record as received, capped.
    #[serde(default)]
    pub raw: Option<String>,
}

impl Entry {
    pub fn event_count(&self) -> usize {
        self.events.len() + self.rows.len() + usize::from(self.raw.is_some())
    }
}

/// A new entry before it has an id.
pub struct NewEntry {
    pub stage: Stage,
    pub reason_class: &'static str,
    pub reason: String,
    pub code: Option<u32>,
    pub first_failed_ms: i64,
    pub attempts: u32,
    pub origin: Origin,
    pub events: Vec<Box<RawValue>>,
    pub errors: Vec<String>,
    pub rows: Vec<Event>,
    pub raw: Option<String>,
}

impl NewEntry {
    /// An entry for input refused once, now, with nothing attached yet.
    pub fn refused(
        stage: Stage,
        reason_class: &'static str,
        reason: String,
        origin: Origin,
    ) -> Self {
        Self {
            stage,
            reason_class,
            reason,
            code: None,
            first_failed_ms: origin.received_at_ms,
            attempts: 1,
            origin,
            events: Vec::new(),
            errors: Vec::new(),
            rows: Vec::new(),
            raw: None,
        }
    }
}

/// Raw bodies kept for diagnosis are cut here: enough to see what a broken client sends.
pub const MAX_RAW_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct DeadLetters {
    dir: PathBuf,
    max_bytes: u64,
    metrics: Metrics,
    clock: crate::clock::Clock,
    // The id counter and the quota accounting; held only for blocking file work, never across
    // an await.
    state: Arc<Mutex<StoreState>>,
}

struct StoreState {
    next_id: u64,
    /// (id, bytes), ascending.
    entries: Vec<(u64, u64)>,
}

fn entries_dir(root: &Path) -> PathBuf {
    root.join("entries")
}

fn entry_path(root: &Path, id: u64) -> PathBuf {
    entries_dir(root).join(format!("{id:020}.entry"))
}

/// Entry ids and sizes present on disk, ascending.
pub fn scan(root: &Path) -> io::Result<Vec<(u64, u64)>> {
    let dir = entries_dir(root);
    let mut out = Vec::new();
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in rd {
        let e = e?;
        let name = e.file_name();
        if let Some(id) = name
            .to_string_lossy()
            .strip_suffix(".entry")
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push((id, e.metadata()?.len()));
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Reads one entry, checking its CRC.
pub fn read(root: &Path, id: u64) -> io::Result<Entry> {
    let bytes = fs::read(entry_path(root, id))?;
    let (_, payload) = record::decode(&bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("dead-letter entry {id} is corrupt ({e:?})"),
        )
    })?;
    serde_json::from_slice(payload).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("dead-letter entry {id}: {e}"),
        )
    })
}

/// Deletes an entry (after a successful replay). Missing is fine: already removed.
pub fn remove(root: &Path, id: u64) -> io::Result<()> {
    match fs::remove_file(entry_path(root, id)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Replaces an entry in place (replay keeps only what still fails): temp file, fsync, rename.
pub fn rewrite(root: &Path, entry: &Entry) -> io::Result<()> {
    let payload = serde_json::to_vec(entry).map_err(io::Error::other)?;
    let mut framed = Vec::with_capacity(payload.len() + 16);
    record::encode(&mut framed, entry.last_failed_ms as u64, &payload);
    let tmp = entries_dir(root).join(format!("{:020}.tmp", entry.id));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(&framed)?;
    f.sync_all()?;
    fs::rename(&tmp, entry_path(root, entry.id))?;
    crate::spool::sync_dir(&entries_dir(root))
}

impl DeadLetters {
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn clock(&self) -> &crate::clock::Clock {
        &self.clock
    }

    /// The clock that stamps entries (default: the system's).
    pub fn with_clock(mut self, clock: crate::clock::Clock) -> Self {
        self.clock = clock;
        self
    }

    pub fn open(dir: PathBuf, max_bytes: u64, metrics: Metrics) -> io::Result<Self> {
        fs::create_dir_all(entries_dir(&dir))?;
        // Leftovers of a crash between write and rename were never acknowledged as stored.
        for e in fs::read_dir(entries_dir(&dir))? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "tmp") {
                let _ = fs::remove_file(p);
            }
        }
        let entries = scan(&dir)?;
        let next_id = entries.last().map(|e| e.0 + 1).unwrap_or(1);
        metrics.dlq_quota_bytes.set(max_bytes as i64);
        let store = Self {
            dir,
            max_bytes,
            metrics,
            clock: crate::clock::Clock::system(),
            state: Arc::new(Mutex::new(StoreState { next_id, entries })),
        };
        store.publish(&store.lock());
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StoreState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, st: &StoreState) {
        self.metrics
            .dlq_bytes
            .set(st.entries.iter().map(|e| e.1).sum::<u64>() as i64);
    }

    /// Stores an entry durably; returns its id. Blocking: call from a blocking context.
    pub fn put(&self, new: NewEntry) -> io::Result<u64> {
        self.put_inner(new, true)
    }

    /// [`DeadLetters::put`] for a caller that can keep the data itself (the sink, whose rows
    /// stay in the spool): over the quota it refuses (`StorageFull`) instead of evicting.
    pub fn put_without_eviction(&self, new: NewEntry) -> io::Result<u64> {
        self.put_inner(new, false)
    }

    fn put_inner(&self, new: NewEntry, evict: bool) -> io::Result<u64> {
        let now = self.clock.now_ms();
        let count = new.events.len() + new.rows.len() + usize::from(new.raw.is_some());
        let mut st = self.lock();
        let id = st.next_id;
        let entry = Entry {
            id,
            stage: new.stage,
            reason_class: new.reason_class.to_string(),
            reason: new.reason,
            code: new.code,
            first_failed_ms: new.first_failed_ms,
            last_failed_ms: now,
            attempts: new.attempts,
            origin: new.origin,
            events: new.events,
            errors: new.errors,
            rows: new.rows,
            raw: new.raw,
        };
        let payload = serde_json::to_vec(&entry).map_err(io::Error::other)?;
        let mut framed = Vec::with_capacity(payload.len() + 16);
        record::encode(&mut framed, now as u64, &payload);
        let size = framed.len() as u64;
        let mut used: u64 = st.entries.iter().map(|e| e.1).sum();
        if used + size > self.max_bytes {
            // Entries a replay (another process) deleted no longer count: look at the disk
            // before evicting anything, and only then (a stat per entry is not per-put work).
            st.entries
                .retain(|(id, _)| entry_path(&self.dir, *id).exists());
            used = st.entries.iter().map(|e| e.1).sum();
        }
        if !evict && used + size > self.max_bytes {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "dead-letter store over its quota (dlq.max_bytes = {})",
                    self.max_bytes
                ),
            ));
        }
        while used + size > self.max_bytes && !st.entries.is_empty() {
            let (old, bytes) = st.entries.remove(0);
            remove(&self.dir, old)?;
            used -= bytes;
            self.metrics.dlq_evictions.inc();
            tracing::error!(
                entry = old,
                "dead-letter store over its quota; evicted the oldest entry"
            );
        }
        let tmp = entries_dir(&self.dir).join(format!("{id:020}.tmp"));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&framed)?;
        f.sync_all()?;
        fs::rename(&tmp, entry_path(&self.dir, id))?;
        crate::spool::sync_dir(&entries_dir(&self.dir))?;
        st.next_id += 1;
        st.entries.push((id, size));
        self.publish(&st);
        self.metrics
            .dlq_events
            .get_or_create(&StageReason {
                stage: new.stage.as_str(),
                reason: new.reason_class,
            })
            .inc_by(count as u64);
        Ok(id)
    }

    /// Bounded label for a ClickHouse exception code.
    pub fn reason_class_for_code(code: Option<u32>) -> &'static str {
        crate::clickhouse::codes::label(code)
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn cap(s: &str, max: usize) -> String {
    crate::event::truncate(s, max).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(reason: &str, raw_len: usize) -> NewEntry {
        NewEntry {
            stage: Stage::Parse,
            reason_class: "malformed",
            reason: reason.into(),
            code: None,
            first_failed_ms: 1,
            attempts: 1,
            origin: Origin::default(),
            events: vec![],
            errors: vec![],
            rows: vec![],
            raw: Some("x".repeat(raw_len)),
        }
    }

    #[test]
    fn entries_round_trip_with_crc_and_survive_reopen() {
        let d = tempfile::tempdir().unwrap();
        let m = Metrics::new();
        let s = DeadLetters::open(d.path().to_path_buf(), 1 << 20, m.clone()).unwrap();
        let a = s.put(entry("first", 10)).unwrap();
        let b = s.put(entry("second", 10)).unwrap();
        assert_eq!((a, b), (1, 2));
        assert_eq!(read(d.path(), b).unwrap().reason, "second");
        let s2 = DeadLetters::open(d.path().to_path_buf(), 1 << 20, m).unwrap();
        assert_eq!(s2.put(entry("third", 1)).unwrap(), 3, "ids keep increasing");
    }

    #[test]
    fn a_flipped_byte_is_reported_not_misread() {
        let d = tempfile::tempdir().unwrap();
        let s = DeadLetters::open(d.path().to_path_buf(), 1 << 20, Metrics::new()).unwrap();
        let id = s.put(entry("r", 100)).unwrap();
        let p = entry_path(d.path(), id);
        let mut bytes = fs::read(&p).unwrap();
        let n = bytes.len();
        bytes[n - 5] ^= 1;
        fs::write(&p, bytes).unwrap();
        let err = read(d.path(), id).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }

    #[test]
    fn quota_evicts_oldest_and_counts() {
        let d = tempfile::tempdir().unwrap();
        let m = Metrics::new();
        let s = DeadLetters::open(d.path().to_path_buf(), 3000, m.clone()).unwrap();
        for i in 0..5 {
            s.put(entry(&format!("e{i}"), 900)).unwrap();
        }
        let left: Vec<u64> = scan(d.path()).unwrap().iter().map(|e| e.0).collect();
        assert_eq!(left, vec![4, 5], "only the newest fit");
        assert_eq!(m.dlq_evictions.get(), 3);
        let total: u64 = scan(d.path()).unwrap().iter().map(|e| e.1).sum();
        assert!(total <= 3000);
    }

    #[test]
    fn entries_removed_by_replay_free_quota() {
        let d = tempfile::tempdir().unwrap();
        let m = Metrics::new();
        let s = DeadLetters::open(d.path().to_path_buf(), 2500, m.clone()).unwrap();
        let a = s.put(entry("a", 900)).unwrap();
        s.put(entry("b", 900)).unwrap();
        remove(d.path(), a).unwrap();
        s.put(entry("c", 900)).unwrap();
        assert_eq!(m.dlq_evictions.get(), 0, "the replayed entry made room");
    }
}
