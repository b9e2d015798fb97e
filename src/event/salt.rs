//! The cookieless visitor salts: one random 32-byte key per UTC day, kept for
//! `privacy.salt_retention_days` days (today included) and then deleted.
//!
//! On disk (`<data_dir>/salts/YYYY-MM-DD.salt`, 0600, written to a temporary file, fsynced,
//! renamed, directory fsynced) so that a restart keeps today's visitor ids, and a replay of an
//! earlier day's dead letter uses that day's salt instead of replacing today's.
//!
//! Invariants:
//! - A day's key, once handed out, is the same for the life of the process and, while within
//!   retention, across restarts.
//! - Asking for an earlier day's key never changes another day's key.
//! - Keys of days older than the retention (counted back from the newest day asked for) are
//!   removed from memory and disk; a day that old gets a key that is never stored, so its
//!   visitor ids cannot be linked to the ones that day's deleted key produced.
//!
//! The trade-off, stated in config/clicktrail.toml: while a day's salt exists, whoever can read
//! the data directory and knows a person's address and user agent can tell whether that
//! person visited a site that day; after its deletion nobody can.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

type Key = [u8; 32];

#[derive(Debug)]
pub struct Salts {
    dir: Option<PathBuf>,
    retention_days: i64,
    keys: Mutex<BTreeMap<i64, Key>>,
}

impl Salts {
    /// Keys in memory only (tests, benchmarks): a restart starts new ones.
    pub fn in_memory(retention_days: u32) -> Self {
        Self {
            dir: None,
            retention_days: i64::from(retention_days.max(1)),
            keys: Mutex::new(BTreeMap::new()),
        }
    }

    /// Keys persisted in `dir` (created on first use, mode 0700).
    pub fn persistent(dir: PathBuf, retention_days: u32) -> Self {
        Self {
            dir: Some(dir),
            ..Self::in_memory(retention_days)
        }
    }

    /// The key of `day` (days since the Unix epoch, UTC).
    pub fn key_for_day(&self, day: i64) -> Key {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = keys.get(&day) {
            return *k;
        }
        let newest = keys.keys().next_back().map_or(day, |n| (*n).max(day));
        let oldest_kept = newest - self.retention_days + 1;
        let key = match &self.dir {
            Some(dir) if day >= oldest_kept => load_or_create(dir, day).unwrap_or_else(|e| {
                tracing::warn!(error = %e, dir = %dir.display(), "cannot persist the cookieless salt; this day's visitor ids will change after a restart");
                rand::random()
            }),
            _ => rand::random(),
        };
        if day >= oldest_kept {
            keys.insert(day, key);
        }
        if newest == day {
            // A new day: forget what fell out of retention.
            keys.retain(|d, _| *d >= oldest_kept);
            if let Some(dir) = &self.dir {
                prune(dir, oldest_kept);
            }
        }
        key
    }
}

fn file_of(dir: &Path, day: i64) -> PathBuf {
    dir.join(format!("{}.salt", crate::compactor::day_string(day)))
}

fn load_or_create(dir: &Path, day: i64) -> std::io::Result<Key> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let path = file_of(dir, day);
    match std::fs::read(&path) {
        Ok(b) if b.len() == 32 => return Ok(b.try_into().expect("32 bytes")),
        Ok(_) => tracing::warn!(path = %path.display(), "salt file is damaged; replacing it"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let key: Key = rand::random();
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&key)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(key)
}

/// Deletes salt files of days before `oldest_kept`; a failure is logged and retried on the
/// next new day.
fn prune(dir: &Path, oldest_kept: i64) {
    let keep_from = crate::compactor::day_string(oldest_kept);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(date) = name
            .strip_suffix(".salt")
            .or_else(|| name.strip_suffix(".tmp"))
        else {
            continue;
        };
        // YYYY-MM-DD compares as text like the dates it names.
        if date.len() == 10 && date < keep_from.as_str() {
            if let Err(err) = std::fs::remove_file(e.path()) {
                tracing::warn!(error = %err, file = %name, "cannot delete an expired salt");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_a_restart_and_expire_after_the_retention() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let salts = dir.path().join("salts");
        let day = 20_000;
        let a = Salts::persistent(salts.clone(), 2);
        let today = a.key_for_day(day);
        let yesterday = a.key_for_day(day - 1);
        assert_ne!(today, yesterday);
        assert_eq!(
            a.key_for_day(day),
            today,
            "asking for yesterday kept today's key"
        );
        let file = file_of(&salts, day);
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let b = Salts::persistent(salts.clone(), 2);
        assert_eq!(b.key_for_day(day - 1), yesterday, "after a restart");
        assert_eq!(b.key_for_day(day), today);

        // Two days later yesterday's key is out of retention: deleted, and a replay of that
        // day gets a key that is neither the old one nor stored.
        let later = b.key_for_day(day + 1);
        assert_ne!(later, today);
        assert!(!file_of(&salts, day - 1).exists(), "expired salt deleted");
        assert!(file_of(&salts, day).exists());
        let again = b.key_for_day(day - 1);
        assert_ne!(again, yesterday);
        assert!(
            !file_of(&salts, day - 1).exists(),
            "an expired day is never stored"
        );
        assert_eq!(b.key_for_day(day + 1), later);
    }
}
