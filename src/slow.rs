//! Slow-call detection: a ClickHouse insert, a report query or a compactor step slower than its
//! threshold (`[observability]`) is counted in `clicktrail_slow_calls_total{kind}`; the caller
//! logs it with what it knows (request id, batch range, rows, bytes), so a slow ClickHouse is
//! visible call by call before the freshness alert fires.
//!
//! Invariant: `kind` is one of [`SlowKind`]'s closed set of labels.

use std::time::Duration;

use crate::config::ObservabilityConfig;
use crate::metrics::{KindLabel, Metrics};

/// What was slow; the `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowKind {
    /// One attempt of a sink insert.
    Insert,
    /// One `/v1/query/*` call.
    Query,
    /// One step of the compactor on one day.
    Compactor,
}

impl SlowKind {
    pub const ALL: [SlowKind; 3] = [SlowKind::Insert, SlowKind::Query, SlowKind::Compactor];

    pub fn as_str(self) -> &'static str {
        match self {
            SlowKind::Insert => "insert",
            SlowKind::Query => "query",
            SlowKind::Compactor => "compactor",
        }
    }
}

/// The thresholds and the counter; cheap to clone.
#[derive(Clone)]
pub struct SlowCalls {
    cfg: ObservabilityConfig,
    metrics: Metrics,
}

impl SlowCalls {
    pub fn new(cfg: &ObservabilityConfig, metrics: Metrics) -> Self {
        Self {
            cfg: cfg.clone(),
            metrics,
        }
    }

    fn threshold(&self, kind: SlowKind) -> Duration {
        match kind {
            SlowKind::Insert => self.cfg.slow_insert,
            SlowKind::Query => self.cfg.slow_query,
            SlowKind::Compactor => self.cfg.slow_compactor_step,
        }
    }

    /// Whether a call of `kind` that took `took` was slow; a slow one is counted, and the
    /// caller logs it with its context.
    pub fn is_slow(&self, kind: SlowKind, took: Duration) -> bool {
        let limit = self.threshold(kind);
        let slow = !limit.is_zero() && took >= limit;
        if slow {
            self.metrics
                .slow_calls
                .get_or_create(&KindLabel {
                    kind: kind.as_str(),
                })
                .inc();
        }
        slow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_calls_over_their_threshold() {
        let m = Metrics::new();
        let cfg = ObservabilityConfig {
            slow_insert: Duration::from_millis(100),
            slow_query: Duration::ZERO,
            ..ObservabilityConfig::default()
        };
        let s = SlowCalls::new(&cfg, m.clone());
        assert!(!s.is_slow(SlowKind::Insert, Duration::from_millis(99)));
        assert!(s.is_slow(SlowKind::Insert, Duration::from_millis(100)));
        assert!(
            !s.is_slow(SlowKind::Query, Duration::from_secs(3600)),
            "0s is off"
        );
        let text = m.encode();
        assert!(
            text.contains("clicktrail_slow_calls_total{kind=\"insert\"} 1"),
            "{text}"
        );
    }
}
