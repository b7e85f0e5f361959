//! The whole `warren-worker` program as one call, so that handler authors ship their own
//! worker binary with every flag, environment variable, log format, signal behaviour and exit
//! code of `warren-worker`:
//!
//! ```no_run
//! # use serde::{Deserialize, Serialize};
//! use warren_runtime::{JobContext, JobError, Task};
//!
//! #[derive(Serialize, Deserialize)]
//! struct EmailSend { to: String }
//!
//! impl Task for EmailSend {
//!     const NAME: &'static str = "email.send";
//!     type Output = ();
//! }
//!
//! async fn send_email(_ctx: JobContext, job: EmailSend) -> Result<(), JobError> {
//!     println!("to {}", job.to);
//!     Ok(())
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     warren_worker::run(|w| w.task::<EmailSend>(send_email))
//! }
//! ```
//!
//! Exit codes: 0 after a clean shutdown, 1 on a runtime failure, 2 on bad flags or
//! configuration (including handlers that cannot be registered), 130 when a second
//! SIGINT/SIGTERM cut the graceful shutdown short.

use std::process::ExitCode;

use anyhow::Context;
use warren_broker::{Broker, BrokerConfig};
use warren_runtime::{Worker, WorkerBuilder, shutdown_on_signal, wait_for_signal};
use warren_store::{Store, StoreConfig};

use crate::settings::{Args, LogFormat, Settings};
use crate::tasks::register_crash_task;

/// `eprintln!` that ignores a stderr that is gone (a closed pipe): `eprintln!` would panic
/// there and turn the exit status into 101.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Runs a worker with the handlers `register` adds: flags and environment are parsed, logging
/// set up, the worker built (a bad registration exits 2 before any connection), connected,
/// and run until SIGTERM or SIGINT.
pub fn run(register: impl FnOnce(WorkerBuilder) -> WorkerBuilder) -> ExitCode {
    ensure_io_thread_stack();
    let settings = match warren_core::flags::parse::<Args>().validate() {
        Ok(s) => s,
        Err(e) => {
            say!("warren-worker: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            say!("warren-worker: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let exporter = {
        let _inside = runtime.enter();
        match init_logging(
            settings.log_format,
            settings.otlp_traces.as_deref(),
            &settings.otel_service_name,
        ) {
            Ok(exporter) => exporter,
            Err(e) => {
                say!("warren-worker: {e:#}");
                return ExitCode::from(2);
            }
        }
    };
    let Settings {
        broker,
        store,
        worker: config,
        migrate,
        crash_task,
        metrics_addr,
        ..
    } = settings;
    tracing::info!(broker = ?broker, store = ?store, worker = ?config, "starting");
    let mut builder = register(Worker::builder());
    if crash_task {
        tracing::warn!("warren.abort is enabled: a job can kill this process");
        builder = register_crash_task(builder);
    }
    if exporter.is_some() {
        builder = builder.on_job_span(crate::otel::link_parent);
    }
    let config_health = config.health.clone();
    let worker = match builder.build(config) {
        Ok(w) => w,
        Err(e) => {
            say!("warren-worker: {e}");
            return ExitCode::from(2);
        }
    };
    let health = config_health;
    match runtime.block_on(serve(worker, broker, store, migrate, metrics_addr, health)) {
        Ok(()) => {
            // The runtime is still up, so the batch task can send the last spans.
            if let Some(exporter) = exporter {
                exporter.shutdown();
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e:#}");
            say!("warren-worker: {e:#}");
            // Exit without tearing the runtime down: after a failure, lapin's I/O thread may
            // still hold timers of this runtime and would panic while it shuts down.
            std::process::exit(if bad_url(&e) { 2 } else { 1 })
        }
    }
}

/// Whether `e` is a URL that cannot be used: bad configuration (exit 2), as a bad flag is,
/// rather than a service that failed.
fn bad_url(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<warren_broker::Error>(),
            Some(warren_broker::Error::Url { .. })
        ) || matches!(
            cause.downcast_ref::<warren_store::Error>(),
            Some(warren_store::Error::Url { .. })
        )
    })
}

async fn serve(
    worker: Worker,
    broker: BrokerConfig,
    store: StoreConfig,
    migrate: bool,
    metrics_addr: Option<std::net::SocketAddr>,
    health: warren_runtime::Health,
) -> anyhow::Result<()> {
    let shutdown = shutdown_on_signal();
    // Bound before connecting, so a taken port fails the start at once; served until the
    // worker has stopped, so a scrape during the drain still answers (readyz: 503).
    let endpoints = tokio_util::sync::CancellationToken::new();
    let server = match metrics_addr {
        Some(addr) => {
            let handle = crate::metrics_server::install()?;
            Some(crate::metrics_server::serve(addr, handle, health, endpoints.clone()).await?)
        }
        None => None,
    };
    // A second signal means "now": exit without waiting for in-flight jobs. Nothing is lost;
    // their deliveries are unacked and the broker hands them to another worker.
    let second = shutdown.clone();
    tokio::spawn(async move {
        second.cancelled().await;
        wait_for_signal().await;
        say!("warren-worker: second signal; exiting at once, unacked jobs return to their queues");
        std::process::exit(130);
    });
    // A worker started while Postgres or RabbitMQ is down (a node rebooting, a cluster
    // starting in any order) waits for it, saying so, instead of exiting: only a refusal (bad
    // credentials, an unmigrated schema, a bad URL) ends the start.
    let store = until_reachable(
        "PostgreSQL",
        &shutdown,
        warren_store::Error::is_transient,
        || connect_store(&store, migrate),
    )
    .await?;
    let Some(store) = store else {
        return Ok(());
    };
    let broker = until_reachable(
        "RabbitMQ",
        &shutdown,
        warren_broker::Error::is_transient,
        || Broker::connect(broker.clone()),
    )
    .await?;
    let Some(broker) = broker else {
        store.close().await;
        return Ok(());
    };
    let ran = worker
        .run(broker, store.clone(), shutdown.cancelled_owned())
        .await
        .context("running the worker");
    endpoints.cancel();
    if let Some(server) = server {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), server).await;
    }
    ran?;
    store.close().await;
    Ok(())
}

/// Connects to Postgres and migrates the schema (`--migrate`) or checks it is current.
async fn connect_store(config: &StoreConfig, migrate: bool) -> Result<Store, warren_store::Error> {
    let store = Store::connect(config).await?;
    // Migrating is an explicit step (`warren migrate`, or --migrate here) because it needs
    // DDL rights a worker's role should not have. Without it the schema is only checked, so
    // that an unmigrated database stops the worker now, saying what to run.
    let ready = if migrate {
        store.migrate().await
    } else {
        store.check_schema().await
    };
    match ready {
        Ok(_) => Ok(store),
        Err(e) => {
            store.close().await;
            Err(e)
        }
    }
}

/// Tries `connect` until it succeeds, fails for a reason that does not pass (returned), or
/// the shutdown signal comes (`Ok(None)`). Waits 1 s after the first failure, doubling up to
/// 30 s; the first failure is logged at WARN with what is tried next, later ones at INFO, and
/// the success after a wait at WARN, so that an operator sees both ends of it.
async fn until_reachable<T, E, F, Fut>(
    what: &str,
    shutdown: &tokio_util::sync::CancellationToken,
    transient: impl Fn(&E) -> bool,
    mut connect: F,
) -> Result<Option<T>, anyhow::Error>
where
    E: std::error::Error + Send + Sync + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let started = std::time::Instant::now();
    let mut wait = std::time::Duration::from_secs(1);
    let mut failures = 0u32;
    loop {
        let attempt = tokio::select! {
            attempt = connect() => attempt,
            () = shutdown.cancelled() => return Ok(None),
        };
        match attempt {
            Ok(connected) => {
                if failures > 0 {
                    tracing::warn!(
                        waited_secs = started.elapsed().as_secs(),
                        "{what} is reachable; starting"
                    );
                }
                return Ok(Some(connected));
            }
            Err(e) if transient(&e) => {
                failures += 1;
                let error = warren_core::ErrorChain(&e).to_string();
                if failures == 1 {
                    tracing::warn!(%error, "{what} is not reachable; waiting for it, trying again every {}s up to every 30s (SIGTERM stops the wait)", wait.as_secs());
                } else {
                    tracing::info!(%error, failures, "{what} still not reachable; trying again in {}s", wait.as_secs());
                }
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("connecting to {what}")));
            }
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return Ok(None),
        }
        wait = (wait * 2).min(std::time::Duration::from_secs(30));
    }
}

/// Makes sure lapin's I/O thread has the stack it needs for the deepest header table a frame
/// can carry (see `warren_broker::IO_THREAD_STACK`). lapin spawns that thread without a stack
/// size, so `RUST_MIN_STACK` decides it; the standard library reads that variable once per
/// process, and setting it from inside would need `unsafe`. So the binary re-executes itself
/// with the variable set, before any thread exists. The process keeps its pid, so supervisors
/// and signals are unaffected. An operator's own larger value is kept.
pub(crate) fn ensure_io_thread_stack() {
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
            say!(
                "warren-worker: cannot find its own executable to raise the I/O thread's stack ({e}); set RUST_MIN_STACK={need}"
            );
            return;
        }
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("RUST_MIN_STACK", need.to_string())
        .exec();
    say!(
        "warren-worker: cannot re-execute with RUST_MIN_STACK={need} ({err}); a deeply nested message header could overflow lapin's I/O thread; set the variable yourself"
    );
}

/// Logging on stderr (text, or JSON with the job's ids at the top of each line), filtered by
/// `RUST_LOG` (default `info`), and the OpenTelemetry layer when `otlp_traces` is set. Runs
/// inside the tokio runtime, where the exporter's batch task lives.
pub(crate) fn init_logging(
    format: LogFormat,
    otlp_traces: Option<&str>,
    service_name: &str,
) -> anyhow::Result<Option<crate::otel::Exporter>> {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    // lapin logs a returned message whole, payload and headers included, at WARN; the
    // publisher logs its own line naming the job instead.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,lapin::returned_messages=off"));
    let (exporter, otel) = match otlp_traces {
        Some(url) => {
            let (exporter, tracer) = crate::otel::Exporter::start(url, service_name)?;
            (
                Some(exporter),
                Some(tracing_opentelemetry::layer().with_tracer(tracer)),
            )
        }
        None => (None, None),
    };
    // Colours only for a person at a terminal: a log file or journald gets plain text.
    let text = (format == LogFormat::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
    });
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .event_format(crate::logging::JobJson(
                tracing_subscriber::fmt::format().json(),
            ))
            .with_writer(std::io::stderr)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(crate::logging::JobIdsLayer)
        .with(text)
        .with(json)
        .with(otel)
        .init();
    Ok(exporter)
}
