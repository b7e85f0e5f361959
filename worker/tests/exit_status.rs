//! `warren-worker`'s exit status for configuration it cannot use, from the real binary.

use std::process::{Command, Stdio};

/// Runs the worker with only these WARREN_* settings and returns its status and stderr.
fn worker(vars: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_warren-worker"));
    for (key, _) in std::env::vars() {
        if key.starts_with("WARREN_") {
            command.env_remove(key);
        }
    }
    let output = command
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("running warren-worker");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A URL that cannot be used is bad configuration, exit 2 as for a bad flag, with the flag and
/// the reason: it is checked with the flags, before anything is connected.
#[test]
fn an_unusable_url_exits_2_with_its_reason() {
    let database = "postgres://postgres@127.0.0.1:5432/postgres";
    for (amqp, db, reason) in [
        (
            "amqp://127.0.0.1:5672/%2f",
            "garbage",
            "invalid Postgres URL",
        ),
        (
            "amqp://127.0.0.1:5672/%2f",
            "postgres://postgres@127.0.0.1/postgres?sslmode=bogus",
            "bogus",
        ),
        ("garbage", database, "invalid AMQP URL"),
    ] {
        let (code, stderr) = worker(&[("WARREN_AMQP_URL", amqp), ("WARREN_DATABASE_URL", db)]);
        assert_eq!(code, Some(2), "{amqp} {db}: {stderr}");
        assert!(
            stderr.contains(reason) && stderr.contains("_URL"),
            "{amqp} {db}: {stderr}"
        );
    }
}

/// A bad value from an environment variable is named by that variable as well as its flag:
/// there is no `--concurrency` on the command line to look for.
#[test]
fn a_bad_value_from_the_environment_names_the_variable() {
    let (code, stderr) = worker(&[
        ("WARREN_AMQP_URL", "amqp://127.0.0.1:5672/%2f"),
        (
            "WARREN_DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        ),
        ("WARREN_CONCURRENCY", "lots"),
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "invalid value 'lots' for '--concurrency <CONCURRENCY>' (set by WARREN_CONCURRENCY)"
        ),
        "{stderr}"
    );
}
