//! The durable spool: an append-only log of accepted events between the HTTP handlers and the
//! ClickHouse sink.
//!
//! Invariants:
//! - **An event is acknowledged only after its record is committed**: written, and with
//!   `fsync = batch | always` fsynced (`fdatasync`). [`SpoolHandle::append`] returns then.
//! - Records are numbered (LSN) consecutively from 0 across segments; each record holds the
//!   accepted events of one request: their count (u32), a format byte, then the rows in the
//!   RowBinary the sink sends ClickHouse ([`encode_events`], [`decode_events`]). Records of
//!   older versions (a JSON array) are still read.
//! - The writer thread ([`writer`]) is the only code that creates, appends to, truncates or
//!   deletes segment files. The sink reads through [`SpoolReader`] and reports progress through
//!   [`Checkpoint`] plus a `delivered` watch channel; the writer deletes a sealed segment only
//!   when all its records are below `delivered`.
//! - Recovery ([`Spool::open`]) truncates the tail segment at its first torn or corrupt record;
//!   everything before it is intact by CRC32C, and nothing after it was ever acknowledged
//!   (acknowledgement follows the write of every byte before it).
//! - Quota: a request whose record would push the spool past `spool.max_bytes` is refused with
//!   [`SpoolError::Full`] (HTTP 503 + `Retry-After`), never half-written.

mod checkpoint;
mod reader;
pub(crate) mod record;
mod segment;
mod writer;

use std::path::{Path, PathBuf};

use tokio::sync::{mpsc, watch};

pub use checkpoint::Checkpoint;
pub use reader::{scan_recent, Record, SpoolReader};
pub(crate) use segment::sync_dir;
pub use writer::SpoolHandle;

use crate::config::SpoolConfig;
use crate::metrics::Metrics;

/// Log sequence number: the index of a record in the spool.
pub type Lsn = u64;

/// The byte after a payload's row count: the rows follow in [`crate::rowbinary`] format, in
/// the current column layout ([`crate::row::COLUMNS`]). Records of the first RowBinary layout
/// (before `depth_from` / `duration_from_ms`) have 1 there; records written before RowBinary
/// (a JSON array) have `[`. A spool survives an upgrade: older records are read and rewritten.
const FORMAT_ROWBINARY: u8 = 2;
const FORMAT_ROWBINARY_V1: u8 = 1;

/// The rows of a record payload, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredRows<'a> {
    /// The insert's own bytes ([`crate::rowbinary`]).
    RowBinary(&'a [u8]),
    /// Rows of the first RowBinary layout ([`crate::row::V1_COLUMN_COUNT`] columns), from a
    /// spool written by an older version: [`crate::row::upgrade_v1`] makes them current.
    RowBinaryV1(&'a [u8]),
    /// A JSON array of [`crate::event::Event`], from a spool written by an older version.
    Json(&'a [u8]),
}

use crate::rowbinary::RowError;

/// The payload of a record: `row count: u32 LE`, a format byte, then the rows in ClickHouse's
/// RowBinary ([`crate::rowbinary`]). The count lets the sink cut batches without decoding; the
/// rows are the insert's body as they are.
pub fn encode_events(events: &[crate::row::EventRow<'_>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + events.len() * 320);
    out.extend_from_slice(&(events.len() as u32).to_le_bytes());
    out.push(FORMAT_ROWBINARY);
    for e in events {
        e.encode(&mut out);
    }
    out
}

/// The row count and the rows of a record payload.
pub fn payload_parts(payload: &[u8]) -> Option<(u32, StoredRows<'_>)> {
    let count = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?);
    match payload.get(4)? {
        &FORMAT_ROWBINARY => Some((count, StoredRows::RowBinary(&payload[5..]))),
        &FORMAT_ROWBINARY_V1 => Some((count, StoredRows::RowBinaryV1(&payload[5..]))),
        b'[' => Some((count, StoredRows::Json(&payload[4..]))),
        _ => None,
    }
}

/// The rows of a record payload, borrowing their strings where the format allows.
pub fn decode_events(payload: &[u8]) -> Result<Vec<crate::row::EventRow<'_>>, RowError> {
    let (count, rows) = payload_parts(payload).ok_or(RowError::CutShort)?;
    let rows: Vec<crate::row::EventRow<'_>> = match rows {
        StoredRows::RowBinary(b) => crate::row::decode_all(b, count as usize)?,
        StoredRows::RowBinaryV1(b) => {
            let (rows, _) = crate::row::upgrade_v1(b, count as usize)?;
            crate::row::decode_all(&rows, count as usize)?
                .into_iter()
                .map(crate::row::EventRow::into_owned)
                .collect()
        }
        StoredRows::Json(json) => serde_json::from_slice(json)?,
    };
    if rows.len() != count as usize {
        return Err(RowError::Count {
            said: count as usize,
            held: rows.len(),
        });
    }
    Ok(rows)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full (its disk quota is reached) until ClickHouse catches up")]
    Full,
    #[error("the collector is shutting down")]
    Closed,
    #[error("spool write failed: {0}")]
    Io(String),
    #[error("spool unavailable: {0}")]
    Failed(String),
}

/// Readiness view of the spool, published by the writer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolStatus {
    /// Records below this LSN are committed.
    pub committed: Lsn,
    pub bytes: u64,
    pub quota: u64,
    pub full: bool,
    /// Unrecoverable without a restart (`/healthz` fails).
    pub failed: Option<String>,
    /// A transient host fault (disk full, out of descriptors): refusing with 503 and retrying.
    pub degraded: Option<String>,
}

/// What recovery found; logged at start and exported as metrics.
#[derive(Debug, Default, Clone)]
pub struct RecoveryReport {
    pub segments: usize,
    pub next_lsn: Lsn,
    pub checkpoint: Checkpoint,
    pub truncated_bytes: u64,
    /// Appended time of the newest record found, when the tail segment holds one: records
    /// stored just before a crash may never have been answered (see
    /// [`crate::sink::UnansweredTail`]).
    pub last_appended_ms: Option<u64>,
}

/// The opened spool, ready to be split between producers and the sink.
pub struct Spool {
    pub handle: SpoolHandle,
    pub consumer: SpoolConsumer,
    pub writer: std::thread::JoinHandle<()>,
    pub report: RecoveryReport,
}

/// Everything the one consumer (the sink) owns: where to read, where it got to, and how to
/// tell the writer what may be reclaimed.
pub struct SpoolConsumer {
    pub reader: SpoolReader,
    pub dir: PathBuf,
    pub checkpoint: Checkpoint,
    /// The consumer sends the delivered LSN here after each checkpoint; the writer reclaims.
    pub delivered: watch::Sender<Lsn>,
}

impl Spool {
    /// Recovers the spool in `dir` (creating it if needed) and starts the writer thread.
    pub fn open(dir: &Path, cfg: &SpoolConfig, metrics: &Metrics) -> std::io::Result<Spool> {
        Self::open_with_clock(dir, cfg, metrics, crate::clock::Clock::system())
    }

    /// [`Spool::open`] with the clock that stamps records (their age is the freshness lag).
    pub fn open_with_clock(
        dir: &Path,
        cfg: &SpoolConfig,
        metrics: &Metrics,
        clock: crate::clock::Clock,
    ) -> std::io::Result<Spool> {
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(crate::datadir::DIR_MODE)
                .create(dir)?;
        }
        let checkpoint = Checkpoint::load(dir)?;
        let mut bases = segment::list(dir)?;
        let mut report = RecoveryReport {
            checkpoint,
            ..Default::default()
        };
        let mut segments = Vec::with_capacity(bases.len());
        for &b in &bases {
            segments.push((b, std::fs::metadata(segment::path(dir, b))?.len()));
        }
        let mut next_lsn = 0;
        if let Some(&tail) = bases.last() {
            let scan = segment::recover_tail(dir, tail)?;
            if scan.dropped_bytes > 0 {
                metrics.spool_corrupt_records.inc();
                tracing::warn!(
                    segment = tail,
                    kept_records = scan.records,
                    dropped_bytes = scan.dropped_bytes,
                    "spool tail had a torn or corrupt record; truncated there (a torn write was never acknowledged; a corrupted acknowledged record is lost and counted in clicktrail_spool_corrupt_records_total)"
                );
            }
            report.truncated_bytes = scan.dropped_bytes;
            report.last_appended_ms = scan.last_appended_ms;
            next_lsn = tail + scan.records;
            if let Some(last) = segments.last_mut() {
                last.1 = scan.valid_len;
            }
        }
        if next_lsn < checkpoint.delivered || bases.is_empty() {
            // Fresh spool, or everything on disk was delivered and reclaimed before a crash.
            next_lsn = next_lsn.max(checkpoint.delivered);
            segment::create(dir, next_lsn)?;
            bases.push(next_lsn);
            segments.push((next_lsn, record::MAGIC.len() as u64));
        }
        let tail = *bases.last().expect("at least one segment");
        let active = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(segment::path(dir, tail))?;
        report.segments = segments.len();
        report.next_lsn = next_lsn;
        metrics.spool_quota_bytes.set(cfg.max_bytes as i64);

        let (tx, rx) = mpsc::channel(4096);
        let (committed_tx, committed_rx) = watch::channel(next_lsn);
        let (status_tx, status_rx) = watch::channel(SpoolStatus::default());
        let (delivered_tx, delivered_rx) = watch::channel(checkpoint.delivered);
        let w = writer::Writer {
            dir: dir.to_path_buf(),
            cfg: cfg.clone(),
            metrics: metrics.clone(),
            segments,
            active,
            next_lsn,
            delivered: checkpoint.delivered,
            committed_tx,
            status_tx,
            failed: None,
            degraded: None,
            retry_at: std::time::Instant::now(),
            retry_delay: writer::FIRST_RETRY_DELAY,
            clock,
        };
        let writer = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || w.run(rx, delivered_rx))?;
        let reader = SpoolReader::new(dir.to_path_buf(), committed_rx, metrics.clone());
        Ok(Spool {
            handle: SpoolHandle::new(tx, status_rx),
            consumer: SpoolConsumer {
                reader,
                dir: dir.to_path_buf(),
                checkpoint,
                delivered: delivered_tx,
            },
            writer,
            report,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FsyncMode;

    fn cfg() -> SpoolConfig {
        SpoolConfig {
            segment_bytes: 4096,
            max_bytes: 64 * 1024,
            ..SpoolConfig::default()
        }
    }

    #[test]
    fn record_payloads_carry_their_row_count() {
        let e = crate::compactor::tests_support::event();
        let p = encode_events(&[e.clone(), e.clone()]);
        assert_eq!(payload_parts(&p).unwrap().0, 2);
        let rows = decode_events(&p).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].clone().into_owned(), e);
        let mut wrong = p.clone();
        wrong[0] = 3;
        assert!(decode_events(&wrong)
            .unwrap_err()
            .to_string()
            .contains("says 3 rows"));
        assert!(decode_events(&p[..2]).is_err());
        assert!(decode_events(&p[..p.len() - 1]).is_err());
    }

    #[test]
    fn records_of_the_first_rowbinary_layout_are_read_with_the_new_columns_zero() {
        let mut e = crate::compactor::tests_support::event();
        e.depth_from = 7;
        e.duration_from_ms = 9000;
        let current = encode_events(&[e.clone(), e.clone()]);
        // A format-1 record: the same rows without the columns added since (fixed-width, last).
        let row_len = (current.len() - 5) / 2;
        let tail = 5;
        let mut old = 2u32.to_le_bytes().to_vec();
        old.push(FORMAT_ROWBINARY_V1);
        for r in 0..2 {
            let start = 5 + r * row_len;
            old.extend_from_slice(&current[start..start + row_len - tail]);
        }
        e.depth_from = 0;
        e.duration_from_ms = 0;
        let rows = decode_events(&old).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].clone().into_owned(), e);
        let (body, ends) = crate::row::upgrade_v1(&old[5..], 2).unwrap();
        assert_eq!(ends, vec![row_len, 2 * row_len]);
        assert_eq!(
            crate::row::decode_all(&body, 2).unwrap()[0]
                .clone()
                .into_owned(),
            e
        );
        assert!(crate::row::upgrade_v1(&old[5..old.len() - 1], 2).is_err());
    }

    #[test]
    fn records_of_the_json_format_are_still_read() {
        // What versions before the RowBinary records wrote: the count, then a JSON array.
        let e = crate::compactor::tests_support::event();
        let mut old = 1u32.to_le_bytes().to_vec();
        serde_json::to_writer(&mut old, &[&e]).unwrap();
        assert!(matches!(
            payload_parts(&old),
            Some((1, StoredRows::Json(_)))
        ));
        assert_eq!(decode_events(&old).unwrap()[0].clone().into_owned(), e);
        let mut unknown = encode_events(std::slice::from_ref(&e));
        unknown[4] = 7;
        assert!(payload_parts(&unknown).is_none());
    }

    #[tokio::test]
    async fn appends_are_read_back_in_order_across_segments() {
        let d = tempfile::tempdir().unwrap();
        let m = Metrics::new();
        let mut s = Spool::open(d.path(), &cfg(), &m).unwrap();
        let mut lsns = Vec::new();
        for i in 0..100u32 {
            lsns.push(
                s.handle
                    .append(format!("{i:0>100}").into_bytes())
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(lsns, (0..100).collect::<Vec<_>>());
        assert!(segment::list(d.path()).unwrap().len() > 1, "rotated");
        s.consumer.reader.seek(0).unwrap();
        for i in 0..100u32 {
            let r = s.consumer.reader.next().await.unwrap().unwrap();
            assert_eq!(r.lsn, i as u64);
            assert_eq!(r.payload, format!("{i:0>100}").into_bytes());
        }
        assert!(s.consumer.reader.try_next().unwrap().is_none());
        drop(s.handle);
        s.writer.join().unwrap();
        assert!(s.consumer.reader.next().await.unwrap().is_none(), "closed");
    }

    #[tokio::test]
    async fn reopen_continues_numbering_and_reader_resumes_at_checkpoint() {
        let d = tempfile::tempdir().unwrap();
        let m = Metrics::new();
        {
            let s = Spool::open(d.path(), &cfg(), &m).unwrap();
            for i in 0..50u8 {
                s.handle.append(vec![i; 200]).await.unwrap();
            }
            Checkpoint {
                delivered: 30,
                inflight: None,
                inflight_inserted_at: None,
                inflight_since: None,
            }
            .store(d.path())
            .unwrap();
            drop(s.handle);
            s.writer.join().unwrap();
        }
        let mut s = Spool::open(d.path(), &cfg(), &m).unwrap();
        assert_eq!(s.report.next_lsn, 50);
        assert_eq!(s.handle.append(vec![9; 10]).await.unwrap(), 50);
        s.consumer
            .reader
            .seek(s.report.checkpoint.delivered)
            .unwrap();
        let r = s.consumer.reader.next().await.unwrap().unwrap();
        assert_eq!((r.lsn, r.payload[0]), (30, 30));
    }

    #[tokio::test]
    async fn quota_refuses_and_reclaim_frees() {
        let d = tempfile::tempdir().unwrap();
        let m = Metrics::new();
        let mut s = Spool::open(d.path(), &cfg(), &m).unwrap();
        let mut last = 0;
        let mut full = false;
        for _ in 0..200 {
            match s.handle.append(vec![1; 1000]).await {
                Ok(l) => last = l,
                Err(SpoolError::Full) => {
                    full = true;
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(full, "quota reached");
        assert!(s.handle.status().full);
        assert!(s.handle.status().bytes <= cfg().max_bytes);
        // The sink delivers everything: sealed segments go away and appends succeed again.
        s.consumer.reader.seek(0).unwrap();
        while s.consumer.reader.try_next().unwrap().is_some() {}
        s.consumer.delivered.send_replace(last + 1);
        let mut ok = false;
        for _ in 0..100 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            if s.handle.append(vec![1; 1000]).await.is_ok() {
                ok = true;
                break;
            }
        }
        assert!(ok, "appends resume after reclaim");
        assert!(s.handle.status().bytes < 8192);
    }

    #[tokio::test]
    async fn never_mode_does_not_fsync_but_batch_does() {
        for (mode, expect_fsync) in [(FsyncMode::Never, false), (FsyncMode::Batch, true)] {
            let d = tempfile::tempdir().unwrap();
            let m = Metrics::new();
            let s = Spool::open(
                d.path(),
                &SpoolConfig {
                    fsync: mode,
                    ..cfg()
                },
                &m,
            )
            .unwrap();
            s.handle.append(b"x".to_vec()).await.unwrap();
            assert_eq!(m.spool_fsyncs.get() > 0, expect_fsync, "{mode:?}");
        }
    }

    #[tokio::test]
    async fn concurrent_appends_share_fsyncs() {
        let d = tempfile::tempdir().unwrap();
        let m = Metrics::new();
        let s = Spool::open(
            d.path(),
            &SpoolConfig {
                max_bytes: 64 << 20,
                segment_bytes: 8 << 20,
                ..cfg()
            },
            &m,
        )
        .unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..64 {
            let h = s.handle.clone();
            tasks.spawn(async move {
                for _ in 0..20 {
                    h.append(vec![7; 300]).await.unwrap();
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        let fsyncs = m.spool_fsyncs.get();
        assert!(
            fsyncs < 1280,
            "group commit should batch: {fsyncs} fsyncs for 1280 appends"
        );
    }
}
