-- Warren schema, version 12: a rate-limited job deferred for want of a token holds a
-- reservation, so that it comes back once, at its place in the bucket's schedule.
--
-- warren_limit_take() used to grant what the bucket held and tell the rest when the next token
-- would come; every worker then spread its own deferred jobs from that moment, uncoordinated,
-- and a job that came back a little late found its token taken and was deferred again (2.6 to
-- 3.2 deferrals per job under load; docs/limits.md). Now the tokens a call cannot grant are
-- reserved: the bucket goes into debt by one token per reserved job, and the call says when
-- the first reserved token is due. The worker defers those jobs to their reserved times and
-- marks each row with its time (limit_token_at); the promoter passes the mark on in the
-- `warren-limit-token` header, and a worker starts such a job without taking another token
-- unless it arrives later than its reservation's grace (see docs/limits.md).

ALTER TABLE warren_jobs ADD COLUMN IF NOT EXISTS limit_token_at timestamptz;

DROP FUNCTION warren_limit_take(text, text, integer, double precision, double precision);

-- Takes `p_want` tokens of (target, key): `granted` of them now, and reserves up to
-- `reserved` more, the first due `next_ms` from now and each next one 1/p_per_sec later.
-- Reservations reach at most `p_horizon_ms` ahead; jobs beyond it get none (the caller defers
-- them to the horizon, to ask again then). `next_ms` is also the wait for the next token when
-- nothing was reserved.
CREATE FUNCTION warren_limit_take(p_target text, p_key text, p_want integer,
                                  p_per_sec double precision, p_burst double precision,
                                  p_horizon_ms bigint,
                                  OUT granted integer, OUT reserved integer, OUT next_ms bigint)
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
    -- In debt (have < 0) the bucket refills towards the burst like any other.
    have := LEAST(p_burst, have + extract(epoch FROM now_ - refilled) * p_per_sec);
    granted := GREATEST(0, LEAST(p_want, floor(have)::integer));
    have := have - granted;
    -- The k-th reservation (0-based) is due when the bucket has refilled past k + 1 tokens of
    -- debt: (k + 1 - have) / rate seconds from now.
    reserved := GREATEST(0, LEAST(p_want - granted,
                   floor(p_horizon_ms / 1000.0 * p_per_sec + have)::integer));
    IF granted < p_want THEN
        next_ms := ceil((1 - have) / p_per_sec * 1000)::bigint;
    ELSE
        next_ms := 0;
    END IF;
    UPDATE warren_limit_buckets SET tokens = have - reserved, refilled_at = now_
     WHERE target = p_target AND key = p_key;
END;
$$;
