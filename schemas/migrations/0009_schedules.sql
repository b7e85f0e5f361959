-- Warren schema, version 9: periodic jobs.
--
-- A schedule is a cron expression read in a time zone. The scheduler loop in every worker
-- that runs a promoter turns each due tick into a `scheduled` row of warren_jobs, due at the
-- tick, which the promoter publishes like any delayed job.
--
-- Exactly one job per tick: a job made by a schedule carries (schedule_name, schedule_tick),
-- unique among such jobs, so two schedulers racing on the same tick cannot both insert it
-- (the insert is ON CONFLICT DO NOTHING). The tick is the instant in UTC.
--
-- last_fired_at is the most recent tick a scheduler dealt with (fired, or skipped by
-- catch_up 'none'); ticks after it, up to now, are the ones due.

CREATE TABLE warren_schedules (
    name          text PRIMARY KEY,
    cron          text NOT NULL,
    timezone      text NOT NULL DEFAULT 'UTC',
    task          text NOT NULL,
    payload       jsonb NOT NULL DEFAULT '{}',
    queue         text NOT NULL,
    catch_up      text NOT NULL DEFAULT 'last' CHECK (catch_up IN ('none', 'last', 'all')),
    paused        boolean NOT NULL DEFAULT false,
    last_fired_at timestamptz,
    last_job_id   uuid,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE warren_jobs ADD COLUMN IF NOT EXISTS schedule_name text;
ALTER TABLE warren_jobs ADD COLUMN IF NOT EXISTS schedule_tick timestamptz;

CREATE UNIQUE INDEX warren_jobs_schedule_tick ON warren_jobs (schedule_name, schedule_tick)
    WHERE schedule_name IS NOT NULL;
