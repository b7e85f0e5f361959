//! Asking before a destructive command acts: on a terminal, a yes/no question; without one,
//! a refusal, since nobody could have said yes. `--yes` skips both (the caller's choice).

use std::io::{IsTerminal, Write};

use anyhow::Context;

use crate::exit::Usage;

/// Asks whether to `what` ("retry 12 jobs", "delete 5000 jobs") after printing `summary` (the
/// plan, ending in a newline, or empty). A refusal (no terminal, or any answer but yes) is a
/// [`Usage`] error, so the command exits 2 having done nothing.
pub(crate) fn confirm(summary: &str, what: &str) -> anyhow::Result<()> {
    if !std::io::stdin().is_terminal() {
        return Err(Usage(format!(
            "refusing to {what} without confirmation: stdin is not a terminal; pass --yes to \
             go ahead, or --dry-run to see what would be done"
        ))
        .into());
    }
    // A stderr that is gone is no reason to panic: the answer is still read.
    let _ = write!(std::io::stderr(), "{summary}{what}? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("reading the confirmation")?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Usage("not confirmed; nothing was done".to_owned()).into())
    }
}
