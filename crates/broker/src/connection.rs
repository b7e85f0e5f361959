use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::tcp::{AMQPUriTcpExt, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties};
use warren_core::QueueName;

use crate::supervised::Supervised;
use crate::{BrokerConfig, Consumer, Error, Publisher, Topology};

/// Ready and consumer counts of a queue, as a passive declare reports them. Messages delivered
/// but not yet acked are not counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueDepth {
    /// Messages waiting to be delivered.
    pub ready: u32,
    /// Consumers subscribed to the queue, one per worker (or per consuming process).
    pub consumers: u32,
}

/// One AMQP connection for publishing and administration, which Warren replaces by itself
/// when it is lost (on the next node of the URL list that answers; see `crate::supervised`).
/// Publishers open their channels from it; consumers open connections of their own.
#[derive(Clone)]
pub struct Broker {
    pub(crate) connection: Supervised,
    pub(crate) config: BrokerConfig,
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// True while the publishing connection is up (not lost, being replaced or closed).
    pub fn is_connected(&self) -> bool {
        self.connection.is_connected()
    }

    /// Connects for publishing and administration. Consumers open connections of their own
    /// (see [`Broker::consume`]), so that a broker alarm blocking this publishing connection
    /// never blocks their acks, and a connection killed by one malformed delivery takes only
    /// that consumer's deliveries with it.
    ///
    /// Once connected, a lost connection is replaced in the background, the nodes of the URL
    /// list tried in turn from the one after the node lost; meanwhile the steps that need it
    /// (opening a channel, publishing) wait for the new one within their own timeouts.
    pub async fn connect(config: BrokerConfig) -> Result<Self, Error> {
        let connection = Supervised::connect(&config, "publish").await?;
        Ok(Self { connection, config })
    }

    /// The config this broker was connected with; consumers connect with it too.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// The names and settings of this deployment's RabbitMQ objects.
    pub fn topology(&self) -> &Topology {
        &self.config.topology
    }

    /// Declares Warren's exchanges and these work queues (idempotent).
    pub async fn declare(&self, queues: &[QueueName]) -> Result<(), Error> {
        let topology = &self.config.topology;
        let mut channel = self.declaring_channel().await?;
        let mut result = topology.declare_exchanges(&channel).await;
        if result.is_ok() {
            result = match topology.declare_dead_letter_queues(&channel).await {
                // A dead-letter queue declared by a Warren from before its delivery limit has
                // other arguments, which RabbitMQ refuses to change (and closes the channel
                // for). Keep it as it is rather than refuse to start: everything works but
                // the bound on a message the reconciler cannot read.
                Err(e) if e.is_precondition_failed() => {
                    tracing::warn!(queue = %topology.dead_letter_queue(), error = %warren_core::ErrorChain(&e), "the dead-letter queue was declared by an older Warren without a delivery limit; keeping it (a message the reconciler cannot read would come round in it forever): drain it with `warren dlq`, delete it, and restart a worker to upgrade it");
                    let _ = channel.close(200, "declared".into()).await;
                    channel = self.declaring_channel().await?;
                    Ok(())
                }
                other => other,
            };
        }
        if result.is_ok() {
            result = topology.declare_work_queues(&channel, queues).await;
        }
        let _ = channel.close(200, "declared".into()).await;
        result
    }

    async fn declaring_channel(&self) -> Result<lapin::Channel, Error> {
        within(
            self.config.connect_timeout,
            "opening a channel",
            self.connection.create_channel(),
        )
        .await
    }

    /// A publisher on its own channel, in confirm mode.
    pub async fn publisher(&self) -> Result<Publisher, Error> {
        Publisher::open(&self.connection, &self.config).await
    }

    /// A consumer of one work queue on a connection of its own, with at most `prefetch` unacked
    /// deliveries outstanding.
    pub async fn consume(
        &self,
        queue: &QueueName,
        prefetch: u16,
        tag: &str,
    ) -> Result<Consumer, Error> {
        let name = self.config.topology.queue(queue);
        Consumer::open(&self.config, &name, prefetch, tag, false).await
    }

    /// Same as [`Broker::consume`], but paused from the start: connected, subscribed to
    /// nothing until [`Consumer::resume`]. For a queue an admin paused before the worker
    /// started, so that no message is delivered only to be returned.
    pub async fn consume_paused(
        &self,
        queue: &QueueName,
        prefetch: u16,
        tag: &str,
    ) -> Result<Consumer, Error> {
        let name = self.config.topology.queue(queue);
        Consumer::open(&self.config, &name, prefetch, tag, true).await
    }

    /// A consumer of the intake queue (delayed jobs from producers without database access).
    pub async fn consume_intake(&self, prefetch: u16, tag: &str) -> Result<Consumer, Error> {
        let name = self.config.topology.intake_queue();
        Consumer::open(&self.config, &name, prefetch, tag, false).await
    }

    /// A consumer of the dead-letter queue, for the workers' reconciler. It is a [`Consumer`]
    /// like any other, so a frame lapin cannot parse costs only itself (careful mode).
    pub async fn consume_dead_letters(&self, prefetch: u16, tag: &str) -> Result<Consumer, Error> {
        let name = self.config.topology.dead_letter_queue();
        Consumer::open(&self.config, &name, prefetch, tag, false).await
    }

    /// Ready messages and consumers of a work queue, or `None` if it does not exist. Uses a
    /// throwaway channel because a passive declare of a missing queue closes its channel.
    pub async fn queue_depth(&self, queue: &QueueName) -> Result<Option<QueueDepth>, Error> {
        self.depth_of(&self.config.topology.queue(queue)).await
    }

    /// Same as [`Broker::queue_depth`] for the dead-letter queue.
    pub async fn dead_letter_depth(&self) -> Result<Option<QueueDepth>, Error> {
        self.depth_of(&self.config.topology.dead_letter_queue())
            .await
    }

    /// Same as [`Broker::queue_depth`] for the parking queue of dead letters that `warren dlq`
    /// reads.
    pub async fn parked_depth(&self) -> Result<Option<QueueDepth>, Error> {
        self.depth_of(&self.config.topology.parking_queue()).await
    }

    async fn depth_of(&self, name: &str) -> Result<Option<QueueDepth>, Error> {
        passive_depth(&self.connection, self.config.connect_timeout, name).await
    }

    /// Deletes these work queues, the dead-letter queue and both exchanges of the namespace.
    /// For tests and teardown; running workers lose their consumers.
    pub async fn delete_topology(&self, queues: &[QueueName]) -> Result<(), Error> {
        let channel = within(
            self.config.connect_timeout,
            "opening a channel",
            self.connection.create_channel(),
        )
        .await?;
        let t = &self.config.topology;
        let names = queues.iter().map(|q| t.queue(q)).chain([
            t.dead_letter_queue(),
            t.parking_queue(),
            t.intake_queue(),
        ]);
        for name in names {
            channel
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(|source| Error::Inspect {
                    queue: name.clone(),
                    source: Box::new(source),
                })?;
        }
        for exchange in [t.work_exchange(), t.dead_letter_exchange()] {
            channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await
                .map_err(|source| Error::Inspect {
                    queue: exchange.clone(),
                    source: Box::new(source),
                })?;
        }
        let _ = channel.close(200, "deleted".into()).await;
        Ok(())
    }

    /// Closes the connection (waiting at most the connect timeout for the broker's answer)
    /// and stops replacing it. Unacked deliveries go back to their queues.
    pub async fn close(&self) {
        self.connection.close().await;
    }
}

/// Opens one AMQP connection named `<connection_name> <role>` in the broker's connection list,
/// trying the nodes of the URL list in turn from the one at index `first` (wrapping round).
/// Returns the connection and the index of the node it is connected to.
///
/// With a list of URLs (the nodes of one cluster), the first node that answers is used.
///
/// lapin's auto-recovery is not used: it was seen to stall for good after a node died (see
/// `crate::supervised`), and its backoff, doubling up to 60 s, kept consumers away for
/// 15 s after a 12 s outage. Once lost, a connection ends in lapin's error state and its
/// owner opens a new one, starting with the node after the one it had (the publishing
/// connection: `crate::supervised`; a consumer: [`crate::Consumer::next`]).
pub(crate) async fn open_connection_at(
    config: &BrokerConfig,
    role: &str,
    first: usize,
) -> Result<(Connection, usize), Error> {
    let uris = config.endpoints()?;
    let tls = uris
        .iter()
        .map(|uri| tls_config(config, uri))
        .collect::<Result<Vec<_>, _>>()?;
    let count = uris.len();
    let mut first_reachable = None;
    let mut refusal = None;
    for index in (0..count).map(|step| (first + step) % count) {
        let uri = &uris[index];
        match reach(config, uri, &tls[index]).await {
            Ok(()) => {
                first_reachable = Some(index);
                break;
            }
            Err(e) => {
                if count > 1 {
                    tracing::warn!(node = %endpoint(uri), error = %warren_core::ErrorChain(&e), "broker node unreachable; trying the next of the list");
                }
                refusal = Some(e);
            }
        }
    }
    let Some(start) = first_reachable else {
        // `endpoints` returns at least one URL, so some node was tried and refused.
        return Err(refusal.unwrap_or_else(|| Error::Url {
            url: config.redacted_url(),
            reason: "no broker URL given".to_owned(),
        }));
    };
    let primary = uris[start].clone();
    let endpoint = endpoint(&primary);
    let runtime = lapin::runtime::default_runtime().map_err(|source| Error::Connect {
        endpoint: endpoint.clone(),
        source: Box::new(source),
    })?;
    let props = ConnectionProperties::default()
        .with_connection_name(format!("{} {role}", config.connection_name).into());
    let nodes = Arc::new(Nodes {
        next: AtomicUsize::new(start),
        current: AtomicUsize::new(start),
        uris,
        tls,
        timeout: config.connect_timeout,
    });
    let connected_to = nodes.clone();
    // amqps:// is verified by lapin's rustls connector: the chain must lead to a system root
    // (rustls-native-certs) or to the CA file, and the certificate must name the URL's host.
    // lapin calls this to connect (and retries it with its backoff); the URL it passes is
    // `primary`, whose credentials and vhost every node shares.
    let connect = async move |_primary, runtime| {
        let mut failure = None;
        for index in nodes.order() {
            let uri = &nodes.uris[index];
            let attempt = uri.connect_with_config_async(nodes.tls[index].as_ref(), &runtime);
            match tokio::time::timeout(nodes.timeout, attempt).await {
                Ok(Ok(stream)) => {
                    nodes.connected(index);
                    return Ok(stream);
                }
                Ok(Err(e)) => failure = Some(e),
                Err(_) => {
                    failure = Some(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer within {:?}", nodes.timeout),
                    ))
                }
            }
            nodes.failed(index, failure.as_ref());
        }
        Err(lapin::Error::from(
            failure.unwrap_or_else(|| std::io::Error::other("no broker URL")),
        ))
    };
    let connection = tokio::time::timeout(
        config.connect_timeout,
        Connection::connector(primary, runtime, connect, props),
    )
    .await
    .map_err(|_| Error::ConnectTimeout {
        endpoint: endpoint.clone(),
        timeout: config.connect_timeout,
    })?
    .map_err(|source| Error::Connect {
        endpoint,
        source: Box::new(source),
    })?;
    Ok((connection, connected_to.current.load(Ordering::Relaxed)))
}

/// Checks at once whether anything listens at `uri` (and, for `amqps://`, whether its
/// certificate is accepted): lapin's reconnect backoff, meant for recovering an established
/// connection, would otherwise retry a refused first connection until the timeout and then
/// only say that nothing answered; lapin also retries a failed TLS handshake and would report
/// only the timeout, not the certificate it refused.
async fn reach(config: &BrokerConfig, uri: &AMQPUri, tls: &OwnedTLSConfig) -> Result<(), Error> {
    let endpoint = endpoint(uri);
    let addr = (uri.authority.host.clone(), uri.authority.port);
    let tcp = tokio::net::TcpStream::connect(addr);
    probe(config, &endpoint, tcp, |source| Error::Unreachable {
        endpoint: endpoint.clone(),
        source,
    })
    .await?;
    if uri.scheme == AMQPScheme::AMQPS {
        let runtime = lapin::runtime::default_runtime().map_err(|source| Error::Connect {
            endpoint: endpoint.clone(),
            source: Box::new(source),
        })?;
        let handshake = uri.connect_with_config_async(tls.as_ref(), &runtime);
        probe(config, &endpoint, handshake, |source| Error::Tls {
            endpoint: endpoint.clone(),
            ca_file: config.ca_file.clone(),
            source,
        })
        .await?;
    }
    Ok(())
}

/// The nodes of a URL list as one connection's transport sees them, and which to try first.
struct Nodes {
    uris: Vec<AMQPUri>,
    tls: Vec<OwnedTLSConfig>,
    /// The node the next (re)connect tries first.
    next: AtomicUsize,
    /// The node the connection was last made to.
    current: AtomicUsize,
    /// How long one node gets to accept the connection before the next is tried.
    timeout: Duration,
}

impl Nodes {
    /// Every node once, starting with `next`.
    fn order(&self) -> impl Iterator<Item = usize> + use<> {
        let count = self.uris.len();
        let start = self.next.load(Ordering::Relaxed) % count;
        (0..count).map(move |step| (start + step) % count)
    }

    /// `index` accepted a connection: the reconnect after its loss starts with the next node.
    fn connected(&self, index: usize) {
        let count = self.uris.len();
        self.current.store(index, Ordering::Relaxed);
        if count > 1 {
            self.next.store((index + 1) % count, Ordering::Relaxed);
            tracing::info!(node = %endpoint(&self.uris[index]), "connected to broker node");
        }
    }

    fn failed(&self, index: usize, error: Option<&std::io::Error>) {
        if self.uris.len() > 1 {
            tracing::warn!(node = %endpoint(&self.uris[index]), error = ?error, "broker node unreachable; trying the next of the list");
        }
    }
}

/// `host:port`, and the vhost when it is not the default: how errors name the broker. It
/// never holds the credentials.
pub(crate) fn endpoint(uri: &AMQPUri) -> String {
    format!(
        "{}:{}{}",
        uri.authority.host,
        uri.authority.port,
        if uri.vhost == "/" {
            String::new()
        } else {
            format!(" (vhost {})", uri.vhost)
        }
    )
}

/// Runs one throwaway connection attempt within the connect timeout, so that a refusal is
/// reported with its own cause (the error `refused` makes of it) rather than as lapin's
/// eventual timeout. What the attempt opened is closed again at once.
async fn probe<T>(
    config: &BrokerConfig,
    endpoint: &str,
    attempt: impl Future<Output = std::io::Result<T>>,
    refused: impl FnOnce(std::io::Error) -> Error,
) -> Result<(), Error> {
    match tokio::time::timeout(config.connect_timeout, attempt).await {
        Ok(Ok(_probe)) => Ok(()),
        Ok(Err(source)) => Err(refused(source)),
        Err(_) => Err(Error::ConnectTimeout {
            endpoint: endpoint.to_owned(),
            timeout: config.connect_timeout,
        }),
    }
}

/// The TLS settings for `uri`: the CA file's certificates, read now so that a missing or
/// unreadable file is reported as such. A CA file with a plain `amqp://` URL is refused: the
/// operator meant the connection to be verified, and it would not even be encrypted.
fn tls_config(config: &BrokerConfig, uri: &AMQPUri) -> Result<OwnedTLSConfig, Error> {
    let Some(path) = &config.ca_file else {
        return Ok(OwnedTLSConfig::default());
    };
    if uri.scheme != AMQPScheme::AMQPS {
        return Err(Error::Url {
            url: config.redacted_url(),
            reason: format!(
                "a CA file ({}) is set but the URL is not amqps://, so the connection would \
                 not use TLS; use amqps:// (port 5671 by default) or drop the CA file",
                path.display()
            ),
        });
    }
    let pem = std::fs::read_to_string(path).map_err(|source| Error::CaFile {
        path: path.clone(),
        source,
    })?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(Error::CaFile {
            path: path.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            ),
        });
    }
    Ok(OwnedTLSConfig {
        identity: None,
        cert_chain: Some(pem),
    })
}

/// Runs one channel-level step (open, qos, consume, confirm mode) within `timeout`. Without
/// it, a connection that dies while the step waits for its answer leaves the caller waiting
/// for good: lapin does not fail pending requests of a connection it cannot recover.
pub(crate) async fn within<T>(
    timeout: Duration,
    what: &'static str,
    step: impl Future<Output = Result<T, lapin::Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(timeout, step).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(Error::Step {
            what,
            source: Box::new(source),
        }),
        Err(_) => Err(Error::StepTimeout { what, timeout }),
    }
}

/// Ready messages and consumers of the RabbitMQ queue `name`, or `None` if it does not exist,
/// asked with a passive declare on a throwaway channel (a passive declare of a missing queue
/// closes its channel), each step within `timeout`.
pub(crate) async fn passive_depth(
    connection: &Supervised,
    timeout: Duration,
    name: &str,
) -> Result<Option<QueueDepth>, Error> {
    let channel = within(timeout, "opening a channel", connection.create_channel()).await?;
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    match channel
        .queue_declare(name.into(), options, FieldTable::default())
        .await
    {
        Ok(q) => {
            let _ = channel.close(200, "inspected".into()).await;
            Ok(Some(QueueDepth {
                ready: q.message_count(),
                consumers: q.consumer_count(),
            }))
        }
        Err(e) if is_not_found(&e) => Ok(None),
        Err(source) => Err(Error::Inspect {
            queue: name.to_owned(),
            source: Box::new(source),
        }),
    }
}

fn is_not_found(e: &lapin::Error) -> bool {
    // The broker answers a passive declare of a missing queue with channel error 404.
    e.to_string().contains("NOT_FOUND") || e.to_string().contains("404")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_url_that_does_not_parse_is_not_echoed() {
        for url in [
            "amqp://u:p4/ss@h:5672/%2f",
            "amqp://u:p4ss@h:port/%2f",
            "p4ss",
        ] {
            let err = Broker::connect(BrokerConfig::new(url)).await.unwrap_err();
            let shown = format!("{err} {err:?}");
            assert!(matches!(err, Error::Url { .. }), "{url}: {shown}");
            assert!(!shown.contains("p4"), "{url}: {shown}");
        }
    }
}
