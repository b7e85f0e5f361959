use std::fmt;

use warren_core::JobId;

/// What went wrong talking to PostgreSQL. The sqlx error, when there is one, is the `source()`
/// (as a [`SqlxError`], which keeps each cause in the chain once).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Postgres URL cannot be used: it does not parse, it has a query parameter sqlx
    /// would ignore, or (when provisioning) it names a database that is unsafe to create.
    /// Not transient.
    #[error("invalid Postgres URL `{url}`: {reason}")]
    Url {
        /// The URL with its secrets redacted, or the refused database name.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The server was reached but the pool could not connect (credentials, a missing
    /// database, too many connections). Transient when sqlx's error is.
    #[error("cannot connect to Postgres at {endpoint}; is it running and does the database exist?")]
    Connect {
        /// `host:port/database`; never the credentials.
        endpoint: String,
        /// The error sqlx reported.
        #[source]
        source: SqlxError,
    },

    /// The TLS handshake failed, or the server offers no TLS. Not transient.
    #[error(
        "TLS with Postgres at {endpoint} failed (sslmode={mode}): the server must offer TLS \
         with a certificate that chains to a trusted root (the system's, or the URL's \
         sslrootcert=) and, for verify-full, names the URL's host; for a private CA add \
         sslrootcert=/path/to/ca.pem to the URL, or choose sslmode= yourself (require: \
         encrypted, unverified; disable: plaintext) if the network is trusted"
    )]
    Tls {
        /// `host:port/database`; never the credentials.
        endpoint: String,
        /// The `sslmode` in force, given or chosen by default.
        mode: &'static str,
        /// The error sqlx reported.
        #[source]
        source: SqlxError,
    },

    /// No TCP connection could be made within the acquire timeout. Transient.
    #[error("cannot reach Postgres at {endpoint}; is it running, and is that its address?")]
    Unreachable {
        /// `host:port/database`; never the credentials.
        endpoint: String,
        /// The TCP error, or a timeout after the acquire timeout.
        #[source]
        source: std::io::Error,
    },

    /// A migration failed; the database is left at the version before it.
    #[error("migration {version} ({name}) failed; the database is left at the previous version")]
    Migrate {
        /// The migration's version number.
        version: i64,
        /// The migration's name, as in its file name.
        name: &'static str,
        /// The error sqlx reported.
        #[source]
        source: SqlxError,
    },

    /// A migration this database applied has since been edited: its checksum differs.
    #[error(
        "migration {version} ({file}) differs from the one this database applied: its recorded \
         SHA-256 is {recorded}, this binary's is {embedded}; an applied migration must never \
         change, so restore schemas/migrations/{file} as it was (and put the change in a new \
         migration), or run the warren release that applied it"
    )]
    MigrationChanged {
        /// The migration's version number.
        version: i64,
        /// The migration's file name under `schemas/migrations/`.
        file: String,
        /// The SHA-256 (hex) the database recorded when it applied the migration.
        recorded: String,
        /// The SHA-256 (hex) of the migration embedded in this binary.
        embedded: String,
    },

    /// The database was migrated by a newer Warren than this binary.
    #[error(
        "the database schema is at version {found}, newer than the {known} this binary knows; upgrade warren before running it against this database"
    )]
    SchemaTooNew {
        /// The database's schema version.
        found: i64,
        /// The newest version this binary knows, [`crate::SCHEMA_VERSION`].
        known: i64,
    },

    /// The database has no Warren schema yet.
    #[error(
        "the database has no Warren schema (this binary needs version {known}); run `warren migrate` against it first, with a role allowed to create tables, or start one worker with --migrate"
    )]
    NotMigrated {
        /// The version this binary needs, [`crate::SCHEMA_VERSION`].
        known: i64,
    },

    /// The database needs migrations this binary has.
    #[error(
        "the database schema is at version {found}, older than the {known} this binary needs; run `warren migrate` from this release against it first"
    )]
    SchemaTooOld {
        /// The database's schema version.
        found: i64,
        /// The version this binary needs, [`crate::SCHEMA_VERSION`].
        known: i64,
    },

    /// A batch of outcomes could not be written. Transient when sqlx's error is.
    #[error("cannot record the outcomes of {jobs} jobs")]
    Record {
        /// How many outcomes the failed statement carried.
        jobs: usize,
        /// The error sqlx reported.
        #[source]
        source: SqlxError,
    },

    /// This outcome's batch failed; the outcome was not written and its delivery must not
    /// be acked.
    #[error("outcome not recorded ({reason}); its delivery will be redelivered")]
    Unrecorded {
        /// The batch's error chain, shared by every outcome in it.
        reason: String,
    },

    /// The batch this call was written or read in failed (or its task stopped); nothing of
    /// it took effect, and the delivery it was for must not be acked.
    #[error("{what} failed ({reason})")]
    Batch {
        /// The step, in words, e.g. `deferring jobs over their limits`.
        what: &'static str,
        /// The batch's error chain, shared by every call in it.
        reason: String,
        /// Whether the batch failed for a reason that passes (the database away).
        transient: bool,
    },

    /// The recorder shut down before committing this outcome. Transient.
    #[error(
        "the recorder stopped before the outcome of job {job} was committed; its delivery will be redelivered"
    )]
    RecorderStopped {
        /// The job whose outcome was waiting.
        job: JobId,
    },

    /// A query failed. Transient when sqlx's error is.
    #[error("{what} failed")]
    Query {
        /// The step, in words, e.g. `reading the job to cancel`.
        what: &'static str,
        /// The error sqlx reported.
        #[source]
        source: SqlxError,
    },

    /// A stored value could not be read back, e.g. an unknown state.
    #[error("job {job} has a corrupt stored {field}: {reason}")]
    Corrupt {
        /// The job whose row is corrupt.
        job: JobId,
        /// The column that could not be read.
        field: &'static str,
        /// Why its value could not be read.
        reason: String,
    },

    /// A prune named a state whose jobs are not finished; only succeeded, dead and
    /// cancelled jobs can be deleted. Nothing was deleted.
    #[error(
        "jobs in state `{state}` cannot be pruned: only finished jobs (succeeded, dead, \
         cancelled) are deleted"
    )]
    NotPrunable {
        /// The state that was named.
        state: warren_core::JobState,
    },

    /// Another live worker process holds this worker id.
    #[error(
        "worker id `{id}` is in use by a live worker: pid {pid} on {hostname}, last heartbeat \
         at {}; give this worker another id (--worker-id, or leave it unset for a \
         generated one), or stop that worker first (a worker killed without stopping frees its \
         id once it has sent no heartbeat for {}s)",
        last_seen_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
        lost_after.as_secs()
    )]
    WorkerIdInUse {
        /// The id asked for.
        id: String,
        /// The host of the worker holding it.
        hostname: String,
        /// Its process id on that host.
        pid: i32,
        /// Its last heartbeat.
        last_seen_at: chrono::DateTime<chrono::Utc>,
        /// How long without a heartbeat makes a worker lost, and its id free.
        lost_after: std::time::Duration,
    },

    /// An aggregate over many jobs met a state it does not know (a count per state).
    #[error("a stored job state is corrupt: {reason}")]
    CorruptState {
        /// Why the state could not be read.
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
            Error::Batch { transient, .. } => *transient,
            Error::Connect { source, .. }
            | Error::Query { source, .. }
            | Error::Record { source, .. } => is_transient(&source.0),
            _ => false,
        }
    }

    pub(crate) fn query(what: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
        move |source| Error::Query {
            what,
            source: source.into(),
        }
    }
}

/// A sqlx error as the `source()` of an [`Error`], printed so that a whole chain says each
/// cause once.
///
/// sqlx's own errors print their cause in their message *and* return it as their `source()`
/// (`error returned from database: X` whose source is `X`), so an error chain printed whole,
/// as `{:#}` or a log line does, said every Postgres cause twice. This wrapper prints sqlx's
/// message and, as its source, skips a cause that message already contains. A server error
/// is printed as the server's message and SQLSTATE code: sqlx would add ` at line N`, a line
/// of Postgres' own C source, which readers take for a line of their SQL.
#[derive(Debug)]
pub struct SqlxError(pub sqlx::Error);

impl SqlxError {
    /// The error sqlx reported.
    pub fn inner(&self) -> &sqlx::Error {
        &self.0
    }
}

impl From<sqlx::Error> for SqlxError {
    fn from(e: sqlx::Error) -> Self {
        SqlxError(e)
    }
}

impl fmt::Display for SqlxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        message(&self.0, f)
    }
}

impl std::error::Error for SqlxError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        cause(&self.0)
    }
}

/// sqlx's message for `e`, or the server's message and code for a server error.
fn message(e: &sqlx::Error, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match e {
        sqlx::Error::Database(db) => {
            write!(f, "{}", db.message())?;
            if let Some(code) = db.code() {
                write!(f, " (SQLSTATE {code})")?;
            }
            Ok(())
        }
        // sqlx's own words ("pool timed out while waiting for an open connection") hide that
        // its retries of a refused connect ("too many clients", SQLSTATE 53300, or a server
        // starting up) end here too, with the server's answer dropped.
        sqlx::Error::PoolTimedOut => write!(
            f,
            "no database connection within the pool's acquire timeout: every pooled \
             connection is busy or lost, and PostgreSQL accepted no new one (it is down, \
             starting, or refusing new connections because max_connections is reached: \
             \"too many clients\")"
        ),
        other => write!(f, "{other}"),
    }
}

/// The first cause of `e` that its message does not already contain.
fn cause(e: &sqlx::Error) -> Option<&(dyn std::error::Error + 'static)> {
    if let sqlx::Error::Database(_) = e {
        // The message and code are all a server error has to say.
        return None;
    }
    let cause = std::error::Error::source(e)?;
    if e.to_string().contains(&cause.to_string()) {
        cause.source()
    } else {
        Some(cause)
    }
}

/// A bare sqlx error's whole chain, each cause once, for log lines (where no [`Error`]
/// wraps it yet).
pub(crate) fn sqlx_chain(e: &sqlx::Error) -> String {
    struct Message<'a>(&'a sqlx::Error);
    impl fmt::Display for Message<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            message(self.0, f)
        }
    }
    let mut text = Message(e).to_string();
    let mut next = cause(e);
    while let Some(c) = next {
        text.push_str(": ");
        text.push_str(&c.to_string());
        next = c.source();
    }
    text
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The chain as `{:#}` prints it, one cause per element.
    fn chain(e: &dyn std::error::Error) -> Vec<String> {
        let mut out = vec![e.to_string()];
        let mut next = e.source();
        while let Some(cause) = next {
            out.push(cause.to_string());
            next = cause.source();
        }
        out
    }

    #[test]
    fn a_chain_says_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "peer reset");
        let err = Error::query("listing workers")(sqlx::Error::Io(io));
        let links = chain(&err);
        assert_eq!(
            links,
            [
                "listing workers failed",
                "error communicating with database: peer reset"
            ]
        );
        let printed = links.join(": ");
        assert_eq!(printed.matches("peer reset").count(), 1, "{printed}");
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "peer reset");
        assert_eq!(
            sqlx_chain(&sqlx::Error::Io(io)),
            "error communicating with database: peer reset"
        );
    }

    #[test]
    fn a_cause_sqlx_does_not_print_stays_in_the_chain() {
        let err = Error::query("reading a job")(sqlx::Error::ColumnNotFound("x".to_owned()));
        assert_eq!(
            chain(&err),
            ["reading a job failed", "no column found for name: x"]
        );
    }
}
