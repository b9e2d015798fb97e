//! Typed configuration: one struct per subsystem, loaded from a TOML file and overridden by
//! `CLICKTRAIL_*` environment variables, then validated once at start.
//!
//! Invariants: a [`Config`] that [`Config::load`] returned has passed [`Config::validate`], so
//! the rest of the program never re-checks ranges. Every key has a default here *and* is
//! documented with that default in `config/clicktrail.toml`; a unit test keeps the two in step.
//!
//! Environment overrides: `CLICKTRAIL_<KEY>` sets a top-level key (`CLICKTRAIL_LISTEN`,
//! `CLICKTRAIL_DATA_DIR`), and `CLICKTRAIL_<SECTION>_<KEY>` a key in a section
//! (`CLICKTRAIL_CLICKHOUSE_URL` → `[clickhouse] url`, `CLICKTRAIL_SPOOL_MAX_BYTES` →
//! `[spool] max_bytes`). Sites are configured in the file, except their read tokens:
//! `CLICKTRAIL_SITES_<SITE>_READ_TOKENS=tok1,tok2` replaces `read_tokens` of the site whose key,
//! upper-cased with every character other than a letter or digit written `_`, is `<SITE>`
//! (`shop-eu` → `CLICKTRAIL_SITES_SHOP_EU_READ_TOKENS`). Such a variable naming no configured
//! site is an error, so a typo cannot leave the API open to a token nobody meant.
//!
//! (Over 500 lines by design: the one typed config, each key with its doc, default and
//! validation, plus the tests that hold the shipped file and the error messages to it.)

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Sections whose keys may be overridden as `CLICKTRAIL_<SECTION>_<KEY>`.
const SECTIONS: &[&str] = &[
    "log",
    "http",
    "dedupe",
    "limits",
    "privacy",
    "clickhouse",
    "sink",
    "spool",
    "dlq",
    "compactor",
    "freshness",
    "query",
    "server",
    "rate_limit",
    "bots",
    "admin",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration key `{key}`: {problem}")]
    Invalid { key: String, problem: String },
}

fn invalid(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        problem: problem.into(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the collector listens on.
    pub listen: SocketAddr,
    /// Root of all local state: `spool/`, `dlq/`, `archive/`.
    pub data_dir: PathBuf,
    pub log: LogConfig,
    pub http: HttpConfig,
    pub dedupe: DedupeConfig,
    pub limits: LimitsConfig,
    pub privacy: PrivacyConfig,
    pub clickhouse: ClickHouseConfig,
    pub sink: SinkConfig,
    pub spool: SpoolConfig,
    pub dlq: DlqConfig,
    pub compactor: CompactorConfig,
    pub freshness: FreshnessConfig,
    pub query: QueryConfig,
    pub server: ServerConfig,
    pub rate_limit: RateLimitConfig,
    pub observability: ObservabilityConfig,
    pub bots: BotsConfig,
    pub admin: AdminConfig,
    pub sites: Vec<SiteConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().expect("static address"),
            data_dir: PathBuf::from("var/data"),
            log: LogConfig::default(),
            http: HttpConfig::default(),
            dedupe: DedupeConfig::default(),
            limits: LimitsConfig::default(),
            privacy: PrivacyConfig::default(),
            clickhouse: ClickHouseConfig::default(),
            sink: SinkConfig::default(),
            spool: SpoolConfig::default(),
            dlq: DlqConfig::default(),
            compactor: CompactorConfig::default(),
            freshness: FreshnessConfig::default(),
            query: QueryConfig::default(),
            server: ServerConfig::default(),
            rate_limit: RateLimitConfig::default(),
            observability: ObservabilityConfig::default(),
            bots: BotsConfig::default(),
            admin: AdminConfig::default(),
            sites: Vec::new(),
        }
    }
}

/// Thresholds of slow-call detection: a call slower than its threshold is logged with its
/// context and counted (`clicktrail_slow_calls_total{kind}`), so a slow ClickHouse shows
/// before the freshness alert fires. `"0s"` turns one kind off.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObservabilityConfig {
    /// One attempt of a sink insert (kind `insert`).
    #[serde(with = "humantime_serde")]
    pub slow_insert: Duration,
    /// One `/v1/query/*` call, answer included (kind `query`).
    #[serde(with = "humantime_serde")]
    pub slow_query: Duration,
    /// The compactor's work on one day (export, publish, verify, delete), or one resumed step
    /// (kind `compactor`).
    #[serde(with = "humantime_serde")]
    pub slow_compactor_step: Duration,
}

impl Default for ObservabilityConfig {
    fn default() -> Self {
        Self {
            slow_insert: Duration::from_secs(5),
            slow_query: Duration::from_secs(2),
            slow_compactor_step: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `clicktrail=debug,tower_http=info`. `RUST_LOG` wins if set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Largest request body accepted on the wire (compressed size), in bytes.
    pub max_body_bytes: usize,
    /// Largest body after gzip decompression; decompression stops past it.
    pub max_decompressed_bytes: usize,
    /// Most events in one POST.
    pub max_events_per_batch: usize,
    /// Whole-request deadline, including the wait for the spool commit.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Seconds put in `Retry-After` when the collector cannot take events now.
    pub retry_after_secs: u32,
    /// Serve this file at `/v1/snippet.js` instead of the copy built into the binary.
    pub snippet_file: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            // The snippet sends at most 20 events a batch, uncompressed; 20 events with every
            // field at its `[limits]` maximum, escaped, are about 232 KiB (the arithmetic is in
            // config/clicktrail.toml). Other clients get the same 1 MiB as on the wire.
            max_decompressed_bytes: 1024 * 1024,
            max_events_per_batch: 500,
            request_timeout: Duration::from_secs(10),
            retry_after_secs: 5,
            snippet_file: None,
        }
    }
}

/// `[dedupe]`: the intake filter of recently accepted event ids ([`crate::dedupe`]). An event
/// whose (site, id) this collector accepted within `window` is answered as accepted and not
/// stored again, so a client retry never reaches ClickHouse twice (docs/delivery.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupeConfig {
    /// How long an accepted id is remembered. `"0s"` turns the filter off.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Most ids remembered over all sites (about 64 bytes each). When full, the oldest id of the
    /// site holding the most is forgotten first.
    pub max_ids: usize,
}

impl Default for DedupeConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(600),
            max_ids: 1_000_000,
        }
    }
}

/// The largest `dedupe.max_ids`: about 6.4 GB of memory.
pub const MAX_DEDUPE_IDS: usize = 100_000_000;

impl DedupeConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.window > Duration::from_secs(7 * 24 * 3600) {
            return Err(invalid(
                "dedupe.window",
                "must be at most 7 days (\"0s\" turns the filter off)",
            ));
        }
        if !self.window.is_zero() && !(1000..=MAX_DEDUPE_IDS).contains(&self.max_ids) {
            return Err(invalid(
                "dedupe.max_ids",
                format!(
                    "must be between 1000 and {MAX_DEDUPE_IDS} (about 64 bytes of memory each)"
                ),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_url_len: usize,
    pub max_title_len: usize,
    pub max_selector_len: usize,
    pub max_text_len: usize,
    pub max_id_len: usize,
    pub max_name_len: usize,
    pub max_props_bytes: usize,
    pub max_user_agent_len: usize,
    /// Client timestamps further in the past than this are replaced by the receive time.
    #[serde(with = "humantime_serde")]
    pub max_clock_skew_past: Duration,
    /// Client timestamps further in the future than this are replaced by the receive time.
    #[serde(with = "humantime_serde")]
    pub max_clock_skew_future: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_url_len: 2048,
            max_title_len: 512,
            max_selector_len: 512,
            max_text_len: 256,
            max_id_len: 64,
            max_name_len: 128,
            max_props_bytes: 2048,
            max_user_agent_len: 512,
            max_clock_skew_past: Duration::from_secs(24 * 3600),
            max_clock_skew_future: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpMode {
    /// Keep nothing of the client address.
    Drop,
    /// Keep the network only: IPv4 /24, IPv6 /48.
    Anonymize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    pub ip: IpMode,
    /// Store the raw user-agent string besides the parsed browser / OS / device.
    pub keep_user_agent: bool,
    /// Query parameters kept in stored page URLs and referrers besides `utm_*` (always kept);
    /// every other parameter is removed. Names compare exactly.
    pub keep_query_params: Vec<String>,
    /// Keep the `#fragment` of page URLs and referrers (hash-routed single-page apps).
    pub keep_fragment: bool,
    /// Element tags whose click text is stored (`"*"`: any element); other clicks keep no text.
    pub text_for_tags: Vec<String>,
    /// Drop requests that carry `Sec-GPC: 1` or `DNT: 1` (counted, answered 200).
    pub honor_do_not_track: bool,
    /// UTC days whose cookieless salt is kept on disk (today included); older ones are deleted,
    /// and with them any way to recompute that day's visitor ids.
    pub salt_retention_days: u32,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        Self {
            ip: IpMode::Anonymize,
            keep_user_agent: false,
            keep_query_params: Vec::new(),
            keep_fragment: false,
            text_for_tags: vec!["a".into(), "button".into()],
            honor_do_not_track: true,
            salt_retention_days: 2,
        }
    }
}

impl PrivacyConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.salt_retention_days == 0 {
            return Err(invalid(
                "privacy.salt_retention_days",
                "must be at least 1 (today's salt)",
            ));
        }
        for (i, p) in self.keep_query_params.iter().enumerate() {
            if p.is_empty() {
                return Err(invalid(
                    &format!("privacy.keep_query_params[{i}]"),
                    "is empty",
                ));
            }
        }
        for (i, t) in self.text_for_tags.iter().enumerate() {
            if t != "*"
                && (t.is_empty() || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
            {
                return Err(invalid(
                    &format!("privacy.text_for_tags[{i}]"),
                    "must be a tag name such as \"a\" or \"button\", or \"*\"",
                ));
            }
        }
        Ok(())
    }
}

/// What happens to events from known crawlers and headless browsers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BotAction {
    /// Not stored; counted in `clicktrail_events_dropped_total{reason="bot"}`.
    Drop,
    /// Stored with `device = 'bot'`; counted in `clicktrail_bot_events_total`.
    Flag,
}

/// `[bots]`: crawler and headless-browser detection by User-Agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BotsConfig {
    pub action: BotAction,
    /// Distinct User-Agent strings whose parse (browser, OS, device, bot) is cached (LRU).
    pub user_agent_cache: usize,
}

impl Default for BotsConfig {
    fn default() -> Self {
        Self {
            action: BotAction::Drop,
            user_agent_cache: 10_000,
        }
    }
}

/// `[admin]`: where the admin routes (`/v1/admin/*`) and `/metrics` are served.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// A separate listener for them (e.g. `127.0.0.1:9091`); the public listener then answers
    /// 404 for them. Empty: served on the public listener.
    #[serde(with = "optional_addr")]
    pub listen: Option<SocketAddr>,
}

/// An address that may be written `""` for none (env overrides cannot unset a key).
mod optional_addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        a: &Option<SocketAddr>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match a {
            Some(a) => s.serialize_str(&a.to_string()),
            None => s.serialize_str(""),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SocketAddr>, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim().is_empty() {
            return Ok(None);
        }
        s.trim().parse().map(Some).map_err(serde::de::Error::custom)
    }
}

/// A credential: printed as `***` by `Debug` and `Display`, serialised as itself only so that a
/// config can be written back (tests start the binary from a written config). The value is
/// reached through [`Secret::expose`], which makes every use visible in review.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP interface of the server.
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: Secret,
    /// Deadline of one insert or query.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How often the health probe (`SELECT 1`) runs.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// Compression of request and answer bodies on the HTTP interface.
    pub compression: Compression,
    /// The `remote_servers` cluster the schema lives on; empty = one server. With a name,
    /// `migrate` creates everything `ON CLUSTER` (replicated local tables, Distributed tables
    /// under the single-server names), the sink inserts synchronously through the Distributed
    /// `events`, the probe reports every shard and replica, and the compactor archives each
    /// shard's part of a day from its replicas and deletes it `ON CLUSTER`.
    pub cluster: String,
}

/// How bodies travel to and from ClickHouse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// ClickHouse's LZ4 framing: a third of the bytes for some CPU on both ends.
    Lz4,
    /// Plain bodies: no compression work, more bytes (cheapest on loopback).
    None,
}

impl std::fmt::Debug for ClickHouseConfig {
    // Secrets never reach logs or `clicktrail check` output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseConfig")
            .field("url", &self.url)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &self.password)
            .field("timeout", &self.timeout)
            .field("probe_interval", &self.probe_interval)
            .field("compression", &self.compression)
            .field("cluster", &self.cluster)
            .finish()
    }
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            database: "clicktrail".into(),
            user: "default".into(),
            password: Secret::default(),
            timeout: Duration::from_secs(30),
            probe_interval: Duration::from_secs(5),
            compression: Compression::Lz4,
            cluster: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// A batch is sent when it holds this many rows...
    pub batch_rows: usize,
    /// ...or, while a backlog waits behind it, up to this many: each batch cut full with more
    /// records already committed doubles the next one's row limit up to here (the byte limit
    /// still holds); a batch cut by age starts over at `batch_rows`.
    pub max_batch_rows: usize,
    /// ...or this many bytes of spool payload...
    pub batch_bytes: usize,
    /// ...or its oldest event has waited this long.
    #[serde(with = "humantime_serde")]
    pub batch_age: Duration,
    /// First retry delay after a failed insert; doubles up to `retry_max`, with jitter.
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Attempts before a batch refused with a permanent (data) error goes to dead letters.
    pub permanent_error_attempts: u32,
    /// How long shutdown may spend delivering what is pending before leaving it on disk.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            batch_rows: 50_000,
            max_batch_rows: 100_000,
            batch_bytes: 32 * 1024 * 1024,
            batch_age: Duration::from_secs(1),
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
            permanent_error_attempts: 3,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// fsync every group commit; an acknowledged event survives power loss.
    Batch,
    /// One fsync per appended record: group commit is off, so no two requests share one.
    /// The same guarantee as `batch` at a much higher fsync rate.
    Always,
    /// Never fsync; an acknowledged event survives a process crash, not a power loss.
    Never,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    pub fsync: FsyncMode,
    /// Extra time the writer waits to gather more requests into one commit. 0 = commit as soon
    /// as the previous fsync returns (requests that arrive meanwhile still share the next one).
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// A group commit is cut once it holds this many bytes.
    pub commit_max_bytes: usize,
    /// Segment files are rotated past this size.
    pub segment_bytes: u64,
    /// Disk quota of the spool; past it the collector answers 503 until the sink catches up.
    pub max_bytes: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            fsync: FsyncMode::Batch,
            commit_interval: Duration::ZERO,
            commit_max_bytes: 4 * 1024 * 1024,
            segment_bytes: 64 * 1024 * 1024,
            max_bytes: 1024 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DlqConfig {
    /// Disk quota of the dead-letter store. Parse and validation entries have their own
    /// shares of it (below); insert and decode entries share the rest and evict their oldest.
    pub max_bytes: u64,
    /// Parse entries at most; past it new ones are dropped (counted), nothing is evicted.
    pub parse_max_bytes: u64,
    /// Validation entries at most; past it new ones are dropped (counted), nothing is evicted.
    pub validation_max_bytes: u64,
    /// Parse entries kept per minute for bodies that name no configured site (or come from
    /// an origin the site does not allow): a sample, so junk from anywhere cannot fill the
    /// store. 0 keeps none.
    pub unattributed_parse_per_minute: u32,
    /// Keep request bodies that could not be parsed at all (capped at 64 KiB each).
    pub keep_unparseable_bodies: bool,
}

impl Default for DlqConfig {
    fn default() -> Self {
        Self {
            max_bytes: 256 * 1024 * 1024,
            parse_max_bytes: 16 * 1024 * 1024,
            validation_max_bytes: 32 * 1024 * 1024,
            unattributed_parse_per_minute: 10,
            keep_unparseable_bodies: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompactorConfig {
    /// Run the compactor inside `serve`.
    pub enabled: bool,
    /// How often `serve` looks for cold partitions.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Days kept hot in ClickHouse; a day is archived once all of it is older than this.
    pub hot_days: u32,
    /// Where Parquet goes: empty = `<data_dir>/archive`, a local path, or an object store URL.
    pub archive_url: String,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// Rows inserted into ClickHouse within this much of an archive run are left for the next
    /// one, so an insert still in flight is never deleted unarchived.
    #[serde(with = "humantime_serde")]
    pub insert_settle: Duration,
    /// How long to wait for ClickHouse to finish deleting archived rows.
    #[serde(with = "humantime_serde")]
    pub mutation_timeout: Duration,
    /// Part size of the archive's multipart uploads: a file up to this size is one put, a
    /// bigger one goes up in parts of this size (memory: about three of them). At least 5 MiB
    /// (S3's smallest part); S3 allows 10,000 parts, so the default allows files of 160 GiB.
    pub upload_part_bytes: usize,
}

impl Default for CompactorConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(3600),
            hot_days: 30,
            archive_url: String::new(),
            row_group_rows: 262_144,
            insert_settle: Duration::from_secs(600),
            mutation_timeout: Duration::from_secs(600),
            upload_part_bytes: 16 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FreshnessConfig {
    /// How often a canary event is written through the real path (spool → sink → ClickHouse)
    /// and looked up; its end-to-end delay is `clicktrail_canary_delay_seconds`. 0 disables.
    #[serde(with = "humantime_serde")]
    pub canary_interval: Duration,
}

impl Default for FreshnessConfig {
    fn default() -> Self {
        Self {
            canary_interval: Duration::from_secs(30),
        }
    }
}

/// The read-only report API (`/v1/query/*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// Deadline of one report query, enforced by ClickHouse (`max_execution_time`) and by the
    /// collector; past it the API answers 504.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Most rows a `pages` or `elements` report returns (and the largest `limit` accepted).
    pub max_rows: u32,
    /// Most cells a heatmap returns; a page taller than that is cut at the bottom.
    pub max_cells: u32,
    /// Events buffered per `GET /v1/live` connection; a client that falls this far behind is
    /// dropped (ingestion never waits for it).
    pub live_buffer: usize,
    /// Most `GET /v1/live` connections at once; more are refused with 503.
    pub live_max_subscribers: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            max_rows: 1000,
            max_cells: 200_000,
            live_buffer: 1024,
            live_max_subscribers: 64,
        }
    }
}

/// `[server]`: what one connection and all requests together may hold, since the collector
/// faces the public internet.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Time a client has to send a request's headers, counted from when the server starts
    /// waiting for them (also between requests on a kept-alive connection); past it the
    /// connection is closed.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A kept-alive connection with no request in flight for this long is closed.
    #[serde(with = "humantime_serde")]
    pub keep_alive_timeout: Duration,
    /// Open connections at most; more are closed at accept (with a 503 if the socket takes it).
    pub max_connections: usize,
    /// Request body bytes (as received, and again once inflated) held at once by all requests
    /// not yet answered; past it requests get 503 + Retry-After before their body is read.
    pub max_inflight_body_bytes: usize,
    /// Proxies (CIDR ranges) whose `X-Forwarded-For` is believed: the client is the right-most
    /// address that is not one of them. Empty: the header is ignored, the peer is the client.
    pub trusted_proxies: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(5),
            max_connections: 10_000,
            max_inflight_body_bytes: 64 * 1024 * 1024,
            trusted_proxies: Vec::new(),
        }
    }
}

impl ServerConfig {
    /// The parsed `trusted_proxies`; a bare address is a /32 (/128).
    pub fn trusted_proxy_nets(&self) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        self.trusted_proxies
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.parse::<ipnet::IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map(|n| n.trunc())
                    .map_err(|_| {
                        invalid(
                            &format!("server.trusted_proxies[{i}]"),
                            format!("`{s}` is not an address or CIDR range (10.0.0.0/8, fd00::/8)"),
                        )
                    })
            })
            .collect()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.header_read_timeout.is_zero() {
            return Err(invalid(
                "server.header_read_timeout",
                "must be greater than 0",
            ));
        }
        if self.keep_alive_timeout.is_zero() || self.keep_alive_timeout > self.header_read_timeout {
            return Err(invalid(
                "server.keep_alive_timeout",
                "must be greater than 0 and at most server.header_read_timeout (which also bounds an idle connection)",
            ));
        }
        if self.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be greater than 0"));
        }
        self.trusted_proxy_nets()?;
        Ok(())
    }
}

/// `[rate_limit]`: requests per second per client address and per site, with a burst.
/// 429 + Retry-After past them. A `per_second` of 0 turns that limit off.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Sustained requests per second from one client address (IPv6: one /64).
    pub per_ip_per_second: u32,
    /// Requests one address may send at once above the sustained rate.
    pub per_ip_burst: u32,
    /// Sustained requests per second for one site key, from all clients.
    pub per_site_per_second: u32,
    pub per_site_burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_ip_per_second: 20,
            per_ip_burst: 200,
            per_site_per_second: 2000,
            per_site_burst: 10_000,
        }
    }
}

impl RateLimitConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, rate, burst) in [
            (
                "rate_limit.per_ip_burst",
                self.per_ip_per_second,
                self.per_ip_burst,
            ),
            (
                "rate_limit.per_site_burst",
                self.per_site_per_second,
                self.per_site_burst,
            ),
        ] {
            if rate > 0 && burst == 0 {
                return Err(invalid(key, "must be greater than 0 when the rate is"));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// The public key the snippet sends as `site` (`data-site`).
    pub key: String,
    /// Origins allowed to post for this site (`https://example.com`), or `*` for any.
    #[serde(default)]
    pub origins: Vec<String>,
    /// Bearer tokens that may read this site's reports (`/v1/query/*`). None = no reads.
    #[serde(default)]
    pub read_tokens: Vec<Secret>,
    /// Query parameters this site's stored URLs keep besides `utm_*` and
    /// `privacy.keep_query_params` (a search page's `q`, a shop's `variant`).
    #[serde(default)]
    pub keep_query_params: Vec<String>,
}

/// Shortest read token accepted: a guessable token would open a site's reports.
pub const MIN_READ_TOKEN_LEN: usize = 16;

/// The environment variable (after the prefix) that sets a site's read tokens.
pub fn read_tokens_env_key(site: &str) -> String {
    let norm: String = site
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("sites_{norm}_read_tokens")
}

impl Config {
    /// Loads `path` (which must exist unless it is the default path), applies `CLICKTRAIL_*`
    /// environment overrides and validates the result.
    pub fn load(path: &Path, require_file: bool) -> Result<Self, ConfigError> {
        Self::load_with_env(path, require_file, Env::prefixed("CLICKTRAIL_"))
    }

    fn load_with_env(path: &Path, require_file: bool, env: Env) -> Result<Self, ConfigError> {
        if require_file && !path.exists() {
            return Err(invalid(
                "--config",
                format!("file {} does not exist", path.display()),
            ));
        }
        // Read tokens per site come from `sites_<site>_read_tokens`, applied after extraction:
        // figment cannot address one element of the `sites` array.
        let site_tokens: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.as_str().to_ascii_lowercase(), v))
            .filter(|(k, _)| k.starts_with("sites_"))
            .collect();
        // CLICKTRAIL_CONFIG names the file (read by the CLI), it is not a key inside it.
        let env = env
            .filter(|key| {
                key != "config" && !key.as_str().to_ascii_lowercase().starts_with("sites_")
            })
            .map(|key| {
                let key = key.as_str().to_ascii_lowercase();
                for section in SECTIONS {
                    if let Some(rest) = key.strip_prefix(section).and_then(|r| r.strip_prefix('_'))
                    {
                        return format!("{section}.{rest}").into();
                    }
                }
                key.into()
            });
        let mut config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file(path))
            .merge(env)
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))?;
        for (key, value) in site_tokens {
            let mut matching = config
                .sites
                .iter_mut()
                .filter(|s| read_tokens_env_key(&s.key) == key);
            let Some(site) = matching.next() else {
                return Err(invalid(
                    &key.to_ascii_uppercase(),
                    "environment variable names no configured site (write CLICKTRAIL_SITES_<SITE>_READ_TOKENS, <SITE> the key upper-cased with `_` for other characters)",
                ));
            };
            site.read_tokens = value.split(',').map(|t| Secret::new(t.trim())).collect();
            if matching.next().is_some() {
                return Err(invalid(
                    &key.to_ascii_uppercase(),
                    "two site keys map to this environment variable; set their read_tokens in the file",
                ));
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and cross-field rules; the error names the key to fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = |key: &str, v: usize| {
            if v == 0 {
                Err(invalid(key, "must be greater than 0"))
            } else {
                Ok(())
            }
        };
        positive("http.max_body_bytes", self.http.max_body_bytes)?;
        positive("http.max_events_per_batch", self.http.max_events_per_batch)?;
        positive("limits.max_url_len", self.limits.max_url_len)?;
        positive("limits.max_id_len", self.limits.max_id_len)?;
        positive("sink.batch_rows", self.sink.batch_rows)?;
        positive("sink.batch_bytes", self.sink.batch_bytes)?;
        if self.sink.max_batch_rows < self.sink.batch_rows {
            return Err(invalid(
                "sink.max_batch_rows",
                format!(
                    "must be at least sink.batch_rows ({})",
                    self.sink.batch_rows
                ),
            ));
        }
        positive("spool.commit_max_bytes", self.spool.commit_max_bytes)?;
        if self.http.max_decompressed_bytes < self.http.max_body_bytes {
            return Err(invalid(
                "http.max_decompressed_bytes",
                "must be at least http.max_body_bytes",
            ));
        }
        if self.http.request_timeout.is_zero() {
            return Err(invalid("http.request_timeout", "must be greater than 0"));
        }
        if self.sink.batch_age.is_zero() {
            return Err(invalid("sink.batch_age", "must be greater than 0"));
        }
        if self.sink.retry_initial.is_zero() || self.sink.retry_max < self.sink.retry_initial {
            return Err(invalid(
                "sink.retry_max",
                "must be at least sink.retry_initial, which must be greater than 0",
            ));
        }
        if self.spool.segment_bytes < 4096 {
            return Err(invalid("spool.segment_bytes", "must be at least 4096"));
        }
        if self.spool.max_bytes < 2 * self.spool.segment_bytes {
            return Err(invalid(
                "spool.max_bytes",
                format!(
                    "must be at least twice spool.segment_bytes ({})",
                    self.spool.segment_bytes
                ),
            ));
        }
        if self.compactor.row_group_rows < 1024 {
            return Err(invalid("compactor.row_group_rows", "must be at least 1024"));
        }
        if self.compactor.insert_settle < self.clickhouse.timeout {
            return Err(invalid(
                "compactor.insert_settle",
                format!(
                    "must be at least clickhouse.timeout ({:?}): an insert may be in flight that long",
                    self.clickhouse.timeout
                ),
            ));
        }
        let part = self.compactor.upload_part_bytes;
        if !(crate::compactor::MIN_PART_BYTES..=5 * 1024 * 1024 * 1024).contains(&part) {
            return Err(invalid(
                "compactor.upload_part_bytes",
                format!(
                    "must be between {} (5 MiB, S3's smallest part) and 5368709120 (5 GiB, its largest)",
                    crate::compactor::MIN_PART_BYTES
                ),
            ));
        }
        if self.compactor.interval.is_zero() {
            return Err(invalid("compactor.interval", "must be greater than 0"));
        }
        if self.dlq.max_bytes < 1024 * 1024 {
            return Err(invalid("dlq.max_bytes", "must be at least 1048576 (1 MiB)"));
        }
        if self.dlq.parse_max_bytes + self.dlq.validation_max_bytes > self.dlq.max_bytes / 2 {
            return Err(invalid(
                "dlq.validation_max_bytes",
                "dlq.parse_max_bytes + dlq.validation_max_bytes must be at most half of dlq.max_bytes (the rest is for acknowledged events)",
            ));
        }
        if self.server.max_inflight_body_bytes < self.http.max_decompressed_bytes {
            return Err(invalid(
                "server.max_inflight_body_bytes",
                "must be at least http.max_decompressed_bytes, or the largest body is never taken",
            ));
        }
        self.server.validate()?;
        self.dedupe.validate()?;
        self.rate_limit.validate()?;
        self.privacy.validate()?;
        positive("bots.user_agent_cache", self.bots.user_agent_cache)?;
        if self
            .admin
            .listen
            .is_some_and(|a| a == self.listen && a.port() != 0)
        {
            return Err(invalid(
                "admin.listen",
                "must differ from listen (leave it empty to serve admin routes there)",
            ));
        }
        if self.clickhouse.timeout.is_zero() {
            return Err(invalid("clickhouse.timeout", "must be greater than 0"));
        }
        match url::Url::parse(&self.clickhouse.url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            Ok(u) => {
                return Err(invalid(
                    "clickhouse.url",
                    format!("scheme must be http or https, not `{}`", u.scheme()),
                ))
            }
            Err(e) => {
                return Err(invalid(
                    "clickhouse.url",
                    format!("`{}` is not a URL: {e}", self.clickhouse.url),
                ))
            }
        }
        if self.query.timeout.is_zero() {
            return Err(invalid("query.timeout", "must be greater than 0"));
        }
        positive("query.max_rows", self.query.max_rows as usize)?;
        positive("query.max_cells", self.query.max_cells as usize)?;
        positive("query.live_buffer", self.query.live_buffer)?;
        positive(
            "query.live_max_subscribers",
            self.query.live_max_subscribers,
        )?;
        if !is_identifier(&self.clickhouse.database) {
            return Err(invalid(
                "clickhouse.database",
                "must be letters, digits and underscores, not starting with a digit",
            ));
        }
        if !self.clickhouse.cluster.is_empty() && !is_cluster_name(&self.clickhouse.cluster) {
            return Err(invalid(
                "clickhouse.cluster",
                "must be empty (one server) or a remote_servers cluster name: letters, digits and underscores, not starting with a digit",
            ));
        }
        if self.sites.is_empty() {
            return Err(invalid(
                "sites",
                "no [[sites]] configured: add one with a key and its allowed origins",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        let mut token_owner = std::collections::HashMap::new();
        for (i, site) in self.sites.iter().enumerate() {
            for (j, token) in site.read_tokens.iter().enumerate() {
                let key = format!("sites[{i}].read_tokens[{j}]");
                let t = token.expose();
                if t.is_empty() {
                    return Err(invalid(&key, "is empty"));
                }
                if t.len() < MIN_READ_TOKEN_LEN {
                    return Err(invalid(
                        &key,
                        format!("must be at least {MIN_READ_TOKEN_LEN} characters"),
                    ));
                }
                if !t.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
                    return Err(invalid(
                        &key,
                        "must be printable ASCII without spaces or commas",
                    ));
                }
                if let Some(other) = token_owner.insert(t, i) {
                    return Err(invalid(
                        &key,
                        if other == i {
                            "is listed twice for this site".to_string()
                        } else {
                            format!(
                                "is also a read token of sites[{other}]: a token reads one site"
                            )
                        },
                    ));
                }
            }
            if site.key.is_empty() || site.key.len() > 64 {
                return Err(invalid(
                    &format!("sites[{i}].key"),
                    "must be 1 to 64 characters",
                ));
            }
            if !seen.insert(site.key.as_str()) {
                return Err(invalid(
                    &format!("sites[{i}].key"),
                    format!("`{}` is configured twice", site.key),
                ));
            }
            for (j, p) in site.keep_query_params.iter().enumerate() {
                if p.is_empty() || p.contains(['&', '=', '#']) {
                    return Err(invalid(
                        &format!("sites[{i}].keep_query_params[{j}]"),
                        format!("`{p}` is not a parameter name (empty, or holds & = #)"),
                    ));
                }
            }
            for origin in &site.origins {
                if origin == "*" {
                    continue;
                }
                let ok = url::Url::parse(origin)
                    .map(|u| {
                        (u.scheme() == "http" || u.scheme() == "https")
                            && u.path() == "/"
                            && !origin.ends_with('/')
                    })
                    .unwrap_or(false);
                if !ok {
                    return Err(invalid(
                        &format!("sites[{i}].origins"),
                        format!(
                            "`{origin}` is not an origin: write scheme://host[:port] without a path, or `*`"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.data_dir.join("spool")
    }

    pub fn dlq_dir(&self) -> PathBuf {
        self.data_dir.join("dlq")
    }

    /// The cookieless visitor salts, one file per UTC day (`privacy.salt_retention_days`).
    pub fn salts_dir(&self) -> PathBuf {
        self.data_dir.join("salts")
    }
}

/// What `clickhouse.cluster` may be (besides empty): a name spliced into DDL unquoted.
pub fn is_cluster_name(s: &str) -> bool {
    is_identifier(s)
}

pub(crate) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, body: &str) -> PathBuf {
        let p = dir.path().join("c.toml");
        std::fs::write(&p, body).unwrap();
        p
    }

    const SITE: &str = "[[sites]]\nkey = \"demo\"\norigins = [\"http://localhost:8080\"]\n";

    #[test]
    fn shipped_config_loads_and_matches_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/clicktrail.toml");
        let shipped = Config::load_with_env(&path, true, Env::prefixed("CLICKTRAIL_TEST_NONE_"))
            .expect("shipped config is valid");
        // The shipped file documents every default: apart from the demo site it must be the
        // defaults, so the comments cannot drift from the code.
        let mut defaults = Config {
            sites: shipped.sites.clone(),
            ..Config::default()
        };
        defaults.data_dir = shipped.data_dir.clone();
        // The one deliberate difference: the shipped file keeps the admin routes and /metrics
        // on loopback; the code's default (one listener) is what embedders and tests get.
        assert!(
            shipped.admin.listen.is_some_and(|a| a.ip().is_loopback()),
            "config/clicktrail.toml should bind [admin] listen to loopback"
        );
        defaults.admin = shipped.admin.clone();
        assert_eq!(
            toml_of(&shipped),
            toml_of(&defaults),
            "config/clicktrail.toml and Config::default() disagree"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        for key in all_keys(&serde_json::to_value(Config::default()).unwrap(), "") {
            let leaf = key.rsplit('.').next().unwrap();
            if leaf == "sites" {
                assert!(text.contains("[[sites]]"), "[[sites]] is not documented");
                continue;
            }
            assert!(
                text.contains(&format!("{leaf} =")),
                "key {key} is not documented in config/clicktrail.toml"
            );
        }
    }

    fn toml_of(c: &Config) -> String {
        serde_json::to_string(c).unwrap()
    }

    fn all_keys(v: &serde_json::Value, prefix: &str) -> Vec<String> {
        match v {
            serde_json::Value::Object(m) => m
                .iter()
                .flat_map(|(k, v)| {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    match v {
                        serde_json::Value::Object(_) => all_keys(v, &p),
                        _ => vec![p],
                    }
                })
                .collect(),
            _ => vec![],
        }
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn env_overrides_top_level_and_section_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, SITE);
        figment::Jail::expect_with(|jail| {
            jail.set_env("CTTEST_LISTEN", "127.0.0.1:9999");
            jail.set_env("CTTEST_CLICKHOUSE_URL", "http://10.0.0.1:8123");
            jail.set_env("CTTEST_DATA_DIR", "/tmp/x");
            jail.set_env("CTTEST_SPOOL_MAX_BYTES", "999999999");
            jail.set_env("CTTEST_CONFIG", "/elsewhere.toml");
            let c = Config::load_with_env(&p, true, Env::prefixed("CTTEST_")).unwrap();
            assert_eq!(c.listen.port(), 9999);
            assert_eq!(c.clickhouse.url, "http://10.0.0.1:8123");
            assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
            assert_eq!(c.spool.max_bytes, 999_999_999);
            Ok(())
        });
    }

    #[test]
    fn errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (format!("[sink]\nbatch_rows = 0\n{SITE}"), "sink.batch_rows"),
            (
                format!("[clickhouse]\nurl = \"ftp://x\"\n{SITE}"),
                "clickhouse.url",
            ),
            ("".to_string(), "sites"),
            (
                "[[sites]]\nkey = \"a\"\norigins = [\"https://a.com/path\"]\n".to_string(),
                "sites[0].origins",
            ),
            (format!("[spool]\nfsync = \"sometimes\"\n{SITE}"), "fsync"),
            (format!("[sink]\nbatch_age = \"soon\"\n{SITE}"), "batch_age"),
            (format!("bogus_key = 1\n{SITE}"), "bogus_key"),
            (
                format!("{SITE}read_tokens = [\"\"]\n"),
                "sites[0].read_tokens[0]",
            ),
            (
                format!("{SITE}read_tokens = [\"short\"]\n"),
                "sites[0].read_tokens[0]",
            ),
            (
                format!(
                    "{SITE}read_tokens = [\"{TOKEN}\"]\n[[sites]]\nkey = \"b\"\nread_tokens = [\"{TOKEN}\"]\n"
                ),
                "sites[1].read_tokens[0]",
            ),
            (
                format!("{SITE}keep_query_params = [\"q\", \"a=b\"]\n"),
                "sites[0].keep_query_params[1]",
            ),
            (format!("[query]\ntimeout = \"0s\"\n{SITE}"), "query.timeout"),
            (format!("[dedupe]\nmax_ids = 10\n{SITE}"), "dedupe.max_ids"),
            (format!("[dedupe]\nwindow = \"30d\"\n{SITE}"), "dedupe.window"),
            (
                format!("[compactor]\nupload_part_bytes = 1048576\n{SITE}"),
                "compactor.upload_part_bytes",
            ),
            (
                format!("[clickhouse]\ncluster = \"two shards\"\n{SITE}"),
                "clickhouse.cluster",
            ),
            (
                format!("[server]\nkeep_alive_timeout = \"1m\"\n{SITE}"),
                "server.keep_alive_timeout",
            ),
            (
                format!("[server]\nmax_connections = 0\n{SITE}"),
                "server.max_connections",
            ),
            (
                format!("[server]\nmax_inflight_body_bytes = 1000\n{SITE}"),
                "server.max_inflight_body_bytes",
            ),
            (
                format!("[rate_limit]\nper_ip_burst = 0\n{SITE}"),
                "rate_limit.per_ip_burst",
            ),
            (
                format!("[dlq]\nparse_max_bytes = 200000000\n{SITE}"),
                "dlq.validation_max_bytes",
            ),
            (
                format!("[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0/8\"]\n{SITE}"),
                "server.trusted_proxies[1]",
            ),
            (
                format!("[privacy]\ntext_for_tags = [\"a b\"]\n{SITE}"),
                "privacy.text_for_tags[0]",
            ),
            (
                format!("[privacy]\nsalt_retention_days = 0\n{SITE}"),
                "privacy.salt_retention_days",
            ),
            (format!("[bots]\naction = \"ban\"\n{SITE}"), "action"),
            (format!("[admin]\nlisten = \"loopback\"\n{SITE}"), "listen"),
            (
                format!("listen = \"127.0.0.1:8080\"\n[admin]\nlisten = \"127.0.0.1:8080\"\n{SITE}"),
                "admin.listen",
            ),
        ];
        for (body, key) in cases {
            let p = write(&dir, &body);
            let err = Config::load_with_env(&p, true, Env::prefixed("CTTEST_NONE_"))
                .expect_err(&body)
                .to_string();
            assert!(err.contains(key), "error `{err}` should name `{key}`");
        }
    }

    const TOKEN: &str = "read-token-0123456789";

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn read_tokens_come_from_the_file_or_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            &dir,
            &format!(
                "{SITE}read_tokens = [\"{TOKEN}\"]\n[[sites]]\nkey = \"shop-eu\"\norigins = [\"*\"]\n"
            ),
        );
        let c = Config::load_with_env(&p, true, Env::prefixed("CTTEST_NONE_")).unwrap();
        assert_eq!(c.sites[0].read_tokens, vec![Secret::from(TOKEN)]);
        assert!(c.sites[1].read_tokens.is_empty());
        assert!(!format!("{c:?}").contains(TOKEN), "a token in Debug output");
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "CTTEST_SITES_SHOP_EU_READ_TOKENS",
                "eu-token-0123456789, eu-token-abcdefghij",
            );
            let c = Config::load_with_env(&p, true, Env::prefixed("CTTEST_")).unwrap();
            assert_eq!(c.sites[0].read_tokens, vec![Secret::from(TOKEN)]);
            assert_eq!(
                c.sites[1].read_tokens,
                vec![
                    Secret::from("eu-token-0123456789"),
                    Secret::from("eu-token-abcdefghij")
                ]
            );
            jail.set_env("CTTEST_SITES_SHOP_US_READ_TOKENS", "us-token-0123456789");
            let err = Config::load_with_env(&p, true, Env::prefixed("CTTEST_"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("SITES_SHOP_US_READ_TOKENS"), "{err}");
            assert!(!err.contains("us-token"), "the token in an error: {err}");
            Ok(())
        });
    }

    #[test]
    fn missing_file_is_an_error_when_required() {
        let err = Config::load(Path::new("/nonexistent/c.toml"), true).unwrap_err();
        assert!(err.to_string().contains("does not exist"));
    }

    #[test]
    fn secrets_are_not_printed() {
        let c = ClickHouseConfig {
            password: "hunter2".into(),
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
