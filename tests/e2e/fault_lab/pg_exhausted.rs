//! Scenario 6: another client takes every connection PostgreSQL allows (`max_connections`),
//! holds them for about 10 s, then lets them go. Workers do not exit, wait and retry with a
//! clear WARN line, and every job succeeds once.
//!
//! A worker keeps the connections its pool already holds, so taking the free slots alone
//! would touch nothing. The fault is made to bite: while the other client holds every free
//! slot, the workers' own sessions are ended (`pg_terminate_backend`, once a second) and
//! the other client takes the slots they free, so for the whole hold a worker that needs a
//! connection is refused ("too many clients already"). A worker can still win a freed slot
//! before the other client does; the hold then goes on until one has been refused.

use std::time::{Duration, Instant};

use anyhow::Context;
use warren_core::JobState;
use warren_store::{Store, StoreConfig};
use warren_testkit::{DisposablePostgres, PostgresOptions, TestEnv};

use super::{LabWorker, Load, log_dir, wait_ready};
use crate::support::wait_count;

/// The server's `max_connections`: room for two workers' pools (5 each, plus a LISTEN
/// connection) and the test's own store, with some left for the other client to take.
const MAX_CONNECTIONS: u32 = 30;

/// How long the other client holds every connection.
const HOLD: Duration = Duration::from_secs(10);

/// How long it goes on holding them if no worker has been refused yet.
const MAX_HOLD: Duration = Duration::from_secs(40);

/// The workers' logs, in the test's log directory.
const LOGS: [&str; 2] = ["x1.log", "x2.log"];

/// The WARN lines in a worker's log that name a refused connection.
fn refusals(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("WARN") && l.contains("too many clients"))
        .collect()
}

/// How many such lines the workers have logged so far.
fn refusals_logged(logs: &std::path::Path) -> anyhow::Result<usize> {
    let mut n = 0;
    for log in LOGS {
        let text = std::fs::read_to_string(logs.join(log))
            .with_context(|| format!("reading {}", logs.join(log).display()))?;
        n += refusals(&text).len();
    }
    Ok(n)
}

/// The other client: connections of its own to the disposable server, each a one-connection
/// pool, opened until the server refuses more.
struct Hog {
    config: StoreConfig,
    held: Vec<Store>,
    /// What the server said when it refused the last connection.
    refusal: Option<String>,
}

impl Hog {
    fn new(url: String) -> Hog {
        let mut config = StoreConfig::new(url);
        config.max_connections = 1;
        // sqlx retries "too many clients" until this runs out, then reports a pool timeout.
        config.acquire_timeout = Duration::from_millis(500);
        config.application_name = "fault-lab hog".to_owned();
        Hog {
            config,
            held: Vec::new(),
            refusal: None,
        }
    }

    /// Opens connections until the server refuses one; returns how many it opened.
    async fn fill(&mut self) -> anyhow::Result<usize> {
        let before = self.held.len();
        loop {
            anyhow::ensure!(
                self.held.len() < MAX_CONNECTIONS as usize,
                "the server took more than max_connections ({MAX_CONNECTIONS}) connections"
            );
            match Store::connect(&self.config).await {
                Ok(store) => self.held.push(store),
                Err(e) => {
                    self.refusal = Some(format!("{}", warren_core::ErrorChain(&e)));
                    return Ok(self.held.len() - before);
                }
            }
        }
    }

    /// Closes one held connection, so that one more client (the test's `psql`) gets in.
    async fn let_one_go(&mut self) {
        if let Some(store) = self.held.pop() {
            store.close().await;
        }
    }

    /// Closes every held connection.
    async fn release(&mut self) {
        for store in self.held.drain(..) {
            store.close().await;
        }
    }
}

/// Ends every session of a `warren-worker` on `pg` (as `psql` on a slot the hog frees for
/// it); returns how many.
async fn terminate_workers(pg: &DisposablePostgres, hog: &mut Hog) -> anyhow::Result<u32> {
    let sql = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
               WHERE application_name LIKE 'warren-worker %'";
    let mut last = String::new();
    for _ in 0..5 {
        hog.let_one_go().await;
        let out = tokio::process::Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &pg.port().to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-Atc", sql])
            .kill_on_drop(true)
            .output()
            .await
            .context("running psql (is the PostgreSQL client installed?)")?;
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            return text
                .trim()
                .parse()
                .with_context(|| format!("psql printed {text:?}"));
        }
        // A worker reconnecting took the slot first: free another.
        last = String::from_utf8_lossy(&out.stderr).into_owned();
    }
    anyhow::bail!("psql could not get a connection in five tries: {last}")
}

/// `line` without its terminal colour codes (`ESC [ ... m`), for printing.
fn without_colours(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_exhausted_by_another_client_lose_no_job() -> anyhow::Result<()> {
    let pg = DisposablePostgres::start_with(PostgresOptions {
        max_connections: MAX_CONNECTIONS,
    })
    .await?;
    let env = TestEnv::with_services(None, Some(&pg.admin_url()), &["default"]).await?;
    let logs = log_dir("pg-exhausted")?;
    let url = env.amqp_url.clone();
    let mut w1 = LabWorker::spawn(&env, "x1", &url, &logs.join(LOGS[0]))?;
    let mut w2 = LabWorker::spawn(&env, "x2", &url, &logs.join(LOGS[1]))?;
    wait_ready(&w1).await?;
    wait_ready(&w2).await?;

    let load = Load::start(&env);
    wait_count(&env.store, JobState::Succeeded, 1_000).await?;

    let began = Instant::now();
    let mut hog = Hog::new(pg.admin_url());
    let taken = hog.fill().await?;
    anyhow::ensure!(taken > 0, "the other client got no connection at all");
    let refusal = hog.refusal.clone().unwrap_or_default();
    eprintln!(
        "FAULT-LAB pg-exhausted: the other client holds {taken} connections; the next was refused: {refusal}"
    );
    let mut terminated = 0;
    // A worker may win a freed slot before the other client takes it back; the hold goes
    // on (up to MAX_HOLD) until the fault has bitten, so that the test does not depend on
    // who wins that race.
    while began.elapsed() < HOLD || (refusals_logged(&logs)? == 0 && began.elapsed() < MAX_HOLD) {
        terminated += terminate_workers(&pg, &mut hog).await?;
        hog.fill().await?;
        for w in [&mut w1, &mut w2] {
            assert!(
                w.process.child.try_wait()?.is_none(),
                "a worker exited while the connections were exhausted"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "FAULT-LAB pg-exhausted: {terminated} worker sessions ended over the hold; the other client held {} connections at the end",
        hog.held.len()
    );
    hog.release().await;
    let over = Instant::now();
    wait_ready(&w1).await?;
    wait_ready(&w2).await?;

    let settled = load.settle(&env.store).await?;
    let started = w1.started().await? + w2.started().await?;
    settled.report("pg-exhausted", started, began, over);
    // The workers said why they waited: the store's words for a pool that got no new
    // connection name the refusal.
    let mut warned = 0;
    for log in LOGS {
        let text = std::fs::read_to_string(logs.join(log))?;
        let said = refusals(&text);
        eprintln!(
            "FAULT-LAB pg-exhausted: {log}: {} WARN lines name the refusal, e.g. {:?}",
            said.len(),
            said.first().map(|l| without_colours(l))
        );
        warned += said.len();
    }
    assert!(
        warned > 0,
        "no worker logged a WARN line naming the refused connections (logs in {})",
        logs.display()
    );
    w1.stop().await?;
    w2.stop().await?;
    env.cleanup().await
}
