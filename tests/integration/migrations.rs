//! Migrations on the real 18.16 server and on ClickHouse 26.x through chDB.

use std::process::Command;

use crate::harness::*;

const EVENT_COLUMNS: &str = "event_id, site, type, name, ts, ts_ms, received_at, url, host, path, referrer, title, session_id, visitor_id, x, y, viewport_w, viewport_h, doc_w, doc_h, selector, text, rage, scroll_depth, duration_ms, props, browser, os, device, user_agent, ip";

fn print_sql(version: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_clicktrail"))
        .args(["migrate", "--print-sql", "--server-version", version])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_once_on_clickhouse_18_16_and_rerun_is_a_no_op() {
    let ch = ClickHouse::start();
    assert!(ch.query("SELECT version()").starts_with("18.16"));
    let data = tempfile::tempdir().unwrap();
    let cfg = test_config(&ch, data.path());
    let applied = clicktrail::migrate::run(&cfg.clickhouse).await.unwrap();
    assert_eq!(applied, vec!["0001_create_events.sql"]);
    let again = clicktrail::migrate::run(&cfg.clickhouse).await.unwrap();
    assert!(again.is_empty(), "rerun applies nothing");
    assert_eq!(
        ch.count("SELECT count() FROM clicktrail.schema_migrations"),
        1
    );
    let engine = ch.query("SELECT engine, partition_key, sorting_key FROM system.tables WHERE database = 'clicktrail' AND name = 'events' FORMAT TSV");
    assert_eq!(
        engine.trim(),
        "ReplacingMergeTree\ttoDate(ts)\tsite, type, path, ts, event_id"
    );
    // The insert's column list is exactly the table's columns, in order.
    let cols = ch.query("SELECT name FROM system.columns WHERE database = 'clicktrail' AND table = 'events' FORMAT TSV");
    assert_eq!(
        cols.trim().replace('\n', ", "),
        format!("{EVENT_COLUMNS}, inserted_at"),
        "the sink's columns, then the server-side insert time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn printed_sql_for_18_16_runs_on_the_real_server() {
    let ch = ClickHouse::start();
    let sql = print_sql("18.16");
    for st in sql.split(";\n") {
        let st: String = st
            .lines()
            .filter(|l| !l.trim().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        if !st.trim().is_empty() {
            ch.query(&st);
        }
    }
    assert_eq!(
        ch.count("SELECT count() FROM clicktrail.schema_migrations"),
        1
    );
}

#[test]
fn printed_sql_for_current_clickhouse_runs_on_chdb() {
    let sql = print_sql("26.9");
    assert!(sql.contains("LowCardinality(String)"));
    let types = "event_id String, site String, type String, name String, ts DateTime, ts_ms UInt16, received_at DateTime, url String, host String, path String, referrer String, title String, session_id String, visitor_id String, x Int32, y Int32, viewport_w UInt16, viewport_h UInt16, doc_w UInt32, doc_h UInt32, selector String, text String, rage UInt8, scroll_depth UInt8, duration_ms UInt32, props String, browser String, os String, device String, user_agent String, ip String";
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/chdb/apply.py");
    let mut child = Command::new("python3")
        .args([script, EVENT_COLUMNS, types])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sql.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "chDB run failed (pip install chdb-core):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("migrations=1 rows=5"), "{stdout}");
    assert!(
        stdout.contains("chdb version=2"),
        "a current release: {stdout}"
    );
}
