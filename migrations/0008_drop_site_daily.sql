-- Undoes 0007 (site_daily): `site_totals` reads every path's `visitors` and `engaged` states of
-- pages_daily_sum again, as it did before 0007 (docs/queries.md, "Site totals").
--
-- Why, measured (docs/benchmarks.md, "site_daily (0007) at 100M events"): over 30 days the
-- site-level states merge no faster than every path's (1,172 ms against 1,209 ms at 100M
-- events, the same run), because a uniq state keeps up to 65,536 members and the site's 30 days
-- x 4 device classes x 2 states are near that cap from 10M events on. And one day got slower:
-- site_daily has a few thousand rows, fewer than one index granule (8,192), so a one-day
-- filter cannot skip the month's other states, and each one read is a hash set rebuilt
-- (778 ms for one day against 61 ms before 0007; the site-wide `pages` call over one day went
-- from 133 to 1,032 ms p99, over its 200 ms target). Its view also costs every insert.
--
-- The view first: once it is gone nothing writes to the table. Both statements are idempotent,
-- so a crash before the record reruns them harmlessly. On a cluster each also drops the
-- local tables behind the Distributed one (src/migrate/cluster.rs).
DROP TABLE IF EXISTS {{db}}.site_daily_mv;
DROP TABLE IF EXISTS {{db}}.site_daily;
