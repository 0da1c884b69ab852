//! `tessera bench`: an NVMe/TCP load generator in the spirit of SPDK's `spdk_nvme_perf`, driving
//! the project's own initiator, plus the machine baselines it is judged against.
//!
//! Part of the `tessera` tool's crate (target/tool), not of the daemon. Layout:
//! * `workload` — offsets (seeded xorshift, aligned to the block size) and the read/write mix;
//! * `pattern`  — the verify pattern (LBA, generation) and the per-block version map;
//! * `run`      — the NVMe workload: one controller, `--queues` I/O queues, `--qd` commands each;
//! * `baseline` — the plain TCP stream and ping-pong (the "limit of this machine");
//! * `hold`     — many idle connections, for the target's RSS and idle CPU;
//! * `cluster`  — runs through a cluster server's portal (servers, forwarded share) and getting
//!   a test cluster ready (acks, extent placement);
//! * `stats`    — latency histograms, CPU time (own and the target's), RSS;
//! * `report`   — JSON records and the markdown table `ci/bench` prints.
//!
//! Threading: pinned with `--core`. The admin queue (and its keep-alive) runs on a
//! current-thread tokio runtime; the I/O queues are `DirectQueue`s driven by one polling loop on
//! a second thread (`run`), like `spdk_nvme_perf`: no task, channel or allocation per I/O, and
//! no sleep in epoll while I/O is in flight (`--poll-us`). The CPU time the tool reports per
//! I/O is therefore a full core divided by the IOPS whenever the loop polls.

pub mod baseline;
pub mod cluster;
pub mod hold;
pub mod pattern;
pub mod report;
pub mod run;
pub mod stats;
pub mod workload;

use std::time::Duration;

/// Extra time a run may take past its planned end before it is declared hung: commands have no
/// per-command timeout in the tool (a timer per I/O costs more than the I/O at QD32), so this
/// one watchdog bounds the whole run instead.
pub const RUN_GRACE: Duration = Duration::from_secs(30);

/// Pins the calling thread (and the threads it starts later) to `cpu`: the one bounded
/// implementation the target's reactors use too (an absent or out-of-range CPU is an error that
/// names the CPUs this process may use).
pub use hw::sys::pin_to_cpu;

/// The single-threaded runtime every mode of the tool runs on (the target's reactors use the
/// same kind, so the baselines measure the same machinery).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Parses a size such as `4096`, `4k`, `4K`, `128KiB`, `1M` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with an optional K/M/G suffix"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        _ => return Err(format!("{s:?}: unknown unit (use K, M or G: binary units)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?}: size too large"))
}

/// A block size for humans: `4K`, `128K`, `512`.
pub fn fmt_size(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{}M", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{}K", bytes >> 10)
    } else {
        bytes.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("128K"), Ok(131_072));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert!(parse_size("4KB").is_err());
        assert!(parse_size("k").is_err());
        assert_eq!(fmt_size(4096), "4K");
        assert_eq!(fmt_size(131_072), "128K");
        assert_eq!(fmt_size(512), "512");
        assert_eq!(fmt_size(1 << 20), "1M");
    }
}
