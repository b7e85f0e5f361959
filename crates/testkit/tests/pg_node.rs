//! DisposablePostgres does what fault tests rely on: a server of the test's own that stops,
//! dies when killed, comes back on the same port with its data, and is gone after drop.

use warren_store::provision;
use warren_testkit::DisposablePostgres;

#[tokio::test]
async fn a_disposable_postgres_can_be_stopped_killed_and_restarted() -> anyhow::Result<()> {
    let mut server = DisposablePostgres::start().await?;
    assert_ne!(server.port(), 5432, "never the shared server's port");
    let admin = server.admin_url();
    provision::create_database(&admin, "kept").await?;

    server.stop().await?;
    assert!(
        provision::database_exists(&admin, "kept").await.is_err(),
        "a stopped server accepts no connection"
    );
    server.restart().await?;
    assert!(provision::database_exists(&admin, "kept").await?);

    // After kill -9 the restart must wait out the reaping of the old postmaster and its
    // backends, or it refuses to start.
    server.kill().await?;
    assert!(provision::database_exists(&admin, "kept").await.is_err());
    server.restart().await?;
    assert!(
        provision::database_exists(&admin, "kept").await?,
        "the database survived the crash"
    );

    let dir = server.dir().to_owned();
    drop(server);
    assert!(!dir.exists(), "{} is removed on drop", dir.display());
    assert!(
        provision::database_exists(&admin, "kept").await.is_err(),
        "the server is gone after drop"
    );
    Ok(())
}
