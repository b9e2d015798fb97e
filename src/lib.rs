//! # clicktrail
//!
//! A self-hosted UX-analytics collector: a browser snippet posts page views, clicks and scrolls;
//! the collector validates them, makes them durable, and batches them into ClickHouse.
//!
//! # Layout (one module per box of the data flow; see ARCHITECTURE.md)
//!
//! ```text
//! snippet ─POST /v1/events─▶ http ─▶ event (decode, validate, enrich)
//!                                      │ accepted events, one record per request
//!                                      ▼
//!                                    spool (append-only log, CRC32C, group-committed fsync)
//!                                      │ 200 only now; the sink reads committed records
//!                                      ▼
//!                                    sink (batch → ClickHouse insert, retry by error class)
//!                                      │ permanent refusals ─▶ dlq
//!                                      ▼ checkpoint advances, spool reclaims segments
//!                                    ClickHouse `events`
//! ```
//!
//! - [`config`]: the typed configuration and its validation.
//! - [`datadir`]: the data directory's exclusive lock and private modes.
//! - [`dedupe`]: the intake filter of recently accepted event ids (a retry is stored once).
//! - [`event`]: wire types, validation rules and the row type.
//! - [`http`]: router, handlers, CORS, errors → responses.
//! - [`spool`]: the durable log: writer, reader, checkpoint, recovery.
//! - [`sink`]: batching, inserts, error classes, retries.
//! - [`dlq`]: where refused events are kept, and their replay.
//! - [`compactor`]: cold days → verified Parquet archive → deleted from ClickHouse.
//! - [`query`]: the read-only report API (`/v1/query/*`) over the rollups, per-site tokens.
//! - [`live`]: acknowledged events fanned out to `/v1/live` subscribers, never slowing ingestion.
//! - [`migrate`]: schema migrations for every supported ClickHouse version.
//! - [`freshness`]: lag gauge and ClickHouse probe.
//! - [`metrics`]: every Prometheus metric, defined once.
//! - [`ratelimit`]: request rate limits per client address and per site.
//! - [`serve`]: wires the above together and shuts them down in order.

pub mod clickhouse;
pub mod clock;
pub mod compactor;
pub mod config;
pub mod datadir;
pub mod dedupe;
pub mod dlq;
pub mod event;
pub mod freshness;
pub mod http;
pub mod ingest;
pub mod live;
pub mod metrics;
pub mod migrate;
pub mod query;
pub mod ratelimit;
pub mod row;
pub mod rowbinary;
pub mod serve;
pub mod sink;
pub mod slow;
pub mod spool;
