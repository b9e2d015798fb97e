//! What one client and all requests together may take: the per-address request rate
//! ([`crate::ratelimit`]) and the body bytes held by requests not yet answered.
//!
//! Invariant: the checks run before the body is read, so a refused request costs no body
//! memory; the byte permits of a request are held until it is answered (through the spool
//! commit), so they bound what waits ahead of the spool.

use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::RateLimitConfig;
use crate::ratelimit::KeyedLimit;
pub(super) use crate::ratelimit::{ip_key, retry_after_secs};

/// The per-address limit of the HTTP layer (the per-site one lives with the site policy in
/// [`crate::ingest`]).
pub(super) struct ClientLimits {
    pub(super) per_ip: KeyedLimit<IpAddr>,
}

impl ClientLimits {
    pub(super) fn new(c: &RateLimitConfig) -> Self {
        Self {
            per_ip: KeyedLimit::new(c.per_ip_per_second, c.per_ip_burst),
        }
    }
}

/// Body bytes of requests not yet answered, as permits of a semaphore.
#[derive(Clone)]
pub(super) struct InflightBytes {
    sem: Arc<Semaphore>,
}

impl InflightBytes {
    pub(super) fn new(max: usize) -> Self {
        Self {
            sem: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
        }
    }

    /// Takes `n` bytes now, or `None` if that many are not free.
    pub(super) fn try_take(&self, n: usize) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(n).ok()?;
        self.sem.clone().try_acquire_many_owned(n).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflight_bytes_are_returned_on_drop() {
        let b = InflightBytes::new(100);
        let p = b.try_take(80).unwrap();
        assert!(b.try_take(30).is_none());
        drop(p);
        assert!(b.try_take(100).is_some());
    }
}
