//! The map generation check (docs/cluster-protocol.md, "The generation on the wire").
//!
//! Every stamped NVM I/O command carries the sender's map generation in CDW2/CDW3. It is compared
//! with this server's generation before the command runs: equal runs; older completes with
//! SCT 7h / SC 80h "stale map" and our generation in CQE DW0/DW1; newer completes with SC 81h
//! "server behind" and a Command Retry Delay. A standalone server (no manager) answers 81h at
//! once: no manager will ever bring its generation forward, so waiting would only stall the
//! command ([`GenerationState::behind_wait_ms`] stays 0; only cluster mode sets it, to wait a
//! bounded time for the newer map first). Unstamped commands (0) are accepted on host-facing
//! controllers, where a standard Linux host always sends 0, and rejected on internal
//! connections. Every mismatch is counted once and shown in vendor log page C0h.

use std::sync::atomic::{AtomicU64, Ordering};

use codec::nvme::Status;

use super::node::admission::{self, Stamp};

/// Index into Identify Controller CRDT1..3 that "server behind" completions carry in CRD; CRDT1
/// is advertised as [`SERVER_BEHIND_RETRY_DELAY_100MS`].
pub const SERVER_BEHIND_CRD: u8 = 1;
/// Retry delay advertised in CRDT1, in units of 100 ms (NVMe Base 2.0, Identify Controller CRDT1).
pub const SERVER_BEHIND_RETRY_DELAY_100MS: u16 = 1;

/// A generation check that failed: the status to complete with and CQE DW0/DW1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    pub status: Status,
    pub dw0: u32,
    pub dw1: u32,
}

/// One mismatch, as reported to the management service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MismatchReport {
    pub kind: MismatchKind,
    pub stamp: u64,
    pub current: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MismatchKind {
    Stale,
    Behind,
    Unstamped,
}

/// Reports queued for the reporter task at most; past it they are counted as dropped (the
/// counters in log C0h stay exact).
pub const REPORT_QUEUE_MAX: usize = 1024;

/// This server's generation and the mismatch counters behind vendor log page C0h.
#[derive(Debug, Default)]
pub struct GenerationState {
    current: AtomicU64,
    pub stale_seen: AtomicU64,
    pub behind_seen: AtomicU64,
    pub unstamped_rejected: AtomicU64,
    pub reports_sent: AtomicU64,
    pub reports_dropped: AtomicU64,
    pub checked: AtomicU64,
    /// Woken on every install (commands waiting for a newer map).
    installed: tokio::sync::Notify,
    /// Where mismatch reports go (cluster mode); none for a standalone server.
    reports: std::sync::OnceLock<tokio::sync::mpsc::Sender<MismatchReport>>,
    /// How long a command stamped ahead of us waits for our map to catch up (0: not at all).
    /// 0 unless [`GenerationState::set_behind_wait`] is called, which only cluster mode does:
    /// a standalone target has no manager to catch up from and answers 81h at once.
    pub behind_wait_ms: AtomicU64,
}

impl GenerationState {
    pub fn new(generation: u64) -> Self {
        let s = Self::default();
        s.current.store(generation, Ordering::Release);
        s
    }

    pub fn current(&self) -> u64 {
        self.current.load(Ordering::Acquire)
    }

    /// Installs a new generation (the cluster's map push). Generations only move forward.
    pub fn install(&self, generation: u64) {
        self.current.fetch_max(generation, Ordering::AcqRel);
        self.installed.notify_waiters();
    }

    /// Waits until this server is at `generation` or later, at most `timeout`.
    pub async fn wait_for(&self, generation: u64, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.installed.notified();
            if self.current() >= generation {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.current() >= generation;
            }
        }
    }

    /// Lets commands stamped ahead of us wait up to `wait` for our map (cluster mode only).
    pub fn set_behind_wait(&self, wait: std::time::Duration) {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        self.behind_wait_ms.store(ms, Ordering::Relaxed);
    }

    /// How long a command stamped ahead of us may wait for our map; `None` (answer 81h at
    /// once) on a standalone target.
    pub fn behind_wait(&self) -> Option<std::time::Duration> {
        match self.behind_wait_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(std::time::Duration::from_millis(ms)),
        }
    }

    /// Sends mismatch reports to `tx` from now on (cluster mode).
    pub fn set_reporter(&self, tx: tokio::sync::mpsc::Sender<MismatchReport>) {
        let _ = self.reports.set(tx);
    }

    fn report(&self, kind: MismatchKind, stamp: u64, current: u64) {
        if let Some(tx) = self.reports.get()
            && tx
                .try_send(MismatchReport {
                    kind,
                    stamp,
                    current,
                })
                .is_err()
        {
            self.reports_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Checks one command's stamp. `internal` connections must stamp every command. Counts
    /// (and reports) what it finds; a command that then waits for our map is checked again
    /// with [`GenerationState::recheck_after_wait`], which does not count it twice.
    pub fn check(&self, stamp: u64, internal: bool) -> Result<(), Mismatch> {
        self.judge(stamp, internal, true)
    }

    /// Checks again a command that [`GenerationState::check`] found stamped ahead of us and
    /// that then waited for our map. Its "behind" was counted and reported then (log C0h: a
    /// newer stamp is counted whether it ran after the wait or got 81h), so a verdict that is
    /// still "behind" is not counted again, nor is the stamp counted as checked twice. A stamp
    /// our map has overtaken meanwhile is counted as stale: that is a new answer (80h).
    pub fn recheck_after_wait(&self, stamp: u64, internal: bool) -> Result<(), Mismatch> {
        self.judge(stamp, internal, false)
    }

    fn judge(&self, stamp: u64, internal: bool, first: bool) -> Result<(), Mismatch> {
        Mismatch::of(self.verdict(stamp, internal, first))
    }

    /// The stamp rule (`node::admission::compare`) against our generation, counted and
    /// reported: `first` is false for a command checked again after it waited for our map
    /// (see [`GenerationState::recheck_after_wait`]).
    pub fn verdict(&self, stamp: u64, internal: bool, first: bool) -> Stamp {
        let cur = self.current();
        let v = admission::compare(stamp, cur, internal);
        if first && stamp != 0 {
            self.checked.fetch_add(1, Ordering::Relaxed);
        }
        match v {
            Stamp::Current => {}
            Stamp::Unstamped { .. } => {
                self.unstamped_rejected.fetch_add(1, Ordering::Relaxed);
                self.report(MismatchKind::Unstamped, 0, cur);
            }
            Stamp::Stale { .. } => {
                self.stale_seen.fetch_add(1, Ordering::Relaxed);
                self.report(MismatchKind::Stale, stamp, cur);
            }
            Stamp::Ahead { .. } => {
                if first {
                    self.behind_seen.fetch_add(1, Ordering::Relaxed);
                    self.report(MismatchKind::Behind, stamp, cur);
                }
            }
        }
        v
    }
}

impl Mismatch {
    /// The completion for a stamp verdict (`Ok` for [`Stamp::Current`]).
    pub fn of(v: Stamp) -> Result<(), Mismatch> {
        let (status, cur) = match v {
            Stamp::Current => return Ok(()),
            Stamp::Unstamped { current } => (Status::INVALID_FIELD.with_dnr(), current),
            Stamp::Stale { current } => (Status::STALE_MAP, current),
            Stamp::Ahead { current } => {
                (Status::SERVER_BEHIND.with_crd(SERVER_BEHIND_CRD), current)
            }
        };
        Err(Mismatch {
            status,
            dw0: low(cur),
            dw1: high(cur),
        })
    }
}

fn low(v: u64) -> u32 {
    // Truncation intended: the low 32 bits go in DW0.
    #[allow(clippy::cast_possible_truncation)]
    let l = v as u32;
    l
}

fn high(v: u64) -> u32 {
    low(v >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_runs_older_is_stale_newer_is_behind() {
        let g = GenerationState::new(7);
        assert_eq!(g.check(7, true), Ok(()));
        let e = g.check(6, true).expect_err("older stamp must be refused");
        assert!(e.status.same_code(Status::STALE_MAP));
        assert!(!e.status.dnr(), "stale map is retryable");
        assert_eq!((e.dw0, e.dw1), (7, 0));
        let e = g.check(8, false).expect_err("newer stamp must be refused");
        assert!(e.status.same_code(Status::SERVER_BEHIND));
        assert_eq!(e.status.crd(), SERVER_BEHIND_CRD);
        assert_eq!(g.stale_seen.load(Ordering::Relaxed), 1);
        assert_eq!(g.behind_seen.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn unstamped_is_accepted_from_hosts_and_refused_internally() {
        let g = GenerationState::new(1 << 40);
        assert_eq!(g.check(0, false), Ok(()));
        let e = g
            .check(0, true)
            .expect_err("internal commands must be stamped");
        assert_eq!((e.dw0, e.dw1), (0, 1 << 8));
        assert_eq!(g.unstamped_rejected.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_standalone_state_never_waits_and_a_recheck_counts_nothing_twice() {
        let g = GenerationState::new(3);
        assert_eq!(g.behind_wait(), None, "standalone: 81h at once");
        assert_eq!(g.behind_wait_ms.load(Ordering::Relaxed), 0);
        let e = g.check(4, false).expect_err("newer");
        assert!(e.status.same_code(Status::SERVER_BEHIND));
        // Waited, still behind: the same answer, not counted again.
        let e = g.recheck_after_wait(4, false).expect_err("still newer");
        assert!(e.status.same_code(Status::SERVER_BEHIND));
        assert_eq!(g.behind_seen.load(Ordering::Relaxed), 1);
        assert_eq!(g.checked.load(Ordering::Relaxed), 1);
        // Waited, caught up: runs.
        g.install(4);
        assert_eq!(g.recheck_after_wait(4, false), Ok(()));
        // Waited, overtaken: stale, counted as such.
        g.install(6);
        let e = g.recheck_after_wait(5, false).expect_err("overtaken");
        assert!(e.status.same_code(Status::STALE_MAP));
        assert_eq!(g.stale_seen.load(Ordering::Relaxed), 1);
        assert_eq!(g.behind_seen.load(Ordering::Relaxed), 1);
        g.set_behind_wait(std::time::Duration::from_secs(2));
        assert_eq!(g.behind_wait(), Some(std::time::Duration::from_secs(2)));
    }

    #[test]
    fn generation_only_moves_forward() {
        let g = GenerationState::new(5);
        g.install(4);
        assert_eq!(g.current(), 5);
        g.install(9);
        assert_eq!(g.current(), 9);
    }
}
