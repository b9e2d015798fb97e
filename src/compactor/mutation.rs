//! The compactor's own deletes: issue `ALTER TABLE ... DELETE` for one part, find the
//! mutation ClickHouse created for it, and wait until it has removed the part's rows.
//!
//! Why not wait for `system.mutations.is_done`: a mutation is done only when every part of the
//! *table* has reached its version, and a part applies its mutations in order. One mutation
//! that cannot finish on some other day (a user's `ALTER UPDATE` that throws, a slow rewrite
//! of a big partition) would hold every later delete of the compactor until its timeout,
//! although the archived rows are long gone. What the compactor needs is narrower: every
//! active part of *its* partition has a `data_version` at or past its mutation's block number
//! (then the delete was applied there), confirmed by counting the rows the delete matched.
//!
//! How the mutation is found: the ids of the table's mutations before and after the `ALTER`,
//! the new one whose command names the part's day and cutoff (another client may mutate the
//! table at the same moment). A mutation left running by an interrupted run is found by its
//! command alone ([`Compactor::unfinished_deletes`]).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::{day_string, CompactError, Compactor, ManifestEntry};

/// One of the compactor's `ALTER TABLE ... DELETE` mutations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Mutation {
    pub(super) id: String,
    /// The block number of the mutation in the part's partition: a part holds its effect once
    /// its `data_version` is at least this.
    pub(super) version: i64,
}

/// A row of `system.mutations`: id, command, block numbers by partition.
#[derive(Debug, Clone, serde::Deserialize, ::clickhouse::Row)]
pub(super) struct MutationRow {
    pub(super) id: String,
    pub(super) command: String,
    pub(super) partitions: Vec<String>,
    pub(super) numbers: Vec<i64>,
}

impl MutationRow {
    fn mutation(self, partition: &str) -> Option<Mutation> {
        let version = version_of(&self, partition)?;
        Some(Mutation {
            id: self.id,
            version,
        })
    }
}

/// ClickHouse's partition id of a day (the table is partitioned by `toDate(ts)`).
pub(super) fn partition_id(day: i64) -> String {
    day_string(day).replace('-', "")
}

/// Whether a mutation's command (as `system.mutations` formats it) is the delete of this part.
pub(super) fn is_delete_of(command: &str, day: i64, cutoff: u32) -> bool {
    command.starts_with("DELETE WHERE")
        && command.contains(&format!("'{}'", day_string(day)))
        && command.contains(&format!("toDateTime({cutoff})"))
}

/// The mutation's block number for `partition`: non-replicated tables number mutations for
/// the whole table (partition id ''), replicated ones per partition; `mutation_<N>.txt` is
/// the fallback.
pub(super) fn version_of(row: &MutationRow, partition: &str) -> Option<i64> {
    let at = |p: &str| {
        let i = row.partitions.iter().position(|x| x == p)?;
        row.numbers.get(i).copied()
    };
    at(partition).or_else(|| at("")).or_else(|| {
        row.id
            .strip_prefix("mutation_")
            .and_then(|r| r.strip_suffix(".txt"))
            .and_then(|n| n.parse().ok())
    })
}

impl Compactor {
    async fn mutations(&self, only_pending: bool) -> Result<Vec<MutationRow>, CompactError> {
        let sql = format!(
            "SELECT mutation_id, command, block_numbers.partition_id, block_numbers.number \
             FROM system.mutations WHERE database = ? AND table = ?{}",
            if only_pending { " AND is_done = 0" } else { "" }
        );
        Ok(self
            .ch
            .query(&sql)
            .bind(self.db.as_str())
            .bind(super::TABLE)
            .fetch_all()
            .await?)
    }

    /// Deletes exactly the part's rows (`ALTER TABLE ... DELETE`) and returns the mutation
    /// ClickHouse created for it; `None` if it cannot be told apart (then only the row count
    /// tells when the delete is done).
    pub(super) async fn issue_delete(
        &self,
        entry: &ManifestEntry,
    ) -> Result<Option<Mutation>, CompactError> {
        let before: HashSet<String> = self
            .mutations(false)
            .await?
            .into_iter()
            .map(|m| m.id)
            .collect();
        let sql = format!(
            "ALTER TABLE {}.{} DELETE WHERE {}",
            self.db,
            super::TABLE,
            self.day_filter(entry.day, entry.cutoff)
        );
        self.ch.query(&sql).execute().await?;
        let partition = partition_id(entry.day);
        Ok(self
            .mutations(false)
            .await?
            .into_iter()
            .filter(|m| {
                !before.contains(&m.id) && is_delete_of(&m.command, entry.day, entry.cutoff)
            })
            .find_map(|m| m.mutation(&partition)))
    }

    /// Deletes of this part that an interrupted run issued and ClickHouse has not finished.
    pub(super) async fn unfinished_deletes(
        &self,
        entry: &ManifestEntry,
    ) -> Result<Vec<Mutation>, CompactError> {
        let partition = partition_id(entry.day);
        Ok(self
            .mutations(true)
            .await?
            .into_iter()
            .filter(|m| is_delete_of(&m.command, entry.day, entry.cutoff))
            .filter_map(|m| m.mutation(&partition))
            .collect())
    }

    /// Waits until `mutation` is applied to every active part of the entry's partition (or
    /// done everywhere), then confirms that none of the part's rows is left.
    pub(super) async fn await_delete(
        &self,
        entry: &ManifestEntry,
        mutation: Option<&Mutation>,
    ) -> Result<(), CompactError> {
        let deadline = Instant::now() + self.cfg.mutation_timeout;
        let partition = partition_id(entry.day);
        let timeout = || CompactError::MutationTimeout {
            partition: entry.partition.clone(),
            mutation: mutation.map_or_else(|| "(not found)".into(), |m| m.id.clone()),
            timeout: self.cfg.mutation_timeout,
        };
        loop {
            let applied = match mutation {
                Some(m) => {
                    let behind: u64 = self
                        .ch
                        .query(
                            "SELECT count() FROM system.parts WHERE database = ? AND table = ? \
                             AND active AND partition_id = ? AND data_version < ?",
                        )
                        .bind(self.db.as_str())
                        .bind(super::TABLE)
                        .bind(partition.as_str())
                        .bind(m.version)
                        .fetch_one()
                        .await?;
                    behind == 0
                }
                None => self.count(entry.day, entry.cutoff, false).await? == 0,
            };
            if applied {
                break;
            }
            if Instant::now() > deadline {
                return Err(timeout());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let left = self.count(entry.day, entry.cutoff, false).await?;
        if left > 0 {
            return Err(CompactError::Verify {
                partition: entry.partition.clone(),
                what: format!(
                    "{left} rows of the part are still in ClickHouse after its delete was applied"
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delete_of_a_part_is_recognised_as_1816_formats_it() {
        // system.mutations.command on 18.16 for the compactor's delete of 2024-01-01.
        let cmd = "DELETE WHERE (toDate(ts) = toDate('2024-01-01')) AND (inserted_at <= toDateTime(1700000000))";
        assert!(is_delete_of(cmd, 19_723, 1_700_000_000));
        assert!(!is_delete_of(cmd, 19_724, 1_700_000_000));
        assert!(!is_delete_of(cmd, 19_723, 1_700_000_001));
        assert!(!is_delete_of(
            "UPDATE x = 1 WHERE toDate(ts) = toDate('2024-01-01') AND inserted_at <= toDateTime(1700000000)",
            19_723,
            1_700_000_000
        ));
    }

    #[test]
    fn versions_per_table_or_per_partition() {
        let row = |id: &str, partitions: &[&str], numbers: &[i64]| MutationRow {
            id: id.into(),
            command: String::new(),
            partitions: partitions.iter().map(|p| p.to_string()).collect(),
            numbers: numbers.to_vec(),
        };
        assert_eq!(
            version_of(&row("mutation_5.txt", &[""], &[5]), "20240101"),
            Some(5)
        );
        let replicated = row("0000000003", &["20231231", "20240101"], &[17, 9]);
        assert_eq!(version_of(&replicated, "20240101"), Some(9));
        assert_eq!(
            version_of(&row("mutation_12.txt", &[], &[]), "20240101"),
            Some(12)
        );
    }
}
