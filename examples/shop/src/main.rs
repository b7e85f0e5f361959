//! A shop's back end in one binary: an HTTP endpoint that takes an order and enqueues two
//! typed jobs for it, and a Warren worker that runs them.
//!
//! ```sh
//! warren migrate --create-database          # once, with the same WARREN_DATABASE_URL
//! cargo run -p warren-example-shop
//! curl -X POST localhost:8080/orders -H 'content-type: application/json' \
//!      -d '{"order": 7, "email": "ada@example.com"}'
//! warren jobs show <id printed by curl>
//! ```
//!
//! `SendReceipt` runs at once; `BuildInvoice` a minute later (it waits in Postgres until the
//! promoter publishes it). Both are named by their types: the handler's input and the
//! enqueued payload cannot disagree.

use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use clap::Parser;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use warren_client::{BrokerConfig, Client, JobId, NewJob, Store, StoreConfig};
use warren_runtime::{JobContext, JobError, QueueName, Task, Worker, WorkerConfig};

/// Email the customer a receipt for their order.
#[derive(Debug, Serialize, Deserialize)]
struct SendReceipt {
    order: u64,
    email: String,
}

impl Task for SendReceipt {
    const NAME: &'static str = "shop.send_receipt";
    type Output = ();
}

/// Render the order's invoice; the result is the invoice's path.
#[derive(Debug, Serialize, Deserialize)]
struct BuildInvoice {
    order: u64,
}

impl Task for BuildInvoice {
    const NAME: &'static str = "shop.build_invoice";
    type Output = String;

    fn timeout() -> Option<Duration> {
        Some(Duration::from_secs(60))
    }
}

async fn send_receipt(ctx: JobContext, job: SendReceipt) -> Result<(), JobError> {
    tracing::info!(job.id = %ctx.id, order = job.order, to = %job.email, "receipt sent");
    Ok(())
}

async fn build_invoice(_ctx: JobContext, job: BuildInvoice) -> Result<String, JobError> {
    Ok(format!("invoices/{}.pdf", job.order))
}

/// The order the HTTP endpoint takes.
#[derive(Debug, Deserialize)]
struct Order {
    order: u64,
    email: String,
}

/// The jobs enqueued for it.
#[derive(Debug, Serialize)]
struct Enqueued {
    receipt: JobId,
    invoice: JobId,
}

/// `POST /orders`: both jobs, each confirmed (the receipt by RabbitMQ, the delayed invoice by
/// Postgres) before the answer.
async fn take_order(
    State(client): State<Client>,
    Json(order): Json<Order>,
) -> Result<(StatusCode, Json<Enqueued>), (StatusCode, String)> {
    let unavailable = |e: warren_client::Error| (StatusCode::SERVICE_UNAVAILABLE, format!("{e}"));
    let receipt = client
        .enqueue(SendReceipt {
            order: order.order,
            email: order.email,
        })
        .await
        .map_err(unavailable)?;
    let invoice = NewJob::of(&BuildInvoice { order: order.order }).delay(Duration::from_secs(60));
    let invoice = client.enqueue(invoice).await.map_err(unavailable)?;
    Ok((StatusCode::ACCEPTED, Json(Enqueued { receipt, invoice })))
}

fn router(client: Client) -> Router {
    Router::new()
        .route("/orders", post(take_order))
        .with_state(client)
}

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, env = "WARREN_AMQP_URL", hide_env_values = true)]
    amqp_url: String,
    #[arg(long, env = "WARREN_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Where the HTTP endpoint listens.
    #[arg(long, env = "SHOP_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().init();
    let args = Args::parse();
    let broker = BrokerConfig::new(&args.amqp_url);
    let store = StoreConfig::new(&args.database_url);

    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        signal.cancel();
    });

    // The worker runs in this process, on the queue the tasks name (the default one).
    let queues = vec![QueueName::new(SendReceipt::QUEUE)?];
    let worker = Worker::builder()
        .task::<SendReceipt>(send_receipt)
        .task::<BuildInvoice>(build_invoice)
        .serve(
            WorkerConfig::new("shop", queues),
            broker.clone(),
            store.clone(),
            shutdown.clone().cancelled_owned(),
        );
    let worker = tokio::spawn(worker);

    let client = Client::connect(broker)
        .await
        .context("connecting to RabbitMQ")?
        .with_store(
            Store::connect(&store)
                .await
                .context("connecting to Postgres")?,
        );
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(listen = %args.listen, "taking orders");
    axum::serve(listener, router(client))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("serving HTTP")?;
    let stats = worker.await.context("the worker task panicked")??;
    tracing::info!(?stats, "stopped");
    Ok(())
}
