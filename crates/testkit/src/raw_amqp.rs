//! A minimal AMQP 0-9-1 publisher that writes frames byte by byte.
//!
//! lapin only sends what its types can hold: a short string is a Rust `String`, a header table
//! is well formed. Tests of poison messages need what a foreign or broken client can send: a
//! `message_id` that is not UTF-8, header tables nested thousands deep. This client speaks just
//! enough of the protocol for that: PLAIN login, one channel in confirm mode, `basic.publish`
//! with properties given as raw bytes, and a wait for the broker's ack.

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;

/// The properties of one message, each already in wire form where a test needs to break it.
#[derive(Clone, Debug, Default)]
pub struct RawProperties {
    /// The `content_type` bytes, sent as a short string (cut to 255 bytes), UTF-8 or not.
    pub content_type: Option<Vec<u8>>,
    /// The encoded header table *without* its 4-byte length prefix; see [`table`].
    pub headers: Option<Vec<u8>>,
    /// The `delivery_mode` property; 2 is persistent.
    pub delivery_mode: Option<u8>,
    /// The `message_id` bytes, sent as a short string (cut to 255 bytes), UTF-8 or not.
    pub message_id: Option<Vec<u8>>,
}

/// One field of a header table, for [`table`].
#[derive(Clone, Debug)]
pub enum RawField {
    /// A long string (`S`) of any bytes.
    LongString(Vec<u8>),
    /// A signed 64-bit integer (`l`).
    LongLong(i64),
    /// A nested table, already encoded by [`table`].
    Table(Vec<u8>),
}

/// Encodes a header table's fields (without the length prefix).
pub fn table(fields: &[(&[u8], RawField)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in fields {
        short_string(&mut out, key);
        match value {
            RawField::LongString(s) => {
                out.push(b'S');
                long_bytes(&mut out, s);
            }
            RawField::LongLong(i) => {
                out.push(b'l');
                out.extend_from_slice(&i.to_be_bytes());
            }
            RawField::Table(t) => {
                out.push(b'F');
                long_bytes(&mut out, t);
            }
        }
    }
    out
}

/// A table holding `inner` under `key`, itself nested `depth` tables deep: the innermost
/// table holds `inner`, and each level adds one table with the single key `n`.
pub fn nested_table(depth: usize, inner: Vec<u8>) -> Vec<u8> {
    let mut t = inner;
    for _ in 0..depth {
        t = table(&[(b"n", RawField::Table(t))]);
    }
    t
}

fn short_string(out: &mut Vec<u8>, s: &[u8]) {
    out.push(u8::try_from(s.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(&s[..s.len().min(255)]);
}

fn long_bytes(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

/// An open connection with channel 1 in confirm mode.
#[derive(Debug)]
pub struct RawPublisher {
    stream: TcpStream,
    frame_max: usize,
    published: u64,
}

impl RawPublisher {
    /// Connects to `amqp://user:pass@host:port/vhost` (the vhost percent-decoded).
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("amqp://")
            .context("raw AMQP client: only amqp:// URLs")?;
        let (userinfo, rest) = rest.split_once('@').unwrap_or(("guest:guest", rest));
        let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        let (hostport, vhost) = rest.split_once('/').unwrap_or((rest, ""));
        let vhost = match vhost.replace("%2f", "/").replace("%2F", "/") {
            v if v.is_empty() => "/".to_owned(),
            v => v,
        };
        let hostport = if hostport.contains(':') {
            hostport.to_owned()
        } else {
            format!("{hostport}:5672")
        };
        let mut stream = TcpStream::connect(&hostport)
            .await
            .with_context(|| format!("raw AMQP client: connecting to {hostport}"))?;
        stream.write_all(b"AMQP\x00\x00\x09\x01").await?;
        let mut this = Self {
            stream,
            frame_max: 4096,
            published: 0,
        };
        this.expect_method(10, 10).await?; // connection.start
        let mut args = Vec::new();
        long_bytes(&mut args, &[]); // client properties: empty table
        short_string(&mut args, b"PLAIN");
        let mut response = vec![0];
        response.extend_from_slice(user.as_bytes());
        response.push(0);
        response.extend_from_slice(pass.as_bytes());
        long_bytes(&mut args, &response);
        short_string(&mut args, b"en_US");
        this.send_method(0, 10, 11, &args).await?;
        let tune = this.expect_method(10, 30).await?;
        let channel_max = u16::from_be_bytes([tune[0], tune[1]]);
        let frame_max = u32::from_be_bytes([tune[2], tune[3], tune[4], tune[5]]);
        this.frame_max = frame_max as usize;
        let mut args = Vec::new();
        args.extend_from_slice(&channel_max.to_be_bytes());
        args.extend_from_slice(&frame_max.to_be_bytes());
        args.extend_from_slice(&0u16.to_be_bytes()); // no heartbeats
        this.send_method(0, 10, 31, &args).await?;
        let mut args = Vec::new();
        short_string(&mut args, vhost.as_bytes());
        short_string(&mut args, b"");
        args.push(0);
        this.send_method(0, 10, 40, &args).await?;
        this.expect_method(10, 41).await?;
        let mut args = Vec::new();
        short_string(&mut args, b"");
        this.send_method(1, 20, 10, &args).await?;
        this.expect_method(20, 11).await?;
        this.send_method(1, 85, 10, &[0]).await?; // confirm.select, wait for select-ok
        this.expect_method(85, 11).await?;
        Ok(this)
    }

    /// The largest frame the broker accepts on this connection (a content header must fit).
    pub fn frame_max(&self) -> usize {
        self.frame_max
    }

    /// Publishes one message and waits for the broker's confirm. Errors if the broker nacks
    /// it or closes the channel or connection.
    pub async fn publish(
        &mut self,
        exchange: &str,
        routing_key: &str,
        props: &RawProperties,
        body: &[u8],
    ) -> anyhow::Result<()> {
        let mut args = Vec::new();
        args.extend_from_slice(&0u16.to_be_bytes());
        short_string(&mut args, exchange.as_bytes());
        short_string(&mut args, routing_key.as_bytes());
        args.push(0); // neither mandatory nor immediate
        self.send_method(1, 60, 40, &args).await?;

        let mut flags = 0u16;
        let mut list = Vec::new();
        if let Some(ct) = &props.content_type {
            flags |= 1 << 15;
            short_string(&mut list, ct);
        }
        if let Some(h) = &props.headers {
            flags |= 1 << 13;
            long_bytes(&mut list, h);
        }
        if let Some(dm) = props.delivery_mode {
            flags |= 1 << 12;
            list.push(dm);
        }
        if let Some(id) = &props.message_id {
            flags |= 1 << 7;
            short_string(&mut list, id);
        }
        let mut header = Vec::new();
        header.extend_from_slice(&60u16.to_be_bytes());
        header.extend_from_slice(&0u16.to_be_bytes());
        header.extend_from_slice(&(body.len() as u64).to_be_bytes());
        header.extend_from_slice(&flags.to_be_bytes());
        header.extend_from_slice(&list);
        if header.len() + 8 > self.frame_max {
            bail!(
                "raw AMQP client: content header of {} bytes does not fit frame_max {}",
                header.len(),
                self.frame_max
            );
        }
        self.send_frame(FRAME_HEADER, 1, &header).await?;
        let chunk = self.frame_max.saturating_sub(8).max(1);
        for part in body.chunks(chunk) {
            self.send_frame(FRAME_BODY, 1, part).await?;
        }
        self.published += 1;
        // basic.ack (60, 80) confirms it; basic.nack (60, 120) refuses it.
        loop {
            let (class, method, args) = self.read_method().await?;
            match (class, method) {
                (60, 80) => {
                    let tag = u64::from_be_bytes(args[..8].try_into()?);
                    if tag >= self.published {
                        return Ok(());
                    }
                }
                (60, 120) => bail!("raw AMQP client: the broker nacked the message"),
                (20, 40) | (10, 50) => bail!(
                    "raw AMQP client: the broker closed the {}: {}",
                    if class == 20 { "channel" } else { "connection" },
                    String::from_utf8_lossy(&args[3..3 + usize::from(args[2])])
                ),
                _ => {}
            }
        }
    }

    /// Declares a durable queue with `arguments` (an encoded table, see [`table`]) and waits
    /// for the broker's answer: for tests that need a queue as an older Warren declared it.
    pub async fn declare_queue(&mut self, name: &str, arguments: &[u8]) -> anyhow::Result<()> {
        let mut args = Vec::new();
        args.extend_from_slice(&0u16.to_be_bytes());
        short_string(&mut args, name.as_bytes());
        args.push(0b0000_0010); // durable; not passive, exclusive, auto-delete or no-wait
        long_bytes(&mut args, arguments);
        self.send_method(1, 50, 10, &args).await?;
        match self.read_method().await? {
            (50, 11, _) => Ok(()),
            (class, method, args) => bail!(
                "raw AMQP client: declaring queue {name} got method {class}.{method} ({})",
                String::from_utf8_lossy(&args)
            ),
        }
    }

    /// Closes the connection politely.
    pub async fn close(mut self) -> anyhow::Result<()> {
        let mut args = Vec::new();
        args.extend_from_slice(&200u16.to_be_bytes());
        short_string(&mut args, b"bye");
        args.extend_from_slice(&[0, 0, 0, 0]);
        self.send_method(0, 10, 50, &args).await?;
        self.expect_method(10, 51).await?;
        Ok(())
    }

    async fn send_method(
        &mut self,
        channel: u16,
        class: u16,
        method: u16,
        args: &[u8],
    ) -> anyhow::Result<()> {
        let mut payload = Vec::with_capacity(4 + args.len());
        payload.extend_from_slice(&class.to_be_bytes());
        payload.extend_from_slice(&method.to_be_bytes());
        payload.extend_from_slice(args);
        self.send_frame(FRAME_METHOD, channel, &payload).await
    }

    async fn send_frame(&mut self, kind: u8, channel: u16, payload: &[u8]) -> anyhow::Result<()> {
        let mut frame = Vec::with_capacity(8 + payload.len());
        frame.push(kind);
        frame.extend_from_slice(&channel.to_be_bytes());
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(payload);
        frame.push(FRAME_END);
        self.stream
            .write_all(&frame)
            .await
            .context("raw AMQP client: writing a frame")
    }

    async fn read_method(&mut self) -> anyhow::Result<(u16, u16, Vec<u8>)> {
        loop {
            let mut head = [0u8; 7];
            self.stream.read_exact(&mut head).await.context(
                "raw AMQP client: reading a frame (did the broker close the connection?)",
            )?;
            let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
            let mut payload = vec![0u8; size + 1];
            self.stream.read_exact(&mut payload).await?;
            if payload[size] != FRAME_END {
                bail!("raw AMQP client: bad frame end");
            }
            payload.truncate(size);
            match head[0] {
                FRAME_METHOD => {
                    let class = u16::from_be_bytes([payload[0], payload[1]]);
                    let method = u16::from_be_bytes([payload[2], payload[3]]);
                    return Ok((class, method, payload[4..].to_vec()));
                }
                FRAME_HEARTBEAT => {}
                other => bail!("raw AMQP client: unexpected frame type {other}"),
            }
        }
    }

    async fn expect_method(&mut self, class: u16, method: u16) -> anyhow::Result<Vec<u8>> {
        let (c, m, args) = self.read_method().await?;
        if (c, m) != (class, method) {
            bail!("raw AMQP client: expected method {class}.{method}, got {c}.{m}");
        }
        Ok(args)
    }
}
