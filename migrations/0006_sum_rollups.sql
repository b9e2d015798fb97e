-- The rollups as plain sums (issue 13: every page-day report under 200 ms p99 at 100M events).
-- The rollups of 0002-0004 count with distinct-id states (uniq of event ids and page-view keys)
-- so that a duplicate counts once; at 100M events those states are ~3 GB and the site-wide
-- `pages` report merges 1.2 GB of them for one day (docs/benchmarks.md). Here every count is a
-- sum, and two things make sums exact:
--   - each scroll / engagement event says what its page view had already sent (0005: columns
--     depth_from, duration_from_ms; wire field `from`), so an event adds only its growth;
--   - the collector keeps duplicates out of ClickHouse (see docs on delivery).
-- Only `visitors` (distinct visitor ids) and `engaged` (distinct page-view keys with a click or
-- >= 10 s engagement: no sum gives it without a snippet change) stay uniq states.
--
-- New tables, named after the old ones with `_sum`; the old tables stay readable (no longer fed
-- once this migration is done; a later migration may drop them):
--   click_grid_daily_sum, element_clicks_daily_sum, scroll_depth_daily_sum, engagement_daily_sum,
--   fold_daily_sum                     SummingMergeTree (only sums);
--   page_stats_hourly_sum, pages_daily_sum
--                                      AggregatingMergeTree (sumState next to uniq states; 18.16
--                                      has no SimpleAggregateFunction).
-- Same keys, grids and buckets as the old tables, plus `backfill` (0 = fed by a view, 1 = converted
-- from the old tables) at the end of the key and in the partition key (toYYYYMM(day), backfill):
-- a rerun of the conversion drops every backfill = 1 partition first, so it doubles nothing.
-- `backfill` is in the key so that SummingMergeTree does not sum it.
--
-- The cutover ({{cutover}}, the `cutover` placeholder: ClickHouse's now() plus a margin at the first run,
-- stored in schema_cutovers and reused by every rerun; src/migrate/cutover.rs runs the phases):
--   switch   new tables; views on events for inserted_at >= cutover; for each old view a
--            replacement fed only by inserted_at < cutover, then the old view dropped (for a
--            moment both feed the old table: harmless, old rollups are sets). All of it must
--            finish before the cutover (the runner checks).
--   (wait)   until no insert stamped before the cutover can still commit: cutover +
--            compactor.insert_settle / 2 (the sink's restamp_after) + clickhouse.timeout,
--            skipped with `clicktrail migrate --no-insert-wait` when no collector runs.
--   convert  the old rollups (complete history, also of days the compactor deleted from events,
--            so never rebuilt from events) into backfill = 1 rows: uniqMerge -> counts, the
--            visitors / engaged states copied as states. Runs after the runner dropped every
--            backfill = 1 partition.
--   finish   the replacement views dropped: nothing stamped before the cutover arrives anymore.
-- Recorded in schema_migrations only after finish.
--
-- 18.16 drops a column that only a lambda reads ("Unknown identifier"): the lambdas get
-- depth_from, scroll_depth, duration_from_ms and duration_ms as arrayResize([col], N, col).
--
-- What the sums count, per event (docs/queries.md, "Counting"):
--   scroll bucket b: +1 for floor(depth_from/5)*5 < b <= floor(depth/5)*5, and bucket 0 when
--     depth_from = 0 (the page view's first scroll send);
--   engagement bound b: +1 for duration_from_ms < b * 1000 <= duration_ms;
--   pages_daily_sum.scrolled: scroll events with depth_from = 0; scroll_steps: the sum of
--     floor(depth/5) - floor(depth_from/5), so the average deepest scroll stays
--     5 * scroll_steps / scrolled.
-- Events of senders without `from` (and rows stored before 0005) have 0: each of their sends
-- counts from 0.

-- phase: switch

-- 1. Click grid, as click_grid_daily (0002): clicks per (kind, cell).
CREATE TABLE IF NOT EXISTS {{db}}.click_grid_daily_sum
(
    site         {{lowcard_string}},
    path         String,
    kind         {{lowcard_string}},
    day          Date,
    device_class {{lowcard_string}},
    cy           UInt16,
    cx           UInt8,
    backfill     UInt8,
    clicks       UInt64
)
ENGINE = SummingMergeTree()
PARTITION BY (toYYYYMM(day), backfill)
ORDER BY (site, path, kind, day, device_class, cy, cx, backfill);

-- 2. Element clicks, as element_clicks_daily (0002).
CREATE TABLE IF NOT EXISTS {{db}}.element_clicks_daily_sum
(
    site         {{lowcard_string}},
    path         String,
    day          Date,
    device_class {{lowcard_string}},
    selector     String,
    ecell        UInt8,
    backfill     UInt8,
    clicks       UInt64,
    rage_clicks  UInt64,
    dead_clicks  UInt64,
    error_clicks UInt64
)
ENGINE = SummingMergeTree()
PARTITION BY (toYYYYMM(day), backfill)
ORDER BY (site, path, day, device_class, selector, ecell, backfill);

-- 3. Scroll depth reached per 5 % bucket, as scroll_depth_daily (0002).
CREATE TABLE IF NOT EXISTS {{db}}.scroll_depth_daily_sum
(
    site         {{lowcard_string}},
    path         String,
    day          Date,
    device_class {{lowcard_string}},
    depth        UInt8,
    backfill     UInt8,
    pageviews    UInt64
)
ENGINE = SummingMergeTree()
PARTITION BY (toYYYYMM(day), backfill)
ORDER BY (site, path, day, device_class, depth, backfill);

-- 4. Engaged time reached per bound, as engagement_daily (0002).
CREATE TABLE IF NOT EXISTS {{db}}.engagement_daily_sum
(
    site         {{lowcard_string}},
    path         String,
    day          Date,
    device_class {{lowcard_string}},
    engaged_s    UInt16,
    backfill     UInt8,
    pageviews    UInt64
)
ENGINE = SummingMergeTree()
PARTITION BY (toYYYYMM(day), backfill)
ORDER BY (site, path, day, device_class, engaged_s, backfill);

-- 5. Page views per fold percent, as fold_daily (0003).
CREATE TABLE IF NOT EXISTS {{db}}.fold_daily_sum
(
    site         {{lowcard_string}},
    path         String,
    day          Date,
    device_class {{lowcard_string}},
    fold         UInt8,
    backfill     UInt8,
    pageviews    UInt64
)
ENGINE = SummingMergeTree()
PARTITION BY (toYYYYMM(day), backfill)
ORDER BY (site, path, day, device_class, fold, backfill);

-- 6. Page stats per hour, as page_stats_hourly (0002): sums, visitors and engaged as uniq states.
CREATE TABLE IF NOT EXISTS {{db}}.page_stats_hourly_sum
(
    site         {{lowcard_string}},
    path         String,
    hour         DateTime('UTC'),
    device_class {{lowcard_string}},
    backfill     UInt8,
    views        AggregateFunction(sum, UInt64),
    visitors     AggregateFunction(uniqIf, String, UInt8),
    engaged      AggregateFunction(uniqIf, String, UInt8),
    clicks       AggregateFunction(sum, UInt64),
    rage_clicks  AggregateFunction(sum, UInt64),
    dead_clicks  AggregateFunction(sum, UInt64),
    error_clicks AggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree()
PARTITION BY (toYYYYMM(hour), backfill)
ORDER BY (site, path, hour, device_class, backfill);

-- 7. The site's pages per day, day first, as pages_daily (0004). engaged_reached: per bound of
-- engagement_daily_sum, in order (sumForEach: 18.16 has it).
CREATE TABLE IF NOT EXISTS {{db}}.pages_daily_sum
(
    site            {{lowcard_string}},
    day             Date,
    device_class    {{lowcard_string}},
    path            String,
    backfill        UInt8,
    views        AggregateFunction(sum, UInt64),
    visitors     AggregateFunction(uniqIf, String, UInt8),
    engaged      AggregateFunction(uniqIf, String, UInt8),
    clicks       AggregateFunction(sum, UInt64),
    rage_clicks  AggregateFunction(sum, UInt64),
    dead_clicks  AggregateFunction(sum, UInt64),
    error_clicks AggregateFunction(sum, UInt64),
    scrolled        AggregateFunction(sum, UInt64),
    scroll_steps    AggregateFunction(sum, UInt64),
    engaged_reached AggregateFunction(sumForEach, Array(UInt64))
)
ENGINE = AggregatingMergeTree()
PARTITION BY (toYYYYMM(day), backfill)
ORDER BY (site, day, device_class, path, backfill);

-- The new views: rows stamped at or after the cutover.
CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.click_grid_daily_sum_mv TO {{db}}.click_grid_daily_sum AS
SELECT
    site,
    path,
    arrayJoin(arrayFilter((k, f) -> f = 1, ['click', 'rage', 'dead', 'error'], [toUInt8(1), rage, dead, error])) AS kind,
    toDate(ts) AS day,
    multiIf(viewport_w = 0, 'unknown', viewport_w < 768, 'mobile', viewport_w < 1024, 'tablet', 'desktop') AS device_class,
    toUInt16(least(intDiv(greatest(y, 0), 20), 65535)) AS cy,
    toUInt8(least(intDiv(toInt64(greatest(x, 0)) * 100, if(doc_w > 0, doc_w, viewport_w)), 99)) AS cx,
    toUInt8(0) AS backfill,
    count() AS clicks
FROM {{db}}.events
WHERE type = 'click' AND (doc_w > 0 OR viewport_w > 0) AND inserted_at >= {{cutover}}
GROUP BY site, path, kind, day, device_class, cy, cx;

CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.element_clicks_daily_sum_mv TO {{db}}.element_clicks_daily_sum AS
SELECT
    site,
    path,
    toDate(ts) AS day,
    multiIf(viewport_w = 0, 'unknown', viewport_w < 768, 'mobile', viewport_w < 1024, 'tablet', 'desktop') AS device_class,
    selector,
    toUInt8(if(elem_x = 0 AND elem_y = 0, 255, intDiv(elem_y, 16384) * 4 + intDiv(elem_x, 16384))) AS ecell,
    toUInt8(0) AS backfill,
    count() AS clicks,
    toUInt64(countIf(rage = 1)) AS rage_clicks,
    toUInt64(countIf(dead = 1)) AS dead_clicks,
    toUInt64(countIf(error = 1)) AS error_clicks
FROM {{db}}.events
WHERE type = 'click' AND inserted_at >= {{cutover}}
GROUP BY site, path, day, device_class, selector, ecell;

CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.scroll_depth_daily_sum_mv TO {{db}}.scroll_depth_daily_sum AS
SELECT
    site,
    path,
    toDate(ts) AS day,
    multiIf(viewport_w = 0, 'unknown', viewport_w < 768, 'mobile', viewport_w < 1024, 'tablet', 'desktop') AS device_class,
    arrayJoin(arrayFilter((b, f, d) -> (b = 0 AND f = 0) OR (b > intDiv(least(f, 100), 5) * 5 AND b <= intDiv(least(d, 100), 5) * 5), arrayMap(i -> toUInt8(i * 5), range(21)), arrayResize([depth_from], 21, depth_from), arrayResize([scroll_depth], 21, scroll_depth))) AS depth,
    toUInt8(0) AS backfill,
    count() AS pageviews
FROM {{db}}.events
WHERE type = 'scroll' AND inserted_at >= {{cutover}}
GROUP BY site, path, day, device_class, depth;

CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.engagement_daily_sum_mv TO {{db}}.engagement_daily_sum AS
SELECT
    site,
    path,
    toDate(ts) AS day,
    multiIf(viewport_w = 0, 'unknown', viewport_w < 768, 'mobile', viewport_w < 1024, 'tablet', 'desktop') AS device_class,
    arrayJoin(arrayFilter((b, f, d) -> toUInt64(b) * 1000 > f AND toUInt64(b) * 1000 <= d, [1, 2, 3, 5, 7, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240, 300, 420, 600, 900, 1200, 1800, 2700, 3600], arrayResize([duration_from_ms], 23, duration_from_ms), arrayResize([duration_ms], 23, duration_ms))) AS engaged_s,
    toUInt8(0) AS backfill,
    count() AS pageviews
FROM {{db}}.events
WHERE type = 'engagement' AND duration_ms >= 1000 AND inserted_at >= {{cutover}}
GROUP BY site, path, day, device_class, engaged_s;

CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.fold_daily_sum_mv TO {{db}}.fold_daily_sum AS
SELECT
    site,
    path,
    toDate(ts) AS day,
    multiIf(viewport_w = 0, 'unknown', viewport_w < 768, 'mobile', viewport_w < 1024, 'tablet', 'desktop') AS device_class,
    toUInt8(least(100, intDiv(toUInt64(viewport_h) * 100, doc_h))) AS fold,
    toUInt8(0) AS backfill,
    count() AS pageviews
FROM {{db}}.events
WHERE type = 'pageview' AND doc_h > 0 AND viewport_h > 0 AND inserted_at >= {{cutover}}
GROUP BY site, path, day, device_class, fold;

CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.page_stats_hourly_sum_mv TO {{db}}.page_stats_hourly_sum AS
SELECT
    site,
    path,
    toStartOfHour(ts) AS hour,
    multiIf(viewport_w = 0, 'unknown', viewport_w < 768, 'mobile', viewport_w < 1024, 'tablet', 'desktop') AS device_class,
    toUInt8(0) AS backfill,
    sumState(toUInt64(type = 'pageview')) AS views,
    uniqIfState(visitor_id, type = 'pageview') AS visitors,
    uniqIfState(if(pageview_id = '', concat(session_id, ' ', path), pageview_id), type = 'click' OR (type = 'engagement' AND duration_ms >= 10000)) AS engaged,
    sumState(toUInt64(type = 'click')) AS clicks,
    sumState(toUInt64(type = 'click' AND rage = 1)) AS rage_clicks,
    sumState(toUInt64(type = 'click' AND dead = 1)) AS dead_clicks,
    sumState(toUInt64(type = 'click' AND error = 1)) AS error_clicks
FROM {{db}}.events
WHERE type IN ('pageview', 'click', 'engagement') AND inserted_at >= {{cutover}}
GROUP BY site, path, hour, device_class;

CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.pages_daily_sum_mv TO {{db}}.pages_daily_sum AS
SELECT
    site,
    toDate(ts) AS day,
    multiIf(viewport_w = 0, 'unknown', viewport_w < 768, 'mobile', viewport_w < 1024, 'tablet', 'desktop') AS device_class,
    path,
    toUInt8(0) AS backfill,
    sumState(toUInt64(type = 'pageview')) AS views,
    uniqIfState(visitor_id, type = 'pageview') AS visitors,
    uniqIfState(if(pageview_id = '', concat(session_id, ' ', path), pageview_id), type = 'click' OR (type = 'engagement' AND duration_ms >= 10000)) AS engaged,
    sumState(toUInt64(type = 'click')) AS clicks,
    sumState(toUInt64(type = 'click' AND rage = 1)) AS rage_clicks,
    sumState(toUInt64(type = 'click' AND dead = 1)) AS dead_clicks,
    sumState(toUInt64(type = 'click' AND error = 1)) AS error_clicks,
    sumState(toUInt64(type = 'scroll' AND depth_from = 0)) AS scrolled,
    sumState(toUInt64(if(type = 'scroll', greatest(toInt64(intDiv(least(scroll_depth, 100), 5)) - toInt64(intDiv(least(depth_from, 100), 5)), 0), 0))) AS scroll_steps,
    sumForEachState(arrayMap((b, e, f, d) -> toUInt64(e = 1 AND toUInt64(b) * 1000 > f AND toUInt64(b) * 1000 <= d), [1, 2, 3, 5, 7, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240, 300, 420, 600, 900, 1200, 1800, 2700, 3600], arrayResize([toUInt8(type = 'engagement')], 23, toUInt8(type = 'engagement')), arrayResize([duration_from_ms], 23, duration_from_ms), arrayResize([duration_ms], 23, duration_ms))) AS engaged_reached
FROM {{db}}.events
WHERE type IN ('pageview', 'click', 'engagement', 'scroll') AND inserted_at >= {{cutover}}
GROUP BY site, day, device_class, path;

-- The old views replaced by views fed only by rows stamped before the cutover (the same SELECTs
-- as 0002-0004 plus that filter), then dropped: no row is missed meanwhile.
CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.click_grid_daily_until_cutover_mv TO {{db}}.click_grid_daily AS
SELECT
    site,
    path,
    arrayJoin(arrayFilter((k, f) -> f = 1, ['click', 'rage', 'dead', 'error'], [toUInt8(1), rage, dead, error])) AS kind,
    toDate(ts) AS day,
    multiIf(viewport_w = 0, 'unknown', viewport_w < 768, 'mobile', viewport_w < 1024, 'tablet', 'desktop') AS device_class,
    toUInt16(least(intDiv(greatest(y, 0), 20), 65535)) AS cy,
    toUInt8(least(intDiv(toInt64(greatest(x, 0)) * 100, if(doc_w > 0, doc_w, viewport_w)), 99)) AS cx,
    uniqState(event_id) AS clicks
FROM {{db}}.events
WHERE type = 'click' AND (doc_w > 0 OR viewport_w > 0) AND inserted_at < {{cutover}}
GROUP BY site, path, kind, day, device_class, cy, cx;

DROP TABLE IF EXISTS {{db}}.click_grid_daily_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.element_clicks_daily_until_cutover_mv TO {{db}}.element_clicks_daily AS
SELECT
    site,
    path,
    toDate(ts) AS day,
    multiIf(viewport_w = 0, 'unknown', viewport_w < 768, 'mobile', viewport_w < 1024, 'tablet', 'desktop') AS device_class,
    selector,
    toUInt8(if(elem_x = 0 AND elem_y = 0, 255, intDiv(elem_y, 16384) * 4 + intDiv(elem_x, 16384))) AS ecell,
    uniqState(event_id) AS clicks,
    uniqIfState(event_id, rage = 1) AS rage_clicks,
    uniqIfState(event_id, dead = 1) AS dead_clicks,
    uniqIfState(event_id, error = 1) AS error_clicks
FROM {{db}}.events
WHERE type = 'click' AND inserted_at < {{cutover}}
GROUP BY site, path, day, device_class, selector, ecell;

DROP TABLE IF EXISTS {{db}}.element_clicks_daily_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.scroll_depth_daily_until_cutover_mv TO {{db}}.scroll_depth_daily AS
SELECT
    site,
    path,
    toDate(ts) AS day,
    multiIf(viewport_w = 0, 'unknown', viewport_w < 768, 'mobile', viewport_w < 1024, 'tablet', 'desktop') AS device_class,
    arrayJoin(arrayMap(i -> toUInt8(i * 5), range(intDiv(least(scroll_depth, 100), 5) + 1))) AS depth,
    uniqState(if(pageview_id = '', concat(session_id, ' ', path), pageview_id)) AS pageviews
FROM {{db}}.events
WHERE type = 'scroll' AND inserted_at < {{cutover}}
GROUP BY site, path, day, device_class, depth;

DROP TABLE IF EXISTS {{db}}.scroll_depth_daily_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.engagement_daily_until_cutover_mv TO {{db}}.engagement_daily AS
SELECT
    site,
    path,
    toDate(ts) AS day,
    multiIf(viewport_w = 0, 'unknown', viewport_w < 768, 'mobile', viewport_w < 1024, 'tablet', 'desktop') AS device_class,
    arrayJoin(arrayFilter(b -> toUInt64(b) * 1000 <= duration_ms, [1, 2, 3, 5, 7, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240, 300, 420, 600, 900, 1200, 1800, 2700, 3600])) AS engaged_s,
    uniqState(if(pageview_id = '', concat(session_id, ' ', path), pageview_id)) AS pageviews
FROM {{db}}.events
WHERE type = 'engagement' AND duration_ms >= 1000 AND inserted_at < {{cutover}}
GROUP BY site, path, day, device_class, engaged_s;

DROP TABLE IF EXISTS {{db}}.engagement_daily_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.page_stats_hourly_until_cutover_mv TO {{db}}.page_stats_hourly AS
SELECT
    site,
    path,
    toStartOfHour(ts) AS hour,
    multiIf(viewport_w = 0, 'unknown', viewport_w < 768, 'mobile', viewport_w < 1024, 'tablet', 'desktop') AS device_class,
    uniqIfState(event_id, type = 'pageview') AS views,
    uniqIfState(visitor_id, type = 'pageview') AS visitors,
    uniqIfState(if(pageview_id = '', concat(session_id, ' ', path), pageview_id), type = 'click' OR (type = 'engagement' AND duration_ms >= 10000)) AS engaged,
    uniqIfState(event_id, type = 'click') AS clicks,
    uniqIfState(event_id, type = 'click' AND rage = 1) AS rage_clicks,
    uniqIfState(event_id, type = 'click' AND dead = 1) AS dead_clicks,
    uniqIfState(event_id, type = 'click' AND error = 1) AS error_clicks
FROM {{db}}.events
WHERE type IN ('pageview', 'click', 'engagement') AND inserted_at < {{cutover}}
GROUP BY site, path, hour, device_class;

DROP TABLE IF EXISTS {{db}}.page_stats_hourly_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.fold_daily_until_cutover_mv TO {{db}}.fold_daily AS
SELECT
    site,
    path,
    toDate(ts) AS day,
    multiIf(viewport_w = 0, 'unknown', viewport_w < 768, 'mobile', viewport_w < 1024, 'tablet', 'desktop') AS device_class,
    toUInt8(least(100, intDiv(toUInt64(viewport_h) * 100, doc_h))) AS fold,
    uniqState(if(pageview_id = '', concat(session_id, ' ', path), pageview_id)) AS pageviews
FROM {{db}}.events
WHERE type = 'pageview' AND doc_h > 0 AND viewport_h > 0 AND inserted_at < {{cutover}}
GROUP BY site, path, day, device_class, fold;

DROP TABLE IF EXISTS {{db}}.fold_daily_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.pages_daily_until_cutover_mv TO {{db}}.pages_daily AS
SELECT
    site,
    toDate(ts) AS day,
    multiIf(viewport_w = 0, 'unknown', viewport_w < 768, 'mobile', viewport_w < 1024, 'tablet', 'desktop') AS device_class,
    path,
    uniqIfState(event_id, type = 'pageview') AS views,
    uniqIfState(visitor_id, type = 'pageview') AS visitors,
    uniqIfState(if(pageview_id = '', concat(session_id, ' ', path), pageview_id), type = 'click' OR (type = 'engagement' AND duration_ms >= 10000)) AS engaged,
    uniqIfState(event_id, type = 'click') AS clicks,
    uniqIfState(event_id, type = 'click' AND rage = 1) AS rage_clicks,
    uniqIfState(event_id, type = 'click' AND dead = 1) AS dead_clicks,
    uniqIfState(event_id, type = 'click' AND error = 1) AS error_clicks,
    uniqIfState(if(pageview_id = '', concat(session_id, ' ', path), pageview_id), type = 'scroll') AS scrolled,
    uniqArrayState(if(type = 'scroll', arrayMap(i -> concat(if(pageview_id = '', concat(session_id, ' ', path), pageview_id), '#', toString(i)), range(intDiv(least(scroll_depth, 100), 5))), emptyArrayString())) AS scroll_steps,
    uniqIfForEachState(arrayResize([if(pageview_id = '', concat(session_id, ' ', path), pageview_id)], 23, if(pageview_id = '', concat(session_id, ' ', path), pageview_id)), arrayMap(b -> toUInt8(type = 'engagement' AND toUInt64(b) * 1000 <= duration_ms), [1, 2, 3, 5, 7, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240, 300, 420, 600, 900, 1200, 1800, 2700, 3600])) AS engaged_reached
FROM {{db}}.events
WHERE type IN ('pageview', 'click', 'engagement', 'scroll') AND inserted_at < {{cutover}}
GROUP BY site, day, device_class, path;

DROP TABLE IF EXISTS {{db}}.pages_daily_mv;

-- phase: convert
-- The old rollups into backfill = 1 rows (the runner has dropped every backfill = 1 partition).
-- Inner query: the old states merged per key (on a cluster across shards too: one event's id may
-- sit in two shards' old states, a view's and a backfill's); outer: their counts as sums.

INSERT INTO {{db}}.click_grid_daily_sum (site, path, kind, day, device_class, cy, cx, backfill, clicks)
SELECT
    site, path, kind, day, device_class, cy, cx,
    toUInt8(1) AS backfill,
    n_clicks AS clicks
FROM
(
    SELECT
        site, path, kind, day, device_class, cy, cx,
        uniqMerge(clicks) AS n_clicks
    FROM {{db}}.click_grid_daily
    GROUP BY site, path, kind, day, device_class, cy, cx
)
WHERE n_clicks > 0;

INSERT INTO {{db}}.element_clicks_daily_sum (site, path, day, device_class, selector, ecell, backfill, clicks, rage_clicks, dead_clicks, error_clicks)
SELECT
    site, path, day, device_class, selector, ecell,
    toUInt8(1) AS backfill,
    n_clicks AS clicks,
    n_rage_clicks AS rage_clicks,
    n_dead_clicks AS dead_clicks,
    n_error_clicks AS error_clicks
FROM
(
    SELECT
        site, path, day, device_class, selector, ecell,
        uniqMerge(clicks) AS n_clicks,
        uniqIfMerge(rage_clicks) AS n_rage_clicks,
        uniqIfMerge(dead_clicks) AS n_dead_clicks,
        uniqIfMerge(error_clicks) AS n_error_clicks
    FROM {{db}}.element_clicks_daily
    GROUP BY site, path, day, device_class, selector, ecell
)
WHERE n_clicks > 0 OR n_rage_clicks > 0 OR n_dead_clicks > 0 OR n_error_clicks > 0;

INSERT INTO {{db}}.scroll_depth_daily_sum (site, path, day, device_class, depth, backfill, pageviews)
SELECT
    site, path, day, device_class, depth,
    toUInt8(1) AS backfill,
    n_pageviews AS pageviews
FROM
(
    SELECT
        site, path, day, device_class, depth,
        uniqMerge(pageviews) AS n_pageviews
    FROM {{db}}.scroll_depth_daily
    GROUP BY site, path, day, device_class, depth
)
WHERE n_pageviews > 0;

INSERT INTO {{db}}.engagement_daily_sum (site, path, day, device_class, engaged_s, backfill, pageviews)
SELECT
    site, path, day, device_class, engaged_s,
    toUInt8(1) AS backfill,
    n_pageviews AS pageviews
FROM
(
    SELECT
        site, path, day, device_class, engaged_s,
        uniqMerge(pageviews) AS n_pageviews
    FROM {{db}}.engagement_daily
    GROUP BY site, path, day, device_class, engaged_s
)
WHERE n_pageviews > 0;

INSERT INTO {{db}}.fold_daily_sum (site, path, day, device_class, fold, backfill, pageviews)
SELECT
    site, path, day, device_class, fold,
    toUInt8(1) AS backfill,
    n_pageviews AS pageviews
FROM
(
    SELECT
        site, path, day, device_class, fold,
        uniqMerge(pageviews) AS n_pageviews
    FROM {{db}}.fold_daily
    GROUP BY site, path, day, device_class, fold
)
WHERE n_pageviews > 0;

INSERT INTO {{db}}.page_stats_hourly_sum (site, path, hour, device_class, backfill, views, visitors, engaged, clicks, rage_clicks, dead_clicks, error_clicks)
SELECT
    site, path, hour, device_class,
    toUInt8(1) AS backfill,
    sumState(n_views) AS views,
    uniqIfMergeState(s_visitors) AS visitors,
    uniqIfMergeState(s_engaged) AS engaged,
    sumState(n_clicks) AS clicks,
    sumState(n_rage) AS rage_clicks,
    sumState(n_dead) AS dead_clicks,
    sumState(n_error) AS error_clicks
FROM
(
    SELECT
        site, path, hour, device_class,
        toUInt64(uniqIfMerge(views)) AS n_views,
        uniqIfMergeState(visitors) AS s_visitors,
        uniqIfMergeState(engaged) AS s_engaged,
        toUInt64(uniqIfMerge(clicks)) AS n_clicks,
        toUInt64(uniqIfMerge(rage_clicks)) AS n_rage,
        toUInt64(uniqIfMerge(dead_clicks)) AS n_dead,
        toUInt64(uniqIfMerge(error_clicks)) AS n_error
    FROM {{db}}.page_stats_hourly
    GROUP BY site, path, hour, device_class
)
GROUP BY site, path, hour, device_class;

INSERT INTO {{db}}.pages_daily_sum (site, day, device_class, path, backfill, views, visitors, engaged, clicks, rage_clicks, dead_clicks, error_clicks, scrolled, scroll_steps, engaged_reached)
SELECT
    site, day, device_class, path,
    toUInt8(1) AS backfill,
    sumState(n_views) AS views,
    uniqIfMergeState(s_visitors) AS visitors,
    uniqIfMergeState(s_engaged) AS engaged,
    sumState(n_clicks) AS clicks,
    sumState(n_rage) AS rage_clicks,
    sumState(n_dead) AS dead_clicks,
    sumState(n_error) AS error_clicks,
    sumState(n_scrolled) AS scrolled,
    sumState(n_steps) AS scroll_steps,
    sumForEachState(n_reached) AS engaged_reached
FROM
(
    SELECT
        site, day, device_class, path,
        toUInt64(uniqIfMerge(views)) AS n_views,
        uniqIfMergeState(visitors) AS s_visitors,
        uniqIfMergeState(engaged) AS s_engaged,
        toUInt64(uniqIfMerge(clicks)) AS n_clicks,
        toUInt64(uniqIfMerge(rage_clicks)) AS n_rage,
        toUInt64(uniqIfMerge(dead_clicks)) AS n_dead,
        toUInt64(uniqIfMerge(error_clicks)) AS n_error,
        toUInt64(uniqIfMerge(scrolled)) AS n_scrolled,
        toUInt64(uniqArrayMerge(scroll_steps)) AS n_steps,
        arrayMap(c -> toUInt64(c), uniqIfForEachMerge(engaged_reached)) AS n_reached
    FROM {{db}}.pages_daily
    GROUP BY site, day, device_class, path
)
GROUP BY site, day, device_class, path;

-- phase: finish
-- Nothing stamped before the cutover can arrive anymore: the old tables are no longer fed.
DROP TABLE IF EXISTS {{db}}.click_grid_daily_until_cutover_mv;
DROP TABLE IF EXISTS {{db}}.element_clicks_daily_until_cutover_mv;
DROP TABLE IF EXISTS {{db}}.scroll_depth_daily_until_cutover_mv;
DROP TABLE IF EXISTS {{db}}.engagement_daily_until_cutover_mv;
DROP TABLE IF EXISTS {{db}}.page_stats_hourly_until_cutover_mv;
DROP TABLE IF EXISTS {{db}}.fold_daily_until_cutover_mv;
DROP TABLE IF EXISTS {{db}}.pages_daily_until_cutover_mv;
