//! The validation rules: one raw event in, an [`Event`] or a [`Rejection`] naming the field
//! out, with the per-request enrichment applied to every accepted event. (Past 500 lines only
//! by its tests: the table of error messages clients see.)

use std::borrow::Cow;
use std::net::IpAddr;

use serde_json::value::RawValue;

use serde::{Deserialize, Serialize};

use super::bots::UserAgents;
use super::enrich::{anonymize_ip, cookieless_visitor, RequestEnrichment};
use super::privacy::PagePolicy;
use super::salt::Salts;
use super::wire::{EventType, Number, RawEvent, Rejection};
use crate::config::{IpMode, LimitsConfig, PrivacyConfig};
use crate::row::{Event, EventRow};

/// What the server knows about a request, shared by all of its events.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub site: String,
    pub received_at_ms: i64,
    pub user_agent: String,
    pub client_ip: Option<IpAddr>,
    /// The site's `[[sites]] keep_query_params` (kept besides `privacy.keep_query_params`).
    pub keep_query_params: std::sync::Arc<[String]>,
    /// Replay only: the already-anonymised address stored with a dead letter (the raw one is
    /// never kept), and a seed that makes server-assigned ids deterministic, so replaying the
    /// same entry twice yields the same ids and deduplicates.
    pub replay: Option<ReplayContext>,
}

#[derive(Debug, Clone)]
pub struct ReplayContext {
    pub stored_ip: String,
    pub id_seed: String,
    /// What the request's User-Agent gave when it was received, stored with the dead letter
    /// instead of the raw string (`privacy.keep_user_agent = false`); `None` for entries
    /// written before it was stored: then the stored User-Agent is parsed again.
    pub agent: Option<StoredAgent>,
}

/// A request's User-Agent as a dead letter keeps it: the parse and the cookieless visitor id
/// computed at receipt, so that a replay yields the same rows without the raw string.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAgent {
    pub browser: String,
    pub os: String,
    pub device: String,
    #[serde(default)]
    pub bot: bool,
    pub cookieless_visitor: String,
}

/// Applies the configured rules; cheap to clone and shared by all handlers.
#[derive(Debug, Clone)]
pub struct Validator {
    limits: LimitsConfig,
    privacy: PrivacyConfig,
    page: PagePolicy,
    salts: std::sync::Arc<Salts>,
    agents: std::sync::Arc<UserAgents>,
}

impl Validator {
    /// Salts in memory and a User-Agent cache of 10 000 strings; [`Validator::with_salts`] and
    /// [`Validator::with_user_agents`] replace them.
    pub fn new(limits: LimitsConfig, privacy: PrivacyConfig) -> Self {
        Self {
            page: PagePolicy::new(&privacy),
            salts: std::sync::Arc::new(Salts::in_memory(privacy.salt_retention_days)),
            agents: std::sync::Arc::new(UserAgents::new(10_000)),
            limits,
            privacy,
        }
    }

    pub fn with_salts(self, salts: Salts) -> Self {
        Self {
            salts: std::sync::Arc::new(salts),
            ..self
        }
    }

    pub fn with_user_agents(self, agents: UserAgents) -> Self {
        Self {
            agents: std::sync::Arc::new(agents),
            ..self
        }
    }

    /// The (cached) parse of a User-Agent, cut to `limits.max_user_agent_len` first as the
    /// events' enrichment does.
    pub fn agent(&self, user_agent: &str) -> std::sync::Arc<super::bots::Agent> {
        self.agents
            .parse(truncate(user_agent, self.limits.max_user_agent_len))
    }

    /// What a dead letter of this request keeps of its User-Agent: the raw string (cut) only
    /// with `privacy.keep_user_agent`, and always the parse and the cookieless visitor id.
    pub fn stored_agent(&self, ctx: &RequestContext) -> (String, StoredAgent) {
        let e = self.enrich_request(ctx);
        let raw = e.user_agent.clone();
        (
            raw,
            StoredAgent {
                browser: e.browser,
                os: e.os,
                device: e.device,
                bot: e.bot,
                cookieless_visitor: e.cookieless_visitor,
            },
        )
    }

    /// Validates every event of a batch. Accepted events keep their order; rejections carry the
    /// event's index in the batch. The events own their strings (replay, tests); the intake
    /// path borrows them instead ([`Validator::request`]).
    pub fn validate_batch(
        &self,
        ctx: &RequestContext,
        events: &[&RawValue],
    ) -> (Vec<Event>, Vec<(usize, Rejection)>) {
        let req = self.request(ctx);
        let (accepted, rejected) = req.validate_raw(events);
        (
            accepted.into_iter().map(EventRow::into_owned).collect(),
            rejected,
        )
    }

    /// What a request adds to each of its events, computed once: the events of
    /// [`Request::validate_parsed`] and [`Request::validate_raw`] borrow it (and the body)
    /// instead of each owning a copy of the request-wide strings.
    pub fn request<'c>(&'c self, ctx: &'c RequestContext) -> Request<'c> {
        Request {
            validator: self,
            ctx,
            enrich: self.enrich_request(ctx),
        }
    }

    fn enrich_request(&self, ctx: &RequestContext) -> RequestEnrichment {
        let ua = truncate(&ctx.user_agent, self.limits.max_user_agent_len);
        let user_agent = if self.privacy.keep_user_agent {
            ua.to_string()
        } else {
            String::new()
        };
        let ip = match (&ctx.replay, ctx.client_ip) {
            (Some(r), _) => r.stored_ip.clone(),
            (None, ip) => self.stored_ip(ip),
        };
        if let Some(stored) = ctx.replay.as_ref().and_then(|r| r.agent.clone()) {
            return RequestEnrichment {
                browser: stored.browser,
                os: stored.os,
                device: stored.device,
                user_agent,
                ip,
                cookieless_visitor: stored.cookieless_visitor,
                bot: stored.bot,
            };
        }
        let agent = self.agents.parse(ua);
        RequestEnrichment {
            browser: agent.browser.clone(),
            os: agent.os.clone(),
            device: agent.device.clone(),
            user_agent,
            ip,
            cookieless_visitor: cookieless_visitor(&self.salts, ctx),
            bot: agent.bot,
        }
    }

    /// The client address as the configured privacy mode stores it.
    pub fn stored_ip(&self, ip: Option<IpAddr>) -> String {
        match (self.privacy.ip, ip) {
            (IpMode::Anonymize, Some(ip)) => anonymize_ip(ip),
            _ => String::new(),
        }
    }
}

/// One request being validated: its context and enrichment, which its events borrow.
pub struct Request<'c> {
    validator: &'c Validator,
    ctx: &'c RequestContext,
    enrich: RequestEnrichment,
}

impl<'c> Request<'c> {
    /// Events the envelope parse already deserialized (the intake's one pass over the body):
    /// every row, in order, or `None` as soon as one is refused. The caller then validates the
    /// raw events ([`Request::validate_raw`]), which names each refusal and keeps the refused
    /// event's text for its dead letter; both paths apply the same rules.
    pub fn validate_parsed<'a>(&'a self, events: Vec<RawEvent<'a>>) -> Option<Vec<EventRow<'a>>> {
        let mut out = Vec::with_capacity(events.len());
        for (i, ev) in events.into_iter().enumerate() {
            out.push(self.check(i, ev).ok()?);
        }
        Some(out)
    }

    /// Events kept raw by the envelope parse: each is parsed, then checked. Accepted events
    /// keep their order; rejections carry the event's index in the batch.
    pub fn validate_raw<'a>(
        &'a self,
        events: &[&'a RawValue],
    ) -> (Vec<EventRow<'a>>, Vec<(usize, Rejection)>) {
        let mut accepted = Vec::with_capacity(events.len());
        let mut rejected = Vec::new();
        for (i, raw) in events.iter().enumerate() {
            match parse_raw(raw).and_then(|ev| self.check(i, ev)) {
                Ok(e) => accepted.push(e),
                Err(r) => rejected.push((i, r)),
            }
        }
        (accepted, rejected)
    }

    /// The rules and the enrichment of one parsed event. Strings the event or the request
    /// already hold are borrowed, not copied.
    fn check<'a>(&'a self, index: usize, ev: RawEvent<'a>) -> Result<EventRow<'a>, Rejection> {
        let (ctx, enrich) = (self.ctx, &self.enrich);
        let l = &self.validator.limits;
        let kind_str = ev.kind.as_deref().ok_or(Rejection::MissingField("type"))?;
        let kind =
            EventType::parse(kind_str).ok_or_else(|| Rejection::UnknownType(kind_str.into()))?;

        let event_id: Cow<'a, str> = match ev.id {
            Some(id) => {
                check_token("id", &id, l.max_id_len)?;
                id
            }
            // A client that sends no id still gets exactly-once delivery for everything after
            // the collector: the id is fixed before the event reaches the spool.
            None => Cow::Owned(match &ctx.replay {
                Some(r) => format!("{}-{index}", r.id_seed),
                None => uuid::Uuid::new_v4().simple().to_string(),
            }),
        };

        let ts_ms = ev.ts.ok_or(Rejection::MissingField("ts"))?.0;
        if ts_ms <= 0 {
            return Err(Rejection::InvalidValue {
                field: "ts".into(),
                problem: "expected epoch milliseconds".into(),
            });
        }
        let ts_ms = clamp_ts(
            ts_ms,
            ctx.received_at_ms,
            l.max_clock_skew_past.as_millis() as i64,
            l.max_clock_skew_future.as_millis() as i64,
        );

        let url = ev.url.ok_or(Rejection::MissingField("url"))?;
        check_len("url", &url, l.max_url_len)?;
        // The common page URL (no query, fragment or user info) is stored as sent and split in
        // place; any other goes through `url::Url` and the privacy policy (what of it is kept).
        let (url, host, path) = if !url.contains(['?', '#', '@']) {
            let (host, path) = page_url_parts(&url)?;
            (url, host, path)
        } else {
            let page = parse_page_url(&url)?;
            let host = UrlPart::Owned(page.host_str().unwrap_or_default().to_string());
            let path = UrlPart::Owned(page.path().to_string());
            (
                Cow::Owned(
                    self.validator
                        .page
                        .page_url(&self.ctx.keep_query_params, &url, page),
                ),
                host,
                path,
            )
        };

        let session = ev.session.ok_or(Rejection::MissingField("session"))?;
        check_token("session", &session, l.max_id_len)?;
        let visitor_id = match ev.visitor {
            Some(v) if !v.is_empty() => {
                check_token("visitor", &v, l.max_id_len)?;
                v
            }
            // Cookieless mode: the snippet stores nothing, the visitor is a keyed hash that
            // cannot be linked across days (the key rotates and is never stored).
            _ => Cow::Borrowed(enrich.cookieless_visitor.as_str()),
        };

        // Display fields are cut, not refused: a long page title is no reason to lose the page
        // view. Identifiers and the URL are refused instead, since a cut one would be wrong.
        let title = cut(ev.title, l.max_title_len);
        let referrer = match cut(ev.referrer, l.max_url_len) {
            r if r.contains(['?', '#', '@']) => Cow::Owned(
                self.validator
                    .page
                    .referrer(&self.ctx.keep_query_params, &r),
            ),
            r => r,
        };
        let selector = cut(ev.selector, l.max_selector_len);
        let text = if self.validator.page.keeps_text(&selector) {
            cut(ev.text, l.max_text_len)
        } else {
            Cow::Borrowed("")
        };

        let pageview_id = match (kind, ev.pv) {
            (EventType::Pageview, _) => event_id.clone(),
            (_, Some(pv)) if !pv.is_empty() => {
                check_token("pv", &pv, l.max_id_len)?;
                pv
            }
            _ => Cow::Borrowed(""),
        };
        let mut e = EventRow {
            event_id,
            site: Cow::Borrowed(ctx.site.as_str()),
            kind: Cow::Borrowed(kind.as_str()),
            name: Default::default(),
            ts: (ts_ms / 1000) as u32,
            ts_ms: (ts_ms % 1000) as u16,
            received_at: (ctx.received_at_ms / 1000) as u32,
            host: host.of(&url),
            path: path.of(&url),
            url,
            referrer,
            title,
            session_id: session,
            visitor_id,
            x: 0,
            y: 0,
            viewport_w: int_in("vw", ev.vw, 0, u16::MAX as i64)? as u16,
            viewport_h: int_in("vh", ev.vh, 0, u16::MAX as i64)? as u16,
            doc_w: int_in("dw", ev.dw, 0, u32::MAX as i64)? as u32,
            doc_h: int_in("dh", ev.dh, 0, u32::MAX as i64)? as u32,
            selector,
            text,
            rage: 0,
            scroll_depth: 0,
            duration_ms: 0,
            props: Default::default(),
            browser: Cow::Borrowed(enrich.browser.as_str()),
            os: Cow::Borrowed(enrich.os.as_str()),
            device: Cow::Borrowed(enrich.device.as_str()),
            user_agent: Cow::Borrowed(enrich.user_agent.as_str()),
            ip: Cow::Borrowed(enrich.ip.as_str()),
            device_class: Cow::Borrowed(device_class(ev.vw.map_or(0, |v| v.0 as i64))),
            pageview_id,
            ..EventRow::default()
        };

        match kind {
            EventType::Pageview => {}
            EventType::Click => {
                // Page coordinates can be negative on pages scrolled past their origin by
                // transforms; bound them only to keep garbage out.
                e.x = required_int("x", ev.x, -1_000_000, 10_000_000)? as i32;
                e.y = required_int("y", ev.y, -1_000_000, 100_000_000)? as i32;
                e.rage = u8::from(ev.rage.unwrap_or(false));
                e.dead = u8::from(ev.dead.unwrap_or(false));
                e.error = u8::from(ev.error.unwrap_or(false));
                e.elem_x = int_in("ex", ev.ex, 0, u16::MAX as i64)? as u16;
                e.elem_y = int_in("ey", ev.ey, 0, u16::MAX as i64)? as u16;
            }
            // `from` is at most the new value: an event reports growth (the snippet sends
            // only when the value grew), and a rollup adds value - from.
            EventType::Scroll => {
                let depth = required_int("depth", ev.depth, 0, 100)?;
                e.scroll_depth = depth as u8;
                e.depth_from = int_in("from", ev.from, 0, depth)? as u8;
            }
            EventType::Engagement => {
                let ms = required_int("duration_ms", ev.duration_ms, 0, u32::MAX as i64)?;
                e.duration_ms = ms as u32;
                e.duration_from_ms = int_in("from", ev.from, 0, ms)? as u32;
            }
            EventType::Custom => {
                let name = ev.name.ok_or(Rejection::MissingField("name"))?;
                if name.is_empty() {
                    return Err(Rejection::MissingField("name"));
                }
                check_len("name", &name, l.max_name_len)?;
                e.name = name;
                if let Some(props) = ev.props {
                    let p = props.get();
                    if !p.trim_start().starts_with('{') {
                        return Err(Rejection::InvalidValue {
                            field: "props".into(),
                            problem: "expected an object".into(),
                        });
                    }
                    check_len("props", p, l.max_props_bytes)?;
                    e.props = Cow::Borrowed(p);
                }
            }
        }
        Ok(e)
    }
}

/// One raw event parsed, or why it is not an event.
fn parse_raw<'a>(raw: &'a RawValue) -> Result<RawEvent<'a>, Rejection> {
    if !raw.get().trim_start().starts_with('{') {
        return Err(Rejection::Malformed("expected an object".into()));
    }
    // Path tracking doubles the cost of a parse, and only a failing event needs it: parse
    // plainly, and only on failure again with the path, to name the field.
    serde_json::from_str(raw.get()).map_err(|_| describe_parse_error(raw.get()))
}

/// A display field cut to `max` bytes on a character boundary, borrowed when it was.
fn cut(s: Option<Cow<'_, str>>, max: usize) -> Cow<'_, str> {
    match s {
        None => Cow::Borrowed(""),
        Some(Cow::Borrowed(b)) => Cow::Borrowed(truncate(b, max)),
        Some(Cow::Owned(mut o)) => {
            let keep = truncate(&o, max).len();
            o.truncate(keep);
            Cow::Owned(o)
        }
    }
}

/// The rejection for an event that does not deserialize, naming the field that failed.
fn describe_parse_error(json: &str) -> Rejection {
    let mut de = serde_json::Deserializer::from_str(json);
    let e = match serde_path_to_error::deserialize::<_, RawEvent<'_>>(&mut de) {
        Ok(_) => return Rejection::Malformed("not a valid event".into()),
        Err(e) => e,
    };
    let field = e.path().to_string();
    let inner = e.into_inner().to_string();
    // serde_json appends " at line L column C", which means nothing to a client that sent
    // one event inside a batch.
    let problem = match inner.find(" at line ") {
        Some(i) => inner[..i].to_string(),
        None => inner,
    };
    let problem = problem
        .strip_prefix("invalid type: ")
        .map(|p| match p.split_once(", expected ") {
            Some((got, want)) => format!("expected {want}, got {got}"),
            None => p.to_string(),
        })
        .unwrap_or(problem);
    Rejection::InvalidValue { field, problem }
}

/// The device class of a viewport width, with the thresholds of docs/schema.md (the same as the
/// column's DEFAULT in migrations/0002_analytics.sql, which fills rows older than the column).
pub fn device_class(viewport_w: i64) -> &'static str {
    match viewport_w {
        i64::MIN..=0 => "unknown",
        1..=767 => "mobile",
        768..=1023 => "tablet",
        _ => "desktop",
    }
}

/// The clock-skew rule: a client time within [received − past, received + future] is kept;
/// anything outside is a broken or hostile clock and is replaced by the receive time, which is
/// the best estimate we have (clamping to the bound would invent a time nobody observed).
pub fn clamp_ts(ts_ms: i64, received_ms: i64, past_ms: i64, future_ms: i64) -> i64 {
    if ts_ms < received_ms - past_ms || ts_ms > received_ms + future_ms {
        received_ms
    } else {
        ts_ms
    }
}

fn check_len(field: &'static str, s: &str, limit: usize) -> Result<(), Rejection> {
    if s.len() > limit {
        Err(Rejection::TooLong { field, limit })
    } else {
        Ok(())
    }
}

/// Ids are opaque tokens: bounded and free of characters that would need escaping downstream.
fn check_token(field: &'static str, s: &str, limit: usize) -> Result<(), Rejection> {
    if s.is_empty() {
        return Err(Rejection::MissingField(field));
    }
    check_len(field, s, limit)?;
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(Rejection::InvalidValue {
            field: field.into(),
            problem: "only letters, digits, '-', '_' and '.' are allowed".into(),
        });
    }
    Ok(())
}

fn int_in(field: &'static str, n: Option<Number>, min: i64, max: i64) -> Result<i64, Rejection> {
    match n {
        None => Ok(0),
        Some(n) => to_int(field, n, min, max),
    }
}

fn required_int(
    field: &'static str,
    n: Option<Number>,
    min: i64,
    max: i64,
) -> Result<i64, Rejection> {
    to_int(field, n.ok_or(Rejection::MissingField(field))?, min, max)
}

fn to_int(field: &'static str, n: Number, min: i64, max: i64) -> Result<i64, Rejection> {
    let v = n.0.round();
    if !v.is_finite() || v < min as f64 || v > max as f64 {
        return Err(Rejection::OutOfRange {
            field,
            problem: format!("must be between {min} and {max}"),
        });
    }
    Ok(v as i64)
}

/// Where the host or the path of a URL is: a range of the URL itself (the fast path, nothing
/// copied), or the normalised text `url::Url` made of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlPart {
    At(std::ops::Range<usize>),
    Owned(String),
}

impl UrlPart {
    fn of<'a>(self, url: &Cow<'a, str>) -> Cow<'a, str> {
        match (self, url) {
            (UrlPart::At(r), Cow::Borrowed(u)) => Cow::Borrowed(&u[r]),
            (UrlPart::At(r), Cow::Owned(u)) => Cow::Owned(u[r].to_string()),
            (UrlPart::Owned(s), _) => Cow::Owned(s),
        }
    }
}

/// Host and path of a page URL, as `url::Url` reads them (`host_str()`, `path()`).
pub fn page_url_parts(url: &str) -> Result<(UrlPart, UrlPart), Rejection> {
    if let Some(parts) = split_plain_url(url) {
        return Ok(parts);
    }
    let u = parse_page_url(url)?;
    let host = u.host_str().unwrap_or_default().to_string();
    Ok((UrlPart::Owned(host), UrlPart::Owned(u.path().to_string())))
}

/// A page URL as `url::Url`: absolute, http(s), with a host.
fn parse_page_url(url: &str) -> Result<url::Url, Rejection> {
    let bad = || Rejection::InvalidValue {
        field: "url".into(),
        problem: "expected an absolute http(s) URL".into(),
    };
    let u = url::Url::parse(url).map_err(|_| bad())?;
    if (u.scheme() != "http" && u.scheme() != "https") || u.host_str().is_none() {
        return Err(bad());
    }
    Ok(u)
}

/// The common URL, split without `url::Url` (which allocates and normalises): `http(s)://`,
/// a lower-case DNS name without port, and a path of characters that the URL standard keeps
/// as they are. `None` for anything else (upper case, IP addresses, punycode, ports, percent
/// escapes, dot segments, characters it would encode), which then takes the full parser; a
/// property test holds the two to the same answer.
fn split_plain_url(url: &str) -> Option<(UrlPart, UrlPart)> {
    let b = url.as_bytes();
    let scheme = if b.starts_with(b"https://") {
        8
    } else if b.starts_with(b"http://") {
        7
    } else {
        return None;
    };
    let host_end = b[scheme..]
        .iter()
        .position(|c| matches!(c, b'/' | b'?' | b'#'))
        .map_or(b.len(), |p| scheme + p);
    let host = &b[scheme..host_end];
    if host.is_empty() || host.len() > 253 {
        return None;
    }
    for label in host.split(|c| *c == b'.') {
        if label.is_empty()
            || label.len() > 63
            || label.starts_with(b"xn--")
            || !label
                .iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        {
            return None;
        }
    }
    // A last label of digits (or 0x...) makes the URL standard read the host as IPv4.
    let last = host.rsplit(|c| *c == b'.').next()?;
    if last.iter().all(u8::is_ascii_digit) || last.starts_with(b"0x") {
        return None;
    }
    let path_end = b[host_end..]
        .iter()
        .position(|c| matches!(c, b'?' | b'#'))
        .map_or(b.len(), |p| host_end + p);
    let path = &b[host_end..path_end];
    if path.is_empty() {
        // `https://a.b` and `https://a.b?q`: the standard's path is "/".
        return Some((UrlPart::At(scheme..host_end), UrlPart::Owned("/".into())));
    }
    let plain = |c: &u8| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'/' | b'-'
                    | b'_'
                    | b'.'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
            )
    };
    if !path.iter().all(plain)
        || path
            .split(|c| *c == b'/')
            .any(|seg| seg == b"." || seg == b"..")
    {
        return None;
    }
    // The query and the fragment do not change host or path, but the standard strips tabs and
    // newlines anywhere and trims the ends: leave such URLs to it.
    if b[path_end..]
        .iter()
        .any(|c| matches!(c, b'\t' | b'\n' | b'\r') || *c <= b' ')
    {
        return None;
    }
    Some((
        UrlPart::At(scheme..host_end),
        UrlPart::At(host_end..path_end),
    ))
}

pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validator() -> Validator {
        Validator::new(LimitsConfig::default(), PrivacyConfig::default())
    }

    fn ctx() -> RequestContext {
        RequestContext {
            site: "demo".into(),
            received_at_ms: 1_700_000_000_000,
            user_agent: "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36".into(),
            client_ip: Some("203.0.113.77".parse().unwrap()),
            keep_query_params: Default::default(),
            replay: None,
        }
    }

    fn run(json: &str) -> Result<Event, Rejection> {
        run_with(&validator(), json)
    }

    fn run_with(v: &Validator, json: &str) -> Result<Event, Rejection> {
        let raw: Box<RawValue> = serde_json::from_str(json).unwrap();
        let (mut ok, mut bad) = v.validate_batch(&ctx(), &[&raw]);
        match ok.pop() {
            Some(e) => Ok(e),
            None => Err(bad.pop().unwrap().1),
        }
    }

    const BASE: &str = r#""id":"e1","ts":1700000000123,"url":"https://shop.example/cart?x=1","session":"s1","visitor":"v1""#;

    #[test]
    fn click_is_enriched() {
        let e = run(&format!(
            r#"{{"type":"click",{BASE},"x":10.4,"y":2000,"vw":1280,"vh":720,"selector":"button#buy","text":"Buy","rage":true,"ex":16384,"ey":65535,"error":true,"pv":"p1"}}"#
        ))
        .unwrap();
        assert_eq!(e.kind, "click");
        assert_eq!(
            (e.x, e.y, e.viewport_w, e.viewport_h),
            (10, 2000, 1280, 720)
        );
        assert_eq!(e.rage, 1);
        assert_eq!((e.elem_x, e.elem_y, e.dead, e.error), (16384, 65535, 0, 1));
        assert_eq!(e.device_class, "desktop");
        assert_eq!(e.pageview_id, "p1");
        assert_eq!(e.host, "shop.example");
        assert_eq!(e.path, "/cart");
        assert_eq!(e.ts, 1_700_000_000);
        assert_eq!(e.ts_ms, 123);
        assert_eq!(e.received_at, 1_700_000_000);
        assert_eq!(e.ip, "203.0.113.0");
        assert_eq!(e.browser, "Chrome");
        assert_eq!(e.device, "desktop");
        assert_eq!(e.user_agent, "", "raw UA is not kept by default");
        assert_eq!(e.url, "https://shop.example/cart", "query string removed");
        assert_eq!(e.text, "Buy");
    }

    #[test]
    fn privacy_rules_apply_to_urls_referrers_and_text() {
        let e = run(r##"{"type":"pageview","id":"e","ts":1700000000000,"session":"s","url":"https://a.b/p?email=x%40y.z&utm_source=n#tok","referrer":"https://c.d/search?q=secret"}"##).unwrap();
        assert_eq!(
            (e.url.as_ref(), e.path.as_ref()),
            ("https://a.b/p?utm_source=n", "/p")
        );
        assert_eq!(e.referrer, "https://c.d/search");
        let div = format!(
            r#"{{"type":"click",{BASE},"x":1,"y":1,"selector":"main>div","text":"Dear John"}}"#
        );
        assert_eq!(run(&div).unwrap().text, "", "text of a div is not kept");
        let all = Validator::new(
            LimitsConfig::default(),
            PrivacyConfig {
                text_for_tags: vec!["*".into()],
                keep_query_params: vec!["email".into()],
                ..PrivacyConfig::default()
            },
        );
        assert_eq!(run_with(&all, &div).unwrap().text, "Dear John");
        assert_eq!(
            run_with(&all, &format!(r#"{{"type":"pageview",{BASE}}}"#))
                .unwrap()
                .url,
            "https://shop.example/cart"
        );
    }

    #[test]
    fn a_replay_of_an_earlier_day_uses_that_day_and_keeps_today_visitor_ids() {
        let dir = tempfile::tempdir().unwrap();
        let v = validator().with_salts(Salts::persistent(dir.path().join("salts"), 2));
        let day = 86_400_000;
        let today = ctx();
        let yesterday = RequestContext {
            received_at_ms: today.received_at_ms - day,
            ..ctx()
        };
        let pv = r#"{"type":"pageview","ts":1700000000000,"url":"https://a.b/","session":"s"}"#;
        let visitor = |v: &Validator, c: &RequestContext| {
            let raw: Box<RawValue> = serde_json::from_str(pv).unwrap();
            v.validate_batch(c, &[&raw])
                .0
                .pop()
                .unwrap()
                .visitor_id
                .to_string()
        };
        let before = visitor(&v, &today);
        let old = visitor(&v, &yesterday);
        assert_ne!(before, old, "another day, another salt");
        assert_eq!(
            visitor(&v, &today),
            before,
            "yesterday's salt did not replace today's"
        );
        let restarted = validator().with_salts(Salts::persistent(dir.path().join("salts"), 2));
        assert_eq!(
            visitor(&restarted, &today),
            before,
            "a restart keeps today's ids"
        );
        assert_eq!(visitor(&restarted, &yesterday), old);
    }

    #[test]
    fn errors_name_field_and_expectation() {
        let cases = [
            (
                r#"{"type":"click","id":"e","ts":"yesterday","url":"https://a.b/","session":"s","x":1,"y":1}"#,
                "field ts: expected epoch milliseconds",
            ),
            (
                r#"{"type":"click","id":"e","ts":1700000000000,"url":"https://a.b/","session":"s","y":1}"#,
                "field x: required",
            ),
            (
                r#"{"type":"scroll","id":"e","ts":1700000000000,"url":"https://a.b/","session":"s","depth":140}"#,
                "field depth: must be between 0 and 100",
            ),
            (
                r#"{"type":"scroll","id":"e","ts":1700000000000,"url":"https://a.b/","session":"s","depth":40,"from":50}"#,
                "field from: must be between 0 and 40",
            ),
            (
                r#"{"type":"engagement","id":"e","ts":1700000000000,"url":"https://a.b/","session":"s","duration_ms":900,"from":-1}"#,
                "field from: must be between 0 and 900",
            ),
            (
                r#"{"type":"pageview","id":"e","ts":1700000000000,"url":"ftp://a.b/","session":"s"}"#,
                "field url: expected an absolute http(s) URL",
            ),
            (
                r#"{"type":"teleport","id":"e","ts":1700000000000,"url":"https://a.b/","session":"s"}"#,
                "unknown event type `teleport`",
            ),
            (
                r#"{"id":"e","ts":1700000000000,"url":"https://a.b/","session":"s"}"#,
                "field type: required",
            ),
            (
                r#"{"type":"pageview","id":"e e","ts":1700000000000,"url":"https://a.b/","session":"s"}"#,
                "field id: only letters",
            ),
            (
                r#"{"type":"click","id":"e","ts":1700000000000,"url":"https://a.b/","session":"s","x":"left","y":1}"#,
                "field x: expected a number",
            ),
            (
                r#"{"type":"custom","id":"e","ts":1700000000000,"url":"https://a.b/","session":"s"}"#,
                "field name: required",
            ),
            (
                r#"{"type":"custom","id":"e","ts":1700000000000,"url":"https://a.b/","session":"s","name":"n","props":[1]}"#,
                "field props: expected an object",
            ),
            (r#"[1,2]"#, "not a JSON object"),
        ];
        for (json, want) in cases {
            let err = run(json).expect_err(json).to_string();
            assert!(err.contains(want), "{json}: got `{err}`, want `{want}`");
        }
    }

    #[test]
    fn too_long_identifiers_are_rejected_and_display_fields_cut() {
        let long = "a".repeat(3000);
        let err = run(&format!(
            r#"{{"type":"pageview","id":"e","ts":1700000000000,"session":"s","url":"https://a.b/{long}"}}"#
        ))
        .unwrap_err();
        assert_eq!(err.class(), "too_long");
        assert_eq!(err.to_string(), "field url: longer than 2048 bytes");
        let e = run(&format!(
            r#"{{"type":"click",{BASE},"x":1,"y":1,"selector":"button","text":"a{}","title":"{long}"}}"#,
            "é".repeat(200)
        ))
        .unwrap();
        assert_eq!(
            e.text.len(),
            255,
            "cut on a character boundary within 256 bytes"
        );
        assert!(e.text.ends_with('é'));
        assert_eq!(e.title.len(), 512);
    }

    #[test]
    fn one_bad_event_does_not_fail_the_batch() {
        let good: Box<RawValue> =
            serde_json::from_str(&format!(r#"{{"type":"pageview",{BASE},"title":"Cart"}}"#))
                .unwrap();
        let bad: Box<RawValue> = serde_json::from_str(r#"{"type":"pageview"}"#).unwrap();
        let (ok, rejected) = validator().validate_batch(&ctx(), &[&good, &bad, &good]);
        assert_eq!(ok.len(), 2);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].0, 1);
    }

    #[test]
    fn page_views_are_their_own_page_view_and_widths_have_classes() {
        let e = run(&format!(
            r#"{{"type":"pageview",{BASE},"vw":500,"pv":"other"}}"#
        ))
        .unwrap();
        assert_eq!(e.pageview_id, "e1");
        assert_eq!(e.device_class, "mobile");
        let err = run(&format!(
            r#"{{"type":"click",{BASE},"x":1,"y":1,"ex":70000}}"#
        ))
        .unwrap_err();
        assert_eq!(err.to_string(), "field ex: must be between 0 and 65535");
        assert_eq!(
            [0, 767, 768, 1023, 1024].map(device_class),
            ["unknown", "mobile", "tablet", "tablet", "desktop"]
        );
    }

    #[test]
    fn clock_skew_rule() {
        let r = 1_000_000_000_000;
        let day = 86_400_000;
        assert_eq!(clamp_ts(r - 5_000, r, day, 60_000), r - 5_000);
        assert_eq!(clamp_ts(r - day - 1, r, day, 60_000), r);
        assert_eq!(clamp_ts(r + 60_001, r, day, 60_000), r);
        assert_eq!(clamp_ts(r + 59_000, r, day, 60_000), r + 59_000);
    }

    #[test]
    fn missing_id_gets_a_server_id_and_cookieless_visitor_is_derived() {
        let v = validator();
        let a = run_with(
            &v,
            r#"{"type":"pageview","ts":1700000000000,"url":"https://a.b/","session":"s"}"#,
        )
        .unwrap();
        let b = run_with(&v, r#"{"type":"pageview","ts":1700000000000,"url":"https://a.b/","session":"s","visitor":""}"#)
            .unwrap();
        assert_eq!(a.event_id.len(), 32);
        assert_ne!(a.event_id, b.event_id);
        assert!(a.visitor_id.starts_with('c'));
        assert_eq!(
            a.visitor_id, b.visitor_id,
            "same site, IP and UA on one day"
        );
    }

    #[test]
    fn anonymizes_ips() {
        assert_eq!(anonymize_ip("192.168.1.77".parse().unwrap()), "192.168.1.0");
        assert_eq!(
            anonymize_ip("2001:db8:abcd:12::1".parse().unwrap()),
            "2001:db8:abcd::"
        );
        assert_eq!(anonymize_ip("::ffff:10.1.2.3".parse().unwrap()), "10.1.2.0");
        // 6to4 of 192.0.2.77, Teredo of client 203.0.113.77 (inverted), NAT64 of 198.51.100.9.
        assert_eq!(
            anonymize_ip("2002:c000:024d:1::5".parse().unwrap()),
            "192.0.2.0"
        );
        assert_eq!(
            anonymize_ip("2001:0:4136:e378:8000:63bf:34ff:8eb2".parse().unwrap()),
            "203.0.113.0"
        );
        assert_eq!(
            anonymize_ip("64:ff9b::c633:6409".parse().unwrap()),
            "198.51.100.0"
        );
    }

    /// The fast split's answer, as owned text.
    fn fast(url: &str) -> Option<(String, String)> {
        let text = |p: UrlPart| match p {
            UrlPart::At(r) => url[r].to_string(),
            UrlPart::Owned(s) => s,
        };
        split_plain_url(url).map(|(h, p)| (text(h), text(p)))
    }

    fn full(url: &str) -> Option<(String, String)> {
        let u = url::Url::parse(url).ok()?;
        Some((u.host_str()?.to_string(), u.path().to_string()))
    }

    #[test]
    fn plain_urls_split_like_the_url_crate() {
        for (url, taken) in [
            ("https://shop.example/products/42?utm=x#top", true),
            ("http://a.b", true),
            ("https://a.b?q=1", true),
            ("https://a-b.c0.example/x/y.html;v=1", true),
            ("https://Shop.example/", false),
            ("https://127.0.0.1/", false),
            ("https://0x7f.1/", false),
            ("https://a.b:8443/", false),
            ("https://u@a.b/", false),
            ("https://a.b/x/../y", false),
            ("https://a.b/%2e%2e/y", false),
            ("https://a.b/caf\u{e9}", false),
            ("https://a.b/a b", false),
            ("https://a.b\\x", false),
            ("https://xn--caf-dma.example/", false),
            ("https://a.b/x?q=a\tb", false),
            ("ftp://a.b/", false),
        ] {
            assert_eq!(fast(url).is_some(), taken, "{url}");
            if let Some(f) = fast(url) {
                assert_eq!(Some(f), full(url), "{url}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn the_fast_split_agrees_with_the_url_crate(
            url in "(https?|HTTPS|ftp)://[a-zA-Z0-9.\\-_:@]{0,12}(/[a-zA-Z0-9._~%!$&'()*+,;=:@ |\\\\\t\\-]{0,10}){0,3}(\\?[a-z= \t]{0,5})?(#[a-z./]{0,4})?"
        ) {
            if let Some(f) = fast(&url) {
                proptest::prop_assert_eq!(Some(f), full(&url), "{}", url);
            }
        }
    }

    #[test]
    fn parsed_and_raw_paths_give_the_same_rows() {
        let body = format!(
            r#"{{"site":"demo","events":[{{"type":"click",{BASE},"x":1,"y":2,"text":"a\"b","selector":"main>a"}},{{"type":"pageview",{BASE},"title":"T","referrer":"https://r.example/"}},{{"type":"custom",{BASE},"name":"n","props":{{"a":1}}}}]}}"#
        );
        let v = validator();
        let c = ctx();
        let req = v.request(&c);
        let parsed: crate::event::ParsedBatch<'_> = serde_json::from_str(&body).unwrap();
        let fast = req
            .validate_parsed(parsed.events.unwrap().into_iter().map(|e| e.0).collect())
            .unwrap();
        let raw: crate::event::RawBatch<'_> = serde_json::from_str(&body).unwrap();
        let (slow, rejected) = req.validate_raw(&raw.events.unwrap());
        assert!(rejected.is_empty());
        assert_eq!(fast, slow);
        assert_eq!(fast[0].text, "a\"b");
        // One refused event: the fast path gives up, the raw path names it.
        let bad = body.replace(r#""x":1"#, r#""x":"left""#);
        assert!(serde_json::from_str::<crate::event::ParsedBatch<'_>>(&bad).is_err());
        let arr = r#"{"site":"demo","events":[["pageview"]]}"#;
        assert!(serde_json::from_str::<crate::event::ParsedBatch<'_>>(arr).is_err());
    }

    #[test]
    fn event_round_trips_through_json() {
        let e = run(&format!(r#"{{"type":"pageview",{BASE},"title":"Ça va"}}"#)).unwrap();
        let back: Event = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(e, back);
    }
}
