//! The sink's view of the spool: records in order, from a position, never past what the
//! writer has committed. Reads go through the page cache with positioned reads (`pread`), so
//! fresh records come from memory while the sink keeps up and from disk after a restart or a
//! backlog, through one code path (the recovery path is exercised all the time).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use tokio::sync::watch;

use super::record::{self, HEADER_LEN, MAGIC};
use super::segment;
use super::Lsn;
use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct Record {
    pub lsn: Lsn,
    pub appended_ms: u64,
    pub payload: Vec<u8>,
}

struct OpenSegment {
    base: Lsn,
    file: File,
    offset: u64,
}

pub struct SpoolReader {
    dir: PathBuf,
    committed: watch::Receiver<Lsn>,
    next_lsn: Lsn,
    current: Option<OpenSegment>,
    metrics: Metrics,
}

impl SpoolReader {
    pub(super) fn new(dir: PathBuf, committed: watch::Receiver<Lsn>, metrics: Metrics) -> Self {
        Self {
            dir,
            committed,
            next_lsn: 0,
            current: None,
            metrics,
        }
    }

    /// Positions the reader at `lsn` (the next record it returns).
    pub fn seek(&mut self, lsn: Lsn) -> std::io::Result<()> {
        self.current = None;
        self.next_lsn = lsn;
        let bases = segment::list(&self.dir)?;
        let Some(&base) = bases.iter().rev().find(|&&b| b <= lsn).or(bases.first()) else {
            return Ok(());
        };
        if base > lsn {
            tracing::warn!(
                wanted = lsn,
                first = base,
                "spool records before the first segment are gone; resuming at the first segment"
            );
            self.next_lsn = base;
        }
        self.current = Some(OpenSegment {
            base,
            file: File::open(segment::path(&self.dir, base))?,
            offset: MAGIC.len() as u64,
        });
        // Skip to `lsn` within the segment.
        let mut at = base;
        while at < self.next_lsn {
            let cur = self.current.as_mut().expect("opened above");
            match read_frame(&cur.file, cur.offset)? {
                Some((len, _)) => {
                    cur.offset += len;
                    at += 1;
                }
                None => break,
            }
        }
        Ok(())
    }

    /// The next committed record, waiting for one; `None` once the writer has stopped and
    /// everything it committed was read. Cancel-safe: state changes only after the wait.
    pub async fn next(&mut self) -> std::io::Result<Option<Record>> {
        loop {
            if self.next_lsn < *self.committed.borrow_and_update() {
                return self.read_one().map(Some);
            }
            if self.committed.changed().await.is_err() {
                // Writer gone: drain what it committed last.
                if self.next_lsn < *self.committed.borrow() {
                    return self.read_one().map(Some);
                }
                return Ok(None);
            }
        }
    }

    /// The next record if one is committed, without waiting.
    /// Whether a committed record waits to be read (a backlog, when the sink is behind).
    pub fn has_committed(&self) -> bool {
        self.next_lsn < *self.committed.borrow()
    }

    pub fn try_next(&mut self) -> std::io::Result<Option<Record>> {
        if self.next_lsn < *self.committed.borrow() {
            self.read_one().map(Some)
        } else {
            Ok(None)
        }
    }

    fn read_one(&mut self) -> std::io::Result<Record> {
        loop {
            if self.current.is_none() {
                self.open_segment_for_next()?;
            }
            let cur = self.current.as_mut().expect("opened");
            match read_frame(&cur.file, cur.offset) {
                Ok(Some((len, (appended_ms, payload)))) => {
                    cur.offset += len;
                    let lsn = self.next_lsn;
                    self.next_lsn += 1;
                    return Ok(Record {
                        lsn,
                        appended_ms,
                        payload,
                    });
                }
                // End of this segment: a committed record we have not read must be in the next.
                Ok(None) => {
                    if cur.base == self.next_lsn && cur.offset == MAGIC.len() as u64 {
                        return Err(std::io::Error::other(format!(
                            "spool segment {} is empty but record {} is committed",
                            cur.base, self.next_lsn
                        )));
                    }
                    self.current = None;
                }
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    // Bit rot in a sealed segment: what follows in it cannot be framed. Count
                    // and skip to the next segment rather than stall the pipeline forever.
                    self.metrics.spool_corrupt_records.inc();
                    let bases = segment::list(&self.dir)?;
                    let base = cur.base;
                    match bases.into_iter().find(|&b| b > base) {
                        Some(next) => {
                            tracing::error!(
                                segment = base,
                                at_lsn = self.next_lsn,
                                resume = next,
                                "corrupt spool record; skipping the rest of the segment"
                            );
                            self.next_lsn = next;
                            self.current = None;
                        }
                        None => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn open_segment_for_next(&mut self) -> std::io::Result<()> {
        let bases = segment::list(&self.dir)?;
        let base = bases
            .iter()
            .copied()
            .find(|&b| b == self.next_lsn)
            .or_else(|| bases.iter().rev().copied().find(|&b| b <= self.next_lsn))
            .ok_or_else(|| {
                std::io::Error::other(format!("no spool segment holds record {}", self.next_lsn))
            })?;
        let file = File::open(segment::path(&self.dir, base))?;
        self.current = Some(OpenSegment {
            base,
            file,
            offset: MAGIC.len() as u64,
        });
        if base != self.next_lsn {
            let target = self.next_lsn;
            self.seek(target)?;
        }
        Ok(())
    }
}

type Frame = (u64, (u64, Vec<u8>));

/// Reads the frame at `offset`: `Ok(None)` at a clean end of file, `InvalidData` if corrupt.
fn read_frame(file: &File, offset: u64) -> std::io::Result<Option<Frame>> {
    let mut header = [0u8; HEADER_LEN];
    let n = read_up_to(file, &mut header, offset)?;
    if n == 0 {
        return Ok(None);
    }
    if n < HEADER_LEN {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "torn record header",
        ));
    }
    let h = record::parse_header(&header);
    if h.len > record::MAX_RECORD_LEN {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "record length out of bounds",
        ));
    }
    let mut payload = vec![0u8; h.len as usize];
    let got = read_up_to(file, &mut payload, offset + HEADER_LEN as u64)?;
    if got < payload.len() || !record::verify(&h, &payload) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "record checksum mismatch",
        ));
    }
    Ok(Some((
        record::framed_len(payload.len()),
        (h.appended_ms, payload),
    )))
}

fn read_up_to(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Calls `f(appended_ms, payload)` for every record on disk appended at or after `since_ms`,
/// segment by segment in LSN order; returns how many. Only headers are read for older records.
/// For the start of `serve`, before the sink runs: a segment deleted meanwhile is skipped, and a
/// segment stops at its first record that does not frame (recovery truncated the tail already).
pub fn scan_recent(
    dir: &std::path::Path,
    since_ms: u64,
    mut f: impl FnMut(u64, &[u8]),
) -> std::io::Result<usize> {
    let mut n = 0;
    for base in segment::list(dir)? {
        let file = match File::open(segment::path(dir, base)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut offset = MAGIC.len() as u64;
        loop {
            let mut header = [0u8; HEADER_LEN];
            if read_up_to(&file, &mut header, offset)? < HEADER_LEN {
                break;
            }
            let h = record::parse_header(&header);
            if h.len > record::MAX_RECORD_LEN {
                break;
            }
            if h.appended_ms >= since_ms {
                let mut payload = vec![0u8; h.len as usize];
                let got = read_up_to(&file, &mut payload, offset + HEADER_LEN as u64)?;
                if got < payload.len() || !record::verify(&h, &payload) {
                    break;
                }
                f(h.appended_ms, &payload);
                n += 1;
            }
            offset += record::framed_len(h.len as usize);
        }
    }
    Ok(n)
}
