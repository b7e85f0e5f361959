//! Flags and environment, parsed once and validated into the configs the libraries take.

use std::time::Duration;

use clap::{Parser, ValueEnum};
use warren_broker::{BrokerConfig, Topology};
use warren_core::duration::{parse_age, parse_duration};
use warren_core::{Namespace, QueueName};
use warren_runtime::WorkerConfig;
use warren_store::{RecorderConfig, StoreConfig};

/// The longest timeout or grace period accepted: 2^31 - 1 ms, about 24 days, the most a job
/// message's `warren-timeout-ms` header carries. Longer ones are typos, and added to a clock
/// they can overflow it.
const MAX_DURATION: Duration = Duration::from_millis(i32::MAX as u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Runs Warren jobs: consumes queues from RabbitMQ, executes handlers, records every outcome
/// in PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "warren-worker", version)]
pub struct Args {
    /// RabbitMQ URL, e.g. amqp://user:pass@127.0.0.1:5672/%2f; or the comma-separated URLs
    /// of a cluster's nodes (same user, password and vhost), tried in turn and failed over
    /// between when a node is lost
    #[arg(long, env = "WARREN_AMQP_URL", hide_env_values = true)]
    pub amqp_url: String,

    /// PEM file of the CA certificates that sign RabbitMQ's certificate, for an amqps:// URL
    /// and a private CA (the system's roots are trusted too). The certificate must name the
    /// URL's host either way.
    #[arg(long, env = "WARREN_AMQP_CA_FILE")]
    pub amqp_ca_file: Option<std::path::PathBuf>,

    /// PostgreSQL URL, e.g. postgres://postgres@127.0.0.1:5432/warren. TLS: none for a
    /// loopback host, verify-full for any other, unless the URL sets sslmode=; a private CA
    /// goes in sslrootcert=/path/to/ca.pem.
    #[arg(long, env = "WARREN_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// Queues to consume, comma-separated.
    #[arg(
        long,
        env = "WARREN_QUEUES",
        value_delimiter = ',',
        default_value = "default"
    )]
    pub queues: Vec<String>,

    /// Jobs run at once by this process.
    #[arg(long, env = "WARREN_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,

    /// Unacked deliveries per queue, 1 to 65535 (default: twice the concurrency, at most
    /// 65535).
    #[arg(long, env = "WARREN_PREFETCH", value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: Option<u16>,

    /// Batches of outcomes written to PostgreSQL at once, each on its own connection (1 to 4;
    /// the pool has 5). With 1, each batch gathers what arrives while the one before commits:
    /// the fastest with several workers on one database. A lone worker may gain a few percent
    /// with 2.
    #[arg(long, env = "WARREN_RECORDER_WRITERS", default_value_t = RecorderConfig::default().max_in_flight)]
    pub recorder_writers: usize,

    /// Time in-flight jobs get to finish after SIGTERM/SIGINT, e.g. 30s.
    #[arg(long, env = "WARREN_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Per-attempt timeout of tasks that set none, e.g. 5m.
    #[arg(long, env = "WARREN_DEFAULT_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub default_timeout: Duration,

    /// RabbitMQ's consumer_timeout (30m unless rabbitmq.conf sets another), or `0`/`off` if the
    /// broker has none. The broker takes back a delivery unacked for longer and redelivers it
    /// while its job still runs, so job timeouts must stay below it minus a margin (a minute
    /// or 5%, whichever is larger): a longer --default-timeout is refused at start, and a job
    /// asking for more is recorded dead as bad input.
    #[arg(
        long,
        env = "WARREN_BROKER_CONSUMER_TIMEOUT",
        default_value = "30m",
        value_parser = parse_broker_timeout
    )]
    pub broker_consumer_timeout: BrokerTimeout,

    /// Largest accepted message body in bytes; larger ones are recorded dead as bad input.
    #[arg(long, env = "WARREN_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,

    /// Prefix of every RabbitMQ exchange and queue Warren declares.
    #[arg(long, env = "WARREN_NAMESPACE", default_value = Namespace::DEFAULT)]
    pub namespace: String,

    /// x-delivery-limit of the work queues: deliveries of one message (say, one that keeps
    /// crashing its worker) before RabbitMQ dead-letters it.
    #[arg(long, env = "WARREN_DELIVERY_LIMIT", default_value_t = Topology::DEFAULT_DELIVERY_LIMIT)]
    pub delivery_limit: u32,

    /// Identity of this process in the workers table (default: host-pid). One live process
    /// per id: a worker refuses to start while another process's worker with this id is
    /// running (heard from in the last 30 s); a stopped or lost one's row is taken over.
    /// 1 to 128 bytes, without control characters.
    #[arg(long, env = "WARREN_WORKER_ID", value_parser = parse_worker_id)]
    pub worker_id: Option<String>,

    /// Do not run a promoter (the loop that publishes scheduled jobs when due) in this
    /// process; at least one process per database should run one.
    #[arg(long, env = "WARREN_NO_PROMOTER")]
    pub no_promoter: bool,

    /// Register the `warren.abort` diagnostic task, which kills this process. For fault
    /// tests only.
    #[arg(long, env = "WARREN_ENABLE_CRASH_TASK")]
    pub enable_crash_task: bool,

    /// Apply pending database migrations at start-up. Off by default: migrating needs a role
    /// allowed to change the schema, which a worker should not have; run `warren migrate`
    /// once per deploy instead (see docs/operations.md). Without it the worker checks that
    /// the schema is current and refuses to start otherwise.
    #[arg(long, env = "WARREN_MIGRATE")]
    pub migrate: bool,

    /// No effect: migrations are off unless --migrate is given. Accepted so that existing
    /// deployments that pass it keep starting.
    #[arg(
        long,
        env = "WARREN_NO_MIGRATE",
        hide = true,
        conflicts_with = "migrate"
    )]
    pub no_migrate: bool,

    /// Log format.
    #[arg(long, env = "WARREN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Serve Prometheus metrics on /metrics, and /healthz and /readyz, at this address, e.g.
    /// 0.0.0.0:9464 (off when unset). With it, this worker also takes its turn exporting the
    /// fleet-wide queue gauges (one worker at a time does).
    #[arg(long, env = "WARREN_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Export job spans with OpenTelemetry (OTLP over HTTP, protobuf) to this collector, e.g.
    /// http://127.0.0.1:4318; spans are POSTed to its /v1/traces. Off when unset: no exporter
    /// is built. The standard OTEL_EXPORTER_OTLP_HEADERS and OTEL_BSP_* are honoured.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// The service name exported spans carry.
    #[arg(
        long,
        env = "OTEL_SERVICE_NAME",
        default_value = "warren-worker",
        value_name = "NAME"
    )]
    pub otel_service_name: String,
    /// Delete succeeded jobs this long after they finished, e.g. 12h or 7d, or `off` to keep
    /// them. One worker of the fleet at a time prunes (docs/operations.md, "Retention").
    #[arg(long, env = "WARREN_RETAIN_SUCCEEDED", default_value = "1d", value_parser = parse_retention)]
    pub retain_succeeded: Retention,

    /// Delete cancelled jobs this long after they were cancelled, or `off`.
    #[arg(long, env = "WARREN_RETAIN_CANCELLED", default_value = "7d", value_parser = parse_retention)]
    pub retain_cancelled: Retention,

    /// Delete dead jobs this long after they died, or `off`.
    #[arg(long, env = "WARREN_RETAIN_DEAD", default_value = "30d", value_parser = parse_retention)]
    pub retain_dead: Retention,

    /// Time between two looks for jobs past their retention.
    #[arg(long, env = "WARREN_RETENTION_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub retention_interval: Duration,
}

/// Everything the worker needs, validated.
#[derive(Debug)]
pub struct Settings {
    pub broker: BrokerConfig,
    pub store: StoreConfig,
    pub worker: WorkerConfig,
    pub migrate: bool,
    pub log_format: LogFormat,
    pub crash_task: bool,
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Where job spans are sent (`…/v1/traces`), when OpenTelemetry export is on.
    pub otlp_traces: Option<String>,
    /// The `service.name` of exported spans.
    pub otel_service_name: String,
}

impl Args {
    /// Checks every setting and names the flag (and its variable) of the first bad one.
    pub fn validate(self) -> Result<Settings, String> {
        self.check_numbers()?;
        let queues = self
            .queues
            .iter()
            .map(|q| QueueName::new(q.trim()).map_err(|e| format!("--queues / WARREN_QUEUES: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if queues.is_empty() {
            return Err("--queues / WARREN_QUEUES: give at least one queue".to_owned());
        }
        let namespace = Namespace::new(&self.namespace)
            .map_err(|e| format!("--namespace / WARREN_NAMESPACE: {e}"))?;
        let worker_id = self.worker_id.clone().unwrap_or_else(default_worker_id);

        let mut broker = BrokerConfig::new(&self.amqp_url);
        broker.connection_name = format!("warren-worker {worker_id}");
        broker.ca_file = self.amqp_ca_file.clone();
        broker.topology = Topology {
            namespace,
            delivery_limit: self.delivery_limit,
        };
        broker
            .validate()
            .map_err(|e| format!("--amqp-url / WARREN_AMQP_URL: {e}"))?;
        let mut store = StoreConfig::new(&self.database_url);
        store.application_name = format!("warren-worker {worker_id}");
        store
            .validate()
            .map_err(|e| format!("--database-url / WARREN_DATABASE_URL: {e}"))?;
        let worker = self.worker_config(worker_id, queues)?;
        Ok(Settings {
            broker,
            store,
            worker,
            migrate: self.migrate,
            log_format: self.log_format,
            crash_task: self.enable_crash_task,
            metrics_addr: self.metrics_addr,
            otlp_traces: self
                .otlp_endpoint
                .as_deref()
                .map(otlp_traces_url)
                .transpose()?,
            otel_service_name: self.otel_service_name.clone(),
        })
    }

    /// The numeric settings, each within its range.
    fn check_numbers(&self) -> Result<(), String> {
        if self.concurrency == 0 || self.concurrency > 10_000 {
            return Err(format!(
                "--concurrency / WARREN_CONCURRENCY must be 1 to 10000, got {}",
                self.concurrency
            ));
        }
        if !(1..=4).contains(&self.recorder_writers) {
            return Err(format!(
                "--recorder-writers / WARREN_RECORDER_WRITERS must be 1 to 4 (each takes one of \
                 the worker's 5 PostgreSQL connections), got {}",
                self.recorder_writers
            ));
        }
        if self.delivery_limit == 0 {
            return Err("--delivery-limit / WARREN_DELIVERY_LIMIT must be at least 1".to_owned());
        }
        if self.max_body_bytes == 0 {
            return Err("--max-body-bytes / WARREN_MAX_BODY_BYTES must be at least 1".to_owned());
        }
        if self.default_timeout.is_zero() || self.default_timeout > MAX_DURATION {
            return Err(format!(
                "--default-timeout / WARREN_DEFAULT_TIMEOUT must be between 1ms and 24 days (the \
                 longest timeout a job message can carry), got {:?}",
                self.default_timeout
            ));
        }
        if self.retention_interval < Duration::from_secs(1) {
            return Err(format!(
                "--retention-interval / WARREN_RETENTION_INTERVAL must be at least 1s, got {:?}",
                self.retention_interval
            ));
        }
        if self.shutdown_grace < Duration::from_millis(100) || self.shutdown_grace > MAX_DURATION {
            return Err(format!(
                "--shutdown-grace / WARREN_SHUTDOWN_GRACE must be between 100ms and 24 days, got {:?}",
                self.shutdown_grace
            ));
        }
        Ok(())
    }

    /// The runtime's configuration from the checked flags.
    fn worker_config(
        &self,
        worker_id: String,
        queues: Vec<QueueName>,
    ) -> Result<WorkerConfig, String> {
        let mut worker = WorkerConfig::new(worker_id, queues);
        worker.concurrency = self.concurrency;
        worker.recorder.max_in_flight = self.recorder_writers;
        // The fleet gauges only mean something where they are scraped.
        worker.fleet_gauges = self
            .metrics_addr
            .map(|_| crate::metrics_server::FLEET_GAUGE_INTERVAL);
        worker.prefetch = self
            .prefetch
            .unwrap_or_else(|| (self.concurrency * 2).min(usize::from(u16::MAX)) as u16);
        worker.shutdown_grace = self.shutdown_grace;
        worker.default_timeout = self.default_timeout;
        worker.max_body_bytes = self.max_body_bytes;
        worker.broker_consumer_timeout = self.broker_consumer_timeout.0;
        // Checked here as well as by the runtime, so that the mistake exits 2 before any
        // connection is made.
        if let Some(limit) = worker.max_job_timeout()
            && worker.default_timeout > limit
        {
            return Err(format!(
                "--default-timeout / WARREN_DEFAULT_TIMEOUT is {:?}, but with \
                 --broker-consumer-timeout / WARREN_BROKER_CONSUMER_TIMEOUT at {:?} jobs may run \
                 at most {limit:?} (a margin is kept for the commit and ack): RabbitMQ would take \
                 a longer job's delivery back while it still ran; lower --default-timeout, or \
                 raise consumer_timeout in rabbitmq.conf and --broker-consumer-timeout with it",
                worker.default_timeout,
                worker.broker_consumer_timeout.unwrap_or_default(),
            ));
        }
        if self.no_promoter {
            worker.promoter = None;
        }
        worker.retention.succeeded = self.retain_succeeded.0;
        worker.retention.cancelled = self.retain_cancelled.0;
        worker.retention.dead = self.retain_dead.0;
        worker.retention.interval = self.retention_interval;
        Ok(worker)
    }
}

/// RabbitMQ's consumer timeout as a flag gives it: `None` when the broker has none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BrokerTimeout(pub Option<Duration>);

fn parse_broker_timeout(input: &str) -> Result<BrokerTimeout, String> {
    match input.trim() {
        "0" | "off" => Ok(BrokerTimeout(None)),
        other => match parse_age(other)? {
            d if d.is_zero() => Ok(BrokerTimeout(None)),
            d => Ok(BrokerTimeout(Some(d))),
        },
    }
}

/// How long one state's finished jobs are kept: `None` (`off`) keeps them forever.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention(pub Option<Duration>);

/// `off`, or a duration of at least a second and at most 100 years. Zero is refused rather than read as either
/// `off` or "delete at once": both readings are plausible, and the wrong one deletes history.
fn parse_retention(input: &str) -> Result<Retention, String> {
    match input.trim() {
        "off" => Ok(Retention(None)),
        other => match parse_age(other)? {
            d if d < Duration::from_secs(1) => Err(format!(
                "`{other}` is too short: give a retention of at least 1s, or `off` to keep \
                 these jobs forever"
            )),
            d => Ok(Retention(Some(d))),
        },
    }
}

/// The longest worker id: it names the worker's row, its RabbitMQ connections and its
/// Postgres sessions, and AMQP keeps some of those in 255-byte strings.
const MAX_WORKER_ID_LEN: usize = 128;

fn parse_worker_id(input: &str) -> Result<String, String> {
    let id = input.trim();
    if id.is_empty() {
        return Err("empty: give a name, or leave it out for host-pid".to_owned());
    }
    if id.len() > MAX_WORKER_ID_LEN {
        return Err(format!(
            "{} bytes long: at most {MAX_WORKER_ID_LEN}",
            id.len()
        ));
    }
    if let Some(c) = id.chars().find(|c| c.is_control()) {
        return Err(format!(
            "`{}` holds the control character {c:?}, which `warren workers` could not show",
            id.escape_debug()
        ));
    }
    Ok(id.to_owned())
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "worker".to_owned());
    format!("{host}-{}", std::process::id())
}

/// The OTLP/HTTP traces URL for a collector `endpoint`: its `/v1/traces`, as the
/// OpenTelemetry specification says for OTEL_EXPORTER_OTLP_ENDPOINT. Only plain `http://` is
/// taken: the exporter speaks HTTP/1 without TLS, to a collector on the host or in the pod.
fn otlp_traces_url(endpoint: &str) -> Result<String, String> {
    let flag = "--otlp-endpoint / OTEL_EXPORTER_OTLP_ENDPOINT";
    let endpoint = endpoint.trim();
    let Some(rest) = endpoint.strip_prefix("http://") else {
        return Err(if endpoint.starts_with("https://") {
            format!(
                "{flag}: `{endpoint}`: https is not supported; export to a collector on the same host or pod over http:// (it forwards with TLS)"
            )
        } else {
            format!("{flag}: `{endpoint}` is not an http:// URL, e.g. http://127.0.0.1:4318")
        });
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return Err(format!(
            "{flag}: `{endpoint}` needs a host and port and no user, e.g. http://127.0.0.1:4318"
        ));
    }
    Ok(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Settings, String> {
        let mut argv = vec![
            "warren-worker",
            "--amqp-url",
            "amqp://u:secret@h",
            "--database-url",
            "postgres://h/db",
        ];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .validate()
    }

    #[test]
    fn prefetch_is_1_to_65535_with_the_range_in_the_error() {
        for bad in ["0", "70000"] {
            let e = parse(&["--prefetch", bad]).unwrap_err();
            assert!(e.contains(&format!("{bad} is not in 1..=65535")), "{e}");
        }
        assert_eq!(parse(&["--prefetch", "1"]).unwrap().worker.prefetch, 1);
    }

    #[test]
    fn defaults_are_sane() {
        let s = parse(&[]).unwrap();
        assert_eq!(s.worker.queues[0].as_str(), "default");
        assert_eq!(s.worker.prefetch, 128);
        assert_eq!(
            s.worker.recorder.max_in_flight, 1,
            "one recorder write in flight"
        );
        assert!(!s.migrate, "migrating is an explicit step");
        assert!(parse(&["--migrate"]).unwrap().migrate);
        assert_eq!(
            s.broker.topology,
            Topology::default(),
            "one home for defaults"
        );
        assert!(!parse(&["--no-migrate"]).unwrap().migrate, "still accepted");
        assert_eq!(s.broker.ca_file, None);
        let with_ca = parse(&["--amqp-ca-file", "/etc/warren/ca.pem"]).unwrap();
        assert_eq!(
            with_ca.broker.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/warren/ca.pem"))
        );
        assert!(
            !format!("{s:?}").contains("secret"),
            "the password never reaches logs"
        );
        assert_eq!(
            s.worker.retention,
            warren_runtime::RetentionConfig::default(),
            "the flags' defaults are the library's"
        );
    }

    #[test]
    fn retention_is_a_duration_or_off() {
        let s = parse(&["--retain-succeeded", "7d", "--retain-dead", "off"]).unwrap();
        assert_eq!(
            s.worker.retention.succeeded,
            Some(Duration::from_secs(7 * 86_400))
        );
        assert_eq!(s.worker.retention.dead, None);
        let err = parse(&["--retain-cancelled", "0s"]).unwrap_err();
        assert!(
            err.contains("--retain-cancelled") && err.contains("`off`"),
            "{err}"
        );
        let err = parse(&["--retention-interval", "0s"]).unwrap_err();
        assert!(err.contains("--retention-interval"), "{err}");
        // A cut-off before the calendar is refused at start, not by every pass's DELETE.
        let err = parse(&["--retain-succeeded", "99999999d"]).unwrap_err();
        assert!(
            err.contains("--retain-succeeded") && err.contains("too long"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_name_their_flag() {
        assert!(
            parse(&["--queues", "ok,bad queue"])
                .unwrap_err()
                .contains("--queues")
        );
        assert!(
            parse(&["--concurrency", "0"])
                .unwrap_err()
                .contains("--concurrency")
        );
        assert!(
            parse(&["--shutdown-grace", "30"])
                .unwrap_err()
                .contains("no unit")
        );
        for writers in ["0", "5"] {
            let err = parse(&["--recorder-writers", writers]).unwrap_err();
            assert!(
                err.contains("--recorder-writers") && err.contains("1 to 4"),
                "{err}"
            );
        }
        for bad in ["", "  ", "a\nb", &"w".repeat(129)] {
            let err = parse(&["--worker-id", bad]).unwrap_err();
            assert!(err.contains("--worker-id"), "{bad:?}: {err}");
        }
        let named = parse(&["--worker-id", " web-1 "]).unwrap();
        assert_eq!(named.worker.worker_id, "web-1");
        let two = parse(&["--recorder-writers", "2"]).unwrap();
        assert_eq!(two.worker.recorder.max_in_flight, 2);
        for (flag, value) in [
            ("--shutdown-grace", "100000000d"),
            ("--default-timeout", "100000000d"),
            ("--default-timeout", "25d"),
        ] {
            let err = parse(&[flag, value]).unwrap_err();
            assert!(err.contains(flag) && err.contains("24 days"), "{err}");
        }
        assert!(
            parse(&["--shutdown-grace", "213503982334602d"])
                .unwrap_err()
                .contains("too long")
        );
        let err = parse(&["--default-timeout", "29m"]).unwrap_err();
        assert!(
            err.contains("--default-timeout") && err.contains("--broker-consumer-timeout"),
            "{err}"
        );
        assert!(parse(&["--default-timeout", "28m"]).is_ok());
        assert!(parse(&["--default-timeout", "2h", "--broker-consumer-timeout", "3h"]).is_ok());
        for off in ["0", "off"] {
            let s = parse(&["--default-timeout", "20d", "--broker-consumer-timeout", off]).unwrap();
            assert_eq!(s.worker.broker_consumer_timeout, None, "{off}");
        }
        assert_eq!(
            parse(&[]).unwrap().worker.broker_consumer_timeout,
            Some(Duration::from_secs(1800)),
            "RabbitMQ's default"
        );
        assert!(
            parse(&["--broker-consumer-timeout", "30"])
                .unwrap_err()
                .contains("no unit")
        );
        let err = parse(&["--namespace", "a b"]).unwrap_err();
        assert!(
            err.contains("--namespace / WARREN_NAMESPACE") && err.contains("only ASCII"),
            "{err}"
        );
    }

    #[test]
    fn otlp_endpoint_becomes_the_traces_url_and_refuses_what_the_exporter_cannot_reach() {
        assert_eq!(
            otlp_traces_url("http://127.0.0.1:4318").as_deref(),
            Ok("http://127.0.0.1:4318/v1/traces")
        );
        assert_eq!(
            otlp_traces_url("http://collector:4318/").as_deref(),
            Ok("http://collector:4318/v1/traces")
        );
        for bad in [
            "https://collector:4318",
            "collector:4318",
            "http://",
            "http://u:p@c:4318",
        ] {
            let err = otlp_traces_url(bad).expect_err(bad);
            assert!(err.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{err}");
        }
    }
}
