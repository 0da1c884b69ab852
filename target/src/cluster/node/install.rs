//! The install of a new map as an events-in, actions-out state machine (docs/cluster-protocol.md,
//! "Publishing a change" and "The node"): no I/O, no clock, no tokio. The daemon
//! (`cluster::install`) and the simulation (`target/tests/sim`) drive the same machine and
//! differ only in how they carry out its actions.
//!
//! An install that takes extents away from this server (phase 1a) closes the gate (when the
//! server serves: a server catching up runs nothing that the gate could hold), then, for each
//! lost extent in order, stops its copier and copies what is still dirty to the new owner, in
//! at most [`policy::FINAL_ROUNDS`] rounds. If every final copy completed (or was refused under
//! the source rule: the switch happened without us), the map is installed, persisted, the
//! gate opens, the copiers follow the map and the generation is acknowledged
//! ([`policy::ACK_TRIES`] tries). Otherwise nothing is installed or acknowledged: the gate
//! opens, the extents stay tracked, and the install is postponed (tried again later).

use std::sync::Arc;

use manager::map::{ClusterMap, Replica, ServerState};

use super::{lost_extents, policy};

/// How long the final copies of one install may go on, from its start (milliseconds): past
/// it, no final pass starts or is retried, and a final pass in progress starts no new try of a
/// range (the shell's side: `cluster::mover::final_pass`, which knows [`Install::deadline`]);
/// an extent still dirty postpones the install (the gate reopens; tried again later, as for a
/// failed final copy). The one try in flight at that time runs to its end, bounded by its own
/// deadline (a copy command given up while in flight could still land on the new owner after
/// a later pass's newer data). Each lost extent's copier is still stopped and its dirty map
/// checked (a clean extent needs no copy), each stop waiting at most for its copier's try in
/// flight. So a serving old owner's gate, which holds the host's commands to the extents it
/// loses, stays closed past the drain of the commands inside at most this budget plus one copy
/// try per lost extent (docs/cluster-protocol.md, "Bounds").
pub const FINAL_BUDGET_MS: u64 = 3_000;

/// An extent of a volume: (volume name, extent index).
pub type ExtentKey = (String, usize);

/// What the shell tells the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The first event, right after [`Install::start`].
    Start,
    /// The gate is closed and the commands that were inside have left.
    Drained,
    /// The copier of the extent being finished has stopped (at a chunk boundary, what it had
    /// taken but not copied marked dirty again). `tracked`: the extent's range is tracked (a
    /// stopped copier, or the whole extent marked dirty); false: nothing to copy.
    CopierStopped { tracked: bool },
    /// How a [`Action::FinalPass`] ended.
    Pass(PassOutcome),
    /// The answer to [`Action::FinalCheck`]: no dirty chunk is left.
    Checked { clean: bool },
    /// The delay of an [`Action::RetryAfter`] has passed.
    Timer,
    /// The answer to [`Action::Ack`].
    AckDone { ok: bool },
}

/// How one final pass (take the dirty map, copy every dirty range to the new owner) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassOutcome {
    /// Nothing was dirty.
    Clean,
    /// Every dirty range was copied.
    Copied,
    /// The new owner refused the copy under the source rule: the move was switched or
    /// cancelled without this server; its copy of the extent is obsolete.
    NotSource,
    /// A copy failed (after its retries); the shell marked what it had taken dirty again.
    Failed,
}

/// What the machine asks the shell to do, in order. The actions marked "answer" are the last
/// of their batch: the shell carries them out and feeds the named event back.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Close the install gate and wait for the commands inside to leave. Answer: `Drained`.
    CloseGate,
    /// Stop the copier of `key` at a chunk boundary. Without copier state (a restart during
    /// the move, or a move we never saw start), track `whole` (pool offset, length) with
    /// every chunk dirty, if the old map has it. Answer: `CopierStopped`.
    StopCopier {
        key: ExtentKey,
        whole: Option<(u64, u64)>,
    },
    /// Take the dirty map of `key` and copy each dirty range to `dest` (the final copy:
    /// stamped with the generation the new owner reports). Answer: `Pass`.
    FinalPass { key: ExtentKey, dest: Replica },
    /// Whether `key` has dirty chunks left (the shell marks them dirty again). Answer:
    /// `Checked`.
    FinalCheck { key: ExtentKey },
    /// The extent is switched: stop tracking it and forget its copier.
    Untrack { key: ExtentKey },
    /// The new map has no owner for the extent (its volume is gone): stop its copier, if any,
    /// and stop tracking it.
    Forget { key: ExtentKey },
    /// Keep the range of `key` tracked, copier stopped, until [`Action::Forget`] or the next
    /// try of this install: its final copy is incomplete, or complete while another lost
    /// extent's is not done yet.
    KeepTracked { key: ExtentKey },
    /// Wait this many milliseconds. Answer: `Timer`.
    RetryAfter(u64),
    /// Install the map: it becomes the served map, the fencing view follows it, the
    /// generation moves to its generation.
    Install(Arc<ClusterMap>),
    /// Write the installed map durably (before its ack: a restart resumes from it).
    Persist(Arc<ClusterMap>),
    /// Open the install gate (closed by [`Action::CloseGate`]).
    OpenGate,
    /// Start copiers for the moves of the installed map; stop those no longer wanted.
    SyncMovers,
    /// Acknowledge this generation to the manager. Answer: `AckDone`.
    Ack(u64),
    /// The install of this generation is postponed (a final copy is incomplete): nothing
    /// installed, nothing acknowledged; fetch the map again later and retry
    /// ([`policy::POSTPONED_RETRY_MS`]).
    Postpone(u64),
    /// The install is over (whatever the outcome).
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Begin,
    Draining,
    Stopping,
    Final { round: u32 },
    FinalSleep { round: u32 },
    Checking,
    Ack { attempt: u32 },
    AckSleep { attempt: u32 },
    Over,
}

/// One install of a newer map.
#[derive(Debug, Clone)]
pub struct Install {
    old: Arc<ClusterMap>,
    new: Arc<ClusterMap>,
    lost: Vec<ExtentKey>,
    /// The lost extent being finished.
    idx: usize,
    /// Lost extents whose final copy completed, kept tracked ([`Action::KeepTracked`]) until
    /// the map is installed (then [`Action::Forget`]): if the install is postponed, its next
    /// try copies only what was written since, not the whole extent again.
    copied: Vec<ExtentKey>,
    /// Every final copy so far completed (else: postponed).
    ok: bool,
    /// The gate is closed by this install.
    gate: bool,
    /// The new map marks this server down.
    me_down: bool,
    state: State,
    /// The time of the latest event (milliseconds, the shell's clock; 0 without one).
    now: u64,
    /// When the final copies must be over ([`FINAL_BUDGET_MS`] after the start, when the shell
    /// passes time: [`Install::on_event_at`]).
    deadline: Option<u64>,
}

impl Install {
    /// An install of `new` over the installed `old` on server `me`; `None` if `new` is not
    /// newer (nothing to do, no ack). `gate`: the server has an install gate and serves (a
    /// server catching up after a restart closes none, nor one whose `old` map marks it down).
    pub fn start(old: Arc<ClusterMap>, new: Arc<ClusterMap>, me: &str, gate: bool) -> Option<Self> {
        if new.generation <= old.generation {
            return None;
        }
        let lost = lost_extents(&old, &new, me);
        // A server whose installed map marks it down serves nothing (rule 7): no command runs
        // that the gate could hold, so its install closes none, as one catching up.
        let serving = old.server(me).is_some_and(|s| s.state != ServerState::Down);
        let gate = gate && serving && !lost.is_empty();
        let me_down = new.server(me).is_none_or(|s| s.state == ServerState::Down);
        Some(Self {
            old,
            new,
            lost,
            idx: 0,
            copied: Vec::new(),
            ok: true,
            gate,
            me_down,
            state: State::Begin,
            now: 0,
            deadline: None,
        })
    }

    /// When the final copies must stop (the shell's clock, milliseconds; see
    /// [`FINAL_BUDGET_MS`]): a final pass starts no try of a range from then on. `None` until
    /// the shell passes time ([`Install::on_event_at`]).
    pub fn deadline(&self) -> Option<u64> {
        self.deadline
    }

    /// [`Install::on_event`] at time `now_ms` (the shell's clock, milliseconds, never going
    /// back). The first timed event starts the [`FINAL_BUDGET_MS`] budget of the final copies;
    /// once it is spent, no final pass starts or is retried: the lost extent still dirty is
    /// kept tracked and the install postponed.
    pub fn on_event_at(&mut self, ev: Event, now_ms: u64) -> Vec<Action> {
        self.now = self.now.max(now_ms);
        if self.deadline.is_none() {
            self.deadline = Some(self.now.saturating_add(FINAL_BUDGET_MS));
        }
        self.on_event(ev)
    }

    /// The final-copy budget is spent.
    fn out_of_time(&self) -> bool {
        self.deadline.is_some_and(|d| self.now >= d)
    }

    /// The map being installed.
    pub fn map(&self) -> &Arc<ClusterMap> {
        &self.new
    }

    /// The extents this install takes away from the server.
    pub fn lost(&self) -> &[ExtentKey] {
        &self.lost
    }

    /// Whether this install closes the gate.
    pub fn closes_gate(&self) -> bool {
        self.gate
    }

    /// Whether the install is over.
    pub fn done(&self) -> bool {
        self.state == State::Over
    }

    /// Feeds one event; returns the actions to carry out, in order. An event the machine does
    /// not wait for in its state is ignored (no actions).
    pub fn on_event(&mut self, ev: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match (self.state.clone(), ev) {
            (State::Begin, Event::Start) => {
                if self.lost.is_empty() {
                    self.apply(&mut out);
                } else if self.gate {
                    self.state = State::Draining;
                    out.push(Action::CloseGate);
                } else {
                    self.next_lost(&mut out);
                }
            }
            (State::Draining, Event::Drained) => self.next_lost(&mut out),
            (State::Stopping, Event::CopierStopped { tracked }) => {
                if tracked {
                    self.round(0, &mut out);
                } else {
                    self.lost_done(&mut out);
                }
            }
            (State::Final { round }, Event::Pass(p)) => match p {
                PassOutcome::Clean => {
                    let key = self.key();
                    self.copied(key, &mut out);
                }
                PassOutcome::NotSource => {
                    let key = self.key();
                    out.push(Action::Untrack { key });
                    self.lost_done(&mut out);
                }
                PassOutcome::Copied => self.round(round + 1, &mut out),
                PassOutcome::Failed if self.out_of_time() => {
                    self.round(policy::FINAL_ROUNDS, &mut out);
                }
                PassOutcome::Failed => {
                    self.state = State::FinalSleep { round };
                    out.push(Action::RetryAfter(policy::FINAL_RETRY_MS));
                }
            },
            (State::FinalSleep { round }, Event::Timer) => self.round(round + 1, &mut out),
            (State::Checking, Event::Checked { clean }) => {
                let key = self.key();
                if clean {
                    self.copied(key, &mut out);
                } else {
                    self.ok = false;
                    out.push(Action::KeepTracked { key });
                    self.lost_done(&mut out);
                }
            }
            (State::Ack { attempt }, Event::AckDone { ok }) => {
                if ok {
                    self.over(&mut out);
                } else {
                    self.state = State::AckSleep { attempt };
                    out.push(Action::RetryAfter(policy::ACK_BACKOFF_MS << attempt));
                }
            }
            (State::AckSleep { attempt }, Event::Timer) => self.ack(attempt + 1, &mut out),
            _ => {}
        }
        out
    }

    fn key(&self) -> ExtentKey {
        self.lost.get(self.idx).cloned().unwrap_or_default()
    }

    /// Finishes the lost extent `idx` (all of them, even after a failure), then installs or
    /// postpones.
    fn next_lost(&mut self, out: &mut Vec<Action>) {
        let Some(key) = self.lost.get(self.idx).cloned() else {
            if self.ok {
                return self.apply(out);
            }
            if self.gate {
                out.push(Action::OpenGate);
            }
            out.push(Action::Postpone(self.new.generation));
            return self.over(out);
        };
        if self.new.owner(&key.0, key.1).is_none() {
            out.push(Action::Forget { key });
            return self.lost_done(out);
        }
        // A volume with several copies loses `replicas[0]` only when a moved copy drops it
        // (docs/replication.md, "Moving a copy"): the other copies have every write, so there
        // is no final copy (and no copier): the gate drains the writes in flight, that is all.
        let whole = self.old.owner(&key.0, key.1).and_then(|o| {
            let v = self.old.volume(&key.0).filter(|v| v.replicas == 1)?;
            let (_, len) = v.extent_range(key.1)?;
            Some((o.offset, len))
        });
        self.state = State::Stopping;
        out.push(Action::StopCopier { key, whole });
    }

    fn lost_done(&mut self, out: &mut Vec<Action>) {
        self.idx += 1;
        self.next_lost(out);
    }

    /// Final round `round` of the current lost extent.
    fn round(&mut self, round: u32, out: &mut Vec<Action>) {
        let key = self.key();
        if round >= policy::FINAL_ROUNDS || self.out_of_time() {
            self.state = State::Checking;
            return out.push(Action::FinalCheck { key });
        }
        let Some(dest) = self.new.owner(&key.0, key.1).cloned() else {
            out.push(Action::Forget { key });
            return self.lost_done(out);
        };
        // The new map gives the extent to a server it marks down: the switch went through
        // phase 1a without this server (one still waiting for us is given back when its new
        // owner is marked down), so the new owner would refuse the copy under the source rule
        // if it served; it serves nothing, so nothing would end the retries. Or it marks this
        // server down: no switch in it waits for us (phase 1a does not wait for an old owner
        // the map itself marks down; one waiting for us was sent to us in a map where we are
        // up), so every switch of ours in it went on without us. As refused, either way.
        if self.me_down
            || self
                .new
                .server(&dest.server)
                .is_none_or(|s| s.state == ServerState::Down)
        {
            out.push(Action::Untrack { key });
            return self.lost_done(out);
        }
        self.state = State::Final { round };
        out.push(Action::FinalPass { key, dest });
    }

    /// The final copy of `key` completed: keep it tracked until the map is installed.
    fn copied(&mut self, key: ExtentKey, out: &mut Vec<Action>) {
        if self.lost.len() == 1 {
            // The only lost extent: the install follows at once.
            out.push(Action::Untrack { key });
        } else {
            out.push(Action::KeepTracked { key: key.clone() });
            self.copied.push(key);
        }
        self.lost_done(out);
    }

    fn apply(&mut self, out: &mut Vec<Action>) {
        for key in std::mem::take(&mut self.copied) {
            out.push(Action::Forget { key });
        }
        out.push(Action::Install(Arc::clone(&self.new)));
        out.push(Action::Persist(Arc::clone(&self.new)));
        if self.gate {
            out.push(Action::OpenGate);
        }
        out.push(Action::SyncMovers);
        self.ack(0, out);
    }

    fn ack(&mut self, attempt: u32, out: &mut Vec<Action>) {
        if attempt >= policy::ACK_TRIES {
            return self.over(out);
        }
        self.state = State::Ack { attempt };
        out.push(Action::Ack(self.new.generation));
    }

    fn over(&mut self, out: &mut Vec<Action>) {
        self.state = State::Over;
        out.push(Action::Done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::node::fixtures::{self, rep, server};
    use manager::map::{ExtentEntry as Extent, Move};

    /// vol1, one 4 KiB extent owned by `owner` (s1 at 8192, s2 at 0), moving to s2 at 0
    /// when `moving`.
    fn map(generation: u64, owner: &str, moving: bool) -> Arc<ClusterMap> {
        let extent = Extent {
            replicas: vec![rep(owner, if owner == "s1" { 8192 } else { 0 })],
            moving: moving.then(|| Move { to: rep("s2", 0) }),
            lost: false,
        };
        let servers = vec![server("s1", ServerState::Up), server("s2", ServerState::Up)];
        Arc::new(fixtures::map(generation, servers, vec![extent]))
    }

    fn key() -> ExtentKey {
        ("vol1".to_string(), 0)
    }

    /// The switch of the extent away from s1: s1 closes the gate, stops the copier, copies
    /// until clean, then installs, persists, opens the gate, syncs the movers and acks.
    #[test]
    fn a_switch_fences_final_copies_then_installs_and_acks() {
        let new = map(6, "s2", false);
        let mut ins =
            Install::start(map(5, "s1", true), Arc::clone(&new), "s1", true).expect("newer");
        assert_eq!(ins.lost(), &[key()]);
        assert_eq!(ins.on_event(Event::Start), vec![Action::CloseGate]);
        // An event it does not wait for changes nothing.
        assert_eq!(ins.on_event(Event::Timer), vec![]);
        assert_eq!(
            ins.on_event(Event::Drained),
            vec![Action::StopCopier {
                key: key(),
                whole: Some((8192, 4096))
            }]
        );
        let pass = Action::FinalPass {
            key: key(),
            dest: rep("s2", 0),
        };
        assert_eq!(
            ins.on_event(Event::CopierStopped { tracked: true }),
            vec![pass.clone()]
        );
        assert_eq!(ins.on_event(Event::Pass(PassOutcome::Copied)), vec![pass]);
        assert_eq!(
            ins.on_event(Event::Pass(PassOutcome::Clean)),
            vec![
                Action::Untrack { key: key() },
                Action::Install(Arc::clone(&new)),
                Action::Persist(Arc::clone(&new)),
                Action::OpenGate,
                Action::SyncMovers,
                Action::Ack(6),
            ]
        );
        // The ack is tried ACK_TRIES times, backing off.
        for attempt in 0..policy::ACK_TRIES {
            assert_eq!(
                ins.on_event(Event::AckDone { ok: false }),
                vec![Action::RetryAfter(policy::ACK_BACKOFF_MS << attempt)]
            );
            let next = ins.on_event(Event::Timer);
            if attempt + 1 < policy::ACK_TRIES {
                assert_eq!(next, vec![Action::Ack(6)]);
            } else {
                assert_eq!(next, vec![Action::Done]);
            }
        }
        assert!(ins.done());
    }

    /// A final copy that keeps failing: after FINAL_ROUNDS rounds with dirty chunks left,
    /// the install is postponed (gate reopened, nothing installed or acked).
    #[test]
    fn an_incomplete_final_copy_postpones_the_install() {
        let mut ins =
            Install::start(map(5, "s1", true), map(6, "s2", false), "s1", true).expect("newer");
        ins.on_event(Event::Start);
        ins.on_event(Event::Drained);
        ins.on_event(Event::CopierStopped { tracked: true });
        for _ in 0..policy::FINAL_ROUNDS {
            assert_eq!(
                ins.on_event(Event::Pass(PassOutcome::Failed)),
                vec![Action::RetryAfter(policy::FINAL_RETRY_MS)]
            );
            ins.on_event(Event::Timer);
        }
        assert_eq!(
            ins.on_event(Event::Checked { clean: false }),
            vec![
                Action::KeepTracked { key: key() },
                Action::OpenGate,
                Action::Postpone(6),
                Action::Done
            ]
        );
    }

    /// The final-copy budget: once it is spent (the shell's clock, `on_event_at`), a failed
    /// pass is not retried and no new round starts; the install is postponed.
    #[test]
    fn a_spent_budget_postpones_the_install() {
        let mut ins =
            Install::start(map(5, "s1", true), map(6, "s2", false), "s1", true).expect("newer");
        assert_eq!(
            ins.on_event_at(Event::Start, 1_000),
            vec![Action::CloseGate]
        );
        assert_eq!(ins.deadline(), Some(1_000 + FINAL_BUDGET_MS));
        ins.on_event_at(Event::Drained, 1_010);
        ins.on_event_at(Event::CopierStopped { tracked: true }, 1_020);
        // Within the budget: retried.
        assert_eq!(
            ins.on_event_at(Event::Pass(PassOutcome::Failed), 2_000),
            vec![Action::RetryAfter(policy::FINAL_RETRY_MS)]
        );
        // Past it: no retry, straight to the check.
        ins.on_event_at(Event::Timer, 2_100);
        assert_eq!(
            ins.on_event_at(Event::Pass(PassOutcome::Failed), 1_000 + FINAL_BUDGET_MS),
            vec![Action::FinalCheck { key: key() }]
        );
        assert_eq!(
            ins.on_event_at(Event::Checked { clean: false }, 4_100),
            vec![
                Action::KeepTracked { key: key() },
                Action::OpenGate,
                Action::Postpone(6),
                Action::Done
            ]
        );
    }

    /// A server whose installed map marks it down serves nothing: its install of a map that
    /// takes its extent away closes no gate (it still final-copies, as one catching up).
    #[test]
    fn a_server_marked_down_closes_no_gate() {
        let mut old = (*map(5, "s1", true)).clone();
        old.servers[0].state = ServerState::Down;
        let mut ins =
            Install::start(Arc::new(old), map(6, "s2", false), "s1", true).expect("newer");
        assert!(!ins.closes_gate());
        assert!(matches!(
            ins.on_event(Event::Start).as_slice(),
            [Action::StopCopier { .. }]
        ));
    }

    /// A lost extent whose new owner the new map marks down: no final copy (the switch went
    /// on without us; the new owner would refuse it if it served).
    #[test]
    fn no_final_copy_to_a_server_marked_down() {
        let mut down = (*map(6, "s2", false)).clone();
        down.servers[1].state = ServerState::Down;
        let down = Arc::new(down);
        let mut ins =
            Install::start(map(5, "s1", true), Arc::clone(&down), "s1", true).expect("newer");
        ins.on_event(Event::Start);
        ins.on_event(Event::Drained);
        let acts = ins.on_event(Event::CopierStopped { tracked: true });
        assert_eq!(acts.first(), Some(&Action::Untrack { key: key() }));
        assert!(acts.contains(&Action::Install(down)));
    }

    /// A cancelled switch (docs/cluster-protocol.md, "Cancelling a switch to a server marked
    /// down"): the old owner whose install of the switch was postponed installs the newer map
    /// that gives the extent back (nothing lost, no gate, no copy); one that had installed the
    /// switch gets the extent back the same way.
    #[test]
    fn a_cancelled_switch_installs_without_a_final_copy() {
        let back = map(7, "s1", false);
        // Postponed g6 (s1 still at g5, extent moving), then g7 gives it back.
        let mut ins =
            Install::start(map(5, "s1", true), Arc::clone(&back), "s1", true).expect("newer");
        assert!(ins.lost().is_empty() && !ins.closes_gate());
        let acts = ins.on_event_at(Event::Start, 10);
        assert_eq!(acts.first(), Some(&Action::Install(Arc::clone(&back))));
        assert!(!acts.iter().any(|a| matches!(a, Action::FinalPass { .. })));
        // Installed g6 (the extent was s2's), then g7 gives it back.
        let mut ins =
            Install::start(map(6, "s2", false), Arc::clone(&back), "s1", true).expect("newer");
        assert!(ins.lost().is_empty());
        assert_eq!(
            ins.on_event(Event::Start).first(),
            Some(&Action::Install(back))
        );
    }

    /// An install whose map marks this server down copies nothing: every switch of its
    /// extents in that map went on without it.
    #[test]
    fn no_final_copy_from_a_server_its_map_marks_down() {
        let mut me_down = (*map(6, "s2", false)).clone();
        me_down.servers[0].state = ServerState::Down;
        let me_down = Arc::new(me_down);
        let mut ins =
            Install::start(map(5, "s1", true), Arc::clone(&me_down), "s1", false).expect("newer");
        let acts = ins.on_event(Event::Start);
        assert_eq!(
            acts.first(),
            Some(&Action::StopCopier {
                key: key(),
                whole: Some((8192, 4096))
            })
        );
        let acts = ins.on_event(Event::CopierStopped { tracked: true });
        assert_eq!(acts.first(), Some(&Action::Untrack { key: key() }));
        assert!(!acts.iter().any(|a| matches!(a, Action::FinalPass { .. })));
        assert!(acts.contains(&Action::Install(me_down)));
    }

    /// A refused final copy (the switch happened without us) drops our copy and installs;
    /// a server catching up closes no gate; an older map installs nothing.
    #[test]
    fn refused_final_copies_catch_up_installs_and_old_maps() {
        let new = map(6, "s2", false);
        let mut ins =
            Install::start(map(5, "s1", true), Arc::clone(&new), "s1", false).expect("newer");
        assert!(!ins.closes_gate());
        assert!(matches!(
            ins.on_event(Event::Start).as_slice(),
            [Action::StopCopier { .. }]
        ));
        ins.on_event(Event::CopierStopped { tracked: true });
        let acts = ins.on_event(Event::Pass(PassOutcome::NotSource));
        assert_eq!(acts.first(), Some(&Action::Untrack { key: key() }));
        assert!(!acts.contains(&Action::OpenGate));
        assert_eq!(acts.last(), Some(&Action::Ack(6)));
        assert!(Install::start(map(6, "s1", false), map(6, "s2", false), "s1", true).is_none());
        // No extent lost: straight to the install.
        let mut plain =
            Install::start(map(5, "s2", false), map(6, "s2", false), "s1", true).expect("newer");
        assert!(matches!(
            plain.on_event(Event::Start).first(),
            Some(Action::Install(_))
        ));
    }
}
