use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

/// Where the workspace's binaries are: beside the test executable's `deps/` folder.
pub fn bin_path(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("test executable has no parent folder")?;
    let path = dir.join(name);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: build the binaries first (cargo build --workspace --bins), as the README's test command does",
        path.display()
    );
    Ok(path)
}

/// The real `warren-worker` binary, run as a child process.
#[derive(Debug)]
pub struct WorkerProcess {
    /// The child process, killed when this is dropped.
    pub child: Child,
}

impl WorkerProcess {
    /// Starts `warren-worker` against `env` with extra flags. It does not migrate: the
    /// env's database already is, as an operator's would be after `warren migrate`.
    pub fn spawn(env: &crate::TestEnv, id: &str, extra: &[&str]) -> anyhow::Result<WorkerProcess> {
        Self::spawn_with_database(env, id, &env.database_url, extra)
    }

    /// Starts `warren-worker` against `env`'s broker namespace but another database URL: one
    /// not migrated yet, or the same database reached as a less privileged role.
    pub fn spawn_with_database(
        env: &crate::TestEnv,
        id: &str,
        database_url: &str,
        extra: &[&str],
    ) -> anyhow::Result<WorkerProcess> {
        let mut command = Self::command(env, id, &env.amqp_url, database_url, extra)?;
        let child = command.spawn().context("starting warren-worker")?;
        Ok(WorkerProcess { child })
    }

    /// Starts `warren-worker` against `env`'s database and namespace, reaching the broker at
    /// `amqp_url` (a URL list, or a URL with its own `?heartbeat=`), with its log (standard
    /// output and error, at `RUST_LOG=warn` unless `extra` says otherwise) appended to
    /// `log`, for a test that reads what the worker said.
    pub fn spawn_logged(
        env: &crate::TestEnv,
        id: &str,
        amqp_url: &str,
        extra: &[&str],
        log: &std::path::Path,
    ) -> anyhow::Result<WorkerProcess> {
        Self::spawn_via(env, id, amqp_url, &env.database_url, extra, log)
    }

    /// Starts `warren-worker` against `env`'s namespace, reaching the broker at `amqp_url`
    /// and the database at `database_url` (say, both through a [`crate::Proxy`]), with its
    /// log appended to `log` as [`WorkerProcess::spawn_logged`] does.
    pub fn spawn_via(
        env: &crate::TestEnv,
        id: &str,
        amqp_url: &str,
        database_url: &str,
        extra: &[&str],
        log: &std::path::Path,
    ) -> anyhow::Result<WorkerProcess> {
        let mut command = Self::command(env, id, amqp_url, database_url, extra)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        command.stdout(file.try_clone()?).stderr(file);
        let child = command.spawn().context("starting warren-worker")?;
        Ok(WorkerProcess { child })
    }

    /// Whether the process is still running (not yet exited).
    pub fn is_running(&mut self) -> anyhow::Result<bool> {
        Ok(self.child.try_wait()?.is_none())
    }

    fn command(
        env: &crate::TestEnv,
        id: &str,
        amqp_url: &str,
        database_url: &str,
        extra: &[&str],
    ) -> anyhow::Result<Command> {
        let queues: Vec<String> = env.queues.iter().map(ToString::to_string).collect();
        let mut command = Command::new(bin_path("warren-worker")?);
        command
            .arg("--amqp-url")
            .arg(amqp_url)
            .arg("--database-url")
            .arg(database_url)
            .arg("--namespace")
            .arg(env.namespace())
            .arg("--delivery-limit")
            .arg(env.broker_config.topology.delivery_limit.to_string())
            .arg("--queues")
            .arg(queues.join(","))
            .arg("--worker-id")
            .arg(format!("{}-{id}", env.name))
            .args(extra)
            // The developer's own settings must not change what the test runs.
            .env_remove("WARREN_MIGRATE")
            .env_remove("WARREN_NO_MIGRATE")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        Ok(command)
    }

    /// The process id; an error once the process has been waited for.
    pub fn pid(&self) -> anyhow::Result<i32> {
        self.child
            .id()
            .map(|p| p as i32)
            .context("worker process has already exited")
    }

    /// Sends a signal (e.g. `"TERM"`, `"KILL"`) to this process only.
    pub async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid()?.to_string())
            .status()
            .await?;
        anyhow::ensure!(status.success(), "kill -{signal} failed");
        Ok(())
    }

    /// Waits for the process to exit, at most `timeout`; returns its exit code.
    pub async fn wait(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .with_context(|| format!("worker did not exit within {timeout:?}"))??;
        Ok(status.code())
    }
}
