//! What the collector refuses to let one client hold or flood: headers sent slowly, idle
//! connections, too many connections, too many requests, too many body bytes in flight, and
//! dead letters of junk.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

async fn app_with(
    f: impl FnOnce(&mut clicktrail::config::Config),
) -> (ClickHouse, tempfile::TempDir, App) {
    let ch = ClickHouse::start();
    let data = tempfile::tempdir().unwrap();
    let mut cfg = test_config(&ch, data.path());
    f(&mut cfg);
    cfg.validate().expect("a valid test config");
    let app = App::spawn(cfg).await;
    (ch, data, app)
}

fn addr(app: &App) -> String {
    app.base.trim_start_matches("http://").to_string()
}

/// Reads until the server closes the connection (`Some(elapsed)`), or `None` after `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_headers_are_cut_off_after_the_header_read_timeout() {
    let (_ch, _data, app) = app_with(|c| {
        c.server.header_read_timeout = Duration::from_secs(1);
        c.server.keep_alive_timeout = Duration::from_secs(1);
    })
    .await;
    let mut s = TcpStream::connect(addr(&app)).await.unwrap();
    s.write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Ty")
        .await
        .unwrap();
    let took = closed_within(&mut s, Duration::from_secs(5))
        .await
        .expect("a connection with half its headers is closed");
    assert!(
        took >= Duration::from_millis(800),
        "not before the timeout: {took:?}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed() {
    let (_ch, _data, app) = app_with(|c| {
        c.server.header_read_timeout = Duration::from_secs(20);
        c.server.keep_alive_timeout = Duration::from_secs(1);
    })
    .await;
    let mut s = TcpStream::connect(addr(&app)).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    let took = closed_within(&mut s, Duration::from_secs(8))
        .await
        .expect("an idle kept-alive connection is closed");
    assert!(
        took < Duration::from_secs(4),
        "by keep_alive_timeout, not the header timeout: {took:?}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_refused_and_open_ones_keep_working() {
    let (_ch, _data, app) = app_with(|c| {
        c.server.max_connections = 4;
        c.server.header_read_timeout = Duration::from_secs(30);
        c.server.keep_alive_timeout = Duration::from_secs(30);
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(TcpStream::connect(addr(&app)).await.unwrap());
    }
    // Let the server accept them all before the fifth.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(addr(&app)).await.unwrap();
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(2), extra.read_to_end(&mut got)).await;
    assert!(closed.is_ok(), "the fifth connection is closed at once");
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 503"),
        "{}",
        String::from_utf8_lossy(&got)
    );

    let s = &mut open[0];
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .expect("an open connection is answered")
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    drop(open);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("clicktrail_http_connections_refused_total 1"),
        "{metrics}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_rate_limit_a_client_gets_429_with_retry_after_and_cors() {
    let (_ch, _data, app) = app_with(|c| {
        c.rate_limit.per_ip_per_second = 1;
        c.rate_limit.per_ip_burst = 2;
    })
    .await;
    let post = || {
        app.client
            .post(format!("{}/v1/events", app.base))
            .header("content-type", "text/plain")
            .header("origin", ORIGIN)
            .body(batch(vec![pageview("rl")]).to_string())
            .send()
    };
    assert_eq!(post().await.unwrap().status(), 200);
    assert_eq!(post().await.unwrap().status(), 200);
    let r = post().await.unwrap();
    assert_eq!(r.status(), 429);
    let h = r.headers().clone();
    let retry: u32 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(h["access-control-allow-origin"], ORIGIN);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited", "{body}");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("clicktrail_http_rate_limited_total{scope=\"ip\"} 1"),
        "{metrics}"
    );
    app.shutdown().await;

    // Per site: any number of clients, one budget.
    let (_ch, _data, app) = app_with(|c| {
        c.rate_limit.per_site_per_second = 1;
        c.rate_limit.per_site_burst = 1;
    })
    .await;
    assert_eq!(app.post(&batch(vec![pageview("s1")])).await.0, 200);
    let (status, body) = app.post(&batch(vec![pageview("s2")])).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], "rate_limited");
    assert!(app
        .metrics()
        .await
        .contains("clicktrail_http_rate_limited_total{scope=\"site\"} 1"));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_in_flight_body_bytes_requests_get_503() {
    let (_ch, _data, app) = app_with(|c| {
        c.http.max_body_bytes = 8192;
        c.http.max_decompressed_bytes = 8192;
        c.server.max_inflight_body_bytes = 10_000;
    })
    .await;
    // A slow client holds 8000 bytes: it declares them and sends only a few.
    let mut slow = TcpStream::connect(addr(&app)).await.unwrap();
    slow.write_all(
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 8000\r\n\r\n{\"site\"",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = app
        .client
        .post(format!("{}/v1/events", app.base))
        .header("content-type", "text/plain")
        .header("origin", ORIGIN)
        .body(batch(vec![pageview("a"); 12]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(r.headers()["access-control-allow-origin"], ORIGIN);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "overloaded", "{body}");
    // Once the slow request is gone, its bytes are free again.
    drop(slow);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.post(&batch(vec![pageview("b")])).await.0, 200);
    assert!(app
        .metrics()
        .await
        .contains("clicktrail_http_overloaded_total 1"));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_from_anywhere_writes_a_bounded_sample_of_dead_letters_with_cut_user_agents() {
    let (_ch, data, app) = app_with(|c| {
        c.dlq.unattributed_parse_per_minute = 3;
    })
    .await;
    let ua = "U".repeat(100 * 1024);
    for i in 0..50 {
        let r = app
            .client
            .post(format!("{}/v1/events", app.base))
            .header("content-type", "text/plain")
            .header("origin", "https://evil.test")
            .header("user-agent", &ua)
            .body(format!("{{not json {i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
    }
    // A broken body that names the site, from its origin, is kept whole.
    let r = app
        .client
        .post(format!("{}/v1/events", app.base))
        .header("content-type", "text/plain")
        .header("origin", ORIGIN)
        .header("user-agent", &ua)
        .body(r#"{"site": "test", "events": [{"type": "pagev"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let root = data.path().join("dlq");
    let entries = clicktrail::dlq::scan(&root).unwrap();
    assert_eq!(
        entries.len(),
        4,
        "3 sampled junk bodies and the attributed one"
    );
    let max_ua = clicktrail::config::LimitsConfig::default().max_user_agent_len;
    let mut sites = Vec::new();
    for (id, _) in entries {
        let e = clicktrail::dlq::read(&root, id).unwrap();
        assert!(
            e.origin.user_agent.len() <= max_ua,
            "{}",
            e.origin.user_agent.len()
        );
        sites.push(e.origin.site);
    }
    assert_eq!(
        sites.iter().filter(|s| *s == "test").count(),
        1,
        "{sites:?}"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("clicktrail_dlq_dropped_total{stage=\"parse\"} 47"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("dlq"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    app.shutdown().await;
}
