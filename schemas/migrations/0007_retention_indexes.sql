-- Warren schema, version 7: indexes for retention and for the admin CLI on a large table.
--
-- warren_jobs_state_finished (state, finished_at): what `warren prune` and the workers'
--   cleaner walk, oldest first, to delete finished jobs by age (`state = $1 AND finished_at <
--   cutoff`), and what `warren stats` and `warren queues` read for the jobs that finished in
--   a recent window. Without it each of those reads the whole table (1.5 to 2.5 s at ten
--   million rows; docs/benchmarks.md). Its (state) prefix also answers the per-state counts
--   of `jobs summary` by an index-only scan.
-- warren_jobs_task_enqueued (task, enqueued_at, id): `jobs list --task` newest first. With
--   only the indexes of migration 4, a rare task (or a misspelt one) walks the whole table
--   looking for a page: about a second at ten million rows, growing with the table.
--
-- Each index costs every outcome write one more index entry. As in migration 4, plain
-- CREATE INDEX blocks writes to warren_jobs while it builds (about ten seconds per index at
-- ten million rows here); on a large table, create them CONCURRENTLY by hand first and this
-- migration becomes a no-op.

CREATE INDEX IF NOT EXISTS warren_jobs_state_finished ON warren_jobs (state, finished_at);
CREATE INDEX IF NOT EXISTS warren_jobs_task_enqueued ON warren_jobs (task, enqueued_at, id);
