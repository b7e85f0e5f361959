//! `warren limits` against the real binary and PostgreSQL: bad input exits 2 naming the flag
//! and sets nothing; set, list and remove round-trip through Postgres; an unknown target's
//! removal exits 3.

#![allow(
    clippy::unwrap_used,
    reason = "a test should panic at the first surprise"
)]

mod support;

use anyhow::ensure;
use serde_json::json;

use support::*;

#[tokio::test]
async fn bad_input_exits_2_naming_the_flag_and_sets_nothing() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        for (args, flag, words) in [
            (&["--rate", "0/s"][..], "--rate", "lets no job start"),
            (&["--rate", "abc"][..], "--rate", "is not a rate"),
            (&["--rate", "20/h"][..], "--rate", "is not a rate"),
            (&["--concurrency", "0"][..], "--concurrency", "at least 1"),
            (&["--concurrency", "abc"][..], "--concurrency", "at least 1"),
            (
                &["--concurrency", "1", "--key-from", "customer_id"][..],
                "--key-from",
                "must start with `/`",
            ),
            (
                &["--concurrency", "1", "--key-from", "/a~2"][..],
                "--key-from",
                "must be followed by 0",
            ),
            (&[][..], "--concurrency, --rate", "give"),
        ] {
            let mut argv = vec!["limits", "set", "warren.sleep"];
            argv.extend_from_slice(args);
            let run = warren(env, &argv).await?;
            ensure!(run.code == Some(2), "{args:?}: {run:?}");
            ensure!(
                run.stderr.contains(flag) && run.stderr.contains(words),
                "{args:?}: {}",
                run.stderr
            );
            ensure!(!run.stderr.contains("panicked"), "{}", run.stderr);
        }
        let list = warren(env, &["limits", "list", "--json"]).await?;
        ensure!(list.json()? == json!([]), "{list:?}");
        let run = warren(env, &["limits", "remove", "nope"]).await?;
        ensure!(run.code == Some(3), "{run:?}");
        ensure!(run.stderr.contains("no limit on 'nope'"), "{}", run.stderr);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn set_list_and_remove_round_trip() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        let set = warren(
            env,
            &[
                "limits",
                "set",
                "api.call",
                "--concurrency",
                "2",
                "--rate",
                "100/m",
                "--key-from",
                "/customer_id",
                "--json",
            ],
        )
        .await?;
        ensure!(set.code == Some(0), "{set:?}");
        ensure!(
            set.json()?
                == json!({"target": "api.call", "created": true, "concurrency": 2,
                          "rate": "100/m", "key_from": "/customer_id"}),
            "{set:?}"
        );
        // Setting again replaces the whole limit.
        let again = warren(env, &["limits", "set", "api.call", "--rate", "20/s"]).await?;
        ensure!(again.code == Some(0), "{again:?}");
        ensure!(
            again.stdout.contains("replaced limit on api.call"),
            "{again:?}"
        );
        let list = warren(env, &["limits", "list", "--json"]).await?.json()?;
        let row = &list[0];
        ensure!(
            row["target"] == "api.call" && row["rate"] == "20/s",
            "{list}"
        );
        ensure!(
            row["concurrency"].is_null() && row["key_from"].is_null(),
            "{list}"
        );
        let table = warren(env, &["limits", "list"]).await?;
        ensure!(
            table.stdout.contains("api.call") && table.stdout.contains("20/s"),
            "{table:?}"
        );
        let removed = warren(env, &["limits", "remove", "api.call", "--json"]).await?;
        ensure!(
            removed.json()? == json!({"target": "api.call", "removed": true}),
            "{removed:?}"
        );
        let list = warren(env, &["limits", "list", "--json"]).await?;
        ensure!(list.json()? == json!([]), "{list:?}");
        Ok(())
    })
    .await
}
