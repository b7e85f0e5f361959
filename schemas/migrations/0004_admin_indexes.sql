-- Warren schema, version 4: indexes for the admin CLI's listings.
--
-- `warren jobs list`, the bulk `jobs retry` / `jobs cancel` and `warren dead` read jobs
-- newest first, paged by keyset on (enqueued_at, id). Without an index each page sorts the
-- whole table. Two indexes cover the common shapes:
--
-- warren_jobs_state_enqueued: a state filter (`--state dead`, `warren dead`), walked in order.
-- warren_jobs_enqueued: no state filter, or a time window (`--since`, `--until`).
--
-- A task or queue filter is applied while walking one of these; it is cheap when the task is
-- common and slower for a rare task in a large table (docs/cli.md gives figures). Each index
-- costs every outcome write a little, so no more are added until a figure asks for one.
--
-- Plain CREATE INDEX (not CONCURRENTLY, which cannot run inside the migration's
-- transaction) blocks writes to warren_jobs while it builds: on a large table, run
-- `warren migrate` when a pause of that length is acceptable, or create these two indexes
-- CONCURRENTLY by hand first (IF NOT EXISTS then makes this migration a no-op).

CREATE INDEX IF NOT EXISTS warren_jobs_state_enqueued ON warren_jobs (state, enqueued_at, id);
CREATE INDEX IF NOT EXISTS warren_jobs_enqueued ON warren_jobs (enqueued_at, id);
