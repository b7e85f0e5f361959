-- Warren schema, version 3: what the hardening round needs each job row to remember.
--
-- cancel_requested_at: an admin asked a running job to stop. The NOTIFY that tells its
--   worker is lost if the worker's LISTEN connection is down at that moment; workers re-read
--   this column whenever they (re)connect and on every heartbeat, so the request is not.
-- duplicate_runs: outcomes of attempts that ran although the job had already moved past
--   them (a promoter killed between publish and commit, a redelivery racing the original).
--   The fence keeps the first outcome; this counts the runs it discarded, for people.
-- body_size, body_sha256: a bad-input message keeps only a bounded prefix of its body in
--   raw_body; these say how large the whole body was and identify it exactly.

ALTER TABLE warren_jobs
    ADD COLUMN cancel_requested_at timestamptz,
    ADD COLUMN duplicate_runs integer NOT NULL DEFAULT 0,
    ADD COLUMN body_size bigint,
    ADD COLUMN body_sha256 bytea;
