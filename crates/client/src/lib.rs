//! warren-client: the enqueue API that Rust services embed.
//!
//! [`Client::enqueue`] returns a job id only after RabbitMQ has confirmed the message, so a
//! returned id is a job the system will not lose. [`Client::enqueue_many`] pipelines the
//! confirms of many jobs and reports each job's outcome on its own.
//!
//! It deliberately does not run jobs or read their results; that is the worker's and the
//! store's business.

use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use serde_json::value::RawValue;
use warren_broker::{Broker, BrokerConfig, PublishRequest, Publisher};
use warren_core::message::{MAX_ATTEMPTS_LIMIT, MAX_IDEMPOTENCY_KEY_LEN, is_traceparent};
use warren_core::{InvalidName, JobId, JobMessage, QueueName, TaskName, DEFAULT_QUEUE};

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

    #[error("invalid option for task `{task}`: {reason}")]
    Option { task: String, reason: String },

    #[error(transparent)]
    Broker(#[from] warren_broker::Error),
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
}

impl NewJob {
    /// A job for `task` with `payload` serialised as JSON, on the default queue.
    pub fn new(task: &str, payload: &impl Serialize) -> Result<Self, Error> {
        let task = TaskName::new(task)?;
        let payload = serde_json::value::to_raw_value(payload).map_err(|source| Error::Payload {
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
        })
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
            return Err(self.invalid(format!("max attempts must be 1 to {MAX_ATTEMPTS_LIMIT}, got {n}")));
        }
        self.max_attempts = Some(n);
        Ok(self)
    }

    /// Per-attempt timeout; the task's default when unset.
    pub fn timeout(mut self, timeout: Duration) -> Result<Self, Error> {
        if timeout.is_zero() || timeout > Duration::from_millis(i32::MAX as u64) {
            return Err(self.invalid(format!("timeout must be between 1ms and 24 days, got {timeout:?}")));
        }
        self.timeout = Some(timeout);
        Ok(self)
    }

    pub fn idempotency_key(mut self, key: impl Into<String>) -> Result<Self, Error> {
        let key = key.into();
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return Err(self.invalid(format!("idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes, got {}", key.len())));
        }
        self.idempotency_key = Some(key);
        Ok(self)
    }

    /// W3C trace context of the caller, so the job's spans join the caller's trace.
    pub fn trace(mut self, traceparent: &str, tracestate: Option<&str>) -> Result<Self, Error> {
        if !is_traceparent(traceparent) {
            return Err(self.invalid(format!("`{traceparent}` is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)")));
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
        Ok(Self { broker, publisher })
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
    pub async fn enqueue(&self, job: NewJob) -> Result<JobId, Error> {
        let (queue, message) = job.into_message();
        let raw = message.encode();
        self.publisher.publish(queue.as_str(), &raw).await?;
        Ok(message.id)
    }

    /// Publishes many jobs with pipelined confirms. The result at index `i` is the outcome of
    /// `jobs[i]`: its id once confirmed, or why it was not enqueued.
    pub async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Vec<Result<JobId, Error>> {
        let prepared: Vec<(QueueName, JobMessage, warren_core::RawMessage)> = jobs
            .into_iter()
            .map(|job| {
                let (queue, message) = job.into_message();
                let raw = message.encode();
                (queue, message, raw)
            })
            .collect();
        let requests: Vec<PublishRequest<'_>> = prepared
            .iter()
            .map(|(queue, _, raw)| PublishRequest {
                queue: queue.as_str(),
                message: raw,
            })
            .collect();
        let outcomes = self.publisher.publish_many(&requests).await;
        prepared
            .iter()
            .zip(outcomes)
            .map(|((_, message, _), outcome)| outcome.map(|()| message.id).map_err(Error::from))
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
        assert!(err.contains("email.send") && err.contains("max attempts"), "{err}");
        assert!(job.clone().trace("nope", None).is_err());
        assert!(job.clone().idempotency_key("").is_err());
        assert!(job.clone().queue("bad queue").is_err());
        let (queue, msg) = job.max_attempts(3).unwrap().into_message();
        assert_eq!(queue.as_str(), DEFAULT_QUEUE);
        assert_eq!(msg.attempt, 1);
        assert_eq!(msg.max_attempts, Some(3));
    }

    #[test]
    fn bad_task_names_are_refused_before_any_io() {
        assert!(NewJob::new("no spaces", &1).is_err());
    }
}
