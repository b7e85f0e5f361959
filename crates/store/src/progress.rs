//! Reading the rows of the deliveries that need a look before they run, in batches.
//!
//! A message published from a row (a retry, a delayed or promoted job) or redelivered is
//! checked against its row before it runs (`JobProgress`). One query per delivery made that
//! check the cost of every promoted job; every delivery waiting while one batch is read now
//! goes into the next, one `WHERE id = ANY(...)` for all of them.

use std::collections::HashMap;

use tokio::sync::{mpsc, oneshot};
use warren_core::JobId;

use crate::{Error, JobProgress, Store};

/// Most rows read in one query.
const BATCH: usize = 500;

type Reply = oneshot::Sender<Result<Option<JobProgress>, Error>>;

/// Reads jobs' progress in batches; clones share the reading task, which ends once every
/// handle is dropped.
#[derive(Clone, Debug)]
pub struct ProgressReader {
    tx: mpsc::Sender<(JobId, Reply)>,
}

impl ProgressReader {
    /// Starts the reading task on the current runtime.
    pub fn spawn(store: Store) -> (ProgressReader, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(BATCH * 4);
        (ProgressReader { tx }, tokio::spawn(read(store, rx)))
    }

    /// The state and attempt of job `id`, or `None` without a row, read with the other jobs
    /// asked about at the same moment.
    pub async fn progress(&self, id: JobId) -> Result<Option<JobProgress>, Error> {
        let (reply, answer) = oneshot::channel();
        let stopped = || Error::Batch {
            what: "reading a job's progress",
            reason: "the progress reader stopped".to_owned(),
            transient: true,
        };
        self.tx.send((id, reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn read(store: Store, mut rx: mpsc::Receiver<(JobId, Reply)>) {
    let mut buf = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut buf, BATCH).await > 0 {
        let asked: Vec<(JobId, Reply)> = std::mem::take(&mut buf);
        let ids: Vec<JobId> = asked.iter().map(|(id, _)| *id).collect();
        match store.progress_of(&ids).await {
            Ok(found) => answer(asked, &found),
            Err(e) if e.is_transient() => {
                let reason = warren_core::ErrorChain(&e).to_string();
                for (_, reply) in asked {
                    let _ = reply.send(Err(Error::Batch {
                        what: "reading jobs' progress",
                        reason: reason.clone(),
                        transient: true,
                    }));
                }
            }
            // A row that cannot be read (a corrupt state) fails the whole query: read them one
            // by one so that only that job's check fails.
            Err(_) => {
                for (id, reply) in asked {
                    let _ = reply.send(store.progress(id).await);
                }
            }
        }
    }
}

fn answer(asked: Vec<(JobId, Reply)>, found: &HashMap<JobId, JobProgress>) {
    for (id, reply) in asked {
        let _ = reply.send(Ok(found.get(&id).copied()));
    }
}
