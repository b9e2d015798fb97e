//! The ingestion path end to end: HTTP → validation → spool → sink → ClickHouse.

use std::io::Write;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

async fn setup() -> (ClickHouse, tempfile::TempDir, App) {
    let ch = ClickHouse::start();
    let data = tempfile::tempdir().unwrap();
    let cfg = test_config(&ch, data.path());
    migrate(&cfg).await;
    let app = App::spawn(cfg).await;
    (ch, data, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posted_events_land_in_clickhouse_with_their_values() {
    let (ch, _data, app) = setup().await;
    let ts = now_ms();
    let (status, body) = app
        .post(&batch(vec![
            pageview("pv-1"),
            json!({"type": "click", "id": "cl-1", "ts": ts, "url": "https://shop.test/products/42",
                   "session": "sess1", "visitor": "vis1", "x": 120.6, "y": 1480, "vw": 1280, "vh": 720,
                   "dw": 1280, "dh": 4000, "selector": "main > button.buy", "text": "Buy now", "rage": true}),
            json!({"type": "scroll", "id": "sc-1", "ts": ts, "url": "https://shop.test/products/42",
                   "session": "sess1", "visitor": "vis1", "depth": 75, "from": 30}),
            json!({"type": "custom", "id": "cu-1", "ts": ts, "url": "https://shop.test/products/42",
                   "session": "sess1", "visitor": "vis1", "name": "signup", "props": {"plan": "pro"}}),
        ]))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"accepted": 4, "rejected": []}));

    eventually("4 rows in ClickHouse", Duration::from_secs(15), || {
        ch.count("SELECT count() FROM clicktrail.events") == 4
    })
    .await;
    let row: Value = serde_json::from_str(&ch.query(
        "SELECT event_id, site, type, x, y, viewport_w, viewport_h, doc_h, selector, text, rage, host, path, \
         session_id, visitor_id, toUnixTimestamp(ts) AS ts_s, ts_ms, received_at >= ts - 60 AS recv_ok \
         FROM clicktrail.events WHERE event_id = 'cl-1' FORMAT JSONEachRow",
    ))
    .unwrap();
    assert_eq!(row["site"], "test");
    assert_eq!(row["type"], "click");
    assert_eq!(row["x"], 121, "rounded page coordinate");
    assert_eq!(row["y"], 1480);
    assert_eq!(
        (row["viewport_w"].as_u64(), row["viewport_h"].as_u64()),
        (Some(1280), Some(720))
    );
    assert_eq!(row["doc_h"], 4000);
    assert_eq!(row["selector"], "main > button.buy");
    assert_eq!(row["text"], "Buy now");
    assert_eq!(row["rage"], 1);
    assert_eq!(row["host"], "shop.test");
    assert_eq!(row["path"], "/products/42");
    assert_eq!(
        row["ts_s"]
            .as_str()
            .map(|s| s.parse::<i64>().unwrap())
            .unwrap_or_else(|| row["ts_s"].as_i64().unwrap()),
        ts / 1000
    );
    assert_eq!(row["ts_ms"], (ts % 1000) as u64);
    assert_eq!(row["recv_ok"], 1);
    assert_eq!(
        ch.query("SELECT scroll_depth, depth_from FROM clicktrail.events WHERE event_id = 'sc-1' FORMAT TSV")
            .trim(),
        "75\t30"
    );
    assert_eq!(ch.query("SELECT title, referrer, path FROM clicktrail.events WHERE event_id = 'pv-1' FORMAT TSV").trim(), "Product 42\thttps://search.test/\t/products/42");
    assert_eq!(
        ch.query("SELECT name, props FROM clicktrail.events WHERE event_id = 'cu-1' FORMAT TSV")
            .trim(),
        "signup\t{\"plan\":\"pro\"}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_event_is_rejected_with_index_and_reason_while_the_rest_land() {
    let (ch, _data, app) = setup().await;
    let mut bad = pageview("bad-1");
    bad["ts"] = json!("yesterday");
    let mut no_x = pageview("bad-2");
    no_x["type"] = json!("click");
    let (status, body) = app
        .post(&batch(vec![pageview("ok-1"), bad, pageview("ok-2"), no_x]))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["accepted"], 2);
    assert_eq!(
        body["rejected"],
        json!([
            {"index": 1, "error": "field ts: expected epoch milliseconds, got string \"yesterday\""},
            {"index": 3, "error": "field x: required"}
        ])
    );
    eventually("2 rows", Duration::from_secs(15), || {
        ch.count("SELECT count() FROM clicktrail.events") == 2
    })
    .await;
    assert_eq!(
        ch.query("SELECT event_id FROM clicktrail.events ORDER BY event_id FORMAT TSV"),
        "ok-1\nok-2\n"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("clicktrail_events_rejected_total{reason=\"invalid_value\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("clicktrail_events_rejected_total{reason=\"missing_field\"} 1"));
    assert!(metrics.contains("clicktrail_events_accepted_total{type=\"pageview\"} 2"));
    app.shutdown().await;
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

struct Case {
    name: &'static str,
    method: reqwest::Method,
    content_type: Option<&'static str>,
    encoding: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    error_contains: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_and_errors_get_the_documented_answers() {
    let (ch, _data, app) = setup().await;
    let good = batch(vec![pageview("g-1")]).to_string().into_bytes();
    let good2 = batch(vec![pageview("g-2")]).to_string().into_bytes();
    let good3 = batch(vec![pageview("g-3")]).to_string().into_bytes();
    let huge = batch(vec![
        json!({"type": "pageview", "title": "x".repeat(1_100_000)}),
    ])
    .to_string()
    .into_bytes();
    let bomb = gzip(&vec![b' '; 20 * 1024 * 1024]);
    let too_many = batch((0..501).map(|i| pageview(&format!("m-{i}"))).collect())
        .to_string()
        .into_bytes();
    let post = reqwest::Method::POST;
    let cases = vec![
        Case {
            name: "text/plain (sendBeacon)",
            method: post.clone(),
            content_type: Some("text/plain;charset=UTF-8"),
            encoding: None,
            body: good.clone(),
            status: 200,
            error_contains: "",
        },
        Case {
            name: "gzip declared",
            method: post.clone(),
            content_type: Some("application/json"),
            encoding: Some("gzip"),
            body: gzip(&good2),
            status: 200,
            error_contains: "",
        },
        Case {
            name: "gzip by magic bytes",
            method: post.clone(),
            content_type: Some("text/plain"),
            encoding: None,
            body: gzip(&good3),
            status: 200,
            error_contains: "",
        },
        Case {
            name: "oversized",
            method: post.clone(),
            content_type: Some("application/json"),
            encoding: None,
            body: huge,
            status: 413,
            error_contains: "body larger than 1048576 bytes",
        },
        Case {
            name: "gzip bomb",
            method: post.clone(),
            content_type: Some("application/json"),
            encoding: Some("gzip"),
            body: bomb,
            status: 413,
            error_contains: "once decompressed",
        },
        Case {
            name: "malformed JSON",
            method: post.clone(),
            content_type: Some("application/json"),
            encoding: None,
            body: b"{\"site\": \"test\", \"events\": [".to_vec(),
            status: 400,
            error_contains: "malformed JSON",
        },
        Case {
            name: "not an envelope",
            method: post.clone(),
            content_type: Some("application/json"),
            encoding: None,
            body: b"[1,2,3]".to_vec(),
            status: 400,
            error_contains: "malformed JSON",
        },
        Case {
            name: "missing events",
            method: post.clone(),
            content_type: Some("application/json"),
            encoding: None,
            body: b"{\"site\": \"test\"}".to_vec(),
            status: 400,
            error_contains: "field events: required",
        },
        Case {
            name: "unknown site",
            method: post.clone(),
            content_type: Some("application/json"),
            encoding: None,
            body: b"{\"site\": \"nope\", \"events\": []}".to_vec(),
            status: 403,
            error_contains: "unknown site key `nope`",
        },
        Case {
            name: "empty body",
            method: post.clone(),
            content_type: Some("text/plain"),
            encoding: None,
            body: vec![],
            status: 400,
            error_contains: "empty body",
        },
        Case {
            name: "too many events",
            method: post.clone(),
            content_type: Some("application/json"),
            encoding: None,
            body: too_many,
            status: 413,
            error_contains: "too many events: 501",
        },
        Case {
            name: "bad gzip",
            method: post.clone(),
            content_type: Some("application/json"),
            encoding: Some("gzip"),
            body: b"not gzip at all".to_vec(),
            status: 400,
            error_contains: "invalid gzip",
        },
        Case {
            name: "unsupported type",
            method: post.clone(),
            content_type: Some("multipart/form-data"),
            encoding: None,
            body: good.clone(),
            status: 415,
            error_contains: "unsupported Content-Type",
        },
        Case {
            name: "unsupported encoding",
            method: post.clone(),
            content_type: Some("application/json"),
            encoding: Some("br"),
            body: good.clone(),
            status: 415,
            error_contains: "unsupported Content-Encoding `br`",
        },
        Case {
            name: "wrong method",
            method: reqwest::Method::GET,
            content_type: None,
            encoding: None,
            body: vec![],
            status: 405,
            error_contains: "method not allowed",
        },
        Case {
            name: "empty events",
            method: post.clone(),
            content_type: Some("application/json"),
            encoding: None,
            body: b"{\"site\": \"test\", \"events\": []}".to_vec(),
            status: 200,
            error_contains: "",
        },
    ];
    // Answers like 413 come before the server has read the body, so the server closes that
    // connection; a pooled client could pick the closed connection for the next case.
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for c in cases {
        let mut req = fresh
            .request(c.method.clone(), format!("{}/v1/events", app.base))
            .header("origin", ORIGIN)
            .body(c.body);
        if let Some(ct) = c.content_type {
            req = req.header("content-type", ct);
        }
        if let Some(enc) = c.encoding {
            req = req.header("content-encoding", enc);
        }
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        assert_eq!(r.status().as_u16(), c.status, "{}", c.name);
        assert_eq!(
            r.headers()
                .get("access-control-allow-origin")
                .map(|v| v.to_str().unwrap()),
            Some(ORIGIN),
            "{}: CORS header on every answer",
            c.name
        );
        assert!(
            r.headers().get("x-request-id").is_some(),
            "{}: request id",
            c.name
        );
        let body: Value = r
            .json()
            .await
            .unwrap_or_else(|e| panic!("{}: JSON body: {e}", c.name));
        if c.status != 200 {
            let err = body["error"].as_str().unwrap_or_default();
            assert!(
                err.contains(c.error_contains),
                "{}: `{err}` should contain `{}`",
                c.name,
                c.error_contains
            );
            assert!(
                body["code"].is_string(),
                "{}: machine-readable code",
                c.name
            );
        }
    }

    // A foreign origin is refused with a reason; a preflight is answered.
    let r = app
        .client
        .post(format!("{}/v1/events", app.base))
        .header("origin", "https://evil.test")
        .header("content-type", "text/plain")
        .body(good.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("not allowed to send events for site `test`"));
    // A page served by the collector itself (the demo) may post from its own origin, even
    // though that origin is not configured for the site.
    let r = app
        .client
        .post(format!("{}/v1/events", app.base))
        .header("origin", &app.base)
        .header("content-type", "text/plain")
        .body(batch(vec![pageview("same-origin")]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "same-origin post");
    let r = app
        .client
        .request(reqwest::Method::OPTIONS, format!("{}/v1/events", app.base))
        .header("origin", ORIGIN)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(r.headers()["access-control-allow-origin"], ORIGIN);
    assert!(r.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));

    // The process survived all of that, and the three good bodies landed.
    let r = app
        .client
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    eventually("4 good rows", Duration::from_secs(15), || {
        ch.count("SELECT count() FROM clicktrail.events") == 4
    })
    .await;
    let r = app
        .client
        .get(format!("{}/nope", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_metrics_and_snippet() {
    let (ch, _data, app) = setup().await;
    let get = |p: &str| app.client.get(format!("{}{p}", app.base)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    let base = app.base.clone();
    let client = app.client.clone();
    let mut ready = false;
    for _ in 0..50 {
        if client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "ready once ClickHouse answers the probe");

    let r = get("/v1/snippet.js").await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/javascript"));
    assert!(r.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("max-age"));
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert!(!r.text().await.unwrap().is_empty());
    let r = app
        .client
        .get(format!("{}/v1/snippet.js", app.base))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    let demo = get("/").await.unwrap().text().await.unwrap();
    assert!(demo.contains("/v1/snippet.js"));

    app.post(&batch(vec![pageview("m-1")])).await;
    eventually("row", Duration::from_secs(15), || {
        ch.count("SELECT count() FROM clicktrail.events") == 1
    })
    .await;
    // The row can be visible in ClickHouse a moment before the sink has read the answer.
    let metrics = eventually_some(
        "the sink counts the insert",
        Duration::from_secs(10),
        || async {
            let m = get("/metrics").await.unwrap().text().await.unwrap();
            m.contains("clicktrail_sink_rows_inserted_total 1")
                .then_some(m)
        },
    )
    .await;
    for needle in [
        "clicktrail_http_requests_total{route=\"/v1/events\",status=\"200\"} 1",
        "clicktrail_http_request_duration_seconds_bucket{",
        "clicktrail_sink_batch_rows_bucket",
        "clicktrail_sink_insert_duration_seconds_count",
        "clicktrail_sink_rows_inserted_total 1",
        "clicktrail_clickhouse_up 1",
        "clicktrail_spool_fsyncs_total",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
    // ClickHouse gone: readiness says why, and still says events are accepted.
    drop(ch);
    let mut body = Value::Null;
    for _ in 0..50 {
        let r = client.get(format!("{base}/readyz")).send().await.unwrap();
        if r.status() == 503 {
            body = r.json().await.unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(body["status"], "not_ready", "{body}");
    assert_eq!(body["accepting_events"], true);
    assert!(body["problems"][0]
        .as_str()
        .unwrap()
        .starts_with("clickhouse:"));
    app.shutdown().await;
}
