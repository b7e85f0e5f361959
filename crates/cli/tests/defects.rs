//! Defects found when `warren` was tried from outside (issue 8), each pinned by a test that
//! runs the real binary against the real RabbitMQ and PostgreSQL.
//!
//! Test bodies use `ensure!` rather than `assert!` so that a failure still reaches the cleanup
//! that drops the test's database and deletes its queues.

use anyhow::ensure;
use warren_store::provision;

mod support;

use support::*;

/// A Postgres error printed by `warren` says each cause once: sqlx's errors print their cause
/// in their message and return it as their source too, and the chain used to say both.
#[tokio::test]
async fn a_postgres_error_says_each_cause_once() -> anyhow::Result<()> {
    with_env(&["default"], async |env| {
        let missing = format!("{}_missing", env.name);
        let url = provision::url_for_database(&env.admin_database_url, &missing)?;
        let run = warren_with(&[("WARREN_DATABASE_URL", &url)], &["jobs", "summary"]).await?;
        ensure!(run.code == Some(1), "{run:?}");
        let quoted = format!("database \"{missing}\" does not exist");
        ensure!(run.stderr.matches(&quoted).count() == 1, "{run:?}");
        ensure!(run.stderr.contains("(SQLSTATE 3D000)"), "{run:?}");

        // A database without Warren's tables: the query fails on the server.
        let empty = format!("{}_empty", env.name);
        provision::create_database(&env.admin_database_url, &empty).await?;
        let url = provision::url_for_database(&env.admin_database_url, &empty)?;
        let run = warren_with(&[("WARREN_DATABASE_URL", &url)], &["jobs", "summary"]).await;
        provision::drop_database(&env.admin_database_url, &empty).await?;
        let run = run?;
        ensure!(run.code == Some(1), "{run:?}");
        ensure!(
            run.stderr
                == "warren: counting jobs per state failed: relation \"warren_jobs\" does not \
                    exist (SQLSTATE 42P01)\n",
            "{run:?}"
        );
        Ok(())
    })
    .await
}
