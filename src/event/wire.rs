//! The wire format of `POST /v1/events`: the envelope, one raw event with every field
//! optional (a missing field is a validation error that names it), and why an event is refused.

use std::borrow::Cow;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The envelope of `POST /v1/events`. Events stay raw so each can fail on its own.
#[derive(Debug, Deserialize)]
pub struct RawBatch<'a> {
    #[serde(borrow)]
    pub site: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub events: Option<Vec<&'a RawValue>>,
}

/// The envelope with its events deserialized in the same pass: the intake's fast path, one
/// walk over the body. Any problem (malformed JSON, an event that is not an object or has a
/// field of the wrong type) fails the whole parse; the caller then reads the body as a
/// [`RawBatch`], which keeps each event raw so that each can fail on its own.
#[derive(Debug, Deserialize)]
pub struct ParsedBatch<'a> {
    #[serde(borrow)]
    pub site: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub events: Option<Vec<ObjectEvent<'a>>>,
}

/// A [`RawEvent`] that was a JSON object (serde's derive would also take an array, field by
/// position, which [`RawBatch`]'s path refuses).
#[derive(Debug)]
pub struct ObjectEvent<'a>(pub RawEvent<'a>);

impl<'de: 'a, 'a> Deserialize<'de> for ObjectEvent<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = ObjectEvent<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an event object")
            }
            fn visit_map<M: de::MapAccess<'de>>(self, map: M) -> Result<ObjectEvent<'a>, M::Error> {
                RawEvent::deserialize(de::value::MapAccessDeserializer::new(map)).map(ObjectEvent)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// One event as the client sent it. Fields are optional here so that a missing field becomes
/// a validation error that names it, not a generic parse failure.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawEvent<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub id: Option<Cow<'a, str>>,
    pub ts: Option<EpochMillis>,
    #[serde(borrow)]
    pub url: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub session: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub visitor: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub title: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub referrer: Option<Cow<'a, str>>,
    pub x: Option<Number>,
    pub y: Option<Number>,
    pub vw: Option<Number>,
    pub vh: Option<Number>,
    pub dw: Option<Number>,
    pub dh: Option<Number>,
    #[serde(borrow)]
    pub selector: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub text: Option<Cow<'a, str>>,
    pub rage: Option<bool>,
    pub ex: Option<Number>,
    pub ey: Option<Number>,
    pub dead: Option<bool>,
    pub error: Option<bool>,
    #[serde(borrow)]
    pub pv: Option<Cow<'a, str>>,
    pub depth: Option<Number>,
    pub duration_ms: Option<Number>,
    /// scroll / engagement: the value this page view had already sent (so a rollup can add
    /// only the growth: sums, not sets)
    pub from: Option<Number>,
    #[serde(borrow)]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub props: Option<&'a RawValue>,
}

/// Client epoch milliseconds. Accepts integers and floats (`performance.timeOrigin + now()`),
/// so the error for anything else can say what was expected.
#[derive(Debug, Clone, Copy)]
pub struct EpochMillis(pub i64);

impl<'de> Deserialize<'de> for EpochMillis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = EpochMillis;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("epoch milliseconds")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<EpochMillis, E> {
                Ok(EpochMillis(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<EpochMillis, E> {
                i64::try_from(v)
                    .map(EpochMillis)
                    .map_err(|_| E::custom("expected epoch milliseconds"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<EpochMillis, E> {
                if v.is_finite() && v.abs() < 1e17 {
                    Ok(EpochMillis(v as i64))
                } else {
                    Err(E::custom("expected epoch milliseconds"))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A JSON number, kept as f64 so `12.5` pixels is accepted and rounded, while a string is not.
#[derive(Debug, Clone, Copy)]
pub struct Number(pub f64);

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Number;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Number, E> {
                Ok(Number(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Number, E> {
                Ok(Number(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Number, E> {
                Ok(Number(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// The event types the collector knows; the closed set keeps metric labels bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Pageview,
    Click,
    Scroll,
    Engagement,
    Custom,
}

impl EventType {
    pub const ALL: [EventType; 5] = [
        EventType::Pageview,
        EventType::Click,
        EventType::Scroll,
        EventType::Engagement,
        EventType::Custom,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Pageview => "pageview",
            EventType::Click => "click",
            EventType::Scroll => "scroll",
            EventType::Engagement => "engagement",
            EventType::Custom => "custom",
        }
    }

    pub(super) fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// Why an event was refused; `class()` is the bounded metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("event is not a JSON object: {0}")]
    Malformed(String),
    #[error("field {field}: {problem}")]
    InvalidValue { field: String, problem: String },
    #[error("field {0}: required")]
    MissingField(&'static str),
    #[error("field {field}: longer than {limit} bytes")]
    TooLong { field: &'static str, limit: usize },
    #[error("field {field}: {problem}")]
    OutOfRange {
        field: &'static str,
        problem: String,
    },
    #[error("field type: unknown event type `{0}` (expected pageview, click, scroll, engagement or custom)")]
    UnknownType(String),
}

impl Rejection {
    pub fn class(&self) -> &'static str {
        match self {
            Rejection::Malformed(_) => "malformed",
            Rejection::InvalidValue { .. } => "invalid_value",
            Rejection::MissingField(_) => "missing_field",
            Rejection::TooLong { .. } => "too_long",
            Rejection::OutOfRange { .. } => "out_of_range",
            Rejection::UnknownType(_) => "unknown_type",
        }
    }
}
