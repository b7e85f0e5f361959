//! Reading job records: one job in full, the progress check done on redelivery, and the
//! aggregates the CLI and the demo print.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use sqlx::postgres::PgRow;
use warren_core::{FailureRecord, JobId, JobState};

use crate::{Error, Store};

/// A job's row, as `warren jobs show` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct JobRecord {
    pub id: JobId,
    pub queue: String,
    pub task: String,
    pub state: JobState,
    pub attempt: u32,
    pub max_attempts: u32,
    pub payload: Option<serde_json::Value>,
    /// The original body, lossily as text, when it was not storable JSON; or the stored
    /// payload as text, when it is JSON that serde_json cannot read (`payload` is then `None`).
    pub raw_body: Option<String>,
    pub result: Option<serde_json::Value>,
    pub errors: Vec<FailureRecord>,
    pub timeout_ms: Option<i64>,
    pub run_at: Option<DateTime<Utc>>,
    pub enqueued_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    pub worker_id: Option<String>,
    pub idempotency_key: Option<String>,
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
    pub state: JobState,
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
    pub state: JobState,
    pub count: i64,
}

/// Throughput and latency of finished jobs in a window, computed by Postgres.
#[derive(Clone, Debug, Serialize)]
pub struct LatencySummary {
    pub finished: i64,
    pub first_enqueued: Option<DateTime<Utc>>,
    pub last_finished: Option<DateTime<Utc>>,
    /// Enqueue to start of the last attempt, milliseconds.
    pub start_p50_ms: Option<f64>,
    pub start_p99_ms: Option<f64>,
    /// Enqueue to outcome recorded, milliseconds.
    pub recorded_p50_ms: Option<f64>,
    pub recorded_p99_ms: Option<f64>,
}

fn state_of(job: JobId, s: &str) -> Result<JobState, Error> {
    s.parse().map_err(|reason| Error::Corrupt {
        job,
        field: "state",
        reason,
    })
}

fn job_from_row(row: &PgRow) -> Result<JobRecord, Error> {
    let get = |e: sqlx::Error| Error::Query {
        what: "reading a job row",
        source: e,
    };
    let id = JobId::from_uuid(row.try_get("id").map_err(get)?);
    let state: String = row.try_get("state").map_err(get)?;
    let errors: serde_json::Value = row.try_get("errors").map_err(get)?;
    let errors = serde_json::from_value(errors).map_err(|e| Error::Corrupt {
        job: id,
        field: "errors",
        reason: e.to_string(),
    })?;
    let raw: Option<Vec<u8>> = row.try_get("raw_body").map_err(get)?;
    let (payload, unreadable) = match row.try_get::<Option<serde_json::Value>, _>("payload") {
        Ok(payload) => (payload, None),
        // jsonb holds some JSON that serde_json cannot (`1e400` is a fine numeric to
        // Postgres): such a payload is returned as its text, rather than failing the row and
        // with it `warren jobs show`, which is how an admin finds out what is wrong with it.
        Err(sqlx::Error::ColumnDecode { .. }) => {
            let text: Option<sqlx::types::Json<Box<serde_json::value::RawValue>>> =
                row.try_get("payload").map_err(get)?;
            (None, text.map(|t| t.0.get().to_owned()))
        }
        Err(e) => return Err(get(e)),
    };
    Ok(JobRecord {
        id,
        queue: row.try_get("queue").map_err(get)?,
        task: row.try_get("task").map_err(get)?,
        state: state_of(id, &state)?,
        attempt: row.try_get::<i32, _>("attempt").map_err(get)?.max(0) as u32,
        max_attempts: row.try_get::<i32, _>("max_attempts").map_err(get)?.max(0) as u32,
        payload,
        raw_body: raw
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .or(unreadable),
        result: row.try_get("result").map_err(get)?,
        errors,
        timeout_ms: row.try_get("timeout_ms").map_err(get)?,
        run_at: row.try_get("run_at").map_err(get)?,
        enqueued_at: row.try_get("enqueued_at").map_err(get)?,
        started_at: row.try_get("started_at").map_err(get)?,
        finished_at: row.try_get("finished_at").map_err(get)?,
        updated_at: row.try_get("updated_at").map_err(get)?,
        worker_id: row.try_get("worker_id").map_err(get)?,
        idempotency_key: row.try_get("idempotency_key").map_err(get)?,
        traceparent: row.try_get("traceparent").map_err(get)?,
        duplicate_of: row
            .try_get::<Option<uuid::Uuid>, _>("duplicate_of")
            .map_err(get)?
            .map(JobId::from_uuid),
        duplicate_runs: row.try_get::<i32, _>("duplicate_runs").map_err(get)?.max(0) as u32,
        cancel_requested_at: row.try_get("cancel_requested_at").map_err(get)?,
        body_size: row.try_get("body_size").map_err(get)?,
        body_sha256: row
            .try_get::<Option<Vec<u8>>, _>("body_sha256")
            .map_err(get)?
            .map(|d| d.iter().map(|b| format!("{b:02x}")).collect()),
    })
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
        let row = sqlx::query("SELECT * FROM warren_jobs WHERE id = $1")
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::query("reading a job"))?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Several jobs by id, in no particular order; missing ids are absent.
    pub async fn jobs(&self, ids: &[JobId]) -> Result<Vec<JobRecord>, Error> {
        let ids: Vec<uuid::Uuid> = ids.iter().map(JobId::as_uuid).collect();
        let rows = sqlx::query("SELECT * FROM warren_jobs WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(&self.pool)
            .await
            .map_err(Error::query("reading jobs"))?;
        rows.iter().map(job_from_row).collect()
    }

    /// State and attempt of a job, or `None` without a row.
    pub async fn progress(&self, id: JobId) -> Result<Option<JobProgress>, Error> {
        let row: Option<(String, i32, bool)> = sqlx::query_as(
            "SELECT state, attempt, cancel_requested_at IS NOT NULL FROM warren_jobs WHERE id = $1",
        )
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await
        .map_err(Error::query("reading a job's progress"))?;
        row.map(|(state, attempt, cancel_requested)| {
            Ok(JobProgress {
                state: state_of(id, &state)?,
                attempt: attempt.max(0) as u32,
                cancel_requested,
            })
        })
        .transpose()
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
        let row = sqlx::query(
            "SELECT count(*) AS finished,
                    min(enqueued_at) AS first_enqueued,
                    max(finished_at) AS last_finished,
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - enqueued_at)) * 1000 AS s50,
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - enqueued_at)) * 1000 AS s99,
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM updated_at - enqueued_at)) * 1000 AS r50,
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM updated_at - enqueued_at)) * 1000 AS r99
             FROM warren_jobs
             WHERE state IN ('succeeded', 'dead') AND enqueued_at >= $1",
        )
        .bind(since)
        .fetch_one(&self.pool)
        .await
        .map_err(Error::query("summarising latencies"))?;
        let get = |e: sqlx::Error| Error::Query {
            what: "reading the latency summary",
            source: e,
        };
        Ok(LatencySummary {
            finished: row.try_get("finished").map_err(get)?,
            first_enqueued: row.try_get("first_enqueued").map_err(get)?,
            last_finished: row.try_get("last_finished").map_err(get)?,
            start_p50_ms: row.try_get("s50").map_err(get)?,
            start_p99_ms: row.try_get("s99").map_err(get)?,
            recorded_p50_ms: row.try_get("r50").map_err(get)?,
            recorded_p99_ms: row.try_get("r99").map_err(get)?,
        })
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
