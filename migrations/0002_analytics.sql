-- Analyst rollups (issue 13): heatmap grid, element clicks, scroll depth, engagement, page stats.
-- Queries over them: docs/queries.md (tested by tests/chdb/analytics.py on chDB 26.x and by
-- scripts/test-analytics.sh on ClickHouse 18.16).
--
-- Counting each event once. A materialized view sees every inserted block, duplicates included
-- (a client retry, a batch resent after a crash; 18.16 has no block deduplication), and a
-- backfill may run twice. So no rollup stores a plain count: every count column is a
-- distinct-id state (uniq of event_id, or of the page-view key), merged at read time with
-- uniqMerge / uniqIfMerge. Re-inserting an event, re-running a backfill, or a row counted both
-- by its view and by the backfill only re-adds an element already in the set.
--
-- Page-view key (pv_key below): pageview_id when the snippet sent one (`pv`: the event id of the
-- page view the event belongs to; equal to event_id on the pageview itself), otherwise
-- concat(session_id, ' ', path): page views of the same path in one session then merge into one.
--
-- Conditional states are declared AggregateFunction(uniqIf, String, UInt8): 18.16 refuses a
-- uniqIfState in a uniq column (and fails the insert into events with it), current releases
-- accept both.
--
-- device_class: the rollups classify by viewport_w themselves, with the column's own DEFAULT
-- expression (the collector sets the column with the same thresholds). Reading the column
-- instead breaks the backfill on 18.16: over parts written before this ALTER, 18.16 fails to
-- compute a DEFAULT of a missing column when PREWHERE reads one of its inputs ("Unknown
-- identifier: viewport_w" / "Column '0' already exists").
--
-- Rollups are partitioned by month and keep everything: the compactor deletes raw rows of cold
-- days from events (ALTER ... DELETE, a mutation), which never reaches a materialized view.

-- New columns of events (the collector's row gains them in this order, after ip; inserted_at
-- stays last). 18.16 has no ADD COLUMN IF NOT EXISTS: there {{if_not_exists}} is empty and the
-- migration runner treats error 44 (column already exists) on this ALTER as already applied
-- (one ALTER with several ADD COLUMN is all or nothing).
ALTER TABLE {{db}}.events
    ADD COLUMN {{if_not_exists}}elem_x UInt16 AFTER ip,
    ADD COLUMN {{if_not_exists}}elem_y UInt16 AFTER elem_x,
    ADD COLUMN {{if_not_exists}}dead UInt8 AFTER elem_y,
    ADD COLUMN {{if_not_exists}}error UInt8 AFTER dead,
    ADD COLUMN {{if_not_exists}}device_class {{lowcard_string}} DEFAULT multiIf(viewport_w = 0, 'unknown', viewport_w < 768, 'mobile', viewport_w < 1024, 'tablet', 'desktop') AFTER error,
    ADD COLUMN {{if_not_exists}}pageview_id String AFTER device_class;

-- 1. Click heatmap grid, per day. One row per (kind, cell); a click counts in kind 'click' and,
-- when flagged, also in 'rage', 'dead', 'error'. cx = column 0..99 of the document width
-- (x * 100 / doc_w, doc_w = 0 falls back to viewport_w; clicks with neither are left out);
-- cy = 20 px band of the page y (y / 20, capped at 65535).
CREATE TABLE IF NOT EXISTS {{db}}.click_grid_daily
(
    site         {{lowcard_string}},
    path         String,
    kind         {{lowcard_string}},
    day          Date,
    device_class {{lowcard_string}},
    cy           UInt16,
    cx           UInt8,
    clicks       AggregateFunction(uniq, String)
)
ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(day)
ORDER BY (site, path, kind, day, device_class, cy, cx);

CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.click_grid_daily_mv TO {{db}}.click_grid_daily AS
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
WHERE type = 'click' AND (doc_w > 0 OR viewport_w > 0)
GROUP BY site, path, kind, day, device_class, cy, cx;

-- 2. Element clicks, per day and selector. ecell = where inside the element: a 4 x 4 grid,
-- ecell = row * 4 + column with column = elem_x / 16384 and row = elem_y / 16384 (0..15);
-- 255 = position unknown (elem_x = elem_y = 0: clicks sent before the snippet measured it).
CREATE TABLE IF NOT EXISTS {{db}}.element_clicks_daily
(
    site         {{lowcard_string}},
    path         String,
    day          Date,
    device_class {{lowcard_string}},
    selector     String,
    ecell        UInt8,
    clicks       AggregateFunction(uniq, String),
    rage_clicks  AggregateFunction(uniqIf, String, UInt8),
    dead_clicks  AggregateFunction(uniqIf, String, UInt8),
    error_clicks AggregateFunction(uniqIf, String, UInt8)
)
ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(day)
ORDER BY (site, path, day, device_class, selector, ecell);

CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.element_clicks_daily_mv TO {{db}}.element_clicks_daily AS
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
WHERE type = 'click'
GROUP BY site, path, day, device_class, selector, ecell;

-- 3. Scroll depth reached, per day and 5 % bucket. A scroll event (the deepest percent seen so
-- far in its page view) adds its page-view key to every bucket 0, 5, ... up to its depth rounded
-- down, so bucket b holds the page views that reached at least b % (a set: several scroll
-- events of one page view, in any blocks, count once). Bucket 0 = page views with a scroll event.
CREATE TABLE IF NOT EXISTS {{db}}.scroll_depth_daily
(
    site         {{lowcard_string}},
    path         String,
    day          Date,
    device_class {{lowcard_string}},
    depth        UInt8,
    pageviews    AggregateFunction(uniq, String)
)
ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(day)
ORDER BY (site, path, day, device_class, depth);

CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.scroll_depth_daily_mv TO {{db}}.scroll_depth_daily AS
SELECT
    site,
    path,
    toDate(ts) AS day,
    multiIf(viewport_w = 0, 'unknown', viewport_w < 768, 'mobile', viewport_w < 1024, 'tablet', 'desktop') AS device_class,
    arrayJoin(arrayMap(i -> toUInt8(i * 5), range(intDiv(least(scroll_depth, 100), 5) + 1))) AS depth,
    uniqState(if(pageview_id = '', concat(session_id, ' ', path), pageview_id)) AS pageviews
FROM {{db}}.events
WHERE type = 'scroll'
GROUP BY site, path, day, device_class, depth;

-- 4. Engaged time reached, per day and bucket, like scroll depth: an engagement event adds its
-- page-view key to every bucket whose lower bound (seconds) is <= duration_ms / 1000. Bucket
-- bounds: 1 2 3 5 7 10 15 20 30 45 60 90 120 180 240 300 420 600 900 1200 1800 2700 3600 s.
-- duration_ms is read as the page view's engaged time so far (max per page view); see
-- docs/queries.md for the snippet contract.
CREATE TABLE IF NOT EXISTS {{db}}.engagement_daily
(
    site         {{lowcard_string}},
    path         String,
    day          Date,
    device_class {{lowcard_string}},
    engaged_s    UInt16,
    pageviews    AggregateFunction(uniq, String)
)
ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(day)
ORDER BY (site, path, day, device_class, engaged_s);

CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.engagement_daily_mv TO {{db}}.engagement_daily AS
SELECT
    site,
    path,
    toDate(ts) AS day,
    multiIf(viewport_w = 0, 'unknown', viewport_w < 768, 'mobile', viewport_w < 1024, 'tablet', 'desktop') AS device_class,
    arrayJoin(arrayFilter(b -> toUInt64(b) * 1000 <= duration_ms, [1, 2, 3, 5, 7, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240, 300, 420, 600, 900, 1200, 1800, 2700, 3600])) AS engaged_s,
    uniqState(if(pageview_id = '', concat(session_id, ' ', path), pageview_id)) AS pageviews
FROM {{db}}.events
WHERE type = 'engagement' AND duration_ms >= 1000
GROUP BY site, path, day, device_class, engaged_s;

-- 5. Page stats per hour. views / visitors: page views and their distinct visitor ids;
-- engaged: page-view keys with a click, or with an engagement event of >= 10 s (a bounce is a
-- page view that is not engaged: bounces = views - engaged); clicks and flagged clicks.
CREATE TABLE IF NOT EXISTS {{db}}.page_stats_hourly
(
    site         {{lowcard_string}},
    path         String,
    hour         DateTime('UTC'),
    device_class {{lowcard_string}},
    views        AggregateFunction(uniqIf, String, UInt8),
    visitors     AggregateFunction(uniqIf, String, UInt8),
    engaged      AggregateFunction(uniqIf, String, UInt8),
    clicks       AggregateFunction(uniqIf, String, UInt8),
    rage_clicks  AggregateFunction(uniqIf, String, UInt8),
    dead_clicks  AggregateFunction(uniqIf, String, UInt8),
    error_clicks AggregateFunction(uniqIf, String, UInt8)
)
ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(hour)
ORDER BY (site, path, hour, device_class);

CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.page_stats_hourly_mv TO {{db}}.page_stats_hourly AS
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
WHERE type IN ('pageview', 'click', 'engagement')
GROUP BY site, path, hour, device_class;

-- Backfill: the rows already in events, through the same SELECTs. They run after every view
-- exists, so a row inserted meanwhile is counted by its view, by the backfill, or by both, and
-- both is harmless (sets). Re-running them adds nothing. Rerun them (or the whole file) if a
-- collector was inserting while the views were being created: an insert already under way
-- when a view is created does not feed that view, and may commit after a backfill has read.
INSERT INTO {{db}}.click_grid_daily (site, path, kind, day, device_class, cy, cx, clicks)
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
WHERE type = 'click' AND (doc_w > 0 OR viewport_w > 0)
GROUP BY site, path, kind, day, device_class, cy, cx;

INSERT INTO {{db}}.element_clicks_daily (site, path, day, device_class, selector, ecell, clicks, rage_clicks, dead_clicks, error_clicks)
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
WHERE type = 'click'
GROUP BY site, path, day, device_class, selector, ecell;

INSERT INTO {{db}}.scroll_depth_daily (site, path, day, device_class, depth, pageviews)
SELECT
    site,
    path,
    toDate(ts) AS day,
    multiIf(viewport_w = 0, 'unknown', viewport_w < 768, 'mobile', viewport_w < 1024, 'tablet', 'desktop') AS device_class,
    arrayJoin(arrayMap(i -> toUInt8(i * 5), range(intDiv(least(scroll_depth, 100), 5) + 1))) AS depth,
    uniqState(if(pageview_id = '', concat(session_id, ' ', path), pageview_id)) AS pageviews
FROM {{db}}.events
WHERE type = 'scroll'
GROUP BY site, path, day, device_class, depth;

INSERT INTO {{db}}.engagement_daily (site, path, day, device_class, engaged_s, pageviews)
SELECT
    site,
    path,
    toDate(ts) AS day,
    multiIf(viewport_w = 0, 'unknown', viewport_w < 768, 'mobile', viewport_w < 1024, 'tablet', 'desktop') AS device_class,
    arrayJoin(arrayFilter(b -> toUInt64(b) * 1000 <= duration_ms, [1, 2, 3, 5, 7, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240, 300, 420, 600, 900, 1200, 1800, 2700, 3600])) AS engaged_s,
    uniqState(if(pageview_id = '', concat(session_id, ' ', path), pageview_id)) AS pageviews
FROM {{db}}.events
WHERE type = 'engagement' AND duration_ms >= 1000
GROUP BY site, path, day, device_class, engaged_s;

INSERT INTO {{db}}.page_stats_hourly (site, path, hour, device_class, views, visitors, engaged, clicks, rage_clicks, dead_clicks, error_clicks)
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
WHERE type IN ('pageview', 'click', 'engagement')
GROUP BY site, path, hour, device_class;
