use warren_core::JobId;

/// What went wrong talking to PostgreSQL. The sqlx error, when there is one, is the `source()`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid Postgres URL `{url}`: {reason}")]
    Url { url: String, reason: String },

    #[error("cannot connect to Postgres at {endpoint}; is it running and does the database exist?")]
    Connect {
        endpoint: String,
        #[source]
        source: sqlx::Error,
    },

    #[error(
        "TLS with Postgres at {endpoint} failed (sslmode={mode}): the server must offer TLS \
         with a certificate that chains to a trusted root (the system's, or the URL's \
         sslrootcert=) and, for verify-full, names the URL's host; for a private CA add \
         sslrootcert=/path/to/ca.pem to the URL, or choose sslmode= yourself (require: \
         encrypted, unverified; disable: plaintext) if the network is trusted"
    )]
    Tls {
        endpoint: String,
        mode: &'static str,
        #[source]
        source: sqlx::Error,
    },

    #[error("cannot reach Postgres at {endpoint}; is it running, and is that its address?")]
    Unreachable {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },

    #[error("migration {version} ({name}) failed; the database is left at the previous version")]
    Migrate {
        version: i64,
        name: &'static str,
        #[source]
        source: sqlx::Error,
    },

    #[error(
        "migration {version} ({file}) differs from the one this database applied: its recorded \
         SHA-256 is {recorded}, this binary's is {embedded}; an applied migration must never \
         change, so restore schemas/migrations/{file} as it was (and put the change in a new \
         migration), or run the warren release that applied it"
    )]
    MigrationChanged {
        version: i64,
        file: String,
        recorded: String,
        embedded: String,
    },

    #[error(
        "the database schema is at version {found}, newer than the {known} this binary knows; upgrade warren before running it against this database"
    )]
    SchemaTooNew { found: i64, known: i64 },

    #[error(
        "the database has no Warren schema (this binary needs version {known}); run `warren migrate` against it first, with a role allowed to create tables, or start one worker with --migrate"
    )]
    NotMigrated { known: i64 },

    #[error(
        "the database schema is at version {found}, older than the {known} this binary needs; run `warren migrate` from this release against it first"
    )]
    SchemaTooOld { found: i64, known: i64 },

    #[error("cannot record the outcomes of {jobs} jobs")]
    Record {
        jobs: usize,
        #[source]
        source: sqlx::Error,
    },

    #[error("outcome not recorded ({reason}); its delivery will be redelivered")]
    Unrecorded { reason: String },

    #[error(
        "the recorder stopped before the outcome of job {job} was committed; its delivery will be redelivered"
    )]
    RecorderStopped { job: JobId },

    #[error("{what} failed")]
    Query {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },

    #[error("job {job} has a corrupt stored {field}: {reason}")]
    Corrupt {
        job: JobId,
        field: &'static str,
        reason: String,
    },
}

impl Error {
    /// True when the same call may succeed later as it is: the database was unreachable,
    /// restarting or out of connections, not refusing the data. Callers hold their work
    /// (and its delivery) and retry these; anything else is final for that data.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable { .. } | Error::RecorderStopped { .. } => true,
            Error::Connect { source, .. }
            | Error::Query { source, .. }
            | Error::Record { source, .. } => is_transient(source),
            _ => false,
        }
    }

    pub(crate) fn query(what: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
        move |source| Error::Query { what, source }
    }
}

/// Whether a database error is worth retrying as is: the connection or the server had a
/// problem, not the data. Data errors are retried row by row instead (see the recorder).
pub(crate) fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // 08: connection exception, 40: transaction rollback (serialization, deadlock),
            // 53: insufficient resources, 57: operator intervention (shutdown), 58: system error.
            ["08", "40", "53", "57", "58"]
                .iter()
                .any(|class| code.starts_with(class))
        }
        _ => false,
    }
}
