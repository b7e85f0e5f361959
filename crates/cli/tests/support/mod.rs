//! What the `warren` command-line tests share: running the real binary against a test's own
//! services, and waiting for jobs.

#![allow(
    dead_code,
    reason = "each test binary includes this module and uses only part of it"
)]

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::Value;
use tokio::process::Command;
use warren_core::{JobId, JobState};
use warren_runtime::WorkerBuilder;
use warren_testkit::{TestEnv, wait_until};

/// Long enough for a slow CI machine, short enough that a hung command fails the test.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// What one run of `warren` produced.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    pub(crate) fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.stdout).with_context(|| format!("stdout is not JSON: {self:?}"))
    }
}

/// Runs `warren` with `env` as its only WARREN_* settings, so the developer's own environment
/// cannot leak into a test.
pub(crate) async fn warren_with(env: &[(&str, &str)], args: &[&str]) -> anyhow::Result<Run> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_warren"));
    for var in [
        "WARREN_AMQP_URL",
        "WARREN_DATABASE_URL",
        "WARREN_NAMESPACE",
        "WARREN_DELIVERY_LIMIT",
        "WARREN_RABBITMQ_API_URL",
    ] {
        command.env_remove(var);
    }
    command
        .envs(env.iter().copied())
        // The binary's own default filter is part of what a user sees.
        .env_remove("RUST_LOG")
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(COMMAND_TIMEOUT, command.output())
        .await
        .with_context(|| format!("warren {args:?} did not finish within {COMMAND_TIMEOUT:?}"))?
        .context("running warren")?;
    Ok(Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// Runs `warren` pointed at the test's services through the environment variables.
pub(crate) async fn warren(env: &TestEnv, args: &[&str]) -> anyhow::Result<Run> {
    let vars = [
        ("WARREN_AMQP_URL", env.amqp_url.as_str()),
        ("WARREN_DATABASE_URL", env.database_url.as_str()),
        ("WARREN_NAMESPACE", env.namespace()),
    ];
    warren_with(&vars, args).await
}

/// Waits until job `id` has a row in `state`.
pub(crate) async fn wait_for_state(
    env: &TestEnv,
    id: JobId,
    state: JobState,
) -> anyhow::Result<()> {
    wait_until(
        Duration::from_secs(30),
        &format!("job {id} to be {state}"),
        || async {
            Ok(match env.store.job(id).await? {
                Some(job) if job.state == state => Ok(()),
                other => Err(format!("{:?}", other.map(|j| j.state))),
            })
        },
    )
    .await
}

/// Runs `body`, then cleans `env` up whether or not it failed.
pub(crate) async fn with_env(
    queues: &[&str],
    body: impl AsyncFnOnce(&TestEnv) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let env = TestEnv::new(queues).await?;
    let result = body(&env).await;
    env.cleanup().await?;
    result
}

/// Runs `body` with a worker `w` running `builder`'s tasks, then stops the worker whether or
/// not `body` failed, so that no worker outlives its test.
pub(crate) async fn with_worker(
    env: &TestEnv,
    builder: WorkerBuilder,
    body: impl AsyncFnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let worker = env.start_worker(builder, env.worker_config("w")).await?;
    let result = body().await;
    worker.stop().await?;
    result
}

/// Runs `warren enqueue` with `args` for one job and returns the id it printed.
pub(crate) async fn enqueue_one(env: &TestEnv, args: &[&str]) -> anyhow::Result<JobId> {
    let run = warren(env, &[&["enqueue"], args].concat()).await?;
    ensure!(run.code == Some(0), "{run:?}");
    run.stdout
        .trim()
        .parse()
        .with_context(|| format!("one job prints its id: {run:?}"))
}
