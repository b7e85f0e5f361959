//! `warren completions SHELL`: a completion script generated from the same clap definition
//! the binary parses with, so it never falls behind the flags.

use clap::CommandFactory;
use clap_complete::Shell;

const COMPLETIONS_HELP: &str = "\
Examples:
  warren completions bash > ~/.local/share/bash-completion/completions/warren
  warren completions zsh > ~/.zfunc/_warren      # with fpath+=(~/.zfunc) before compinit
  warren completions fish > ~/.config/fish/completions/warren.fish";

#[derive(Debug, clap::Args)]
#[command(after_long_help = COMPLETIONS_HELP)]
pub struct CompletionsArgs {
    /// The shell to write a completion script for.
    #[arg(value_enum)]
    pub shell: CompletionShell,
}

/// The shells `warren completions` supports.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum CompletionShell {
    /// GNU Bash.
    Bash,
    /// Z shell.
    Zsh,
    /// fish.
    Fish,
}

pub(crate) fn run(args: CompletionsArgs) -> anyhow::Result<()> {
    let shell = match args.shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut crate::Args::command(), "warren", &mut script);
    // Written as bytes, not through `emit`: a completion script is code for the shell, and
    // it holds no job data to escape.
    let mut out = std::io::stdout().lock();
    match std::io::Write::write_all(&mut out, &script)
        .and_then(|()| std::io::Write::flush(&mut out))
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("writing the completion script"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should panic at the first surprise"
)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn bash_completion_knows_the_new_commands() {
        let mut script = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut crate::Args::command(),
            "warren",
            &mut script,
        );
        let script = String::from_utf8(script).unwrap();
        for word in ["list", "dead", "prune", "--error-contains", "--dry-run"] {
            assert!(script.contains(word), "{word} missing");
        }
    }
}
