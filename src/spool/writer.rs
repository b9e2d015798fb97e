//! The single writer. It owns the segment files: it appends, rotates, and deletes segments the
//! sink has delivered. Handlers reach it only through [`SpoolHandle::append`].
//!
//! Group commit: the writer takes every request waiting in its channel (up to
//! `commit_max_bytes`), writes them with one `write`, makes them durable with one `fdatasync`,
//! then answers all of them. Requests that arrive during an fsync form the next group, so the
//! number of fsyncs adapts to the load without a timer.
//!
//! Host faults: a write or a segment rotation that fails for want of space or file descriptors
//! (ENOSPC, EDQUOT, EMFILE, ENFILE, ...) is rolled back and retried: meanwhile requests are
//! answered with [`SpoolError::Io`] (HTTP 503 + `Retry-After`) without touching the disk, for a
//! backoff that doubles up to [`MAX_RETRY_DELAY`]; the first commit that works clears it. Only a
//! state the writer cannot vouch for (a rollback that failed, an unexpected rotation error) is
//! `failed`, which `/healthz` reports so that a supervisor restarts the process.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::record;
use super::segment;
use super::{Lsn, SpoolError, SpoolStatus};
use crate::config::{FsyncMode, SpoolConfig};
use crate::metrics::Metrics;

/// First wait after a transient host fault, doubled per failure up to [`MAX_RETRY_DELAY`].
pub(super) const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
pub(super) const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// Errors the host recovers from by itself (space or descriptors freed): retried, not failed.
fn transient(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    Errno::from_io_error(e).is_some_and(|n| {
        [
            Errno::NOSPC,
            Errno::DQUOT,
            Errno::MFILE,
            Errno::NFILE,
            Errno::NOMEM,
            Errno::AGAIN,
            Errno::INTR,
        ]
        .contains(&n)
    })
}

pub(super) struct AppendRequest {
    pub payload: Vec<u8>,
    pub reply: oneshot::Sender<Result<Lsn, SpoolError>>,
}

/// Cloneable handle for producers (the ingest use case, for clients and for dead-letter
/// replays, and the freshness canary). When every handle is dropped the writer commits what
/// it has and stops.
#[derive(Clone)]
pub struct SpoolHandle {
    tx: mpsc::Sender<AppendRequest>,
    status: watch::Receiver<SpoolStatus>,
}

impl SpoolHandle {
    pub(super) fn new(
        tx: mpsc::Sender<AppendRequest>,
        status: watch::Receiver<SpoolStatus>,
    ) -> Self {
        Self { tx, status }
    }

    /// Appends one record and returns once it is committed (durable per `spool.fsync`).
    pub async fn append(&self, payload: Vec<u8>) -> Result<Lsn, SpoolError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(AppendRequest { payload, reply })
            .await
            .map_err(|_| SpoolError::Closed)?;
        rx.await.map_err(|_| SpoolError::Closed)?
    }

    pub fn status(&self) -> SpoolStatus {
        self.status.borrow().clone()
    }
}

pub(super) struct Writer {
    pub dir: PathBuf,
    pub cfg: SpoolConfig,
    pub metrics: Metrics,
    /// (base, bytes) of every segment on disk; the last one is active.
    pub segments: Vec<(u64, u64)>,
    pub active: File,
    pub next_lsn: Lsn,
    pub delivered: Lsn,
    pub committed_tx: watch::Sender<Lsn>,
    pub status_tx: watch::Sender<SpoolStatus>,
    pub failed: Option<String>,
    /// A transient host fault: requests are refused until `retry_at`, then tried again.
    pub degraded: Option<String>,
    pub retry_at: Instant,
    pub retry_delay: Duration,
    pub clock: crate::clock::Clock,
}

impl Writer {
    fn total_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.1).sum()
    }

    fn active_len(&self) -> u64 {
        self.segments.last().map(|s| s.1).unwrap_or(0)
    }

    /// Runs on its own thread until every [`SpoolHandle`] is gone.
    pub(super) fn run(
        mut self,
        mut rx: mpsc::Receiver<AppendRequest>,
        mut delivered: watch::Receiver<Lsn>,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("spool writer runtime");
        rt.block_on(async move {
            let mut sink_alive = true;
            self.publish();
            loop {
                let first = tokio::select! {
                    req = rx.recv() => match req {
                        Some(r) => r,
                        None => break,
                    },
                    changed = delivered.changed(), if sink_alive => {
                        match changed {
                            Ok(()) => {
                                let d = *delivered.borrow_and_update();
                                self.reclaim(d);
                            }
                            Err(_) => sink_alive = false,
                        }
                        continue;
                    }
                };
                let d = *delivered.borrow_and_update();
                self.reclaim(d);
                let group = self.gather(first, &mut rx).await;
                self.commit_group(group);
            }
            // Handles are gone: nothing more can be acknowledged. Make sure what was written is
            // on disk even in `never` mode, so a clean shutdown never loses data.
            let _ = self.active.sync_data();
            tracing::info!(next_lsn = self.next_lsn, "spool writer stopped");
        });
    }

    async fn gather(
        &self,
        first: AppendRequest,
        rx: &mut mpsc::Receiver<AppendRequest>,
    ) -> Vec<AppendRequest> {
        let mut bytes = first.payload.len();
        let mut group = vec![first];
        if self.cfg.fsync == FsyncMode::Always {
            return group;
        }
        if !self.cfg.commit_interval.is_zero() {
            let deadline = tokio::time::Instant::now() + self.cfg.commit_interval;
            while bytes < self.cfg.commit_max_bytes {
                tokio::select! {
                    r = rx.recv() => match r {
                        Some(r) => { bytes += r.payload.len(); group.push(r); }
                        None => break,
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
        }
        while bytes < self.cfg.commit_max_bytes {
            match rx.try_recv() {
                Ok(r) => {
                    bytes += r.payload.len();
                    group.push(r);
                }
                Err(_) => break,
            }
        }
        group
    }

    fn commit_group(&mut self, group: Vec<AppendRequest>) {
        let started = Instant::now();
        let now_ms = self.clock.now_ms() as u64;
        let mut buf = Vec::with_capacity(group.iter().map(|r| r.payload.len() + 16).sum());
        let mut waiting: Vec<(oneshot::Sender<Result<Lsn, SpoolError>>, Lsn)> = Vec::new();
        let mut chunk_start_lsn = self.next_lsn;
        for req in group {
            if let Some(refusal) = self.refusal() {
                let _ = req.reply.send(Err(refusal));
                continue;
            }
            let framed = record::framed_len(req.payload.len());
            if self.total_bytes() + buf.len() as u64 + framed > self.cfg.max_bytes {
                self.metrics.spool_full_rejections.inc();
                let _ = req.reply.send(Err(SpoolError::Full));
                continue;
            }
            let active_used = self.active_len() + buf.len() as u64;
            if active_used + framed > self.cfg.segment_bytes
                && active_used > record::MAGIC.len() as u64
            {
                // Seal the active segment (durably, whatever the fsync mode: the reader and
                // recovery rely on sealed segments being whole), then start the next one.
                self.write_chunk(&mut buf, &mut waiting, chunk_start_lsn, true);
                if self.refusal().is_none() {
                    match self.rotate() {
                        Ok(()) => {}
                        Err(e) if transient(&e) => {
                            self.retry_later(format!("cannot create a spool segment: {e}"))
                        }
                        Err(e) => self.fail(format!("cannot create a spool segment: {e}")),
                    }
                }
                chunk_start_lsn = self.next_lsn;
                if let Some(refusal) = self.refusal() {
                    let _ = req.reply.send(Err(refusal));
                    continue;
                }
            }
            record::encode(&mut buf, now_ms, &req.payload);
            waiting.push((req.reply, self.next_lsn));
            self.next_lsn += 1;
        }
        let sync = self.cfg.fsync != FsyncMode::Never;
        self.write_chunk(&mut buf, &mut waiting, chunk_start_lsn, sync);
        self.metrics
            .spool_commit_duration
            .observe(started.elapsed().as_secs_f64());
        self.publish();
    }

    /// Writes `buf` at the end of the active segment, optionally fsyncs, publishes the new
    /// committed position and answers the waiting requests. On an I/O error the segment is cut
    /// back to its previous length, so no half-written record stays behind an acknowledged one.
    fn write_chunk(
        &mut self,
        buf: &mut Vec<u8>,
        waiting: &mut Vec<(oneshot::Sender<Result<Lsn, SpoolError>>, Lsn)>,
        chunk_start_lsn: Lsn,
        sync: bool,
    ) {
        if buf.is_empty() {
            return;
        }
        let before = self.active_len();
        let mut result = self.active.write_all_at(buf, before);
        if result.is_ok() && sync {
            result = self.active.sync_data();
            self.metrics.spool_fsyncs.inc();
        }
        match result {
            Ok(()) => {
                if let Some(last) = self.segments.last_mut() {
                    last.1 += buf.len() as u64;
                }
                self.committed_tx.send_replace(self.next_lsn);
                if self.degraded.take().is_some() {
                    tracing::info!("spool writes work again");
                    self.retry_delay = FIRST_RETRY_DELAY;
                }
                for (reply, lsn) in waiting.drain(..) {
                    let _ = reply.send(Ok(lsn));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "spool write failed; rolling back this commit");
                self.next_lsn = chunk_start_lsn;
                match self.active.set_len(before) {
                    Ok(()) => self.retry_later(format!("spool write failed: {e}")),
                    Err(e2) => self.fail(format!("write failed ({e}) and rollback failed ({e2})")),
                }
                for (reply, _) in waiting.drain(..) {
                    let _ = reply.send(Err(SpoolError::Io(e.to_string())));
                }
            }
        }
        buf.clear();
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.active.sync_all()?;
        let f = segment::create(&self.dir, self.next_lsn)?;
        self.active = f;
        self.segments
            .push((self.next_lsn, record::MAGIC.len() as u64));
        Ok(())
    }

    /// Why a request cannot be taken now, if it cannot: failed for good, or backing off after
    /// a transient fault.
    fn refusal(&self) -> Option<SpoolError> {
        if let Some(why) = &self.failed {
            return Some(SpoolError::Failed(why.clone()));
        }
        match &self.degraded {
            Some(why) if Instant::now() < self.retry_at => Some(SpoolError::Io(why.clone())),
            _ => None,
        }
    }

    /// A transient fault: refuse requests (503) for the current backoff, then try again.
    fn retry_later(&mut self, why: String) {
        tracing::error!(reason = %why, retry_in = ?self.retry_delay, "spool cannot write; refusing events (503) and retrying");
        self.metrics.spool_write_errors.inc();
        self.retry_at = Instant::now() + self.retry_delay;
        self.retry_delay = (self.retry_delay * 2).min(MAX_RETRY_DELAY);
        self.degraded = Some(why);
    }

    fn fail(&mut self, why: String) {
        tracing::error!(reason = %why, "spool writer failed; restart the collector after fixing the cause");
        self.failed = Some(why);
    }

    /// Deletes sealed segments whose records are all below `delivered`.
    fn reclaim(&mut self, delivered: Lsn) {
        self.delivered = self.delivered.max(delivered);
        while self.segments.len() > 1 && self.segments[1].0 <= self.delivered {
            let (base, _) = self.segments[0];
            match std::fs::remove_file(segment::path(&self.dir, base)) {
                Ok(()) => {
                    self.segments.remove(0);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.segments.remove(0);
                }
                Err(e) => {
                    tracing::warn!(error = %e, base, "cannot delete delivered spool segment");
                    break;
                }
            }
        }
        self.publish();
    }

    fn publish(&self) {
        let bytes = self.total_bytes();
        self.metrics.spool_bytes.set(bytes as i64);
        self.metrics.spool_segments.set(self.segments.len() as i64);
        self.metrics
            .spool_pending_records
            .set(self.next_lsn.saturating_sub(self.delivered) as i64);
        self.status_tx.send_replace(SpoolStatus {
            committed: self.next_lsn,
            bytes,
            quota: self.cfg.max_bytes,
            // "Full" for readiness: the next typical request would not fit.
            full: bytes + 64 * 1024 > self.cfg.max_bytes,
            failed: self.failed.clone(),
            degraded: self.degraded.clone(),
        });
    }
}
