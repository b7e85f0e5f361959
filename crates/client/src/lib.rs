//! warren-client: the enqueue API that Rust services embed.
//!
//! A job is a value of a typed [`Task`] (its type names the task and the queue, so the payload
//! and the handler's input cannot disagree) or a string-named [`NewJob`] for dynamic cases.
//! Options are checked once, at enqueue: building a [`NewJob`] never fails, and a job with
//! problems is refused with all of them in one [`Error::Invalid`] before anything is sent.
//!
//! [`Client::enqueue`] returns a job id only after RabbitMQ has confirmed the message, so a
//! returned id is a job the system will not lose. [`Client::enqueue_many`] pipelines the
//! confirms of many jobs and reports each job's outcome on its own.
//!
//! It deliberately does not run jobs or read their results; that is the worker's and the
//! store's business.

#![warn(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use warren_broker::{PublishRequest, Publisher};
// What a service needs to enqueue, without depending on the crates underneath.
pub use warren_broker::{Broker, BrokerConfig};
use warren_core::message::{
    MAX_ATTEMPTS_LIMIT, MAX_IDEMPOTENCY_KEY_LEN, MAX_TIME_MS, check_payload, check_storable,
    is_traceparent,
};
use warren_core::{
    DEFAULT_QUEUE, IntakeMessage, JobMessage, QueueName, RawMessage, TaskName, TraceParent,
};
pub use warren_core::{JobId, Task};
use warren_store::{PgTransaction, ScheduledJob};
pub use warren_store::{Store, StoreConfig};

/// Why a job was not enqueued.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The job itself is wrong; every problem found is listed, nothing was sent.
    #[error("job for task `{task}` was not enqueued: {}", Problem::list(problems))]
    Invalid {
        /// The task name as given, valid or not.
        task: String,
        /// Every problem found, never empty.
        problems: Vec<Problem>,
    },

    /// RabbitMQ did not take the job: unreachable, unroutable (no such queue), nacked, or no
    /// confirm in time (then the job may exist after all). Its
    /// [`is_transient`](warren_broker::Error::is_transient) says whether to try again.
    #[error(transparent)]
    Broker(#[from] warren_broker::Error),

    /// Writing a delayed or transactional job to Postgres failed.
    #[error("writing the job to Postgres failed")]
    Store(#[from] warren_store::Error),

    /// Scheduling a batch of delayed jobs failed; the same failure answers for each of them.
    #[error("writing delayed job {job} to Postgres failed")]
    Schedule {
        /// The job this result is for.
        job: JobId,
        /// The statement's one failure, shared by every job of the batch.
        #[source]
        source: Arc<warren_store::Error>,
    },
}

/// One thing wrong with a job, and which of its settings it concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The setting: `task`, `payload`, `queue`, `max_attempts`, `timeout`,
    /// `idempotency_key`, `trace`, `delay` or `run_at`.
    pub field: &'static str,
    /// What is wrong, with the limit it broke.
    pub text: String,
}

impl Problem {
    fn list(problems: &[Problem]) -> String {
        problems
            .iter()
            .map(|p| format!("{}: {}", p.field, p.text))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// When a job should run.
#[derive(Clone, Copy, Debug)]
enum When {
    Now,
    After(Duration),
    At(DateTime<Utc>),
}

/// A job to enqueue: a task, its payload, and options.
///
/// Building one never fails: every option is checked once, when the job is enqueued (or by
/// [`NewJob::validate`]), and a job with problems is refused with all of them listed in one
/// [`Error::Invalid`].
///
/// ```
/// use std::time::Duration;
/// use warren_client::NewJob;
///
/// let job = NewJob::new("report.build", &serde_json::json!({ "month": "2026-11" }))
///     .queue("reports")
///     .delay(Duration::from_secs(3600))
///     .idempotency_key("report-2026-11");
/// assert!(job.validate().is_ok());
///
/// let bad = NewJob::new("report build", &1).max_attempts(0);
/// let err = bad.validate().unwrap_err().to_string();
/// assert!(err.contains("task:") && err.contains("max_attempts:"), "{err}");
/// ```
#[derive(Clone, Debug)]
pub struct NewJob {
    task: String,
    /// The payload as JSON, or why it could not be serialised.
    payload: Result<Box<RawValue>, String>,
    queue: Option<String>,
    id: Option<JobId>,
    max_attempts: Option<u32>,
    timeout: Option<Duration>,
    idempotency_key: Option<String>,
    trace: Option<(String, Option<String>)>,
    when: When,
}

/// A job whose every option was checked: what the publish and the schedule are made from.
#[derive(Debug)]
struct Checked {
    queue: QueueName,
    message: JobMessage,
    run_at: Option<DateTime<Utc>>,
}

impl NewJob {
    /// A job for `task` with `payload` serialised as JSON, on the default queue.
    ///
    /// The payload must be JSON that workers can read, checked exactly as they read it
    /// ([`check_payload`]): a `RawValue` holding `1e400`, a lone surrogate escape or arrays
    /// nested more than 127 deep is refused at enqueue instead of dying at the worker. So is
    /// a string holding U+0000 ([`check_storable`]), which PostgreSQL cannot store.
    pub fn new(task: &str, payload: &impl Serialize) -> Self {
        Self {
            task: task.to_owned(),
            payload: serde_json::value::to_raw_value(payload).map_err(|e| e.to_string()),
            queue: None,
            id: None,
            max_attempts: None,
            timeout: None,
            idempotency_key: None,
            trace: None,
            when: When::Now,
        }
    }

    /// A job of a typed task: named [`Task::NAME`], on [`Task::QUEUE`], with the value itself
    /// as the payload.
    pub fn of<T: Task>(task: &T) -> Self {
        Self::new(T::NAME, task).queue(T::QUEUE)
    }

    /// Run no earlier than `delay` from now. Delayed jobs wait in Postgres (see
    /// [`Client::with_store`]) and are published by a worker's promoter when due. A delay
    /// reaching past 2200-01-01 is refused.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.when = When::After(delay);
        self
    }

    /// Run no earlier than `at`. A time after 2200-01-01 is refused: the message contract
    /// cannot carry it, so it is a mistake (seconds taken for milliseconds, say), not a plan.
    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.when = When::At(at);
        self
    }

    /// The queue to publish to; the default queue (or the task's) when unset.
    pub fn queue(mut self, queue: &str) -> Self {
        self.queue = Some(queue.to_owned());
        self
    }

    /// Use this id instead of a fresh one (for callers that must know it beforehand).
    pub fn id(mut self, id: JobId) -> Self {
        self.id = Some(id);
        self
    }

    /// Attempts in total, 1 to 1,000; the task's policy decides when unset.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    /// Per-attempt timeout, 1 ms to 24 days; the task's default when unset.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// At most one live or succeeded job per key: 1 to 255 bytes, no control characters.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// W3C trace context of the caller, so the job's spans join the caller's trace. Without
    /// it the job gets a fresh, sampled trace context at enqueue, so that every job has a
    /// trace id its logs and spans carry.
    pub fn trace(mut self, traceparent: &str, tracestate: Option<&str>) -> Self {
        self.trace = Some((traceparent.to_owned(), tracestate.map(str::to_owned)));
        self
    }

    /// Checks every option; the job is enqueued exactly when this is `Ok`.
    pub fn validate(&self) -> Result<(), Error> {
        self.clone().check().map(drop)
    }

    fn check(self) -> Result<Checked, Error> {
        let mut problems = Problems::default();
        let task = problems.task(&self.task);
        let payload = problems.payload(self.payload);
        let queue = problems.queue(self.queue.as_deref());
        problems.options(
            self.max_attempts,
            self.timeout,
            self.idempotency_key.as_deref(),
        );
        if let Some((tp, _)) = &self.trace {
            problems.trace(tp);
        }
        let run_at = problems.when(self.when);
        let (Some(task), Some(payload), Some(queue), true) =
            (task, payload, queue, problems.0.is_empty())
        else {
            return Err(Error::Invalid {
                task: self.task,
                problems: problems.0,
            });
        };
        let id = self.id.unwrap_or_default();
        let (traceparent, tracestate) = match self.trace {
            Some((tp, ts)) => (tp, ts),
            None => (fresh_trace().to_string(), None),
        };
        let message = JobMessage {
            id,
            task,
            attempt: 1,
            max_attempts: self.max_attempts,
            timeout_ms: self.timeout.map(|t| t.as_millis() as u64),
            idempotency_key: self.idempotency_key,
            enqueued_at: Utc::now(),
            traceparent: Some(traceparent),
            tracestate,
            has_row: false,
            limit_token: None,
            payload,
        };
        Ok(Checked {
            queue,
            message,
            run_at,
        })
    }
}

/// A fresh trace context for a job enqueued without one: random ids from the thread's
/// generator (a CSPRNG seeded by the operating system), with no system call per job.
fn fresh_trace() -> TraceParent {
    let mut bytes = [0u8; 24];
    rand::fill(&mut bytes);
    TraceParent::from_random(bytes)
}

/// The problems found while checking one job; each check returns its value when it is good.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, field: &'static str, text: String) {
        self.0.push(Problem { field, text });
    }

    fn task(&mut self, task: &str) -> Option<TaskName> {
        TaskName::new(task)
            .map_err(|e| self.add("task", e.reason.to_string()))
            .ok()
    }

    fn payload(&mut self, payload: Result<Box<RawValue>, String>) -> Option<Box<RawValue>> {
        let text = match payload {
            Err(e) => format!("not serialisable to JSON: {e}"),
            Ok(p) => match check_payload(p.get()) {
                Ok(()) => match check_storable(p.get()) {
                    Ok(()) => return Some(p),
                    Err(e) => format!("JSON that PostgreSQL cannot store: {e}"),
                },
                Err(e) => format!("JSON that no worker can read: {e}"),
            },
        };
        self.add("payload", text);
        None
    }

    fn queue(&mut self, queue: Option<&str>) -> Option<QueueName> {
        QueueName::new(queue.unwrap_or(DEFAULT_QUEUE))
            .map_err(|e| self.add("queue", e.to_string()))
            .ok()
    }

    fn options(&mut self, max_attempts: Option<u32>, timeout: Option<Duration>, key: Option<&str>) {
        if let Some(n) = max_attempts
            && (n == 0 || n > MAX_ATTEMPTS_LIMIT)
        {
            self.add(
                "max_attempts",
                format!("must be 1 to {MAX_ATTEMPTS_LIMIT}, got {n}"),
            );
        }
        if let Some(t) = timeout
            && (t.is_zero() || t > Duration::from_millis(i32::MAX as u64))
        {
            self.add(
                "timeout",
                format!("must be between 1ms and 24 days, got {t:?}"),
            );
        }
        match key {
            Some(k) if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY_LEN => self.add(
                "idempotency_key",
                format!(
                    "must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes, got {}",
                    k.len()
                ),
            ),
            Some(k) if k.chars().any(char::is_control) => self.add(
                "idempotency_key",
                "must not contain control characters".to_owned(),
            ),
            _ => {}
        }
    }

    fn trace(&mut self, traceparent: &str) {
        if !is_traceparent(traceparent) {
            self.add(
                "trace",
                format!("`{traceparent}` is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)"),
            );
        }
    }

    /// When the job is due, if later than now; the message contract ends at 2200-01-01.
    fn when(&mut self, when: When) -> Option<DateTime<Utc>> {
        match when {
            When::Now => None,
            When::After(delay) => {
                let at = chrono::Duration::from_std(delay)
                    .ok()
                    .and_then(|d| Utc::now().checked_add_signed(d))
                    .filter(|at| at.timestamp_millis() <= MAX_TIME_MS);
                if at.is_none() {
                    self.add("delay", format!("{delay:?} reaches past 2200-01-01, the latest time a job can be scheduled; use a shorter delay"));
                }
                at
            }
            When::At(at) => {
                if at.timestamp_millis() > MAX_TIME_MS {
                    self.add(
                        "run_at",
                        format!("{at} is after 2200-01-01, the latest time a job can be scheduled"),
                    );
                }
                Some(at)
            }
        }
    }
}

/// Anything that can be enqueued: a [`NewJob`], or a value of a typed [`Task`].
pub trait IntoJob {
    /// The job to enqueue. Nothing is checked here; the options are checked at enqueue.
    fn into_job(self) -> NewJob;
}

impl IntoJob for NewJob {
    fn into_job(self) -> NewJob {
        self
    }
}

impl<T: Task> IntoJob for T {
    fn into_job(self) -> NewJob {
        NewJob::of(&self)
    }
}

impl Checked {
    fn is_delayed(&self, now: DateTime<Utc>) -> bool {
        self.run_at.is_some_and(|at| at > now)
    }

    /// The row of this job as a scheduled job due at `run_at` (or now).
    fn into_scheduled(self) -> ScheduledJob {
        let run_at = self.run_at.unwrap_or(self.message.enqueued_at);
        ScheduledJob::from_message(self.message, &self.queue, run_at)
    }
}

/// Enqueues jobs. Cheap to clone; clones share one AMQP channel.
///
/// Immediate jobs are published to RabbitMQ and acknowledged by its confirm. Delayed jobs
/// wait in Postgres until a worker's promoter publishes them: with [`Client::with_store`] the
/// client writes their rows itself; without, it sends them through the intake queue and a
/// worker writes them.
///
/// ```no_run
/// use std::time::Duration;
///
/// use serde::{Deserialize, Serialize};
/// use warren_client::{BrokerConfig, Client, NewJob, Store, StoreConfig, Task};
///
/// #[derive(Serialize, Deserialize)]
/// struct EmailSend {
///     to: String,
/// }
///
/// impl Task for EmailSend {
///     const NAME: &'static str = "email.send";
///     const QUEUE: &'static str = "emails";
///     type Output = ();
/// }
///
/// # async fn run() -> Result<(), warren_client::Error> {
/// // URLs come from the caller's own configuration; a library never reads the environment.
/// let store = Store::connect(&StoreConfig::new("postgres://localhost/warren")).await?;
/// let client = Client::connect(BrokerConfig::new("amqp://localhost:5672"))
///     .await?
///     .with_store(store);
///
/// // A typed task: the value is the payload, its type names the task and the queue.
/// let now = client.enqueue(EmailSend { to: "ada@example.com".into() }).await?;
///
/// // A string-named job, due in an hour; the id returns once its row is committed.
/// let digest = NewJob::new("email.digest", &serde_json::json!({ "user": 42 }))
///     .queue("emails")
///     .delay(Duration::from_secs(3600))
///     .idempotency_key("digest-42-2026-12");
/// let later = client.enqueue(digest).await?;
/// println!("enqueued {now} and {later}");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    broker: Broker,
    publisher: Publisher,
    store: Option<Store>,
    /// Whether keyed jobs go through the store; see [`Client::keyed_through_store`].
    keyed_through_store: bool,
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
            keyed_through_store: false,
        })
    }

    /// Gives the client database access, for delayed jobs: they are written as `scheduled`
    /// rows, which a worker's promoter publishes when due.
    pub fn with_store(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }

    /// With a store, writes every job that carries an idempotency key as a `scheduled` row due
    /// now (a promoter publishes it), instead of publishing it at once. A key that another
    /// live or succeeded job holds then returns that job's id at enqueue, and no second job
    /// exists; on the hot path the duplicate would be published and only recognised by the
    /// worker (recorded `cancelled`, `duplicate_of` the holder). It costs keyed jobs one
    /// insert and a promoter's hop; jobs without a key are not affected. No effect without a
    /// store. The HTTP producer turns it on, since its callers cannot see the worker's verdict.
    pub fn keyed_through_store(mut self, on: bool) -> Self {
        self.keyed_through_store = on;
        self
    }

    /// Whether this job waits in Postgres rather than being published now.
    fn goes_to_rows(&self, job: &Checked, now: DateTime<Utc>) -> bool {
        job.is_delayed(now)
            || (self.keyed_through_store
                && self.store.is_some()
                && job.message.idempotency_key.is_some())
    }

    /// The connection this client publishes on, e.g. to read queue depths or to share it
    /// with a worker in the same process.
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
    /// it to the intake queue, and a worker writes the row before acking it. Either way its
    /// queue must exist in RabbitMQ now, as an immediate job's must: otherwise the job is
    /// refused as unroutable ([`warren_broker::Error::Unroutable`]) rather than kept for a
    /// queue no promoter can publish to.
    ///
    /// Idempotency keys: when a client with a store writes a delayed job whose key another
    /// live or succeeded job holds, nothing is added and *that* job's id is returned. To tell
    /// such a duplicate from a new job, give the job its id with [`NewJob::id`]: a different
    /// id coming back names the job holding the key. (An immediate job, or a delayed one sent
    /// through the intake queue, is checked when a worker takes it: it is recorded as a
    /// duplicate then, and not run.)
    ///
    /// ```no_run
    /// # use serde::{Deserialize, Serialize};
    /// # use warren_client::{Client, NewJob};
    /// # use warren_core::Task;
    /// #[derive(Serialize, Deserialize)]
    /// struct EmailSend { to: String }
    /// impl Task for EmailSend {
    ///     const NAME: &'static str = "email.send";
    ///     type Output = ();
    /// }
    /// # async fn demo(client: Client) -> Result<(), warren_client::Error> {
    /// let id = client.enqueue(EmailSend { to: "a@example.com".into() }).await?;
    /// let later = NewJob::of(&EmailSend { to: "b@example.com".into() })
    ///     .delay(std::time::Duration::from_secs(60));
    /// client.enqueue(later).await?;
    /// # Ok(()) }
    /// ```
    pub async fn enqueue(&self, job: impl IntoJob) -> Result<JobId, Error> {
        let job = job.into_job().check()?;
        if self.goes_to_rows(&job, Utc::now()) {
            return self.enqueue_delayed(job).await;
        }
        let raw = job.message.encode();
        self.publisher.publish(job.queue.as_str(), &raw).await?;
        Ok(job.message.id)
    }

    /// Refuses a job kept in Postgres first (delayed, keyed, or in a transaction) whose queue
    /// RabbitMQ does not have, as its publish would be refused as unroutable if it were sent
    /// now. Otherwise it is accepted, and then waits `scheduled` forever while the promoter
    /// fails to publish it. The publisher remembers the queues it has seen, so each is asked
    /// about once (and again after a message to a deleted queue comes back).
    async fn check_queue(&self, job: &Checked) -> Result<(), Error> {
        if self.publisher.has_queue(job.queue.as_str()).await? {
            Ok(())
        } else {
            Err(self.unroutable(job))
        }
    }

    /// The error of a job whose queue RabbitMQ does not have, as a publish would say it.
    fn unroutable(&self, job: &Checked) -> Error {
        Error::Broker(warren_broker::Error::Unroutable {
            job: job.message.id.to_string(),
            queue: job.queue.to_string(),
            exchange: self.broker.topology().work_exchange(),
        })
    }

    async fn enqueue_delayed(&self, job: Checked) -> Result<JobId, Error> {
        self.check_queue(&job).await?;
        if let Some(store) = &self.store {
            let row = job.into_scheduled();
            let ids = store.schedule(std::slice::from_ref(&row)).await?;
            return Ok(ids.first().copied().unwrap_or(row.id));
        }
        let id = job.message.id;
        let intake = IntakeMessage {
            run_at: job.run_at.unwrap_or_else(Utc::now),
            job: job.message,
            queue: job.queue,
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
        job: impl IntoJob,
    ) -> Result<JobId, Error> {
        let job = job.into_job().check()?;
        self.check_queue(&job).await?;
        let row = job.into_scheduled();
        let ids = warren_store::schedule_in(tx, std::slice::from_ref(&row)).await?;
        Ok(ids.first().copied().unwrap_or(row.id))
    }

    /// Enqueues many jobs: immediate ones published with pipelined confirms, delayed ones
    /// written to Postgres in one statement. The result at index `i` is the outcome of the
    /// `i`-th job: its id once confirmed or committed (for a delayed duplicate, the id of the
    /// job holding its idempotency key, as with [`Client::enqueue`]), or why it was not
    /// enqueued.
    pub async fn enqueue_many<J: IntoJob>(
        &self,
        jobs: impl IntoIterator<Item = J>,
    ) -> Vec<Result<JobId, Error>> {
        let now = Utc::now();
        let mut results: Vec<Option<Result<JobId, Error>>> = Vec::new();
        let mut scheduled: Vec<(usize, ScheduledJob)> = Vec::new();
        let mut intake: Vec<(usize, Checked)> = Vec::new();
        let mut immediate: Vec<(usize, QueueName, JobId, RawMessage)> = Vec::new();
        let mut to_rows: Vec<(usize, Checked)> = Vec::new();
        for (i, job) in jobs.into_iter().enumerate() {
            results.push(None);
            match job.into_job().check() {
                Err(e) => results[i] = Some(Err(e)),
                Ok(job) if self.goes_to_rows(&job, now) && self.store.is_some() => {
                    to_rows.push((i, job));
                }
                Ok(job) if job.is_delayed(now) => intake.push((i, job)),
                Ok(job) => {
                    let raw = job.message.encode();
                    immediate.push((i, job.queue, job.message.id, raw));
                }
            }
        }
        // Checked after the loop, which holds the caller's iterator: awaiting inside it would
        // make this future's `Send` depend on that iterator's closures. The publisher
        // remembers a queue found missing, so its other jobs are refused without asking again.
        for (i, job) in to_rows {
            match self.check_queue(&job).await {
                Ok(()) => scheduled.push((i, job.into_scheduled())),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        if let Some(store) = &self.store
            && !scheduled.is_empty()
        {
            let rows: Vec<ScheduledJob> = scheduled.iter().map(|(_, r)| r.clone()).collect();
            match store.schedule(&rows).await {
                Ok(ids) => {
                    for (n, (i, row)) in scheduled.into_iter().enumerate() {
                        results[i] = Some(Ok(ids.get(n).copied().unwrap_or(row.id)));
                    }
                }
                Err(e) => {
                    // One statement wrote them all, so one failure answers for each.
                    let source = Arc::new(e);
                    for (i, row) in scheduled {
                        let source = source.clone();
                        results[i] = Some(Err(Error::Schedule {
                            job: row.id,
                            source,
                        }));
                    }
                }
            }
        }
        for (i, job) in intake {
            results[i] = Some(self.enqueue_delayed(job).await);
        }
        let requests: Vec<PublishRequest<'_>> = immediate
            .iter()
            .map(|(_, queue, _, raw)| PublishRequest {
                queue: queue.as_str(),
                message: raw,
            })
            .collect();
        let outcomes = self.publisher.publish_many(&requests).await;
        for ((i, _, id, _), outcome) in immediate.iter().zip(outcomes) {
            results[*i] = Some(outcome.map(|()| *id).map_err(Error::from));
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| unreachable!("every job is refused, scheduled or published"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(job: NewJob) -> Vec<&'static str> {
        match job.check() {
            Err(Error::Invalid { problems, .. }) => problems.iter().map(|p| p.field).collect(),
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn every_problem_is_reported_at_once_with_the_task_named() {
        let job = NewJob::new("email.send", &serde_json::json!({"to": "x"}))
            .max_attempts(0)
            .trace("nope", None)
            .idempotency_key("")
            .queue("bad queue");
        let err = job.clone().check().unwrap_err().to_string();
        assert!(
            err.contains("email.send") && err.contains("max_attempts: must be 1"),
            "{err}"
        );
        assert_eq!(
            problems(job),
            ["queue", "max_attempts", "idempotency_key", "trace"]
        );
        let checked = NewJob::new("email.send", &1)
            .max_attempts(3)
            .check()
            .unwrap();
        assert_eq!(checked.queue.as_str(), DEFAULT_QUEUE);
        assert_eq!(checked.message.attempt, 1);
        assert_eq!(checked.message.max_attempts, Some(3));
    }

    #[test]
    fn payloads_no_worker_can_read_are_refused_with_the_spot() {
        let deep = format!("{}{}", "[".repeat(60_000), "]".repeat(60_000));
        for (text, spot) in [
            (r#"{"n":1e400}"#.to_owned(), "line 1, column 10"),
            (r#""\ud800""#.to_owned(), "line 1, column 8"),
            (deep, "line 1, column 128"),
        ] {
            let raw = RawValue::from_string(text).unwrap();
            let err = NewJob::new("t", &raw).check().unwrap_err().to_string();
            assert!(
                err.contains("no worker can read") && err.contains(spot),
                "{err}"
            );
        }
        assert!(
            NewJob::new("t", &RawValue::from_string("[1e300]".into()).unwrap())
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn a_payload_postgres_cannot_store_is_refused_with_the_spot() {
        // serde_json writes a NUL in a string as \u0000, which jsonb refuses: the job would
        // have failed at its row's insert (delayed, keyed), at every retry and at its record.
        let err = NewJob::new("t", &serde_json::json!({"name": "a\u{0}b"}))
            .delay(Duration::from_secs(5))
            .check()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("PostgreSQL cannot store") && err.contains("line 1, column 11"),
            "{err}"
        );
        assert_eq!(
            problems(NewJob::new("t", &serde_json::json!(["a\u{0}"]))),
            ["payload"]
        );
    }

    #[test]
    fn delays_that_overflow_are_errors_not_panics() {
        let job = NewJob::new("t", &1);
        let err = job
            .clone()
            .delay(Duration::from_secs(100_000_000 * 86_400))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("reaches past 2200-01-01"), "{err}");
        assert_eq!(problems(job.clone().delay(Duration::MAX)), ["delay"]);
        assert_eq!(
            problems(job.clone().run_at(DateTime::<Utc>::MAX_UTC)),
            ["run_at"]
        );
        let soon = job.delay(Duration::from_secs(60)).check().unwrap();
        assert!(soon.is_delayed(Utc::now()));
    }

    #[test]
    fn keys_with_control_characters_are_refused_before_any_io() {
        assert_eq!(
            problems(NewJob::new("t", &1).idempotency_key("a\0b")),
            ["idempotency_key"]
        );
        assert_eq!(problems(NewJob::new("no spaces", &1)), ["task"]);
    }

    #[derive(Serialize, serde::Deserialize)]
    struct EmailSend {
        to: String,
    }

    impl Task for EmailSend {
        const NAME: &'static str = "email.send";
        const QUEUE: &'static str = "emails";
        type Output = ();
    }

    #[test]
    fn a_typed_task_names_its_job_and_queue() {
        let checked = EmailSend {
            to: "a@example.com".into(),
        }
        .into_job()
        .check()
        .unwrap();
        assert_eq!(checked.message.task.as_str(), "email.send");
        assert_eq!(checked.queue.as_str(), "emails");
        assert_eq!(checked.message.payload.get(), r#"{"to":"a@example.com"}"#);
    }
}
