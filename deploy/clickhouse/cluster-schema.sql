-- clicktrail's schema on a ClickHouse cluster (clickhouse.cluster = "NAME"): what
-- migrations/0001_create_events.sql creates on one server, ON CLUSTER. Proven on 18.16 with
-- 2 shards x 2 replicas on loopback (scripts/cluster.sh, scripts/cluster-proof.sh) and parsed by
-- ClickHouse 26.x (chDB, tests/chdb/cluster_ddl.py). Placeholders as in migrations/, plus
-- {{cluster}}. See docs/scaling.md for why each choice.
--
-- Tables:
--   events_local  ReplicatedReplacingMergeTree on every server: a shard's rows, replicated to
--                 that shard's replicas through ZooKeeper/Keeper. ZooKeeper path after PostHog's
--                 convention ('/clickhouse/tables/{shard}/posthog.sharded_events', '{replica}'):
--                 shard macro first, then database and table, so two databases or deployments
--                 on one Keeper never share a path. The database is written in by migrate, not
--                 with the {database} macro, which 18.16 does not expand.
--   events        Distributed: what the sink inserts into and analysts query. Same name as the
--                 single-server table, so every query and the sink's INSERT stay as they are.
--                 Sharding key cityHash64(site, session_id): a session's events are on one
--                 shard, so per-session funnels, uniq(session_id) per shard and the heatmap
--                 rollups add up across shards without double counting sessions.
--
-- Every statement is IF NOT EXISTS and ON CLUSTER, so a rerun (or a server added to the
-- cluster) is harmless. ON CLUSTER statements are queued in ZooKeeper and run by every server
-- named in the cluster; the answer lists each host's status (see docs/scaling.md).

CREATE DATABASE IF NOT EXISTS {{db}} ON CLUSTER {{cluster}};

CREATE TABLE IF NOT EXISTS {{db}}.events_local ON CLUSTER {{cluster}}
(
    event_id     String,
    site         {{lowcard_string}},
    type         {{lowcard_string}},
    name         String,
    ts           DateTime('UTC'),
    ts_ms        UInt16,
    received_at  DateTime('UTC'),
    url          String,
    host         {{lowcard_string}},
    path         String,
    referrer     String,
    title        String,
    session_id   String,
    visitor_id   String,
    x            Int32,
    y            Int32,
    viewport_w   UInt16,
    viewport_h   UInt16,
    doc_w        UInt32,
    doc_h        UInt32,
    selector     String,
    text         String,
    rage         UInt8,
    scroll_depth UInt8,
    duration_ms  UInt32,
    props        String,
    browser      {{lowcard_string}},
    os           {{lowcard_string}},
    device       {{lowcard_string}},
    user_agent   String,
    ip           String,
    -- On a cluster the collector sends inserted_at itself (fixed when the batch is cut), so a
    -- resent batch is the same bytes and replicated block deduplication drops it. The DEFAULT
    -- stays for inserts by hand.
    inserted_at  DateTime('UTC') DEFAULT now()
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{{db}}/events_local', '{replica}')
PARTITION BY toDate(ts)
ORDER BY (site, type, path, ts, event_id)
-- Block dedup remembers the last replicated_deduplication_window blocks per shard (default 100).
-- Every collector's batch adds one block per shard, so with N collectors at about one insert a
-- second the default covers a resend only within ~100/N seconds; 1000 keeps a resend after a
-- collector restart covered for a few minutes even with 10 collectors (1000 small ZooKeeper
-- nodes per shard). Past the window a resend is still collapsed by ReplacingMergeTree at merge.
SETTINGS index_granularity = 8192, replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS {{db}}.events ON CLUSTER {{cluster}} AS {{db}}.events_local
ENGINE = Distributed({{cluster}}, {{db}}, events_local, cityHash64(site, session_id));
