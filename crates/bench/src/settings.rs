//! Flags and environment, parsed once and validated into [`Settings`], which the phases trust.

use std::num::NonZeroUsize;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::workload::MIN_PAYLOAD_BYTES;

/// Measures the broker-only ceiling (publish with confirms + consume with acks, no database)
/// and Warren end to end (enqueue, run `warren.noop`, record in PostgreSQL, ack) in one run,
/// on the same message size and durability, and prints their ratio.
#[derive(Debug, Parser)]
#[command(name = "warren-bench", version)]
pub(crate) struct Args {
    /// Jobs measured in each phase (after the warm-up).
    #[arg(long, env = "WARREN_BENCH_JOBS", default_value_t = 20_000)]
    pub(crate) jobs: u64,

    /// Size of each job's JSON payload in bytes (the AMQP message body).
    #[arg(long, env = "WARREN_BENCH_PAYLOAD_BYTES", default_value_t = 100)]
    pub(crate) payload_bytes: usize,

    /// Handlers (or, in the ceiling, acks) in flight at once.
    #[arg(long, env = "WARREN_BENCH_CONCURRENCY", default_value_t = 64)]
    pub(crate) concurrency: usize,

    /// Unacked deliveries the broker may push to a consumer.
    #[arg(long, env = "WARREN_BENCH_PREFETCH", default_value_t = 256)]
    pub(crate) prefetch: u16,

    /// Messages run through each phase before measuring, to open connections, warm caches and
    /// let RabbitMQ and Postgres settle.
    #[arg(long, env = "WARREN_BENCH_WARMUP", default_value_t = 1_000)]
    pub(crate) warmup: u64,

    /// Longest a phase may take before the run is abandoned, in seconds.
    #[arg(long, env = "WARREN_BENCH_TIMEOUT_SECS", default_value_t = 600)]
    pub(crate) timeout_secs: u64,

    /// RabbitMQ URL. The benchmark declares and deletes its own namespaced queues there.
    #[arg(
        long,
        env = "WARREN_AMQP_URL",
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub(crate) amqp_url: String,

    /// Admin PostgreSQL URL: the benchmark creates a private database on that server, and
    /// drops it at the end.
    #[arg(
        long,
        env = "WARREN_DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/postgres"
    )]
    pub(crate) database_url: String,

    /// Instead of the default phases, seed a jobs table of this many rows and time the
    /// `warren` CLI's read queries on it (docs/benchmarks.md, "Admin reads"). Ten million
    /// rows take a few minutes to seed.
    #[arg(long, env = "WARREN_BENCH_ADMIN_ROWS", value_name = "N")]
    pub(crate) admin_rows: Option<u64>,

    /// Instead of the default phases, measure the HTTP producer's enqueue (single and batch
    /// requests from `--concurrency` keep-alive clients, and latency at half the saturation
    /// rate) beside the library's `enqueue_many` (docs/benchmarks.md, "HTTP producer").
    #[arg(long, env = "WARREN_BENCH_HTTP", conflicts_with = "admin_rows")]
    pub(crate) http: bool,

    /// Jobs in each `POST /v1/jobs/batch` request, and in each library `enqueue_many` call
    /// it is compared with (`--http` only).
    #[arg(long, env = "WARREN_BENCH_HTTP_BATCH", default_value_t = 100)]
    pub(crate) http_batch: usize,

    /// With --admin-rows: seed into database NAME (on the --database-url server) and keep it,
    /// instead of a throwaway one. A later run with the same NAME and row count only migrates
    /// it and times the queries, skipping the minutes of seeding.
    #[arg(long, env = "WARREN_BENCH_ADMIN_DATABASE", value_name = "NAME")]
    pub(crate) admin_database: Option<String>,

    /// Instead of the default phases, run the limits scenario: a rate-limited task beside an
    /// unlimited one on the same queue (docs/limits.md, "Cost, measured").
    #[arg(long, env = "WARREN_BENCH_LIMITS", conflicts_with_all = ["admin_rows", "http"])]
    pub(crate) limits: bool,

    /// Also print the results as JSON after the table: one line for the whole run, or with
    /// --scenario, one line per scenario.
    #[arg(long, env = "WARREN_BENCH_JSON")]
    pub(crate) json: bool,

    /// Which scenarios to run (docs/benchmarks.md, "Scenarios"). Every one but `default` runs
    /// the broker ceiling first, the denominator of its ratios; all but `default`, `drain`,
    /// `retry` and `scheduled` run the real `warren-worker` binary, built beside this one.
    #[arg(
        long,
        env = "WARREN_BENCH_SCENARIO",
        value_enum,
        default_value_t = Scenario::Default,
        conflicts_with_all = ["admin_rows", "http", "limits"]
    )]
    pub(crate) scenario: Scenario,

    /// Steady state: how long each offered rate is held, in seconds.
    #[arg(long, env = "WARREN_BENCH_HOLD_SECS", default_value_t = 30)]
    pub(crate) hold_secs: u64,

    /// Light load: jobs enqueued per second, evenly spaced.
    #[arg(long, env = "WARREN_BENCH_LIGHT_RATE", default_value_t = 200)]
    pub(crate) light_rate: u32,

    /// Light load: jobs measured.
    #[arg(long, env = "WARREN_BENCH_LIGHT_JOBS", default_value_t = 2_000)]
    pub(crate) light_jobs: u64,

    /// Runtime threads of each worker process (passed as `TOKIO_WORKER_THREADS`); by default
    /// the runtime's own choice, one per core.
    #[arg(long, env = "WARREN_BENCH_WORKER_THREADS")]
    pub(crate) worker_threads: Option<NonZeroUsize>,
}

/// The scenarios of `--scenario`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Scenario {
    /// Ceiling, Warren end to end (drain), retry path, delayed jobs: the run before issue 13.
    Default,
    /// Ceiling and Warren end to end (drain), in-process worker.
    Drain,
    /// The highest rate a worker process sustains for the hold time.
    Steady,
    /// Enqueue→start and enqueue→recorded at a light, evenly spaced load.
    Light,
    /// Drains through 1, 2 and 4 worker processes.
    Scaling,
    /// Ceiling and Warren at 100 B, 4 KiB and 64 KiB payloads.
    Payloads,
    /// The retry path (one job in ten fails once).
    Retry,
    /// Delayed jobs spread over 4 s, and 20,000 jobs due at once.
    Scheduled,
    /// A worker process's peak RSS at concurrency 256 under full load.
    Rss,
    /// Every scenario above, the ceiling once.
    All,
}

impl Scenario {
    /// Whether this run includes `part` (`All` includes everything but `Default`'s grouping).
    pub(crate) fn includes(self, part: Scenario) -> bool {
        self == part || (self == Scenario::All && part != Scenario::Default)
    }
}

/// Everything a run needs, validated.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) jobs: u64,
    pub(crate) payload_bytes: usize,
    pub(crate) concurrency: usize,
    pub(crate) prefetch: u16,
    pub(crate) warmup: u64,
    pub(crate) phase_timeout: Duration,
    pub(crate) amqp_url: String,
    pub(crate) admin_database_url: String,
    pub(crate) json: bool,
    /// Seed this many rows and time the admin reads, instead of the default phases.
    pub(crate) admin_rows: Option<u64>,
    /// Measure the HTTP producer, instead of the default phases.
    pub(crate) http: bool,
    pub(crate) http_batch: usize,
    /// Where the admin reads keep their seeded rows between runs, if anywhere.
    pub(crate) admin_database: Option<String>,
    /// Run the limits scenario instead of the default phases.
    pub(crate) limits: bool,
    pub(crate) scenario: Scenario,
    /// Steady state: how long each offered rate is held.
    pub(crate) hold: Duration,
    /// Light load: jobs per second, and how many.
    pub(crate) light_rate: u32,
    pub(crate) light_jobs: u64,
    /// Runtime threads of each worker process, when set.
    pub(crate) worker_threads: Option<NonZeroUsize>,
    /// Cores the operating system gives this process; printed with the results because the
    /// broker, the database and the benchmark all share them.
    pub(crate) cores: usize,
}

/// The worker rejects larger bodies as bad input (its default `max_body_bytes`), so a larger
/// payload would measure the dead-letter path instead of the happy path.
const MAX_PAYLOAD_BYTES: usize = 1 << 20;

impl Args {
    /// Checks every setting and names the flag (and its variable) of the first bad one.
    pub(crate) fn validate(self) -> Result<Settings, String> {
        if self.jobs == 0 {
            return Err("--jobs / WARREN_BENCH_JOBS must be at least 1".to_owned());
        }
        if !(MIN_PAYLOAD_BYTES..=MAX_PAYLOAD_BYTES).contains(&self.payload_bytes) {
            return Err(format!(
                "--payload-bytes / WARREN_BENCH_PAYLOAD_BYTES must be {MIN_PAYLOAD_BYTES} to \
                 {MAX_PAYLOAD_BYTES} (the smallest padded JSON object to the worker's body \
                 limit), got {}",
                self.payload_bytes
            ));
        }
        if self.concurrency == 0 || self.concurrency > 10_000 {
            return Err(format!(
                "--concurrency / WARREN_BENCH_CONCURRENCY must be 1 to 10000, got {}",
                self.concurrency
            ));
        }
        if self.prefetch == 0 {
            return Err("--prefetch / WARREN_BENCH_PREFETCH must be at least 1".to_owned());
        }
        if self.admin_rows == Some(0) {
            return Err("--admin-rows / WARREN_BENCH_ADMIN_ROWS must be at least 1".to_owned());
        }
        // The producer's default batch limit (--max-batch): a larger batch would be refused.
        if !(1..=1000).contains(&self.http_batch) {
            return Err(format!(
                "--http-batch / WARREN_BENCH_HTTP_BATCH must be 1 to 1000, got {}",
                self.http_batch
            ));
        }
        if self.admin_database.is_some() && self.admin_rows.is_none() {
            return Err(
                "--admin-database / WARREN_BENCH_ADMIN_DATABASE needs --admin-rows".to_owned(),
            );
        }
        if self.hold_secs == 0 || self.hold_secs > 3_600 {
            return Err(format!(
                "--hold-secs / WARREN_BENCH_HOLD_SECS must be 1 to 3600, got {}",
                self.hold_secs
            ));
        }
        if self.light_rate == 0 || self.light_rate > 10_000 {
            return Err(format!(
                "--light-rate / WARREN_BENCH_LIGHT_RATE must be 1 to 10000 jobs/s, got {}",
                self.light_rate
            ));
        }
        if self.light_jobs == 0 {
            return Err("--light-jobs / WARREN_BENCH_LIGHT_JOBS must be at least 1".to_owned());
        }
        if self.timeout_secs == 0 {
            return Err("--timeout-secs / WARREN_BENCH_TIMEOUT_SECS must be at least 1".to_owned());
        }
        Ok(Settings {
            jobs: self.jobs,
            payload_bytes: self.payload_bytes,
            concurrency: self.concurrency,
            prefetch: self.prefetch,
            warmup: self.warmup,
            phase_timeout: Duration::from_secs(self.timeout_secs),
            amqp_url: self.amqp_url,
            admin_database_url: self.database_url,
            json: self.json,
            admin_rows: self.admin_rows,
            http: self.http,
            http_batch: self.http_batch,
            admin_database: self.admin_database,
            limits: self.limits,
            scenario: self.scenario,
            hold: Duration::from_secs(self.hold_secs),
            light_rate: self.light_rate,
            light_jobs: self.light_jobs,
            worker_threads: self.worker_threads,
            cores: std::thread::available_parallelism().map_or(1, usize::from),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Settings, String> {
        let mut argv = vec!["warren-bench"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .validate()
    }

    #[test]
    fn defaults_match_the_documented_run() {
        let s = parse(&[]).expect("defaults are valid");
        assert_eq!(s.jobs, 20_000);
        assert_eq!(s.payload_bytes, 100);
        assert_eq!(s.concurrency, 64);
        assert_eq!(s.prefetch, 256);
        assert_eq!(s.warmup, 1_000);
        assert!(!s.json);
        assert!(!s.http);
        assert_eq!(s.http_batch, 100);
        assert_eq!(s.scenario, Scenario::Default);
        assert_eq!(s.hold, Duration::from_secs(30));
        assert_eq!((s.light_rate, s.light_jobs), (200, 2_000));
        assert_eq!(s.worker_threads, None, "the workers' runtimes choose");
    }

    #[test]
    fn scenarios_parse_and_all_includes_every_one_but_the_default_grouping() {
        let s = parse(&["--scenario", "steady", "--hold-secs", "5"]).expect("valid flags");
        assert_eq!(
            (s.scenario, s.hold),
            (Scenario::Steady, Duration::from_secs(5))
        );
        assert!(Scenario::All.includes(Scenario::Rss));
        assert!(!Scenario::All.includes(Scenario::Default));
        assert!(!Scenario::Light.includes(Scenario::Steady));
        assert!(Scenario::Light.includes(Scenario::Light));
    }

    #[test]
    fn bad_values_name_their_flag() {
        let err = |args: &[&str]| parse(args).expect_err("should be refused");
        assert!(err(&["--jobs", "0"]).contains("--jobs"));
        assert!(err(&["--payload-bytes", "3"]).contains("--payload-bytes"));
        assert!(err(&["--concurrency", "0"]).contains("--concurrency"));
        assert!(err(&["--prefetch", "0"]).contains("--prefetch"));
        assert!(err(&["--http", "--http-batch", "1001"]).contains("--http-batch"));
        assert!(err(&["--http", "--admin-rows", "10"]).contains("--admin-rows"));
        assert!(err(&["--scenario", "nosuch"]).contains("--scenario"));
        assert!(err(&["--scenario", "light", "--http"]).contains("--http"));
        assert!(err(&["--hold-secs", "0"]).contains("--hold-secs"));
        assert!(err(&["--light-rate", "0"]).contains("--light-rate"));
        assert!(err(&["--light-jobs", "0"]).contains("--light-jobs"));
        assert!(err(&["--worker-threads", "0"]).contains("--worker-threads"));
    }
}
