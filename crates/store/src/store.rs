use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};

use crate::Error;

/// How to reach Postgres. Built by binaries from flags; libraries never read the environment.
#[derive(Clone)]
pub struct StoreConfig {
    /// `postgres://user:pass@host:port/db`. `Debug` and [`StoreConfig::redacted_url`] hide the
    /// password, in the user info or in a `password=` parameter.
    pub url: String,
    /// Pool size. A worker keeps one connection for LISTEN, the recorder writes one batch at
    /// a time (up to four with `RecorderConfig::max_in_flight`), and the promoter, heartbeats
    /// and idempotency claims share the rest.
    /// The local server allows 100 in total, shared by every process.
    pub max_connections: u32,
    /// How long to wait for a pooled connection, and for the TCP probe on connecting.
    pub acquire_timeout: Duration,
    /// Shown in `pg_stat_activity`, to tell Warren's connections apart.
    pub application_name: String,
}

impl StoreConfig {
    /// A config for `url` with the defaults: 5 connections, a 10 s acquire timeout and the
    /// application name `warren`. Nothing is checked or connected until [`Store::connect`].
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 5,
            acquire_timeout: Duration::from_secs(10),
            application_name: "warren".to_owned(),
        }
    }

    /// Checks the URL without connecting, as [`Store::connect`] will ([`Error::Url`]).
    pub fn validate(&self) -> Result<(), Error> {
        connect_options(&self.url).map(drop)
    }

    /// The URL with every secret it can carry replaced by `***`: the password in the user
    /// info, `password=` and other secret query parameters (see `warren_core::redact`).
    pub fn redacted_url(&self) -> String {
        warren_core::redact::redact_url(&self.url)
    }
}

/// The query parameters sqlx 0.9 understands (`sqlx_postgres::options::parse`). It logs any
/// other one at WARN *with its value*, which would print a secret given under a name it does
/// not know (`sslpassword=`, a misspelt `pasword=`); so unknown ones are refused before sqlx
/// sees the URL.
const KNOWN_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// The TLS mode for a connection whose URL sets no `sslmode`, from its host; `None` when the
/// URL sets one (it is kept as given).
///
/// sqlx's own default, `prefer`, checks no certificate and falls back to plaintext without a
/// word when the server declines TLS, so an attacker on the path can read and change
/// everything. A remote host therefore gets `verify-full`: TLS is required, the certificate
/// must chain to a trusted root (the system's, or the URL's `sslrootcert`) and name the host.
/// Loopback hosts and Unix sockets get no TLS: it protects nothing there, and with sqlx 0.9.0
/// it costs dearly (sqlx no longer sets TCP_NODELAY, transact-rs/sqlx#4335, so TLS records
/// split across writes wait out a delayed ACK, about 40 ms per recorder batch).
pub(crate) fn default_ssl_mode(host: &str, url_sets_mode: bool) -> Option<PgSslMode> {
    if url_sets_mode {
        return None;
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let local = host.starts_with('/')
        || bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback());
    Some(if local {
        PgSslMode::Disable
    } else {
        PgSslMode::VerifyFull
    })
}

/// The `sslmode=` value naming `mode`, for messages.
fn ssl_mode_name(mode: PgSslMode) -> &'static str {
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

/// Parses a Postgres URL into sqlx's options, refusing parameters sqlx would ignore (and log
/// with their values), and chooses the TLS mode when the URL does not (see
/// [`default_ssl_mode`]). Errors show the URL redacted.
pub(crate) fn connect_options(url: &str) -> Result<PgConnectOptions, Error> {
    let fail = |reason: String| Error::Url {
        url: warren_core::redact::redact_url(url),
        reason,
    };
    for (n, key) in warren_core::redact::query_keys(url).iter().enumerate() {
        let known = KNOWN_PARAMETERS.contains(&key.as_str())
            || (key.starts_with("options[") && key.ends_with(']'));
        if !known {
            // The name is not shown: a secret pasted without `name=` would be one.
            return Err(fail(format!(
                "query parameter {} is not one that Warren's Postgres driver understands \
                 (its name is not shown, in case it is a secret); use only {}",
                n + 1,
                KNOWN_PARAMETERS.join(", ")
            )));
        }
    }
    let options = PgConnectOptions::from_str(url).map_err(|e| fail(e.to_string()))?;
    let url_sets_mode = warren_core::redact::query_keys(url)
        .iter()
        .any(|k| k == "sslmode" || k == "ssl-mode");
    Ok(match default_ssl_mode(options.get_host(), url_sets_mode) {
        Some(mode) => options.ssl_mode(mode),
        None => options,
    })
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("url", &self.redacted_url())
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .finish()
    }
}

/// A connection pool to Warren's database.
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) pool: PgPool,
}

impl Store {
    /// Checks the URL, probes the server over TCP and opens the pool. Errors say which of
    /// those failed ([`Error::Url`], [`Error::Unreachable`], [`Error::Tls`],
    /// [`Error::Connect`]). It does not check the schema: see [`Store::check_schema`].
    pub async fn connect(config: &StoreConfig) -> Result<Self, Error> {
        // TLS: verify-full for remote hosts, none on loopback, unless the URL says otherwise.
        // JIT off: compiling a plan costs 0.3 to 1 s, more than the admin aggregates on a
        // ten-million-row table take without it, and Warren runs no query long enough to
        // win that back (docs/benchmarks.md, "Admin reads").
        let options = connect_options(&config.url)?
            .application_name(&config.application_name)
            .options([("jit", "off")]);
        let mode = options.get_ssl_mode();
        let endpoint = format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("(default)")
        );
        // A refused connection is reported at once and as such, instead of after the pool's
        // acquire timeout as "pool timed out". Unix-socket hosts skip the probe.
        if !options.get_host().starts_with('/') {
            let addr = (options.get_host().to_owned(), options.get_port());
            match tokio::time::timeout(config.acquire_timeout, tokio::net::TcpStream::connect(addr))
                .await
            {
                Ok(Ok(_probe)) => {}
                Ok(Err(source)) => return Err(Error::Unreachable { endpoint, source }),
                Err(_) => {
                    return Err(Error::Unreachable {
                        endpoint,
                        source: std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"),
                    });
                }
            }
        }
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .acquire_timeout(config.acquire_timeout)
            .connect_with(options)
            .await
            .map_err(|source| {
                // sqlx reports a server without TLS as `Tls`, a refused certificate as an I/O
                // error of kind InvalidData (rustls' own errors).
                let tls = matches!(&source, sqlx::Error::Tls(_))
                    || matches!(&source, sqlx::Error::Io(e) if e.kind() == std::io::ErrorKind::InvalidData);
                if tls {
                    Error::Tls {
                        endpoint,
                        mode: ssl_mode_name(mode),
                        source: source.into(),
                    }
                } else {
                    Error::Connect {
                        endpoint,
                        source: source.into(),
                    }
                }
            })?;
        Ok(Self { pool })
    }

    /// Applies pending migrations under an advisory lock, so that many workers may call it
    /// at once. Refuses a database whose applied migrations were edited since
    /// ([`Error::MigrationChanged`]) or that is newer than this binary
    /// ([`Error::SchemaTooNew`]).
    pub async fn migrate(&self) -> Result<(), Error> {
        crate::migrate::run(&self.pool).await
    }

    /// Checks, read-only, that the schema is at [`crate::SCHEMA_VERSION`]: `NotMigrated`,
    /// `SchemaTooOld` or `SchemaTooNew` otherwise, each saying what to run.
    pub async fn check_schema(&self) -> Result<(), Error> {
        crate::migrate::check(&self.pool).await
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        for url in [
            "postgres://u:s3cret@h/db",
            "postgres://u@h/db?password=s3cret",
            "postgres://u@h/db?sslmode=require&sslpassword=s3cret",
            "postgres://u@h/db?pass%77ord=s3cret",
        ] {
            let config = StoreConfig::new(url);
            assert!(!format!("{config:?}").contains("s3cret"), "{url}");
            assert!(!config.redacted_url().contains("s3cret"), "{url}");
        }
        assert_eq!(
            StoreConfig::new("postgres://u@h/db").redacted_url(),
            "postgres://u@h/db"
        );
    }

    #[test]
    fn tls_is_verified_for_remote_hosts_and_off_on_loopback() {
        use PgSslMode::{Disable, VerifyFull};
        for host in [
            "localhost",
            "LocalHost",
            "127.0.0.1",
            "127.0.0.2",
            "::1",
            "[::1]",
            "::ffff:127.0.0.1",
            "/var/run/postgresql",
        ] {
            assert!(
                matches!(default_ssl_mode(host, false), Some(Disable)),
                "{host}"
            );
        }
        for host in [
            "db.example.com",
            "192.0.2.10",
            "10.0.0.5",
            "fd00::2",
            "[2001:db8::1]",
            "localhost.example.com",
        ] {
            assert!(
                matches!(default_ssl_mode(host, false), Some(VerifyFull)),
                "{host}"
            );
        }
        // An sslmode in the URL is kept, whatever the host.
        assert!(default_ssl_mode("db.example.com", true).is_none());
        assert!(default_ssl_mode("127.0.0.1", true).is_none());
    }

    #[test]
    fn the_url_decides_the_tls_mode_when_it_names_one() {
        let mode = |url: &str| format!("{:?}", connect_options(url).unwrap().get_ssl_mode());
        assert_eq!(mode("postgres://u@db.example.com/warren"), "VerifyFull");
        assert_eq!(mode("postgres://u@127.0.0.1/warren"), "Disable");
        assert_eq!(mode("postgres://u@[::1]:5432/warren"), "Disable");
        assert_eq!(
            mode("postgres://u@db.example.com/warren?sslmode=disable"),
            "Disable"
        );
        assert_eq!(
            mode("postgres://u@db.example.com/warren?ssl-mode=require"),
            "Require"
        );
        assert_eq!(
            mode("postgres://u@127.0.0.1/warren?sslmode=verify-ca"),
            "VerifyCa"
        );
        assert_eq!(
            mode("postgres://u@db.example.com/warren?sslrootcert=/etc/ca.pem"),
            "VerifyFull",
            "a CA file alone does not lower the mode"
        );
    }

    #[tokio::test]
    async fn a_url_that_does_not_parse_is_not_echoed() {
        for url in [
            "postgres://u:Zq9/Xw7@h/db",
            "postgres://u@h:notaport/db?password=Zq9Xw7",
            "Zq9Xw7",
            // sqlx would log these at WARN, values and all.
            "postgres://u@h/db?sslpassword=Zq9Xw7",
            "postgres://u@h/db?Zq9Xw7",
        ] {
            let err = Store::connect(&StoreConfig::new(url)).await.unwrap_err();
            let shown = format!("{err} {err:?}");
            assert!(matches!(err, Error::Url { .. }), "{url}: {shown}");
            assert!(
                !shown.contains("Zq9") && !shown.contains("Xw7"),
                "{url}: {shown}"
            );
        }
    }
}
