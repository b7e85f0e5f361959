//! The cleaner: deletes finished jobs once they are older than the retention set for their
//! state, like River's `job_cleaner` and Oban's pruner.
//!
//! Every worker runs one, and one at a time does the work: each delete batch is a short
//! transaction that first *tries* the fleet-wide prune lock (a transaction-scoped advisory
//! lock, see `warren_store::PRUNE_LOCK` for why not a session lock on a pooled connection).
//! A cleaner that finds it held skips its pass and tries again an interval later, so a fleet
//! of a hundred workers costs one `pg_try_advisory_xact_lock` per worker per interval, and
//! the table sees one deleter at a time. A pass deletes state by state, oldest first, in
//! batches, until nothing old enough is left; it stops between batches when the worker
//! stops.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use warren_core::{ErrorChain, JobState};
use warren_store::{PruneBatch, PruneLock, Store};

/// How long finished jobs are kept, per state, and how the cleaner works. Plain data: the
/// binary fills it from `--retain-succeeded` and its siblings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Succeeded jobs are deleted this long after they finished; `None` keeps them forever.
    pub succeeded: Option<Duration>,
    /// Cancelled jobs are deleted this long after they were cancelled; `None` keeps them.
    pub cancelled: Option<Duration>,
    /// Dead jobs are deleted this long after they died; `None` keeps them.
    pub dead: Option<Duration>,
    /// Time between passes.
    pub interval: Duration,
    /// Jobs deleted per transaction.
    pub batch: u32,
}

impl Default for RetentionConfig {
    /// Succeeded jobs for a day, cancelled ones for a week, dead ones for 30 days; a pass
    /// every 5 minutes, 5,000 jobs per transaction. A day of succeeded jobs answers "what
    /// happened to job X today" and feeds `warren stats --since 24h`, as River keeps its
    /// completed jobs; dead jobs are the ones somebody has to look at and maybe retry, so
    /// they stay long enough to survive a holiday.
    fn default() -> Self {
        const DAY: Duration = Duration::from_secs(86_400);
        Self {
            succeeded: Some(DAY),
            cancelled: Some(7 * DAY),
            dead: Some(30 * DAY),
            interval: Duration::from_secs(300),
            batch: 5_000,
        }
    }
}

impl RetentionConfig {
    /// Keeps every job: no cleaner runs.
    pub fn keep_everything() -> Self {
        Self {
            succeeded: None,
            cancelled: None,
            dead: None,
            ..Self::default()
        }
    }

    /// The states with a retention, and theirs.
    fn periods(&self) -> impl Iterator<Item = (JobState, Duration)> {
        [
            (JobState::Succeeded, self.succeeded),
            (JobState::Cancelled, self.cancelled),
            (JobState::Dead, self.dead),
        ]
        .into_iter()
        .filter_map(|(state, keep)| keep.map(|k| (state, k)))
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.periods().next().is_none() {
            return Ok(());
        }
        if self.interval < Duration::from_millis(10) {
            return Err("the retention interval must be at least 10ms".to_owned());
        }
        if self.batch == 0 {
            return Err("the retention batch must be at least 1".to_owned());
        }
        Ok(())
    }
}

/// What one pass deleted, per state; `busy` when another worker held the lock.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanerPass {
    /// Jobs deleted, per state, in the order they were pruned.
    pub removed: Vec<(JobState, u64)>,
    /// Another pruner held the lock: this pass deleted what it had before then (usually
    /// nothing) and gave way.
    pub busy: bool,
}

/// Deletes old finished jobs; see the module's opening.
#[derive(Clone, Debug)]
pub struct Cleaner {
    store: Store,
    config: RetentionConfig,
}

impl Cleaner {
    /// A cleaner for `config`; nothing runs until [`Cleaner::run`] or [`Cleaner::clean_once`].
    pub fn new(store: Store, config: RetentionConfig) -> Self {
        Self { store, config }
    }

    /// Runs a pass every interval until `stop` is cancelled; the first an interval after
    /// start, when the worker has settled. Failures are logged and retried next interval,
    /// never returned. Does nothing when no state has a retention.
    pub async fn run(self, stop: CancellationToken) {
        if self.config.periods().next().is_none() {
            return;
        }
        let mut failing = false;
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.config.interval) => {}
                () = stop.cancelled() => break,
            }
            match self.clean_once(&stop).await {
                Ok(pass) => {
                    if failing {
                        tracing::info!("pruning old jobs again");
                        failing = false;
                    }
                    let total: u64 = pass.removed.iter().map(|(_, n)| n).sum();
                    if total > 0 {
                        let by_state = |s| {
                            pass.removed
                                .iter()
                                .find(|(state, _)| *state == s)
                                .map_or(0, |(_, n)| *n)
                        };
                        tracing::info!(
                            succeeded = by_state(JobState::Succeeded),
                            cancelled = by_state(JobState::Cancelled),
                            dead = by_state(JobState::Dead),
                            "pruned old finished jobs"
                        );
                    } else if pass.busy {
                        tracing::debug!("another worker is pruning; skipping this pass");
                    }
                }
                Err(e) if !failing => {
                    tracing::warn!(error = %ErrorChain(&e), "pruning old jobs failed (the worker's role needs DELETE on warren_jobs; --retain-* off turns pruning off); retrying every retention interval");
                    failing = true;
                }
                Err(_) => {}
            }
        }
    }

    /// One pass: every state with a retention, batch after batch, until nothing old enough
    /// is left, another pruner holds the lock, or `stop` is cancelled (checked between
    /// batches; a batch in progress commits).
    pub async fn clean_once(
        &self,
        stop: &CancellationToken,
    ) -> Result<CleanerPass, warren_store::Error> {
        let mut pass = CleanerPass::default();
        for (state, keep) in self.config.periods() {
            let mut removed = 0;
            loop {
                if stop.is_cancelled() {
                    break;
                }
                match self
                    .store
                    .prune_batch(state, keep, self.config.batch, PruneLock::Skip)
                    .await?
                {
                    PruneBatch::Deleted(n) => {
                        removed += n;
                        if n < u64::from(self.config.batch) {
                            break;
                        }
                    }
                    PruneBatch::Busy => {
                        pass.busy = true;
                        break;
                    }
                }
            }
            pass.removed.push((state, removed));
            if pass.busy || stop.is_cancelled() {
                break;
            }
        }
        Ok(pass)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_skip_the_states_kept_forever() {
        let config = RetentionConfig {
            cancelled: None,
            ..RetentionConfig::default()
        };
        let periods: Vec<_> = config.periods().collect();
        assert_eq!(
            periods,
            [
                (JobState::Succeeded, Duration::from_secs(86_400)),
                (JobState::Dead, Duration::from_secs(30 * 86_400)),
            ]
        );
        assert_eq!(RetentionConfig::keep_everything().periods().count(), 0);
        assert!(RetentionConfig::keep_everything().validate().is_ok());
        let zero = RetentionConfig {
            batch: 0,
            ..RetentionConfig::default()
        };
        assert!(zero.validate().is_err());
    }
}
