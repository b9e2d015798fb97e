//! Every Prometheus metric of the process, defined once (catalogue: `docs/metrics.md`).
//!
//! [`Metrics`] is built per server instance and handed to each component through `AppState` /
//! constructors; there is no global recorder, so tests can run several servers in one process.
//! Label values come from closed sets (routes, event types, reason classes), never from client
//! input, so cardinality stays bounded.
//!
//! (Over 500 lines by design: every metric is defined here, once.)

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    // The derive strips `r#`, so the label is `type`.
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageReason {
    pub stage: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    pub stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScopeLabel {
    pub scope: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub version: &'static str,
}

/// A shard of the configured cluster (`system.clusters.shard_num`): a closed set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabel {
    pub shard: String,
}

/// One replica of the configured cluster, `host:port` as `remote_servers` names it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabel {
    pub shard: String,
    pub replica: String,
}

type FGauge = Gauge<f64, AtomicU64>;

/// `clicktrail_canary_delay_seconds`: one family holding the unlabeled series (the canary read
/// through `events`, as on one server) and, on a cluster, `{shard, replica}` series (each
/// shard's canary read on each of its replicas). A `Family` alone cannot hold a series without
/// labels (it writes `name{}`), and registering the two under one name would repeat its
/// HELP/TYPE lines, so the pair is encoded here as one metric.
#[derive(Clone, Debug, Default)]
pub struct CanaryDelay {
    entry: FGauge,
    replicas: Family<ReplicaLabel, FGauge>,
}

impl CanaryDelay {
    const HELP: &'static str = "End-to-end delay of the last canary event (spool to queryable); rises while the pending canary is not yet queryable. Unlabeled: read through `events`; cluster: {shard, replica} read on that replica";

    /// The unlabeled series.
    pub fn set(&self, seconds: f64) {
        self.entry.set(seconds);
    }

    pub fn get(&self) -> f64 {
        self.entry.get()
    }

    pub fn set_replica(&self, label: &ReplicaLabel, seconds: f64) {
        self.replicas.get_or_create(label).set(seconds);
    }

    pub fn get_replica(&self, label: &ReplicaLabel) -> Option<f64> {
        self.replicas.get(label).map(|g| g.get())
    }

    /// Drops a replica's series (it left the cluster's configuration).
    pub fn remove_replica(&self, label: &ReplicaLabel) {
        self.replicas.remove(label);
    }
}

impl prometheus_client::collector::Collector for CanaryDelay {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let mut metric = encoder.encode_descriptor(
            "canary_delay_seconds",
            Self::HELP,
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        metric.encode_gauge(&self.entry.get())?;
        self.replicas.encode(metric)
    }
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~13 s: ack latency lives at the low end, slow inserts at the high end.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

fn size_histogram() -> Histogram {
    // 1 .. ~1M rows per batch.
    Histogram::new(exponential_buckets(1.0, 4.0, 11))
}

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,

    pub http_requests: Family<RouteStatus, Counter>,
    pub http_duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    pub http_connections_open: Gauge,
    pub http_connections_refused: Counter,
    pub http_rate_limited: Family<ScopeLabel, Counter>,
    pub http_overloaded: Counter,

    pub events_accepted: Family<TypeLabel, Counter>,
    pub events_rejected: Family<ReasonLabel, Counter>,
    pub events_dropped: Family<ReasonLabel, Counter>,
    pub bot_events_flagged: Counter,
    pub duplicates_dropped: Family<StageLabel, Counter>,
    pub dedupe_ids: Gauge,
    pub dedupe_evicted: Counter,

    pub spool_bytes: Gauge,
    pub spool_quota_bytes: Gauge,
    pub spool_segments: Gauge,
    pub spool_pending_records: Gauge,
    pub spool_oldest_pending_age: FGauge,
    pub spool_commit_duration: Histogram,
    pub spool_fsyncs: Counter,
    pub spool_corrupt_records: Counter,
    pub spool_full_rejections: Counter,
    pub spool_write_errors: Counter,

    pub sink_inserts: Counter,
    pub sink_rows_inserted: Counter,
    pub sink_batch_rows: Histogram,
    pub sink_insert_duration: Histogram,
    pub sink_insert_errors: Family<ClassLabel, Counter>,
    pub slow_calls: Family<KindLabel, Counter>,
    pub sink_destination_held: Gauge,
    pub sink_held: Family<ReasonLabel, Gauge>,
    pub sink_last_success: FGauge,
    pub clickhouse_up: Gauge,
    /// Cluster only: 1 while at least one replica of the shard answers.
    pub clickhouse_shard_up: Family<ShardLabel, Gauge>,
    pub clickhouse_replica_up: Family<ReplicaLabel, Gauge>,

    pub freshness_lag: FGauge,
    /// The unlabeled series (the canary through `events`) and, on a cluster, one per replica.
    pub canary_delay: CanaryDelay,

    pub dlq_events: Family<StageReason, Counter>,
    pub dlq_bytes: Gauge,
    pub dlq_quota_bytes: Gauge,
    pub dlq_evictions: Counter,
    pub dlq_dropped: Family<StageLabel, Counter>,
    pub dlq_replayed_events: Counter,

    pub compactor_partitions_archived: Counter,
    pub compactor_rows_archived: Counter,
    pub compactor_bytes_written: Counter,
    pub compactor_run_duration: Histogram,
    pub compactor_failures: Counter,
    pub compactor_last_success: FGauge,
    pub compactor_refused: Family<ReasonLabel, Counter>,

    pub config_reloads: Family<ResultLabel, Counter>,

    pub live_subscribers: Gauge,
    pub live_dropped: Counter,
    pub live_events: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("clicktrail");

        let http_requests = Family::<RouteStatus, Counter>::default();
        r.register(
            "http_requests",
            "HTTP requests by route and status",
            http_requests.clone(),
        );
        let http_duration =
            Family::<RouteLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        r.register(
            "http_request_duration_seconds",
            "Request wall time; for /v1/events it includes the spool commit (the ack latency)",
            http_duration.clone(),
        );
        let http_connections_open = Gauge::default();
        r.register(
            "http_connections_open",
            "TCP connections the HTTP server holds open now",
            http_connections_open.clone(),
        );
        let http_connections_refused = Counter::default();
        r.register(
            "http_connections_refused",
            "Connections closed at accept because server.max_connections were open",
            http_connections_refused.clone(),
        );
        let http_rate_limited = Family::<ScopeLabel, Counter>::default();
        r.register(
            "http_rate_limited",
            "Requests answered 429 by a rate limit, by scope (ip, site)",
            http_rate_limited.clone(),
        );
        let http_overloaded = Counter::default();
        r.register(
            "http_overloaded",
            "Requests answered 503 because server.max_inflight_body_bytes were in flight",
            http_overloaded.clone(),
        );

        let events_accepted = Family::<TypeLabel, Counter>::default();
        r.register(
            "events_accepted",
            "Events validated and made durable, by type",
            events_accepted.clone(),
        );
        let events_rejected = Family::<ReasonLabel, Counter>::default();
        r.register(
            "events_rejected",
            "Events refused, by reason class",
            events_rejected.clone(),
        );
        let events_dropped = Family::<ReasonLabel, Counter>::default();
        r.register(
            "events_dropped",
            "Events not stored on purpose (do_not_track: Sec-GPC or DNT; bot: bots.action = drop)",
            events_dropped.clone(),
        );
        let bot_events_flagged = Counter::default();
        r.register(
            "bot_events_flagged",
            "Events of known bots stored with device = 'bot' (bots.action = flag)",
            bot_events_flagged.clone(),
        );

        let duplicates_dropped = Family::<StageLabel, Counter>::default();
        r.register(
            "duplicates_dropped",
            "Events not stored again because they already were: request (an id twice in one request), intake (accepted by this collector within dedupe.window), sink (rows ClickHouse already had, not resent)",
            duplicates_dropped.clone(),
        );
        let dedupe_ids = Gauge::default();
        r.register(
            "dedupe_ids",
            "Event ids the intake filter holds now (at most dedupe.max_ids)",
            dedupe_ids.clone(),
        );
        let dedupe_evicted = Counter::default();
        r.register(
            "dedupe_evicted",
            "Ids the intake filter forgot before dedupe.window ended because dedupe.max_ids was reached",
            dedupe_evicted.clone(),
        );

        let spool_bytes = Gauge::default();
        r.register(
            "spool_bytes",
            "Bytes of spool segments on disk",
            spool_bytes.clone(),
        );
        let spool_quota_bytes = Gauge::default();
        r.register(
            "spool_quota_bytes",
            "Configured spool quota",
            spool_quota_bytes.clone(),
        );
        let spool_segments = Gauge::default();
        r.register(
            "spool_segments",
            "Spool segment files",
            spool_segments.clone(),
        );
        let spool_pending_records = Gauge::default();
        r.register(
            "spool_pending_records",
            "Records acknowledged but not yet confirmed by ClickHouse",
            spool_pending_records.clone(),
        );
        let spool_oldest_pending_age = FGauge::default();
        r.register(
            "spool_oldest_pending_age_seconds",
            "Age of the oldest acknowledged-but-undelivered record (0 when none)",
            spool_oldest_pending_age.clone(),
        );
        let spool_commit_duration = latency_histogram();
        r.register(
            "spool_commit_duration_seconds",
            "Write + fsync of one group commit",
            spool_commit_duration.clone(),
        );
        let spool_fsyncs = Counter::default();
        r.register("spool_fsyncs", "fsync calls", spool_fsyncs.clone());
        let spool_corrupt_records = Counter::default();
        r.register(
            "spool_corrupt_records",
            "Torn or corrupt records truncated during recovery",
            spool_corrupt_records.clone(),
        );
        let spool_full_rejections = Counter::default();
        r.register(
            "spool_full_rejections",
            "Requests answered 503 because the spool quota was reached",
            spool_full_rejections.clone(),
        );
        let spool_write_errors = Counter::default();
        r.register(
            "spool_write_errors",
            "Spool writes or segment rotations that failed for a transient host fault (disk full, out of file descriptors); requests get 503 meanwhile and the write is retried",
            spool_write_errors.clone(),
        );

        let sink_inserts = Counter::default();
        r.register(
            "sink_inserts",
            "Successful ClickHouse inserts",
            sink_inserts.clone(),
        );
        let sink_rows_inserted = Counter::default();
        r.register(
            "sink_rows_inserted",
            "Rows confirmed by ClickHouse",
            sink_rows_inserted.clone(),
        );
        let sink_batch_rows = size_histogram();
        r.register(
            "sink_batch_rows",
            "Rows per insert",
            sink_batch_rows.clone(),
        );
        let sink_insert_duration = latency_histogram();
        r.register(
            "sink_insert_duration_seconds",
            "Duration of one insert, success or failure",
            sink_insert_duration.clone(),
        );
        let sink_insert_errors = Family::<ClassLabel, Counter>::default();
        r.register(
            "sink_insert_errors",
            "Failed inserts by class: retryable, permanent, schema, destination",
            sink_insert_errors.clone(),
        );
        let slow_calls = Family::<KindLabel, Counter>::default();
        r.register(
            "slow_calls",
            "Calls slower than their [observability] threshold, by kind: insert (one sink insert attempt), query (one /v1/query call), compactor (one step on one day)",
            slow_calls.clone(),
        );
        let sink_destination_held = Gauge::default();
        r.register(
            "sink_destination_held",
            "1 while batches are held because the destination is missing or forbidden",
            sink_destination_held.clone(),
        );
        let sink_held = Family::<ReasonLabel, Gauge>::default();
        r.register(
            "sink_held",
            "1 while batches are held in the spool, by reason: destination (missing or forbidden), schema (the table refuses every row alike), dead_letters (refused rows cannot be stored)",
            sink_held.clone(),
        );
        let sink_last_success = FGauge::default();
        r.register(
            "sink_last_success_timestamp_seconds",
            "Unix time of the last successful insert",
            sink_last_success.clone(),
        );
        let clickhouse_up = Gauge::default();
        r.register(
            "clickhouse_up",
            "1 if the last health probe succeeded",
            clickhouse_up.clone(),
        );
        let clickhouse_shard_up = Family::<ShardLabel, Gauge>::default();
        r.register(
            "clickhouse_shard_up",
            "Cluster only: 1 if at least one replica of the shard answered the last probe",
            clickhouse_shard_up.clone(),
        );
        let clickhouse_replica_up = Family::<ReplicaLabel, Gauge>::default();
        r.register(
            "clickhouse_replica_up",
            "Cluster only: 1 if the replica answered the last probe (through remote() from the configured server)",
            clickhouse_replica_up.clone(),
        );

        let freshness_lag = FGauge::default();
        r.register(
            "freshness_lag_seconds",
            "Age of the oldest acknowledged event not yet queryable in ClickHouse (0 when caught up)",
            freshness_lag.clone(),
        );

        let canary_delay = CanaryDelay::default();
        r.register_collector(Box::new(canary_delay.clone()));

        let dlq_events = Family::<StageReason, Counter>::default();
        r.register(
            "dlq_events",
            "Events sent to the dead-letter store, by stage and reason class",
            dlq_events.clone(),
        );

        let dlq_bytes = Gauge::default();
        r.register(
            "dlq_bytes",
            "Bytes of dead-letter entries on disk",
            dlq_bytes.clone(),
        );
        let dlq_quota_bytes = Gauge::default();
        r.register(
            "dlq_quota_bytes",
            "Configured dead-letter quota",
            dlq_quota_bytes.clone(),
        );
        let dlq_evictions = Counter::default();
        r.register(
            "dlq_evictions",
            "Dead-letter entries evicted because the quota was reached (data lost)",
            dlq_evictions.clone(),
        );
        let dlq_dropped = Family::<StageLabel, Counter>::default();
        r.register(
            "dlq_dropped",
            "Parse or validation entries not stored because their stage's quota was full, or not sampled",
            dlq_dropped.clone(),
        );
        let dlq_replayed_events = Counter::default();
        r.register(
            "dlq_replayed_events",
            "Dead-lettered events re-enqueued into the spool by a replay",
            dlq_replayed_events.clone(),
        );

        let config_reloads = Family::<ResultLabel, Counter>::default();
        r.register(
            "config_reloads",
            "Configuration reloads on SIGHUP: result = applied or refused (the old config stays)",
            config_reloads.clone(),
        );

        let compactor_partitions_archived = Counter::default();
        r.register(
            "compactor_partitions_archived",
            "Archive parts written, verified and deleted from ClickHouse",
            compactor_partitions_archived.clone(),
        );
        let compactor_rows_archived = Counter::default();
        r.register(
            "compactor_rows_archived",
            "Rows moved from ClickHouse to Parquet",
            compactor_rows_archived.clone(),
        );
        let compactor_bytes_written = Counter::default();
        r.register(
            "compactor_bytes_written",
            "Bytes of Parquet published",
            compactor_bytes_written.clone(),
        );
        let compactor_run_duration = Histogram::new(exponential_buckets(0.01, 2.0, 20));
        r.register(
            "compactor_run_duration_seconds",
            "Duration of one compactor run",
            compactor_run_duration.clone(),
        );
        let compactor_failures = Counter::default();
        r.register(
            "compactor_failures",
            "Partitions whose archiving failed (nothing was deleted for them)",
            compactor_failures.clone(),
        );
        let compactor_refused = Family::<ReasonLabel, Counter>::default();
        r.register(
            "compactor_refused_entries",
            "Manifest entries the compactor refused to act on, by reason: foreign (another table's entry in a shared archive), changed (a verified part no longer matches ClickHouse's rows)",
            compactor_refused.clone(),
        );
        for reason in crate::compactor::REFUSAL_REASONS {
            let _ = compactor_refused.get_or_create(&ReasonLabel { reason });
        }
        let compactor_last_success = FGauge::default();
        r.register(
            "compactor_last_success_timestamp_seconds",
            "Unix time of the last compactor run without failures",
            compactor_last_success.clone(),
        );

        let live_subscribers = Gauge::default();
        r.register(
            "live_subscribers",
            "Open GET /v1/live streams",
            live_subscribers.clone(),
        );
        let live_dropped = Counter::default();
        r.register(
            "live_dropped_subscribers",
            "Live streams ended because the client did not keep up (its buffer was full)",
            live_dropped.clone(),
        );
        let live_events = Counter::default();
        r.register(
            "live_events_sent",
            "Events queued to live streams (one per event and subscriber)",
            live_events.clone(),
        );

        // Every allowed label value exists from the start at 0, so rate()/increase() see the
        // first error instead of a series appearing out of nowhere.
        for t in crate::event::EventType::ALL {
            let _ = events_accepted.get_or_create(&TypeLabel { r#type: t.as_str() });
        }
        for reason in [
            "malformed",
            "missing_field",
            "invalid_value",
            "too_long",
            "out_of_range",
            "unknown_type",
            "spool_full",
        ] {
            let _ = events_rejected.get_or_create(&ReasonLabel { reason });
        }
        for reason in ["do_not_track", "bot"] {
            let _ = events_dropped.get_or_create(&ReasonLabel { reason });
        }
        for stage in crate::dedupe::STAGES {
            let _ = duplicates_dropped.get_or_create(&StageLabel { stage });
        }
        for scope in ["ip", "site"] {
            let _ = http_rate_limited.get_or_create(&ScopeLabel { scope });
        }
        for stage in ["parse", "validation"] {
            let _ = dlq_dropped.get_or_create(&StageLabel { stage });
        }
        for class in ["retryable", "permanent", "schema", "destination"] {
            let _ = sink_insert_errors.get_or_create(&ClassLabel { class });
        }
        for reason in crate::sink::HELD_REASONS {
            let _ = sink_held.get_or_create(&ReasonLabel { reason });
        }
        for (stage, reason) in [
            ("validation", "malformed"),
            ("validation", "missing_field"),
            ("validation", "invalid_value"),
            ("validation", "out_of_range"),
            ("validation", "unknown_type"),
            ("parse", "malformed"),
            ("insert", "no_such_column"),
            ("insert", "type_mismatch"),
            ("insert", "constraint"),
            ("insert", "invalid_value"),
            ("insert", "other"),
            ("decode", "other"),
        ] {
            let _ = dlq_events.get_or_create(&StageReason { stage, reason });
        }

        let build_info = Family::<VersionLabel, Gauge>::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        r.register("build_info", "Build information", build_info);

        Self {
            registry: Arc::new(r),
            http_requests,
            http_duration,
            http_connections_open,
            http_connections_refused,
            http_rate_limited,
            http_overloaded,
            events_accepted,
            events_rejected,
            events_dropped,
            bot_events_flagged,
            duplicates_dropped,
            dedupe_ids,
            dedupe_evicted,
            spool_bytes,
            spool_quota_bytes,
            spool_segments,
            spool_pending_records,
            spool_oldest_pending_age,
            spool_commit_duration,
            spool_fsyncs,
            spool_corrupt_records,
            spool_full_rejections,
            spool_write_errors,
            sink_inserts,
            sink_rows_inserted,
            sink_batch_rows,
            sink_insert_duration,
            sink_insert_errors,
            slow_calls,
            sink_destination_held,
            sink_held,
            sink_last_success,
            clickhouse_up,
            clickhouse_shard_up,
            clickhouse_replica_up,
            freshness_lag,
            canary_delay,
            dlq_events,
            dlq_bytes,
            dlq_quota_bytes,
            dlq_evictions,
            dlq_dropped,
            dlq_replayed_events,
            compactor_partitions_archived,
            compactor_rows_archived,
            compactor_bytes_written,
            compactor_run_duration,
            compactor_failures,
            compactor_last_success,
            compactor_refused,
            config_reloads,
            live_subscribers,
            live_dropped,
            live_events,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_catalogue() {
        let m = Metrics::new();
        m.http_requests
            .get_or_create(&RouteStatus {
                route: "/v1/events",
                status: 200,
            })
            .inc();
        m.events_accepted
            .get_or_create(&TypeLabel { r#type: "click" })
            .inc();
        let text = m.encode();
        for name in [
            "clicktrail_http_requests_total{route=\"/v1/events\",status=\"200\"} 1",
            "clicktrail_events_accepted_total{type=\"click\"} 1",
            "# TYPE clicktrail_spool_commit_duration_seconds histogram",
            "clicktrail_freshness_lag_seconds 0",
            "clicktrail_build_info{version=",
        ] {
            assert!(text.contains(name), "missing `{name}` in\n{text}");
        }
    }

    #[test]
    fn canary_delay_is_one_family_with_and_without_labels() {
        let m = Metrics::new();
        let text = m.encode();
        assert!(
            text.contains("\nclicktrail_canary_delay_seconds 0.0\n")
                || text.contains("\nclicktrail_canary_delay_seconds 0\n"),
            "the unlabeled series is there before any canary:\n{text}"
        );
        m.canary_delay.set(1.5);
        let label = ReplicaLabel {
            shard: "2".into(),
            replica: "10.0.0.4:9000".into(),
        };
        m.canary_delay.set_replica(&label, 7.25);
        let text = m.encode();
        assert_eq!(
            text.matches("# TYPE clicktrail_canary_delay_seconds gauge")
                .count(),
            1,
            "{text}"
        );
        assert!(
            text.contains("\nclicktrail_canary_delay_seconds 1.5\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "\nclicktrail_canary_delay_seconds{shard=\"2\",replica=\"10.0.0.4:9000\"} 7.25\n"
            ),
            "{text}"
        );
        assert_eq!(m.canary_delay.get_replica(&label), Some(7.25));
        m.canary_delay.remove_replica(&label);
        assert!(!m.encode().contains("replica=\"10.0.0.4:9000\""));
    }
}
