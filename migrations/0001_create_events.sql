-- The events table: one row per accepted event. Column by column: docs/schema.md.
--
-- ReplacingMergeTree on a key that ends with event_id: a row sent twice (a client retry after
-- a lost answer, or a batch resent after a crash on servers without block deduplication)
-- collapses into one at merge time. Exact counts before merges: `FINAL` or uniqExact(event_id).
-- Partition per day of client time, so the compactor can archive and drop whole days.
-- ORDER BY (site, type, path, ts, event_id): every query filters one site; most filter one
-- event type (page views, clicks for a heatmap, scrolls); heatmaps and page reports then read
-- one contiguous path range; ts last but one keeps time ranges prunable inside it.
CREATE TABLE IF NOT EXISTS {{db}}.events
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
    -- Set by the server at insert; the compactor archives and deletes exactly the rows inserted
    -- before its cutoff, so rows arriving late for a cold day are never dropped unarchived.
    inserted_at  DateTime('UTC') DEFAULT now()
)
ENGINE = ReplacingMergeTree()
PARTITION BY toDate(ts)
ORDER BY (site, type, path, ts, event_id)
SETTINGS index_granularity = 8192{{dedup_settings}};
