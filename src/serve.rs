//! `clicktrail serve`: builds every component once, connects them, and shuts them down in
//! order.
//!
//! Shutdown order (each step waits for the one before): stop accepting HTTP and finish the
//! requests in flight (each still gets its commit) → the last spool handle drops, the writer
//! commits and stops → the sink delivers what is left, bounded by `sink.shutdown_timeout`;
//! whatever it cannot deliver stays on disk and is delivered after the next start.

use std::future::Future;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use crate::config::Config;
use crate::dlq::DeadLetters;
use crate::http::{router, split_routers, AppState};
use crate::metrics::Metrics;
use crate::sink::Sink;
use crate::spool::Spool;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Lock(#[from] crate::datadir::LockError),
    #[error("cannot open the spool in {dir}: {source}")]
    Spool { dir: String, source: std::io::Error },
    #[error("cannot open the dead-letter store in {dir}: {source}")]
    DeadLetters { dir: String, source: std::io::Error },
    #[error("cannot start the HTTP server: {0}")]
    Http(std::io::Error),
    #[error("the sink stopped: {0}")]
    Sink(std::io::Error),
}

/// Reads the configuration again, as at start (file + `CLICKTRAIL_*` environment, validated).
pub type Reload = Box<dyn Fn() -> Result<Config, crate::config::ConfigError> + Send + Sync>;

/// Serves on an already-bound listener until `shutdown` resolves, then drains.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    run_with_reload(config, listener, shutdown, None).await
}

/// [`run`], and on SIGHUP (when `reload` is given) re-reads the config and applies its
/// `[[sites]]` (keys, origins) without dropping a connection or an event. An invalid new
/// config is refused with the key named in the log, and the running one stays in force.
pub async fn run_with_reload(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    reload: Option<Reload>,
) -> Result<(), ServeError> {
    // Before anything touches the data directory: one process per directory.
    let _lock = crate::datadir::lock(&config.data_dir)?;
    let metrics = Metrics::new();
    let clock = crate::clock::Clock::system();
    let spool_dir = config.spool_dir();
    let spool = Spool::open_with_clock(&spool_dir, &config.spool, &metrics, clock.clone())
        .map_err(|source| ServeError::Spool {
            dir: spool_dir.display().to_string(),
            source,
        })?;
    let r = &spool.report;
    tracing::info!(
        segments = r.segments,
        next_lsn = r.next_lsn,
        delivered = r.checkpoint.delivered,
        pending = r.next_lsn.saturating_sub(r.checkpoint.delivered),
        truncated_bytes = r.truncated_bytes,
        "spool recovered"
    );

    let dlq = DeadLetters::open(config.dlq_dir(), config.dlq.max_bytes, metrics.clone())
        .map_err(|source| ServeError::DeadLetters {
            dir: config.dlq_dir().display().to_string(),
            source,
        })?
        .with_quotas(crate::dlq::Quotas::from_config(&config.dlq))
        .with_clock(clock.clone());
    let (sink, sink_status) = Sink::new(
        &config.clickhouse,
        config.sink.clone(),
        spool.consumer,
        dlq.clone(),
        metrics.clone(),
    );
    let slow = crate::slow::SlowCalls::new(&config.observability, metrics.clone());
    let sink = sink.with_slow_calls(slow.clone());
    let sink = sink.with_restamp_after(config.compactor.insert_settle / 2);
    // A request is answered within http.request_timeout of its records being stored (the 5 s
    // are for the response's way out): older pending records were answered before the stop.
    let unanswered = crate::sink::UnansweredTail::after_recovery(
        &spool.report,
        config.http.request_timeout + std::time::Duration::from_secs(5),
    );
    let sink = sink.with_unanswered_tail(unanswered);
    let (fatal_tx, fatal_rx) = oneshot::channel::<std::io::Error>();
    let mut sink_task = tokio::spawn(sink.run());

    let (stop_tx, stop_rx) = watch::channel(false);
    let (probe_tx, probe_rx) = watch::channel(Err(crate::clickhouse::PingError::NotYet));
    let (topology_tx, topology_rx) = watch::channel(None);
    let probe = tokio::spawn(crate::freshness::run_probe(
        crate::clickhouse::client(&config.clickhouse),
        config.clickhouse.cluster.clone(),
        crate::freshness::RemoteAuth::new(&config.clickhouse),
        config.clickhouse.probe_interval,
        config.clickhouse.timeout,
        metrics.clone(),
        probe_tx,
        topology_tx,
        stop_rx.clone(),
    ));
    let lag = tokio::spawn(crate::freshness::run_lag(
        metrics.clone(),
        sink_status.clone(),
        clock.clone(),
        stop_rx.clone(),
    ));
    let compactor = if config.compactor.enabled {
        match crate::compactor::Compactor::new(
            &config.clickhouse,
            config.compactor.clone(),
            &config.data_dir,
            metrics.clone(),
        )
        .map(|c| c.with_clock(clock.clone()).with_slow_calls(slow.clone()))
        {
            Ok(c) => {
                tracing::info!(archive = %c.archive_url(), hot_days = config.compactor.hot_days, "compactor enabled");
                Some(tokio::spawn(c.run(stop_rx)))
            }
            Err(e) => {
                // Archiving can wait; ingestion must not. Alerted via compactor metrics.
                metrics.compactor_failures.inc();
                tracing::error!(error = %e, "compactor disabled: cannot open the archive");
                None
            }
        }
    } else {
        None
    };

    // The admin routes and /metrics on a listener of their own, if configured; the admin file
    // names whichever listener serves them.
    let admin_listener = match config.admin.listen {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
            ServeError::Http(std::io::Error::new(
                e.kind(),
                format!("cannot listen on {addr} (key `admin.listen`): {e}"),
            ))
        })?),
        None => None,
    };
    let local = match &admin_listener {
        Some(l) => l.local_addr(),
        None => listener.local_addr(),
    }
    .map_err(ServeError::Http)?;
    let admin_host = if local.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        local.ip().to_string()
    };
    let admin_token = crate::http::admin::write_admin_file(
        &config.data_dir,
        format!("http://{admin_host}:{}", local.port()),
    )
    .map_err(ServeError::Http)?;
    // The canary holds a spool handle, so it must stop before the writer can: its own signal.
    let (canary_stop_tx, canary_stop_rx) = watch::channel(false);
    let canary = (!config.freshness.canary_interval.is_zero()).then(|| {
        tokio::spawn(crate::freshness::run_canary(
            spool.handle.clone(),
            crate::clickhouse::client(&config.clickhouse),
            config.clickhouse.database.clone(),
            config.freshness.canary_interval,
            metrics.clone(),
            clock.clone(),
            canary_stop_rx.clone(),
        ))
    });
    // On a cluster, one canary per shard, read on each replica (the probe names them).
    let shard_canaries = (!config.freshness.canary_interval.is_zero()
        && !config.clickhouse.cluster.is_empty())
    .then(|| {
        tokio::spawn(crate::freshness::run_shard_canaries(
            spool.handle.clone(),
            crate::clickhouse::client(&config.clickhouse),
            config.clickhouse.database.clone(),
            crate::freshness::RemoteAuth::new(&config.clickhouse),
            config.freshness.canary_interval,
            metrics.clone(),
            clock.clone(),
            topology_rx,
            canary_stop_rx,
        ))
    });
    let ingest = crate::ingest::Ingest::new(&config, spool.handle, dlq, metrics.clone());
    // Before HTTP listens: a retry after a crash must find the ids it sent before it.
    {
        let (ingest, dir, now_ms) = (ingest.clone(), spool_dir.clone(), clock.now_ms());
        let started = std::time::Instant::now();
        match tokio::task::spawn_blocking(move || ingest.seed_recent_ids(&dir, now_ms)).await {
            Ok(Ok(ids)) => tracing::info!(
                ids,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "intake filter seeded from the spool"
            ),
            // Only the filter is weaker (a retry may be stored twice); ingestion goes on.
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot seed the intake filter from the spool")
            }
            Err(e) => tracing::warn!(error = %e, "cannot seed the intake filter from the spool"),
        }
    }
    let reloader = reload.map(|r| {
        tokio::spawn(reload_on_sighup(
            r,
            config.clone(),
            ingest.clone(),
            metrics.clone(),
            canary_stop_tx.subscribe(),
        ))
    });

    let metrics_http = metrics.clone();
    let state = AppState::new(
        &config,
        ingest,
        clock,
        metrics,
        (sink_status, probe_rx),
        Some(admin_token),
    )
    .map_err(ServeError::Http)?;
    let housekeeping = tokio::spawn(limits_housekeeping(
        state.clone(),
        canary_stop_tx.subscribe(),
    ));
    let live = state.live().clone();
    let (app, admin_app) = match &admin_listener {
        Some(_) => {
            let (public, admin) = split_routers(state);
            (public, Some(admin))
        }
        None => (router(state), None),
    };
    tracing::info!(listen = %listener.local_addr().map_err(ServeError::Http)?, admin = %local, "collector listening");

    // The sink must not die silently while HTTP keeps acknowledging into a spool nobody drains.
    let (sink_done_tx, sink_done_rx) = oneshot::channel();
    let watcher = tokio::spawn(async move {
        let result = (&mut sink_task).await;
        if let Ok(Err(e)) = &result {
            tracing::error!(error = %e, "sink failed; shutting down");
            let _ = fatal_tx.send(std::io::Error::new(e.kind(), e.to_string()));
        }
        let _ = sink_done_tx.send(result);
    });
    let mut fatal_rx = fatal_rx;
    let (http_stop_tx, http_stop_rx) = watch::channel(false);
    let stop_http = async move {
        tokio::select! {
            _ = shutdown => {}
            _ = &mut fatal_rx => {}
        }
        tracing::info!("shutting down: no new requests");
        // Live streams never end by themselves; graceful shutdown waits for every connection.
        live.close();
        let _ = http_stop_tx.send(true);
    };
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let public = crate::http::server::serve(
        listener,
        app,
        &config.server,
        metrics_http.clone(),
        stopped(http_stop_rx.clone()),
    );
    let admin = async {
        match (admin_listener, admin_app) {
            (Some(l), Some(a)) => {
                crate::http::server::serve(
                    l,
                    a,
                    &config.server,
                    metrics_http,
                    stopped(http_stop_rx),
                )
                .await
            }
            _ => Ok(()),
        }
    };
    let ((), public, admin) = tokio::join!(stop_http, public, admin);
    public.and(admin).map_err(ServeError::Http)?;

    let _ = canary_stop_tx.send(true);
    let _ = housekeeping.await;
    for c in [canary, shard_canaries].into_iter().flatten() {
        let _ = c.await;
    }
    // The reloader holds the use case and with it a spool handle: it stops before the writer.
    if let Some(r) = reloader {
        let _ = r.await;
    }
    // Every handle is gone with the router and the canary: the writer commits what it has and
    // stops.
    let writer = spool.writer;
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    tracing::info!("spool writer stopped; draining the sink");

    let deadline = config.sink.shutdown_timeout;
    let result = match tokio::time::timeout(deadline, sink_done_rx).await {
        Ok(Ok(Ok(Ok(())))) => Ok(()),
        Ok(Ok(Ok(Err(e)))) => Err(ServeError::Sink(e)),
        Ok(Ok(Err(join))) => Err(ServeError::Sink(std::io::Error::other(join.to_string()))),
        Ok(Err(_)) => Ok(()),
        Err(_) => {
            watcher.abort();
            tracing::warn!(?deadline, "sink could not deliver everything before the deadline; the rest stays in the spool for the next start");
            Ok(())
        }
    };
    let _ = stop_tx.send(true);
    let _ = tokio::join!(probe, lag);
    if let Some(c) = compactor {
        // A run in progress is abandoned at a safe point: every step is resumable.
        c.abort();
    }
    tracing::info!("stopped");
    result
}

/// On every SIGHUP: reload, validate, apply `[[sites]]`; an invalid config changes nothing.
async fn reload_on_sighup(
    reload: Reload,
    mut current: Config,
    ingest: crate::ingest::Ingest,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    use crate::metrics::ResultLabel;
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; config reload is off");
            return;
        }
    };
    loop {
        tokio::select! {
            r = hup.recv() => if r.is_none() { return },
            _ = stop.changed() => return,
        }
        // A small file read: cheap enough for the async worker, and rare.
        let result = reload();
        match result {
            Ok(new) => {
                let needs_restart = restart_only_changes(&current, &new);
                ingest.replace_sites(&new.sites);
                metrics
                    .config_reloads
                    .get_or_create(&ResultLabel { result: "applied" })
                    .inc();
                tracing::info!(
                    sites = new.sites.len(),
                    ?needs_restart,
                    "config reloaded: [[sites]] applied"
                );
                current = new;
            }
            Err(e) => {
                metrics
                    .config_reloads
                    .get_or_create(&ResultLabel { result: "refused" })
                    .inc();
                tracing::error!(error = %e, "config reload refused; the running config stays in force");
            }
        }
    }
}

/// Top-level keys whose change a reload does not apply (only `[[sites]]` is reloaded).
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let (Ok(a), Ok(b)) = (serde_json::to_value(old), serde_json::to_value(new)) else {
        return Vec::new();
    };
    let mut changed = Vec::new();
    for key in [
        "listen",
        "data_dir",
        "log",
        "http",
        "dedupe",
        "limits",
        "privacy",
        "clickhouse",
        "spool",
        "sink",
        "dlq",
        "compactor",
        "freshness",
        "server",
        "rate_limit",
        "bots",
        "admin",
    ] {
        if a.get(key) != b.get(key) {
            changed.push(key);
        }
    }
    changed
}

/// Every minute, drops rate-limit state of clients back at a full burst (bounded memory).
async fn limits_housekeeping(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tick.tick() => state.housekeeping(),
            _ = stop.changed() => return,
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
