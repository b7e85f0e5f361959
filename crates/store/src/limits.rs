//! Fleet-wide limits: the `warren_limits` table and its NOTIFY, the slot leases and token
//! buckets workers take in batches, and the deferral of a job over its limit to a
//! `scheduled` row. Semantics and costs are in docs/limits.md.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use warren_core::JobId;

use crate::batch::{BatchStep, Batcher};
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

/// The largest concurrency or rate count a limit holds (its column is an `int4`).
pub const MAX_COUNT: u32 = i32::MAX as u32;

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
    /// When the job waits for a rate-limit token reserved for it: that token's time. The
    /// promoter hands it on in the message, and the job then starts without taking another.
    pub limit_token_at: Option<DateTime<Utc>>,
}

/// What one call to a token bucket gave: tokens for jobs to start now, and reservations for
/// the next jobs, the first due after `next` and each next one a token's interval later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Taken {
    /// Tokens granted now.
    pub granted: u32,
    /// Tokens reserved for later, at most as far ahead as the call's horizon.
    pub reserved: u32,
    /// When the first token not granted now is due.
    pub next: Duration,
}

/// Writes deferrals, one statement for a batch: inserts the row (a hot-path job has none yet) or moves a `queued` row
/// (a promoted job) or one left `running` by a dead worker's run of this attempt back to
/// `scheduled`. The fence keeps it from touching a row that moved on meanwhile: a final one,
/// or one past this attempt.
const DEFER: &str = "
INSERT INTO warren_jobs AS j (id, queue, task, payload, state, attempt, max_attempts,
                              timeout_ms, run_at, enqueued_at, idempotency_key, traceparent,
                              worker_id, limit_wait_ms, limit_deferrals, limit_token_at,
                              updated_at)
SELECT d.id, d.queue, d.task, d.payload::jsonb, 'scheduled', d.attempt, d.max_attempts,
       d.timeout_ms, d.run_at, d.enqueued_at, d.idempotency_key, d.traceparent, d.worker_id,
       d.wait_ms, 1, d.token_at, now()
  FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int4[], $6::int4[],
              $7::int8[], $8::timestamptz[], $9::timestamptz[], $10::text[], $11::text[],
              $12::text[], $13::int8[], $14::timestamptz[])
       AS d(id, queue, task, payload, attempt, max_attempts, timeout_ms, run_at, enqueued_at,
            idempotency_key, traceparent, worker_id, wait_ms, token_at)
 ORDER BY d.id
ON CONFLICT (id) DO UPDATE SET
    state           = 'scheduled',
    attempt         = EXCLUDED.attempt,
    run_at          = EXCLUDED.run_at,
    worker_id       = EXCLUDED.worker_id,
    limit_token_at  = EXCLUDED.limit_token_at,
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
    /// `burst` and refills at `per_second`: grants what it holds and reserves tokens for the
    /// rest, up to `horizon` ahead (the bucket goes into debt by the tokens reserved). One
    /// round trip for a batch of starts.
    pub async fn take_tokens(
        &self,
        target: &str,
        key: &str,
        want: u32,
        per_second: f64,
        burst: f64,
        horizon: Duration,
    ) -> Result<Taken, Error> {
        let (granted, reserved, next_ms): (i32, i32, i64) = sqlx::query_as(
            "SELECT granted, reserved, next_ms FROM warren_limit_take($1, $2, $3, $4, $5, $6)",
        )
        .bind(target)
        .bind(key)
        .bind(want.min(i32::MAX as u32) as i32)
        .bind(per_second)
        .bind(burst)
        .bind(horizon.as_millis().min(i64::MAX as u128) as i64)
        .fetch_one(&self.pool)
        .await
        .map_err(Error::query("taking rate-limit tokens"))?;
        Ok(Taken {
            granted: granted.max(0) as u32,
            reserved: reserved.max(0) as u32,
            next: Duration::from_millis(next_ms.max(0) as u64),
        })
    }

    /// Keeps jobs over their limits as `scheduled` rows due at their `run_at`, each one's wait
    /// added to its row's `limit_wait_ms`, in one statement. Returns, per deferral in order,
    /// `false` when its row had moved on (final, or past this attempt) and nothing was
    /// written: that delivery is stale. Two deferrals of one job keep the later attempt's.
    pub async fn defer(&self, ds: &[Deferral]) -> Result<Vec<bool>, Error> {
        // An upsert may not touch a row twice: one deferral per job, the latest attempt.
        let mut kept: HashMap<JobId, usize> = HashMap::with_capacity(ds.len());
        for (i, d) in ds.iter().enumerate() {
            let slot = kept.entry(d.id).or_insert(i);
            if ds[*slot].attempt < d.attempt {
                *slot = i;
            }
        }
        let rows: Vec<&Deferral> = {
            let mut idx: Vec<usize> = kept.values().copied().collect();
            idx.sort_unstable();
            idx.into_iter().map(|i| &ds[i]).collect()
        };
        let now = Utc::now();
        let ids: Vec<uuid::Uuid> = rows.iter().map(|d| d.id.as_uuid()).collect();
        let queues: Vec<String> = rows
            .iter()
            .map(|d| crate::recorder::storable(&d.queue).into_owned())
            .collect();
        let tasks: Vec<String> = rows
            .iter()
            .map(|d| crate::recorder::storable(&d.task).into_owned())
            .collect();
        let payloads: Vec<&str> = rows.iter().map(|d| d.payload.as_str()).collect();
        let attempts: Vec<i32> = rows
            .iter()
            .map(|d| d.attempt.saturating_sub(1) as i32)
            .collect();
        let max_attempts: Vec<i32> = rows.iter().map(|d| d.max_attempts.max(1) as i32).collect();
        let timeouts: Vec<Option<i64>> = rows
            .iter()
            .map(|d| d.timeout_ms.map(|t| t.min(i64::MAX as u64) as i64))
            .collect();
        let run_ats: Vec<DateTime<Utc>> = rows.iter().map(|d| d.run_at).collect();
        let enqueued: Vec<DateTime<Utc>> = rows.iter().map(|d| d.enqueued_at).collect();
        let keys: Vec<Option<&str>> = rows.iter().map(|d| d.idempotency_key.as_deref()).collect();
        let traces: Vec<Option<&str>> = rows.iter().map(|d| d.traceparent.as_deref()).collect();
        let workers: Vec<&str> = rows.iter().map(|d| d.worker_id.as_str()).collect();
        let waits: Vec<i64> = rows
            .iter()
            .map(|d| (d.run_at - now).num_milliseconds().max(0))
            .collect();
        let tokens: Vec<Option<DateTime<Utc>>> = rows.iter().map(|d| d.limit_token_at).collect();
        let written: Vec<uuid::Uuid> = sqlx::query_scalar(DEFER)
            .bind(&ids)
            .bind(&queues)
            .bind(&tasks)
            .bind(&payloads)
            .bind(&attempts)
            .bind(&max_attempts)
            .bind(&timeouts)
            .bind(&run_ats)
            .bind(&enqueued)
            .bind(&keys)
            .bind(&traces)
            .bind(&workers)
            .bind(&waits)
            .bind(&tokens)
            .fetch_all(&self.pool)
            .await
            .map_err(Error::query("deferring jobs over their limits"))?;
        let written: HashSet<JobId> = written.into_iter().map(JobId::from_uuid).collect();
        Ok(ds
            .iter()
            .enumerate()
            .map(|(i, d)| kept.get(&d.id) == Some(&i) && written.contains(&d.id))
            .collect())
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

    /// How many jobs of `task` have a row, in any state: the benchmark's sign that every job of
    /// a limited backlog was either started or deferred.
    pub async fn rows_of_task(&self, task: &str) -> Result<i64, Error> {
        sqlx::query_scalar("SELECT count(*) FROM warren_jobs WHERE task = $1")
            .bind(task)
            .fetch_one(&self.pool)
            .await
            .map_err(Error::query("counting a task's jobs"))
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

/// Writes deferrals in batches: every job deferred while one batch is being written goes into
/// the next, so a backlog of jobs over their limits costs one statement per batch, not one per
/// job. Clones share the writer; it stops once every handle is dropped.
#[derive(Clone, Debug)]
pub struct Deferrer(Batcher<DeferStep>);

struct DeferStep;

impl BatchStep for DeferStep {
    type Item = Deferral;
    type Answer = bool;
    const WHAT: &'static str = "deferring jobs over their limits";

    async fn run(store: &Store, items: &[Deferral]) -> Result<Vec<bool>, Error> {
        store.defer(items).await
    }
}

impl Deferrer {
    /// Starts the writer on the current runtime.
    pub fn spawn(store: Store) -> (Deferrer, tokio::task::JoinHandle<()>) {
        let (batcher, task) = Batcher::spawn(store);
        (Deferrer(batcher), task)
    }

    /// Writes a deferral and waits for its batch to commit: only then may its delivery be
    /// acked. `Ok(false)`: the row had moved on and nothing was written.
    pub async fn defer(&self, d: Deferral) -> Result<bool, Error> {
        self.0.call(d).await
    }
}
