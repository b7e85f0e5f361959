//! A PostgreSQL server of a test's own, for faults that stop, kill or starve the database
//! itself: the shared server on port 5432 must never see them.
//!
//! The server is the machine's PostgreSQL binaries run on a database cluster made by `initdb`
//! in a temporary folder, on a free loopback port, with its socket in that folder and trust
//! authentication for the `postgres` user. PostgreSQL refuses to run as root, so every
//! command runs as the `postgres` user (`runuser`). The server is killed and its folder
//! removed when the handle is dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::Command;

/// Where Debian installs the server binaries, one folder per major version.
const POSTGRES_LIB: &str = "/usr/lib/postgresql";

/// How long `pg_ctl` waits for the server to start or stop.
const CTL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a killed server's processes may take to disappear: the init process reaps the
/// orphaned postmaster a second or two late, and a postmaster started while the old one is a
/// zombie refuses to start.
const REAP_TIMEOUT: Duration = Duration::from_secs(30);

/// What the server's configuration adds to the defaults.
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// `max_connections`; small values let a test exhaust it.
    pub max_connections: u32,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            max_connections: 100,
        }
    }
}

/// A PostgreSQL server started by a test. See the module documentation.
#[derive(Debug)]
pub struct DisposablePostgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    options: PostgresOptions,
    running: bool,
}

impl DisposablePostgres {
    /// Makes a database cluster, starts the server with the default configuration and waits
    /// until it accepts connections.
    pub async fn start() -> anyhow::Result<DisposablePostgres> {
        Self::start_with(PostgresOptions::default()).await
    }

    /// Same as [`DisposablePostgres::start`], with `options`.
    pub async fn start_with(options: PostgresOptions) -> anyhow::Result<DisposablePostgres> {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let dir = std::env::temp_dir().join(format!("warren-pg-{}", &id[id.len() - 12..]));
        let mut server = DisposablePostgres {
            bin: server_bin()?,
            port: crate::rabbit_node::free_port()?,
            dir,
            options,
            running: false,
        };
        std::fs::create_dir_all(&server.dir)
            .with_context(|| format!("creating {}", server.dir.display()))?;
        run(Command::new("chown").arg("postgres:").arg(&server.dir))
            .await
            .context("giving the folder to the postgres user (is PostgreSQL installed?)")?;
        run(server
            .as_postgres("initdb")
            .arg("-D")
            .arg(server.data())
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"]))
        .await
        .context("initdb")?;
        server.launch().await?;
        Ok(server)
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`: the administration database, for
    /// creating test databases (e.g. `TestEnv::with_services`).
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's folder: the cluster (`data/`), its socket and `server.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the server as an operator would (`pg_ctl stop -m fast`): sessions are ended, the
    /// clients see their connections closed.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if !self.running {
            return Ok(());
        }
        run(&mut self.ctl(&["stop", "-m", "fast"])).await?;
        self.running = false;
        Ok(())
    }

    /// Kills the postmaster with SIGKILL, as a crash would, and waits until it and every
    /// server process it had are gone (see [`REAP_TIMEOUT`]).
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if !self.running {
            return Ok(());
        }
        let pid = self.postmaster_pid()?;
        let children = children_of(pid);
        run(Command::new("kill").arg("-KILL").arg(pid.to_string())).await?;
        self.running = false;
        // The backends notice the postmaster's death and exit by themselves; a restart must
        // wait for them too, or it finds the old shared memory still in use.
        for p in std::iter::once(pid).chain(children) {
            wait_gone(p).await?;
        }
        Ok(())
    }

    /// Starts the server again on the same port and data (after [`Self::stop`] or
    /// [`Self::kill`]; stops it first if it still runs).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        self.launch().await
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections={} \
             -c fsync=off -c full_page_writes=off -c synchronous_commit=off",
            self.port,
            self.dir.display(),
            self.options.max_connections
        );
        let log = self.dir.join("server.log");
        let started = run(self.ctl(&["start", "-o", &options, "-l"]).arg(&log)).await;
        if let Err(e) = started {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            anyhow::bail!(
                "PostgreSQL in {} did not start: {e:#}; its log ends with:\n{}",
                self.dir.display(),
                tail.join("\n")
            );
        }
        self.running = true;
        Ok(())
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn postmaster_pid(&self) -> anyhow::Result<u32> {
        let file = self.data().join("postmaster.pid");
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .with_context(|| format!("no pid in {}", file.display()))
    }

    /// `pg_ctl -D <data> -w -t 60 <args>` as the postgres user.
    fn ctl(&self, args: &[&str]) -> Command {
        let mut command = self.as_postgres("pg_ctl");
        command
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-t", &CTL_TIMEOUT.as_secs().to_string()])
            .args(args);
        command
    }

    /// One of the server binaries, run as the postgres user from the server's folder.
    fn as_postgres(&self, program: &str) -> Command {
        let mut command = Command::new("runuser");
        command
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(program))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }
}

impl Drop for DisposablePostgres {
    fn drop(&mut self) {
        if self.running
            && let Ok(pid) = self.postmaster_pid()
        {
            // Immediate: nothing of this server needs to survive, and the drop must be quick.
            let _ = std::process::Command::new("kill")
                .arg("-QUIT")
                .arg(pid.to_string())
                .status();
            // A drop cannot await; the folder is removed only once nothing writes to it.
            #[allow(
                clippy::disallowed_methods,
                reason = "Drop is synchronous; the wait is bounded and happens once per test"
            )]
            let pause = || std::thread::sleep(Duration::from_millis(50));
            let deadline = std::time::Instant::now() + REAP_TIMEOUT;
            while Path::new(&format!("/proc/{pid}")).exists()
                && std::time::Instant::now() < deadline
            {
                pause();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs a command to completion; an error carries its standard error.
async fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = tokio::time::timeout(
        CTL_TIMEOUT + Duration::from_secs(10),
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output(),
    )
    .await
    .with_context(|| format!("{command:?} hung"))?
    .with_context(|| format!("running {command:?}"))?;
    anyhow::ensure!(
        output.status.success(),
        "{command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// The newest PostgreSQL's `bin` folder.
fn server_bin() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(POSTGRES_LIB)
        .with_context(|| format!("reading {POSTGRES_LIB} (is PostgreSQL installed?)"))?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((major, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .with_context(|| format!("no PostgreSQL with a pg_ctl under {POSTGRES_LIB}"))
}

/// The processes whose parent is `pid`, from `/proc`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // The command name is in parentheses and may hold spaces; the parent pid is the
            // second field after it.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                == Some(pid)
        })
        .collect()
}

/// Waits until `/proc/<pid>` is gone: the process has exited and was reaped.
async fn wait_gone(pid: u32) -> anyhow::Result<()> {
    let path = format!("/proc/{pid}");
    let deadline = tokio::time::Instant::now() + REAP_TIMEOUT;
    while Path::new(&path).exists() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "process {pid} still exists {REAP_TIMEOUT:?} after SIGKILL"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
