//! # Live view: a site's events as they are acknowledged, fanned out to subscribers
//!
//! [`crate::ingest::Ingest::accept`] calls [`Live::publish`] after the spool commit, with the
//! events it is about to acknowledge; `GET /v1/live` (`src/http/live.rs`) holds a
//! [`Subscription`] per connection and writes its messages as Server-Sent Events.
//!
//! Invariants:
//! - **The publisher never waits for a subscriber.** Each subscriber has its own bounded queue
//!   (`query.live_buffer` events); [`Live::publish`] only `try_send`s. A subscriber whose queue
//!   is full is dropped at once (its stream ends with an `event: dropped`), counted in
//!   `clicktrail_live_dropped_subscribers_total`; ingestion goes on at full speed.
//! - **Nothing is serialised without a subscriber of the site**: with no subscriber at all,
//!   publishing costs one atomic load.
//! - **Beside the durable path, never on it**: a live message is a copy of what was
//!   acknowledged; losing it (a dropped or slow client, a restart) loses nothing.
//! - Messages carry no IP address, user agent or visitor id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::metrics::Metrics;
use crate::row::EventRow;

/// One event as the live view shows it: a JSON object (see docs/api.md, "Live view").
pub type Message = Arc<str>;

/// The fan-out hub, cheap to clone.
#[derive(Clone)]
pub struct Live {
    inner: Arc<Inner>,
}

struct Inner {
    subscribers: Mutex<HashMap<String, Vec<Subscriber>>>,
    /// Subscribers in the map, read without the lock by the publisher's fast path.
    count: AtomicUsize,
    next_id: AtomicU64,
    buffer: usize,
    max_subscribers: usize,
    metrics: Metrics,
    closed: watch::Sender<bool>,
}

struct Subscriber {
    id: u64,
    tx: mpsc::Sender<Message>,
    dropped: Arc<AtomicBool>,
}

/// Why a subscription is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubscribeError {
    #[error("{0} live subscribers already (query.live_max_subscribers)")]
    TooMany(usize),
    #[error("the collector is shutting down")]
    Closed,
}

/// One subscriber's end: its queue, and whether the publisher dropped it.
pub struct Subscription {
    pub rx: mpsc::Receiver<Message>,
    dropped: Arc<AtomicBool>,
    closed: watch::Receiver<bool>,
    _guard: Guard,
}

impl Subscription {
    /// The publisher dropped this subscriber because its queue was full.
    pub fn was_dropped(&self) -> bool {
        self.dropped.load(Ordering::Acquire)
    }

    /// Resolves when the collector shuts down (the stream must end so that HTTP can stop).
    pub async fn closed(&mut self) {
        let _ = self.closed.wait_for(|c| *c).await;
    }

    /// The next message; `None` when the publisher dropped this subscriber (after what was
    /// buffered) or the collector is shutting down.
    pub async fn next(&mut self) -> Option<Message> {
        tokio::select! {
            m = self.rx.recv() => m,
            _ = self.closed.wait_for(|c| *c) => None,
        }
    }
}

/// Removes the subscriber when its connection ends, and counts it out of the gauge.
struct Guard {
    live: Live,
    site: String,
    id: u64,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.live.remove(&self.site, self.id);
        self.live.inner.metrics.live_subscribers.dec();
    }
}

impl Live {
    pub fn new(buffer: usize, max_subscribers: usize, metrics: Metrics) -> Self {
        Self {
            inner: Arc::new(Inner {
                subscribers: Mutex::new(HashMap::new()),
                count: AtomicUsize::new(0),
                next_id: AtomicU64::new(0),
                buffer: buffer.max(1),
                max_subscribers,
                metrics,
                closed: watch::channel(false).0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Subscriber>>> {
        self.inner
            .subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// A new subscriber of `site`'s events.
    pub fn subscribe(&self, site: &str) -> Result<Subscription, SubscribeError> {
        if *self.inner.closed.borrow() {
            return Err(SubscribeError::Closed);
        }
        let mut map = self.lock();
        let n = self.inner.count.load(Ordering::Relaxed);
        if n >= self.inner.max_subscribers {
            return Err(SubscribeError::TooMany(n));
        }
        let (tx, rx) = mpsc::channel(self.inner.buffer);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let dropped = Arc::new(AtomicBool::new(false));
        map.entry(site.to_string()).or_default().push(Subscriber {
            id,
            tx,
            dropped: dropped.clone(),
        });
        self.inner.count.fetch_add(1, Ordering::Relaxed);
        self.inner.metrics.live_subscribers.inc();
        Ok(Subscription {
            rx,
            dropped,
            closed: self.inner.closed.subscribe(),
            _guard: Guard {
                live: self.clone(),
                site: site.to_string(),
                id,
            },
        })
    }

    fn remove(&self, site: &str, id: u64) {
        let mut map = self.lock();
        if let Some(list) = map.get_mut(site) {
            let before = list.len();
            list.retain(|s| s.id != id);
            let gone = before - list.len();
            self.inner.count.fetch_sub(gone, Ordering::Relaxed);
            if list.is_empty() {
                map.remove(site);
            }
        }
    }

    /// Hands acknowledged events of one site to its subscribers. Never blocks on them: a
    /// subscriber whose queue is full is dropped.
    pub fn publish(&self, site: &str, events: &[EventRow<'_>]) {
        if events.is_empty() || self.inner.count.load(Ordering::Relaxed) == 0 {
            return;
        }
        if !self.lock().contains_key(site) {
            return;
        }
        // Serialised once, outside the lock, shared by every subscriber of the site.
        let messages: Vec<Message> = events.iter().map(message).collect();
        let mut map = self.lock();
        let Some(list) = map.get_mut(site) else {
            return;
        };
        let before = list.len();
        let metrics = &self.inner.metrics;
        list.retain(|s| {
            for m in &messages {
                match s.tx.try_send(m.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        s.dropped.store(true, Ordering::Release);
                        metrics.live_dropped.inc();
                        return false;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                }
            }
            true
        });
        // Every subscriber kept got every message.
        metrics
            .live_events
            .inc_by((list.len() * messages.len()) as u64);
        let gone = before - list.len();
        self.inner.count.fetch_sub(gone, Ordering::Relaxed);
        if list.is_empty() {
            map.remove(site);
        }
    }

    /// Ends every subscription (shutdown): their streams finish, so HTTP can stop.
    pub fn close(&self) {
        self.inner.closed.send_replace(true);
    }
}

/// The live view's JSON of one event: what an analyst watching the site needs, no IP, user
/// agent or visitor id.
pub fn message(e: &EventRow<'_>) -> Message {
    let ts = i64::from(e.ts) * 1000 + i64::from(e.ts_ms);
    let mut v = json!({
        "id": e.event_id,
        "type": e.kind,
        "ts": ts,
        "url": e.url,
        "path": e.path,
        "session": e.session_id,
        "pv": e.pageview_id,
        "device_class": e.device_class,
        "browser": e.browser,
        "os": e.os,
        "vw": e.viewport_w,
        "vh": e.viewport_h,
    });
    let o = v.as_object_mut().expect("an object");
    match e.kind.as_ref() {
        "pageview" => {
            o.insert("title".into(), json!(e.title));
            o.insert("referrer".into(), json!(e.referrer));
        }
        "click" => {
            o.insert("x".into(), json!(e.x));
            o.insert("y".into(), json!(e.y));
            o.insert("dw".into(), json!(e.doc_w));
            o.insert("dh".into(), json!(e.doc_h));
            o.insert("selector".into(), json!(e.selector));
            o.insert("text".into(), json!(e.text));
            o.insert("rage".into(), json!(e.rage != 0));
            o.insert("dead".into(), json!(e.dead != 0));
            o.insert("error".into(), json!(e.error != 0));
        }
        "scroll" => {
            o.insert("depth".into(), json!(e.scroll_depth));
        }
        "engagement" => {
            o.insert("duration_ms".into(), json!(e.duration_ms));
        }
        "custom" => {
            o.insert("name".into(), json!(e.name));
            o.insert("props".into(), json!(e.props));
        }
        _ => {}
    }
    Arc::from(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::Event;

    fn click(site: &str) -> Event {
        Event {
            event_id: "e1".into(),
            site: site.to_string().into(),
            kind: "click".into(),
            ip: "10.0.0.0".into(),
            visitor_id: "v-secret".into(),
            user_agent: "UA".into(),
            selector: "#buy".into(),
            ..Default::default()
        }
    }

    #[test]
    fn message_has_no_ip_user_agent_or_visitor() {
        let m = message(&click("s"));
        let v: serde_json::Value = serde_json::from_str(&m).unwrap();
        assert_eq!(v["type"], "click");
        assert_eq!(v["selector"], "#buy");
        assert!(!m.contains("10.0.0.0") && !m.contains("v-secret") && !m.contains("UA"));
    }

    #[tokio::test]
    async fn a_full_subscriber_is_dropped_and_others_keep_receiving() {
        let metrics = Metrics::new();
        let live = Live::new(2, 10, metrics.clone());
        let mut slow = live.subscribe("s").unwrap();
        let mut fast = live.subscribe("s").unwrap();
        let other = live.subscribe("t").unwrap();
        for _ in 0..5 {
            live.publish("s", &[click("s")]);
            assert!(fast.rx.recv().await.is_some());
        }
        assert!(slow.was_dropped());
        assert!(!fast.was_dropped());
        // The two buffered messages, then the end of the stream.
        assert!(slow.rx.recv().await.is_some());
        assert!(slow.rx.recv().await.is_some());
        assert!(slow.rx.recv().await.is_none());
        assert_eq!(metrics.live_dropped.get(), 1);
        assert_eq!(metrics.live_subscribers.get(), 3);
        drop(other);
        drop(slow);
        assert_eq!(metrics.live_subscribers.get(), 1);
        assert_eq!(live.inner.count.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn limits_and_shutdown() {
        let live = Live::new(2, 1, Metrics::new());
        let mut a = live.subscribe("s").unwrap();
        assert_eq!(live.subscribe("s").err(), Some(SubscribeError::TooMany(1)));
        live.close();
        a.closed().await;
        assert_eq!(live.subscribe("s").err(), Some(SubscribeError::Closed));
    }
}
