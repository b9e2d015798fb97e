//! The live view `GET /v1/live` end to end: acknowledged events arrive on the stream within a
//! second, and a client that never reads is dropped while ingestion goes on at full speed.

use std::time::{Duration, Instant};

use clicktrail::config::SiteConfig;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

const TOKEN: &str = "live-read-token-0123456789";
const OTHER_TOKEN: &str = "other-live-token-0123456789";

async fn setup(live_buffer: usize) -> (ClickHouse, tempfile::TempDir, App) {
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
    cfg.query.live_buffer = live_buffer;
    migrate(&cfg).await;
    let app = App::spawn(cfg).await;
    (ch, data, app)
}

/// The value of an unlabelled metric in `/metrics`.
async fn metric(app: &App, name: &str) -> f64 {
    let text = app.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
        .trim()
        .parse()
        .unwrap()
}

/// Reads the stream until `needle` has been seen; the text read so far.
async fn read_until(r: &mut reqwest::Response, seen: &mut String, needle: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !seen.contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, r.chunk())
            .await
            .unwrap_or_else(|_| panic!("`{needle}` not on the stream within {within:?}: {seen}"))
            .expect("stream read")
            .unwrap_or_else(|| panic!("stream ended before `{needle}`: {seen}"));
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_event_is_on_the_stream_within_a_second() {
    let (_ch, _data, app) = setup(1024).await;
    let url = format!("{}/v1/live?site=test", app.base);

    // Same auth as the reports: no token 401, another site's token 403, unknown parameter 400.
    let r = app.client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = app
        .client
        .get(&url)
        .bearer_auth(OTHER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = app
        .client
        .get(format!("{url}&x=1"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let mut r = app
        .client
        .get(&url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut seen = String::new();
    read_until(&mut r, &mut seen, "event: ready", Duration::from_secs(5)).await;
    assert_eq!(metric(&app, "clicktrail_live_subscribers").await, 1.0);

    // Another site's event is not on this stream; ours is, within a second of the 200.
    let (s, _) = app
        .post(&json!({"site": "other", "events": [pageview("not-ours")]}))
        .await;
    assert_eq!(s, 200);
    let mut click = pageview("live-click-1");
    click["type"] = json!("click");
    click["x"] = json!(120);
    click["y"] = json!(40);
    click["selector"] = json!("#buy");
    click["ip"] = json!("must-not-matter");
    let (s, b) = app.post(&batch(vec![click])).await;
    assert_eq!((s, &b["accepted"]), (200, &json!(1)), "{b}");
    let acked = Instant::now();
    read_until(&mut r, &mut seen, "live-click-1", Duration::from_secs(1)).await;
    assert!(acked.elapsed() < Duration::from_secs(1));
    assert!(!seen.contains("not-ours"), "{seen}");

    let line = seen
        .lines()
        .find(|l| l.contains("live-click-1"))
        .unwrap()
        .strip_prefix("data: ")
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["type"], "click");
    assert_eq!(v["path"], "/products/42");
    assert_eq!(v["selector"], "#buy");
    assert_eq!((&v["x"], &v["y"]), (&json!(120), &json!(40)));
    assert!(v.get("ip").is_none() && v.get("visitor").is_none(), "{v}");

    drop(r);
    let mut gone = false;
    for _ in 0..50 {
        if metric(&app, "clicktrail_live_subscribers").await == 0.0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the subscriber gauge did not fall back to 0");
    // An open stream must not hold up shutdown.
    let mut r = app
        .client
        .get(&url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let _ = r.chunk().await;
    tokio::time::timeout(Duration::from_secs(20), app.shutdown())
        .await
        .expect("shutdown with an open live stream");
}

fn big_click(i: usize, j: usize) -> serde_json::Value {
    json!({
        "type": "click", "id": format!("slow-{i}-{j}"), "ts": now_ms(),
        "url": format!("https://shop.test/products/{j}?page=some-long-query-string-to-fill-the-stream"),
        "session": "sess1", "visitor": "vis1", "x": j, "y": i,
        "selector": "main>section:nth-of-type(2)>div>ul>li:nth-of-type(3)>button",
        "text": "Add to basket — a reasonably long button label for the test",
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_dropped_and_ingestion_goes_on() {
    let (_ch, _data, app) = setup(1024).await;
    let addr = app.base.strip_prefix("http://").unwrap().to_string();

    // A client that sends its request and then never reads, with a tiny receive window.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut slow = sock.connect(addr.parse().unwrap()).await.unwrap();
    slow.write_all(
        format!(
            "GET /v1/live?site=test HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();

    // A client that keeps up, on the same site, which must not be dropped.
    let mut fast = app
        .client
        .get(format!("{}/v1/live?site=test", app.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let mut seen = String::new();
    read_until(&mut fast, &mut seen, "event: ready", Duration::from_secs(5)).await;
    let reader = tokio::spawn(async move {
        let mut events = 0usize;
        let mut dropped = false;
        let mut tail = String::new();
        while let Ok(Some(chunk)) = fast.chunk().await {
            tail.push_str(&String::from_utf8_lossy(&chunk));
            // Count complete messages only.
            while let Some(end) = tail.find("\n\n") {
                let msg: String = tail.drain(..end + 2).collect();
                events += usize::from(msg.starts_with("event: event"));
                dropped |= msg.starts_with("event: dropped");
            }
        }
        (events, dropped)
    });
    let mut subscribed = false;
    for _ in 0..50 {
        if metric(&app, "clicktrail_live_subscribers").await == 2.0 {
            subscribed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(subscribed, "both live clients should be subscribed");

    // Post batches of 100 events (~400 bytes each on the stream) until the slow client is
    // dropped, then as many again: every post is acknowledged promptly throughout.
    let mut slowest = Duration::ZERO;
    let mut posted = 0usize;
    let mut dropped_after = None;
    let started = Instant::now();
    for i in 0..2000 {
        let events: Vec<_> = (0..100).map(|j| big_click(i, j)).collect();
        let t = Instant::now();
        let (s, b) = app.post(&batch(events)).await;
        slowest = slowest.max(t.elapsed());
        assert_eq!((s, &b["accepted"]), (200, &json!(100)), "batch {i}: {b}");
        posted += 100;
        if dropped_after.is_none()
            && i % 10 == 9
            && metric(&app, "clicktrail_live_dropped_subscribers_total").await >= 1.0
        {
            dropped_after = Some(i + 1);
        }
        if let Some(d) = dropped_after {
            if i + 1 >= 2 * d {
                break;
            }
        }
    }
    let elapsed = started.elapsed();
    let d = dropped_after.expect("the client that never reads was never dropped");
    eprintln!(
        "live: slow client dropped after {d} batches; {posted} events in {elapsed:?}, slowest post {slowest:?}"
    );
    assert!(
        slowest < Duration::from_secs(2),
        "a post took {slowest:?} while a live client was stuck"
    );
    assert_eq!(
        metric(&app, "clicktrail_live_dropped_subscribers_total").await,
        1.0,
        "only the slow client is dropped"
    );

    // The slow client, reading at last: what was buffered, then `event: dropped`, then the end
    // of the (chunked) answer.
    let mut got = Vec::new();
    let read_all = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = slow.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
            if n == 0 || got.ends_with(b"0\r\n\r\n") {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read_all)
        .await
        .expect("the dropped stream ends");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..200.min(text.len())]
    );
    assert!(
        text.contains("event: dropped"),
        "no dropped event at the end"
    );

    // The client that kept up got every event, and was not dropped.
    drop(slow);
    tokio::time::timeout(Duration::from_secs(30), app.shutdown())
        .await
        .expect("shutdown");
    let (events, fast_dropped) = reader.await.unwrap();
    assert!(!fast_dropped);
    assert_eq!(events, posted, "the reading client missed events");
}
