//! The worker: builder, run loop and shutdown sequence.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warren_broker::{Broker, Consumer};
use warren_core::{ErrorChain, JobError, QueueName, TaskName};
use warren_store::{Recorder, RecorderConfig, Store, WorkerInfo};

use crate::executor::{Cancels, Counters, Executor};
use crate::registry::{Registry, TaskOptions};
use crate::{Error, JobContext, Promoter, PromoterConfig};

/// How a worker runs. Plain data: the binary fills it from flags and environment.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Unique per process; shown in the workers table and in every job row it writes.
    pub worker_id: String,
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
    pub heartbeat_interval: Duration,
    pub recorder: RecorderConfig,
    /// Run a promoter in this process (`None`: another process does it).
    pub promoter: Option<PromoterConfig>,
}

impl WorkerConfig {
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
    pub succeeded: u64,
    pub retried: u64,
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

/// Collects handlers, then builds a [`Worker`].
#[derive(Default)]
pub struct WorkerBuilder {
    registry: Registry,
    errors: Vec<String>,
}

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("tasks", &self.registry.names())
            .finish()
    }
}

impl WorkerBuilder {
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
        })
    }
}

/// A configured worker, ready to run.
pub struct Worker {
    registry: Registry,
    config: WorkerConfig,
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
    pub fn builder() -> WorkerBuilder {
        WorkerBuilder::default()
    }

    /// Runs until `shutdown` is cancelled, then shuts down gracefully and returns totals.
    /// Returns early with an error if the broker or database fails for good.
    pub async fn run(
        self,
        broker: Broker,
        store: Store,
        shutdown: CancellationToken,
    ) -> Result<WorkerStats, Error> {
        let cfg = self.config;
        broker.declare(&cfg.queues).await?;
        let info = WorkerInfo {
            id: cfg.worker_id.clone(),
            hostname: hostname(),
            pid: std::process::id(),
            queues: cfg.queues.iter().map(ToString::to_string).collect(),
            concurrency: cfg.concurrency as u32,
        };
        store.register_worker(&info).await?;

        let (recorder, recorder_task) = Recorder::spawn(store.clone(), cfg.recorder);
        let hard_stop = CancellationToken::new();
        let executor = Arc::new(Executor {
            registry: self.registry,
            recorder,
            store: store.clone(),
            dead_letters: broker.publisher().await?,
            worker_id: Arc::from(cfg.worker_id.as_str()),
            default_timeout: cfg.default_timeout,
            max_body: cfg.max_body_bytes,
            max_timeout: crate::broker_timeout::max_job_timeout(cfg.broker_consumer_timeout),
            hard_stop: hard_stop.clone(),
            counters: Counters::default(),
            cancels: Cancels::default(),
        });

        let slots = Arc::new(Semaphore::new(cfg.concurrency));
        let jobs = TaskTracker::new();
        let loops = TaskTracker::new();
        // A consumer that fails for good stops the whole worker: better to exit and be
        // restarted by the supervisor than to run half-deaf.
        let (failed, mut lost) = tokio::sync::mpsc::channel::<String>(cfg.queues.len());
        let stop_consuming = CancellationToken::new();
        let mut consumers = Vec::new();
        for queue in &cfg.queues {
            let tag = format!("{}/{}", cfg.worker_id, queue);
            let consumer = broker.consume(queue, cfg.prefetch.max(1), &tag).await?;
            let consumer = Arc::new(tokio::sync::Mutex::new(consumer));
            consumers.push(consumer.clone());
            loops.spawn(consume_loop(
                queue.clone(),
                consumer,
                slots.clone(),
                jobs.clone(),
                executor.clone(),
                stop_consuming.clone(),
                failed.clone(),
            ));
        }
        // The intake queue is a scheduler's duty, like promotion: the same processes do both.
        if cfg.promoter.is_some() {
            let tag = format!("{}/intake", cfg.worker_id);
            let consumer = Arc::new(tokio::sync::Mutex::new(
                broker.consume_intake(64, &tag).await?,
            ));
            consumers.push(consumer.clone());
            loops.spawn(crate::intake::intake_loop(
                consumer,
                store.clone(),
                executor.clone(),
                stop_consuming.clone(),
            ));
        }
        loops.close();

        let due = Arc::new(tokio::sync::Notify::new());
        let listener = tokio::spawn(notification_loop(
            store.clone(),
            executor.clone(),
            due.clone(),
            stop_consuming.clone(),
        ));
        let heartbeat = tokio::spawn(heartbeat_loop(
            store.clone(),
            cfg.worker_id.clone(),
            cfg.heartbeat_interval,
            slots.clone(),
            cfg.concurrency,
            executor.clone(),
            stop_consuming.clone(),
        ));
        let promoter = match cfg.promoter {
            Some(pc) => {
                let promoter = Promoter::new(store.clone(), broker.publisher().await?, pc)
                    .with_wakeup(due.clone());
                Some(tokio::spawn(promoter.run(stop_consuming.clone())))
            }
            None => None,
        };
        tracing::info!(worker = %cfg.worker_id, queues = ?info.queues, concurrency = cfg.concurrency, prefetch = cfg.prefetch, "worker running");

        let mut fatal = None;
        tokio::select! {
            () = shutdown.cancelled() => {}
            Some(queue) = lost.recv() => fatal = Some(Error::ConsumerLost { queue }),
        }

        // Soft phase: stop taking deliveries, let in-flight jobs finish, record and ack them.
        tracing::info!(in_flight = cfg.concurrency - slots.available_permits(), grace = ?cfg.shutdown_grace, "shutting down: no new jobs; finishing in-flight ones");
        let deadline = tokio::time::Instant::now() + cfg.shutdown_grace;
        // Keep back a little of the grace period for cancelling and closing, so the whole
        // shutdown fits in it.
        let close_budget = (cfg.shutdown_grace / 5).min(Duration::from_secs(1));
        stop_consuming.cancel();
        // Every step of the shutdown is bounded: with Postgres or RabbitMQ unreachable, each
        // call would otherwise wait out its own connect or acquire timeout in turn.
        let soft_end = deadline - close_budget;
        bounded(soft_end, "stopping the consumers", loops.wait()).await;
        if let Some(p) = promoter {
            // A promotion in flight is let finish (aborting between its publish and its
            // commit would publish those jobs twice), within the grace period.
            let abort = p.abort_handle();
            if bounded(soft_end, "finishing a promotion", p)
                .await
                .is_none()
            {
                abort.abort();
            }
        }
        jobs.close();
        let mut abandoned = 0;
        if tokio::time::timeout_at(deadline - close_budget, jobs.wait())
            .await
            .is_err()
        {
            // Hard phase: cancel handlers; their deliveries stay unacked and return to the
            // queue when the channels close.
            abandoned = (cfg.concurrency - slots.available_permits()) as u64;
            tracing::warn!(
                abandoned,
                "grace period over; cancelling the jobs still running"
            );
            hard_stop.cancel();
            let _ = tokio::time::timeout_at(deadline, jobs.wait()).await;
        }

        // Flush: every job task has finished, so only running marks can be pending.
        let counters = &executor.counters;
        let stats = WorkerStats {
            succeeded: counters.succeeded.load(Ordering::Relaxed),
            retried: counters.retried.load(Ordering::Relaxed),
            dead: counters.dead.load(Ordering::Relaxed),
            skipped: counters.skipped.load(Ordering::Relaxed),
            unrecorded: counters.unrecorded.load(Ordering::Relaxed),
            abandoned,
            duplicates: counters.duplicates.load(Ordering::Relaxed),
        };
        drop(executor);
        let closing = deadline.max(tokio::time::Instant::now() + close_budget);
        let heartbeat_abort = heartbeat.abort_handle();
        let listener_abort = listener.abort_handle();
        bounded(closing, "stopping the heartbeat", heartbeat).await;
        bounded(closing, "closing the LISTEN connection", listener).await;
        heartbeat_abort.abort();
        listener_abort.abort();
        if bounded(closing, "flushing the recorder", recorder_task)
            .await
            .is_none()
        {
            tracing::warn!(
                "recorder did not flush in time; unrecorded deliveries will be redelivered"
            );
        }
        let processed = stats.succeeded + stats.dead;
        let stopped = store.heartbeat(&cfg.worker_id, "stopped", 0, processed);
        if let Some(Err(e)) = bounded(closing, "marking the worker stopped", stopped).await {
            tracing::warn!(error = %ErrorChain(&e), "cannot mark the worker stopped");
        }
        let close_all = async {
            for consumer in consumers {
                consumer.lock().await.close().await;
            }
            broker.close().await;
        };
        bounded(closing, "closing the broker connections", close_all).await;
        tracing::info!(?stats, "worker stopped");
        match fatal {
            Some(e) => Err(e),
            None => Ok(stats),
        }
    }
}

/// Runs one shutdown step until `until`; `None` (and a warning) if it did not finish.
async fn bounded<F: Future>(until: tokio::time::Instant, what: &str, step: F) -> Option<F::Output> {
    match tokio::time::timeout_at(until, step).await {
        Ok(out) => Some(out),
        Err(_) => {
            tracing::warn!("shutdown: {what} did not finish within the grace period; going on");
            None
        }
    }
}

async fn consume_loop(
    queue: QueueName,
    consumer: Arc<tokio::sync::Mutex<Consumer>>,
    slots: Arc<Semaphore>,
    jobs: TaskTracker,
    executor: Arc<Executor>,
    stop: CancellationToken,
    failed: tokio::sync::mpsc::Sender<String>,
) {
    let mut consumer = consumer.lock().await;
    loop {
        // Take a slot before taking a delivery: when all slots are busy the delivery stays
        // in the prefetch buffer, unacked, and the broker stops sending more.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = stop.cancelled() => break,
        };
        let delivery = tokio::select! {
            d = consumer.next() => d,
            () = stop.cancelled() => break,
        };
        match delivery {
            Some(Ok(delivery)) => {
                let executor = executor.clone();
                let queue = queue.clone();
                jobs.spawn(async move {
                    executor.handle(queue, delivery).await;
                    drop(permit);
                });
            }
            Some(Err(e)) => {
                tracing::error!(queue = %queue, error = %e, "consumer failed and could not recover");
                let _ = failed.try_send(queue.to_string());
                break;
            }
            None => {
                if !stop.is_cancelled() {
                    tracing::error!(queue = %queue, "consumer was cancelled by the broker (queue deleted?)");
                    let _ = failed.try_send(queue.to_string());
                }
                break;
            }
        }
    }
    if let Err(e) = consumer.cancel().await {
        tracing::debug!(error = %e, "consumer cancel failed (channel already closed?)");
    }
}

async fn heartbeat_loop(
    store: Store,
    worker_id: String,
    every: Duration,
    slots: Arc<Semaphore>,
    concurrency: usize,
    executor: Arc<Executor>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut degraded = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => break,
        }
        let c = &executor.counters;
        let processed = c.succeeded.load(Ordering::Relaxed) + c.dead.load(Ordering::Relaxed);
        let in_flight = (concurrency - slots.available_permits()) as u32;
        let beat = tokio::select! {
            r = store.heartbeat(&worker_id, "running", in_flight, processed) => r,
            () = stop.cancelled() => break,
        };
        match beat {
            Ok(()) if degraded => {
                tracing::info!("recording worker heartbeats again");
                degraded = false;
            }
            Ok(()) => {}
            Err(e) if !degraded => {
                tracing::warn!(error = %ErrorChain(&e), "recording a worker heartbeat failed; retrying every beat");
                degraded = true;
            }
            Err(_) => {}
        }
        if in_flight > 0 {
            tokio::select! {
                () = apply_cancel_requests(&store, &executor) => {}
                () = stop.cancelled() => break,
            }
        }
    }
    let c = &executor.counters;
    let processed = c.succeeded.load(Ordering::Relaxed) + c.dead.load(Ordering::Relaxed);
    let in_flight = (concurrency - slots.available_permits()) as u32;
    let _ = store
        .heartbeat(&worker_id, "stopping", in_flight, processed)
        .await;
}

/// One LISTEN connection for the whole worker: `warren_due` wakes the promoter, and
/// `warren_cancel` fires the token of a job running here. A NOTIFY sent while the connection
/// is down is lost, so every time it is (re)established the running jobs' cancel requests are
/// read back from their rows (the heartbeat reads them too, as a safety net).
async fn notification_loop(
    store: Store,
    executor: Arc<Executor>,
    due: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    use warren_store::{CANCEL_CHANNEL, DUE_CHANNEL};
    let mut degraded = false;
    while !stop.is_cancelled() {
        let listening = tokio::select! {
            l = store.listen(&[DUE_CHANNEL, CANCEL_CHANNEL]) => l,
            () = stop.cancelled() => break,
        };
        let mut listener = match listening {
            Ok(l) => l,
            Err(e) => {
                if !degraded {
                    tracing::warn!(error = %ErrorChain(&e), "cannot LISTEN for notifications; the promoter polls and cancel requests are read on each heartbeat meanwhile; retrying every 5s");
                    degraded = true;
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(5)) => continue,
                    () = stop.cancelled() => break,
                }
            }
        };
        if degraded {
            tracing::info!("listening for notifications again");
            degraded = false;
        }
        tokio::select! {
            () = apply_cancel_requests(&store, &executor) => {}
            () = stop.cancelled() => break,
        }
        // Anything that fell due while nobody listened is found by the promoter's next pass.
        due.notify_one();
        loop {
            let notification = tokio::select! {
                n = listener.recv() => n,
                () = stop.cancelled() => return,
            };
            match notification {
                Ok(n) if n.channel == DUE_CHANNEL => due.notify_one(),
                Ok(n) => match n.payload.parse::<warren_core::JobId>() {
                    Ok(id) => executor.cancels.cancel(id),
                    Err(e) => {
                        tracing::warn!(error = %e, "ignoring a malformed cancel notification")
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %ErrorChain(&e), "notification listener lost its connection; reconnecting");
                    break;
                }
            }
        }
    }
}

/// Fires the tokens of running jobs whose rows say an admin asked them to stop.
async fn apply_cancel_requests(store: &Store, executor: &Executor) {
    let running = executor.cancels.running_ids();
    match store.cancel_requests(&running).await {
        Ok(ids) => {
            for id in ids {
                executor.cancels.cancel(id);
            }
        }
        Err(e) => {
            tracing::debug!(error = %ErrorChain(&e), "cannot read cancel requests; trying again later")
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}
