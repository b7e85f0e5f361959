//! Writing `scheduled` rows: delayed jobs and jobs enqueued inside a caller's transaction.
//! The promoter publishes them when due (see promotion.rs).

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};
use warren_core::JobId;

use crate::{Error, Store};

/// A caller's open transaction, for enqueueing jobs that exist only if it commits.
pub type PgTransaction<'c> = Transaction<'c, Postgres>;

/// A job to be kept in Postgres until `run_at`.
#[derive(Clone, Debug)]
pub struct ScheduledJob {
    pub id: JobId,
    pub queue: String,
    pub task: String,
    /// The payload as JSON text.
    pub payload: String,
    pub max_attempts: u32,
    pub timeout_ms: Option<u64>,
    pub run_at: DateTime<Utc>,
    pub enqueued_at: DateTime<Utc>,
    pub idempotency_key: Option<String>,
    pub traceparent: Option<String>,
}

const INSERT: &str = "
INSERT INTO warren_jobs (id, queue, task, payload, state, attempt, max_attempts, timeout_ms,
                         run_at, enqueued_at, idempotency_key, traceparent)
SELECT u.id, u.queue, u.task, u.payload::jsonb, 'scheduled', 0, u.max_attempts, u.timeout_ms,
       u.run_at, u.enqueued_at, u.idempotency_key, u.traceparent
FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int4[], $6::int8[],
            $7::timestamptz[], $8::timestamptz[], $9::text[], $10::text[])
  AS u(id, queue, task, payload, max_attempts, timeout_ms, run_at, enqueued_at,
       idempotency_key, traceparent)
ON CONFLICT (id) DO NOTHING";

fn query(jobs: &[ScheduledJob]) -> sqlx::query::Query<'static, Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(INSERT)
        .bind(jobs.iter().map(|j| j.id.as_uuid()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.queue.clone()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.task.clone()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.payload.clone()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.max_attempts as i32).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.timeout_ms.map(|t| t as i64)).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.run_at).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.enqueued_at).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.idempotency_key.clone()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.traceparent.clone()).collect::<Vec<_>>())
}

impl Store {
    /// Inserts scheduled jobs in one statement and commits. A job id that already exists is
    /// left alone, so retrying an insert whose outcome was unknown is harmless.
    pub async fn schedule(&self, jobs: &[ScheduledJob]) -> Result<(), Error> {
        query(jobs)
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(Error::query("scheduling jobs"))
    }

    /// Begins a transaction on this store's pool (for callers without one of their own).
    pub async fn begin(&self) -> Result<PgTransaction<'static>, Error> {
        self.pool.begin().await.map_err(Error::query("beginning a transaction"))
    }
}

/// Inserts scheduled jobs inside the caller's transaction: they exist, and will run, if and
/// only if that transaction commits.
pub async fn schedule_in(tx: &mut PgTransaction<'_>, jobs: &[ScheduledJob]) -> Result<(), Error> {
    query(jobs)
        .execute(&mut **tx)
        .await
        .map(drop)
        .map_err(Error::query("scheduling jobs in the caller's transaction"))
}
