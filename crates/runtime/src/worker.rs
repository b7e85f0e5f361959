//! The worker: its configuration, the builder that collects handlers, and `run`, which only
//! starts the loops (each in a module of its own), waits for a stop, and hands over to the
//! shutdown sequence in `shutdown.rs`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, Notify, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warren_broker::{Broker, BrokerConfig, Consumer, Publisher};
use warren_core::{JobError, QueueName, Task, TaskName, TraceParent};
use warren_store::{Recorder, RecorderConfig, Store, StoreConfig, WorkerInfo};

use crate::consumer::consume_loop;
use crate::control::{PausedQueues, notification_loop};
use crate::executor::{Cancels, Counters, Executor};
use crate::heartbeat::heartbeat_loop;
use crate::limits::Limiter;
use crate::registry::{Registry, TaskOptions};
use crate::shutdown::{Background, Running};
use crate::supervise::{Fatal, Supervised};
use crate::{Cleaner, Error, Health, JobContext, Promoter, PromoterConfig, RetentionConfig};

/// How a worker runs. Plain data: the binary fills it from flags and environment.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Unique per process; shown in the workers table and in every job row it writes.
    pub worker_id: String,
    /// The Warren queues to consume, at least one; each is declared at start.
    pub queues: Vec<QueueName>,
    /// Handlers running at once.
    pub concurrency: usize,
    /// Unacked deliveries per queue. At least `concurrency`, so a finished job's slot is
    /// refilled from local memory while its ack travels.
    pub prefetch: u16,
    /// Time allowed after a shutdown signal for in-flight jobs to finish. The whole shutdown
    /// fits in it: handlers are cancelled a little before it ends, to leave time to close.
    pub shutdown_grace: Duration,
    /// Per-attempt timeout for tasks registered without one.
    pub default_timeout: Duration,
    /// Largest message body accepted; larger ones are recorded dead as bad input.
    pub max_body_bytes: usize,
    /// RabbitMQ's `consumer_timeout` (`None`: the broker has none). A delivery unacked for
    /// longer is taken back and redelivered, so every job timeout must stay below it minus a
    /// margin: `build` refuses a default or task timeout that does not, and a message asking
    /// for a longer one is recorded dead as bad input.
    pub broker_consumer_timeout: Option<Duration>,
    /// How often the worker's row is updated; `warren workers` shows how long ago it last was.
    pub heartbeat_interval: Duration,
    /// Batching of outcome writes.
    pub recorder: RecorderConfig,
    /// Run a promoter in this process (`None`: another process does it).
    pub promoter: Option<PromoterConfig>,
    /// Take part in exporting the fleet-wide queue gauges (one worker at a time does), every
    /// this often; `None`: never. Only worth it with a metrics recorder installed.
    pub fleet_gauges: Option<Duration>,
    /// Updated as the worker starts, beats and stops; read it to answer health checks.
    pub health: Health,
    /// How long finished jobs are kept; one worker of the fleet at a time deletes older ones.
    pub retention: RetentionConfig,
}

impl WorkerConfig {
    /// A config with the defaults: 64 handlers at once, a prefetch of 128, 30 s of shutdown
    /// grace, a 5 min job timeout, 1 MiB bodies, RabbitMQ's default 30 min consumer
    /// timeout, 5 s heartbeats, a promoter in this process and the default
    /// [`RetentionConfig`]. Checked by
    /// [`WorkerBuilder::build`].
    pub fn new(worker_id: impl Into<String>, queues: Vec<QueueName>) -> Self {
        Self {
            worker_id: worker_id.into(),
            queues,
            concurrency: 64,
            prefetch: 128,
            shutdown_grace: Duration::from_secs(30),
            default_timeout: Duration::from_secs(300),
            max_body_bytes: 1 << 20,
            // RabbitMQ's default.
            broker_consumer_timeout: Some(Duration::from_secs(30 * 60)),
            heartbeat_interval: Duration::from_secs(5),
            recorder: RecorderConfig::default(),
            promoter: Some(PromoterConfig::default()),
            fleet_gauges: None,
            health: Health::default(),
            retention: RetentionConfig::default(),
        }
    }

    /// The longest attempt timeout this worker accepts: the broker's consumer timeout minus a
    /// margin (the larger of a minute and 5% of it, at most half of it); `None` without one.
    pub fn max_job_timeout(&self) -> Option<Duration> {
        crate::broker_timeout::max_job_timeout(self.broker_consumer_timeout)
    }

    fn validate(&self, registry: &Registry) -> Result<(), Error> {
        let fail = |msg: &str| Err(Error::Config(msg.to_owned()));
        if self.queues.is_empty() {
            return fail("no queues to consume: give at least one queue");
        }
        if self.concurrency == 0 {
            return fail("concurrency must be at least 1");
        }
        if self.prefetch == 0 {
            return fail("prefetch must be at least 1");
        }
        if self.default_timeout.is_zero() {
            return fail("the default job timeout must be more than zero");
        }
        if self.shutdown_grace < Duration::from_millis(100) {
            return fail("the shutdown grace period must be at least 100ms");
        }
        self.retention.validate().map_err(Error::Config)?;
        crate::broker_timeout::check(
            self.broker_consumer_timeout,
            self.default_timeout,
            registry.timeouts(),
        )
        .map_err(Error::Config)?;
        Ok(())
    }
}

/// Totals of one worker run, returned when it stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Attempts that succeeded.
    pub succeeded: u64,
    /// Attempts that failed and were scheduled to run again.
    pub retried: u64,
    /// Jobs recorded dead: retries exhausted, a permanent error, or bad input.
    pub dead: u64,
    /// Redeliveries of attempts that had already ended, acked without running.
    pub skipped: u64,
    /// Outcomes that could not be committed; their deliveries were requeued.
    pub unrecorded: u64,
    /// Attempts still running when the grace period ended; the broker redelivers them.
    pub abandoned: u64,
    /// Attempts that ran although their job had already moved past them; the fence
    /// discarded their outcomes (see the job's `duplicate_runs`).
    pub duplicates: u64,
}

/// A handler of the typed task `T`: any `async fn(JobContext, T) -> Result<T::Output,
/// JobError>` (or closure returning such a future).
pub trait Handler<T: Task>: Send + Sync + 'static {
    /// The attempt the handler runs, from start to outcome.
    type Future: Future<Output = Result<T::Output, JobError>> + Send + 'static;
    /// Starts one attempt of `task`; called once per delivery that reaches the handler.
    fn call(&self, ctx: JobContext, task: T) -> Self::Future;
}

impl<T, F, Fut> Handler<T> for F
where
    T: Task,
    F: Fn(JobContext, T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T::Output, JobError>> + Send + 'static,
{
    type Future = Fut;
    fn call(&self, ctx: JobContext, task: T) -> Fut {
        self(ctx, task)
    }
}

/// Collects handlers, then builds a [`Worker`].
#[derive(Default)]
pub struct WorkerBuilder {
    registry: Registry,
    errors: Vec<String>,
    job_span: Option<JobSpanHook>,
    schedules: Vec<warren_store::NewSchedule>,
}

/// Called as each job's span opens, with the span and the trace context the job continues.
/// The worker binary uses it to make the span a child of the producer's span in
/// OpenTelemetry, which keeps this crate free of an exporter it does not need.
pub type JobSpanHook = Arc<dyn Fn(&tracing::Span, &TraceParent) + Send + Sync>;

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("tasks", &self.registry.names())
            .finish()
    }
}

impl WorkerBuilder {
    /// Calls `hook` with every job's span as it opens (see [`JobSpanHook`]); one hook, the
    /// last set.
    pub fn on_job_span(
        mut self,
        hook: impl Fn(&tracing::Span, &TraceParent) + Send + Sync + 'static,
    ) -> Self {
        self.job_span = Some(Arc::new(hook));
        self
    }

    /// Declares a periodic job, saved to Postgres when the worker starts (see
    /// [`PeriodicJob`](crate::PeriodicJob)). A bad cron expression, time zone or task name,
    /// or a name declared twice, is an [`Error::Config`] from [`build`](Self::build).
    ///
    /// ```no_run
    /// use warren_runtime::{PeriodicJob, Worker};
    ///
    /// let builder = Worker::builder().schedule(
    ///     PeriodicJob::new("report.hourly", "0 0 * * * *", "report.build")
    ///         .timezone("Europe/Berlin"),
    /// );
    /// ```
    pub fn schedule(mut self, schedule: crate::PeriodicJob) -> Self {
        match schedule.validate() {
            Ok(s) if self.schedules.iter().any(|d| d.name == s.name) => {
                self.errors
                    .push(format!("schedule `{}` is declared twice", s.name));
            }
            Ok(s) => self.schedules.push(s),
            Err(e) => self.errors.push(e),
        }
        self
    }

    /// Registers a handler with the default options.
    pub fn register<T, R, F, Fut>(self, task: &str, handler: F) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(JobContext, T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, JobError>> + Send + 'static,
    {
        self.register_with(task, TaskOptions::default(), handler)
    }

    /// Registers a handler with its own timeout and retry policy.
    pub fn register_with<T, R, F, Fut>(
        mut self,
        task: &str,
        options: TaskOptions,
        handler: F,
    ) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(JobContext, T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, JobError>> + Send + 'static,
    {
        let name = match TaskName::new(task) {
            Ok(name) => name,
            Err(e) => {
                self.errors.push(e.to_string());
                return self;
            }
        };
        if let Err(e) = options.retry.validate() {
            self.errors.push(format!("task `{task}`: {e}"));
        }
        if !self.registry.insert(name, options, handler) {
            self.errors
                .push(format!("task `{task}` is registered twice"));
        }
        self
    }

    /// Registers the handler of a typed task, with the task's own timeout and retry policy.
    ///
    /// ```no_run
    /// # use serde::{Deserialize, Serialize};
    /// use warren_runtime::{JobContext, JobError, Task, Worker};
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct EmailSend { to: String }
    ///
    /// impl Task for EmailSend {
    ///     const NAME: &'static str = "email.send";
    ///     type Output = String;
    /// }
    ///
    /// async fn send(_ctx: JobContext, job: EmailSend) -> Result<String, JobError> {
    ///     Ok(format!("sent to {}", job.to))
    /// }
    ///
    /// let builder = Worker::builder().task::<EmailSend>(send);
    /// ```
    pub fn task<T: Task>(self, handler: impl Handler<T>) -> Self {
        let options = TaskOptions {
            timeout: T::timeout(),
            retry: T::retry_policy(),
        };
        self.register_with(T::NAME, options, move |ctx, task: T| {
            handler.call(ctx, task)
        })
    }

    /// Builds the worker, connects to RabbitMQ and Postgres, and runs until `shutdown`
    /// completes: the one call an application needs to run a worker. See [`Worker::run`].
    pub async fn serve(
        self,
        config: WorkerConfig,
        broker: BrokerConfig,
        store: StoreConfig,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<WorkerStats, Error> {
        let worker = self.build(config)?;
        let store = Store::connect(&store).await?;
        store.check_schema().await?;
        let broker = Broker::connect(broker).await?;
        let stats = worker.run(broker, store.clone(), shutdown).await;
        store.close().await;
        stats
    }

    /// Checks the registrations and the config and makes the worker, without connecting.
    /// Every mistake (a bad task name, a task registered twice, an invalid retry policy, no
    /// handlers, a timeout the broker would not allow) is an [`Error::Config`].
    pub fn build(self, config: WorkerConfig) -> Result<Worker, Error> {
        if let Some(e) = self.errors.first() {
            return Err(Error::Config(e.clone()));
        }
        if self.registry.is_empty() {
            return Err(Error::Config("no handlers registered".to_owned()));
        }
        config.validate(&self.registry)?;
        Ok(Worker {
            registry: self.registry,
            config,
            job_span: self.job_span,
            schedules: self.schedules,
        })
    }
}

/// A configured worker, ready to run.
///
/// Register handlers on [`Worker::builder`], then either
/// [`serve`](WorkerBuilder::serve) (connect and run in one call) or
/// [`build`](WorkerBuilder::build) and [`run`](Worker::run) on connections of your own.
///
/// ```no_run
/// use std::time::Duration;
///
/// use serde::{Deserialize, Serialize};
/// use warren_runtime::{
///     BrokerConfig, JobContext, JobError, QueueName, StoreConfig, Task, Worker, WorkerConfig,
/// };
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
///
///     fn timeout() -> Option<Duration> {
///         Some(Duration::from_secs(30))
///     }
/// }
///
/// async fn send(ctx: JobContext, job: EmailSend) -> Result<(), JobError> {
///     // A permanent error ends the job at once; any other error is retried.
///     if !job.to.contains('@') {
///         return Err(JobError::permanent(format!("{} is no address", job.to)));
///     }
///     println!("job {} (attempt {}): mail to {}", ctx.id, ctx.attempt, job.to);
///     Ok(())
/// }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config = WorkerConfig::new("mailer-1", vec![QueueName::new(EmailSend::QUEUE)?]);
/// let stats = Worker::builder()
///     .task::<EmailSend>(send)
///     .serve(
///         config,
///         BrokerConfig::new("amqp://localhost:5672"),
///         StoreConfig::new("postgres://localhost/warren"),
///         // Any future: here Ctrl-C; a test might use a channel or a CancellationToken.
///         async {
///             let _ = tokio::signal::ctrl_c().await;
///         },
///     )
///     .await?;
/// println!("stopped after {} jobs succeeded", stats.succeeded);
/// # Ok(())
/// # }
/// ```
pub struct Worker {
    registry: Registry,
    config: WorkerConfig,
    job_span: Option<JobSpanHook>,
    schedules: Vec<warren_store::NewSchedule>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("config", &self.config)
            .field("tasks", &self.registry.names())
            .finish()
    }
}

impl Worker {
    /// An empty builder; register at least one handler before building.
    pub fn builder() -> WorkerBuilder {
        WorkerBuilder::default()
    }

    /// Runs until `shutdown` completes, then shuts down gracefully and returns totals. A
    /// `shutdown` that completes while the worker is still starting ends the start at once.
    /// Returns early with an error if the broker or database fails for good, or a
    /// background task panics.
    ///
    /// `shutdown` is any future: `tokio::signal::ctrl_c()`, a channel, or
    /// `CancellationToken::cancelled_owned()`, as an embedding application prefers.
    pub async fn run(
        self,
        broker: Broker,
        store: Store,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<WorkerStats, Error> {
        tokio::pin!(shutdown);
        let (fatal, mut failures) = Fatal::channel();
        let running = tokio::select! {
            started = self.start(broker, store, fatal) => started?,
            () = &mut shutdown => {
                tracing::info!("stopped while starting");
                return Ok(WorkerStats::default());
            }
        };
        let failure = tokio::select! {
            () = &mut shutdown => None,
            Some(e) = failures.recv() => Some(e),
        };
        let stats = running.stop().await;
        match failure {
            Some(e) => Err(e),
            None => Ok(stats),
        }
    }

    /// Declares the queues, registers the worker, and starts every loop. Publishers are
    /// opened before consumers: a publish blocked by a broker alarm during start-up must not
    /// hold up opening another channel on the publishing connection.
    async fn start(self, broker: Broker, store: Store, fatal: Fatal) -> Result<Running, Error> {
        let cfg = self.config;
        broker.declare(&cfg.queues).await?;
        store
            .register_worker(&worker_info(&cfg))
            .await
            .map_err(Error::Register)?;
        crate::scheduler::save_declared(&store, &self.schedules).await?;
        let dead_letters = broker.publisher().await?;
        let promoter_publisher = match cfg.promoter {
            Some(_) => Some(broker.publisher().await?),
            None => None,
        };
        let (recorder, recorder_task) = Recorder::spawn(store.clone(), cfg.recorder);
        // Ends by itself once the executor (its one holder) is gone, every deferral written.
        let (deferrer, _) = warren_store::Deferrer::spawn(store.clone());
        let (progress, _) = warren_store::ProgressReader::spawn(store.clone());
        let hard_stop = CancellationToken::new();
        // Read before consuming, like the pauses: no job starts past a limit set earlier.
        let limits = Arc::new(Limiter::new(
            store.clone(),
            Arc::from(cfg.worker_id.as_str()),
            cfg.heartbeat_interval,
        ));
        limits.set(store.limits().await?);
        let executor = Arc::new(Executor {
            registry: self.registry,
            job_span: self.job_span,
            recorder,
            deferrer,
            progress,
            store: store.clone(),
            dead_letters,
            worker_id: Arc::from(cfg.worker_id.as_str()),
            default_timeout: cfg.default_timeout,
            max_body: cfg.max_body_bytes,
            max_timeout: crate::broker_timeout::max_job_timeout(cfg.broker_consumer_timeout),
            hard_stop: hard_stop.clone(),
            counters: Counters::default(),
            cancels: Cancels::default(),
            limits,
        });
        // Read before consuming, so that a worker started while a queue is paused honours it.
        let paused: PausedQueues = store
            .paused_queues()
            .await?
            .into_iter()
            .map(|p| p.queue)
            .collect();
        let shared = Shared {
            slots: Arc::new(Semaphore::new(cfg.concurrency)),
            jobs: TaskTracker::new(),
            executor,
            paused: watch::Sender::new(paused),
            stop: CancellationToken::new(),
            fatal,
        };
        let (loops, consumers) = open_consumers(&cfg, &broker, &store, &shared).await?;
        let background = spawn_background(&cfg, &broker, &store, &shared, promoter_publisher);
        cfg.health.set_consuming(true);
        tracing::info!(worker = %cfg.worker_id, queues = ?cfg.queues.iter().map(ToString::to_string).collect::<Vec<_>>(), concurrency = cfg.concurrency, prefetch = cfg.prefetch, "worker running");
        Ok(Running {
            health: cfg.health,
            worker_id: cfg.worker_id,
            grace: cfg.shutdown_grace,
            broker,
            store,
            executor: shared.executor,
            recorder_task,
            jobs: shared.jobs,
            loops,
            consumers,
            background,
            stop_consuming: shared.stop,
            hard_stop,
        })
    }
}

/// What the loops of one worker share.
struct Shared {
    /// Concurrency slots: a delivery is taken only with a free one.
    slots: Arc<Semaphore>,
    jobs: TaskTracker,
    executor: Arc<Executor>,
    /// The queues an admin paused: the control loop writes it, the consume loops watch it.
    paused: watch::Sender<PausedQueues>,
    /// Cancelled to stop consuming, promoting, beating and listening.
    stop: CancellationToken,
    fatal: Fatal,
}

/// Subscribes to every work queue (and, where the promoter runs, the intake queue and the
/// dead-letter queue) and starts a consume loop for each; returns the loops and the
/// consumers, for closing.
async fn open_consumers(
    cfg: &WorkerConfig,
    broker: &Broker,
    store: &Store,
    shared: &Shared,
) -> Result<(TaskTracker, Vec<Arc<Mutex<Consumer>>>), Error> {
    let loops = TaskTracker::new();
    let mut consumers = Vec::new();
    // The intake queue is a scheduler's duty, like promotion: the same processes do both.
    // These subscribe before the work queues, so that once a job runs, start-up is done.
    if cfg.promoter.is_some() {
        let tag = format!("{}/intake", cfg.worker_id);
        let consumer = Arc::new(Mutex::new(broker.consume_intake(64, &tag).await?));
        consumers.push(consumer.clone());
        loops.spawn(crate::intake::intake_loop(
            consumer,
            store.clone(),
            shared.executor.clone(),
            shared.stop.clone(),
            shared.fatal.clone(),
        ));
        // So is reconciling the broker's dead letters with Postgres.
        let tag = format!("{}/dead", cfg.worker_id);
        let prefetch = crate::reconciler::RECONCILER_PREFETCH;
        let consumer = Arc::new(Mutex::new(
            broker.consume_dead_letters(prefetch, &tag).await?,
        ));
        consumers.push(consumer.clone());
        loops.spawn(crate::reconciler::reconcile_loop(
            consumer,
            shared.executor.clone(),
            shared.stop.clone(),
            shared.fatal.clone(),
        ));
    }
    for queue in &cfg.queues {
        let tag = format!("{}/{}", cfg.worker_id, queue);
        let prefetch = cfg.prefetch.max(1);
        let consumer = if shared.paused.borrow().contains(queue.as_str()) {
            tracing::info!(queue = %queue, "queue is paused: taking no jobs from it until it is resumed");
            broker.consume_paused(queue, prefetch, &tag).await?
        } else {
            broker.consume(queue, prefetch, &tag).await?
        };
        cfg.health
            .watch_consumer(queue.to_string(), consumer.liveness());
        let consumer = Arc::new(Mutex::new(consumer));
        consumers.push(consumer.clone());
        loops.spawn(consume_loop(
            queue.clone(),
            consumer,
            shared.slots.clone(),
            shared.jobs.clone(),
            shared.executor.clone(),
            shared.paused.subscribe(),
            shared.stop.clone(),
            shared.fatal.clone(),
        ));
    }
    loops.close();
    Ok((loops, consumers))
}

/// Starts the control (LISTEN), heartbeat and promoter tasks, each supervised.
fn spawn_background(
    cfg: &WorkerConfig,
    broker: &Broker,
    store: &Store,
    shared: &Shared,
    promoter_publisher: Option<Publisher>,
) -> Background {
    let due = Arc::new(Notify::new());
    let control = notification_loop(
        store.clone(),
        shared.executor.clone(),
        due.clone(),
        shared.paused.clone(),
        shared.stop.clone(),
    );
    let heartbeat = heartbeat_loop(
        store.clone(),
        cfg.worker_id.clone(),
        cfg.heartbeat_interval,
        shared.jobs.clone(),
        shared.executor.clone(),
        (broker.clone(), cfg.health.clone()),
        shared.stop.clone(),
    );
    let gauges = cfg.fleet_gauges.map(|every| {
        let run = crate::gauges::fleet_gauges_loop(
            store.clone(),
            broker.clone(),
            cfg.queues.clone(),
            every,
            shared.stop.clone(),
        );
        Supervised::spawn("fleet gauges", run, shared.fatal.clone())
    });
    let promoter = cfg.promoter.zip(promoter_publisher).map(|(pc, publisher)| {
        let promoter = Promoter::new(store.clone(), publisher, pc).with_wakeup(due.clone());
        let run = promoter.run(shared.stop.clone());
        Supervised::spawn("promoter", run, shared.fatal.clone())
    });
    let limits = crate::limits::keeper_loop(
        shared.executor.limits.clone(),
        cfg.heartbeat_interval,
        shared.jobs.clone(),
        shared.stop.clone(),
    );
    Background {
        limits: Supervised::spawn("limits", limits, shared.fatal.clone()),
        control: Supervised::spawn("control", control, shared.fatal.clone()),
        heartbeat: Supervised::spawn("heartbeat", heartbeat, shared.fatal.clone()),
        promoter,
        gauges,
        scheduler: cfg.promoter.map(|_| {
            let run = crate::scheduler::run(store.clone(), shared.stop.clone());
            Supervised::spawn("scheduler", run, shared.fatal.clone())
        }),
        cleaner: Supervised::spawn(
            "cleaner",
            Cleaner::new(store.clone(), cfg.retention).run(shared.stop.clone()),
            shared.fatal.clone(),
        ),
    }
}

fn worker_info(cfg: &WorkerConfig) -> WorkerInfo {
    WorkerInfo {
        id: cfg.worker_id.clone(),
        hostname: hostname(),
        pid: std::process::id(),
        queues: cfg.queues.iter().map(ToString::to_string).collect(),
        concurrency: cfg.concurrency as u32,
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}
