//! # dedupe: the intake filter of recently accepted event ids
//!
//! The rollups count with plain sums only if no event reaches ClickHouse twice. A client
//! retries a batch whose answer it lost; the collector must then answer it as accepted again
//! (idempotently) without storing its events a second time. [`RecentIds`] remembers the
//! (site, event id) of every event this collector committed to the spool within
//! `dedupe.window`; [`crate::ingest`] asks it before the spool append and drops what it knew.
//! The guarantee and its bounds, for analysts and operators: docs/delivery.md.
//!
//! Invariants:
//! - **A dropped event was committed before**: an id counts as accepted only once the spool
//!   record that holds it is committed ([`Reservation::resolve`]). Until then it is *pending*;
//!   a second request with a pending id waits for the first one's outcome (bounded by
//!   [`PENDING_WAIT`]) instead of guessing, and if the first one's append fails the id is
//!   forgotten, so the retry stores it. A request that cannot learn the outcome in time stores
//!   its events (a possible duplicate, never a loss).
//! - **Forgetting only risks a duplicate**: an id leaves the filter when its window ends or when
//!   `dedupe.max_ids` is reached; a retry after that is stored again (and collapses in
//!   `events FINAL`, the ReplacingMergeTree key ends with `event_id`).
//! - **Fair under a flood**: when the filter is full, the oldest id of the site holding the most
//!   ids goes first (the new id's own site when it holds at least its share). So a site holding
//!   fewer than `max_ids / S` ids (S = sites holding ids, at most the configured `[[sites]]`)
//!   never loses one to another site's traffic, however many new ids that site sends.
//! - **Ids are kept as 128-bit keyed hashes** (BLAKE3 with a random key per process): a
//!   collision would drop a distinct event, which needs about 2⁶⁴ ids in one site's window; the
//!   key is unknown to clients, so they cannot aim at one.
//! - After a restart the filter is seeded from the spool records still on disk that are
//!   younger than the window ([`crate::spool::scan_recent`]), so a retry after a crash is
//!   caught like one after a lost answer. Segments the spool already deleted (delivered and
//!   sealed) are not on disk: their ids are forgotten at a restart.
//!
//! Architecture invariant: this module knows ids, sites and seconds, not HTTP, rows or the
//! spool's format.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::DedupeConfig;
use crate::metrics::{Metrics, StageLabel};

/// The `stage` label values of `clicktrail_duplicates_dropped_total`: an id twice in one
/// request; an id this collector accepted within the window; rows ClickHouse already had when
/// the sink was about to resend them.
pub const STAGES: [&str; 3] = ["request", "intake", "sink"];

/// Longest a request waits for another request that holds the same ids to commit or fail.
pub const PENDING_WAIT: Duration = Duration::from_secs(5);

/// An event id as the filter keeps it: a 128-bit keyed hash.
pub type IdKey = u128;

/// Keys are uniformly random already: the table hashes them by their low bits.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

type KeySet = HashSet<IdKey, BuildHasherDefault<KeyHasher>>;
type KeyMap<V> = HashMap<IdKey, V, BuildHasherDefault<KeyHasher>>;

/// One site's ids: accepted ones in the order they were accepted, and pending ones.
#[derive(Default)]
struct SiteIds {
    accepted: KeySet,
    /// (key, accepted at, unix seconds), oldest first.
    order: VecDeque<(IdKey, u32)>,
    /// Ids of requests whose spool append has not answered yet, with the request's ticket.
    pending: KeyMap<u64>,
}

impl SiteIds {
    /// Forgets ids accepted at or before `cutoff`; returns how many.
    fn expire(&mut self, cutoff: u32) -> usize {
        let mut n = 0;
        while let Some(&(k, at)) = self.order.front() {
            if at > cutoff {
                break;
            }
            self.order.pop_front();
            self.accepted.remove(&k);
            n += 1;
        }
        n
    }

    fn evict_oldest(&mut self) -> bool {
        match self.order.pop_front() {
            Some((k, _)) => {
                self.accepted.remove(&k);
                true
            }
            None => false,
        }
    }
}

struct State {
    sites: HashMap<Arc<str>, SiteIds>,
    /// Accepted ids over all sites (pending ones are bounded by the requests in flight).
    total: usize,
    next_ticket: u64,
}

/// What the filter decided for a request's events.
pub struct Admission {
    /// Per event, in order: store it (`true`) or drop it as a duplicate.
    pub keep: Vec<bool>,
    /// Dropped: the same id earlier in the same request.
    pub in_request: usize,
    /// Dropped: accepted by this collector within the window.
    pub recent: usize,
    /// The kept ids, pending until the caller reports the append's outcome.
    pub reservation: Reservation,
}

/// The pending ids of one request. [`Reservation::resolve`] makes them accepted (the spool
/// committed them) or forgets them (it did not); dropped unresolved, they are forgotten.
pub struct Reservation {
    filter: Option<RecentIds>,
    site: Arc<str>,
    keys: Vec<IdKey>,
    ticket: u64,
    at_s: u32,
}

impl Reservation {
    pub fn resolve(mut self, committed: bool) {
        self.finish(committed);
    }

    fn finish(&mut self, committed: bool) {
        let Some(filter) = self.filter.take() else {
            return;
        };
        if self.keys.is_empty() {
            return;
        }
        filter.settle(&self.site, &self.keys, self.ticket, self.at_s, committed);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // Unknown outcome: forgetting risks a duplicate, keeping could lose the event.
        self.finish(false);
    }
}

/// The filter, cheap to clone, shared by every request of the collector.
#[derive(Clone)]
pub struct RecentIds {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    /// Wakes requests waiting for pending ids after any request settles.
    settled: tokio::sync::Notify,
    key: [u8; 32],
    window_s: u32,
    max_ids: usize,
    metrics: Metrics,
}

impl RecentIds {
    /// The filter of `[dedupe]`, or `None` when `window` is 0 (off).
    pub fn new(cfg: &DedupeConfig, metrics: Metrics) -> Option<Self> {
        if cfg.window.is_zero() {
            return None;
        }
        Some(Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    sites: HashMap::new(),
                    total: 0,
                    next_ticket: 1,
                }),
                settled: tokio::sync::Notify::new(),
                key: rand::random(),
                window_s: cfg.window.as_secs().clamp(1, u64::from(u32::MAX)) as u32,
                max_ids: cfg.max_ids,
                metrics,
            }),
        })
    }

    /// How long an accepted id is remembered.
    pub fn window(&self) -> Duration {
        Duration::from_secs(u64::from(self.inner.window_s))
    }

    /// The key of an event id (the site is kept apart).
    pub fn key(&self, id: &str) -> IdKey {
        let h = blake3::keyed_hash(&self.inner.key, id.as_bytes());
        u128::from_le_bytes(h.as_bytes()[..16].try_into().expect("16 bytes"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers an id committed at `at_s` (unix seconds), found in the spool at start.
    /// Ids older than the window are ignored.
    pub fn seed(&self, site: &str, key: IdKey, at_s: u32, now_s: u32) {
        if at_s.saturating_add(self.inner.window_s) <= now_s {
            return;
        }
        let mut st = self.lock();
        let st = &mut *st;
        let (entry, arc) = site_entry(&mut st.sites, site);
        if entry.accepted.insert(key) {
            entry.order.push_back((key, at_s));
            st.total += 1;
            let evicted = self.make_room(st, &arc);
            self.count_evicted(evicted);
        }
        self.inner.metrics.dedupe_ids.set(st.total as i64);
    }

    /// Decides which of a request's events (their keys, in order) are new, and reserves those
    /// as pending. Waits (at most [`PENDING_WAIT`]) while another request holds one of the ids
    /// pending: its outcome decides.
    pub async fn admit(&self, site: &str, keys: &[IdKey], now_s: u32) -> Admission {
        let deadline = tokio::time::Instant::now() + PENDING_WAIT;
        loop {
            let settled = self.inner.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            let force = tokio::time::Instant::now() >= deadline;
            if let Some(a) = self.try_admit(site, keys, now_s, force) {
                self.count(&a);
                return a;
            }
            let _ = tokio::time::timeout_at(deadline, settled).await;
        }
    }

    /// One look under the lock: `None` when an id is pending for another request (nothing is
    /// reserved then). With `force`, such an id is taken as new.
    fn try_admit(&self, site: &str, keys: &[IdKey], now_s: u32, force: bool) -> Option<Admission> {
        let mut st = self.lock();
        let st = &mut *st;
        let ticket = st.next_ticket;
        let (entry, site_arc) = site_entry(&mut st.sites, site);
        let expired = entry.expire(now_s.saturating_sub(self.inner.window_s));
        st.total -= expired;
        let mut keep = Vec::with_capacity(keys.len());
        let mut kept = Vec::with_capacity(keys.len());
        let (mut in_request, mut recent) = (0, 0);
        for &k in keys {
            if entry.accepted.contains(&k) {
                recent += 1;
                keep.push(false);
                continue;
            }
            match entry.pending.get(&k) {
                Some(&t) if t == ticket => {
                    in_request += 1;
                    keep.push(false);
                }
                Some(_) if !force => {
                    for k in &kept {
                        entry.pending.remove(k);
                    }
                    return None;
                }
                _ => {
                    entry.pending.insert(k, ticket);
                    kept.push(k);
                    keep.push(true);
                }
            }
        }
        st.next_ticket += 1;
        self.inner.metrics.dedupe_ids.set(st.total as i64);
        Some(Admission {
            keep,
            in_request,
            recent,
            reservation: Reservation {
                filter: Some(self.clone()),
                site: site_arc,
                keys: kept,
                ticket,
                at_s: now_s,
            },
        })
    }

    fn count(&self, a: &Admission) {
        let m = &self.inner.metrics.duplicates_dropped;
        for (stage, n) in [("request", a.in_request), ("intake", a.recent)] {
            if n > 0 {
                m.get_or_create(&StageLabel { stage }).inc_by(n as u64);
            }
        }
    }

    fn count_evicted(&self, n: usize) {
        if n > 0 {
            self.inner.metrics.dedupe_evicted.inc_by(n as u64);
        }
    }

    fn settle(&self, site: &str, keys: &[IdKey], ticket: u64, at_s: u32, committed: bool) {
        let mut evicted = 0;
        {
            let mut st = self.lock();
            let st = &mut *st;
            if let Some(site_arc) = st.sites.get_key_value(site).map(|(k, _)| k.clone()) {
                let entry = st.sites.get_mut(site).expect("looked up");
                let mut added = 0;
                for k in keys {
                    if entry.pending.get(k) == Some(&ticket) {
                        entry.pending.remove(k);
                        if committed && entry.accepted.insert(*k) {
                            entry.order.push_back((*k, at_s));
                            added += 1;
                        }
                    }
                }
                st.total += added;
                evicted = self.make_room(st, &site_arc);
            }
            self.inner.metrics.dedupe_ids.set(st.total as i64);
        }
        self.count_evicted(evicted);
        self.inner.settled.notify_waiters();
    }

    /// While over `max_ids`, forgets the oldest id of the site holding the most (`own` when it
    /// holds at least its share, which spares the scan under a flood). Returns how many.
    fn make_room(&self, st: &mut State, own: &Arc<str>) -> usize {
        let mut evicted = 0;
        if st.total <= self.inner.max_ids {
            return 0;
        }
        let holding = st
            .sites
            .values()
            .filter(|s| !s.order.is_empty())
            .count()
            .max(1);
        let share = self.inner.max_ids / holding;
        while st.total > self.inner.max_ids {
            let own_len = st.sites.get(own).map_or(0, |s| s.order.len());
            let victim = if own_len >= share.max(1) {
                own.clone()
            } else {
                match st.sites.iter().max_by_key(|(_, s)| s.order.len()) {
                    Some((k, _)) => k.clone(),
                    None => return evicted,
                }
            };
            if !st.sites.get_mut(&victim).is_some_and(SiteIds::evict_oldest) {
                return evicted;
            }
            st.total -= 1;
            evicted += 1;
        }
        evicted
    }

    /// Forgets expired ids of every site and the sites that hold nothing (a site removed by a
    /// reload, or idle); gives memory back. Called every minute.
    pub fn housekeeping(&self, now_s: u32) {
        let mut st = self.lock();
        let st = &mut *st;
        let cutoff = now_s.saturating_sub(self.inner.window_s);
        let mut expired = 0;
        for s in st.sites.values_mut() {
            expired += s.expire(cutoff);
            if s.accepted.capacity() > 4 * s.accepted.len().max(1024) {
                s.accepted.shrink_to_fit();
                s.order.shrink_to_fit();
            }
        }
        st.total -= expired;
        st.sites
            .retain(|_, s| !s.order.is_empty() || !s.pending.is_empty());
        self.inner.metrics.dedupe_ids.set(st.total as i64);
    }

    /// Ids held now (accepted, all sites).
    pub fn len(&self) -> usize {
        self.lock().total
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The site's entry, created if needed, and its shared name.
fn site_entry<'m>(
    sites: &'m mut HashMap<Arc<str>, SiteIds>,
    site: &str,
) -> (&'m mut SiteIds, Arc<str>) {
    let arc = match sites.get_key_value(site) {
        Some((k, _)) => k.clone(),
        None => {
            let k: Arc<str> = Arc::from(site);
            sites.insert(k.clone(), SiteIds::default());
            k
        }
    };
    (sites.get_mut(&*arc).expect("inserted"), arc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(window_s: u64, max_ids: usize) -> (RecentIds, Metrics) {
        let m = Metrics::new();
        let cfg = DedupeConfig {
            window: Duration::from_secs(window_s),
            max_ids,
        };
        (RecentIds::new(&cfg, m.clone()).expect("on"), m)
    }

    fn keys(f: &RecentIds, ids: &[&str]) -> Vec<IdKey> {
        ids.iter().map(|i| f.key(i)).collect()
    }

    #[tokio::test]
    async fn a_committed_id_is_dropped_until_its_window_ends_and_a_failed_one_is_not() {
        let (f, _) = filter(600, 1000);
        let k = keys(&f, &["a", "b", "a"]);
        let a = f.admit("s", &k, 1000).await;
        assert_eq!(
            (a.keep.clone(), a.in_request, a.recent),
            (vec![true, true, false], 1, 0)
        );
        a.reservation.resolve(true);
        assert_eq!(f.len(), 2);
        // The retry: everything was taken.
        let a = f.admit("s", &k[..2], 1100).await;
        assert_eq!((a.keep.clone(), a.recent), (vec![false, false], 2));
        // Another site's "a" is another event.
        let a = f.admit("t", &k[..1], 1100).await;
        assert_eq!(a.keep, vec![true]);
        // Its append failed: the retry must store it.
        a.reservation.resolve(false);
        assert_eq!(f.admit("t", &k[..1], 1101).await.keep, vec![true]);
        // Past the window the id is new again.
        assert_eq!(f.admit("s", &k[..1], 1600).await.keep, vec![true]);
        // A reservation dropped unresolved (its request died) is forgotten.
        let c = keys(&f, &["c"]);
        drop(f.admit("s", &c, 1600).await);
        assert_eq!(f.admit("s", &c, 1600).await.keep, vec![true]);
    }

    #[tokio::test]
    async fn a_request_with_a_pending_id_waits_for_its_outcome() {
        let (f, _) = filter(600, 1000);
        let k = keys(&f, &["x", "y"]);
        let first = f.admit("s", &k[..1], 10).await;
        let f2 = f.clone();
        let k2 = k.clone();
        let second = tokio::spawn(async move { f2.admit("s", &k2, 10).await.keep });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished(), "waits while x is pending");
        first.reservation.resolve(true);
        assert_eq!(second.await.unwrap(), vec![false, true]);

        let first = f.admit("s", &keys(&f, &["z"]), 10).await;
        let f2 = f.clone();
        let kz = keys(&f, &["z"]);
        let second = tokio::spawn(async move { f2.admit("s", &kz, 10).await.keep });
        tokio::time::sleep(Duration::from_millis(50)).await;
        first.reservation.resolve(false);
        assert_eq!(second.await.unwrap(), vec![true], "the first append failed");
    }

    #[tokio::test]
    async fn a_flood_on_one_site_never_evicts_a_site_within_its_share() {
        let (f, m) = filter(600, 1000);
        let small: Vec<String> = (0..100).map(|i| format!("b{i}")).collect();
        let small_keys: Vec<IdKey> = small.iter().map(|i| f.key(i)).collect();
        let a = f.admit("b", &small_keys, 100).await;
        a.reservation.resolve(true);
        for round in 0..50 {
            let flood: Vec<IdKey> = (0..200).map(|i| f.key(&format!("a{round}-{i}"))).collect();
            f.admit("a", &flood, 100 + round)
                .await
                .reservation
                .resolve(true);
        }
        assert_eq!(f.len(), 1000, "full, not over");
        assert_eq!(m.dedupe_evicted.get(), 10_000 + 100 - 1000);
        let again = f.admit("b", &small_keys, 200).await;
        assert_eq!(
            again.recent, 100,
            "every id of the small site is still known"
        );
        // The flooding site kept its newest ids, not its oldest.
        let newest = f.key("a49-199");
        let oldest = f.key("a0-0");
        assert_eq!(
            f.admit("a", &[newest, oldest], 200).await.keep,
            vec![false, true]
        );
    }

    #[tokio::test]
    async fn seeds_count_like_commits_and_housekeeping_expires() {
        let (f, m) = filter(60, 1000);
        let k = keys(&f, &["p", "q"]);
        f.seed("s", k[0], 100, 120);
        f.seed("s", k[1], 10, 120); // older than the window: ignored
        assert_eq!(f.len(), 1);
        assert_eq!(f.admit("s", &k, 120).await.keep, vec![false, true]);
        f.housekeeping(200);
        assert!(f.is_empty());
        assert_eq!(m.dedupe_ids.get(), 0);
    }
}
