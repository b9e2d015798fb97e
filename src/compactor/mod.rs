//! The compactor: rolls cold day partitions out of ClickHouse into verified Parquet files.
//!
//! For each cold day (all of it older than `compactor.hot_days`), one *part*:
//! 1. `cutoff` = ClickHouse's `now()` minus `compactor.insert_settle`; the part holds exactly the
//!    day's rows as analysts see them (deduplicated) with `inserted_at <= cutoff`. Rows inserted
//!    later (a replay, a long outage) stay for the next run and become an additional part.
//! 2. A manifest entry is written in state `exporting`, naming the table it belongs to
//!    (database, table, and the table's UUID where the server has one).
//! 3. Rows stream out of ClickHouse (`Native` format, each with ClickHouse's own hash of the
//!    row) into a local staging Parquet file (bounded memory). A plain read is exact when no
//!    key occurs twice among the part's rows (one merged part, or a `uniqExact` check says so);
//!    otherwise the read uses `FINAL`, which is several times slower. The manifest records
//!    ClickHouse's count (a separate query, so a truncated stream cannot go unnoticed) and the
//!    sum of its row hashes.
//! 4. The file is published to the archive (`<archive>/events/date=YYYY-MM-DD/part-<cutoff>.parquet`;
//!    a multipart upload above `compactor.upload_part_bytes`, see `publish.rs`), streamed back
//!    and verified the same way; its size and CRC32C go into the manifest, now `verified`.
//! 5. Exactly the archived rows are deleted (`ALTER TABLE ... DELETE WHERE day AND inserted_at <=
//!    cutoff`), the compactor waits for *its* mutation to reach the day's parts (not for every
//!    mutation of the table, see `mutation.rs`), and the manifest becomes `dropped`. A plain
//!    `DROP PARTITION` would also remove rows that arrived after the export, never archived.
//!
//! Invariants:
//! - nothing is deleted from ClickHouse before every row of the published file was read back
//!   and matched ClickHouse's own count and row hashes, and a `verified` entry resumed after a
//!   crash is matched against ClickHouse's rows *again* before its delete (the rows may have
//!   changed meanwhile); if they differ, nothing is deleted and the entry is reported;
//! - a compactor acts only on manifest entries of its own table: another deployment's entries
//!   in a shared archive are refused (`clicktrail_compactor_refused_entries_total`);
//! - every step is idempotent and named by the cutoff, so a crash anywhere followed by a rerun
//!   neither loses rows nor archives one twice: the rerun resumes every entry that is not
//!   `dropped` first, and a day whose entry could not be finished is not exported again.

mod checksum;
mod cityhash;
mod cluster;
mod export;
pub mod manifest;
mod mutation;
mod native;
#[doc(hidden)]
pub mod publish;
mod store;
pub use checksum::archive_sql_row_hash;
#[doc(hidden)]
pub use native::record_batches;
pub mod parquet_io;

pub use publish::MIN_PART_BYTES;
pub use store::open_store;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStore;

pub use checksum::Checksum;
pub use manifest::{ManifestEntry, Ownership, PartState, ShardPart, TableIdentity};

/// The table the compactor archives (in the configured database).
pub(crate) const TABLE: &str = "events";

/// Why the compactor refused a manifest entry: the `reason` label of
/// `clicktrail_compactor_refused_entries_total`.
pub const REFUSAL_REASONS: [&str; 2] = ["foreign", "changed"];

use crate::config::{ClickHouseConfig, CompactorConfig};
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error("archive {url}: {source}")]
    Store {
        url: String,
        source: object_store::Error,
    },
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("Parquet: {0}")]
    Parquet(String),
    #[error("Parquet: {0}")]
    ParquetLib(#[from] parquet::errors::ParquetError),
    #[error("Arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("ClickHouse's Native answer: {0}")]
    Native(String),
    #[error("archive file: {0}")]
    Archive(String),
    #[error("ClickHouse's Native answer: {0}")]
    Row(#[from] crate::rowbinary::RowError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("verification failed for {partition}: {what}; nothing was deleted")]
    Verify { partition: String, what: String },
    #[error("mutation {mutation} deleting archived rows of {partition} did not reach the day's parts within {timeout:?}; it will be awaited again on the next run")]
    MutationTimeout {
        partition: String,
        mutation: String,
        timeout: Duration,
    },
    #[error("day {partition}, shard {shard}: {why}; the day is held (nothing of it is exported or deleted) until every replica of the shard answers with the same rows")]
    ShardHeld {
        partition: String,
        shard: u32,
        why: String,
    },
    #[error("cluster: {0}")]
    Cluster(String),
    #[error("manifest entry {file} belongs to {theirs}, not to this compactor's {ours}; it is left alone (two deployments share archive {url}: give each its own prefix)")]
    ForeignEntry {
        file: String,
        theirs: String,
        ours: String,
        url: String,
    },
    #[error("verified part {partition} ({file}) no longer matches ClickHouse: the file holds {archived} rows / checksum {archived_sum}, ClickHouse now {rows} rows / checksum {sum} with inserted_at <= {cutoff}; nothing was deleted, and the day is not archived again until an operator looks (docs/operations.md)")]
    Changed {
        partition: String,
        file: String,
        cutoff: u32,
        archived: u64,
        archived_sum: String,
        rows: u64,
        sum: u64,
    },
}

/// How a part's rows are read out of ClickHouse (logged with each part).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadMode {
    /// The day is one part that a merge produced: merges of a ReplacingMergeTree collapse
    /// duplicate keys, so a plain read is exact. The usual state of a day-old partition.
    MergedPart,
    /// Several parts, but a `uniqExact` over the key found no key twice: a plain read is exact.
    UniqueKeys,
    /// Some key occurs twice: only `FINAL` returns each once (several times slower).
    Final,
}

impl ReadMode {
    fn as_str(self) -> &'static str {
        match self {
            ReadMode::MergedPart => "plain (one merged part)",
            ReadMode::UniqueKeys => "plain (no duplicate keys)",
            ReadMode::Final => "FINAL (duplicate keys)",
        }
    }
}

impl std::fmt::Display for ReadMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Progress callbacks, for the CLI's progress bar; `serve` logs instead.
pub trait Progress: Send + Sync {
    fn partition(&self, _day: &str, _rows: u64) {}
    fn rows(&self, _n: u64) {}
    fn finished(&self, _day: &str) {}
}

pub struct NoProgress;
impl Progress for NoProgress {}

#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub day: String,
    pub rows: u64,
    pub bytes: u64,
    pub file: String,
    /// `archived`, `resumed`, `would archive` (dry run), or `empty`.
    pub action: &'static str,
    /// For a part exported in this run: how its rows were read (see [`ReadMode`]) and how long
    /// the export took (ClickHouse's read to a finished staging file).
    pub export: Option<(&'static str, Duration)>,
}

/// What a run collects while it resumes pending entries and then archives the cold days
/// (one server and a cluster alike): outcomes, the first error (the run goes on past it), and
/// the days whose earlier part could not be finished, which must not be exported again (their
/// rows are still in ClickHouse).
#[derive(Default)]
struct RunState {
    outcomes: Vec<Outcome>,
    first_error: Option<CompactError>,
    unfinished: HashSet<i64>,
}

pub struct Compactor {
    ch: clickhouse::Client,
    ch_cfg: ClickHouseConfig,
    db: String,
    /// `clickhouse.cluster`, when set: archive per shard (`cluster.rs`).
    cluster: Option<String>,
    store: Arc<dyn ObjectStore>,
    store_url: String,
    staging: PathBuf,
    cfg: CompactorConfig,
    metrics: Metrics,
    clock: crate::clock::Clock,
    slow: crate::slow::SlowCalls,
}

/// "YYYY-MM-DD" of a day number (days since 1970-01-01), proleptic Gregorian.
pub fn day_string(days: i64) -> String {
    chrono::DateTime::from_timestamp(days * 86_400, 0)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| format!("day {days}"))
}

impl Compactor {
    /// The clock that says which days are cold (default: the system's).
    pub fn with_clock(mut self, clock: crate::clock::Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Slow-call detection of its steps (`[observability] slow_compactor_step`).
    pub fn with_slow_calls(mut self, slow: crate::slow::SlowCalls) -> Self {
        self.slow = slow;
        self
    }

    /// Runs one step of one part, logging and counting it when it was slow.
    async fn step<T>(
        &self,
        step: &'static str,
        partition: &str,
        rows: u64,
        work: impl std::future::Future<Output = Result<T, CompactError>>,
    ) -> Result<T, CompactError> {
        let started = Instant::now();
        let result = work.await;
        let took = started.elapsed();
        if self.slow.is_slow(crate::slow::SlowKind::Compactor, took) {
            tracing::warn!(
                kind = "compactor",
                step,
                partition,
                rows,
                elapsed_ms = took.as_millis() as u64,
                ok = result.is_ok(),
                "slow compactor step"
            );
        }
        result
    }

    pub fn new(
        ch: &ClickHouseConfig,
        cfg: CompactorConfig,
        data_dir: &Path,
        metrics: Metrics,
    ) -> Result<Self, CompactError> {
        let (store, store_url) = open_store(&cfg.archive_url, data_dir)?;
        let staging = data_dir.join("compactor-staging");
        std::fs::create_dir_all(&staging)?;
        let client = crate::clickhouse::client(ch)
            // Archiving a large day sorts on disk rather than failing on memory.
            .with_setting("max_bytes_before_external_sort", "2000000000")
            .with_setting("max_execution_time", "3600");
        Ok(Self {
            ch: client,
            ch_cfg: ch.clone(),
            db: ch.database.clone(),
            cluster: (!ch.cluster.is_empty()).then(|| ch.cluster.clone()),
            store,
            store_url,
            staging,
            cfg,
            slow: crate::slow::SlowCalls::new(&Default::default(), metrics.clone()),
            metrics,
            clock: crate::clock::Clock::system(),
        })
    }

    pub fn archive_url(&self) -> &str {
        &self.store_url
    }

    /// Cold days present in ClickHouse, oldest first, as day numbers.
    async fn cold_days(&self, hot_days: u32) -> Result<Vec<i64>, CompactError> {
        let today = self.clock.today();
        // A day is cold when all of it is older than the hot window.
        let first_hot_day = today - i64::from(hot_days);
        let sql = format!(
            "SELECT DISTINCT toUInt32(toDate(ts)) AS d FROM {}.{TABLE} WHERE ts < toDateTime({}) ORDER BY d",
            self.db,
            first_hot_day * 86_400
        );
        let days: Vec<u32> = self.ch.query(&sql).fetch_all().await?;
        Ok(days.into_iter().map(i64::from).collect())
    }

    fn day_filter(&self, day: i64, cutoff: u32) -> String {
        format!(
            "toDate(ts) = toDate('{}') AND inserted_at <= toDateTime({cutoff})",
            day_string(day)
        )
    }

    /// ClickHouse's own count of the rows a part must hold.
    async fn count(&self, day: i64, cutoff: u32, final_: bool) -> Result<u64, CompactError> {
        let sql = format!(
            "SELECT count() FROM {}.{TABLE}{} WHERE {}",
            self.db,
            if final_ { " FINAL" } else { "" },
            self.day_filter(day, cutoff)
        );
        Ok(self.ch.query(&sql).fetch_one().await?)
    }

    /// How the part's rows must be read so that each key comes out once, as analysts count
    /// them. A key occurs twice only after a resend that merges have not collapsed yet.
    async fn read_mode(&self, day: i64, cutoff: u32) -> Result<ReadMode, CompactError> {
        let (parts, min_level): (u64, u32) = self
            .ch
            .query(&format!(
                "SELECT count(), min(level) FROM system.parts WHERE database = '{}' \
                 AND table = '{TABLE}' AND active AND partition_id = '{}'",
                self.db,
                mutation::partition_id(day)
            ))
            .fetch_one()
            .await?;
        if parts == 1 && min_level > 0 {
            return Ok(ReadMode::MergedPart);
        }
        let (rows, keys): (u64, u64) = self
            .ch
            .query(&format!(
                "SELECT count(), uniqExact(site, type, path, ts, event_id) FROM {}.{TABLE} WHERE {}",
                self.db,
                self.day_filter(day, cutoff)
            ))
            .fetch_one()
            .await?;
        Ok(if rows == keys {
            ReadMode::UniqueKeys
        } else {
            ReadMode::Final
        })
    }

    /// Runs every pending step, then archives every cold day. One failing day does not stop
    /// the others; the first error is returned after all were tried.
    pub async fn run_once(
        &self,
        hot_days: u32,
        dry_run: bool,
        progress: &dyn Progress,
    ) -> Result<Vec<Outcome>, CompactError> {
        let result = self.run_once_inner(hot_days, dry_run, progress).await;
        if result.is_err() {
            // One count per failed run, including a run that could not even list its work
            // (ClickHouse down, archive unreachable): the failure alert must see those too.
            self.metrics.compactor_failures.inc();
        }
        result
    }

    /// This compactor's table, as manifest entries name it.
    pub async fn identity(&self) -> Result<TableIdentity, CompactError> {
        if let Some(cluster) = &self.cluster {
            // Every server has a Distributed `events` of its own (its own UUID where there are
            // UUIDs), and any of them may be the entry server: the cluster names the table.
            return Ok(TableIdentity {
                database: self.db.clone(),
                table: TABLE.to_string(),
                uuid: None,
                cluster: Some(cluster.clone()),
            });
        }
        Ok(TableIdentity {
            database: self.db.clone(),
            table: TABLE.to_string(),
            uuid: crate::clickhouse::table_uuid(&self.ch, &self.db, TABLE).await?,
            cluster: None,
        })
    }

    async fn run_once_inner(
        &self,
        hot_days: u32,
        dry_run: bool,
        progress: &dyn Progress,
    ) -> Result<Vec<Outcome>, CompactError> {
        let started = Instant::now();
        let (outcomes, first_error) = match &self.cluster {
            Some(cluster) => {
                self.cluster_run(cluster, hot_days, dry_run, progress)
                    .await?
            }
            None => self.single_run(hot_days, dry_run, progress).await?,
        };
        self.metrics
            .compactor_run_duration
            .observe(started.elapsed().as_secs_f64());
        match first_error {
            Some(e) => Err(e),
            None => {
                if !dry_run {
                    self.metrics
                        .compactor_last_success
                        .set(self.clock.now_ms() as f64 / 1000.0);
                }
                Ok(outcomes)
            }
        }
    }

    /// One server: one part per cold day (the steps of the module doc).
    async fn single_run(
        &self,
        hot_days: u32,
        dry_run: bool,
        progress: &dyn Progress,
    ) -> Result<(Vec<Outcome>, Option<CompactError>), CompactError> {
        let mut run = RunState::default();
        if !dry_run {
            let me = self.identity().await?;
            for entry in manifest::pending(self.store.as_ref()).await? {
                let day = entry.day;
                let result = match entry.ownership(&me) {
                    Ownership::Foreign => Err(self.refuse_foreign(&entry, &me)),
                    Ownership::Own | Ownership::Legacy => self
                        .resume(entry.adopted_by(&me), progress)
                        .await
                        .inspect_err(|_| {
                            run.unfinished.insert(day);
                        }),
                };
                match result {
                    Ok(o) => run.outcomes.push(o),
                    Err(e) => {
                        tracing::error!(error = %e, "resuming an archive part failed");
                        run.first_error.get_or_insert(e);
                    }
                }
            }
        }
        self.each_cold_day(hot_days, dry_run, run, |day| async move {
            self.archive_day(day, progress).await.map(|o| vec![o])
        })
        .await
    }

    /// Ends a run: archives every cold day with `archive` (a dry run only says what it would
    /// do), except the days in `run.unfinished`: an earlier part of theirs is still in
    /// ClickHouse, and exporting the day again would archive its rows twice. A day's failure is
    /// logged and the first one kept; the other days still run.
    async fn each_cold_day<F, Fut>(
        &self,
        hot_days: u32,
        dry_run: bool,
        mut run: RunState,
        mut archive: F,
    ) -> Result<(Vec<Outcome>, Option<CompactError>), CompactError>
    where
        F: FnMut(i64) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<Outcome>, CompactError>>,
    {
        for day in self.cold_days(hot_days).await? {
            if run.unfinished.contains(&day) {
                tracing::warn!(day = %day_string(day), "not archived again: an earlier part of the day is unfinished");
                continue;
            }
            let result = if dry_run {
                self.dry_run(day).await.map(|o| vec![o])
            } else {
                archive(day).await
            };
            match result {
                Ok(mut o) => run.outcomes.append(&mut o),
                Err(e) => {
                    tracing::error!(error = %e, day = %day_string(day), "archiving failed");
                    run.first_error.get_or_insert(e);
                }
            }
        }
        Ok((run.outcomes, run.first_error))
    }

    fn refuse_foreign(&self, entry: &ManifestEntry, me: &TableIdentity) -> CompactError {
        self.metrics
            .compactor_refused
            .get_or_create(&crate::metrics::ReasonLabel { reason: "foreign" })
            .inc();
        CompactError::ForeignEntry {
            file: entry.file.clone(),
            theirs: entry.source.as_ref().map_or_else(
                || "an unknown table (an entry without identity in another layout)".into(),
                |s| s.to_string(),
            ),
            ours: me.to_string(),
            url: self.store_url.clone(),
        }
    }

    async fn cutoff(&self) -> Result<u32, CompactError> {
        let now: u32 = self.ch.query("SELECT toUInt32(now())").fetch_one().await?;
        Ok(now.saturating_sub(self.cfg.insert_settle.as_secs() as u32))
    }

    async fn dry_run(&self, day: i64) -> Result<Outcome, CompactError> {
        let cutoff = self.cutoff().await?;
        let rows = self.count(day, cutoff, true).await?;
        Ok(Outcome {
            day: day_string(day),
            rows,
            bytes: 0,
            file: format!(
                "events/date={}/part-{cutoff}-{}.parquet",
                day_string(day),
                if self.cluster.is_some() { "s*" } else { "*" }
            ),
            action: "would archive",
            export: None,
        })
    }

    async fn archive_day(
        &self,
        day: i64,
        progress: &dyn Progress,
    ) -> Result<Outcome, CompactError> {
        let cutoff = self.cutoff().await?;
        let day_s = day_string(day);
        // A cheap look (no FINAL) before recording anything.
        let present = self.count(day, cutoff, false).await?;
        if present == 0 {
            return Ok(Outcome {
                day: day_s,
                action: "empty",
                ..Outcome::default()
            });
        }
        // The expected count and checksum are filled in once the export has them.
        let entry = ManifestEntry::new(
            self.identity().await?,
            &day_s,
            day,
            cutoff,
            Checksum::default(),
        );
        manifest::store(self.store.as_ref(), &entry).await?;
        progress.partition(&day_s, present);
        self.step(
            "archive",
            &day_s,
            present,
            self.export_publish_verify(entry, progress, "archived"),
        )
        .await
    }

    async fn resume(
        &self,
        entry: ManifestEntry,
        progress: &dyn Progress,
    ) -> Result<Outcome, CompactError> {
        tracing::info!(partition = %entry.partition, state = ?entry.state, "resuming an interrupted archive part");
        match entry.state {
            PartState::Exporting => {
                // Nothing was deleted yet: ClickHouse still holds every row of the part, and
                // the export recomputes what the part must contain.
                progress.partition(&entry.partition, entry.rows);
                let (partition, rows) = (entry.partition.clone(), entry.rows);
                self.step(
                    "archive",
                    &partition,
                    rows,
                    self.export_publish_verify(entry, progress, "resumed"),
                )
                .await
            }
            PartState::Verified => {
                let (partition, rows) = (entry.partition.clone(), entry.rows);
                self.step("delete", &partition, rows, async {
                    // A delete the interrupted run issued may still be running: let it finish,
                    // or the check below would see half of the part's rows.
                    for m in self.unfinished_deletes(&entry).await? {
                        self.await_delete(&entry, Some(&m)).await?;
                    }
                    if self.reverify(&entry).await? {
                        self.delete_archived(entry, "resumed").await
                    } else {
                        self.mark_dropped(entry, "resumed").await
                    }
                })
                .await
            }
            PartState::Dropped => Ok(Outcome {
                day: entry.partition,
                action: "archived",
                ..Outcome::default()
            }),
        }
    }

    /// Background loop for `serve`.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            match self.run_once(self.cfg.hot_days, false, &NoProgress).await {
                Ok(parts) => {
                    let archived = parts.iter().filter(|o| o.rows > 0).count();
                    if archived > 0 {
                        tracing::info!(archived, "compactor run finished");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "compactor run failed; retrying next interval")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.interval) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use crate::event::Event;

    pub(crate) fn event() -> Event {
        Event {
            event_id: "id".into(),
            site: "demo".into(),
            kind: "click".into(),
            ts: 1_700_000_000,
            ts_ms: 5,
            received_at: 1_700_000_001,
            url: "https://a.test/p?q=1".into(),
            host: "a.test".into(),
            path: "/p".into(),
            title: "T".into(),
            session_id: "s".into(),
            visitor_id: "v".into(),
            x: 10,
            y: 20,
            viewport_w: 1280,
            viewport_h: 720,
            doc_w: 1280,
            doc_h: 3000,
            selector: "button#go".into(),
            text: "Go".into(),
            browser: "Chrome".into(),
            os: "Linux".into(),
            device: "desktop".into(),
            ip: "203.0.113.0".into(),
            ..Event::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{day_string, open_store};
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn file_urls_are_local_directories() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("arch");
        let (store, shown) = open_store(&format!("file://{}", root.display()), d.path()).unwrap();
        assert_eq!(shown, root.display().to_string());
        store
            .put(
                &"events/x.parquet".into(),
                bytes::Bytes::from_static(b"x").into(),
            )
            .await
            .unwrap();
        assert_eq!(std::fs::read(root.join("events/x.parquet")).unwrap(), b"x");
    }

    #[test]
    fn day_strings() {
        assert_eq!(day_string(0), "1970-01-01");
        assert_eq!(day_string(19_723), "2024-01-01");
        assert_eq!(day_string(19_782), "2024-02-29");
        assert_eq!(day_string(20_787), "2026-11-30");
    }
}
