//! The fault lab: Warren's first promise (a job whose enqueue succeeded is never lost, and its
//! outcome is recorded once) checked while the services under it fail. Each scenario runs
//! [`JOBS`] jobs, published through `warren-client` at a steady pace by a producer that
//! retries what fails, on two real `warren-worker` processes; it breaks something mid-run,
//! mends it, and asserts that every accepted job ends `succeeded`. It prints what it measured
//! (duplicate executions, recovery time) for docs/reliability.md; nothing about speed is
//! asserted.
//!
//! The faults happen to servers the tests own ([`warren_testkit::DisposableRabbit`],
//! [`warren_testkit::RabbitCluster`], [`warren_testkit::DisposablePostgres`]) or to the
//! test's own worker processes, never to the shared services.

mod broker_restart;
mod cluster;
mod frozen_worker;
mod pg_exhausted;
mod postgres_stop;
mod rolling_restart;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::task::JoinHandle;
use warren_broker::BrokerConfig;
use warren_client::{Client, NewJob};
use warren_core::{JobId, JobState};
use warren_store::Store;
use warren_testkit::{TestEnv, WorkerProcess, wait_until};

pub(crate) use crate::support::{free_port, get};

/// Jobs per scenario.
pub(crate) const JOBS: usize = 5_000;

/// Jobs per published batch, and the pause between batches: 5,000 jobs in about 25 s, so a
/// fault a few seconds in lands while the producer is still publishing.
const BATCH: usize = 50;
const PACE: Duration = Duration::from_millis(250);

/// How long the jobs get to finish after the fault is over.
pub(crate) const SETTLE: Duration = Duration::from_secs(180);

/// One real worker process with its metrics address.
pub(crate) struct LabWorker {
    pub(crate) process: WorkerProcess,
    pub(crate) port: u16,
}

impl LabWorker {
    /// Starts `warren-worker` on `env`'s queues through `amqp_url`, with `--metrics-addr`,
    /// logging into `log`.
    pub(crate) fn spawn(
        env: &TestEnv,
        id: &str,
        amqp_url: &str,
        log: &std::path::Path,
    ) -> anyhow::Result<LabWorker> {
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let process = WorkerProcess::spawn_logged(
            env,
            id,
            amqp_url,
            &["--concurrency", "16", "--metrics-addr", &addr],
            log,
        )?;
        Ok(LabWorker { process, port })
    }

    /// `warren_jobs_started_total`, summed over its labels: executions this process began.
    pub(crate) async fn started(&self) -> anyhow::Result<u64> {
        let (_, text) = get(self.port, "/metrics").await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with("warren_jobs_started_total"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>() as u64)
    }

    /// The `/readyz` answer: its status and body.
    pub(crate) async fn readyz(&self) -> anyhow::Result<(u16, String)> {
        get(self.port, "/readyz").await
    }

    /// SIGTERM, then waits for a clean exit.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        self.process.signal("TERM").await?;
        let code = self.process.wait(Duration::from_secs(60)).await?;
        anyhow::ensure!(code == Some(0), "worker exited with {code:?}");
        Ok(())
    }
}

/// Waits until a worker answers `/readyz` with 200.
pub(crate) async fn wait_ready(worker: &LabWorker) -> anyhow::Result<()> {
    wait_until(
        Duration::from_secs(60),
        "the worker to be ready",
        || async {
            Ok(match worker.readyz().await {
                Ok((200, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            })
        },
    )
    .await
}

/// Waits until a worker's `/readyz` answers 503 naming one of `reasons`; returns the body.
pub(crate) async fn wait_degraded(worker: &LabWorker, reasons: &[&str]) -> anyhow::Result<String> {
    wait_until(
        Duration::from_secs(60),
        &format!("/readyz to say {reasons:?}"),
        || async {
            Ok(match worker.readyz().await {
                Ok((503, body)) if reasons.iter().any(|r| body.contains(r)) => Ok(body),
                other => Err(format!("{other:?}")),
            })
        },
    )
    .await
}

/// Asserts that a worker's log has a WARN line entering a degraded state for `reason` and
/// one leaving it.
pub(crate) fn assert_logged_degraded(log: &std::path::Path, reason: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(log)?;
    assert!(
        text.lines()
            .any(|l| l.contains("WARN") && l.contains("worker degraded") && l.contains(reason)),
        "no WARN line entering `{reason}` in {}",
        log.display()
    );
    assert!(
        text.lines()
            .any(|l| l.contains("WARN") && l.contains("no longer degraded")),
        "no WARN line leaving the degraded state in {}",
        log.display()
    );
    Ok(())
}

/// What the producer got accepted, and how often it was refused.
#[derive(Debug, Default)]
pub(crate) struct Produced {
    /// Ids whose enqueue returned success.
    pub(crate) accepted: Vec<JobId>,
    /// Enqueue calls that failed (and were retried).
    pub(crate) errors: u64,
}

/// Publishes [`JOBS`] `warren.noop` jobs in paced batches through `warren-client`. A job whose
/// enqueue fails is published again under the same id until it is accepted (a job published
/// twice under one id is recorded once); a client that keeps failing is replaced by a new one.
fn spawn_producer(config: BrokerConfig) -> JoinHandle<anyhow::Result<Produced>> {
    tokio::spawn(async move {
        let mut produced = Produced::default();
        let mut client: Option<Client> = None;
        let ids: Vec<JobId> = (0..JOBS).map(|_| JobId::new()).collect();
        let deadline = Instant::now() + Duration::from_secs(300);
        for chunk in ids.chunks(BATCH) {
            let mut pending: Vec<JobId> = chunk.to_vec();
            let mut failures = 0u32;
            while !pending.is_empty() {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "the producer could not publish for 5 minutes ({} errors)",
                    produced.errors
                );
                if client.is_none() {
                    match Client::connect(config.clone()).await {
                        Ok(c) => client = Some(c),
                        Err(_) => {
                            produced.errors += 1;
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            continue;
                        }
                    }
                }
                let Some(c) = client.as_ref() else { continue };
                let jobs = pending
                    .iter()
                    .map(|id| NewJob::new("warren.noop", &json!({})).id(*id));
                let outcomes = c.enqueue_many(jobs).await;
                let mut refused = Vec::new();
                for (id, outcome) in pending.iter().zip(outcomes) {
                    match outcome {
                        Ok(_) => produced.accepted.push(*id),
                        Err(_) => refused.push(*id),
                    }
                }
                if !refused.is_empty() {
                    produced.errors += 1;
                    failures += 1;
                    // Lapin recovers a connection by itself; one that keeps failing is
                    // given up for a fresh one.
                    if failures.is_multiple_of(10) {
                        client = None;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                pending = refused;
            }
            tokio::time::sleep(PACE).await;
        }
        Ok(produced)
    })
}

/// A scenario's load: the paced producer, and the throughput sampled while it runs.
pub(crate) struct Load {
    throughput: Throughput,
    sampler: JoinHandle<()>,
    producer: JoinHandle<anyhow::Result<Produced>>,
}

/// A load whose producer has finished and whose every accepted job has succeeded.
pub(crate) struct Settled {
    throughput: Throughput,
    sampler: JoinHandle<()>,
    produced: Produced,
    lost: usize,
}

impl Load {
    /// Starts sampling `env`'s store and producing through its broker.
    pub(crate) fn start(env: &TestEnv) -> Load {
        let throughput = Throughput::default();
        let sampler = throughput.sample(env.store.clone());
        let producer = spawn_producer(env.broker_config.clone());
        Load {
            throughput,
            sampler,
            producer,
        }
    }

    /// Waits for the producer, then until every job it had accepted has succeeded
    /// ([`check_all_succeeded`]).
    pub(crate) async fn settle(self, store: &Store) -> anyhow::Result<Settled> {
        let produced = self.producer.await??;
        let lost = check_all_succeeded(store, &produced.accepted).await?;
        Ok(Settled {
            throughput: self.throughput,
            sampler: self.sampler,
            produced,
            lost,
        })
    }
}

impl Settled {
    /// Stops sampling and prints the scenario's line: `started` executions in all, the
    /// recovery measured from `fault_over` against the throughput before `fault_began`.
    pub(crate) fn report(
        self,
        scenario: &str,
        started: u64,
        fault_began: Instant,
        fault_over: Instant,
    ) {
        self.sampler.abort();
        let recovery = self.throughput.recovery(fault_began, fault_over);
        Report::new(&self.produced, self.lost, started, recovery).print(scenario);
    }
}

/// Succeeded-job counts sampled every 250 ms, for the recovery time.
#[derive(Clone, Default)]
struct Throughput(Arc<Mutex<Vec<(Instant, i64)>>>);

impl Throughput {
    /// Samples `store` until the returned handle is aborted. Failed samples (the database is
    /// down) are skipped.
    pub(crate) fn sample(&self, store: Store) -> JoinHandle<()> {
        let samples = self.0.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(counts) = store.state_counts(None).await {
                    let ok = counts
                        .iter()
                        .find(|c| c.state == JobState::Succeeded)
                        .map_or(0, |c| c.count);
                    if let Ok(mut s) = samples.lock() {
                        s.push((Instant::now(), ok));
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    }

    /// Jobs per second over windows of at least a second: (start, end, rate).
    fn rates(&self) -> Vec<(Instant, Instant, f64)> {
        let samples = self.0.lock().map(|s| s.clone()).unwrap_or_default();
        let mut rates = Vec::new();
        for (i, &(t, n)) in samples.iter().enumerate() {
            let Some(&(t0, n0)) = samples[..i]
                .iter()
                .rev()
                .find(|(t0, _)| t.duration_since(*t0) >= Duration::from_secs(1))
            else {
                continue;
            };
            let secs = t.duration_since(t0).as_secs_f64();
            rates.push((t0, t, (n - n0) as f64 / secs));
        }
        rates
    }

    /// From `fault_over` to the end of the first window, wholly after it, whose throughput
    /// reaches half the median throughput before `fault_began`; `None` if none did.
    pub(crate) fn recovery(&self, fault_began: Instant, fault_over: Instant) -> Option<Duration> {
        let rates = self.rates();
        let mut before: Vec<f64> = rates
            .iter()
            .filter(|(_, t, r)| *t < fault_began && *r > 0.0)
            .map(|(_, _, r)| *r)
            .collect();
        before.sort_by(f64::total_cmp);
        let normal = before.get(before.len() / 2).copied().unwrap_or(1.0);
        rates
            .iter()
            .find(|(t0, _, r)| *t0 >= fault_over && *r >= normal / 2.0)
            .map(|(_, t, _)| t.duration_since(fault_over))
    }
}

/// What a scenario measured.
struct Report {
    pub(crate) accepted: usize,
    pub(crate) lost: usize,
    pub(crate) duplicates: u64,
    pub(crate) recovery: Option<Duration>,
    pub(crate) producer_errors: u64,
}

impl Report {
    /// What a scenario measured: every execution beyond one per accepted job is a duplicate.
    pub(crate) fn new(
        produced: &Produced,
        lost: usize,
        started: u64,
        recovery: Option<Duration>,
    ) -> Report {
        Report {
            accepted: produced.accepted.len(),
            lost,
            duplicates: started.saturating_sub(produced.accepted.len() as u64),
            recovery,
            producer_errors: produced.errors,
        }
    }

    /// Prints the line docs/reliability.md quotes.
    pub(crate) fn print(&self, scenario: &str) {
        eprintln!(
            "FAULT-LAB {scenario}: jobs={} lost={} duplicates={} recovery={} producer_errors={}",
            self.accepted,
            self.lost,
            self.duplicates,
            self.recovery
                .map_or_else(|| "n/a".to_owned(), |d| format!("{:.1}s", d.as_secs_f64())),
            self.producer_errors
        );
    }
}

/// Waits until every accepted job is terminal; asserts each `succeeded`, with one row each.
/// Returns how many were lost (0, or the assertion fails first).
async fn check_all_succeeded(store: &Store, accepted: &[JobId]) -> anyhow::Result<usize> {
    let rows = crate::support::wait_all_terminal(store, accepted, SETTLE).await?;
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    for row in rows.values() {
        *states.entry(row.state.to_string()).or_default() += 1;
    }
    let succeeded = states.get("succeeded").copied().unwrap_or(0);
    assert_eq!(
        succeeded,
        accepted.len(),
        "every accepted job succeeded, once: {states:?}"
    );
    assert!(
        rows.values().all(|r| r.errors.is_empty()),
        "an infrastructure fault never counts as a failed attempt"
    );
    Ok(accepted.len() - rows.len())
}

/// The lab's log folder for one scenario (kept under the system's temporary folder).
pub(crate) fn log_dir(scenario: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "warren-fault-lab-{scenario}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
