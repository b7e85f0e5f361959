//! A RabbitMQ cluster of a test's own: several [`DisposableRabbit`] nodes on one host,
//! sharing an Erlang cookie and joined into one cluster, for tests that lose a node.

use std::time::Duration;

use anyhow::Context;

use crate::{DisposableRabbit, RabbitOptions};

/// Nodes started and joined by a test; each is killed and removed when the cluster is dropped.
#[derive(Debug)]
pub struct RabbitCluster {
    /// The nodes, the first being the one the others joined.
    pub nodes: Vec<DisposableRabbit>,
}

impl RabbitCluster {
    /// Starts `size` nodes with one cookie and joins each to the first
    /// (`rabbitmqctl stop_app; join_cluster; start_app`).
    pub async fn start(size: usize) -> anyhow::Result<RabbitCluster> {
        anyhow::ensure!(size >= 1, "a cluster has at least one node");
        let cookie = uuid::Uuid::now_v7().simple().to_string();
        let mut nodes: Vec<DisposableRabbit> = Vec::with_capacity(size);
        for _ in 0..size {
            let options = RabbitOptions {
                cookie: Some(cookie.clone()),
                ..RabbitOptions::default()
            };
            nodes.push(DisposableRabbit::start_with(options).await?);
        }
        let seed = nodes[0].node_name().to_owned();
        for node in &nodes[1..] {
            node.rabbitmqctl(&["stop_app"]).await?;
            node.rabbitmqctl(&["join_cluster", &seed])
                .await
                .with_context(|| format!("joining {} to {seed}", node.node_name()))?;
            node.rabbitmqctl(&["start_app"]).await?;
        }
        let cluster = RabbitCluster { nodes };
        let status = cluster.nodes[0]
            .rabbitmqctl(&["cluster_status", "--formatter", "json"])
            .await?;
        for node in &cluster.nodes {
            anyhow::ensure!(
                status.contains(node.node_name()),
                "{} is not in the cluster: {status}",
                node.node_name()
            );
        }
        Ok(cluster)
    }

    /// Every node's AMQP URL, comma-separated: what `WARREN_AMQP_URL` takes for a cluster.
    pub fn amqp_urls(&self) -> String {
        self.nodes
            .iter()
            .map(DisposableRabbit::amqp_url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the node leading quorum queue `queue` (its RabbitMQ name), asked of the
    /// first node in `except`'s complement that answers; `None` while no leader is known.
    pub async fn leader_of(
        &self,
        queue: &str,
        except: Option<usize>,
    ) -> anyhow::Result<Option<usize>> {
        let mut last = None;
        for (i, node) in self.nodes.iter().enumerate() {
            if Some(i) == except {
                continue;
            }
            match node
                .rabbitmqctl(&["list_queues", "-q", "--no-table-headers", "name", "leader"])
                .await
            {
                Ok(listed) => {
                    let leader = listed.lines().find_map(|line| {
                        let mut fields = line.split_whitespace();
                        (fields.next() == Some(queue))
                            .then(|| fields.next())
                            .flatten()
                    });
                    return Ok(leader
                        .and_then(|name| self.nodes.iter().position(|n| n.node_name() == name)));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no node to ask")))
    }

    /// Waits until quorum queue `queue` has a leader other than node `except` (after it was
    /// killed, say); returns its index.
    pub async fn wait_for_leader(
        &self,
        queue: &str,
        except: Option<usize>,
    ) -> anyhow::Result<usize> {
        crate::wait_until(
            Duration::from_secs(60),
            &format!("a leader of {queue}"),
            || async {
                Ok(match self.leader_of(queue, except).await {
                    Ok(Some(i)) if Some(i) != except => Ok(i),
                    other => Err(format!("{other:?}")),
                })
            },
        )
        .await
    }
}
