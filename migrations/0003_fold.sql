-- The fold per page view (issue 14): how much of the document its first screen showed, so the
-- scroll map can mark where the average visitor's screen ended without scrolling.
--
-- fold = viewport_h / doc_h in whole percent (0..100, capped at 100 for a page shorter than its
-- window), read from the page view event itself (the snippet sends vh and dh with every event;
-- the page view's are the first screen). Page views without a known document or viewport
-- height (doc_h = 0 or viewport_h = 0: old snippets, server-side senders) are not counted.
--
-- Counted once, as every rollup of 0002 is: per fold percent, the set of page-view keys
-- (uniqState), so a duplicate block, a resent batch or a re-run backfill adds nothing. The
-- average fold of a range is sum(fold * n) / sum(n) over the merged sets, exact to the whole
-- percent (docs/queries.md, query `fold`).
CREATE TABLE IF NOT EXISTS {{db}}.fold_daily
(
    site         {{lowcard_string}},
    path         String,
    day          Date,
    device_class {{lowcard_string}},
    fold         UInt8,
    pageviews    AggregateFunction(uniq, String)
)
ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(day)
ORDER BY (site, path, day, device_class, fold);

CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.fold_daily_mv TO {{db}}.fold_daily AS
SELECT
    site,
    path,
    toDate(ts) AS day,
    multiIf(viewport_w = 0, 'unknown', viewport_w < 768, 'mobile', viewport_w < 1024, 'tablet', 'desktop') AS device_class,
    toUInt8(least(100, intDiv(toUInt64(viewport_h) * 100, doc_h))) AS fold,
    uniqState(if(pageview_id = '', concat(session_id, ' ', path), pageview_id)) AS pageviews
FROM {{db}}.events
WHERE type = 'pageview' AND doc_h > 0 AND viewport_h > 0
GROUP BY site, path, day, device_class, fold;

-- Backfill: page views already stored before this migration (idempotent, see above).
INSERT INTO {{db}}.fold_daily (site, path, day, device_class, fold, pageviews)
SELECT
    site,
    path,
    toDate(ts) AS day,
    multiIf(viewport_w = 0, 'unknown', viewport_w < 768, 'mobile', viewport_w < 1024, 'tablet', 'desktop') AS device_class,
    toUInt8(least(100, intDiv(toUInt64(viewport_h) * 100, doc_h))) AS fold,
    uniqState(if(pageview_id = '', concat(session_id, ' ', path), pageview_id)) AS pageviews
FROM {{db}}.events
WHERE type = 'pageview' AND doc_h > 0 AND viewport_h > 0
GROUP BY site, path, day, device_class, fold;
