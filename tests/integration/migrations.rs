//! Migrations on the real 18.16 server and on ClickHouse 26.x through chDB.

use std::process::Command;

use crate::harness::*;

use clicktrail::row::{COLUMNS, SERVER_COLUMNS};

/// What `DESCRIBE TABLE events` must show after every migration: the row's columns with their
/// types for the dialect, then the columns the server fills. A column missing from the table
/// or from the row table, a changed type, or two columns swapped in the row table (their
/// types differ, or the insert's names no longer match the values) all fail here.
fn expected_columns(low_cardinality: bool) -> Vec<(String, String)> {
    COLUMNS
        .iter()
        .map(|c| {
            (
                c.name.to_string(),
                c.kind.clickhouse_type(low_cardinality).to_string(),
            )
        })
        .chain(
            SERVER_COLUMNS
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string())),
        )
        .collect()
}

fn described(tsv: &str) -> Vec<(String, String)> {
    tsv.lines()
        .map(|l| {
            let mut f = l.split('\t');
            (f.next().unwrap().to_string(), f.next().unwrap().to_string())
        })
        .collect()
}

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
    let applied = clicktrail::migrate::run(&cfg.clickhouse, clicktrail::migrate::InsertWait::Skip)
        .await
        .unwrap();
    let files: Vec<&str> = clicktrail::migrate::MIGRATIONS
        .iter()
        .map(|m| m.1)
        .collect();
    assert_eq!(applied, files);
    let again = clicktrail::migrate::run(&cfg.clickhouse, clicktrail::migrate::InsertWait::Skip)
        .await
        .unwrap();
    assert!(again.is_empty(), "rerun applies nothing");
    assert_eq!(
        ch.count("SELECT count() FROM clicktrail.schema_migrations"),
        files.len() as u64
    );
    let engine = ch.query("SELECT engine, partition_key, sorting_key FROM system.tables WHERE database = 'clicktrail' AND name = 'events' FORMAT TSV");
    assert_eq!(
        engine.trim(),
        "ReplacingMergeTree\ttoDate(ts)\tsite, type, path, ts, event_id"
    );
    let cols = described(
        ch.query("DESCRIBE TABLE clicktrail.events FORMAT TabSeparatedRaw")
            .trim(),
    );
    assert_eq!(
        cols,
        expected_columns(false),
        "the row table against the server"
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
        clicktrail::migrate::MIGRATIONS.len() as u64
    );
}

#[test]
fn printed_sql_for_current_clickhouse_runs_on_chdb() {
    let sql = print_sql("26.9");
    assert!(sql.contains("LowCardinality(String)"));
    let expected = serde_json::to_string(&expected_columns(true)).unwrap();
    let insert = clicktrail::row::insert_columns();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/chdb/apply.py");
    let mut child = Command::new("python3")
        .args([script, &insert, &expected])
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
    let want = format!(
        "migrations={} rows=5",
        clicktrail::migrate::MIGRATIONS.len()
    );
    assert!(stdout.contains(&want), "{stdout}");
    assert!(
        stdout.contains("chdb version=2"),
        "a current release: {stdout}"
    );
}
