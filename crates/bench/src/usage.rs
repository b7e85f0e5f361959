//! What a process has spent, read from Linux's `/proc`: CPU time (user plus system, all
//! threads) from `/proc/PID/stat`, and the peak resident set (`VmHWM`) from
//! `/proc/PID/status`. The benchmark reads its worker processes this way, and itself when the
//! worker runs in-process.

use std::time::Duration;

use anyhow::Context;

/// Clock ticks per second of `/proc/PID/stat`'s `utime` and `stime`. They are in USER_HZ,
/// which the kernel fixes at 100 for user space on every architecture Linux ships
/// (`sysconf(_SC_CLK_TCK)` returns it), whatever the kernel's own tick rate; reading it
/// through libc would add a dependency for a constant.
const TICKS_PER_SEC: f64 = 100.0;

/// One reading of a process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Sample {
    /// User plus system CPU time so far.
    pub(crate) cpu: Duration,
    /// Peak resident set size so far, in bytes.
    pub(crate) peak_rss_bytes: u64,
}

impl Sample {
    /// Reads process `pid`, or this process with `None`.
    pub(crate) fn of(pid: Option<u32>) -> anyhow::Result<Sample> {
        let dir = pid.map_or_else(|| "/proc/self".to_owned(), |p| format!("/proc/{p}"));
        let stat = std::fs::read_to_string(format!("{dir}/stat"))
            .with_context(|| format!("reading {dir}/stat (the benchmark needs Linux's /proc)"))?;
        let status = std::fs::read_to_string(format!("{dir}/status"))
            .with_context(|| format!("reading {dir}/status"))?;
        Ok(Sample {
            cpu: cpu_time(&stat).with_context(|| format!("reading the CPU time in {dir}/stat"))?,
            peak_rss_bytes: peak_rss(&status)
                .with_context(|| format!("reading VmHWM in {dir}/status"))?,
        })
    }

    /// Resets this process's peak RSS to its current RSS (`echo 5 > /proc/self/clear_refs`),
    /// so that a phase's peak is its own and not an earlier phase's. Returns whether it
    /// worked: kernels before 4.0 do not support it, and then the peak is the process's.
    pub(crate) fn reset_own_peak() -> bool {
        std::fs::write("/proc/self/clear_refs", "5").is_ok()
    }
}

/// The CPU time (user plus system) of the calling thread so far, from
/// `/proc/thread-self/stat`.
pub(crate) fn thread_cpu() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat")
        .context("reading /proc/thread-self/stat (Linux 3.17 or later)")?;
    cpu_time(&stat).context("reading the CPU time in /proc/thread-self/stat")
}

/// `utime + stime` from the contents of `/proc/PID/stat`. The command name in field 2 is in
/// parentheses and may itself hold spaces and parentheses, so fields are counted from the
/// last `)`: after it come field 3 (state) onwards, so utime (14) and stime (15) are the 12th
/// and 13th.
fn cpu_time(stat: &str) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / TICKS_PER_SEC,
    ))
}

/// `VmHWM` from the contents of `/proc/PID/status`, in bytes (the file says kB, meaning KiB).
fn peak_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let mut words = line["VmHWM:".len()..].split_ascii_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_counts_fields_from_the_last_parenthesis() {
        // A command name with a space and a parenthesis, as `(tokio (1)` could be.
        let stat = "4242 (warren (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 75 0 0 20 0 9 0 12345 100000 2000 18446744073709551615";
        assert_eq!(cpu_time(stat), Some(Duration::from_millis(3_250)));
        assert_eq!(cpu_time("4242 (short) S 1"), None);
        assert_eq!(cpu_time("no parenthesis"), None);
    }

    #[test]
    fn peak_rss_reads_vmhwm_in_kib() {
        let status =
            "Name:\twarren-worker\nVmPeak:\t  900000 kB\nVmHWM:\t   40960 kB\nVmRSS:\t 30000 kB\n";
        assert_eq!(peak_rss(status), Some(40 * 1024 * 1024));
        assert_eq!(peak_rss("Name:\tx\n"), None);
        assert_eq!(
            peak_rss("VmHWM:\t 12 MB\n"),
            None,
            "an unknown unit is not guessed"
        );
    }

    #[test]
    fn this_process_can_be_read() {
        let sample = Sample::of(None).expect("/proc/self is readable on Linux");
        assert!(sample.peak_rss_bytes > 0);
    }
}
