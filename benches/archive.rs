//! Archive benchmark: `cargo bench --bench archive [-- --rows N]` (part of `make bench`).
//!
//! Seeds three cold days of N (1,000,000) realistic rows each into a private ClickHouse, one per
//! way the compactor reads a day (a merged part; several parts; duplicate keys, read with
//! FINAL). Reports the merged day's size as ClickHouse stores it (compressed parts on disk), as
//! JSON lines (ClickHouse's JSONEachRow of the same columns) and as the compactor's Parquet
//! file; each day's export throughput next to a reference measured in the same run
//! (ClickHouse's own `Native` read of the day into a client that only counts bytes); and the
//! whole run (export, publish, download + verify, delete).

mod support;

use std::time::{Duration, Instant};

use clicktrail::compactor::{Compactor, NoProgress};
use clicktrail::config::{ClickHouseConfig, CompactorConfig};

fn main() {
    let rows: u64 = std::env::args()
        .skip_while(|a| a != "--rows")
        .nth(1)
        .map(|v| v.parse().expect("--rows N"))
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let ch = support::PrivateClickHouse::start(&dir.path().join("ch"));
    let url = ch.url.clone();
    let _ = tracing_subscriber::fmt()
        .with_env_filter("clicktrail=info")
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let q = |sql: String| {
            let http = http.clone();
            let url = url.clone();
            async move {
                let r = http.post(&url).body(sql).send().await.unwrap();
                let ok = r.status().is_success();
                let t = r.text().await.unwrap();
                assert!(ok, "{t}");
                t
            }
        };
        let ch = ClickHouseConfig {
            url: url.clone(),
            timeout: Duration::from_secs(300),
            ..ClickHouseConfig::default()
        };
        clicktrail::migrate::run(&ch, clicktrail::migrate::InsertWait::Skip).await.unwrap();
        let today = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 86_400;
        // Realistic variety: 200 pages, 40 selectors, 5000 sessions, a click/pageview/scroll mix.
        let seed = |day: u64, from: u64, count: u64| {
            let day = day * 86_400;
            format!(
                "INSERT INTO clicktrail.events (event_id, site, type, name, ts, ts_ms, received_at, url, host, path, referrer, title, \
                 session_id, visitor_id, x, y, viewport_w, viewport_h, doc_w, doc_h, selector, text, rage, scroll_depth, duration_ms, \
                 props, browser, os, device, user_agent, ip, inserted_at) \
                 SELECT lower(hex(sipHash64(number))), 'shop', ['pageview','click','click','scroll','engagement'][number % 5 + 1], '', \
                 toDateTime({day} + intDiv(number * 86400, {rows})), number % 1000, toDateTime({day} + intDiv(number * 86400, {rows}) + 1), \
                 concat('https://shop.example/products/', toString(sipHash64(number, 1) % 200), '?utm_source=news'), 'shop.example', \
                 concat('/products/', toString(sipHash64(number, 1) % 200)), 'https://www.google.com/', \
                 concat('Product ', toString(sipHash64(number, 1) % 200), ' | Shop'), \
                 lower(hex(sipHash64(intDiv(number, 40)))), lower(hex(sipHash64(intDiv(number, 200)))), \
                 toInt32(sipHash64(number, 2) % 1440), toInt32(sipHash64(number, 3) % 6000), 1440, 900, 1440, 6000, \
                 concat('main > div.grid > a.card:nth-child(', toString(sipHash64(number, 4) % 40), ')'), 'View details', \
                 sipHash64(number, 5) % 50 = 0, sipHash64(number, 6) % 101, sipHash64(number, 7) % 120000, '', \
                 ['Chrome','Safari','Firefox'][sipHash64(number, 8) % 3 + 1], ['Windows 10','Mac OSX','iOS','Android'][sipHash64(number, 9) % 4 + 1], \
                 ['desktop','mobile','tablet'][sipHash64(number, 10) % 3 + 1], '', '203.0.113.0', toDateTime(toUInt32(now()) - 3600) \
                 FROM (SELECT number FROM system.numbers WHERE number >= {from} LIMIT {count})"
            )
        };
        // Three cold days of `rows` rows each, one per way the compactor reads a day, each
        // seeded and archived in turn (so that one day's seeding and merges do not compete with
        // another day's export):
        // - merged: one part after a merge (the usual state of a day-old partition);
        // - parts: four inserts, not merged yet, no key twice;
        // - dups: as `merged`, plus 1% of its rows sent again (a resend after a crash), which
        //   only FINAL reads once.
        let (merged, parts, dups) = (today - 12, today - 11, today - 10);
        let merged_s = clicktrail::compactor::day_string(merged as i64);
        let optimize = |day: u64| format!("OPTIMIZE TABLE clicktrail.events PARTITION '{}' FINAL", clicktrail::compactor::day_string(day as i64));
        let idle = || async {
            for _ in 0..600 {
                if q("SELECT count() FROM system.merges".into()).await.trim() == "0" {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        q(seed(merged, 0, rows)).await;
        q(optimize(merged)).await;
        idle().await;

        let ch_bytes: u64 = q(format!("SELECT sum(bytes_on_disk) FROM system.parts WHERE database = 'clicktrail' AND table = 'events' AND active AND partition = '{merged_s}'"))
            .await.trim().parse().unwrap();
        // JSON lines of the same rows and columns, as a JSON-lines pipeline would store them.
        let drain = |sql: String| {
            let http = http.clone();
            let url = url.clone();
            async move {
                let started = Instant::now();
                let mut resp = http.post(&url).body(sql).send().await.unwrap();
                assert!(resp.status().is_success());
                let mut bytes = 0u64;
                while let Some(chunk) = resp.chunk().await.unwrap() {
                    bytes += chunk.len() as u64;
                }
                (bytes, started.elapsed().as_secs_f64())
            }
        };
        let cols = "event_id, site, type, name, ts, ts_ms, received_at, url, host, path, referrer, title, session_id, visitor_id, \
                    x, y, viewport_w, viewport_h, doc_w, doc_h, selector, text, rage, scroll_depth, duration_ms, props, browser, os, \
                    device, user_agent, ip";
        let day_cond = format!("toDate(ts) = toDate('{merged_s}')");
        let (json_bytes, _) = drain(format!("SELECT {cols} FROM clicktrail.events WHERE {day_cond} FORMAT JSONEachRow")).await;
        // Reference, same run: ClickHouse's own cheapest way to hand over the merged day, every
        // column in its columnar Native format, to a client that only counts the bytes.
        let mut reference = f64::MAX;
        for _ in 0..3 {
            let (_, secs) = drain(format!("SELECT {cols} FROM clicktrail.events WHERE {day_cond} FORMAT Native")).await;
            reference = reference.min(secs);
        }

        let data = dir.path().join("data");
        let cfg = CompactorConfig { insert_settle: Duration::from_secs(300), ..CompactorConfig::default() };
        let compactor = Compactor::new(&ch, cfg, &data, clicktrail::metrics::Metrics::new()).unwrap();
        let mut outcomes = Vec::new();
        let mut total_secs = 0.0;
        for day in [merged, parts, dups] {
            if day == parts {
                for k in 0..4 {
                    q(seed(parts, k * rows / 4, rows / 4)).await;
                }
            } else if day == dups {
                q(seed(dups, 0, rows)).await;
                q(optimize(dups)).await;
                idle().await;
                q(seed(dups, 0, rows / 100)).await;
            }
            let started = Instant::now();
            // Only `day` is cold: it is all older than the hot window.
            let out = compactor.run_once((today - day - 1) as u32, false, &NoProgress).await.unwrap();
            total_secs += started.elapsed().as_secs_f64();
            assert_eq!(out.len(), 1);
            outcomes.extend(out);
            idle().await;
        }
        let archived: u64 = outcomes.iter().map(|o| o.rows).sum();
        assert_eq!(archived, 3 * rows, "every row archived once");
        let parquet_bytes = outcomes[0].bytes;
        println!("archive benchmark: 3 cold days of {rows} rows");
        println!("  ClickHouse parts on disk: {:>12} bytes  {:>7.1} bytes/row", ch_bytes, ch_bytes as f64 / rows as f64);
        println!("  JSON lines:               {:>12} bytes  {:>7.1} bytes/row", json_bytes, json_bytes as f64 / rows as f64);
        println!("  Parquet (compactor):      {:>12} bytes  {:>7.1} bytes/row", parquet_bytes, parquet_bytes as f64 / rows as f64);
        println!("  Parquet vs JSON lines:    {:.1}% smaller", 100.0 * (1.0 - parquet_bytes as f64 / json_bytes as f64));
        println!("  Parquet vs ClickHouse:    {:.2}x the size", parquet_bytes as f64 / ch_bytes as f64);
        println!("  reference, ClickHouse's Native read of the merged day: {reference:.2} s, {:.0} rows/s", rows as f64 / reference);
        for o in &outcomes {
            let (read, took) = o.export.expect("exported in this run");
            let took = took.as_secs_f64();
            println!(
                "  export {}: {:.2} s, {:>9.0} rows/s, {:.2}x the reference  [{read}]",
                o.day, took, o.rows as f64 / took, reference / took
            );
        }
        println!("  whole cycle (export, publish, download + verify, delete), 3 days: {total_secs:.2} s, {:.0} rows/s", archived as f64 / total_secs);
    });
}
