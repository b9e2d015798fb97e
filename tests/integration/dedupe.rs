//! Each event reaches ClickHouse once: a client retry (also after a kill -9 of the collector), a
//! batch resent after a crash, and an insert whose answer was lost. Every check counts raw rows
//! with merges stopped and without `FINAL`, so the ReplacingMergeTree cannot hide a duplicate.

use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

fn events(prefix: &str, n: usize) -> Vec<Value> {
    (0..n).map(|i| pageview(&format!("{prefix}-{i}"))).collect()
}

/// The value of the series `name` (labels included) in a metrics text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `count()` and `uniqExact(event_id)` of the raw rows whose id starts with `prefix`.
fn raw_counts(ch: &ClickHouse, prefix: &str) -> (u64, u64) {
    let out = ch.query(&format!(
        "SELECT count(), uniqExact(event_id) FROM clicktrail.events \
         WHERE startsWith(event_id, '{prefix}') FORMAT TSV"
    ));
    let (a, b) = out.trim().split_once('\t').unwrap();
    (a.parse().unwrap(), b.parse().unwrap())
}

async fn wait_metric(bin: &Binary, series: &str, want: f64) {
    eventually_some(series, Duration::from_secs(30), || async {
        (metric(&bin.metrics(), series) == Some(want)).then_some(())
    })
    .await;
}

/// A client that lost the answer sends the same batch again, and again after the collector was
/// killed -9 and restarted: every answer is a success with every event accepted, and ClickHouse
/// holds each event once. An id twice in one request is stored once too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_retry_is_answered_as_accepted_and_stored_once_even_after_kill_9() {
    let ch = ClickHouse::start();
    let data = tempfile::tempdir().unwrap();
    let cfg = test_config(&ch, data.path());
    migrate(&cfg).await;
    ch.query("SYSTEM STOP MERGES clicktrail.events");
    let client = reqwest::Client::new();
    let mut evs = events("retry", 20);
    evs.push(pageview("retry-0")); // the same id again in the same request
    let body = batch(evs);

    let mut bin = Binary::start(&cfg);
    for _ in 0..2 {
        let (status, answer) = post_json(&client, &bin.base, &body).await;
        assert_eq!(
            (status, answer["accepted"].as_u64()),
            (200, Some(21)),
            "{answer}"
        );
    }
    wait_metric(&bin, "clicktrail_sink_rows_inserted_total", 20.0).await;
    let m = bin.metrics();
    // The first post: the second "retry-0" of the request; the retry: all 21, both copies of
    // "retry-0" included, since it was accepted by then.
    assert_eq!(
        metric(&m, "clicktrail_duplicates_dropped_total{stage=\"request\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "clicktrail_duplicates_dropped_total{stage=\"intake\"}"),
        Some(21.0)
    );
    assert_eq!(raw_counts(&ch, "retry-"), (20, 20));

    // The collector dies; the client, not knowing, retries against the new process, which knows
    // the ids from the spool records on disk.
    bin.kill9();
    let bin = Binary::start(&cfg);
    let (status, answer) = post_json(&client, &bin.base, &body).await;
    assert_eq!(
        (status, answer["accepted"].as_u64()),
        (200, Some(21)),
        "{answer}"
    );
    let (status, _) = post_json(&client, &bin.base, &batch(events("after", 5))).await;
    assert_eq!(status, 200);
    wait_metric(&bin, "clicktrail_sink_rows_inserted_total", 5.0).await;
    assert_eq!(
        metric(
            &bin.metrics(),
            "clicktrail_duplicates_dropped_total{stage=\"intake\"}"
        ),
        Some(21.0),
        "the retry after the restart was dropped at intake"
    );
    assert_eq!(raw_counts(&ch, "retry-"), (20, 20));
    assert_eq!(raw_counts(&ch, "after-"), (5, 5));
    assert_eq!(ch.count("SELECT count() FROM clicktrail.events"), 25);
}

/// kill -9 after ClickHouse took the insert and before the checkpoint said so; meanwhile part of
/// the batch is gone again (as if only part of it had landed). The restarted collector asks
/// ClickHouse which rows it has and sends only the missing ones, with the first attempt's
/// `inserted_at`: every event once, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_in_flight_at_kill_9_sends_only_the_rows_clickhouse_does_not_have() {
    let ch = ClickHouse::start();
    let data = tempfile::tempdir().unwrap();
    let cfg = test_config(&ch, data.path());
    migrate(&cfg).await;
    ch.query("SYSTEM STOP MERGES clicktrail.events");
    let mut first = Binary::start_with(&cfg, &["env", "FAILPOINTS=sink::after_insert=pause"]);
    let client = reqwest::Client::new();
    let (status, _) = post_json(&client, &first.base, &batch(events("resent", 50))).await;
    assert_eq!(status, 200);
    eventually(
        "the batch is in ClickHouse, held before the checkpoint",
        Duration::from_secs(20),
        || raw_counts(&ch, "resent-").0 == 50,
    )
    .await;
    let checkpoint: Value = serde_json::from_slice(
        &std::fs::read(data.path().join("spool").join("checkpoint.json")).unwrap(),
    )
    .unwrap();
    assert!(checkpoint["inflight"].is_array(), "{checkpoint}");
    let stamp = checkpoint["inflight_inserted_at"].as_u64().unwrap();
    first.kill9();

    // 20 of the 50 rows "did not land". (A mutation runs in the merge pool; the batch is one
    // part, so a merge has nothing to collapse meanwhile.)
    let gone: Vec<String> = (0..20).map(|i| format!("'resent-{i}'")).collect();
    ch.query("SYSTEM START MERGES clicktrail.events");
    ch.query(&format!(
        "ALTER TABLE clicktrail.events DELETE WHERE event_id IN ({})",
        gone.join(", ")
    ));
    eventually("the mutation is done", Duration::from_secs(30), || {
        raw_counts(&ch, "resent-").0 == 30
    })
    .await;
    ch.query("SYSTEM STOP MERGES clicktrail.events");

    let second = Binary::start(&cfg);
    wait_metric(&second, "clicktrail_sink_rows_inserted_total", 20.0).await;
    assert_eq!(
        metric(
            &second.metrics(),
            "clicktrail_duplicates_dropped_total{stage=\"sink\"}"
        ),
        Some(30.0),
        "the 30 rows ClickHouse had were not resent"
    );
    assert_eq!(raw_counts(&ch, "resent-"), (50, 50));
    assert_eq!(
        ch.query(
            "SELECT toUInt32(min(inserted_at)), toUInt32(max(inserted_at)) FROM clicktrail.events FORMAT TSV"
        )
        .trim(),
        format!("{stamp}\t{stamp}"),
        "the resent rows carry the first attempt's stamp"
    );
    let checkpoint: Value = serde_json::from_slice(
        &std::fs::read(data.path().join("spool").join("checkpoint.json")).unwrap(),
    )
    .unwrap();
    assert!(checkpoint["inflight"].is_null(), "delivered: {checkpoint}");
}

/// ClickHouse takes an insert and its answer is lost (the failpoint fails the attempt after the
/// server answered, once): the retry finds the rows and sends nothing. Then an attempt fails
/// before anything landed (ClickHouse stopped): the retry sends everything. Each event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_whose_answer_was_lost_is_not_sent_again() {
    let mut ch = ClickHouse::start();
    let data = tempfile::tempdir().unwrap();
    let cfg = test_config(&ch, data.path());
    migrate(&cfg).await;
    ch.query("SYSTEM STOP MERGES clicktrail.events");
    let bin = Binary::start_with(&cfg, &["env", "FAILPOINTS=sink::answer_lost=1*return"]);
    let client = reqwest::Client::new();
    let (status, _) = post_json(&client, &bin.base, &batch(events("lost", 40))).await;
    assert_eq!(status, 200);
    wait_metric(
        &bin,
        "clicktrail_duplicates_dropped_total{stage=\"sink\"}",
        40.0,
    )
    .await;
    let m = bin.metrics();
    assert_eq!(
        metric(
            &m,
            "clicktrail_sink_insert_errors_total{class=\"retryable\"}"
        ),
        Some(1.0),
        "the lost answer was one failed attempt"
    );
    assert_eq!(metric(&m, "clicktrail_sink_rows_inserted_total"), Some(0.0));
    assert_eq!(raw_counts(&ch, "lost-"), (40, 40));

    // Nothing lands while ClickHouse is down: after it is back, the check finds nothing and the
    // batch goes in whole.
    ch.stop();
    let (status, _) = post_json(&client, &bin.base, &batch(events("down", 30))).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    ch.resume();
    wait_metric(&bin, "clicktrail_sink_rows_inserted_total", 30.0).await;
    assert_eq!(raw_counts(&ch, "down-"), (30, 30));
    assert_eq!(raw_counts(&ch, "lost-"), (40, 40));
}

/// A ClickHouse slower than `clickhouse.timeout`: a materialized view sleeps, so the insert is
/// still running on the server when the sink gives up on it. The sink stops it (`KILL QUERY`),
/// finds its rows in `events` (18.16 writes the table's part before the views), and sends
/// nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_slower_than_the_timeout_is_not_sent_again() {
    let ch = ClickHouse::start();
    let data = tempfile::tempdir().unwrap();
    let mut cfg = test_config(&ch, data.path());
    cfg.clickhouse.timeout = Duration::from_secs(1);
    migrate(&cfg).await;
    ch.query("SYSTEM STOP MERGES clicktrail.events");
    ch.query(
        "CREATE MATERIALIZED VIEW clicktrail.slow ENGINE = Memory AS \
         SELECT event_id, sleepEachRow(0.4) AS z FROM clicktrail.events",
    );
    let bin = Binary::start(&cfg);
    let client = reqwest::Client::new();
    let (status, _) = post_json(&client, &bin.base, &batch(events("slow", 6))).await;
    assert_eq!(status, 200);
    wait_metric(
        &bin,
        "clicktrail_duplicates_dropped_total{stage=\"sink\"}",
        6.0,
    )
    .await;
    let m = bin.metrics();
    assert!(
        metric(
            &m,
            "clicktrail_sink_insert_errors_total{class=\"retryable\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "the insert timed out: {m}"
    );
    assert_eq!(raw_counts(&ch, "slow-"), (6, 6));

    // ClickHouse fast again: the next batch goes in at once, whole.
    ch.query("DROP TABLE clicktrail.slow");
    let (status, _) = post_json(&client, &bin.base, &batch(events("fast", 4))).await;
    assert_eq!(status, 200);
    wait_metric(&bin, "clicktrail_sink_rows_inserted_total", 4.0).await;
    assert_eq!(raw_counts(&ch, "fast-"), (4, 4));
    assert_eq!(raw_counts(&ch, "slow-"), (6, 6));
}

/// Bytes in the spool's segment files (the checkpoint aside).
fn spool_bytes(data: &std::path::Path) -> u64 {
    std::fs::read_dir(data.join("spool"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name() != "checkpoint.json")
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// A collector killed -9 after storing a request and before answering it. The request is sent
/// again to another collector (haproxy's `retry-on empty-response` does that), whose intake
/// filter does not know the ids: it stores and delivers them. The first collector, restarted,
/// finds those rows in ClickHouse before it sends its own copy, so each page view is once in
/// `events` and once in the summed rollups (which a duplicate would count twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_stored_but_unanswered_at_kill_9_and_sent_to_another_collector_lands_once() {
    let ch = ClickHouse::start();
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cfg_a = test_config(&ch, data_a.path());
    let cfg_b = test_config(&ch, data_b.path());
    migrate(&cfg_a).await;
    ch.query("SYSTEM STOP MERGES clicktrail.events");
    // A's sink waits a minute before it cuts a batch: the record is still pending when A dies.
    let mut slow_a = cfg_a.clone();
    slow_a.sink.batch_age = Duration::from_secs(60);
    let mut a = Binary::start_with(
        &slow_a,
        &["env", "FAILPOINTS=ingest::before_answer=sleep(30000)"],
    );
    let empty = spool_bytes(data_a.path());
    let body = batch(events("unanswered", 20));
    let client = reqwest::Client::new();
    let first = tokio::spawn({
        let (client, url, body) = (
            client.clone(),
            format!("{}/v1/events", a.base),
            body.to_string(),
        );
        async move {
            client
                .post(url)
                .header("content-type", "text/plain")
                .header("origin", ORIGIN)
                .body(body)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    eventually("A stored the request", Duration::from_secs(20), || {
        spool_bytes(data_a.path()) > empty
    })
    .await;
    a.kill9();
    assert!(
        first.await.unwrap().is_err(),
        "the first attempt got no answer"
    );

    let b = Binary::start(&cfg_b);
    let (status, answer) = post_json(&client, &b.base, &body).await;
    assert_eq!(status, 200, "{answer}");
    eventually("B delivered its copy", Duration::from_secs(20), || {
        raw_counts(&ch, "unanswered-").0 == 20
    })
    .await;

    let a = Binary::start(&cfg_a);
    wait_metric(
        &a,
        "clicktrail_duplicates_dropped_total{stage=\"sink\"}",
        20.0,
    )
    .await;
    let checkpoint = data_a.path().join("spool").join("checkpoint.json");
    eventually(
        "A's checkpoint passed the record",
        Duration::from_secs(20),
        || {
            std::fs::read(&checkpoint)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .is_some_and(|c| c["delivered"] == 1 && c["inflight"].is_null())
        },
    )
    .await;
    assert_eq!(raw_counts(&ch, "unanswered-"), (20, 20));
    assert_eq!(
        ch.count(
            "SELECT sumMerge(views) FROM clicktrail.page_stats_hourly_sum WHERE site = 'test'"
        ),
        20,
        "each page view once in the summed rollup"
    );
    assert_eq!(
        metric(&a.metrics(), "clicktrail_sink_rows_inserted_total").unwrap_or(0.0),
        0.0,
        "A sent none of its copy"
    );
}
