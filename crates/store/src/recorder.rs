//! The batching recorder: job outcomes from many concurrent handlers, written to Postgres in
//! one statement and one transaction per batch.
//!
//! Why batch: a commit per job caps a worker at a few thousand jobs per second and spends a
//! database round trip per job; one `INSERT … SELECT FROM UNNEST(…) ON CONFLICT DO UPDATE` per
//! batch writes tens of thousands of rows per second on one connection. Batches form by
//! themselves: while one batch is being written, the next accumulates, so a quiet worker
//! writes each outcome at once and a busy one writes hundreds together.
//!
//! Why fence: deliveries are at least once, so the same attempt can be recorded twice, and a
//! worker that lost its connection may report an attempt the job has moved past. The upsert's
//! `WHERE` clause lets a write through only if the row is not terminal and the write is for a
//! newer attempt, or for the same attempt while that attempt is still `running`. The rules are
//! in docs/job-lifecycle.md ("Fencing").

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use sqlx::PgConnection;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use warren_core::{FailureRecord, JobId, JobMessage, JobState};

use crate::error::is_transient;
use crate::{Error, Store};

/// One write to a job's row: an outcome, a retry schedule, or a `running` mark.
#[derive(Clone, Debug)]
pub struct RecordRow {
    /// The job's id, the row's key.
    pub id: JobId,
    /// The Warren queue it was delivered from.
    pub queue: String,
    /// The task name, or `(unknown)` for bad input without one.
    pub task: String,
    /// The payload as JSON text; `None` when there is no JSON to keep (bad input).
    pub payload: Option<Box<RawValue>>,
    /// The raw message body, kept (bounded) for bad input that is not JSON.
    pub raw_body: Option<RawBody>,
    /// The state this write moves the job to.
    pub state: JobState,
    /// The attempt this write is about, 1-based; with `id`, the fence against stale writes.
    pub attempt: u32,
    /// Attempts allowed in total.
    pub max_attempts: u32,
    /// Per-attempt timeout in force, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// When the retry falls due, for a `scheduled` write.
    pub run_at: Option<DateTime<Utc>>,
    /// When the producer first enqueued the job.
    pub enqueued_at: DateTime<Utc>,
    /// When this attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the job reached a final state, for a final write.
    pub finished_at: Option<DateTime<Utc>>,
    /// What the handler returned, for a `succeeded` write.
    pub result: Option<Box<RawValue>>,
    /// This attempt's failure, appended to the job's error history.
    pub error: Option<FailureRecord>,
    /// The worker that ran (or refused) the attempt.
    pub worker_id: String,
    /// The job's idempotency key, if it has one.
    pub idempotency_key: Option<String>,
    /// The W3C trace context the job was enqueued with.
    pub traceparent: Option<String>,
    /// The job holding this job's idempotency key, when this one was not run for that reason.
    pub duplicate_of: Option<JobId>,
}

/// Most bytes of a bad-input body kept in `raw_body`: enough to see what it was, while a
/// 20 MiB body costs 64 KiB of storage, not 20 MiB.
pub const RAW_BODY_KEPT: usize = 64 * 1024;

/// A message body kept for people to inspect: a bounded prefix, with the whole body's size
/// and SHA-256 so that it can still be identified and compared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawBody {
    /// The first [`RAW_BODY_KEPT`] bytes at most.
    pub prefix: Vec<u8>,
    /// The whole body's size in bytes.
    pub size: u64,
    /// The whole body's SHA-256.
    pub sha256: [u8; 32],
}

impl RawBody {
    /// Keeps a bounded prefix of `body` with its size and digest. Any body will do.
    pub fn of(body: &[u8]) -> Self {
        use sha2::Digest;
        Self {
            prefix: body[..body.len().min(RAW_BODY_KEPT)].to_vec(),
            size: body.len() as u64,
            sha256: sha2::Sha256::digest(body).into(),
        }
    }
}

/// What [`RecordRow::bad_input`] needs to know about a message that will never run.
#[derive(Clone, Debug)]
pub struct BadInput<'a> {
    /// The job id read from the message.
    pub id: JobId,
    /// The Warren queue it was delivered from.
    pub queue: &'a str,
    /// The task it named, if one could be read.
    pub task: Option<&'a str>,
    /// The attempt it claimed (1 if it could not be read); the dead row records it.
    pub attempt: u32,
    /// The message body as received.
    pub body: &'a [u8],
    /// Bodies larger than this are never kept as the payload.
    pub max_body: usize,
    /// Why it can never run, recorded as its failure.
    pub reason: String,
    /// The worker that refused it.
    pub worker: &'a str,
}

/// What became of a recorded row once its batch committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// The row now holds this write.
    Written,
    /// The fence discarded it: the job had already moved past this attempt (it ended, or a
    /// later attempt was recorded). The attempt ran for nothing; the row's
    /// `duplicate_runs` counts it.
    Fenced,
}

impl RecordRow {
    /// The row of an attempt about to run: `running` since now, on `worker`. The outcome is
    /// the same row moved on with [`RecordRow::end`], [`RecordRow::succeed`] or
    /// [`RecordRow::retry_at`].
    pub fn attempt(
        message: &JobMessage,
        queue: &str,
        worker: &str,
        max_attempts: u32,
        timeout: Duration,
    ) -> Self {
        RecordRow {
            id: message.id,
            queue: queue.to_owned(),
            task: message.task.to_string(),
            payload: Some(message.payload.clone()),
            raw_body: None,
            state: JobState::Running,
            attempt: message.attempt,
            max_attempts,
            timeout_ms: Some(timeout.as_millis().min(u128::from(u64::MAX)) as u64),
            run_at: None,
            enqueued_at: message.enqueued_at,
            started_at: Some(Utc::now()),
            finished_at: None,
            result: None,
            error: None,
            worker_id: worker.to_owned(),
            idempotency_key: message.idempotency_key.clone(),
            traceparent: message.traceparent.clone(),
            duplicate_of: None,
        }
    }

    /// A message that will never run (bad input): `dead` now, with `reason`. A body that is
    /// JSON within `max_body` stays the payload, so that `warren jobs retry` can run the job
    /// once the cause is fixed (a task deployed after its producer, say); any other body is
    /// kept as a bounded [`RawBody`].
    pub fn bad_input(failure: BadInput<'_>) -> Self {
        let now = Utc::now();
        let body = failure.body;
        let payload = std::str::from_utf8(body)
            .ok()
            .filter(|_| body.len() <= failure.max_body)
            .and_then(|text| serde_json::from_str::<Box<RawValue>>(text).ok());
        let raw_body = payload.is_none().then(|| RawBody::of(body));
        RecordRow {
            id: failure.id,
            queue: failure.queue.to_owned(),
            task: failure.task.unwrap_or("(unknown)").to_owned(),
            payload,
            raw_body,
            state: JobState::Dead,
            attempt: failure.attempt,
            max_attempts: failure.attempt,
            timeout_ms: None,
            run_at: None,
            enqueued_at: now,
            started_at: None,
            finished_at: Some(now),
            result: None,
            error: Some(FailureRecord {
                attempt: failure.attempt,
                kind: warren_core::FailureKind::BadInput,
                message: failure.reason,
                worker: failure.worker.to_owned(),
                at: now,
            }),
            worker_id: failure.worker.to_owned(),
            idempotency_key: None,
            traceparent: None,
            duplicate_of: None,
        }
    }

    /// A job whose message the broker dead-lettered (its delivery limit reached: the worker
    /// died on it again and again): `dead` now, like [`RecordRow::bad_input`] (the payload is
    /// kept when it is JSON within `max_body`, so `warren jobs retry` can run it again), but
    /// the failure is [`warren_core::FailureKind::Permanent`], since the input itself may be
    /// fine. `attempt` should be the message's own: the fence then lets it replace a row left
    /// `running` by that attempt, and never a terminal row.
    pub fn dead_lettered(failure: BadInput<'_>) -> Self {
        let mut row = Self::bad_input(failure);
        if let Some(error) = row.error.as_mut() {
            error.kind = warren_core::FailureKind::Permanent;
        }
        row
    }

    /// This attempt ended in `state` (dead, cancelled) with a failure of `kind` saying `text`.
    pub fn end(mut self, state: JobState, kind: warren_core::FailureKind, text: String) -> Self {
        let now = Utc::now();
        self.state = state;
        self.finished_at = Some(now);
        self.error = Some(FailureRecord {
            attempt: self.attempt,
            kind,
            message: text,
            worker: self.worker_id.clone(),
            at: now,
        });
        self
    }

    /// This attempt succeeded with `result`.
    pub fn succeed(mut self, result: Box<RawValue>) -> Self {
        self.state = JobState::Succeeded;
        self.finished_at = Some(Utc::now());
        self.result = Some(result);
        self
    }

    /// This attempt failed with `kind` saying `text`, and the job runs again at `run_at`.
    pub fn retry_at(
        self,
        run_at: DateTime<Utc>,
        kind: warren_core::FailureKind,
        text: String,
    ) -> Self {
        let mut row = self.end(JobState::Scheduled, kind, text);
        row.finished_at = None;
        row.run_at = Some(run_at);
        row
    }

    /// Which of two writes for the same job in one batch wins: the later attempt, and within an
    /// attempt an outcome over a `running` mark. The loser would be fenced off anyway.
    fn supersedes(&self, other: &RecordRow) -> bool {
        let rank = |r: &RecordRow| (r.attempt, r.state != JobState::Running);
        rank(self) >= rank(other)
    }
}

/// Tuning of the recorder.
#[derive(Clone, Copy, Debug)]
pub struct RecorderConfig {
    /// Most rows in one statement.
    pub max_batch: usize,
    /// Rows waiting to be written before senders wait: backpressure from a slow database
    /// reaches the handlers (and through unacked deliveries, the broker) instead of memory.
    pub capacity: usize,
    /// Batches written at once, each on its own pooled connection. With one, each batch
    /// gathers what arrives while the one before commits (group commit). Measured on one
    /// 2-core host (`docs/benchmarks.md`): one is 13% faster than two with 2 worker processes
    /// on one database and 22% with 4, and 7.5% slower with a single process.
    pub max_in_flight: usize,
}

impl Default for RecorderConfig {
    /// Batches of up to 500 rows, one in flight, 4,096 rows waiting at most.
    fn default() -> Self {
        Self {
            max_batch: 500,
            capacity: 4_096,
            max_in_flight: 1,
        }
    }
}

struct Item {
    row: RecordRow,
    done: Option<oneshot::Sender<Result<Recorded, Error>>>,
}

/// Someone waiting for a row's batch: the job, and where in the batch its write came from,
/// to tell whether that write was the one kept when the batch was folded.
struct Waiter {
    job: JobId,
    origin: usize,
    done: oneshot::Sender<Result<Recorded, Error>>,
}

/// Handle to the recorder task. Clones share it; the task ends when every handle is dropped,
/// after writing what it was given.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Item>,
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder").finish_non_exhaustive()
    }
}

impl Recorder {
    /// Starts the recorder task on the current runtime. Await the returned handle after
    /// dropping every `Recorder` to be sure everything given to it was written.
    pub fn spawn(store: Store, config: RecorderConfig) -> (Recorder, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(config.capacity.max(1));
        let task = tokio::spawn(run(store, config, rx));
        (Recorder { tx }, task)
    }

    /// Records a row and waits until its batch is committed. Only then may the delivery that
    /// produced it be acked.
    pub async fn record(&self, row: RecordRow) -> Result<Recorded, Error> {
        let job = row.id;
        let (done, committed) = oneshot::channel();
        self.tx
            .send(Item {
                row,
                done: Some(done),
            })
            .await
            .map_err(|_| Error::RecorderStopped { job })?;
        committed
            .await
            .map_err(|_| Error::RecorderStopped { job })?
    }

    /// Queues a `running` mark without waiting for it. If the outcome of the same attempt
    /// arrives in the same batch, the mark is folded into it and never written.
    pub async fn mark(&self, row: RecordRow) {
        let _ = self.tx.send(Item { row, done: None }).await;
    }
}

async fn run(store: Store, config: RecorderConfig, mut rx: mpsc::Receiver<Item>) {
    // Up to `max_in_flight` batches are written at once, on different connections; with more
    // than one, a slow round trip does not hold up the next batch. Order between batches does
    // not matter: the fence decides every conflict the same way whichever write lands first.
    let slots = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    let mut flushes = JoinSet::new();
    let mut buf = Vec::with_capacity(config.max_batch);
    while rx.recv_many(&mut buf, config.max_batch).await > 0 {
        let batch = std::mem::take(&mut buf);
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let store = store.clone();
        flushes.spawn(async move {
            flush(&store, batch).await;
            drop(permit);
        });
        // Reap finished flushes so the set does not grow with the run.
        while flushes.try_join_next().is_some() {}
    }
    while flushes.join_next().await.is_some() {}
}

/// Rows per batch the recorder wrote (a histogram; `docs/observability.md`).
pub const RECORDER_BATCH_SIZE: &str = "warren_recorder_batch_size";
/// Seconds one batch took to write and commit, retries included (a histogram).
pub const RECORDER_COMMIT_SECONDS: &str = "warren_recorder_commit_seconds";

async fn flush(store: &Store, batch: Vec<Item>) {
    let n = batch.len();
    let (rows, kept, waiters) = coalesce(batch);
    // Outcomes folded away in this batch by another outcome of the same job ran for nothing
    // too: they count as duplicate runs like the ones the fence discards.
    let folded: Vec<JobId> = waiters
        .iter()
        .filter(|w| kept.get(&w.job) != Some(&w.origin))
        .map(|w| w.job)
        .collect();
    let started = std::time::Instant::now();
    let result = write_with_retry(store, &rows, &folded).await;
    metrics::histogram!(RECORDER_BATCH_SIZE).record(rows.len() as f64);
    metrics::histogram!(RECORDER_COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
    tracing::debug!(
        items = n,
        rows = rows.len(),
        ok = result.is_ok(),
        "recorder batch"
    );
    match result {
        Ok(fenced) => {
            for w in waiters {
                let outcome = if kept.get(&w.job) != Some(&w.origin) || fenced.contains(&w.job) {
                    Recorded::Fenced
                } else {
                    Recorded::Written
                };
                let _ = w.done.send(Ok(outcome));
            }
        }
        Err(e) => {
            let reason = warren_core::ErrorChain(&e).to_string();
            tracing::error!(error = %reason, rows = rows.len(), "outcomes not recorded; their deliveries will be redelivered");
            for w in waiters {
                let _ = w.done.send(Err(Error::Unrecorded {
                    reason: reason.clone(),
                }));
            }
        }
    }
}

/// Folds a batch to at most one row per job (an upsert may not touch a row twice), keeping
/// every waiter: a superseded write is answered when the batch that superseded it commits.
/// Returns the rows, which batch item each job's kept row came from, and the waiters.
fn coalesce(batch: Vec<Item>) -> (Vec<RecordRow>, HashMap<JobId, usize>, Vec<Waiter>) {
    let mut index: HashMap<JobId, usize> = HashMap::with_capacity(batch.len());
    let mut kept: HashMap<JobId, usize> = HashMap::with_capacity(batch.len());
    let mut rows: Vec<RecordRow> = Vec::with_capacity(batch.len());
    let mut waiters = Vec::with_capacity(batch.len());
    for (origin, item) in batch.into_iter().enumerate() {
        let job = item.row.id;
        if let Some(done) = item.done {
            waiters.push(Waiter { job, origin, done });
        }
        match index.get(&job) {
            Some(&i) => {
                if item.row.supersedes(&rows[i]) {
                    rows[i] = item.row;
                    kept.insert(job, origin);
                }
            }
            None => {
                index.insert(job, rows.len());
                kept.insert(job, origin);
                rows.push(item.row);
            }
        }
    }
    // Every batch locks its rows in id order, so two batches written at once (by one
    // recorder with more than one write in flight, or by two workers) that share jobs (a
    // running mark in one, the outcome in the other) can wait for each other but never
    // deadlock.
    rows.sort_unstable_by_key(|r| r.id);
    (rows, kept, waiters)
}

/// Writes the rows, retrying transient failures with backoff (the database restarting, a
/// connection dropped). A data error that fails the whole statement (say a payload Postgres
/// cannot store as jsonb) is isolated by writing row by row, storing an offending row's
/// payload and result as raw bytes instead.
async fn write_with_retry(
    store: &Store,
    rows: &[RecordRow],
    folded: &[JobId],
) -> Result<HashSet<JobId>, Error> {
    let policy = backoff::ExponentialBackoff {
        initial_interval: Duration::from_millis(50),
        max_interval: Duration::from_secs(5),
        // Keep trying while the database is away: deliveries stay unacked meanwhile, the
        // prefetch window stops consumption, and shutdown's hard phase ends the wait.
        max_elapsed_time: None,
        ..backoff::ExponentialBackoff::default()
    };
    // Entering and leaving the degraded state are logged once each, not every retry.
    let degraded = std::sync::atomic::AtomicBool::new(false);
    let attempt = || {
        let degraded = &degraded;
        async move {
            match write(store, rows, folded).await {
                Ok(fenced) => {
                    if degraded.load(std::sync::atomic::Ordering::Relaxed) {
                        tracing::info!(rows = rows.len(), "the database takes outcomes again");
                    }
                    Ok(fenced)
                }
                Err(e) if is_transient(&e) => {
                    if !degraded.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        tracing::warn!(error = %crate::error::sqlx_chain(&e), rows = rows.len(), "recording outcomes failed; holding their deliveries unacked and retrying until the database is back");
                    }
                    Err(backoff::Error::transient(e))
                }
                Err(e) => Err(backoff::Error::permanent(e)),
            }
        }
    };
    match backoff::future::retry(policy, attempt).await {
        Ok(fenced) => Ok(fenced),
        Err(e) if rows.len() > 1 => {
            tracing::warn!(error = %crate::error::sqlx_chain(&e), rows = rows.len(), "batch rejected by the database; writing row by row");
            let mut fenced = HashSet::new();
            for (i, row) in rows.iter().enumerate() {
                // Folded duplicates are counted once, with the first row.
                let folded = if i == 0 { folded } else { &[] };
                fenced.extend(
                    Box::pin(write_with_retry(store, std::slice::from_ref(row), folded)).await?,
                );
            }
            Ok(fenced)
        }
        Err(e) => {
            let row = &rows[0];
            if row.payload.is_none() && row.result.is_none() && row.idempotency_key.is_none() {
                return Err(Error::Record {
                    jobs: 1,
                    source: e.into(),
                });
            }
            tracing::warn!(job = %row.id, error = %crate::error::sqlx_chain(&e), "row rejected; storing its payload as raw bytes");
            let mut raw = row.clone();
            raw.raw_body = raw.payload.take().map(|p| RawBody::of(p.get().as_bytes()));
            // A retry is published from the kept body, which past RAW_BODY_KEPT is only a
            // prefix: such a job ends here, dead with the reason, rather than wait for ever.
            if raw.state == JobState::Scheduled
                && let Some(size) = raw
                    .raw_body
                    .as_ref()
                    .map(|b| b.size)
                    .filter(|&size| size > RAW_BODY_KEPT as u64)
            {
                raw.state = JobState::Dead;
                raw.finished_at.get_or_insert_with(Utc::now);
                if let Some(error) = raw.error.as_mut() {
                    error.message = format!(
                        "{}; not retried: PostgreSQL refuses its payload as jsonb, and of a \
                         {size}-byte body only the first {RAW_BODY_KEPT} bytes are kept, too \
                         little to publish the retry from",
                        error.message
                    );
                }
            }
            // A key another job holds (a race the claim did not see) must not block the
            // outcome: record it without the key.
            raw.idempotency_key = None;
            if raw.result.take().is_some() {
                let note = format!(
                    "result could not be stored as JSON: {}",
                    crate::error::sqlx_chain(&e)
                );
                raw.result = serde_json::value::to_raw_value(&note).ok();
            }
            write(store, std::slice::from_ref(&raw), folded)
                .await
                .map_err(|source| Error::Record {
                    jobs: 1,
                    source: source.into(),
                })
        }
    }
}

/// Text as Postgres can store it: `text` and `jsonb` reject NUL, so each is replaced by
/// U+FFFD. Bad input names itself with whatever bytes it carried, and a row that cannot be
/// written would send its delivery round until the broker dead-letters it with no record.
pub(crate) fn storable(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

const UPSERT: &str = r#"
INSERT INTO warren_jobs AS j (
    id, queue, task, payload, raw_body, state, attempt, max_attempts, timeout_ms, run_at,
    enqueued_at, started_at, finished_at, result, errors, worker_id, idempotency_key,
    traceparent, duplicate_of, body_size, body_sha256, updated_at)
SELECT u.id, u.queue, u.task, u.payload::jsonb, u.raw_body, u.state, u.attempt, u.max_attempts,
       u.timeout_ms, u.run_at, u.enqueued_at, u.started_at, u.finished_at, u.result::jsonb,
       CASE WHEN u.error IS NULL THEN '[]'::jsonb ELSE jsonb_build_array(u.error::jsonb) END,
       u.worker_id, u.idempotency_key, u.traceparent, u.duplicate_of, u.body_size,
       u.body_sha256, now()
FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::text[],
            $7::int4[], $8::int4[], $9::int8[], $10::timestamptz[], $11::timestamptz[],
            $12::timestamptz[], $13::timestamptz[], $14::text[], $15::text[], $16::text[],
            $17::text[], $18::text[], $19::uuid[], $20::int8[], $21::bytea[])
  AS u(id, queue, task, payload, raw_body, state, attempt, max_attempts, timeout_ms, run_at,
       enqueued_at, started_at, finished_at, result, error, worker_id, idempotency_key,
       traceparent, duplicate_of, body_size, body_sha256)
ON CONFLICT (id) DO UPDATE SET
    state        = EXCLUDED.state,
    attempt      = EXCLUDED.attempt,
    max_attempts = EXCLUDED.max_attempts,
    timeout_ms   = COALESCE(EXCLUDED.timeout_ms, j.timeout_ms),
    run_at       = EXCLUDED.run_at,
    started_at   = COALESCE(EXCLUDED.started_at, j.started_at),
    finished_at  = EXCLUDED.finished_at,
    result       = EXCLUDED.result,
    errors       = j.errors || EXCLUDED.errors,
    worker_id    = EXCLUDED.worker_id,
    payload      = COALESCE(j.payload, EXCLUDED.payload),
    raw_body     = COALESCE(j.raw_body, EXCLUDED.raw_body),
    body_size    = COALESCE(j.body_size, EXCLUDED.body_size),
    body_sha256  = COALESCE(j.body_sha256, EXCLUDED.body_sha256),
    traceparent  = COALESCE(j.traceparent, EXCLUDED.traceparent),
    duplicate_of = COALESCE(EXCLUDED.duplicate_of, j.duplicate_of),
    updated_at   = now()
WHERE j.state NOT IN ('succeeded', 'dead', 'cancelled')
  AND (EXCLUDED.attempt > j.attempt OR (EXCLUDED.attempt = j.attempt AND j.state = 'running'))
RETURNING j.id
"#;

/// Counts discarded runs: outcomes the fence turned away, and outcomes folded away in the
/// batch by another outcome of the same job.
const COUNT_DUPLICATES: &str = "
UPDATE warren_jobs SET duplicate_runs = duplicate_runs + 1, updated_at = now()
WHERE id = ANY($1)";

/// Writes the rows in one transaction; returns the jobs whose outcome the fence discarded.
async fn write(
    store: &Store,
    rows: &[RecordRow],
    folded: &[JobId],
) -> Result<HashSet<JobId>, sqlx::Error> {
    let mut tx = store.pool.begin().await?;
    let written = Columns::of(rows).upsert(&mut tx).await?;
    let fenced = fenced(rows, written);
    if !fenced.is_empty() || !folded.is_empty() {
        let ids: Vec<uuid::Uuid> = fenced.iter().chain(folded).map(JobId::as_uuid).collect();
        sqlx::query(COUNT_DUPLICATES)
            .bind(ids)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(fenced)
}

/// The rows' outcomes that the upsert's fence turned away: those not among the `written` ids.
/// A `running` mark turned away carries no outcome, so it is not counted as a discarded run.
fn fenced(rows: &[RecordRow], written: Vec<uuid::Uuid>) -> HashSet<JobId> {
    if written.len() == rows.len() {
        return HashSet::new();
    }
    let written: HashSet<uuid::Uuid> = written.into_iter().collect();
    rows.iter()
        .filter(|r| r.state != JobState::Running && !written.contains(&r.id.as_uuid()))
        .map(|r| r.id)
        .collect()
}

/// The rows turned column-wise, one array per `UNNEST` parameter of [`UPSERT`] and in its
/// order, with each value converted to what its column stores: text made storable, unsigned
/// numbers clamped into Postgres' signed ones, ids as UUIDs.
struct Columns<'a> {
    ids: Vec<uuid::Uuid>,
    queues: Vec<Cow<'a, str>>,
    tasks: Vec<Cow<'a, str>>,
    payloads: Vec<Option<&'a str>>,
    raw_bodies: Vec<Option<&'a [u8]>>,
    states: Vec<&'static str>,
    attempts: Vec<i32>,
    max_attempts: Vec<i32>,
    timeouts: Vec<Option<i64>>,
    run_ats: Vec<Option<DateTime<Utc>>>,
    enqueued_ats: Vec<DateTime<Utc>>,
    started_ats: Vec<Option<DateTime<Utc>>>,
    finished_ats: Vec<Option<DateTime<Utc>>>,
    results: Vec<Option<&'a str>>,
    errors: Vec<Option<String>>,
    workers: Vec<Cow<'a, str>>,
    keys: Vec<Option<Cow<'a, str>>>,
    traces: Vec<Option<Cow<'a, str>>>,
    duplicates: Vec<Option<uuid::Uuid>>,
    body_sizes: Vec<Option<i64>>,
    body_digests: Vec<Option<&'a [u8]>>,
}

impl<'a> Columns<'a> {
    fn of(rows: &'a [RecordRow]) -> Self {
        fn column<'a, T>(rows: &'a [RecordRow], value: impl Fn(&'a RecordRow) -> T) -> Vec<T> {
            rows.iter().map(value).collect()
        }
        Columns {
            ids: column(rows, |r| r.id.as_uuid()),
            queues: column(rows, |r| storable(&r.queue)),
            tasks: column(rows, |r| storable(&r.task)),
            payloads: column(rows, |r| r.payload.as_deref().map(RawValue::get)),
            raw_bodies: column(rows, |r| r.raw_body.as_ref().map(|b| b.prefix.as_slice())),
            states: column(rows, |r| r.state.as_str()),
            attempts: column(rows, |r| r.attempt as i32),
            max_attempts: column(rows, |r| r.max_attempts.max(1) as i32),
            timeouts: column(rows, |r| r.timeout_ms.map(clamp_to_i64)),
            run_ats: column(rows, |r| r.run_at),
            enqueued_ats: column(rows, |r| r.enqueued_at),
            started_ats: column(rows, |r| r.started_at),
            finished_ats: column(rows, |r| r.finished_at),
            results: column(rows, |r| r.result.as_deref().map(RawValue::get)),
            errors: column(rows, |r| r.error.as_ref().and_then(error_json)),
            workers: column(rows, |r| storable(&r.worker_id)),
            keys: column(rows, |r| r.idempotency_key.as_deref().map(storable)),
            traces: column(rows, |r| r.traceparent.as_deref().map(storable)),
            duplicates: column(rows, |r| r.duplicate_of.map(|d| d.as_uuid())),
            body_sizes: column(rows, |r| r.raw_body.as_ref().map(|b| clamp_to_i64(b.size))),
            body_digests: column(rows, |r| r.raw_body.as_ref().map(|b| b.sha256.as_slice())),
        }
    }

    /// Runs [`UPSERT`] with these columns; returns the ids of the rows the fence let through.
    async fn upsert(self, conn: &mut PgConnection) -> Result<Vec<uuid::Uuid>, sqlx::Error> {
        sqlx::query_scalar(UPSERT)
            .bind(self.ids)
            .bind(self.queues)
            .bind(self.tasks)
            .bind(self.payloads)
            .bind(self.raw_bodies)
            .bind(self.states)
            .bind(self.attempts)
            .bind(self.max_attempts)
            .bind(self.timeouts)
            .bind(self.run_ats)
            .bind(self.enqueued_ats)
            .bind(self.started_ats)
            .bind(self.finished_ats)
            .bind(self.results)
            .bind(self.errors)
            .bind(self.workers)
            .bind(self.keys)
            .bind(self.traces)
            .bind(self.duplicates)
            .bind(self.body_sizes)
            .bind(self.body_digests)
            .fetch_all(conn)
            .await
    }
}

/// Postgres has no unsigned integers; a value beyond `i64` (no real timeout or body size)
/// is stored as the largest it can hold rather than wrapping negative.
fn clamp_to_i64(value: u64) -> i64 {
    value.min(i64::MAX as u64) as i64
}

/// A failure as the JSON the `errors` history stores, its message made storable.
fn error_json(error: &FailureRecord) -> Option<String> {
    let mut error = error.clone();
    error.message = storable(&error.message).into_owned();
    serde_json::to_string(&error).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: JobId, attempt: u32, state: JobState) -> RecordRow {
        RecordRow {
            id,
            queue: "q".into(),
            task: "t".into(),
            payload: None,
            raw_body: None,
            state,
            attempt,
            max_attempts: 3,
            timeout_ms: None,
            run_at: None,
            enqueued_at: Utc::now(),
            started_at: None,
            finished_at: None,
            result: None,
            error: None,
            worker_id: "w".into(),
            idempotency_key: None,
            traceparent: None,
            duplicate_of: None,
        }
    }

    #[test]
    fn coalescing_keeps_one_row_per_job_and_every_waiter() {
        let a = JobId::new();
        let b = JobId::new();
        let mut items = Vec::new();
        let mut receivers = Vec::new();
        for r in [
            row(a, 1, JobState::Running),
            row(b, 1, JobState::Succeeded),
            row(a, 1, JobState::Succeeded),
            row(a, 1, JobState::Running),
        ] {
            let (tx, rx) = oneshot::channel();
            items.push(Item {
                row: r,
                done: Some(tx),
            });
            receivers.push(rx);
        }
        let (rows, _kept, waiters) = coalesce(items);
        assert_eq!(rows.len(), 2);
        assert_eq!(waiters.len(), 4);
        let a_row = rows.iter().find(|r| r.id == a).unwrap();
        assert_eq!(
            a_row.state,
            JobState::Succeeded,
            "a late running mark never beats the outcome"
        );
    }

    #[test]
    fn newer_attempt_wins_in_a_batch() {
        let a = JobId::new();
        assert!(row(a, 2, JobState::Running).supersedes(&row(a, 1, JobState::Dead)));
        assert!(!row(a, 1, JobState::Succeeded).supersedes(&row(a, 2, JobState::Running)));
    }
}
