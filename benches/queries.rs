//! Report API benchmark: `cargo bench --bench queries [-- --rows N --iters K]`.
//!
//! Starts a private ClickHouse (scripts/clickhouse.sh), migrates, seeds N events (default
//! 100,000,000; `--rows` or `CLICKTRAIL_BENCH_ROWS`) with `tests/sql/seed_events.sql` (30 days of
//! June 2024, ~2,000 pages, power-law traffic) and reports the seed rate. Then starts the
//! collector in-process and times each `/v1/query/*` call, K times warm (default 50), for one
//! page-day (2024-06-15) and for 30 days, on the busiest page `/p/0`; beside each, the same
//! report computed from raw `events` rows straight in ClickHouse (fewer runs: it is slower), so
//! the ratio shows what the rollups buy. Prints Markdown tables (docs/benchmarks.md).
//!
//! Before / after migration 0006: the seed goes through 0006's sum views; then the set rollups
//! of 0002-0004 are filled from the same rows by their own backfill statements, and every report
//! is timed in SQL over both, the statements before 0006 being `benches/queries_0005.md`.
//!
//! `--keep DIR` keeps the server's data in DIR (instead of a temporary directory) and reuses it
//! on the next run with the same `--rows`: the seed and the set fill are skipped, so a report
//! change can be timed again at 100M events without 40 minutes of seeding.
//!
//! `--no-sets` skips the set rollups and the before / after table (at 100M events the fill
//! alone takes a quarter of an hour, and 0006's gain is measured at smaller sizes);
//! `--raw-iters K` sets the runs per raw-rows reference (default K / 5, at least 3: a 30-day
//! raw report over 100M rows takes a minute or more).
//!
//! Targets on ClickHouse 18.16: every page-day report under 200 ms p99, 30 days under 1 s p99.

mod support;

use std::time::{Duration, Instant};

use clicktrail::config::{Config, SiteConfig};

const TOKEN: &str = "bench-read-token-0123456789";
const DAY: &str = "2024-06-15";
const FIRST: &str = "2024-06-01";
const LAST: &str = "2024-06-30";
const PAGE: &str = "/p/0";

/// The API's literals for a report of site `bench`, page [`PAGE`], all devices, kind `click`.
fn bind(sql: &str, from: &str, to: &str, limit: u32) -> String {
    sql.replace("{{db}}", "clicktrail")
        .replace("{site:String}", "'bench'")
        .replace("{path:String}", &format!("'{PAGE}'"))
        .replace("{kind:String}", "'click'")
        .replace("{device:String}", "''")
        .replace("{from:Date}", &format!("toDate('{from}')"))
        .replace("{to:Date}", &format!("toDate('{to}')"))
        .replace("{limit:UInt32}", &limit.to_string())
}

/// The report statements before migration 0006 (over the set rollups).
const BEFORE_0006: &str = include_str!("queries_0005.md");

fn arg(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

/// One statement to ClickHouse's HTTP interface; its answer, or a panic with the server's reason.
async fn post(http: &reqwest::Client, url: &str, sql: String) -> String {
    let r = http.post(url).body(sql).send().await.unwrap();
    let ok = r.status().is_success();
    let t = r.text().await.unwrap();
    assert!(ok, "{t}");
    t
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// p50 and p99 of `runs` calls of `call`, after one untimed warm-up call.
async fn timed<F, Fut, T>(runs: usize, mut call: F) -> (Duration, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    call().await;
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        call().await;
        samples.push(started.elapsed());
    }
    samples.sort();
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1000.0;
    if v < 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// The raw-row equivalents of the reports (what they would cost without rollups).
fn raw_sql(report: &str, from: &str, to: &str) -> String {
    let scope = format!(
        "site = 'bench' AND toDate(ts) >= toDate('{from}') AND toDate(ts) <= toDate('{to}')"
    );
    match report {
        "pages" => format!(
            "SELECT path, countIf(has_pv) AS views, uniqExactIf(visitor, has_pv) AS visitors, \
             countIf(has_pv AND NOT (pv_clicks > 0 OR eng_s >= 10)) AS bounces, sum(pv_clicks) AS clicks, \
             sum(pv_rage) AS rage_clicks, sum(pv_dead) AS dead_clicks, sum(pv_err) AS error_clicks, \
             avgIf(max_scroll, has_scroll) AS avg_max_scroll_pct, medianExactIf(eng_s, has_pv) AS median_engaged_s \
             FROM (SELECT path, pageview_id, max(type = 'pageview') AS has_pv, any(visitor_id) AS visitor, \
             uniqExactIf(event_id, type = 'click') AS pv_clicks, uniqExactIf(event_id, type = 'click' AND rage = 1) AS pv_rage, \
             uniqExactIf(event_id, type = 'click' AND dead = 1) AS pv_dead, uniqExactIf(event_id, type = 'click' AND error = 1) AS pv_err, \
             max(type = 'scroll') AS has_scroll, maxIf(scroll_depth, type = 'scroll') AS max_scroll, \
             maxIf(duration_ms, type = 'engagement') / 1000 AS eng_s \
             FROM clicktrail.events WHERE {scope} AND type IN ('pageview', 'click', 'scroll', 'engagement') \
             GROUP BY path, pageview_id) GROUP BY path ORDER BY views DESC, path LIMIT 100"
        ),
        "heatmap" => format!(
            "SELECT toUInt8(least(intDiv(toInt64(greatest(x, 0)) * 100, if(doc_w > 0, doc_w, viewport_w)), 99)) AS cx, \
             toUInt16(least(intDiv(greatest(y, 0), 20), 65535)) AS cy, uniqExact(event_id) AS n \
             FROM clicktrail.events WHERE {scope} AND type = 'click' AND path = '{PAGE}' AND (doc_w > 0 OR viewport_w > 0) \
             GROUP BY cx, cy ORDER BY cy, cx"
        ),
        "elements" => format!(
            "SELECT selector, uniqExact(event_id) AS clicks, uniqExactIf(event_id, rage = 1) AS rage_clicks, \
             uniqExactIf(event_id, dead = 1) AS dead_clicks, uniqExactIf(event_id, error = 1) AS error_clicks, \
             avgIf(elem_x / 65536, elem_x > 0 OR elem_y > 0) AS hot_x, avgIf(elem_y / 65536, elem_x > 0 OR elem_y > 0) AS hot_y \
             FROM clicktrail.events WHERE {scope} AND type = 'click' AND path = '{PAGE}' \
             GROUP BY selector ORDER BY clicks DESC, selector LIMIT 100"
        ),
        "scroll" => format!(
            "SELECT intDiv(m, 5) * 5 AS depth, count() AS pageviews FROM \
             (SELECT pageview_id, max(scroll_depth) AS m FROM clicktrail.events \
             WHERE {scope} AND type = 'scroll' AND path = '{PAGE}' GROUP BY pageview_id) \
             GROUP BY depth ORDER BY depth"
        ),
        other => panic!("no raw SQL for {other}"),
    }
}

fn main() {
    let rows: u64 = arg("--rows")
        .or_else(|| std::env::var("CLICKTRAIL_BENCH_ROWS").ok())
        .map(|v| v.replace('_', "").parse().expect("--rows N"))
        .unwrap_or(100_000_000);
    let iters: usize = arg("--iters")
        .map(|v| v.parse().expect("--iters K"))
        .unwrap_or(50);
    let raw_iters: usize = arg("--raw-iters")
        .map(|v| v.parse().expect("--raw-iters K"))
        .unwrap_or((iters / 5).max(3));
    let sets = !std::env::args().any(|a| a == "--no-sets");
    let temp = tempfile::tempdir().unwrap();
    let dir = match arg("--keep") {
        Some(d) => {
            std::fs::create_dir_all(&d).unwrap();
            std::path::PathBuf::from(d)
        }
        None => temp.path().to_path_buf(),
    };
    // Written once the seed (and the set fill) of `rows` events finished, so a reused dir
    // never times a half-seeded table.
    let seeded_mark = dir.join(format!("seeded-{rows}"));
    let filled_mark = dir.join(format!("sets-filled-{rows}"));
    // Seeding another N on top of kept events would time a mix of both.
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            !name.starts_with("seeded-") || name == format!("seeded-{rows}"),
            "{} holds the events of another run ({name}); pass its --rows or another --keep dir",
            dir.display()
        );
    }
    let ch = support::PrivateClickHouse::start(&dir.join("ch"));
    let url = ch.url.clone();
    let _ = tracing_subscriber::fmt()
        .with_env_filter("clicktrail=warn")
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let q = |sql: String| post(&http, &url, sql);
        // One GROUP BY over every row (the set fill, the 30-day raw references): at 100M events
        // it outgrows the server's per-query memory (code 241 at 3.73 GiB), so spill to disk past
        // 2 GB. The API's own statements run without these settings.
        let spill_url = format!(
            "{url}/?max_bytes_before_external_group_by=2000000000&max_memory_usage=16000000000"
        );
        let big = |sql: String| post(&http, &spill_url, sql);

        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: temp.path().join("data"),
            sites: vec![
                SiteConfig {
                    key: "bench".into(),
                    origins: vec!["*".into()],
                    read_tokens: vec![TOKEN.into()],
                    keep_query_params: vec![],
                },
                SiteConfig {
                    key: "bench2".into(),
                    origins: vec!["*".into()],
                    read_tokens: vec![],
                    keep_query_params: vec![],
                },
            ],
            ..Config::default()
        };
        config.clickhouse.url = url.clone();
        config.clickhouse.timeout = Duration::from_secs(3600);
        // The seeded days are cold: the compactor would archive and delete them.
        config.compactor.enabled = false;
        config.compactor.insert_settle = Duration::from_secs(3600);
        config.freshness.canary_interval = Duration::ZERO;
        config.query.timeout = Duration::from_secs(60);
        clicktrail::migrate::run(&config.clickhouse, clicktrail::migrate::InsertWait::Skip).await.unwrap();

        let seed = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/sql/seed_events.sql"
        ))
        .unwrap()
        .replace("{{db}}", "clicktrail")
        .replace("{{rows}}", &rows.to_string());
        let started = Instant::now();
        let reused = seeded_mark.exists();
        if reused {
            eprintln!("reusing the {rows} events seeded in {}", dir.display());
        } else {
            eprintln!("seeding {rows} events (the seven sum views of 0006 fill as they go)...");
            q(seed).await;
            std::fs::write(&seeded_mark, "").unwrap();
        }
        let seed_time = started.elapsed();
        let rate = rows as f64 / seed_time.as_secs_f64();
        // The set rollups of 0002-0004 from the same rows, by their backfill statements.
        let version = q("SELECT version()".into()).await;
        let mut v = version.trim().split('.');
        let version: clicktrail::migrate::ServerVersion =
            format!("{}.{}", v.next().unwrap(), v.next().unwrap())
                .parse()
                .unwrap();
        let dialect = clicktrail::migrate::Dialect { version };
        let started = Instant::now();
        let migrations = if filled_mark.exists() || !sets {
            &clicktrail::migrate::MIGRATIONS[..0]
        } else {
            eprintln!("filling the set rollups of 0002-0004 from the same rows...");
            &clicktrail::migrate::MIGRATIONS[1..4]
        };
        for (_, name, sql) in migrations {
            let statements = clicktrail::migrate::render(
                dialect,
                clicktrail::migrate::Layout::Single,
                "clicktrail",
                name,
                sql,
            )
            .unwrap();
            // (The sum views filled as the seed went, a block at a time.)
            for s in statements.into_iter().filter(|s| s.starts_with("INSERT INTO")) {
                big(s).await;
            }
        }
        if sets {
            std::fs::write(&filled_mark, "").unwrap();
        }
        let set_fill = started.elapsed();
        // The seed and the fill leave hundreds of parts that the server merges for minutes
        // after; timings taken meanwhile measure the merges (the 30M run of 2026-12-02: site-wide
        // pages 176 ms p50 through the API while merging, 126 ms once merged).
        let settle = Instant::now();
        let settled = loop {
            if q("SELECT count() FROM system.merges".into()).await.trim() == "0" {
                break true;
            }
            if settle.elapsed() >= Duration::from_secs(1800) {
                break false;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        };
        let waited = settle.elapsed().as_secs_f64();
        if settled {
            eprintln!("merges settled after {waited:.0} s");
        } else {
            eprintln!("still merging after {waited:.0} s; timing anyway, so the figures include merges");
        }
        let mut rollups = Vec::new();
        for t in [
            "click_grid_daily",
            "element_clicks_daily",
            "scroll_depth_daily",
            "engagement_daily",
            "page_stats_hourly",
            "fold_daily",
            "pages_daily",
        ] {
            let size = |t: String| {
                q(format!(
                    "SELECT concat(toString(sum(rows)), ' rows, ', formatReadableSize(sum(bytes_on_disk))) \
                     FROM system.parts WHERE database = 'clicktrail' AND table = '{t}' AND active"
                ))
            };
            let old = size(t.to_string()).await;
            let new = size(format!("{t}_sum")).await;
            rollups.push(if sets {
                format!("| {t} | {} | {} |", old.trim(), new.trim())
            } else {
                format!("| {t}_sum | {} |", new.trim())
            });
        }
        let page_events = q(format!(
            "SELECT count() FROM clicktrail.events WHERE site = 'bench' AND path = '{PAGE}'"
        ))
        .await;
        let day_events = q(format!(
            "SELECT count() FROM clicktrail.events WHERE site = 'bench' AND path = '{PAGE}' AND toDate(ts) = toDate('{DAY}')"
        ))
        .await;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(clicktrail::serve::run(config, listener, async {
            let _ = stop_rx.await;
        }));
        for _ in 0..100 {
            if http.get(format!("{base}/healthz")).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let api = |uri: String| {
            let http = http.clone();
            let base = base.clone();
            async move {
                let started = Instant::now();
                let r = http
                    .get(format!("{base}{uri}"))
                    .bearer_auth(TOKEN)
                    .send()
                    .await
                    .unwrap();
                let status = r.status();
                let body = r.bytes().await.unwrap();
                assert!(status.is_success(), "{uri}: {status} {body:?}");
                (started.elapsed(), body.len())
            }
        };
        let time = |samples: &mut Vec<Duration>| {
            samples.sort();
            (percentile(samples, 0.5), percentile(samples, 0.99))
        };

        let fill_note = if sets {
            format!("the set rollups filled in {:.1} s", set_fill.as_secs_f64())
        } else {
            "no set rollups (--no-sets)".to_string()
        };
        if reused {
            println!("\n{rows} events reused from {} ({fill_note})", dir.display());
        } else if !sets {
            println!("\n{rows} events seeded in {:.1} s ({rate:.0} events/s, with the seven sum views); {fill_note}", seed_time.as_secs_f64());
        } else {
            println!("\n{rows} events seeded in {:.1} s ({rate:.0} events/s, with the seven sum views); the set rollups filled from them in {:.1} s", seed_time.as_secs_f64(), set_fill.as_secs_f64());
        }
        if sets {
            println!("\n| rollup | sets (0002-0004) | sums (0006, `_sum`) |\n| --- | --- | --- |");
        } else {
            println!("\n| rollup | rows, on disk |\n| --- | --- |");
        }
        for r in &rollups {
            println!("{r}");
        }
        println!();
        println!(
            "page {PAGE}: {} events over 30 days, {} on {DAY}; {iters} warm runs per API call, {raw_iters} per raw query\n",
            page_events.trim(),
            day_events.trim()
        );
        println!("| report | range | API p50 ms | API p99 ms | answer bytes | raw rows p50 ms | raw rows p99 ms | raw / API (p50) |");
        println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
        for (range, from, to) in [("1 day", DAY, DAY), ("30 days", FIRST, LAST)] {
            let calls = [
                ("pages (site)", "pages", format!("/v1/query/pages?site=bench&from={from}&to={to}")),
                ("heatmap", "heatmap", format!("/v1/query/heatmap?site=bench&path={PAGE}&from={from}&to={to}")),
                ("heatmap PNG (w 800)", "heatmap", format!("/v1/query/heatmap?site=bench&path={PAGE}&from={from}&to={to}&format=png&width=800")),
                ("elements", "elements", format!("/v1/query/elements?site=bench&path={PAGE}&from={from}&to={to}")),
                ("scroll", "scroll", format!("/v1/query/scroll?site=bench&path={PAGE}&from={from}&to={to}")),
            ];
            for (label, report, uri) in calls {
                let (_, bytes) = api(uri.clone()).await; // warm-up
                let mut samples = Vec::with_capacity(iters);
                for _ in 0..iters {
                    samples.push(api(uri.clone()).await.0);
                }
                let (p50, p99) = time(&mut samples);
                let sql = raw_sql(report, from, to);
                let (r50, r99) = timed(raw_iters, || big(sql.clone())).await;
                println!(
                    "| {label} | {range} | {} | {} | {bytes} | {} | {} | {:.1}x |",
                    ms(p50),
                    ms(p99),
                    ms(r50),
                    ms(r99),
                    r50.as_secs_f64() / p50.as_secs_f64()
                );
            }
        }

        // Before / after 0006: each report's statement over the set rollups and over the sums,
        // straight to ClickHouse, in this run.
        let before = clicktrail::query::sql::blocks(BEFORE_0006);
        if !sets {
            // The statements the API runs, alone (the API runs `pages` and `site_totals` at once),
            // and what `pages` costs without each of its two sets: the ceiling analysis of
            // docs/benchmarks.md (what is left when a set is gone is the floor of the other).
            let pages = clicktrail::query::sql::statement("pages");
            let one_pass = {
                let cut = pages.find("      AND path GLOBAL IN").expect("the ranking subquery");
                let close = cut + pages[cut..].find("\n      )\n").expect("its end") + "\n      )\n".len();
                format!("{}{}", &pages[..cut], &pages[close..])
            };
            let no_engaged = pages.replace("uniqIfMerge(engaged)", "toUInt64(0)");
            let sums_only = no_engaged.replace("uniqIfMerge(visitors)", "toUInt64(0)");
            let statements: [(&str, String, u32); 6] = [
                ("pages", pages.to_string(), 100),
                ("pages in one pass (every path's sets merged)", one_pass, 100),
                ("pages without `engaged`", no_engaged, 100),
                ("pages, sums only (no `visitors`, no `engaged`)", sums_only, 100),
                ("site_totals", clicktrail::query::sql::statement("site_totals").to_string(), 0),
                ("page_trend", clicktrail::query::sql::statement("page_trend").to_string(), 0),
            ];
            println!("\n| report, SQL direct | range | p50 ms | p99 ms |\n| --- | --- | ---: | ---: |");
            for (range, from, to) in [("1 day", DAY, DAY), ("30 days", FIRST, LAST)] {
                for (label, statement, limit) in &statements {
                    let sql = bind(statement, from, to, *limit);
                    let (p50, p99) = timed(iters, || q(sql.clone())).await;
                    println!("| {label} | {range} | {} | {} |", ms(p50), ms(p99));
                }
            }
            // How many set members the 30-day `pages` merges: each rollup row's own count,
            // summed, for the top 100 paths and for all (the cost of a set merge grows with
            // its members, not with the rows).
            let members = |filter: &str| {
                q(format!(
                    "SELECT count(), sum(v), sum(e) FROM (SELECT uniqIfMerge(visitors) AS v, uniqIfMerge(engaged) AS e \
                     FROM clicktrail.pages_daily_sum WHERE site = 'bench' AND day >= toDate('{FIRST}') AND day <= toDate('{LAST}') {filter} \
                     GROUP BY path, day, device_class, backfill)"
                ))
            };
            let top = format!(
                "AND path IN (SELECT path FROM clicktrail.pages_daily_sum WHERE site = 'bench' AND day >= toDate('{FIRST}') \
                 AND day <= toDate('{LAST}') GROUP BY path ORDER BY sumMerge(views) DESC, path LIMIT 100)"
            );
            for (label, filter) in [("top 100 paths", top.as_str()), ("every path", "")] {
                let out = members(filter).await;
                let f: Vec<&str> = out.split_whitespace().collect();
                println!(
                    "\n30 days, {label}: {} rollup rows; set members: visitors {}, engaged {}",
                    f.first().unwrap_or(&"?"),
                    f.get(1).unwrap_or(&"?"),
                    f.get(2).unwrap_or(&"?")
                );
            }
            let _ = stop_tx.send(());
            server.await.unwrap().unwrap();
            return;
        }
        println!("\n| report, SQL direct | range | sets p50 ms | sets p99 ms | sums p50 ms | sums p99 ms | sets / sums (p50) |");
        println!("| --- | --- | ---: | ---: | ---: | ---: | ---: |");
        for (range, from, to) in [("1 day", DAY, DAY), ("7 days", "2024-06-09", DAY), ("30 days", FIRST, LAST)] {
            for (label, name, limit) in [
                ("pages (site)", "pages", 100),
                ("pages (site), before: pages_long", "pages_long", 100),
                ("site_totals", "site_totals", 0),
                ("heatmap", "heatmap", 1_000_000),
                ("elements", "elements", 100),
                ("scroll", "scroll", 0),
                ("page_trend", "page_trend", 0),
            ] {
                let mut p = Vec::new();
                // `pages_long` (the per-page rollups, the API's pick beyond 14 days before 0006)
                // has no sum version: `pages` over pages_daily_sum is faster at every length.
                let now = if name == "pages_long" { "pages" } else { name };
                for sql in [before[name], clicktrail::query::sql::statement(now)] {
                    let sql = bind(sql, from, to, limit);
                    p.push(timed(iters, || q(sql.clone())).await);
                }
                println!(
                    "| {label} | {range} | {} | {} | {} | {} | {:.1}x |",
                    ms(p[0].0),
                    ms(p[0].1),
                    ms(p[1].0),
                    ms(p[1].1),
                    p[0].0.as_secs_f64() / p[1].0.as_secs_f64()
                );
            }
        }

        let _ = stop_tx.send(());
        server.await.unwrap().unwrap();
    });
}
