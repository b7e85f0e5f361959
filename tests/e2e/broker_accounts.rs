//! The RabbitMQ accounts of `deploy/rabbitmq/definitions.json`, loaded into a node of the
//! test's own the way a deployment loads them (`load_definitions` in `rabbitmq.conf`): each
//! account does its job through the real client and worker, and is refused what it has no
//! business doing. The shared broker on 5672 never sees these definitions.
//!
//! The regexes are written for the default namespace (`warren`), so everything here uses it;
//! on a node of its own that collides with nothing.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use warren_broker::{Broker, BrokerConfig, Topology};
use warren_client::{Client, NewJob};
use warren_core::{JobState, QueueName};
use warren_runtime::Worker;
use warren_testkit::raw_amqp::{RawProperties, RawPublisher};
use warren_testkit::{DisposableRabbit, RabbitOptions, TestEnv, wait_until};
use warren_worker::tasks::register_builtins;

use crate::support::wait_all_terminal;

/// The vhost the definitions create.
const VHOST: &str = "warren";

fn definitions_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/rabbitmq/definitions.json")
}

/// The development password of each account, as `docs/operations.md` lists them.
fn url(node: &DisposableRabbit, user: &str, vhost: &str) -> String {
    format!(
        "amqp://{user}:{user}-dev@127.0.0.1:{}/{}",
        node.port(),
        vhost.replace('/', "%2f")
    )
}

fn config(node: &DisposableRabbit, user: &str) -> BrokerConfig {
    let mut config = BrokerConfig::new(url(node, user, VHOST));
    config.connection_name = format!("broker-accounts {user}");
    config.confirm_timeout = Duration::from_secs(10);
    config.connect_timeout = Duration::from_secs(10);
    config.topology = Topology::default();
    config
}

/// The error chain of `result`, which must be an access refusal naming `user`.
fn assert_refused<T, E>(what: &str, user: &str, result: Result<T, E>)
where
    anyhow::Error: From<E>,
{
    let shown = match result {
        Ok(_) => panic!("{user} was allowed to {what}"),
        Err(e) => format!("{:#}", anyhow::Error::from(e)),
    };
    assert!(
        shown.contains("ACCESS_REFUSED") || shown.contains("access to"),
        "{user} may not {what}, refused by the broker's permissions, but got: {shown}"
    );
}

/// Declares one queue outside Warren's names on a connection of its own (a refused declare
/// closes the channel).
async fn declare_foreign_queue(node: &DisposableRabbit, user: &str) -> anyhow::Result<()> {
    let mut raw = RawPublisher::connect(&url(node, user, VHOST)).await?;
    raw.declare_queue("not-warren.jobs", &[]).await
}

/// Publishes one message to `exchange` on a connection of its own.
async fn raw_publish(
    node: &DisposableRabbit,
    user: &str,
    exchange: &str,
    key: &str,
) -> anyhow::Result<()> {
    let mut raw = RawPublisher::connect(&url(node, user, VHOST)).await?;
    raw.publish(
        exchange,
        key,
        &RawProperties {
            delivery_mode: Some(2),
            ..RawProperties::default()
        },
        b"{}",
    )
    .await?;
    raw.close().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_account_does_its_job_and_is_refused_the_rest() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let result = accounts(&env).await;
    let cleanup = env.cleanup().await;
    result?;
    cleanup
}

async fn accounts(env: &TestEnv) -> anyhow::Result<()> {
    let definitions = definitions_path().canonicalize()?;
    let node = DisposableRabbit::start_with(RabbitOptions {
        conf: vec![format!("load_definitions = {}", definitions.display())],
        ..RabbitOptions::default()
    })
    .await?;
    let queues = vec![QueueName::new("default")?];

    // Nobody but the worker and the admin may create Warren's topology.
    let producer = Broker::connect(config(&node, "warren-producer")).await?;
    assert_refused(
        "declare Warren's topology",
        "warren-producer",
        producer.declare(&queues).await,
    );
    let monitor = Broker::connect(config(&node, "warren-monitor")).await?;
    assert_refused(
        "declare Warren's topology",
        "warren-monitor",
        monitor.declare(&queues).await,
    );

    // The worker account: a real worker declares everything it needs and consumes.
    let mut worker_config = env.worker_config("accounts");
    worker_config.queues = queues.clone();
    let worker = env
        .start_worker_via(
            register_builtins(Worker::builder()),
            worker_config,
            config(&node, "warren-worker"),
            &env.store_config,
        )
        .await?;

    let outcome = jobs_and_refusals(&node, env, &queues, &producer, &monitor).await;
    let stopped = worker.stop().await;
    outcome?;
    let stats = stopped?;
    anyhow::ensure!(stats.succeeded >= 3, "the worker ran the jobs: {stats:?}");

    // Admin things: the admin account may remove the whole topology.
    let admin = Broker::connect(config(&node, "warren-admin")).await?;
    admin
        .delete_topology(&[queues[0].clone(), QueueName::new("emails")?])
        .await?;
    anyhow::ensure!(admin.queue_depth(&queues[0]).await?.is_none());
    admin.close().await;
    producer.close().await;
    monitor.close().await;
    Ok(())
}

async fn jobs_and_refusals(
    node: &DisposableRabbit,
    env: &TestEnv,
    queues: &[QueueName],
    producer: &Broker,
    monitor: &Broker,
) -> anyhow::Result<()> {
    // The monitor account (what KEDA's RabbitMQ scaler logs in as) reads the queue's ready
    // count and consumers with a passive declare, which needs no permission.
    wait_until(
        Duration::from_secs(30),
        "the worker to consume warren.q.default",
        || async {
            Ok(match monitor.queue_depth(&queues[0]).await? {
                Some(depth) if depth.consumers >= 1 => Ok(()),
                other => Err(format!("{other:?}")),
            })
        },
    )
    .await?;

    // The producer account enqueues through warren-client: an immediate job to `<ns>.work`,
    // a retried one (the worker's promoter publishes its second attempt), and a delayed one
    // through the intake queue (the default exchange).
    let client = Client::from_broker(producer.clone()).await?;
    let ids = vec![
        client
            .enqueue(NewJob::new("warren.echo", &json!({"from": "producer"})))
            .await?,
        client
            .enqueue(NewJob::new("warren.fail", &json!({"times": 1})).max_attempts(3))
            .await?,
        client
            .enqueue(NewJob::new("warren.echo", &json!("later")).delay(Duration::from_millis(300)))
            .await?,
    ];
    let rows = wait_all_terminal(&env.store, &ids, Duration::from_secs(60)).await?;
    for id in &ids {
        let row = &rows[id];
        anyhow::ensure!(
            row.state == JobState::Succeeded,
            "{} ended {} with {:?}",
            row.task,
            row.state,
            row.errors
        );
    }
    anyhow::ensure!(rows[&ids[1]].attempt == 2, "{:?}", rows[&ids[1]]);

    // The producer may not consume, read the parking queue, publish anywhere but the work
    // exchange and the default exchange, or declare anything.
    assert_refused(
        "consume a work queue",
        "warren-producer",
        producer.consume(&queues[0], 1, "producer").await,
    );
    assert_refused(
        "read parked dead letters",
        "warren-producer",
        producer.peek_parked(10).await,
    );
    for exchange in ["warren.dlx", "amq.direct", "amq.fanout"] {
        assert_refused(
            &format!("publish to {exchange}"),
            "warren-producer",
            raw_publish(node, "warren-producer", exchange, "x").await,
        );
    }
    assert_refused(
        "declare a queue",
        "warren-producer",
        declare_foreign_queue(node, "warren-producer").await,
    );

    // The worker account may not step outside Warren's names: no other queue, no other
    // exchange, no other namespace, no parked dead letters (only admins handle those).
    assert_refused(
        "declare a queue outside Warren's names",
        "warren-worker",
        declare_foreign_queue(node, "warren-worker").await,
    );
    for exchange in ["amq.direct", "amq.topic"] {
        assert_refused(
            &format!("publish to {exchange}"),
            "warren-worker",
            raw_publish(node, "warren-worker", exchange, "x").await,
        );
    }
    let mut other_namespace = config(node, "warren-worker");
    other_namespace.topology.namespace = warren_core::Namespace::new("other")?;
    let other = Broker::connect(other_namespace).await?;
    assert_refused(
        "declare another namespace's topology",
        "warren-worker",
        other.declare(queues).await,
    );
    other.close().await;
    let worker_broker = Broker::connect(config(node, "warren-worker")).await?;
    assert_refused(
        "read parked dead letters",
        "warren-worker",
        worker_broker.peek_parked(10).await,
    );
    assert_refused(
        "purge parked dead letters",
        "warren-worker",
        worker_broker.purge_parked().await,
    );
    worker_broker.close().await;

    // The monitor account reads depths and nothing else.
    assert_refused(
        "consume a work queue",
        "warren-monitor",
        monitor.consume(&queues[0], 1, "monitor").await,
    );
    assert_refused(
        "publish a job",
        "warren-monitor",
        Client::from_broker(monitor.clone())
            .await?
            .enqueue(NewJob::new("warren.noop", &json!({})))
            .await,
    );

    // No account reaches another vhost: the definitions grant only `warren`. (A node that
    // loads definitions at boot makes no default vhost or guest user; add one to try.)
    node.rabbitmqctl(&["add_vhost", "other"]).await?;
    for user in [
        "warren-producer",
        "warren-worker",
        "warren-admin",
        "warren-monitor",
    ] {
        assert_refused(
            "open another vhost",
            user,
            Broker::connect(BrokerConfig::new(url(node, user, "other"))).await,
        );
    }

    // The admin account: a dead letter without a job id, sent straight to the dead-letter
    // exchange, is parked by the worker's reconciler (through the default exchange); the
    // admin reads it and purges it, as `warren dlq` does, and may declare what it likes.
    raw_publish(node, "warren-admin", "warren.dlx", "default").await?;
    let admin = Broker::connect(config(node, "warren-admin")).await?;
    let parked = wait_until(
        Duration::from_secs(30),
        "the reconciler to park the dead letter",
        || async {
            let parked = admin.peek_parked(10).await?;
            Ok(if parked.is_empty() {
                Err("nothing parked yet".to_owned())
            } else {
                Ok(parked)
            })
        },
    )
    .await?;
    anyhow::ensure!(parked.len() == 1, "{parked:?}");
    anyhow::ensure!(admin.purge_parked().await? == 1);
    admin.declare(&[QueueName::new("emails")?]).await?;
    declare_foreign_queue(node, "warren-admin").await?;
    admin.close().await;
    Ok(())
}
