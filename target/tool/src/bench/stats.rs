//! Measurements: latency histograms, CPU time (this process and the target's), RSS.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in nanoseconds, 1 ns to 60 s, 3 significant digits (0.1 % error):
/// HdrHistogram's usual setting, about 200 KiB per histogram.
const LAT_MAX_NS: u64 = 60_000_000_000;
const LAT_SIGFIG: u8 = 3;

/// A latency histogram in nanoseconds.
pub fn new_histogram() -> Histogram<u64> {
    // Fixed, valid bounds (1 <= low, high >= 2 * low, sigfig <= 5): creation cannot fail.
    Histogram::new_with_bounds(1, LAT_MAX_NS, LAT_SIGFIG)
        .expect("invariant: the histogram bounds are constants known to be valid")
}

/// Records `d` (saturating at the histogram's top).
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    h.saturating_record(ns.clamp(1, LAT_MAX_NS));
}

/// Latency figures in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub mean_us: f64,
    pub min_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Self {
            mean_us: h.mean() / 1000.0,
            min_us: us(h.min()),
            p50_us: us(h.value_at_quantile(0.50)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// User + system CPU time of this process, all threads (getrusage RUSAGE_SELF).
pub fn self_cpu() -> Duration {
    // SAFETY: rusage is plain data, zero is a valid value; getrusage only writes into it.
    let (rc, ru) = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        let rc = libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        (rc, ru)
    };
    if rc != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU time of every thread of process `pid` in nanoseconds: the sum of the first field of
/// `/proc/PID/task/*/schedstat` (run time, ns precision; utime/stime in /proc/PID/stat count
/// 10 ms ticks, too coarse for a 5 s sample of an idle process).
pub fn proc_cpu_ns(pid: u32) -> std::io::Result<u64> {
    let mut total = 0u64;
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = e?.path().join("schedstat");
        // A thread may exit between read_dir and the read: skip it.
        let Ok(s) = std::fs::read_to_string(&path) else {
            continue;
        };
        let ns: u64 = s
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        total = total.saturating_add(ns);
    }
    Ok(total)
}

/// CPU time of every thread of every process in `pids`, in nanoseconds (a cluster's storage
/// servers together); `None` for no PIDs or when one of them cannot be read (a total missing a
/// server would understate the cost).
pub fn procs_cpu_ns(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter()
        .try_fold(0u64, |t, &p| Some(t.saturating_add(proc_cpu_ns(p).ok()?)))
}

/// Resident set size of process `pid` in KiB (`VmRSS` of /proc/PID/status).
pub fn proc_rss_kib(pid: u32) -> std::io::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vmrss_kib(&s).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("/proc/{pid}/status has no VmRSS line"),
        )
    })
}

fn parse_vmrss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_summary() {
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            record(&mut h, Duration::from_micros(us));
        }
        let l = Latency::from_histogram(&h);
        assert!((l.mean_us - 500.5).abs() < 1.0, "{l:?}");
        assert!((l.p50_us - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p99_us - 990.0).abs() < 1.5, "{l:?}");
        assert!((l.max_us - 1000.0).abs() < 1.0, "{l:?}");
        assert_eq!(
            Latency::from_histogram(&new_histogram()),
            Latency::default()
        );
    }

    #[test]
    fn vmrss_and_own_process() {
        assert_eq!(
            parse_vmrss_kib("Name:\tx\nVmRSS:\t   12345 kB\nVmSwap: 0 kB\n"),
            Some(12345)
        );
        assert_eq!(parse_vmrss_kib("Name: x\n"), None);
        let me = std::process::id();
        assert!(proc_rss_kib(me).expect("own status") > 0);
        assert!(proc_cpu_ns(me).expect("own schedstat") > 0);
        assert_eq!(procs_cpu_ns(&[]), None);
        assert!(procs_cpu_ns(&[me, me]).expect("own schedstat twice") > 0);
        assert_eq!(procs_cpu_ns(&[me, u32::MAX]), None, "one unreadable PID");
    }
}
