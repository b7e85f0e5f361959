//! Writing `scheduled` rows: delayed jobs and jobs enqueued inside a caller's transaction.
//! The promoter publishes them when due (see promotion.rs).

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};
use warren_core::{JobId, JobMessage, QueueName, RetryPolicy};

use crate::{Error, Store};

/// A caller's open transaction, for enqueueing jobs that exist only if it commits.
pub type PgTransaction<'c> = Transaction<'c, Postgres>;

/// A job to be kept in Postgres until `run_at`.
#[derive(Clone, Debug)]
pub struct ScheduledJob {
    /// The job's id; inserting the same id again does nothing.
    pub id: JobId,
    /// The Warren queue it is published to when due.
    pub queue: String,
    /// The task name.
    pub task: String,
    /// The payload as JSON text.
    pub payload: String,
    /// Attempts allowed in total, 1 to 1000.
    pub max_attempts: u32,
    /// Per-attempt timeout in milliseconds; `None` leaves it to the task or worker default.
    pub timeout_ms: Option<u64>,
    /// When it falls due; a time in the past means as soon as a promoter looks.
    pub run_at: DateTime<Utc>,
    /// When the producer enqueued it.
    pub enqueued_at: DateTime<Utc>,
    /// At most one live or succeeded job per key; a held key makes the insert do nothing.
    pub idempotency_key: Option<String>,
    /// The W3C trace context to carry into the published message.
    pub traceparent: Option<String>,
}

impl ScheduledJob {
    /// The row of a job message that waits until `run_at`. Rows carry an explicit max
    /// attempts, the message's own or Warren's default, because the task's policy is only
    /// known to the workers.
    pub fn from_message(message: JobMessage, queue: &QueueName, run_at: DateTime<Utc>) -> Self {
        ScheduledJob {
            id: message.id,
            queue: queue.to_string(),
            task: message.task.to_string(),
            payload: message.payload.get().to_owned(),
            max_attempts: message
                .max_attempts
                .unwrap_or(RetryPolicy::default().max_attempts),
            timeout_ms: message.timeout_ms,
            run_at,
            enqueued_at: message.enqueued_at,
            idempotency_key: message.idempotency_key,
            traceparent: message.traceparent,
        }
    }
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
ON CONFLICT DO NOTHING
RETURNING id";

/// For jobs whose insert did nothing: the job itself if its id exists (a repeated insert), or
/// the job holding its idempotency key.
const HOLDERS: &str = "
SELECT u.id,
       COALESCE((SELECT j.id FROM warren_jobs j WHERE j.id = u.id),
                (SELECT j.id FROM warren_jobs j
                 WHERE j.idempotency_key = u.key
                   AND j.state IN ('scheduled', 'queued', 'running', 'succeeded'))) AS holder
FROM UNNEST($1::uuid[], $2::text[]) AS u(id, key)";

/// Maps each job to the id that now stands for it: its own, or that of the job holding its
/// idempotency key.
async fn effective_ids<'e, E>(
    executor: E,
    jobs: &[ScheduledJob],
    inserted: Vec<uuid::Uuid>,
) -> Result<Vec<JobId>, Error>
where
    E: sqlx::PgExecutor<'e>,
{
    let inserted: std::collections::HashSet<uuid::Uuid> = inserted.into_iter().collect();
    let missing: Vec<&ScheduledJob> = jobs
        .iter()
        .filter(|j| !inserted.contains(&j.id.as_uuid()))
        .collect();
    let mut holders = std::collections::HashMap::new();
    if !missing.is_empty() {
        let rows: Vec<(uuid::Uuid, Option<uuid::Uuid>)> = sqlx::query_as(HOLDERS)
            .bind(missing.iter().map(|j| j.id.as_uuid()).collect::<Vec<_>>())
            .bind(
                missing
                    .iter()
                    .map(|j| j.idempotency_key.clone())
                    .collect::<Vec<_>>(),
            )
            .fetch_all(executor)
            .await
            .map_err(Error::query("finding the holders of idempotency keys"))?;
        holders.extend(rows);
    }
    Ok(jobs
        .iter()
        .map(|j| match holders.get(&j.id.as_uuid()) {
            Some(Some(holder)) => JobId::from_uuid(*holder),
            _ => j.id,
        })
        .collect())
}

fn query(
    jobs: &[ScheduledJob],
) -> sqlx::query::QueryScalar<'static, Postgres, uuid::Uuid, sqlx::postgres::PgArguments> {
    sqlx::query_scalar(INSERT)
        .bind(jobs.iter().map(|j| j.id.as_uuid()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.queue.clone()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.task.clone()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.payload.clone()).collect::<Vec<_>>())
        .bind(
            jobs.iter()
                .map(|j| j.max_attempts as i32)
                .collect::<Vec<_>>(),
        )
        .bind(
            jobs.iter()
                .map(|j| j.timeout_ms.map(|t| t as i64))
                .collect::<Vec<_>>(),
        )
        .bind(jobs.iter().map(|j| j.run_at).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.enqueued_at).collect::<Vec<_>>())
        .bind(
            jobs.iter()
                .map(|j| j.idempotency_key.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            jobs.iter()
                .map(|j| j.traceparent.clone())
                .collect::<Vec<_>>(),
        )
}

impl Store {
    /// Inserts scheduled jobs in one statement and commits; returns, for each job, the id
    /// that stands for it. A job id that already exists is left alone (retrying an insert
    /// whose outcome was unknown is harmless); a job whose idempotency key another live or
    /// succeeded job holds is not inserted, and that job's id is returned instead.
    pub async fn schedule(&self, jobs: &[ScheduledJob]) -> Result<Vec<JobId>, Error> {
        let inserted: Vec<uuid::Uuid> = query(jobs)
            .fetch_all(&self.pool)
            .await
            .map_err(Error::query("scheduling jobs"))?;
        effective_ids(&self.pool, jobs, inserted).await
    }

    /// Begins a transaction on this store's pool (for callers without one of their own).
    pub async fn begin(&self) -> Result<PgTransaction<'static>, Error> {
        self.pool
            .begin()
            .await
            .map_err(Error::query("beginning a transaction"))
    }
}

/// Inserts scheduled jobs inside the caller's transaction: they exist, and will run, if and
/// only if that transaction commits. Returns the ids that stand for them, as
/// [`Store::schedule`] does.
pub async fn schedule_in(
    tx: &mut PgTransaction<'_>,
    jobs: &[ScheduledJob],
) -> Result<Vec<JobId>, Error> {
    let inserted: Vec<uuid::Uuid> = query(jobs)
        .fetch_all(&mut **tx)
        .await
        .map_err(Error::query("scheduling jobs in the caller's transaction"))?;
    effective_ids(&mut **tx, jobs, inserted).await
}
