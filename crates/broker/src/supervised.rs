//! The publishing connection, brought back by Warren itself when it is lost.
//!
//! lapin's auto-recovery was found to stall: after the node of a connection died, the
//! connection sometimes stayed `reconnecting` for good, its I/O loop never calling the
//! connector again, so a producer's connection hung where a consumer (which reopens a
//! connection of its own) recovered. A stalled recovery cannot even be stopped: lapin closes
//! only a connection that is connected. So the publishing connection is opened without
//! auto-recovery. Once lost, it ends in lapin's error state and its I/O loop exits, and a
//! watchdog task here opens a new connection, trying the nodes of the URL list in turn from
//! the one after the node lost, with a backoff capped at [`RETRY_MAX`]. Channels do not
//! survive the swap: whoever holds one (a [`crate::Publisher`]) opens a new one on the new
//! connection, which [`Supervised::generation`] tells apart from the old.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use lapin::{Channel, Connection, ConnectionStatus};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::connection::{endpoint, open_connection_at};
use crate::{BrokerConfig, Error};

/// How often the watchdog looks at the connection's state.
const POLL: Duration = Duration::from_millis(200);

/// How long a connection may be in a state other than connected, errored or closed (all of
/// which settle at once) before it is given up as stalled and replaced.
const STALL: Duration = Duration::from_secs(1);

/// The first wait after a failed reopen; it doubles up to [`RETRY_MAX`].
pub(crate) const RETRY_MIN: Duration = Duration::from_millis(100);

/// The longest wait between two reopen attempts: a broker back from a restart is found within
/// about this long.
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(2);

/// One AMQP connection that is replaced by a new one whenever it is lost. Clones share it.
#[derive(Clone)]
pub(crate) struct Supervised {
    shared: Arc<Shared>,
}

struct Shared {
    config: BrokerConfig,
    role: String,
    /// The connection in use; a new value wakes whoever waits for one.
    link: watch::Sender<Arc<Link>>,
    /// Set by [`Supervised::close`]: nothing is reopened after it.
    closed: AtomicBool,
}

/// One connection of the sequence, with its place in it.
struct Link {
    connection: Connection,
    /// The index, in the URL list, of the node it is connected to.
    node: usize,
    /// 0 for the first connection, one more for each replacement.
    generation: u64,
}

impl Supervised {
    /// Connects (see [`open_connection_at`], first node first) and starts the watchdog that
    /// replaces the connection when it is lost. The watchdog ends when the last clone is
    /// dropped or [`Supervised::close`] is called.
    pub(crate) async fn connect(config: &BrokerConfig, role: &str) -> Result<Self, Error> {
        let (connection, node) = open_connection_at(config, role, 0).await?;
        let (link, _) = watch::channel(Arc::new(Link {
            connection,
            node,
            generation: 0,
        }));
        let shared = Arc::new(Shared {
            config: config.clone(),
            role: role.to_owned(),
            link,
            closed: AtomicBool::new(false),
        });
        tokio::spawn(watchdog(Arc::downgrade(&shared)));
        Ok(Self { shared })
    }

    /// True while the current connection is up.
    pub(crate) fn is_connected(&self) -> bool {
        self.shared.link.borrow().connection.status().connected()
    }

    /// True once [`Supervised::close`] was called: the connection will not come back.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// Which connection of the sequence is current; a channel opened on an earlier one is
    /// dead even if lapin has not said so yet.
    pub(crate) fn generation(&self) -> u64 {
        self.shared.link.borrow().generation
    }

    /// A channel on the current connection, once there is one that is up: while the
    /// connection is lost, this waits for the watchdog to replace it, for as long as the
    /// caller lets it (callers bound it, e.g. with `connection::within`). Returns the
    /// generation of the connection with the channel. After [`Supervised::close`], lapin's
    /// error for a closed connection.
    pub(crate) async fn create_channel_with_generation(
        &self,
    ) -> Result<(Channel, u64), lapin::Error> {
        let mut links = self.shared.link.subscribe();
        loop {
            let link = links.borrow_and_update().clone();
            if link.connection.status().connected() || self.shared.closed.load(Ordering::SeqCst) {
                let channel = link.connection.create_channel().await?;
                return Ok((channel, link.generation));
            }
            if links.changed().await.is_err() {
                // The sender lives in `shared`, which `self` holds: this cannot happen, but
                // if it did, lapin's own error says the connection is not usable.
                let channel = link.connection.create_channel().await?;
                return Ok((channel, link.generation));
            }
        }
    }

    /// Same as [`Supervised::create_channel_with_generation`], without the generation. Named
    /// like lapin's so that `Broker`'s channel steps read the same.
    pub(crate) async fn create_channel(&self) -> Result<Channel, lapin::Error> {
        self.create_channel_with_generation()
            .await
            .map(|(channel, _)| channel)
    }

    /// Stops replacing the connection and closes the current one (within the connect
    /// timeout: a dead peer does not answer the close).
    pub(crate) async fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        let link = self.shared.link.borrow().clone();
        close_quietly(&link.connection, self.shared.config.connect_timeout).await;
    }
}

/// Closes `connection` if it is up, waiting at most `timeout` for the broker's answer.
async fn close_quietly(connection: &Connection, timeout: Duration) {
    if connection.status().connected() {
        let _ = tokio::time::timeout(
            timeout,
            connection.close(200, "warren shutting down".into()),
        )
        .await;
    }
}

/// The state of a connection that is not connected, in words, for the logs (lapin keeps the
/// state itself private).
fn describe(status: &ConnectionStatus) -> &'static str {
    if status.errored() {
        "lost (error)"
    } else if status.closed() {
        "closed by the broker"
    } else if status.closing() {
        "closing"
    } else if status.reconnecting() {
        "reconnecting"
    } else if status.connecting() {
        "connecting"
    } else {
        "not connected"
    }
}

/// An outage of the connection as the watchdog tracks it.
struct Outage {
    since: Instant,
    /// Reopen attempts that failed so far.
    failures: u32,
    /// The wait before the next attempt.
    delay: Duration,
}

/// Watches the connection of `shared` and replaces it when it is lost, until `shared` is gone
/// or closed. It holds `shared` only while it looks or reopens, never while it sleeps, so
/// that dropping the last [`Supervised`] drops (and closes) the connection.
async fn watchdog(shared: Weak<Shared>) {
    let mut outage = None;
    loop {
        let wait = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            if shared.closed.load(Ordering::SeqCst) {
                return;
            }
            shared.look(&mut outage).await
        };
        tokio::time::sleep(wait).await;
    }
}

impl Shared {
    /// One round of the watchdog: notes an outage, or its end, and tries to reopen when the
    /// connection is lost. Returns how long to wait before the next round.
    async fn look(&self, outage: &mut Option<Outage>) -> Duration {
        let link = self.link.borrow().clone();
        let status = link.connection.status();
        if status.connected() {
            return POLL;
        }
        let current = outage.get_or_insert_with(|| {
            tracing::warn!(role = %self.role, state = describe(status), "broker connection lost; reopening it, trying the nodes of the URL list in turn");
            Outage {
                since: Instant::now(),
                failures: 0,
                delay: RETRY_MIN,
            }
        });
        let settled = status.errored() || status.closed();
        if !settled && current.since.elapsed() < STALL {
            return POLL;
        }
        match open_connection_at(&self.config, &self.role, link.node + 1).await {
            Ok((connection, node)) => {
                let node_name = self
                    .config
                    .endpoints()
                    .ok()
                    .and_then(|uris| uris.get(node).map(endpoint))
                    .unwrap_or_default();
                tracing::warn!(role = %self.role, node = %node_name, down_for = ?current.since.elapsed(), "broker connection reopened");
                *outage = None;
                self.link.send_replace(Arc::new(Link {
                    connection,
                    node,
                    generation: link.generation + 1,
                }));
                // A close that came while this reopened found the old connection; this one
                // is closed here, whichever of the two saw the other.
                if self.closed.load(Ordering::SeqCst) {
                    let new = self.link.borrow().clone();
                    close_quietly(&new.connection, self.config.connect_timeout).await;
                }
                POLL
            }
            Err(e) => {
                if current.failures == 0 {
                    tracing::warn!(role = %self.role, error = %warren_core::ErrorChain(&e), "cannot reopen the broker connection yet; retrying every {RETRY_MAX:?} at most");
                }
                current.failures += 1;
                let wait = current.delay;
                current.delay = (current.delay * 2).min(RETRY_MAX);
                wait
            }
        }
    }
}
