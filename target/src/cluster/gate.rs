//! The install gate of a cluster node: I/O passes through it; installing a map generation that
//! takes extents away from this server closes it, waits for the I/O inside to finish, does the
//! final copy of the moving extents, installs, and opens it again (docs/cluster-protocol.md,
//! "Moving an extent"). Commands that arrive while it is closed wait, then re-check their
//! generation stamp against the new map.
//!
//! Cost on the I/O path: one atomic increment and one decrement per command (no lock).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Notify;

/// The longest a command waits at a closed gate (docs/cluster-protocol.md, "Bounds"); then it
/// is answered without running (a host: a retryable path error; a peer: "server behind" with
/// a retry delay), whatever the install that closed the gate still has to do.
pub const GATE_WAIT: std::time::Duration =
    std::time::Duration::from_millis(super::node::policy::GATE_WAIT_MS);

#[derive(Debug, Default)]
pub struct Gate {
    closed: AtomicBool,
    inside: AtomicU64,
    opened: Notify,
    drained: Notify,
}

/// Held by a command while it runs; leaving the gate on drop.
#[derive(Debug)]
pub struct Pass(Arc<Gate>);

impl Drop for Pass {
    fn drop(&mut self) {
        if self.0.inside.fetch_sub(1, Ordering::AcqRel) == 1
            && self.0.closed.load(Ordering::Acquire)
        {
            self.0.drained.notify_waiters();
        }
    }
}

impl Gate {
    /// Enters if open.
    pub fn try_enter(self: &Arc<Self>) -> Option<Pass> {
        self.inside.fetch_add(1, Ordering::AcqRel);
        if self.closed.load(Ordering::Acquire) {
            // Back out; the closer may be waiting for us.
            if self.inside.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.drained.notify_waiters();
            }
            return None;
        }
        Some(Pass(Arc::clone(self)))
    }

    /// Waits until the gate is open, then enters.
    pub async fn enter(self: &Arc<Self>) -> Pass {
        loop {
            let opened = self.opened.notified();
            if let Some(p) = self.try_enter() {
                return p;
            }
            opened.await;
        }
    }

    /// [`Gate::enter`], giving up after `limit`: `None` if the gate stayed closed that long.
    pub async fn enter_within(self: &Arc<Self>, limit: std::time::Duration) -> Option<Pass> {
        tokio::time::timeout(limit, self.enter()).await.ok()
    }

    /// Closes the gate and waits until every command inside has left.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        loop {
            let drained = self.drained.notified();
            if self.inside.load(Ordering::Acquire) == 0 {
                return;
            }
            drained.await;
        }
    }

    pub fn open(&self) {
        self.closed.store(false, Ordering::Release);
        self.opened.notify_waiters();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// How long a test waits for something that must happen: it only bounds a hang, so it is
    /// generous enough for a loaded 2-core machine (the 20 ms sleeps below only let other tasks
    /// run; the checks after them hold however long the sleep really was).
    const PROGRESS_DEADLINE: Duration = Duration::from_secs(30);

    /// A gate that stays closed turns the waiter away after the limit (no timing is asserted:
    /// only that it returns, without a pass); one that opens within the limit lets it in.
    #[tokio::test]
    async fn a_command_waits_at_a_closed_gate_for_the_limit_only() {
        let g = Arc::new(Gate::default());
        g.close().await;
        let turned_away =
            tokio::time::timeout(PROGRESS_DEADLINE, g.enter_within(Duration::from_millis(50)))
                .await
                .expect("enter_within did not give up");
        assert!(turned_away.is_none(), "entered a closed gate");
        let waiter = {
            let g = Arc::clone(&g);
            tokio::spawn(async move { g.enter_within(PROGRESS_DEADLINE).await.is_some() })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        g.open();
        assert!(waiter.await.expect("waiter task"), "not admitted once open");
    }

    #[tokio::test]
    async fn close_waits_for_commands_inside_and_blocks_new_ones() {
        let g = Arc::new(Gate::default());
        let pass = g.try_enter().expect("open gate");
        let closer = {
            let g = Arc::clone(&g);
            tokio::spawn(async move { g.close().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !closer.is_finished(),
            "close returned with a command inside"
        );
        assert!(g.try_enter().is_none(), "entered a closed gate");
        drop(pass);
        tokio::time::timeout(PROGRESS_DEADLINE, closer)
            .await
            .expect("close did not finish after the command left")
            .expect("closer task");
        let waiter = {
            let g = Arc::clone(&g);
            tokio::spawn(async move { g.enter().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "entered while closed");
        g.open();
        tokio::time::timeout(PROGRESS_DEADLINE, waiter)
            .await
            .expect("waiter not admitted after open")
            .expect("waiter task");
    }
}
