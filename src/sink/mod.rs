//! The sink: reads committed records from the spool, cuts them into insert batches, and
//! delivers each batch to ClickHouse exactly once as analysts see it.
//!
//! Invariants:
//! - A batch is a fixed range of spool records `[start, end)`. Before its first insert attempt
//!   the range is stored in the checkpoint as `inflight`, with `inserted_at` (stamped at the
//!   first attempt, sent as the last column of every row) and `inflight_since` (that first
//!   stamp, kept if the stamp is renewed).
//! - **No row is sent to ClickHouse twice.** On a cluster every retry, and the first delivery
//!   after a crash, resends exactly those records' RowBinary bytes in the same order (the
//!   records hold the insert body as it is sent) with the same stamp: the block is
//!   byte-identical and replicated tables' block dedup drops the repeat (issue 17's design).
//!   (Unless the batch holds records of the unanswered tail, below: then it is checked first
//!   and only its missing rows are sent.)
//!   On one server (18.16's plain MergeTree has no block dedup) an attempt whose outcome is
//!   unknown — any failed attempt (a timeout or a reset after the body was sent may have
//!   landed), and the batch in flight at the last stop — is settled before the next one:
//!   the sink waits until no attempt of the batch runs on the server any more (each attempt's
//!   query id starts with the batch's range; `system.processes`, and `KILL QUERY`, which 18.16
//!   refuses for an INSERT), then one bounded query asks which of
//!   the batch's (site, event_id) `events` has (rows stamped since `inflight_since`, the batch's
//!   sites and `ts` range), and only the missing rows are sent, still with the batch's stamp
//!   (`clicktrail_duplicates_dropped_total{stage="sink"}` counts the rest).
//! - **Records stored just before a crash** may never have been answered, so the client (or
//!   haproxy) may have sent them again to another collector ([`UnansweredTail`]): the
//!   batches holding them are checked the same way, on a cluster too, before their first
//!   attempt.
//! - What remains possible (docs/delivery.md): on 18.16 a materialized view that fails after
//!   the `events` part was written answers the insert with an error although `events` has the
//!   rows; the check finds them and does not resend, so the views that missed the block
//!   undercount it (at most one batch, `sink.max_batch_rows` rows, per such failure; logged). A
//!   collector clock stepped back between two attempts can hide a landed row from the check
//!   (`inserted_at` below `inflight_since`): it is resent, a duplicate, never a loss. Anything
//!   that gets through still collapses at merge time (the ReplacingMergeTree key ends with
//!   `event_id`).
//! - The one exception: a batch whose stamp could land older than `restamp_after` (half the
//!   compactor's `insert_settle`) is stamped anew before the attempt. The compactor archives
//!   and deletes `inserted_at <= now() - insert_settle`; a row landing later with an older
//!   stamp would be deleted unarchived. On a cluster that resend collapses at merge instead of
//!   at insert; on one server the check before it still bounds by `inflight_since`.
//! - On a cluster (`clickhouse.cluster`) inserts go to the Distributed `events` with
//!   synchronous distributed inserts ([`crate::clickhouse::Dialect::sync_distributed_insert`]):
//!   the answer means every shard has its rows on one replica, so `delivered` may advance.
//! - `delivered` advances only after ClickHouse confirmed the insert (or the refused rows are
//!   on disk in the dead-letter store). Only then may the spool delete the records.
//! - Error class decides the path (see [`crate::clickhouse::codes`]): retryable errors retry
//!   forever with capped exponential backoff and jitter; destination and schema-wide refusals
//!   (a missing table, a missing column, a type every row fails alike) are *held*: retried the
//!   same way and alerted (`clicktrail_sink_held{reason}`), never dead-lettered, so that once
//!   the operator fixes the schema everything lands exactly once without a replay. Only
//!   row-level refusals split the batch to isolate the refused rows, which go to
//!   [`DeadLetters`]; the good rows still land.
//! - A dead letter that cannot be stored (the store's quota, a full disk) holds the batch too
//!   (`reason="dead_letters"`): the rows stay in the spool, and the insert is retried before
//!   each new put, so rows whose refusal was fixed meanwhile land without a replay; nothing is
//!   evicted from the store to make room and nothing is skipped. (A spool record that does
//!   not decode has no insert to retry: only its put is.)
//!
//! (Over 500 lines: the delivery loop, its holds and its isolation of refused rows are one state
//! machine around the checkpoint; the insert itself is in `client.rs`.)

pub mod client;

use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::clickhouse::codes::{classify, exception_code, row_specific, ErrorClass};
use crate::config::{ClickHouseConfig, SinkConfig};
use crate::dlq::{DeadLetters, NewEntry, Origin, Stage};
use crate::metrics::{ClassLabel, Metrics, ReasonLabel, StageLabel};
use crate::row::EventRow;
use crate::slow::{SlowCalls, SlowKind};
use crate::spool::{Checkpoint, Lsn, SpoolConsumer, SpoolReader, StoredRows};

/// What the rest of the process may know about the sink (readiness, freshness).
#[derive(Debug, Clone, Default)]
pub struct SinkStatus {
    /// Append time (epoch ms) of the oldest record not yet confirmed by ClickHouse.
    pub oldest_pending_ms: Option<u64>,
    /// The last insert failed with this; cleared by the next success.
    pub last_error: Option<String>,
    /// Holding batches until an operator fixes something (see `held_reason`).
    pub held: bool,
    /// Why batches are held: one of [`HELD_REASONS`].
    pub held_reason: Option<&'static str>,
    /// Every spool record below this is in ClickHouse (or in dead letters).
    pub delivered: Lsn,
}

/// The `reason` label values of `clicktrail_sink_held`: the destination is missing or
/// forbidden; the table refuses the rows' shape (schema-wide); refused rows cannot be stored as
/// dead letters.
pub const HELD_REASONS: [&str; 3] = ["destination", "schema", "dead_letters"];

/// A fixed range of spool records, prepared for its insert: the records' rows concatenated
/// (the insert body, kept until ClickHouse confirmed it, so every attempt sends the same
/// bytes) and where each row ends. Records that do not decode are set aside for the dead-letter
/// store; their rows are not in the body.
struct Batch {
    start: Lsn,
    end: Lsn,
    rows: usize,
    bytes: usize,
    oldest_ms: u64,
    body: Vec<u8>,
    ends: Vec<usize>,
    /// (lsn, payload, why) of every record that does not decode.
    undecodable: Vec<(Lsn, Vec<u8>, String)>,
    /// `inserted_at` of a batch that was in flight at the last stop.
    inserted_at: Option<u32>,
    /// In flight at the last stop: ClickHouse may have some or all of its rows.
    resumed: bool,
    /// The oldest append time of the batch's records in [`UnansweredTail`]: their copies may
    /// be in ClickHouse through another collector.
    unanswered_ms: Option<u64>,
}

/// The records stored just before the last stop, whose answer may never have reached the
/// client: `[.., end)` appended at or after `from_ms`. A collector killed between storing a
/// request and answering it leaves the client (or haproxy's `retry-on empty-response`) to send
/// it again, maybe to another collector, whose intake filter does not know the ids; both
/// copies would reach ClickHouse, and the sum rollups would count them twice. So the sink
/// checks these records like an attempt of unknown outcome, on a cluster too, and sends only
/// the rows `events` does not have. It works when the other copy landed first, which is the
/// usual order (a retry is delivered within `sink.batch_age`; a restart takes longer); the
/// other order remains a duplicate in the sums (docs/delivery.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnansweredTail {
    pub end: Lsn,
    pub from_ms: u64,
}

impl UnansweredTail {
    /// From the spool's recovery: the records pending at the start, appended within `window`
    /// (the longest a request may wait for its answer, and a margin) of the newest one. `None`
    /// when nothing is pending. When the newest record's time is unknown (the tail segment was
    /// empty), every pending record counts.
    pub fn after_recovery(report: &crate::spool::RecoveryReport, window: Duration) -> Option<Self> {
        (report.next_lsn > report.checkpoint.delivered).then(|| UnansweredTail {
            end: report.next_lsn,
            from_ms: report
                .last_appended_ms
                .map_or(0, |t| t.saturating_sub(window.as_millis() as u64)),
        })
    }

    fn holds(&self, lsn: Lsn, appended_ms: u64) -> bool {
        lsn < self.end && appended_ms >= self.from_ms
    }
}

/// How far two collectors' clocks may disagree when the check bounds the rows it looks at by
/// `inserted_at` (another collector stamped its copy by its own clock).
const CLOCK_SKEW_S: u32 = 300;

pub struct Sink {
    client: clickhouse::Client,
    cfg: SinkConfig,
    insert_timeout: Duration,
    /// Cuts and prepares the batches; runs on its own task from [`Sink::run`] on.
    prep: Option<Preparer>,
    /// Buffers of delivered batches, back to the preparer for reuse.
    recycle: mpsc::UnboundedSender<(Vec<u8>, Vec<usize>)>,
    building_oldest_ms: Arc<AtomicU64>,
    slow: SlowCalls,
    spool_dir: PathBuf,
    checkpoint: Checkpoint,
    delivered_tx: watch::Sender<Lsn>,
    dlq: DeadLetters,
    metrics: Metrics,
    /// The dead-letter store's: an entry's times and the sink's agree.
    clock: crate::clock::Clock,
    status: watch::Sender<SinkStatus>,
    /// Inserts go through a Distributed table (`clickhouse.cluster` is set); the synchronous
    /// insert setting is added to `client` once the server's version is known.
    cluster: bool,
    sync_setting_added: bool,
    /// A stamp older than this before an attempt is renewed (see the module doc).
    restamp_after: Duration,
}

impl Sink {
    pub fn new(
        ch: &ClickHouseConfig,
        cfg: SinkConfig,
        spool: SpoolConsumer,
        dlq: DeadLetters,
        metrics: Metrics,
    ) -> (Self, watch::Receiver<SinkStatus>) {
        let SpoolConsumer {
            reader,
            dir: spool_dir,
            checkpoint,
            delivered: delivered_tx,
        } = spool;
        let (status, rx) = watch::channel(SinkStatus {
            delivered: checkpoint.delivered,
            ..SinkStatus::default()
        });
        let (recycle, recycled) = mpsc::unbounded_channel();
        let building_oldest_ms = Arc::new(AtomicU64::new(0));
        let prep = Preparer {
            reader,
            cfg: cfg.clone(),
            target_rows: cfg.batch_rows,
            status: status.clone(),
            building_oldest_ms: building_oldest_ms.clone(),
            recycled,
            unanswered: None,
        };
        (
            Self {
                client: crate::clickhouse::client(ch),
                slow: SlowCalls::new(&Default::default(), metrics.clone()),
                cfg,
                insert_timeout: ch.timeout,
                prep: Some(prep),
                recycle,
                building_oldest_ms,
                spool_dir,
                checkpoint,
                delivered_tx,
                clock: dlq.clock().clone(),
                dlq,
                metrics,
                status,
                cluster: !ch.cluster.is_empty(),
                sync_setting_added: false,
                restamp_after: Duration::from_secs(300),
            },
            rx,
        )
    }

    /// Slow-call detection of the inserts (`[observability] slow_insert`).
    pub fn with_slow_calls(self, slow: SlowCalls) -> Self {
        Self { slow, ..self }
    }

    /// Renew a batch's `inserted_at` when it could land more than `after` after it: half the
    /// compactor's `insert_settle` (serve sets it).
    pub fn with_restamp_after(mut self, after: Duration) -> Self {
        self.restamp_after = after;
        self
    }

    /// Check the records of `tail` against ClickHouse before sending them (serve sets it from
    /// the spool's recovery).
    pub fn with_unanswered_tail(mut self, tail: Option<UnansweredTail>) -> Self {
        if let Some(p) = self.prep.as_mut() {
            p.unanswered = tail;
        }
        self
    }

    /// Delivers until the spool writer stops and everything it committed is in ClickHouse.
    /// Dropping the future (shutdown deadline) is safe: the checkpoint is always consistent.
    ///
    /// The next batch is read from the spool and prepared on its own task while the current one
    /// is inserted; batches still reach ClickHouse one at a time, in spool order, and each is
    /// in the checkpoint as `inflight` before its first attempt, as without the pipeline. A
    /// prepared batch that never became `inflight` is only memory: after a crash it is cut
    /// again from `delivered`.
    pub async fn run(mut self) -> std::io::Result<()> {
        let mut prep = self.prep.take().expect("run once");
        prep.reader.seek(self.checkpoint.delivered)?;
        if let Some((start, end)) = self.checkpoint.inflight {
            tracing::info!(
                start,
                end,
                "resending the batch that was in flight at the last stop"
            );
            let mut batch = prep.read_range(start, end)?;
            batch.inserted_at = self.checkpoint.inflight_inserted_at;
            batch.resumed = true;
            self.deliver(batch).await?;
        }
        // One batch prepared ahead at most: the preparer reserves the slot before cutting.
        let (tx, mut rx) = mpsc::channel(1);
        // Dropping `tasks` (this future dropped at the shutdown deadline) stops the preparer.
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(prep.run(tx));
        while let Some(batch) = rx.recv().await {
            self.deliver(batch?).await?;
        }
        self.status.send_modify(|s| s.oldest_pending_ms = None);
        tracing::info!(
            delivered = self.checkpoint.delivered,
            "sink drained the spool"
        );
        Ok(())
    }

    /// A CRC-valid record that does not decode (written by an incompatible build): kept in
    /// the dead-letter store, where a newer build can replay it. Returns once the entry is
    /// stored (retrying while the store refuses it).
    async fn dead_letter_record(&self, lsn: Lsn, payload: &[u8], why: &str) -> std::io::Result<()> {
        tracing::error!(lsn, error = %why, "spool record does not decode; dead-lettering it");
        // A JSON record keeps its JSON (replayable text); anything else is kept as it is.
        let raw = match crate::spool::payload_parts(payload) {
            Some((_, StoredRows::Json(json))) => json,
            _ => payload,
        };
        let raw = crate::dlq::cap(&String::from_utf8_lossy(raw), crate::dlq::MAX_RAW_BYTES);
        let received_at_ms = self.clock.now_ms();
        let why = why.to_string();
        self.put_dead_letter(move || NewEntry {
            raw: Some(raw.clone()),
            ..NewEntry::refused(
                Stage::Decode,
                "other",
                format!("spool record {lsn} does not decode: {why}"),
                Origin {
                    received_at_ms,
                    ..Origin::default()
                },
            )
        })
        .await
    }

    /// Stores a dead letter built by `entry`, retrying with backoff (batch held, alerted) while
    /// the store refuses it, so refused rows leave the spool only once they are on disk.
    async fn put_dead_letter(
        &self,
        entry: impl Fn() -> NewEntry + Send + Sync + 'static,
    ) -> std::io::Result<()> {
        let mut attempt: u32 = 0;
        loop {
            if self.try_put_dead_letter(entry()).await? {
                if attempt > 0 {
                    self.set_held(None);
                }
                return Ok(());
            }
            attempt += 1;
            tokio::time::sleep(self.backoff(attempt)).await;
        }
    }

    /// One attempt to store a dead letter. `false`: the store refused it (quota, disk); the
    /// batch is then held (`reason="dead_letters"`, alerted) and the caller retries.
    async fn try_put_dead_letter(&self, entry: NewEntry) -> std::io::Result<bool> {
        let dlq = self.dlq.clone();
        let result = tokio::task::spawn_blocking(move || dlq.put_without_eviction(entry))
            .await
            .map_err(std::io::Error::other)?;
        match result {
            Ok(_) => Ok(true),
            Err(e) => {
                tracing::error!(error = %e, "cannot store refused rows as a dead letter; holding them in the spool and retrying");
                self.status
                    .send_modify(|s| s.last_error = Some(format!("dead-letter store: {e}")));
                self.set_held(Some("dead_letters"));
                Ok(false)
            }
        }
    }

    /// Publishes why batches are held (`None`: they are not), to readiness and metrics.
    fn set_held(&self, reason: Option<&'static str>) {
        for r in HELD_REASONS {
            self.metrics
                .sink_held
                .get_or_create(&ReasonLabel { reason: r })
                .set(i64::from(reason == Some(r)));
        }
        self.metrics
            .sink_destination_held
            .set(i64::from(reason == Some("destination")));
        self.status.send_modify(|s| {
            s.held = reason.is_some();
            s.held_reason = reason;
        });
    }

    async fn deliver(&mut self, batch: Batch) -> std::io::Result<()> {
        self.status
            .send_modify(|s| s.oldest_pending_ms = Some(batch.oldest_ms));
        self.checkpoint.inflight = Some((batch.start, batch.end));
        let stamp = batch.inserted_at.unwrap_or_else(|| self.now_s());
        self.checkpoint.inflight_inserted_at = Some(stamp);
        if !batch.resumed {
            self.checkpoint.inflight_since = Some(stamp);
        }
        self.store_checkpoint().await?;
        for (lsn, payload, why) in &batch.undecodable {
            self.dead_letter_record(*lsn, payload, why).await?;
        }
        self.insert_isolating(&batch).await?;
        // Crash tests: ClickHouse has the batch, the checkpoint does not know yet.
        fail::fail_point!("sink::after_insert");
        self.checkpoint = Checkpoint {
            delivered: batch.end,
            ..Checkpoint::default()
        };
        self.store_checkpoint().await?;
        self.delivered_tx.send_replace(batch.end);
        // The oldest record still pending is the first of the batch being cut, if any.
        let building = self.building_oldest_ms.load(Ordering::Acquire);
        self.status.send_modify(|s| {
            s.oldest_pending_ms = (building != 0).then_some(building);
            s.delivered = batch.end;
        });
        // The preparer reuses the buffers: a fresh multi-megabyte buffer per batch cost a page
        // fault (and the kernel zeroing a page) every 4 KiB.
        let _ = self.recycle.send((batch.body, batch.ends));
        Ok(())
    }

    /// Stores the checkpoint, retrying with backoff while the disk refuses (full, out of file
    /// descriptors): the sink waits rather than stopping the collector.
    async fn store_checkpoint(&self) -> std::io::Result<()> {
        let mut attempt: u32 = 0;
        loop {
            let (c, dir) = (self.checkpoint, self.spool_dir.clone());
            let result = tokio::task::spawn_blocking(move || c.store(&dir))
                .await
                .map_err(std::io::Error::other)?;
            match result {
                Ok(()) => return Ok(()),
                Err(e) => {
                    attempt += 1;
                    tracing::error!(error = %e, attempt, "cannot store the spool checkpoint; retrying");
                    tokio::time::sleep(self.backoff(attempt)).await;
                }
            }
        }
    }

    /// Inserts the rows of `body` (row `i` ends at `ends[i]`), retrying per error class. A range
    /// refused with a permanent error is split in halves until the refused rows stand alone;
    /// they go to the dead-letter store.
    ///
    /// On one server (no `clickhouse.cluster`) an attempt whose outcome is unknown (any failed
    /// attempt, and the batch that was in flight at the last stop) is followed by
    /// [`Sink::settle_ambiguous`] before the next one: the earlier attempts are stopped, and
    /// only the rows `events` does not have yet are sent again.
    async fn insert_isolating(&mut self, batch: &Batch) -> std::io::Result<()> {
        let ends = &batch.ends[..];
        if ends.is_empty() {
            return Ok(());
        }
        let mut ambiguous = (batch.resumed && !self.cluster) || batch.unanswered_ms.is_some();
        // Parts still to insert, last = next; halves are pushed right first to keep row order.
        let mut todo: Vec<(Rows, u32)> = vec![(
            Rows::all(ends.len()),
            self.cfg.permanent_error_attempts.max(1),
        )];
        while let Some((mut part, permanent_attempts)) = todo.pop() {
            let mut attempt: u32 = 0;
            let mut permanent_failures: u32 = 0;
            let mut first_failed_ms = 0;
            loop {
                if ambiguous {
                    match self.settle_ambiguous(batch, &part).await {
                        Ok(present) => {
                            ambiguous = false;
                            if !present.is_empty() {
                                part = part.without(&present);
                                tracing::info!(
                                    batch_start = batch.start,
                                    batch_end = batch.end,
                                    present = present.len(),
                                    missing = part.len(),
                                    "rows of an unconfirmed insert are in ClickHouse; sending only the missing ones"
                                );
                                self.metrics
                                    .duplicates_dropped
                                    .get_or_create(&StageLabel { stage: "sink" })
                                    .inc_by(present.len() as u64);
                            }
                            if part.is_empty() {
                                self.record_confirmed();
                                break;
                            }
                        }
                        Err(e) => {
                            // Nothing is sent before the check answers: ClickHouse is away.
                            attempt += 1;
                            let msg = format!("cannot check which rows ClickHouse has: {e}");
                            tracing::warn!(error = %msg, attempt, "insert outcome unknown; will check again");
                            self.status
                                .send_modify(|s| s.last_error = Some(msg.clone()));
                            self.metrics
                                .sink_insert_errors
                                .get_or_create(&ClassLabel { class: "retryable" })
                                .inc();
                            tokio::time::sleep(self.backoff(attempt)).await;
                            continue;
                        }
                    }
                }
                let (slice, slice_ends) = part.bytes(&batch.body, ends);
                let rows = part.len();
                let inserted_at = self.stamp_for_attempt().await?;
                let query_id = format!(
                    "{}{:016x}",
                    attempt_prefix(batch.start, batch.end),
                    rand::random::<u64>()
                );
                let started = Instant::now();
                let result = self
                    .insert_once(&slice, &slice_ends, inserted_at, &query_id)
                    .await;
                let took = started.elapsed();
                self.metrics
                    .sink_insert_duration
                    .observe(took.as_secs_f64());
                if self.slow.is_slow(SlowKind::Insert, took) {
                    tracing::warn!(
                        kind = "insert",
                        elapsed_ms = took.as_millis() as u64,
                        batch_start = batch.start,
                        batch_end = batch.end,
                        rows,
                        bytes = slice.len(),
                        attempt = attempt + 1,
                        ok = result.is_ok(),
                        "slow ClickHouse insert"
                    );
                }
                let err = match result {
                    Ok(()) => {
                        self.record_success(rows);
                        break;
                    }
                    Err(e) => e,
                };
                // Refused or not, some of it may have landed (a timeout after the body was sent,
                // a view failing after the events part was written on 18.16).
                ambiguous = !self.cluster;
                let class = classify(&err);
                let msg = err.to_string();
                if first_failed_ms == 0 {
                    first_failed_ms = self.clock.now_ms();
                }
                self.metrics
                    .sink_insert_errors
                    .get_or_create(&ClassLabel {
                        class: class.as_str(),
                    })
                    .inc();
                self.status
                    .send_modify(|s| s.last_error = Some(msg.clone()));
                attempt += 1;
                match class {
                    ErrorClass::Retryable => {
                        tracing::warn!(error = %msg, rows, attempt, "insert failed; will retry");
                    }
                    ErrorClass::Destination => {
                        self.set_held(Some("destination"));
                        tracing::error!(error = %msg, rows, attempt, "insert destination missing or forbidden; holding the batch until it is fixed");
                    }
                    ErrorClass::SchemaWide => {
                        // Every row fails alike: dead-lettering would move the whole stream
                        // out of ClickHouse until a replay. Held here, it lands once fixed.
                        self.set_held(Some("schema"));
                        tracing::error!(error = %msg, rows, attempt, "insert refused for the table's schema (every row alike); holding the batch until the schema is fixed");
                    }
                    ErrorClass::RowLevel => {
                        permanent_failures += 1;
                        tracing::warn!(error = %msg, rows, attempt, "insert refused by ClickHouse");
                        if permanent_failures >= permanent_attempts {
                            let code = exception_code(&msg);
                            if rows > 1 && row_specific(code) {
                                let (left, right) = part.split();
                                // Sub-parts are refused deterministically: one attempt each.
                                todo.push((right, 1));
                                todo.push((left, 1));
                            } else {
                                // Boundaries were checked when the batch was assembled.
                                let refused = crate::row::decode_all(&slice, rows)
                                    .map_err(std::io::Error::other)?;
                                let stored = self
                                    .dead_letter(&refused, code, msg, first_failed_ms, attempt)
                                    .await?;
                                if !stored {
                                    // Nowhere to keep them: held in the spool, and the insert
                                    // is tried again after the backoff, since the refusal may
                                    // be fixed meanwhile (then they land without a replay).
                                    // permanent_failures stays at its limit, so the next
                                    // refusal goes straight back to the store.
                                    tokio::time::sleep(self.backoff(attempt)).await;
                                    continue;
                                }
                            }
                            break;
                        }
                    }
                }
                tokio::time::sleep(self.backoff(attempt)).await;
            }
        }
        Ok(())
    }

    /// After an attempt of unknown outcome on one server: waits until no earlier attempt of the
    /// batch runs on the server (found by the attempts' query id, asked to stop), so that none
    /// can land after the check, then asks which rows of `part` `events` already has. Returns
    /// their indices.
    ///
    /// The check is bounded: the batch's sites (the primary key's first column), its `ts` range
    /// (partition pruning), rows stamped at or after the batch's first attempt (`PREWHERE
    /// inserted_at`, a 4-byte column read before the ids), and its ids as `IN` lists cut to
    /// [`CHECK_QUERY_BYTES`].
    async fn settle_ambiguous(
        &self,
        batch: &Batch,
        part: &Rows,
    ) -> Result<Vec<usize>, clickhouse::error::Error> {
        let timeout = self.insert_timeout;
        tokio::time::timeout(timeout, self.no_attempt_running(batch))
            .await
            .map_err(|_| clickhouse::error::Error::TimedOut)??;
        let mut since = self.checkpoint.inflight_since.unwrap_or(0);
        if let Some(ms) = batch.unanswered_ms {
            since = since.min(((ms / 1000) as u32).saturating_sub(CLOCK_SKEW_S));
        }
        let (queries, keys) = check_queries(part, batch, since)
            .map_err(|e| clickhouse::error::Error::Custom(e.to_string()))?;
        let mut present = std::collections::HashSet::new();
        for sql in queries {
            let len = sql.len();
            let found = tokio::time::timeout(
                timeout,
                self.client
                    .query(&sql)
                    .with_setting("max_query_size", (len + 4096).to_string())
                    .fetch_all::<Present>(),
            )
            .await
            .map_err(|_| clickhouse::error::Error::TimedOut)??;
            present.extend(found.into_iter().map(|p| (p.site, p.event_id)));
        }
        Ok(keys
            .iter()
            .enumerate()
            .filter(|(_, k)| present.contains(*k))
            .map(|(i, _)| i)
            .collect())
    }

    /// Returns once no insert attempt of `batch` runs on the server, so that none can land
    /// after the check: each is asked to stop (`KILL QUERY ... ASYNC`; 18.16 cannot stop an
    /// INSERT, code 380, and then it is waited for). The caller bounds the wait.
    async fn no_attempt_running(&self, batch: &Batch) -> Result<(), clickhouse::error::Error> {
        let prefix = attempt_prefix(batch.start, batch.end);
        let running =
            format!("SELECT count() FROM system.processes WHERE startsWith(query_id, '{prefix}')");
        let mut killed = false;
        loop {
            let n: u64 = self.client.query(&running).fetch_one().await?;
            if n == 0 {
                return Ok(());
            }
            if !killed {
                tracing::info!(
                    batch_start = batch.start,
                    batch_end = batch.end,
                    "an earlier attempt of the batch still runs on ClickHouse; stopping it, or waiting for it to end"
                );
                let kill = format!("KILL QUERY WHERE startsWith(query_id, '{prefix}') ASYNC");
                if let Err(e) = self.client.query(&kill).execute().await {
                    tracing::debug!(error = %e, "KILL QUERY refused; waiting for the attempt to end");
                }
                killed = true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The rows of a part were found in ClickHouse: confirmed as if this attempt had inserted
    /// them (readiness and the last-success time; not counted as rows inserted).
    fn record_confirmed(&self) {
        self.metrics
            .sink_last_success
            .set(self.clock.now_ms() as f64 / 1000.0);
        self.set_held(None);
        self.status.send_modify(|s| s.last_error = None);
    }

    fn now_s(&self) -> u32 {
        (self.clock.now_ms().max(0) / 1000) as u32
    }

    /// The in-flight batch's `inserted_at` for the next attempt: the stored one, unless the
    /// attempt could land more than `restamp_after` after it; then a new one, stored before the
    /// attempt so that a resend after a crash is the same bytes as this attempt.
    async fn stamp_for_attempt(&mut self) -> std::io::Result<u32> {
        let now = self.now_s();
        match self.checkpoint.inflight_inserted_at {
            Some(t)
                if Duration::from_secs(u64::from(now.saturating_sub(t))) + self.insert_timeout
                    <= self.restamp_after =>
            {
                Ok(t)
            }
            old => {
                if old.is_some() {
                    tracing::info!(
                        stamped = old,
                        now,
                        "batch undelivered for long: new inserted_at (the resend collapses at merge, not at insert)"
                    );
                }
                self.checkpoint.inflight_inserted_at = Some(now);
                self.store_checkpoint().await?;
                Ok(now)
            }
        }
    }

    /// One insert attempt. On a cluster the first one learns the server's version to name the
    /// synchronous-insert setting; that query's failure counts as the attempt's.
    async fn insert_once(
        &mut self,
        rows: &[u8],
        ends: &[usize],
        inserted_at: u32,
        query_id: &str,
    ) -> Result<(), clickhouse::error::Error> {
        if self.cluster && !self.sync_setting_added {
            let (version, _) = crate::clickhouse::server_version(&self.client).await?;
            let setting = crate::clickhouse::Dialect { version }.sync_distributed_insert();
            self.client = self.client.clone().with_setting(setting, "1");
            self.sync_setting_added = true;
        }
        client::insert_as(
            &self.client,
            rows,
            ends,
            inserted_at,
            self.insert_timeout,
            Some(query_id),
        )
        .await
    }

    async fn dead_letter(
        &self,
        rows: &[EventRow<'_>],
        code: Option<u32>,
        reason: String,
        first_failed_ms: i64,
        attempts: u32,
    ) -> std::io::Result<bool> {
        tracing::error!(rows = rows.len(), ?code, %reason, "ClickHouse refused rows for good; moving them to dead letters");
        let site = rows.first().map(|r| r.site.to_string()).unwrap_or_default();
        let rows: Vec<_> = rows.iter().map(|r| r.clone().into_owned()).collect();
        let held = self.status.borrow().held_reason == Some("dead_letters");
        let stored = self
            .try_put_dead_letter(NewEntry {
                stage: Stage::Insert,
                reason_class: DeadLetters::reason_class_for_code(code),
                reason,
                code,
                first_failed_ms,
                attempts,
                origin: Origin {
                    site,
                    ..Origin::default()
                },
                events: Vec::new(),
                errors: Vec::new(),
                rows,
                raw: None,
            })
            .await?;
        if stored && held {
            self.set_held(None);
        }
        Ok(stored)
    }

    fn record_success(&self, rows: usize) {
        self.metrics.sink_inserts.inc();
        self.metrics.sink_rows_inserted.inc_by(rows as u64);
        self.metrics.sink_batch_rows.observe(rows as f64);
        self.metrics
            .sink_last_success
            .set(self.clock.now_ms() as f64 / 1000.0);
        self.set_held(None);
        self.status.send_modify(|s| s.last_error = None);
    }

    /// Capped exponential backoff with "equal jitter": half fixed, half random, so retries from
    /// many collectors spread out but never collapse to zero.
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .cfg
            .retry_initial
            .saturating_mul(1u32 << attempt.min(16).saturating_sub(1));
        let capped = exp.min(self.cfg.retry_max);
        let half = capped / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

/// Cuts the spool into batches and prepares each for its insert (the rows concatenated, their
/// ends found), one batch ahead of the delivery.
struct Preparer {
    reader: SpoolReader,
    cfg: SinkConfig,
    /// The row limit of the next batch: `batch_rows`, doubled up to `max_batch_rows` while
    /// batches are cut full with more records waiting behind them.
    target_rows: usize,
    status: watch::Sender<SinkStatus>,
    /// Append time of the first record of the batch being cut (0: none), for the sink's
    /// oldest-pending time between two deliveries.
    building_oldest_ms: Arc<AtomicU64>,
    recycled: mpsc::UnboundedReceiver<(Vec<u8>, Vec<usize>)>,
    unanswered: Option<UnansweredTail>,
}

impl Preparer {
    /// Hands batches over in spool order until the spool is closed and empty (or the sink is
    /// gone). A read error is handed over too, and ends the preparer.
    async fn run(mut self, tx: mpsc::Sender<std::io::Result<Batch>>) {
        loop {
            let Ok(slot) = tx.reserve().await else {
                return;
            };
            match self.next_batch().await {
                Ok(Some(b)) => slot.send(Ok(b)),
                Ok(None) => return,
                Err(e) => {
                    slot.send(Err(e));
                    return;
                }
            }
        }
    }

    fn empty_batch(&mut self, start: Lsn, oldest_ms: u64) -> Batch {
        let (mut body, mut ends) = self.recycled.try_recv().unwrap_or_default();
        body.clear();
        ends.clear();
        Batch {
            start,
            end: start,
            rows: 0,
            bytes: 0,
            oldest_ms,
            body,
            ends,
            undecodable: Vec::new(),
            inserted_at: None,
            resumed: false,
            unanswered_ms: None,
        }
    }

    /// Appends a record to the batch, noting when it is in the unanswered tail.
    fn add(&self, batch: &mut Batch, rec: crate::spool::Record) {
        if self
            .unanswered
            .is_some_and(|t| t.holds(rec.lsn, rec.appended_ms))
        {
            let ms = batch
                .unanswered_ms
                .map_or(rec.appended_ms, |m| m.min(rec.appended_ms));
            batch.unanswered_ms = Some(ms);
        }
        add(batch, rec);
    }

    /// Cuts the next batch: up to `target_rows` rows or `batch_bytes` bytes, or whatever has
    /// arrived when the oldest record is `batch_age` old. `None` when the spool is closed and
    /// empty.
    async fn next_batch(&mut self) -> std::io::Result<Option<Batch>> {
        let Some(first) = self.reader.next().await? else {
            return Ok(None);
        };
        let mut batch = self.empty_batch(first.lsn, first.appended_ms);
        self.building_oldest_ms
            .store(first.appended_ms, Ordering::Release);
        // Pending from now on, unless an older batch is still being delivered.
        self.status.send_if_modified(|s| {
            let idle = s.oldest_pending_ms.is_none();
            if idle {
                s.oldest_pending_ms = Some(first.appended_ms);
            }
            idle
        });
        self.add(&mut batch, first);
        let deadline = tokio::time::Instant::now() + self.cfg.batch_age;
        let mut full = false;
        loop {
            if batch.rows >= self.target_rows || batch.bytes >= self.cfg.batch_bytes {
                full = true;
                break;
            }
            // Drain what is already committed without waiting (backlog after a restart).
            if let Some(r) = self.reader.try_next()? {
                self.add(&mut batch, r);
                continue;
            }
            tokio::select! {
                r = self.reader.next() => match r? {
                    Some(r) => self.add(&mut batch, r),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        // A backlog: larger inserts (fewer parts for ClickHouse to write and merge) until it
        // is gone.
        self.target_rows = if full && self.reader.has_committed() {
            (self.target_rows * 2).min(self.cfg.max_batch_rows)
        } else {
            self.cfg.batch_rows
        };
        self.building_oldest_ms.store(0, Ordering::Release);
        Ok(Some(batch))
    }

    /// The records `[start, end)` again (the batch in flight at the last stop).
    fn read_range(&mut self, start: Lsn, end: Lsn) -> std::io::Result<Batch> {
        self.reader.seek(start)?;
        let mut batch = self.empty_batch(start, 0);
        while batch.end < end {
            match self.reader.try_next()? {
                Some(r) => {
                    if batch.oldest_ms == 0 {
                        batch.oldest_ms = r.appended_ms;
                    }
                    self.add(&mut batch, r)
                }
                None => break,
            }
        }
        Ok(batch)
    }
}

/// Appends a record's rows to the batch's body. Each record's row boundaries are checked (a
/// structural scan, no decoding) so that a malformed record is dead-lettered alone and a
/// refused batch can be cut into rows.
fn add(batch: &mut Batch, rec: crate::spool::Record) {
    batch.end = rec.lsn + 1;
    batch.bytes += rec.payload.len();
    let start = batch.body.len();
    let body = &mut batch.body;
    let scanned = match crate::spool::payload_parts(&rec.payload) {
        Some((n, StoredRows::RowBinary(rows))) => crate::row::row_ends(rows, n as usize)
            .inspect(|_| body.extend_from_slice(rows))
            .map_err(|e| e.to_string()),
        Some((n, StoredRows::RowBinaryV1(rows))) => crate::row::upgrade_v1(rows, n as usize)
            .map(|(rows, ends)| {
                body.extend_from_slice(&rows);
                ends
            })
            .map_err(|e| e.to_string()),
        // A record of an older version: re-encoded once.
        Some((_, StoredRows::Json(_))) => crate::spool::decode_events(&rec.payload)
            .map(|r| {
                r.iter()
                    .map(|e| {
                        e.encode(body);
                        body.len() - start
                    })
                    .collect()
            })
            .map_err(|e| e.to_string()),
        None => Err("record without a known header".to_string()),
    };
    match scanned {
        Ok(e) => {
            batch.rows += e.len();
            batch.ends.extend(e.into_iter().map(|end| start + end));
        }
        Err(why) => {
            body.truncate(start);
            batch.undecodable.push((rec.lsn, rec.payload, why));
        }
    }
}

/// Most bytes of one query of [`Sink::settle_ambiguous`] (its `max_query_size` is set to fit).
const CHECK_QUERY_BYTES: usize = 4 << 20;

/// Most ids in one query of the check. ClickHouse parses each literal into an AST element and
/// refuses a query of more than `max_ast_elements` (50,000 by default): a check of a full
/// 100,000-row batch in one query failed every time ("AST is too big", code 168) and held
/// the sink until it was restarted (the chaos soak, 2026-12-02). 20,000 leaves room for the
/// sites and the rest of the query.
const CHECK_QUERY_IDS: usize = 20_000;

/// The check's queries, and each row's (site, event_id) in order.
type CheckQueries = (Vec<String>, Vec<(String, String)>);

/// The queries of [`Sink::settle_ambiguous`] for the rows of `part`, and each row's (site,
/// event_id) in order. Rows stamped before `since` (the batch's first attempt) are not looked
/// at.
fn check_queries(
    part: &Rows,
    batch: &Batch,
    since: u32,
) -> Result<CheckQueries, crate::rowbinary::RowError> {
    let (slice, slice_ends) = part.bytes(&batch.body, &batch.ends);
    let rows = crate::row::decode_all(&slice, slice_ends.len())?;
    let mut sites: Vec<&str> = rows.iter().map(|r| r.site.as_ref()).collect();
    sites.sort_unstable();
    sites.dedup();
    let (min_ts, max_ts) = rows
        .iter()
        .fold((u32::MAX, 0), |(lo, hi), r| (lo.min(r.ts), hi.max(r.ts)));
    let mut head = format!(
        "SELECT site, event_id FROM {} PREWHERE inserted_at >= {since} \
         WHERE ts >= toDateTime({min_ts}) AND ts <= toDateTime({max_ts}) AND site IN (",
        client::EVENTS_TABLE
    );
    for (i, site) in sites.iter().enumerate() {
        if i > 0 {
            head.push_str(", ");
        }
        crate::query::sql::quote(site, &mut head);
    }
    head.push_str(") AND event_id IN (");
    let mut queries = Vec::new();
    let mut sql = String::new();
    let mut ids = 0;
    for r in &rows {
        if sql.is_empty() {
            sql.push_str(&head);
        } else if sql.len() + r.event_id.len() + 8 > CHECK_QUERY_BYTES || ids == CHECK_QUERY_IDS {
            sql.push(')');
            queries.push(std::mem::take(&mut sql));
            sql.push_str(&head);
            ids = 0;
        } else {
            sql.push_str(", ");
        }
        crate::query::sql::quote(&r.event_id, &mut sql);
        ids += 1;
    }
    if !sql.is_empty() {
        sql.push(')');
        queries.push(sql);
    }
    let keys = rows
        .iter()
        .map(|r| (r.site.to_string(), r.event_id.to_string()))
        .collect();
    Ok((queries, keys))
}

/// A row of `events` that the check found.
#[derive(Debug, serde::Deserialize, ::clickhouse::Row)]
struct Present {
    site: String,
    event_id: String,
}

/// The query ids of a batch's insert attempts begin with this: the check stops them all by it,
/// including attempts of a process that was killed (the range is in the checkpoint).
fn attempt_prefix(start: Lsn, end: Lsn) -> String {
    format!("clicktrail-insert-{start}-{end}-")
}

/// Rows of a batch by index, as runs of consecutive rows: one run, unless rows were found in
/// ClickHouse and left out.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rows {
    runs: Vec<Range<usize>>,
}

impl Rows {
    fn all(n: usize) -> Self {
        Self {
            runs: std::iter::once(0..n).collect(),
        }
    }

    fn len(&self) -> usize {
        self.runs.iter().map(|r| r.len()).sum()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// These rows but the ones at `positions` (ascending, counted within these rows).
    fn without(&self, positions: &[usize]) -> Rows {
        let mut skip = positions.iter().copied().peekable();
        let mut runs: Vec<Range<usize>> = Vec::new();
        let mut pos = 0;
        for r in &self.runs {
            for row in r.clone() {
                if skip.peek() == Some(&pos) {
                    skip.next();
                } else {
                    match runs.last_mut() {
                        Some(last) if last.end == row => last.end += 1,
                        _ => runs.push(row..row + 1),
                    }
                }
                pos += 1;
            }
        }
        Rows { runs }
    }

    /// The first half of the rows and the rest.
    fn split(&self) -> (Rows, Rows) {
        let mut left_n = self.len() / 2;
        let (mut left, mut right) = (Vec::new(), Vec::new());
        for r in &self.runs {
            if left_n >= r.len() {
                left_n -= r.len();
                left.push(r.clone());
            } else if left_n > 0 {
                left.push(r.start..r.start + left_n);
                right.push(r.start + left_n..r.end);
                left_n = 0;
            } else {
                right.push(r.clone());
            }
        }
        (Rows { runs: left }, Rows { runs: right })
    }

    /// The rows' bytes (borrowed when they are one run) and where each ends within them.
    fn bytes<'a>(
        &self,
        body: &'a [u8],
        ends: &[usize],
    ) -> (std::borrow::Cow<'a, [u8]>, Vec<usize>) {
        let start_of = |row: usize| if row == 0 { 0 } else { ends[row - 1] };
        if let [r] = &self.runs[..] {
            let base = start_of(r.start);
            let local = ends[r.clone()].iter().map(|e| e - base).collect();
            return (
                std::borrow::Cow::Borrowed(&body[base..ends[r.end - 1]]),
                local,
            );
        }
        let mut out = Vec::new();
        let mut local = Vec::with_capacity(self.len());
        for r in self.runs.iter().filter(|r| !r.is_empty()) {
            out.extend_from_slice(&body[start_of(r.start)..ends[r.end - 1]]);
            let base = start_of(r.start);
            let offset = out.len() - (ends[r.end - 1] - base);
            local.extend(ends[r.clone()].iter().map(|e| offset + e - base));
        }
        (std::borrow::Cow::Owned(out), local)
    }
}

// Runs are lists of ranges: `vec![0..2]` is one run, not the numbers 0 and 1.
#[allow(clippy::single_range_in_vec_init)]
#[cfg(test)]
mod tests {
    use super::{Rows, UnansweredTail};
    use std::time::Duration;

    #[test]
    fn the_unanswered_tail_is_the_pending_records_of_the_last_window() {
        let report = |next_lsn, delivered, last_appended_ms| crate::spool::RecoveryReport {
            next_lsn,
            checkpoint: crate::spool::Checkpoint {
                delivered,
                ..Default::default()
            },
            last_appended_ms,
            ..Default::default()
        };
        let w = Duration::from_secs(15);
        // Everything delivered (a clean stop, or a fresh spool): nothing to check.
        assert_eq!(
            UnansweredTail::after_recovery(&report(9, 9, Some(100_000)), w),
            None
        );
        let t = UnansweredTail::after_recovery(&report(9, 4, Some(100_000)), w).unwrap();
        assert_eq!(
            t,
            UnansweredTail {
                end: 9,
                from_ms: 85_000
            }
        );
        // Pending and stored within the window: checked. Older (answered before the stop), or
        // stored after the restart: sent as usual.
        assert!(t.holds(8, 100_000) && t.holds(4, 85_000));
        assert!(!t.holds(5, 84_999), "answered before the stop");
        assert!(!t.holds(9, 200_000), "stored by this process");
        // The newest record's time unknown (an empty tail segment): every pending record.
        let all = UnansweredTail::after_recovery(&report(9, 4, None), w).unwrap();
        assert!(all.holds(4, 0));
    }

    #[test]
    fn the_check_of_a_full_batch_stays_within_clickhouse_limits() {
        let mut e = crate::compactor::tests_support::event();
        let mut body = Vec::new();
        let mut ends = Vec::new();
        let n = 100_000;
        for i in 0..n {
            e.event_id = format!("e-{i:08}").into();
            e.encode(&mut body);
            ends.push(body.len());
        }
        let batch = super::Batch {
            start: 0,
            end: 1,
            rows: n,
            bytes: body.len(),
            oldest_ms: 0,
            body,
            ends,
            undecodable: Vec::new(),
            inserted_at: None,
            resumed: false,
            unanswered_ms: None,
        };
        let (queries, keys) = super::check_queries(&Rows::all(n), &batch, 0).unwrap();
        assert_eq!(keys.len(), n);
        assert_eq!(queries.len(), n / super::CHECK_QUERY_IDS);
        let mut asked = 0;
        for q in &queries {
            let ids = q.matches("'e-").count();
            assert!(ids <= super::CHECK_QUERY_IDS, "{ids} ids in one query");
            assert!(q.len() <= super::CHECK_QUERY_BYTES + 64);
            asked += ids;
        }
        assert_eq!(asked, n, "every row is asked for once");
    }

    #[test]
    fn rows_leave_out_found_ones_and_split_in_halves() {
        let all = Rows::all(6);
        let rest = all.without(&[1, 2, 5]);
        assert_eq!(rest.runs, vec![0..1, 3..5]);
        assert_eq!(rest.len(), 3);
        assert_eq!(rest.without(&[0]).runs, vec![3..5]);
        assert!(all.without(&[0, 1, 2, 3, 4, 5]).is_empty());
        let (l, r) = rest.split();
        assert_eq!((l.runs, r.runs), (vec![0..1], vec![3..5]));
        let (l, r) = Rows::all(5).split();
        assert_eq!((l.runs, r.runs), (vec![0..2], vec![2..5]));
    }

    #[test]
    fn rows_bytes_are_their_rows_in_order() {
        // Rows of 1, 2, 3 and 4 bytes.
        let body = b"abbcccdddd";
        let ends = [1, 3, 6, 10];
        let (b, e) = Rows::all(4).bytes(body, &ends);
        assert_eq!((&b[..], e), (&body[..], vec![1, 3, 6, 10]));
        let (b, e) = Rows::all(4).without(&[1]).bytes(body, &ends);
        assert_eq!((&b[..], e), (&b"acccdddd"[..], vec![1, 4, 8]));
        let (b, e) = Rows::all(4).without(&[0, 2]).bytes(body, &ends);
        assert_eq!((&b[..], e), (&b"bbdddd"[..], vec![2, 6]));
    }
}
