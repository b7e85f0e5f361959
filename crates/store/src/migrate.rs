//! Embedded migrations, applied under an advisory lock so that many workers starting at once
//! apply each migration exactly once and none starts on a half-migrated schema.
//!
//! Each applied migration is recorded with the SHA-256 of its SQL. A migration edited after a
//! database applied it would leave that database different from a fresh one with no version
//! to tell them apart, so a checksum that differs from the embedded one stops `migrate` and
//! the start-up check. Databases migrated before checksums were kept have none: `migrate`
//! records them, the start-up check (read-only) accepts their absence.

use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::Error;

struct Migration {
    version: i64,
    name: &'static str,
    sql: &'static str,
}

impl Migration {
    fn checksum(&self) -> Vec<u8> {
        Sha256::digest(self.sql.as_bytes()).to_vec()
    }

    fn file(&self) -> String {
        format!("{:04}_{}.sql", self.version, self.name)
    }
}

/// A row of `warren_migrations`.
#[derive(sqlx::FromRow)]
struct Applied {
    version: i64,
    checksum: Option<Vec<u8>>,
}

/// Checks each applied migration's recorded checksum against the embedded migration of that
/// version. Returns the versions that have no checksum yet (applied before checksums were
/// kept); a version this binary does not embed is left to the version checks.
fn verify(applied: &[Applied]) -> Result<Vec<&'static Migration>, Error> {
    let mut unrecorded = Vec::new();
    for row in applied {
        let Some(m) = MIGRATIONS.iter().find(|m| m.version == row.version) else {
            continue;
        };
        match &row.checksum {
            None => unrecorded.push(m),
            Some(recorded) if *recorded == m.checksum() => {}
            Some(recorded) => {
                return Err(Error::MigrationChanged {
                    version: m.version,
                    file: m.file(),
                    recorded: hex(recorded),
                    embedded: hex(&m.checksum()),
                });
            }
        }
    }
    Ok(unrecorded)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
    Migration {
        version: 4,
        name: "admin_indexes",
        sql: include_str!("../../../schemas/migrations/0004_admin_indexes.sql"),
    },
    Migration {
        version: 5,
        name: "queue_pauses",
        sql: include_str!("../../../schemas/migrations/0005_queue_pauses.sql"),
    },
    Migration {
        version: 6,
        name: "finished_index",
        sql: include_str!("../../../schemas/migrations/0006_finished_index.sql"),
    },
    Migration {
        version: 7,
        name: "retention_indexes",
        sql: include_str!("../../../schemas/migrations/0007_retention_indexes.sql"),
    },
    Migration {
        version: 8,
        name: "worker_details",
        sql: include_str!("../../../schemas/migrations/0008_worker_details.sql"),
    },
    Migration {
        version: 9,
        name: "schedules",
        sql: include_str!("../../../schemas/migrations/0009_schedules.sql"),
    },
    Migration {
        version: 10,
        name: "read_indexes",
        sql: include_str!("../../../schemas/migrations/0010_read_indexes.sql"),
    },
    Migration {
        version: 11,
        name: "limits",
        sql: include_str!("../../../schemas/migrations/0011_limits.sql"),
    },
    Migration {
        version: 12,
        name: "limit_reservations",
        sql: include_str!("../../../schemas/migrations/0012_limit_reservations.sql"),
    },
];

/// The schema version this binary creates and expects.
pub const SCHEMA_VERSION: i64 = 12;

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
        _ => {
            let applied: Vec<Applied> =
                match sqlx::query_as("SELECT version, checksum FROM warren_migrations")
                    .fetch_all(pool)
                    .await
                {
                    Ok(rows) => rows,
                    // 42703: undefined column. Migrated before checksums were kept, and not
                    // migrated since: nothing to compare yet (`warren migrate` records them).
                    Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42703") => {
                        return Ok(());
                    }
                    Err(e) => return Err(Error::query("reading migration checksums")(e)),
                };
            verify(&applied).map(drop)
        }
    }
}

async fn apply_pending(conn: &mut sqlx::PgConnection) -> Result<(), Error> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS warren_migrations (
            version    bigint PRIMARY KEY,
            name       text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now(),
            checksum   bytea
        )",
    )
    .execute(&mut *conn)
    .await
    .map_err(Error::query("creating the migrations table"))?;
    add_checksum_column(conn).await?;
    let applied: Vec<Applied> = sqlx::query_as("SELECT version, checksum FROM warren_migrations")
        .fetch_all(&mut *conn)
        .await
        .map_err(Error::query("reading the applied migrations"))?;
    let current = applied.iter().map(|a| a.version).max().unwrap_or(0);
    if current > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            found: current,
            known: SCHEMA_VERSION,
        });
    }
    for m in verify(&applied)? {
        sqlx::query("UPDATE warren_migrations SET checksum = $2 WHERE version = $1")
            .bind(m.version)
            .bind(m.checksum())
            .execute(&mut *conn)
            .await
            .map_err(Error::query(
                "recording the checksum of an applied migration",
            ))?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "recorded the checksum of a migration applied before checksums were kept"
        );
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        let fail = |source: sqlx::Error| Error::Migrate {
            version: m.version,
            name: m.name,
            source: source.into(),
        };
        let mut tx = sqlx::Connection::begin(&mut *conn).await.map_err(fail)?;
        sqlx::raw_sql(m.sql).execute(&mut *tx).await.map_err(fail)?;
        sqlx::query("INSERT INTO warren_migrations (version, name, checksum) VALUES ($1, $2, $3)")
            .bind(m.version)
            .bind(m.name)
            .bind(m.checksum())
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        tracing::info!(version = m.version, name = m.name, "applied migration");
    }
    Ok(())
}

/// Adds `checksum` to a `warren_migrations` made before checksums were kept. Only then: an
/// `ALTER TABLE` locks the table, even when it ends up changing nothing, and would block every
/// worker's start-up check meanwhile.
async fn add_checksum_column(conn: &mut sqlx::PgConnection) -> Result<(), Error> {
    let has_column: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute
                        WHERE attrelid = 'warren_migrations'::regclass
                          AND attname = 'checksum' AND NOT attisdropped)",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(Error::query(
        "looking for the migrations table's checksum column",
    ))?;
    if !has_column {
        sqlx::raw_sql("ALTER TABLE warren_migrations ADD COLUMN checksum bytea")
            .execute(&mut *conn)
            .await
            .map_err(Error::query(
                "adding a checksum column to the migrations table",
            ))?;
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

    #[test]
    fn each_migration_names_its_file() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas/migrations");
        for m in MIGRATIONS {
            let on_disk = std::fs::read_to_string(format!("{dir}/{}", m.file()));
            assert_eq!(on_disk.ok().as_deref(), Some(m.sql), "{}", m.file());
        }
    }

    #[test]
    fn an_edited_migration_is_named_and_an_unrecorded_one_is_listed() {
        let row = |version, checksum| Applied { version, checksum };
        let first = &MIGRATIONS[0];
        let ok = [row(1, Some(first.checksum())), row(2, None)];
        let unrecorded = verify(&ok).unwrap_or_default();
        assert_eq!(
            unrecorded.iter().map(|m| m.version).collect::<Vec<_>>(),
            [2]
        );
        let edited = [row(1, Some(vec![0; 32]))];
        match verify(&edited) {
            Err(Error::MigrationChanged { version, file, .. }) => {
                assert_eq!((version, file.as_str()), (1, "0001_init.sql"));
            }
            other => panic!(
                "expected MigrationChanged, got {:?}",
                other.map(|v| v.len())
            ),
        }
    }
}
