//! Freshness: how far the data analysts can query lags behind what the collector acknowledged.
//!
//! `clicktrail_freshness_lag_seconds` = now − append time of the oldest record that is
//! committed to the spool but not yet confirmed by ClickHouse; 0 when the sink is caught up.
//! It is recomputed every second from the sink's status, so it keeps rising while ClickHouse
//! is down or slow even when no new traffic arrives, and falls to ~0 (at most `sink.batch_age`
//! plus one insert) once delivery catches up. The ClickHouse probe (`SELECT 1`) also runs here.

use std::time::Duration;

use tokio::sync::watch;

use crate::http::ProbeStatus;
use crate::metrics::Metrics;
use crate::sink::SinkStatus;

/// Updates the lag gauges once a second until `stop` fires.
pub async fn run_lag(
    metrics: Metrics,
    sink: watch::Receiver<SinkStatus>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let lag = lag_seconds(
            sink.borrow().oldest_pending_ms,
            crate::event::RequestContext::now_ms(),
        );
        metrics.freshness_lag.set(lag);
        metrics.spool_oldest_pending_age.set(lag);
    }
}

pub fn lag_seconds(oldest_pending_ms: Option<u64>, now_ms: i64) -> f64 {
    match oldest_pending_ms {
        Some(t) => ((now_ms - t as i64).max(0)) as f64 / 1000.0,
        None => 0.0,
    }
}

/// Probes ClickHouse every `interval` and publishes the result for readiness and metrics.
pub async fn run_probe(
    client: clickhouse::Client,
    interval: Duration,
    timeout: Duration,
    metrics: Metrics,
    tx: watch::Sender<ProbeStatus>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let r = crate::sink::client::ping(&client, timeout).await;
        metrics.clickhouse_up.set(i64::from(r.is_ok()));
        if let Err(e) = &r {
            tracing::debug!(error = %e, "clickhouse probe failed");
        }
        let _ = tx.send_replace(r);
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_age_of_oldest_pending() {
        assert_eq!(lag_seconds(None, 10_000), 0.0);
        assert_eq!(lag_seconds(Some(4_000), 10_000), 6.0);
        assert_eq!(
            lag_seconds(Some(12_000), 10_000),
            0.0,
            "clock steps never go negative"
        );
    }
}
