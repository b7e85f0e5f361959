//! A TCP proxy a test controls, for outages that hit one worker only.
//!
//! Fault tests must not stop the shared RabbitMQ or PostgreSQL: other tests run against them
//! in parallel. A worker pointed at a [`Proxy`] instead sees whatever outage the test makes:
//! [`Proxy::cut`] drops every open connection and refuses new ones (a crashed server),
//! [`Proxy::blackhole`] keeps connections open but forwards nothing (a network partition), and
//! [`Proxy::restore`] lets traffic through again.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// An address of this machine that is not loopback: the one its default route leaves from.
/// Fails, saying so, on a machine without a network interface besides loopback.
pub fn non_loopback_address() -> anyhow::Result<IpAddr> {
    // Connecting a UDP socket sends nothing; it only picks the route and so the source address.
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    socket
        .connect("192.0.2.1:9")
        .or_else(|_| socket.connect("8.8.8.8:53"))?;
    let ip = socket.local_addr()?.ip();
    anyhow::ensure!(
        !ip.is_loopback() && !ip.is_unspecified(),
        "this machine has no network address besides loopback ({ip}); the test needs one"
    );
    Ok(ip)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Forward,
    Refuse,
    Blackhole,
}

#[derive(Debug)]
struct State {
    mode: Mode,
    /// Cancelled to drop every connection of the current generation.
    generation: CancellationToken,
}

/// A proxy on a free port (of loopback, unless started with [`Proxy::start_on`]) in front of
/// `upstream`.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
}

impl Proxy {
    /// Starts forwarding from a new loopback port to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> anyhow::Result<Proxy> {
        Self::start_on(IpAddr::from([127, 0, 0, 1]), upstream).await
    }

    /// Starts forwarding from a new port on `ip` (say, [`non_loopback_address`], for a client
    /// that must see a remote host) to `upstream` (`host:port`).
    pub async fn start_on(ip: IpAddr, upstream: &str) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            mode: Mode::Forward,
            generation: CancellationToken::new(),
        }));
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(
            listener,
            upstream.to_owned(),
            state.clone(),
            stop.clone(),
        ));
        Ok(Proxy { addr, state, stop })
    }

    /// The address clients should connect to instead of the upstream's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port clients should connect to instead of the upstream's.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `url` with its `host:port` replaced by this proxy's address.
    pub fn url_through(&self, url: &str, upstream_hostport: &str) -> String {
        url.replacen(upstream_hostport, &self.addr.to_string(), 1)
    }

    /// Drops every open connection and refuses (closes at once) new ones.
    pub fn cut(&self) {
        self.set(Mode::Refuse);
    }

    /// Drops every open connection; new ones are accepted but nothing is forwarded either way,
    /// so clients wait until their own timeouts fire.
    pub fn blackhole(&self) {
        self.set(Mode::Blackhole);
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.set(Mode::Forward);
    }

    fn set(&self, mode: Mode) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.mode = mode;
        if mode != Mode::Forward {
            state.generation.cancel();
            state.generation = CancellationToken::new();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .generation
            .cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: String,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = stop.cancelled() => return,
        };
        let Ok((client, _)) = accepted else { continue };
        let (mode, generation) = {
            let s = state.lock().unwrap_or_else(|e| e.into_inner());
            (s.mode, s.generation.clone())
        };
        let upstream = upstream.clone();
        tokio::spawn(async move {
            match mode {
                Mode::Refuse => drop(client),
                Mode::Blackhole => {
                    generation.cancelled().await;
                    drop(client);
                }
                Mode::Forward => {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let mut client = client;
                    let mut server = server;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        () = generation.cancelled() => {}
                    }
                }
            }
        });
    }
}
