-- Warren schema, version 11: fleet-wide concurrency and rate limits.
--
-- `warren limits set TARGET` writes a row of warren_limits and sends NOTIFY warren_limits;
-- every worker re-reads the table on it (and every few seconds). TARGET is a task or a queue
-- name: a job is under every limit whose target is its task or its queue.
--
-- Concurrency is enforced with leases: each worker holds a number of slots per (limit, key)
-- in warren_limit_leases, taken and given back in batches by warren_limit_lease(), which
-- serialises the grants of one (limit, key) under an advisory lock. A lease expires unless its
-- worker renews it, so a dead worker's slots come back by themselves.
--
-- Rate is a token bucket per (limit, key) in warren_limit_buckets; warren_limit_take() takes
-- a batch of tokens in one call. See docs/limits.md.

CREATE TABLE warren_limits (
    target         text PRIMARY KEY,
    -- Most jobs running at once across the fleet (per key); NULL: no concurrency limit.
    concurrency    integer CHECK (concurrency >= 1),
    -- Most jobs started per rate_period_ms (per key); NULL: no rate limit.
    rate_count     integer CHECK (rate_count >= 1),
    rate_period_ms integer CHECK (rate_period_ms >= 1),
    -- RFC 6901 JSON pointer into the payload: the limit applies per value found there.
    key_from       text,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (concurrency IS NOT NULL OR rate_count IS NOT NULL),
    CHECK ((rate_count IS NULL) = (rate_period_ms IS NULL))
);

CREATE TABLE warren_limit_leases (
    target     text        NOT NULL,
    key        text        NOT NULL,
    worker_id  text        NOT NULL,
    slots      integer     NOT NULL CHECK (slots >= 0),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (target, key, worker_id)
);

CREATE TABLE warren_limit_buckets (
    target      text             NOT NULL,
    key         text             NOT NULL,
    tokens      double precision NOT NULL,
    refilled_at timestamptz      NOT NULL,
    PRIMARY KEY (target, key)
);

-- How long jobs waited for limits: the delays a limit deferred each job by, summed over its
-- deferrals, and how many times it was deferred.
ALTER TABLE warren_jobs ADD COLUMN IF NOT EXISTS limit_wait_ms bigint NOT NULL DEFAULT 0;
ALTER TABLE warren_jobs ADD COLUMN IF NOT EXISTS limit_deferrals integer NOT NULL DEFAULT 0;

-- Sets this worker's slots of (target, key) to as many of `want` as the limit leaves free
-- beside the other workers' live leases; returns the slots it now holds. Fewer than before is
-- a release. One call per batch of starts (or releases), never one per job.
CREATE FUNCTION warren_limit_lease(p_target text, p_key text, p_worker text, p_want integer,
                                   p_cap integer, p_ttl_ms bigint)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    others integer;
    granted integer;
BEGIN
    -- Grants of one (target, key) are serialised; other keys go on in parallel.
    PERFORM pg_advisory_xact_lock(hashtextextended(p_target || chr(31) || p_key, 11));
    SELECT COALESCE(sum(slots), 0) INTO others FROM warren_limit_leases
     WHERE target = p_target AND key = p_key AND worker_id <> p_worker
       AND expires_at > clock_timestamp();
    granted := GREATEST(0, LEAST(p_want, p_cap - others));
    IF granted = 0 THEN
        DELETE FROM warren_limit_leases
         WHERE target = p_target AND key = p_key AND worker_id = p_worker;
    ELSE
        INSERT INTO warren_limit_leases AS l (target, key, worker_id, slots, expires_at)
        VALUES (p_target, p_key, p_worker, granted,
                clock_timestamp() + make_interval(secs => p_ttl_ms / 1000.0))
        ON CONFLICT (target, key, worker_id) DO UPDATE
           SET slots = EXCLUDED.slots, expires_at = EXCLUDED.expires_at;
    END IF;
    RETURN granted;
END;
$$;

-- Takes up to `p_want` tokens from the bucket of (target, key), which holds at most
-- `p_burst` and refills at `p_per_sec`. Returns the tokens granted and, when fewer than
-- wanted, the milliseconds until the next token.
CREATE FUNCTION warren_limit_take(p_target text, p_key text, p_want integer,
                                  p_per_sec double precision, p_burst double precision,
                                  OUT granted integer, OUT next_ms bigint)
LANGUAGE plpgsql AS $$
DECLARE
    now_ timestamptz;
    have double precision;
    refilled timestamptz;
BEGIN
    INSERT INTO warren_limit_buckets (target, key, tokens, refilled_at)
    VALUES (p_target, p_key, p_burst, clock_timestamp())
    ON CONFLICT (target, key) DO NOTHING;
    SELECT b.tokens, b.refilled_at INTO have, refilled
      FROM warren_limit_buckets b
     WHERE b.target = p_target AND b.key = p_key
       FOR UPDATE;
    -- The clock is read once the row is locked: read before, a caller that waited for the
    -- lock would set refilled_at back in time and the next one would refill that time twice.
    now_ := GREATEST(clock_timestamp(), refilled);
    have := LEAST(p_burst, have + extract(epoch FROM now_ - refilled) * p_per_sec);
    granted := GREATEST(0, LEAST(p_want, floor(have)::integer));
    UPDATE warren_limit_buckets SET tokens = have - granted, refilled_at = now_
     WHERE target = p_target AND key = p_key;
    IF granted < p_want THEN
        next_ms := ceil((1 - (have - granted)) / p_per_sec * 1000)::bigint;
    ELSE
        next_ms := 0;
    END IF;
END;
$$;
