//! Freshness: how far the data analysts can query lags behind what the collector acknowledged.
//!
//! `clicktrail_freshness_lag_seconds` = now − append time of the oldest record that is
//! committed to the spool but not yet confirmed by ClickHouse; 0 when the sink is caught up.
//! It is recomputed every second from the sink's status, so it keeps rising while ClickHouse
//! is down or slow even when no new traffic arrives, and falls to ~0 (at most `sink.batch_age`
//! plus one insert) once delivery catches up. The ClickHouse probe (`SELECT 1`) also runs here.
//!
//! On a cluster (`clickhouse.cluster`) the probe also asks every replica named in
//! `system.clusters` (`remote('host:port', system.one, user, password)` from the configured
//! server, which is the path inserts take, with the configured `clickhouse.user` and
//! `clickhouse.password`) and exports `clicktrail_clickhouse_replica_up{shard, replica}` and
//! `clicktrail_clickhouse_shard_up{shard}` (a shard is up while one replica answers: a
//! synchronous insert needs exactly that). A shard without a live replica makes the probe fail,
//! so `/readyz` says not ready: every insert fails until it is back (the spool holds them). A
//! replica that stops answering is logged once (warn, with the server's reason: refused
//! connection, wrong password, ...), and once when it answers again.
//!
//! The canary measures the same thing from the outside: every `freshness.canary_interval` one
//! event (site `__canary`) goes through the real path (spool → sink → ClickHouse) and is looked
//! up every 250 ms; `clicktrail_canary_delay_seconds` is its append-to-visible delay, and while
//! it is not visible the gauge keeps rising with its age, so a stuck pipeline never shows a
//! stale low value. One canary is in flight at a time.
//!
//! On a cluster the unlabeled canary (read through the Distributed `events`) lands on one
//! shard only, so the shard canaries add one canary per shard per interval, each with a
//! session id that the Distributed table sends to that shard (the server's own
//! `cityHash64('__canary', 'canary-N')` for N < 256, mapped to a shard by the weights as
//! Distributed does), read on every replica of the shard (`remote(replica, db.events_local)`):
//! `clicktrail_canary_delay_seconds{shard, replica}`. Invariants: at most one canary in
//! flight per shard (the next is written once some replica shows the last one), so a shard
//! that takes no insert gets one canary whose age keeps rising on all its replicas; a replica
//! that falls behind measures from the oldest canary it has not shown, so its delay rises while
//! its peers' stay low; every lookup has a deadline ([`LOOKUP_TIMEOUT`]) on both ends.
//! Credentials never reach a log line or a metric: they are bound into the query body only,
//! and error texts are redacted ([`RemoteAuth::redact`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// Credentials that `remote()` passes to the replicas: the configured `clickhouse.user` and
/// `clickhouse.password`. The password only ever goes into the query body (bound as a string
/// literal); error texts are passed through [`RemoteAuth::redact`] before they are logged or
/// published, in case a server ever quotes the query back.
#[derive(Clone)]
pub struct RemoteAuth {
    user: String,
    password: crate::config::Secret,
}

impl RemoteAuth {
    pub fn new(cfg: &crate::config::ClickHouseConfig) -> Self {
        Self {
            user: cfg.user.clone(),
            password: cfg.password.clone(),
        }
    }

    /// `text` with every occurrence of the password (raw or as the SQL literal carries it)
    /// replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        let pw = self.password.expose();
        if pw.is_empty() {
            return text.to_string();
        }
        let escaped = pw.replace('\\', "\\\\").replace('\'', "\\'");
        text.replace(escaped.as_str(), "***").replace(pw, "***")
    }

    /// Binds the `?`s of [`remote`] after the address: user, then password.
    fn bind(&self, q: ::clickhouse::query::Query) -> ::clickhouse::query::Query {
        q.bind(self.user.as_str()).bind(self.password.expose())
    }
}

/// `remote(?, table, ?, ?)`: address, user and password are bound (`?`), so quotes or
/// backslashes in any of them stay inside their literals (checked on 18.16: it accepts
/// `remote('host:port', db.table, 'user', 'password')`).
fn remote(table: &str) -> String {
    format!("remote(?, {table}, ?, ?)")
}

/// Server-side limits for a query that reaches another server through `remote()`, so that a
/// replica which accepts the connection but never answers does not keep the query (and the
/// entry server's connection) busy after the client-side deadline has given up on it.
fn remote_limits(q: ::clickhouse::query::Query, timeout: Duration) -> ::clickhouse::query::Query {
    let secs = timeout.as_secs().max(1).to_string();
    q.with_setting("max_execution_time", secs.clone())
        .with_setting("receive_timeout", secs.clone())
        .with_setting("send_timeout", secs)
}

/// One shard of the configured cluster as `system.clusters` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// `shard_num`: 1-based, in `remote_servers` order (the order Distributed's slots follow).
    pub num: u32,
    pub weight: u32,
    /// `host_address:port` of each replica, in `replica_num` order.
    pub replicas: Vec<String>,
}

/// The cluster's shards, as the probe last read them; the shard canaries follow it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Topology {
    pub shards: Vec<Shard>,
}

impl Topology {
    fn from_rows(rows: &[ClusterReplica]) -> Self {
        let mut shards: Vec<Shard> = Vec::new();
        for r in rows {
            let addr = format!("{}:{}", r.host_address, r.port);
            match shards.last_mut() {
                Some(s) if s.num == r.shard_num => s.replicas.push(addr),
                _ => shards.push(Shard {
                    num: r.shard_num,
                    weight: r.shard_weight,
                    replicas: vec![addr],
                }),
            }
        }
        Self { shards }
    }

    /// The shard a Distributed insert sends a row to whose sharding key is `key`, as
    /// ClickHouse computes it (`createBlockSelector`): slot `key % total weight`, where the
    /// slots are the shards in order, each repeated `weight` times. `None` when every weight
    /// is 0 (nothing can be inserted).
    pub fn shard_of(&self, key: u64) -> Option<u32> {
        let total: u64 = self.shards.iter().map(|s| u64::from(s.weight)).sum();
        if total == 0 {
            return None;
        }
        let mut slot = key % total;
        for s in &self.shards {
            let w = u64::from(s.weight);
            if slot < w {
                return Some(s.num);
            }
            slot -= w;
        }
        None
    }
}

/// Probes ClickHouse every `interval` and publishes the result for readiness and metrics;
/// with a `cluster` name, every shard and replica too, and the cluster's shards for the shard
/// canaries (`topology`).
#[allow(clippy::too_many_arguments)]
pub async fn run_probe(
    client: clickhouse::Client,
    cluster: String,
    auth: RemoteAuth,
    interval: Duration,
    timeout: Duration,
    metrics: Metrics,
    tx: watch::Sender<ProbeStatus>,
    topology: watch::Sender<Option<Arc<Topology>>>,
    mut stop: watch::Receiver<bool>,
) {
    // Last answer of each replica, so that a change is logged once, not every probe.
    let mut last: HashMap<String, Answer> = HashMap::new();
    loop {
        let mut r = crate::clickhouse::ping(&client, timeout).await;
        metrics.clickhouse_up.set(i64::from(r.is_ok()));
        if r.is_ok() && !cluster.is_empty() {
            r = match fetch_topology(&client, &cluster, timeout).await {
                Ok(t) => {
                    let status =
                        probe_shards(&client, &cluster, &t, &auth, timeout, &metrics, &mut last)
                            .await;
                    topology.send_if_modified(|cur| {
                        if cur.as_deref() == Some(&t) {
                            return false;
                        }
                        *cur = Some(Arc::new(t));
                        true
                    });
                    status
                }
                Err(e) => Err(e),
            };
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
    shard_weight: u32,
    host_address: String,
    port: u16,
}

async fn fetch_topology(
    client: &clickhouse::Client,
    cluster: &str,
    timeout: Duration,
) -> Result<Topology, crate::clickhouse::PingError> {
    use crate::clickhouse::PingError;
    let rows = client
        .query(
            "SELECT shard_num, shard_weight, host_address, port FROM system.clusters \
             WHERE cluster = ? ORDER BY shard_num, replica_num",
        )
        .bind(cluster)
        .fetch_all::<ClusterReplica>();
    match tokio::time::timeout(timeout, rows).await {
        Ok(Ok(r)) if !r.is_empty() => Ok(Topology::from_rows(&r)),
        Ok(Ok(_)) => Err(PingError::Failed(format!(
            "cluster `{cluster}` is not in the server's remote_servers (clickhouse.cluster)"
        ))),
        Ok(Err(e)) => Err(PingError::Failed(e.to_string())),
        Err(_) => Err(PingError::Timeout(timeout)),
    }
}

/// Why a replica did not answer the probe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum ReplicaDown {
    /// The entry server's error for the `remote()` call, on one line, the password redacted.
    #[error("{0}")]
    Refused(String),
    #[error("system.one has {0} rows there")]
    WrongAnswer(u64),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// `SELECT count() FROM remote(addr, system.one, user, password)`: `Err` says why not.
async fn ask_replica(
    client: &clickhouse::Client,
    addr: &str,
    auth: &RemoteAuth,
    timeout: Duration,
) -> Result<(), ReplicaDown> {
    let q = client
        .query(&format!("SELECT count() FROM {}", remote("system.one")))
        .bind(addr);
    let q = remote_limits(auth.bind(q), timeout);
    match tokio::time::timeout(timeout, q.fetch_one::<u64>()).await {
        Ok(Ok(1)) => Ok(()),
        Ok(Ok(n)) => Err(ReplicaDown::WrongAnswer(n)),
        // ClickHouse's texts span lines ("All connection tries failed. Log: \n\nCode: 210 ...").
        Ok(Err(e)) => Err(ReplicaDown::Refused(one_line(&auth.redact(&e.to_string())))),
        Err(_) => Err(ReplicaDown::Timeout(timeout)),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What a replica's last answer was, for logging each change once: up, or down with the
/// server's exception code (the text where there is none), so that a replica that was
/// unreachable and then refuses the password is logged again with the new reason.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Up,
    Down(String),
}

impl Answer {
    fn of(r: &Result<(), ReplicaDown>) -> Self {
        match r {
            Ok(()) => Self::Up,
            Err(ReplicaDown::Refused(e)) => {
                Self::Down(match crate::clickhouse::exception_code(e) {
                    Some(code) => code.to_string(),
                    None => e.clone(),
                })
            }
            Err(e) => Self::Down(e.to_string()),
        }
    }
}

/// Asks each replica (all at once, each within `timeout`) through the configured server;
/// `Err` names the first shard with no live replica and why its replicas did not answer.
async fn probe_shards(
    client: &clickhouse::Client,
    cluster: &str,
    topology: &Topology,
    auth: &RemoteAuth,
    timeout: Duration,
    metrics: &Metrics,
    last: &mut HashMap<String, Answer>,
) -> ProbeStatus {
    use crate::clickhouse::PingError;
    use crate::metrics::{ReplicaLabel, ShardLabel};
    // Over the native protocol from the entry server, the path the Distributed table's
    // inserts take, logged in as the configured user (where the shards require a password,
    // a probe as `default` without one would call every replica down).
    let asks = topology.shards.iter().flat_map(|s| {
        s.replicas.iter().map(move |addr| async move {
            (s.num, addr, ask_replica(client, addr, auth, timeout).await)
        })
    });
    let answers = futures_util::future::join_all(asks).await;
    let mut first_down: Option<String> = None;
    for shard in &topology.shards {
        let mut why = Vec::new();
        for (_, addr, r) in answers.iter().filter(|(n, _, _)| *n == shard.num) {
            let up = r.is_ok();
            metrics
                .clickhouse_replica_up
                .get_or_create(&ReplicaLabel {
                    shard: shard.num.to_string(),
                    replica: addr.to_string(),
                })
                .set(i64::from(up));
            let now = Answer::of(r);
            let before = last.insert(addr.to_string(), now.clone());
            match r {
                Err(e) => {
                    if before.as_ref() != Some(&now) {
                        tracing::warn!(shard = shard.num, replica = %addr, reason = %e, "clickhouse replica does not answer the probe");
                    }
                    why.push(format!("{addr}: {e}"));
                }
                Ok(()) if matches!(before, Some(Answer::Down(_))) => {
                    tracing::info!(shard = shard.num, replica = %addr, "clickhouse replica answers the probe again");
                }
                Ok(()) => {}
            }
        }
        let up = why.len() < shard.replicas.len();
        metrics
            .clickhouse_shard_up
            .get_or_create(&ShardLabel {
                shard: shard.num.to_string(),
            })
            .set(i64::from(up));
        if !up && first_down.is_none() {
            first_down = Some(format!(
                "shard {} of cluster `{cluster}`: no replica answers ({})",
                shard.num,
                why.join("; ")
            ));
        }
    }
    match first_down {
        Some(e) => Err(PingError::Failed(e)),
        None => Ok(()),
    }
}

pub const CANARY_SITE: &str = "__canary";

fn canary_event(id: &str, session: &str, now_ms: i64) -> crate::event::Event {
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
        session_id: session.to_string().into(),
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
                let payload = crate::spool::encode_events(&[canary_event(&id, "canary", now)]);
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

/// How many session ids (`canary-0`, `canary-1`, ...) are hashed to find one per shard. With
/// equal weights the chance that a shard gets none is (1 - 1/shards)^256: 1e-11 for 10 shards.
const SESSION_CANDIDATES: u64 = 256;

/// Deadline of one replica's canary lookup, client side and (as `max_execution_time`,
/// `receive_timeout`) server side. A lookup that misses it counts as "not visible yet", so a
/// hung replica only makes its own gauge rise; every lookup round ends within it.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// For each shard with a weight, the first candidate session id whose sharding key
/// (`cityHash64('__canary', session)`, `keys[n]` for `canary-n`) sends it there. Shards
/// with weight 0 take no inserts and get none.
fn canary_sessions(topology: &Topology, keys: &[u64]) -> HashMap<u32, String> {
    let mut found = HashMap::new();
    for (n, key) in keys.iter().enumerate() {
        if let Some(shard) = topology.shard_of(*key) {
            found.entry(shard).or_insert_with(|| format!("canary-{n}"));
        }
    }
    found
}

/// One canary, from its append to the spool.
#[derive(Debug, Clone, PartialEq)]
struct Sent {
    id: String,
    at: Instant,
}

#[derive(Debug)]
struct ReplicaCanary {
    addr: String,
    label: crate::metrics::ReplicaLabel,
    /// The oldest canary of the shard this replica has not shown yet.
    waiting: Option<Sent>,
}

/// The canaries of one shard. A new one is written only once the last one has landed (some
/// replica shows it), so at most one is in flight per shard; a replica that falls behind keeps
/// waiting for the oldest one it has not shown, so its delay keeps rising from there while the
/// shard's other replicas move on.
#[derive(Debug)]
struct ShardCanary {
    num: u32,
    session: String,
    current: Option<Sent>,
    landed: bool,
    replicas: Vec<ReplicaCanary>,
}

impl ShardCanary {
    fn new(shard: &Shard, session: String) -> Self {
        Self {
            num: shard.num,
            session,
            current: None,
            landed: true,
            replicas: shard
                .replicas
                .iter()
                .map(|addr| ReplicaCanary {
                    addr: addr.clone(),
                    label: crate::metrics::ReplicaLabel {
                        shard: shard.num.to_string(),
                        replica: addr.clone(),
                    },
                    waiting: None,
                })
                .collect(),
        }
    }

    /// Whether the next canary may be written: the last one reached some replica.
    fn due(&self) -> bool {
        self.landed
    }

    fn sent(&mut self, c: Sent) {
        for r in &mut self.replicas {
            if r.waiting.is_none() {
                r.waiting = Some(c.clone());
            }
        }
        self.current = Some(c);
        self.landed = false;
    }

    /// Replica `i` shows its waiting canary: the delay to publish for it; it then waits for
    /// the shard's newest canary if it has not shown that one yet.
    fn seen(&mut self, i: usize, now: Instant) -> Option<f64> {
        let r = &mut self.replicas[i];
        let c = r.waiting.take()?;
        let delay = now.saturating_duration_since(c.at).as_secs_f64();
        match &self.current {
            Some(cur) if *cur == c => self.landed = true,
            Some(cur) => r.waiting = Some(cur.clone()),
            None => {}
        }
        Some(delay)
    }
}

/// On a cluster: every `interval`, one canary per shard (session id chosen so that the
/// Distributed `events` sends it to that shard), looked up on each replica of the shard every
/// 250 ms (`remote(replica, db.events_local)` with the configured credentials), as
/// `clicktrail_canary_delay_seconds{shard, replica}`. Follows the probe's `topology`.
#[allow(clippy::too_many_arguments)]
pub async fn run_shard_canaries(
    spool: crate::spool::SpoolHandle,
    client: clickhouse::Client,
    database: String,
    auth: RemoteAuth,
    interval: Duration,
    metrics: Metrics,
    clock: crate::clock::Clock,
    mut topology: watch::Receiver<Option<Arc<Topology>>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut send = tokio::time::interval(interval);
    send.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut look = tokio::time::interval(Duration::from_millis(250));
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut built: Option<Arc<Topology>> = None;
    let mut shards: Vec<ShardCanary> = Vec::new();
    let mut watching = true;
    let lookup_sql = format!(
        "SELECT count() FROM {} WHERE site = ? AND event_id = ?",
        remote(&format!(
            "{database}.{}",
            crate::migrate::cluster::local(crate::sink::client::EVENTS_TABLE)
        ))
    );
    loop {
        let waiting = shards
            .iter()
            .any(|s| s.replicas.iter().any(|r| r.waiting.is_some()));
        tokio::select! {
            _ = stop.changed() => return,
            // The probe stopped (shutdown): keep the shards we have until `stop`.
            r = topology.changed(), if watching => { watching = r.is_ok(); }
            _ = send.tick() => {
                let wanted = topology.borrow().clone();
                if let Some(t) = wanted.filter(|t| built.as_ref() != Some(t)) {
                    match build(&client, &t, &shards).await {
                        Ok(next) => {
                            for gone in shards.iter().flat_map(|s| &s.replicas) {
                                if !next.iter().flat_map(|s| &s.replicas).any(|r| r.label == gone.label) {
                                    metrics.canary_delay.remove_replica(&gone.label);
                                }
                            }
                            shards = next;
                            built = Some(t);
                        }
                        Err(e) => tracing::debug!(error = %e, "shard canaries: no session ids yet"),
                    }
                }
                let now = clock.now_ms();
                let due: Vec<usize> = (0..shards.len()).filter(|&i| shards[i].due()).collect();
                if due.is_empty() {
                    continue;
                }
                let ids: Vec<String> = due.iter().map(|&i| format!("canary-s{}-{now}", shards[i].num)).collect();
                let events: Vec<_> = due
                    .iter()
                    .zip(&ids)
                    .map(|(&i, id)| canary_event(id, &shards[i].session, now))
                    .collect();
                match spool.append(crate::spool::encode_events(&events)).await {
                    Ok(_) => {
                        let at = Instant::now();
                        for (&i, id) in due.iter().zip(ids) {
                            shards[i].sent(Sent { id, at });
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "shard canaries not written"),
                }
            }
            _ = look.tick(), if waiting => {
                let asks = shards.iter().enumerate().flat_map(|(i, s)| {
                    s.replicas.iter().enumerate().filter_map(move |(j, r)| {
                        r.waiting.as_ref().map(|c| (i, j, r.addr.as_str(), c.id.as_str()))
                    })
                })
                .map(|(i, j, addr, id)| {
                    let q = client.query(&lookup_sql).bind(addr);
                    let q = remote_limits(auth.bind(q), LOOKUP_TIMEOUT).bind(CANARY_SITE).bind(id);
                    async move {
                        let r = tokio::time::timeout(LOOKUP_TIMEOUT, q.fetch_one::<u64>()).await;
                        (i, j, matches!(r, Ok(Ok(n)) if n > 0))
                    }
                });
                let answers = futures_util::future::join_all(asks).await;
                let now = Instant::now();
                for (i, j, visible) in answers {
                    let s = &mut shards[i];
                    let delay = if visible {
                        s.seen(j, now)
                    } else {
                        // Not visible yet, or the replica unreachable: the delay is at least this.
                        s.replicas[j].waiting.as_ref().map(|c| now.saturating_duration_since(c.at).as_secs_f64())
                    };
                    if let Some(d) = delay {
                        metrics.canary_delay.set_replica(&s.replicas[j].label, d);
                    }
                }
            }
        }
    }
}

/// The shard canaries for `topology`: session ids from the server's own cityHash64 (the
/// function the Distributed table shards with), state kept for shards whose replicas did not
/// change.
async fn build(
    client: &clickhouse::Client,
    topology: &Topology,
    old: &[ShardCanary],
) -> Result<Vec<ShardCanary>, crate::clickhouse::PingError> {
    use crate::clickhouse::PingError;
    let keys = client
        .query(&format!(
            "SELECT cityHash64(?, concat('canary-', toString(number))) FROM system.numbers LIMIT {SESSION_CANDIDATES}"
        ))
        .bind(CANARY_SITE)
        .fetch_all::<u64>();
    let keys = match tokio::time::timeout(LOOKUP_TIMEOUT, keys).await {
        Ok(Ok(k)) => k,
        Ok(Err(e)) => return Err(PingError::Failed(e.to_string())),
        Err(_) => return Err(PingError::Timeout(LOOKUP_TIMEOUT)),
    };
    let sessions = canary_sessions(topology, &keys);
    let mut next = Vec::new();
    for shard in &topology.shards {
        let Some(session) = sessions.get(&shard.num) else {
            if shard.weight > 0 {
                tracing::warn!(shard = shard.num, "no canary session id among {SESSION_CANDIDATES} candidates hashes to this shard; its replicas get no canary");
            }
            continue;
        };
        let same = old.iter().find(|o| {
            o.num == shard.num
                && o.session == *session
                && o.replicas.iter().map(|r| &r.addr).eq(shard.replicas.iter())
        });
        next.push(match same {
            Some(o) => ShardCanary {
                num: o.num,
                session: o.session.clone(),
                current: o.current.clone(),
                landed: o.landed,
                replicas: o
                    .replicas
                    .iter()
                    .map(|r| ReplicaCanary {
                        addr: r.addr.clone(),
                        label: r.label.clone(),
                        waiting: r.waiting.clone(),
                    })
                    .collect(),
            },
            None => ShardCanary::new(shard, session.clone()),
        });
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_by_two(weights: [u32; 2]) -> Topology {
        Topology {
            shards: vec![
                Shard {
                    num: 1,
                    weight: weights[0],
                    replicas: vec!["10.0.0.1:9000".into(), "10.0.0.2:9000".into()],
                },
                Shard {
                    num: 2,
                    weight: weights[1],
                    replicas: vec!["10.0.0.3:9000".into(), "10.0.0.4:9000".into()],
                },
            ],
        }
    }

    #[test]
    fn topology_groups_replicas_by_shard_in_order() {
        let row = |shard_num, shard_weight, host: &str| ClusterReplica {
            shard_num,
            shard_weight,
            host_address: host.into(),
            port: 9000,
        };
        let t = Topology::from_rows(&[
            row(1, 1, "10.0.0.1"),
            row(1, 1, "10.0.0.2"),
            row(2, 1, "10.0.0.3"),
            row(2, 1, "10.0.0.4"),
        ]);
        assert_eq!(t, two_by_two([1, 1]));
    }

    #[test]
    fn shard_of_follows_distributed_slots() {
        // Slots are the shards in order, each `weight` times; the key picks slot key % total.
        let t = two_by_two([1, 1]);
        assert_eq!(t.shard_of(0), Some(1));
        assert_eq!(t.shard_of(1), Some(2));
        assert_eq!(t.shard_of(u64::MAX), Some(2), "u64::MAX is odd");
        let t = two_by_two([2, 3]);
        let got: Vec<_> = (0..10).map(|k| t.shard_of(k).unwrap()).collect();
        assert_eq!(got, [1, 1, 2, 2, 2, 1, 1, 2, 2, 2]);
        let t = two_by_two([0, 1]);
        assert!(
            (0..10).all(|k| t.shard_of(k) == Some(2)),
            "weight 0 takes nothing"
        );
        assert_eq!(two_by_two([0, 0]).shard_of(5), None);
    }

    #[test]
    fn canary_sessions_pick_the_first_candidate_of_each_shard() {
        // cityHash64('__canary', 'canary-0') = 17518304006986785471 on 18.16 (odd: shard 2 of 2).
        let keys = [17518304006986785471, 3, 5, 8, 10];
        let got = canary_sessions(&two_by_two([1, 1]), &keys);
        assert_eq!(got[&2], "canary-0");
        assert_eq!(got[&1], "canary-3");
        let got = canary_sessions(&two_by_two([0, 1]), &keys);
        assert_eq!(got.len(), 1, "no session for a shard of weight 0: {got:?}");
        let got = canary_sessions(&two_by_two([1, 1]), &[1, 3]);
        assert!(!got.contains_key(&1), "no candidate for shard 1: {got:?}");
    }

    #[test]
    fn a_lagging_replica_keeps_its_oldest_canary_while_the_other_moves_on() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let shard = &two_by_two([1, 1]).shards[0];
        let mut s = ShardCanary::new(shard, "canary-3".into());
        assert!(s.due());
        let c1 = Sent {
            id: "c1".into(),
            at: at(0),
        };
        s.sent(c1.clone());
        assert!(!s.due(), "one canary in flight per shard");
        assert_eq!(s.seen(0, at(400)), Some(0.4));
        assert!(s.due(), "landed on replica 0");
        assert_eq!(s.replicas[1].waiting, Some(c1.clone()));
        let c2 = Sent {
            id: "c2".into(),
            at: at(3000),
        };
        s.sent(c2.clone());
        assert_eq!(s.replicas[0].waiting, Some(c2.clone()));
        assert_eq!(s.replicas[1].waiting, Some(c1), "replica 1 still owes c1");
        assert_eq!(s.seen(0, at(3300)), Some(0.3));
        // Replica 1 comes back: shows c1 late, then waits for c2, which it shows quickly.
        assert_eq!(s.seen(1, at(9000)), Some(9.0));
        assert_eq!(s.replicas[1].waiting, Some(c2));
        assert_eq!(s.seen(1, at(9250)), Some(6.25));
        assert_eq!(s.replicas[1].waiting, None);
        assert_eq!(s.seen(1, at(9500)), None, "nothing pending");
    }

    #[test]
    fn a_shard_that_takes_no_insert_gets_no_second_canary() {
        let t0 = Instant::now();
        let shard = &two_by_two([1, 1]).shards[1];
        let mut s = ShardCanary::new(shard, "canary-0".into());
        s.sent(Sent {
            id: "c1".into(),
            at: t0,
        });
        assert!(!s.due());
        assert!(s.replicas.iter().all(|r| r.waiting.is_some()));
    }

    #[test]
    fn redact_hides_the_password_raw_and_escaped() {
        let cfg = crate::config::ClickHouseConfig {
            password: "s3cr'et\\x".into(),
            ..Default::default()
        };
        let auth = RemoteAuth::new(&cfg);
        assert_eq!(
            auth.redact("remote('h', system.one, 'default', 's3cr\\'et\\\\x') failed: s3cr'et\\x"),
            "remote('h', system.one, 'default', '***') failed: ***"
        );
        let none = RemoteAuth::new(&crate::config::ClickHouseConfig::default());
        assert_eq!(
            none.redact("Code: 193, Wrong password"),
            "Code: 193, Wrong password"
        );
    }

    #[test]
    fn a_replica_answer_changes_with_its_reason() {
        let refused = |text: &str| Err(ReplicaDown::Refused(text.to_string()));
        let refused_once = refused("bad response: Code: 279, e.displayText() = DB::NetException: All connection tries failed. Log: Code: 210, Connection refused");
        let refused_again = refused("bad response: Code: 279, e.displayText() = DB::NetException: All connection tries failed. Log: Code: 210, Connection refused (other text)");
        let wrong_pw = refused("bad response: Code: 193, e.displayText() = DB::Exception: Received from 127.0.0.1:9000. DB::Exception: Wrong password for user default.");
        assert_eq!(Answer::of(&Ok(())), Answer::Up);
        assert_eq!(Answer::of(&refused_once), Answer::of(&refused_again));
        assert_ne!(Answer::of(&refused_once), Answer::of(&wrong_pw));
        assert_eq!(
            Answer::of(&Err(ReplicaDown::Timeout(Duration::from_secs(2)))),
            Answer::Down("no answer within 2s".into())
        );
        assert_eq!(
            Answer::of(&Err(ReplicaDown::WrongAnswer(0))),
            Answer::Down("system.one has 0 rows there".into())
        );
        assert_eq!(
            one_line("a. Log: \n\nCode: 210, x\n"),
            "a. Log: Code: 210, x"
        );
    }

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
