//! Embedded migrations, applied under an advisory lock so that many workers starting at once
//! apply each migration exactly once and none starts on a half-migrated schema.

use sqlx::PgPool;

use crate::Error;

struct Migration {
    version: i64,
    name: &'static str,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../../../schemas/migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "promotion",
        sql: include_str!("../../../schemas/migrations/0002_promotion.sql"),
    },
    Migration {
        version: 3,
        name: "hardening",
        sql: include_str!("../../../schemas/migrations/0003_hardening.sql"),
    },
];

/// The schema version this binary creates and expects.
pub const SCHEMA_VERSION: i64 = 3;

/// An arbitrary constant naming Warren's migration lock among other advisory locks.
const LOCK_KEY: i64 = 0x5741_5252_454E_0001;

pub(crate) async fn run(pool: &PgPool) -> Result<(), Error> {
    // The lock is session-level, so it must be taken and released on the same connection.
    let mut conn = pool
        .acquire()
        .await
        .map_err(Error::query("acquiring a connection for migrations"))?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *conn)
        .await
        .map_err(Error::query("taking the migration lock"))?;
    let result = apply_pending(&mut conn).await;
    // Unlock even when a migration failed; a dropped connection would release it too.
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *conn)
        .await;
    result
}

/// Checks that the database's schema is exactly the version this binary knows, without
/// changing anything: what a worker does at start-up when it does not migrate, so that an
/// unmigrated database stops it at once with the command to run, not at its first query with
/// a raw SQL error. Needs only `SELECT` on `warren_migrations`.
pub(crate) async fn check(pool: &PgPool) -> Result<(), Error> {
    let current: Option<i64> =
        match sqlx::query_scalar("SELECT max(version) FROM warren_migrations")
            .fetch_one(pool)
            .await
        {
            Ok(v) => v,
            // 42P01: undefined table. Warren's migrations never ran in this database.
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P01") => None,
            Err(e) => return Err(Error::query("reading the schema version")(e)),
        };
    match current.unwrap_or(0) {
        0 => Err(Error::NotMigrated {
            known: SCHEMA_VERSION,
        }),
        v if v < SCHEMA_VERSION => Err(Error::SchemaTooOld {
            found: v,
            known: SCHEMA_VERSION,
        }),
        v if v > SCHEMA_VERSION => Err(Error::SchemaTooNew {
            found: v,
            known: SCHEMA_VERSION,
        }),
        _ => Ok(()),
    }
}

async fn apply_pending(conn: &mut sqlx::PgConnection) -> Result<(), Error> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS warren_migrations (
            version    bigint PRIMARY KEY,
            name       text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .execute(&mut *conn)
    .await
    .map_err(Error::query("creating the migrations table"))?;
    let current: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM warren_migrations")
        .fetch_one(&mut *conn)
        .await
        .map_err(Error::query("reading the schema version"))?;
    let current = current.unwrap_or(0);
    if current > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            found: current,
            known: SCHEMA_VERSION,
        });
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        let fail = |source| Error::Migrate {
            version: m.version,
            name: m.name,
            source,
        };
        let mut tx = sqlx::Connection::begin(&mut *conn).await.map_err(fail)?;
        sqlx::raw_sql(m.sql).execute(&mut *tx).await.map_err(fail)?;
        sqlx::query("INSERT INTO warren_migrations (version, name) VALUES ($1, $2)")
            .bind(m.version)
            .bind(m.name)
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        tracing::info!(version = m.version, name = m.name, "applied migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_consecutive_and_end_at_the_schema_version() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i64 + 1, "{}", m.name);
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(SCHEMA_VERSION));
    }
}
