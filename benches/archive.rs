//! Archive benchmark: `cargo bench --bench archive [-- --rows N]` (part of `make bench`).
//!
//! Seeds one cold day of N (1,000,000) realistic rows into a private ClickHouse, then reports
//! the same rows' size as ClickHouse stores them (compressed parts on disk), as JSON lines
//! (ClickHouse's JSONEachRow of the same columns) and as the compactor's Parquet file, and the
//! compactor's throughput for the whole cycle (export, verify staged file, publish, verify
//! published file, delete from ClickHouse).

use std::process::{Command, Stdio};
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
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/clickhouse.sh");
    let chdir = dir.path().join("ch");
    assert!(Command::new(script)
        .args([
            "start",
            chdir.to_str().unwrap(),
            &port.to_string(),
            &tcp.to_string()
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success());
    struct Stop(String, String);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = Command::new(&self.0).args(["stop", &self.1]).status();
        }
    }
    let _stop = Stop(script.into(), chdir.display().to_string());
    let url = format!("http://127.0.0.1:{port}");
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
        clicktrail::migrate::run(&ch).await.unwrap();
        let day = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 86_400 - 10) * 86_400;
        // Realistic variety: 200 pages, 40 selectors, 5000 sessions, a click/pageview/scroll mix.
        q(format!(
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
             FROM system.numbers LIMIT {rows}"
        ))
        .await;
        q("OPTIMIZE TABLE clicktrail.events FINAL".into()).await;
        let ch_bytes: u64 = q("SELECT sum(bytes_on_disk) FROM system.parts WHERE database = 'clicktrail' AND table = 'events' AND active".into())
            .await.trim().parse().unwrap();
        // JSON lines of the same rows and columns, as a JSON-lines pipeline would store them.
        let mut resp = http
            .post(&url)
            .body("SELECT * EXCEPT inserted_at FROM clicktrail.events FORMAT JSONEachRow".replace(" EXCEPT inserted_at", ""))
            .send()
            .await
            .unwrap();
        let mut json_bytes = 0u64;
        while let Some(chunk) = resp.chunk().await.unwrap() {
            json_bytes += chunk.len() as u64;
        }

        let data = dir.path().join("data");
        let cfg = CompactorConfig { hot_days: 1, insert_settle: Duration::from_secs(300), ..CompactorConfig::default() };
        let compactor = Compactor::new(&ch, cfg, &data, clicktrail::metrics::Metrics::new()).unwrap();
        let started = Instant::now();
        let out = compactor.run_once(1, false, &NoProgress).await.unwrap();
        let secs = started.elapsed().as_secs_f64();
        let archived: u64 = out.iter().map(|o| o.rows).sum();
        let parquet_bytes: u64 = out.iter().map(|o| o.bytes).sum();
        assert_eq!(archived, rows, "every row archived");
        println!("archive benchmark: {rows} rows of one cold day");
        println!("  ClickHouse parts on disk: {:>12} bytes  {:>7.1} bytes/row", ch_bytes, ch_bytes as f64 / rows as f64);
        println!("  JSON lines:               {:>12} bytes  {:>7.1} bytes/row", json_bytes, json_bytes as f64 / rows as f64);
        println!("  Parquet (compactor):      {:>12} bytes  {:>7.1} bytes/row", parquet_bytes, parquet_bytes as f64 / rows as f64);
        println!("  Parquet vs JSON lines:    {:.1}% smaller", 100.0 * (1.0 - parquet_bytes as f64 / json_bytes as f64));
        println!("  Parquet vs ClickHouse:    {:.2}x the size", parquet_bytes as f64 / ch_bytes as f64);
        println!("  compactor cycle: {secs:.2} s, {:.0} rows/s (export with ClickHouse's checksum alongside, publish, download + verify, delete)", rows as f64 / secs);
    });
}
