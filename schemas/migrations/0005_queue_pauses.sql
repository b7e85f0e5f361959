-- Warren schema, version 5: paused queues.
--
-- `warren queues pause NAME` inserts a row here and `warren queues resume NAME` deletes it;
-- each also sends NOTIFY warren_pause, on which every worker re-reads this table and stops or
-- starts consuming that queue. A worker reads the table before it consumes, and again every
-- few seconds, so a notification missed while its LISTEN connection was down is caught up.
-- Jobs stay in RabbitMQ while their queue is paused; nothing in warren_jobs changes.

CREATE TABLE IF NOT EXISTS warren_queue_pauses (
    queue     text PRIMARY KEY,
    paused_at timestamptz NOT NULL DEFAULT now(),
    -- Who paused it, as `warren` knows them (user@host), for `warren queues`.
    paused_by text NOT NULL
);
