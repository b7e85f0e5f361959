//! Least privilege: a worker runs with a role that has exactly the grants `docs/operations.md`
//! lists, and nothing else. The grants are read from that page, so the page cannot drift from
//! what the code needs.

use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use warren_client::{Client, NewJob};
use warren_core::JobState;
use warren_store::provision;
use warren_testkit::{TestEnv, WorkerProcess, wait_until};

use crate::support::wait_all_terminal;

/// The worker role's grants as `docs/operations.md` gives them: the first `sql` block that
/// grants anything to `warren_worker`.
fn documented_worker_grants() -> anyhow::Result<String> {
    let page = include_str!("../../docs/operations.md");
    page.split("```sql\n")
        .skip(1)
        .filter_map(|block| block.split_once("```").map(|(sql, _)| sql))
        .find(|sql| sql.contains("GRANT") && sql.contains("TO warren_worker"))
        .map(str::to_owned)
        .context("docs/operations.md has no sql block granting to warren_worker")
}

/// `url` with its user info replaced by `user:password`.
fn as_user(url: &str, user: &str, password: &str) -> anyhow::Result<String> {
    let (scheme, rest) = url.split_once("://").context("a URL")?;
    let location = rest.rsplit_once('@').map_or(rest, |(_, location)| location);
    Ok(format!("{scheme}://{user}:{password}@{location}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_with_only_the_documented_grants() -> anyhow::Result<()> {
    let env = TestEnv::new(&["default"]).await?;
    let role = format!("{}_wk", env.name);
    let password = uuid::Uuid::now_v7().simple().to_string();
    provision::execute_script(
        &env.admin_database_url,
        &format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'"),
    )
    .await?;
    let result = run_restricted(&env, &role, &password).await;
    let admin = env.admin_database_url.clone();
    let cleanup = env.cleanup().await;
    // The database, and with it every grant to the role, is gone: the role can go too.
    provision::execute_script(&admin, &format!("DROP ROLE IF EXISTS {role}")).await?;
    result?;
    cleanup
}

async fn run_restricted(env: &TestEnv, role: &str, password: &str) -> anyhow::Result<()> {
    let grants = documented_worker_grants()?
        .replace(
            "ON DATABASE warren TO",
            &format!("ON DATABASE {} TO", env.name),
        )
        .replace("TO warren_worker;", &format!("TO {role};"));
    provision::execute_script(&env.database_url, &grants).await?;
    let url = as_user(&env.database_url, role, password)?;

    // The role really is restricted: it cannot migrate.
    let restricted = warren_store::Store::connect(&warren_store::StoreConfig::new(&url)).await?;
    let denied = restricted.migrate().await;
    restricted.close().await;
    let denied = format!(
        "{:#}",
        anyhow::Error::from(denied.err().context("migrated")?)
    );
    anyhow::ensure!(denied.contains("permission denied"), "{denied}");

    let mut worker = WorkerProcess::spawn_with_database(env, "restricted", &url, &[])?;
    let result = async {
        let client = Client::from_broker(env.broker.clone()).await?;
        let ids = vec![
            // Recorded in a batch.
            client
                .enqueue(NewJob::new("warren.echo", &json!({"hello": "grants"})))
                .await?,
            // A retry: a scheduled row, the trigger, the promoter's claim and publish.
            client
                .enqueue(NewJob::new("warren.fail", &json!({"times": 1})).max_attempts(3))
                .await?,
            // A delayed job through the intake queue: the worker inserts its row.
            client
                .enqueue(
                    NewJob::new("warren.echo", &json!("later")).delay(Duration::from_millis(300)),
                )
                .await?,
            // An idempotency key: a claim inserted before the run.
            client
                .enqueue(NewJob::new("warren.noop", &json!({})).idempotency_key("once"))
                .await?,
        ];
        let rows = wait_all_terminal(&env.store, &ids, Duration::from_secs(60)).await?;
        for id in &ids {
            let row = &rows[id];
            anyhow::ensure!(
                row.state == JobState::Succeeded,
                "{} ended {} with {:?}",
                row.task,
                row.state,
                row.errors
            );
        }
        anyhow::ensure!(rows[&ids[1]].attempt == 2, "{:?}", rows[&ids[1]]);
        wait_until(
            Duration::from_secs(10),
            "the restricted worker's heartbeat row",
            || async {
                let workers = env.store.workers().await?;
                Ok(
                    match workers.iter().find(|w| w.id.ends_with("-restricted")) {
                        Some(_) => Ok(()),
                        None => Err(format!("{} other rows", workers.len())),
                    },
                )
            },
        )
        .await?;
        Ok(())
    }
    .await;
    worker.signal("TERM").await?;
    let code = worker.wait(Duration::from_secs(30)).await?;
    result?;
    anyhow::ensure!(
        code == Some(0),
        "a clean shutdown, its row marked: {code:?}"
    );
    Ok(())
}
