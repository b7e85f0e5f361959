//! DisposableRabbit does what fault tests will rely on: a node that starts, dies when killed,
//! comes back on the same port with its durable queues, and is gone after drop.

use std::time::Duration;

use warren_broker::{Broker, BrokerConfig};
use warren_core::QueueName;
use warren_testkit::DisposableRabbit;

fn config(url: String) -> BrokerConfig {
    let mut config = BrokerConfig::new(url);
    config.connect_timeout = Duration::from_secs(5);
    config
}

#[tokio::test]
async fn a_disposable_node_can_be_killed_and_restarted() -> anyhow::Result<()> {
    let mut node = DisposableRabbit::start().await?;
    let url = node.amqp_url();
    assert_ne!(node.port(), 5672, "never the shared node's port");
    let queue = QueueName::new("kept")?;
    let broker = Broker::connect(config(url.clone())).await?;
    broker.declare(std::slice::from_ref(&queue)).await?;
    broker.close().await;

    node.kill().await?;
    let err = Broker::connect(config(url.clone()))
        .await
        .expect_err("a killed node accepts no connection");
    assert!(err.is_transient(), "{err}");

    node.restart().await?;
    let broker = Broker::connect(config(url.clone())).await?;
    assert!(
        broker.queue_depth(&queue).await?.is_some(),
        "the durable queue survived the restart"
    );
    broker.close().await;

    let dir = node.dir().to_owned();
    drop(node);
    assert!(!dir.exists(), "{} is removed on drop", dir.display());
    assert!(
        Broker::connect(config(url)).await.is_err(),
        "the node is gone after drop"
    );
    Ok(())
}
