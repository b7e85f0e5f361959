//! Results: what a phase measured ([`Phase`]), and how a run is printed ([`Report`]), as a
//! table for people and optionally one JSON line for scripts.
//!
//! The report knows nothing of what a phase did: every phase hands back the same shape (a
//! headline throughput plus named figures), so a new phase (the retry path, the promoter's
//! lateness) is a new module returning a [`Phase`], and nothing here changes.

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

/// One table line: a label, then four right-aligned columns; no trailing blanks.
fn row(label: &str, cells: [String; 4]) -> String {
    let mut line = format!("{label:<32}");
    for cell in cells {
        line.push_str(&format!(" {cell:>9}"));
    }
    line.trim_end().to_owned()
}

fn rate(jobs: u64, elapsed: Duration) -> f64 {
    jobs as f64 / elapsed.as_secs_f64().max(f64::EPSILON)
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

    /// The table for people: a phase's headline row, then its figures indented under it.
    pub(crate) fn table(&self) -> String {
        let s = self.settings;
        let mut lines = vec![
            format!(
                "warren-bench  jobs={} payload={}B concurrency={} prefetch={} warmup={} ({} cores)",
                s.jobs, s.payload_bytes, s.concurrency, s.prefetch, s.warmup, s.cores
            ),
            row(
                "phase",
                ["jobs/s", "p50 ms", "p99 ms", "secs"].map(str::to_owned),
            ),
        ];
        let cell = |v: Option<f64>, decimals: usize| {
            v.map_or_else(String::new, |v| format!("{v:.decimals$}"))
        };
        for phase in &self.phases {
            let rate = Some(phase.jobs_per_sec());
            let secs = Some(phase.elapsed.as_secs_f64());
            let cells = [cell(rate, 0), String::new(), String::new(), cell(secs, 2)];
            lines.push(row(phase.title, cells));
            for m in &phase.measures {
                let cells = [
                    cell(m.jobs_per_sec, 0),
                    cell(m.latency.map(|l| l.p50_ms), 1),
                    cell(m.latency.map(|l| l.p99_ms), 1),
                    String::new(),
                ];
                lines.push(row(&format!("  {}", m.label), cells));
            }
        }
        if let Some(ratio) = self.ratio_percent() {
            lines.push(row(
                "ratio warren/ceiling",
                [
                    format!("{ratio:.1}%"),
                    String::new(),
                    String::new(),
                    String::new(),
                ],
            ));
        }
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    /// The same results as one JSON object, for scripts comparing runs.
    pub(crate) fn json(&self) -> Value {
        let s = self.settings;
        let phases: Vec<Value> = self
            .phases
            .iter()
            .map(|p| {
                let measures: serde_json::Map<String, Value> = p
                    .measures
                    .iter()
                    .map(|m| {
                        let value = json!({
                            "jobs_per_sec": m.jobs_per_sec,
                            "p50_ms": m.latency.map(|l| l.p50_ms),
                            "p99_ms": m.latency.map(|l| l.p99_ms),
                        });
                        (m.key.to_owned(), value)
                    })
                    .collect();
                json!({
                    "phase": p.key,
                    "jobs": p.jobs,
                    "elapsed_ms": p.elapsed.as_secs_f64() * 1000.0,
                    "jobs_per_sec": p.jobs_per_sec(),
                    "measures": measures,
                })
            })
            .collect();
        json!({
            "bench": "warren-bench",
            "jobs": s.jobs,
            "payload_bytes": s.payload_bytes,
            "concurrency": s.concurrency,
            "prefetch": s.prefetch,
            "warmup": s.warmup,
            "cores": s.cores,
            "phases": phases,
            "ratio_percent": self.ratio_percent(),
        })
    }
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
        let table = report.table();
        assert!(
            table.contains("later") && table.contains("25.0%"),
            "{table}"
        );
        assert_eq!(report.json()["phases"][2]["measures"]["lat"]["p50_ms"], 1.5);
    }
}
