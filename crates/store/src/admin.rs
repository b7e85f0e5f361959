//! Admin operations on one job: cancel and retry. Each is one transaction that checks the
//! job's state under a row lock, so it never races a worker's outcome write into an illegal
//! transition (see `warren_core::lifecycle`).

use serde::Serialize;
use warren_core::lifecycle::{Event, transition};
use warren_core::{JobId, JobState};

use sqlx::PgConnection;

use crate::promotion::CANCEL_CHANNEL;
use crate::{Error, Store};

/// What `cancel` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CancelOutcome {
    /// It was waiting (scheduled or queued) and will never run.
    Cancelled {
        /// The state it was cancelled from: scheduled or queued.
        previous: JobState,
    },
    /// It is running: its worker was told to cancel it, and records `cancelled` when the
    /// handler stops (or `succeeded`, if it finished first).
    Signalled {
        /// The worker running it, as its row records.
        worker: Option<String>,
    },
    /// It had already finished.
    AlreadyFinal {
        /// Its final state.
        state: JobState,
    },
    /// No job has that id.
    NotFound,
}

/// What `retry` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RetryOutcome {
    /// Due now; a promoter publishes it within moments as attempt `attempt + 1`.
    Scheduled {
        /// The last attempt that ran; the retry is the one after it.
        attempt: u32,
        /// Attempts allowed, raised if needed to leave room for the retry.
        max_attempts: u32,
    },
    /// Its state does not allow a retry (it is queued, running or succeeded).
    NotRetryable {
        /// Its current state.
        state: JobState,
    },
    /// It has no JSON payload to run with (bad input kept only as raw bytes).
    NoPayload,
    /// No job has that id.
    NotFound,
}

impl Store {
    /// Cancels a job: a waiting one at once, a running one by telling its worker (through
    /// the row and a NOTIFY on [`crate::CANCEL_CHANNEL`]). A final job is left alone. Fails
    /// only when Postgres does, or the stored state is corrupt.
    pub async fn cancel_job(&self, id: JobId) -> Result<CancelOutcome, Error> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(Error::query("starting a cancel"))?;
        let outcome = cancel_in(&mut tx, id).await?;
        tx.commit()
            .await
            .map_err(Error::query("committing the cancel"))?;
        Ok(outcome)
    }

    /// Makes a dead, cancelled or scheduled job due now. The attempt counter carries on (the
    /// error history stays), and max attempts is raised if needed so that one more attempt is
    /// allowed.
    pub async fn retry_job(&self, id: JobId) -> Result<RetryOutcome, Error> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(Error::query("starting a retry"))?;
        let outcome = retry_in(&mut tx, id).await?;
        tx.commit()
            .await
            .map_err(Error::query("committing the retry"))?;
        Ok(outcome)
    }
}

/// Cancels job `id` inside the caller's transaction: the one rule for a single cancel and
/// for every job of a bulk batch.
pub(crate) async fn cancel_in(tx: &mut PgConnection, id: JobId) -> Result<CancelOutcome, Error> {
    let row: Option<(String, Option<String>)> =
        sqlx::query_as("SELECT state, worker_id FROM warren_jobs WHERE id = $1 FOR UPDATE")
            .bind(id.as_uuid())
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::query("reading the job to cancel"))?;
    let Some((state, worker)) = row else {
        return Ok(CancelOutcome::NotFound);
    };
    let state: JobState = state.parse().map_err(|reason| Error::Corrupt {
        job: id,
        field: "state",
        reason,
    })?;
    let outcome = match transition(Some(state), Event::Cancel) {
        Ok(JobState::Cancelled) => {
            sqlx::query(
                    "UPDATE warren_jobs SET state = 'cancelled', finished_at = now(), updated_at = now()
                     WHERE id = $1",
                )
                .bind(id.as_uuid())
                .execute(&mut *tx)
                .await
                .map_err(Error::query("cancelling the job"))?;
            CancelOutcome::Cancelled { previous: state }
        }
        Ok(_) => {
            // Remembered as well as notified: a worker whose LISTEN connection is down
            // misses the NOTIFY, and reads this when it reconnects.
            sqlx::query(
                "UPDATE warren_jobs SET cancel_requested_at = now(), updated_at = now()
                     WHERE id = $1",
            )
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(Error::query("recording the cancel request"))?;
            CancelOutcome::Signalled { worker }
        }
        Err(_) => CancelOutcome::AlreadyFinal { state },
    };
    // Notify in every case but a final one: a queued job's message may reach a worker
    // later, and workers remember recently cancelled ids to skip it.
    if !matches!(outcome, CancelOutcome::AlreadyFinal { .. }) {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CANCEL_CHANNEL)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(Error::query("notifying workers of the cancel"))?;
    }
    Ok(outcome)
}

/// Retries job `id` inside the caller's transaction: the one rule for a single retry and for
/// every job of a bulk batch.
pub(crate) async fn retry_in(tx: &mut PgConnection, id: JobId) -> Result<RetryOutcome, Error> {
    let row: Option<(String, bool)> = sqlx::query_as(
        "SELECT state, payload IS NOT NULL FROM warren_jobs WHERE id = $1 FOR UPDATE",
    )
    .bind(id.as_uuid())
    .fetch_optional(&mut *tx)
    .await
    .map_err(Error::query("reading the job to retry"))?;
    let Some((state, has_payload)) = row else {
        return Ok(RetryOutcome::NotFound);
    };
    let state: JobState = state.parse().map_err(|reason| Error::Corrupt {
        job: id,
        field: "state",
        reason,
    })?;
    if transition(Some(state), Event::Retry).is_err() {
        return Ok(RetryOutcome::NotRetryable { state });
    }
    if !has_payload {
        return Ok(RetryOutcome::NoPayload);
    }
    let (attempt, max_attempts): (i32, i32) = sqlx::query_as(
        "UPDATE warren_jobs
             SET state = 'scheduled', run_at = now(), finished_at = NULL, result = NULL,
                 max_attempts = GREATEST(max_attempts, attempt + 1), updated_at = now()
             WHERE id = $1
             RETURNING attempt, max_attempts",
    )
    .bind(id.as_uuid())
    .fetch_one(&mut *tx)
    .await
    .map_err(Error::query("scheduling the retry"))?;
    Ok(RetryOutcome::Scheduled {
        attempt: attempt.max(0) as u32,
        max_attempts: max_attempts.max(1) as u32,
    })
}
