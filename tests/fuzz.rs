//! Property tests of everything clicktrail reads that it did not write itself, on stable Rust
//! (proptest, no nightly fuzzer):
//!
//! - **request bodies**: arbitrary bytes, JSON-ish batch envelopes, gzip of either (whole, cut
//!   short, or gzip magic before garbage), odd headers, posted to the real router in-process
//!   (`clicktrail::http::router` + `tower::ServiceExt::oneshot`, no ClickHouse needed). Never a
//!   panic, never a status outside the documented set (a 5xx only as 503 with `Retry-After`),
//!   every answer JSON: the 200 shape `{accepted, rejected: [{index, error}]}` or
//!   `{error, code}` with a code of its status, `x-request-id` always, CORS for any `Origin`.
//! - **spool segments**: arbitrary bytes, or valid records followed by garbage and bit flips,
//!   written as the tail segment and opened with the spool's recovery (`Spool::open`). Never a
//!   panic; recovery keeps exactly the records before the first torn or corrupt one (checked
//!   against an independent decoder of the documented framing), truncates the file there,
//!   the reader returns those records byte for byte, and appending after recovery works.
//! - **dead-letter entries**: arbitrary bytes, framed garbage, framed JSON, framed entries with
//!   flipped bits, as an entry file read by `dlq::read`. Never a panic; a clear `InvalidData`
//!   error naming the entry, or the entry exactly as written.
//!
//! 256 cases per property by default (`cargo test` stays fast); a longer run, part of
//! `make bench`: `CLICKTRAIL_FUZZ_CASES=100000 cargo test --release --test fuzz`.
//! A failure prints the shrunk input; replay it by pasting it into a unit test.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestError, TestRunner};
use serde_json::{json, Map, Value};
use tower::ServiceExt;

use clicktrail::clock::Clock;
use clicktrail::config::{Config, FsyncMode, SiteConfig};
use clicktrail::dlq::{self, DeadLetters, Entry, Origin, Stage};
use clicktrail::http::{router, AppState};
use clicktrail::ingest::Ingest;
use clicktrail::metrics::Metrics;
use clicktrail::sink::SinkStatus;
use clicktrail::spool::{Lsn, Spool, SpoolHandle};

// ---------------------------------------------------------------------------------------------
// Running properties

fn cases() -> u32 {
    std::env::var("CLICKTRAIL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// Runs `test` on `cases()` inputs of `strategy`; on failure, panics with the shrunk input.
fn check<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(RunnerConfig {
        cases: cases(),
        // No regression files in the tree; a failure prints its minimal input instead.
        failure_persistence: None,
        max_shrink_iters: 2048,
        ..RunnerConfig::default()
    });
    match runner.run(&strategy, test) {
        Ok(()) => {}
        Err(TestError::Fail(why, input)) => {
            panic!("{name}: {why}\nminimal failing input:\n{input:#?}")
        }
        Err(TestError::Abort(why)) => panic!("{name}: aborted: {why}"),
    }
}

/// A directory for one fixture, on tmpfs where there is one: dead letters fsync every entry.
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new().prefix("ct-fuzz").tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("temp dir")
}

// ---------------------------------------------------------------------------------------------
// Framing model: the spool's and the dead-letter store's record format, as documented in
// src/spool/record.rs, reimplemented here so recovery is checked against something it does
// not share code with.

const MAGIC: &[u8; 8] = b"CTSPOOL1";
const HEADER_LEN: usize = 16;
const MAX_RECORD_LEN: u32 = 256 * 1024 * 1024;

fn frame(appended_ms: u64, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut crc_input = Vec::with_capacity(12 + payload.len());
    crc_input.extend_from_slice(&len.to_le_bytes());
    crc_input.extend_from_slice(&appended_ms.to_le_bytes());
    crc_input.extend_from_slice(payload);
    let crc = crc32c::crc32c(&crc_input);
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&appended_ms.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The frame at the start of `buf`, if it is whole and its CRC matches: (appended_ms, payload).
fn model_decode(buf: &[u8]) -> Option<(u64, &[u8])> {
    let header = buf.get(..HEADER_LEN)?;
    let len = u32::from_le_bytes(header[0..4].try_into().unwrap());
    let crc = u32::from_le_bytes(header[4..8].try_into().unwrap());
    let appended_ms = u64::from_le_bytes(header[8..16].try_into().unwrap());
    if len > MAX_RECORD_LEN {
        return None;
    }
    let payload = buf.get(HEADER_LEN..HEADER_LEN + len as usize)?;
    let mut crc_input = Vec::with_capacity(12 + payload.len());
    crc_input.extend_from_slice(&header[0..4]);
    crc_input.extend_from_slice(&header[8..16]);
    crc_input.extend_from_slice(payload);
    (crc32c::crc32c(&crc_input) == crc).then_some((appended_ms, payload))
}

/// A record as the model sees it: (appended_ms, payload).
type ModelRecord = (u64, Vec<u8>);

/// What recovery must keep of a segment file: its valid records and the length they end at
/// (`None`: the segment header itself is bad, so nothing is kept).
fn model_recover(file: &[u8]) -> Option<(Vec<ModelRecord>, usize)> {
    if file.len() < MAGIC.len() || &file[..MAGIC.len()] != MAGIC {
        return None;
    }
    let mut off = MAGIC.len();
    let mut records = Vec::new();
    while let Some((ms, payload)) = model_decode(&file[off..]) {
        records.push((ms, payload.to_vec()));
        off += HEADER_LEN + payload.len();
    }
    Some((records, off))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Arbitrary JSON

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // Finite floats only: JSON has no NaN or infinity.
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop_oneof![
            Just(0.0),
            Just(-0.0),
            Just(1e17),
            Just(-1e300),
            Just(1.7976931348623157e308),
            Just(65535.5),
            Just(100.4999),
        ]
        .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        "[a-z0-9._-]{0,70}".prop_map(Value::String),
    ]
}

fn any_json() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::vec(("[a-z_]{0,8}|\\PC{0,8}", inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A field's value: usually valid for the field, sometimes odd (an edge of its limits, a wrong
/// type of value), sometimes any JSON at all.
fn field_value(field: &'static str) -> BoxedStrategy<Value> {
    let (valid, odd): (BoxedStrategy<Value>, BoxedStrategy<Value>) = match field {
        "type" => (
            prop_oneof![
                Just("pageview"),
                Just("click"),
                Just("scroll"),
                Just("engagement"),
                Just("custom"),
            ]
            .prop_map(Value::from)
            .boxed(),
            prop_oneof![Just("PAGEVIEW"), Just(""), Just("pageview\u{0}")]
                .prop_map(Value::from)
                .boxed(),
        ),
        "id" | "session" | "visitor" | "pv" => (
            "[A-Za-z0-9._-]{1,64}".prop_map(Value::from).boxed(),
            "[A-Za-z0-9._-]{65,70}|[^\"]{0,10}|"
                .prop_map(Value::from)
                .boxed(),
        ),
        "ts" => (
            prop_oneof![
                Just(Value::from(now_ms())),
                Just(Value::from(now_ms() as f64 + 0.25)),
                Just(Value::from(now_ms() - 40 * 86_400_000)),
                (1i64..i64::MAX).prop_map(Value::from),
            ]
            .boxed(),
            prop_oneof![
                Just(Value::from(0)),
                Just(Value::from(-1)),
                Just(Value::from(1e17)),
                Just(Value::from(u64::MAX)),
                Just(Value::from("1700000000000")),
            ]
            .boxed(),
        ),
        "url" | "referrer" => (
            prop_oneof![
                Just("https://shop.test/products/42?ref=x".to_string()),
                Just("http://[::1]:8080/a/b#c".to_string()),
                "https://[a-z]{1,10}\\.test/\\PC{0,30}",
            ]
            .prop_map(Value::from)
            .boxed(),
            prop_oneof![
                Just("javascript:alert(1)".to_string()),
                Just("//no-scheme.test/".to_string()),
                Just("https://".to_string()),
                Just(format!("https://long.test/{}", "a".repeat(2100))),
            ]
            .prop_map(Value::from)
            .boxed(),
        ),
        "x" | "y" | "vw" | "vh" | "dw" | "dh" | "ex" | "ey" | "depth" | "duration_ms" | "from" => (
            prop_oneof![
                (0i64..100).prop_map(Value::from),
                (0.0f64..1000.0).prop_map(Value::from),
            ]
            .boxed(),
            prop_oneof![
                (-2_000_000i64..200_000_000).prop_map(Value::from),
                Just(Value::from(65535.5)),
                Just(Value::from(65536)),
                Just(Value::from(100.4999)),
                Just(Value::from(-0.0)),
                Just(Value::from(1.7976931348623157e308)),
                Just(Value::from(u64::MAX)),
                Just(Value::from(i64::MIN)),
            ]
            .boxed(),
        ),
        "rage" | "dead" | "error" => (
            any::<bool>().prop_map(Value::Bool).boxed(),
            Just(Value::from(1)).boxed(),
        ),
        "props" => (
            Just(json!({"plan": "pro", "n": 3})).boxed(),
            prop_oneof![any_json(), Just(json!({ "big": "x".repeat(3000) }))].boxed(),
        ),
        // title, selector, text, name: display strings, sometimes past their limits (cut).
        _ => (
            "\\PC{1,40}".prop_map(Value::from).boxed(),
            prop_oneof![
                Just("é".repeat(300)),
                Just("x".repeat(600)),
                Just(String::new())
            ]
            .prop_map(Value::from)
            .boxed(),
        ),
    };
    prop_oneof![12 => valid, 2 => odd, 1 => any_json()].boxed()
}

const EVENT_FIELDS: &[&str] = &[
    "type",
    "id",
    "ts",
    "url",
    "session",
    "visitor",
    "pv",
    "title",
    "referrer",
    "x",
    "y",
    "vw",
    "vh",
    "dw",
    "dh",
    "ex",
    "ey",
    "selector",
    "text",
    "rage",
    "dead",
    "error",
    "depth",
    "duration_ms",
    "from",
    "name",
    "props",
];

/// An event object with a random subset of the known fields (required ones usually there).
fn event_json() -> impl Strategy<Value = Value> {
    let fields: Vec<BoxedStrategy<Option<(String, Value)>>> = EVENT_FIELDS
        .iter()
        .map(|&f| {
            let keep = match f {
                "type" | "ts" | "url" | "session" => 0.95,
                // Required by one type or another.
                "x" | "y" | "depth" | "duration_ms" | "name" => 0.8,
                _ => 0.3,
            };
            proptest::option::weighted(keep, field_value(f).prop_map(move |v| (f.to_string(), v)))
                .boxed()
        })
        .collect();
    (
        fields,
        proptest::collection::vec(("\\PC{0,6}", json_leaf()), 0..3),
    )
        .prop_map(|(known, extra)| {
            let mut m: Map<String, Value> = extra.into_iter().collect();
            m.extend(known.into_iter().flatten());
            Value::Object(m)
        })
}

/// A batch envelope `{"site": ..., "events": [...]}`, sometimes missing or mistyping a part.
fn envelope_json() -> impl Strategy<Value = Value> {
    let site = prop_oneof![
        6 => Just(Value::from(ANY_SITE)),
        2 => Just(Value::from(STRICT_SITE)),
        1 => "\\PC{0,80}".prop_map(Value::from),
        1 => json_leaf(),
    ];
    let events = prop_oneof![
        8 => proptest::collection::vec(
            prop_oneof![12 => event_json(), 1 => any_json()],
            0..(MAX_EVENTS + 4),
        )
        .prop_map(Value::Array),
        1 => any_json(),
    ];
    (
        proptest::option::weighted(0.95, site),
        proptest::option::weighted(0.95, events),
        proptest::collection::vec(("[a-z]{1,6}", json_leaf()), 0..2),
    )
        .prop_map(|(site, events, extra)| {
            let mut m: Map<String, Value> = extra.into_iter().collect();
            if let Some(s) = site {
                m.insert("site".into(), s);
            }
            if let Some(e) = events {
                m.insert("events".into(), e);
            }
            Value::Object(m)
        })
}

// ---------------------------------------------------------------------------------------------
// The collector in-process

const ANY_SITE: &str = "test";
const STRICT_SITE: &str = "strict";
const STRICT_ORIGIN: &str = "https://allowed.test";
const MAX_EVENTS: usize = 20;
const MAX_BODY: usize = 16 * 1024;
const MAX_INFLATED: usize = 64 * 1024;
const RETRY_AFTER: u32 = 7;

/// The real router over a real spool and dead-letter store in a temp dir; the sink is not
/// running (no ClickHouse), so the fixture reclaims the spool itself between cases.
struct Collector {
    _dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    app: Router,
    spool: SpoolHandle,
    delivered: tokio::sync::watch::Sender<Lsn>,
}

impl Collector {
    fn start() -> Self {
        let dir = scratch_dir();
        let mut config = Config {
            data_dir: dir.path().to_path_buf(),
            sites: vec![
                SiteConfig {
                    key: ANY_SITE.into(),
                    origins: vec!["*".into()],
                    read_tokens: Vec::new(),
                    keep_query_params: vec![],
                },
                SiteConfig {
                    key: STRICT_SITE.into(),
                    origins: vec![STRICT_ORIGIN.into()],
                    read_tokens: Vec::new(),
                    keep_query_params: vec![],
                },
            ],
            ..Config::default()
        };
        config.http.max_body_bytes = MAX_BODY;
        config.http.max_decompressed_bytes = MAX_INFLATED;
        config.http.max_events_per_batch = MAX_EVENTS;
        config.http.retry_after_secs = RETRY_AFTER;
        config.http.request_timeout = Duration::from_secs(30);
        // Thousands of cases for one site within seconds: not what the fuzzing is about.
        config.rate_limit.per_site_per_second = 0;
        config.spool.fsync = FsyncMode::Never;
        config.spool.segment_bytes = 1 << 20;
        config.spool.max_bytes = 256 << 20;
        // Small, so that eviction runs too (and each put over quota stats every entry: keep few).
        config.dlq.max_bytes = 1 << 20;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let metrics = Metrics::new();
        let spool = Spool::open(&config.spool_dir(), &config.spool, &metrics).expect("spool");
        let dlq = DeadLetters::open(config.dlq_dir(), config.dlq.max_bytes, metrics.clone())
            .expect("dead letters");
        let handle = spool.handle.clone();
        let delivered = spool.consumer.delivered;
        let ingest = Ingest::new(&config, spool.handle, dlq, metrics.clone());
        let (_sink_tx, sink_rx) = tokio::sync::watch::channel(SinkStatus::default());
        let (_probe_tx, probe_rx) = tokio::sync::watch::channel(Ok(()));
        let state = AppState::new(
            &config,
            ingest,
            Clock::system(),
            metrics,
            (sink_rx, probe_rx),
            None,
        )
        .expect("state");
        Collector {
            _dir: dir,
            rt,
            app: router(state),
            spool: handle,
            delivered,
        }
    }

    fn send(&self, req: Request<Body>) -> Reply {
        self.rt.block_on(async {
            let resp = self.app.clone().oneshot(req).await.expect("infallible");
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            // What the sink would do: every committed record is delivered, segments go.
            self.delivered.send_replace(self.spool.status().committed);
            Reply {
                status,
                headers,
                body: body.to_vec(),
            }
        })
    }
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

fn codes_of(status: u16) -> &'static [&'static str] {
    match status {
        400 => &[
            "empty_body",
            "malformed_json",
            "missing_field",
            "invalid_gzip",
            "body_read",
        ],
        403 => &["unknown_site", "origin_not_allowed"],
        404 => &["not_found"],
        405 => &["method_not_allowed"],
        413 => &["body_too_large", "too_many_events"],
        415 => &["unsupported_media_type", "unsupported_encoding"],
        503 => &["spool_full", "shutting_down", "unavailable", "timeout"],
        _ => &[],
    }
}

/// The answer is one the API documents, in the shape it documents; returns the JSON body.
fn check_reply(r: &Reply, origin: Option<&str>) -> Result<Value, TestCaseError> {
    let s = r.status.as_u16();
    prop_assert!(
        matches!(s, 200 | 400 | 403 | 405 | 413 | 415 | 503),
        "undocumented status {s}: {}",
        String::from_utf8_lossy(&r.body)
    );
    prop_assert!(
        r.headers.contains_key("x-request-id"),
        "no x-request-id on {s}"
    );
    if let Some(o) = origin {
        // A site accepts "*", so every origin gets CORS headers: errors are readable too.
        prop_assert_eq!(
            r.headers
                .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                .map(|v| v.as_bytes()),
            Some(o.as_bytes()),
            "CORS on {}",
            s
        );
    }
    let ct = r
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    prop_assert!(
        ct.starts_with("application/json"),
        "content-type {ct} on {s}"
    );
    let v: Value = serde_json::from_slice(&r.body).map_err(|e| {
        TestCaseError::fail(format!(
            "{s}: body is not JSON ({e}): {}",
            String::from_utf8_lossy(&r.body)
        ))
    })?;
    let obj = v
        .as_object()
        .ok_or_else(|| TestCaseError::fail(format!("{s}: not an object: {v}")))?;
    if s == 200 {
        prop_assert_eq!(obj.len(), 2, "200 keys: {}", v);
        prop_assert!(obj.get("accepted").is_some_and(Value::is_u64), "{}", v);
        let rejected = obj
            .get("rejected")
            .and_then(Value::as_array)
            .ok_or_else(|| TestCaseError::fail(format!("200 without rejected[]: {v}")))?;
        let mut last = None;
        for r in rejected {
            let o = r
                .as_object()
                .ok_or_else(|| TestCaseError::fail(format!("rejected item {r}")))?;
            prop_assert_eq!(o.len(), 2, "rejected item keys: {}", r);
            let index = o.get("index").and_then(Value::as_u64);
            prop_assert!(index.is_some(), "rejected index: {}", r);
            prop_assert!(index > last, "rejected indexes ascend: {}", v);
            last = index;
            prop_assert!(
                o.get("error")
                    .and_then(Value::as_str)
                    .is_some_and(|e| !e.is_empty()),
                "rejected error: {}",
                r
            );
        }
    } else {
        prop_assert_eq!(obj.len(), 2, "error keys: {}", v);
        prop_assert!(
            obj.get("error")
                .and_then(Value::as_str)
                .is_some_and(|e| !e.is_empty()),
            "error message: {}",
            v
        );
        let code = obj.get("code").and_then(Value::as_str).unwrap_or("");
        prop_assert!(
            codes_of(s).contains(&code),
            "code `{}` is not one of status {}: {}",
            code,
            s,
            v
        );
        if s == 503 {
            let want = RETRY_AFTER.to_string();
            prop_assert_eq!(
                r.headers
                    .get(header::RETRY_AFTER)
                    .and_then(|h| h.to_str().ok()),
                Some(want.as_str()),
                "503 without Retry-After"
            );
        }
    }
    Ok(v)
}

/// A body as the wire carries it.
#[derive(Debug, Clone)]
enum Payload {
    Bytes(Vec<u8>),
    Envelope(Value),
    Gzip(Box<Payload>),
    /// A gzip stream cut short after this many bytes.
    GzipCut(Box<Payload>, usize),
    /// The gzip magic, then garbage.
    GzipGarbage(Vec<u8>),
    /// Spaces (valid JSON whitespace) past the wire limit, or gzipped past the inflated limit.
    Oversized {
        gzip: bool,
    },
}

impl Payload {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Payload::Bytes(b) => b.clone(),
            Payload::Envelope(v) => serde_json::to_vec(v).unwrap(),
            Payload::Gzip(p) => gzip(&p.bytes()),
            Payload::GzipCut(p, cut) => {
                let g = gzip(&p.bytes());
                g[..(*cut).min(g.len().saturating_sub(1))].to_vec()
            }
            Payload::GzipGarbage(g) => [&[0x1f, 0x8b][..], g].concat(),
            Payload::Oversized { gzip: false } => vec![b' '; MAX_BODY + 1],
            Payload::Oversized { gzip: true } => gzip(&vec![b' '; MAX_INFLATED + 1]),
        }
    }

    /// The envelope inside, if the body is one intact (possibly gzipped) JSON document.
    fn envelope(&self) -> Option<&Value> {
        match self {
            Payload::Envelope(v) => Some(v),
            Payload::Gzip(p) => p.envelope(),
            _ => None,
        }
    }
}

fn payload() -> impl Strategy<Value = Payload> {
    let plain = prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..512).prop_map(Payload::Bytes),
        1 => "\\PC{0,200}".prop_map(|s| Payload::Bytes(s.into_bytes())),
        8 => envelope_json().prop_map(Payload::Envelope),
        1 => any_json().prop_map(Payload::Envelope),
    ];
    prop_oneof![
        12 => plain.clone(),
        4 => plain.clone().prop_map(|p| Payload::Gzip(Box::new(p))),
        1 => (plain, 0usize..64).prop_map(|(p, cut)| Payload::GzipCut(Box::new(p), cut)),
        1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Payload::GzipGarbage),
        1 => any::<bool>().prop_map(|gzip| Payload::Oversized { gzip }),
    ]
}

/// Header text: any bytes a header value may hold (visible ASCII, tab, obs-text).
fn header_text() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![8 => 0x20u8..0x7f, 1 => Just(b'\t'), 1 => 0x80u8..=0xff],
        0..40,
    )
}

#[derive(Debug, Clone)]
struct Post {
    method: Method,
    content_type: Option<Vec<u8>>,
    encoding: Option<Vec<u8>>,
    origin: Option<String>,
    /// A `Content-Length` that may lie.
    content_length: Option<u64>,
    payload: Payload,
}

fn post() -> impl Strategy<Value = Post> {
    let method = prop_oneof![
        40 => Just(Method::POST),
        1 => Just(Method::GET),
        1 => Just(Method::PUT),
        1 => Just(Method::DELETE),
        1 => Just(Method::PATCH),
    ];
    let content_type = prop_oneof![
        4 => Just(b"text/plain".to_vec()),
        4 => Just(b"application/json".to_vec()),
        2 => Just(b"text/plain;charset=UTF-8".to_vec()),
        1 => Just(b"Application/JSON ; charset=utf-8".to_vec()),
        1 => Just(b"application/x-www-form-urlencoded".to_vec()),
        1 => header_text(),
    ];
    let encoding = prop_oneof![
        2 => Just(b"gzip".to_vec()),
        1 => Just(b"x-gzip".to_vec()),
        1 => Just(b"identity".to_vec()),
        1 => Just(b"br".to_vec()),
        1 => header_text(),
    ];
    let origin = prop_oneof![
        Just(STRICT_ORIGIN.to_string()),
        Just("https://evil.test".to_string()),
        Just("null".to_string()),
        "[ -~]{0,40}",
    ];
    (
        method,
        proptest::option::weighted(0.9, content_type),
        proptest::option::weighted(0.3, encoding),
        proptest::option::weighted(0.6, origin),
        proptest::option::weighted(0.05, prop_oneof![0u64..100, Just(u64::MAX)]),
        payload(),
    )
        .prop_map(
            |(method, content_type, encoding, origin, content_length, payload)| Post {
                method,
                content_type,
                encoding,
                origin,
                content_length,
                payload,
            },
        )
}

impl Post {
    fn request(&self) -> Request<Body> {
        let mut b = Request::builder()
            .method(self.method.clone())
            .uri("/v1/events");
        if let Some(ct) = &self.content_type {
            b = b.header(header::CONTENT_TYPE, HeaderValue::from_bytes(ct).unwrap());
        }
        if let Some(ce) = &self.encoding {
            b = b.header(
                header::CONTENT_ENCODING,
                HeaderValue::from_bytes(ce).unwrap(),
            );
        }
        if let Some(o) = &self.origin {
            b = b.header(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        if let Some(n) = self.content_length {
            b = b.header(header::CONTENT_LENGTH, n);
        }
        b.body(Body::from(self.payload.bytes())).unwrap()
    }

    /// The media type as the collector reads it; `None` when absent or not ASCII text.
    fn mime(&self) -> Option<String> {
        let ct = std::str::from_utf8(self.content_type.as_deref()?).ok()?;
        if !ct.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)) {
            return None;
        }
        Some(ct.split(';').next()?.trim().to_ascii_lowercase())
    }
}

#[test]
fn any_post_gets_a_documented_json_answer() {
    let c = Collector::start();
    // What the inputs reached: `CLICKTRAIL_FUZZ_STATS=1 cargo test --test fuzz -- --nocapture`.
    let seen = std::sync::Mutex::new(std::collections::BTreeMap::<String, u32>::new());
    check("POST /v1/events", post(), |p| {
        let r = c.send(p.request());
        let v = check_reply(&r, p.origin.as_deref())?;
        let status = r.status.as_u16();
        let code = v.get("code").and_then(Value::as_str).unwrap_or("");
        let outcome = match (status, v["accepted"].as_u64()) {
            (200, Some(0)) => "200 none accepted".to_string(),
            (200, _) => "200 some accepted".to_string(),
            _ => format!("{status} {code}"),
        };
        *seen.lock().unwrap().entry(outcome).or_default() += 1;
        if p.method != Method::POST {
            prop_assert_eq!(status, 405);
            return Ok(());
        }
        // The few answers that follow from the request alone.
        if let Some(m) = p.mime() {
            if !m.is_empty() && m != "application/json" && m != "text/plain" {
                prop_assert_eq!(code, "unsupported_media_type");
                return Ok(());
            }
        }
        if matches!(p.payload, Payload::Oversized { .. }) {
            prop_assert!(
                code == "body_too_large" || code == "unsupported_encoding",
                "oversized body answered {}",
                v
            );
        }
        if status == 200 {
            // Accepted only as a batch of a configured site, every event accounted for.
            let env = p.payload.envelope().ok_or_else(|| {
                TestCaseError::fail(format!("200 for a body that is no envelope: {v}"))
            })?;
            let site = env.get("site").and_then(Value::as_str);
            prop_assert!(
                site == Some(ANY_SITE)
                    || (site == Some(STRICT_SITE)
                        && p.origin.as_deref().is_none_or(|o| o == STRICT_ORIGIN)),
                "200 for site {:?} from origin {:?}",
                site,
                p.origin
            );
            let events = env["events"].as_array().map_or(usize::MAX, Vec::len);
            prop_assert!(events <= MAX_EVENTS, "200 for {} events", events);
            let accepted = v["accepted"].as_u64().unwrap() as usize;
            let rejected = v["rejected"].as_array().unwrap();
            prop_assert_eq!(
                accepted + rejected.len(),
                events,
                "every event counted: {}",
                v
            );
            prop_assert!(rejected
                .iter()
                .all(|r| (r["index"].as_u64().unwrap() as usize) < events));
        }
        Ok(())
    });
    if std::env::var_os("CLICKTRAIL_FUZZ_STATS").is_some() {
        eprintln!("POST /v1/events outcomes: {:#?}", seen.lock().unwrap());
    }
}

/// A gzipped batch is answered exactly as the same batch uncompressed, declared or sniffed.
#[test]
fn gzip_is_transparent() {
    let c = Collector::start();
    let strategy = (
        envelope_json(),
        prop_oneof![Just("text/plain"), Just("application/json")],
        any::<bool>(),
    );
    check("gzip transparency", strategy, |(env, ct, declare)| {
        let plain = serde_json::to_vec(&env).unwrap();
        let req = |body: Vec<u8>, gz: bool| {
            let mut b = Request::post("/v1/events").header(header::CONTENT_TYPE, ct);
            if gz && declare {
                b = b.header(header::CONTENT_ENCODING, "gzip");
            }
            b.body(Body::from(body)).unwrap()
        };
        let zipped = gzip(&plain);
        // The wire limit is on the compressed size, by design: compare within it.
        prop_assume!(plain.len() <= MAX_BODY && zipped.len() <= MAX_BODY);
        let a = c.send(req(plain.clone(), false));
        let b = c.send(req(zipped, true));
        let va = check_reply(&a, None)?;
        let vb = check_reply(&b, None)?;
        prop_assert_eq!(a.status, b.status);
        if a.status == StatusCode::OK {
            prop_assert_eq!(va, vb);
        } else {
            prop_assert_eq!(&va["code"], &vb["code"]);
        }
        Ok(())
    });
}

/// Preflights and other routes: CORS answered, and no panic on any method or path.
#[test]
fn other_routes_and_preflights_answer_documented_statuses() {
    let c = Collector::start();
    let strategy = (
        prop_oneof![
            Just(Method::GET),
            Just(Method::POST),
            Just(Method::OPTIONS),
            Just(Method::HEAD),
            Just(Method::DELETE),
        ],
        prop_oneof![
            Just("/v1/events".to_string()),
            Just("/v1/snippet.js".to_string()),
            Just("/healthz".to_string()),
            Just("/readyz".to_string()),
            Just("/metrics".to_string()),
            Just("/".to_string()),
            "/[a-z0-9./_-]{0,30}",
        ],
        proptest::option::of("[ -~]{0,30}"),
    );
    check("routes", strategy, |(method, path, origin)| {
        let mut b = Request::builder().method(method.clone()).uri(&path);
        if let Some(o) = &origin {
            b = b.header(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        let r = c.send(b.body(Body::empty()).unwrap());
        let s = r.status.as_u16();
        prop_assert!(r.headers.contains_key("x-request-id"));
        if method == Method::OPTIONS {
            prop_assert_eq!(s, 200, "preflight");
            if let Some(o) = &origin {
                prop_assert_eq!(
                    r.headers
                        .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                        .map(|v| v.as_bytes()),
                    Some(o.as_bytes())
                );
            }
            return Ok(());
        }
        prop_assert!(
            matches!(s, 200 | 304 | 400 | 401 | 404 | 405 | 503),
            "{} {} answered {}",
            method,
            path,
            s
        );
        if s >= 400 && method != Method::HEAD {
            let v: Value = serde_json::from_slice(&r.body).map_err(|e| {
                TestCaseError::fail(format!("{method} {path}: {s} is not JSON: {e}"))
            })?;
            if path != "/readyz" && s != 401 {
                let code = v["code"].as_str().unwrap_or("");
                prop_assert!(codes_of(s).contains(&code), "{} {}: {}", method, path, v);
            }
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// Spool recovery

#[derive(Debug, Clone)]
enum SegmentBytes {
    /// Anything at all, sometimes behind a correct segment header.
    Arbitrary { magic: bool, bytes: Vec<u8> },
    /// A well-formed segment, then a tail, then bytes xor-ed at some offsets.
    Records {
        records: Vec<(u64, Vec<u8>)>,
        tail: Tail,
        flips: Vec<(usize, u8)>,
    },
}

#[derive(Debug, Clone)]
enum Tail {
    None,
    Garbage(Vec<u8>),
    /// A record cut after this many of its bytes (a torn write).
    Torn(Vec<u8>, usize),
    /// A header claiming this length, with a correct CRC for no payload.
    Length(u32),
}

impl SegmentBytes {
    fn bytes(&self) -> Vec<u8> {
        match self {
            SegmentBytes::Arbitrary { magic, bytes } => {
                let mut out = if *magic { MAGIC.to_vec() } else { Vec::new() };
                out.extend_from_slice(bytes);
                out
            }
            SegmentBytes::Records {
                records,
                tail,
                flips,
            } => {
                let mut out = MAGIC.to_vec();
                for (ms, p) in records {
                    out.extend(frame(*ms, p));
                }
                match tail {
                    Tail::None => {}
                    Tail::Garbage(g) => out.extend_from_slice(g),
                    Tail::Torn(p, cut) => {
                        let f = frame(9, p);
                        out.extend_from_slice(&f[..(*cut).min(f.len() - 1)]);
                    }
                    Tail::Length(len) => {
                        let mut f = frame(9, &[]);
                        f[0..4].copy_from_slice(&len.to_le_bytes());
                        out.extend(f);
                    }
                }
                for &(at, x) in flips {
                    let n = out.len();
                    out[at % n] ^= x;
                }
                out
            }
        }
    }
}

fn segment_bytes() -> impl Strategy<Value = SegmentBytes> {
    let record = (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..200));
    let tail = prop_oneof![
        Just(Tail::None),
        proptest::collection::vec(any::<u8>(), 1..64).prop_map(Tail::Garbage),
        (proptest::collection::vec(any::<u8>(), 0..64), 0usize..80)
            .prop_map(|(p, cut)| Tail::Torn(p, cut)),
        prop_oneof![
            Just(MAX_RECORD_LEN),
            Just(MAX_RECORD_LEN + 1),
            Just(u32::MAX),
            1u32..4096
        ]
        .prop_map(Tail::Length),
    ];
    prop_oneof![
        1 => (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(magic, bytes)| SegmentBytes::Arbitrary { magic, bytes }),
        3 => (
            proptest::collection::vec(record, 0..8),
            tail,
            proptest::collection::vec((any::<usize>(), 1u8..=255), 0..3),
        )
            .prop_map(|(records, tail, flips)| SegmentBytes::Records { records, tail, flips }),
    ]
}

fn spool_config() -> clicktrail::config::SpoolConfig {
    clicktrail::config::SpoolConfig {
        fsync: FsyncMode::Never,
        ..Default::default()
    }
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.seg"))
}

#[test]
fn spool_recovery_keeps_exactly_the_valid_prefix() {
    let root = scratch_dir();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let n = std::sync::atomic::AtomicU64::new(0);
    let strategy = (segment_bytes(), 0u64..1_000_000);
    check("spool recovery", strategy, |(seg, base)| {
        let dir = root.path().join(
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .to_string(),
        );
        std::fs::create_dir_all(&dir).unwrap();
        let bytes = seg.bytes();
        let path = segment_path(&dir, base);
        std::fs::write(&path, &bytes).unwrap();
        let (records, valid_len) = model_recover(&bytes).unwrap_or((Vec::new(), 0));
        let header_ok = model_recover(&bytes).is_some();

        let metrics = Metrics::new();
        let mut spool = Spool::open(&dir, &spool_config(), &metrics)
            .map_err(|e| TestCaseError::fail(format!("recovery failed: {e}")))?;
        let want_next = base + records.len() as u64;
        prop_assert_eq!(spool.report.next_lsn, want_next, "records kept");
        prop_assert_eq!(
            spool.report.truncated_bytes as usize,
            bytes.len() - valid_len,
            "bytes dropped"
        );
        let on_disk = std::fs::metadata(&path).unwrap().len() as usize;
        prop_assert_eq!(
            on_disk,
            if header_ok { valid_len } else { MAGIC.len() },
            "file truncated at the first bad record"
        );

        // The reader returns the kept records, byte for byte, and nothing after them.
        spool.consumer.reader.seek(base).unwrap();
        for (i, (ms, payload)) in records.iter().enumerate() {
            let r = spool
                .consumer
                .reader
                .try_next()
                .map_err(|e| TestCaseError::fail(format!("record {i}: {e}")))?
                .ok_or_else(|| TestCaseError::fail(format!("record {i} missing")))?;
            prop_assert_eq!(r.lsn, base + i as u64);
            prop_assert_eq!(r.appended_ms, *ms);
            prop_assert_eq!(&r.payload, payload);
        }
        prop_assert!(spool.consumer.reader.try_next().unwrap().is_none());

        // The recovered segment takes appends, and a second recovery finds nothing to drop.
        let lsn = rt
            .block_on(spool.handle.append(b"after recovery".to_vec()))
            .map_err(|e| TestCaseError::fail(format!("append after recovery: {e}")))?;
        prop_assert_eq!(lsn, want_next);
        drop(spool.handle);
        spool.writer.join().unwrap();
        drop(spool.consumer);
        let again = Spool::open(&dir, &spool_config(), &metrics).unwrap();
        prop_assert_eq!(again.report.next_lsn, want_next + 1);
        prop_assert_eq!(again.report.truncated_bytes, 0);
        drop(again.handle);
        again.writer.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// Dead-letter entries

fn entry() -> impl Strategy<Value = Entry> {
    (
        1u64..u64::MAX,
        prop_oneof![
            Just(Stage::Parse),
            Just(Stage::Validation),
            Just(Stage::Insert),
            Just(Stage::Decode)
        ],
        "\\PC{0,20}",
        "\\PC{0,80}",
        proptest::option::of(any::<u32>()),
        any::<i64>(),
        proptest::collection::vec(any_json(), 0..4),
        proptest::option::of("\\PC{0,100}"),
    )
        .prop_map(
            |(id, stage, reason_class, reason, code, ms, events, raw)| Entry {
                id,
                stage,
                reason_class,
                reason,
                code,
                first_failed_ms: ms,
                last_failed_ms: ms,
                attempts: 1,
                origin: Origin {
                    site: "test".into(),
                    received_at_ms: ms,
                    user_agent: "fuzz".into(),
                    ip: String::new(),
                    agent: None,
                },
                errors: events.iter().map(|_| "bad".to_string()).collect(),
                events: events
                    .iter()
                    .map(|v| serde_json::value::to_raw_value(v).unwrap())
                    .collect(),
                rows: Vec::new(),
                raw,
            },
        )
}

#[derive(Debug, Clone)]
enum EntryBytes {
    Arbitrary(Vec<u8>),
    /// A valid frame around anything.
    Framed(Vec<u8>),
    /// A valid frame around some JSON that is not necessarily an entry.
    FramedJson(Value),
    /// A real entry as the store writes it, then cut, flipped or extended.
    Entry {
        entry: Box<Entry>,
        cut: Option<usize>,
        flips: Vec<(usize, u8)>,
        trailing: Vec<u8>,
    },
}

impl EntryBytes {
    fn bytes(&self) -> Vec<u8> {
        match self {
            EntryBytes::Arbitrary(b) => b.clone(),
            EntryBytes::Framed(p) => frame(1, p),
            EntryBytes::FramedJson(v) => frame(1, &serde_json::to_vec(v).unwrap()),
            EntryBytes::Entry {
                entry,
                cut,
                flips,
                trailing,
            } => {
                let mut b = frame(
                    entry.last_failed_ms as u64,
                    &serde_json::to_vec(entry).unwrap(),
                );
                if let Some(c) = cut {
                    b.truncate(c % b.len());
                }
                if !b.is_empty() {
                    for &(at, x) in flips {
                        let n = b.len();
                        b[at % n] ^= x;
                    }
                }
                b.extend_from_slice(trailing);
                b
            }
        }
    }
}

fn entry_bytes() -> impl Strategy<Value = EntryBytes> {
    prop_oneof![
        2 => proptest::collection::vec(any::<u8>(), 0..400).prop_map(EntryBytes::Arbitrary),
        1 => proptest::collection::vec(any::<u8>(), 0..200).prop_map(EntryBytes::Framed),
        1 => any_json().prop_map(EntryBytes::FramedJson),
        4 => (
            entry(),
            proptest::option::weighted(0.2, any::<usize>()),
            proptest::collection::vec((any::<usize>(), 1u8..=255), 0..2),
            proptest::collection::vec(any::<u8>(), 0..4),
        )
            .prop_map(|(entry, cut, flips, trailing)| EntryBytes::Entry {
                entry: Box::new(entry),
                cut,
                flips,
                trailing,
            }),
    ]
}

#[test]
fn dead_letter_reader_reports_corruption_clearly() {
    let root = scratch_dir();
    std::fs::create_dir_all(root.path().join("entries")).unwrap();
    check(
        "dead-letter entry",
        (entry_bytes(), 1u64..1_000_000),
        |(eb, id)| {
            let bytes = eb.bytes();
            let path = root.path().join("entries").join(format!("{id:020}.entry"));
            std::fs::write(&path, &bytes).unwrap();
            let got = dlq::read(root.path(), id);
            let want = model_decode(&bytes)
                .and_then(|(_, payload)| serde_json::from_slice::<Value>(payload).ok());
            match got {
                Ok(e) => {
                    // Only an intact frame around an entry reads, and it reads as written.
                    let written = want.ok_or_else(|| {
                        TestCaseError::fail("read an entry from a corrupt file".to_string())
                    })?;
                    prop_assert_eq!(serde_json::to_value(&e).unwrap(), written);
                }
                Err(err) => {
                    prop_assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{}", err);
                    let msg = err.to_string();
                    prop_assert!(
                        msg.starts_with(&format!("dead-letter entry {id}")),
                        "unclear error: {}",
                        msg
                    );
                    // An intact frame holding a real entry must read.
                    if let EntryBytes::Entry { entry, .. } = &eb {
                        let framed = frame(
                            entry.last_failed_ms as u64,
                            &serde_json::to_vec(entry).unwrap(),
                        );
                        prop_assert!(
                            !bytes.starts_with(&framed),
                            "an intact entry was refused: {}",
                            msg
                        );
                    }
                }
            }
            std::fs::remove_file(&path).unwrap();
            Ok(())
        },
    );
    // The store opens over whatever the directory holds, and scans it without reading.
    for (i, junk) in [&b""[..], b"\x00", MAGIC, &[0xff; 40]].iter().enumerate() {
        std::fs::write(
            root.path()
                .join("entries")
                .join(format!("{:020}.entry", i + 1)),
            junk,
        )
        .unwrap();
    }
    std::fs::write(root.path().join("entries").join("junk.entry"), b"x").unwrap();
    let store = DeadLetters::open(root.path().to_path_buf(), 1 << 20, Metrics::new()).unwrap();
    assert_eq!(dlq::scan(store.dir()).unwrap().len(), 4);
    for id in 1..=4 {
        assert!(dlq::read(root.path(), id).is_err());
    }
}
