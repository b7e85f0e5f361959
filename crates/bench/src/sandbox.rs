//! A phase's private slice of the shared services: a RabbitMQ namespace with one work queue
//! and, when the phase needs one, a PostgreSQL database of its own.
//!
//! This is what warren-testkit's `TestEnv` does, rebuilt from the same public APIs because
//! `TestEnv` takes its URLs from test-only environment variables and the benchmark takes them
//! from its flags. Each phase gets its own sandbox so one phase's leftovers (unacked
//! messages, queue state) cannot slow the next one down.

use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use warren_broker::{Broker, BrokerConfig, QueueDepth, Topology};
use warren_core::{Namespace, QueueName};
use warren_store::{Store, StoreConfig, provision};

use crate::settings::Settings;
use crate::workload::QUEUE;

/// A private database, created and migrated.
#[derive(Debug)]
pub(crate) struct Database {
    admin_url: String,
    name: String,
    config: StoreConfig,
}

/// A namespace (and maybe a database) that exists until [`Sandbox::remove`].
#[derive(Debug)]
pub(crate) struct Sandbox {
    /// Connection used to declare and delete the topology; the phases open their own.
    admin: Broker,
    pub(crate) broker_config: BrokerConfig,
    pub(crate) queue: QueueName,
    database: Option<Database>,
}

impl Sandbox {
    /// Declares namespace `warren_bench_<run>_<label>` with the work queue, and creates a
    /// database of the same name when `with_database` is set.
    pub(crate) async fn create(
        settings: &Settings,
        run: &str,
        label: &str,
        with_database: bool,
    ) -> anyhow::Result<Sandbox> {
        let name = format!("warren_bench_{run}_{label}");
        let database = if with_database {
            Some(create_database(settings, &name).await?)
        } else {
            None
        };
        match declare(settings, &name).await {
            Ok((admin, broker_config, queue)) => Ok(Sandbox {
                admin,
                broker_config,
                queue,
                database,
            }),
            Err(e) => {
                if let Some(db) = database {
                    drop_database(db).await;
                }
                Err(e)
            }
        }
    }

    /// A new AMQP connection in this namespace, named after its role as RabbitMQ's
    /// connection list shows it. Producers and consumers each get one, as separate processes
    /// would.
    pub(crate) async fn connect(&self, role: &str) -> anyhow::Result<Broker> {
        let mut config = self.broker_config.clone();
        config.connection_name = format!("{} {role}", config.topology.namespace);
        Broker::connect(config)
            .await
            .with_context(|| format!("connecting the {role} to RabbitMQ"))
    }

    /// Ready messages and consumers of the work queue now, as RabbitMQ counts them.
    pub(crate) async fn depth(&self) -> anyhow::Result<QueueDepth> {
        self.admin
            .queue_depth(&self.queue)
            .await
            .context("reading the work queue's depth")?
            .with_context(|| format!("the work queue `{}` has disappeared", self.queue))
    }

    /// The private database, for phases that asked for one.
    pub(crate) fn database(&self) -> anyhow::Result<&Database> {
        self.database
            .as_ref()
            .context("this phase's sandbox was created without a database")
    }

    /// Runs `phase` in this sandbox, then removes the sandbox however the phase ended.
    ///
    /// The phase is given a `stop` token, cancelled on a signal or when it overruns `limit`.
    /// It is never simply dropped: it must wind down what it started (the end-to-end phase
    /// stops its worker gracefully) before the database and queues go, or the worker would
    /// spend its last moments logging errors about both.
    pub(crate) async fn run<T>(
        self,
        limit: Duration,
        shutdown: &CancellationToken,
        phase: impl AsyncFnOnce(&Sandbox, &CancellationToken) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let stop = shutdown.child_token();
        let timer = tokio::spawn({
            let stop = stop.clone();
            async move {
                tokio::time::sleep(limit).await;
                stop.cancel();
            }
        });
        let outcome = match phase(&self, &stop).await {
            Err(e) if e.is::<Stopped>() && shutdown.is_cancelled() => {
                Err(anyhow::anyhow!("interrupted by a signal"))
            }
            Err(e) if e.is::<Stopped>() => Err(anyhow::anyhow!(
                "the phase took longer than {limit:?} (see --timeout-secs)"
            )),
            other => other,
        };
        timer.abort();
        let removed = self.remove().await;
        let value = outcome?;
        removed?;
        Ok(value)
    }

    /// Deletes the queues and exchanges and drops the database.
    async fn remove(self) -> anyhow::Result<()> {
        let deleted = self
            .admin
            .delete_topology(std::slice::from_ref(&self.queue))
            .await
            .with_context(|| {
                format!(
                    "deleting RabbitMQ namespace `{}`",
                    self.broker_config.topology.namespace
                )
            });
        self.admin.close().await;
        if let Some(db) = self.database {
            drop_database(db).await;
        }
        deleted
    }
}

impl Database {
    /// The private database's URL, for provisioning scripts (the admin-reads phase seeds its
    /// rows with one).
    pub(crate) fn url(&self) -> &str {
        &self.config.url
    }

    /// A pool on the private database: the usual size when `max_connections` is `None` (the
    /// worker's), or smaller for the benchmark's own queries, which should not take
    /// connections from the system under test.
    pub(crate) async fn connect(
        &self,
        role: &str,
        max_connections: Option<u32>,
    ) -> anyhow::Result<Store> {
        let mut config = self.config.clone();
        config.application_name = format!("{} {role}", self.name);
        if let Some(max) = max_connections {
            config.max_connections = max;
        }
        Store::connect(&config)
            .await
            .with_context(|| format!("connecting the {role} to Postgres"))
    }
}

async fn create_database(settings: &Settings, name: &str) -> anyhow::Result<Database> {
    let admin_url = settings.admin_database_url.clone();
    provision::create_database(&admin_url, name)
        .await
        .with_context(|| format!("creating database `{name}`"))?;
    let database = Database {
        config: StoreConfig::new(provision::url_for_database(&admin_url, name)?),
        admin_url,
        name: name.to_owned(),
    };
    let migrated = async {
        let store = database.connect("migrations", Some(1)).await?;
        let result = store.migrate().await.context("migrating the database");
        store.close().await;
        result
    }
    .await;
    match migrated {
        Ok(()) => Ok(database),
        Err(e) => {
            drop_database(database).await;
            Err(e)
        }
    }
}

/// Drops a sandbox database, reporting a failure without failing: by then the results are in
/// hand, and the name says where the leftover came from.
async fn drop_database(db: Database) {
    if let Err(e) = provision::drop_database(&db.admin_url, &db.name).await {
        tracing::warn!(database = %db.name, error = %e, "could not drop the benchmark database; drop it by hand");
    }
}

async fn declare(
    settings: &Settings,
    namespace: &str,
) -> anyhow::Result<(Broker, BrokerConfig, QueueName)> {
    let mut config = BrokerConfig::new(settings.amqp_url.clone());
    config.connection_name = format!("{namespace} admin");
    config.topology = Topology {
        namespace: Namespace::new(namespace)?,
        ..Topology::default()
    };
    let admin = Broker::connect(config.clone())
        .await
        .with_context(|| format!("connecting to RabbitMQ at {}", config.redacted_url()))?;
    let queue = QueueName::new(QUEUE)?;
    if let Err(e) = admin.declare(std::slice::from_ref(&queue)).await {
        admin.close().await;
        return Err(e).with_context(|| format!("declaring RabbitMQ namespace `{namespace}`"));
    }
    Ok((admin, config, queue))
}

/// A phase's work ended early because its `stop` token was cancelled; [`Sandbox::run`] says
/// why (a signal or the time limit).
#[derive(Debug)]
pub(crate) struct Stopped;

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stopped before the phase finished")
    }
}

impl std::error::Error for Stopped {}

/// Runs `work` until it ends or `stop` is cancelled, whichever comes first.
pub(crate) async fn stoppable<T>(
    stop: &CancellationToken,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::select! {
        outcome = work => outcome,
        () = stop.cancelled() => Err(Stopped.into()),
    }
}
