//! The sink's durable progress. `delivered`: every record below it is confirmed by ClickHouse.
//! `inflight`: the exact record range of the insert being attempted, recorded *before* the
//! insert is sent, so that after a crash the same range is resent as the same block (which
//! current ClickHouse deduplicates) instead of a differently cut one. `inflight_inserted_at`:
//! the `inserted_at` that batch is sent with (fixed at its first attempt), so a resend after a
//! crash is the same bytes too.
//!
//! Written with write-to-temp, fsync, rename, fsync-dir: a crash leaves the old or the new
//! checkpoint, never a mix.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub delivered: u64,
    pub inflight: Option<(u64, u64)>,
    /// Unix seconds; absent in checkpoints of older builds (their resend gets a new stamp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inflight_inserted_at: Option<u32>,
    /// The stamp of the in-flight batch's first attempt, kept when the stamp is renewed: every
    /// row of the batch that reached ClickHouse has `inserted_at` at or after it, which bounds
    /// the sink's check of which rows landed. Absent in checkpoints of older builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inflight_since: Option<u32>,
}

fn path(dir: &Path) -> PathBuf {
    dir.join("checkpoint.json")
}

impl Checkpoint {
    pub fn load(dir: &Path) -> io::Result<Self> {
        match fs::read(path(dir)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", path(dir).display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e),
        }
    }

    pub fn store(&self, dir: &Path) -> io::Result<()> {
        let tmp = dir.join("checkpoint.json.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(crate::datadir::FILE_MODE)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec(self).expect("checkpoint serializes"))?;
        f.sync_all()?;
        fs::rename(&tmp, path(dir))?;
        super::segment::sync_dir(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_is_zero_and_store_round_trips() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(Checkpoint::load(d.path()).unwrap(), Checkpoint::default());
        let c = Checkpoint {
            delivered: 17,
            inflight: Some((17, 30)),
            inflight_inserted_at: Some(1_764_633_600),
            inflight_since: Some(1_764_633_000),
        };
        c.store(d.path()).unwrap();
        assert_eq!(Checkpoint::load(d.path()).unwrap(), c);
        // A checkpoint written before inserted_at was kept still loads.
        std::fs::write(path(d.path()), br#"{"delivered":3,"inflight":[3,5]}"#).unwrap();
        assert_eq!(
            Checkpoint::load(d.path()).unwrap().inflight_inserted_at,
            None
        );
    }
}
