-- Warren schema, version 10: what the admin reads need to answer within a second on a jobs
-- table of ten million rows (docs/cli.md, "Performance", has the figures and plans).
--
-- warren_jobs_last_error: `jobs list --error-contains` and `dead --error-contains` match text
--   anywhere in the last error message (`ILIKE '%…%'`). A B-tree cannot serve that; a
--   trigram index (pg_trgm) can. Without it a search with few or no matches reads every row
--   (six seconds at ten million rows). Partial, on the rows that have an error message: the
--   first-attempt successes that make most of the hot path's writes are not in it, and the
--   search's own `ILIKE` (a strict operator, false on NULL) implies the predicate, so the
--   planner needs no extra condition that would skew its estimate.
-- warren_jobs_last_error_stats: statistics on that expression, so that the planner knows
--   how common a searched text is: walk the newest-first index for a common one, the trigram
--   index for a rare one.
-- warren_jobs_not_succeeded (state, task, queue, enqueued_at): the counts behind the bulk
--   dry run (`jobs retry --state dead --task …`) by an index-only scan instead of a visit
--   to every matching row (two seconds for 110,000 dead jobs). Partial: succeeded jobs,
--   nearly all rows, are never retried or cancelled in bulk, and they are not in it.
-- warren_jobs_no_payload (state) for rows without a JSON payload (bad input), which a
--   retry cannot send again: the dry run counts those apart, from this small index.
--
-- pg_trgm ships with PostgreSQL (Debian's postgresql-15, the official images) and is a
-- trusted extension: a role with CREATE on the database (its owner, as the migrating role
-- usually is) may create it without being a superuser. A migrating role without that
-- privilege fails here: have a superuser run `CREATE EXTENSION pg_trgm;` in the Warren
-- database first, and this statement becomes a no-op (docs/operations.md).
--
-- As with migrations 4, 6 and 7, plain CREATE INDEX blocks writes to warren_jobs while it
-- builds (about 35 s for the trigram index and 10 s for the others at ten million rows
-- here); on a large table, create them CONCURRENTLY by hand first and this migration
-- becomes a no-op.

CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE INDEX IF NOT EXISTS warren_jobs_last_error ON warren_jobs
    USING gin ((errors -> -1 ->> 'message') gin_trgm_ops)
    WHERE (errors -> -1 ->> 'message') IS NOT NULL;
CREATE STATISTICS IF NOT EXISTS warren_jobs_last_error_stats
    ON ((errors -> -1 ->> 'message')) FROM warren_jobs;

CREATE INDEX IF NOT EXISTS warren_jobs_not_succeeded ON warren_jobs
    (state, task, queue, enqueued_at) WHERE state <> 'succeeded';
CREATE INDEX IF NOT EXISTS warren_jobs_no_payload ON warren_jobs (state) WHERE payload IS NULL;
