//! A broker resource alarm, on a node of the test's own. RabbitMQ marks every connection
//! `blocking` while a memory or disk alarm is in force, and blocks one (stops reading from its
//! socket) only once it publishes. The worker publishes (its promoter, its dead letters) on a
//! connection apart from its consumers' own, so a publish waiting out the alarm leaves the
//! consumers' acks flowing. Were consuming and publishing one connection, the acks would sit
//! unread in the blocked socket until the alarm cleared.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use warren_broker::{Broker, BrokerConfig};
use warren_client::{Client, NewJob};
use warren_core::JobState;
use warren_runtime::{JobError, Worker, WorkerBuilder};
use warren_testkit::{DisposableRabbit, RabbitOptions, TestEnv, wait_until};

use crate::support::wait_all_terminal;

/// Jobs the worker holds unacked when the alarm begins.
const JOBS: usize = 4;

/// A node whose quorum queues update their message counts every 500 ms. They do it on the
/// queue's tick (`quorum_tick_interval`, 5 s by default), so the broker's unacked count lags
/// the acks by up to that; a short tick keeps the test's waits short.
async fn fresh_counts_node() -> anyhow::Result<DisposableRabbit> {
    DisposableRabbit::start_with(RabbitOptions {
        rabbit_env: vec!["{quorum_tick_interval, 500}".to_owned()],
        ..RabbitOptions::default()
    })
    .await
}

/// A worker builder whose `gated` task counts its start and then waits until `gate` is open,
/// so that the test decides when the jobs end, and so when their acks are sent.
fn gated_worker(
    started: Arc<AtomicUsize>,
    gate: tokio::sync::watch::Receiver<bool>,
) -> WorkerBuilder {
    Worker::builder().register("gated", move |_ctx, _n: usize| {
        let started = started.clone();
        let mut gate = gate.clone();
        async move {
            started.fetch_add(1, Ordering::SeqCst);
            // An error means the test dropped the gate's sender: it has ended anyway.
            let _ = gate.wait_for(|open| *open).await;
            Ok::<_, JobError>(())
        }
    })
}

/// The state RabbitMQ reports (`running`, `blocking`, `blocked`, ...) of each connection whose
/// client-given name starts with `prefix`, as (name, state). The connection list's `name`
/// column is the address pair; the name Warren gives is in the client properties.
async fn connection_states(
    node: &DisposableRabbit,
    prefix: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let out = node
        .rabbitmqctl(&[
            "list_connections",
            "-q",
            "--no-table-headers",
            "client_properties",
            "state",
        ])
        .await?;
    const NAME: &str = "{\"connection_name\",\"";
    let mut states = Vec::new();
    for line in out.lines() {
        let (Some((props, state)), Some(at)) = (line.rsplit_once('\t'), line.find(NAME)) else {
            continue;
        };
        let rest = &props[at + NAME.len()..];
        let name = rest.split_once('"').map_or(rest, |(name, _)| name);
        if name.starts_with(prefix) {
            states.push((name.to_owned(), state.trim().to_owned()));
        }
    }
    states.sort();
    Ok(states)
}

/// The state of the one connection named exactly `name`, or a description of what was found.
async fn state_of(node: &DisposableRabbit, name: &str) -> anyhow::Result<Result<String, String>> {
    let states = connection_states(node, name).await?;
    Ok(match states.iter().find(|(n, _)| n == name) {
        Some((_, state)) => Ok(state.clone()),
        None => Err(format!("no connection named `{name}` among {states:?}")),
    })
}

/// Ready and unacknowledged messages of queue `name`, as the broker counts them.
async fn queue_counts(node: &DisposableRabbit, name: &str) -> anyhow::Result<(u64, u64)> {
    let out = node
        .rabbitmqctl(&[
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ])
        .await?;
    for line in out.lines() {
        if let [n, ready, unacked] = line.split('\t').collect::<Vec<_>>()[..]
            && n == name
        {
            return Ok((ready.trim().parse()?, unacked.trim().parse()?));
        }
    }
    anyhow::bail!("queue {name} is not in the broker's list:\n{out}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_flow_while_an_alarm_blocks_the_publishing_connection() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let node = fresh_counts_node().await?;
    let broker_config = BrokerConfig {
        url: node.amqp_url(),
        ..env.broker_config.clone()
    };
    let broker = Broker::connect(broker_config.clone()).await?;
    broker.declare(&env.queues).await?;
    let client = Client::from_broker(broker.clone()).await?;
    let queue = broker_config.topology.queue(&env.queues[0]);

    // The worker's connections get a name of their own, to tell them from the test's.
    let worker_name = format!("{}-worker", env.name);
    let publishing = format!("{worker_name} publish");
    let consuming = format!("{worker_name} consume {queue}");
    let worker_broker = BrokerConfig {
        connection_name: worker_name.clone(),
        // The promoter's publish waits out the alarm for its confirm. Past the confirm timeout
        // the promotion would be reported unknown and repeated, which is not this test's
        // subject; the alarm lasts a few seconds.
        confirm_timeout: Duration::from_secs(45),
        ..broker_config.clone()
    };
    let started = Arc::new(AtomicUsize::new(0));
    let (gate, gate_rx) = tokio::sync::watch::channel(false);
    let worker = env
        .start_worker_via(
            gated_worker(started.clone(), gate_rx),
            env.worker_config("alarm"),
            worker_broker,
            &env.store_config,
        )
        .await?;

    // Before the alarm: the worker holds every job, unacked, in its handlers.
    let mut jobs = Vec::new();
    for i in 0..JOBS {
        jobs.push(client.enqueue(NewJob::new("gated", &i)).await?);
    }
    wait_until(Duration::from_secs(20), "every job to start", || async {
        let n = started.load(Ordering::SeqCst);
        Ok(if n == JOBS {
            Ok(())
        } else {
            Err(format!("{n} of {JOBS} started"))
        })
    })
    .await?;
    // The broker's counts lag (see `fresh_counts_node`). Seeing every job counted unacked
    // first makes the drop to zero below a fact about the acks, not a count not yet updated.
    wait_until(
        Duration::from_secs(10),
        "the broker to count every job unacked",
        || async {
            let counts = queue_counts(&node, &queue).await?;
            Ok(if counts == (0, JOBS as u64) {
                Ok(())
            } else {
                Err(format!("{counts:?} (ready, unacked)"))
            })
        },
    )
    .await?;

    // A memory high watermark of 0 raises the memory alarm at once. Every connection is then
    // `blocking`: it still reads, and is blocked as soon as it publishes.
    node.rabbitmqctl(&["set_vm_memory_high_watermark", "0"])
        .await?;
    wait_until(
        Duration::from_secs(15),
        "the memory alarm to reach the worker's publishing connection",
        || async {
            Ok(match state_of(&node, &publishing).await? {
                Ok(state) if state == "blocking" => Ok(()),
                Ok(state) => Err(state),
                Err(missing) => Err(missing),
            })
        },
    )
    .await?;

    // A job written to Postgres alone (no publish by the test, which the alarm would block)
    // and due at once: the promoter publishes it on the worker's publishing connection, which
    // the broker then blocks.
    let mut tx = env.store.begin().await?;
    let promoted = client
        .enqueue_tx(&mut tx, NewJob::new("gated", &JOBS))
        .await?;
    tx.commit().await?;
    wait_until(
        Duration::from_secs(15),
        "the promoter's publish to block the worker's publishing connection",
        || async {
            Ok(match state_of(&node, &publishing).await? {
                Ok(state) if state == "blocked" => Ok(()),
                Ok(state) => Err(state),
                Err(missing) => Err(missing),
            })
        },
    )
    .await?;

    // The jobs end now, during the alarm. Their rows are committed and then acked on the
    // consumer's connection, which the broker still reads: the queue's unacked count drops to
    // zero while the publishing connection stays blocked. Over one shared connection the rows
    // would succeed but the acks would wait in the blocked socket, unacked staying at JOBS.
    gate.send_replace(true);
    wait_until(
        Duration::from_secs(20),
        "the jobs to be recorded and acked during the alarm",
        || async {
            let rows = env.store.jobs(&jobs).await?;
            let succeeded = rows
                .iter()
                .filter(|r| r.state == JobState::Succeeded)
                .count();
            let (ready, unacked) = queue_counts(&node, &queue).await?;
            Ok(if succeeded == JOBS && ready == 0 && unacked == 0 {
                Ok(())
            } else {
                Err(format!(
                    "{succeeded} of {JOBS} succeeded; {ready} ready, {unacked} unacked"
                ))
            })
        },
    )
    .await?;
    let states = connection_states(&node, &worker_name).await?;
    eprintln!("during the alarm, after the acks: {states:?}");
    assert_eq!(
        state_of(&node, &publishing).await?,
        Ok("blocked".to_owned()),
        "the acks went through while the publish was still blocked"
    );
    assert_eq!(
        state_of(&node, &consuming).await?,
        Ok("blocking".to_owned()),
        "the consumer's connection was never blocked: it does not publish"
    );
    let row = env
        .store
        .job(promoted)
        .await?
        .expect("the promoted job's row");
    assert_eq!(
        row.state,
        JobState::Scheduled,
        "the promotion waits for its confirm, its transaction open: {row:?}"
    );

    // Once the alarm clears, the broker reads the blocked publish, confirms it, and the
    // promoted job runs (its gate is open) and is acked like the others.
    node.rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"])
        .await?;
    let rows = wait_all_terminal(&env.store, &[promoted], Duration::from_secs(20)).await?;
    assert_eq!(rows[&promoted].state, JobState::Succeeded, "{rows:?}");
    wait_until(
        Duration::from_secs(10),
        "the promoted job's ack",
        || async {
            let counts = queue_counts(&node, &queue).await?;
            Ok(if counts == (0, 0) {
                Ok(())
            } else {
                Err(format!("{counts:?} (ready, unacked)"))
            })
        },
    )
    .await?;
    assert_eq!(
        state_of(&node, &publishing).await?,
        Ok("running".to_owned())
    );

    let stats = worker.stop().await?;
    assert_eq!(stats.succeeded, JOBS as u64 + 1, "{stats:?}");
    broker.close().await;
    drop(node);
    env.cleanup().await
}
