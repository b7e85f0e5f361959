//! Failures that must stop the worker, and background tasks whose panics must not vanish.

use std::future::Future;

use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle};

use crate::Error;

/// Where the worker's loops report a failure that should stop it: a consumer lost for good,
/// a background task that panicked. Better to exit and be restarted by the supervisor than
/// to run half-deaf.
#[derive(Clone, Debug)]
pub(crate) struct Fatal(mpsc::Sender<Error>);

impl Fatal {
    pub(crate) fn channel() -> (Fatal, mpsc::Receiver<Error>) {
        let (tx, rx) = mpsc::channel(8);
        (Fatal(tx), rx)
    }

    /// Reports `error`; the first report stops the worker, later ones are only logged by
    /// their senders.
    pub(crate) fn report(&self, error: Error) {
        let _ = self.0.try_send(error);
    }
}

/// A background task run under watch: a panic in it is logged with its message and reported
/// as fatal, instead of being dropped with a `JoinHandle` nobody reads.
#[derive(Debug)]
pub(crate) struct Supervised {
    watcher: JoinHandle<()>,
    task: AbortHandle,
}

impl Supervised {
    pub(crate) fn spawn<F>(name: &'static str, task: F, fatal: Fatal) -> Supervised
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(task);
        let abort = handle.abort_handle();
        let watcher = tokio::spawn(async move {
            match handle.await {
                Err(e) if e.is_panic() => {
                    let message = crate::executor::panic_message(e.into_panic());
                    tracing::error!(task = name, panic = %message, "a background task panicked; stopping the worker");
                    fatal.report(Error::TaskPanicked {
                        task: name,
                        message,
                    });
                }
                // Finished, or aborted at shutdown.
                _ => {}
            }
        });
        Supervised {
            watcher,
            task: abort,
        }
    }

    /// Waits for the task until `until` (a shutdown step named `what`), and aborts it if it
    /// has not ended by then.
    pub(crate) async fn join_until(self, until: tokio::time::Instant, what: &str) {
        let task = self.task;
        if crate::shutdown::bounded(until, what, self.watcher)
            .await
            .is_none()
        {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_background_task_is_reported_as_fatal() {
        let (fatal, mut failures) = Fatal::channel();
        let task = Supervised::spawn("heartbeat", async { panic!("boom") }, fatal);
        task.join_until(
            tokio::time::Instant::now() + std::time::Duration::from_secs(5),
            "test",
        )
        .await;
        match failures.try_recv() {
            Ok(Error::TaskPanicked { task, message }) => {
                assert_eq!(task, "heartbeat");
                assert_eq!(message, "boom");
            }
            other => panic!("expected a panic report, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_task_that_ends_normally_reports_nothing() {
        let (fatal, mut failures) = Fatal::channel();
        let task = Supervised::spawn("control", async {}, fatal);
        task.join_until(
            tokio::time::Instant::now() + std::time::Duration::from_secs(5),
            "test",
        )
        .await;
        assert!(failures.try_recv().is_err());
    }
}
