//! Results: what a phase measured ([`Phase`]), and how a run is printed ([`Report`]), as a
//! table for people and optionally one JSON line for scripts.
//!
//! The report knows nothing of what a phase did: every phase hands back the same shape (a
//! headline throughput plus named figures), so a new phase (the retry path, the promoter's
//! lateness) is a new module returning a [`Phase`], and nothing here changes.
//!
//! The scenarios of issue 13 add columns: each row's share of the broker ceiling and what the
//! Warren processes spent on it (CPU seconds per 10,000 jobs, peak RSS). Those travel beside
//! the phases as [`Extra`]s, keyed by phase and measure, rather than as fields of [`Phase`]
//! and [`Measure`], which other modes build field by field; a run without extras prints the
//! four-column table it always did.

use std::time::Duration;

use serde_json::{Value, json};

use crate::settings::Settings;

/// Key of the broker-only phase, the denominator of the ratio.
pub(crate) const CEILING: &str = "ceiling";
/// Key of the Warren end-to-end phase, the numerator of the ratio.
pub(crate) const END_TO_END: &str = "end_to_end";

/// Median and 99th percentile of a latency distribution, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Latency {
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

impl Latency {
    /// Percentiles of `samples` (sorted in place), interpolated between neighbours exactly as
    /// Postgres's `percentile_cont` does, so the phases that compute latencies here and the
    /// ones that ask Postgres agree on what p99 means. `None` without samples.
    pub(crate) fn of(samples: &mut [f64]) -> Option<Latency> {
        samples.sort_by(f64::total_cmp);
        Some(Latency {
            p50_ms: percentile_cont(samples, 0.50)?,
            p99_ms: percentile_cont(samples, 0.99)?,
        })
    }
}

fn percentile_cont(sorted: &[f64], fraction: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let position = fraction * last as f64;
    let below = position.floor() as usize;
    let above = position.ceil() as usize;
    let weight = position - below as f64;
    Some(sorted[below] + (sorted[above] - sorted[below]) * weight)
}

/// One named figure of a phase: a throughput, a latency distribution, or both.
#[derive(Clone, Debug)]
pub(crate) struct Measure {
    /// Stable name in the JSON output.
    pub(crate) key: &'static str,
    /// How the table names it.
    pub(crate) label: &'static str,
    pub(crate) jobs_per_sec: Option<f64>,
    pub(crate) latency: Option<Latency>,
}

impl Measure {
    pub(crate) fn rate(
        key: &'static str,
        label: &'static str,
        jobs: u64,
        elapsed: Duration,
    ) -> Self {
        Measure {
            key,
            label,
            jobs_per_sec: Some(rate(jobs, elapsed)),
            latency: None,
        }
    }

    pub(crate) fn latency(
        key: &'static str,
        label: &'static str,
        latency: Option<Latency>,
    ) -> Self {
        Measure {
            key,
            label,
            jobs_per_sec: None,
            latency,
        }
    }
}

/// What one phase measured: `jobs` through the whole path in `elapsed`, and its details.
#[derive(Clone, Debug)]
pub(crate) struct Phase {
    /// Stable name in the JSON output; [`CEILING`] and [`END_TO_END`] make the ratio.
    pub(crate) key: &'static str,
    pub(crate) title: &'static str,
    pub(crate) jobs: u64,
    pub(crate) elapsed: Duration,
    pub(crate) measures: Vec<Measure>,
}

impl Phase {
    pub(crate) fn jobs_per_sec(&self) -> f64 {
        rate(self.jobs, self.elapsed)
    }
}

/// What the Warren processes spent while a row's jobs ran: the worker processes' CPU, or
/// this process's when the worker runs in it (then the producer's share is included).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Usage {
    /// User plus system CPU seconds.
    pub(crate) cpu_secs: f64,
    /// The jobs those seconds bought.
    pub(crate) jobs: u64,
    /// The highest resident set size (VmHWM) of a worker process, in bytes, when known.
    pub(crate) peak_rss_bytes: Option<u64>,
}

impl Usage {
    /// CPU seconds per 10,000 jobs, the unit the table uses.
    pub(crate) fn cpu_per_10k(&self) -> Option<f64> {
        (self.jobs > 0).then(|| self.cpu_secs * 10_000.0 / self.jobs as f64)
    }
}

/// The extra columns of one table row: the ceiling it is compared with and what it cost.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Extra {
    /// The phase's key.
    pub(crate) phase: &'static str,
    /// The measure's key, or `None` for the phase's headline row.
    pub(crate) measure: Option<&'static str>,
    /// Jobs/s of the broker ceiling this row is a share of (the same run's, at the same
    /// payload size); `None` when the row's rate is not a capacity (a paced load).
    pub(crate) ceiling_jobs_per_sec: Option<f64>,
    pub(crate) usage: Option<Usage>,
}

impl Extra {
    /// The extras of a phase's headline row.
    pub(crate) fn phase(phase: &'static str, ceiling: Option<f64>, usage: Option<Usage>) -> Self {
        Extra {
            phase,
            measure: None,
            ceiling_jobs_per_sec: ceiling,
            usage,
        }
    }

    /// The extras of one measure's row.
    pub(crate) fn measure(
        phase: &'static str,
        measure: &'static str,
        ceiling: Option<f64>,
        usage: Option<Usage>,
    ) -> Self {
        Extra {
            phase,
            measure: Some(measure),
            ceiling_jobs_per_sec: ceiling,
            usage,
        }
    }

    /// `jobs_per_sec` as a percentage of this row's ceiling.
    fn percent_of_ceiling(&self, jobs_per_sec: Option<f64>) -> Option<f64> {
        let ceiling = self.ceiling_jobs_per_sec.filter(|c| *c > 0.0)?;
        Some(100.0 * jobs_per_sec? / ceiling)
    }

    /// The JSON fields this row adds.
    fn json(&self, jobs_per_sec: Option<f64>) -> Value {
        json!({
            "ceiling_jobs_per_sec": self.ceiling_jobs_per_sec,
            "ceiling_percent": self.percent_of_ceiling(jobs_per_sec),
            "cpu_secs": self.usage.map(|u| u.cpu_secs),
            "cpu_secs_per_10k_jobs": self.usage.and_then(|u| u.cpu_per_10k()),
            "peak_rss_bytes": self.usage.and_then(|u| u.peak_rss_bytes),
        })
    }
}

/// A phase together with the extra columns of its rows.
#[derive(Clone, Debug)]
pub(crate) struct Measured {
    pub(crate) phase: Phase,
    pub(crate) extras: Vec<Extra>,
}

impl From<Phase> for Measured {
    fn from(phase: Phase) -> Self {
        Measured {
            phase,
            extras: Vec::new(),
        }
    }
}

/// One table line: a label, then right-aligned columns; no trailing blanks.
fn row<const N: usize>(label: &str, cells: [String; N]) -> String {
    let mut line = format!("{label:<32}");
    for cell in cells {
        line.push_str(&format!(" {cell:>9}"));
    }
    line.trim_end().to_owned()
}

fn rate(jobs: u64, elapsed: Duration) -> f64 {
    jobs as f64 / elapsed.as_secs_f64().max(f64::EPSILON)
}

fn cell(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(String::new, |v| format!("{v:.decimals$}"))
}

/// A whole run: its settings and its phases, in the order they ran.
#[derive(Debug)]
pub(crate) struct Report<'a> {
    pub(crate) settings: &'a Settings,
    pub(crate) phases: Vec<Phase>,
}

impl Report<'_> {
    fn phase(&self, key: &str) -> Option<&Phase> {
        self.phases.iter().find(|p| p.key == key)
    }

    /// Warren's end-to-end throughput as a percentage of the broker-only ceiling.
    pub(crate) fn ratio_percent(&self) -> Option<f64> {
        let ceiling = self.phase(CEILING)?.jobs_per_sec();
        let warren = self.phase(END_TO_END)?.jobs_per_sec();
        (ceiling > 0.0).then(|| 100.0 * warren / ceiling)
    }

    /// The table for people: a phase's headline row, then its figures indented under it,
    /// with the extra columns (% of ceiling, CPU s per 10k jobs, peak RSS) when `extras` has
    /// any; without, the four columns the other modes print.
    pub(crate) fn table_with(&self, extras: &[Extra]) -> String {
        let s = self.settings;
        let wide = !extras.is_empty();
        let mut lines = vec![format!(
            "warren-bench  jobs={} payload={}B concurrency={} prefetch={} warmup={} ({} cores)",
            s.jobs, s.payload_bytes, s.concurrency, s.prefetch, s.warmup, s.cores
        )];
        let line = |label: &str,
                    rate: Option<f64>,
                    latency: Option<Latency>,
                    secs: Option<f64>,
                    extra: Option<&Extra>| {
            let (p50, p99) = (latency.map(|l| l.p50_ms), latency.map(|l| l.p99_ms));
            if !wide {
                return row(
                    label,
                    [cell(rate, 0), cell(p50, 1), cell(p99, 1), cell(secs, 2)],
                );
            }
            let usage = extra.and_then(|e| e.usage);
            let percent = extra.and_then(|e| e.percent_of_ceiling(rate));
            row(
                label,
                [
                    cell(rate, 0),
                    percent.map_or_else(String::new, |p| format!("{p:.1}%")),
                    cell(p50, 1),
                    cell(p99, 1),
                    cell(usage.and_then(|u| u.cpu_per_10k()), 2),
                    cell(
                        usage
                            .and_then(|u| u.peak_rss_bytes)
                            .map(|b| b as f64 / (1024.0 * 1024.0)),
                        1,
                    ),
                    cell(secs, 2),
                ],
            )
        };
        lines.push(if wide {
            row(
                "phase",
                [
                    "jobs/s", "% ceil", "p50 ms", "p99 ms", "cpu/10k", "rss MiB", "secs",
                ]
                .map(str::to_owned),
            )
        } else {
            row(
                "phase",
                ["jobs/s", "p50 ms", "p99 ms", "secs"].map(str::to_owned),
            )
        });
        let find = |phase: &str, measure: Option<&str>| {
            extras
                .iter()
                .find(|e| e.phase == phase && e.measure == measure)
        };
        for phase in &self.phases {
            lines.push(line(
                phase.title,
                Some(phase.jobs_per_sec()),
                None,
                Some(phase.elapsed.as_secs_f64()),
                find(phase.key, None),
            ));
            for m in &phase.measures {
                lines.push(line(
                    &format!("  {}", m.label),
                    m.jobs_per_sec,
                    m.latency,
                    None,
                    find(phase.key, Some(m.key)),
                ));
            }
        }
        if let Some(ratio) = self.ratio_percent() {
            lines.push(row("ratio warren/ceiling", [format!("{ratio:.1}%")]));
        }
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    /// The same results as one JSON object, for scripts comparing runs, with each row's
    /// extra columns where `extras` has them.
    pub(crate) fn json_with(&self, extras: &[Extra]) -> Value {
        let mut run = self.header();
        run["phases"] = self.phases.iter().map(|p| phase_json(p, extras)).collect();
        run["ratio_percent"] = json!(self.ratio_percent());
        run
    }

    /// One JSON object per phase, each with the run's settings: the lines `--scenario` runs
    /// print, one per scenario.
    pub(crate) fn json_lines(&self, extras: &[Extra]) -> Vec<Value> {
        self.phases
            .iter()
            .map(|p| {
                let mut line = self.header();
                line["scenario"] = json!(p.key);
                line["phase"] = phase_json(p, extras);
                line
            })
            .collect()
    }

    /// The settings every JSON line starts with.
    fn header(&self) -> Value {
        let s = self.settings;
        json!({
            "bench": "warren-bench",
            "jobs": s.jobs,
            "payload_bytes": s.payload_bytes,
            "concurrency": s.concurrency,
            "prefetch": s.prefetch,
            "warmup": s.warmup,
            "cores": s.cores,
        })
    }
}

/// A phase as JSON, its measures keyed by name, with the extra fields where `extras` has them.
fn phase_json(p: &Phase, extras: &[Extra]) -> Value {
    let find = |measure: Option<&str>| {
        extras
            .iter()
            .find(|e| e.phase == p.key && e.measure == measure)
    };
    let with_extra = |mut value: Value, extra: Option<&Extra>, rate: Option<f64>| {
        if let (Some(extra), Value::Object(fields)) = (extra, &mut value)
            && let Value::Object(more) = extra.json(rate)
        {
            fields.extend(more);
        }
        value
    };
    let measures: serde_json::Map<String, Value> = p
        .measures
        .iter()
        .map(|m| {
            let value = json!({
                "jobs_per_sec": m.jobs_per_sec,
                "p50_ms": m.latency.map(|l| l.p50_ms),
                "p99_ms": m.latency.map(|l| l.p99_ms),
            });
            let value = with_extra(value, find(Some(m.key)), m.jobs_per_sec);
            (m.key.to_owned(), value)
        })
        .collect();
    let value = json!({
        "phase": p.key,
        "jobs": p.jobs,
        "elapsed_ms": p.elapsed.as_secs_f64() * 1000.0,
        "jobs_per_sec": p.jobs_per_sec(),
        "measures": measures,
    });
    with_extra(value, find(None), Some(p.jobs_per_sec()))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn percentiles_interpolate_like_postgres() {
        // SELECT percentile_cont(0.5|0.99) WITHIN GROUP (ORDER BY x) FROM (VALUES (1),(2),(3),(10)) v(x)
        // gives 2.5 and 9.79.
        let l = Latency::of(&mut [10.0, 1.0, 3.0, 2.0]).expect("has samples");
        assert!((l.p50_ms - 2.5).abs() < 1e-9);
        assert!((l.p99_ms - 9.79).abs() < 1e-9);
        assert_eq!(
            Latency::of(&mut [7.0]),
            Some(Latency {
                p50_ms: 7.0,
                p99_ms: 7.0
            })
        );
        assert_eq!(Latency::of(&mut []), None);
    }

    fn phase(key: &'static str, jobs: u64, secs: u64) -> Phase {
        Phase {
            key,
            title: key,
            jobs,
            elapsed: Duration::from_secs(secs),
            measures: vec![Measure::latency(
                "lat",
                "latency",
                Latency::of(&mut [1.0, 2.0]),
            )],
        }
    }

    #[test]
    fn ratio_is_warren_over_ceiling_and_every_phase_is_printed() {
        let settings = crate::settings::Args::try_parse_from(["warren-bench"])
            .map_err(|e| e.to_string())
            .and_then(crate::settings::Args::validate)
            .expect("defaults are valid");
        let report = Report {
            settings: &settings,
            phases: vec![
                phase(CEILING, 1000, 1),
                phase(END_TO_END, 1000, 4),
                phase("later", 10, 1),
            ],
        };
        assert_eq!(report.ratio_percent(), Some(25.0));
        let table = report.table_with(&[]);
        assert!(
            table.contains("later") && table.contains("25.0%"),
            "{table}"
        );
        assert_eq!(
            report.json_with(&[])["phases"][2]["measures"]["lat"]["p50_ms"],
            1.5
        );
    }

    #[test]
    fn extras_add_the_share_of_the_ceiling_cpu_and_memory() {
        let settings = crate::settings::Args::try_parse_from(["warren-bench"])
            .map_err(|e| e.to_string())
            .and_then(crate::settings::Args::validate)
            .expect("defaults are valid");
        let report = Report {
            settings: &settings,
            phases: vec![phase(CEILING, 1000, 1), phase("steady", 1600, 2)],
        };
        let usage = Usage {
            cpu_secs: 1.2,
            jobs: 1600,
            peak_rss_bytes: Some(48 << 20),
        };
        assert_eq!(usage.cpu_per_10k(), Some(7.5));
        let extras = [
            Extra::phase("steady", Some(1000.0), Some(usage)),
            Extra::measure("steady", "lat", None, None),
        ];
        let table = report.table_with(&extras);
        let steady = table
            .lines()
            .find(|l| l.starts_with("steady"))
            .expect("a steady row");
        let cells: Vec<&str> = steady.split_whitespace().collect();
        assert_eq!(
            cells,
            ["steady", "800", "80.0%", "7.50", "48.0", "2.00"],
            "{table}"
        );
        assert!(
            table.contains("cpu/10k") && table.contains("rss MiB"),
            "{table}"
        );

        let lines = report.json_lines(&extras);
        assert_eq!(lines.len(), 2, "one line per scenario");
        let steady = &lines[1];
        assert_eq!(steady["scenario"], "steady");
        assert_eq!(steady["phase"]["ceiling_percent"], 80.0);
        assert_eq!(steady["phase"]["cpu_secs_per_10k_jobs"], 7.5);
        assert_eq!(steady["phase"]["peak_rss_bytes"], 48 << 20);
        assert_eq!(
            steady["phase"]["measures"]["lat"]["ceiling_percent"],
            Value::Null
        );
        assert_eq!(
            lines[0]["phase"].get("cpu_secs"),
            None,
            "no extras, no fields"
        );
    }
}
