-- Warren schema, version 8: what `warren workers` shows of each worker beyond its state.
--
-- version: the warren-worker (warren-runtime) version the process runs, so an operator can
-- see a rolling upgrade progress. failed: attempts that failed (retried or dead) since the
-- process started, beside `processed`.

ALTER TABLE warren_workers ADD COLUMN IF NOT EXISTS version text NOT NULL DEFAULT '';
ALTER TABLE warren_workers ADD COLUMN IF NOT EXISTS failed bigint NOT NULL DEFAULT 0;
