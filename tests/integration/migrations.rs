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
    // The cutover shows as a query parameter (the runner fills it in); any instant will do here.
    let sql = print_sql("18.16").replace("{cutover:DateTime}", "toDateTime(1)");
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
    let sql = print_sql("26.9").replace("{cutover:DateTime}", "toDateTime(1)");
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

/// Totals of the old set rollups (per key, as the reports count them) and of the sum rollups
/// that 0006 converts them into: equal after the conversion, however often it ran.
const CONVERTED: &[(&str, &str)] = &[
    (
        "SELECT sum(n) FROM (SELECT uniqMerge(clicks) AS n FROM clicktrail.click_grid_daily GROUP BY site, path, kind, day, device_class, cy, cx)",
        "SELECT sum(clicks) FROM clicktrail.click_grid_daily_sum",
    ),
    (
        "SELECT sum(n) FROM (SELECT uniqIfMerge(rage_clicks) AS n FROM clicktrail.element_clicks_daily GROUP BY site, path, day, device_class, selector, ecell)",
        "SELECT sum(rage_clicks) FROM clicktrail.element_clicks_daily_sum",
    ),
    (
        "SELECT sum(n) FROM (SELECT uniqMerge(pageviews) AS n FROM clicktrail.scroll_depth_daily GROUP BY site, path, day, device_class, depth)",
        "SELECT sum(pageviews) FROM clicktrail.scroll_depth_daily_sum",
    ),
    (
        "SELECT sum(n) FROM (SELECT uniqMerge(pageviews) AS n FROM clicktrail.engagement_daily GROUP BY site, path, day, device_class, engaged_s)",
        "SELECT sum(pageviews) FROM clicktrail.engagement_daily_sum",
    ),
    (
        "SELECT sum(n) FROM (SELECT uniqMerge(pageviews) AS n FROM clicktrail.fold_daily GROUP BY site, path, day, device_class, fold)",
        "SELECT sum(pageviews) FROM clicktrail.fold_daily_sum",
    ),
    (
        "SELECT sum(n) FROM (SELECT uniqIfMerge(views) AS n FROM clicktrail.page_stats_hourly GROUP BY site, path, hour, device_class)",
        "SELECT sumMerge(views) FROM clicktrail.page_stats_hourly_sum",
    ),
    (
        "SELECT sum(n) FROM (SELECT uniqArrayMerge(scroll_steps) AS n FROM clicktrail.pages_daily GROUP BY site, day, device_class, path)",
        "SELECT sumMerge(scroll_steps) FROM clicktrail.pages_daily_sum",
    ),
    (
        "SELECT uniqIfMerge(visitors) FROM clicktrail.pages_daily",
        "SELECT uniqIfMerge(visitors) FROM clicktrail.pages_daily_sum",
    ),
];

/// Starts `clicktrail migrate` with `args` and the `FAILPOINTS` given; returns it and a channel
/// of its stderr lines.
fn migrate_binary(
    config: &std::path::Path,
    args: &[&str],
    failpoints: &str,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_clicktrail"))
        .args(["--config"])
        .arg(config)
        .arg("migrate")
        .args(args)
        .env("FAILPOINTS", failpoints)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

fn wait_for_line(rx: &std::sync::mpsc::Receiver<String>, needle: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(needle) => return,
            Ok(_) => {}
            Err(e) => panic!("no stderr line with `{needle}`: {e}"),
        }
    }
}

/// Issue 13: kill -9 of `clicktrail migrate` while 0006 waits for in-flight inserts, then again
/// in the middle of its conversion (a failpoint holds it after the first converted table), and a
/// rerun: the sum rollups hold exactly the old rollups' counts, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sum_conversion_reruns_to_exact_counts() {
    let ch = ClickHouse::start();
    let data = tempfile::tempdir().unwrap();
    let cfg = test_config(&ch, data.path());
    clicktrail::migrate::run_to(&cfg.clickhouse, clicktrail::migrate::InsertWait::Skip, 5)
        .await
        .unwrap();
    // Rows of the release before 0006, in its set rollups (pages, clicks, scrolls, engagement
    // of 5 000 page views over 3 days; every 9th click a rage click; the ids repeat once: a
    // duplicate block, counted once by the sets).
    for _ in 0..2 {
        ch.query(
            "INSERT INTO clicktrail.events (event_id, site, type, ts, url, host, path, session_id, visitor_id, \
             pageview_id, viewport_w, viewport_h, doc_w, doc_h, x, y, selector, rage, scroll_depth, duration_ms) \
             SELECT concat('e', toString(number)), 'test', ['pageview', 'click', 'scroll', 'engagement'][number % 4 + 1], \
             toDateTime('2024-06-01 00:00:00') + number * 13, 'https://t.test/', 't.test', concat('/p/', toString(number % 7)), \
             concat('s', toString(intDiv(number, 40))), concat('v', toString(number % 500)), concat('pv', toString(intDiv(number, 4))), \
             [375, 800, 1280][number % 3 + 1], 700, 1280, 3000, number % 1280, number % 4000, concat('#b', toString(number % 5)), \
             toUInt8(number % 9 = 1), toUInt8(number % 101), toUInt32(number * 97 % 400000) \
             FROM numbers(20000)",
        );
    }
    let want: Vec<u64> = CONVERTED.iter().map(|(old, _)| ch.count(old)).collect();
    assert!(want.iter().all(|&n| n > 0), "{want:?}");

    let mut file_cfg = cfg.clone();
    file_cfg.compactor.insert_settle = std::time::Duration::from_secs(10);
    let config = data.path().join("migrate.toml");
    std::fs::write(&config, toml_of(&file_cfg)).unwrap();

    // 1. Killed while waiting for inserts stamped before the cutover (30 s ahead + 5 s + 5 s).
    let (mut child, rx) = migrate_binary(&config, &[], "");
    wait_for_line(&rx, "waiting");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(
        ch.count("SELECT count() FROM clicktrail.click_grid_daily_sum WHERE backfill = 1"),
        0
    );
    // 2. Killed in the middle of the conversion: the first table converted, the rest not.
    let (mut child, rx) = migrate_binary(
        &config,
        &["--no-insert-wait"],
        "migrate::after_convert_statement=sleep(60000)",
    );
    wait_for_line(&rx, "converting");
    eventually(
        "the first table converted",
        std::time::Duration::from_secs(60),
        || ch.count("SELECT count() FROM clicktrail.click_grid_daily_sum WHERE backfill = 1") > 0,
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(ch.count("SELECT count() FROM clicktrail.fold_daily_sum"), 0);
    assert_eq!(
        ch.count("SELECT count() FROM clicktrail.schema_migrations WHERE version = 6"),
        0
    );
    // 3. The rerun, with the same cutover, converts from scratch.
    let (mut child, _rx) = migrate_binary(&config, &["--no-insert-wait"], "");
    assert!(child.wait().unwrap().success());
    assert_eq!(
        ch.count("SELECT count() FROM clicktrail.schema_cutovers WHERE version = 6 AND phase = 'cutover'"),
        1,
        "one cutover, reused"
    );
    assert_eq!(
        ch.count("SELECT count() FROM clicktrail.schema_migrations WHERE version = 6"),
        1
    );
    let got: Vec<u64> = CONVERTED.iter().map(|(_, new)| ch.count(new)).collect();
    assert_eq!(got, want, "the sum rollups against the old sets");
    assert_eq!(
        ch.count("SELECT count() FROM system.tables WHERE database = 'clicktrail' AND name LIKE '%until_cutover_mv'"),
        0,
        "the replaced views are gone"
    );
}
