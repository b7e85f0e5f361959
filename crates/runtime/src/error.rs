/// Why a worker could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration or the registered handlers are unusable (no queues, a bad task
    /// name, a timeout over the broker's limit, ...); the text says what to change. Nothing
    /// was connected.
    #[error("invalid worker configuration: {0}")]
    Config(String),

    /// A queue's consumer stopped and reconnecting did not bring it back.
    #[error("the consumer of queue `{queue}` stopped and could not recover; restart the worker")]
    ConsumerLost {
        /// The Warren queue, or `intake` for the intake queue.
        queue: String,
    },

    /// One of the worker's background tasks panicked, a bug rather than an outage.
    #[error("the worker's {task} task panicked ({message}); restart the worker")]
    TaskPanicked {
        /// The task's role: `promoter`, `control`, `heartbeat` or `cleaner`.
        task: &'static str,
        /// The panic's message.
        message: String,
    },

    /// Connecting to RabbitMQ or declaring the topology failed.
    #[error("RabbitMQ failed")]
    Broker(#[from] warren_broker::Error),

    /// Connecting to Postgres or checking the schema failed.
    #[error("Postgres failed")]
    Store(#[from] warren_store::Error),

    /// The worker's row could not be written, or a live worker in another process holds its
    /// id (`warren_store::Error::WorkerIdInUse`, which says which process and what to do).
    #[error("cannot register the worker")]
    Register(#[source] warren_store::Error),

    /// A schedule declared with [`crate::WorkerBuilder::schedule`] could not be written to
    /// `warren_schedules` at start-up.
    #[error("cannot save the schedule `{name}` declared in code")]
    Schedule {
        /// The schedule's name.
        name: String,
        /// What Postgres said.
        #[source]
        source: warren_store::Error,
    },
}
