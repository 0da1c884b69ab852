//! Publishing a map in two phases (docs/cluster-protocol.md, "Publishing a change"), as a
//! sans-I/O state machine: it takes [`Event`]s and returns [`Action`]s, and owns no socket, task
//! or clock, so the server and a deterministic simulation drive the same code.
//!
//! One publication at a time, in generation order; maps committed meanwhile wait in a queue.
//! - **1a**: the old owners of extents whose owner changes get the map and must ack (they fence
//!   those extents first). The map is re-sent every [`PHASE_1A_RESEND_MS`] until they ack. An
//!   old owner is never simply skipped (a write could land on data it no longer owns): it is
//!   released only by a later durable map that marks it `down` (a server marked down serves
//!   nothing until it has caught up). The operator may write that map (`state: down`); when an
//!   old owner has not acked within the old-owner timeout ([`Coordinator::with_old_owner_timeout`];
//!   the manager's default is [`OLD_OWNER_TIMEOUT_MS`]), the coordinator asks for it with
//!   [`Action::MarkDown`].
//! - **1b**: the map becomes every server's map; `up` servers ack, bounded by
//!   [`PHASE_1B_TIMEOUT_MS`]; those that miss it are marked late and catch up by stamp checks.
//!   A server whose watch stream has been gone for 3 s is not waited for
//!   ([`Event::ServersLost`]): the same outcome as the deadline, sooner.
//! - **2**: the map becomes the clients' (committed) map.
//!
//! - **Read leases**: a server that loses the right to read its own copy of a replicated extent
//!   (its `in_sync` copy made `stale`, `rebuilding` or dropped, or its server marked `down`) is
//!   waited for in phase 1a too, like an old owner, but it is also released once its read lease
//!   has run out ([`Event::LeasesExpired`], fed by the I/O layer after
//!   [`Action::AwaitLeases`]); until it acks, it is granted no new lease
//!   ([`Coordinator::lease_fenced`]). So no server takes a write that such a copy misses while
//!   that copy may still serve reads (docs/replication.md, "Read leases").
//!
//! A map that gives switched extents back to their old owners (`plan::cancel_moves_to_down`: a
//! switch's new owner was marked down before the switch's phase 1a was done) abandons the maps
//! that hold those switches: they are published no further, and the new map takes their place
//! (docs/cluster-protocol.md, "Cancelling a switch to a server marked down").

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;

use crate::api::MoveReadyRequest;
use crate::map::{ClusterMap, Generation, ReplicaState, ServerState};

/// Phase 1a re-send period: a live old owner acks within milliseconds; a second try catches a
/// watch stream that reconnected between the send and the ack.
pub const PHASE_1A_RESEND_MS: u64 = 1_000;
/// Default phase 1a bound: old owners that have not acked within it are marked `down`.
pub const OLD_OWNER_TIMEOUT_MS: u64 = 30_000;
/// Phase 1b bound (docs/cluster-protocol.md: "bounded wait: 5 s").
pub const PHASE_1B_TIMEOUT_MS: u64 = 5_000;
/// How long an old owner marked `down` is still waited for in phase 1a, counted from when the
/// map marking it down is stored (the manager's default; [`Coordinator::with_down_fence`]). A
/// server stopped (SIGSTOP, a stalled VM) for longer than its freeze threshold (3 s, checked by a
/// 500 ms heartbeat) fences itself when it resumes; releasing it only after this long means that
/// a server still hung at the release has been stopped long enough to notice when it resumes.
pub const DOWN_FENCE_MS: u64 = 4_000;
/// Durable maps waiting behind the one being published. Changes are refused (the server answers
/// 503) beyond it: a stuck phase 1a must not let the queue grow without bound.
pub const QUEUE_MAX: usize = 64;

/// The phase a publication waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// 1a: waiting for the old owners of moved extents.
    OldOwners,
    /// 1b: waiting for every `up` server.
    Servers,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OldOwners => "1a",
            Self::Servers => "1b",
        })
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new map is durable: publish it after those before it.
    Committed(Arc<ClusterMap>),
    /// `server` has installed `generation` (or newer).
    Ack {
        /// Server id.
        server: String,
        /// Installed generation.
        generation: Generation,
    },
    /// The read leases of these servers, waited for after [`Action::AwaitLeases`] of
    /// `generation`, have run out: phase 1a of `generation` stops waiting for those that are
    /// there only as readers losing their reads (never for an old owner).
    LeasesExpired {
        /// The publication it is meant for.
        generation: Generation,
        /// Server ids.
        servers: Vec<String>,
    },
    /// A timer from [`Action::StartTimer`] fired.
    Timeout {
        /// Its generation.
        generation: Generation,
        /// Its phase.
        phase: Phase,
    },
    /// The manager has had no watch stream from these servers for 3 s (the I/O layer's
    /// `SERVER_LOST`): phase 1b of `generation` stops waiting for them, as at its deadline
    /// (they are marked late and catch up by stamp checks and fetches). Phase 1a is not
    /// affected: an old owner is never skipped. Ignored unless `generation` is in phase 1b.
    ServersLost {
        /// The publication it is meant for.
        generation: Generation,
        /// Server ids.
        servers: Vec<String>,
    },
    /// `server` fetched (or was streamed) map `generation` with `role=server`: recorded for
    /// status, not an ack.
    ServerFetched {
        /// Server id.
        server: String,
        /// The generation it got.
        generation: Generation,
    },
}

/// What the I/O layer must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Phase 1a: send `map` to these servers' watch streams (only theirs).
    SendToServers {
        /// Server ids.
        servers: Vec<String>,
        /// The map.
        map: Arc<ClusterMap>,
    },
    /// Phase 1b: `map` is now every server's map (`role=server` fetches and watches).
    PublishToServers(Arc<ClusterMap>),
    /// Phase 2: `map` is committed; clients' fetches and watches get it. The store records it.
    PublishToClients(Arc<ClusterMap>),
    /// Phase 1a has waited the old-owner timeout for these servers: make a durable map that
    /// marks them `down` and feed it as [`Event::Committed`] (which releases them). Asked once
    /// per publication.
    MarkDown {
        /// The generation waiting in phase 1a.
        generation: Generation,
        /// The old owners that have not acked.
        servers: Vec<String>,
    },
    /// Phase 1a of `generation` waits for these servers as readers losing their reads: once
    /// every lease granted to them before this action has run out, feed
    /// [`Event::LeasesExpired`] (no lease is granted to them meanwhile: [`Coordinator::lease_fenced`]).
    AwaitLeases {
        /// The generation waiting in phase 1a.
        generation: Generation,
        /// Server ids.
        servers: Vec<String>,
    },
    /// Feed `Event::Timeout { generation, phase }` back after `ms` milliseconds.
    StartTimer {
        /// Generation.
        generation: Generation,
        /// Phase.
        phase: Phase,
        /// Delay.
        ms: u64,
    },
}

/// The publication in progress.
#[derive(Debug, Clone)]
struct Publication {
    map: Arc<ClusterMap>,
    phase: Phase,
    /// Old owners of phase 1a (all of them, acked or not): they get `map` when they fetch.
    old_owners: BTreeSet<String>,
    /// Acks still awaited in the current phase.
    waiting: BTreeSet<String>,
    /// Time spent in phase 1a, counted in re-send periods.
    waited_ms: u64,
    /// [`Action::MarkDown`] was asked for.
    mark_down_asked: bool,
    /// Servers waited for in phase 1a only because they lose reads of their copies
    /// ([`readers_losing`]): released by an ack or once their leases ran out.
    readers: BTreeSet<String>,
    /// Readers not sent the map in phase 1a (released only when their leases run out): they
    /// are the primary in this map of an extent whose reads another server loses, and a
    /// primary that installs the map early could acknowledge writes that server misses.
    held_back: BTreeSet<String>,
    /// Old owners in `waiting` that a newer durable map marks `down`: released once the down
    /// fence has passed (time counted in re-send periods).
    releasing: BTreeMap<String, u64>,
}

/// The coordinator's state.
#[derive(Debug, Clone)]
pub struct Coordinator {
    /// Newest committed map: the clients'.
    committed: Arc<ClusterMap>,
    /// Newest map whose phase 1a is done: every server's.
    servers_map: Arc<ClusterMap>,
    pending: Option<Publication>,
    queue: VecDeque<Arc<ClusterMap>>,
    /// Newest generation each server acked.
    acked: BTreeMap<String, Generation>,
    /// Newest generation each server fetched.
    fetched: BTreeMap<String, Generation>,
    /// Servers that missed a phase-1b deadline and have not acked since.
    late: BTreeSet<String>,
    /// Phase 1a bound (0: none).
    old_owner_timeout_ms: u64,
    /// Wait for an old owner marked down before releasing it (0: release at once).
    down_fence_ms: u64,
    /// Newest generation abandoned in (or before) phase 1a (0: none).
    abandoned: Generation,
    /// Maps up to this generation were through phase 1a before the manager restarted (the store
    /// records it): their switches are never given back ([`Coordinator::resumed_at`]).
    resumed_at: Generation,
    /// Wait in phase 1a for servers losing reads of their copies (read leases): the manager's
    /// setting ([`Coordinator::with_read_leases`]).
    read_leases: bool,
    /// Servers granted no read lease until they ack this generation (or a newer one).
    lease_fence: BTreeMap<String, Generation>,
    /// A change is being planned against [`Coordinator::phase_1a_chain`]: no publication leaves
    /// phase 1a until it is fed (or dropped), so the chain it was planned on stays true.
    holding: bool,
}

impl Coordinator {
    /// A coordinator whose committed map is `committed` (loaded from the store, or generation 1
    /// freshly built). Feed maps that are durable but were not committed as
    /// [`Event::Committed`] next.
    #[must_use]
    pub fn new(committed: ClusterMap) -> Self {
        let committed = Arc::new(committed);
        Self {
            servers_map: Arc::clone(&committed),
            committed,
            pending: None,
            queue: VecDeque::new(),
            acked: BTreeMap::new(),
            fetched: BTreeMap::new(),
            late: BTreeSet::new(),
            old_owner_timeout_ms: 0,
            down_fence_ms: 0,
            abandoned: 0,
            resumed_at: 0,
            read_leases: false,
            lease_fence: BTreeMap::new(),
            holding: false,
        }
    }

    /// The same coordinator with phase 1a bounded by `ms` milliseconds (0, the default of
    /// [`Coordinator::new`]: no bound, wait for old owners until they ack or a map marks them
    /// down; the manager passes `--old-owner-timeout`, default [`OLD_OWNER_TIMEOUT_MS`]). The bound is counted in
    /// [`PHASE_1A_RESEND_MS`] periods, so it is rounded up to one.
    #[must_use]
    pub fn with_old_owner_timeout(mut self, ms: u64) -> Self {
        self.old_owner_timeout_ms = ms;
        self
    }

    /// The same coordinator releasing an old owner that a newer durable map marks `down` only
    /// `ms` milliseconds after that map is stored (0, the default of [`Coordinator::new`]: at
    /// once; the manager passes [`DOWN_FENCE_MS`]). Counted in [`PHASE_1A_RESEND_MS`] periods,
    /// plus one for the period the map arrived in, so at least `ms` pass.
    #[must_use]
    pub fn with_down_fence(mut self, ms: u64) -> Self {
        self.down_fence_ms = ms;
        self
    }

    /// The same coordinator waiting in phase 1a, besides the old owners, for every server that
    /// loses reads of its copy of a replicated extent, until it acks or its read lease has run
    /// out (the manager's setting; off in [`Coordinator::new`], so a driver that grants no
    /// leases needs none).
    #[must_use]
    pub fn with_read_leases(mut self) -> Self {
        self.read_leases = true;
        self
    }

    /// Whether `server` may not be granted a read lease now: a map that takes reads from it
    /// is waiting (or was published) and it has not acked that map yet.
    #[must_use]
    pub fn lease_fenced(&self, server: &str) -> Option<Generation> {
        self.lease_fence
            .get(server)
            .copied()
            .filter(|g| self.acked(server) < *g)
    }

    /// The same coordinator, started by a manager whose store records that phase 1a of
    /// `generation` was done before the restart (`Store::set_phase_1a_done`): the switches of
    /// maps up to it may have reached their new owners (which may have taken writes), so no
    /// cancellation gives them back ([`Coordinator::phase_1a_chain`] starts at the newest of
    /// them).
    #[must_use]
    pub fn resumed_at(mut self, generation: Generation) -> Self {
        self.resumed_at = generation;
        self
    }

    /// The clients' map: the newest committed one.
    #[must_use]
    pub fn client_map(&self) -> Arc<ClusterMap> {
        Arc::clone(&self.committed)
    }

    /// The map server `server` gets: the one in phase 1a if it is one of its old owners, else
    /// the newest whose phase 1a is done. `None` (an anonymous server fetch) gets the latter.
    #[must_use]
    pub fn server_map(&self, server: Option<&str>) -> Arc<ClusterMap> {
        if let (Some(p), Some(id)) = (&self.pending, server)
            && p.phase == Phase::OldOwners
            && (p.old_owners.contains(id) || (p.readers.contains(id) && !p.held_back.contains(id)))
        {
            return Arc::clone(&p.map);
        }
        Arc::clone(&self.servers_map)
    }

    /// The newest map whose phase 1a is done (the first), then every durable map whose phase
    /// 1a is not done, in generation order (the one in phase 1a, if any, then the queue): what
    /// `plan::apply_cancelling` needs to cancel a switch to a server marked down.
    #[must_use]
    pub fn phase_1a_chain(&self) -> Vec<Arc<ClusterMap>> {
        let mut out = vec![Arc::clone(&self.servers_map)];
        if let Some(p) = &self.pending
            && p.phase == Phase::OldOwners
        {
            out.push(Arc::clone(&p.map));
        }
        out.extend(self.queue.iter().cloned());
        // Maps durable at the manager's start count as through phase 1a (see `resumed_at`).
        let first = out
            .iter()
            .rposition(|m| m.generation <= self.resumed_at)
            .unwrap_or(0);
        out.split_off(first)
    }

    /// [`Coordinator::phase_1a_chain`] for a change about to be planned on it: until
    /// [`Coordinator::release`] (or the next [`Event::Committed`]), no publication leaves phase
    /// 1a (acks are still recorded), so a switch the change gives back cannot reach its new
    /// owner meanwhile.
    pub fn hold_chain(&mut self) -> Vec<Arc<ClusterMap>> {
        self.holding = true;
        self.phase_1a_chain()
    }

    /// Ends [`Coordinator::hold_chain`] without a new map (the change was refused or changed
    /// nothing); returns what became possible meanwhile.
    #[must_use]
    pub fn release(&mut self) -> Vec<Action> {
        self.holding = false;
        let mut out = Vec::new();
        self.advance(&mut out);
        out
    }

    /// A restarted manager's durable maps newer than the committed one, in generation order:
    /// all are queued (a map that gives switches back abandons those before it, as on
    /// [`Event::Committed`]) before any is published, so the decisions are those made before
    /// the restart.
    #[must_use]
    pub fn resume(&mut self, maps: Vec<Arc<ClusterMap>>) -> Vec<Action> {
        for map in maps {
            if cancels(&self.head_map(), &map) {
                self.abandon_for(&map);
            }
            self.queue.push_back(map);
        }
        let mut out = Vec::new();
        self.advance(&mut out);
        out
    }

    /// The newest generation known (durable): being published, queued or committed.
    #[must_use]
    pub fn head_generation(&self) -> Generation {
        self.queue
            .back()
            .map(|m| m.generation)
            .or(self.pending.as_ref().map(|p| p.map.generation))
            .unwrap_or(self.committed.generation)
    }

    /// The newest generation abandoned before its phase 1a was done (0: none): a newer durable
    /// map gave one of its switched extents back to the old owner
    /// ([`crate::plan::cancel_moves_to_down`]). It was never, and will never be, any server's
    /// map beyond phase 1a, nor a client's.
    #[must_use]
    pub fn abandoned(&self) -> Generation {
        self.abandoned
    }

    /// Whether another change may be committed now (the queue has room).
    #[must_use]
    pub fn can_accept(&self) -> bool {
        self.queue.len() < QUEUE_MAX
    }

    /// The publication in progress: generation, phase, awaited servers, queued maps.
    #[must_use]
    pub fn publishing(&self) -> Option<(Generation, Phase, Vec<String>, usize)> {
        self.pending.as_ref().map(|p| {
            (
                p.map.generation,
                p.phase,
                p.waiting.iter().cloned().collect(),
                self.queue.len(),
            )
        })
    }

    /// Newest generation `server` acked (0: none).
    #[must_use]
    pub fn acked(&self, server: &str) -> Generation {
        self.acked.get(server).copied().unwrap_or(0)
    }

    /// Newest generation `server` fetched (0: none).
    #[must_use]
    pub fn fetched(&self, server: &str) -> Generation {
        self.fetched.get(server).copied().unwrap_or(0)
    }

    /// Whether `server` missed a phase-1b deadline and has not acked since.
    #[must_use]
    pub fn is_late(&self, server: &str) -> bool {
        self.late.contains(server)
    }

    /// Whether the move that `req` reports ready may be switched now
    /// (docs/cluster-protocol.md, "Moving an extent"): the newest map whose phase 1a is done
    /// has that move (same destination and offset as the newest durable map), and its
    /// destination has acked that map's generation (or a newer one). A destination that has not
    /// is catching up, hung or behind, and cannot have taken the copier's passes; the owner's
    /// copier retries a refused move-ready every second. `Ok` when the newest durable map has no
    /// such move at all (the plan refuses the request with its own error).
    ///
    /// # Errors
    /// Why the switch must wait, naming the move and what it waits for (HTTP 409).
    pub fn move_ready_check(&self, req: &MoveReadyRequest) -> Result<(), String> {
        let head = self.head_map();
        let Some(to) = head
            .volume(&req.volume)
            .and_then(|v| v.extents.get(req.extent))
            .and_then(|e| e.moving.as_ref())
            .map(|m| &m.to)
        else {
            return Ok(());
        };
        let what = format!(
            "move of {}[{}] to {} (offset {})",
            req.volume, req.extent, to.server, to.offset
        );
        let servers = &self.servers_map;
        let in_servers_map = servers
            .volume(&req.volume)
            .and_then(|v| v.extents.get(req.extent))
            .and_then(|e| e.moving.as_ref())
            .is_some_and(|m| m.to.same_place(to));
        if !in_servers_map {
            return Err(format!(
                "{what} is not switched yet: the servers' map (generation {}) does not have it \
                 (the map that starts it is not through phase 1a); retry later",
                servers.generation
            ));
        }
        let acked = self.acked(&to.server);
        if acked < servers.generation {
            return Err(format!(
                "{what} is not switched yet: its destination {} has acked generation {acked}, \
                 not the servers' map (generation {}) that has the move; retry once it acks",
                to.server, servers.generation
            ));
        }
        Ok(())
    }

    /// Feeds one event; returns what to do, in order.
    #[must_use]
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Committed(map) => {
                self.holding = false;
                debug_assert!(
                    map.generation > self.head_generation(),
                    "maps are committed in increasing generation order"
                );
                self.excuse_down_servers(&map);
                if cancels(&self.head_map(), &map) {
                    self.abandon_for(&map);
                }
                self.queue.push_back(map);
                self.advance(&mut out);
            }
            Event::Ack { server, generation } => {
                if generation > self.head_generation() {
                    // Not a map we made: a confused or lying server. Ignored, not counted.
                    tracing::warn!(%server, generation, "ack of an unknown generation ignored");
                    return out;
                }
                let a = self.acked.entry(server.clone()).or_insert(0);
                *a = (*a).max(generation);
                if self
                    .lease_fence
                    .get(&server)
                    .is_some_and(|g| *g <= generation)
                {
                    self.lease_fence.remove(&server);
                }
                if generation >= self.servers_map.generation {
                    self.late.remove(&server);
                }
                if let Some(p) = &mut self.pending
                    && generation >= p.map.generation
                {
                    p.waiting.remove(&server);
                    p.releasing.remove(&server);
                }
                self.advance(&mut out);
            }
            Event::LeasesExpired {
                generation,
                servers,
            } => {
                let Some(p) = &mut self.pending else {
                    return out;
                };
                if p.map.generation != generation || p.phase != Phase::OldOwners {
                    return out;
                }
                let released: Vec<String> = servers
                    .into_iter()
                    .filter(|id| p.readers.contains(id) && !p.old_owners.contains(id))
                    .filter(|id| p.waiting.remove(id))
                    .collect();
                if !released.is_empty() {
                    tracing::warn!(
                        generation,
                        ?released,
                        "phase 1a: servers losing reads of their copies have not acked; their \
                         read leases have run out, so they serve none of those reads now"
                    );
                    self.advance(&mut out);
                }
            }
            Event::Timeout { generation, phase } => {
                let Some(p) = &mut self.pending else {
                    return out;
                };
                if p.map.generation != generation || p.phase != phase {
                    return out; // a timer of a phase already over
                }
                match phase {
                    Phase::OldOwners => {
                        p.waited_ms = p.waited_ms.saturating_add(PHASE_1A_RESEND_MS);
                        let fence = self.down_fence_ms.saturating_add(PHASE_1A_RESEND_MS);
                        let mut released = Vec::new();
                        for (id, ms) in &mut p.releasing {
                            *ms = ms.saturating_add(PHASE_1A_RESEND_MS);
                            if *ms >= fence {
                                released.push(id.clone());
                            }
                        }
                        for id in &released {
                            p.releasing.remove(id);
                            p.waiting.remove(id);
                        }
                        if !released.is_empty() {
                            tracing::warn!(
                                generation,
                                ?released,
                                "phase 1a: old owners marked down are no longer waited for (the \
                                 down fence has passed)"
                            );
                        }
                        if p.waiting.is_empty() {
                            self.advance(&mut out);
                            return out;
                        }
                        let unasked: Vec<String> = p
                            .waiting
                            .iter()
                            .filter(|id| !p.releasing.contains_key(*id))
                            .filter(|id| p.old_owners.contains(*id))
                            .cloned()
                            .collect();
                        if self.old_owner_timeout_ms > 0
                            && !unasked.is_empty()
                            && p.waited_ms >= self.old_owner_timeout_ms
                            && !p.mark_down_asked
                        {
                            p.mark_down_asked = true;
                            tracing::warn!(
                                generation,
                                old_owners = ?p.waiting,
                                waited_ms = p.waited_ms,
                                "phase 1a: old owners have not acked within the old-owner \
                                 timeout; marking them down"
                            );
                            out.push(Action::MarkDown {
                                generation,
                                servers: unasked,
                            });
                        }
                        let sent: Vec<String> =
                            p.waiting.difference(&p.held_back).cloned().collect();
                        if !sent.is_empty() {
                            out.push(Action::SendToServers {
                                servers: sent,
                                map: Arc::clone(&p.map),
                            });
                        }
                        out.push(Action::StartTimer {
                            generation,
                            phase,
                            ms: PHASE_1A_RESEND_MS,
                        });
                    }
                    Phase::Servers => {
                        tracing::warn!(
                            generation,
                            late = ?p.waiting,
                            "phase 1b deadline: committing without these servers' acks"
                        );
                        self.late.extend(std::mem::take(&mut p.waiting));
                        self.advance(&mut out);
                    }
                }
            }
            Event::ServersLost {
                generation,
                servers,
            } => {
                let Some(p) = &mut self.pending else {
                    return out;
                };
                if p.map.generation != generation || p.phase != Phase::Servers {
                    return out;
                }
                let lost: Vec<String> = servers
                    .into_iter()
                    .filter(|id| p.waiting.remove(id))
                    .collect();
                if lost.is_empty() {
                    return out;
                }
                tracing::warn!(
                    generation,
                    ?lost,
                    "phase 1b: not waiting for servers without a watch stream"
                );
                self.late.extend(lost);
                self.advance(&mut out);
            }
            Event::ServerFetched { server, generation } => {
                let f = self.fetched.entry(server).or_insert(0);
                *f = (*f).max(generation);
            }
        }
        out
    }

    /// The newest durable map: the last queued, the one being published, or the committed one.
    fn head_map(&self) -> Arc<ClusterMap> {
        self.queue
            .back()
            .or(self.pending.as_ref().map(|p| &p.map))
            .map_or_else(|| Arc::clone(&self.committed), Arc::clone)
    }

    /// `newer` gives back every switch not through phase 1a (`cancels`): the maps that hold
    /// them (the one in phase 1a, queued ones), that is those that give an extent another owner
    /// than `newer` does, are abandoned, never published further; `newer` is published in their
    /// place. Such maps are a suffix of those waiting (a switch stays in every later map until
    /// `newer` gives it back), so the order of publication holds. The decision depends only on
    /// the durable maps, so a restarted manager that feeds them again decides the same.
    fn abandon_for(&mut self, newer: &ClusterMap) {
        let differs = |m: &ClusterMap| {
            m.volumes.iter().any(|v| {
                v.extents
                    .iter()
                    .enumerate()
                    .any(|(i, e)| !same_owner(e.replicas.first(), newer.owner(&v.name, i)))
            })
        };
        if let Some(p) = &self.pending
            && p.phase == Phase::OldOwners
            && differs(&p.map)
        {
            tracing::warn!(
                abandoned = p.map.generation,
                by = newer.generation,
                "phase 1a: a newer map gives the switched extents back (a switch's new owner \
                 was marked down); this publication is abandoned"
            );
            self.abandoned = self.abandoned.max(p.map.generation);
            self.pending = None;
        }
        let keep = self.queue.iter().take_while(|m| !differs(m)).count();
        for m in self.queue.drain(keep..) {
            tracing::warn!(
                abandoned = m.generation,
                by = newer.generation,
                "a queued map is abandoned: a newer map gives its switched extents back"
            );
            self.abandoned = self.abandoned.max(m.generation);
        }
    }

    /// Servers marked `down` by a newer durable map are not waited for, in phase 1a (the
    /// operator or the old-owner timeout declared them dead) nor in 1b (which is bounded anyway).
    /// In phase 1a, with a down fence, they are released only once it has passed
    /// ([`Coordinator::with_down_fence`]).
    fn excuse_down_servers(&mut self, newer: &ClusterMap) {
        let fence = self.down_fence_ms;
        if let Some(p) = &mut self.pending {
            let down: Vec<String> = p
                .waiting
                .iter()
                .filter(|id| {
                    newer
                        .server(id)
                        .is_none_or(|s| s.state == ServerState::Down)
                })
                .cloned()
                .collect();
            for id in down {
                if fence > 0 && p.phase == Phase::OldOwners {
                    p.releasing.entry(id).or_insert(0);
                } else {
                    p.waiting.remove(&id);
                    p.releasing.remove(&id);
                }
            }
        }
    }

    /// Moves publications forward as far as acks allow.
    fn advance(&mut self, out: &mut Vec<Action>) {
        loop {
            match &self.pending {
                None => {
                    let Some(map) = self.queue.pop_front() else {
                        return;
                    };
                    self.start(map, out);
                }
                Some(p) if !p.waiting.is_empty() => return,
                Some(p) if p.phase == Phase::OldOwners && self.holding => return,
                Some(p) => match p.phase {
                    Phase::OldOwners => self.enter_servers_phase(out),
                    Phase::Servers => self.commit(out),
                },
            }
        }
    }

    /// Starts publishing `map`: phase 1a if some extent changes owner, else straight to 1b.
    fn start(&mut self, map: Arc<ClusterMap>, out: &mut Vec<Action>) {
        debug_assert!(self.pending.is_none(), "one publication at a time");
        debug_assert!(
            Arc::ptr_eq(&self.servers_map, &self.committed),
            "between publications servers and clients have the same map"
        );
        let old_owners: BTreeSet<String> = ClusterMap::changed_owners(&self.committed, &map)
            .into_iter()
            .map(|l| l.old_owner)
            .collect();
        // A server that already acked this generation (it cannot have, but acks are idempotent)
        // or that this map or a newer durable one (queued behind it) declares down is not
        // waited for: the newer map was stored while this one queued, so it could not excuse
        // the server on arrival (`excuse_down_servers` only sees the publication in progress).
        // With a down fence, those marked down by a newer map are still waited for until it
        // has passed (counted from now: the map may have been stored earlier, which only makes
        // the wait longer than needed).
        let queue = &self.queue;
        let down_later = |id: &String| {
            queue.iter().any(|newer| {
                newer
                    .server(id)
                    .is_none_or(|s| s.state == ServerState::Down)
            })
        };
        let fence = self.down_fence_ms;
        let waiting: BTreeSet<String> = old_owners
            .iter()
            .filter(|id| {
                map.server(id).is_some_and(|s| s.state != ServerState::Down)
                    && (fence > 0 || !down_later(id))
                    && self.acked(id) < map.generation
            })
            .cloned()
            .collect();
        let mut waiting = waiting;
        let (readers, held_back) = if self.read_leases {
            let lost = reads_lost(&self.committed, &map);
            let readers: BTreeSet<String> = lost
                .iter()
                .map(|(id, _, _)| id.clone())
                .filter(|id| !old_owners.contains(id))
                .filter(|id| self.acked(id) < map.generation)
                .collect();
            // The primaries (in `map`) of the extents whose reads someone loses.
            let primaries: BTreeSet<&str> = lost
                .iter()
                .filter_map(|(_, v, i)| {
                    let e = map.volume(v)?.extents.get(*i)?;
                    map.write_owner(e).map(|r| r.server.as_str())
                })
                .collect();
            let held_back: BTreeSet<String> = readers
                .iter()
                .filter(|id| primaries.contains(id.as_str()))
                .cloned()
                .collect();
            (readers, held_back)
        } else {
            (BTreeSet::new(), BTreeSet::new())
        };
        let generation = map.generation;
        for id in &readers {
            self.lease_fence
                .entry(id.clone())
                .and_modify(|g| *g = (*g).max(generation))
                .or_insert(generation);
            waiting.insert(id.clone());
        }
        if !readers.is_empty() {
            out.push(Action::AwaitLeases {
                generation,
                servers: readers.iter().cloned().collect(),
            });
        }
        let releasing: BTreeMap<String, u64> = waiting
            .iter()
            .filter(|id| down_later(id))
            .map(|id| (id.clone(), 0))
            .collect();
        if !waiting.is_empty() {
            let sent: Vec<String> = waiting.difference(&held_back).cloned().collect();
            if !sent.is_empty() {
                out.push(Action::SendToServers {
                    servers: sent,
                    map: Arc::clone(&map),
                });
            }
            out.push(Action::StartTimer {
                generation,
                phase: Phase::OldOwners,
                ms: PHASE_1A_RESEND_MS,
            });
        }
        self.pending = Some(Publication {
            map,
            phase: Phase::OldOwners,
            old_owners,
            waiting,
            waited_ms: 0,
            mark_down_asked: false,
            readers,
            held_back,
            releasing,
        });
    }

    /// Phase 1a is done: the map becomes every server's.
    fn enter_servers_phase(&mut self, out: &mut Vec<Action>) {
        let Some(p) = &mut self.pending else {
            debug_assert!(false, "phase 1b without a publication");
            return;
        };
        debug_assert!(p.phase == Phase::OldOwners && p.waiting.is_empty());
        p.phase = Phase::Servers;
        let map = Arc::clone(&p.map);
        let acked = &self.acked;
        let newest = self.queue.back();
        p.waiting = map
            .servers
            .iter()
            .filter(|s| s.state == ServerState::Up)
            .filter(|s| {
                newest.is_none_or(|n| n.server(&s.id).is_none_or(|e| e.state != ServerState::Down))
            })
            .filter(|s| acked.get(&s.id).copied().unwrap_or(0) < map.generation)
            .map(|s| s.id.clone())
            .collect();
        if !p.waiting.is_empty() {
            out.push(Action::StartTimer {
                generation: map.generation,
                phase: Phase::Servers,
                ms: PHASE_1B_TIMEOUT_MS,
            });
        }
        self.servers_map = Arc::clone(&map);
        out.push(Action::PublishToServers(map));
    }

    /// Phase 1b is done: the map is committed (phase 2).
    fn commit(&mut self, out: &mut Vec<Action>) {
        let Some(p) = self.pending.take() else {
            debug_assert!(false, "commit without a publication");
            return;
        };
        debug_assert!(p.phase == Phase::Servers && p.waiting.is_empty());
        debug_assert!(Arc::ptr_eq(&p.map, &self.servers_map));
        self.committed = Arc::clone(&p.map);
        out.push(Action::PublishToClients(p.map));
    }
}

/// Whether `newer`, the map stored after `prev`, gives switched extents back
/// (`plan::cancel_moves_to_down`): it changes the owner of an extent to a replica that is not
/// the destination of that extent's move in `prev`, nor one of the extent's copies in `prev`.
/// A switch (`plan::switch_move`) always changes the owner to the move's destination, and the
/// drop of a replicated extent's first copy (a copy move: docs/replication.md, "Moving a
/// copy") to the next copy, already in `prev`; only a cancellation gives the extent to a
/// server that `prev` does not hold it on (the old owner it was switched away from).
fn cancels(prev: &ClusterMap, newer: &ClusterMap) -> bool {
    prev.volumes.iter().any(|v| {
        v.extents.iter().enumerate().any(|(i, e)| {
            let (Some(was), Some(now)) = (e.replicas.first(), newer.owner(&v.name, i)) else {
                return false;
            };
            !was.same_place(now)
                && e.moving.as_ref().is_none_or(|m| !m.to.same_place(now))
                && !e.replicas.iter().any(|r| r.same_place(now))
        })
    })
}

/// The servers that read their own copy of some replicated extent under `prev` and may not
/// under `next`: a copy `in_sync` in `prev` (of an extent with several copies, on a server
/// not `down`) that `next` does not keep `in_sync` at the same place on a server not `down`.
/// A volume that `next` no longer has takes no writes, so its readers are left out.
#[must_use]
pub fn readers_losing(prev: &ClusterMap, next: &ClusterMap) -> BTreeSet<String> {
    reads_lost(prev, next)
        .into_iter()
        .map(|(id, _, _)| id)
        .collect()
}

/// [`readers_losing`], with the extent (volume, index) whose reads each loses.
fn reads_lost(prev: &ClusterMap, next: &ClusterMap) -> Vec<(String, String, usize)> {
    let live =
        |m: &ClusterMap, id: &str| m.server(id).is_some_and(|s| s.state != ServerState::Down);
    let mut out = Vec::new();
    for v in &prev.volumes {
        let Some(nv) = next.volume(&v.name) else {
            continue;
        };
        for (i, e) in v.extents.iter().enumerate() {
            if e.replicas.len() < 2 {
                continue;
            }
            for r in &e.replicas {
                if r.state != ReplicaState::InSync || !live(prev, &r.server) {
                    continue;
                }
                let kept = nv.extents.get(i).is_some_and(|ne| {
                    ne.replicas
                        .iter()
                        .any(|n| n.same_place(r) && n.state == ReplicaState::InSync)
                }) && live(next, &r.server);
                if !kept {
                    out.push((r.server.clone(), v.name.clone(), i));
                }
            }
        }
    }
    out
}

/// Whether two owners are the same copy (a replica's state changing, e.g. to `stale` when its
/// server is marked down, is not a change of owner).
fn same_owner(a: Option<&crate::map::Replica>, b: Option<&crate::map::Replica>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.same_place(b),
        (None, None) => true,
        _ => false,
    }
}

#[cfg(test)]
#[path = "coord_tests.rs"]
mod tests;
