//! What a command that works in batches (bulk retry and cancel, prune, purge) does between
//! them: it watches for Ctrl-C, so that it can stop after the batch in progress commits
//! instead of in the middle of it, and it shows a progress bar (`indicatif`) on stderr when
//! stderr is a terminal.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinHandle;

/// How the bar looks when the total is known: `retry [=====>    ] 400/1200 (3s)`.
const BAR: &str = "{msg} [{bar:30}] {pos}/{len} ({elapsed})";
/// How the line looks when it is not (a purge takes what the queue holds).
const SPINNER: &str = "{spinner} {msg} {pos} ({elapsed})";

/// A run of batches in progress. Create it just before the first batch, [`Batches::finish`]
/// it after the last.
#[derive(Debug)]
pub(crate) struct Batches {
    stop: Arc<AtomicBool>,
    watcher: JoinHandle<()>,
    bar: ProgressBar,
}

impl Batches {
    /// Starts watching for Ctrl-C, with a progress bar out of `total` jobs when the total is
    /// known, a counter otherwise. From now on Ctrl-C no longer kills the process: the caller
    /// must check [`Batches::interrupted`] between batches.
    pub(crate) fn start(total: Option<u64>) -> Batches {
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let stop = stop.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    stop.store(true, Ordering::SeqCst);
                }
            })
        };
        // Piped or redirected, stderr gets no bar: only the final report, which scripts read.
        let bar = if !std::io::stderr().is_terminal() {
            ProgressBar::hidden()
        } else {
            match total {
                Some(total) => ProgressBar::new(total).with_style(style(BAR)),
                None => ProgressBar::no_length().with_style(style(SPINNER)),
            }
        };
        Batches { stop, watcher, bar }
    }

    /// Whether Ctrl-C was pressed: the caller stops before its next batch.
    pub(crate) fn interrupted(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Moves the bar to `done` jobs, labelled `what` (`retry`, `prune dead`), on a terminal
    /// only.
    pub(crate) fn progress(&self, what: &str, done: u64) {
        self.bar.set_message(what.to_owned());
        self.bar.set_position(done);
    }

    /// Stops watching for Ctrl-C and leaves the bar where it ended, on its own line.
    pub(crate) fn finish(self) {
        self.watcher.abort();
        self.bar.abandon();
    }
}

/// A style from one of the templates above. They are constants checked by the tests, so the
/// fallback (indicatif's plain default) is never expected to be used.
fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_templates_parse() {
        assert!(ProgressStyle::with_template(BAR).is_ok());
        assert!(ProgressStyle::with_template(SPINNER).is_ok());
    }
}
