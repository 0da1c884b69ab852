//! Daemons under test: loopback ports to give them, sibling binaries to run, and child processes
//! killed when the test ends. No crate of its own: included by the test crates that need it
//! (`#[path = ".../tests/support/daemons.rs"] mod daemons;`), so that every multi-process test
//! takes its ports the same way. Standard library only.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};

/// A loopback port for a daemon that must be told its port before it starts (a layout file, a
/// cluster map; a manager that keeps its port across a restart).
///
/// Not "bind port 0, read the number, drop the socket, reuse the number": that number comes
/// from the kernel's ephemeral range (`net.ipv4.ip_local_port_range`), which every outgoing
/// connection on the machine draws its local port from too (the test's own clients, the
/// servers' connections to the manager and to each other), so one can take it between the drop
/// and the daemon's bind; and a client retrying a connect to a dead port of that range can even
/// connect to itself (TCP simultaneous open) and hold the port a restarting daemon needs. Ports
/// outside the ephemeral range are only ever taken by an explicit bind. So: a per-process slice
/// of that stretch (by PID), each port checked free by a bind. Another process whose slice
/// overlaps can still take one first: callers retry a start that reports the address in use,
/// on fresh ports.
#[allow(clippy::panic)]
pub fn daemon_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    const SLICE: u64 = 128;
    let (eph_lo, eph_hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u64>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    // The larger stretch outside the ephemeral range: below it (from 10000, above the
    // well-known and most registered ports) or above it.
    let (lo, hi) = if eph_lo.saturating_sub(10_000) >= 65_535u64.saturating_sub(eph_hi) {
        (10_000, eph_lo)
    } else {
        (eph_hi + 1, 65_536)
    };
    let slices = (hi.saturating_sub(lo) / SLICE).max(1);
    let base = lo + (u64::from(std::process::id()) % slices) * SLICE;
    for _ in 0..SLICE {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let Ok(port) = u16::try_from(base + n % SLICE) else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {base}..{}", base + SLICE);
}

/// Binary `bin` of workspace package `package`, next to `ours` (a binary of the test's own
/// package, `env!("CARGO_BIN_EXE_...")`) in the same target directory and profile; built with
/// the `cargo` that builds the tests if it is not there (the package's tests run alone).
#[allow(clippy::panic)]
pub fn sibling_bin(ours: &Path, bin: &str, package: &str) -> PathBuf {
    let theirs = ours.with_file_name(bin);
    if !theirs.exists() {
        let release = ours
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|n| n == "release");
        let mut c = Command::new(env!("CARGO"));
        c.args(["build", "-p", package, "--bin", bin]);
        if release {
            c.arg("--release");
        }
        match c.status() {
            Ok(s) if s.success() => {}
            other => panic!("building {bin} failed: {other:?}"),
        }
    }
    theirs
}

/// `tessera-manager`, next to `ours` (see [`sibling_bin`]).
pub fn manager_bin(ours: &Path) -> PathBuf {
    sibling_bin(ours, "tessera-manager", "tessera-manager")
}

/// A child process, killed (by its PID, never by name) and reaped when the test ends.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
