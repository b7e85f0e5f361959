/// Why a worker could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid worker configuration: {0}")]
    Config(String),

    #[error("the consumer of queue `{queue}` stopped and could not recover; restart the worker")]
    ConsumerLost { queue: String },

    #[error("the worker's {task} task panicked ({message}); restart the worker")]
    TaskPanicked { task: &'static str, message: String },

    #[error("RabbitMQ failed")]
    Broker(#[from] warren_broker::Error),

    #[error("Postgres failed")]
    Store(#[from] warren_store::Error),
}
