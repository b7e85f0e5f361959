//! `warren-bench`: measures the broker-only ceiling and Warren end to end in one run, on the
//! same message size and durability, and prints their ratio (DESIGN.md §6).
//!
//! Wiring only: flags become [`settings::Settings`], each phase runs in a [`sandbox::Sandbox`]
//! of its own (a RabbitMQ namespace, and a database when it needs one) that is removed
//! afterwards, and [`report::Report`] prints what the phases measured. A new phase is a module
//! with a `measure(&Settings, &Sandbox, &stop) -> Phase` function and one line below.
//!
//! Exit codes: 0 after a complete run, 1 when a phase fails or is interrupted, 2 on bad flags.

mod admin_reads;
mod ceiling;
mod end_to_end;
mod http;
mod limits;
mod promotion;
mod report;
mod retry_path;
mod sandbox;
mod settings;
mod workload;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use warren_broker::BrokerConfig;
use warren_runtime::shutdown_on_signal;
use warren_store::StoreConfig;

use crate::report::Report;
use crate::sandbox::Sandbox;
use crate::settings::{Args, Settings};

fn main() -> ExitCode {
    let settings = match Args::parse().validate() {
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
        Ok(report) => {
            print!("{}", report.table());
            let http = http::summary(&report);
            if let Some((lines, _)) = &http {
                print!("{lines}");
            }
            if settings.json {
                let mut json = report.json();
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

async fn run(settings: &Settings) -> anyhow::Result<Report<'_>> {
    tracing::info!(
        amqp = %BrokerConfig::new(settings.amqp_url.clone()).redacted_url(),
        database = %StoreConfig::new(settings.admin_database_url.clone()).redacted_url(),
        jobs = settings.jobs,
        payload_bytes = settings.payload_bytes,
        concurrency = settings.concurrency,
        prefetch = settings.prefetch,
        warmup = settings.warmup,
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
        return Ok(Report {
            settings,
            phases: vec![admin],
        });
    }
    if settings.http {
        let http = Sandbox::create(settings, run_id, "http", false)
            .await?
            .run(limit, &shutdown, async |s, stop| {
                http::measure(settings, s, stop).await
            })
            .await
            .context("HTTP producer phase")?;
        return Ok(Report {
            settings,
            phases: vec![http],
        });
    }
    if settings.limits {
        let phases = Sandbox::create(settings, run_id, "limits", true)
            .await?
            .run(limit, &shutdown, async |s, stop| {
                limits::measure(settings, s, stop).await
            })
            .await
            .context("limits phase")?;
        return Ok(Report { settings, phases });
    }
    let ceiling = Sandbox::create(settings, run_id, "ceiling", false)
        .await?
        .run(limit, &shutdown, async |s, stop| {
            ceiling::measure(settings, s, stop).await
        })
        .await
        .context("broker ceiling phase")?;
    let end_to_end = Sandbox::create(settings, run_id, "warren", true)
        .await?
        .run(limit, &shutdown, async |s, stop| {
            end_to_end::measure(settings, s, stop).await
        })
        .await
        .context("Warren end-to-end phase")?;

    let retry_path = Sandbox::create(settings, run_id, "retry", true)
        .await?
        .run(limit, &shutdown, async |s, stop| {
            retry_path::measure(settings, s, stop).await
        })
        .await
        .context("retry-path phase")?;
    let promoter = Sandbox::create(settings, run_id, "delayed", true)
        .await?
        .run(limit, &shutdown, async |s, stop| {
            promotion::measure(settings, s, stop).await
        })
        .await
        .context("promoter lateness phase")?;

    Ok(Report {
        settings,
        phases: vec![ceiling, end_to_end, retry_path, promoter],
    })
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
