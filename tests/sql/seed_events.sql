-- Synthetic events for benchmarks: {{rows}} events, 30 days (2024-06-01 .. 2024-06-30 UTC),
-- about 2,000 pages with power-law traffic (page rank r gets ~1/r of the views), two sites
-- (bench 90 %, bench2 10 %), every device class, and the mix of a page view's events:
-- 14 % pageview, ~42 % click (3 % rage, 8 % dead, 1 % error), ~21 % scroll, ~20 % engagement,
-- ~3 % custom. Events come in page views of 7 consecutive numbers. Event k = 0 is the pageview,
-- and the others share its path, session, visitor and viewport and carry its id as pageview_id.
-- A page view sends its scroll depth once (k = 3) or twice (k = 5 too, deeper) and its engaged
-- time once (k = 4) or twice (k = 6 too, longer), each later send with `from` (depth_from,
-- duration_from_ms) = what it sent before, as the snippet does (migration 0005).
-- Deterministic (hashes of the number, no rand()), so runs are comparable.
-- Runs on 18.16 and current releases. Placeholders: {{db}}, {{rows}}. One statement.
INSERT INTO {{db}}.events (event_id, site, type, name, ts, ts_ms, received_at, url, host, path, referrer, title, session_id, visitor_id, x, y, viewport_w, viewport_h, doc_w, doc_h, selector, text, rage, scroll_depth, duration_ms, props, browser, os, device, user_agent, ip, elem_x, elem_y, dead, error, device_class, pageview_id, depth_from, duration_from_ms)
SELECT
    concat('seed-', toString(number)) AS event_id,
    if(cityHash64(pv, 1) % 10 = 0, 'bench2', 'bench') AS site,
    multiIf(k = 0, 'pageview', k IN (1, 2), 'click', k = 3, 'scroll', k = 4, 'engagement', k = 5, if(h % 2 = 0, 'click', 'scroll'), h % 5 = 0, 'custom', h % 5 IN (1, 2), 'engagement', 'click') AS type,
    if(type = 'custom', 'signup', '') AS name,
    toDateTime(toDateTime('2024-06-01 00:00:00', 'UTC') + cityHash64(pv, 3) % (30 * 86400) + k * 20, 'UTC') AS ts,
    toUInt16(h % 1000) AS ts_ms,
    ts AS received_at,
    concat('https://bench.example', path) AS url,
    'bench.example' AS host,
    concat('/p/', toString(page)) AS path,
    if(k = 0 AND h % 3 = 0, 'https://search.example/', '') AS referrer,
    if(k = 0, concat('Page ', toString(page)), '') AS title,
    concat('s', toString(intDiv(pv, 4))) AS session_id,
    concat('v', toString(cityHash64(intDiv(pv, 4), 4) % greatest(intDiv({{rows}}, 40), 1))) AS visitor_id,
    toInt32(if(type = 'click', h % greatest(vw, 1), 0)) AS x,
    toInt32(if(type = 'click', intDiv(h, 7) % dh, 0)) AS y,
    toUInt16(vw) AS viewport_w,
    toUInt16(if(vw = 0, 0, 700)) AS viewport_h,
    toUInt32(if(h % 50 = 0, 0, vw)) AS doc_w,
    toUInt32(dh) AS doc_h,
    if(type = 'click', concat('main>section:nth-of-type(', toString(h % 12 + 1), ')>a'), '') AS selector,
    if(type = 'click', 'Read more', '') AS text,
    toUInt8(type = 'click' AND h % 100 < 3) AS rage,
    toUInt8(if(type = 'scroll', if(k = 3, d1, d2), 0)) AS scroll_depth,
    toUInt32(if(type = 'engagement', if(k = 4, e1, e2), 0)) AS duration_ms,
    if(type = 'custom', '{"plan":"pro"}', '') AS props,
    'Chrome' AS browser,
    'Linux' AS os,
    dc AS device,
    '' AS user_agent,
    '192.0.2.0' AS ip,
    toUInt16(if(type = 'click', cityHash64(number, 5) % 65536, 0)) AS elem_x,
    toUInt16(if(type = 'click', cityHash64(number, 6) % 65536, 0)) AS elem_y,
    toUInt8(type = 'click' AND h % 100 >= 90 AND h % 100 < 98) AS dead,
    toUInt8(type = 'click' AND h % 100 = 99) AS error,
    dc AS device_class,
    concat('seed-', toString(pv * 7)) AS pageview_id,
    toUInt8(if(type = 'scroll' AND k = 5, d1, 0)) AS depth_from,
    toUInt32(if(type = 'engagement' AND k = 6, e1, 0)) AS duration_from_ms
FROM
(
    SELECT
        number,
        intDiv(number, 7) AS pv,
        number % 7 AS k,
        cityHash64(number, 2) AS h,
        toUInt32(floor(exp(log(2000) * (cityHash64(intDiv(number, 7), 7) % 1000000) / 1000000))) - 1 AS page,
        arrayElement([375, 390, 414, 768, 820, 1024, 1280, 1366, 1440, 1536, 1920, 0], toUInt32(cityHash64(intDiv(number, 28), 8) % 12) + 1) AS vw,
        multiIf(vw = 0, 'unknown', vw < 768, 'mobile', vw < 1024, 'tablet', 'desktop') AS dc,
        1500 + cityHash64(intDiv(number, 7), 9) % 9000 AS dh,
        10 + cityHash64(intDiv(number, 7), 10) % 61 AS d1,
        d1 + cityHash64(intDiv(number, 7), 11) % (101 - d1) AS d2,
        cityHash64(intDiv(number, 7), 13) AS g,
        500 + (g % 1000) * (g % 1000) * (g % 300) / 1000 AS e1,
        e1 + cityHash64(intDiv(number, 7), 14) % 120000 AS e2
    FROM numbers({{rows}})
);
