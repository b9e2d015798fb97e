//! The compactor against a real ClickHouse: seed several days, archive the cold ones, read the
//! files back with our reader and with pyarrow, rerun, late rows, and kill -9 mid-way.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use clicktrail::compactor::manifest::PartState;
use clicktrail::compactor::{day_string, parquet_io};
use clicktrail::config::Config;
use clicktrail::event::Event;

use crate::harness::*;

const PER_DAY: u64 = 75_000;
/// Day offsets from today: three cold days and one hot one (hot_days = 2).
pub(crate) const DAYS: [i64; 4] = [-5, -4, -3, 0];

pub(crate) fn today() -> i64 {
    now_ms().div_euclid(86_400_000)
}

/// The row ClickHouse generates for `n` (must mirror `seed`).
pub(crate) fn expected(n: u64) -> Event {
    let day = today() + DAYS[(n % 4) as usize];
    let ts = (day * 86_400) as u64 + (n * 7) % 86_400;
    Event {
        event_id: format!("e{n}").into(),
        site: "test".into(),
        kind: ["pageview", "click", "scroll"][(n % 3) as usize].into(),
        name: Default::default(),
        ts: ts as u32,
        ts_ms: (n % 1000) as u16,
        received_at: ts as u32 + 1,
        url: format!("https://shop.test/p/{}", n % 50).into(),
        host: "shop.test".into(),
        path: format!("/p/{}", n % 50).into(),
        referrer: Default::default(),
        title: format!("Page {}", n % 50).into(),
        session_id: format!("s{}", n % 1000).into(),
        visitor_id: format!("v{}", n % 500).into(),
        x: (n % 1500) as i32 - 10,
        y: (n % 9000) as i32,
        viewport_w: 1280,
        viewport_h: 720,
        doc_w: 1280,
        doc_h: 9000,
        selector: format!("#b{}", n % 20).into(),
        text: "Buy".into(),
        rage: u8::from(n % 7 == 0),
        scroll_depth: (n % 101) as u8,
        duration_ms: (n % 60_000) as u32,
        props: Default::default(),
        browser: "Chrome".into(),
        os: "Linux".into(),
        device: "desktop".into(),
        user_agent: Default::default(),
        ip: "203.0.113.0".into(),
        // Columns the seed leaves to the table's defaults.
        device_class: "desktop".into(),
        ..Event::default()
    }
}

pub(crate) fn seed(ch: &ClickHouse, from: u64, count: u64, inserted_ago_secs: i64) {
    seed_where(ch, from, count, inserted_ago_secs, "1");
}

/// `seed`, keeping only the numbers that satisfy `cond` (SQL over `number`).
pub(crate) fn seed_where(
    ch: &ClickHouse,
    from: u64,
    count: u64,
    inserted_ago_secs: i64,
    cond: &str,
) {
    seed_into(ch, "clicktrail", from, count, inserted_ago_secs, cond);
}

/// `seed_where` into the events table of database `db`.
pub(crate) fn seed_into(
    ch: &ClickHouse,
    db: &str,
    from: u64,
    count: u64,
    inserted_ago_secs: i64,
    cond: &str,
) {
    let t = today();
    ch.query(&format!(
        "INSERT INTO {db}.events (event_id, site, type, name, ts, ts_ms, received_at, url, host, path, referrer, title, \
         session_id, visitor_id, x, y, viewport_w, viewport_h, doc_w, doc_h, selector, text, rage, scroll_depth, duration_ms, \
         props, browser, os, device, user_agent, ip, inserted_at) \
         SELECT concat('e', toString(number)), 'test', ['pageview','click','scroll'][number % 3 + 1], '', \
         toDateTime(({t} + [{d0}, {d1}, {d2}, {d3}][number % 4 + 1]) * 86400 + (number * 7) % 86400), number % 1000, \
         toDateTime(({t} + [{d0}, {d1}, {d2}, {d3}][number % 4 + 1]) * 86400 + (number * 7) % 86400 + 1), \
         concat('https://shop.test/p/', toString(number % 50)), 'shop.test', concat('/p/', toString(number % 50)), '', \
         concat('Page ', toString(number % 50)), concat('s', toString(number % 1000)), concat('v', toString(number % 500)), \
         toInt32(number % 1500) - 10, toInt32(number % 9000), 1280, 720, 1280, 9000, concat('#b', toString(number % 20)), 'Buy', \
         number % 7 = 0, number % 101, number % 60000, '', 'Chrome', 'Linux', 'desktop', '', '203.0.113.0', \
         toDateTime(toUInt32(now()) - {inserted_ago_secs}) \
         FROM (SELECT number FROM system.numbers WHERE number >= {from} LIMIT {count}) WHERE {cond}",
        d0 = DAYS[0],
        d1 = DAYS[1],
        d2 = DAYS[2],
        d3 = DAYS[3],
    ));
}

pub(crate) fn is_cold(n: u64) -> bool {
    DAYS[(n % 4) as usize] <= -3
}

pub(crate) struct Setup {
    pub(crate) ch: ClickHouse,
    pub(crate) data: tempfile::TempDir,
    pub(crate) config_path: std::path::PathBuf,
    pub(crate) cfg: Config,
}

pub(crate) async fn setup(rows: u64) -> Setup {
    let ch = ClickHouse::start();
    let data = tempfile::tempdir().unwrap();
    let mut cfg = test_config(&ch, data.path());
    cfg.compactor.hot_days = 2;
    cfg.compactor.row_group_rows = 32_768;
    cfg.compactor.insert_settle = cfg.clickhouse.timeout;
    migrate(&cfg).await;
    seed(&ch, 0, rows, 3600);
    let config_path = data.path().join("cli.toml");
    std::fs::write(&config_path, toml_of(&cfg)).unwrap();
    Setup {
        ch,
        data,
        config_path,
        cfg,
    }
}

pub(crate) fn compact(s: &Setup, extra_env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clicktrail"));
    cmd.args(["compact", "--once", "--config"])
        .arg(&s.config_path)
        .env("RUST_LOG", "warn");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every row of every archive file, by event id; panics on a duplicate.
pub(crate) fn archive_rows(s: &Setup) -> HashMap<String, Event> {
    let root = s.data.path().join("archive/events");
    let mut rows = HashMap::new();
    let mut files = Vec::new();
    for day in std::fs::read_dir(&root).into_iter().flatten() {
        for f in std::fs::read_dir(day.unwrap().path()).unwrap() {
            files.push(f.unwrap().path());
        }
    }
    for f in files {
        assert!(
            f.extension().is_some_and(|e| e == "parquet"),
            "only Parquet under events/: {f:?}"
        );
        parquet_io::for_each_row(&f, |e| {
            let id = e.event_id.to_string();
            assert!(rows.insert(id.clone(), e).is_none(), "{id} archived twice");
        })
        .unwrap();
    }
    rows
}

pub(crate) fn count(ch: &ClickHouse, cond: &str) -> u64 {
    ch.count(&format!(
        "SELECT count() FROM clicktrail.events WHERE {cond}"
    ))
}

pub(crate) fn cold_cond() -> String {
    format!("toDate(ts) <= toDate({})", (today() - 3) * 86_400)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_days_become_verified_parquet_and_leave_clickhouse() {
    let total = PER_DAY * 4;
    let s = setup(total).await;
    let (code, out, err) = compact(&s, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.matches(" archived ").count(),
        3,
        "three cold days: {out}"
    );

    // ClickHouse: cold days gone, the hot day untouched.
    assert_eq!(count(&s.ch, &cold_cond()), 0);
    assert_eq!(count(&s.ch, "1"), PER_DAY);

    // Our reader: every cold row, row for row.
    let rows = archive_rows(&s);
    assert_eq!(rows.len() as u64, PER_DAY * 3);
    for n in (0..total).filter(|&n| is_cold(n)) {
        let want = expected(n);
        assert_eq!(rows.get(want.event_id.as_ref()), Some(&want), "row {n}");
    }

    // The manifest says so too.
    let (store, _) = clicktrail::compactor::open_store("", s.data.path()).unwrap();
    let manifest = clicktrail::compactor::manifest::all(store.as_ref())
        .await
        .unwrap();
    assert_eq!(manifest.len(), 3);
    for m in &manifest {
        assert_eq!(m.state, PartState::Dropped);
        assert_eq!(m.rows, PER_DAY);
        let path = s.data.path().join("archive").join(&m.file);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(m.bytes, bytes.len() as u64);
        assert_eq!(m.crc32c, format!("{:08x}", crc32c::crc32c(&bytes)));
    }

    // An independent reader (pyarrow) agrees, with real timestamp types.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/chdb/read_archive.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(s.data.path().join("archive"))
        .arg(clicktrail::compactor::archive_sql_row_hash())
        .stderr(Stdio::inherit())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "pyarrow reader failed (pip install pyarrow)"
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "schema ts=timestamp[ms, tz=UTC] received_at=timestamp[ms, tz=UTC] rage=bool date=string"
    );
    assert_eq!(lines.next().unwrap(), format!("rows {}", PER_DAY * 3));
    let mut want: Vec<String> = (0..total)
        .filter(|&n| is_cold(n))
        .map(|n| {
            let e = expected(n);
            format!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                e.event_id,
                e.ts as u64 * 1000 + e.ts_ms as u64,
                e.x,
                e.y,
                e.scroll_depth,
                e.rage,
                e.path,
                day_string(e.ts as i64 / 86_400)
            )
        })
        .collect();
    want.sort();
    let got: Vec<&str> = lines.collect();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w);
    }

    // ClickHouse 26.x (chDB) reading the published files computes the checksums that
    // ClickHouse 18.16 computed from its rows, as the manifest recorded them.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/chdb/verify_archive.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(s.data.path().join("archive"))
        .arg(clicktrail::compactor::archive_sql_row_hash())
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "chDB checksum check failed (pip install chdb-core):\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches("ok ").count(), 3, "{text}");

    // A rerun changes nothing.
    let before: Vec<_> = walk(&s.data.path().join("archive"));
    let (code, out, _) = compact(&s, &[]);
    assert_eq!(code, 0);
    assert!(
        out.contains("no cold partitions") || !out.contains(" archived "),
        "{out}"
    );
    assert_eq!(walk(&s.data.path().join("archive")), before);
    assert_eq!(count(&s.ch, "1"), PER_DAY);

    // Late rows for an archived day become an additional part on the next run.
    seed(&s.ch, total, 40, 0); // 10 per day, inserted now
    tokio::time::sleep(s.cfg.compactor.insert_settle + Duration::from_secs(1)).await;
    let (code, out, err) = compact(&s, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches(" archived ").count(), 3, "{out}");
    let rows = archive_rows(&s);
    assert_eq!(rows.len() as u64, PER_DAY * 3 + 30);
    assert_eq!(count(&s.ch, &cold_cond()), 0);
    assert_eq!(count(&s.ch, "1"), PER_DAY + 10);
}

/// Each of the three ways a day is read out of ClickHouse (a merged part, several parts without
/// a duplicate key, duplicate keys needing FINAL) archives every row exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_path_archives_each_row_once() {
    let total = 40_000;
    let s = setup(total).await;
    // Day 1 (n % 4 = 1): every row sent twice, as after a crash on a server without block
    // deduplication. Day 2: a second, disjoint insert (two parts, no duplicate). Day 0: merged
    // into one part.
    seed_where(&s.ch, 0, total, 3600, "number % 4 = 1");
    seed_where(&s.ch, total, total, 3600, "number % 4 = 2");
    s.ch.query(&format!(
        "OPTIMIZE TABLE clicktrail.events PARTITION '{}' FINAL",
        day_string(today() + DAYS[0])
    ));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clicktrail"));
    let out = cmd
        .args(["compact", "--once", "--config"])
        .arg(&s.config_path)
        .env("RUST_LOG", "clicktrail=info")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    for mode in [
        "plain (one merged part)",
        "plain (no duplicate keys)",
        "FINAL (duplicate keys)",
    ] {
        assert_eq!(log.matches(mode).count(), 1, "{mode}: {log}");
    }
    let rows = archive_rows(&s); // panics on an event archived twice
    let mut want: Vec<u64> = (0..total).filter(|&n| is_cold(n)).collect();
    want.extend((total..2 * total).filter(|n| n % 4 == 2));
    assert_eq!(rows.len(), want.len());
    for n in want {
        let e = expected(n);
        assert_eq!(rows.get(e.event_id.as_ref()), Some(&e), "row {n}");
    }
    assert_eq!(count(&s.ch, &cold_cond()), 0);
    assert_eq!(count(&s.ch, "1"), total / 4, "hot day untouched");
}

pub(crate) fn walk(dir: &std::path::Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let p = e.path();
                out.push((
                    p.display().to_string(),
                    std::fs::read(&p).unwrap().len() as u64,
                ));
            }
        }
    }
    out.sort();
    out
}

/// Runs `compact --once` until it is held at the failpoint `compactor::<step>`, then kills it
/// with SIGKILL. The step is reached when its effect is on disk: a published part file
/// (`after_publish`), or a manifest entry recorded as verified (`after_verify`).
pub(crate) fn kill_at(s: &Setup, step: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_clicktrail"))
        .args(["compact", "--once", "--config"])
        .arg(&s.config_path)
        .env("RUST_LOG", "warn")
        .env("FAILPOINTS", format!("compactor::{step}=pause"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let archive = s.data.path().join("archive");
    let under = |d: &str| {
        let d = archive.join(d);
        if d.exists() {
            walk(&d)
        } else {
            Vec::new()
        }
    };
    let reached = || match step {
        "after_publish" => under("events").iter().any(|(p, _)| p.ends_with(".parquet")),
        _ => under("manifest")
            .iter()
            .any(|(p, _)| std::fs::read_to_string(p).is_ok_and(|t| t.contains("\"verified\""))),
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !reached() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{step}: the compactor finished ({status}) instead of stopping at its failpoint: build with --features failpoints (make test does)");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{step}: not reached within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        child.try_wait().unwrap().is_none(),
        "{step}: the compactor must be held at its failpoint (build with --features failpoints)"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_steps_then_rerun_keeps_counts_exact() {
    for step in ["after_publish", "after_verify"] {
        let total = 20_000;
        let s = setup(total).await;
        kill_at(&s, step);
        if step == "after_publish" {
            assert_eq!(
                count(&s.ch, &cold_cond()),
                total * 3 / 4,
                "nothing deleted before verification"
            );
            // As the previous release wrote it: no table identity. Adopted (this table's
            // layout) and finished, and its identity is recorded.
            for (p, _) in walk(&s.data.path().join("archive/manifest")) {
                let mut v: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
                assert!(v.as_object_mut().unwrap().remove("source").is_some(), "{p}");
                std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
            }
        }

        let (code, out, err) = compact(&s, &[]);
        assert_eq!(code, 0, "{step}: {out}{err}");
        assert!(
            out.contains("resumed"),
            "{step}: the interrupted part was resumed: {out}"
        );
        let rows = archive_rows(&s);
        let cold: Vec<u64> = (0..total).filter(|&n| is_cold(n)).collect();
        assert_eq!(
            rows.len(),
            cold.len(),
            "{step}: every cold row archived exactly once"
        );
        for n in cold {
            assert_eq!(
                rows.get(&format!("e{n}")),
                Some(&expected(n)),
                "{step}: row {n}"
            );
        }
        assert_eq!(count(&s.ch, &cold_cond()), 0, "{step}");
        assert_eq!(count(&s.ch, "1"), total / 4, "{step}: hot day untouched");
        let (store, _) = clicktrail::compactor::open_store("", s.data.path()).unwrap();
        for m in clicktrail::compactor::manifest::all(store.as_ref())
            .await
            .unwrap()
        {
            assert_eq!(m.state, PartState::Dropped, "{step}");
            let source = m.source.expect("every entry names its table");
            assert_eq!(
                (source.database.as_str(), source.table.as_str()),
                ("clicktrail", "events")
            );
            assert_eq!(source.uuid, None, "18.16 has no table UUIDs");
        }
    }
}
