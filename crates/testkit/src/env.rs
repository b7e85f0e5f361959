use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use warren_broker::{Broker, BrokerConfig, Topology};
use warren_core::{Namespace, QueueName};
use warren_runtime::{Worker, WorkerBuilder, WorkerConfig, WorkerStats};
use warren_store::{Store, StoreConfig, provision};

use crate::sandbox::{DATABASE_PREFIX, SandboxGuard, Services};

#[allow(
    clippy::disallowed_methods,
    reason = "test-only: where the shared test services are"
)]
pub(crate) fn service_url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// Test output at `RUST_LOG` (default `warn`), once per process.
fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// One test's private slice of the shared services: a database and a RabbitMQ namespace,
/// removed by [`TestEnv::cleanup`], or when the env is dropped without it (a failed test).
#[derive(Debug)]
pub struct TestEnv {
    /// The env's name: its database's name, also used as a prefix of worker ids.
    pub name: String,
    /// The RabbitMQ URL (or URL list): the shared one (`WARREN_TEST_AMQP_URL`) unless the env
    /// was made [`TestEnv::with_services`].
    pub amqp_url: String,
    /// The administration database URL of the env's server: the shared one
    /// (`WARREN_TEST_DATABASE_URL`) unless the env was made [`TestEnv::with_services`].
    pub admin_database_url: String,
    /// The URL of this env's own database.
    pub database_url: String,
    /// Reaches the shared broker under this env's namespace.
    pub broker_config: BrokerConfig,
    /// Reaches this env's database.
    pub store_config: StoreConfig,
    /// An open connection, for publishing and inspecting in the test itself.
    pub broker: Broker,
    /// An open pool on this env's migrated database.
    pub store: Store,
    /// The work queues declared for the env.
    pub queues: Vec<QueueName>,
    guard: SandboxGuard,
}

impl TestEnv {
    /// A fresh database and namespace, with the schema migrated and `queues` declared.
    pub async fn new(queues: &[&str]) -> anyhow::Result<TestEnv> {
        Self::with_delivery_limit(queues, Topology::DEFAULT_DELIVERY_LIMIT).await
    }

    /// Like [`TestEnv::new`], with the work queues' `x-delivery-limit` set to
    /// `delivery_limit`, for tests of poison messages and redelivery.
    pub async fn with_delivery_limit(
        queues: &[&str],
        delivery_limit: u32,
    ) -> anyhow::Result<TestEnv> {
        init_tracing();
        crate::sandbox::sweep_once().await;
        Self::create(Services::from_env(), queues, delivery_limit).await
    }

    /// Like [`TestEnv::new`], on services of the test's own: a [`DisposableRabbit`]'s URL (or
    /// the comma-separated URLs of a [`RabbitCluster`]) and a [`DisposablePostgres`]'s
    /// administration URL; `None` for the shared one. The env's database is made on that
    /// server, and recorded there for removal.
    ///
    /// [`DisposableRabbit`]: crate::DisposableRabbit
    /// [`RabbitCluster`]: crate::RabbitCluster
    /// [`DisposablePostgres`]: crate::DisposablePostgres
    pub async fn with_services(
        amqp_url: Option<&str>,
        admin_database_url: Option<&str>,
        queues: &[&str],
    ) -> anyhow::Result<TestEnv> {
        init_tracing();
        let shared = Services::from_env();
        let services = Services {
            amqp_url: amqp_url.map_or(shared.amqp_url, str::to_owned),
            admin_database_url: admin_database_url.map_or(shared.admin_database_url, str::to_owned),
        };
        Self::create(services, queues, Topology::DEFAULT_DELIVERY_LIMIT).await
    }

    async fn create(
        services: Services,
        queues: &[&str],
        delivery_limit: u32,
    ) -> anyhow::Result<TestEnv> {
        // The tail of a UUIDv7 is random; its head is the clock, shared by parallel tests.
        let id = uuid::Uuid::now_v7().simple().to_string();
        let short = id[id.len() - 12..].to_owned();
        let name = format!("{DATABASE_PREFIX}{short}");
        let namespace = Namespace::new(format!("t{short}"))?;
        let queues = queues
            .iter()
            .map(|q| QueueName::new(*q))
            .collect::<Result<Vec<_>, _>>()?;
        // Recorded before anything is made; from here on, a failure removes what was.
        let guard = SandboxGuard::record(
            services.clone(),
            provision::Sandbox {
                database: name.clone(),
                namespace: namespace.to_string(),
                queues: queues.iter().map(|q| q.to_string()).collect(),
            },
        )
        .await?;
        let Services {
            amqp_url,
            admin_database_url,
        } = services;
        provision::create_database(&admin_database_url, &name)
            .await
            .context("creating the test database (is PostgreSQL running on 127.0.0.1:5432?)")?;
        let database_url = provision::url_for_database(&admin_database_url, &name)?;
        let mut store_config = StoreConfig::new(&database_url);
        store_config.application_name = name.clone();
        let store = Store::connect(&store_config).await?;
        store.migrate().await?;

        let mut broker_config = BrokerConfig::new(&amqp_url);
        broker_config.connection_name = name.clone();
        broker_config.confirm_timeout = Duration::from_secs(10);
        broker_config.topology = Topology {
            namespace,
            delivery_limit,
        };
        let broker = Broker::connect(broker_config.clone())
            .await
            .context("connecting to the test RabbitMQ (is it running on 127.0.0.1:5672?)")?;
        broker.declare(&queues).await?;
        Ok(TestEnv {
            name,
            amqp_url,
            admin_database_url,
            database_url,
            broker_config,
            store_config,
            broker,
            store,
            queues,
            guard,
        })
    }

    /// The RabbitMQ namespace every exchange and queue of this env is prefixed with.
    pub fn namespace(&self) -> &str {
        self.broker_config.topology.namespace.as_str()
    }

    /// A worker config for this env's queues with test-friendly timings.
    pub fn worker_config(&self, id: &str) -> WorkerConfig {
        let mut cfg = WorkerConfig::new(format!("{}-{id}", self.name), self.queues.clone());
        cfg.heartbeat_interval = Duration::from_millis(500);
        cfg.shutdown_grace = Duration::from_secs(10);
        cfg
    }

    /// Starts an in-process worker on its own connections.
    pub async fn start_worker(
        &self,
        builder: WorkerBuilder,
        config: WorkerConfig,
    ) -> anyhow::Result<RunningWorker> {
        let worker: Worker = builder.build(config)?;
        let broker = Broker::connect(self.broker_config.clone()).await?;
        let store = Store::connect(&self.store_config).await?;
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(worker.run(broker, store, shutdown.clone().cancelled_owned()));
        Ok(RunningWorker { shutdown, handle })
    }

    /// Starts an in-process worker that reaches the services through these configs, e.g.
    /// through a [`Proxy`](crate::Proxy) that a fault test cuts.
    pub async fn start_worker_via(
        &self,
        builder: WorkerBuilder,
        config: WorkerConfig,
        broker_config: BrokerConfig,
        store_config: &StoreConfig,
    ) -> anyhow::Result<RunningWorker> {
        let worker: Worker = builder.build(config)?;
        let broker = Broker::connect(broker_config).await?;
        let store = Store::connect(store_config).await?;
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(worker.run(broker, store, shutdown.clone().cancelled_owned()));
        Ok(RunningWorker { shutdown, handle })
    }

    /// Deletes the namespace's queues and exchanges, drops the database and forgets the
    /// sandbox. If this fails, the sandbox's record stays for a later [`sweep`](crate::sweep)
    /// (the drop does not try again).
    pub async fn cleanup(mut self) -> anyhow::Result<()> {
        self.guard.disarm();
        self.broker.delete_topology(&self.queues).await?;
        self.broker.close().await;
        self.store.close().await;
        provision::drop_database(&self.admin_database_url, &self.name).await?;
        provision::forget_sandbox(&self.admin_database_url, &self.name).await?;
        Ok(())
    }
}

/// A worker running in this process.
#[derive(Debug)]
pub struct RunningWorker {
    /// Cancel it to start the worker's graceful shutdown.
    pub shutdown: CancellationToken,
    /// The worker's task; it ends with the worker's totals or the error that stopped it.
    pub handle: JoinHandle<Result<WorkerStats, warren_runtime::Error>>,
}

impl RunningWorker {
    /// Graceful shutdown, as on SIGTERM; returns the worker's totals.
    pub async fn stop(self) -> anyhow::Result<WorkerStats> {
        self.shutdown.cancel();
        Ok(self.handle.await.context("worker task panicked")??)
    }
}
