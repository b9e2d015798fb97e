-- Undoes 0007 (site_daily): `site_totals` reads every path's `visitors` and `engaged` states of
-- pages_daily_sum again, as it did before 0007 (docs/queries.md, "Site totals").
--
-- Why, measured (docs/benchmarks.md, "site_daily (0007) at 100M events"): over 30 days the
-- site-level states merged no faster than every path's (1,172 ms against 1,209 ms p50 at 100M
-- events, the same run): both merge about 25 M set members, because the rows of one key stay
-- apart in parts that have not merged, so the 65,536-member cap of a uniq state bounds
-- nothing. And one day got slower: site_daily has fewer rows than one index granule (8,192),
-- so a one-day filter reads every state of the month, and each state read is a hash set
-- rebuilt (site_totals for a day took six times the `pages` statement beside it, against 0.8x
-- before 0007; the site-wide `pages` call for a day went over its 200 ms p99 target). Its
-- view also cost every insert.
--
-- The view first: once it is gone nothing writes to the table. Both statements are idempotent,
-- so a crash before the record reruns them harmlessly. On a cluster each also drops the
-- local tables behind the Distributed one (src/migrate/cluster.rs).
DROP TABLE IF EXISTS {{db}}.site_daily_mv;
DROP TABLE IF EXISTS {{db}}.site_daily;
