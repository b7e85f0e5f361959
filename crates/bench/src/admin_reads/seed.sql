-- One chunk of the admin-read benchmark's synthetic history: rows {high} down to {low} of
-- {total}, oldest first (as a real table fills), spread evenly over the last {days} days.
--
-- The mix: 91% succeeded (one in twenty after a retry), 5% dead (three attempts, a dozen
-- distinct errors), 3% cancelled, and 1% live (scheduled, queued, running: a backlog of
-- 100,000 at 10 million rows) enqueued in the last hour. Twenty tasks with a skewed
-- popularity (the first few carry most jobs) plus a rare one (`report.yearly`, about one job
-- in 10,000), each on one of four queues. Ids are UUIDv7 made from the enqueue time, as
-- Warren's are. Only the benchmark runs this.
INSERT INTO warren_jobs (id, queue, task, payload, state, attempt, max_attempts, timeout_ms,
                         run_at, enqueued_at, started_at, finished_at, updated_at, result,
                         errors, worker_id)
SELECT (substr(ts, 1, 8) || '-' || substr(ts, 9, 4) || '-7' || substr(h, 1, 3) || '-8'
        || substr(h, 4, 3) || '-' || substr(h, 7, 12))::uuid,
       (ARRAY['default', 'emails', 'reports', 'critical'])[task_no % 4 + 1],
       task,
       jsonb_build_object('order', i, 'customer', 'c' || (i % 50000), 'note', repeat('x', 48)),
       state,
       attempt,
       5,
       300000,
       CASE WHEN state = 'scheduled' THEN enq + interval '10 minutes' END,
       enq,
       CASE WHEN state IN ('scheduled', 'queued') THEN NULL ELSE enq + wait END,
       CASE WHEN state IN ('succeeded', 'dead', 'cancelled') THEN enq + wait + run END,
       enq + wait + run,
       CASE WHEN state = 'succeeded' THEN '{"ok": true}'::jsonb END,
       CASE WHEN attempt = 3 THEN jsonb_build_array(failure || '{"attempt": 1}',
                                                    failure || '{"attempt": 2}',
                                                    failure || '{"attempt": 3}')
            WHEN attempt = 2 THEN jsonb_build_array(failure || '{"attempt": 1}')
            ELSE '[]'::jsonb END,
       CASE WHEN state IN ('scheduled', 'queued') THEN NULL ELSE 'worker-' || (i % 8) END
FROM (
    SELECT *,
           lpad(to_hex((extract(epoch FROM enq) * 1000)::bigint), 12, '0') AS ts,
           CASE WHEN task_no = 20 THEN 'report.yearly' ELSE 'task' || task_no END AS task,
           CASE WHEN state = 'dead' THEN 3
                WHEN state = 'succeeded' AND r3 < 0.05 THEN 2
                WHEN state IN ('scheduled', 'queued') THEN 0
                ELSE 1 END AS attempt,
           jsonb_build_object(
               'kind', (ARRAY['error', 'timeout', 'permanent', 'panic'])[error_no % 4 + 1],
               'message', (ARRAY[
                   'connection refused (os error 111)',
                   'attempt timed out after 30s',
                   'smtp: 550 mailbox unavailable',
                   'handler panicked: index out of bounds: the len is 0 but the index is 0',
                   'upstream returned 503 Service Unavailable',
                   'deadlock detected while updating inventory',
                   'invalid payload: missing field `customer`',
                   'rate limited by provider; retry after 60s',
                   'TLS handshake failed: certificate has expired',
                   'report template not found: yearly.tmpl',
                   'S3 PutObject: SlowDown',
                   'card declined: insufficient funds'])[error_no + 1],
               'worker', 'worker-' || (i % 8),
               'at', enq + wait + run) AS failure
    FROM (
        SELECT i, r3, h, state, wait, run,
               CASE WHEN r2 < 0.0001 THEN 20 ELSE floor(20 * r2 * r2)::int END AS task_no,
               (floor(20 * r2 * r2)::int + floor(r3 * 3)::int) % 12 AS error_no,
               CASE WHEN state IN ('scheduled', 'queued', 'running')
                    THEN now() - r3 * interval '1 hour'
                    ELSE now() - (i::float8 / {total}) * interval '{days} days'
                    END AS enq
        FROM (
            SELECT i, r2, r3, md5(i::text) AS h,
                   CASE WHEN r1 < 0.91 THEN 'succeeded'
                        WHEN r1 < 0.96 THEN 'dead'
                        WHEN r1 < 0.99 THEN 'cancelled'
                        WHEN r1 < 0.995 THEN 'scheduled'
                        WHEN r1 < 0.998 THEN 'queued'
                        ELSE 'running' END AS state,
                   r3 * interval '2 seconds' AS wait,
                   r2 * interval '500 milliseconds' AS run
            FROM (SELECT i, random() AS r1, random() AS r2, random() AS r3
                  FROM generate_series({high}, {low}, -1) AS i) AS g
        ) AS s
    ) AS t
) AS u;
