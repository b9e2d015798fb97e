-- The site's pages per day (issue 13): everything the `pages` report needs in one rollup keyed
-- day first, so a report over a few days reads those days' rows only.
--
-- Why: `pages` over one day used to merge page_stats_hourly, scroll_depth_daily and
-- engagement_daily, which are keyed (site, path, day, ...): with every path in the range, the
-- day filter skips no granule, so one day read the whole month of the site's states (318 ms p99
-- at 2M events, docs/benchmarks.md). Here the key is (site, day, device_class, path), and the
-- three are one row per page-day-device: one day reads 1/30 of a month, 30 days read fewer
-- states than the three tables did (one row per page-day instead of one per bucket).
--
-- Counted once, as every rollup of 0002 (see its header): only distinct-id states.
--   views .. error_clicks  as page_stats_hourly;
--   scrolled               page-view keys with a scroll event (scroll_depth_daily's bucket 0);
--   scroll_steps           distinct (page-view key, step) pairs, one per 5 % step reached above 0
--                          their number is sum over b >= 5 of reached(b), so the average deepest
--                          scroll is 5 * scroll_steps / scrolled, exactly as docs/queries.md
--                          computes it from scroll_depth_daily;
--   engaged_reached        per engaged-time bound (engagement_daily's 23 bounds, in order), the
--                          page-view keys whose engagement reached it (uniqIfForEach: 18.16 has
--                          it, and one state per bound keeps the median's interpolation exact).
CREATE TABLE IF NOT EXISTS {{db}}.pages_daily
(
    site            {{lowcard_string}},
    day             Date,
    device_class    {{lowcard_string}},
    path            String,
    views           AggregateFunction(uniqIf, String, UInt8),
    visitors        AggregateFunction(uniqIf, String, UInt8),
    engaged         AggregateFunction(uniqIf, String, UInt8),
    clicks          AggregateFunction(uniqIf, String, UInt8),
    rage_clicks     AggregateFunction(uniqIf, String, UInt8),
    dead_clicks     AggregateFunction(uniqIf, String, UInt8),
    error_clicks    AggregateFunction(uniqIf, String, UInt8),
    scrolled        AggregateFunction(uniqIf, String, UInt8),
    scroll_steps    AggregateFunction(uniqArray, Array(String)),
    engaged_reached AggregateFunction(uniqIfForEach, Array(String), Array(UInt8))
)
ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(day)
ORDER BY (site, day, device_class, path);

CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.pages_daily_mv TO {{db}}.pages_daily AS
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
WHERE type IN ('pageview', 'click', 'engagement', 'scroll')
GROUP BY site, day, device_class, path;

-- Backfill: the rows already in events, through the same SELECT (idempotent: sets).
INSERT INTO {{db}}.pages_daily (site, day, device_class, path, views, visitors, engaged, clicks, rage_clicks, dead_clicks, error_clicks, scrolled, scroll_steps, engaged_reached)
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
WHERE type IN ('pageview', 'click', 'engagement', 'scroll')
GROUP BY site, day, device_class, path;
