//! Steady state: the rate a user can plan with. A producer publishes at a fixed rate while a
//! `warren-worker` process works; the rate starts at half the drain rate measured first and
//! steps up by 10% until the worker falls behind. The figure is the highest rate held for the
//! whole hold time (`--hold-secs`, 30 s by default) with the backlog under one second's
//! worth of jobs at its end.

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use warren_client::NewJob;

use crate::drain::{Producer, drain};
use crate::end_to_end::{enqueue, latencies, now_to_the_millisecond, wait_for_succeeded};
use crate::fleet::{Fleet, Shape};
use crate::report::{Extra, Latency, Measure, Measured, Phase, Usage};
use crate::sandbox::{Sandbox, stoppable};
use crate::settings::Settings;
use crate::workload::{QUEUE, TASK, payload};

pub(crate) const STEADY: &str = "steady";

/// The first rate tried, as a fraction of the drain rate.
const START_FRACTION: f64 = 0.5;
/// Each step offers this many times the rate of the one before.
const STEP_FACTOR: f64 = 1.1;
/// Steps at most: from half the drain rate to about twice it.
pub(crate) const MAX_STEPS: usize = 15;
/// The producer sends what is due this often.
const TICK: Duration = Duration::from_millis(10);
/// A step whose producer sent less than this share of the offered rate says nothing about
/// the worker: the benchmark itself could not offer the load.
const PRODUCER_SHARE: f64 = 0.95;

/// The step-up search: which rate to offer next, given what the last one did. Pure, so the
/// search can be tested without a broker.
#[derive(Clone, Debug)]
pub(crate) struct StepUp {
    next: Option<f64>,
    steps_left: usize,
    best: Option<f64>,
    first_failed: Option<(f64, Verdict)>,
}

impl StepUp {
    /// A search starting at half of `drain_rate` jobs/s.
    pub(crate) fn new(drain_rate: f64, max_steps: usize) -> StepUp {
        let first = (drain_rate * START_FRACTION).round().max(1.0);
        StepUp {
            next: (drain_rate > 0.0 && max_steps > 0).then_some(first),
            steps_left: max_steps,
            best: None,
            first_failed: None,
        }
    }

    /// The rate to offer next, or `None` when the search is over.
    pub(crate) fn next_rate(&self) -> Option<f64> {
        self.next
    }

    /// Records whether `rate` (the one [`StepUp::next_rate`] gave) was sustained.
    pub(crate) fn record(&mut self, rate: f64, verdict: Verdict) {
        self.steps_left = self.steps_left.saturating_sub(1);
        if verdict == Verdict::Sustained {
            self.best = Some(rate);
            let next = (rate * STEP_FACTOR).round().max(rate + 1.0);
            self.next = (self.steps_left > 0).then_some(next);
        } else {
            self.first_failed = Some((rate, verdict));
            self.next = None;
        }
    }

    /// The highest rate sustained so far.
    pub(crate) fn best(&self) -> Option<f64> {
        self.best
    }

    /// The rate that ended the search and why, if one did (rather than the step limit).
    pub(crate) fn first_failed(&self) -> Option<(f64, Verdict)> {
        self.first_failed
    }
}

/// What a step at a fixed rate showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The producer offered the rate and the backlog stayed under a second's worth.
    Sustained,
    /// The worker fell behind: the backlog at the end was more than a second's worth.
    BacklogGrew,
    /// The benchmark's producer could not offer the rate; the worker was not the limit.
    ProducerBehind,
}

impl Verdict {
    /// Judges a step that offered `target` jobs/s, sent at `achieved` jobs/s, and left
    /// `backlog` jobs waiting in the queue at its end.
    pub(crate) fn of(target: f64, achieved: f64, backlog: u64) -> Verdict {
        if achieved < target * PRODUCER_SHARE {
            Verdict::ProducerBehind
        } else if backlog as f64 > target {
            Verdict::BacklogGrew
        } else {
            Verdict::Sustained
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Verdict::Sustained => "sustained",
            Verdict::BacklogGrew => "backlog grew",
            Verdict::ProducerBehind => "the producer could not offer it",
        }
    }
}

/// One step: a rate held for the hold time.
#[derive(Clone, Copy, Debug)]
struct Step {
    sent: u64,
    elapsed: Duration,
    backlog: u64,
    usage: Usage,
    to_start: Option<Latency>,
}

impl Step {
    fn achieved(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

pub(crate) async fn measure(
    settings: &Settings,
    sandbox: &Sandbox,
    stop: &CancellationToken,
    ceiling: Option<f64>,
) -> anyhow::Result<Measured> {
    let job = NewJob::new(TASK, &payload(settings.payload_bytes)).queue(QUEUE);
    let mut producer = Producer::open(sandbox).await?;
    let mut fleet = match Fleet::start(settings, sandbox, Shape::of(settings, 1), stop).await {
        Ok(f) => f,
        Err(e) => {
            producer.close().await;
            return Err(e);
        }
    };
    let searched = stoppable(
        stop,
        search(settings, sandbox, &mut producer, &mut fleet, &job),
    )
    .await;
    let stopped = fleet.stop().await;
    producer.close().await;
    let (drain_rate, search, best) = searched?;
    stopped?;

    let mut measures = vec![Measure {
        key: "drain",
        label: "drain rate (search starts at 50%)",
        jobs_per_sec: Some(drain_rate),
        latency: None,
    }];
    let mut extras = Vec::new();
    if let Some(best) = &best {
        measures.push(Measure {
            key: "sustained",
            label: "highest rate sustained",
            jobs_per_sec: Some(best.achieved()),
            latency: best.to_start,
        });
        extras.push(Extra::phase(STEADY, ceiling, Some(best.usage)));
        extras.push(Extra::measure(
            STEADY,
            "sustained",
            ceiling,
            Some(best.usage),
        ));
    }
    if let Some((failed, verdict)) = search.first_failed() {
        measures.push(Measure {
            key: "first_failed",
            label: match verdict {
                Verdict::ProducerBehind => "rate the producer could not offer",
                _ => "first rate not sustained",
            },
            jobs_per_sec: Some(failed),
            latency: None,
        });
    }
    Ok(Measured {
        phase: Phase {
            key: STEADY,
            title: "steady state (1 worker process)",
            jobs: best.map_or(0, |b| b.sent),
            elapsed: best.map_or(settings.hold, |b| b.elapsed),
            measures,
        },
        extras,
    })
}

/// Measures the drain rate, then steps the offered rate up from half of it.
async fn search(
    settings: &Settings,
    sandbox: &Sandbox,
    producer: &mut Producer,
    fleet: &mut Fleet,
    job: &NewJob,
) -> anyhow::Result<(f64, StepUp, Option<Step>)> {
    let drained = drain(settings, sandbox, producer, fleet, job).await?;
    let drain_rate = drained.jobs_per_sec();
    eprintln!("steady: drain rate {drain_rate:.0} jobs/s; stepping up from half of it");
    let mut search = StepUp::new(drain_rate, MAX_STEPS);
    let mut best = None;
    while let Some(rate) = search.next_rate() {
        let step = hold(settings, sandbox, producer, fleet, job, rate).await?;
        let verdict = Verdict::of(rate, step.achieved(), step.backlog);
        eprintln!(
            "steady: offered {rate:.0} jobs/s for {:.1} s, sent {:.0}/s, backlog {} at the end: {}",
            step.elapsed.as_secs_f64(),
            step.achieved(),
            step.backlog,
            verdict.describe()
        );
        if verdict == Verdict::Sustained {
            best = Some(step);
        }
        search.record(rate, verdict);
    }
    match search.best() {
        Some(rate) => eprintln!("steady: highest rate sustained: {rate:.0} jobs/s offered"),
        None => eprintln!("steady: not even half the drain rate was sustained"),
    }
    Ok((drain_rate, search, best))
}

/// Offers `rate` jobs/s for the hold time, then waits for the backlog to clear, so the next
/// step starts from an empty queue.
async fn hold(
    settings: &Settings,
    sandbox: &Sandbox,
    producer: &mut Producer,
    fleet: &mut Fleet,
    job: &NewJob,
    rate: f64,
) -> anyhow::Result<Step> {
    let total = (rate * settings.hold.as_secs_f64()).round() as u64;
    let before = fleet.sample()?;
    let since = now_to_the_millisecond();
    let start = Instant::now();
    let mut ticks = tokio::time::interval(TICK);
    // A tick missed while a send was slow is not made up with a burst of ticks: the next
    // one sends everything that has fallen due by then anyway.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut sent = 0;
    while sent < total {
        ticks.tick().await;
        let due = due_by(rate, start.elapsed(), total);
        if due > sent {
            enqueue(&producer.client, job, due - sent).await?;
            sent = due;
        }
    }
    let elapsed = start.elapsed();
    let backlog = u64::from(sandbox.depth().await?.ready);
    let usage = fleet.usage_since(before, sent)?;
    producer.enqueued += sent;
    wait_for_succeeded(&producer.probe, producer.enqueued, settings.phase_timeout)
        .await
        .context("waiting for the step's backlog to clear")?;
    let summary = producer
        .probe
        .latency_summary(since)
        .await
        .context("reading the step's latency summary")?;
    Ok(Step {
        sent,
        elapsed,
        backlog,
        usage,
        to_start: latencies(&summary).0,
    })
}

/// Jobs due `elapsed` into a step offering `rate` jobs/s, at most `total`.
fn due_by(rate: f64, elapsed: Duration, total: u64) -> u64 {
    ((rate * elapsed.as_secs_f64()).floor() as u64).min(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_search_steps_up_by_ten_percent_from_half_the_drain_rate() {
        let mut s = StepUp::new(10_000.0, MAX_STEPS);
        let mut offered = Vec::new();
        while let Some(rate) = s.next_rate() {
            offered.push(rate);
            let verdict = if rate < 7_000.0 {
                Verdict::Sustained
            } else {
                Verdict::BacklogGrew
            };
            s.record(rate, verdict);
        }
        assert_eq!(
            offered,
            [5_000.0, 5_500.0, 6_050.0, 6_655.0, 7_321.0],
            "each step is 10% above the last, and the first failure ends the search"
        );
        assert_eq!(s.best(), Some(6_655.0));
        assert_eq!(s.first_failed(), Some((7_321.0, Verdict::BacklogGrew)));
    }

    #[test]
    fn the_search_stops_at_the_step_limit_and_at_a_first_failure() {
        let mut s = StepUp::new(100.0, 3);
        while let Some(rate) = s.next_rate() {
            s.record(rate, Verdict::Sustained);
        }
        assert_eq!(s.best(), Some(61.0), "50, 55, 61 and no more");
        assert_eq!(s.first_failed(), None);

        let mut s = StepUp::new(100.0, MAX_STEPS);
        let first = s.next_rate().expect("a first step");
        s.record(first, Verdict::ProducerBehind);
        assert_eq!((s.best(), s.next_rate()), (None, None));
        assert_eq!(StepUp::new(0.0, MAX_STEPS).next_rate(), None);
    }

    #[test]
    fn small_rates_still_step_up() {
        let mut s = StepUp::new(3.0, MAX_STEPS);
        let a = s.next_rate().expect("a first step");
        s.record(a, Verdict::Sustained);
        let b = s.next_rate().expect("a second step");
        assert!(b > a, "{b} after {a}");
    }

    #[test]
    fn a_step_is_judged_by_the_producer_first_then_the_backlog() {
        assert_eq!(Verdict::of(1_000.0, 1_000.0, 0), Verdict::Sustained);
        assert_eq!(Verdict::of(1_000.0, 999.0, 1_000), Verdict::Sustained);
        assert_eq!(Verdict::of(1_000.0, 1_000.0, 1_001), Verdict::BacklogGrew);
        assert_eq!(Verdict::of(1_000.0, 900.0, 0), Verdict::ProducerBehind);
    }

    #[test]
    fn jobs_fall_due_evenly_and_stop_at_the_total() {
        assert_eq!(due_by(200.0, Duration::from_millis(0), 1_000), 0);
        assert_eq!(due_by(200.0, Duration::from_millis(1_004), 1_000), 200);
        assert_eq!(due_by(200.0, Duration::from_secs(60), 1_000), 1_000);
    }
}
