//! RabbitMQ's consumer_timeout against long jobs, on a node of the test's own whose timeout is
//! 5 s: with the cap (`--broker-consumer-timeout`), a job asking for a longer timeout is
//! recorded dead at once; without it, the same job is redelivered while it still runs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use warren_broker::BrokerConfig;
use warren_client::{Client, NewJob};
use warren_core::{FailureKind, JobState};
use warren_runtime::{JobError, TaskOptions, Worker};
use warren_testkit::{DisposableRabbit, RabbitOptions, TestEnv, wait_until};

const BROKER_TIMEOUT: Duration = Duration::from_secs(5);

/// A node that takes back deliveries unacked for 5 s. RabbitMQ checks consumer timeouts on
/// each channel's tick, every `channel_tick_interval` (60 s by default, so a timeout fires up
/// to a minute late); a 1 s tick makes it fire 5 to 6 s after the delivery.
async fn short_timeout_node() -> anyhow::Result<DisposableRabbit> {
    DisposableRabbit::start_with(RabbitOptions {
        conf: vec![format!("consumer_timeout = {}", BROKER_TIMEOUT.as_millis())],
        rabbit_env: vec!["{channel_tick_interval, 1000}".to_owned()],
        ..RabbitOptions::default()
    })
    .await
}

/// A worker builder whose `hold` task sleeps the payload's seconds, noting when each run
/// started.
fn holding_worker(starts: Arc<Mutex<Vec<Instant>>>) -> warren_runtime::WorkerBuilder {
    Worker::builder().register_with("hold", TaskOptions::default(), move |_ctx, secs: u64| {
        let starts = starts.clone();
        async move {
            if let Ok(mut s) = starts.lock() {
                s.push(Instant::now());
            }
            tokio::time::sleep(Duration::from_secs(secs)).await;
            Ok::<_, JobError>(())
        }
    })
}

#[tokio::test]
async fn long_jobs_are_refused_instead_of_redelivered_mid_run() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let node = short_timeout_node().await?;
    let broker_config = BrokerConfig {
        url: node.amqp_url(),
        ..env.broker_config.clone()
    };
    let broker = warren_broker::Broker::connect(broker_config.clone()).await?;
    broker.declare(&env.queues).await?;
    let client = Client::connect(broker_config.clone()).await?;

    // With the cap: the broker's 5 s leave jobs 2.5 s.
    let starts = Arc::new(Mutex::new(Vec::new()));
    let mut config = env.worker_config("capped");
    config.broker_consumer_timeout = Some(BROKER_TIMEOUT);
    config.default_timeout = Duration::from_secs(2);
    let worker = env
        .start_worker_via(
            holding_worker(starts.clone()),
            config,
            broker_config.clone(),
            &env.store_config,
        )
        .await?;
    let long = client
        .enqueue(NewJob::new("hold", &8u64).timeout(Duration::from_secs(20)))
        .await?;
    let short = client
        .enqueue(NewJob::new("hold", &0u64).timeout(Duration::from_secs(1)))
        .await?;
    let rows =
        crate::support::wait_all_terminal(&env.store, &[long, short], Duration::from_secs(15))
            .await?;
    assert_eq!(
        rows[&short].state,
        JobState::Succeeded,
        "a short job still runs"
    );
    let refused = &rows[&long];
    assert_eq!(refused.state, JobState::Dead, "{refused:?}");
    let error = refused.errors.last().expect("a dead job has its reason");
    assert_eq!(error.kind, FailureKind::BadInput);
    for part in ["warren-timeout-ms", "20000", "2500", "consumer_timeout"] {
        assert!(
            error.message.contains(part),
            "{part} missing: {}",
            error.message
        );
    }
    assert_eq!(
        starts.lock().map(|s| s.len()).unwrap_or(0),
        1,
        "only the short job ran"
    );
    worker.stop().await?;

    // Without the cap, the same job runs; the broker takes its delivery back after about 5 s
    // and hands it out again while the first run is still sleeping.
    let starts = Arc::new(Mutex::new(Vec::new()));
    let mut config = env.worker_config("uncapped");
    config.broker_consumer_timeout = None;
    // The job is abandoned at the end of the test; no need to wait for it.
    config.shutdown_grace = Duration::from_secs(1);
    let worker = env
        .start_worker_via(
            holding_worker(starts.clone()),
            config,
            broker_config,
            &env.store_config,
        )
        .await?;
    client
        .enqueue(NewJob::new("hold", &12u64).timeout(Duration::from_secs(20)))
        .await?;
    let (first, second) = wait_until(
        Duration::from_secs(25),
        "the long job to start a second time",
        || async {
            let s = starts.lock().map(|s| s.clone()).unwrap_or_default();
            Ok(match s.as_slice() {
                [first, second, ..] => Ok((*first, *second)),
                other => Err(format!("{} starts", other.len())),
            })
        },
    )
    .await?;
    let gap = second - first;
    eprintln!("uncapped: second start {gap:?} after the first");
    // The broker's clock starts at the delivery, a little before the handler records its
    // start (6 ms short of 5 s was seen under load): half a second of slack for that.
    assert!(
        gap >= BROKER_TIMEOUT - Duration::from_millis(500) && gap < Duration::from_secs(12),
        "redelivered {gap:?} after the first start: not by the consumer timeout, or only after \
         the first run ended"
    );
    let _ = worker.stop().await;
    broker.close().await;
    drop(node);
    env.cleanup().await
}
