//! # ingest: the use case "accept a batch of events for a site"
//!
//! The transports call it: the HTTP handler of `POST /v1/events` ([`Ingest::accept`]) with a
//! decoded body and what it knows of the request ([`Meta`]), and the dead-letter replay
//! ([`Ingest::validate`] + [`Ingest::commit`]). Here live, once: the envelope parse, the site
//! and origin policy, the batch limit, per-event validation, dead letters for refused input,
//! the metrics of accepted and rejected events, and the spool append.
//!
//! Invariants:
//! - [`Ingest::accept`] returns only after every accepted event is committed to the spool: its
//!   `Ok` is the acknowledgement.
//! - [`Ingest::accept`] hands the committed events to the live view ([`Live::publish`]),
//!   which never waits for a subscriber.
//! - One bad event never fails its batch: it is listed in [`Answer::rejected`] with its index,
//!   and dead-lettered (before the answer) with the reason the client saw.
//! - Dead letters of refused input cannot be used to fill the store: an unparseable body is
//!   kept only when it names a configured site (read leniently) that accepts its origin, or as
//!   a rate-limited sample (`dlq.unattributed_parse_per_minute`); the user agent kept with any
//!   entry is cut to `limits.max_user_agent_len`; and the store gives refused input its own
//!   quotas ([`crate::dlq`]).
//! - A site over `rate_limit.per_site_*` is refused before validation.
//! - A request whose browser opted out (`Sec-GPC: 1`, `DNT: 1`, with
//!   `privacy.honor_do_not_track`) or whose User-Agent is a known bot (`bots.action = "drop"`)
//!   stores nothing, not even a dead letter: it is answered with [`Answer::dropped`] and
//!   counted (`clicktrail_events_dropped_total`).
//! - Dead letters keep no more of the User-Agent than a row does ([`Validator::stored_agent`]).
//! - An event whose (site, id) this collector committed within `dedupe.window`, or whose id
//!   came earlier in the same request, is answered as accepted and not appended again
//!   ([`crate::dedupe`]): a client retry is idempotent. Its id is reserved before the append
//!   and counts as accepted only once the append committed; the append and that outcome run on
//!   a task of their own, so a request dropped mid-way (client gone, timeout) still records
//!   the truth. Dead-letter replays bypass the filter: an insert dead letter's ids were
//!   accepted once but never reached ClickHouse.
//!
//! Architecture invariant: this module knows nothing of HTTP (no status codes, headers or
//! bodies); `http::error` maps [`IngestError`] to answers.
//!
//! (Over 500 lines: the one use case with its policies, rate limits and dead-letter rules, plus
//! their tests.)

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::{Config, SiteConfig};
use crate::dlq::{DeadLetters, NewEntry, Origin, Stage};
use crate::event::{
    Event, EventRow, EventType, ParsedBatch, RawBatch, Rejection, RequestContext, Validator,
};
use crate::live::Live;
use crate::metrics::{Metrics, ReasonLabel, TypeLabel};
use crate::spool::{Lsn, SpoolError, SpoolHandle};

/// What a transport knows about one request besides its body.
#[derive(Debug, Clone)]
pub struct Meta {
    pub received_at_ms: i64,
    pub user_agent: String,
    pub client_ip: Option<IpAddr>,
    /// The `Origin` the browser declared, if any.
    pub origin: Option<String>,
    /// The request comes from a page the collector served itself (the demo page).
    pub same_origin: bool,
    /// The browser asked not to be tracked (`Sec-GPC: 1` or `DNT: 1`).
    pub do_not_track: bool,
}

/// Why a whole batch is refused.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("field {0}: required in the batch envelope {{\"site\": KEY, \"events\": [...]}}")]
    MissingEnvelopeField(&'static str),
    #[error("unknown site key `{0}`")]
    UnknownSite(String),
    #[error("origin `{origin}` is not allowed to send events for site `{site}`")]
    OriginNotAllowed { origin: String, site: String },
    #[error("too many events: {count} in one batch, at most {limit}")]
    TooManyEvents { count: usize, limit: usize },
    #[error("rate limit of the site reached")]
    SiteRateLimited { retry_after: std::time::Duration },
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

impl IngestError {
    /// The body could not be read as a batch at all (counted as `malformed`).
    pub fn is_malformed(&self) -> bool {
        matches!(
            self,
            IngestError::MalformedJson(_) | IngestError::MissingEnvelopeField(_)
        )
    }
}

/// One refused event of an accepted batch, as the client sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rejected {
    pub index: usize,
    pub error: String,
}

/// The answer to a batch: how many events are now durable, and which were refused.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Answer {
    pub accepted: usize,
    pub rejected: Vec<Rejected>,
    /// Events not stored on purpose: the browser asked not to be tracked, or a bot sent them
    /// (`privacy.honor_do_not_track`, `bots.action = "drop"`). Absent when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A batch after validation.
pub struct Validated {
    pub accepted: Vec<Event>,
    pub rejected: Vec<(usize, Rejection)>,
}

impl Validated {
    /// The reason recorded with the dead letter of the rejected events, and its class.
    pub fn failure(&self) -> Option<(String, &'static str)> {
        failure(&self.rejected)
    }
}

/// The reason recorded with the dead letter of rejected events, and its class.
fn failure(rejected: &[(usize, Rejection)]) -> Option<(String, &'static str)> {
    let (_, first) = rejected.first()?;
    Some((
        format!("{} event(s) failed validation: {first}", rejected.len()),
        first.class(),
    ))
}

/// Who hands events to [`Ingest::commit`]; decides which counter they add to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Client,
    Replay,
}

struct SiteOrigins {
    any: bool,
    origins: HashSet<String>,
    /// `[[sites]] keep_query_params`: reloaded with the rest of the site.
    keep_query_params: Arc<[String]>,
}

/// The `[[sites]]` of the running config: which keys exist and which origins may post.
/// Replaced whole on a config reload (SIGHUP); a request sees either the old or the new one.
struct SitePolicy {
    sites: HashMap<String, SiteOrigins>,
    all_origins: HashSet<String>,
    any_origin: bool,
}

impl SitePolicy {
    fn new(sites: &[SiteConfig]) -> Self {
        let mut map = HashMap::new();
        let mut all_origins = HashSet::new();
        let mut any_origin = false;
        for s in sites {
            let any = s.origins.iter().any(|o| o == "*");
            any_origin |= any;
            let origins: HashSet<String> =
                s.origins.iter().filter(|o| *o != "*").cloned().collect();
            all_origins.extend(origins.iter().cloned());
            map.insert(
                s.key.clone(),
                SiteOrigins {
                    any,
                    origins,
                    keep_query_params: s.keep_query_params.clone().into(),
                },
            );
        }
        Self {
            sites: map,
            all_origins,
            any_origin,
        }
    }
}

/// The use case, cheap to clone and shared by all handlers.
#[derive(Clone)]
pub struct Ingest {
    inner: Arc<Inner>,
}

struct Inner {
    sites: RwLock<Arc<SitePolicy>>,
    max_events: usize,
    keep_unparseable: bool,
    validator: Validator,
    spool: SpoolHandle,
    dlq: DeadLetters,
    metrics: Metrics,
    max_user_agent_len: usize,
    honor_do_not_track: bool,
    bot_action: crate::config::BotAction,
    per_site: crate::ratelimit::KeyedLimit<String>,
    /// Unparseable bodies that name no site this collector takes: sampled, not all kept.
    unattributed: Option<governor::DefaultDirectRateLimiter>,
    live: Live,
    /// The intake filter of recently accepted ids (`None`: `dedupe.window = "0s"`).
    recent: Option<crate::dedupe::RecentIds>,
}

impl Ingest {
    pub fn new(config: &Config, spool: SpoolHandle, dlq: DeadLetters, metrics: Metrics) -> Self {
        Self {
            inner: Arc::new(Inner {
                sites: RwLock::new(Arc::new(SitePolicy::new(&config.sites))),
                max_events: config.http.max_events_per_batch,
                keep_unparseable: config.dlq.keep_unparseable_bodies,
                validator: Validator::new(config.limits.clone(), config.privacy.clone())
                    .with_salts(crate::event::Salts::persistent(
                        config.salts_dir(),
                        config.privacy.salt_retention_days,
                    ))
                    .with_user_agents(crate::event::UserAgents::new(config.bots.user_agent_cache)),
                honor_do_not_track: config.privacy.honor_do_not_track,
                bot_action: config.bots.action,
                spool,
                dlq,
                live: Live::new(
                    config.query.live_buffer,
                    config.query.live_max_subscribers,
                    metrics.clone(),
                ),
                recent: crate::dedupe::RecentIds::new(&config.dedupe, metrics.clone()),
                metrics,
                max_user_agent_len: config.limits.max_user_agent_len,
                per_site: crate::ratelimit::KeyedLimit::new(
                    config.rate_limit.per_site_per_second,
                    config.rate_limit.per_site_burst,
                ),
                unattributed: std::num::NonZeroU32::new(config.dlq.unattributed_parse_per_minute)
                    .map(|n| governor::RateLimiter::direct(governor::Quota::per_minute(n))),
            }),
        }
    }

    /// Forgets per-site rate state that is back to a full burst, and expired ids of the intake
    /// filter.
    pub fn housekeeping(&self, now_ms: i64) {
        self.inner.per_site.housekeeping();
        if let Some(r) = &self.inner.recent {
            r.housekeeping(unix_s(now_ms));
        }
    }

    /// Seeds the intake filter from the spool records on disk younger than `dedupe.window`
    /// (serve, at start, before HTTP listens), so a retry after a crash is caught like one after
    /// a lost answer. Returns the ids seeded. Blocking file reads.
    pub fn seed_recent_ids(
        &self,
        spool_dir: &std::path::Path,
        now_ms: i64,
    ) -> std::io::Result<usize> {
        let Some(recent) = &self.inner.recent else {
            return Ok(0);
        };
        let now_s = unix_s(now_ms);
        let since_ms = now_ms.max(0) as u64;
        let since_ms = since_ms.saturating_sub(recent.window().as_millis() as u64);
        let mut ids = 0;
        crate::spool::scan_recent(spool_dir, since_ms, |appended_ms, payload| {
            // A record that does not decode is the sink's to dead-letter; nothing to remember.
            if let Ok(rows) = crate::spool::decode_events(payload) {
                let at_s = unix_s(appended_ms as i64);
                for r in rows {
                    if r.site != crate::freshness::CANARY_SITE {
                        recent.seed(&r.site, recent.key(&r.event_id), at_s, now_s);
                        ids += 1;
                    }
                }
            }
        })?;
        Ok(ids)
    }

    /// The intake filter of recently accepted ids (`None` when `dedupe.window` is 0); serve
    /// seeds it from the spool at start.
    pub fn recent_ids(&self) -> Option<&crate::dedupe::RecentIds> {
        self.inner.recent.as_ref()
    }

    /// Some configured site accepts this origin (CORS headers may name it).
    pub fn origin_allowed_anywhere(&self, origin: &str) -> bool {
        let p = self.policy();
        p.any_origin || p.all_origins.contains(origin)
    }

    /// Puts a reloaded `[[sites]]` in force for every request that starts from now on.
    pub fn replace_sites(&self, sites: &[SiteConfig]) {
        let new = Arc::new(SitePolicy::new(sites));
        *self.inner.sites.write().unwrap_or_else(|p| p.into_inner()) = new;
    }

    fn policy(&self) -> Arc<SitePolicy> {
        self.inner
            .sites
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn validator(&self) -> &Validator {
        &self.inner.validator
    }

    pub fn dead_letters(&self) -> &DeadLetters {
        &self.inner.dlq
    }

    pub fn spool(&self) -> &SpoolHandle {
        &self.inner.spool
    }

    /// The live view's hub: acknowledged events of [`Ingest::accept`] go there.
    pub fn live(&self) -> &Live {
        &self.inner.live
    }

    /// Accepts a batch posted by a client: `Ok` once its valid events are durable.
    ///
    /// The body is walked once in the common case: the envelope and its events are
    /// deserialized together ([`ParsedBatch`]) and validated borrowing the body and the
    /// request's enrichment. Only when that fails (malformed JSON, a refused event) is the body
    /// read again keeping each event raw ([`RawBatch`]), the path that names every refusal and
    /// keeps the refused events' text; both paths apply the same rules.
    pub async fn accept(&self, body: &[u8], meta: Meta) -> Result<Answer, IngestError> {
        let fast = serde_json::from_slice::<ParsedBatch<'_>>(body).ok();
        let (site, fast_events, raw_events) = match fast {
            Some(ParsedBatch {
                site: Some(site),
                events: Some(events),
            }) => (site, Some(events), None),
            _ => {
                let (site, events) = self.parse_raw_batch(body, &meta).await?;
                (site, None, Some(events))
            }
        };
        let count = match (&fast_events, &raw_events) {
            (Some(e), _) => e.len(),
            (_, Some(e)) => e.len(),
            _ => 0,
        };
        self.check_site(&site, &meta)?;
        if let Err(retry_after) = self.inner.per_site.check(&site.to_string()) {
            self.inner
                .metrics
                .http_rate_limited
                .get_or_create(&crate::metrics::ScopeLabel { scope: "site" })
                .inc();
            return Err(IngestError::SiteRateLimited { retry_after });
        }
        if count > self.inner.max_events {
            return Err(IngestError::TooManyEvents {
                count,
                limit: self.inner.max_events,
            });
        }
        if let Some(reason) = self.drop_reason(&meta) {
            self.count_dropped(reason, count as u64);
            return Ok(Answer {
                accepted: 0,
                rejected: Vec::new(),
                dropped: count,
            });
        }
        let ctx = RequestContext {
            keep_query_params: self.site_query_params(&site),
            site: site.into_owned(),
            received_at_ms: meta.received_at_ms,
            user_agent: meta.user_agent.clone(),
            client_ip: meta.client_ip,
            replay: None,
        };
        let req = self.inner.validator.request(&ctx);
        let all_valid = fast_events
            .and_then(|events| req.validate_parsed(events.into_iter().map(|e| e.0).collect()));
        // A refused event (rare): the body again, each event raw, for the refusals' texts.
        let (accepted, rejected, raw) = match all_valid {
            Some(accepted) => (accepted, Vec::new(), Vec::new()),
            None => {
                let raw = match raw_events {
                    Some(r) => r,
                    None => self.parse_raw_batch(body, &meta).await?.1,
                };
                let (accepted, rejected) = req.validate_raw(&raw);
                (accepted, rejected, raw)
            }
        };
        for (_, r) in &rejected {
            self.count_rejected(r.class(), 1);
        }
        if let Some((reason, class)) = failure(&rejected) {
            let entry = NewEntry::refused(
                Stage::Validation,
                class,
                reason,
                self.origin_of(&ctx.site, &meta),
            );
            self.dead_letter(NewEntry {
                events: rejected.iter().map(|(i, _)| raw[*i].to_owned()).collect(),
                errors: rejected.iter().map(|(_, r)| r.to_string()).collect(),
                ..entry
            })
            .await;
        }
        // Ids this collector already took (a retry) or that came earlier in this request:
        // answered as accepted, not stored again.
        let mut accepted = accepted;
        let (duplicates, reservation) = match &self.inner.recent {
            Some(recent) if !accepted.is_empty() => {
                let keys: Vec<_> = accepted.iter().map(|e| recent.key(&e.event_id)).collect();
                let a = recent
                    .admit(&ctx.site, &keys, unix_s(meta.received_at_ms))
                    .await;
                let mut keep = a.keep.iter();
                accepted.retain(|_| *keep.next().expect("one per event"));
                (a.in_request + a.recent, Some(a.reservation))
            }
            _ => (0, None),
        };
        let n = accepted.len();
        if let Err(e) = self.commit_reserved(&accepted, reservation).await {
            self.count_rejected("spool_full", n as u64);
            return Err(e.into());
        }
        if n > 0 && self.inner.validator.agent(&ctx.user_agent).bot {
            self.inner.metrics.bot_events_flagged.inc_by(n as u64);
        }
        // Crash tests: stored, not yet answered (a kill -9 here leaves the client to retry
        // elsewhere; the sink's check at restart keeps the second copy out).
        fail::fail_point!("ingest::before_answer");
        // Durable now: a copy for live viewers, never waited for.
        self.inner.live.publish(&ctx.site, &accepted);
        Ok(Answer {
            dropped: 0,
            accepted: n + duplicates,
            rejected: rejected
                .into_iter()
                .map(|(index, r)| Rejected {
                    index,
                    error: r.to_string(),
                })
                .collect(),
        })
    }

    /// The envelope with its events kept raw; a body that is not one is counted, possibly
    /// dead-lettered, and refused.
    async fn parse_raw_batch<'b>(
        &self,
        body: &'b [u8],
        meta: &Meta,
    ) -> Result<(std::borrow::Cow<'b, str>, Vec<&'b RawValue>), IngestError> {
        let parsed = serde_json::from_slice::<RawBatch<'_>>(body)
            // serde's message says where; clients need that to find their bug.
            .map_err(|e| IngestError::MalformedJson(e.to_string()))
            .and_then(|b| match (b.site, b.events) {
                (None, _) => Err(IngestError::MissingEnvelopeField("site")),
                (_, None) => Err(IngestError::MissingEnvelopeField("events")),
                (Some(s), Some(e)) => Ok((s, e)),
            });
        match parsed {
            Ok(p) => Ok(p),
            Err(e) => {
                self.count_rejected("malformed", 1);
                let site = self.attributed_site(body, meta);
                if self.inner.keep_unparseable && (site.is_some() || self.sampled()) {
                    let raw =
                        crate::dlq::cap(&String::from_utf8_lossy(body), crate::dlq::MAX_RAW_BYTES);
                    let entry = NewEntry::refused(
                        Stage::Parse,
                        "malformed",
                        e.to_string(),
                        self.origin_of(site.unwrap_or(""), meta),
                    );
                    self.dead_letter(NewEntry {
                        raw: Some(raw),
                        ..entry
                    })
                    .await;
                }
                Err(e)
            }
        }
    }

    /// Validates events of one request context; accepted events keep their order.
    pub fn validate(&self, ctx: &RequestContext, events: &[&RawValue]) -> Validated {
        let (accepted, rejected) = self.inner.validator.validate_batch(ctx, events);
        Validated { accepted, rejected }
    }

    /// Appends events to the spool as one record and counts them; returns its LSN once it is
    /// committed (`None` for no events).
    pub async fn commit(
        &self,
        events: &[EventRow<'_>],
        source: Source,
    ) -> Result<Option<Lsn>, SpoolError> {
        self.append_counted(events, source, None).await
    }

    /// [`Ingest::commit`] of a client's events whose ids the intake filter reserved: the
    /// append's outcome settles the reservation, on a task of its own so that it is settled
    /// even when this request is dropped while it waits.
    async fn commit_reserved(
        &self,
        events: &[EventRow<'_>],
        reservation: Option<crate::dedupe::Reservation>,
    ) -> Result<Option<Lsn>, SpoolError> {
        self.append_counted(events, Source::Client, reservation)
            .await
    }

    async fn append_counted(
        &self,
        events: &[EventRow<'_>],
        source: Source,
        reservation: Option<crate::dedupe::Reservation>,
    ) -> Result<Option<Lsn>, SpoolError> {
        if events.is_empty() {
            return Ok(None);
        }
        let payload = crate::spool::encode_events(events);
        let lsn = match reservation {
            None => self.inner.spool.append(payload).await?,
            Some(reservation) => {
                let spool = self.inner.spool.clone();
                tokio::spawn(async move {
                    let result = spool.append(payload).await;
                    reservation.resolve(result.is_ok());
                    result
                })
                .await
                .map_err(|e| SpoolError::Failed(format!("spool append task: {e}")))??
            }
        };
        let m = &self.inner.metrics;
        match source {
            Source::Replay => {
                m.dlq_replayed_events.inc_by(events.len() as u64);
            }
            Source::Client => {
                let mut per_type = [0u64; EventType::ALL.len()];
                for e in events {
                    if let Some(i) = EventType::ALL
                        .iter()
                        .position(|t| Some(*t) == e.event_type())
                    {
                        per_type[i] += 1;
                    }
                }
                for (t, c) in EventType::ALL.iter().zip(per_type) {
                    if c > 0 {
                        m.events_accepted
                            .get_or_create(&TypeLabel { r#type: t.as_str() })
                            .inc_by(c);
                    }
                }
            }
        }
        Ok(Some(lsn))
    }

    /// The site's own `keep_query_params` (none for a site no longer configured).
    pub fn site_query_params(&self, site: &str) -> Arc<[String]> {
        self.policy()
            .sites
            .get(site)
            .map_or_else(|| Arc::from([]), |s| s.keep_query_params.clone())
    }

    fn check_site(&self, site: &str, meta: &Meta) -> Result<(), IngestError> {
        let policy = self.policy();
        let Some(site_cfg) = policy.sites.get(site) else {
            return Err(IngestError::UnknownSite(site.chars().take(64).collect()));
        };
        if let Some(origin) = &meta.origin {
            if !site_cfg.any && !site_cfg.origins.contains(origin) && !meta.same_origin {
                return Err(IngestError::OriginNotAllowed {
                    origin: origin.chars().take(200).collect(),
                    site: site.to_string(),
                });
            }
        }
        Ok(())
    }

    /// The configured site an unparseable body names (read leniently), if it accepts the
    /// request's origin: such a body is always kept.
    fn attributed_site<'b>(&self, body: &'b [u8], meta: &Meta) -> Option<&'b str> {
        lenient_site(body).filter(|site| self.check_site(site, meta).is_ok())
    }

    /// Whether an unparseable body that names no site is within the sample that is kept.
    fn sampled(&self) -> bool {
        let sampled = self
            .inner
            .unattributed
            .as_ref()
            .is_some_and(|l| l.check().is_ok());
        if !sampled {
            self.inner
                .metrics
                .dlq_dropped
                .get_or_create(&crate::metrics::StageLabel { stage: "parse" })
                .inc();
        }
        sampled
    }

    /// Why a request's events are not stored at all, if they are not: the browser's opt-out
    /// (when honoured), or a bot's User-Agent under `bots.action = "drop"`.
    fn drop_reason(&self, meta: &Meta) -> Option<&'static str> {
        if meta.do_not_track && self.inner.honor_do_not_track {
            return Some("do_not_track");
        }
        let drop_bots = self.inner.bot_action == crate::config::BotAction::Drop;
        (drop_bots && self.inner.validator.agent(&meta.user_agent).bot).then_some("bot")
    }

    fn count_dropped(&self, reason: &'static str, n: u64) {
        self.inner
            .metrics
            .events_dropped
            .get_or_create(&ReasonLabel { reason })
            .inc_by(n);
    }

    /// Where refused input came from, as a dead letter keeps it: the User-Agent under the same
    /// policy as the events (cut, and the raw string only with `privacy.keep_user_agent`), with
    /// its parse and the cookieless visitor id so that a replay needs neither.
    fn origin_of(&self, site: &str, meta: &Meta) -> Origin {
        let site = crate::event::truncate(site, 64).to_string();
        let ctx = RequestContext {
            site: site.clone(),
            received_at_ms: meta.received_at_ms,
            user_agent: meta.user_agent.clone(),
            client_ip: meta.client_ip,
            keep_query_params: Arc::from([]),
            replay: None,
        };
        let (user_agent, agent) = self.inner.validator.stored_agent(&ctx);
        debug_assert!(user_agent.len() <= self.inner.max_user_agent_len);
        Origin {
            site,
            received_at_ms: meta.received_at_ms,
            user_agent,
            ip: self.inner.validator.stored_ip(meta.client_ip),
            agent: Some(agent),
        }
    }

    fn count_rejected(&self, reason: &'static str, n: u64) {
        self.inner
            .metrics
            .events_rejected
            .get_or_create(&ReasonLabel { reason })
            .inc_by(n);
    }

    /// Stores refused input before the answer goes out. A failure to store is logged, not
    /// returned: the client already learns the refusal from the answer itself.
    async fn dead_letter(&self, entry: NewEntry) {
        let dlq = self.inner.dlq.clone();
        match tokio::task::spawn_blocking(move || dlq.offer(entry)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot store dead letter"),
            Err(e) => tracing::error!(error = %e, "dead-letter task failed"),
        }
    }
}

/// Unix seconds of a clock reading in milliseconds.
fn unix_s(ms: i64) -> u32 {
    (ms.max(0) / 1000).min(i64::from(u32::MAX)) as u32
}

/// The `site` of a body that is not valid JSON as a whole: the first `"site": "KEY"` in its
/// first 4 KiB, KEY being 1 to 64 characters without escapes. Only used to decide whether an
/// unparseable body is kept, so a wrong guess costs a dead letter, nothing more.
fn lenient_site(body: &[u8]) -> Option<&str> {
    let head = &body[..body.len().min(4096)];
    let mut rest = head;
    while let Some(at) = find(rest, b"\"site\"") {
        let after = &rest[at + 6..];
        let value = skip_ws(after)
            .strip_prefix(b":")
            .map(skip_ws)
            .and_then(|v| v.strip_prefix(b"\""))
            .and_then(|v| {
                let end = v.iter().position(|b| *b == b'"' || *b == b'\\')?;
                (v[end] == b'"' && (1..=64).contains(&end)).then(|| &v[..end])
            });
        if let Some(v) = value.and_then(|v| std::str::from_utf8(v).ok()) {
            return Some(v);
        }
        rest = after;
    }
    None
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn skip_ws(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

#[cfg(test)]
mod tests {
    use super::lenient_site;

    #[test]
    fn lenient_site_reads_broken_bodies() {
        assert_eq!(
            lenient_site(br#"{"site": "shop", "events": [{"type": "pagevi"#),
            Some("shop")
        );
        assert_eq!(lenient_site(br#"{"events":[], "site" :"a"}"#), Some("a"));
        assert_eq!(lenient_site(b"garbage"), None);
        assert_eq!(
            lenient_site(br#"{"site": 5, "x": {"site":"b"}}"#),
            Some("b")
        );
        assert_eq!(lenient_site(br#"{"site": "a\"b"}"#), None);
        assert_eq!(lenient_site(br#"{"site": ""}"#), None);
    }
}
