-- Warren schema, version 2: wake promoters when a job becomes scheduled.
--
-- Promoters LISTEN on `warren_due`. Postgres folds identical notifications within one
-- transaction into one, so a batch that schedules many retries wakes each promoter once.
-- Rows written on the hot path (succeeded, dead, running) do not fire the trigger at all.

CREATE FUNCTION warren_notify_due() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('warren_due', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER warren_jobs_due_notify
    AFTER INSERT OR UPDATE OF state, run_at ON warren_jobs
    FOR EACH ROW WHEN (NEW.state = 'scheduled')
    EXECUTE FUNCTION warren_notify_due();
