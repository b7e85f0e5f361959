//! The testkit cleans up after tests: after a failing test, after `cleanup`, and after a run
//! that was killed outright (the sweep). Against the real services.

#![allow(
    clippy::unwrap_used,
    reason = "a test should panic at the first surprise"
)]

use std::time::Duration;

use warren_broker::{Broker, BrokerConfig, Topology};
use warren_core::{Namespace, QueueName};
use warren_store::provision;
use warren_testkit::{STALE_AFTER, TestEnv, sweep, wait_until};

/// What a test env made, kept to look for it after the env is gone.
struct Made {
    database: String,
    namespace: String,
    admin_url: String,
    amqp_url: String,
}

impl Made {
    fn of(env: &TestEnv) -> Self {
        Made {
            database: env.name.clone(),
            namespace: env.namespace().to_owned(),
            admin_url: env.admin_database_url.clone(),
            amqp_url: env.amqp_url.clone(),
        }
    }

    /// Whether any of it is left: the database, the record, the `default` work queue.
    async fn leftovers(&self) -> anyhow::Result<Vec<&'static str>> {
        let mut left = Vec::new();
        if provision::database_exists(&self.admin_url, &self.database).await? {
            left.push("database");
        }
        if provision::sandbox(&self.admin_url, &self.database)
            .await?
            .is_some()
        {
            left.push("record");
        }
        let mut config = BrokerConfig::new(&self.amqp_url);
        config.topology = Topology {
            namespace: Namespace::new(&self.namespace)?,
            ..Topology::default()
        };
        let broker = Broker::connect(config).await?;
        let depth = broker.queue_depth(&QueueName::new("default")?).await?;
        broker.close().await;
        if depth.is_some() {
            left.push("queue");
        }
        Ok(left)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_test_leaves_nothing_behind() -> anyhow::Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let failing = tokio::spawn(async move {
        let env = TestEnv::new(&["default"]).await.unwrap();
        let made = Made::of(&env);
        assert!(made.leftovers().await.unwrap().len() == 3, "made all three");
        let _ = tx.send(made);
        panic!("this test fails on purpose, holding its env");
    });
    assert!(failing.await.unwrap_err().is_panic());
    let made = rx.await?;
    assert_eq!(made.leftovers().await?, Vec::<&str>::new());
    Ok(())
}

#[tokio::test]
async fn cleanup_removes_everything() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let made = Made::of(&env);
    env.cleanup().await?;
    assert_eq!(made.leftovers().await?, Vec::<&str>::new());
    Ok(())
}

#[tokio::test]
async fn the_sweep_removes_what_a_killed_run_left() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let made = Made::of(&env);
    // As if the process had been killed: no drop, no cleanup; and as if long ago.
    std::mem::forget(env);
    provision::execute_script(
        &made.admin_url,
        &format!(
            "UPDATE warren_sandboxes SET created_at = now() - interval '2 hours'
             WHERE database = '{}'",
            made.database
        ),
    )
    .await?;
    // This sweep, or one of a test process starting meanwhile, removes it.
    sweep(STALE_AFTER).await?;
    wait_until(
        Duration::from_secs(20),
        "the leftover to be swept",
        || async {
            let left = made.leftovers().await?;
            Ok(if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            })
        },
    )
    .await
}
