//! Reading the rows of the deliveries that need a look before they run, in batches.
//!
//! A message published from a row (a retry, a delayed or promoted job) or redelivered is
//! checked against its row before it runs (`JobProgress`). One query per delivery made that
//! check the cost of every promoted job; every delivery waiting while one batch is read now
//! goes into the next, one `WHERE id = ANY(...)` for all of them.

use warren_core::JobId;

use crate::batch::{BatchStep, Batcher};
use crate::{Error, JobProgress, Store};

/// Reads jobs' progress in batches; clones share the reading task, which ends once every
/// handle is dropped.
#[derive(Clone, Debug)]
pub struct ProgressReader(Batcher<ProgressStep>);

struct ProgressStep;

impl BatchStep for ProgressStep {
    type Item = JobId;
    type Answer = Option<JobProgress>;
    const WHAT: &'static str = "reading jobs' progress";

    async fn run(store: &Store, ids: &[JobId]) -> Result<Vec<Option<JobProgress>>, Error> {
        let found = store.progress_of(ids).await?;
        Ok(ids.iter().map(|id| found.get(id).copied()).collect())
    }
}

impl ProgressReader {
    /// Starts the reading task on the current runtime.
    pub fn spawn(store: Store) -> (ProgressReader, tokio::task::JoinHandle<()>) {
        let (batcher, task) = Batcher::spawn(store);
        (ProgressReader(batcher), task)
    }

    /// The state and attempt of job `id`, or `None` without a row, read with the other jobs
    /// asked about at the same moment.
    pub async fn progress(&self, id: JobId) -> Result<Option<JobProgress>, Error> {
        self.0.call(id).await
    }
}
