//! Durability: kill -9 under load, ClickHouse outages, the spool quota, torn tails, SIGTERM.
//! Real processes and a real server; nothing is simulated with flags.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

fn ids_in_clickhouse(ch: &ClickHouse) -> HashSet<String> {
    ch.query("SELECT DISTINCT event_id FROM clicktrail.events FORMAT TSV")
        .lines()
        .map(str::to_string)
        .collect()
}

fn events(prefix: &str, n: usize) -> Vec<Value> {
    (0..n).map(|i| pageview(&format!("{prefix}-{i}"))).collect()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_event_and_counts_none_twice() {
    let ch = ClickHouse::start();
    let data = tempfile::tempdir().unwrap();
    let mut cfg = test_config(&ch, data.path());
    // Small batches, so that many are in flight while the collector dies.
    cfg.sink.batch_rows = 200;
    cfg.sink.max_batch_rows = 400;
    migrate(&cfg).await;
    // Merges would collapse resent rows (ReplacingMergeTree) and hide what the collector did.
    ch.query("SYSTEM STOP MERGES clicktrail.events");
    let mut bin = Binary::start(&cfg);

    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..8 {
        let (acked, stop, base) = (acked.clone(), stop.clone(), bin.base.clone());
        clients.spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            for b in 0..10_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let prefix = format!("c{c}-b{b}");
                let body = batch(events(&prefix, 10));
                let r = http
                    .post(format!("{base}/v1/events"))
                    .header("content-type", "text/plain")
                    .body(body.to_string())
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => {
                        let v: Value = r.json().await.unwrap_or(Value::Null);
                        if v["accepted"] == 10 {
                            acked
                                .lock()
                                .unwrap()
                                .extend((0..10).map(|i| format!("{prefix}-{i}")));
                        }
                    }
                    // After the kill: connection refused / reset. Unacknowledged, so not counted.
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        });
    }
    // Kill once a few thousand events were acknowledged (bounded in time either way).
    let started = Instant::now();
    while acked.lock().unwrap().len() < 3000 && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bin.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    while clients.join_next().await.is_some() {}
    let acked: Vec<String> = acked.lock().unwrap().clone();
    assert!(acked.len() >= 1000, "load ran: {} acked", acked.len());

    let bin2 = Binary::start(&cfg);
    eventually(
        "every acknowledged event is in ClickHouse",
        Duration::from_secs(60),
        || {
            let have = ids_in_clickhouse(&ch);
            acked.iter().all(|id| have.contains(id))
        },
    )
    .await;
    // With merges stopped, the rows are exactly what the collector inserted: after a crash it
    // sends of the batch that was in flight only the rows ClickHouse does not have (18.16 has
    // no block deduplication; the sink asks), so no row is there twice.
    let counts = ch.query("SELECT count(), uniqExact(event_id) FROM clicktrail.events FORMAT TSV");
    let (total, unique) = counts.trim().split_once('\t').unwrap();
    assert_eq!(total, unique, "rows inserted twice (raw count, no FINAL)");
    drop(bin2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_outage_keeps_acknowledging_and_lag_rises_then_falls() {
    let mut ch = ClickHouse::start();
    let data = tempfile::tempdir().unwrap();
    let mut cfg = test_config(&ch, data.path());
    cfg.freshness.canary_interval = Duration::from_millis(200);
    migrate(&cfg).await;
    let app = App::spawn(cfg).await;
    ch.stop();

    let mut acked = Vec::new();
    for b in 0..20 {
        let prefix = format!("out-{b}");
        let (status, body) = app.post(&batch(events(&prefix, 5))).await;
        assert_eq!(status, 200, "accepted while ClickHouse is down: {body}");
        acked.extend((0..5).map(|i| format!("{prefix}-{i}")));
    }
    // No new traffic: the lag must still rise past the (test) threshold of 3 s.
    let mut lag = 0.0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        let m = app.metrics().await;
        lag = metric(&m, "clicktrail_freshness_lag_seconds");
        if lag > 3.0 && metric(&m, "clicktrail_canary_delay_seconds") > 3.0 {
            assert!(metric(&m, "clicktrail_spool_pending_records") >= 1.0);
            assert!(
                metric(
                    &m,
                    "clicktrail_sink_insert_errors_total{class=\"retryable\"}"
                ) >= 1.0,
                "{m}"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        lag > 3.0,
        "lag and canary delay rose while ClickHouse was down: {lag}"
    );

    ch.resume();
    eventually(
        "all acknowledged events arrive",
        Duration::from_secs(30),
        || {
            let have = ids_in_clickhouse(&ch);
            acked.iter().all(|id| have.contains(id))
        },
    )
    .await;
    let mut fell = false;
    for _ in 0..40 {
        let m = app.metrics().await;
        if metric(&m, "clicktrail_freshness_lag_seconds") < 1.0
            && metric(&m, "clicktrail_canary_delay_seconds") < 2.0
        {
            fell = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(fell, "lag and canary delay fell back after recovery");
    assert_eq!(
        ch.count("SELECT count() FROM clicktrail.events WHERE site = 'test'"),
        100
    );
    assert!(
        ch.count("SELECT count() FROM clicktrail.events WHERE site = '__canary'") >= 1,
        "canaries went through the real path"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_answers_503_with_retry_after_then_recovers_by_itself() {
    let mut ch = ClickHouse::start();
    let data = tempfile::tempdir().unwrap();
    let mut cfg = test_config(&ch, data.path());
    cfg.spool.segment_bytes = 8192;
    cfg.spool.max_bytes = 32768;
    cfg.http.retry_after_secs = 2;
    migrate(&cfg).await;
    let app = App::spawn(cfg).await;
    ch.stop();

    let mut acked = Vec::new();
    let mut refused = None;
    for b in 0..200 {
        let prefix = format!("q-{b}");
        let r = app
            .client
            .post(format!("{}/v1/events", app.base))
            .header("origin", ORIGIN)
            .header("content-type", "text/plain")
            .body(batch(events(&prefix, 3)).to_string())
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status(), 200);
        acked.extend((0..3).map(|i| format!("{prefix}-{i}")));
    }
    let r = refused.expect("the quota is reached");
    assert_eq!(r.headers()["retry-after"], "2");
    assert_eq!(r.headers()["access-control-allow-origin"], ORIGIN);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "spool_full", "{body}");
    let ready: Value = app
        .client
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["accepting_events"], false, "{ready}");

    ch.resume();
    let mut recovered = false;
    for i in 0..100 {
        let (status, _) = app.post(&batch(events(&format!("after-{i}"), 1))).await;
        if status == 200 {
            acked.push(format!("after-{i}-0"));
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        recovered,
        "accepting again once ClickHouse drained the spool"
    );
    eventually(
        "every acknowledged event arrives",
        Duration::from_secs(30),
        || {
            let have = ids_in_clickhouse(&ch);
            acked.iter().all(|id| have.contains(id))
        },
    )
    .await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_or_corrupt_tail_loses_only_that_record_and_is_reported() {
    for variant in ["truncated write", "flipped bytes"] {
        let mut ch = ClickHouse::start();
        let data = tempfile::tempdir().unwrap();
        let cfg = test_config(&ch, data.path());
        migrate(&cfg).await;
        ch.stop(); // keep everything in the spool
        let mut bin = Binary::start(&cfg);
        let http = reqwest::Client::new();
        for b in 0..5 {
            let (status, _) =
                post_json(&http, &bin.base, &batch(events(&format!("t{b}"), 4))).await;
            assert_eq!(status, 200);
        }
        bin.kill9();

        let spool = data.path().join("spool");
        let mut segs: Vec<_> = std::fs::read_dir(&spool)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        segs.sort();
        let tail = segs.last().unwrap();
        let mut bytes = std::fs::read(tail).unwrap();
        match variant {
            "truncated write" => bytes.truncate(bytes.len() - 7),
            _ => {
                let n = bytes.len();
                bytes[n - 30] ^= 0xff;
                bytes[n - 31] ^= 0x0f;
            }
        }
        std::fs::write(tail, &bytes).unwrap();

        ch.resume();
        let bin2 = Binary::start(&cfg);
        eventually("the intact records arrive", Duration::from_secs(30), || {
            ch.count("SELECT count() FROM clicktrail.events") == 16
        })
        .await;
        let have = ids_in_clickhouse(&ch);
        for b in 0..4 {
            for i in 0..4 {
                assert!(
                    have.contains(&format!("t{b}-{i}")),
                    "{variant}: t{b}-{i} kept"
                );
            }
        }
        assert!(
            !have.iter().any(|id| id.starts_with("t4-")),
            "{variant}: the torn record is gone"
        );
        let m = bin2.metrics();
        assert_eq!(
            metric(&m, "clicktrail_spool_corrupt_records_total"),
            1.0,
            "{variant}: reported"
        );
        // New events still flow after recovery.
        let (status, _) = post_json(&http, &bin2.base, &batch(events("after", 2))).await;
        assert_eq!(status, 200);
        eventually("post-recovery events", Duration::from_secs(15), || {
            ch.count("SELECT count() FROM clicktrail.events") == 18
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_what_is_buffered_and_exits_zero() {
    let ch = ClickHouse::start();
    let data = tempfile::tempdir().unwrap();
    let mut cfg = test_config(&ch, data.path());
    cfg.sink.batch_age = Duration::from_secs(30); // only shutdown can flush in time
    migrate(&cfg).await;
    let mut bin = Binary::start(&cfg);
    let (status, _) = post_json(
        &reqwest::Client::new(),
        &bin.base,
        &batch(events("term", 7)),
    )
    .await;
    assert_eq!(status, 200);
    let exit = bin.sigterm();
    assert!(exit.success(), "exit 0 on SIGTERM, got {exit:?}");
    assert_eq!(
        ch.count("SELECT count() FROM clicktrail.events"),
        7,
        "flushed before exit"
    );
}
