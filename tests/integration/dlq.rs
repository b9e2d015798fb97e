//! Dead letters and replay against a real ClickHouse: a schema broken under a running
//! collector, refused batches listed with ClickHouse's reason, replay after the fix.

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
async fn refused_batches_are_listed_and_replayed_exactly_once_after_the_fix() {
    let ch = ClickHouse::start();
    let data = tempfile::tempdir().unwrap();
    let mut cfg = test_config(&ch, data.path());
    cfg.sink.permanent_error_attempts = 2;
    migrate(&cfg).await;
    // Merges would collapse duplicate rows and hide a replay that inserted twice.
    ch.query("SYSTEM STOP MERGES clicktrail.events");
    let config_path = data.path().join("cli.toml");
    std::fs::write(&config_path, toml_of(&cfg)).unwrap();
    let app = App::spawn(cfg).await;

    // Break the schema under the running collector.
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
    // An event that is invalid, and a body that is not JSON at all.
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

    let mut entries = Vec::new();
    for _ in 0..100 {
        entries = list(&config_path);
        let insert_events: u64 = entries
            .iter()
            .filter(|e| e["stage"] == "insert")
            .map(|e| e["events"].as_u64().unwrap())
            .sum();
        if insert_events == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let inserts: Vec<&Value> = entries.iter().filter(|e| e["stage"] == "insert").collect();
    assert!(
        !inserts.is_empty(),
        "refused batches are listed: {entries:?}"
    );
    for e in &inserts {
        assert_eq!(e["code"], 16, "ClickHouse's exception code: {e}");
        assert!(
            e["reason"].as_str().unwrap().contains("selector"),
            "ClickHouse's reason: {e}"
        );
        assert_eq!(e["attempts"], 2);
    }
    assert!(
        inserts.len() <= 5,
        "a schema-level refusal dead-letters whole batches, not row by row: {}",
        inserts.len()
    );
    assert!(entries.iter().any(
        |e| e["stage"] == "validation" && e["reason"].as_str().unwrap().contains("field depth")
    ));
    assert!(entries.iter().any(|e| e["stage"] == "parse"));
    let metrics = app.metrics().await;
    assert!(metrics
        .contains("clicktrail_dlq_events_total{stage=\"insert\",reason=\"no_such_column\"} 20"));

    // The human table and `show` tell the same story.
    let (_, table, _) = cli(&config_path, &["dlq", "list"]);
    assert!(
        table.contains("insert") && table.contains("Code: 16"),
        "{table}"
    );
    let id = inserts[0]["id"].as_u64().unwrap().to_string();
    let (code, shown, _) = cli(&config_path, &["dlq", "show", &id]);
    assert_eq!(code, 0);
    assert!(
        shown.contains("clickhouse code: 16") && shown.contains("\"event_id\":\"d"),
        "{shown}"
    );
    let (code, _, err) = cli(&config_path, &["dlq", "show", "999999"]);
    assert_ne!(code, 0);
    assert!(err.contains("no dead-letter entry 999999"), "{err}");

    // A dry run changes nothing.
    let (code, out, _) = cli(&config_path, &["dlq", "replay", "--dry-run"]);
    assert_eq!(code, 0);
    assert!(out.contains("dry run: would replay"), "{out}");
    assert_eq!(list(&config_path).len(), entries.len());

    // Fix the schema, replay: everything acknowledged lands exactly once.
    ch.query("ALTER TABLE clicktrail.events ADD COLUMN selector String AFTER doc_h");
    let (code, out, err) = cli(&config_path, &["dlq", "replay"]);
    assert_eq!(code, 3, "some entries still fail: {out}{err}");
    assert!(out.contains("replayed 20 events"), "{out}");
    assert!(out.contains("ClickHouse confirmed them"), "{out}");
    assert!(
        out.contains("still failing") && out.contains("field depth"),
        "{out}"
    );
    let have: HashSet<String> = ch
        .query("SELECT event_id FROM clicktrail.events FORMAT TSV")
        .lines()
        .map(str::to_string)
        .collect();
    assert!(acked.iter().all(|id| have.contains(id)));

    // Rerunning is safe: nothing more to replay for inserts, still-invalid events stay.
    let (code, _, _) = cli(&config_path, &["dlq", "replay", "--stage", "insert"]);
    assert_eq!(code, 0);
    let left = list(&config_path);
    assert!(left.iter().all(|e| e["stage"] != "insert"), "{left:?}");
    assert!(
        left.iter().any(|e| e["stage"] == "validation"),
        "still listed"
    );
    // Merges are stopped (see above): the raw rows show that the replays, with no crash,
    // inserted nothing twice.
    assert_eq!(
        ch.query("SELECT count(), uniqExact(event_id) FROM clicktrail.events FORMAT TSV")
            .trim(),
        "20\t20"
    );
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
