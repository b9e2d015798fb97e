//! Wall-clock time as clicktrail reads it: one [`Clock`] built by `serve` and handed to every
//! part that stamps or compares times (receive times, dead-letter times, spool record times,
//! the compactor's notion of today, freshness). Tests build a [`Clock::manual`] one and move
//! it, instead of waiting for real time to pass.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// `None`: the system clock. `Some`: a clock that moves only when told.
    manual: Option<Arc<AtomicI64>>,
}

impl Clock {
    pub fn system() -> Self {
        Self::default()
    }

    /// A clock standing at `ms` (epoch milliseconds) until [`Clock::set_ms`] moves it.
    pub fn manual(ms: i64) -> Self {
        Self {
            manual: Some(Arc::new(AtomicI64::new(ms))),
        }
    }

    /// Moves a manual clock (every clone of it); a system clock ignores this.
    pub fn set_ms(&self, ms: i64) {
        if let Some(m) = &self.manual {
            m.store(ms, Ordering::Relaxed);
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        match &self.manual {
            Some(m) => m.load(Ordering::Relaxed),
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
        }
    }

    /// Days since the Unix epoch (UTC).
    pub fn today(&self) -> i64 {
        self.now_ms().div_euclid(86_400_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clocks_move_when_told_and_system_clocks_run() {
        let c = Clock::manual(86_400_000 * 3 + 5);
        let same = c.clone();
        assert_eq!(c.today(), 3);
        same.set_ms(86_400_000 * 4);
        assert_eq!(c.today(), 4, "clones share the time");
        let sys = Clock::system();
        assert!(sys.now_ms() > 1_700_000_000_000);
    }
}
