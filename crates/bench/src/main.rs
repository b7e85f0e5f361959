//! `warren-bench`: measures the broker-only ceiling and Warren end to end in one run, on the
//! same message size and durability, and prints their ratio (DESIGN.md §6).
//!
//! Wiring only: flags become [`settings::Settings`], each phase runs in a [`sandbox::Sandbox`]
//! of its own (a RabbitMQ namespace, and a database when it needs one) that is removed
//! afterwards, and [`report::Report`] prints what the phases measured. A new phase is a module
//! with a `measure(&Settings, &Sandbox, &stop) -> Phase` function and one line below (or
//! `-> Measured`, a phase with its share of the ceiling and its CPU and memory).
//!
//! `--scenario` picks the phases (issue 13): the default is the run from before it; every
//! other scenario runs the broker ceiling first, so that its ratios compare with a ceiling
//! measured in the same run.
//!
//! Exit codes: 0 after a complete run, 1 when a phase fails or is interrupted, 2 on bad flags.

mod admin_reads;
mod ceiling;
mod drain;
mod end_to_end;
mod fleet;
mod http;
mod light;
mod limits;
mod payloads;
mod promotion;
mod report;
mod retry_path;
mod sandbox;
mod scaling;
mod settings;
mod steady;
mod usage;
mod workload;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use warren_broker::BrokerConfig;
use warren_runtime::shutdown_on_signal;
use warren_store::StoreConfig;

use tokio_util::sync::CancellationToken;

use crate::report::{Extra, Measured, Report};
use crate::sandbox::Sandbox;
use crate::settings::{Args, Scenario, Settings};

fn main() -> ExitCode {
    let settings = match warren_core::flags::parse::<Args>().validate() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("warren-bench: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warren-bench: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(&settings)) {
        Ok((report, extras)) => {
            print!("{}", report.table_with(&extras));
            let http = http::summary(&report);
            if let Some((lines, _)) = &http {
                print!("{lines}");
            }
            if settings.json && settings.scenario != Scenario::Default {
                for line in report.json_lines(&extras) {
                    println!("{line}");
                }
            } else if settings.json {
                let mut json = report.json_with(&extras);
                if let Some((_, verdicts)) = http {
                    json["http"] = verdicts;
                }
                println!("{json}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("warren-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(settings: &Settings) -> anyhow::Result<(Report<'_>, Vec<Extra>)> {
    tracing::info!(
        amqp = %BrokerConfig::new(settings.amqp_url.clone()).redacted_url(),
        database = %StoreConfig::new(settings.admin_database_url.clone()).redacted_url(),
        jobs = settings.jobs,
        payload_bytes = settings.payload_bytes,
        concurrency = settings.concurrency,
        prefetch = settings.prefetch,
        warmup = settings.warmup,
        scenario = ?settings.scenario,
        "starting"
    );
    let shutdown = shutdown_on_signal();
    // The tail of a UUIDv7 is random; it names this run's namespaces and database.
    let id = uuid::Uuid::now_v7().simple().to_string();
    let run_id = &id[id.len() - 12..];
    let limit = settings.phase_timeout;

    if settings.admin_rows.is_some() {
        // Seeding millions of rows takes minutes: at least an hour, whatever --timeout-secs.
        // A kept database is the phase's own business; otherwise the sandbox makes one.
        let throwaway = settings.admin_database.is_none();
        let admin = Sandbox::create(settings, run_id, "admin", throwaway)
            .await?
            .run(
                limit.max(Duration::from_secs(3_600)),
                &shutdown,
                async |s, stop| admin_reads::measure(settings, s, stop).await,
            )
            .await
            .context("admin-reads phase")?;
        let report = Report {
            settings,
            phases: vec![admin],
        };
        return Ok((report, Vec::new()));
    }
    if settings.http {
        let http = Sandbox::create(settings, run_id, "http", false)
            .await?
            .run(limit, &shutdown, async |s, stop| {
                http::measure(settings, s, stop).await
            })
            .await
            .context("HTTP producer phase")?;
        let report = Report {
            settings,
            phases: vec![http.phase],
        };
        return Ok((report, http.extras));
    }
    if settings.limits {
        let phases = Sandbox::create(settings, run_id, "limits", true)
            .await?
            .run(limit, &shutdown, async |s, stop| {
                limits::measure(settings, s, stop).await
            })
            .await
            .context("limits phase")?;
        return Ok((Report { settings, phases }, Vec::new()));
    }
    scenarios(settings, run_id, &shutdown).await
}

/// The phases `--scenario` asks for, each in a sandbox of its own, the ceiling first.
async fn scenarios<'a>(
    settings: &'a Settings,
    run_id: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Report<'a>, Vec<Extra>)> {
    let limit = settings.phase_timeout;
    let wanted = |part| settings.scenario.includes(part);
    let default = settings.scenario == Scenario::Default;
    let mut run = Run::default();

    let ceiling = Sandbox::create(settings, run_id, "ceiling", false)
        .await?
        .run(limit, shutdown, async |s, stop| {
            ceiling::measure(settings, s, stop).await
        })
        .await
        .context("broker ceiling phase")?;
    let ceiling_rate = Some(ceiling.jobs_per_sec());
    run.push(ceiling.into());

    if default || wanted(Scenario::Drain) {
        let measured = Sandbox::create(settings, run_id, "warren", true)
            .await?
            .run(limit, shutdown, async |s, stop| {
                end_to_end::measure(settings, s, stop, ceiling_rate).await
            })
            .await
            .context("Warren end-to-end phase")?;
        run.push(measured);
    }
    if default || wanted(Scenario::Retry) {
        let measured = Sandbox::create(settings, run_id, "retry", true)
            .await?
            .run(limit, shutdown, async |s, stop| {
                retry_path::measure(settings, s, stop, ceiling_rate).await
            })
            .await
            .context("retry-path phase")?;
        run.push(measured);
    }
    if default || wanted(Scenario::Scheduled) {
        let promoter = Sandbox::create(settings, run_id, "delayed", true)
            .await?
            .run(limit, shutdown, async |s, stop| {
                promotion::measure(settings, s, stop).await
            })
            .await
            .context("promoter lateness phase")?;
        run.push(promoter.into());
    }
    if wanted(Scenario::Scheduled) {
        let measured = Sandbox::create(settings, run_id, "burst", true)
            .await?
            .run(limit, shutdown, async |s, stop| {
                promotion::measure_burst(settings, s, stop).await
            })
            .await
            .context("scheduled burst phase")?;
        run.push(measured);
    }
    if wanted(Scenario::Light) {
        let measured = Sandbox::create(settings, run_id, "light", true)
            .await?
            .run(limit, shutdown, async |s, stop| {
                light::measure(settings, s, stop).await
            })
            .await
            .context("light-load phase")?;
        run.push(measured);
    }
    if wanted(Scenario::Steady) {
        // Every step holds its rate and then waits for its backlog to clear.
        let steps = u32::try_from(steady::MAX_STEPS + 1).unwrap_or(u32::MAX);
        let steady_limit = limit + settings.hold * steps * 2;
        let measured = Sandbox::create(settings, run_id, "steady", true)
            .await?
            .run(steady_limit, shutdown, async |s, stop| {
                steady::measure(settings, s, stop, ceiling_rate).await
            })
            .await
            .context("steady-state phase")?;
        run.push(measured);
    }
    if wanted(Scenario::Scaling) {
        // Three drains, each within the phase limit.
        let measured = Sandbox::create(settings, run_id, "scaling", true)
            .await?
            .run(limit * 3, shutdown, async |s, stop| {
                scaling::measure(settings, s, stop, ceiling_rate).await
            })
            .await
            .context("scaling phase")?;
        run.push(measured);
    }
    if wanted(Scenario::Payloads) {
        let measured = payloads::measure(settings, run_id, shutdown)
            .await
            .context("payload-size phase")?;
        run.push(measured);
    }
    if wanted(Scenario::Rss) {
        let measured = Sandbox::create(settings, run_id, "rss", true)
            .await?
            .run(limit, shutdown, async |s, stop| {
                scaling::measure_rss(settings, s, stop, ceiling_rate).await
            })
            .await
            .context("worker memory phase")?;
        run.push(measured);
    }
    Ok((
        Report {
            settings,
            phases: run.phases,
        },
        run.extras,
    ))
}

/// The phases measured so far and their extra columns.
#[derive(Default)]
struct Run {
    phases: Vec<report::Phase>,
    extras: Vec<Extra>,
}

impl Run {
    fn push(&mut self, measured: Measured) {
        self.phases.push(measured.phase);
        self.extras.extend(measured.extras);
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    // sqlx warns of every statement over a second, and the admin-reads phase seeds with
    // statements of half a minute: it would print each one whole.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,sqlx::query=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
