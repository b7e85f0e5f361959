//! `warren-worker`: the worker with Warren's built-in diagnostic tasks. All of the program is
//! `warren_worker::run`, which a custom worker binary calls with its own handlers.

use std::process::ExitCode;

fn main() -> ExitCode {
    warren_worker::run(warren_worker::tasks::register_builtins)
}
