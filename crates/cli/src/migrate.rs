//! `warren migrate`: bring the database schema up to the version this binary knows, creating
//! the database first if asked.

use anyhow::Context;
use warren_store::{SCHEMA_VERSION, provision};

use crate::connection::ConnectionArgs;
use crate::exit::Usage;
use crate::output::emit;

/// The database that always exists on a PostgreSQL server, connected to in order to create
/// the one the URL names.
const ADMIN_DATABASE: &str = "postgres";

#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Examples:\n  warren migrate\n  WARREN_DATABASE_URL=postgres://owner@db/warren warren migrate --create-database"
)]
pub struct MigrateArgs {
    /// Create the database named in the URL first, if it does not exist (connects to the
    /// `postgres` database on the same server, with the same credentials, to do it).
    #[arg(long)]
    pub create_database: bool,
}

pub(crate) async fn run(args: MigrateArgs, connection: &ConnectionArgs) -> anyhow::Result<()> {
    let config = connection.store_config("migrate")?;
    let mut report = String::new();
    if args.create_database {
        let name = database_name(&config.url).ok_or_else(|| {
            Usage(format!(
                "--database-url / WARREN_DATABASE_URL `{}` names no database for --create-database \
                 to create; end it with /<name>",
                config.redacted_url()
            ))
        })?;
        let admin_url = provision::url_for_database(&config.url, ADMIN_DATABASE)
            .context("deriving the administration URL")?;
        provision::create_database(&admin_url, name)
            .await
            .with_context(|| format!("creating database `{name}`"))?;
        report.push_str(&format!(
            "database `{name}` exists (created if it was missing)\n"
        ));
    }
    let store = connection.store("migrate").await?;
    let migrated = store.migrate().await.context("migrating the database");
    store.close().await;
    migrated?;
    report.push_str(&format!(
        "schema of {} is at version {SCHEMA_VERSION}\n",
        config.redacted_url()
    ));
    emit(&report)
}

/// The database a PostgreSQL URL names: its path after the host, before any query. `None`
/// when it names none, which leaves the choice to the server (the user's name).
fn database_name(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let before_query = rest.split(['?', '#']).next().unwrap_or(rest);
    let (_, path) = before_query.split_once('/')?;
    (!path.is_empty()).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_database_in_a_url() {
        assert_eq!(
            database_name("postgres://u:p@h:5432/warren"),
            Some("warren")
        );
        assert_eq!(
            database_name("postgres://h/warren?sslmode=disable"),
            Some("warren")
        );
        assert_eq!(database_name("postgresql://h:5432/"), None);
        assert_eq!(database_name("postgres://h:5432"), None);
        assert_eq!(database_name("postgres://h:5432?sslmode=disable"), None);
    }
}
