//! The compactor: rolls cold day partitions out of ClickHouse into verified Parquet files.
//!
//! For each cold day (all of it older than `compactor.hot_days`), one *part*:
//! 1. `cutoff` = ClickHouse's `now()` minus `compactor.insert_settle`; the part holds exactly the
//!    day's rows as analysts see them (deduplicated) with `inserted_at <= cutoff`. Rows inserted
//!    later (a replay, a long outage) stay for the next run and become an additional part.
//! 2. A manifest entry is written in state `exporting`.
//! 3. Rows stream out of ClickHouse (`Native` format, each with ClickHouse's own hash of the
//!    row) into a local staging Parquet file (bounded memory). A plain read is exact when no
//!    key occurs twice among the part's rows (one merged part, or a `uniqExact` check says so);
//!    otherwise the read uses `FINAL`, which is several times slower. The manifest records
//!    ClickHouse's count (a separate query, so a truncated stream cannot go unnoticed) and the
//!    sum of its row hashes.
//! 4. The file is published to the archive (`<archive>/events/date=YYYY-MM-DD/part-<cutoff>.parquet`,
//!    an atomic put), downloaded again and verified the same way; its size and CRC32C go into
//!    the manifest, now `verified`.
//! 5. Exactly the archived rows are deleted (`ALTER TABLE ... DELETE WHERE day AND inserted_at <=
//!    cutoff`, awaited), and the manifest becomes `dropped`. A plain `DROP PARTITION` would also
//!    remove rows that arrived after the export, and those were never archived.
//!
//! Invariants: nothing is deleted from ClickHouse before every row of the published file was
//! read back and matched ClickHouse's own count and row hashes; every step is idempotent and named by the
//! cutoff, so a crash anywhere followed by a rerun neither loses rows nor archives one twice
//! (the rerun resumes every manifest entry that is not `dropped` before starting new work).

mod checksum;
mod cityhash;
pub mod manifest;
mod native;
pub use checksum::archive_sql_row_hash;
#[doc(hidden)]
pub use native::record_batches;
pub mod parquet_io;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
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
    #[error("mutation deleting archived rows of {0} did not finish within {1:?}; it will be awaited again on the next run")]
    MutationTimeout(String, Duration),
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

pub struct Compactor {
    ch: clickhouse::Client,
    ch_cfg: ClickHouseConfig,
    db: String,
    store: Arc<dyn ObjectStore>,
    store_url: String,
    staging: PathBuf,
    cfg: CompactorConfig,
    metrics: Metrics,
    clock: crate::clock::Clock,
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
    // `file://` URLs are local directories too, and need the same fsync.
    let local = url.strip_prefix("file://");
    if url.is_empty() || !url.contains("://") || local.is_some() {
        let dir = match local {
            _ if url.is_empty() => data_dir.join("archive"),
            Some(path) => PathBuf::from(path),
            None => PathBuf::from(url),
        };
        std::fs::create_dir_all(&dir)?;
        // fsync: rows leave ClickHouse once their file is verified, so the file (and the
        // manifest) must survive a power loss by then; object_store's default is not to sync.
        let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
            .map_err(err)?
            .with_fsync(true);
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
            store,
            store_url,
            staging,
            cfg,
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

    /// ClickHouse's own count of the rows a part must hold.
    async fn count(&self, day: i64, cutoff: u32, final_: bool) -> Result<u64, CompactError> {
        let sql = format!(
            "SELECT count() FROM {}.events{} WHERE {}",
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
                 AND table = 'events' AND active AND partition_id = '{}'",
                self.db,
                day_string(day).replace('-', "")
            ))
            .fetch_one()
            .await?;
        if parts == 1 && min_level > 0 {
            return Ok(ReadMode::MergedPart);
        }
        let (rows, keys): (u64, u64) = self
            .ch
            .query(&format!(
                "SELECT count(), uniqExact(site, type, path, ts, event_id) FROM {}.events WHERE {}",
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
                        .set(self.clock.now_ms() as f64 / 1000.0);
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
        let rows = self.count(day, cutoff, true).await?;
        Ok(Outcome {
            day: day_string(day),
            rows,
            bytes: 0,
            file: format!("events/date={}/part-{cutoff}-*.parquet", day_string(day)),
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
        let mode = self.read_mode(entry.day, entry.cutoff).await?;
        let final_ = mode == ReadMode::Final;
        let (rows, streamed) = tokio::join!(
            self.count(entry.day, entry.cutoff, final_),
            self.export(entry.day, entry.cutoff, final_, &staged, progress)
        );
        let (rows, streamed) = (rows?, streamed?);
        let export_time = t_export.elapsed();
        let export_s = export_time.as_secs_f64();
        // ClickHouse's count, from its own query, and the sum of the hashes ClickHouse computed
        // for the rows it sent: what the published file must reproduce.
        let expected = Checksum {
            rows,
            sum: streamed.sum,
        };
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
        if streamed.rows != expected.rows {
            return Err(fail(format!(
                "exported {} rows but ClickHouse has {}",
                streamed.rows, expected.rows
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
        // Crash tests stop here (FAILPOINTS=compactor::after_publish=pause, feature
        // `failpoints`): the file is published, nothing is verified or deleted.
        fail::fail_point!("compactor::after_publish");

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
                .map_err(|e| CompactError::Parquet(e.to_string()))??
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
            read = %mode,
            export_s,
            publish_and_verify_s = t_publish.elapsed().as_secs_f64(),
            "part exported and verified"
        );

        entry.state = PartState::Verified;
        entry.bytes = size;
        entry.crc32c = format!("{crc:08x}");
        manifest::store(self.store.as_ref(), &entry).await?;
        let _ = tokio::fs::remove_file(&staged).await;
        // ... and here: verified, recorded, nothing deleted.
        fail::fail_point!("compactor::after_verify");
        let mut outcome = self.delete_archived(entry, action).await?;
        outcome.export = Some((mode.as_str(), export_time));
        Ok(outcome)
    }

    /// Streams the part's rows into a local Parquet file; returns the rows written and the sum
    /// of ClickHouse's hashes of them.
    ///
    /// Two threads run at once, so that ClickHouse's read, decoding and Parquet encoding
    /// overlap, with a bounded channel of record batches between them (memory stays at a few
    /// batches and one row group whatever the size of the day):
    /// - a reader with its own single-threaded runtime and ClickHouse client receives the
    ///   answer and decodes it as it arrives. ClickHouse 18.16 sends 4 KiB HTTP chunks (77k for
    ///   a million rows); on the shared multi-threaded runtime every chunk was a wake-up across
    ///   threads, which cost more CPU than decoding them.
    /// - the writer encodes and compresses batches into the file (its columns on two threads).
    ///
    /// The answer is not compressed: on the same host or LAN, LZ4 costs both sides more CPU than
    /// the bytes it saves.
    async fn export(
        &self,
        day: i64,
        cutoff: u32,
        final_: bool,
        path: &Path,
        progress: &dyn Progress,
    ) -> Result<Checksum, CompactError> {
        // No ORDER BY: each block ClickHouse sends is a run in table order (one part's
        // contiguous key range; with FINAL the whole stream is), which is what compression and
        // row-group pruning need. Sorting doubled ClickHouse's cost of the export.
        let sql = format!(
            "SELECT {} FROM {}.events{} WHERE {}",
            native::export_columns(),
            self.db,
            if final_ { " FINAL" } else { "" },
            self.day_filter(day, cutoff)
        );
        let client = crate::clickhouse::client(&self.ch_cfg)
            .with_compression(clickhouse::Compression::None)
            .with_setting("max_execution_time", "3600");
        let (batch_tx, batch_rx) = std::sync::mpsc::sync_channel::<arrow_array::RecordBatch>(2);
        let decoded_rows = Arc::new(AtomicU64::new(0));
        let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
        let reader_rows = decoded_rows.clone();
        std::thread::Builder::new()
            .name("compactor-read".into())
            .spawn(move || {
                let _ = done_tx.send(read_native(client, sql, batch_tx, reader_rows));
            })?;
        let path_owned = path.to_path_buf();
        let row_group_rows = self.cfg.row_group_rows;
        let write = tokio::task::spawn_blocking(move || -> Result<u64, CompactError> {
            let mut w = parquet_io::FileWriter::create(&path_owned, row_group_rows)?;
            while let Ok(batch) = batch_rx.recv() {
                w.write(&batch)?;
            }
            w.finish()
        });
        let mut reported = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let read = loop {
            tokio::select! {
                r = &mut done_rx => break r.map_err(|_| CompactError::Parquet("the export reader thread died".into()))?,
                _ = tick.tick() => {
                    let now = decoded_rows.load(Ordering::Relaxed);
                    progress.rows(now - reported);
                    reported = now;
                }
            }
        };
        let written = write
            .await
            .map_err(|e| CompactError::Parquet(e.to_string()))?;
        // A writer failure also stops the reader; the writer's error is the one to report.
        let written = written?;
        let seen = read?;
        progress.rows(seen.rows.saturating_sub(reported));
        if written != seen.rows {
            return Err(CompactError::Parquet(format!(
                "wrote {written} rows of {} received",
                seen.rows
            )));
        }
        Ok(seen)
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
            export: None,
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

/// The export's reader thread: runs the query on its own single-threaded runtime and decodes
/// the `Native` answer chunk by chunk into record batches for the writer.
fn read_native(
    client: clickhouse::Client,
    sql: String,
    batches: std::sync::mpsc::SyncSender<arrow_array::RecordBatch>,
    decoded_rows: Arc<AtomicU64>,
) -> Result<Checksum, CompactError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut query = client.query(&sql);
        for (k, v) in crate::clickhouse::EXPORT_SETTINGS {
            query = query.with_setting(*k, *v);
        }
        let mut cursor = query.fetch_bytes("Native")?;
        let mut decoder = native::NativeDecoder::new(parquet_io::BATCH_ROWS);
        let mut send = |batch| {
            batches
                .send(batch)
                .map_err(|_| CompactError::Parquet("the Parquet writer stopped".into()))
        };
        while let Some(chunk) = cursor.next().await? {
            decoder.feed(&chunk, &mut send)?;
            decoded_rows.store(decoder.seen().rows, Ordering::Relaxed);
        }
        let (last, seen) = decoder.finish()?;
        if let Some(batch) = last {
            send(batch)?;
        }
        Ok(seen)
    })
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
