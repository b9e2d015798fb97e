//! The archive manifest: one human-readable JSON document per part, at
//! `manifest/events/date=YYYY-MM-DD/part-<cutoff>.json` beside the data (outside `events/`, so
//! a reader globbing `events/**/*.parquet` sees only data). It records the partition, the
//! cutoff, rows, bytes, the content checksum ClickHouse agreed to, the file's CRC32C, when it
//! was created and the part's state.

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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestEntry {
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
}

impl ManifestEntry {
    pub fn new(partition: &str, day: i64, cutoff: u32, expected: Checksum) -> Self {
        // The random suffix keeps two parts of one day apart even if their cutoffs coincide.
        let part = format!("part-{cutoff}-{:08x}", rand::random::<u32>());
        Self {
            partition: partition.to_string(),
            day,
            file: format!("events/date={partition}/{part}.parquet"),
            cutoff,
            rows: expected.rows,
            checksum: expected.sum.to_string(),
            bytes: 0,
            crc32c: String::new(),
            created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            state: PartState::Exporting,
        }
    }
}

impl ManifestEntry {
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
