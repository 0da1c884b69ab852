//! The watch loop of a storage server (docs/cluster-protocol.md, "The node"): which map it
//! installs next, when it fetches the current map, when it repeats its ack, when a postponed
//! install is retried, and when a fenced server (restarted from an older persisted map, or
//! found frozen) serves again. One thing at a time: an install, a fetch or a re-ack.
//!
//! Events in, actions out; no I/O, no clock (timers are actions: "call me back in `ms`").
//! The daemon (`cluster::watch`) and the simulation drive this same machine.

use std::collections::VecDeque;
use std::sync::Arc;

use manager::map::ClusterMap;

use super::Fence;
use super::policy::{CATCH_UP_RETRY_MS, POSTPONED_RETRY_MS, REACK_MS};

/// A timer the machine asked for ([`Action::After`]), fed back as [`Event::Timer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    /// Repeat the ack of the installed generation (acks are idempotent: this covers a manager
    /// that restarted and forgot it).
    ReAck,
    /// A fenced server fetches the current map again.
    CatchUp,
    /// A postponed install is tried again (the watch stream will not send it again).
    PostponedRetry,
}

#[derive(Debug, Clone)]
pub enum Event {
    /// The server booted: start the loop (the catch-up install first, if any).
    Started,
    /// A map arrived on the watch stream.
    Pushed(Arc<ClusterMap>),
    /// Fetch the current map (a peer answered "stale map", a command came stamped ahead of
    /// us, a forwarded command timed out, the server was found frozen).
    Refresh,
    /// The fetch of [`Action::Fetch`] answered (`None`: it failed); `installed` is the
    /// generation installed now.
    Fetched {
        map: Option<Arc<ClusterMap>>,
        installed: u64,
    },
    /// The install of [`Action::Install`] is over (installed, postponed, or not newer).
    InstallDone,
    /// The re-ack of [`Action::ReAck`] answered (either way: it is repeated anyway).
    ReAcked,
    Timer(Timer),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Install this map (`node::install::Install`), then feed [`Event::InstallDone`].
    Install(Arc<ClusterMap>),
    /// Fetch the current map from the manager, then feed [`Event::Fetched`].
    Fetch,
    /// Ack the installed generation again, then feed [`Event::ReAcked`].
    ReAck,
    /// Feed [`Event::Timer`] with `timer` in `ms` milliseconds.
    After { ms: u64, timer: Timer },
    /// The fence lifted: serve again, and start the copiers the fence held back.
    Thaw,
}

/// What the loop is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Busy {
    Installing,
    /// A fetch started at this fence epoch (`None`: not fenced then).
    Fetching(Option<u64>),
    ReAcking,
}

/// The watch loop's state.
#[derive(Debug, Clone)]
pub struct Watch {
    fence: Fence,
    /// Maps to install, in order (the stream's, and a fetched newer map first).
    inbox: VecDeque<Arc<ClusterMap>>,
    /// A fetch is wanted (a `Notify` permit: several requests, one fetch).
    refresh: bool,
    /// The re-ack period elapsed while the loop was busy: ack when idle.
    reack_due: bool,
    busy: Option<Busy>,
    /// The generation whose install was postponed, until a map at least as new is installed.
    postponed: Option<u64>,
    /// The postponed install's retry timer is set (one at a time).
    retrying: bool,
}

impl Watch {
    /// The loop of a server that booted (`node::boot`): with a catch-up map, it is fenced
    /// until that map is installed (it was fetched after the start: installing it lifts the
    /// fence).
    pub fn new(catch_up: Option<Arc<ClusterMap>>) -> Self {
        let mut fence = Fence::new(catch_up.is_none());
        let mut inbox = VecDeque::new();
        if let Some(m) = catch_up {
            if let Some(epoch) = fence.fetch_started() {
                fence.fetched(epoch, m.generation);
            }
            inbox.push_back(m);
        }
        Self {
            fence,
            inbox,
            refresh: false,
            reack_due: false,
            busy: None,
            postponed: None,
            retrying: false,
        }
    }

    /// Whether the server has the current map (it may serve: `node::Fence`).
    pub fn caught_up(&self) -> bool {
        self.fence.caught_up()
    }

    /// The generation whose install is postponed, if any.
    pub fn postponed(&self) -> Option<u64> {
        self.postponed
    }

    /// The heartbeat found the process frozen: serve nothing until a map fetched from now on
    /// is installed. The caller stops serving at once, then feeds [`Event::Refresh`].
    pub fn freeze(&mut self) {
        self.fence.fence();
    }

    /// An install made `generation` current (a postponed install of it, or of an older one,
    /// is done).
    pub fn installed(&mut self, generation: u64) {
        if self.postponed.is_some_and(|g| g <= generation) {
            self.postponed = None;
        }
    }

    /// An install finished with `installed` current: true if that lifts the fence (then
    /// serve again and start the copiers, as for [`Action::Thaw`]).
    pub fn try_thaw(&mut self, installed: u64) -> bool {
        self.fence.try_thaw(installed)
    }

    /// The install of generation `g` was postponed (its final copy failed): it is retried
    /// every [`POSTPONED_RETRY_MS`] until a map at least as new is installed (one retry
    /// timer, however many installs were postponed), and a fenced server fetches again.
    pub fn postpone(&mut self, g: u64) -> Vec<Action> {
        self.postponed = Some(g);
        let mut out = Vec::new();
        if !self.fence.caught_up() {
            out.push(Action::After {
                ms: CATCH_UP_RETRY_MS,
                timer: Timer::CatchUp,
            });
        }
        if !std::mem::replace(&mut self.retrying, true) {
            out.push(Action::After {
                ms: POSTPONED_RETRY_MS,
                timer: Timer::PostponedRetry,
            });
        }
        out
    }

    pub fn on(&mut self, ev: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match ev {
            Event::Started => {
                // The re-ack period's first tick is immediate.
                out.push(Action::After {
                    ms: 0,
                    timer: Timer::ReAck,
                });
            }
            Event::Pushed(m) => self.inbox.push_back(m),
            Event::Refresh => self.refresh = true,
            Event::Fetched { map, installed } => {
                let fenced = match self.busy.take() {
                    Some(Busy::Fetching(epoch)) => epoch,
                    other => {
                        self.busy = other;
                        None
                    }
                };
                match map {
                    // A fetch that started after the latest fence lifts it once its map is
                    // installed, or at once if it is not newer than ours.
                    Some(m) => {
                        if let Some(epoch) = fenced {
                            self.fence.fetched(epoch, m.generation);
                        }
                        if m.generation > installed {
                            self.inbox.push_front(m);
                        } else if self.fence.try_thaw(installed) {
                            out.push(Action::Thaw);
                        }
                    }
                    None if !self.fence.caught_up() => out.push(Action::After {
                        ms: CATCH_UP_RETRY_MS,
                        timer: Timer::CatchUp,
                    }),
                    None => {}
                }
            }
            Event::InstallDone => self.done(Busy::Installing),
            Event::ReAcked => self.done(Busy::ReAcking),
            Event::Timer(Timer::ReAck) => self.reack_due = true,
            Event::Timer(Timer::CatchUp) => {
                if !self.fence.caught_up() {
                    self.refresh = true;
                }
            }
            Event::Timer(Timer::PostponedRetry) => {
                if self.postponed.is_some() {
                    self.refresh = true;
                    self.next(&mut out);
                    out.push(Action::After {
                        ms: POSTPONED_RETRY_MS,
                        timer: Timer::PostponedRetry,
                    });
                } else {
                    self.retrying = false;
                }
            }
        }
        self.next(&mut out);
        out
    }

    fn done(&mut self, what: Busy) {
        if self.busy == Some(what) {
            self.busy = None;
        }
    }

    /// One thing at a time: the next map to install, else a wanted fetch, else a due re-ack.
    fn next(&mut self, out: &mut Vec<Action>) {
        if self.busy.is_some() {
            return;
        }
        if let Some(m) = self.inbox.pop_front() {
            self.busy = Some(Busy::Installing);
            out.push(Action::Install(m));
        } else if self.refresh {
            self.refresh = false;
            self.busy = Some(Busy::Fetching(self.fence.fetch_started()));
            out.push(Action::Fetch);
        } else if self.reack_due {
            self.reack_due = false;
            self.busy = Some(Busy::ReAcking);
            out.push(Action::ReAck);
            // The next tick a period after this one was taken (tokio's `Delay`).
            out.push(Action::After {
                ms: REACK_MS,
                timer: Timer::ReAck,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{map, server};
    use super::*;
    use manager::map::ServerState;

    fn at(g: u64) -> Arc<ClusterMap> {
        Arc::new(map(g, vec![server("s1", ServerState::Up)], vec![]))
    }

    fn after(ms: u64, timer: Timer) -> Action {
        Action::After { ms, timer }
    }

    #[test]
    fn one_thing_at_a_time_maps_first_then_a_fetch_then_a_re_ack() {
        let mut w = Watch::new(None);
        assert_eq!(w.on(Event::Started), vec![after(0, Timer::ReAck)]);
        assert_eq!(w.on(Event::Pushed(at(2))), vec![Action::Install(at(2))]);
        // Busy installing: the rest waits.
        assert!(w.on(Event::Timer(Timer::ReAck)).is_empty());
        assert!(w.on(Event::Refresh).is_empty());
        assert!(w.on(Event::Pushed(at(3))).is_empty());
        assert_eq!(w.on(Event::InstallDone), vec![Action::Install(at(3))]);
        assert_eq!(w.on(Event::InstallDone), vec![Action::Fetch]);
        // The fetch brings a newer map: installed before anything else.
        assert_eq!(
            w.on(Event::Fetched {
                map: Some(at(4)),
                installed: 3
            }),
            vec![Action::Install(at(4))]
        );
        assert_eq!(
            w.on(Event::InstallDone),
            vec![Action::ReAck, after(REACK_MS, Timer::ReAck)]
        );
        assert!(w.on(Event::ReAcked).is_empty());
    }

    #[test]
    fn a_restarted_server_serves_once_its_catch_up_install_is_done() {
        let mut w = Watch::new(Some(at(7)));
        assert!(!w.caught_up());
        assert_eq!(
            w.on(Event::Started),
            vec![after(0, Timer::ReAck), Action::Install(at(7))]
        );
        // Postponed (a final copy failed): retried, and the fenced server fetches again.
        assert_eq!(
            w.postpone(7),
            vec![
                after(CATCH_UP_RETRY_MS, Timer::CatchUp),
                after(POSTPONED_RETRY_MS, Timer::PostponedRetry)
            ]
        );
        assert!(w.on(Event::InstallDone).is_empty());
        // Postponed again before the retry: still one retry timer.
        assert_eq!(
            w.postpone(7),
            vec![after(CATCH_UP_RETRY_MS, Timer::CatchUp)]
        );
        assert_eq!(
            w.on(Event::Timer(Timer::PostponedRetry)),
            vec![
                Action::Fetch,
                after(POSTPONED_RETRY_MS, Timer::PostponedRetry)
            ]
        );
        assert_eq!(
            w.on(Event::Fetched {
                map: Some(at(7)),
                installed: 5
            }),
            vec![Action::Install(at(7))]
        );
        w.installed(7);
        assert!(w.try_thaw(7) && w.caught_up());
        assert_eq!(w.postponed(), None);
        assert!(w.on(Event::InstallDone).is_empty());
        // The retry stops once installed.
        assert!(w.on(Event::Timer(Timer::PostponedRetry)).is_empty());
    }

    #[test]
    fn a_frozen_server_serves_again_after_a_fetch_started_after_the_freeze() {
        let mut w = Watch::new(None);
        w.freeze();
        assert!(!w.caught_up());
        assert_eq!(w.on(Event::Refresh), vec![Action::Fetch]);
        // Not newer than ours: the fence lifts at once.
        assert_eq!(
            w.on(Event::Fetched {
                map: Some(at(5)),
                installed: 5
            }),
            vec![Action::Thaw]
        );
        assert!(w.caught_up());
        // A failed fetch while fenced: fetch again later.
        w.freeze();
        assert_eq!(w.on(Event::Refresh), vec![Action::Fetch]);
        assert_eq!(
            w.on(Event::Fetched {
                map: None,
                installed: 5
            }),
            vec![after(CATCH_UP_RETRY_MS, Timer::CatchUp)]
        );
        assert_eq!(w.on(Event::Timer(Timer::CatchUp)), vec![Action::Fetch]);
        // Frozen again while that fetch ran: its answer lifts nothing.
        w.freeze();
        assert!(
            w.on(Event::Fetched {
                map: Some(at(5)),
                installed: 5
            })
            .is_empty()
        );
        assert!(!w.caught_up());
    }
}
