//! RabbitMQ's management API, read for what a passive declare cannot tell: unacked messages
//! and publish/deliver rates per queue. Plain HTTP/1 GETs with basic auth over one
//! keep-alive connection; an `https://` API URL is refused with a hint, since the CLI carries
//! no TLS stack for it.

use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use url::Url;

/// How long one connect or request may take before the API counts as unreachable.
const TIMEOUT: Duration = Duration::from_secs(3);

/// What the management API says of one queue.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct QueueStats {
    pub(crate) ready: u64,
    pub(crate) unacked: u64,
    pub(crate) consumers: u64,
    /// Messages published to the queue per second, over the API's last sample (5 s).
    pub(crate) publish_rate: f64,
    /// Messages delivered (or fetched) per second.
    pub(crate) deliver_rate: f64,
}

/// The fields of `GET /api/queues/{vhost}/{name}` that Warren reads.
#[derive(Deserialize)]
struct ApiQueue {
    #[serde(default)]
    messages_ready: u64,
    #[serde(default)]
    messages_unacknowledged: u64,
    #[serde(default)]
    consumers: u64,
    #[serde(default)]
    message_stats: Option<ApiStats>,
}

#[derive(Deserialize)]
struct ApiStats {
    publish_details: Option<Rate>,
    deliver_get_details: Option<Rate>,
}

#[derive(Deserialize)]
struct Rate {
    rate: f64,
}

/// A connection to the management API of one virtual host.
pub(crate) struct Management {
    sender: SendRequest<Empty<Bytes>>,
    host: String,
    authorization: String,
    vhost: String,
}

impl Management {
    /// Connects to the API at `api_url`. The user and password come from `api_url` if it has
    /// them, else from `amqp_url` (its first URL, if it is a list); the virtual host is
    /// `amqp_url`'s.
    pub(crate) async fn connect(api_url: &str, amqp_url: &str) -> anyhow::Result<Self> {
        let api = Url::parse(api_url).context("--rabbitmq-api-url is not a URL")?;
        if api.scheme() != "http" {
            bail!(
                "only http:// management URLs are supported (got {}://); reach an https API \
                 through a local tunnel",
                api.scheme()
            );
        }
        // Of a cluster's URL list, the first: the nodes share users and the virtual host.
        let first = amqp_url.split(',').next().unwrap_or_default().trim();
        let amqp = Url::parse(first).context("--amqp-url is not a URL")?;
        let (user, password) = if api.username().is_empty() {
            (
                amqp.username().to_owned(),
                amqp.password().map(str::to_owned),
            )
        } else {
            (api.username().to_owned(), api.password().map(str::to_owned))
        };
        let user = percent_decode(if user.is_empty() { "guest" } else { &user });
        let password = percent_decode(password.as_deref().unwrap_or("guest"));
        let authorization = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        // An AMQP URL's path is the virtual host, percent-encoded; none means `/`.
        let vhost = match amqp.path().strip_prefix('/') {
            None | Some("") => "/".to_owned(),
            Some(v) => percent_decode(v),
        };
        let host = api.host_str().context("--rabbitmq-api-url has no host")?;
        let port = api.port_or_known_default().unwrap_or(15672);
        let stream = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect((host, port)))
            .await
            .with_context(|| format!("no answer from {host}:{port} within {TIMEOUT:?}"))?
            .with_context(|| format!("cannot connect to {host}:{port}"))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake")?;
        // The connection task ends when the sender is dropped.
        tokio::spawn(connection);
        Ok(Self {
            sender,
            host: format!("{host}:{port}"),
            authorization,
            vhost,
        })
    }

    /// The statistics of the RabbitMQ queue `amqp_queue`, or `None` if it does not exist.
    pub(crate) async fn queue(&mut self, amqp_queue: &str) -> anyhow::Result<Option<QueueStats>> {
        let path = format!("/api/queues/{}/{}", encode(&self.vhost), encode(amqp_queue));
        let Some(body) = self.get(&path).await? else {
            return Ok(None);
        };
        let queue: ApiQueue = serde_json::from_slice(&body)
            .with_context(|| format!("GET {path}: the answer is not a queue's JSON"))?;
        let rate = |r: Option<&Rate>| r.map_or(0.0, |r| r.rate);
        let stats = queue.message_stats.as_ref();
        Ok(Some(QueueStats {
            ready: queue.messages_ready,
            unacked: queue.messages_unacknowledged,
            consumers: queue.consumers,
            publish_rate: rate(stats.and_then(|s| s.publish_details.as_ref())),
            deliver_rate: rate(stats.and_then(|s| s.deliver_get_details.as_ref())),
        }))
    }

    /// The names of every queue of the virtual host whose name starts with `prefix`.
    pub(crate) async fn queue_names(&mut self, prefix: &str) -> anyhow::Result<Vec<String>> {
        #[derive(Deserialize)]
        struct Named {
            name: String,
        }
        let path = format!("/api/queues/{}?columns=name", encode(&self.vhost));
        let body = self
            .get(&path)
            .await?
            .with_context(|| format!("GET {path}: 404 Not Found; check the virtual host"))?;
        let queues: Vec<Named> = serde_json::from_slice(&body)
            .with_context(|| format!("GET {path}: the answer is not a list of queues"))?;
        Ok(queues
            .into_iter()
            .map(|q| q.name)
            .filter(|name| name.starts_with(prefix))
            .collect())
    }

    /// The body of `GET path`, or `None` for a 404.
    async fn get(&mut self, path: &str) -> anyhow::Result<Option<Bytes>> {
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, self.host.as_str())
            .header(hyper::header::AUTHORIZATION, self.authorization.as_str())
            .header(hyper::header::ACCEPT, "application/json")
            .body(Empty::new())
            .context("building the request")?;
        let exchange = async {
            self.sender.ready().await?;
            let response = self.sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        };
        let (status, body) = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .with_context(|| format!("GET {path}: no answer within {TIMEOUT:?}"))?
            .with_context(|| format!("GET {path}"))?;
        match status.as_u16() {
            200 => Ok(Some(body)),
            404 => Ok(None),
            401 => bail!("GET {path}: 401 Unauthorized; check the user and password"),
            code => bail!("GET {path}: HTTP {code}"),
        }
    }
}

/// Percent-decodes `s` (URL user, password and path segments arrive encoded).
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// What a path segment keeps as it is: RFC 3986's unreserved characters.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes one path segment: everything but unreserved characters.
fn encode(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, SEGMENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_round_trip_through_percent_encoding() {
        assert_eq!(encode("/"), "%2F");
        assert_eq!(encode("warren.q.default"), "warren.q.default");
        assert_eq!(percent_decode("%2F"), "/");
        assert_eq!(percent_decode("p%40ss"), "p@ss");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
