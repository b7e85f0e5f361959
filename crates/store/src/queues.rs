//! Per-queue counts from the jobs table, for `warren queues`.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{Error, Store};

/// What Postgres knows of one Warren queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct QueueCounts {
    /// The Warren queue name.
    pub queue: String,
    /// Jobs waiting in Postgres for their time (delayed jobs, retries).
    pub scheduled: i64,
    /// Jobs a worker is running now.
    pub running: i64,
    /// Jobs that ended dead in the last 24 hours.
    pub dead_24h: i64,
    /// Jobs that succeeded in the last hour.
    pub succeeded_1h: i64,
    /// When an admin paused the queue, if it is paused (`warren queues pause`).
    pub paused_at: Option<DateTime<Utc>>,
}

/// Counts per queue. Only live rows and recent outcomes are read, each selected by state
/// (`IN` and `=`, which the (state, …) index serves, unlike `NOT IN`), so the query does not
/// scan the table's history.
const COUNTS: &str = "
WITH recent AS (
    SELECT queue, state FROM warren_jobs WHERE state IN ('scheduled', 'queued', 'running')
    UNION ALL
    SELECT queue, state FROM warren_jobs
     WHERE state = 'dead' AND finished_at > now() - interval '24 hours'
    UNION ALL
    SELECT queue, state FROM warren_jobs
     WHERE state = 'succeeded' AND finished_at > now() - interval '1 hour'
), named AS (
    SELECT queue FROM recent
    UNION
    SELECT unnest(queues) FROM warren_workers
    UNION
    SELECT queue FROM warren_queue_pauses
)
SELECT n.queue,
       count(r.state) FILTER (WHERE r.state = 'scheduled') AS scheduled,
       count(r.state) FILTER (WHERE r.state = 'running') AS running,
       count(r.state) FILTER (WHERE r.state = 'dead') AS dead_24h,
       count(r.state) FILTER (WHERE r.state = 'succeeded') AS succeeded_1h,
       p.paused_at
FROM named n LEFT JOIN recent r ON r.queue = n.queue
             LEFT JOIN warren_queue_pauses p ON p.queue = n.queue
GROUP BY n.queue, p.paused_at
ORDER BY n.queue";

impl Store {
    /// Every queue that has live or recent jobs or a registered worker, with its counts.
    pub async fn queue_counts(&self) -> Result<Vec<QueueCounts>, Error> {
        sqlx::query_as(COUNTS)
            .fetch_all(&self.pool)
            .await
            .map_err(Error::query("counting jobs per queue"))
    }
}
