//! Fleet-wide limits: the `warren_limits` table and its NOTIFY, the slot leases and token
//! buckets workers take in batches, and the deferral of a job over its limit to a
//! `scheduled` row. Semantics and costs are in docs/limits.md.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use warren_core::JobId;

use crate::{Error, Store};

/// Postgres channel notified when a limit is set or removed; the payload is its target.
pub const LIMITS_CHANNEL: &str = "warren_limits";

/// A limit on the jobs of a task or a queue, across the whole fleet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Limit {
    /// The task or queue name it applies to.
    pub target: String,
    /// Most jobs running at once (per key).
    pub concurrency: Option<u32>,
    /// Most jobs started per period (per key).
    pub rate: Option<Rate>,
    /// RFC 6901 pointer into the payload: the limit applies per value found there.
    pub key_from: Option<String>,
    /// When it was last set.
    pub updated_at: DateTime<Utc>,
}

/// A rate: `count` starts per `period_ms` milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Rate {
    /// Starts allowed per period, at least 1.
    pub count: u32,
    /// The period in milliseconds: 1000 for `N/s`, 60000 for `N/m`.
    pub period_ms: u32,
}

impl Rate {
    /// Tokens per second.
    pub fn per_second(self) -> f64 {
        f64::from(self.count) * 1000.0 / f64::from(self.period_ms.max(1))
    }
}

#[derive(sqlx::FromRow)]
struct LimitRow {
    target: String,
    concurrency: Option<i32>,
    rate_count: Option<i32>,
    rate_period_ms: Option<i32>,
    key_from: Option<String>,
    updated_at: DateTime<Utc>,
}

impl From<LimitRow> for Limit {
    fn from(r: LimitRow) -> Self {
        // The table's CHECKs keep these positive; the clamps only keep a hand-edited row
        // from wrapping.
        Limit {
            target: r.target,
            concurrency: r.concurrency.map(|c| c.max(1) as u32),
            rate: r.rate_count.zip(r.rate_period_ms).map(|(c, p)| Rate {
                count: c.max(1) as u32,
                period_ms: p.max(1) as u32,
            }),
            key_from: r.key_from,
            updated_at: r.updated_at,
        }
    }
}

/// A job over its limit, to be kept as a `scheduled` row until `run_at`. Its attempt is not
/// counted: the row records the attempts made before this delivery, and the promoter
/// republishes the same attempt number.
#[derive(Clone, Debug)]
pub struct Deferral {
    /// The job's id.
    pub id: JobId,
    /// The Warren queue it came from.
    pub queue: String,
    /// Its task.
    pub task: String,
    /// The payload as JSON text.
    pub payload: String,
    /// The attempt of the delivery that was deferred, 1-based.
    pub attempt: u32,
    /// Attempts allowed in total.
    pub max_attempts: u32,
    /// The message's own timeout, if it carried one.
    pub timeout_ms: Option<u64>,
    /// When to republish it.
    pub run_at: DateTime<Utc>,
    /// When the producer first enqueued it.
    pub enqueued_at: DateTime<Utc>,
    /// Its idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// Its W3C trace context.
    pub traceparent: Option<String>,
    /// The worker that deferred it.
    pub worker_id: String,
}

/// Writes a deferral: inserts the row (a hot-path job has none yet) or moves a `queued` row
/// (a promoted job) or one left `running` by a dead worker's run of this attempt back to
/// `scheduled`. The fence keeps it from touching a row that moved on meanwhile: a final one,
/// or one past this attempt.
const DEFER: &str = "
INSERT INTO warren_jobs AS j (id, queue, task, payload, state, attempt, max_attempts,
                              timeout_ms, run_at, enqueued_at, idempotency_key, traceparent,
                              worker_id, limit_wait_ms, limit_deferrals, updated_at)
VALUES ($1, $2, $3, $4::jsonb, 'scheduled', $5, $6, $7, $8, $9, $10, $11, $12, $13, 1, now())
ON CONFLICT (id) DO UPDATE SET
    state           = 'scheduled',
    attempt         = EXCLUDED.attempt,
    run_at          = EXCLUDED.run_at,
    worker_id       = EXCLUDED.worker_id,
    limit_wait_ms   = j.limit_wait_ms + EXCLUDED.limit_wait_ms,
    limit_deferrals = j.limit_deferrals + 1,
    updated_at      = now()
WHERE j.state IN ('scheduled', 'queued', 'running')
  AND (j.attempt <= EXCLUDED.attempt OR (j.attempt = EXCLUDED.attempt + 1 AND j.state = 'running'))
RETURNING j.id";

/// Per task, how its jobs waited for limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct LimitWait {
    /// The task.
    pub task: String,
    /// Jobs deferred at least once.
    pub deferred_jobs: i64,
    /// Deferrals in all.
    pub deferrals: i64,
    /// Mean wait of a deferred job, in milliseconds.
    pub avg_wait_ms: i64,
    /// Longest wait of one job, in milliseconds.
    pub max_wait_ms: i64,
}

impl Store {
    /// Sets the limit on `limit.target` (replacing any) and notifies the workers, in one
    /// transaction. Returns `true` when it is new.
    pub async fn set_limit(&self, limit: &Limit) -> Result<bool, Error> {
        let what = "setting the limit";
        let mut tx = self.pool.begin().await.map_err(Error::query(what))?;
        let created: bool = sqlx::query_scalar(
            "INSERT INTO warren_limits AS l (target, concurrency, rate_count, rate_period_ms, key_from)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (target) DO UPDATE SET
                 concurrency = EXCLUDED.concurrency, rate_count = EXCLUDED.rate_count,
                 rate_period_ms = EXCLUDED.rate_period_ms, key_from = EXCLUDED.key_from,
                 updated_at = now()
             RETURNING (xmax = 0)",
        )
        .bind(&limit.target)
        .bind(limit.concurrency.map(|c| c.min(i32::MAX as u32) as i32))
        .bind(limit.rate.map(|r| r.count.min(i32::MAX as u32) as i32))
        .bind(limit.rate.map(|r| r.period_ms.min(i32::MAX as u32) as i32))
        .bind(&limit.key_from)
        .fetch_one(&mut *tx)
        .await
        .map_err(Error::query(what))?;
        notify(&mut tx, &limit.target).await?;
        tx.commit().await.map_err(Error::query(what))?;
        Ok(created)
    }

    /// Removes the limit on `target` and its leases and buckets, and notifies the workers.
    /// Returns `false` if there was none.
    pub async fn remove_limit(&self, target: &str) -> Result<bool, Error> {
        let what = "removing the limit";
        let mut tx = self.pool.begin().await.map_err(Error::query(what))?;
        let removed = sqlx::query("DELETE FROM warren_limits WHERE target = $1")
            .bind(target)
            .execute(&mut *tx)
            .await
            .map_err(Error::query(what))?
            .rows_affected()
            > 0;
        for sql in [
            "DELETE FROM warren_limit_leases WHERE target = $1",
            "DELETE FROM warren_limit_buckets WHERE target = $1",
        ] {
            sqlx::query(sql)
                .bind(target)
                .execute(&mut *tx)
                .await
                .map_err(Error::query(what))?;
        }
        notify(&mut tx, target).await?;
        tx.commit().await.map_err(Error::query(what))?;
        Ok(removed)
    }

    /// Every limit, by target.
    pub async fn limits(&self) -> Result<Vec<Limit>, Error> {
        let rows: Vec<LimitRow> = sqlx::query_as(
            "SELECT target, concurrency, rate_count, rate_period_ms, key_from, updated_at
             FROM warren_limits ORDER BY target",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(Error::query("reading the limits"))?;
        Ok(rows.into_iter().map(Limit::from).collect())
    }

    /// Sets `worker`'s slots of (`target`, `key`) to as many of `want` as `cap` leaves free
    /// beside the other workers' live leases, for `ttl`; returns the slots it now holds. One
    /// round trip, for a whole batch of starts or releases.
    pub async fn lease_slots(
        &self,
        target: &str,
        key: &str,
        worker: &str,
        want: u32,
        cap: u32,
        ttl: Duration,
    ) -> Result<u32, Error> {
        let granted: i32 = sqlx::query_scalar("SELECT warren_limit_lease($1, $2, $3, $4, $5, $6)")
            .bind(target)
            .bind(key)
            .bind(worker)
            .bind(want.min(i32::MAX as u32) as i32)
            .bind(cap.min(i32::MAX as u32) as i32)
            .bind(ttl.as_millis().min(i64::MAX as u128) as i64)
            .fetch_one(&self.pool)
            .await
            .map_err(Error::query("leasing limit slots"))?;
        Ok(granted.max(0) as u32)
    }

    /// Extends every lease `worker` holds by `ttl` from now: one statement per heartbeat.
    pub async fn renew_leases(&self, worker: &str, ttl: Duration) -> Result<(), Error> {
        sqlx::query(
            "UPDATE warren_limit_leases
             SET expires_at = clock_timestamp() + make_interval(secs => $2)
             WHERE worker_id = $1",
        )
        .bind(worker)
        .bind(ttl.as_secs_f64())
        .execute(&self.pool)
        .await
        .map_err(Error::query("renewing limit leases"))?;
        Ok(())
    }

    /// Gives back every slot `worker` holds (at shutdown).
    pub async fn drop_leases(&self, worker: &str) -> Result<(), Error> {
        sqlx::query("DELETE FROM warren_limit_leases WHERE worker_id = $1")
            .bind(worker)
            .execute(&self.pool)
            .await
            .map_err(Error::query("giving back limit leases"))?;
        Ok(())
    }

    /// Takes up to `want` tokens from the bucket of (`target`, `key`), which holds at most
    /// `burst` and refills at `per_second`. Returns the tokens granted and, when fewer than
    /// wanted, how long until the next one. One round trip for a batch of starts.
    pub async fn take_tokens(
        &self,
        target: &str,
        key: &str,
        want: u32,
        per_second: f64,
        burst: f64,
    ) -> Result<(u32, Duration), Error> {
        let (granted, next_ms): (i32, i64) =
            sqlx::query_as("SELECT granted, next_ms FROM warren_limit_take($1, $2, $3, $4, $5)")
                .bind(target)
                .bind(key)
                .bind(want.min(i32::MAX as u32) as i32)
                .bind(per_second)
                .bind(burst)
                .fetch_one(&self.pool)
                .await
                .map_err(Error::query("taking rate-limit tokens"))?;
        Ok((
            granted.max(0) as u32,
            Duration::from_millis(next_ms.max(0) as u64),
        ))
    }

    /// Keeps a job over its limit as a `scheduled` row due at its `run_at`, its wait added
    /// to the row's `limit_wait_ms`. Returns `false` when the row had moved on (final, or
    /// past this attempt) and nothing was written: the delivery is stale.
    pub async fn defer(&self, d: &Deferral) -> Result<bool, Error> {
        let wait_ms = (d.run_at - Utc::now()).num_milliseconds().max(0);
        let written: Option<uuid::Uuid> = sqlx::query_scalar(DEFER)
            .bind(d.id.as_uuid())
            .bind(crate::recorder::storable(&d.queue).as_ref())
            .bind(crate::recorder::storable(&d.task).as_ref())
            .bind(&d.payload)
            .bind(d.attempt.saturating_sub(1) as i32)
            .bind(d.max_attempts.max(1) as i32)
            .bind(d.timeout_ms.map(|t| t.min(i64::MAX as u64) as i64))
            .bind(d.run_at)
            .bind(d.enqueued_at)
            .bind(&d.idempotency_key)
            .bind(&d.traceparent)
            .bind(&d.worker_id)
            .bind(wait_ms)
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::query("deferring a job over its limit"))?;
        Ok(written.is_some())
    }

    /// Per task, how long jobs enqueued since `since` waited for limits; only tasks with a
    /// deferred job.
    pub async fn limit_waits(&self, since: DateTime<Utc>) -> Result<Vec<LimitWait>, Error> {
        sqlx::query_as(
            "SELECT task, count(*) AS deferred_jobs,
                    COALESCE(sum(limit_deferrals), 0)::int8 AS deferrals,
                    COALESCE(avg(limit_wait_ms), 0)::int8 AS avg_wait_ms,
                    COALESCE(max(limit_wait_ms), 0)::int8 AS max_wait_ms
             FROM warren_jobs
             WHERE limit_deferrals > 0 AND enqueued_at >= $1
             GROUP BY task ORDER BY task",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::query("reading the waits for limits"))
    }
}

impl Store {
    /// How many jobs of `task` have succeeded; the benchmark's measure of one task's progress
    /// beside another's on the same queue.
    pub async fn succeeded_of_task(&self, task: &str) -> Result<i64, Error> {
        sqlx::query_scalar(
            "SELECT count(*) FROM warren_jobs WHERE task = $1 AND state = 'succeeded'",
        )
        .bind(task)
        .fetch_one(&self.pool)
        .await
        .map_err(Error::query("counting a task's succeeded jobs"))
    }

    /// The time between the first and the last start of `task`'s jobs; the benchmark reads a
    /// limited task's achieved rate from it.
    pub async fn start_span(&self, task: &str) -> Result<Duration, Error> {
        let ms: Option<f64> = sqlx::query_scalar(
            "SELECT (extract(epoch FROM max(started_at) - min(started_at)) * 1000)::float8
             FROM warren_jobs WHERE task = $1",
        )
        .bind(task)
        .fetch_one(&self.pool)
        .await
        .map_err(Error::query("reading a task's start times"))?;
        Ok(Duration::from_secs_f64(ms.unwrap_or(0.0).max(0.0) / 1000.0))
    }

    /// Rows written to the limits' lease and bucket tables since the statistics were reset
    /// (`pg_stat_user_tables`, flushed by Postgres within about a second): each lease or
    /// token call writes one row, so this counts the round trips limits cost.
    pub async fn limit_writes(&self) -> Result<i64, Error> {
        sqlx::query_scalar(
            "SELECT COALESCE(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::int8
             FROM pg_stat_user_tables
             WHERE relname IN ('warren_limit_leases', 'warren_limit_buckets')",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(Error::query("reading the limit tables' statistics"))
    }
}

async fn notify(tx: &mut sqlx::PgConnection, target: &str) -> Result<(), Error> {
    // Sent even when nothing changed: a worker that missed the first one catches up.
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(LIMITS_CHANNEL)
        .bind(target)
        .execute(tx)
        .await
        .map_err(Error::query("notifying the workers"))?;
    Ok(())
}
