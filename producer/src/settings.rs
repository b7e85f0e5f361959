//! Flags and environment, parsed once and validated into [`Settings`], which the rest of the
//! program trusts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use warren_broker::{BrokerConfig, Topology};
use warren_core::Namespace;
use warren_core::duration::parse_duration;
use warren_store::StoreConfig;

use crate::Limits;

/// Log format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The HTTP service through which any service enqueues Warren jobs.
#[derive(Debug, Parser)]
#[command(name = "warren-producer", version)]
pub struct Args {
    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address to listen on.
    #[arg(long, env = "WARREN_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// RabbitMQ URL, e.g. amqp://user:pass@127.0.0.1:5672/%2f (comma-separated for several
    /// brokers, tried in order).
    #[arg(long, env = "WARREN_AMQP_URL", hide_env_values = true)]
    pub amqp_url: Option<String>,

    /// PEM file of the CA certificates that sign RabbitMQ's certificate, for amqps:// and a
    /// private CA.
    #[arg(long, env = "WARREN_AMQP_CA_FILE")]
    pub amqp_ca_file: Option<PathBuf>,

    /// PostgreSQL URL. Optional: without it, delayed jobs go through the intake queue,
    /// idempotency keys are only enforced by the workers, and GET/cancel answer 503.
    #[arg(long, env = "WARREN_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// The tokens file: lines `NAME SHA256_HEX_OF_TOKEN [TASK_PATTERN ...]`
    /// (`warren-producer token new NAME` makes one).
    #[arg(long, env = "WARREN_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,

    /// Directory of task contracts, `<task>.schema.json` each.
    #[arg(long, env = "WARREN_SCHEMAS_DIR", default_value = "schemas/payloads")]
    pub schemas_dir: PathBuf,

    /// Accept tasks that have no schema in --schemas-dir (their payloads are not checked).
    #[arg(long, env = "WARREN_ALLOW_UNKNOWN_TASKS")]
    pub allow_unknown_tasks: bool,

    /// Largest request body in bytes; larger ones get 413 before they are read whole.
    #[arg(long, env = "WARREN_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,

    /// Most jobs in one POST /v1/jobs/batch.
    #[arg(long, env = "WARREN_MAX_BATCH", default_value_t = 1000)]
    pub max_batch: usize,

    /// Longest a request may take, e.g. 30s; a slower one gets 503 and nothing is accepted.
    #[arg(long, env = "WARREN_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Prefix of every RabbitMQ exchange and queue; must match the workers'.
    #[arg(long, env = "WARREN_NAMESPACE", default_value = Namespace::DEFAULT)]
    pub namespace: String,

    /// PEM certificate chain (leaf first) to serve HTTPS with; needs --tls-key.
    #[arg(long, env = "WARREN_TLS_CERT_FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "WARREN_TLS_KEY_FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Log format.
    #[arg(long, env = "WARREN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Commands other than serving.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage bearer tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// Token commands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a fresh random token (once: it is not stored) and the line to add to the tokens
    /// file.
    New {
        /// The caller's name, as logs will show it.
        name: String,
        /// Tasks the token may use (`billing.*`, `email.send`); every task when none.
        patterns: Vec<String>,
    },
}

/// Everything the service needs, validated.
#[derive(Debug)]
pub struct Settings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// How to reach RabbitMQ.
    pub broker: BrokerConfig,
    /// How to reach Postgres, if configured.
    pub store: Option<StoreConfig>,
    /// The tokens file.
    pub tokens_file: PathBuf,
    /// The task contracts' directory.
    pub schemas_dir: PathBuf,
    /// Whether tasks without a contract are accepted.
    pub allow_unknown_tasks: bool,
    /// Request limits.
    pub limits: Limits,
    /// Certificate and key files, to serve HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Log format.
    pub log_format: LogFormat,
}

impl Args {
    /// Checks every setting and names the flag (and its variable) of the first bad one.
    pub fn validate(self) -> Result<Settings, String> {
        let amqp_url = self
            .amqp_url
            .ok_or("--amqp-url / WARREN_AMQP_URL is required: the broker jobs are published to")?;
        let tokens_file = self.tokens_file.ok_or(
            "--tokens-file / WARREN_TOKENS_FILE is required: every request needs a bearer \
             token; make one with `warren-producer token new NAME`",
        )?;
        if self.max_body_bytes < 1024 {
            return Err(format!(
                "--max-body-bytes / WARREN_MAX_BODY_BYTES must be at least 1024, got {}",
                self.max_body_bytes
            ));
        }
        if self.max_batch == 0 || self.max_batch > 100_000 {
            return Err(format!(
                "--max-batch / WARREN_MAX_BATCH must be 1 to 100000, got {}",
                self.max_batch
            ));
        }
        if self.request_timeout < Duration::from_millis(100) {
            return Err(format!(
                "--request-timeout / WARREN_REQUEST_TIMEOUT must be at least 100ms, got {:?}",
                self.request_timeout
            ));
        }
        let namespace = Namespace::new(&self.namespace)
            .map_err(|e| format!("--namespace / WARREN_NAMESPACE: {e}"))?;
        let mut broker = BrokerConfig::new(amqp_url);
        broker.connection_name = format!("warren-producer {}", self.listen);
        broker.ca_file = self.amqp_ca_file;
        broker.topology = Topology {
            namespace,
            ..Topology::default()
        };
        let store = self.database_url.map(|url| {
            let mut store = StoreConfig::new(url);
            store.application_name = "warren-producer".to_owned();
            store
        });
        Ok(Settings {
            listen: self.listen,
            broker,
            store,
            tokens_file,
            schemas_dir: self.schemas_dir,
            allow_unknown_tasks: self.allow_unknown_tasks,
            limits: Limits {
                max_body_bytes: self.max_body_bytes,
                max_batch: self.max_batch,
                request_timeout: self.request_timeout,
            },
            tls: self.tls_cert.zip(self.tls_key),
            log_format: self.log_format,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Settings, String> {
        let mut argv = vec![
            "warren-producer",
            "--amqp-url",
            "amqp://u:secret@h",
            "--tokens-file",
            "/etc/warren/tokens",
        ];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .validate()
    }

    #[test]
    fn defaults_and_redaction() {
        let s = parse(&["--database-url", "postgres://u:pgsecret@h/db"]).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.limits.max_batch, 1000);
        assert_eq!(s.broker.topology, Topology::default());
        let shown = format!("{s:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn bad_values_name_their_flag() {
        assert!(
            parse(&["--max-batch", "0"])
                .unwrap_err()
                .contains("--max-batch")
        );
        assert!(
            parse(&["--max-body-bytes", "10"])
                .unwrap_err()
                .contains("--max-body-bytes")
        );
        assert!(
            parse(&["--namespace", "a b"])
                .unwrap_err()
                .contains("--namespace")
        );
        assert!(
            parse(&["--tls-cert", "c.pem"])
                .unwrap_err()
                .contains("--tls-key")
        );
        let e = Args::try_parse_from(["warren-producer"])
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.contains("--amqp-url"), "{e}");
    }
}
