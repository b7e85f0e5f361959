//! Worker processes: the real `warren-worker` binary, started on a sandbox's queue and
//! database, so that the scenarios of issue 13 measure what an operator runs, and the CPU and
//! memory of the workers apart from the benchmark's producer.
//!
//! The binary is the one built beside `warren-bench` in the same profile
//! (`cargo build --release -p warren-bench -p warren-worker`).

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use warren_testkit::wait_until;

use crate::report::Usage;
use crate::sandbox::{Sandbox, stoppable};
use crate::settings::Settings;
use crate::usage::Sample;

/// How long started workers get to open their consumers, and stopped ones to exit.
const START_AND_STOP: Duration = Duration::from_secs(60);

/// Worker processes on one sandbox, stopped with SIGTERM by [`Fleet::stop`] (and killed if
/// the benchmark drops them without stopping, say when it fails).
#[derive(Debug)]
pub(crate) struct Fleet {
    children: Vec<Child>,
    pids: Vec<u32>,
}

/// How each process of a fleet is configured.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    pub(crate) processes: usize,
    pub(crate) concurrency: usize,
    /// `None`: the worker's default, twice the concurrency.
    pub(crate) prefetch: Option<u16>,
}

impl Shape {
    /// `processes` workers with the run's `--concurrency` and `--prefetch`.
    pub(crate) fn of(settings: &Settings, processes: usize) -> Shape {
        Shape {
            processes,
            concurrency: settings.concurrency,
            prefetch: Some(settings.prefetch),
        }
    }
}

/// The `warren-worker` binary beside this executable.
fn worker_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the warren-bench executable")?;
    let path = exe
        .parent()
        .context("the warren-bench executable has no parent folder")?
        .join("warren-worker");
    anyhow::ensure!(
        path.exists(),
        "{} is missing: this scenario runs the real worker binary, built beside warren-bench \
         in the same profile (cargo build --release -p warren-bench -p warren-worker)",
        path.display()
    );
    Ok(path)
}

impl Fleet {
    /// Starts `shape.processes` workers on the sandbox's queue and database and waits until
    /// each has a consumer on the queue.
    pub(crate) async fn start(
        settings: &Settings,
        sandbox: &Sandbox,
        shape: Shape,
        stop: &CancellationToken,
    ) -> anyhow::Result<Fleet> {
        let binary = worker_binary()?;
        let database_url = sandbox.database()?.url().to_owned();
        let namespace = sandbox.broker_config.topology.namespace.to_string();
        let mut fleet = Fleet {
            children: Vec::with_capacity(shape.processes),
            pids: Vec::with_capacity(shape.processes),
        };
        for i in 0..shape.processes {
            let mut command = Command::new(&binary);
            // A clean environment, so the developer's own WARREN_* settings cannot change
            // what is measured; URLs go by environment so their passwords stay out of `ps`.
            command
                .env_clear()
                .env("RUST_LOG", "warn")
                .env("WARREN_AMQP_URL", &settings.amqp_url)
                .env("WARREN_DATABASE_URL", &database_url)
                .arg("--namespace")
                .arg(&namespace)
                .arg("--queues")
                .arg(sandbox.queue.as_str())
                .arg("--concurrency")
                .arg(shape.concurrency.to_string())
                .arg("--worker-id")
                .arg(format!("{namespace}-{i}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .kill_on_drop(true);
            // How many threads each process's runtime runs is a shape worth measuring
            // (several processes on fewer cores; docs/benchmarks.md).
            if let Some(threads) = settings.worker_threads {
                command.env("TOKIO_WORKER_THREADS", threads.to_string());
            }
            if let Some(prefetch) = shape.prefetch {
                command.arg("--prefetch").arg(prefetch.to_string());
            }
            let child = command
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?;
            let pid = child
                .id()
                .context("a just-started warren-worker has no process id")?;
            fleet.children.push(child);
            fleet.pids.push(pid);
        }
        let wanted = u32::try_from(shape.processes).unwrap_or(u32::MAX);
        let ready = stoppable(
            stop,
            wait_until(
                START_AND_STOP,
                &format!("{} warren-worker processes to consume", shape.processes),
                || {
                    let exited = fleet.exited();
                    async move {
                        if let Some(e) = exited {
                            return Err(e);
                        }
                        let depth = sandbox.depth().await?;
                        if depth.consumers >= wanted {
                            Ok(Ok(()))
                        } else {
                            Ok(Err(format!("{} consumers", depth.consumers)))
                        }
                    }
                },
            ),
        )
        .await;
        match ready {
            Ok(()) => Ok(fleet),
            Err(e) => {
                fleet.kill().await;
                Err(e)
            }
        }
    }

    /// An error naming the first process that has exited, if one has: a worker that stops
    /// by itself has failed (its log is on the benchmark's standard error).
    fn exited(&mut self) -> Option<anyhow::Error> {
        self.children
            .iter_mut()
            .zip(&self.pids)
            .find_map(|(child, pid)| match child.try_wait() {
                Ok(Some(status)) => Some(anyhow::anyhow!(
                    "warren-worker (pid {pid}) exited by itself ({status}); its log is above"
                )),
                Ok(None) => None,
                Err(e) => Some(anyhow::anyhow!(
                    "cannot tell whether warren-worker (pid {pid}) is running: {e}"
                )),
            })
    }

    /// The CPU time summed over the processes, and the highest peak RSS among them.
    pub(crate) fn sample(&mut self) -> anyhow::Result<Sample> {
        if let Some(e) = self.exited() {
            return Err(e);
        }
        let mut total = Sample::default();
        for &pid in &self.pids {
            let one = Sample::of(Some(pid))
                .with_context(|| format!("reading what warren-worker (pid {pid}) spent"))?;
            total.cpu += one.cpu;
            total.peak_rss_bytes = total.peak_rss_bytes.max(one.peak_rss_bytes);
        }
        Ok(total)
    }

    /// What the fleet spent on `jobs` since `before`, with its peak RSS so far.
    pub(crate) fn usage_since(&mut self, before: Sample, jobs: u64) -> anyhow::Result<Usage> {
        let now = self.sample()?;
        Ok(Usage {
            cpu_secs: now.cpu.saturating_sub(before.cpu).as_secs_f64(),
            jobs,
            peak_rss_bytes: Some(now.peak_rss_bytes),
        })
    }

    /// Stops every process as an operator would (SIGTERM), waits for them to exit, and
    /// fails if one exited with an error.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        for &pid in &self.pids {
            signal("TERM", pid).await?;
        }
        let deadline = Instant::now() + START_AND_STOP;
        let mut failed = None;
        for (child, pid) in self.children.iter_mut().zip(&self.pids) {
            let left = deadline.saturating_duration_since(Instant::now());
            let status: ExitStatus = tokio::time::timeout(left, child.wait())
                .await
                .with_context(|| {
                    format!("warren-worker (pid {pid}) did not exit within {START_AND_STOP:?} of SIGTERM")
                })?
                .with_context(|| format!("waiting for warren-worker (pid {pid}) to exit"))?;
            if !status.success() && failed.is_none() {
                failed = Some(anyhow::anyhow!(
                    "warren-worker (pid {pid}) exited with {status} after SIGTERM; its log is above"
                ));
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Kills every process without waiting for a graceful stop (after a failed start).
    async fn kill(mut self) {
        for child in &mut self.children {
            let _ = child.kill().await;
        }
    }
}

/// Sends `signal` to process `pid` with kill(1): the standard library only sends SIGKILL,
/// and the workers should stop as they do in production.
async fn signal(signal: &str, pid: u32) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .await
        .context("running kill(1)")?;
    anyhow::ensure!(
        status.success(),
        "kill -{signal} {pid} failed (warren-worker already gone?)"
    );
    Ok(())
}
