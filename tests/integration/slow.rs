//! Slow-call detection against a ClickHouse made slow for real: the server is paused
//! (`SIGSTOP`) while an insert or a report query is in flight, so the call takes longer than its
//! `[observability]` threshold; it must be logged with its context and counted, and the data
//! must still land exactly once.

use std::time::Duration;

use crate::harness::*;

fn slow_calls(metrics: &str, kind: &str) -> u64 {
    let prefix = format!("clicktrail_slow_calls_total{{kind=\"{kind}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_slowed_by_a_paused_clickhouse_is_logged_with_its_batch_and_counted() {
    let ch = ClickHouse::start();
    let data = tempfile::tempdir().unwrap();
    let mut cfg = test_config(&ch, data.path());
    cfg.observability.slow_insert = Duration::from_millis(1000);
    // One JSON object per line: fields are matched exactly (no terminal colours).
    cfg.log.format = clicktrail::config::LogFormat::Json;
    migrate(&cfg).await;
    let log = data.path().join("collector.log");
    let bin = Binary::start_logged(&cfg, &log);
    let client = reqwest::Client::new();
    // A first insert, normally fast (under load it may be slow too: the assertions below look
    // for the batch that was in flight while the server was paused).
    let (s, b) = post_json(&client, &bin.base, &batch(vec![pageview("fast-1")])).await;
    assert_eq!(s, 200, "{b}");
    // Counted by the sink, i.e. its INSERT returned: 18.16 shows the rows before the
    // materialized views have run, and pausing then would slow this batch, not the next.
    eventually("the first insert returns", Duration::from_secs(10), || {
        bin.metrics()
            .contains("clicktrail_sink_rows_inserted_total 1\n")
    })
    .await;

    ch.pause(true);
    let (s, b) = post_json(
        &client,
        &bin.base,
        &batch(vec![pageview("slow-1"), pageview("slow-2")]),
    )
    .await;
    assert_eq!(
        s, 200,
        "acknowledged from the spool while ClickHouse is paused: {b}"
    );
    // The sink cuts the batch within batch_age and its insert then waits on the paused server.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    ch.pause(false);
    eventually("the slow insert lands", Duration::from_secs(20), || {
        ch.count("SELECT count() FROM clicktrail.events") == 3
    })
    .await;
    eventually(
        "the slow insert is counted",
        Duration::from_secs(10),
        || slow_calls(&bin.metrics(), "insert") >= 1,
    )
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("slow ClickHouse insert") && l.contains(r#""batch_start":1"#))
        .unwrap_or_else(|| panic!("no slow-insert line for batch [1, 2) in the log:\n{text}"));
    for field in [
        r#""kind":"insert""#,
        r#""batch_end":2"#,
        r#""rows":2"#,
        r#""bytes":"#,
        r#""elapsed_ms":"#,
    ] {
        assert!(line.contains(field), "`{field}` missing in `{line}`");
    }
    assert_eq!(
        ch.count("SELECT uniqExact(event_id) FROM clicktrail.events"),
        3,
        "every event once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_query_slowed_by_a_paused_clickhouse_is_counted() {
    const TOKEN: &str = "slow-read-token-0123456789";
    let ch = ClickHouse::start();
    let data = tempfile::tempdir().unwrap();
    let mut cfg = test_config(&ch, data.path());
    cfg.sites[0].read_tokens = vec![TOKEN.into()];
    cfg.observability.slow_query = Duration::from_millis(1000);
    migrate(&cfg).await;
    let app = App::spawn(cfg).await;
    let day = chrono_day();
    let uri = format!("{}/v1/query/pages?site=test&from={day}&to={day}", app.base);
    let get = || {
        app.client
            .get(&uri)
            .header("authorization", format!("Bearer {TOKEN}"))
            .send()
    };
    let r = get().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let before = slow_calls(&app.metrics().await, "query");

    ch.pause(true);
    let pending = tokio::spawn(get());
    tokio::time::sleep(Duration::from_millis(2000)).await;
    ch.pause(false);
    let r = pending.await.unwrap().unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let m = app.metrics().await;
    assert!(slow_calls(&m, "query") > before, "{m}");
    app.shutdown().await;
}

/// Today as YYYY-MM-DD (UTC).
fn chrono_day() -> String {
    let days = now_ms().div_euclid(86_400_000);
    clicktrail::compactor::day_string(days)
}
