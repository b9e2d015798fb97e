-- The site's distinct visitors and engaged page views per day, for `site_totals` (issue 13).
-- Before, it merged every path's `visitors` and `engaged` states of pages_daily_sum, members
-- that grow with traffic (at 100M events over 30 days, 705 ms of the site-wide `pages` call).
-- A uniq state keeps at most 65,536 members, so the site-level merge here is bounded by
-- 30 days x 4 device classes x 2 states at any traffic. At 10M events it is no faster yet
-- (docs/benchmarks.md, "site_daily (migration 0007) at 10M events").
--
-- site_daily holds only uniq states, so a page view or visitor counted twice counts once: the
-- table can be fed by its view and converted from pages_daily_sum with the two overlapping
-- (rows inserted between the switch and the conversion are in both). The site's sums (views,
-- clicks) stay in pages_daily_sum, where they are exact; `site_totals` reads both tables.
--
-- Phases (src/migrate/cutover.rs):
--   switch   the table and its view on events (every row from now on, no cutover filter: the
--            overlap with the conversion is harmless for sets);
--   (wait)   until no insert that started before the view existed can still commit, so that
--            the conversion reads every row the view missed;
--   convert  pages_daily_sum's states merged per (site, day, device_class), all of its
--            history (also days the compactor deleted from events), as backfill = 1 rows,
--            after the runner dropped every backfill = 1 partition (a rerun doubles nothing,
--            and the table does not grow);
--   finish   nothing to drop.

-- phase: switch

CREATE TABLE IF NOT EXISTS {{db}}.site_daily
(
    site         {{lowcard_string}},
    day          Date,
    device_class {{lowcard_string}},
    backfill     UInt8,
    visitors     AggregateFunction(uniqIf, String, UInt8),
    engaged      AggregateFunction(uniqIf, String, UInt8)
)
ENGINE = AggregatingMergeTree()
PARTITION BY (toYYYYMM(day), backfill)
ORDER BY (site, day, device_class, backfill);

-- The same states as pages_daily_sum_mv (0006), without the path.
CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.site_daily_mv TO {{db}}.site_daily AS
SELECT
    site,
    toDate(ts) AS day,
    multiIf(viewport_w = 0, 'unknown', viewport_w < 768, 'mobile', viewport_w < 1024, 'tablet', 'desktop') AS device_class,
    toUInt8(0) AS backfill,
    uniqIfState(visitor_id, type = 'pageview') AS visitors,
    uniqIfState(if(pageview_id = '', concat(session_id, ' ', path), pageview_id), type = 'click' OR (type = 'engagement' AND duration_ms >= 10000)) AS engaged
FROM {{db}}.events
WHERE type IN ('pageview', 'click', 'engagement')
GROUP BY site, day, device_class;

-- phase: convert

INSERT INTO {{db}}.site_daily (site, day, device_class, backfill, visitors, engaged)
SELECT
    site, day, device_class,
    toUInt8(1) AS backfill,
    uniqIfMergeState(visitors) AS visitors,
    uniqIfMergeState(engaged) AS engaged
FROM {{db}}.pages_daily_sum
GROUP BY site, day, device_class;

-- phase: finish
