use std::collections::HashMap;
use std::time::Duration;

use warren_core::{JobId, JobState};
use warren_store::Store;
use warren_testkit::wait_until;

/// Waits until every job in `ids` has a row in a terminal state; returns the rows by id.
pub(crate) async fn wait_all_terminal(
    store: &Store,
    ids: &[JobId],
    timeout: Duration,
) -> anyhow::Result<HashMap<JobId, warren_store::JobRecord>> {
    wait_until(
        timeout,
        &format!("{} jobs to reach a terminal state", ids.len()),
        || async {
            let rows = store.jobs(ids).await?;
            let done = rows.iter().filter(|r| r.state.is_terminal()).count();
            if done == ids.len() {
                Ok(Ok(rows.into_iter().map(|r| (r.id, r)).collect()))
            } else {
                Ok(Err(format!("{done} of {} terminal", ids.len())))
            }
        },
    )
    .await
}

pub(crate) fn count_state(
    rows: &HashMap<JobId, warren_store::JobRecord>,
    state: JobState,
) -> usize {
    rows.values().filter(|r| r.state == state).count()
}
