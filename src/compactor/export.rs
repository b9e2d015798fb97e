//! One part's way out of ClickHouse: export (`Native` → Arrow → Parquet on two threads),
//! publish, verify against ClickHouse's count and row hashes, then delete exactly the
//! archived rows. The state machine that calls these steps is in `mod.rs`.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStoreExt;

use super::*;

impl Compactor {
    pub(super) async fn export_publish_verify(
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
        let from = format!("{}.{TABLE}", self.db);
        let (rows, streamed) = tokio::join!(
            self.count(entry.day, entry.cutoff, final_),
            self.export(&from, entry.day, entry.cutoff, final_, &staged, progress)
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
        self.publish_verify(&mut entry, &staged, expected).await?;
        tracing::info!(
            partition = %entry.partition,
            rows = entry.rows,
            read = %mode,
            export_s,
            publish_and_verify_s = t_publish.elapsed().as_secs_f64(),
            "part exported and verified"
        );
        let mut outcome = self.delete_archived(entry, action).await?;
        outcome.export = Some((mode.as_str(), export_time));
        Ok(outcome)
    }

    /// Publishes the staged file as the entry's file, streams it back and checks it against
    /// `expected` (ClickHouse's count and row hashes); records the entry `verified`.
    pub(super) async fn publish_verify(
        &self,
        entry: &mut ManifestEntry,
        staged: &Path,
        expected: Checksum,
    ) -> Result<(), CompactError> {
        let fail = |what: String| CompactError::Verify {
            partition: entry.partition.clone(),
            what,
        };
        let target = entry.file_path();
        let staged_digest = publish::upload(
            self.store.as_ref(),
            &self.store_url,
            staged,
            &target,
            self.cfg.upload_part_bytes,
        )
        .await?;
        // Crash tests stop here (FAILPOINTS=compactor::after_publish=pause, feature
        // `failpoints`): the file is published, nothing is verified or deleted.
        fail::fail_point!("compactor::after_publish");

        // Verify what readers will read, not what we meant to write: stream the published
        // file back, compare it byte-wise (size, CRC32C) with the staged one, then read every
        // row of it back and compare count and content checksum with ClickHouse's.
        let check = staged.with_extension("verify.parquet");
        let published =
            publish::download(self.store.as_ref(), &self.store_url, &target, &check).await?;
        if published != staged_digest {
            let _ = tokio::fs::remove_file(&check).await;
            return Err(fail(
                "published file differs from the staged file (size or CRC32C)".into(),
            ));
        }
        let (size, crc) = (published.size, published.crc32c);
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
        entry.state = PartState::Verified;
        entry.bytes = size;
        entry.crc32c = format!("{crc:08x}");
        manifest::store(self.store.as_ref(), entry).await?;
        let _ = tokio::fs::remove_file(staged).await;
        // ... and here: verified, recorded, nothing deleted.
        fail::fail_point!("compactor::after_verify");
        Ok(())
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
    pub(super) async fn export(
        &self,
        from: &str,
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
            "SELECT {} FROM {from}{} WHERE {}",
            native::export_columns(),
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

    /// The check before a resumed `verified` entry's delete: ClickHouse's rows of the part
    /// must still be the archived ones (count and content checksum, read as the export read
    /// them). Rows may have changed since the run that verified the file (an `ALTER UPDATE`,
    /// rows restored from a backup), or the entry may be another deployment's with the same
    /// database and table names on a server without table UUIDs: deleting would then remove
    /// rows the file does not hold.
    /// `Ok(false)`: none of the part's rows is left (the interrupted run's delete finished).
    pub(super) async fn reverify(&self, entry: &ManifestEntry) -> Result<bool, CompactError> {
        let final_ = self.read_mode(entry.day, entry.cutoff).await? == ReadMode::Final;
        let (rows, sum): (u64, u64) = self
            .ch
            .query(&format!(
                "SELECT count(), sum({}) FROM {}.{TABLE}{} WHERE {}",
                checksum::sql_row_hash(),
                self.db,
                if final_ { " FINAL" } else { "" },
                self.day_filter(entry.day, entry.cutoff)
            ))
            .fetch_one()
            .await?;
        if rows == 0 {
            return Ok(false);
        }
        if rows != entry.rows || sum.to_string() != entry.checksum {
            self.metrics
                .compactor_refused
                .get_or_create(&crate::metrics::ReasonLabel { reason: "changed" })
                .inc();
            return Err(CompactError::Changed {
                partition: entry.partition.clone(),
                file: entry.file.clone(),
                cutoff: entry.cutoff,
                archived: entry.rows,
                archived_sum: entry.checksum.clone(),
                rows,
                sum,
            });
        }
        Ok(true)
    }

    /// Deletes exactly the archived rows and waits until ClickHouse has removed them.
    pub(super) async fn delete_archived(
        &self,
        entry: ManifestEntry,
        action: &'static str,
    ) -> Result<Outcome, CompactError> {
        let mutation = self.issue_delete(&entry).await?;
        if mutation.is_none() {
            tracing::warn!(partition = %entry.partition, "the delete's mutation was not found in system.mutations; waiting for the rows to be gone instead");
        }
        self.await_delete(&entry, mutation.as_ref()).await?;
        self.mark_dropped(entry, action).await
    }

    /// Records that the part's rows have left ClickHouse.
    pub(super) async fn mark_dropped(
        &self,
        mut entry: ManifestEntry,
        action: &'static str,
    ) -> Result<Outcome, CompactError> {
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
