//! The report API end to end: events posted through the real collector, delivered to a real
//! ClickHouse 18.16, read back through `/v1/query/*` and checked cell by cell against what was
//! posted.

use std::time::Duration;

use clicktrail::config::SiteConfig;
use clicktrail::query::sql::Day;
use serde_json::{json, Value};

use crate::harness::*;

const TOKEN: &str = "test-read-token-0123456789";
const OTHER_TOKEN: &str = "other-read-token-0123456789";

async fn setup() -> (ClickHouse, tempfile::TempDir, App) {
    let ch = ClickHouse::start();
    let data = tempfile::tempdir().unwrap();
    let mut cfg = test_config(&ch, data.path());
    cfg.sites[0].read_tokens = vec![TOKEN.into()];
    cfg.sites.push(SiteConfig {
        key: "other".into(),
        origins: vec![ORIGIN.into()],
        read_tokens: vec![OTHER_TOKEN.into()],
        keep_query_params: vec![],
    });
    migrate(&cfg).await;
    let app = App::spawn(cfg).await;
    (ch, data, app)
}

async fn get(app: &App, token: Option<&str>, uri: &str) -> (u16, Value) {
    let (status, bytes) = get_bytes(app, token, uri).await;
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, v)
}

async fn get_bytes(app: &App, token: Option<&str>, uri: &str) -> (u16, Vec<u8>) {
    let mut req = app.client.get(format!("{}{uri}", app.base));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.bytes().await.unwrap().to_vec())
}

async fn ok(app: &App, uri: &str) -> Value {
    let (status, body) = get(app, Some(TOKEN), uri).await;
    assert_eq!(status, 200, "{uri}: {body}");
    body
}

fn close(got: &Value, want: f64, what: &str) {
    let g = got
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: {got} is not a number"));
    assert!((g - want).abs() < 1e-9, "{what}: got {g}, want {want}");
}

/// Page views, clicks, scrolls and engagement of two pages with known answers (worked out in
/// the comments), plus one page view of another site that must not show up.
fn events(ts: i64) -> (Vec<Value>, Vec<Value>) {
    let a = "https://shop.test/p/a";
    let b = "https://shop.test/p/b?utm=x";
    let ev = |v: Value| {
        let mut v = v;
        v["ts"] = json!(ts);
        v
    };
    let desktop = |mut v: Value| {
        v["vw"] = json!(1280);
        v["dw"] = json!(1000);
        v
    };
    let test = vec![
        desktop(ev(
            json!({"type": "pageview", "id": "pv1", "url": a, "session": "s1", "visitor": "v1", "vh": 800, "dh": 4000}),
        )),
        desktop(ev(
            json!({"type": "pageview", "id": "pv2", "url": a, "session": "s2", "visitor": "v2", "vh": 800, "dh": 1600}),
        )),
        desktop(ev(
            json!({"type": "pageview", "id": "pv3", "url": a, "session": "s3", "visitor": "v1"}),
        )),
        // Clicks on /p/a (dw = 1000, so cx = x / 10, cy = y / 20).
        // c1, c2: cell (10, 2); element #buy at ecell 0 and 2.
        desktop(ev(
            json!({"type": "click", "id": "c1", "url": a, "session": "s1", "visitor": "v1", "pv": "pv1",
            "x": 105, "y": 45, "selector": "#buy", "ex": 8192, "ey": 8192}),
        )),
        desktop(ev(
            json!({"type": "click", "id": "c2", "url": a, "session": "s2", "visitor": "v2", "pv": "pv2",
            "x": 105, "y": 50, "selector": "#buy", "rage": true, "ex": 40000, "ey": 8192}),
        )),
        // c3: cell (55, 50); element a.more, position unknown.
        desktop(ev(
            json!({"type": "click", "id": "c3", "url": a, "session": "s1", "visitor": "v1", "pv": "pv1",
            "x": 555, "y": 1005, "selector": "a.more", "dead": true}),
        )),
        // c4: cell (99, 0); #buy at ecell 15.
        desktop(ev(
            json!({"type": "click", "id": "c4", "url": a, "session": "s1", "visitor": "v1", "pv": "pv1",
            "x": 999, "y": 0, "selector": "#buy", "error": true, "ex": 60000, "ey": 60000}),
        )),
        // Scroll: pv1 reached 80 (two sends: the second says it had sent 50), pv2 20, pv3 100.
        desktop(ev(
            json!({"type": "scroll", "id": "sc1", "url": a, "session": "s1", "visitor": "v1", "pv": "pv1", "depth": 50}),
        )),
        desktop(ev(
            json!({"type": "scroll", "id": "sc2", "url": a, "session": "s1", "visitor": "v1", "pv": "pv1", "depth": 80, "from": 50}),
        )),
        desktop(ev(
            json!({"type": "scroll", "id": "sc3", "url": a, "session": "s2", "visitor": "v2", "pv": "pv2", "depth": 20}),
        )),
        desktop(ev(
            json!({"type": "scroll", "id": "sc4", "url": a, "session": "s3", "visitor": "v1", "pv": "pv3", "depth": 100}),
        )),
        // Engagement: pv1 12 s (engaged; two sends, 4 s then 12 s from 4 s), pv2 3 s; pv3 none
        // and no click: the one bounce.
        desktop(ev(
            json!({"type": "engagement", "id": "en0", "url": a, "session": "s1", "visitor": "v1", "pv": "pv1", "duration_ms": 4000}),
        )),
        desktop(ev(
            json!({"type": "engagement", "id": "en1", "url": a, "session": "s1", "visitor": "v1", "pv": "pv1", "duration_ms": 12000, "from": 4000}),
        )),
        desktop(ev(
            json!({"type": "engagement", "id": "en2", "url": a, "session": "s2", "visitor": "v2", "pv": "pv2", "duration_ms": 3000}),
        )),
        // Folds: pv1 800 / 4000 = 20 %, pv2 50 %, pv3 sent no heights (not measured).
        // /p/b on a phone: one page view (by v2, also a visitor of /p/a), one click at (2, 0).
        ev(
            json!({"type": "pageview", "id": "pv4", "url": b, "session": "s4", "visitor": "v2", "vw": 375, "dw": 375}),
        ),
        ev(
            json!({"type": "click", "id": "c5", "url": b, "session": "s4", "visitor": "v2", "pv": "pv4",
            "x": 10, "y": 10, "vw": 375, "dw": 375, "selector": "nav a"}),
        ),
    ];
    let other = vec![desktop(ev(
        json!({"type": "pageview", "id": "o1", "url": a, "session": "o", "visitor": "o"}),
    ))];
    (test, other)
}

/// Waits until the sink has inserted `rows` rows in all.
async fn inserted(app: &App, rows: usize) {
    let want = format!("clicktrail_sink_rows_inserted_total {rows}\n");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !app.metrics().await.contains(&want) {
        assert!(
            std::time::Instant::now() < deadline,
            "the sink did not insert {rows} rows"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every report of the day of `ts` over the events of [`events`], checked cell by cell; returns
/// the URIs asked and their answers.
async fn assert_reports(app: &App, ts: i64) -> (Vec<String>, Vec<Value>) {
    let day = Day(ts.div_euclid(86_400_000)).format();
    let range = format!("from={day}&to={day}");
    let uris = [
        format!("/v1/query/pages?site=test&{range}"),
        format!("/v1/query/pages?site=test&{range}&device=mobile"),
        format!("/v1/query/pages?site=test&{range}&limit=1"),
        format!("/v1/query/heatmap?site=test&path=/p/a&{range}"),
        format!("/v1/query/heatmap?site=test&path=/p/a&{range}&kind=rage"),
        format!("/v1/query/heatmap?site=test&path=/p/a&{range}&kind=dead&device=desktop"),
        format!("/v1/query/heatmap?site=test&path=/p/a&{range}&kind=error"),
        format!("/v1/query/heatmap?site=test&path=/p/a&{range}&device=mobile"),
        format!("/v1/query/elements?site=test&path=/p/a&{range}"),
        format!("/v1/query/scroll?site=test&path=/p/a&{range}"),
    ];
    let mut first = Vec::new();
    for u in &uris {
        first.push(ok(app, u).await);
    }

    // pages: /p/a first (3 views), then /p/b.
    let pages = &first[0];
    assert_eq!(pages["site"], "test");
    assert_eq!((&pages["from"], &pages["to"]), (&json!(day), &json!(day)));
    assert_eq!(pages["truncated"], false);
    let list = pages["pages"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{pages}");
    let pa = &list[0];
    assert_eq!(pa["path"], "/p/a");
    for (k, v) in [
        ("views", 3),
        ("visitors", 2),
        ("bounces", 1),
        ("clicks", 4),
        ("rage_clicks", 1),
        ("dead_clicks", 1),
        ("error_clicks", 1),
    ] {
        assert_eq!(pa[k], v, "/p/a {k}: {pa}");
    }
    close(&pa["bounce_rate"], 1.0 / 3.0, "/p/a bounce_rate");
    // Deepest scroll per page view: 80, 20, 100.
    close(
        &pa["avg_max_scroll_pct"],
        200.0 / 3.0,
        "/p/a avg_max_scroll_pct",
    );
    // Engaged 12 s, 3 s, 0 s: half of the 3 views reached the 3 s bound, 1 of 3 the 5 s one,
    // so the median is interpolated in [3, 5): 3 + 2 * (2 - 1.5) / (2 - 1) = 4.
    close(&pa["median_engaged_s"], 4.0, "/p/a median_engaged_s");
    let pb = &list[1];
    assert_eq!(pb["path"], "/p/b");
    for (k, v) in [
        ("views", 1),
        ("visitors", 1),
        ("bounces", 0),
        ("clicks", 1),
        ("rage_clicks", 0),
        ("dead_clicks", 0),
        ("error_clicks", 0),
    ] {
        assert_eq!(pb[k], v, "/p/b {k}: {pb}");
    }
    close(&pb["avg_max_scroll_pct"], 0.0, "/p/b avg_max_scroll_pct");
    // One view with 0 s: interpolated in the first bucket [0, 1): 0.5.
    close(&pb["median_engaged_s"], 0.5, "/p/b median_engaged_s");

    // Site totals merge visitors across pages: v1, v2 (the sum of the rows would say 3).
    let totals = &pages["totals"];
    for (k, v) in [
        ("views", 4),
        ("visitors", 2),
        ("engaged", 3),
        ("bounces", 1),
        ("clicks", 5),
        ("rage_clicks", 1),
        ("dead_clicks", 1),
        ("error_clicks", 1),
    ] {
        assert_eq!(totals[k], v, "totals {k}: {totals}");
    }
    close(&totals["bounce_rate"], 0.25, "totals bounce_rate");

    // Over 21 days (other days' rows in the range, none of them with events) the
    // same events give the same report.
    let long_from = Day(ts.div_euclid(86_400_000) - 20).format();
    let long = ok(
        app,
        &format!("/v1/query/pages?site=test&from={long_from}&to={day}"),
    )
    .await;
    assert_eq!(long["pages"], pages["pages"], "21 days vs 1 day");
    assert_eq!(long["totals"], pages["totals"], "21 days vs 1 day");

    let mobile = first[1]["pages"].as_array().unwrap();
    assert_eq!(mobile.len(), 1);
    assert_eq!(
        (&mobile[0]["path"], &mobile[0]["views"]),
        (&json!("/p/b"), &json!(1))
    );
    assert_eq!(first[1]["device"], "mobile");
    assert_eq!(first[2]["pages"].as_array().unwrap().len(), 1);
    assert_eq!(first[2]["truncated"], true);

    // heatmaps, cell by cell, ordered top to bottom.
    let cells = |v: &Value| -> Vec<(u64, u64, u64)> {
        v["cells"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["x"].as_u64().unwrap(),
                    c["y"].as_u64().unwrap(),
                    c["count"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(
        cells(&first[3]),
        [(99, 0, 1), (10, 2, 2), (55, 50, 1)],
        "{}",
        first[3]
    );
    assert_eq!(
        (&first[3]["total"], &first[3]["max"]),
        (&json!(4), &json!(2))
    );
    assert_eq!(first[3]["kind"], "click");
    assert_eq!(first[3]["grid"], json!({"columns": 100, "band_px": 20}));
    assert_eq!(cells(&first[4]), [(10, 2, 1)]);
    assert_eq!(first[4]["kind"], "rage");
    assert_eq!(cells(&first[5]), [(55, 50, 1)]);
    assert_eq!(cells(&first[6]), [(99, 0, 1)]);
    assert_eq!(cells(&first[7]), [], "no phone clicked /p/a");
    assert_eq!(first[7]["total"], 0);

    // elements: #buy (3 clicks) then a.more (1).
    let els = first[8]["elements"].as_array().unwrap();
    assert_eq!(els.len(), 2, "{}", first[8]);
    let buy = &els[0];
    assert_eq!(buy["selector"], "#buy");
    for (k, v) in [
        ("clicks", 3),
        ("rage_clicks", 1),
        ("dead_clicks", 0),
        ("error_clicks", 1),
        ("unknown_position", 0),
    ] {
        assert_eq!(buy[k], v, "#buy {k}: {buy}");
    }
    let mut want_cells = vec![0; 16];
    (want_cells[0], want_cells[2], want_cells[15]) = (1, 1, 1);
    assert_eq!(buy["cells"], json!(want_cells));
    // Centres of ecell 0, 2, 15: x (0.5 + 2.5 + 3.5) / 4 / 3, y (0.5 + 0.5 + 3.5) / 4 / 3.
    close(&buy["hotspot"]["x"], 6.5 / 12.0, "#buy hot x");
    close(&buy["hotspot"]["y"], 4.5 / 12.0, "#buy hot y");
    let more = &els[1];
    assert_eq!(more["selector"], "a.more");
    for (k, v) in [
        ("clicks", 1),
        ("rage_clicks", 0),
        ("dead_clicks", 1),
        ("error_clicks", 0),
        ("unknown_position", 1),
    ] {
        assert_eq!(more[k], v, "a.more {k}: {more}");
    }
    assert_eq!(more["hotspot"], Value::Null, "no known position");

    // scroll: 3 page views; b <= 20 all, 25..80 two, 85..100 one.
    let scroll = &first[9];
    assert_eq!(scroll["pageviews"], 3);
    // Average fold of the two page views that sent their heights: (20 + 50) / 2.
    assert_eq!(scroll["fold_pageviews"], 2, "{scroll}");
    close(&scroll["avg_fold_pct"], 35.0, "avg_fold_pct");
    let depths = scroll["depths"].as_array().unwrap();
    assert_eq!(depths.len(), 21);
    for (i, d) in depths.iter().enumerate() {
        let b = i as u64 * 5;
        let want = if b <= 20 {
            3
        } else if b <= 80 {
            2
        } else {
            1
        };
        assert_eq!(
            (&d["depth"], &d["reached"]),
            (&json!(b), &json!(want)),
            "{d}"
        );
        close(&d["share"], want as f64 / 3.0, &format!("share at {b}"));
    }
    (uris.to_vec(), first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_answer_cell_by_cell() {
    let (ch, _data, app) = setup().await;
    let ts = now_ms() - 5_000;
    let day = Day(ts.div_euclid(86_400_000)).format();
    let (test, other) = events(ts);
    let n = test.len() + other.len();
    let post_all = || async {
        let (s, b) = app.post(&batch(test.clone())).await;
        assert_eq!((s, &b["accepted"]), (200, &json!(test.len())), "{b}");
        let (s, b) = app
            .post(&json!({"site": "other", "events": other.clone()}))
            .await;
        assert_eq!(s, 200, "{b}");
    };
    post_all().await;
    // The sink counts rows once their INSERT returned, i.e. after the materialized views
    // wrote the rollups too (rows are visible in `events` before the views have run).
    inserted(&app, n).await;
    assert_eq!(ch.count("SELECT count() FROM clicktrail.events"), n as u64);

    let range = format!("from={day}&to={day}");
    assert_reports(&app, ts).await;

    // The heatmap as a PNG: 51 bands (y 0..50) at 200 px wide: 2 px per cell, 102 px high.
    let (status, png) = get_bytes(
        &app,
        Some(TOKEN),
        &format!("/v1/query/heatmap?site=test&path=/p/a&{range}&format=png&width=200"),
    )
    .await;
    assert_eq!(status, 200);
    let dec = png::Decoder::new(std::io::Cursor::new(png));
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (200, 102));
    assert_eq!(info.color_type, png::ColorType::Rgba);
    let px = |x: u32, y: u32| {
        let i = ((y * 200 + x) * 4) as usize;
        [buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]
    };
    for (x, y) in [(20, 4), (21, 5)] {
        assert_eq!(
            px(x, y),
            [255, 0, 0, 255],
            "the hottest cell (10, 2) at ({x}, {y})"
        );
    }
    for (x, y) in [(110, 100), (198, 0), (199, 1)] {
        assert!(
            px(x, y)[3] >= 64,
            "a clicked cell at ({x}, {y}) is painted: {:?}",
            px(x, y)
        );
    }
    let hot: Vec<(u32, u32)> = (0..102)
        .flat_map(|y| (0..200).map(move |x| (x, y)))
        .filter(|&(x, y)| px(x, y)[3] != 0)
        .collect();
    assert_eq!(
        hot.len(),
        3 * 4,
        "only the 3 clicked cells are painted, 2 x 2 px each"
    );

    // Metrics carry the route.
    let m = app.metrics().await;
    for route in [
        "/v1/query/pages",
        "/v1/query/heatmap",
        "/v1/query/elements",
        "/v1/query/scroll",
    ] {
        assert!(
            m.contains(&format!(
                "clicktrail_http_requests_total{{route=\"{route}\",status=\"200\"}}"
            )),
            "{route} not in metrics"
        );
    }

    app.shutdown().await;
}

/// Counted once: the client resends both batches (same ids). The sum rollups (0006) count
/// what reaches ClickHouse; the collector answers the copies as accepted and keeps them out
/// (docs/delivery.md), so no answer moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_batch_moves_no_report() {
    let (ch, _data, app) = setup().await;
    let ts = now_ms() - 5_000;
    let (test, other) = events(ts);
    let n = test.len() + other.len();
    let post_all = || async {
        let (s, b) = app.post(&batch(test.clone())).await;
        assert_eq!(s, 200, "{b}");
        let (s, b) = app
            .post(&json!({"site": "other", "events": other.clone()}))
            .await;
        assert_eq!(s, 200, "{b}");
    };
    post_all().await;
    inserted(&app, n).await;
    let (uris, first) = assert_reports(&app, ts).await;
    post_all().await;
    let want = format!("clicktrail_duplicates_dropped_total{{stage=\"intake\"}} {n}\n");
    assert!(
        app.metrics().await.contains(&want),
        "the resend is dropped at intake"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    inserted(&app, n).await;
    assert_eq!(ch.count("SELECT count() FROM clicktrail.events"), n as u64);
    for (u, want) in uris.iter().zip(&first) {
        assert_eq!(&ok(&app, u).await, want, "{u} changed after the resend");
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_parameters_get_their_statuses_and_reasons() {
    let (_ch, _data, app) = setup().await;
    let good = "site=test&from=2024-06-01&to=2024-06-30";
    let pages = format!("/v1/query/pages?{good}");

    let (s, b) = get(&app, None, &pages).await;
    assert_eq!((s, &b["code"]), (401, &json!("missing_token")), "{b}");
    let (s, b) = get(&app, Some("not-a-token-of-anyone"), &pages).await;
    assert_eq!((s, &b["code"]), (401, &json!("invalid_token")), "{b}");
    // A token of another site: 403, never the data.
    let (s, b) = get(&app, Some(OTHER_TOKEN), &pages).await;
    assert_eq!((s, &b["code"]), (403, &json!("token_not_for_site")), "{b}");
    // Without a token, bad parameters are still a 401: nothing is said about the query.
    let (s, _) = get(&app, None, "/v1/query/pages?site=nosuch&from=x").await;
    assert_eq!(s, 401);
    let r = app
        .client
        .get(format!("{}{pages}", app.base))
        .header("authorization", format!("Basic {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");

    let long_path = format!("/{}", "a".repeat(3000));
    let cases: Vec<(String, &str, &str)> = vec![
        (
            "/v1/query/pages?from=2024-06-01&to=2024-06-01".into(),
            "site",
            "required",
        ),
        (
            "/v1/query/pages?site=nosuch&from=2024-06-01&to=2024-06-01".into(),
            "site",
            "unknown site `nosuch`",
        ),
        (
            "/v1/query/pages?site=test&from=2024-6-1&to=2024-06-01".into(),
            "from",
            "not a date",
        ),
        (
            "/v1/query/pages?site=test&from=2024-02-30&to=2024-03-01".into(),
            "from",
            "not a date",
        ),
        (
            "/v1/query/pages?site=test&from=2024-06-01".into(),
            "to",
            "required",
        ),
        (
            "/v1/query/pages?site=test&from=2024-06-02&to=2024-06-01".into(),
            "from",
            "after",
        ),
        (
            "/v1/query/pages?site=test&from=2023-01-01&to=2024-01-02".into(),
            "to",
            "367 days",
        ),
        (
            format!("/v1/query/pages?{good}&device=watch"),
            "device",
            "not a device class",
        ),
        (
            format!("/v1/query/pages?{good}&limit=0"),
            "limit",
            "not a number from 1 to 1000",
        ),
        (
            format!("/v1/query/pages?{good}&limit=1001"),
            "limit",
            "not a number",
        ),
        (
            format!("/v1/query/pages?{good}&colour=red"),
            "query",
            "unknown parameter `colour`",
        ),
        (
            format!("/v1/query/pages?{good}&site=test"),
            "site",
            "given twice",
        ),
        (format!("/v1/query/heatmap?{good}"), "path", "required"),
        (
            format!("/v1/query/heatmap?{good}&path=p/a"),
            "path",
            "must start with `/`",
        ),
        (
            format!("/v1/query/heatmap?{good}&path={long_path}"),
            "path",
            "3001 bytes long; at most 2048",
        ),
        (
            format!("/v1/query/heatmap?{good}&path=/&kind=hover"),
            "kind",
            "not a kind",
        ),
        (
            format!("/v1/query/heatmap?{good}&path=/&format=gif"),
            "format",
            "json or png",
        ),
        (
            format!("/v1/query/heatmap?{good}&path=/&width=300"),
            "width",
            "only with format=png",
        ),
        (
            format!("/v1/query/heatmap?{good}&path=/&format=png&width=99"),
            "width",
            "from 100 to 2000",
        ),
        (
            format!("/v1/query/heatmap?{good}&path=/&format=png&width=wide"),
            "width",
            "not a width",
        ),
        (
            format!("/v1/query/elements?{good}&path=/&kind=click"),
            "query",
            "unknown parameter `kind`",
        ),
        (
            format!("/v1/query/scroll?{good}&path=/&limit=5"),
            "query",
            "unknown parameter `limit`",
        ),
    ];
    for (uri, param, reason) in cases {
        let (s, b) = get(&app, Some(TOKEN), &uri).await;
        assert_eq!(
            (s, &b["code"]),
            (400, &json!("bad_parameter")),
            "{uri}: {b}"
        );
        let msg = b["error"].as_str().unwrap();
        assert!(
            msg.starts_with(&format!("parameter `{param}`")) && msg.contains(reason),
            "{uri}: `{msg}` should name `{param}` and say `{reason}`"
        );
    }
    // A year of 366 days is fine (and empty here).
    let (s, b) = get(
        &app,
        Some(TOKEN),
        "/v1/query/pages?site=test&from=2024-01-01&to=2024-12-31",
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["pages"], json!([]));
    app.shutdown().await;
}

/// Issue 13: `clicktrail migrate` converts the rollups of rows already present into the sum
/// rollups (0006), and a rerun of the conversion (a crash before its record) doubles nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sum_migration_converts_present_rows_and_a_rerun_doubles_nothing() {
    use clicktrail::migrate::{run_to, InsertWait};
    let ch = ClickHouse::start();
    let data = tempfile::tempdir().unwrap();
    let mut cfg = test_config(&ch, data.path());
    cfg.sites[0].read_tokens = vec![TOKEN.into()];
    cfg.sites.push(SiteConfig {
        key: "other".into(),
        origins: vec![ORIGIN.into()],
        read_tokens: vec![OTHER_TOKEN.into()],
        keep_query_params: vec![],
    });
    // The schema as the release before 0006 left it, with the events in its set rollups.
    run_to(&cfg.clickhouse, InsertWait::Skip, 5).await.unwrap();
    let app = App::spawn(cfg.clone()).await;
    let ts = now_ms() - 5_000;
    let (test, other) = events(ts);
    let n = test.len() + other.len();
    let (s, b) = app.post(&batch(test)).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = app.post(&json!({"site": "other", "events": other})).await;
    assert_eq!(s, 200, "{b}");
    inserted(&app, n).await;
    assert!(ch.count("SELECT count() FROM clicktrail.pages_daily") > 0);

    // No insert in flight (the sink has delivered everything): no wait needed.
    migrate(&cfg).await;
    let converted = "SELECT count() FROM clicktrail.pages_daily_sum FINAL WHERE backfill = 1";
    assert!(
        ch.count(converted) > 0,
        "the rows came through the conversion"
    );
    assert_eq!(
        ch.count("SELECT count() FROM clicktrail.pages_daily_sum WHERE backfill = 0"),
        0,
        "no view of 0006 saw them"
    );
    let (uris, first) = assert_reports(&app, ts).await;

    // 0008 dropped 0007's site_daily (and its view) on the way: `site_totals` merges
    // pages_daily_sum's states again.
    let site_daily =
        "SELECT count() FROM system.tables WHERE database = 'clicktrail' AND name LIKE 'site_daily%'";
    assert_eq!(ch.count(site_daily), 0, "0008 left site_daily");
    // A crash after the conversion, before its record: the next migrate converts again, so
    // the reports (`site_totals` in every `pages` answer) stay. The same for 0008 (its drops
    // are idempotent).
    for version in [6, 8] {
        let record =
            format!("SELECT count() FROM clicktrail.schema_migrations WHERE version = {version}");
        ch.query(&format!(
            "ALTER TABLE clicktrail.schema_migrations DELETE WHERE version = {version}"
        ));
        eventually(
            &format!("the record of {version:04} deleted"),
            Duration::from_secs(20),
            || ch.count(&record) == 0,
        )
        .await;
        migrate(&cfg).await;
        assert_eq!(ch.count(&record), 1);
        for (u, want) in uris.iter().zip(&first) {
            assert_eq!(
                &ok(&app, u).await,
                want,
                "{u} changed after a rerun of {version:04}"
            );
        }
    }
    // And once more, recorded: a no-op.
    migrate(&cfg).await;
    for (u, want) in uris.iter().zip(&first) {
        assert_eq!(
            &ok(&app, u).await,
            want,
            "{u} changed after a third migrate"
        );
    }
    app.shutdown().await;
}
