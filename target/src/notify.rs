//! The target's side of the service manager protocol: each reactor's heartbeat for the
//! watchdog, and the notifications (re-exported from the `daemon` crate) that start-up,
//! shutdown and reload send.
//!
//! `ready()` after the listeners are bound and the layout (or cluster map) is loaded;
//! `stopping()` on SIGTERM/SIGINT; a reload sends `reloading()` when it starts and `ready()`
//! when it ends.

use std::time::Duration;

pub use daemon::notify::{ready, reloading, status, status_loop, stopping, watchdog};

/// Test-only: `TESSERA_TEST_STALL_REACTOR=<index>:<after_ms>` blocks reactor `<index>`'s thread
/// `<after_ms>` milliseconds after it starts (it only takes effect with a watchdog), so that a
/// test can check that a stuck reactor stops the watchdog pings. Not for production use: the
/// stalled reactor never serves again. Read once.
pub const TEST_STALL_ENV: &str = "TESSERA_TEST_STALL_REACTOR";

fn stall_after(index: usize) -> Option<Duration> {
    static STALL: std::sync::OnceLock<Option<(usize, u64)>> = std::sync::OnceLock::new();
    let stall = *STALL.get_or_init(|| {
        let v = std::env::var(TEST_STALL_ENV).ok()?;
        let parsed = v
            .split_once(':')
            .and_then(|(i, ms)| Some((i.parse().ok()?, ms.parse().ok()?)));
        if parsed.is_none() {
            tracing::warn!(value = %v, "{TEST_STALL_ENV}: expected <index>:<after_ms>; ignored");
        }
        parsed
    });
    stall
        .filter(|&(i, _)| i == index)
        .map(|(_, ms)| Duration::from_millis(ms))
}

/// Spawns reactor `index`'s heartbeat on the current (reactor) runtime; it ends with the
/// runtime. Nothing runs when no watchdog was asked for.
pub fn spawn_reactor_heartbeat(index: usize) {
    if daemon::notify::watchdog_interval().is_some() {
        tokio::spawn(daemon::notify::heartbeat(
            format!("reactor-{index}"),
            stall_after(index),
        ));
    }
}
