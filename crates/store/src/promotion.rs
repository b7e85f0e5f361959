//! The promoter's side of the jobs table: claiming due `scheduled` rows without two promoters
//! ever holding the same row, marking them `queued` once published, and waking on NOTIFY.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgListener;
use sqlx::{Postgres, Transaction};
use warren_core::JobId;

use crate::{Error, Store};

/// A scheduled job whose time has come, with what it takes to publish its next attempt.
#[derive(Clone, Debug)]
pub struct DueJob {
    /// The job's id, unchanged by promotion.
    pub id: JobId,
    /// The Warren queue to publish it to.
    pub queue: String,
    /// The task name for the `warren-task` header.
    pub task: String,
    /// The payload as JSON text: the `jsonb` column's, or for a payload `jsonb` refused (a
    /// string with U+0000 from a foreign producer), the body kept as it came.
    pub payload: String,
    /// Attempts made so far; the published message carries `attempt + 1`.
    pub attempt: u32,
    /// Attempts allowed in total, at least 1.
    pub max_attempts: u32,
    /// Per-attempt timeout in milliseconds, if the job asked for one.
    pub timeout_ms: Option<u64>,
    /// When it fell due.
    pub run_at: DateTime<Utc>,
    /// When the producer first enqueued it; carried into the message.
    pub enqueued_at: DateTime<Utc>,
    /// Its idempotency key, if it has one.
    pub idempotency_key: Option<String>,
    /// The W3C trace context it was enqueued with.
    pub traceparent: Option<String>,
    /// The time of a rate-limit token reserved for it when a limit deferred it.
    pub limit_token_at: Option<DateTime<Utc>>,
}

/// A due row as Postgres types it; [`DueJob`] is what the promoter gets.
#[derive(sqlx::FromRow)]
struct DueRow {
    id: uuid::Uuid,
    queue: String,
    task: String,
    payload: Option<String>,
    /// The body as it came, whole, when `payload` is NULL (see [`Store::claim_due`]).
    raw_body: Option<Vec<u8>>,
    attempt: i32,
    max_attempts: i32,
    timeout_ms: Option<i64>,
    run_at: DateTime<Utc>,
    enqueued_at: DateTime<Utc>,
    idempotency_key: Option<String>,
    traceparent: Option<String>,
    limit_token_at: Option<DateTime<Utc>>,
}

impl From<DueRow> for DueJob {
    fn from(r: DueRow) -> Self {
        // The table's CHECKs keep attempt >= 0 and max_attempts >= 1, and the client never
        // stores a timeout below 1 ms; the clamps only keep a hand-edited row from wrapping.
        DueJob {
            id: JobId::from_uuid(r.id),
            queue: r.queue,
            task: r.task,
            // The body was JSON when the worker decoded it, so UTF-8; were it not, the empty
            // body publishes a job the next worker records dead as bad input, rather than one
            // that waits for ever.
            payload: r
                .payload
                .or_else(|| r.raw_body.and_then(|b| String::from_utf8(b).ok()))
                .unwrap_or_default(),
            attempt: r.attempt.max(0) as u32,
            max_attempts: r.max_attempts.max(1) as u32,
            timeout_ms: r.timeout_ms.map(|t| t.max(1) as u64),
            run_at: r.run_at,
            enqueued_at: r.enqueued_at,
            idempotency_key: r.idempotency_key,
            traceparent: r.traceparent,
            limit_token_at: r.limit_token_at,
        }
    }
}

/// Due rows claimed in an open transaction. Their locks are held until [`Promotion::finish`]
/// commits; other promoters skip them meanwhile. Dropping it rolls back (the rows stay due).
#[derive(Debug)]
pub struct Promotion {
    tx: Transaction<'static, Postgres>,
    /// The claimed jobs, oldest due first; possibly none.
    pub jobs: Vec<DueJob>,
}

impl Promotion {
    /// Marks `published` jobs `queued` and pushes `deferred` ones (publish failed) back by
    /// `defer`, then commits.
    pub async fn finish(
        mut self,
        published: &[JobId],
        deferred: &[JobId],
        defer: std::time::Duration,
    ) -> Result<(), Error> {
        let published: Vec<uuid::Uuid> = published.iter().map(JobId::as_uuid).collect();
        let deferred: Vec<uuid::Uuid> = deferred.iter().map(JobId::as_uuid).collect();
        sqlx::query(
            // The token reservation travels in the published message; a later scheduled row
            // of the job (a retry) holds none.
            "UPDATE warren_jobs SET state = 'queued', limit_token_at = NULL, updated_at = now()
             WHERE id = ANY($1)",
        )
        .bind(&published)
        .execute(&mut *self.tx)
        .await
        .map_err(Error::query("marking promoted jobs queued"))?;
        if !deferred.is_empty() {
            sqlx::query(
                "UPDATE warren_jobs SET run_at = now() + make_interval(secs => $2), updated_at = now()
                 WHERE id = ANY($1)",
            )
            .bind(&deferred)
            .bind(defer.as_secs_f64())
            .execute(&mut *self.tx)
            .await
            .map_err(Error::query("deferring jobs that could not be published"))?;
        }
        self.tx
            .commit()
            .await
            .map_err(Error::query("committing a promotion"))
    }
}

/// Postgres channel notified when a job becomes `scheduled` (see migration 0002).
pub const DUE_CHANNEL: &str = "warren_due";
/// Postgres channel carrying the id of a running job an admin cancelled.
pub const CANCEL_CHANNEL: &str = "warren_cancel";

/// A LISTEN connection on some channels. It holds one pooled connection while it lives.
#[derive(Debug)]
pub struct Listener {
    listener: PgListener,
}

/// One notification: its channel and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    /// The channel it came on, [`DUE_CHANNEL`] or [`CANCEL_CHANNEL`].
    pub channel: String,
    /// The NOTIFY payload; a job id on [`CANCEL_CHANNEL`].
    pub payload: String,
}

impl Listener {
    /// Waits for the next notification. An error means the listening connection broke;
    /// callers reconnect, and fall back to polling meanwhile.
    pub async fn recv(&mut self) -> Result<Notification, Error> {
        self.listener
            .recv()
            .await
            .map(|n| Notification {
                channel: n.channel().to_owned(),
                payload: n.payload().to_owned(),
            })
            .map_err(Error::query("listening for notifications"))
    }
}

impl Store {
    /// Claims up to `limit` due jobs, oldest `run_at` first, skipping rows another promoter
    /// holds.
    ///
    /// A retry of a job whose payload `jsonb` refused (a foreign producer's string with
    /// U+0000) has no `payload`, only its body kept as raw bytes; it is published from those
    /// when they are whole (a body over [`crate::RAW_BODY_KEPT`], kept only in part, is
    /// recorded dead instead of scheduled; see docs/reliability.md).
    pub async fn claim_due(&self, limit: u32) -> Result<Promotion, Error> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(Error::query("starting a promotion"))?;
        let rows: Vec<DueRow> = sqlx::query_as(
            "SELECT id, queue, task, payload::text AS payload,
                    CASE WHEN payload IS NULL THEN raw_body END AS raw_body, attempt,
                    max_attempts, timeout_ms, run_at, enqueued_at, idempotency_key, traceparent,
                    limit_token_at
             FROM warren_jobs
             WHERE state = 'scheduled' AND run_at <= now()
               AND (payload IS NOT NULL
                    OR (raw_body IS NOT NULL AND body_size = octet_length(raw_body)))
             ORDER BY run_at
             LIMIT $1
             FOR UPDATE SKIP LOCKED",
        )
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(Error::query("claiming due jobs"))?;
        let jobs = rows.into_iter().map(DueJob::from).collect();
        Ok(Promotion { tx, jobs })
    }

    /// When the next scheduled job falls due, if any is waiting.
    pub async fn next_due_at(&self) -> Result<Option<DateTime<Utc>>, Error> {
        sqlx::query_scalar("SELECT min(run_at) FROM warren_jobs WHERE state = 'scheduled'")
            .fetch_one(&self.pool)
            .await
            .map_err(Error::query("finding the next due job"))
    }

    /// A listener on `channels` (such as [`DUE_CHANNEL`] and [`CANCEL_CHANNEL`]), on one
    /// connection taken from the pool for as long as it lives.
    pub async fn listen(&self, channels: &[&str]) -> Result<Listener, Error> {
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .map_err(Error::query("opening a LISTEN connection"))?;
        listener
            .listen_all(channels.iter().copied())
            .await
            .map_err(Error::query("subscribing to notification channels"))?;
        Ok(Listener { listener })
    }
}
