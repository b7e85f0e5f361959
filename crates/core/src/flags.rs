//! Flag errors that name the environment variable a refused value came from.
//!
//! Every flag of Warren's binaries has an environment variable (`--concurrency` and
//! `WARREN_CONCURRENCY`), and clap's error for a bad value names the flag even when the value
//! came from the variable: `WARREN_CONCURRENCY=abc` said "invalid value 'abc' for
//! '--concurrency <CONCURRENCY>'", which sends an operator looking through a command line that
//! has no such flag. [`parse`] names the variable too.

use std::ffi::OsString;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Command, Parser};

/// Parses the process's flags and environment as `P::parse()` does, exiting with clap's
/// status (2, or 0 for `--help`) on an error, which names the environment variable when the
/// refused value came from one.
pub fn parse<P: Parser>() -> P {
    let argv: Vec<OsString> = std::env::args_os().collect();
    match P::try_parse_from(&argv) {
        Ok(parsed) => parsed,
        Err(e) => naming_the_variable(e, &argv, &P::command()).exit(),
    }
}

/// `e`, or for a value refused from an environment variable (its flag not given in `argv`),
/// the same error with the variable named after the flag.
pub fn naming_the_variable(e: clap::Error, argv: &[OsString], command: &Command) -> clap::Error {
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return e;
    }
    let Some(ContextValue::String(shown)) = e.get(ContextKind::InvalidArg) else {
        return e;
    };
    // clap shows the flag as `--concurrency <CONCURRENCY>`.
    let Some(long) = shown
        .strip_prefix("--")
        .and_then(|rest| rest.split([' ', '=']).next())
    else {
        return e;
    };
    let Some(variable) = env_of(command, long) else {
        return e;
    };
    let given = argv.iter().skip(1).any(|a| {
        a.to_str().is_some_and(|a| {
            a.strip_prefix("--")
                .is_some_and(|a| a == long || a.starts_with(&format!("{long}=")))
        })
    });
    if given {
        return e;
    }
    let text = e.render().to_string();
    let quoted = format!("'{shown}'");
    let Some(text) = text
        .strip_prefix("error: ")
        .filter(|t| t.contains(&quoted))
        .map(|t| t.replacen(&quoted, &format!("{quoted} (set by {variable})"), 1))
    else {
        return e;
    };
    clap::Error::raw(e.kind(), text)
}

/// The environment variable of the flag `--long`, in `command` or any of its subcommands.
fn env_of(command: &Command, long: &str) -> Option<String> {
    command
        .get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .map(|v| v.to_string_lossy().into_owned())
        .or_else(|| command.get_subcommands().find_map(|sub| env_of(sub, long)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Parser, Debug)]
    struct Args {
        #[arg(long, env = "WARREN_TEST_FLAGS_COUNT", default_value_t = 1)]
        count: u32,
    }

    /// clap's error for `--count abc`, as `naming_the_variable` turns it given `argv`: an
    /// `argv` without the flag stands for a value taken from the variable.
    fn error(argv: &[&str]) -> String {
        let command = <Args as clap::CommandFactory>::command();
        let e = Args::try_parse_from(["prog", "--count", "abc"]).unwrap_err();
        let argv: Vec<OsString> = argv.iter().map(OsString::from).collect();
        naming_the_variable(e, &argv, &command).to_string()
    }

    #[test]
    fn a_value_from_the_environment_names_the_variable() {
        let text = error(&["prog"]);
        assert!(
            text.contains(
                "invalid value 'abc' for '--count <COUNT>' (set by WARREN_TEST_FLAGS_COUNT)"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_value_from_the_command_line_names_only_the_flag() {
        for argv in [&["prog", "--count", "abc"][..], &["prog", "--count=abc"]] {
            let text = error(argv);
            assert!(text.contains("for '--count <COUNT>'"), "{text}");
            assert!(!text.contains("WARREN_TEST_FLAGS_COUNT"), "{text}");
        }
    }
}
