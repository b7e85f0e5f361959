-- Warren schema, version 1: the jobs table and the workers table.
--
-- One row per job. On the hot path a job's row is first written when a worker records its
-- outcome (one batched statement for many jobs); delayed, retrying and transactional jobs get
-- their row when they are scheduled. Columns are documented in docs/job-lifecycle.md.

CREATE TABLE warren_jobs (
    id              uuid        PRIMARY KEY,
    queue           text        NOT NULL,
    task            text        NOT NULL,
    -- The payload as JSON; NULL when the body could not be stored as JSON (see raw_body).
    payload         jsonb,
    -- The original message body, kept when it is not storable JSON (bad input, or a payload
    -- Postgres cannot hold as jsonb, such as one containing \u0000).
    raw_body        bytea,
    state           text        NOT NULL CHECK (state IN
                        ('scheduled', 'queued', 'running', 'succeeded', 'dead', 'cancelled')),
    -- Attempts started so far: 0 for a job that has never run.
    attempt         integer     NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts    integer     NOT NULL CHECK (max_attempts >= 1),
    timeout_ms      bigint,
    run_at          timestamptz,
    enqueued_at     timestamptz NOT NULL,
    started_at      timestamptz,
    finished_at     timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    result          jsonb,
    -- Error history: one object per failed attempt (attempt, kind, message, worker, at).
    errors          jsonb       NOT NULL DEFAULT '[]'::jsonb,
    worker_id       text,
    idempotency_key text,
    traceparent     text,
    -- Set on a job that was not run because another job held its idempotency key.
    duplicate_of    uuid
);

-- The promoter's work list: only scheduled rows, so the hot path's inserts do not pay for it.
CREATE INDEX warren_jobs_due ON warren_jobs (run_at) WHERE state = 'scheduled';
-- An idempotency key is held by at most one job that is waiting, running or succeeded; a
-- dead or cancelled job frees its key. See docs/job-lifecycle.md ("Idempotency keys").
CREATE UNIQUE INDEX warren_jobs_idempotency ON warren_jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL
      AND state IN ('scheduled', 'queued', 'running', 'succeeded');

CREATE TABLE warren_workers (
    id            text        PRIMARY KEY,
    hostname      text        NOT NULL,
    pid           integer     NOT NULL,
    queues        text[]      NOT NULL,
    concurrency   integer     NOT NULL,
    state         text        NOT NULL CHECK (state IN ('running', 'stopping', 'stopped')),
    started_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    stopped_at    timestamptz,
    in_flight     integer     NOT NULL DEFAULT 0,
    processed     bigint      NOT NULL DEFAULT 0
);
