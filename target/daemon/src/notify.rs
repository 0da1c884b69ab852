//! The service manager's notification protocol (sd_notify(3)): readiness, status lines,
//! stopping, reloading, and a watchdog fed only while the daemon's event loops make progress.
//!
//! Every function here does nothing when the daemon was not started by a service manager
//! (`NOTIFY_SOCKET` unset), so the daemons call them unconditionally.
//!
//! # Watchdog
//! With `WatchdogSec=` in the unit, the service manager sets `WATCHDOG_USEC` and kills the
//! daemon when no `WATCHDOG=1` arrives within that time. A ping proves little if it comes from
//! a thread that runs whatever the rest of the process does, so the ping here is conditional:
//! every event loop that serves clients (a target's reactors, the manager's runtime) runs a
//! [`heartbeat`] task that bumps its own counter every quarter of the ping interval, and the
//! [`watchdog`] task pings (every half `WATCHDOG_USEC`) only when every registered counter moved
//! since the previous ping. A loop stuck in a blocking call or a busy loop stops its counter, the
//! pings stop, and the service manager restarts the daemon.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        // Losing a notification is not a reason to stop serving; the service manager's own
        // timeouts say the rest.
        tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}

/// `READY=1`: start-up finished (listeners bound, configuration loaded), or a reload finished.
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// `RELOADING=1` with `MONOTONIC_USEC`: a configuration reload starts; call [`ready`] when it
/// ends (whether the new configuration was applied or rejected).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read CLOCK_MONOTONIC for MONOTONIC_USEC");
            send(&[NotifyState::Reloading]);
        }
    }
}

/// `STOPPING=1`: shutdown started (connections drain next).
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// `STATUS=...`: one line that `systemctl status` shows.
pub fn status(line: &str) {
    send(&[NotifyState::Status(line)]);
}

/// Sends `STATUS=` lines from `current` when they change, checking at most every `every`:
/// runs until dropped (select it against the daemon's stop signal).
pub async fn status_loop(every: Duration, mut current: impl FnMut() -> String) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return std::future::pending().await;
    }
    let mut last = String::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let line = current();
        if line != last {
            status(&line);
            last = line;
        }
    }
}

/// Half of `WATCHDOG_USEC` (the ping interval sd_watchdog_enabled(3) recommends), when the
/// service manager asked for a watchdog for this process; read once.
pub fn watchdog_interval() -> Option<Duration> {
    static INTERVAL: OnceLock<Option<Duration>> = OnceLock::new();
    *INTERVAL.get_or_init(|| {
        sd_notify::watchdog_enabled()
            .filter(|d| !d.is_zero())
            .map(|d| d / 2)
    })
}

/// One event loop's progress counter.
struct Beat {
    id: u64,
    name: String,
    count: Arc<AtomicU64>,
}

fn beats() -> &'static Mutex<Vec<Beat>> {
    static BEATS: Mutex<Vec<Beat>> = Mutex::new(Vec::new());
    &BEATS
}

fn lock_beats() -> std::sync::MutexGuard<'static, Vec<Beat>> {
    beats()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Removes its counter when the heartbeat task ends (its runtime stopped): a loop that
/// stopped on purpose does not hold the watchdog back.
struct Registration(u64);

impl Drop for Registration {
    fn drop(&mut self) {
        lock_beats().retain(|b| b.id != self.0);
    }
}

/// The heartbeat of the event loop it runs on (spawn it there): bumps its counter every quarter
/// of the watchdog's ping interval until the loop stops. Without a watchdog it returns at once:
/// no timer, no cost.
///
/// `stall_after` is for tests only: after that long, the task blocks its thread for good, as
/// a stuck loop would, so that a test can watch the pings stop.
pub async fn heartbeat(name: String, stall_after: Option<Duration>) {
    let Some(interval) = watchdog_interval() else {
        return;
    };
    static NEXT_ID: AtomicU64 = AtomicU64::new(0);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let count = Arc::new(AtomicU64::new(0));
    lock_beats().push(Beat {
        id,
        name: name.clone(),
        count: Arc::clone(&count),
    });
    let _registration = Registration(id);
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval((interval / 4).max(Duration::from_millis(5)));
    loop {
        tick.tick().await;
        count.fetch_add(1, Ordering::Relaxed);
        if let Some(after) = stall_after
            && start.elapsed() >= after
        {
            tracing::warn!(loop_ = %name, "test stall: blocking this event loop's thread");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    }
}

/// Sends `WATCHDOG=1` every [`watchdog_interval`] while every registered [`heartbeat`] moved
/// since the previous ping; logs which loop is stuck when one did not. Returns at once when no
/// watchdog was asked for; otherwise runs until dropped.
pub async fn watchdog() {
    let Some(interval) = watchdog_interval() else {
        return;
    };
    tracing::info!(
        interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
        "watchdog enabled: pinging while every event loop makes progress"
    );
    // id -> count at the previous ping.
    let mut seen: Vec<(u64, u64)> = Vec::new();
    let mut stalled_before = false;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (now, stuck): (Vec<(u64, u64)>, Vec<String>) = {
            let beats = lock_beats();
            let now = beats
                .iter()
                .map(|b| (b.id, b.count.load(Ordering::Relaxed)))
                .collect();
            // A counter seen before that has not moved: its loop is stuck. A new one (its
            // loop just started) counts as progress.
            let stuck = beats
                .iter()
                .filter(|b| {
                    seen.iter()
                        .any(|&(id, c)| id == b.id && c == b.count.load(Ordering::Relaxed))
                })
                .map(|b| b.name.clone())
                .collect();
            (now, stuck)
        };
        seen = now;
        if stuck.is_empty() {
            if stalled_before {
                tracing::warn!("every event loop makes progress again: watchdog pings resume");
                stalled_before = false;
            }
            send(&[NotifyState::Watchdog]);
        } else if !stalled_before {
            tracing::error!(
                stuck = %stuck.join(","),
                "event loop(s) made no progress: withholding the watchdog ping"
            );
            stalled_before = true;
        }
    }
}
