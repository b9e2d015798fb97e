//! Privacy by default and bots, through the real collector and ClickHouse: what a stored row
//! keeps of a page, opted-out browsers and bots dropped (counted) or flagged, a dead letter of
//! yesterday replayed today without touching today's visitor ids, and the admin routes on a
//! listener of their own.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

const HEADLESS: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.6099.71 Safari/537.36";
const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";

async fn post_as(app: &App, ua: &str, extra: &[(&str, &str)], events: Vec<Value>) -> Value {
    let mut req = app
        .client
        .post(format!("{}/v1/events", app.base))
        .header("content-type", "text/plain")
        .header("origin", ORIGIN)
        .header("user-agent", ua);
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let r = req.body(batch(events).to_string()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn counter(metrics: &str, line: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{line} not in /metrics"))
}

async fn rows(ch: &ClickHouse, n: u64, sql: &str) -> Vec<Value> {
    let count = format!("SELECT count() FROM ({sql})");
    eventually_some("rows in ClickHouse", Duration::from_secs(15), || async {
        (ch.count(&count) >= n).then_some(())
    })
    .await;
    ch.query(&format!("{sql} FORMAT JSONEachRow"))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `[[sites]] keep_query_params`: one site keeps its search query, another does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_keeps_its_own_query_params() {
    let ch = ClickHouse::start();
    let data = tempfile::tempdir().unwrap();
    let mut cfg = test_config(&ch, data.path());
    cfg.privacy.keep_query_params = vec!["gclid".into()];
    cfg.sites.push(clicktrail::config::SiteConfig {
        key: "search".into(),
        origins: vec![ORIGIN.into()],
        read_tokens: vec![],
        keep_query_params: vec!["q".into()],
    });
    migrate(&cfg).await;
    let app = App::spawn(cfg).await;
    let url = "https://shop.test/search?q=boots&email=a%40b.c&gclid=G";
    let post = |site: &'static str, id: &'static str| {
        let mut pv = pageview(id);
        pv["url"] = json!(url);
        pv["referrer"] = json!("https://shop.test/search?q=shoes&page=2");
        let body = json!({"site": site, "events": [pv]}).to_string();
        let req = app
            .client
            .post(format!("{}/v1/events", app.base))
            .header("content-type", "text/plain")
            .header("origin", ORIGIN)
            .body(body);
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    post("search", "s-1").await;
    post("test", "t-1").await;

    let got = rows(
        &ch,
        2,
        "SELECT event_id, url, referrer FROM clicktrail.events ORDER BY event_id",
    )
    .await;
    let stored: Vec<(&str, &str, &str)> = got
        .iter()
        .map(|r| {
            (
                r["event_id"].as_str().unwrap(),
                r["url"].as_str().unwrap(),
                r["referrer"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        stored,
        vec![
            (
                "s-1",
                "https://shop.test/search?q=boots&gclid=G",
                "https://shop.test/search?q=shoes"
            ),
            (
                "t-1",
                "https://shop.test/search?gclid=G",
                "https://shop.test/search"
            ),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_text_opt_outs_and_bots_by_default() {
    let ch = ClickHouse::start();
    let data = tempfile::tempdir().unwrap();
    let mut cfg = test_config(&ch, data.path());
    cfg.privacy.keep_query_params = vec!["gclid".into()];
    migrate(&cfg).await;
    let app = App::spawn(cfg).await;

    let mut pv = pageview("p-1");
    pv["url"] = json!("https://shop.test/cart?email=a%40b.c&utm_source=mail&gclid=G#token=s3cret");
    pv["referrer"] = json!("https://mail.test/inbox?msg=42");
    let click = |id: &str, selector: &str| {
        json!({"type": "click", "id": id, "ts": now_ms(), "url": "https://shop.test/cart",
               "session": "s", "visitor": "v", "x": 1, "y": 1, "selector": selector, "text": "Dear John"})
    };
    let a = post_as(
        &app,
        CHROME,
        &[],
        vec![
            pv,
            click("c-btn", "main>button"),
            click("c-div", "main>div"),
        ],
    )
    .await;
    assert_eq!(a["accepted"], 3, "{a}");

    // Opted out, or a headless browser: answered 200, nothing stored, counted.
    let gpc = post_as(&app, CHROME, &[("sec-gpc", "1")], vec![pageview("gpc-1")]).await;
    let dnt = post_as(&app, CHROME, &[("dnt", "1")], vec![pageview("dnt-1")]).await;
    let bot = post_as(
        &app,
        HEADLESS,
        &[],
        vec![pageview("bot-1"), pageview("bot-2")],
    )
    .await;
    assert_eq!(
        (gpc["accepted"].clone(), gpc["dropped"].clone()),
        (json!(0), json!(1))
    );
    assert_eq!(dnt["dropped"], 1);
    assert_eq!(
        (bot["accepted"].clone(), bot["dropped"].clone()),
        (json!(0), json!(2))
    );
    let m = app.metrics().await;
    assert_eq!(
        counter(
            &m,
            "clicktrail_events_dropped_total{reason=\"do_not_track\"} "
        ),
        2
    );
    assert_eq!(
        counter(&m, "clicktrail_events_dropped_total{reason=\"bot\"} "),
        2
    );

    let got = rows(
        &ch,
        3,
        "SELECT event_id, url, referrer, text FROM clicktrail.events ORDER BY event_id",
    )
    .await;
    let ids: Vec<&str> = got
        .iter()
        .map(|r| r["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["c-btn", "c-div", "p-1"],
        "dropped events are not stored"
    );
    assert_eq!(
        got[2]["url"],
        "https://shop.test/cart?utm_source=mail&gclid=G"
    );
    assert_eq!(got[2]["referrer"], "https://mail.test/inbox");
    assert_eq!(got[0]["text"], "Dear John", "text of a button is kept");
    assert_eq!(got[1]["text"], "", "text of a div is not");

    // A refused event's dead letter keeps no more of the User-Agent than a row would: with
    // privacy.keep_user_agent = false, its parse and the cookieless id, not the string.
    let long_ua = format!("{CHROME} {}", "x".repeat(100_000));
    let bad = post_as(
        &app,
        &long_ua,
        &[],
        vec![json!({"type": "pageview", "id": "bad-1"})],
    )
    .await;
    assert_eq!(bad["rejected"].as_array().unwrap().len(), 1, "{bad}");
    app.shutdown().await;
    let dir = data.path().join("dlq");
    let entries: Vec<clicktrail::dlq::Entry> = std::fs::read_dir(dir.join("entries"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let id = name.split('.').next()?.parse().ok()?;
            clicktrail::dlq::read(&dir, id).ok()
        })
        .collect();
    assert_eq!(entries.len(), 1);
    let origin = &entries[0].origin;
    assert_eq!(origin.user_agent, "", "the raw User-Agent is not kept");
    let agent = origin.agent.as_ref().expect("the parse is kept");
    assert_eq!(
        (agent.browser.as_str(), agent.device.as_str()),
        ("Chrome", "desktop")
    );
    assert!(agent.cookieless_visitor.starts_with('c'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_are_flagged_when_configured_and_opt_outs_kept_when_not_honoured() {
    let ch = ClickHouse::start();
    let data = tempfile::tempdir().unwrap();
    let mut cfg = test_config(&ch, data.path());
    cfg.bots.action = clicktrail::config::BotAction::Flag;
    cfg.privacy.honor_do_not_track = false;
    migrate(&cfg).await;
    let app = App::spawn(cfg).await;
    let a = post_as(&app, HEADLESS, &[("sec-gpc", "1")], vec![pageview("bot-1")]).await;
    assert_eq!(a["accepted"], 1, "{a}");
    let got = rows(&ch, 1, "SELECT device FROM clicktrail.events").await;
    assert_eq!(got[0]["device"], "bot");
    assert_eq!(
        counter(&app.metrics().await, "clicktrail_bot_events_flagged_total "),
        1
    );
    app.shutdown().await;
}

/// A validation dead letter received yesterday, written before dead letters kept the
/// User-Agent's parse (so the replay hashes the visitor with yesterday's salt), replayed
/// today: today's visitor ids stay what they were, and the replayed row gets yesterday's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_yesterday_keeps_today_visitor_ids() {
    let ch = ClickHouse::start();
    let data = tempfile::tempdir().unwrap();
    let cfg = test_config(&ch, data.path());
    migrate(&cfg).await;
    let yesterday = now_ms() - 86_400_000;
    let dlq = clicktrail::dlq::DeadLetters::open(
        cfg.dlq_dir(),
        cfg.dlq.max_bytes,
        clicktrail::metrics::Metrics::new(),
    )
    .unwrap()
    .with_clock(clicktrail::clock::Clock::manual(yesterday));
    let cookieless = |id: &str, ts: i64| json!({"type": "pageview", "id": id, "ts": ts, "url": "https://shop.test/", "session": "s", "visitor": ""});
    let entry = clicktrail::dlq::NewEntry {
        events: vec![serde_json::value::to_raw_value(&cookieless("old-1", yesterday)).unwrap()],
        errors: vec!["field url: too long".into()],
        ..clicktrail::dlq::NewEntry::refused(
            clicktrail::dlq::Stage::Validation,
            "too_long",
            "1 event(s) failed validation".into(),
            clicktrail::dlq::Origin {
                site: "test".into(),
                received_at_ms: yesterday,
                user_agent: CHROME.into(),
                ip: "127.0.0.0".into(),
                agent: None,
            },
        )
    };
    let id = dlq.put(entry).unwrap();
    drop(dlq);

    let app = App::spawn(cfg.clone()).await;
    post_as(&app, CHROME, &[], vec![cookieless("today-1", now_ms())]).await;
    let token: clicktrail::http::admin::AdminFile = serde_json::from_slice(
        &std::fs::read(clicktrail::http::admin::admin_file_path(&cfg.data_dir)).unwrap(),
    )
    .unwrap();
    let r: Value = app
        .client
        .post(format!("{}/v1/admin/replay", app.admin))
        .bearer_auth(&token.token)
        .json(&json!({"ids": [id]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["results"][0]["replayed"], 1, "{r}");
    post_as(&app, CHROME, &[], vec![cookieless("today-2", now_ms())]).await;

    let got = rows(
        &ch,
        3,
        "SELECT event_id, visitor_id FROM clicktrail.events ORDER BY event_id",
    )
    .await;
    let visitor = |id: &str| {
        got.iter()
            .find(|r| r["event_id"] == id)
            .unwrap_or_else(|| panic!("{id} not stored"))["visitor_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        visitor("today-1"),
        visitor("today-2"),
        "the replay of yesterday changed today's visitor id"
    );
    assert_ne!(
        visitor("old-1"),
        visitor("today-1"),
        "yesterday had its own salt"
    );
    app.shutdown().await;
    assert!(
        cfg.salts_dir().read_dir().unwrap().count() >= 2,
        "today's and yesterday's salts are on disk"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_and_metrics_can_have_a_listener_of_their_own() {
    let ch = ClickHouse::start();
    let data = tempfile::tempdir().unwrap();
    let mut cfg = test_config(&ch, data.path());
    cfg.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    migrate(&cfg).await;
    let app = App::spawn(cfg).await;
    assert_ne!(app.admin, app.base);
    let c = &app.client;
    let status = |url: String| async move { c.get(url).send().await.unwrap().status().as_u16() };
    assert_eq!(status(format!("{}/metrics", app.base)).await, 404);
    assert_eq!(status(format!("{}/v1/admin/status", app.base)).await, 404);
    let replay = c
        .post(format!("{}/v1/admin/replay", app.base))
        .json(&json!({"ids": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 404);
    assert_eq!(status(format!("{}/healthz", app.base)).await, 200);

    assert!(app
        .metrics()
        .await
        .contains("clicktrail_events_accepted_total"));
    // Served there (a token is still needed), and the public routes are not.
    assert_eq!(status(format!("{}/v1/admin/status", app.admin)).await, 401);
    assert_eq!(status(format!("{}/healthz", app.admin)).await, 404);
    app.shutdown().await;
}
