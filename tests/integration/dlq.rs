//! Dead letters and replay against a real ClickHouse: a schema broken under a running
//! collector is held (not dead-lettered) and lands after the fix; a row refused for its value
//! is isolated into dead letters, listed with ClickHouse's reason, and replayed after the fix.

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

fn cli(config_path: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_clicktrail"))
        .args(args)
        .arg("--config")
        .arg(config_path)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn list(config_path: &std::path::Path) -> Vec<Value> {
    let (code, out, err) = cli(config_path, &["dlq", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_refusal_is_held_and_lands_exactly_once_after_the_fix_without_a_replay() {
    let ch = ClickHouse::start();
    let data = tempfile::tempdir().unwrap();
    let mut cfg = test_config(&ch, data.path());
    cfg.sink.permanent_error_attempts = 2;
    migrate(&cfg).await;
    // Merges would collapse duplicate rows and hide a delivery that inserted twice.
    ch.query("SYSTEM STOP MERGES clicktrail.events");
    let config_path = data.path().join("cli.toml");
    std::fs::write(&config_path, toml_of(&cfg)).unwrap();
    let app = App::spawn(cfg).await;

    // Break the schema under the running collector: every row fails alike (16).
    ch.query("ALTER TABLE clicktrail.events DROP COLUMN selector");
    let mut acked = Vec::new();
    for b in 0..5 {
        let evs: Vec<Value> = (0..4).map(|i| pageview(&format!("d{b}-{i}"))).collect();
        let (status, body) = app.post(&batch(evs)).await;
        assert_eq!(
            status, 200,
            "acknowledged while the schema is broken: {body}"
        );
        acked.extend((0..4).map(|i| format!("d{b}-{i}")));
    }
    // An event that is invalid, and a body that is not JSON at all: these still dead-letter.
    let mut bad = pageview("still-bad");
    bad["type"] = json!("scroll");
    bad["depth"] = json!(140);
    let (status, body) = app.post(&batch(vec![bad])).await;
    assert_eq!((status, body["accepted"].as_u64()), (200, Some(0)));
    let r = app
        .client
        .post(format!("{}/v1/events", app.base))
        .header("content-type", "text/plain")
        .body("{\"site\": \"test\", \"events\": [oops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Held and alerted, retried well past `permanent_error_attempts`, never dead-lettered.
    eventually_some(
        "the sink holds for the schema",
        Duration::from_secs(20),
        || async {
            let m = app.metrics().await;
            (sink_held(&m, "schema") == Some(1)).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m = app.metrics().await;
    assert_eq!(sink_held(&m, "destination"), Some(0), "{m}");
    assert_eq!(sink_held(&m, "schema"), Some(1), "still held");
    let schema_errors: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("clicktrail_sink_insert_errors_total{class=\"schema\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(
        schema_errors > 2,
        "retried, not given up on: {schema_errors}"
    );
    let ready = app
        .client
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert!(ready["problems"].to_string().contains("schema"), "{ready}");
    let entries = list(&config_path);
    assert!(
        entries.iter().all(|e| e["stage"] != "insert"),
        "a schema refusal is not dead-lettered: {entries:?}"
    );
    assert!(entries.iter().any(
        |e| e["stage"] == "validation" && e["reason"].as_str().unwrap().contains("field depth")
    ));
    assert!(entries.iter().any(|e| e["stage"] == "parse"));
    assert_eq!(ch.count("SELECT count() FROM clicktrail.events"), 0);

    // Fix the schema: the held batches land by themselves, once each, with no replay.
    ch.query("ALTER TABLE clicktrail.events ADD COLUMN selector String AFTER doc_h");
    eventually(
        "every acknowledged event lands",
        Duration::from_secs(30),
        || ch.count("SELECT count() FROM clicktrail.events") >= 20,
    )
    .await;
    let have: HashSet<String> = ch
        .query("SELECT event_id FROM clicktrail.events FORMAT TSV")
        .lines()
        .map(str::to_string)
        .collect();
    assert!(acked.iter().all(|id| have.contains(id)));
    // Merges are stopped (see above): the raw rows show that nothing was inserted twice.
    assert_eq!(
        ch.query("SELECT count(), uniqExact(event_id) FROM clicktrail.events FORMAT TSV")
            .trim(),
        "20\t20"
    );
    // The sink clears the hold once its insert returned, a moment after the rows are visible.
    eventually_some(
        "the hold is released after the fix",
        Duration::from_secs(10),
        || {
            let app = &app;
            async move { (sink_held(&app.metrics().await, "schema") == Some(0)).then_some(()) }
        },
    )
    .await;
    assert!(list(&config_path).iter().all(|e| e["stage"] != "insert"));

    // Replay stays for validation failures: still invalid, still listed, nothing inserted.
    let (code, out, err) = cli(&config_path, &["dlq", "replay"]);
    assert_eq!(code, 3, "some entries still fail: {out}{err}");
    assert!(
        out.contains("still failing") && out.contains("field depth"),
        "{out}"
    );
    assert!(list(&config_path)
        .iter()
        .any(|e| e["stage"] == "validation"));
    assert_eq!(ch.count("SELECT count() FROM clicktrail.events"), 20);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_refused_by_its_value_is_isolated_into_dead_letters_and_replayed_after_the_fix() {
    let ch = ClickHouse::start();
    let data = tempfile::tempdir().unwrap();
    let mut cfg = test_config(&ch, data.path());
    cfg.sink.permanent_error_attempts = 2;
    // One batch for all the posts below, so the refused row has neighbours in its insert.
    cfg.sink.batch_age = Duration::from_secs(2);
    migrate(&cfg).await;
    ch.query("SYSTEM STOP MERGES clicktrail.events");
    let config_path = data.path().join("cli.toml");
    std::fs::write(&config_path, toml_of(&cfg)).unwrap();
    let app = App::spawn(cfg).await;

    // A check on one row's value, as 18.16 can express it: a MATERIALIZED column computed at
    // insert that throws (395 FUNCTION_THROW_IF_VALUE_IS_NON_ZERO) for that row only.
    ch.query(
        "ALTER TABLE clicktrail.events ADD COLUMN chk UInt8 MATERIALIZED throwIf(title = 'poison')",
    );
    let mut evs: Vec<Value> = (0..15).map(|i| pageview(&format!("r{i}"))).collect();
    evs[7]["title"] = json!("poison");
    let (status, body) = app.post(&batch(evs)).await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (200, Some(15)),
        "{body}"
    );

    let entry = eventually_some(
        "the poison row is dead-lettered",
        Duration::from_secs(30),
        || {
            let entries = list(&config_path);
            async move { entries.into_iter().find(|e| e["stage"] == "insert") }
        },
    )
    .await;
    assert_eq!(entry["code"], 395, "{entry}");
    assert_eq!(
        entry["events"], 1,
        "split until the bad row stands alone: {entry}"
    );
    eventually("the good rows land", Duration::from_secs(30), || {
        ch.count("SELECT count() FROM clicktrail.events") == 14
    })
    .await;
    let m = app.metrics().await;
    assert!(
        m.contains("clicktrail_dlq_events_total{stage=\"insert\",reason=\"constraint\"} 1"),
        "{m}"
    );
    assert!(sink_held(&m, "schema") == Some(0) && sink_held(&m, "dead_letters") == Some(0));
    let (_, shown, _) = cli(
        &config_path,
        &["dlq", "show", &entry["id"].as_u64().unwrap().to_string()],
    );
    assert!(shown.contains("\"event_id\":\"r7\""), "{shown}");

    // Relax the check, replay: the refused row lands once, next to the others.
    ch.query("ALTER TABLE clicktrail.events DROP COLUMN chk");
    let (code, out, err) = cli(&config_path, &["dlq", "replay", "--stage", "insert"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("replayed 1 events"), "{out}");
    assert_eq!(
        ch.query("SELECT count(), uniqExact(event_id) FROM clicktrail.events FORMAT TSV")
            .trim(),
        "15\t15"
    );
    assert!(list(&config_path).is_empty());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_without_a_running_collector_says_what_to_do() {
    let ch = ClickHouse::start();
    let data = tempfile::tempdir().unwrap();
    let cfg = test_config(&ch, data.path());
    migrate(&cfg).await;
    let config_path = data.path().join("cli.toml");
    std::fs::write(&config_path, toml_of(&cfg)).unwrap();
    {
        let app = App::spawn(cfg).await;
        let mut bad = pageview("x");
        bad["ts"] = json!("never");
        app.post(&batch(vec![bad])).await;
        app.shutdown().await;
    }
    std::fs::remove_file(data.path().join("admin.json")).unwrap();
    let (code, _, err) = cli(&config_path, &["dlq", "replay"]);
    assert_ne!(code, 0);
    assert!(err.contains("start `clicktrail serve`"), "{err}");
}
