//! Freshness: how far the data analysts can query lags behind what the collector acknowledged.
//!
//! `clicktrail_freshness_lag_seconds` = now − append time of the oldest record that is
//! committed to the spool but not yet confirmed by ClickHouse; 0 when the sink is caught up.
//! It is recomputed every second from the sink's status, so it keeps rising while ClickHouse
//! is down or slow even when no new traffic arrives, and falls to ~0 (at most `sink.batch_age`
//! plus one insert) once delivery catches up. The ClickHouse probe (`SELECT 1`) also runs here.
//!
//! On a cluster (`clickhouse.cluster`) the probe also asks every replica named in
//! `system.clusters` (`remote('host:port', system.one)` from the configured server, which is
//! the path inserts take) and exports `clicktrail_clickhouse_replica_up{shard, replica}` and
//! `clicktrail_clickhouse_shard_up{shard}` (a shard is up while one replica answers: a
//! synchronous insert needs exactly that). A shard without a live replica makes the probe fail,
//! so `/readyz` says not ready: every insert fails until it is back (the spool holds them).
//!
//! The canary measures the same thing from the outside: every `freshness.canary_interval` one
//! event (site `__canary`) goes through the real path (spool → sink → ClickHouse) and is looked
//! up every 250 ms; `clicktrail_canary_delay_seconds` is its append-to-visible delay, and while
//! it is not visible the gauge keeps rising with its age, so a stuck pipeline never shows a
//! stale low value. One canary is in flight at a time.

use std::time::Duration;

use tokio::sync::watch;

use crate::http::ProbeStatus;
use crate::metrics::Metrics;
use crate::sink::SinkStatus;

/// Updates the lag gauges once a second until `stop` fires.
pub async fn run_lag(
    metrics: Metrics,
    sink: watch::Receiver<SinkStatus>,
    clock: crate::clock::Clock,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let lag = lag_seconds(sink.borrow().oldest_pending_ms, clock.now_ms());
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

/// Probes ClickHouse every `interval` and publishes the result for readiness and metrics;
/// with a `cluster` name, every shard and replica too.
pub async fn run_probe(
    client: clickhouse::Client,
    cluster: String,
    interval: Duration,
    timeout: Duration,
    metrics: Metrics,
    tx: watch::Sender<ProbeStatus>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let mut r = crate::clickhouse::ping(&client, timeout).await;
        metrics.clickhouse_up.set(i64::from(r.is_ok()));
        if r.is_ok() && !cluster.is_empty() {
            r = probe_shards(&client, &cluster, timeout, &metrics).await;
        }
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

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct ClusterReplica {
    shard_num: u32,
    host_address: String,
    port: u16,
}

/// Asks each replica of `cluster` through the configured server; `Err` names the first shard
/// with no live replica.
async fn probe_shards(
    client: &clickhouse::Client,
    cluster: &str,
    timeout: Duration,
    metrics: &Metrics,
) -> ProbeStatus {
    use crate::clickhouse::PingError;
    use crate::metrics::{ReplicaLabel, ShardLabel};
    let replicas = client
        .query(
            "SELECT shard_num, host_address, port FROM system.clusters WHERE cluster = ? \
             ORDER BY shard_num, replica_num",
        )
        .bind(cluster)
        .fetch_all::<ClusterReplica>();
    let replicas = match tokio::time::timeout(timeout, replicas).await {
        Ok(Ok(r)) if !r.is_empty() => r,
        Ok(Ok(_)) => {
            return Err(PingError::Failed(format!(
                "cluster `{cluster}` is not in the server's remote_servers (clickhouse.cluster)"
            )))
        }
        Ok(Err(e)) => return Err(PingError::Failed(e.to_string())),
        Err(_) => return Err(PingError::Timeout(timeout)),
    };
    // Shards in order, each up while any of its replicas answered.
    let mut shards: Vec<(u32, bool)> = Vec::new();
    for rep in &replicas {
        let addr = format!("{}:{}", rep.host_address, rep.port);
        // Over the native protocol from the entry server, the path the Distributed table's
        // inserts take. remote() without credentials logs in as `default` without a password,
        // as the loopback cluster and the shipped configs do; where the shards require a
        // password, a failing probe here (every replica down at once) says so.
        let one = client
            .query(&format!("SELECT count() FROM remote('{addr}', system.one)"))
            .fetch_one::<u64>();
        let up = matches!(tokio::time::timeout(timeout, one).await, Ok(Ok(1)));
        let shard = rep.shard_num.to_string();
        metrics
            .clickhouse_replica_up
            .get_or_create(&ReplicaLabel {
                shard: shard.clone(),
                replica: addr,
            })
            .set(i64::from(up));
        match shards.last_mut() {
            Some((s, any)) if *s == rep.shard_num => *any |= up,
            _ => shards.push((rep.shard_num, up)),
        }
    }
    for (shard, up) in &shards {
        metrics
            .clickhouse_shard_up
            .get_or_create(&ShardLabel {
                shard: shard.to_string(),
            })
            .set(i64::from(*up));
    }
    match shards.iter().find(|(_, up)| !up) {
        Some((shard, _)) => Err(PingError::Failed(format!(
            "shard {shard} of cluster `{cluster}`: no replica answers"
        ))),
        None => Ok(()),
    }
}

pub const CANARY_SITE: &str = "__canary";

fn canary_event(id: &str, now_ms: i64) -> crate::event::Event {
    let secs = (now_ms / 1000) as u32;
    crate::event::Event {
        event_id: id.to_string().into(),
        site: CANARY_SITE.into(),
        kind: "custom".into(),
        name: "canary".into(),
        ts: secs,
        ts_ms: (now_ms % 1000) as u16,
        received_at: secs,
        url: "http://clicktrail.invalid/canary".into(),
        host: "clicktrail.invalid".into(),
        path: "/canary".into(),
        session_id: "canary".into(),
        visitor_id: "canary".into(),
        device: "other".into(),
        device_class: "unknown".into(),
        ..Default::default()
    }
}

/// Writes a canary through the spool every `interval` and looks for it in ClickHouse.
pub async fn run_canary(
    spool: crate::spool::SpoolHandle,
    client: clickhouse::Client,
    database: String,
    interval: Duration,
    metrics: Metrics,
    clock: crate::clock::Clock,
    mut stop: watch::Receiver<bool>,
) {
    let mut send = tokio::time::interval(interval);
    send.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut look = tokio::time::interval(Duration::from_millis(250));
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending: Option<(String, std::time::Instant)> = None;
    let sql = format!(
        "SELECT count() FROM {database}.events WHERE site = '{CANARY_SITE}' AND type = 'custom' AND event_id = ?"
    );
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = send.tick(), if pending.is_none() => {
                let now = clock.now_ms();
                let id = format!("canary-{now}");
                let payload = crate::spool::encode_events(&[canary_event(&id, now)]);
                match spool.append(payload).await {
                    Ok(_) => pending = Some((id, std::time::Instant::now())),
                    // A full spool is already alerted on; the lag gauge keeps counting.
                    Err(e) => tracing::debug!(error = %e, "canary not written"),
                }
            }
            _ = look.tick(), if pending.is_some() => {
                let (id, sent) = pending.as_ref().expect("guarded");
                let age = sent.elapsed().as_secs_f64();
                match client.query(&sql).bind(id.as_str()).fetch_one::<u64>().await {
                    Ok(n) if n > 0 => {
                        metrics.canary_delay.set(age);
                        pending = None;
                    }
                    // Not visible yet, or ClickHouse unreachable: the delay is at least this.
                    _ => {
                        metrics.canary_delay.set(age);
                    }
                }
            }
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
