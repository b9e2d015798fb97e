//! Segment files: `<spool>/<base_lsn, 20 digits>.seg`, where `base_lsn` is the sequence number of
//! the segment's first record. Records are numbered consecutively across segments, so the
//! segment holding record N is the one with the largest base ≤ N.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::record::{self, HEADER_LEN, MAGIC};

pub(super) fn path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.seg"))
}

/// Segment bases present in `dir`, ascending.
pub(super) fn list(dir: &Path) -> io::Result<Vec<u64>> {
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".seg") {
            if let Ok(base) = stem.parse::<u64>() {
                bases.push(base);
            }
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Creates a new, empty segment and makes its existence durable.
pub(super) fn create(dir: &Path, base: u64) -> io::Result<File> {
    let p = path(dir, base);
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .mode(crate::datadir::FILE_MODE)
        .open(&p)?;
    let made = f
        .write_all(MAGIC)
        .and_then(|()| f.sync_all())
        .and_then(|()| sync_dir(dir));
    if let Err(e) = made {
        // A full disk: leave no empty segment behind (the next attempt creates it again).
        drop(f);
        let _ = fs::remove_file(&p);
        return Err(e);
    }
    Ok(f)
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What recovery found in the tail segment.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct TailScan {
    /// Valid records, in order.
    pub(super) records: u64,
    /// Byte offset just past the last valid record.
    pub(super) valid_len: u64,
    /// Bytes after it that were dropped (a torn or corrupt record and anything behind it).
    pub(super) dropped_bytes: u64,
    /// Appended time of the first valid record, if any.
    pub(super) first_appended_ms: Option<u64>,
    /// Appended time of the last valid record, if any.
    pub(super) last_appended_ms: Option<u64>,
}

/// Scans a segment, stops at the first torn or corrupt record and truncates the file there.
/// Everything before that point is intact by CRC; nothing after it can be trusted, because a
/// record boundary after a bad length is unknowable.
pub(super) fn recover_tail(dir: &Path, base: u64) -> io::Result<TailScan> {
    let p = path(dir, base);
    let mut f = OpenOptions::new().read(true).write(true).open(&p)?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    if buf.len() < MAGIC.len() || &buf[..MAGIC.len()] != MAGIC {
        // Crashed while creating the segment: nothing in it was ever acknowledged.
        f.set_len(0)?;
        f.seek(SeekFrom::Start(0))?;
        f.write_all(MAGIC)?;
        f.sync_all()?;
        return Ok(TailScan {
            records: 0,
            valid_len: MAGIC.len() as u64,
            dropped_bytes: buf.len() as u64,
            first_appended_ms: None,
            last_appended_ms: None,
        });
    }
    let mut off = MAGIC.len();
    let mut scan = TailScan::default();
    // Stops at a clean end, a torn write or a corrupt record alike.
    while let Ok((h, payload)) = record::decode(&buf[off..]) {
        scan.first_appended_ms.get_or_insert(h.appended_ms);
        scan.last_appended_ms = Some(h.appended_ms);
        scan.records += 1;
        off += HEADER_LEN + payload.len();
    }
    scan.valid_len = off as u64;
    scan.dropped_bytes = (buf.len() - off) as u64;
    if scan.dropped_bytes > 0 {
        f.set_len(off as u64)?;
        f.sync_all()?;
    }
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_records(dir: &Path, base: u64, payloads: &[&[u8]]) -> PathBuf {
        let mut f = create(dir, base).unwrap();
        let mut buf = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            record::encode(&mut buf, 1000 + i as u64, p);
        }
        f.write_all(&buf).unwrap();
        path(dir, base)
    }

    #[test]
    fn intact_tail_is_kept() {
        let d = tempfile::tempdir().unwrap();
        write_records(d.path(), 0, &[b"a", b"bb", b"ccc"]);
        let s = recover_tail(d.path(), 0).unwrap();
        assert_eq!((s.records, s.dropped_bytes), (3, 0));
        assert_eq!(s.first_appended_ms, Some(1000));
    }

    #[test]
    fn torn_tail_is_truncated_to_the_last_whole_record() {
        let d = tempfile::tempdir().unwrap();
        let p = write_records(d.path(), 5, &[b"first", b"second", b"third"]);
        let full = fs::metadata(&p).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(full - 3)
            .unwrap();
        let s = recover_tail(d.path(), 5).unwrap();
        assert_eq!(s.records, 2);
        assert_eq!(s.dropped_bytes, record::framed_len(5) - 3);
        assert_eq!(fs::metadata(&p).unwrap().len(), s.valid_len);
        // A second recovery finds nothing more to drop.
        assert_eq!(recover_tail(d.path(), 5).unwrap().dropped_bytes, 0);
    }

    #[test]
    fn flipped_byte_drops_that_record_and_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let p = write_records(d.path(), 0, &[b"first", b"second", b"third"]);
        let mut bytes = fs::read(&p).unwrap();
        let second_payload = MAGIC.len() + record::framed_len(5) as usize + HEADER_LEN + 2;
        bytes[second_payload] ^= 0x40;
        fs::write(&p, &bytes).unwrap();
        let s = recover_tail(d.path(), 0).unwrap();
        assert_eq!(s.records, 1);
    }

    #[test]
    fn torn_segment_header_is_rewritten() {
        let d = tempfile::tempdir().unwrap();
        fs::write(path(d.path(), 9), b"CTSP").unwrap();
        let s = recover_tail(d.path(), 9).unwrap();
        assert_eq!(s.records, 0);
        assert_eq!(fs::read(path(d.path(), 9)).unwrap(), MAGIC);
        assert_eq!(list(d.path()).unwrap(), vec![9]);
    }
}
