//! The data directory as one process's property: an exclusive lock, and modes that keep it
//! private.
//!
//! Invariants:
//! - At most one `serve` or `compact` works in a data directory: each holds an exclusive
//!   `flock` on `<data_dir>/clicktrail.lock` for its lifetime (the kernel drops it when the
//!   process dies, so a crash never leaves a stale lock). The holder writes its pid and
//!   command line into the file, which a refused second process reads back to name it.
//! - The data directory is `0700` and the files clicktrail creates in it are `0600` (spool
//!   segments and checkpoint by explicit mode; the rest through the `0077` umask that
//!   `main` sets): events, dead letters and archive staging are not world-readable.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

/// Mode of every directory clicktrail creates under the data directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file clicktrail creates there.
pub const FILE_MODE: u32 = 0o600;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the data directory {dir} is in use by another clicktrail process ({holder}); stop it first, or give this one its own data_dir")]
    Held { dir: PathBuf, holder: String },
    #[error("cannot lock the data directory {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// Held for as long as the process works in the data directory; dropping it unlocks.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

pub fn lock_path(data_dir: &Path) -> PathBuf {
    data_dir.join("clicktrail.lock")
}

/// Creates the data directory (mode 0700, and makes an existing one 0700) and takes its
/// exclusive lock, or says who holds it.
pub fn lock(data_dir: &Path) -> Result<DataDirLock, LockError> {
    let io = |source| LockError::Io {
        dir: data_dir.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(data_dir)
        .map_err(io)?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(DIR_MODE)).map_err(io)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(lock_path(data_dir))
        .map_err(io)?;
    if let Err(e) = flock(&file, FlockOperation::NonBlockingLockExclusive) {
        if e == rustix::io::Errno::WOULDBLOCK {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(LockError::Held {
                dir: data_dir.to_path_buf(),
                holder: if holder.is_empty() {
                    "holder unknown".into()
                } else {
                    holder.to_string()
                },
            });
        }
        return Err(io(e.into()));
    }
    let me = format!(
        "pid {}: {}",
        std::process::id(),
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    file.set_len(0).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    file.write_all(me.as_bytes()).map_err(io)?;
    Ok(DataDirLock { _file: file })
}

/// Files created from now on are not readable by group or others (`umask 077`), whatever the
/// service manager's umask. For `main`: the umask is the process's, not a library's, to set.
pub fn private_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder_and_a_dropped_one_frees_the_dir() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("data");
        let first = lock(&dir).unwrap();
        let err = lock(&dir).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, DIR_MODE);
        drop(first);
        lock(&dir).unwrap();
    }
}
