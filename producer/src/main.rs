//! `warren-producer`: flags → settings, logging, connections, serve until SIGTERM/SIGINT.
//! Everything else is in the library (`warren_producer::router`).
//!
//! Exit codes: 0 after a clean shutdown, 1 when a service cannot be reached or the listener
//! fails, 2 on bad flags or configuration (tokens file, schemas).

use std::process::ExitCode;

use anyhow::Context;
use axum::serve::ListenerExt;
use tokio::signal::unix::{SignalKind, signal};
use warren_client::{Broker, Client, Store};
use warren_producer::auth::{Tokens, new_token};
use warren_producer::contracts::Contracts;
use warren_producer::settings::{Args, Command, LogFormat, Settings, TokenCommand};
use warren_producer::{AppState, router, tls};

fn main() -> ExitCode {
    let args: Args = warren_core::flags::parse();
    if let Some(Command::Token(TokenCommand::New { name, patterns })) = &args.command {
        return match new_token(name, patterns) {
            Ok((token, line)) => {
                println!("token (shown once, give it to the caller; it is not stored):\n  {token}");
                println!("line to add to the tokens file (WARREN_TOKENS_FILE):\n  {line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("warren-producer: {e}");
                ExitCode::from(2)
            }
        };
    }
    let settings = match args.validate() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("warren-producer: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(settings.log_format);
    // The configuration is read before any connection, so that a mistake in it exits 2.
    let (tokens, contracts, tls) = match load_files(&settings) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("warren-producer: {e}");
            return ExitCode::from(2);
        }
    };
    tracing::info!(
        listen = %settings.listen,
        broker = ?settings.broker,
        store = ?settings.store,
        tokens = ?tokens,
        tasks = ?contracts.tasks().collect::<Vec<_>>(),
        allow_unknown_tasks = settings.allow_unknown_tasks,
        limits = ?settings.limits,
        tls = tls.is_some(),
        "starting"
    );
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warren-producer: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(settings, tokens, contracts, tls)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("warren-producer: {e:#}");
            // As in warren-worker: lapin's I/O thread may still hold this runtime's timers.
            std::process::exit(1)
        }
    }
}

/// What `load_files` reads: the tokens, the contracts, and the TLS config if any.
type Files = (
    Tokens,
    Contracts,
    Option<std::sync::Arc<tokio_rustls::rustls::ServerConfig>>,
);

fn load_files(settings: &Settings) -> Result<Files, String> {
    let path = &settings.tokens_file;
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read the tokens file {} (--tokens-file / WARREN_TOKENS_FILE): {e}",
            path.display()
        )
    })?;
    let tokens = Tokens::parse(&text, &path.display().to_string())?;
    let contracts = Contracts::load(&settings.schemas_dir, settings.allow_unknown_tasks)?;
    let tls = match &settings.tls {
        Some((cert, key)) => Some(tls::server_config(cert, key)?),
        None => None,
    };
    Ok((tokens, contracts, tls))
}

async fn serve(
    settings: Settings,
    tokens: Tokens,
    contracts: Contracts,
    tls: Option<std::sync::Arc<tokio_rustls::rustls::ServerConfig>>,
) -> anyhow::Result<()> {
    let broker = Broker::connect(settings.broker.clone())
        .await
        .context("connecting to RabbitMQ")?;
    let client = Client::from_broker(broker.clone())
        .await
        .context("opening the publishing channel")?;
    let store = match &settings.store {
        None => None,
        Some(config) => {
            let store = Store::connect(config)
                .await
                .context("connecting to Postgres")?;
            store
                .check_schema()
                .await
                .context("checking the database schema")?;
            Some(store)
        }
    };
    let state = AppState::new(client, store.clone(), tokens, contracts, settings.limits);
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("listening on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let app = router(state);
    // Graceful: on a signal, stop accepting, let in-flight requests finish (each is bounded
    // by the request timeout), then close the connections.
    match tls {
        None => {
            tracing::info!(%addr, "listening (HTTP)");
            axum::serve(listener.tap_io(warren_producer::no_delay), app)
                .with_graceful_shutdown(shutdown_signal())
                .await
        }
        Some(config) => {
            tracing::info!(%addr, "listening (HTTPS)");
            axum::serve(tls::TlsListener::new(listener, config)?, app)
                .with_graceful_shutdown(shutdown_signal())
                .await
        }
    }
    .context("serving HTTP")?;
    tracing::info!("in-flight requests finished; closing connections");
    broker.close().await;
    if let Some(store) = store {
        store.close().await;
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM ({e}); only Ctrl-C stops the service");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("signal received; finishing in-flight requests");
}

fn init_logging(format: LogFormat) {
    // lapin logs a returned message whole, payload and headers included, at WARN; the
    // publisher logs its own line naming the job instead.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,lapin::returned_messages=off".into());
    // Colours only for a person at a terminal: a log file or journald gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
