//! RabbitMQ's `consumer_timeout`, and the longest job timeout it leaves room for.
//!
//! RabbitMQ (3.8.15 and later) closes the channel of a consumer that keeps a delivery unacked
//! longer than `consumer_timeout` (30 minutes by default) and redelivers the message: a job
//! still running past it would run twice, and every other delivery on that channel would be
//! returned with it. RabbitMQ 3.10 has no per-queue override (`x-consumer-timeout` arrived in
//! 3.12), so the worker keeps every attempt's timeout below the broker's, with a margin for
//! the time a delivery spends before its handler starts and after it ends (the outcome's
//! commit, then the ack).

use std::time::Duration;

/// The time kept free between a job's timeout and the broker's: the larger of one minute and
/// 5% of it, but at most half of it (a broker timeout of seconds, as in tests, still leaves
/// room for short jobs).
pub(crate) fn margin(broker: Duration) -> Duration {
    Duration::from_secs(60).max(broker / 20).min(broker / 2)
}

/// The longest attempt timeout a worker accepts when the broker takes deliveries back after
/// `broker` (`None`: the broker has no consumer timeout, so neither has the worker).
pub(crate) fn max_job_timeout(broker: Option<Duration>) -> Option<Duration> {
    broker.map(|b| b.saturating_sub(margin(b)))
}

/// Checks the worker's default timeout and each task's own against the broker's consumer
/// timeout; the error names the first one too long, both figures, and what to change.
pub(crate) fn check<'a>(
    broker: Option<Duration>,
    default_timeout: Duration,
    tasks: impl IntoIterator<Item = (&'a str, Option<Duration>)>,
) -> Result<(), String> {
    let Some(limit) = max_job_timeout(broker) else {
        return Ok(());
    };
    let broker = broker.unwrap_or_default();
    let explain = |what: String, timeout: Duration, fix: &str| {
        format!(
            "{what} is {}, but RabbitMQ's consumer_timeout of {} (--broker-consumer-timeout) \
             allows jobs at most {} (it minus a margin of {}): a longer job would have its \
             delivery taken back and redelivered while it still ran; {fix}, or raise \
             consumer_timeout in rabbitmq.conf and --broker-consumer-timeout with it",
            human(timeout),
            human(broker),
            human(limit),
            human(margin(broker)),
        )
    };
    if default_timeout > limit {
        return Err(explain(
            "the default job timeout (--default-timeout)".to_owned(),
            default_timeout,
            &format!("lower --default-timeout to {} or less", human(limit)),
        ));
    }
    for (task, timeout) in tasks {
        if let Some(timeout) = timeout
            && timeout > limit
        {
            return Err(explain(
                format!("the timeout of task `{task}`"),
                timeout,
                &format!(
                    "register it with a timeout of {} or less (TaskOptions::timeout)",
                    human(limit)
                ),
            ));
        }
    }
    Ok(())
}

/// A duration the way the flags take it: `29m30s`, `2500ms`.
fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    let (h, m, s) = (s / 3600, (s / 60) % 60, s % 60);
    let mut out = String::new();
    if h > 0 {
        out += &format!("{h}h");
    }
    if m > 0 {
        out += &format!("{m}m");
    }
    if s > 0 || out.is_empty() {
        out += &format!("{s}s");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn the_margin_is_a_minute_or_five_percent_at_most_half() {
        assert_eq!(
            margin(30 * MIN),
            Duration::from_secs(90),
            "5% of 30 minutes"
        );
        assert_eq!(margin(10 * MIN), MIN, "a minute beats 5% of 10 minutes");
        assert_eq!(margin(Duration::from_secs(5)), Duration::from_millis(2500));
        assert_eq!(
            max_job_timeout(Some(30 * MIN)),
            Some(Duration::from_secs(1710))
        );
        assert_eq!(max_job_timeout(None), None);
    }

    #[test]
    fn timeouts_must_fit_under_the_broker_timeout() {
        let broker = Some(30 * MIN);
        // The worker's defaults (5 minutes) fit RabbitMQ's (30 minutes).
        assert_eq!(check(broker, 5 * MIN, [("a", None)]), Ok(()));
        assert_eq!(check(broker, Duration::from_secs(1710), []), Ok(()));
        // No broker timeout: anything goes.
        assert_eq!(check(None, 1000 * MIN, [("a", Some(1000 * MIN))]), Ok(()));

        let err = check(broker, 29 * MIN, []).unwrap_err();
        for part in [
            "--default-timeout",
            "29m",
            "30m",
            "28m30s",
            "consumer_timeout",
        ] {
            assert!(err.contains(part), "{part} missing from: {err}");
        }

        let err = check(
            broker,
            5 * MIN,
            [("ok", Some(MIN)), ("report", Some(60 * MIN))],
        )
        .unwrap_err();
        for part in [
            "task `report`",
            "1h",
            "30m",
            "28m30s",
            "TaskOptions::timeout",
        ] {
            assert!(err.contains(part), "{part} missing from: {err}");
        }
        assert!(!err.contains("`ok`"), "{err}");
    }

    #[test]
    fn building_a_worker_checks_the_rule() {
        use crate::{TaskOptions, Worker, WorkerConfig};
        use warren_core::{JobError, QueueName};

        async fn noop(_: crate::JobContext, _: serde_json::Value) -> Result<(), JobError> {
            Ok(())
        }
        let build = |broker: Option<Duration>, task_timeout: Option<Duration>| {
            let mut config =
                WorkerConfig::new("w", vec![QueueName::new("default").expect("valid name")]);
            config.broker_consumer_timeout = broker;
            let options = TaskOptions {
                timeout: task_timeout,
                ..TaskOptions::default()
            };
            Worker::builder()
                .register_with("long", options, noop)
                .build(config)
        };
        assert!(build(Some(30 * MIN), Some(20 * MIN)).is_ok());
        assert!(
            build(None, Some(20 * 60 * MIN)).is_ok(),
            "no broker timeout"
        );
        let err = build(Some(30 * MIN), Some(29 * MIN)).unwrap_err();
        assert!(matches!(err, crate::Error::Config(_)), "{err:?}");
        let shown = err.to_string();
        assert!(
            shown.contains("task `long`") && shown.contains("29m") && shown.contains("28m30s"),
            "{shown}"
        );
    }

    #[test]
    fn durations_read_like_flags() {
        assert_eq!(human(Duration::from_secs(1710)), "28m30s");
        assert_eq!(human(Duration::from_secs(3600)), "1h");
        assert_eq!(human(Duration::from_millis(2500)), "2500ms");
        assert_eq!(human(Duration::ZERO), "0s");
    }
}
