//! The event model: what the snippet sends ([`RawEvent`], `wire.rs`), what validation turns
//! it into ([`Event`], the ClickHouse row), and the rules in between (`validate.rs`), with the
//! per-request enrichment: user agent, IP anonymisation, the cookieless visitor (`enrich.rs`),
//! what of a page is stored (`privacy.rs`), the User-Agent parse with bot detection and its
//! cache (`bots.rs`), and the per-day salts of the cookieless visitor (`salt.rs`).
//!
//! Invariants:
//! - An [`Event`] (or an [`EventRow`] borrowing the body and the request, on the intake path:
//!   [`Validator::request`]) exists only through the validator: every string is within
//!   its configured length, numbers are in range, `ts` is within the clock-skew window around
//!   `received_at`, and enrichment (path, host, user agent, visitor) has been applied.
//! - Validation is per event: one bad event yields one [`Rejection`] and never fails its batch.
//! - [`Event`] is the row of `clicktrail.events` ([`crate::row`], where the columns are
//!   listed once); the spool stores it as RowBinary, dead letters as JSON.

mod bots;
mod enrich;
mod privacy;
mod salt;
mod validate;
mod wire;

pub use bots::{parse_user_agent, Agent, UserAgents};
pub use enrich::anonymize_ip;
pub use salt::Salts;
pub(crate) use validate::truncate;
pub use validate::{
    clamp_ts, device_class, page_url_parts, ReplayContext, Request, RequestContext, StoredAgent,
    UrlPart, Validator,
};
pub use wire::{
    EpochMillis, EventType, Number, ObjectEvent, ParsedBatch, RawBatch, RawEvent, Rejection,
};

pub use crate::row::{Event, EventRow};

impl EventRow<'_> {
    pub fn event_type(&self) -> Option<EventType> {
        EventType::parse(&self.kind)
    }
}
