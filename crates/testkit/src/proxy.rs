//! A TCP proxy a test controls, for outages that hit one worker only.
//!
//! Fault tests must not stop the shared RabbitMQ or PostgreSQL: other tests run against them
//! in parallel. A worker pointed at a [`Proxy`] instead sees whatever outage the test makes:
//! [`Proxy::cut`] drops every open connection and refuses new ones (a crashed server),
//! [`Proxy::blackhole`] keeps connections open but forwards nothing (a network partition), and
//! [`Proxy::restore`] lets traffic through again.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

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

/// A proxy on a free loopback port in front of `upstream`.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
}

impl Proxy {
    /// Starts forwarding from a new loopback port to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
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
