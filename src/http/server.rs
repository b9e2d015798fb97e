//! The accept loop: hyper's HTTP/1 server with its timer, so that the header read timeout
//! holds (`axum::serve` sets no timer, and without one hyper waits for headers forever), an
//! idle keep-alive timeout, and a cap on open connections.
//!
//! Invariants:
//! - At most `server.max_connections` connections are served at once; one more is answered
//!   with a bare 503 (if its socket takes it without waiting) and closed at accept, and the
//!   open ones are not affected.
//! - A connection waiting for request headers longer than `server.header_read_timeout`, or
//!   idle (no request in flight) longer than `server.keep_alive_timeout`, is closed.
//! - On shutdown no connection is accepted any more; each open one finishes the request it is
//!   serving (its answer still waits for the spool commit), then closes.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::config::ServerConfig;
use crate::metrics::Metrics;

const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// Serves `app` on `listener` until `shutdown` resolves, then lets open connections finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    cfg: &ServerConfig,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .keep_alive(true);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: wait instead of spinning; the
                    // listener itself is fine.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        while conns.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.http_connections_refused.inc();
            // Best effort and never waiting: the client learns why, then the socket closes.
            let _ = stream.try_write(REFUSAL);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            app: app.clone(),
            builder: builder.clone(),
            keep_alive: cfg.keep_alive_timeout,
            metrics: metrics.clone(),
            stop: stop_rx.clone(),
        };
        conns.spawn(async move {
            let _slot = slot;
            conn.run(stream, remote).await;
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while conns.join_next().await.is_some() {}
    Ok(())
}

struct Connection {
    app: Router,
    builder: Arc<hyper::server::conn::http1::Builder>,
    keep_alive: Duration,
    metrics: Metrics,
    stop: watch::Receiver<bool>,
}

/// Requests of one connection in flight, and when the last one ended.
struct Activity {
    in_flight: AtomicUsize,
    last_done: Mutex<Instant>,
}

struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.last_done.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Connection {
    async fn run(mut self, stream: TcpStream, remote: SocketAddr) {
        self.metrics.http_connections_open.inc();
        let activity = Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            last_done: Mutex::new(Instant::now()),
        });
        let app = self.app.clone();
        let act = activity.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(remote));
            act.in_flight.fetch_add(1, Ordering::AcqRel);
            let guard = InFlight(act.clone());
            let app = app.clone();
            async move {
                let resp = app.oneshot(req).await;
                drop(guard);
                Ok::<_, Infallible>(resp.unwrap_or_else(|never| match never {}))
            }
        });
        let conn = self.builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(conn);
        let mut closing = false;
        let last_done = || *activity.last_done.lock().unwrap_or_else(|p| p.into_inner());
        let mut check_at = last_done() + self.keep_alive;
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, %remote, "connection ended with an error");
                    }
                    break;
                }
                _ = tokio::time::sleep_until(check_at), if !closing => {
                    if activity.in_flight.load(Ordering::Acquire) > 0 {
                        // Busy (perhaps waiting for the spool): not idle; look again later.
                        check_at = Instant::now() + self.keep_alive;
                    } else if last_done().elapsed() >= self.keep_alive {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    } else {
                        check_at = last_done() + self.keep_alive;
                    }
                }
                _ = self.stop.changed(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
        self.metrics.http_connections_open.dec();
    }
}
