//! The sink's drain of a backlog: batches grow while records wait behind them (up to
//! `sink.max_batch_rows`), every acknowledged event lands exactly once, and once the backlog is
//! gone batches are cut small again.

use std::time::Duration;

use crate::harness::*;

fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_drains_in_growing_batches_exactly_once() {
    let ch = ClickHouse::start();
    let data = tempfile::tempdir().unwrap();
    let mut cfg = test_config(&ch, data.path());
    cfg.sink.batch_rows = 100;
    cfg.sink.max_batch_rows = 800;
    cfg.clickhouse.timeout = Duration::from_secs(60);
    migrate(&cfg).await;
    let app = App::spawn(cfg).await;

    // 3,000 events pile up in the spool while ClickHouse does not answer.
    ch.pause(true);
    for b in 0..60 {
        let events = (0..50).map(|i| pageview(&format!("e-{b}-{i}"))).collect();
        let (s, body) = app.post(&batch(events)).await;
        assert_eq!(s, 200, "{body}");
    }
    ch.pause(false);
    // Rows are visible before the insert's answer reaches the sink: wait for its count.
    let m = eventually_some(
        "the backlog is inserted",
        Duration::from_secs(60),
        || async {
            let m = app.metrics().await;
            (counter(&m, "clicktrail_sink_rows_inserted_total") >= 3000).then_some(m)
        },
    )
    .await;
    let inserts = counter(&m, "clicktrail_sink_inserts_total");
    // 100-row batches would take 30 inserts; growing ones 100, 200, 400, 800, 800, ... about 8
    // (the first, cut while the server was paused, may be smaller).
    assert!(inserts <= 12, "{inserts} inserts for 3,000 rows\n{m}");
    assert_eq!(counter(&m, "clicktrail_sink_rows_inserted_total"), 3000);
    assert_eq!(
        ch.count("SELECT uniqExact(event_id) FROM clicktrail.events"),
        3000
    );
    assert_eq!(ch.count("SELECT count() FROM clicktrail.events"), 3000);
    app.shutdown().await;
}
