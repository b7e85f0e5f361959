use std::time::Duration;

/// What went wrong talking to RabbitMQ. Each variant names the operation and the queue or job
/// it concerned; the lapin error, when there is one, is the `source()`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The AMQP URL cannot be used: it does not parse, or a CA file is given for a URL
    /// that is not `amqps://`. Not transient.
    #[error("invalid AMQP URL `{url}`: {reason}")]
    Url {
        /// The URL with its secrets redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The broker was reached but the connection failed, e.g. refused credentials or a vhost
    /// that does not exist. Transient unless the broker refused.
    #[error(
        "cannot connect to RabbitMQ at {endpoint}; is it running and are the credentials right?"
    )]
    Connect {
        /// The endpoint, `host:port` and the vhost when not `/`; never the credentials.
        endpoint: String,
        /// The error lapin reported.
        #[source]
        source: Box<lapin::Error>,
    },

    /// The TLS handshake failed, usually a certificate that does not chain to a trusted root
    /// or does not name the host. Not transient.
    #[error(
        "TLS with RabbitMQ at {endpoint} failed: its certificate must chain to a trusted root \
         (the system's{}) and name the host of the URL exactly as written; for a private CA, \
         give its certificate with --amqp-ca-file / WARREN_AMQP_CA_FILE",
        match ca_file { Some(p) => format!(" or {}", p.display()), None => String::new() }
    )]
    Tls {
        /// The endpoint, `host:port` and the vhost when not `/`; never the credentials.
        endpoint: String,
        /// The extra CA file that was trusted, if any.
        ca_file: Option<std::path::PathBuf>,
        /// The underlying I/O or TLS error.
        #[source]
        source: std::io::Error,
    },

    /// The CA file given for `amqps://` could not be read or holds no certificate.
    #[error(
        "cannot read the AMQP CA file {path} (--amqp-ca-file / WARREN_AMQP_CA_FILE): give a readable PEM file of the CA certificates that sign the broker's certificate"
    )]
    CaFile {
        /// The file as configured.
        path: std::path::PathBuf,
        /// The underlying I/O or TLS error.
        #[source]
        source: std::io::Error,
    },

    /// No TCP connection could be made (refused, no route, unknown host). Transient.
    #[error("cannot reach RabbitMQ at {endpoint}; is it running, and is that its address?")]
    Unreachable {
        /// The endpoint, `host:port` and the vhost when not `/`; never the credentials.
        endpoint: String,
        /// The underlying I/O or TLS error.
        #[source]
        source: std::io::Error,
    },

    /// The connection was not established within the connect timeout. Transient.
    #[error(
        "no answer from RabbitMQ at {endpoint} within {timeout:?}; is it running and reachable?"
    )]
    ConnectTimeout {
        /// The endpoint, `host:port` and the vhost when not `/`; never the credentials.
        endpoint: String,
        /// The connect timeout that ran out.
        timeout: Duration,
    },

    /// Declaring an exchange, queue or binding failed; most often a queue that exists with
    /// other arguments. Not transient.
    #[error("cannot declare {what} `{name}`{hint}")]
    Declare {
        /// `exchange`, `queue` or `binding for queue`.
        what: &'static str,
        /// The RabbitMQ name of the object.
        name: String,
        /// Advice appended to the message, or empty.
        hint: &'static str,
        /// The error lapin reported.
        #[source]
        source: Box<lapin::Error>,
    },

    /// Sending the message failed (the channel or connection broke); it may or may not have
    /// reached the broker.
    #[error("publish of job {job} to queue `{queue}` failed")]
    Publish {
        /// The job id from the message's `message_id`.
        job: String,
        /// The routing key: the Warren queue, or the intake or dead-letter queue.
        queue: String,
        /// The error lapin reported.
        #[source]
        source: Box<lapin::Error>,
    },

    /// The broker returned the message: no queue is bound for it, so it is not enqueued.
    #[error(
        "job {job} is unroutable: no queue `{queue}` is bound to exchange `{exchange}`; \
         start a worker for that queue or run `warren queues declare {queue}`, then enqueue again"
    )]
    Unroutable {
        /// The job id from the message's `message_id`.
        job: String,
        /// The routing key that matched no binding.
        queue: String,
        /// The exchange it was published to.
        exchange: String,
    },

    /// The broker nacked the message (a full queue or a resource alarm); it is not enqueued.
    #[error(
        "RabbitMQ refused (nacked) job {job} for queue `{queue}`: the queue is full or the broker is out of resources; enqueue again later"
    )]
    Nacked {
        /// The job id from the message's `message_id`.
        job: String,
        /// The routing key it was published with.
        queue: String,
    },

    /// No confirm arrived within the confirm timeout: the outcome is unknown, and publishing
    /// again with the same job id is the safe answer.
    #[error(
        "no publisher confirm for job {job} on queue `{queue}` within {timeout:?}: the broker may or may not have it; enqueue again (the job id makes a duplicate harmless)"
    )]
    ConfirmTimeout {
        /// The job id from the message's `message_id`.
        job: String,
        /// The routing key it was published with.
        queue: String,
        /// The confirm timeout that ran out.
        timeout: Duration,
    },

    /// A step of talking to the broker (opening a channel, setting the prefetch,
    /// subscribing, ...) failed. Transient unless the broker refused.
    #[error("{what} failed")]
    Step {
        /// The step, in words, e.g. `opening a channel`.
        what: &'static str,
        /// The error lapin reported.
        #[source]
        source: Box<lapin::Error>,
    },

    /// A step of talking to the broker got no answer within the connect timeout. Transient.
    #[error("{what}: no answer from RabbitMQ within {timeout:?}; is the connection alive?")]
    StepTimeout {
        /// The step, in words, e.g. `opening a channel`.
        what: &'static str,
        /// The timeout that ran out.
        timeout: Duration,
    },

    /// Connecting a consumer to a queue failed; the source says which step. Transient when
    /// the source is.
    #[error("cannot subscribe to queue `{queue}`")]
    Subscribe {
        /// The RabbitMQ queue name.
        queue: String,
        /// The step that failed.
        #[source]
        source: Box<Error>,
    },

    /// The connection was lost for good before the message was sent; it is not enqueued.
    #[error(
        "job {job} for queue `{queue}` was not sent: the connection to RabbitMQ was lost before it; it is not enqueued"
    )]
    NotSent {
        /// The job id from the message's `message_id`.
        job: String,
        /// The routing key it was to be published with.
        queue: String,
    },

    /// Receiving from a queue failed after the consumer was set up.
    #[error("cannot consume from queue `{queue}`")]
    Consume {
        /// The RabbitMQ queue name.
        queue: String,
        /// The error lapin reported.
        #[source]
        source: Box<lapin::Error>,
    },

    /// Acking, requeueing or dead-lettering a delivery failed, typically because its channel
    /// closed; the broker will deliver the message again.
    #[error("cannot settle delivery {tag} of job {job}; the broker will redeliver it")]
    Settle {
        /// The delivery tag on its channel.
        tag: u64,
        /// The job id from the message's `message_id`, or `(no id)`.
        job: String,
        /// The error lapin reported.
        #[source]
        source: Box<lapin::Error>,
    },

    /// Reading, acking or purging the parking queue of dead letters failed. A message the
    /// AMQP client cannot parse closes the connection this way too.
    #[error(
        "cannot {what} parking queue `{queue}`; check that the broker is reachable and a worker has declared the topology (if a message in it cannot be parsed, `warren dlq purge --yes` drops them all)"
    )]
    Parking {
        /// The step that failed, e.g. `read from`.
        what: &'static str,
        /// The RabbitMQ name of the parking queue.
        queue: String,
        /// The error lapin reported.
        #[source]
        source: Box<lapin::Error>,
    },

    /// Taking messages from a work queue to purge them failed.
    #[error(
        "cannot {what} queue `{queue}` while purging it; check that the broker is reachable (messages not yet recorded stay in the queue)"
    )]
    Drain {
        /// The step that failed, e.g. `read from`.
        what: &'static str,
        /// The RabbitMQ name of the queue.
        queue: String,
        /// The error lapin reported.
        #[source]
        source: Box<lapin::Error>,
    },

    /// A passive declare or delete of a queue or exchange failed.
    #[error("cannot inspect queue `{queue}`")]
    Inspect {
        /// The RabbitMQ queue or exchange name.
        queue: String,
        /// The error lapin reported.
        #[source]
        source: Box<lapin::Error>,
    },
}

impl Error {
    /// True when RabbitMQ refused a declare because the queue exists with other arguments.
    pub fn is_precondition_failed(&self) -> bool {
        match self {
            Error::Declare { source, .. } => source.to_string().contains("PRECONDITION_FAILED"),
            _ => false,
        }
    }

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
