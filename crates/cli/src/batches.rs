//! What a command that works in batches (bulk retry and cancel, prune) does between them:
//! it watches for Ctrl-C, so that it can stop after the batch in progress commits instead of
//! in the middle of it, and it shows a progress line on stderr when stderr is a terminal.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::task::JoinHandle;

/// A run of batches in progress. Create it just before the first batch, [`Batches::finish`]
/// it after the last.
#[derive(Debug)]
pub(crate) struct Batches {
    stop: Arc<AtomicBool>,
    watcher: JoinHandle<()>,
    progress: bool,
}

impl Batches {
    /// Starts watching for Ctrl-C. From now on Ctrl-C no longer kills the process: the
    /// caller must check [`Batches::interrupted`] between batches.
    pub(crate) fn start() -> Batches {
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let stop = stop.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    stop.store(true, Ordering::SeqCst);
                }
            })
        };
        Batches {
            stop,
            watcher,
            progress: std::io::stderr().is_terminal(),
        }
    }

    /// Whether Ctrl-C was pressed: the caller stops before its next batch.
    pub(crate) fn interrupted(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Rewrites the progress line (`retry 400/1200`), on a terminal only.
    pub(crate) fn progress(&self, line: &str) {
        if self.progress {
            eprint!("\r{line}");
        }
    }

    /// Stops watching for Ctrl-C and ends the progress line.
    pub(crate) fn finish(self) {
        self.watcher.abort();
        if self.progress {
            eprintln!();
        }
    }
}
