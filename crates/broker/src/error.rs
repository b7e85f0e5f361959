use std::time::Duration;

/// What went wrong talking to RabbitMQ. Each variant names the operation and the queue or job
/// it concerned; the lapin error, when there is one, is the `source()`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid AMQP URL `{url}`: {reason}")]
    Url { url: String, reason: String },

    #[error(
        "cannot connect to RabbitMQ at {endpoint}; is it running and are the credentials right?"
    )]
    Connect {
        endpoint: String,
        #[source]
        source: Box<lapin::Error>,
    },

    #[error(
        "TLS with RabbitMQ at {endpoint} failed: its certificate must chain to a trusted root \
         (the system's{}) and name the host of the URL exactly as written; for a private CA, \
         give its certificate with --amqp-ca-file / WARREN_AMQP_CA_FILE",
        match ca_file { Some(p) => format!(" or {}", p.display()), None => String::new() }
    )]
    Tls {
        endpoint: String,
        ca_file: Option<std::path::PathBuf>,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "cannot read the AMQP CA file {path} (--amqp-ca-file / WARREN_AMQP_CA_FILE): give a readable PEM file of the CA certificates that sign the broker's certificate"
    )]
    CaFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot reach RabbitMQ at {endpoint}; is it running, and is that its address?")]
    Unreachable {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "no answer from RabbitMQ at {endpoint} within {timeout:?}; is it running and reachable?"
    )]
    ConnectTimeout { endpoint: String, timeout: Duration },

    #[error("cannot declare {what} `{name}`{hint}")]
    Declare {
        what: &'static str,
        name: String,
        hint: &'static str,
        #[source]
        source: Box<lapin::Error>,
    },

    #[error("publish of job {job} to queue `{queue}` failed")]
    Publish {
        job: String,
        queue: String,
        #[source]
        source: Box<lapin::Error>,
    },

    #[error(
        "job {job} is unroutable: no queue `{queue}` is bound to exchange `{exchange}`; \
         start a worker for that queue or run `warren queues declare {queue}`, then enqueue again"
    )]
    Unroutable {
        job: String,
        queue: String,
        exchange: String,
    },

    #[error(
        "RabbitMQ refused (nacked) job {job} for queue `{queue}`: the queue is full or the broker is out of resources; enqueue again later"
    )]
    Nacked { job: String, queue: String },

    #[error(
        "no publisher confirm for job {job} on queue `{queue}` within {timeout:?}: the broker may or may not have it; enqueue again (the job id makes a duplicate harmless)"
    )]
    ConfirmTimeout {
        job: String,
        queue: String,
        timeout: Duration,
    },

    #[error("{what} failed")]
    Step {
        what: &'static str,
        #[source]
        source: Box<lapin::Error>,
    },

    #[error("{what}: no answer from RabbitMQ within {timeout:?}; is the connection alive?")]
    StepTimeout {
        what: &'static str,
        timeout: Duration,
    },

    #[error("cannot subscribe to queue `{queue}`")]
    Subscribe {
        queue: String,
        #[source]
        source: Box<Error>,
    },

    #[error(
        "job {job} for queue `{queue}` was not sent: the connection to RabbitMQ was lost before it; it is not enqueued"
    )]
    NotSent { job: String, queue: String },

    #[error("cannot consume from queue `{queue}`")]
    Consume {
        queue: String,
        #[source]
        source: Box<lapin::Error>,
    },

    #[error("cannot settle delivery {tag} of job {job}; the broker will redeliver it")]
    Settle {
        tag: u64,
        job: String,
        #[source]
        source: Box<lapin::Error>,
    },

    #[error("cannot inspect queue `{queue}`")]
    Inspect {
        queue: String,
        #[source]
        source: Box<lapin::Error>,
    },
}

impl Error {
    /// True when trying again later may succeed: the broker is unreachable, slow or
    /// restarting. False for refusals a retry would not change: a missing queue, wrong
    /// credentials, a bad URL.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable { .. }
            | Error::ConnectTimeout { .. }
            | Error::StepTimeout { .. } => true,
            Error::Connect { source, .. } | Error::Step { source, .. } => !is_refusal(source),
            Error::Subscribe { source, .. } => source.is_transient(),
            _ => false,
        }
    }
}

/// A broker answer that says "no" rather than "not now".
fn is_refusal(e: &lapin::Error) -> bool {
    if matches!(e.kind(), lapin::ErrorKind::AuthProviderError(_)) {
        return true;
    }
    let text = e.to_string();
    [
        "NOT_FOUND",
        "ACCESS_REFUSED",
        "NOT_ALLOWED",
        "PRECONDITION_FAILED",
    ]
    .iter()
    .any(|code| text.contains(code))
}
