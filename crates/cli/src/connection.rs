//! The global settings that say where RabbitMQ and PostgreSQL are, and connecting to them.
//!
//! Both URLs are optional on the command line because no command needs both: `migrate`, `jobs`
//! and `workers` only talk to Postgres, `enqueue` and `queues` only to RabbitMQ. A command asks
//! for the one it needs, and a missing one is reported with the flag and the variable to set.

use std::fmt;

use anyhow::Context;
use warren_broker::{Broker, BrokerConfig, Topology};
use warren_core::Namespace;
use warren_store::{Store, StoreConfig};

use crate::exit::Usage;

/// Name shown in RabbitMQ's connection list and Postgres' `pg_stat_activity`, so an operator
/// can tell an admin session from a worker.
const CONNECTION_NAME: &str = "warren-cli";

#[derive(Clone, clap::Args)]
#[command(next_help_heading = "Connection")]
pub struct ConnectionArgs {
    /// RabbitMQ URL, e.g. amqp://user:pass@127.0.0.1:5672/%2f (needed by enqueue and queues).
    #[arg(long, env = "WARREN_AMQP_URL", hide_env_values = true, global = true)]
    pub amqp_url: Option<String>,

    /// PEM file of the CA certificates that sign RabbitMQ's certificate, for an amqps:// URL
    /// and a private CA (the system's roots are trusted too). The certificate must name the
    /// URL's host either way.
    #[arg(long, env = "WARREN_AMQP_CA_FILE", global = true)]
    pub amqp_ca_file: Option<std::path::PathBuf>,

    /// RabbitMQ management API, e.g. http://127.0.0.1:15672, for the unacked counts and the
    /// publish/deliver rates in `warren queues` (user and password from this URL, else from
    /// --amqp-url). Without it, or when it does not answer, those columns show as n/a.
    #[arg(
        long,
        env = "WARREN_RABBITMQ_API_URL",
        hide_env_values = true,
        global = true
    )]
    pub rabbitmq_api_url: Option<String>,

    /// PostgreSQL URL, e.g. postgres://postgres@127.0.0.1:5432/warren (needed by migrate, jobs
    /// and workers). TLS: none for a loopback host, verify-full for any other, unless the URL
    /// sets sslmode=; a private CA goes in sslrootcert=/path/to/ca.pem.
    #[arg(
        long,
        env = "WARREN_DATABASE_URL",
        hide_env_values = true,
        global = true
    )]
    pub database_url: Option<String>,

    /// Prefix of every RabbitMQ exchange and queue; the same as the workers'.
    #[arg(
        long,
        env = "WARREN_NAMESPACE",
        default_value = Namespace::DEFAULT,
        global = true
    )]
    pub namespace: String,

    /// x-delivery-limit of the work queues `queues declare` creates. It must match the
    /// workers' setting: RabbitMQ refuses to redeclare a queue with different arguments.
    #[arg(
        long,
        env = "WARREN_DELIVERY_LIMIT",
        default_value_t = Topology::DEFAULT_DELIVERY_LIMIT,
        global = true
    )]
    pub delivery_limit: u32,

    /// How long to wait for RabbitMQ to confirm a published job (and for a lost connection
    /// to come back) before reporting it not enqueued, e.g. `30s`, `500ms`.
    #[arg(
        long,
        env = "WARREN_CONFIRM_TIMEOUT",
        default_value = "30s",
        value_parser = parse_timeout,
        allow_hyphen_values = true,
        global = true
    )]
    pub confirm_timeout: std::time::Duration,
}

fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    let d = warren_core::duration::parse_duration(s)?;
    if d.is_zero() {
        return Err("must be more than zero".to_owned());
    }
    Ok(d)
}

/// Derived `Debug` would print the URLs with their passwords.
impl fmt::Debug for ConnectionArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionArgs")
            .field(
                "amqp_url",
                &self
                    .amqp_url
                    .as_ref()
                    .map(|u| BrokerConfig::new(u).redacted_url()),
            )
            .field(
                "database_url",
                &self
                    .database_url
                    .as_ref()
                    .map(|u| StoreConfig::new(u).redacted_url()),
            )
            .field(
                "rabbitmq_api_url",
                &self
                    .rabbitmq_api_url
                    .as_ref()
                    .map(|u| BrokerConfig::new(u).redacted_url()),
            )
            .field("amqp_ca_file", &self.amqp_ca_file)
            .field("namespace", &self.namespace)
            .field("delivery_limit", &self.delivery_limit)
            .field("confirm_timeout", &self.confirm_timeout)
            .finish()
    }
}

impl ConnectionArgs {
    /// The RabbitMQ settings, or why `command` cannot have them.
    pub(crate) fn broker_config(&self, command: &str) -> Result<BrokerConfig, Usage> {
        let url = self
            .amqp_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| {
                Usage(format!(
                    "`warren {command}` needs RabbitMQ: pass --amqp-url or set WARREN_AMQP_URL \
                 (e.g. amqp://user:pass@127.0.0.1:5672/%2f)"
                ))
            })?;
        let namespace = Namespace::new(&self.namespace)
            .map_err(|e| Usage(format!("--namespace / WARREN_NAMESPACE: {e}")))?;
        if self.delivery_limit == 0 {
            return Err(Usage(
                "--delivery-limit / WARREN_DELIVERY_LIMIT must be at least 1".to_owned(),
            ));
        }
        let mut config = BrokerConfig::new(url);
        config.connection_name = CONNECTION_NAME.to_owned();
        config.confirm_timeout = self.confirm_timeout;
        config.ca_file = self.amqp_ca_file.clone();
        config.topology = Topology {
            namespace,
            delivery_limit: self.delivery_limit,
        };
        Ok(config)
    }

    /// The PostgreSQL settings, or why `command` cannot have them.
    pub(crate) fn store_config(&self, command: &str) -> Result<StoreConfig, Usage> {
        let url = self.database_url.as_deref().filter(|u| !u.trim().is_empty()).ok_or_else(|| {
            Usage(format!(
                "`warren {command}` needs PostgreSQL: pass --database-url or set WARREN_DATABASE_URL \
                 (e.g. postgres://user@127.0.0.1:5432/warren)"
            ))
        })?;
        let mut config = StoreConfig::new(url);
        // One command runs one query at a time; a second connection covers the migration
        // lock being held on the first.
        config.max_connections = 2;
        config.application_name = CONNECTION_NAME.to_owned();
        Ok(config)
    }

    pub(crate) async fn broker(&self, command: &str) -> anyhow::Result<Broker> {
        let config = self.broker_config(command)?;
        tracing::debug!(broker = ?config, "connecting to RabbitMQ");
        Broker::connect(config)
            .await
            .context("connecting to RabbitMQ")
    }

    /// The management API, if one is configured and answers; otherwise `None`, after a
    /// warning on stderr that says why, so the caller falls back to what AMQP can tell.
    pub(crate) async fn management(&self) -> Option<crate::management::Management> {
        let api = self
            .rabbitmq_api_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())?;
        let amqp = self.amqp_url.as_deref().unwrap_or_default();
        match crate::management::Management::connect(api, amqp).await {
            Ok(m) => Some(m),
            Err(e) => {
                let api = BrokerConfig::new(api).redacted_url();
                tracing::warn!(
                    "RabbitMQ management API at {api} unavailable ({}); unacked counts and \
                     rates are shown as n/a",
                    crate::output::printable_line(&format!("{e:#}"))
                );
                None
            }
        }
    }

    pub(crate) async fn store(&self, command: &str) -> anyhow::Result<Store> {
        let config = self.store_config(command)?;
        tracing::debug!(store = ?config, "connecting to PostgreSQL");
        Store::connect(&config)
            .await
            .context("connecting to PostgreSQL")
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should panic at the first surprise"
)]
mod tests {
    use super::*;

    fn args(amqp: Option<&str>, db: Option<&str>) -> ConnectionArgs {
        ConnectionArgs {
            amqp_url: amqp.map(str::to_owned),
            amqp_ca_file: None,
            rabbitmq_api_url: None,
            database_url: db.map(str::to_owned),
            namespace: Namespace::DEFAULT.to_owned(),
            delivery_limit: Topology::DEFAULT_DELIVERY_LIMIT,
            confirm_timeout: std::time::Duration::from_secs(30),
        }
    }

    #[test]
    fn flag_defaults_are_the_topology_defaults() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            connection: ConnectionArgs,
        }
        let parsed = <Cli as clap::Parser>::try_parse_from(["warren"]).unwrap();
        let config = ConnectionArgs {
            amqp_url: Some("amqp://h".to_owned()),
            ..parsed.connection
        }
        .broker_config("queues")
        .unwrap();
        assert_eq!(config.topology, Topology::default());
    }

    #[test]
    fn a_missing_url_names_its_flag_and_variable() {
        let none = args(None, Some("  "));
        let err = none.broker_config("enqueue").unwrap_err().to_string();
        assert!(
            err.contains("warren enqueue")
                && err.contains("--amqp-url")
                && err.contains("WARREN_AMQP_URL"),
            "{err}"
        );
        let err = none.store_config("workers").unwrap_err().to_string();
        assert!(
            err.contains("--database-url") && err.contains("WARREN_DATABASE_URL"),
            "{err}"
        );
    }

    #[test]
    fn settings_carry_the_namespace_and_never_show_passwords() {
        let a = args(
            Some("amqp://u:s3cret@h/%2f"),
            Some("postgres://u:s3cret@h/db"),
        );
        assert_eq!(
            a.broker_config("queues")
                .unwrap()
                .topology
                .namespace
                .as_str(),
            "warren"
        );
        assert!(a.store_config("jobs").is_ok());
        assert!(!format!("{a:?}").contains("s3cret"));
        let bad = ConnectionArgs {
            namespace: "a b".into(),
            ..a
        };
        assert!(
            bad.broker_config("queues")
                .unwrap_err()
                .to_string()
                .contains("--namespace")
        );
    }
}
