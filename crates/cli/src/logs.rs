//! Where `warren`'s log lines go: stderr, except while `warren top` draws on the terminal,
//! when a line written there would tear the screen. Meanwhile they are held (up to a limit)
//! and written out once the terminal is restored.

use std::io::{self, Write};
use std::sync::Mutex;

/// Log bytes held while the screen is taken; `None` when logs go straight to stderr.
static HELD: Mutex<Option<Vec<u8>>> = Mutex::new(None);

/// How much is held at most; a flood of log lines while `top` runs keeps its first part.
const HELD_LIMIT: usize = 16 * 1024;

/// The writer of `warren`'s log lines, for `tracing_subscriber`'s `with_writer`.
pub fn log_writer() -> LogWriter {
    LogWriter
}

/// Writes a log line to stderr, or holds it while the terminal is taken (see [`hold`]).
#[derive(Debug)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A poisoned lock only means another thread panicked while logging; the bytes are
        // still a sound place to write to.
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        match held.as_mut() {
            Some(held) => {
                let room = HELD_LIMIT.saturating_sub(held.len());
                held.extend_from_slice(&buf[..buf.len().min(room)]);
                Ok(buf.len())
            }
            None => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// Holds log lines until [`release`].
pub(crate) fn hold() {
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    held.get_or_insert_with(Vec::new);
}

/// Sends log lines to stderr again, starting with those held since [`hold`].
pub(crate) fn release() {
    let held = HELD.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(held) = held.filter(|h| !h.is_empty()) {
        let mut stderr = io::stderr().lock();
        let _ = stderr.write_all(&held);
        if held.len() >= HELD_LIMIT {
            let _ = writeln!(
                stderr,
                "(more log lines were dropped while the screen was taken)"
            );
        }
    }
}
