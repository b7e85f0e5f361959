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

-- `warren dead` groups every dead job by task, the kind of its last failure and the first
-- line of its last message. Those two live inside `errors`, so grouping them read every dead
-- row from the table (two seconds for 500,000 dead jobs of ten million), and an index on the
-- expressions cannot answer by an index-only scan (PostgreSQL would still fetch `errors`).
-- So a dead row carries them in two columns of its own, set by a trigger whenever a row is
-- written dead (the WHEN clause keeps every other write, the hot path's successes included,
-- out of the function), and a partial index on dead rows covers the whole query. The first
-- line is cut at 500 characters so that an index entry stays far below PostgreSQL's limit
-- (about 2,700 bytes): a failure must never be refused for the length of its message.
-- A row that leaves `dead` (a retry) keeps stale values, which nothing reads: the index and
-- the query select `state = 'dead'`.
--
-- ADD COLUMN without a default does not rewrite the table. The backfill updates every dead
-- row once (about two minutes for 500,000 on this machine under load), holding their row
-- locks, not the table's, until the migration commits.
ALTER TABLE warren_jobs
    ADD COLUMN IF NOT EXISTS last_error_kind text,
    ADD COLUMN IF NOT EXISTS last_error_line text;

CREATE OR REPLACE FUNCTION warren_dead_error() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.last_error_kind := coalesce(NEW.errors -> -1 ->> 'kind', '');
    NEW.last_error_line :=
        left(split_part(coalesce(NEW.errors -> -1 ->> 'message', ''), E'\n', 1), 500);
    RETURN NEW;
END;
$$;

CREATE TRIGGER warren_jobs_dead_error
    BEFORE INSERT OR UPDATE ON warren_jobs
    FOR EACH ROW WHEN (NEW.state = 'dead')
    EXECUTE FUNCTION warren_dead_error();

UPDATE warren_jobs
   SET last_error_kind = coalesce(errors -> -1 ->> 'kind', ''),
       last_error_line = left(split_part(coalesce(errors -> -1 ->> 'message', ''), E'\n', 1), 500)
 WHERE state = 'dead';

-- Newest first within a group, so that the group's example (its most recent job) is the
-- first entry.
CREATE INDEX IF NOT EXISTS warren_jobs_dead_groups ON warren_jobs
    (task, last_error_kind, last_error_line, finished_at DESC NULLS LAST) INCLUDE (updated_at, id)
    WHERE state = 'dead';
