//! The compactor on a cluster (`clickhouse.cluster`): one verified file set per (day, shard),
//! one delete `ON CLUSTER` for the day, awaited on every replica.
//!
//! For a cold day, with one `cutoff` for all shards:
//! 1. The shards and their replicas come from the entry server's `system.clusters`; every
//!    replica is reached from the entry server over the native protocol,
//!    `remote('host:port', db, events_local, user, password)`, with the configured credentials.
//! 2. **Every replica of every shard must agree** on the count and content checksum of the
//!    part's rows (deduplicated as analysts see them: `FINAL` where a key occurs twice), before
//!    anything is recorded. A replica that does not answer, or holds other rows (it lags, or
//!    missed a replicated part), holds the whole day: a part exported from it would miss rows,
//!    and a delete it never fetched would leave the rows on it. Nothing is written, nothing is
//!    deleted, the next run tries again.
//! 3. A manifest entry per shard with rows (`part-<cutoff>-s<N>`), all written `exporting`
//!    before the first export, so a crash leaves every shard of the day on record.
//! 4. Per shard: export pinned to its first replica (`remote('that one', ...)`), and the stream
//!    must reproduce exactly what the replicas agreed on; publish, read back, verify (the
//!    single-server steps of `export.rs`), entry `verified`.
//! 5. When every shard's entry is verified: `ALTER TABLE events_local ON CLUSTER c DELETE WHERE
//!    day AND inserted_at <= cutoff`, then wait until **on every replica** the delete is listed
//!    in `system.mutations`, every active part of the day's partition is at or past its block
//!    number, and no row of the part is left; every entry `dropped`. (On 18.16 the ON CLUSTER
//!    answer comes at once, and a replica that has not fetched the mutation yet lists nothing:
//!    "nothing pending" alone would pass too early.)
//!
//! Why per shard rather than through the Distributed `events`: a read through it picks one
//! replica per shard and says neither which (18.16 has no `_shard_num`) nor whether it lags; a
//! delete needs the local tables anyway; and a shard's file can be checked against that shard
//! alone, where a day-wide file would have to be checked against every shard at once.
//!
//! Invariants (besides those of the single-server compactor):
//! - nothing is deleted before every shard's part of the day is verified, and a `verified` entry
//!   resumed after a crash is checked again on every replica (its rows, or none of them where
//!   the interrupted delete already ran) before the delete is issued or awaited;
//! - a rerun finds every shard's entry by (day, cutoff, shard): verified parts are not exported
//!   again, and a shard with rows but no entry (a crash between two entries) gets one before
//!   the delete, which covers every shard;
//! - entries of a shard the cluster no longer lists are not acted on (the layout changed: an
//!   operator decides).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use object_store::ObjectStoreExt;

use super::manifest::ShardPart;
use super::mutation::{is_delete_of, partition_id, version_of, MutationRow};
use super::*;

/// The shards' table, under the configured database.
pub(crate) const LOCAL_TABLE: &str = "events_local";

/// One shard of the cluster: its `shard_num` and replicas (`host:port`, native protocol) in
/// `replica_num` order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shard {
    pub(crate) num: u32,
    pub(crate) replicas: Vec<String>,
}

#[derive(Debug, serde::Deserialize, ::clickhouse::Row)]
struct ClusterRow {
    shard_num: u32,
    host_address: String,
    port: u16,
}

/// Groups `system.clusters` rows `(shard_num, "host:port")` into shards, by shard number, each
/// keeping its replicas in the order given.
pub(crate) fn shards_of(rows: impl IntoIterator<Item = (u32, String)>) -> Vec<Shard> {
    let mut by: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for (num, addr) in rows {
        let replicas = by.entry(num).or_default();
        if !replicas.contains(&addr) {
            replicas.push(addr);
        }
    }
    by.into_iter()
        .map(|(num, replicas)| Shard { num, replicas })
        .collect()
}

/// A ClickHouse string literal.
pub(crate) fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// `remote()` over exactly one replica, logged in as `user`: without credentials remote() logs
/// in as `default`, which a cluster with passwords refuses (or worse, lets through with other
/// rights). The password is in the query's text, so the entry server's `system.query_log`
/// holds it (18.16 has no other way to pass it).
pub(crate) fn remote(addr: &str, db: &str, table: &str, user: &str, password: &str) -> String {
    format!(
        "remote({}, {db}, {table}, {}, {})",
        quote(addr),
        quote(user),
        quote(password)
    )
}

/// What one replica holds of a part: count and content checksum as analysts count them, and
/// whether reading them so needs `FINAL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct View {
    sum: Checksum,
    final_: bool,
}

/// Where a replica is with the delete of a part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeleteState {
    /// `system.mutations` on the replica lists no delete of the part.
    NotListed,
    /// Listed, and some active part of the day is below its block number.
    Pending,
    /// Listed and applied to every active part of the day.
    Applied,
}

/// The lowest block number of the part's deletes listed on one replica, for `partition`.
fn applied_from(rows: &[MutationRow], day: i64, cutoff: u32, partition: &str) -> Option<i64> {
    rows.iter()
        .filter(|m| is_delete_of(&m.command, day, cutoff))
        .filter_map(|m| version_of(m, partition))
        .min()
}

/// One (day, cutoff)'s part of a shard as a run finds it.
enum Plan {
    /// No entry, or `exporting`: export from the replicas' agreed view.
    Export(Option<ManifestEntry>, View),
    /// `verified` (checked again) or `dropped`: nothing to export.
    Keep(ManifestEntry),
}

impl Compactor {
    fn remote(&self, addr: &str, db: &str, table: &str) -> String {
        remote(
            addr,
            db,
            table,
            &self.ch_cfg.user,
            self.ch_cfg.password.expose(),
        )
    }

    /// The cluster's shards, from the entry server's `system.clusters`.
    async fn shards(&self, cluster: &str) -> Result<Vec<Shard>, CompactError> {
        let rows: Vec<ClusterRow> = self
            .ch
            .query(
                "SELECT shard_num, host_address, port FROM system.clusters WHERE cluster = ? \
                 ORDER BY shard_num, replica_num",
            )
            .bind(cluster)
            .fetch_all()
            .await?;
        let shards = shards_of(
            rows.into_iter()
                .map(|r| (r.shard_num, format!("{}:{}", r.host_address, r.port))),
        );
        if shards.is_empty() {
            return Err(CompactError::Cluster(format!(
                "cluster `{cluster}` is not in the entry server's remote_servers (clickhouse.cluster)"
            )));
        }
        Ok(shards)
    }

    /// One replica's view of the part's rows.
    async fn replica_view(&self, addr: &str, day: i64, cutoff: u32) -> Result<View, CompactError> {
        let from = self.remote(addr, &self.db, LOCAL_TABLE);
        let filter = self.day_filter(day, cutoff);
        let hash = checksum::sql_row_hash();
        let (rows, keys, sum): (u64, u64, u64) = self
            .ch
            .query(&format!(
                "SELECT count(), uniqExact(site, type, path, ts, event_id), sum({hash}) \
                 FROM {from} WHERE {filter}"
            ))
            .fetch_one()
            .await?;
        if rows == keys {
            return Ok(View {
                sum: Checksum { rows, sum },
                final_: false,
            });
        }
        // A key occurs twice (a resend not merged yet): only FINAL counts each once.
        let (rows, sum): (u64, u64) = self
            .ch
            .query(&format!(
                "SELECT count(), sum({hash}) FROM {from} FINAL WHERE {filter}"
            ))
            .fetch_one()
            .await?;
        Ok(View {
            sum: Checksum { rows, sum },
            final_: true,
        })
    }

    /// Every replica of `shard` must hold the same rows of the part; returns the first
    /// replica's view (the one exports are pinned to).
    async fn shard_agreement(
        &self,
        shard: &Shard,
        day: i64,
        cutoff: u32,
    ) -> Result<View, CompactError> {
        let held = |why: String| CompactError::ShardHeld {
            partition: day_string(day),
            shard: shard.num,
            why,
        };
        let mut first: Option<(&str, View)> = None;
        for addr in &shard.replicas {
            let v = self
                .replica_view(addr, day, cutoff)
                .await
                .map_err(|e| held(format!("replica {addr} does not answer ({e})")))?;
            match first {
                None => first = Some((addr, v)),
                Some((a0, v0)) if v0.sum != v.sum => {
                    return Err(held(format!(
                        "its replicas disagree: {a0} holds {} rows / checksum {}, {addr} holds {} rows / checksum {} (a replica lags or missed a part)",
                        v0.sum.rows, v0.sum.sum, v.sum.rows, v.sum.sum
                    )))
                }
                Some(_) => {}
            }
        }
        first
            .map(|(_, v)| v)
            .ok_or_else(|| held("it has no replicas".into()))
    }

    /// The check before a resumed `verified` entry's delete, on every replica of its shard:
    /// each holds exactly the archived rows, or none of them (the interrupted delete ran there).
    async fn reverify_shard(
        &self,
        entry: &ManifestEntry,
        shard: &Shard,
    ) -> Result<(), CompactError> {
        for addr in &shard.replicas {
            let v = self
                .replica_view(addr, entry.day, entry.cutoff)
                .await
                .map_err(|e| CompactError::ShardHeld {
                    partition: entry.partition.clone(),
                    shard: shard.num,
                    why: format!("replica {addr} does not answer ({e})"),
                })?;
            if v.sum.rows != 0
                && (v.sum.rows != entry.rows || v.sum.sum.to_string() != entry.checksum)
            {
                self.metrics
                    .compactor_refused
                    .get_or_create(&crate::metrics::ReasonLabel { reason: "changed" })
                    .inc();
                return Err(CompactError::Changed {
                    partition: format!("{} (shard {}, replica {addr})", entry.partition, shard.num),
                    file: entry.file.clone(),
                    cutoff: entry.cutoff,
                    archived: entry.rows,
                    archived_sum: entry.checksum.clone(),
                    rows: v.sum.rows,
                    sum: v.sum.sum,
                });
            }
        }
        Ok(())
    }

    /// Runs every pending step, then archives every cold day, one file set per shard.
    pub(super) async fn cluster_run(
        &self,
        cluster: &str,
        hot_days: u32,
        dry_run: bool,
        progress: &dyn Progress,
    ) -> Result<(Vec<Outcome>, Option<CompactError>), CompactError> {
        let shards = self.shards(cluster).await?;
        let mut run = RunState::default();
        if !dry_run {
            let me = self.identity().await?;
            // Every entry of a (day, cutoff) that is not finished, with its finished siblings:
            // the delete covers all shards, so all of them are looked at together.
            let mut days: BTreeMap<(i64, u32), Vec<ManifestEntry>> = BTreeMap::new();
            for entry in manifest::all(self.store.as_ref()).await? {
                match entry.ownership(&me) {
                    Ownership::Own => days
                        .entry((entry.day, entry.cutoff))
                        .or_default()
                        .push(entry),
                    _ if entry.state == PartState::Dropped => {}
                    _ => {
                        let e = self.refuse_foreign(&entry, &me);
                        tracing::error!(error = %e, "resuming an archive part failed");
                        run.first_error.get_or_insert(e);
                    }
                }
            }
            for ((day, cutoff), group) in days {
                if group.iter().all(|e| e.state == PartState::Dropped) {
                    continue;
                }
                tracing::info!(day = %day_string(day), cutoff, shards = group.len(), "resuming an interrupted archive of a day");
                match self
                    .finish_day(day, cutoff, group, &shards, progress, "resumed")
                    .await
                {
                    Ok(mut o) => run.outcomes.append(&mut o),
                    Err(e) => {
                        run.unfinished.insert(day);
                        tracing::error!(error = %e, "resuming an archive part failed");
                        run.first_error.get_or_insert(e);
                    }
                }
            }
        }
        let shards = &shards;
        self.each_cold_day(hot_days, dry_run, run, |day| {
            self.archive_day_cluster(day, shards, progress)
        })
        .await
    }

    async fn archive_day_cluster(
        &self,
        day: i64,
        shards: &[Shard],
        progress: &dyn Progress,
    ) -> Result<Vec<Outcome>, CompactError> {
        let cutoff = self.cutoff().await?;
        // A cheap look through the Distributed table before asking every replica.
        if self.count(day, cutoff, false).await? == 0 {
            return Ok(vec![Outcome {
                day: day_string(day),
                action: "empty",
                ..Outcome::default()
            }]);
        }
        self.finish_day(day, cutoff, Vec::new(), shards, progress, "archived")
            .await
    }

    /// Brings every shard's part of (day, cutoff) to `dropped`, starting from `entries` (the
    /// day's entries an earlier run left, or none).
    async fn finish_day(
        &self,
        day: i64,
        cutoff: u32,
        entries: Vec<ManifestEntry>,
        shards: &[Shard],
        progress: &dyn Progress,
        action: &'static str,
    ) -> Result<Vec<Outcome>, CompactError> {
        let day_s = day_string(day);
        for e in &entries {
            match &e.shard {
                Some(s) if shards.iter().any(|x| x.num == s.num) => {}
                other => {
                    return Err(CompactError::Cluster(format!(
                        "manifest entry {} is for {}, which the cluster does not list now; nothing of {day_s} is deleted until an operator decides (docs/operations.md)",
                        e.file,
                        other.as_ref().map_or_else(|| "no shard".to_string(), |s| format!("shard {}", s.num))
                    )))
                }
            }
        }
        // 1. Every shard is looked at before anything is recorded or exported: a replica that
        //    does not answer or disagrees holds the whole day.
        let verified_before = entries.iter().any(|e| e.state == PartState::Verified);
        if verified_before {
            // An interrupted delete may be half-way on some replica: let it finish there, or
            // the check below would see half of the part's rows.
            self.await_deletes(day, cutoff, shards, false).await?;
        }
        let mut plans = Vec::new();
        for shard in shards {
            let entry = entries
                .iter()
                .find(|e| e.shard.as_ref().map(|s| s.num) == Some(shard.num))
                .cloned();
            let plan = match entry {
                Some(e) if e.state == PartState::Dropped => Plan::Keep(e),
                Some(e) if e.state == PartState::Verified => {
                    self.reverify_shard(&e, shard).await?;
                    Plan::Keep(e)
                }
                e => Plan::Export(e, self.shard_agreement(shard, day, cutoff).await?),
            };
            plans.push((shard, plan));
        }
        // 2. Every shard with rows and no entry gets one before the first export.
        let me = self.identity().await?;
        let mut parts: Vec<(ManifestEntry, Option<(&Shard, View)>)> = Vec::new();
        for (shard, plan) in plans {
            match plan {
                Plan::Keep(e) => parts.push((e, None)),
                Plan::Export(e, view) if view.sum.rows == 0 => {
                    if let Some(e) = e {
                        // None of the part's rows is left on the shard (someone removed them).
                        self.store.delete(&e.file_path()).await.ok();
                        manifest::remove(self.store.as_ref(), &e).await?;
                    }
                }
                Plan::Export(e, view) => {
                    let part = ShardPart {
                        num: shard.num,
                        replicas: shard.replicas.clone(),
                    };
                    let mut e = e.unwrap_or_else(|| {
                        ManifestEntry::for_shard(
                            me.clone(),
                            &day_s,
                            day,
                            cutoff,
                            part.clone(),
                            view.sum,
                        )
                    });
                    e.rows = view.sum.rows;
                    e.checksum = view.sum.sum.to_string();
                    e.shard = Some(part);
                    manifest::store(self.store.as_ref(), &e).await?;
                    parts.push((e, Some((shard, view))));
                }
            }
        }
        // 3. Export, publish and verify each shard's part.
        let mut exports = Vec::new();
        for (e, todo) in &mut parts {
            if let Some((shard, view)) = todo {
                let label = format!("{day_s} shard {}", shard.num);
                progress.partition(&label, e.rows);
                let started = Instant::now();
                self.step(
                    "archive",
                    &label,
                    e.rows,
                    self.export_shard(e, shard, *view, progress),
                )
                .await?;
                progress.finished(&label);
                exports.push((
                    e.file.clone(),
                    if view.final_ {
                        "FINAL (duplicate keys)"
                    } else {
                        "plain (no duplicate keys)"
                    },
                    started.elapsed(),
                ));
            }
        }
        // 4. One delete for every shard, awaited on every replica.
        let live: Vec<ManifestEntry> = parts
            .into_iter()
            .map(|(e, _)| e)
            .filter(|e| e.state != PartState::Dropped)
            .collect();
        if live.is_empty() {
            return Ok(Vec::new());
        }
        let rows: u64 = live.iter().map(|e| e.rows).sum();
        self.step(
            "delete",
            &day_s,
            rows,
            self.delete_on_cluster(day, cutoff, shards),
        )
        .await?;
        let mut outcomes = Vec::new();
        for e in live {
            let export = exports
                .iter()
                .find(|(f, _, _)| *f == e.file)
                .map(|(_, mode, took)| (*mode, *took));
            let mut o = self.mark_dropped(e, action).await?;
            o.export = export;
            outcomes.push(o);
        }
        Ok(outcomes)
    }

    /// Exports the shard's part from its first replica and verifies the published file against
    /// what every replica agreed on.
    async fn export_shard(
        &self,
        entry: &mut ManifestEntry,
        shard: &Shard,
        view: View,
        progress: &dyn Progress,
    ) -> Result<(), CompactError> {
        let pinned = &shard.replicas[0];
        let staged = self.staging.join(format!(
            "{}-{}-s{}.parquet",
            entry.partition, entry.cutoff, shard.num
        ));
        let t_export = Instant::now();
        let streamed = self
            .export(
                &self.remote(pinned, &self.db, LOCAL_TABLE),
                entry.day,
                entry.cutoff,
                view.final_,
                &staged,
                progress,
            )
            .await?;
        let export_s = t_export.elapsed().as_secs_f64();
        if streamed != view.sum {
            let _ = tokio::fs::remove_file(&staged).await;
            return Err(CompactError::Verify {
                partition: format!("{} (shard {})", entry.partition, shard.num),
                what: format!(
                    "replica {pinned} sent {} rows / checksum {} but the shard's replicas agreed on {} rows / checksum {}",
                    streamed.rows, streamed.sum, view.sum.rows, view.sum.sum
                ),
            });
        }
        let t_publish = Instant::now();
        self.publish_verify(entry, &staged, view.sum).await?;
        tracing::info!(
            partition = %entry.partition,
            shard = shard.num,
            replica = %pinned,
            rows = entry.rows,
            final_ = view.final_,
            export_s,
            publish_and_verify_s = t_publish.elapsed().as_secs_f64(),
            "shard part exported and verified"
        );
        Ok(())
    }

    /// Where `addr` is with the deletes of (day, cutoff).
    async fn delete_state(
        &self,
        addr: &str,
        day: i64,
        cutoff: u32,
    ) -> Result<DeleteState, CompactError> {
        let rows: Vec<MutationRow> = self
            .ch
            .query(&format!(
                "SELECT mutation_id, command, block_numbers.partition_id, block_numbers.number \
                 FROM {} WHERE database = {} AND table = {}",
                self.remote(addr, "system", "mutations"),
                quote(&self.db),
                quote(LOCAL_TABLE)
            ))
            .fetch_all()
            .await?;
        let partition = partition_id(day);
        let Some(version) = applied_from(&rows, day, cutoff, &partition) else {
            return Ok(DeleteState::NotListed);
        };
        let behind: u64 = self
            .ch
            .query(&format!(
                "SELECT count() FROM {} WHERE database = {} AND table = {} AND active \
                 AND partition_id = {} AND data_version < {version}",
                self.remote(addr, "system", "parts"),
                quote(&self.db),
                quote(LOCAL_TABLE),
                quote(&partition)
            ))
            .fetch_one()
            .await?;
        Ok(if behind == 0 {
            DeleteState::Applied
        } else {
            DeleteState::Pending
        })
    }

    /// Issues the day's delete `ON CLUSTER` unless every shard already lists one (an
    /// interrupted run's), then waits on every replica.
    async fn delete_on_cluster(
        &self,
        day: i64,
        cutoff: u32,
        shards: &[Shard],
    ) -> Result<(), CompactError> {
        let Some(cluster) = &self.cluster else {
            return Err(CompactError::Cluster("no cluster configured".into()));
        };
        let mut missing = false;
        for shard in shards {
            let mut listed = false;
            for addr in &shard.replicas {
                listed |= self.delete_state(addr, day, cutoff).await? != DeleteState::NotListed;
            }
            missing |= !listed;
        }
        if missing {
            // One row per server in the answer; with wait_end_of_query a server's error comes
            // as the status. A second identical delete (a shard missed the first) is harmless.
            self.ch
                .query(&format!(
                    "ALTER TABLE {}.{LOCAL_TABLE} ON CLUSTER {cluster} DELETE WHERE {}",
                    self.db,
                    self.day_filter(day, cutoff)
                ))
                .with_setting("wait_end_of_query", "1")
                .with_setting(
                    "distributed_ddl_task_timeout",
                    self.cfg.mutation_timeout.as_secs().max(1).to_string(),
                )
                .execute()
                .await?;
        }
        self.await_deletes(day, cutoff, shards, true).await
    }

    /// Waits until the part's delete is applied on every replica (`listed`: it must be listed
    /// there; otherwise only deletes already listed are awaited), then, with `listed`,
    /// confirms that no replica holds a row of the part.
    async fn await_deletes(
        &self,
        day: i64,
        cutoff: u32,
        shards: &[Shard],
        listed: bool,
    ) -> Result<(), CompactError> {
        let deadline = Instant::now() + self.cfg.mutation_timeout;
        let replicas: Vec<&String> = shards.iter().flat_map(|s| &s.replicas).collect();
        loop {
            let mut waiting = Vec::new();
            for addr in &replicas {
                let state = self.delete_state(addr, day, cutoff).await?;
                let done = match state {
                    DeleteState::Applied => true,
                    DeleteState::NotListed => !listed,
                    DeleteState::Pending => false,
                };
                if !done {
                    waiting.push(format!("{addr} ({state:?})"));
                }
            }
            if waiting.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(CompactError::MutationTimeout {
                    partition: day_string(day),
                    mutation: format!(
                        "the delete ON CLUSTER, not applied on {}",
                        waiting.join(", ")
                    ),
                    timeout: self.cfg.mutation_timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !listed {
            return Ok(());
        }
        for addr in replicas {
            let left: u64 = self
                .ch
                .query(&format!(
                    "SELECT count() FROM {} WHERE {}",
                    self.remote(addr, &self.db, LOCAL_TABLE),
                    self.day_filter(day, cutoff)
                ))
                .fetch_one()
                .await?;
            if left > 0 {
                return Err(CompactError::Verify {
                    partition: day_string(day),
                    what: format!(
                        "{left} rows of the part are still on replica {addr} after its delete was applied"
                    ),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_grouped_from_system_clusters() {
        let rows = [
            (1, "127.0.0.1:31100"),
            (1, "127.0.0.1:31200"),
            (2, "127.0.0.1:31300"),
            (2, "127.0.0.1:31400"),
        ]
        .map(|(n, a)| (n, a.to_string()));
        assert_eq!(
            shards_of(rows),
            vec![
                Shard {
                    num: 1,
                    replicas: vec!["127.0.0.1:31100".into(), "127.0.0.1:31200".into()]
                },
                Shard {
                    num: 2,
                    replicas: vec!["127.0.0.1:31300".into(), "127.0.0.1:31400".into()]
                },
            ]
        );
        // Out of order, one-replica shards, a repeated row: grouped by number, order kept.
        let rows = [(3, "c:9000"), (1, "a:9000"), (3, "d:9000"), (1, "a:9000")]
            .map(|(n, a)| (n, a.to_string()));
        assert_eq!(
            shards_of(rows),
            vec![
                Shard {
                    num: 1,
                    replicas: vec!["a:9000".into()]
                },
                Shard {
                    num: 3,
                    replicas: vec!["c:9000".into(), "d:9000".into()]
                },
            ]
        );
        assert_eq!(shards_of(Vec::new()), Vec::new());
    }

    #[test]
    fn remote_passes_the_configured_credentials_quoted() {
        assert_eq!(
            remote(
                "127.0.0.1:31100",
                "clicktrail",
                "events_local",
                "ct",
                "pa'ss\\w"
            ),
            r"remote('127.0.0.1:31100', clicktrail, events_local, 'ct', 'pa\'ss\\w')"
        );
        assert_eq!(
            remote("h:1", "system", "mutations", "default", ""),
            "remote('h:1', system, mutations, 'default', '')"
        );
    }

    #[test]
    fn the_lowest_listed_delete_of_the_part_counts() {
        let row = |id: &str, command: &str, numbers: &[i64]| MutationRow {
            id: id.into(),
            command: command.into(),
            partitions: vec!["20261129".into()],
            numbers: numbers.to_vec(),
        };
        // 18.16's command text for an ON CLUSTER delete, as each replica lists it.
        let ours = "DELETE WHERE (toDate(ts) = toDate('2026-11-29')) AND (inserted_at <= toDateTime(1796190161))";
        let day = 20_786; // 2026-11-29
        assert_eq!(day_string(day), "2026-11-29");
        let rows = vec![
            row("0000000003", "UPDATE x = 1 WHERE 1", &[1]),
            row("0000000005", ours, &[7]),
            row("0000000004", ours, &[4]),
        ];
        assert_eq!(applied_from(&rows, day, 1_796_190_161, "20261129"), Some(4));
        assert_eq!(applied_from(&rows, day, 1_796_190_162, "20261129"), None);
        assert_eq!(
            applied_from(&rows[..1], day, 1_796_190_161, "20261129"),
            None
        );
    }
}
