//! Creating and dropping whole databases: for `warren migrate --create-database`, the demo and
//! test isolation (each test gets a database of its own); running provisioning scripts
//! (roles and grants, see `docs/operations.md`); and the register of sandboxes, the
//! disposable databases and RabbitMQ namespaces of tests, so that what a crashed run left
//! behind can be found and removed later.

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

use crate::Error;

fn options(url: &str) -> Result<PgConnectOptions, Error> {
    crate::store::connect_options(url)
}

/// The same server and credentials as `url`, but database `name`.
pub fn url_for_database(url: &str, name: &str) -> Result<String, Error> {
    // Parse first so a malformed URL is reported as such rather than mangled.
    options(url)?;
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[authority_end..].find('/').map(|i| i + authority_end);
    let root = match path_start {
        Some(i) => &base[..i],
        None => base,
    };
    Ok(match query {
        Some(q) => format!("{root}/{name}?{q}"),
        None => format!("{root}/{name}"),
    })
}

fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty()
        || name.len() > 63
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(Error::Url {
            url: name.to_owned(),
            reason: "database names must be 1 to 63 ASCII letters, digits or underscores".into(),
        });
    }
    Ok(())
}

/// A connection to the server of `admin_url`, after checking that `name` is a safe database
/// name to quote into DDL.
async fn admin_connection(admin_url: &str, name: &str) -> Result<sqlx::PgConnection, Error> {
    check_name(name)?;
    let opts = options(admin_url)?;
    let endpoint = format!("{}:{}", opts.get_host(), opts.get_port());
    opts.connect().await.map_err(|source| Error::Connect {
        endpoint,
        source: source.into(),
    })
}

/// Creates database `name` on the server of `admin_url` if it does not exist.
pub async fn create_database(admin_url: &str, name: &str) -> Result<(), Error> {
    let mut conn = admin_connection(admin_url, name).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await
            .map_err(Error::query("checking whether the database exists"))?;
    if !exists {
        // The name was checked to be [A-Za-z0-9_]+, so quoting it is safe.
        let ddl = sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\""));
        match sqlx::raw_sql(ddl).execute(&mut conn).await {
            Ok(_) => {}
            // Another process created it between our check and our create. Postgres reports
            // that as 42P04 (duplicate_database) when the other CREATE has committed, but as
            // 23505 (unique_violation on pg_database's name index) when both were in flight
            // at once; CREATE DATABASE creates nothing else that could be duplicated.
            Err(sqlx::Error::Database(db))
                if matches!(db.code().as_deref(), Some("42P04" | "23505")) => {}
            Err(source) => {
                return Err(Error::Query {
                    what: "creating the database",
                    source: source.into(),
                });
            }
        }
    }
    let _ = conn.close().await;
    Ok(())
}

/// Runs `script`, one or more SQL statements, on the database of `url`: for provisioning done
/// by an administrator (creating roles, granting privileges), never with untrusted input.
pub async fn execute_script(url: &str, script: &str) -> Result<(), Error> {
    let opts = options(url)?;
    let endpoint = format!("{}:{}", opts.get_host(), opts.get_port());
    let mut conn = opts.connect().await.map_err(|source| Error::Connect {
        endpoint,
        source: source.into(),
    })?;
    // The caller vouches for the script: it is an administrator's, as the name says.
    sqlx::raw_sql(sqlx::AssertSqlSafe(script.to_owned()))
        .execute(&mut conn)
        .await
        .map_err(Error::query("running a provisioning script"))?;
    let _ = conn.close().await;
    Ok(())
}

/// Drops database `name`, disconnecting its sessions first.
pub async fn drop_database(admin_url: &str, name: &str) -> Result<(), Error> {
    let mut conn = admin_connection(admin_url, name).await?;
    // The name was checked to be [A-Za-z0-9_]+, so quoting it is safe.
    let ddl = sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"));
    sqlx::raw_sql(ddl)
        .execute(&mut conn)
        .await
        .map_err(Error::query("dropping the database"))?;
    let _ = conn.close().await;
    Ok(())
}

/// A disposable database and RabbitMQ namespace (with its work queues), made for one test.
/// Recorded in the `warren_sandboxes` table of the server's administration database
/// (`postgres`) for as long as it exists: RabbitMQ without its management plugin cannot list
/// queues, so this record is the only way to find a namespace whose owner died.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Sandbox {
    /// The test's database on the same server.
    pub database: String,
    /// The RabbitMQ namespace its exchanges and queues are prefixed with.
    pub namespace: String,
    /// The Warren queues declared under the namespace, to delete with it.
    pub queues: Vec<String>,
}

/// An arbitrary constant naming the lock that serialises creating the register.
const SANDBOX_LOCK_KEY: i64 = 0x5741_5252_454E_0002;

/// A connection to the administration database with the register created. `CREATE TABLE IF
/// NOT EXISTS` is not safe against itself (two sessions can both find no table and one then
/// fails), so it runs under an advisory lock.
async fn register(admin_url: &str) -> Result<sqlx::PgConnection, Error> {
    let opts = options(admin_url)?;
    let endpoint = format!("{}:{}", opts.get_host(), opts.get_port());
    let mut conn = opts.connect().await.map_err(|source| Error::Connect {
        endpoint,
        source: source.into(),
    })?;
    let mut tx = conn
        .begin()
        .await
        .map_err(Error::query("starting to create the sandbox register"))?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SANDBOX_LOCK_KEY)
        .execute(&mut *tx)
        .await
        .map_err(Error::query("locking the sandbox register"))?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS warren_sandboxes (
            database   text        PRIMARY KEY,
            namespace  text        NOT NULL,
            queues     text[]      NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .execute(&mut *tx)
    .await
    .map_err(Error::query("creating the sandbox register"))?;
    tx.commit()
        .await
        .map_err(Error::query("creating the sandbox register"))?;
    Ok(conn)
}

/// Records `sandbox`, before its database and namespace are made, so that nothing exists
/// unrecorded.
pub async fn record_sandbox(admin_url: &str, sandbox: &Sandbox) -> Result<(), Error> {
    let mut conn = register(admin_url).await?;
    sqlx::query(
        "INSERT INTO warren_sandboxes (database, namespace, queues) VALUES ($1, $2, $3)
         ON CONFLICT (database) DO UPDATE SET namespace = $2, queues = $3",
    )
    .bind(&sandbox.database)
    .bind(&sandbox.namespace)
    .bind(&sandbox.queues)
    .execute(&mut conn)
    .await
    .map_err(Error::query("recording a sandbox"))?;
    let _ = conn.close().await;
    Ok(())
}

/// Removes the record of a sandbox whose database and namespace are gone.
pub async fn forget_sandbox(admin_url: &str, database: &str) -> Result<(), Error> {
    let mut conn = register(admin_url).await?;
    sqlx::query("DELETE FROM warren_sandboxes WHERE database = $1")
        .bind(database)
        .execute(&mut conn)
        .await
        .map_err(Error::query("forgetting a sandbox"))?;
    let _ = conn.close().await;
    Ok(())
}

/// The record of one sandbox, if it has one.
pub async fn sandbox(admin_url: &str, database: &str) -> Result<Option<Sandbox>, Error> {
    let mut conn = register(admin_url).await?;
    let found = sqlx::query_as(
        "SELECT database, namespace, queues FROM warren_sandboxes WHERE database = $1",
    )
    .bind(database)
    .fetch_optional(&mut conn)
    .await
    .map_err(Error::query("reading a sandbox record"))?;
    let _ = conn.close().await;
    Ok(found)
}

/// Takes the records of sandboxes made more than `older_than` ago, whose owners evidently
/// died before removing them: each is returned to exactly one caller (rows another sweeper
/// holds are skipped), which must remove it, or record it again if it cannot.
pub async fn claim_stale_sandboxes(
    admin_url: &str,
    older_than: std::time::Duration,
) -> Result<Vec<Sandbox>, Error> {
    let mut conn = register(admin_url).await?;
    let stale = sqlx::query_as(
        "DELETE FROM warren_sandboxes
         WHERE database IN (SELECT database FROM warren_sandboxes
                            WHERE created_at < now() - make_interval(secs => $1)
                            FOR UPDATE SKIP LOCKED)
         RETURNING database, namespace, queues",
    )
    .bind(older_than.as_secs_f64())
    .fetch_all(&mut conn)
    .await
    .map_err(Error::query("claiming stale sandboxes"))?;
    let _ = conn.close().await;
    Ok(stale)
}

/// Databases named `<prefix>...` that no sandbox record names and that were created more
/// than `older_than` ago: left by runs from before the register existed, or made beside a
/// sandbox's own database. The creation time is that of the database's `PG_VERSION` file,
/// which only a superuser (or `pg_read_server_files`) may read; without that right, none
/// are returned. A database being created or dropped meanwhile has no such file and is
/// skipped (`missing_ok`).
pub async fn stale_unrecorded_databases(
    admin_url: &str,
    prefix: &str,
    older_than: std::time::Duration,
) -> Result<Vec<String>, Error> {
    let mut conn = register(admin_url).await?;
    let found = sqlx::query_scalar(
        "SELECT d.datname FROM pg_database d
         WHERE starts_with(d.datname, $1)
           AND NOT EXISTS (SELECT 1 FROM warren_sandboxes s WHERE s.database = d.datname)
           AND (pg_stat_file('base/' || d.oid || '/PG_VERSION', true)).modification
               < now() - make_interval(secs => $2)",
    )
    .bind(prefix)
    .bind(older_than.as_secs_f64())
    .fetch_all(&mut conn)
    .await;
    let _ = conn.close().await;
    match found {
        Ok(names) => Ok(names),
        // 42501: insufficient privilege to read the files' times.
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42501") => Ok(Vec::new()),
        Err(e) => Err(Error::query("listing stale unrecorded databases")(e)),
    }
}

/// Whether database `name` exists on the server of `admin_url`.
pub async fn database_exists(admin_url: &str, name: &str) -> Result<bool, Error> {
    let mut conn = admin_connection(admin_url, name).await?;
    let exists = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut conn)
        .await
        .map_err(Error::query("checking whether the database exists"))?;
    let _ = conn.close().await;
    Ok(exists)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swaps_only_the_database() {
        assert_eq!(
            url_for_database("postgres://u:p@h:5432/a?sslmode=disable", "b").unwrap(),
            "postgres://u:p@h:5432/b?sslmode=disable"
        );
        assert_eq!(
            url_for_database("postgres://h", "b").unwrap(),
            "postgres://h/b"
        );
        assert!(check_name("bad-name;").is_err());
    }
}
