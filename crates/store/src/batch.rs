//! One task that gathers the calls made while it is busy into one statement: every call that
//! arrives while a batch is in flight goes into the next. The deferral writer and the progress
//! reader are two such steps.

use std::fmt;
use std::future::Future;

use tokio::sync::{mpsc, oneshot};

use crate::{Error, Store};

/// Most calls in one statement.
const BATCH: usize = 500;

/// A statement that answers many calls at once.
pub(crate) trait BatchStep: Send + Sync + 'static {
    /// What one call gives.
    type Item: Send + 'static;
    /// What one call gets back.
    type Answer: Send + 'static;
    /// The step, in words, for its errors.
    const WHAT: &'static str;
    /// The answers to `items`, one each and in their order, in one round trip.
    fn run(
        store: &Store,
        items: &[Self::Item],
    ) -> impl Future<Output = Result<Vec<Self::Answer>, Error>> + Send;
}

type Call<S> = (
    <S as BatchStep>::Item,
    oneshot::Sender<Result<<S as BatchStep>::Answer, Error>>,
);

/// Handle to the batching task of step `S`; clones share it, and the task ends once every
/// handle is dropped.
pub(crate) struct Batcher<S: BatchStep> {
    tx: mpsc::Sender<Call<S>>,
}

impl<S: BatchStep> Clone for Batcher<S> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<S: BatchStep> fmt::Debug for Batcher<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batcher")
            .field("step", &S::WHAT)
            .finish_non_exhaustive()
    }
}

impl<S: BatchStep> Batcher<S> {
    /// Starts the batching task on the current runtime.
    pub(crate) fn spawn(store: Store) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(BATCH * 4);
        (Self { tx }, tokio::spawn(serve::<S>(store, rx)))
    }

    /// Hands `item` to the next batch and waits for its answer, once that batch is done.
    pub(crate) async fn call(&self, item: S::Item) -> Result<S::Answer, Error> {
        let (reply, answer) = oneshot::channel();
        let stopped = || Error::Batch {
            what: S::WHAT,
            reason: "its batching task stopped".to_owned(),
            transient: true,
        };
        self.tx.send((item, reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn serve<S: BatchStep>(store: Store, mut rx: mpsc::Receiver<Call<S>>) {
    let mut buf = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut buf, BATCH).await > 0 {
        let (items, replies): (Vec<S::Item>, Vec<_>) = std::mem::take(&mut buf).into_iter().unzip();
        match S::run(&store, &items).await {
            Ok(answers) => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
            }
            Err(e) if e.is_transient() => {
                let reason = warren_core::ErrorChain(&e).to_string();
                for reply in replies {
                    let _ = reply.send(Err(Error::Batch {
                        what: S::WHAT,
                        reason: reason.clone(),
                        transient: true,
                    }));
                }
            }
            // One item Postgres refuses as data fails the whole statement: run them one by
            // one, so that only that item's call fails.
            Err(_) => {
                for (item, reply) in items.into_iter().zip(replies) {
                    let one =
                        S::run(&store, std::slice::from_ref(&item))
                            .await
                            .and_then(|answers| {
                                answers.into_iter().next().ok_or_else(|| Error::Batch {
                                    what: S::WHAT,
                                    reason: "no answer for the item".to_owned(),
                                    transient: false,
                                })
                            });
                    let _ = reply.send(one);
                }
            }
        }
    }
}
