//! End-to-end load benchmark: `make bench` (or `cargo bench --bench load -- [options]`).
//!
//! Starts a private ClickHouse and the release `clicktrail` binary, drives them with N
//! concurrent HTTP clients posting realistic snippet batches, waits until every acknowledged
//! event is queryable, and reports throughput, ack latency, time to queryable, collector RSS
//! and CPU. In the same run it measures two references on the same machine:
//! - `bare`: an HTTP endpoint (this binary re-executed) that only parses the same batches with
//!   the same serde types, i.e. what HTTP + JSON cost here;
//! - `clickhouse`: ClickHouse's own bulk insert of the same number of rows (the sink's insert
//!   without HTTP, validation or spool).
//!
//! Figures are reported as ratios against those references (the machine is shared and noisy).
//!
//! Besides, it measures the collector's own cost in two phases of one run each:
//! - **intake**: ClickHouse paused (`SIGSTOP`), so only validation, the fsynced spool and the
//!   answer run; as a ratio of the bare endpoint, with the CPU µs per event of both;
//! - **drain**: the backlog that intake left, from `SIGCONT` until the sink has inserted all of
//!   it, against ClickHouse inserting the same rows itself (one-shot RowBinary insert into a
//!   fresh database migrated like the collector's, with the rollup views; best of two). The
//!   same insert into a bare copy of the table, without the views, is reported beside it.
//!
//! Options: --clients N (32) --batch N events per POST (20) --seconds S per phase (15)
//! --intake lz4:batch,none:batch,lz4:batch:2ms,lz4:never (one intake + drain run each:
//! `[clickhouse] compression`, `[spool] fsync` and optionally `[spool] commit_interval`)
//! --json (machine-readable) --quick (short phases, for a smoke run).

use std::collections::HashMap;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

struct Opts {
    clients: usize,
    batch: usize,
    seconds: u64,
    json: bool,
    /// `compression:fsync[:commit_interval]` of each intake + drain run.
    intake: Vec<String>,
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        clients: 32,
        batch: 20,
        seconds: 15,
        json: false,
        intake: ["lz4:batch", "none:batch", "lz4:batch:2ms", "lz4:never"]
            .map(String::from)
            .to_vec(),
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let val = |i: usize| -> usize {
            args.get(i + 1)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{} needs a number", args[i]))
        };
        match args[i].as_str() {
            "--clients" => {
                o.clients = val(i);
                i += 1;
            }
            "--batch" => {
                o.batch = val(i);
                i += 1;
            }
            "--seconds" => {
                o.seconds = val(i) as u64;
                i += 1;
            }
            "--json" => o.json = true,
            "--intake" => {
                o.intake = args
                    .get(i + 1)
                    .expect("--intake needs a list, e.g. lz4:batch,none:batch")
                    .split(',')
                    .map(str::to_string)
                    .collect();
                i += 1;
            }
            "--quick" => o.seconds = 4,
            _ => {} // cargo bench passes --bench
        }
        i += 1;
    }
    o
}

// ---------------------------------------------------------------- the bare reference server

/// Parse-only endpoint: decodes the envelope and every event with the collector's own wire
/// types, answers like the collector, stores nothing.
async fn bare_server(port: u16) {
    use axum::routing::post;
    async fn handle(body: bytes::Bytes) -> axum::Json<Value> {
        let batch: clicktrail::event::RawBatch<'_> = match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return axum::Json(json!({"error": e.to_string()})),
        };
        let mut ok = 0;
        for raw in batch.events.unwrap_or_default() {
            if serde_json::from_str::<clicktrail::event::RawEvent<'_>>(raw.get()).is_ok() {
                ok += 1;
            }
        }
        axum::Json(json!({"accepted": ok, "rejected": []}))
    }
    let app = axum::Router::new().route("/v1/events", post(handle));
    let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    axum::serve(l, app).await.unwrap();
}

// ---------------------------------------------------------------- processes

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_http(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", url])
            .status()
            .is_ok_and(|s| s.success())
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{url} did not come up");
}

struct ClickHouse {
    dir: tempfile::TempDir,
    port: u16,
}

impl ClickHouse {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let tcp = free_port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/clickhouse.sh");
        let st = Command::new(script)
            .args([
                "start",
                dir.path().to_str().unwrap(),
                &port.to_string(),
                &tcp.to_string(),
            ])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "ClickHouse did not start");
        ClickHouse { dir, port }
    }
    fn pid(&self) -> u32 {
        std::fs::read_to_string(self.dir.path().join("pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    async fn query(&self, http: &reqwest::Client, sql: &str) -> String {
        http.post(self.url())
            .body(sql.to_string())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/clickhouse.sh");
        let _ = Command::new(script)
            .args(["stop", self.dir.path().to_str().unwrap()])
            .status();
    }
}

fn collector_config(dir: &Path, port: u16, ch: &ClickHouse, fsync: &str) -> PathBuf {
    collector_config_with(dir, port, ch, fsync, "", "")
}

/// `ch_extra` and `spool_extra`: more lines of the `[clickhouse]` and `[spool]` tables.
fn collector_config_with(
    dir: &Path,
    port: u16,
    ch: &ClickHouse,
    fsync: &str,
    ch_extra: &str,
    spool_extra: &str,
) -> PathBuf {
    let p = dir.join("bench.toml");
    std::fs::write(
        &p,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n[log]\nlevel = \"warn\"\n[clickhouse]\nurl = \"{}\"\n{ch_extra}\n\
             [spool]\nfsync = \"{fsync}\"\n{spool_extra}\n[compactor]\nenabled = false\n\
             [rate_limit]\nper_ip_per_second = 0\nper_site_per_second = 0\n[[sites]]\nkey = \"bench\"\norigins = [\"*\"]\n",
            dir.join("data").display(),
            ch.url()
        ),
    )
    .unwrap();
    p
}

/// (peak RSS bytes, CPU seconds) of a process, from /proc.
fn proc_usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of /proc/pid/stat, i.e. 11 and 12 after the ')'.
    (hwm, (ticks(11) + ticks(12)) / 100.0)
}

// ---------------------------------------------------------------- load

/// Appends one snippet-like event as JSON. Written with `write!` rather than built as a
/// `serde_json::Value`: the generator shares the machine with what it measures, so it must be
/// cheap. Mix: 40% page views, 45% clicks, 15% scrolls.
fn write_event(out: &mut String, id: &str, client: usize, seq: u64, i: usize) {
    use std::fmt::Write;
    let ts = now_ms();
    let page = (seq as usize + i) % 200;
    let common = format_args!(
        r#""id":"{id}","ts":{ts},"url":"https://shop.example/products/{page}","session":"s{client}","visitor":"v{client}","vw":1440,"vh":900,"dw":1440,"dh":5200"#
    );
    let _ = match (seq as usize + i) % 20 {
        0..=7 => write!(
            out,
            r#"{{"type":"pageview",{common},"title":"Product page","referrer":"https://search.example/?q=shoes"}}"#
        ),
        8..=16 => write!(
            out,
            r#"{{"type":"click",{common},"x":{},"y":{},"selector":"main > div.product > button.add-to-cart","text":"Add to cart","rage":{}}}"#,
            seq * 37 % 1400,
            seq * 91 % 5000,
            i % 50 == 0
        ),
        _ => write!(
            out,
            r#"{{"type":"scroll",{common},"depth":{}}}"#,
            seq * 13 % 101
        ),
    };
}

/// The probe event of a request: a page view of a path of its own. The table's key starts with
/// (site, type, path), so the poller's lookup reads a few granules instead of scanning every
/// event id 20 times a second (which cost ClickHouse more CPU than the inserts it measured).
const PROBE_PATH: &str = "/__probe";

fn write_probe(out: &mut String, id: &str, client: usize) {
    use std::fmt::Write;
    let _ = write!(
        out,
        r#"{{"type":"pageview","id":"{id}","ts":{},"url":"https://shop.example{PROBE_PATH}","session":"s{client}","visitor":"v{client}"}}"#,
        now_ms()
    );
}

#[derive(Default)]
struct Phase {
    name: String,
    events: u64,
    requests: u64,
    bytes: u64,
    errors: u64,
    seconds: f64,
    lat_us: Vec<u64>,
    ttq_ms: Vec<u64>,
    rss: u64,
    /// CPU of the server under test (the collector, or the bare endpoint).
    cpu_cores: f64,
    /// CPU of this process (the load generator) and of ClickHouse during the phase.
    gen_cores: f64,
    ch_cores: f64,
    all_queryable: Option<bool>,
}

impl Phase {
    fn eps(&self) -> f64 {
        self.events as f64 / self.seconds
    }
    /// CPU microseconds per event of `cores`.
    fn us(&self, cores: f64) -> f64 {
        cores / self.eps() * 1e6
    }
    fn pct(v: &[u64], p: f64) -> u64 {
        if v.is_empty() {
            return 0;
        }
        v[((v.len() - 1) as f64 * p).round() as usize]
    }
}

/// Drives `base` with `clients` connections; `rate` = events/s for an open-loop phase, or None
/// for closed-loop peak. Probe ids (one per client every 250 ms) are sent on `probes`.
async fn drive(
    base: &str,
    site: &str,
    run: &str,
    o: &Opts,
    rate: Option<f64>,
    probes: Option<Arc<Mutex<HashMap<String, Instant>>>>,
) -> Phase {
    let stop = Arc::new(AtomicBool::new(false));
    let events = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let lats = Arc::new(Mutex::new(Vec::new()));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(o.clients)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..o.clients {
        let (stop, events, bytes, errors, requests, lats, http, probes) = (
            stop.clone(),
            events.clone(),
            bytes.clone(),
            errors.clone(),
            requests.clone(),
            lats.clone(),
            http.clone(),
            probes.clone(),
        );
        let (url, site, run, batch) = (
            format!("{base}/v1/events"),
            site.to_string(),
            run.to_string(),
            o.batch,
        );
        let interval = rate.map(|r| Duration::from_secs_f64(batch as f64 * o.clients as f64 / r));
        tasks.spawn(async move {
            let mut local = Vec::new();
            let mut tick = interval.map(|d| {
                let mut t = tokio::time::interval_at(
                    tokio::time::Instant::now() + d.mul_f64(c as f64 / 32.0),
                    d,
                );
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            let mut last_probe = Instant::now();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                let mut probe_id = None;
                if probes.is_some() && last_probe.elapsed() > Duration::from_millis(250) {
                    probe_id = Some(format!("probe-{run}-{c}-{seq}"));
                    last_probe = Instant::now();
                }
                let mut body = String::with_capacity(64 + batch * 330);
                body.push_str(r#"{"site":""#);
                body.push_str(&site);
                body.push_str(r#"","events":["#);
                for i in 0..batch {
                    if i > 0 {
                        body.push(',');
                    }
                    match (&probe_id, i) {
                        (Some(p), 0) => write_probe(&mut body, p, c),
                        _ => write_event(&mut body, &format!("{run}-{c}-{seq}-{i}"), c, seq, i),
                    }
                }
                body.push_str("]}");
                seq += 1;
                let len = body.len() as u64;
                let t0 = Instant::now();
                let r = http
                    .post(&url)
                    .header("content-type", "text/plain")
                    .body(body)
                    .send()
                    .await;
                let ok = match r {
                    Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                    _ => false,
                };
                let us = t0.elapsed().as_micros() as u64;
                requests.fetch_add(1, Ordering::Relaxed);
                if ok {
                    events.fetch_add(batch as u64, Ordering::Relaxed);
                    bytes.fetch_add(len, Ordering::Relaxed);
                    local.push(us);
                    if let (Some(id), Some(p)) = (probe_id, probes.as_ref()) {
                        p.lock().unwrap().insert(id, Instant::now());
                    }
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            lats.lock().unwrap().extend(local);
        });
    }
    tokio::time::sleep(Duration::from_secs(o.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    let seconds = started.elapsed().as_secs_f64();
    let mut lat_us = std::mem::take(&mut *lats.lock().unwrap());
    lat_us.sort_unstable();
    Phase {
        events: events.load(Ordering::Relaxed),
        requests: requests.load(Ordering::Relaxed),
        bytes: bytes.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        seconds,
        lat_us,
        ..Phase::default()
    }
}

/// Polls ClickHouse for probe ids until each is visible; records ack → visible.
fn spawn_probe_poller(
    ch_url: String,
    probes: Arc<Mutex<HashMap<String, Instant>>>,
    done: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut ttq = Vec::new();
        loop {
            let pending: Vec<(String, Instant)> = probes
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            if pending.is_empty() && done.load(Ordering::Relaxed) {
                break;
            }
            if !pending.is_empty() {
                let list = pending
                    .iter()
                    .map(|(k, _)| format!("'{k}'"))
                    .collect::<Vec<_>>()
                    .join(",");
                let sql = format!(
                    "SELECT event_id FROM clicktrail.events WHERE site = 'bench' AND type = 'pageview' \
                     AND path = '{PROBE_PATH}' AND event_id IN ({list}) FORMAT TSV"
                );
                if let Ok(r) = http.post(&ch_url).body(sql).send().await {
                    let text = r.text().await.unwrap_or_default();
                    let now = Instant::now();
                    let mut p = probes.lock().unwrap();
                    for id in text.lines() {
                        if let Some(acked) = p.remove(id) {
                            ttq.push(now.duration_since(acked).as_millis() as u64);
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ttq.sort_unstable();
        ttq
    })
}

async fn collector_phase(
    ch: &ClickHouse,
    o: &Opts,
    name: &str,
    fsync: &str,
    rate: Option<f64>,
) -> Phase {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = collector_config(dir.path(), port, ch, fsync);
    let child = Command::new(env!("CARGO_BIN_EXE_clicktrail"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    let _proc = Proc(child);
    let base = format!("http://127.0.0.1:{port}");
    wait_http(&format!("{base}/healthz"));
    let run = format!(
        "{}{}",
        name.replace(|c: char| !c.is_ascii_alphanumeric(), ""),
        now_ms() % 100_000
    );
    let probes = Arc::new(Mutex::new(HashMap::new()));
    let done = Arc::new(AtomicBool::new(false));
    let poller = spawn_probe_poller(ch.url(), probes.clone(), done.clone());
    let usage0 = [pid, std::process::id(), ch.pid()].map(proc_usage);
    let mut phase = drive(&base, "bench", &run, o, rate, Some(probes.clone())).await;
    let usage1 = [pid, std::process::id(), ch.pid()].map(proc_usage);
    let cores = |i: usize| (usage1[i].1 - usage0[i].1) / phase.seconds;
    phase.rss = usage1[0].0;
    (phase.cpu_cores, phase.gen_cores, phase.ch_cores) = (cores(0), cores(1), cores(2));
    // Every acknowledged event must become queryable.
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = 0;
    while Instant::now() < deadline {
        seen = ch
            .query(&http, &format!("SELECT count() FROM clicktrail.events WHERE startsWith(event_id, '{run}-') OR startsWith(event_id, 'probe-{run}-')"))
            .await
            .trim()
            .parse()
            .unwrap_or(0);
        if seen >= phase.events {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    phase.all_queryable = Some(seen == phase.events);
    done.store(true, Ordering::Relaxed);
    phase.ttq_ms = tokio::time::timeout(Duration::from_secs(30), poller)
        .await
        .map(|r| r.unwrap_or_default())
        .unwrap_or_default();
    phase.name = name.to_string();
    phase
}

/// An intake phase (ClickHouse paused) and the drain of its backlog, one collector process.
struct IntakeDrain {
    /// `compression:fsync[:commit_interval]`.
    compression: String,
    intake: Phase,
    /// fdatasync calls of the spool during intake.
    fsyncs: u64,
    /// Acknowledged events left for the sink when ClickHouse resumed.
    backlog: u64,
    drain_seconds: f64,
    /// CPU of the collector and of ClickHouse during the drain, in cores.
    drain_collector_cores: f64,
    drain_ch_cores: f64,
    drain_rss: u64,
    all_queryable: bool,
}

impl IntakeDrain {
    fn drain_rows_per_s(&self) -> f64 {
        self.backlog as f64 / self.drain_seconds
    }
}

fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill {sig} {pid}");
}

/// `clicktrail_sink_rows_inserted_total` of a running collector.
async fn rows_inserted(http: &reqwest::Client, base: &str) -> u64 {
    counter(http, base, "clicktrail_sink_rows_inserted_total").await
}

/// A counter without labels of a running collector.
async fn counter(http: &reqwest::Client, base: &str, name: &str) -> u64 {
    let Ok(r) = http.get(format!("{base}/metrics")).send().await else {
        return 0;
    };
    let text = r.text().await.unwrap_or_default();
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

async fn intake_drain_phase(ch: &ClickHouse, o: &Opts, variant: &str) -> IntakeDrain {
    let mut parts = variant.split(':');
    let compression = parts.next().unwrap_or("lz4");
    let fsync = parts.next().unwrap_or("batch");
    let spool_extra = match parts.next() {
        Some(interval) => format!("max_bytes = 17179869184\ncommit_interval = \"{interval}\""),
        None => "max_bytes = 17179869184".to_string(),
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // The insert that is in flight when ClickHouse stops must wait for it, not time out into
    // the retry backoff (which would count as drain time); the spool holds the whole backlog.
    let ch_extra = if compression == "lz4" {
        "timeout = \"300s\"".to_string()
    } else {
        format!("timeout = \"300s\"\ncompression = \"{compression}\"")
    };
    let cfg = collector_config_with(dir.path(), port, ch, fsync, &ch_extra, &spool_extra);
    let child = Command::new(env!("CARGO_BIN_EXE_clicktrail"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    let _proc = Proc(child);
    let base = format!("http://127.0.0.1:{port}");
    wait_http(&format!("{base}/healthz"));
    let http = reqwest::Client::new();
    let run = format!(
        "intake{}{}",
        variant.replace(|c: char| !c.is_ascii_alphanumeric(), ""),
        now_ms() % 100_000
    );
    // Let the first canary land, so the paused server holds no more than one insert.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let inserted0 = rows_inserted(&http, &base).await;
    let fsyncs0 = counter(&http, &base, "clicktrail_spool_fsyncs_total").await;
    signal(ch.pid(), "-STOP");
    // BENCH_PERF_DIR=dir: a flat CPU profile of the collector during intake, for `perf report`.
    let perf = std::env::var("BENCH_PERF_DIR").ok().map(|d| {
        Proc(
            Command::new("perf")
                .args(["record", "-F", "400", "-p", &pid.to_string(), "-o"])
                .arg(Path::new(&d).join(format!("intake-{}.data", variant.replace(':', "-"))))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    });
    let usage0 = [pid, std::process::id()].map(proc_usage);
    let mut intake = drive(&base, "bench", &run, o, None, None).await;
    let usage1 = [pid, std::process::id()].map(proc_usage);
    if let Some(mut p) = perf {
        signal(p.0.id(), "-INT");
        let _ = p.0.wait();
    }
    intake.cpu_cores = (usage1[0].1 - usage0[0].1) / intake.seconds;
    intake.gen_cores = (usage1[1].1 - usage0[1].1) / intake.seconds;
    intake.rss = usage1[0].0;
    intake.name = format!("collector intake, ClickHouse paused, {variant}");
    let backlog = intake.events;
    let fsyncs = counter(&http, &base, "clicktrail_spool_fsyncs_total").await - fsyncs0;

    let d0 = [pid, ch.pid()].map(proc_usage);
    signal(ch.pid(), "-CONT");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    while rows_inserted(&http, &base).await < inserted0 + backlog && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_seconds = started.elapsed().as_secs_f64();
    let d1 = [pid, ch.pid()].map(proc_usage);
    let seen: u64 = ch
        .query(
            &http,
            &format!("SELECT count() FROM clicktrail.events WHERE startsWith(event_id, '{run}-')"),
        )
        .await
        .trim()
        .parse()
        .unwrap_or(0);
    IntakeDrain {
        compression: variant.to_string(),
        intake,
        fsyncs,
        backlog,
        drain_seconds,
        drain_collector_cores: (d1[0].1 - d0[0].1) / drain_seconds,
        drain_ch_cores: (d1[1].1 - d0[1].1) / drain_seconds,
        drain_rss: d1[0].0,
        all_queryable: seen == backlog,
    }
}

/// RowBinary of `rows` generator events as the collector would store them (same mix, same
/// validation and enrichment), for ClickHouse's own insert of "the same rows".
fn reference_rows(rows: u64) -> Vec<u8> {
    use clicktrail::event::{RawBatch, RequestContext, Validator};
    let v = Validator::new(Default::default(), Default::default());
    let ctx = RequestContext {
        site: "bench".into(),
        received_at_ms: now_ms(),
        user_agent: "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36".into(),
        client_ip: Some("203.0.113.9".parse().unwrap()),
        keep_query_params: Default::default(),
        replay: None,
    };
    let mut out = Vec::with_capacity(rows as usize * 300);
    let mut done = 0u64;
    let mut seq = 0u64;
    while done < rows {
        let n = (rows - done).min(1000) as usize;
        let mut body = String::from(r#"{"site":"bench","events":["#);
        for i in 0..n {
            if i > 0 {
                body.push(',');
            }
            write_event(
                &mut body,
                &format!("ref-{seq}-{i}"),
                (seq % 32) as usize,
                seq,
                i,
            );
        }
        body.push_str("]}");
        let batch: RawBatch<'_> = serde_json::from_str(&body).unwrap();
        let (ok, bad) = v.validate_batch(&ctx, &batch.events.unwrap());
        assert!(bad.is_empty(), "{bad:?}");
        out.extend_from_slice(&clicktrail::spool::encode_events(&ok)[5..]);
        done += n as u64;
        seq += 1;
    }
    out
}

/// ClickHouse inserting `rows` (RowBinary) itself: one INSERT, LZ4 like the sink, into a fresh
/// database; `with_views` migrates it like the collector's (the rollup views included),
/// otherwise it is a bare copy of the events table. Best of two; rows/s.
async fn clickhouse_one_shot(ch: &ClickHouse, rows: &[u8], n: u64, with_views: bool) -> f64 {
    let http = reqwest::Client::new();
    let mut best = 0f64;
    for attempt in 0..2 {
        let db = format!("ref{}{attempt}", if with_views { "views" } else { "bare" });
        ch.query(&http, &format!("DROP DATABASE IF EXISTS {db}"))
            .await;
        if with_views {
            let st = Command::new(env!("CARGO_BIN_EXE_clicktrail"))
                .args(["migrate", "--no-insert-wait"])
                .env("CLICKTRAIL_CLICKHOUSE_URL", ch.url())
                .env("CLICKTRAIL_CLICKHOUSE_DATABASE", &db)
                .env("CLICKTRAIL_LOG_LEVEL", "warn")
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(st.success(), "migrate {db} failed");
        } else {
            ch.query(&http, &format!("CREATE DATABASE {db}")).await;
            ch.query(
                &http,
                &format!("CREATE TABLE {db}.events AS clicktrail.events"),
            )
            .await;
        }
        let client = clickhouse::Client::default()
            .with_url(ch.url())
            .with_database(&db)
            .with_validation(false)
            .with_compression(clickhouse::Compression::Lz4);
        // The sink's insert, as the sink calls it: rows, their ends, one `inserted_at` stamp.
        let ends = clicktrail::row::row_ends(rows, n as usize).unwrap();
        let stamp = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()) as u32;
        let started = Instant::now();
        clicktrail::sink::client::insert(&client, rows, &ends, stamp, Duration::from_secs(600))
            .await
            .unwrap();
        best = best.max(n as f64 / started.elapsed().as_secs_f64());
        ch.query(&http, &format!("DROP DATABASE IF EXISTS {db}"))
            .await;
    }
    best
}

async fn clickhouse_bulk(ch: &ClickHouse, rows: u64) -> f64 {
    let client = clickhouse::Client::default()
        .with_url(ch.url())
        .with_database("clicktrail")
        .with_validation(false)
        .with_compression(clickhouse::Compression::Lz4);
    let template: clicktrail::event::Event = serde_json::from_value(json!({
        "event_id": "", "site": "bulk", "type": "click", "name": "", "ts": (now_ms() / 1000) as u32, "ts_ms": 0,
        "received_at": (now_ms() / 1000) as u32, "url": "https://shop.example/products/1", "host": "shop.example",
        "path": "/products/1", "referrer": "", "title": "", "session_id": "s", "visitor_id": "v", "x": 10, "y": 20,
        "viewport_w": 1440, "viewport_h": 900, "doc_w": 1440, "doc_h": 5200,
        "selector": "main > div.product > button.add-to-cart", "text": "Add to cart", "rage": 0, "scroll_depth": 0,
        "duration_ms": 0, "props": "", "browser": "Chrome", "os": "Linux", "device": "desktop", "user_agent": "", "ip": "203.0.113.0"
    }))
    .unwrap();
    let started = Instant::now();
    let mut done = 0u64;
    while done < rows {
        let n = (rows - done).min(50_000);
        let mut insert = client
            .insert::<clicktrail::event::Event>("events")
            .await
            .unwrap();
        for i in 0..n {
            let mut e = template.clone();
            e.event_id = format!("bulk-{}", done + i).into();
            insert.write(&e).await.unwrap();
        }
        insert.end().await.unwrap();
        done += n;
    }
    rows as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    if let Some(port) = std::env::args().skip_while(|a| a != "--serve-bare").nth(1) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(bare_server(port.parse().unwrap()));
        return;
    }
    let o = parse_opts();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ch = ClickHouse::start();
        let st = Command::new(env!("CARGO_BIN_EXE_clicktrail"))
            .args(["migrate", "--no-insert-wait"])
            .env("CLICKTRAIL_CLICKHOUSE_URL", ch.url())
            .env("CLICKTRAIL_LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "migrate failed");
        eprintln!("bench: {} clients, {} events per POST, {} s per phase", o.clients, o.batch, o.seconds);

        // Reference: parse-only endpoint, in its own process like the collector.
        let bare_port = free_port();
        let bare = Proc(Command::new(std::env::current_exe().unwrap()).args(["--serve-bare", &bare_port.to_string()]).spawn().unwrap());
        wait_http(&format!("http://127.0.0.1:{bare_port}/v1/events"));
        let usage0 = [bare.0.id(), std::process::id()].map(proc_usage);
        let mut bare_phase = drive(&format!("http://127.0.0.1:{bare_port}"), "bench", "bare", &o, None, None).await;
        let usage1 = [bare.0.id(), std::process::id()].map(proc_usage);
        bare_phase.cpu_cores = (usage1[0].1 - usage0[0].1) / bare_phase.seconds;
        bare_phase.gen_cores = (usage1[1].1 - usage0[1].1) / bare_phase.seconds;
        bare_phase.name = "bare parse-only endpoint (peak)".into();
        drop(bare);
        eprintln!("bench: bare {:.0} events/s", bare_phase.eps());

        let peak = collector_phase(&ch, &o, "collector, fsync=batch (peak)", "batch", None).await;
        eprintln!("bench: collector peak {:.0} events/s", peak.eps());
        let half = collector_phase(&ch, &o, "collector, fsync=batch (half of peak)", "batch", Some(peak.eps() / 2.0)).await;
        let never = collector_phase(&ch, &o, "collector, fsync=never (peak)", "never", None).await;
        let never_half = collector_phase(&ch, &o, "collector, fsync=never (half of batch peak)", "never", Some(peak.eps() / 2.0)).await;
        let bulk_rows = peak.events.max(200_000);
        let bulk = clickhouse_bulk(&ch, bulk_rows).await;
        eprintln!("bench: ClickHouse bulk insert {bulk:.0} rows/s");

        let drains: Vec<IntakeDrain> = {
            let mut v = Vec::new();
            for c in &o.intake {
                let d = intake_drain_phase(&ch, &o, c).await;
                eprintln!("bench: intake ({c}) {:.0} events/s, drain {:.0} rows/s", d.intake.eps(), d.drain_rows_per_s());
                v.push(d);
            }
            v
        };
        // The same rows as the largest backlog, capped: they are held in memory here.
        let ref_n = drains.iter().map(|d| d.backlog).max().unwrap_or(0).clamp(100_000, 600_000);
        let ref_rows = reference_rows(ref_n);
        let one_shot_views = clickhouse_one_shot(&ch, &ref_rows, ref_n, true).await;
        let one_shot_bare = clickhouse_one_shot(&ch, &ref_rows, ref_n, false).await;
        drop(ref_rows);
        eprintln!("bench: ClickHouse one-shot insert of {ref_n} rows: {one_shot_views:.0} rows/s with the views, {one_shot_bare:.0} without");

        let phases = [&bare_phase, &peak, &half, &never, &never_half];
        // The ceiling of this machine for any collector that must at least do what the bare
        // endpoint does (HTTP + parse) and have ClickHouse insert the rows, on the same cores as
        // the load generator: all cores divided by the CPU per event of the generator (measured
        // in the bare phase), the bare endpoint, and ClickHouse (measured during the collector's
        // peak: inserts plus the merges they cause).
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        let (gen_us, bare_us, ch_us) = (bare_phase.us(bare_phase.gen_cores), bare_phase.us(bare_phase.cpu_cores), peak.us(peak.ch_cores));
        let ceiling = cores / ((gen_us + bare_us + ch_us) / 1e6);
        if o.json {
            let out: Vec<Value> = phases
                .iter()
                .map(|p| {
                    json!({
                        "phase": p.name, "events": p.events, "requests": p.requests, "errors": p.errors,
                        "seconds": p.seconds, "events_per_s": p.eps(), "mb_per_s": p.bytes as f64 / p.seconds / 1e6,
                        "ack_ms": {"p50": Phase::pct(&p.lat_us, 0.5) as f64 / 1000.0, "p90": Phase::pct(&p.lat_us, 0.9) as f64 / 1000.0,
                                   "p99": Phase::pct(&p.lat_us, 0.99) as f64 / 1000.0, "max": p.lat_us.last().copied().unwrap_or(0) as f64 / 1000.0},
                        "time_to_queryable_ms": {"p50": Phase::pct(&p.ttq_ms, 0.5), "p99": Phase::pct(&p.ttq_ms, 0.99), "samples": p.ttq_ms.len()},
                        "collector_peak_rss_mb": p.rss as f64 / 1e6, "collector_cpu_cores": p.cpu_cores,
                        "all_acknowledged_queryable": p.all_queryable,
                        "ratio_to_bare": p.eps() / bare_phase.eps(),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&json!({
                "clients": o.clients, "batch": o.batch, "seconds_per_phase": o.seconds,
                "phases": out, "clickhouse_bulk_insert_rows_per_s": bulk,
                "collector_peak_vs_bare": peak.eps() / bare_phase.eps(),
                "cpu_us_per_event": {"generator": gen_us, "bare_endpoint": bare_us, "clickhouse_at_collector_peak": ch_us,
                                     "collector_at_peak": peak.us(peak.cpu_cores)},
                "ceiling_events_per_s": ceiling, "ceiling_vs_bare": ceiling / bare_phase.eps(),
                "collector_peak_vs_ceiling": peak.eps() / ceiling,
                "collector_peak_vs_clickhouse_bulk": peak.eps() / bulk,
                "clickhouse_one_shot_insert": {"rows": ref_n, "rows_per_s_with_views": one_shot_views, "rows_per_s_bare_table": one_shot_bare},
                "intake_drain": drains.iter().map(|d| json!({
                    "variant": d.compression,
                    "intake_requests_per_fsync": d.intake.requests as f64 / d.fsyncs.max(1) as f64,
                    "intake_events_per_s": d.intake.eps(), "intake_errors": d.intake.errors,
                    "intake_vs_bare": d.intake.eps() / bare_phase.eps(),
                    "intake_ack_ms": {"p50": Phase::pct(&d.intake.lat_us, 0.5) as f64 / 1000.0, "p99": Phase::pct(&d.intake.lat_us, 0.99) as f64 / 1000.0},
                    "intake_cpu_us_per_event": {"collector": d.intake.us(d.intake.cpu_cores), "bare_endpoint": bare_us, "generator": d.intake.us(d.intake.gen_cores)},
                    "intake_rss_mb": d.intake.rss as f64 / 1e6,
                    "backlog_rows": d.backlog, "drain_seconds": d.drain_seconds, "drain_rows_per_s": d.drain_rows_per_s(),
                    "drain_vs_clickhouse_one_shot_with_views": d.drain_rows_per_s() / one_shot_views,
                    "drain_vs_clickhouse_one_shot_bare_table": d.drain_rows_per_s() / one_shot_bare,
                    "drain_cpu_us_per_row": {"collector": d.drain_collector_cores / d.drain_rows_per_s() * 1e6, "clickhouse": d.drain_ch_cores / d.drain_rows_per_s() * 1e6},
                    "drain_rss_mb": d.drain_rss as f64 / 1e6,
                    "all_acknowledged_queryable": d.all_queryable,
                })).collect::<Vec<_>>(),
            })).unwrap());
        } else {
            println!("\n{:<46} {:>11} {:>7} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>7} {:>6} {:>6} {:>9}",
                "phase", "events/s", "MB/s", "ack p50", "ack p90", "ack p99", "ack max", "ttq p50", "ttq p99", "RSS MB", "cores", "errors", "x bare");
            for p in phases {
                let ms = |us: u64| format!("{:.1}ms", us as f64 / 1000.0);
                println!("{:<46} {:>11.0} {:>7.2} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>7.0} {:>6.2} {:>6} {:>9.2}",
                    p.name, p.eps(), p.bytes as f64 / p.seconds / 1e6,
                    ms(Phase::pct(&p.lat_us, 0.5)), ms(Phase::pct(&p.lat_us, 0.9)), ms(Phase::pct(&p.lat_us, 0.99)),
                    ms(p.lat_us.last().copied().unwrap_or(0)),
                    if p.ttq_ms.is_empty() { "-".into() } else { format!("{}ms", Phase::pct(&p.ttq_ms, 0.5)) },
                    if p.ttq_ms.is_empty() { "-".into() } else { format!("{}ms", Phase::pct(&p.ttq_ms, 0.99)) },
                    p.rss as f64 / 1e6, p.cpu_cores, p.errors, p.eps() / bare_phase.eps());
            }
            println!("\nClickHouse bulk insert of {bulk_rows} rows (reference): {bulk:.0} rows/s");
            println!("collector peak / bare parse-only endpoint: {:.2}", peak.eps() / bare_phase.eps());
            println!("collector peak / ClickHouse bulk insert:   {:.2}", peak.eps() / bulk);
            println!(
                "CPU per event: generator {gen_us:.2} us, bare endpoint {bare_us:.2} us, ClickHouse at the collector's peak {ch_us:.2} us, collector {:.2} us",
                peak.us(peak.cpu_cores)
            );
            println!(
                "ceiling for any collector in front of ClickHouse on these {cores} cores (generator + parse + ClickHouse): {ceiling:.0} events/s = {:.2}x bare; collector peak = {:.2}x the ceiling",
                ceiling / bare_phase.eps(),
                peak.eps() / ceiling
            );
            for p in &phases[1..] {
                println!("{}: every acknowledged event queryable: {}", p.name, p.all_queryable.unwrap_or(false));
            }
            println!("\nClickHouse one-shot RowBinary insert of {ref_n} rows into a fresh database (best of two): {one_shot_views:.0} rows/s with the rollup views, {one_shot_bare:.0} rows/s into a bare copy of the table");
            for d in &drains {
                println!(
                    "{}: intake {:.0} events/s = {:.2}x bare (ack p99 {:.1} ms, errors {}), CPU/event collector {:.2} us vs bare {bare_us:.2} us, RSS {:.0} MB; \
                     drain of {} rows in {:.2} s = {:.0} rows/s = {:.2}x ClickHouse's own insert with views ({:.2}x bare table), CPU/row collector {:.2} us, ClickHouse {:.2} us, RSS {:.0} MB; all queryable: {}",
                    d.compression, d.intake.eps(), d.intake.eps() / bare_phase.eps(), Phase::pct(&d.intake.lat_us, 0.99) as f64 / 1000.0, d.intake.errors,
                    d.intake.us(d.intake.cpu_cores), d.intake.rss as f64 / 1e6,
                    d.backlog, d.drain_seconds, d.drain_rows_per_s(), d.drain_rows_per_s() / one_shot_views, d.drain_rows_per_s() / one_shot_bare,
                    d.drain_collector_cores / d.drain_rows_per_s() * 1e6, d.drain_ch_cores / d.drain_rows_per_s() * 1e6, d.drain_rss as f64 / 1e6, d.all_queryable,
                );
            }
        }
    });
}
