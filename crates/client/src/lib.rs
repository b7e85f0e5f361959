//! warren-client: the enqueue API that Rust services embed.
//!
//! [`Client::enqueue`] returns a job id only after RabbitMQ has confirmed the message, so a
//! returned id is a job the system will not lose. [`Client::enqueue_many`] pipelines the
//! confirms of many jobs and reports each job's outcome on its own.
//!
//! It deliberately does not run jobs or read their results; that is the worker's and the
//! store's business.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use warren_broker::{Broker, BrokerConfig, PublishRequest, Publisher};
use warren_core::message::{
    MAX_ATTEMPTS_LIMIT, MAX_IDEMPOTENCY_KEY_LEN, MAX_TIME_MS, PayloadError, check_payload,
    is_traceparent,
};
use warren_core::{
    DEFAULT_QUEUE, IntakeMessage, InvalidName, JobId, JobMessage, QueueName, RetryPolicy, TaskName,
};
use warren_store::{PgTransaction, ScheduledJob, Store};

/// Why a job was not enqueued.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Name(#[from] InvalidName),

    #[error("payload of task `{task}` is not serialisable to JSON")]
    Payload {
        task: String,
        #[source]
        source: serde_json::Error,
    },

    #[error(
        "payload of task `{task}` is JSON that no worker can read; fix the value at the spot named"
    )]
    Unreadable {
        task: String,
        #[source]
        source: PayloadError,
    },

    #[error("invalid option for task `{task}`: {reason}")]
    Option { task: String, reason: String },

    #[error(transparent)]
    Broker(#[from] warren_broker::Error),

    #[error(transparent)]
    Store(#[from] warren_store::Error),

    #[error(
        "job {job} has a delay, and delayed jobs are kept in Postgres: build the client with Client::with_store"
    )]
    NeedsStore { job: JobId },
}

/// A job to enqueue: a task, its payload, and options.
#[derive(Clone, Debug)]
pub struct NewJob {
    task: TaskName,
    payload: Box<RawValue>,
    queue: QueueName,
    id: Option<JobId>,
    max_attempts: Option<u32>,
    timeout: Option<Duration>,
    idempotency_key: Option<String>,
    traceparent: Option<String>,
    tracestate: Option<String>,
    run_at: Option<DateTime<Utc>>,
}

impl NewJob {
    /// A job for `task` with `payload` serialised as JSON, on the default queue.
    ///
    /// The payload must be JSON that workers can read, checked exactly as they read it
    /// ([`check_payload`]): a `RawValue` holding `1e400`, a lone surrogate escape or arrays
    /// nested more than 127 deep is refused here instead of dying at the worker.
    pub fn new(task: &str, payload: &impl Serialize) -> Result<Self, Error> {
        let task = TaskName::new(task)?;
        let payload =
            serde_json::value::to_raw_value(payload).map_err(|source| Error::Payload {
                task: task.to_string(),
                source,
            })?;
        check_payload(payload.get()).map_err(|source| Error::Unreadable {
            task: task.to_string(),
            source,
        })?;
        Ok(Self {
            task,
            payload,
            queue: QueueName::new(DEFAULT_QUEUE)?,
            id: None,
            max_attempts: None,
            timeout: None,
            idempotency_key: None,
            traceparent: None,
            tracestate: None,
            run_at: None,
        })
    }

    /// Run no earlier than `delay` from now. Delayed jobs wait in Postgres (see
    /// [`Client::with_store`]) and are published by a worker's promoter when due.
    ///
    /// A delay reaching past [`NewJob::run_at`]'s limit (the year 2200) is an error.
    pub fn delay(self, delay: Duration) -> Result<Self, Error> {
        let at = chrono::Duration::from_std(delay)
            .ok()
            .and_then(|d| Utc::now().checked_add_signed(d));
        match at {
            Some(at) if at.timestamp_millis() <= MAX_TIME_MS => self.run_at(at),
            _ => Err(self.invalid(format!(
                "a delay of {delay:?} reaches past 2200-01-01, the latest time a job can be \
                 scheduled; use a shorter delay"
            ))),
        }
    }

    /// Run no earlier than `at`. A time after 2200-01-01 is refused: the message contract
    /// cannot carry it, so it is a mistake (seconds taken for milliseconds, say), not a plan.
    pub fn run_at(mut self, at: DateTime<Utc>) -> Result<Self, Error> {
        if at.timestamp_millis() > MAX_TIME_MS {
            return Err(self.invalid(format!(
                "run at {at} is after 2200-01-01, the latest time a job can be scheduled"
            )));
        }
        self.run_at = Some(at);
        Ok(self)
    }

    /// The row of this job as a scheduled job due at `run_at` (or now). Jobs kept in Postgres
    /// carry an explicit max attempts, the job's own or Warren's default, because the task's
    /// policy is only known to the workers.
    fn into_scheduled(mut self) -> ScheduledJob {
        let run_at = self.run_at.take();
        let (queue, m) = self.into_message();
        ScheduledJob {
            id: m.id,
            queue: queue.to_string(),
            task: m.task.to_string(),
            payload: m.payload.get().to_owned(),
            max_attempts: m
                .max_attempts
                .unwrap_or(RetryPolicy::default().max_attempts),
            timeout_ms: m.timeout_ms,
            run_at: run_at.unwrap_or(m.enqueued_at),
            enqueued_at: m.enqueued_at,
            idempotency_key: m.idempotency_key,
            traceparent: m.traceparent,
        }
    }

    fn is_delayed(&self, now: DateTime<Utc>) -> bool {
        self.run_at.is_some_and(|at| at > now)
    }

    pub fn queue(mut self, queue: &str) -> Result<Self, Error> {
        self.queue = QueueName::new(queue)?;
        Ok(self)
    }

    /// Use this id instead of a fresh one (for callers that must know it beforehand).
    pub fn id(mut self, id: JobId) -> Self {
        self.id = Some(id);
        self
    }

    /// Attempts in total; the task's policy decides when unset.
    pub fn max_attempts(mut self, n: u32) -> Result<Self, Error> {
        if n == 0 || n > MAX_ATTEMPTS_LIMIT {
            return Err(self.invalid(format!(
                "max attempts must be 1 to {MAX_ATTEMPTS_LIMIT}, got {n}"
            )));
        }
        self.max_attempts = Some(n);
        Ok(self)
    }

    /// Per-attempt timeout; the task's default when unset.
    pub fn timeout(mut self, timeout: Duration) -> Result<Self, Error> {
        if timeout.is_zero() || timeout > Duration::from_millis(i32::MAX as u64) {
            return Err(self.invalid(format!(
                "timeout must be between 1ms and 24 days, got {timeout:?}"
            )));
        }
        self.timeout = Some(timeout);
        Ok(self)
    }

    pub fn idempotency_key(mut self, key: impl Into<String>) -> Result<Self, Error> {
        let key = key.into();
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return Err(self.invalid(format!(
                "idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes, got {}",
                key.len()
            )));
        }
        self.idempotency_key = Some(key);
        Ok(self)
    }

    /// W3C trace context of the caller, so the job's spans join the caller's trace.
    pub fn trace(mut self, traceparent: &str, tracestate: Option<&str>) -> Result<Self, Error> {
        if !is_traceparent(traceparent) {
            return Err(self.invalid(format!(
                "`{traceparent}` is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)"
            )));
        }
        self.traceparent = Some(traceparent.to_owned());
        self.tracestate = tracestate.map(str::to_owned);
        Ok(self)
    }

    fn invalid(&self, reason: String) -> Error {
        Error::Option {
            task: self.task.to_string(),
            reason,
        }
    }

    /// The message of this job's first attempt.
    fn into_message(self) -> (QueueName, JobMessage) {
        let message = JobMessage {
            id: self.id.unwrap_or_default(),
            task: self.task,
            attempt: 1,
            max_attempts: self.max_attempts,
            timeout_ms: self.timeout.map(|t| t.as_millis() as u64),
            idempotency_key: self.idempotency_key,
            enqueued_at: Utc::now(),
            traceparent: self.traceparent,
            tracestate: self.tracestate,
            has_row: false,
            payload: self.payload,
        };
        (self.queue, message)
    }
}

/// Enqueues jobs. Cheap to clone; clones share one AMQP channel.
#[derive(Clone, Debug)]
pub struct Client {
    broker: Broker,
    publisher: Publisher,
    store: Option<Store>,
}

impl Client {
    /// Connects to RabbitMQ and opens a confirm-mode channel.
    pub async fn connect(config: BrokerConfig) -> Result<Self, Error> {
        let broker = Broker::connect(config).await?;
        Self::from_broker(broker).await
    }

    /// Uses an existing connection (one per process is the rule).
    pub async fn from_broker(broker: Broker) -> Result<Self, Error> {
        let publisher = broker.publisher().await?;
        Ok(Self {
            broker,
            publisher,
            store: None,
        })
    }

    /// Gives the client database access, for delayed jobs: they are written as `scheduled`
    /// rows, which a worker's promoter publishes when due.
    pub fn with_store(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Declares these queues (idempotent). Publishing to a queue nobody declared fails as
    /// unroutable rather than losing the job; workers declare their queues when they start.
    pub async fn declare_queues(&self, queues: &[QueueName]) -> Result<(), Error> {
        Ok(self.broker.declare(queues).await?)
    }

    /// Publishes one job and returns its id once the broker has confirmed it.
    ///
    /// A job with a delay in the future waits in Postgres: a client with a store writes the
    /// `scheduled` row itself and returns once it is committed; a broker-only client publishes
    /// it to the intake queue, and a worker writes the row before acking it.
    pub async fn enqueue(&self, job: NewJob) -> Result<JobId, Error> {
        if job.is_delayed(Utc::now()) {
            return self.enqueue_delayed(job).await;
        }
        let (queue, message) = job.into_message();
        let raw = message.encode();
        self.publisher.publish(queue.as_str(), &raw).await?;
        Ok(message.id)
    }

    async fn enqueue_delayed(&self, mut job: NewJob) -> Result<JobId, Error> {
        if let Some(store) = &self.store {
            let row = job.into_scheduled();
            let ids = store.schedule(std::slice::from_ref(&row)).await?;
            return Ok(ids.first().copied().unwrap_or(row.id));
        }
        let run_at = job.run_at.take().unwrap_or_else(Utc::now);
        let (queue, message) = job.into_message();
        let id = message.id;
        let intake = IntakeMessage {
            job: message,
            queue,
            run_at,
        };
        self.publisher.publish_intake(&intake.encode()).await?;
        Ok(id)
    }

    /// Enqueues a job inside the caller's Postgres transaction: it runs if and only if the
    /// transaction commits (an outbox without extra machinery). The job is due at its
    /// `run_at`, or at once; a worker's promoter publishes it after the commit. If its
    /// idempotency key is held by another job, that job's id is returned and nothing is added.
    pub async fn enqueue_tx(
        &self,
        tx: &mut PgTransaction<'_>,
        job: NewJob,
    ) -> Result<JobId, Error> {
        let row = job.into_scheduled();
        let ids = warren_store::schedule_in(tx, std::slice::from_ref(&row)).await?;
        Ok(ids.first().copied().unwrap_or(row.id))
    }

    /// Enqueues many jobs: immediate ones published with pipelined confirms, delayed ones
    /// written to Postgres in one statement. The result at index `i` is the outcome of
    /// `jobs[i]`: its id once confirmed or committed, or why it was not enqueued.
    pub async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Vec<Result<JobId, Error>> {
        let now = Utc::now();
        let mut results: Vec<Option<Result<JobId, Error>>> = jobs.iter().map(|_| None).collect();
        let mut delayed: Vec<(usize, ScheduledJob)> = Vec::new();
        let mut delayed_jobs: Vec<(usize, NewJob)> = Vec::new();
        let mut immediate: Vec<(usize, QueueName, JobMessage, warren_core::RawMessage)> =
            Vec::new();
        for (i, job) in jobs.into_iter().enumerate() {
            if job.is_delayed(now) && self.store.is_some() {
                delayed.push((i, job.into_scheduled()));
            } else if job.is_delayed(now) {
                delayed_jobs.push((i, job));
            } else {
                let (queue, message) = job.into_message();
                let raw = message.encode();
                immediate.push((i, queue, message, raw));
            }
        }

        match &self.store {
            Some(store) if !delayed.is_empty() => {
                let rows: Vec<ScheduledJob> = delayed.iter().map(|(_, r)| r.clone()).collect();
                let outcome = store.schedule(&rows).await.map_err(|e| e.to_string());
                for (n, (i, row)) in delayed.into_iter().enumerate() {
                    results[i] = Some(match &outcome {
                        Ok(ids) => Ok(ids.get(n).copied().unwrap_or(row.id)),
                        Err(reason) => Err(Error::Option {
                            task: row.task,
                            reason: format!("scheduling job {} failed: {reason}", row.id),
                        }),
                    });
                }
            }
            _ => {
                for (i, job) in delayed_jobs {
                    results[i] = Some(self.enqueue_delayed(job).await);
                }
            }
        }

        let requests: Vec<PublishRequest<'_>> = immediate
            .iter()
            .map(|(_, queue, _, raw)| PublishRequest {
                queue: queue.as_str(),
                message: raw,
            })
            .collect();
        let outcomes = self.publisher.publish_many(&requests).await;
        for ((i, _, message, _), outcome) in immediate.iter().zip(outcomes) {
            results[*i] = Some(outcome.map(|()| message.id).map_err(Error::from));
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| unreachable!("every job is either delayed or published")))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked_with_the_task_named() {
        let job = NewJob::new("email.send", &serde_json::json!({"to": "x"})).unwrap();
        let err = job.clone().max_attempts(0).unwrap_err().to_string();
        assert!(
            err.contains("email.send") && err.contains("max attempts"),
            "{err}"
        );
        assert!(job.clone().trace("nope", None).is_err());
        assert!(job.clone().idempotency_key("").is_err());
        assert!(job.clone().queue("bad queue").is_err());
        let (queue, msg) = job.max_attempts(3).unwrap().into_message();
        assert_eq!(queue.as_str(), DEFAULT_QUEUE);
        assert_eq!(msg.attempt, 1);
        assert_eq!(msg.max_attempts, Some(3));
    }

    #[test]
    fn payloads_no_worker_can_read_are_refused_at_construction() {
        let deep = format!("{}{}", "[".repeat(60_000), "]".repeat(60_000));
        for (text, spot) in [
            (r#"{"n":1e400}"#.to_owned(), "line 1, column 10"),
            (r#""\ud800""#.to_owned(), "line 1, column 8"),
            (deep, "line 1, column 128"),
        ] {
            let raw = RawValue::from_string(text).unwrap();
            let err = NewJob::new("t", &raw).unwrap_err();
            assert!(matches!(err, Error::Unreadable { .. }), "{err}");
            let chain = anyhow_like(&err);
            assert!(
                chain.contains("no worker can read") && chain.contains(spot),
                "{chain}"
            );
        }
        assert!(NewJob::new("t", &RawValue::from_string("[1e300]".into()).unwrap()).is_ok());
    }

    /// The error and its sources, as a binary prints them.
    fn anyhow_like(err: &Error) -> String {
        let mut text = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(s) = source {
            text.push_str(&format!(": {s}"));
            source = s.source();
        }
        text
    }

    #[test]
    fn delays_that_overflow_are_errors_not_panics() {
        let job = NewJob::new("t", &1).unwrap();
        let err = job
            .clone()
            .delay(Duration::from_secs(100_000_000 * 86_400))
            .unwrap_err()
            .to_string();
        assert!(err.contains("reaches past 2200-01-01"), "{err}");
        assert!(job.clone().delay(Duration::MAX).is_err());
        let far = DateTime::<Utc>::MAX_UTC;
        assert!(job.clone().run_at(far).is_err());
        let soon = job.delay(Duration::from_secs(60)).unwrap();
        assert!(soon.is_delayed(Utc::now()));
    }

    #[test]
    fn bad_task_names_are_refused_before_any_io() {
        assert!(NewJob::new("no spaces", &1).is_err());
    }
}
