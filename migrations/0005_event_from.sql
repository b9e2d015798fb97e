-- What each scroll and engagement event adds (issue 13): the value its page view had already
-- sent. The snippet sends a page view's scroll depth and engaged time again whenever they grew
-- (each time the tab is hidden), so a sum over events double-counts unless each event says
-- where it started: with `from`, an event adds scroll_depth - depth_from (and the 5 % buckets
-- between the two), duration_ms - duration_from_ms (and the engagement bounds between), and
-- the rollups can be plain sums instead of sets of page-view keys (migration 0006).
--
-- Rows stored before this migration, and events of senders that do not send `from`, have 0:
-- every send counts from 0, as the rollups' backfill documents.
--
-- 18.16 has no ADD COLUMN IF NOT EXISTS: there {{if_not_exists}} is empty and the runner
-- treats error 44 (column already exists) on this ALTER as already applied.
ALTER TABLE {{db}}.events
    ADD COLUMN {{if_not_exists}}depth_from UInt8 AFTER pageview_id,
    ADD COLUMN {{if_not_exists}}duration_from_ms UInt32 AFTER depth_from;
