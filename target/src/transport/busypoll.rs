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

/// The poller's "keep polling?" decision, apart from any clock so that tests can drive it with
/// made-up instants: polling goes on while activity was reported within the last `window`.
#[derive(Debug, Clone, Copy)]
struct PollWindow {
    window: Duration,
    /// The activity count last seen, and when it was first seen.
    seen: u64,
    last: Instant,
}

impl PollWindow {
    /// A window opened at `now` by activity count `activity`.
    fn open(window: Duration, activity: u64, now: Instant) -> Self {
        Self {
            window,
            seen: activity,
            last: now,
        }
    }

    /// One polling turn saw activity count `activity` at `now`: whether to poll again. New
    /// activity restarts the window; without any, polling stops once `window` has passed
    /// since the last activity seen.
    fn keep_polling(&mut self, activity: u64, now: Instant) -> bool {
        if activity != self.seen {
            self.seen = activity;
            self.last = now;
            return true;
        }
        now.saturating_duration_since(self.last) < self.window
    }
}

/// The poller of one reactor; spawn it on the reactor's runtime. Never returns (it ends with
/// the runtime). A zero `window` returns at once: no polling.
pub async fn poller(window: Duration) {
    poller_with_clock(window, Instant::now).await;
}

/// [`poller`] reading time from `now` (the tests' clock is a counter they advance).
async fn poller_with_clock(window: Duration, now: impl Fn() -> Instant) {
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
        let mut w = PollWindow::open(window, activity(), now());
        loop {
            tokio::task::yield_now().await;
            // Give the CPU to whoever else is runnable on it (another server or a peer process
            // sharing the core) before polling again: costs a syscall per turn when alone.
            std::thread::yield_now();
            #[cfg(test)]
            tests::TURNS.with(|t| t.set(t.get() + 1));
            if !w.keep_polling(activity(), now()) {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Polling turns taken by the poller on this thread.
        pub(super) static TURNS: Cell<u64> = const { Cell::new(0) };
        /// The test clock: an offset from a fixed origin, advanced by hand.
        static CLOCK: Cell<Duration> = const { Cell::new(Duration::ZERO) };
    }

    fn origin() -> Instant {
        static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *ORIGIN.get_or_init(Instant::now)
    }

    fn test_now() -> Instant {
        origin() + CLOCK.with(Cell::get)
    }

    fn advance(d: Duration) {
        CLOCK.with(|c| c.set(c.get() + d));
    }

    fn turns() -> u64 {
        TURNS.with(Cell::get)
    }

    const MS: Duration = Duration::from_millis(1);

    /// The decision alone, on made-up instants: activity restarts the window, and quiet for the
    /// whole window (not less) stops polling.
    #[test]
    fn keeps_polling_exactly_while_activity_is_recent() {
        let t0 = origin();
        let mut w = PollWindow::open(2 * MS, 7, t0);
        assert!(w.keep_polling(7, t0), "no time passed: keep polling");
        assert!(w.keep_polling(7, t0 + MS), "half the window: keep polling");
        assert!(
            w.keep_polling(8, t0 + 3 * MS),
            "new activity after the window still counts: keep polling"
        );
        assert!(
            w.keep_polling(8, t0 + 4 * MS),
            "the window restarted at the new activity"
        );
        assert!(
            !w.keep_polling(8, t0 + 5 * MS),
            "quiet for the whole window: stop"
        );
        // A clock that went backwards (it does not, but) is no reason to stop.
        let mut w = PollWindow::open(2 * MS, 0, t0 + 10 * MS);
        assert!(w.keep_polling(0, t0));
    }

    /// The poller spins after activity (many turns, while the test clock stands still) and
    /// sleeps once nothing happened for its window on that clock. No wall-clock timing: the
    /// current-thread runtime runs the poller exactly when the test yields.
    #[test]
    fn polls_after_activity_then_sleeps() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            tokio::spawn(poller_with_clock(2 * MS, test_now));
            tokio::task::yield_now().await;
            assert!(poller_sleeping(), "no activity yet: the poller sleeps");
            let before = turns();
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            assert_eq!(turns(), before, "a sleeping poller takes no turns");

            note_activity();
            // Within the window (the clock does not move) it polls on every chance it gets.
            for _ in 0..50 {
                tokio::task::yield_now().await;
            }
            assert!(!poller_sleeping(), "activity wakes the poller");
            assert!(
                turns() >= before + 10,
                "the poller took {} turns in 50 yields",
                turns() - before
            );
            // Activity every half window keeps it polling for many windows.
            for _ in 0..10 {
                advance(MS);
                note_activity();
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                assert!(
                    !poller_sleeping(),
                    "activity within the window keeps it polling"
                );
            }
            // Quiet for less than the window: still polling; for the window: asleep within a
            // turn or two.
            advance(MS);
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            assert!(
                !poller_sleeping(),
                "quiet for half the window: still polling"
            );
            advance(MS);
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            assert!(
                poller_sleeping(),
                "quiet for the whole window: asleep again"
            );
            let asleep = turns();
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            assert_eq!(turns(), asleep, "asleep: no more turns");
            // And it wakes again on the next activity.
            note_activity();
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            assert!(!poller_sleeping() && turns() > asleep, "woken again");
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
