//! The compactor: rolls cold day partitions out of ClickHouse into verified Parquet files.
//!
//! For each cold day (all of it older than `compactor.hot_days`), one *part*:
//! 1. `cutoff` = ClickHouse's `now()` minus `compactor.insert_settle`; the part holds exactly the
//!    day's rows (deduplicated, `FINAL`) with `inserted_at <= cutoff`. Rows inserted later (a
//!    replay, a long outage) stay for the next run and become an additional part.
//! 2. A manifest entry is written in state `exporting` (partition, cutoff, expected rows and
//!    content checksum as ClickHouse computes them).
//! 3. Rows stream out of ClickHouse into a local staging Parquet file (bounded memory), which is
//!    read back and checked against ClickHouse's count and checksum.
//! 4. The file is published to the archive (`<archive>/events/date=YYYY-MM-DD/part-<cutoff>.parquet`,
//!    an atomic put), downloaded again and verified the same way; its size and CRC32C go into
//!    the manifest, now `verified`.
//! 5. Exactly the archived rows are deleted (`ALTER TABLE ... DELETE WHERE day AND inserted_at <=
//!    cutoff`, awaited), and the manifest becomes `dropped`. A plain `DROP PARTITION` would also
//!    remove rows that arrived after the export, and those were never archived.
//!
//! Invariants: nothing is deleted from ClickHouse before the published file was verified
//! against ClickHouse's own count and checksum; every step is idempotent and named by the
//! cutoff, so a crash anywhere followed by a rerun neither loses rows nor archives one twice
//! (the rerun resumes every manifest entry that is not `dropped` before starting new work).

mod checksum;
pub mod manifest;
pub mod parquet_io;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::{ObjectStore, ObjectStoreExt};

pub use checksum::Checksum;
pub use manifest::{ManifestEntry, PartState};

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
    #[error("{0}")]
    Parquet(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("verification failed for {partition}: {what}; nothing was deleted")]
    Verify { partition: String, what: String },
    #[error("mutation deleting archived rows of {0} did not finish within {1:?}; it will be awaited again on the next run")]
    MutationTimeout(String, Duration),
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
}

pub struct Compactor {
    ch: clickhouse::Client,
    db: String,
    store: Arc<dyn ObjectStore>,
    store_url: String,
    staging: PathBuf,
    cfg: CompactorConfig,
    metrics: Metrics,
}

/// Test hook for crash tests: `CT_TEST_COMPACT_PAUSE_AT=<step>` makes the compactor print
/// `paused at <step>` to stderr and sleep there, so a test can `kill -9` it at a known point.
/// Steps: `after_publish` (file written, not verified), `after_verify` (verified, not deleted).
fn pause_point(step: &str) {
    if std::env::var("CT_TEST_COMPACT_PAUSE_AT").as_deref() == Ok(step) {
        eprintln!("paused at {step}");
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Opens the archive: a local directory (the default `<data_dir>/archive`, or a path), or an
/// object store URL (`s3://`, `gs://`, `az://`, `file://`) configured from the environment
/// (`AWS_*`, `GOOGLE_*`, `AZURE_*`).
pub fn open_store(
    url: &str,
    data_dir: &Path,
) -> Result<(Arc<dyn ObjectStore>, String), CompactError> {
    let err = |source| CompactError::Store {
        url: url.to_string(),
        source,
    };
    if url.is_empty() || !url.contains("://") {
        let dir = if url.is_empty() {
            data_dir.join("archive")
        } else {
            PathBuf::from(url)
        };
        std::fs::create_dir_all(&dir)?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(err)?;
        return Ok((Arc::new(store), dir.display().to_string()));
    }
    let parsed = url::Url::parse(url).map_err(|e| {
        err(object_store::Error::Generic {
            store: "archive",
            source: Box::new(e),
        })
    })?;
    let options: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_")
        })
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    let (store, prefix) = object_store::parse_url_opts(&parsed, options).map_err(err)?;
    let store: Arc<dyn ObjectStore> = if prefix.as_ref().is_empty() {
        Arc::from(store)
    } else {
        Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
    };
    Ok((store, url.to_string()))
}

/// "YYYY-MM-DD" of a day number (days since 1970-01-01), proleptic Gregorian.
pub fn day_string(days: i64) -> String {
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

impl Compactor {
    pub fn new(
        ch: &ClickHouseConfig,
        cfg: CompactorConfig,
        data_dir: &Path,
        metrics: Metrics,
    ) -> Result<Self, CompactError> {
        let (store, store_url) = open_store(&cfg.archive_url, data_dir)?;
        let staging = data_dir.join("compactor-staging");
        std::fs::create_dir_all(&staging)?;
        let client = crate::sink::client::client(ch)
            // Archiving a large day sorts on disk rather than failing on memory.
            .with_setting("max_bytes_before_external_sort", "2000000000")
            .with_setting("max_execution_time", "3600");
        Ok(Self {
            ch: client,
            db: ch.database.clone(),
            store,
            store_url,
            staging,
            cfg,
            metrics,
        })
    }

    pub fn archive_url(&self) -> &str {
        &self.store_url
    }

    /// Cold days present in ClickHouse, oldest first, as day numbers.
    async fn cold_days(&self, hot_days: u32) -> Result<Vec<i64>, CompactError> {
        let today = crate::event::RequestContext::now_ms().div_euclid(86_400_000);
        // A day is cold when all of it is older than the hot window.
        let first_hot_day = today - i64::from(hot_days);
        let sql = format!(
            "SELECT DISTINCT toUInt32(toDate(ts)) AS d FROM {}.events WHERE ts < toDateTime({}) ORDER BY d",
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

    /// ClickHouse's own count and checksum of the rows a part must hold.
    async fn expected(&self, day: i64, cutoff: u32) -> Result<Checksum, CompactError> {
        let sql = format!(
            "SELECT count(), sum({}) FROM {}.events FINAL WHERE {}",
            checksum::sql_row_hash(),
            self.db,
            self.day_filter(day, cutoff)
        );
        let (rows, sum): (u64, u64) = self.ch.query(&sql).fetch_one().await?;
        Ok(Checksum { rows, sum })
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

    async fn run_once_inner(
        &self,
        hot_days: u32,
        dry_run: bool,
        progress: &dyn Progress,
    ) -> Result<Vec<Outcome>, CompactError> {
        let started = Instant::now();
        let mut outcomes = Vec::new();
        let mut first_error = None;
        if !dry_run {
            for entry in manifest::pending(self.store.as_ref()).await? {
                match self.resume(entry, progress).await {
                    Ok(o) => outcomes.push(o),
                    Err(e) => {
                        tracing::error!(error = %e, "resuming an archive part failed");
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        for day in self.cold_days(hot_days).await? {
            let result = if dry_run {
                self.dry_run(day).await
            } else {
                self.archive_day(day, progress).await
            };
            match result {
                Ok(o) => outcomes.push(o),
                Err(e) => {
                    tracing::error!(error = %e, day = %day_string(day), "archiving failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        self.metrics
            .compactor_run_duration
            .observe(started.elapsed().as_secs_f64());
        match first_error {
            Some(e) => Err(e),
            None => {
                if !dry_run {
                    self.metrics
                        .compactor_last_success
                        .set(crate::event::RequestContext::now_ms() as f64 / 1000.0);
                }
                Ok(outcomes)
            }
        }
    }

    async fn cutoff(&self) -> Result<u32, CompactError> {
        let now: u32 = self.ch.query("SELECT toUInt32(now())").fetch_one().await?;
        Ok(now.saturating_sub(self.cfg.insert_settle.as_secs() as u32))
    }

    async fn dry_run(&self, day: i64) -> Result<Outcome, CompactError> {
        let cutoff = self.cutoff().await?;
        let expected = self.expected(day, cutoff).await?;
        Ok(Outcome {
            day: day_string(day),
            rows: expected.rows,
            bytes: 0,
            file: format!("events/date={}/part-{cutoff}-*.parquet", day_string(day)),
            action: "would archive",
        })
    }

    async fn archive_day(
        &self,
        day: i64,
        progress: &dyn Progress,
    ) -> Result<Outcome, CompactError> {
        let cutoff = self.cutoff().await?;
        let day_s = day_string(day);
        // A cheap look (no FINAL, no hashing) before recording anything.
        let present: u64 = self
            .ch
            .query(&format!(
                "SELECT count() FROM {}.events WHERE {}",
                self.db,
                self.day_filter(day, cutoff)
            ))
            .fetch_one()
            .await?;
        if present == 0 {
            return Ok(Outcome {
                day: day_s,
                action: "empty",
                ..Outcome::default()
            });
        }
        // The expected count and checksum are filled in once ClickHouse computed them, which
        // happens concurrently with the export.
        let entry = ManifestEntry::new(&day_s, day, cutoff, Checksum::default());
        manifest::store(self.store.as_ref(), &entry).await?;
        progress.partition(&day_s, present);
        self.export_publish_verify(entry, progress, "archived")
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
                self.export_publish_verify(entry, progress, "resumed").await
            }
            PartState::Verified => self.delete_archived(entry, "resumed").await,
            PartState::Dropped => Ok(Outcome {
                day: entry.partition,
                action: "archived",
                ..Outcome::default()
            }),
        }
    }

    async fn export_publish_verify(
        &self,
        mut entry: ManifestEntry,
        progress: &dyn Progress,
        action: &'static str,
    ) -> Result<Outcome, CompactError> {
        let staged = self
            .staging
            .join(format!("{}-{}.parquet", entry.partition, entry.cutoff));
        let t_export = Instant::now();
        // ClickHouse computes its count and checksum while we export: two readers of the same
        // parts, and the wall time of the slower one instead of the sum.
        let (expected, written) = tokio::join!(
            self.expected(entry.day, entry.cutoff),
            self.export(entry.day, entry.cutoff, &staged, progress)
        );
        let (expected, written) = (expected?, written?);
        let export_s = t_export.elapsed().as_secs_f64();
        if expected.rows == 0 {
            // Nothing of this part is left in ClickHouse (only possible for a resumed part
            // whose rows someone else removed): nothing to archive, nothing to delete.
            let _ = tokio::fs::remove_file(&staged).await;
            self.store.delete(&entry.file_path()).await.ok();
            manifest::remove(self.store.as_ref(), &entry).await?;
            return Ok(Outcome {
                day: entry.partition,
                action: "empty",
                ..Outcome::default()
            });
        }
        entry.rows = expected.rows;
        entry.checksum = expected.sum.to_string();
        manifest::store(self.store.as_ref(), &entry).await?;
        let fail = |what: String| CompactError::Verify {
            partition: entry.partition.clone(),
            what,
        };
        if written != expected.rows {
            return Err(fail(format!(
                "exported {written} rows but ClickHouse has {}",
                expected.rows
            )));
        }

        let t_publish = Instant::now();
        let bytes = tokio::fs::read(&staged).await?;
        let crc = crc32c::crc32c(&bytes);
        let size = bytes.len() as u64;
        let target = entry.file_path();
        let store_err = |source| CompactError::Store {
            url: self.store_url.clone(),
            source,
        };
        self.store
            .put(&target, bytes.into())
            .await
            .map_err(store_err)?;
        pause_point("after_publish");

        // Verify what readers will read, not what we meant to write: download the published
        // file, compare it byte-wise (size, CRC32C) with the staged one, then read every row of
        // it back and compare count and content checksum with ClickHouse's.
        let published = self
            .store
            .get(&target)
            .await
            .map_err(store_err)?
            .bytes()
            .await
            .map_err(store_err)?;
        if published.len() as u64 != size || crc32c::crc32c(&published) != crc {
            return Err(fail(
                "published file differs from the staged file (size or CRC32C)".into(),
            ));
        }
        let check = self.staging.join(format!(
            "{}-{}.verify.parquet",
            entry.partition, entry.cutoff
        ));
        tokio::fs::write(&check, &published).await?;
        drop(published);
        let reread = {
            let p = check.clone();
            tokio::task::spawn_blocking(move || parquet_io::checksum_file(&p))
                .await
                .map_err(|e| CompactError::Parquet(e.to_string()))?
                .map_err(CompactError::Parquet)?
        };
        let _ = tokio::fs::remove_file(&check).await;
        if reread != expected {
            return Err(fail(format!(
                "published file read back: {} rows / checksum {} but ClickHouse has {} rows / checksum {}",
                reread.rows, reread.sum, expected.rows, expected.sum
            )));
        }
        tracing::info!(
            partition = %entry.partition,
            rows = entry.rows,
            export_s,
            publish_and_verify_s = t_publish.elapsed().as_secs_f64(),
            "part exported and verified"
        );

        entry.state = PartState::Verified;
        entry.bytes = size;
        entry.crc32c = format!("{crc:08x}");
        manifest::store(self.store.as_ref(), &entry).await?;
        let _ = tokio::fs::remove_file(&staged).await;
        pause_point("after_verify");
        self.delete_archived(entry, action).await
    }

    /// Streams the part's rows into a local Parquet file; returns the rows written.
    async fn export(
        &self,
        day: i64,
        cutoff: u32,
        path: &Path,
        progress: &dyn Progress,
    ) -> Result<u64, CompactError> {
        // No ORDER BY: FINAL already streams a partition in the table's key order on 18.16
        // (current releases may interleave key ranges). Order only affects compression and
        // pruning, never content, and sorting doubled ClickHouse's cost of the export.
        let sql = format!(
            "SELECT ?fields FROM {}.events FINAL WHERE {}",
            self.db,
            self.day_filter(day, cutoff)
        );
        let mut cursor = self.ch.query(&sql).fetch::<parquet_io::EventRef<'_>>()?;
        // Rows are decoded borrowed and appended to Arrow builders here; encoding and zstd run
        // on a blocking thread, fed whole record batches through a bounded channel.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<arrow_array::RecordBatch>(2);
        let path_owned = path.to_path_buf();
        let row_group_rows = self.cfg.row_group_rows;
        let writer = tokio::task::spawn_blocking(move || -> Result<u64, String> {
            let mut w = parquet_io::FileWriter::create(&path_owned, row_group_rows)?;
            while let Some(batch) = rx.blocking_recv() {
                w.write(&batch)?;
            }
            w.finish()
        });
        let mut builder = parquet_io::BatchBuilder::default();
        while let Some(row) = cursor.next().await? {
            builder.push(&row);
            if builder.len() == parquet_io::BATCH_ROWS {
                progress.rows(builder.len() as u64);
                if tx.send(builder.finish()).await.is_err() {
                    break;
                }
            }
        }
        if !builder.is_empty() {
            progress.rows(builder.len() as u64);
            let _ = tx.send(builder.finish()).await;
        }
        drop(tx);
        writer
            .await
            .map_err(|e| CompactError::Parquet(e.to_string()))?
            .map_err(CompactError::Parquet)
    }

    /// Deletes exactly the archived rows and waits for ClickHouse to finish.
    async fn delete_archived(
        &self,
        mut entry: ManifestEntry,
        action: &'static str,
    ) -> Result<Outcome, CompactError> {
        let sql = format!(
            "ALTER TABLE {}.events DELETE WHERE {}",
            self.db,
            self.day_filter(entry.day, entry.cutoff)
        );
        self.ch.query(&sql).execute().await?;
        let deadline = Instant::now() + self.cfg.mutation_timeout;
        loop {
            let pending: u64 = self
                .ch
                .query(&format!(
                    "SELECT count() FROM system.mutations WHERE database = '{}' AND table = 'events' AND is_done = 0",
                    self.db
                ))
                .fetch_one()
                .await?;
            if pending == 0 {
                break;
            }
            if Instant::now() > deadline {
                return Err(CompactError::MutationTimeout(
                    entry.partition.clone(),
                    self.cfg.mutation_timeout,
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        entry.state = PartState::Dropped;
        manifest::store(self.store.as_ref(), &entry).await?;
        self.metrics.compactor_partitions_archived.inc();
        self.metrics.compactor_rows_archived.inc_by(entry.rows);
        self.metrics.compactor_bytes_written.inc_by(entry.bytes);
        tracing::info!(partition = %entry.partition, rows = entry.rows, bytes = entry.bytes, file = %entry.file, "archived");
        Ok(Outcome {
            day: entry.partition.clone(),
            rows: entry.rows,
            bytes: entry.bytes,
            file: entry.file.clone(),
            action,
        })
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
            name: String::new(),
            ts: 1_700_000_000,
            ts_ms: 5,
            received_at: 1_700_000_001,
            url: "https://a.test/p?q=1".into(),
            host: "a.test".into(),
            path: "/p".into(),
            referrer: String::new(),
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
            rage: 0,
            scroll_depth: 0,
            duration_ms: 0,
            props: String::new(),
            browser: "Chrome".into(),
            os: "Linux".into(),
            device: "desktop".into(),
            user_agent: String::new(),
            ip: "203.0.113.0".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::day_string;

    #[test]
    fn day_strings() {
        assert_eq!(day_string(0), "1970-01-01");
        assert_eq!(day_string(19_723), "2024-01-01");
        assert_eq!(day_string(19_782), "2024-02-29");
        assert_eq!(day_string(20_787), "2026-11-30");
    }
}
