//! The workers table: who is running, since when, last heard from when.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{Error, Store};

/// How long a `running` or `stopping` worker may go without a heartbeat before it is shown
/// as `lost`. The heartbeat interval is not stored; workers send one every 5 s by default, so
/// this is six default intervals, and at least three for any interval up to 10 s. A worker
/// killed with `kill -9` or cut off from Postgres shows as lost within this time.
pub const LOST_AFTER: Duration = Duration::from_secs(30);

/// What a worker says about itself when it starts.
#[derive(Clone, Debug)]
pub struct WorkerInfo {
    /// The worker's id, unique per process; registering it again revives its row.
    pub id: String,
    /// The host it runs on.
    pub hostname: String,
    /// Its process id on that host.
    pub pid: u32,
    /// The Warren queues it consumes.
    pub queues: Vec<String>,
    /// The most jobs it runs at once.
    pub concurrency: u32,
    /// The version of Warren it runs.
    pub version: String,
}

/// A row of the workers table.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct WorkerRecord {
    /// The worker's id.
    pub id: String,
    /// The host it runs on.
    pub hostname: String,
    /// Its process id on that host.
    pub pid: i32,
    /// The Warren queues it consumes.
    pub queues: Vec<String>,
    /// The most jobs it runs at once.
    pub concurrency: i32,
    /// `running`, `stopping` or `stopped`, as its last heartbeat said; or `lost`, for a
    /// running or stopping worker not heard from for [`LOST_AFTER`].
    pub state: String,
    /// When it first registered.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat; a `running` worker unseen for many heartbeat intervals has
    /// likely died without saying so.
    pub last_seen_at: DateTime<Utc>,
    /// When it reported `stopped`.
    pub stopped_at: Option<DateTime<Utc>>,
    /// Jobs running at its last heartbeat.
    pub in_flight: i32,
    /// Jobs it has finished since it started.
    pub processed: i64,
    /// Attempts that failed (retried or dead) since it started.
    pub failed: i64,
    /// The version of Warren it runs (empty for a worker older than this column).
    pub version: String,
    /// Those of its queues an admin has paused (`warren queues pause`): it takes no new jobs
    /// from them.
    pub paused_queues: Vec<String>,
}

impl Store {
    /// Inserts the worker's row as `running`, or takes over an existing row with the same id
    /// whose worker is gone (stopped, or lost: no heartbeat for [`LOST_AFTER`]), replacing
    /// every column as a fresh row would have them.
    ///
    /// Refuses with [`Error::WorkerIdInUse`] when a live worker (`running` or `stopping`,
    /// heard from within [`LOST_AFTER`]) in another process holds the id: two processes
    /// sharing one row would overwrite each other's heartbeats and show as one worker. The
    /// same process (host and pid) may register again, e.g. after a restart of its runtime.
    pub async fn register_worker(&self, info: &WorkerInfo) -> Result<(), Error> {
        let taken: Option<i32> = sqlx::query_scalar(
            "INSERT INTO warren_workers (id, hostname, pid, queues, concurrency, state, version)
             VALUES ($1, $2, $3, $4, $5, 'running', $7)
             ON CONFLICT (id) DO UPDATE SET
                 hostname = EXCLUDED.hostname, pid = EXCLUDED.pid, queues = EXCLUDED.queues,
                 concurrency = EXCLUDED.concurrency, state = 'running', started_at = now(),
                 last_seen_at = now(), stopped_at = NULL, in_flight = 0, processed = 0,
                 failed = 0, version = EXCLUDED.version
             WHERE warren_workers.state = 'stopped'
                OR warren_workers.last_seen_at < now() - $6
                OR (warren_workers.hostname, warren_workers.pid) = (EXCLUDED.hostname, EXCLUDED.pid)
             RETURNING 1",
        )
        .bind(&info.id)
        .bind(&info.hostname)
        .bind(info.pid as i32)
        .bind(&info.queues)
        .bind(info.concurrency as i32)
        .bind(LOST_AFTER)
        .bind(&info.version)
        .fetch_optional(&self.pool)
        .await
        .map_err(Error::query("registering the worker"))?;
        if taken.is_some() {
            return Ok(());
        }
        // The row belongs to a live worker: say which, so that the operator can find it.
        let holder: Option<(String, i32, DateTime<Utc>)> =
            sqlx::query_as("SELECT hostname, pid, last_seen_at FROM warren_workers WHERE id = $1")
                .bind(&info.id)
                .fetch_optional(&self.pool)
                .await
                .map_err(Error::query("reading the worker holding this id"))?;
        let Some((hostname, pid, last_seen_at)) = holder else {
            // Deleted (pruned) in between: the id is free now.
            return Box::pin(self.register_worker(info)).await;
        };
        Err(Error::WorkerIdInUse {
            id: info.id.clone(),
            hostname,
            pid,
            last_seen_at,
            lost_after: LOST_AFTER,
        })
    }

    /// Updates the worker's row: `state` (`running`, `stopping` or `stopped`, which also
    /// sets `stopped_at`), jobs in flight and jobs processed so far. An unknown id is a no-op.
    pub async fn heartbeat(
        &self,
        id: &str,
        state: &str,
        in_flight: u32,
        processed: u64,
        failed: u64,
    ) -> Result<(), Error> {
        sqlx::query(
            "UPDATE warren_workers
             SET last_seen_at = now(), state = $2, in_flight = $3, processed = $4, failed = $5,
                 stopped_at = CASE WHEN $2 = 'stopped' THEN now() END
             WHERE id = $1",
        )
        .bind(id)
        .bind(state)
        .bind(in_flight as i32)
        .bind(processed.min(i64::MAX as u64) as i64)
        .bind(failed.min(i64::MAX as u64) as i64)
        .execute(&self.pool)
        .await
        .map_err(Error::query("recording a worker heartbeat"))?;
        Ok(())
    }

    /// Every worker row, stopped and lost ones included, oldest start first.
    pub async fn workers(&self) -> Result<Vec<WorkerRecord>, Error> {
        sqlx::query_as(
            "SELECT id, hostname, pid, queues, concurrency,
                    CASE WHEN state <> 'stopped' AND last_seen_at < now() - $1
                         THEN 'lost' ELSE state END AS state,
                    started_at, last_seen_at, stopped_at, in_flight, processed, failed, version,
                    ARRAY(SELECT q FROM unnest(queues) q
                          WHERE q IN (SELECT queue FROM warren_queue_pauses)) AS paused_queues
             FROM warren_workers ORDER BY started_at",
        )
        .bind(LOST_AFTER)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::query("listing workers"))
    }

    /// Deletes the rows of stopped and lost workers last seen more than `older_than` ago, and
    /// returns their ids. Rows of live workers are never touched, however old.
    pub async fn prune_workers(&self, older_than: Duration) -> Result<Vec<String>, Error> {
        sqlx::query_scalar(
            "DELETE FROM warren_workers
             WHERE last_seen_at < now() - $1
               AND (state = 'stopped' OR last_seen_at < now() - $2)
             RETURNING id",
        )
        .bind(older_than)
        .bind(LOST_AFTER)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::query("pruning workers"))
    }
}
