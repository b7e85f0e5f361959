//! Scenario 5: a three-node RabbitMQ cluster loses the node that leads the work queue.
//! Workers and the producer are given every node's URL; the quorum queue (replicated on all
//! three) elects another leader, the clients whose node died fail over to the next URL, and
//! the killed node rejoins when restarted.

use std::time::{Duration, Instant};

use warren_core::JobState;
use warren_testkit::{RabbitCluster, TestEnv, wait_until};

use super::{LabWorker, Load, log_dir, wait_ready};
use crate::support::wait_count;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_of_the_work_queue_loses_no_job() -> anyhow::Result<()> {
    let mut cluster = RabbitCluster::start(3).await?;
    let urls = cluster.amqp_urls();
    let env = TestEnv::with_services(Some(&urls), None, &["default"]).await?;
    let queue = env.broker_config.topology.queue(&env.queues[0]);
    let members = cluster.nodes[0]
        .rabbitmqctl(&["list_queues", "-q", "--no-table-headers", "name", "members"])
        .await?;
    let line = members
        .lines()
        .find(|l| l.starts_with(&queue))
        .unwrap_or_default();
    for node in &cluster.nodes {
        assert!(
            line.contains(node.node_name()),
            "a replica on every node: {members}"
        );
    }

    let logs = log_dir("cluster")?;
    // The second worker lists the nodes in another order, so the two start on different
    // nodes (as a fleet configured with the same list spreads over it when a node dies).
    let rotated = {
        let mut list: Vec<&str> = urls.split(',').collect();
        list.rotate_left(1);
        list.join(",")
    };
    let w1 = LabWorker::spawn(&env, "c1", &urls, &logs.join("c1.log"))?;
    let w2 = LabWorker::spawn(&env, "c2", &rotated, &logs.join("c2.log"))?;
    wait_ready(&w1).await?;
    wait_ready(&w2).await?;

    let load = Load::start(&env);
    wait_count(&env.store, JobState::Succeeded, 1_000).await?;

    let leader = cluster.wait_for_leader(&queue, None).await?;
    let began = Instant::now();
    cluster.nodes[leader].kill().await?;
    let new_leader = cluster.wait_for_leader(&queue, Some(leader)).await?;
    eprintln!("FAULT-LAB cluster: leader node {leader} killed; node {new_leader} leads now");
    // The cluster runs on two nodes for a while, then the third comes back and rejoins.
    tokio::time::sleep(Duration::from_secs(5)).await;
    cluster.nodes[leader].restart().await?;
    let rejoined = &cluster.nodes[leader];
    wait_until(
        Duration::from_secs(60),
        "the restarted node to rejoin",
        || async {
            Ok(
                match rejoined
                    .rabbitmqctl(&["list_queues", "-q", "--no-table-headers", "name", "online"])
                    .await
                {
                    Ok(listed)
                        if listed
                            .lines()
                            .any(|l| l.starts_with(&queue) && l.contains(rejoined.node_name())) =>
                    {
                        Ok(())
                    }
                    other => Err(format!("{other:?}")),
                },
            )
        },
    )
    .await?;

    let settled = load.settle(&env.store).await?;
    let started = w1.started().await? + w2.started().await?;
    // The cluster keeps serving while the node is down: measured from the kill.
    settled.report("cluster-leader-kill", started, began, began);
    w1.stop().await?;
    w2.stop().await?;
    env.cleanup().await
}
