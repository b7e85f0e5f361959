//! Removing tests' databases and namespaces even when the test fails, and sweeping up after
//! runs that died.
//!
//! Every [`TestEnv`](crate::TestEnv) is recorded in the `warren_sandboxes` table of the
//! server's `postgres` database before anything is made (see `warren_store::provision`).
//! A [`SandboxGuard`] removes it when dropped unless [`TestEnv::cleanup`](crate::TestEnv)
//! did so first, which covers a failed assertion or an early `?`; a run killed outright
//! leaves its record, and [`sweep`] (run once per test process) removes what records older
//! than [`STALE_AFTER`] name.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use warren_broker::{Broker, BrokerConfig, Topology};
use warren_core::{Namespace, QueueName};
use warren_store::provision::{self, Sandbox};

/// Every test database's name starts with this.
pub(crate) const DATABASE_PREFIX: &str = "warren_t_";

/// Age after which a sandbox still present is taken for a leftover: no test runs that long.
pub const STALE_AFTER: Duration = Duration::from_secs(3600);

/// How long a drop waits for its removal; a service that does not answer leaves the record
/// for a later sweep rather than hanging the test.
const DROP_REMOVAL_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the shared services are, as the env that owns a sandbox reaches them.
#[derive(Clone, Debug)]
pub(crate) struct Services {
    pub(crate) amqp_url: String,
    pub(crate) admin_database_url: String,
}

/// Removes a sandbox's RabbitMQ objects, then its database, then its record. RabbitMQ deletes
/// of objects that do not exist succeed, so a half-made sandbox is removed as well.
pub(crate) async fn remove(services: &Services, sandbox: &Sandbox) -> anyhow::Result<()> {
    if !sandbox.namespace.is_empty() {
        let queues: Vec<QueueName> = sandbox
            .queues
            .iter()
            .filter_map(|q| QueueName::new(q).ok())
            .collect();
        let mut config = BrokerConfig::new(&services.amqp_url);
        config.connection_name = format!("{} cleanup", sandbox.database);
        config.topology = Topology {
            namespace: Namespace::new(&sandbox.namespace)?,
            ..Topology::default()
        };
        let broker = Broker::connect(config)
            .await
            .context("connecting to RabbitMQ to delete a test namespace")?;
        let deleted = broker.delete_topology(&queues).await;
        broker.close().await;
        deleted.with_context(|| format!("deleting RabbitMQ namespace `{}`", sandbox.namespace))?;
    }
    provision::drop_database(&services.admin_database_url, &sandbox.database)
        .await
        .with_context(|| format!("dropping test database `{}`", sandbox.database))?;
    provision::forget_sandbox(&services.admin_database_url, &sandbox.database).await?;
    Ok(())
}

/// Removes a sandbox from synchronous code (a `Drop`): on a thread of its own with a small
/// runtime of its own, since the caller's runtime may be the one blocked here, or unwinding.
fn remove_blocking(services: Services, sandbox: Sandbox) {
    let (done, wait) = std::sync::mpsc::channel();
    let database = sandbox.database.clone();
    let spawned = std::thread::Builder::new()
        .name("testkit-cleanup".to_owned())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building a runtime for cleanup")
                .and_then(|rt| rt.block_on(remove(&services, &sandbox)));
            let _ = done.send(result);
        });
    if let Err(e) = spawned {
        tracing::warn!(%database, error = %e, "could not start the cleanup thread; a later sweep removes it");
        return;
    }
    match wait.recv_timeout(DROP_REMOVAL_TIMEOUT) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(%database, error = format!("{e:#}"), "cleanup failed; a later sweep removes it");
        }
        Err(_) => {
            tracing::warn!(%database, "cleanup did not finish in time; a later sweep removes it");
        }
    }
}

/// Removes, when dropped, the sandbox it guards, unless [`SandboxGuard::disarm`] was called.
#[derive(Debug)]
pub(crate) struct SandboxGuard {
    services: Services,
    sandbox: Sandbox,
    armed: bool,
}

impl SandboxGuard {
    /// Records `sandbox` and guards it: from here on, whatever fails removes it.
    pub(crate) async fn record(services: Services, sandbox: Sandbox) -> anyhow::Result<Self> {
        provision::record_sandbox(&services.admin_database_url, &sandbox)
            .await
            .context("recording the test's sandbox (is PostgreSQL running on 127.0.0.1:5432?)")?;
        Ok(Self {
            services,
            sandbox,
            armed: true,
        })
    }

    /// The caller removes the sandbox itself (and leaves the record to the sweep if it
    /// fails): the drop does nothing, so nothing is removed twice.
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for SandboxGuard {
    fn drop(&mut self) {
        if self.armed {
            remove_blocking(self.services.clone(), self.sandbox.clone());
        }
    }
}

/// Removes the sandboxes of runs that died: every recorded one older than `older_than`, and
/// every unrecorded `warren_t_*` database older than that (from runs before the register, or
/// made beside a test's own database), with its namespace when its name gives it. Returns
/// the databases removed.
pub async fn sweep(older_than: Duration) -> anyhow::Result<Vec<String>> {
    let services = Services::from_env();
    let admin = &services.admin_database_url;
    let mut leftovers = provision::claim_stale_sandboxes(admin, older_than).await?;
    for database in
        provision::stale_unrecorded_databases(admin, DATABASE_PREFIX, older_than).await?
    {
        // `warren_t_<12 hex>` goes with namespace `t<12 hex>` and, nearly always, queue
        // `default`; other names (`<that>_m`, ...) are databases only.
        let tail = &database[DATABASE_PREFIX.len()..];
        let own = tail.len() == 12 && tail.bytes().all(|b| b.is_ascii_hexdigit());
        leftovers.push(Sandbox {
            namespace: if own {
                format!("t{tail}")
            } else {
                String::new()
            },
            queues: if own {
                vec!["default".to_owned()]
            } else {
                Vec::new()
            },
            database,
        });
    }
    let mut removed = Vec::new();
    for sandbox in leftovers {
        match remove(&services, &sandbox).await {
            Ok(()) => removed.push(sandbox.database),
            Err(e) => {
                tracing::warn!(database = %sandbox.database, error = format!("{e:#}"), "could not remove a leftover test sandbox");
                // Claimed means unrecorded: record it again for a later sweep.
                let _ = provision::record_sandbox(admin, &sandbox).await;
            }
        }
    }
    if !removed.is_empty() {
        tracing::info!(?removed, "removed the sandboxes of earlier test runs");
    }
    Ok(removed)
}

/// Sweeps once per process, before its first test env; a failure only warns, since the
/// test itself may still run.
pub(crate) async fn sweep_once() {
    static SWEPT: AtomicBool = AtomicBool::new(false);
    if SWEPT.swap(true, Ordering::SeqCst) {
        return;
    }
    if let Err(e) = sweep(STALE_AFTER).await {
        tracing::warn!(
            error = format!("{e:#}"),
            "could not sweep the leftovers of earlier test runs"
        );
    }
}

impl Services {
    pub(crate) fn from_env() -> Self {
        Self {
            amqp_url: crate::env::service_url(
                "WARREN_TEST_AMQP_URL",
                "amqp://guest:guest@127.0.0.1:5672/%2f",
            ),
            admin_database_url: crate::env::service_url(
                "WARREN_TEST_DATABASE_URL",
                "postgres://postgres:postgres@127.0.0.1:5432/postgres",
            ),
        }
    }
}
