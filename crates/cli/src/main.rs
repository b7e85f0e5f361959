//! `warren`: wiring only. The commands live in the `warren_cli` library; the exit statuses are
//! documented in `warren --help`.

use std::io::Write as _;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;
use warren_cli::{Args, Status};

fn main() -> ExitCode {
    // Clap prints its own errors and exits with status 2, the same as our usage errors.
    let args: Args = warren_core::flags::parse();
    init_tracing();
    // One command does one thing at a time; a single-threaded runtime is all it needs.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            say(&format!("cannot start the async runtime: {e}"));
            return Status::Failed.into();
        }
    };
    let status = match runtime.block_on(warren_cli::run(args)) {
        Ok(()) => Status::Ok,
        Err(e) => {
            say(&warren_cli::error_text(&e));
            Status::of(&e)
        }
    };
    // After a failed connection lapin's I/O thread lives on, and panics if it finds the
    // runtime shutting down. The process ends here anyway, so the runtime is left to the
    // operating system instead of being shut down under that thread.
    std::mem::forget(runtime);
    status.into()
}

/// Prints `warren: <text>` on stderr. A stderr that is gone (a closed pipe) is ignored:
/// `eprintln!` would panic there and turn the command's exit status into 101.
fn say(text: &str) {
    let _ = writeln!(std::io::stderr(), "warren: {text}");
}

/// Logs go to stderr so they never mix with output meant for pipes (held back while `warren
/// top` draws, so they cannot tear its screen); only warnings by default,
/// since the commands report their own results. lapin is silenced: it warns about every
/// returned (unroutable) message with a full dump of it, and logs a refused login or a lost
/// connection as errors, all of which the command reports as its own error, once and
/// readably. Colours only on a terminal. `RUST_LOG` overrides the levels.
fn init_tracing() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,lapin=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(warren_cli::log_writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
