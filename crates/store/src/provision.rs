//! Creating and dropping whole databases: for `warren migrate --create-database`, the demo and
//! test isolation (each test gets a database of its own); and running provisioning scripts
//! (roles and grants, see `docs/operations.md`).

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
    opts.connect()
        .await
        .map_err(|source| Error::Connect { endpoint, source })
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
                    source,
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
    let mut conn = opts
        .connect()
        .await
        .map_err(|source| Error::Connect { endpoint, source })?;
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
