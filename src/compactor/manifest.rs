//! The archive manifest: one human-readable JSON document per part, at
//! `manifest/events/date=YYYY-MM-DD/part-<cutoff>.json` beside the data (outside `events/`, so
//! a reader globbing `events/**/*.parquet` sees only data). It records the partition, the
//! cutoff, rows, bytes, the content checksum ClickHouse agreed to, the file's CRC32C, when it
//! was created, the part's state, and the table it came from ([`TableIdentity`]).
//!
//! On a cluster (`clickhouse.cluster`) a day's part is one file set per shard: an entry per
//! (day, cutoff, shard), `part-<cutoff>-s<N>` (see [`ManifestEntry::for_shard`]), whose
//! [`ShardPart`] names the shard and the replicas that agreed on its rows; the identity names
//! the cluster. All shards of a day share one cutoff, which is what ties them into one delete.
//!
//! Invariant: a compactor acts only on entries of its own table ([`Ownership`]). Several
//! deployments may share one archive prefix; an entry of another one is refused, never resumed,
//! because resuming means deleting rows from *this* deployment's table.

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::{Checksum, CompactError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartState {
    /// Expected rows recorded; the file may or may not be published yet.
    Exporting,
    /// The published file was read back and matched ClickHouse; rows not yet deleted.
    Verified,
    /// The archived rows are deleted from ClickHouse. Final.
    Dropped,
}

/// The ClickHouse table a part was archived from: database and table, and the table's UUID
/// where the server has one (Atomic databases; 18.16 and Ordinary databases have none, and a
/// zero UUID counts as none). On a cluster: the cluster's name, the logical table (`events`,
/// whose rows live in each shard's `events_local`) and no UUID (every server has its own
/// Distributed table, each with its own UUID, and any of them may be the entry server).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableIdentity {
    pub database: String,
    pub table: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

impl TableIdentity {
    /// The same table: same database and name, and the same UUID when both sides know one. A
    /// UUID known on one side only (the server was upgraded, or the database converted to
    /// Atomic, between two runs) does not tell two tables apart.
    pub fn same_table(&self, other: &TableIdentity) -> bool {
        self.database == other.database
            && self.table == other.table
            // A single server's entry is not a cluster's: resuming it would delete from the
            // wrong table (and the other way round).
            && self.cluster == other.cluster
            && match (&self.uuid, &other.uuid) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl std::fmt::Display for TableIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.database, self.table)?;
        if let Some(c) = &self.cluster {
            write!(f, " on cluster {c}")?;
        }
        match &self.uuid {
            Some(u) => write!(f, " (uuid {u})"),
            None => f.write_str(" (no uuid)"),
        }
    }
}

/// Whose entry a manifest entry is, as seen by the compactor of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Written for this table.
    Own,
    /// Written before manifests recorded their table, with this table's file layout
    /// (`<table>/date=<partition>/part-<cutoff>-….parquet`): adopted, and the identity is
    /// recorded the next time the entry is stored. A `verified` one is verified again against
    /// ClickHouse before anything is deleted, like every resumed entry.
    Legacy,
    /// Another table's (another deployment sharing the archive): never acted on.
    Foreign,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// The table the part's rows came from; `None` in entries written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<TableIdentity>,
    pub partition: String,
    pub day: i64,
    pub file: String,
    /// Rows with `inserted_at <= cutoff` (unix seconds) belong to this part.
    pub cutoff: u32,
    pub rows: u64,
    /// `sum(cityHash64(every column))` with wrapping addition (see `checksum.rs`), as a decimal
    /// string (JSON numbers lose u64 precision).
    pub checksum: String,
    pub bytes: u64,
    pub crc32c: String,
    pub created_at: String,
    pub state: PartState,
    /// On a cluster: the shard this part's rows came from; `None` on one server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardPart>,
}

/// The shard of a cluster part: its `system.clusters.shard_num`, and the replicas
/// (`host:port`, native protocol) that held exactly the part's rows when it was exported, the
/// first being the one it was exported from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPart {
    pub num: u32,
    pub replicas: Vec<String>,
}

/// The file name (without extension) of shard `shard`'s part of a day: named by the day's
/// cutoff and the shard alone, so a rerun after a crash finds the same name, and a reader sees
/// which shard a file holds.
pub fn shard_part_name(cutoff: u32, shard: u32) -> String {
    format!("part-{cutoff}-s{shard}")
}

impl ManifestEntry {
    pub fn new(
        source: TableIdentity,
        partition: &str,
        day: i64,
        cutoff: u32,
        expected: Checksum,
    ) -> Self {
        // The random suffix keeps two parts of one day apart even if their cutoffs coincide.
        let part = format!("part-{cutoff}-{:08x}", rand::random::<u32>());
        Self {
            file: format!("{}/date={partition}/{part}.parquet", source.table),
            source: Some(source),
            partition: partition.to_string(),
            day,
            cutoff,
            rows: expected.rows,
            checksum: expected.sum.to_string(),
            bytes: 0,
            crc32c: String::new(),
            created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            state: PartState::Exporting,
            shard: None,
        }
    }

    /// Shard `shard`'s part of a day on a cluster (`<table>/date=<day>/part-<cutoff>-s<N>.parquet`).
    /// No random suffix: one cutoff per day and run, and a part whose rows are all deleted is
    /// never written again (a later run finds none of them), so the name is unique.
    pub fn for_shard(
        source: TableIdentity,
        partition: &str,
        day: i64,
        cutoff: u32,
        shard: ShardPart,
        expected: Checksum,
    ) -> Self {
        let mut e = Self::new(source, partition, day, cutoff, expected);
        e.file = format!(
            "{}/date={partition}/{}.parquet",
            e.source.as_ref().map_or("events", |s| s.table.as_str()),
            shard_part_name(cutoff, shard.num)
        );
        e.shard = Some(shard);
        e
    }
}

impl ManifestEntry {
    /// Whether the compactor of table `me` may act on this entry.
    pub fn ownership(&self, me: &TableIdentity) -> Ownership {
        match &self.source {
            Some(s) if s.same_table(me) => Ownership::Own,
            Some(_) => Ownership::Foreign,
            None if me.cluster.is_some() => Ownership::Foreign,
            None => {
                let layout = format!("{}/date={}/part-{}-", me.table, self.partition, self.cutoff);
                if self.file.starts_with(&layout)
                    && self.file.ends_with(".parquet")
                    && super::day_string(self.day) == self.partition
                {
                    Ownership::Legacy
                } else {
                    Ownership::Foreign
                }
            }
        }
    }

    /// The entry as this table's compactor resumes it: an entry without identity (see
    /// [`Ownership::Legacy`]) gets this table's, recorded with its next state.
    pub fn adopted_by(mut self, me: &TableIdentity) -> Self {
        if self.source.is_none() {
            tracing::info!(file = %self.file, table = %me, "adopting a manifest entry written before entries named their table");
            self.source = Some(me.clone());
        }
        self
    }

    pub fn file_path(&self) -> ObjectPath {
        ObjectPath::from(self.file.as_str())
    }

    fn manifest_path(&self) -> ObjectPath {
        let part = self.file.rsplit('/').next().unwrap_or_default();
        let part = part.strip_suffix(".parquet").unwrap_or(part);
        ObjectPath::from(format!(
            "manifest/events/date={}/{part}.json",
            self.partition
        ))
    }
}

fn store_err(source: object_store::Error) -> CompactError {
    CompactError::Store {
        url: "archive".into(),
        source,
    }
}

pub async fn store(store: &dyn ObjectStore, e: &ManifestEntry) -> Result<(), CompactError> {
    let body = serde_json::to_vec_pretty(e).expect("manifest serializes");
    store
        .put(&e.manifest_path(), PutPayload::from(body))
        .await
        .map_err(store_err)?;
    Ok(())
}

pub async fn remove(store: &dyn ObjectStore, e: &ManifestEntry) -> Result<(), CompactError> {
    store.delete(&e.manifest_path()).await.map_err(store_err)
}

/// Every manifest entry, oldest partition first.
pub async fn all(store: &dyn ObjectStore) -> Result<Vec<ManifestEntry>, CompactError> {
    use futures_util::TryStreamExt;
    let metas: Vec<_> = store
        .list(Some(&ObjectPath::from("manifest/events")))
        .try_collect()
        .await
        .map_err(store_err)?;
    let mut out = Vec::new();
    for m in metas {
        if !m.location.as_ref().ends_with(".json") {
            continue;
        }
        let bytes = store
            .get(&m.location)
            .await
            .map_err(store_err)?
            .bytes()
            .await
            .map_err(store_err)?;
        match serde_json::from_slice::<ManifestEntry>(&bytes) {
            Ok(e) => out.push(e),
            Err(e) => {
                tracing::warn!(path = %m.location, error = %e, "unreadable manifest entry; skipped")
            }
        }
    }
    out.sort_by_key(|e| (e.day, e.cutoff));
    Ok(out)
}

/// Entries a previous run left unfinished.
pub async fn pending(store: &dyn ObjectStore) -> Result<Vec<ManifestEntry>, CompactError> {
    Ok(all(store)
        .await?
        .into_iter()
        .filter(|e| e.state != PartState::Dropped)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me(uuid: Option<&str>) -> TableIdentity {
        TableIdentity {
            database: "clicktrail".into(),
            table: "events".into(),
            uuid: uuid.map(String::from),
            cluster: None,
        }
    }

    #[test]
    fn identity_tells_tables_apart() {
        let entry = |source| {
            let mut e = ManifestEntry::new(
                me(None),
                "2026-11-01",
                20_758,
                1_700_000_000,
                Checksum::default(),
            );
            e.source = source;
            e
        };
        assert_eq!(entry(Some(me(None))).ownership(&me(None)), Ownership::Own);
        assert_eq!(
            entry(Some(me(Some("a")))).ownership(&me(Some("a"))),
            Ownership::Own
        );
        // A UUID on one side only: the same database and table.
        assert_eq!(
            entry(Some(me(None))).ownership(&me(Some("a"))),
            Ownership::Own
        );
        assert_eq!(
            entry(Some(me(Some("a")))).ownership(&me(Some("b"))),
            Ownership::Foreign
        );
        let other_db = TableIdentity {
            database: "shop".into(),
            ..me(None)
        };
        assert_eq!(
            entry(Some(other_db)).ownership(&me(None)),
            Ownership::Foreign
        );
    }

    #[test]
    fn entries_without_identity_are_adopted_only_in_this_tables_layout() {
        let old = r#"{"partition":"2026-11-01","day":20758,
            "file":"events/date=2026-11-01/part-1700000000-0badf00d.parquet","cutoff":1700000000,
            "rows":5,"checksum":"7","bytes":9,"crc32c":"","created_at":"2026-11-02T00:00:00Z",
            "state":"verified"}"#;
        let e: ManifestEntry = serde_json::from_str(old).unwrap();
        assert_eq!(e.source, None);
        assert_eq!(e.ownership(&me(None)), Ownership::Legacy);
        let other_table = TableIdentity {
            table: "clicks".into(),
            ..me(None)
        };
        assert_eq!(e.ownership(&other_table), Ownership::Foreign);
        let mut moved = e.clone();
        moved.file = "events/date=2026-11-02/part-1700000000-0badf00d.parquet".into();
        assert_eq!(moved.ownership(&me(None)), Ownership::Foreign);
        let mut other_cutoff = e.clone();
        other_cutoff.cutoff += 1;
        assert_eq!(other_cutoff.ownership(&me(None)), Ownership::Foreign);
    }

    #[test]
    fn identity_is_written_and_read_back() {
        let e = ManifestEntry::new(
            me(Some("u-1")),
            "2026-11-01",
            20_758,
            5,
            Checksum::default(),
        );
        let json = serde_json::to_string(&e).unwrap();
        assert!(
            json.contains(r#""source":{"database":"clicktrail","table":"events","uuid":"u-1"}"#),
            "{json}"
        );
        let back: ManifestEntry = serde_json::from_str(&json).unwrap();
        assert_eq!(back.source, Some(me(Some("u-1"))));
        assert_eq!(
            back.file,
            format!(
                "events/date=2026-11-01/{}",
                e.file.rsplit('/').next().unwrap()
            )
        );
    }

    #[test]
    fn shard_parts_are_named_by_cutoff_and_shard_and_belong_to_their_cluster() {
        let cluster = TableIdentity {
            cluster: Some("clicktrail".into()),
            ..me(None)
        };
        let part = ShardPart {
            num: 2,
            replicas: vec!["127.0.0.1:31300".into(), "127.0.0.1:31400".into()],
        };
        let e = ManifestEntry::for_shard(
            cluster.clone(),
            "2026-11-28",
            20_785,
            1_796_193_382,
            part.clone(),
            Checksum { rows: 7, sum: 9 },
        );
        // The same name on every run for (day, cutoff, shard): a rerun finds it again.
        assert_eq!(e.file, "events/date=2026-11-28/part-1796193382-s2.parquet");
        assert_eq!(
            e.manifest_path().as_ref(),
            "manifest/events/date=2026-11-28/part-1796193382-s2.json"
        );
        assert_eq!((e.rows, e.checksum.as_str()), (7, "9"));
        let back: ManifestEntry =
            serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back.shard, Some(part));
        assert_eq!(
            back.source.as_ref().unwrap().cluster.as_deref(),
            Some("clicktrail")
        );
        assert_eq!(back.ownership(&cluster), Ownership::Own);
        // A single server's compactor never resumes a cluster's entry, nor the other way round,
        // nor another cluster's, nor an entry without identity.
        assert_eq!(back.ownership(&me(None)), Ownership::Foreign);
        let other = TableIdentity {
            cluster: Some("other".into()),
            ..me(None)
        };
        assert_eq!(back.ownership(&other), Ownership::Foreign);
        let single = ManifestEntry::new(me(None), "2026-11-28", 20_785, 5, Checksum::default());
        assert_eq!(single.shard, None);
        assert!(!serde_json::to_string(&single).unwrap().contains("shard"));
        assert_eq!(single.ownership(&cluster), Ownership::Foreign);
        let mut legacy = single.clone();
        legacy.source = None;
        assert_eq!(legacy.ownership(&me(None)), Ownership::Legacy);
        assert_eq!(legacy.ownership(&cluster), Ownership::Foreign);
    }
}
