//! Adaptive busy polling for a reactor: after any I/O, keep polling the sockets for a short
//! window instead of sleeping in `epoll_wait`, then sleep again.
//!
//! Why: on this kind of machine (a VM on shared cores) a thread woken from `epoll_wait` starts
//! running 20–25 µs after the packet arrived, so a request/response that sleeps on both sides
//! costs ~55 µs where a busy-polled one costs ~7 µs (`tessera bench --baseline pingpong` vs
//! `pingpong-spin`). SPDK polls all the time and burns its core when idle; the issue asks for
//! SPDK-class latency *and* an idle target that costs nothing. The compromise is Linux's
//! `busy_poll` idea: poll while traffic flows, sleep once it stops for `window`.
//!
//! How: one task per reactor (the poller) sleeps until a connection reports activity
//! ([`note_activity`], called after every socket read that returned data). It then loops on
//! `tokio::task::yield_now`: a yielded task is woken only after the runtime has polled its I/O
//! driver without blocking (`epoll_wait` with timeout 0), so each turn of the loop is one
//! non-blocking poll of every socket of the reactor, and connection tasks whose sockets became
//! ready run in the same turn. When no activity was reported for `window`, the poller sleeps
//! again and the reactor goes back to `epoll_wait`. Everything is thread-local: a reactor is one
//! thread, and the poller, the connections and their wake-ups never cross threads.
//!
//! Cost: at most `window` of CPU after the last I/O of a burst (an idle target with keep-alive
//! traffic every few seconds polls for a few hundred µs per minute). With several busy
//! processes on one core (the cluster benchmark runs every server on core 0) a polling server
//! takes CPU a peer needs; `--poll-us 0` turns polling off.

use std::cell::{Cell, RefCell};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// The daemon's default window: long enough to cover a host's turnaround at queue depth 1
/// (~10 µs when both ends poll), short enough to cost nothing measurable when idle.
pub const DEFAULT_WINDOW: Duration = Duration::from_micros(100);

struct State {
    /// Bumped by every activity report.
    activity: Cell<u64>,
    /// The poller, while it sleeps.
    waker: RefCell<Option<Waker>>,
}

thread_local! {
    static STATE: State = const {
        State {
            activity: Cell::new(0),
            waker: RefCell::new(None),
        }
    };
}

/// A connection on this thread did I/O: start (or extend) the polling window.
pub fn note_activity() {
    STATE.with(|s| {
        s.activity.set(s.activity.get().wrapping_add(1));
        if let Some(w) = s.waker.borrow_mut().take() {
            w.wake();
        }
    });
}

fn activity() -> u64 {
    STATE.with(|s| s.activity.get())
}

/// Whether a poller is sleeping on this thread (tests).
pub fn poller_sleeping() -> bool {
    STATE.with(|s| s.waker.borrow().is_some())
}

/// The poller of one reactor; spawn it on the reactor's runtime. Never returns (it ends with
/// the runtime). A zero `window` returns at once: no polling.
pub async fn poller(window: Duration) {
    if window.is_zero() {
        return;
    }
    loop {
        // Sleep until a connection reports activity.
        let seen = activity();
        std::future::poll_fn(|cx| {
            if activity() == seen {
                STATE.with(|s| *s.waker.borrow_mut() = Some(cx.waker().clone()));
                Poll::Pending
            } else {
                STATE.with(|s| s.waker.borrow_mut().take());
                Poll::Ready(())
            }
        })
        .await;
        // Poll until nothing happened for `window`.
        let mut seen = activity();
        let mut last = Instant::now();
        loop {
            tokio::task::yield_now().await;
            // Give the CPU to whoever else is runnable on it (another server or a peer process
            // sharing the core) before polling again: costs a syscall per turn when alone.
            std::thread::yield_now();
            let a = activity();
            let now = Instant::now();
            if a != seen {
                seen = a;
                last = now;
            } else if now.duration_since(last) >= window {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The poller spins after activity and sleeps once nothing happened for its window.
    #[test]
    fn polls_after_activity_then_sleeps() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            tokio::spawn(poller(Duration::from_millis(2)));
            tokio::task::yield_now().await;
            assert!(poller_sleeping(), "no activity yet: the poller sleeps");
            note_activity();
            tokio::task::yield_now().await;
            assert!(!poller_sleeping(), "activity wakes the poller");
            // Keep it busy past several windows.
            for _ in 0..5 {
                note_activity();
                tokio::time::sleep(Duration::from_millis(1)).await;
                assert!(
                    !poller_sleeping(),
                    "activity within the window keeps it polling"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(
                poller_sleeping(),
                "quiet for longer than the window: asleep again"
            );
        });
    }

    #[test]
    fn a_zero_window_never_polls() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let h = tokio::spawn(poller(Duration::ZERO));
            note_activity();
            h.await.expect("the poller returns at once");
            assert!(!poller_sleeping());
        });
    }
}
