//! The copier of a moving extent, on its owner, as an events-in, actions-out state machine
//! (docs/cluster-protocol.md, "Moving an extent"): no I/O, no clock, no tokio. The daemon
//! (`cluster::mover`) and the simulation drive the same machine.
//!
//! The copier copies the extent's dirty chunks (all of them at first) to the move's
//! destination, pass after pass, until a pass copied at most `converged_chunks` chunks (or
//! after `passes_max` passes), then tells the manager the move is ready, again and again until
//! it is accepted. A failed pass is retried after [`policy::PASS_RETRY_MS`], a refused
//! move-ready after [`policy::READY_RETRY_MS`]. The install that switches the extent stops it
//! (the `stopped` argument): it then ends at its next decision instead of waiting or copying
//! again, and the install's final copy takes what is left. (The daemon's shell also cuts a
//! pause short and gives up a move-ready request once stopped, so that stopping waits at most
//! for the one copy try in flight.)

use manager::map::{ClusterMap, Replica};

use super::install::ExtentKey;
use super::{converged, policy, serves};

/// A copy this server must run: the extent `key` it owns at pool bytes
/// `[offset, offset + len)`, moving to `dest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub key: ExtentKey,
    pub offset: u64,
    pub len: u64,
    pub dest: Replica,
}

/// The copiers server `me` runs under `map`: one per extent it owns that the map says is
/// moving. A server that does not serve (marked down, or fenced: `serving` false) copies
/// nothing. A copier whose extent is not in the list, or moves elsewhere, is stopped.
pub fn wanted(map: &ClusterMap, me: &str, serving: bool) -> Vec<Wanted> {
    let mut out = Vec::new();
    if !serving || !serves(map, me) {
        return out;
    }
    for v in &map.volumes {
        for (i, e) in v.extents.iter().enumerate() {
            let (Some(owner), Some(mv)) = (e.replicas.first(), &e.moving) else {
                continue;
            };
            if owner.server != me {
                continue;
            }
            if let Some((_, len)) = v.extent_range(i) {
                out.push(Wanted {
                    key: (v.name.clone(), i),
                    offset: owner.offset,
                    len,
                    dest: mv.to.clone(),
                });
            }
        }
    }
    out
}

/// What the shell tells the copier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The first event.
    Start,
    /// A pass copied all the `chunks` dirty chunks it had taken.
    PassDone { chunks: usize },
    /// A pass failed (or was stopped) part-way; the shell marked what it had not copied dirty
    /// again.
    PassFailed,
    /// The delay of an [`Action::RetryAfter`] has passed.
    Timer,
    /// The manager's answer to [`Action::MoveReady`].
    ReadyDone { ok: bool },
}

/// What the copier asks the shell to do; the shell answers with the event named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Take the dirty map and copy its dirty chunks to the destination, stopping at a chunk
    /// boundary if the copier is stopped meanwhile. Answer: `PassDone` or `PassFailed`.
    CopyPass,
    /// Wait. Answer: `Timer`.
    RetryAfter(u64),
    /// Tell the manager the copy converged (first time: the copy just converged). Answer:
    /// `ReadyDone`.
    MoveReady,
    /// The copier is over (the move is ready and accepted, or the copier was stopped).
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Begin,
    Pass,
    Sleep,
    Ready,
    ReadySleep,
    Over,
}

/// One extent's copier.
#[derive(Debug, Clone)]
pub struct Copier {
    passes: u32,
    converged_chunks: usize,
    passes_max: u32,
    state: State,
}

impl Copier {
    /// A copier that converges after a pass of at most `converged_chunks` chunks, or after
    /// `passes_max` passes (`cluster::mover::CONVERGED_CHUNKS`, `PASSES_MAX`).
    pub fn new(converged_chunks: usize, passes_max: u32) -> Self {
        Self {
            passes: 0,
            converged_chunks,
            passes_max,
            state: State::Begin,
        }
    }

    /// Passes completed so far.
    pub fn passes(&self) -> u32 {
        self.passes
    }

    /// Whether the copier is over.
    pub fn done(&self) -> bool {
        self.state == State::Over
    }

    /// Feeds one event; `stopped`: an install stopped this copier. An event it does not wait
    /// for in its state is ignored (`None`).
    pub fn on_event(&mut self, ev: Event, stopped: bool) -> Option<Action> {
        let a = match (self.state, ev) {
            (State::Begin, Event::Start) => self.pass(),
            (State::Pass, Event::PassFailed) => {
                if stopped {
                    self.over()
                } else {
                    self.state = State::Sleep;
                    Action::RetryAfter(policy::PASS_RETRY_MS)
                }
            }
            (State::Pass, Event::PassDone { chunks }) => {
                self.passes += 1;
                if converged(chunks, self.passes, self.converged_chunks, self.passes_max) {
                    self.ready(stopped)
                } else {
                    self.pass()
                }
            }
            (State::Sleep, Event::Timer) => {
                if stopped {
                    self.over()
                } else {
                    self.pass()
                }
            }
            (State::ReadySleep, Event::Timer) => self.ready(stopped),
            (State::Ready, Event::ReadyDone { ok }) => {
                if ok {
                    self.over()
                } else {
                    self.state = State::ReadySleep;
                    Action::RetryAfter(policy::READY_RETRY_MS)
                }
            }
            _ => return None,
        };
        Some(a)
    }

    fn pass(&mut self) -> Action {
        self.state = State::Pass;
        Action::CopyPass
    }

    /// Keep telling the manager until it switches (or this copier is stopped).
    fn ready(&mut self, stopped: bool) -> Action {
        if stopped {
            return self.over();
        }
        self.state = State::Ready;
        Action::MoveReady
    }

    fn over(&mut self) -> Action {
        self.state = State::Over;
        Action::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_until_converged_then_move_ready_until_accepted() {
        let mut c = Copier::new(64, 16);
        assert_eq!(c.on_event(Event::Start, false), Some(Action::CopyPass));
        assert_eq!(
            c.on_event(Event::PassDone { chunks: 500 }, false),
            Some(Action::CopyPass)
        );
        assert_eq!(
            c.on_event(Event::PassFailed, false),
            Some(Action::RetryAfter(policy::PASS_RETRY_MS))
        );
        // An event it does not wait for: ignored.
        assert_eq!(c.on_event(Event::ReadyDone { ok: true }, false), None);
        assert_eq!(c.on_event(Event::Timer, false), Some(Action::CopyPass));
        assert_eq!(
            c.on_event(Event::PassDone { chunks: 64 }, false),
            Some(Action::MoveReady)
        );
        assert_eq!(c.passes(), 2);
        assert_eq!(
            c.on_event(Event::ReadyDone { ok: false }, false),
            Some(Action::RetryAfter(policy::READY_RETRY_MS))
        );
        assert_eq!(c.on_event(Event::Timer, false), Some(Action::MoveReady));
        assert_eq!(
            c.on_event(Event::ReadyDone { ok: true }, false),
            Some(Action::Done)
        );
        assert!(c.done());
    }

    #[test]
    fn copiers_run_on_the_owner_of_a_moving_extent_while_it_serves() {
        use crate::cluster::node::fixtures::{self, rep, server};
        use manager::map::{ExtentEntry, Move, ServerState};
        let extents = vec![
            ExtentEntry {
                replicas: vec![rep("s1", 0)],
                moving: None,
                lost: false,
            },
            ExtentEntry {
                replicas: vec![rep("s1", 4096)],
                moving: Some(Move { to: rep("s2", 0) }),
                lost: false,
            },
        ];
        let servers = vec![server("s1", ServerState::Up), server("s2", ServerState::Up)];
        let mut m = fixtures::map(0, servers, extents);
        assert_eq!(
            wanted(&m, "s1", true),
            vec![Wanted {
                key: ("vol1".to_string(), 1),
                offset: 4096,
                len: 4096,
                dest: rep("s2", 0),
            }]
        );
        assert!(wanted(&m, "s1", false).is_empty(), "fenced");
        assert!(wanted(&m, "s2", true).is_empty(), "not the owner");
        m.servers[0].state = ServerState::Down;
        assert!(wanted(&m, "s1", true).is_empty(), "marked down");
    }

    #[test]
    fn a_stopped_copier_ends_at_its_next_decision() {
        let mut c = Copier::new(64, 2);
        c.on_event(Event::Start, false);
        assert_eq!(c.on_event(Event::PassFailed, true), Some(Action::Done));
        let mut c = Copier::new(64, 2);
        c.on_event(Event::Start, false);
        c.on_event(Event::PassFailed, false);
        assert_eq!(c.on_event(Event::Timer, true), Some(Action::Done));
        // PASSES_MAX passes converge whatever is left; stopped: no move-ready.
        let mut c = Copier::new(64, 2);
        c.on_event(Event::Start, false);
        c.on_event(Event::PassDone { chunks: 1000 }, false);
        assert_eq!(
            c.on_event(Event::PassDone { chunks: 1000 }, true),
            Some(Action::Done)
        );
    }
}
