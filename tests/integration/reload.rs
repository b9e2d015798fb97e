//! SIGHUP re-reads `[[sites]]` in the real binary: a new site is accepted without a restart,
//! on the same keep-alive connection, and an invalid file is refused while the old config
//! stays in force.

use std::time::Duration;

use clicktrail::config::SiteConfig;
use serde_json::json;

use crate::harness::*;

async fn post_for(client: &reqwest::Client, base: &str, site: &str, id: &str) -> (u16, String) {
    let body = json!({"site": site, "events": [pageview(id)]});
    let r = client
        .post(format!("{base}/v1/events"))
        .header("content-type", "text/plain")
        .header("origin", ORIGIN)
        .body(body.to_string())
        .send()
        .await
        .expect("the connection survives reloads");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_new_sites_and_refuses_an_invalid_file() {
    let ch = ClickHouse::start();
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(&ch, data.path());
    migrate(&config).await;
    let bin = Binary::start(&config);
    // One pooled connection for the whole test: reloads must not drop it.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();

    let (status, body) = post_for(&client, &bin.base, "late", "r0").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("unknown site key `late`"), "{body}");

    config.sites.push(SiteConfig {
        key: "late".into(),
        origins: vec!["*".into()],
        read_tokens: Vec::new(),
        keep_query_params: vec![],
    });
    std::fs::write(Binary::config_path(&config), toml_of(&config)).unwrap();
    bin.signal("HUP");
    let mut n = 0;
    eventually_some("the new site is accepted", Duration::from_secs(10), || {
        n += 1;
        let (client, base, id) = (client.clone(), bin.base.clone(), format!("r{n}"));
        async move { (post_for(&client, &base, "late", &id).await.0 == 200).then_some(()) }
    })
    .await;

    // An invalid file (a site without a key) changes nothing.
    let mut broken = config.clone();
    broken.sites.push(SiteConfig {
        key: String::new(),
        origins: vec!["*".into()],
        read_tokens: Vec::new(),
        keep_query_params: vec![],
    });
    std::fs::write(Binary::config_path(&config), toml_of(&broken)).unwrap();
    bin.signal("HUP");
    eventually_some("the refusal is counted", Duration::from_secs(10), || {
        let m = bin.metrics();
        async move {
            m.contains("clicktrail_config_reloads_total{result=\"refused\"} 1")
                .then_some(())
        }
    })
    .await;
    assert!(bin
        .metrics()
        .contains("clicktrail_config_reloads_total{result=\"applied\"} 1"));
    assert_eq!(
        post_for(&client, &bin.base, "late", "after-bad").await.0,
        200
    );
    assert_eq!(
        post_for(&client, &bin.base, "test", "still-test").await.0,
        200
    );

    // Everything acknowledged landed; the process is the one we started.
    eventually("acknowledged events are queryable", Duration::from_secs(10), || {
        ch.count("SELECT count() FROM clicktrail.events WHERE event_id IN ('after-bad', 'still-test')")
            == 2
    })
    .await;
    let mut bin = bin;
    assert!(bin.sigterm().success(), "SIGHUP did not end the process");
}
