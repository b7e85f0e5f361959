//! `warren-worker`: wiring only. Exit codes: 0 after a clean shutdown, 1 on a runtime
//! failure, 2 on bad flags or configuration, 130 when a second SIGINT/SIGTERM cut the
//! graceful shutdown short.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use warren_broker::Broker;
use warren_runtime::{Worker, shutdown_on_signal, wait_for_signal};
use warren_store::Store;
use warren_worker::settings::{Args, LogFormat};
use warren_worker::tasks::{register_builtins, register_crash_task};

fn main() -> ExitCode {
    ensure_io_thread_stack();
    let settings = match Args::parse().validate() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("warren-worker: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(settings.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warren-worker: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("warren-worker: {e:#}");
            // Exit without tearing the runtime down: after a failure, lapin's I/O thread may
            // still hold timers of this runtime and would panic while it shuts down.
            std::process::exit(1)
        }
    }
}

async fn run(settings: warren_worker::settings::Settings) -> anyhow::Result<()> {
    tracing::info!(broker = ?settings.broker, store = ?settings.store, worker = ?settings.worker, "starting");
    let shutdown = shutdown_on_signal();
    // A second signal means "now": exit without waiting for in-flight jobs. Nothing is lost;
    // their deliveries are unacked and the broker hands them to another worker.
    let second = shutdown.clone();
    tokio::spawn(async move {
        second.cancelled().await;
        wait_for_signal().await;
        eprintln!(
            "warren-worker: second signal; exiting at once, unacked jobs return to their queues"
        );
        std::process::exit(130);
    });
    let store = Store::connect(&settings.store)
        .await
        .context("connecting to Postgres")?;
    // Migrating is an explicit step (`warren migrate`, or --migrate here) because it needs
    // DDL rights a worker's role should not have. Without it the schema is only checked, so
    // that an unmigrated database stops the worker now, saying what to run.
    if settings.migrate {
        store.migrate().await.context("migrating the database")?;
    } else {
        store
            .check_schema()
            .await
            .context("checking the database schema")?;
    }
    let broker = Broker::connect(settings.broker)
        .await
        .context("connecting to RabbitMQ")?;
    let mut builder = register_builtins(Worker::builder());
    if settings.crash_task {
        tracing::warn!("warren.abort is enabled: a job can kill this process");
        builder = register_crash_task(builder);
    }
    let worker = builder
        .build(settings.worker)
        .context("configuring the worker")?;
    worker
        .run(broker, store.clone(), shutdown)
        .await
        .context("running the worker")?;
    store.close().await;
    Ok(())
}

/// Makes sure lapin's I/O thread has the stack it needs for the deepest header table a frame
/// can carry (see `warren_broker::IO_THREAD_STACK`). lapin spawns that thread without a stack
/// size, so `RUST_MIN_STACK` decides it; the standard library reads that variable once per
/// process, and setting it from inside would need `unsafe`. So the binary re-executes itself
/// with the variable set, before any thread exists. The process keeps its pid, so supervisors
/// and signals are unaffected. An operator's own larger value is kept.
fn ensure_io_thread_stack() {
    use std::os::unix::process::CommandExt;
    let need = warren_broker::IO_THREAD_STACK;
    let have = std::env::var_os("RUST_MIN_STACK")
        .and_then(|v| v.to_str().and_then(|v| v.trim().parse::<usize>().ok()));
    if have.is_some_and(|have| have >= need) {
        return;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!(
                "warren-worker: cannot find its own executable to raise the I/O thread's stack ({e}); set RUST_MIN_STACK={need}"
            );
            return;
        }
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("RUST_MIN_STACK", need.to_string())
        .exec();
    eprintln!(
        "warren-worker: cannot re-execute with RUST_MIN_STACK={need} ({err}); a deeply nested message header could overflow lapin's I/O thread; set the variable yourself"
    );
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
