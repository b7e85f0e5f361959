//! How to reach RabbitMQ: one broker URL, or the comma-separated URLs of the nodes of one
//! cluster, which a connection tries in turn and fails over between.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use lapin::uri::AMQPUri;

use crate::{Error, Topology};

/// How to reach RabbitMQ. Built by binaries from flags; libraries never read the environment.
#[derive(Clone)]
pub struct BrokerConfig {
    /// `amqp://user:pass@host:port/vhost`, or several such URLs separated by commas: the nodes
    /// of one cluster. A connection tries them in turn and, when it is lost, reconnects to the
    /// next one that answers. The nodes must share the user, password and virtual host (every
    /// connection authenticates as the first URL says). Never logged: `Debug` and
    /// [`BrokerConfig::redacted_url`] hide the passwords.
    pub url: String,
    /// Shown in RabbitMQ's connection list, e.g. `warren-worker@host/1234`.
    pub connection_name: String,
    /// The namespace and queue settings; every party of one deployment must agree on it.
    pub topology: Topology,
    /// How long to wait for one publisher confirm before reporting the outcome unknown.
    pub confirm_timeout: Duration,
    /// AMQP heartbeat, unless the URL sets one. Dead peers are noticed within about twice it.
    pub heartbeat: Duration,
    /// TCP and handshake timeout, unless the URL sets one; also the time given to each node
    /// of a URL list before the next is tried.
    pub connect_timeout: Duration,
    /// PEM file of the CA certificates (one or more) that sign the broker's certificate, for
    /// an `amqps://` URL and a private CA; trusted in addition to the system's roots. With or
    /// without it, `amqps://` verifies the certificate chain and that it names the URL's host.
    pub ca_file: Option<PathBuf>,
}

impl BrokerConfig {
    /// A config for `url` with the defaults: connection name `warren`, the default topology,
    /// a 30 s confirm timeout, a 10 s heartbeat, a 10 s connect timeout and no extra CA.
    /// Nothing is checked or connected until [`crate::Broker::connect`] (or
    /// [`BrokerConfig::validate`]).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            connection_name: "warren".to_owned(),
            topology: Topology::default(),
            confirm_timeout: Duration::from_secs(30),
            heartbeat: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            ca_file: None,
        }
    }

    /// The URL (each URL of a list) with its password (and any secret query parameter)
    /// replaced by `***`, safe for logs and errors; see `warren_core::redact`.
    pub fn redacted_url(&self) -> String {
        warren_core::redact::redact_url(&self.url)
    }

    /// Checks every URL of the list without connecting: each must parse, and all must share
    /// the first's user, password and virtual host. The error names the URL at fault (its
    /// position and its redacted form).
    pub fn validate(&self) -> Result<(), Error> {
        self.endpoints().map(drop)
    }

    /// Every URL of the list, parsed, with the configured heartbeat and connect timeout filled
    /// in where a URL does not set its own. See [`BrokerConfig::validate`].
    pub(crate) fn endpoints(&self) -> Result<Vec<AMQPUri>, Error> {
        let parts: Vec<&str> = self.url.split(',').map(str::trim).collect();
        let count = parts.len();
        let bad = |index: usize, part: &str, reason: String| Error::Url {
            url: if part.is_empty() {
                "(empty)".to_owned()
            } else {
                warren_core::redact::redact_url(part)
            },
            reason: if count > 1 {
                format!("URL {} of the {count} in the list: {reason}", index + 1)
            } else {
                reason
            },
        };
        let mut uris: Vec<AMQPUri> = Vec::with_capacity(count);
        for (index, part) in parts.iter().enumerate() {
            if part.is_empty() {
                return Err(bad(
                    index,
                    part,
                    "it is empty (a stray comma?); separate broker URLs by single commas".into(),
                ));
            }
            let mut uri: AMQPUri = part
                .parse()
                .map_err(|reason: String| bad(index, part, reason))?;
            if let Some(first) = uris.first()
                && (first.authority.userinfo != uri.authority.userinfo || first.vhost != uri.vhost)
            {
                return Err(bad(
                    index,
                    part,
                    "its user, password or virtual host differs from the first URL's; the \
                     URLs of a list are the nodes of one cluster, and every connection \
                     authenticates as the first one says"
                        .into(),
                ));
            }
            if uri.query.heartbeat.is_none() {
                uri.query.heartbeat = Some(self.heartbeat.as_secs().clamp(1, 600) as u16);
            }
            if uri.query.connection_timeout.is_none() {
                uri.query.connection_timeout = Some(self.connect_timeout.as_millis() as u64);
            }
            uris.push(uri);
        }
        Ok(uris)
    }
}

impl fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("url", &self.redacted_url())
            .field("connection_name", &self.connection_name)
            .field("topology", &self.topology)
            .field("confirm_timeout", &self.confirm_timeout)
            .field("heartbeat", &self.heartbeat)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        let redact = |url: &str| BrokerConfig::new(url).redacted_url();
        assert_eq!(
            redact("amqp://guest:secret@h:5672/%2f"),
            "amqp://guest:***@h:5672/%2f"
        );
        assert_eq!(redact("amqp://h:5672"), "amqp://h:5672");
        assert_eq!(
            redact("amqp://u:s1@a:5672,amqp://u:s1@b:5673"),
            "amqp://u:***@a:5672,amqp://u:***@b:5673"
        );
        let cfg = BrokerConfig::new("amqp://u:p4ss@h/v,amqp://u:p4ss@g/v");
        assert!(!format!("{cfg:?}").contains("p4ss"));
    }

    #[test]
    fn a_list_is_every_node_in_order_with_the_defaults_filled_in() {
        let mut cfg = BrokerConfig::new(
            "amqp://u:p@a:5672/%2f, amqp://u:p@b:5673/%2f,amqp://u:p@c:5674/%2f?heartbeat=3",
        );
        cfg.heartbeat = Duration::from_secs(7);
        let uris = cfg.endpoints().unwrap();
        let hosts: Vec<(&str, u16)> = uris
            .iter()
            .map(|u| (u.authority.host.as_str(), u.authority.port))
            .collect();
        assert_eq!(hosts, [("a", 5672), ("b", 5673), ("c", 5674)]);
        assert_eq!(uris[0].query.heartbeat, Some(7));
        assert_eq!(uris[2].query.heartbeat, Some(3));
        assert!(
            uris.iter()
                .all(|u| u.query.connection_timeout == Some(10_000))
        );
        // One URL is a list of one, as before.
        assert_eq!(BrokerConfig::new("amqp://h").endpoints().unwrap().len(), 1);
    }

    #[test]
    fn the_bad_url_of_a_list_is_named_and_its_password_hidden() {
        let cases = [
            (
                "amqp://u:p4ss@a,amqp://u:p4ss@b:port",
                "URL 2 of the 2",
                "b:port",
            ),
            (
                "amqp://u:p4ss@a,,amqp://u:p4ss@c",
                "URL 2 of the 3",
                "(empty)",
            ),
            ("amqp://u:p4ss@a,", "URL 2 of the 2", "(empty)"),
            (
                "amqp://u:p4ss@a/%2f,amqp://u:p4ss@b/other",
                "virtual host",
                "amqp://u:***@b/other",
            ),
            (
                "amqp://u:p4ss@a,amqp://v:p4ss@b",
                "user, password",
                "amqp://v:***@b",
            ),
            (
                "amqp://u:p4ss@a,amqp://u:other@b",
                "user, password",
                "amqp://u:***@b",
            ),
        ];
        for (url, says, names) in cases {
            let err = BrokerConfig::new(url).validate().unwrap_err();
            let shown = format!("{err} {err:?}");
            assert!(matches!(err, Error::Url { .. }), "{url}: {shown}");
            assert!(shown.contains(says), "{url}: {shown}");
            assert!(shown.contains(names), "{url}: {shown}");
            assert!(!shown.contains("p4ss"), "{url}: {shown}");
            assert!(!shown.contains("other@"), "{url}: {shown}");
        }
    }
}
