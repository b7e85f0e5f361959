use warren_store::{Store, StoreConfig, provision};
use warren_testkit::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_processes_migrating_one_fresh_database_at_once_all_succeed() -> anyhow::Result<()> {
    // The env only lends its server; the database under test is a fresh one of its own.
    let env = TestEnv::new(&["default"]).await?;
    let name = format!("{}_m", env.name);
    provision::create_database(&env.admin_database_url, &name).await?;
    let url = provision::url_for_database(&env.admin_database_url, &name)?;

    let mut tasks = Vec::new();
    for _ in 0..6 {
        let config = StoreConfig::new(&url);
        tasks.push(tokio::spawn(async move {
            let store = Store::connect(&config).await?;
            let result = store.migrate().await;
            store.close().await;
            result
        }));
    }
    for task in tasks {
        task.await??;
    }
    // The schema is whole: a job can be recorded and read back.
    let store = Store::connect(&StoreConfig::new(&url)).await?;
    assert!(store.state_counts(None).await?.is_empty());
    assert!(store.workers().await?.is_empty());
    store.close().await;
    provision::drop_database(&env.admin_database_url, &name).await?;
    env.cleanup().await
}
