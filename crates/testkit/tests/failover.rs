//! A broker URL list fails over: a connection given the URLs of several nodes connects to the
//! first that answers and, when that node dies, recovers on another by itself, and so does a
//! publisher opened on it. Two separate disposable nodes stand in for a cluster here (the
//! cluster itself is tested end to end in tests/e2e/fault_lab/cluster.rs).

use std::collections::BTreeMap;
use std::time::Duration;

use warren_broker::{Broker, BrokerConfig, Error};
use warren_core::{QueueName, RawMessage};
use warren_testkit::{DisposableRabbit, wait_until};

fn config(url: String) -> BrokerConfig {
    let mut config = BrokerConfig::new(url);
    config.connect_timeout = Duration::from_secs(5);
    config.heartbeat = Duration::from_secs(2);
    config
}

/// Which of `nodes` (by index) hold a connection whose client-provided name has `name`.
async fn nodes_with(name: &str, nodes: &[&DisposableRabbit]) -> anyhow::Result<Vec<usize>> {
    let mut with = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let listed = node
            .rabbitmqctl(&["list_connections", "client_properties"])
            .await?;
        if listed.contains(name) {
            with.push(i);
        }
    }
    Ok(with)
}

/// `step`, or an error naming it if it takes over 30 s: a hang fails the test with its place.
async fn within<T>(step: &str, fut: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .map_err(|_| anyhow::anyhow!("{step}: no result within 30 s"))
}

#[tokio::test]
async fn a_connection_fails_over_to_the_next_node_of_its_url_list() -> anyhow::Result<()> {
    let mut a = DisposableRabbit::start().await?;
    let mut b = DisposableRabbit::start().await?;
    let mut cfg = config(format!("{},{}", a.amqp_url(), b.amqp_url()));
    cfg.connection_name = "failover-test".to_owned();
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn,warren_broker=info,lapin=info")
        .with_test_writer()
        .try_init();
    let broker = within("connecting", Broker::connect(cfg.clone())).await??;
    assert_eq!(
        nodes_with("failover-test", &[&a, &b]).await?,
        [0],
        "the first node first"
    );

    // A publisher opened before the failover, and the queue it publishes to, declared on node
    // b beforehand (the two nodes share nothing).
    let publisher = broker.publisher().await?;
    let on_b = Broker::connect(config(b.amqp_url())).await?;
    let early = QueueName::new("during-failover")?;
    on_b.declare(std::slice::from_ref(&early)).await?;

    a.kill().await?;
    // A publish right after the kill waits for the connection to be replaced and goes to
    // node b on a new channel. One sent into the dying connection may fail (its outcome is
    // unknown, so it is an error, never a success); the publisher then takes a new channel.
    let killed = std::time::Instant::now();
    let message = RawMessage {
        message_id: Some("failover-1".to_owned()),
        content_type: None,
        timestamp: None,
        headers: BTreeMap::new(),
        body: b"{}".to_vec(),
    };
    let mut refused = Vec::new();
    loop {
        match within(
            "publishing after the kill",
            publisher.publish(early.as_str(), &message),
        )
        .await?
        {
            Ok(()) => break,
            Err(e) => {
                refused.push(format!("{}", warren_core::ErrorChain(&e)));
                anyhow::ensure!(
                    refused.len() < 5,
                    "the publisher never recovered: {refused:#?}"
                );
            }
        }
    }
    eprintln!(
        "published on node b {:?} after the kill, after {} failed attempt(s): {refused:?}",
        killed.elapsed(),
        refused.len()
    );
    assert_eq!(
        on_b.queue_depth(&early).await?.map(|d| d.ready),
        Some(1),
        "the confirmed message is on node b, once"
    );

    // The broker's connection was replaced on its own, on the next node of the list.
    let queue = QueueName::new("after-failover")?;
    wait_until(
        Duration::from_secs(60),
        "the connection to recover on node b",
        || async {
            if !broker.is_connected() {
                return Ok(Err("reconnecting".to_owned()));
            }
            // Bounded, so that a declare stuck on a recovering channel is retried (and a
            // connection that never recovers fails the test) rather than hanging it.
            let declare = broker.declare(std::slice::from_ref(&queue));
            Ok(
                match tokio::time::timeout(Duration::from_secs(5), declare).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(format!("{}", warren_core::ErrorChain(&e))),
                    Err(_) => Err("the declare did not answer within 5 s".to_owned()),
                },
            )
        },
    )
    .await?;
    assert_eq!(nodes_with("failover-test", &[&b]).await?, [0]);
    assert!(
        on_b.queue_depth(&queue).await?.is_some(),
        "declared on node b"
    );
    on_b.close().await;
    within("closing the recovered connection", broker.close()).await?;

    // A list whose first node is down connects to the next at once.
    let fresh = within(
        "connecting with the first node down",
        Broker::connect(cfg.clone()),
    )
    .await??;
    assert!(fresh.is_connected());
    fresh.close().await;

    // With every node down, the error is the last node's, and transient.
    // Killed and waited for: dropping the node stops it in the background, and a connect
    // reaching it mid-shutdown gets a reset, not a refusal.
    b.kill().await?;
    let err = within("connecting with every node down", Broker::connect(cfg))
        .await?
        .expect_err("no node answers");
    assert!(
        matches!(err, Error::Unreachable { .. }) && err.is_transient(),
        "{err}"
    );
    Ok(())
}
