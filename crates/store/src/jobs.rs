//! Reading job records: one job in full, the progress check done on redelivery, and the
//! aggregates the CLI and the demo print.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use sqlx::types::Json;
use warren_core::{FailureRecord, JobId, JobState};

use crate::{Error, Store};

/// A job's row, as `warren jobs show` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct JobRecord {
    /// The job's id.
    pub id: JobId,
    /// The Warren queue it runs on.
    pub queue: String,
    /// The task name, as stored (bad input may carry a name no handler has).
    pub task: String,
    /// Where the job is in its life.
    pub state: JobState,
    /// The latest attempt, 1-based: the one running, or the last one that ran.
    pub attempt: u32,
    /// Attempts allowed in total.
    pub max_attempts: u32,
    /// The payload, or `None` when the body was not storable JSON (see `raw_body`).
    pub payload: Option<serde_json::Value>,
    /// The original body, lossily as text, when it was not storable JSON; or the stored
    /// payload as text, when it is JSON that serde_json cannot read (`payload` is then `None`).
    pub raw_body: Option<String>,
    /// What the handler returned, once the job has succeeded.
    pub result: Option<serde_json::Value>,
    /// One entry per failed attempt, oldest first.
    pub errors: Vec<FailureRecord>,
    /// The per-attempt timeout the job asked for, in milliseconds, if it asked.
    pub timeout_ms: Option<i64>,
    /// When a scheduled job falls due.
    pub run_at: Option<DateTime<Utc>>,
    /// When the producer first enqueued it.
    pub enqueued_at: DateTime<Utc>,
    /// When its latest attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a final state.
    pub finished_at: Option<DateTime<Utc>>,
    /// When the row last changed.
    pub updated_at: DateTime<Utc>,
    /// The worker that ran the latest attempt.
    pub worker_id: Option<String>,
    /// Its idempotency key, if it has one.
    pub idempotency_key: Option<String>,
    /// The W3C trace context it was enqueued with, for finding its trace.
    pub traceparent: Option<String>,
    /// The job that held this job's idempotency key, when this one was not run for that.
    pub duplicate_of: Option<JobId>,
    /// Attempts that ran although the job had already moved past them; their outcomes were
    /// discarded by the fence. Handlers run at least once: this makes the extra runs visible.
    pub duplicate_runs: u32,
    /// When an admin asked the running job to stop, if one did.
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// Size of the whole message body when only a prefix of it is kept in `raw_body`.
    pub body_size: Option<i64>,
    /// SHA-256 of the whole message body, hex, alongside `body_size`.
    pub body_sha256: Option<String>,
}

/// Where a job is, for deciding whether a redelivered message still needs to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobProgress {
    /// The job's state in its row.
    pub state: JobState,
    /// The latest attempt the row has seen, 1-based.
    pub attempt: u32,
    /// An admin asked for the job to stop while it was running.
    pub cancel_requested: bool,
}

impl JobProgress {
    /// Whether a delivery of `attempt` is obsolete: the job is final, or that attempt already
    /// ended (the row has moved past it, or recorded its outcome).
    pub fn supersedes(&self, attempt: u32) -> bool {
        self.state.is_terminal()
            || self.attempt > attempt
            || (self.attempt == attempt && self.state != JobState::Running)
    }
}

/// Jobs in one state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StateCount {
    /// The state.
    pub state: JobState,
    /// How many jobs are in it; never zero in [`Store::state_counts`]' answer.
    pub count: i64,
}

/// Throughput and latency of finished jobs in a window, computed by Postgres.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct LatencySummary {
    /// Jobs finished (succeeded or dead) in the window.
    pub finished: i64,
    /// The earliest enqueue among them; `None` when none finished.
    pub first_enqueued: Option<DateTime<Utc>>,
    /// The latest finish among them; `None` when none finished.
    pub last_finished: Option<DateTime<Utc>>,
    /// Enqueue to start of the last attempt, milliseconds, median.
    pub start_p50_ms: Option<f64>,
    /// Enqueue to start of the last attempt, milliseconds, 99th percentile.
    pub start_p99_ms: Option<f64>,
    /// Enqueue to outcome recorded, milliseconds, median.
    pub recorded_p50_ms: Option<f64>,
    /// Enqueue to outcome recorded, milliseconds, 99th percentile.
    pub recorded_p99_ms: Option<f64>,
}

fn state_of(job: JobId, s: &str) -> Result<JobState, Error> {
    s.parse().map_err(|reason| Error::Corrupt {
        job,
        field: "state",
        reason,
    })
}

/// `SELECT` of the columns [`JobRow`] reads, named so that a column added by a later
/// migration changes nothing here (and a renamed one fails loudly in tests). A macro, not a
/// `const`, so that the queries stay `&'static str` for sqlx.
macro_rules! select_job_columns {
    () => {
        "SELECT id, queue, task, state, attempt, max_attempts, payload, raw_body, result, errors,
                timeout_ms, run_at, enqueued_at, started_at, finished_at, updated_at, worker_id,
                idempotency_key, traceparent, duplicate_of, duplicate_runs, cancel_requested_at,
                body_size, body_sha256
         FROM warren_jobs "
    };
}

/// A `warren_jobs` row as Postgres types it; [`JobRecord`] is what callers get.
#[derive(sqlx::FromRow)]
struct JobRow {
    id: uuid::Uuid,
    queue: String,
    task: String,
    state: String,
    attempt: i32,
    max_attempts: i32,
    /// Read as raw JSON text, not as a `serde_json::Value`: jsonb holds some JSON that
    /// serde_json cannot (`1e400` is a fine numeric to Postgres), and such a payload is
    /// returned as its text rather than failing the row and with it `warren jobs show`,
    /// which is how an admin finds out what is wrong with it.
    payload: Option<Json<Box<RawValue>>>,
    raw_body: Option<Vec<u8>>,
    result: Option<serde_json::Value>,
    errors: serde_json::Value,
    timeout_ms: Option<i64>,
    run_at: Option<DateTime<Utc>>,
    enqueued_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
    worker_id: Option<String>,
    idempotency_key: Option<String>,
    traceparent: Option<String>,
    duplicate_of: Option<uuid::Uuid>,
    duplicate_runs: i32,
    cancel_requested_at: Option<DateTime<Utc>>,
    body_size: Option<i64>,
    body_sha256: Option<Vec<u8>>,
}

impl TryFrom<JobRow> for JobRecord {
    type Error = Error;

    fn try_from(row: JobRow) -> Result<Self, Error> {
        let id = JobId::from_uuid(row.id);
        let errors = serde_json::from_value(row.errors).map_err(|e| Error::Corrupt {
            job: id,
            field: "errors",
            reason: e.to_string(),
        })?;
        let (payload, unreadable) = match row.payload {
            None => (None, None),
            Some(Json(raw)) => match serde_json::from_str(raw.get()) {
                Ok(value) => (Some(value), None),
                Err(_) => (None, Some(raw.get().to_owned())),
            },
        };
        Ok(JobRecord {
            id,
            queue: row.queue,
            task: row.task,
            state: state_of(id, &row.state)?,
            attempt: row.attempt.max(0) as u32,
            max_attempts: row.max_attempts.max(0) as u32,
            payload,
            raw_body: row
                .raw_body
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .or(unreadable),
            result: row.result,
            errors,
            timeout_ms: row.timeout_ms,
            run_at: row.run_at,
            enqueued_at: row.enqueued_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
            updated_at: row.updated_at,
            worker_id: row.worker_id,
            idempotency_key: row.idempotency_key,
            traceparent: row.traceparent,
            duplicate_of: row.duplicate_of.map(JobId::from_uuid),
            duplicate_runs: row.duplicate_runs.max(0) as u32,
            cancel_requested_at: row.cancel_requested_at,
            body_size: row.body_size,
            body_sha256: row
                .body_sha256
                .map(|d| d.iter().map(|b| format!("{b:02x}")).collect()),
        })
    }
}

/// The result of claiming a job's idempotency key before running it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The key was free; the job's row now exists as `running` and holds it.
    Claimed,
    /// The job already had a row (an earlier attempt, or it was scheduled): it holds its key.
    Ours,
    /// Another job, waiting, running or succeeded, holds the key.
    HeldBy(JobId),
}

impl Store {
    /// Claims `row.idempotency_key` for `row.id` by inserting its `running` row, atomically
    /// against every other worker thanks to the unique index on live keys.
    pub async fn claim_key(&self, row: &crate::RecordRow) -> Result<Claim, Error> {
        let Some(key) = row.idempotency_key.as_deref() else {
            return Ok(Claim::Ours);
        };
        let inserted: Option<uuid::Uuid> = sqlx::query_scalar(
            "INSERT INTO warren_jobs (id, queue, task, payload, state, attempt, max_attempts,
                                      timeout_ms, enqueued_at, started_at, worker_id,
                                      idempotency_key, traceparent)
             VALUES ($1, $2, $3, $4::jsonb, 'running', $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT DO NOTHING
             RETURNING id",
        )
        .bind(row.id.as_uuid())
        .bind(&row.queue)
        .bind(&row.task)
        .bind(row.payload.as_deref().map(serde_json::value::RawValue::get))
        .bind(row.attempt as i32)
        .bind(row.max_attempts as i32)
        .bind(row.timeout_ms.map(|t| t as i64))
        .bind(row.enqueued_at)
        .bind(row.started_at)
        .bind(&row.worker_id)
        .bind(key)
        .bind(row.traceparent.as_deref())
        .fetch_optional(&self.pool)
        .await
        .map_err(Error::query("claiming an idempotency key"))?;
        if inserted.is_some() {
            return Ok(Claim::Claimed);
        }
        let holder: Option<uuid::Uuid> = sqlx::query_scalar(
            "SELECT id FROM warren_jobs
             WHERE idempotency_key = $1 AND state IN ('scheduled', 'queued', 'running', 'succeeded')",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .map_err(Error::query("finding the holder of an idempotency key"))?;
        Ok(match holder.map(JobId::from_uuid) {
            Some(holder) if holder != row.id => Claim::HeldBy(holder),
            _ => Claim::Ours,
        })
    }

    /// One job in full, or `None` if Postgres has no row for it (yet).
    pub async fn job(&self, id: JobId) -> Result<Option<JobRecord>, Error> {
        let row: Option<JobRow> = sqlx::query_as(concat!(select_job_columns!(), "WHERE id = $1"))
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::query("reading a job"))?;
        row.map(JobRecord::try_from).transpose()
    }

    /// Several jobs by id, in no particular order; missing ids are absent.
    pub async fn jobs(&self, ids: &[JobId]) -> Result<Vec<JobRecord>, Error> {
        let ids: Vec<uuid::Uuid> = ids.iter().map(JobId::as_uuid).collect();
        let rows: Vec<JobRow> =
            sqlx::query_as(concat!(select_job_columns!(), "WHERE id = ANY($1)"))
                .bind(ids)
                .fetch_all(&self.pool)
                .await
                .map_err(Error::query("reading jobs"))?;
        rows.into_iter().map(JobRecord::try_from).collect()
    }

    /// State and attempt of each of `ids` that has a row, in one query.
    pub async fn progress_of(
        &self,
        ids: &[JobId],
    ) -> Result<std::collections::HashMap<JobId, JobProgress>, Error> {
        let uuids: Vec<uuid::Uuid> = ids.iter().map(JobId::as_uuid).collect();
        let rows: Vec<(uuid::Uuid, String, i32, bool)> = sqlx::query_as(
            "SELECT id, state, attempt, cancel_requested_at IS NOT NULL FROM warren_jobs
             WHERE id = ANY($1)",
        )
        .bind(&uuids)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::query("reading jobs' progress"))?;
        rows.into_iter()
            .map(|(id, state, attempt, cancel_requested)| {
                let id = JobId::from_uuid(id);
                Ok((
                    id,
                    JobProgress {
                        state: state_of(id, &state)?,
                        attempt: attempt.max(0) as u32,
                        cancel_requested,
                    },
                ))
            })
            .collect()
    }

    /// Which of `running` (jobs running in this worker) an admin asked to stop. Workers ask
    /// whenever their LISTEN connection comes back and on every heartbeat, so a cancel whose
    /// NOTIFY they missed still reaches its job.
    pub async fn cancel_requests(&self, running: &[JobId]) -> Result<Vec<JobId>, Error> {
        if running.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<uuid::Uuid> = running.iter().map(JobId::as_uuid).collect();
        let requested: Vec<uuid::Uuid> = sqlx::query_scalar(
            "SELECT id FROM warren_jobs
             WHERE id = ANY($1) AND cancel_requested_at IS NOT NULL AND state = 'running'",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::query("reading cancel requests"))?;
        Ok(requested.into_iter().map(JobId::from_uuid).collect())
    }

    /// Number of jobs per state, optionally in one queue. States with no jobs are omitted.
    pub async fn state_counts(&self, queue: Option<&str>) -> Result<Vec<StateCount>, Error> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT state, count(*) FROM warren_jobs WHERE ($1::text IS NULL OR queue = $1)
             GROUP BY state",
        )
        .bind(queue)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::query("counting jobs per state"))?;
        let mut counts: Vec<StateCount> = rows
            .into_iter()
            .filter_map(|(s, count)| {
                Some(StateCount {
                    state: s.parse().ok()?,
                    count,
                })
            })
            .collect();
        counts.sort_by_key(|c| JobState::ALL.iter().position(|s| *s == c.state));
        Ok(counts)
    }

    /// Latency percentiles and throughput of jobs finished (succeeded or dead) that were
    /// enqueued at or after `since`.
    pub async fn latency_summary(&self, since: DateTime<Utc>) -> Result<LatencySummary, Error> {
        sqlx::query_as(
            "SELECT count(*) AS finished,
                    min(enqueued_at) AS first_enqueued,
                    max(finished_at) AS last_finished,
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - enqueued_at)) * 1000 AS start_p50_ms,
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - enqueued_at)) * 1000 AS start_p99_ms,
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM updated_at - enqueued_at)) * 1000 AS recorded_p50_ms,
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM updated_at - enqueued_at)) * 1000 AS recorded_p99_ms
             FROM warren_jobs
             WHERE state = ANY($2) AND enqueued_at >= $1",
        )
        .bind(since)
        .bind(vec![JobState::Succeeded.as_str(), JobState::Dead.as_str()])
        .fetch_one(&self.pool)
        .await
        .map_err(Error::query("summarising latencies"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_is_obsolete_once_its_attempt_ended() {
        let p = |state, attempt| JobProgress {
            state,
            attempt,
            cancel_requested: false,
        };
        assert!(p(JobState::Succeeded, 1).supersedes(1));
        assert!(
            p(JobState::Scheduled, 1).supersedes(1),
            "attempt 1 failed and is waiting for 2"
        );
        assert!(p(JobState::Running, 2).supersedes(1));
        assert!(
            !p(JobState::Running, 1).supersedes(1),
            "its worker died mid-attempt"
        );
        assert!(!p(JobState::Queued, 1).supersedes(2));
    }
}
