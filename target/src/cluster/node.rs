//! The storage server's cluster rules as pure functions of its map: no I/O, no clock, no tokio
//! (docs/cluster-protocol.md, "Fencing"). The daemon (`cluster/mod.rs`, `mover.rs`,
//! `routed.rs`) and the simulation (`target/tests/sim`) both call these, so the simulation
//! checks the rules the server runs.
//!
//! - [`boot`]: which map a (re)starting server starts from, and whether it must catch up
//!   before it serves;
//! - [`serves`]: whether a server may serve extents and write to peers under its map;
//! - [`lost_extents`]: the extents an install takes away from this server (phase 1a fencing);
//! - [`Fence`]: whether a fenced server (restarted, or found frozen) has caught up;
//! - [`Ownership::admit`]: whether an internal command from a given peer may touch a range of
//!   this server's pool (the source rule for copies, the owner rule for routed commands, the
//!   primary rule for replica writes); [`Ownership::fanout`]: the copies a primary forwards
//!   a write to;
//! - [`install::Install`]: the install of a new map (gate, final copies, persist, ack,
//!   postponement) as an events-in, actions-out state machine;
//! - [`copier::Copier`]: the copier of a moving extent (passes, move-ready, stop), likewise;
//! - [`retry::Retry`]: the sender's retries of one routed piece or copied range;
//! - [`admission::step`]: what becomes of a command that arrives (gate, stamp, behind-wait,
//!   fencing rule);
//! - [`watch::Watch`]: the watch loop (which map next, fetches, re-acks, postponed installs,
//!   the fence after a restart or a freeze);
//! - [`route`]: a host's I/O split at extent boundaries, and where each piece goes.

pub mod admission;
pub mod copier;
pub mod install;
pub mod retry;
pub mod route;
pub mod watch;

use std::sync::Arc;

use manager::map::{ClusterMap, ReplicaState, ServerState};

/// Namespace of the internal subsystem for routed commands (a host's I/O forwarded to the
/// extent's owner): the whole pool.
pub const ROUTED_NSID: u32 = 1;
/// Namespace of the internal subsystem for copies of a moving extent (old owner to new
/// owner): the same pool, under the source rule.
pub const COPY_NSID: u32 = 2;
/// Namespace of the internal subsystem for replica writes (an extent's primary forwarding a
/// write to its other copies): the same pool, under the primary rule (docs/replication.md).
pub const REPLICA_NSID: u32 = 3;

/// How an internal command reached this server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A routed command (namespace [`ROUTED_NSID`]).
    Routed,
    /// A copy of a moving extent (namespace [`COPY_NSID`]).
    Copy,
    /// A replica write from an extent's primary (namespace [`REPLICA_NSID`]).
    Replica,
}

/// Why an internal command is refused (before its stamp is even looked at).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// This server is not serving: it is catching up with the current map after a restart,
    /// or its map marks it `down`. Retryable (the sender's map moves on, or ours does).
    NotServing,
    /// The sender is not an `up` server of this server's map.
    SenderFenced,
    /// A routed command for a range this server does not own in its map.
    NotOwner,
    /// A copy into a range that, in this server's map, is not the destination of a move whose
    /// source (the extent's owner) is the sender: the move was switched or cancelled without
    /// the sender. Final for the sender: that extent is no longer its to copy.
    NotSource,
    /// A replica write to a range that, in this server's map, is not an `in_sync` or
    /// `rebuilding` copy of an extent whose primary is the sender: the sender is not (or no
    /// longer) the primary, or this copy was removed or marked stale.
    NotPrimary,
    /// A forwarded write whose expiry (see [`expires_at`]) has passed: its sender has given
    /// it up, or is about to, and its host may already have written the blocks again through
    /// another path. Retryable, like [`Refusal::NotServing`].
    Expired,
}

/// How much earlier than its own deadline a sender makes a forwarded command expire: the
/// servers' clocks (CLOCK_REALTIME) must agree within this (docs/cluster-protocol.md,
/// "Bounds").
pub const CLOCK_MARGIN_MS: u64 = 1_000;

/// The expiry a server puts on the commands it forwards for one host command: its forwarding
/// deadline (`timeout_ms` from `now_ms`, wall-clock milliseconds) less [`CLOCK_MARGIN_MS`],
/// and never less than half the timeout, so that a short timeout still leaves the receiver
/// time to run the command.
pub fn expires_at(now_ms: u64, timeout_ms: u64) -> u64 {
    let margin = CLOCK_MARGIN_MS.min(timeout_ms / 2);
    now_ms.saturating_add(timeout_ms - margin)
}

/// Whether a command carrying `expires` (0: none) may no longer start at wall-clock `now_ms`.
pub fn expired(expires: u64, now_ms: u64) -> bool {
    expires != 0 && now_ms > expires
}

/// The storage server's timing and retry policy, in milliseconds (docs/cluster-protocol.md).
/// The daemon and the simulation both use these values.
pub mod policy {
    /// Tries of a routed piece (routed.rs), backoff doubling from the first to the last value.
    pub const ROUTE_TRIES: u32 = 6;
    pub const ROUTE_BACKOFF_MIN_MS: u64 = 10;
    pub const ROUTE_BACKOFF_MAX_MS: u64 = 320;
    /// Tries of one copied range (mover.rs `copy_range`), backoff doubling to the last value.
    pub const COPY_TRIES: u32 = 20;
    pub const COPY_BACKOFF_MIN_MS: u64 = 10;
    pub const COPY_BACKOFF_MAX_MS: u64 = 500;
    /// The copier's pause after a failed pass, and between refused move-ready requests.
    pub const PASS_RETRY_MS: u64 = 200;
    pub const READY_RETRY_MS: u64 = 500;
    /// Rounds of the final copy inside a phase-1a install, and the pause after a failed one.
    pub const FINAL_ROUNDS: u32 = 4;
    pub const FINAL_RETRY_MS: u64 = 100;
    /// Tries of an install's ack; the pause after failed try `n` is `ACK_BACKOFF_MS << n`.
    pub const ACK_TRIES: u32 = 5;
    pub const ACK_BACKOFF_MS: u64 = 100;
    /// A starting server asks for its first map this often.
    pub const BOOT_RETRY_MS: u64 = 500;
    /// A postponed install (its final copy failed) is tried again after this.
    pub const POSTPONED_RETRY_MS: u64 = 1_000;
    /// A server repeats the ack of its installed generation this often (acks are idempotent).
    pub const REACK_MS: u64 = 1_000;
    /// A fenced server (frozen, catching up) fetches the current map again this often.
    pub const CATCH_UP_RETRY_MS: u64 = 500;
    /// A broken watch stream is opened again after this.
    pub const RECONNECT_MS: u64 = 200;
    /// The longest a command waits at a closed install gate before it is answered without
    /// running (`cluster::gate::GATE_WAIT`): an install can take longer (its final copies),
    /// a host command cannot.
    pub const GATE_WAIT_MS: u64 = 4_000;
}

/// A server whose heartbeat (every [`HEARTBEAT_MS`]) finds its clock jumped by more than
/// this was frozen (SIGSTOP, a stalled VM): the manager may have marked it down and switched
/// its extents meanwhile, so it serves nothing until it has fetched the current map.
pub const FREEZE_MS: u64 = 3_000;
/// The daemon's heartbeat period.
pub const HEARTBEAT_MS: u64 = 500;

/// Whether a server whose heartbeat last ticked at `last_tick_ms` and whose clock now reads
/// `now_ms` (any monotonic clock in milliseconds) was frozen in between.
pub fn frozen(last_tick_ms: u64, now_ms: u64) -> bool {
    now_ms.saturating_sub(last_tick_ms) > FREEZE_MS
}

/// Whether a fenced server (restarted from an older persisted map, or found frozen) has caught
/// up (docs/cluster-protocol.md, "Fencing", rules 6 and 8): it serves again once it has
/// installed a map at least as new as one fetched from the manager after its latest fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    caught_up: bool,
    /// Bumped by every fence: only a fetch started after the latest fence lifts it.
    epoch: u64,
    /// A fetch started at fence epoch `.0` brought generation `.1`.
    thaw: Option<(u64, u64)>,
}

impl Fence {
    /// A server that starts caught up, or not (its catch-up install is due).
    pub fn new(caught_up: bool) -> Self {
        Self {
            caught_up,
            epoch: 0,
            thaw: None,
        }
    }

    /// Whether the server has the current map (it may serve).
    pub fn caught_up(&self) -> bool {
        self.caught_up
    }

    /// The process was frozen: serve nothing until a map fetched from now on is installed.
    pub fn fence(&mut self) {
        self.caught_up = false;
        self.epoch += 1;
        self.thaw = None;
    }

    /// A fetch of the current map starts: the epoch to hand to [`Fence::fetched`] with its
    /// answer, or `None` when the server is not fenced.
    pub fn fetch_started(&self) -> Option<u64> {
        (!self.caught_up).then_some(self.epoch)
    }

    /// A fetch started at `epoch` brought a map of generation `generation`.
    pub fn fetched(&mut self, epoch: u64, generation: u64) {
        self.thaw = Some((epoch, generation));
    }

    /// The installed generation is now `installed`: lifts the fence if a fetch started after
    /// the latest fence brought no newer map. True when it was lifted now.
    pub fn try_thaw(&mut self, installed: u64) -> bool {
        match self.thaw {
            Some((epoch, target))
                if !self.caught_up && epoch == self.epoch && installed >= target =>
            {
                self.thaw = None;
                self.caught_up = true;
                true
            }
            _ => false,
        }
    }
}

/// How a server starts: from which map, and whether it must catch up first.
#[derive(Debug, Clone, PartialEq)]
pub struct Boot {
    /// The map the server starts from (its generation is the server's first generation).
    pub map: ClusterMap,
    /// A newer map to install before serving anything (the fetched one), if any.
    pub catch_up: Option<ClusterMap>,
}

/// A server with a durable pool restarts from the map it last installed (`persisted`), so
/// that extents it lost meanwhile go through the normal install (fence, final copy); the map
/// it fetched from the manager (`fetched`), when newer, is installed before the server serves
/// anything or writes to a peer (only that install's final copies are sent, and the receiver
/// accepts them only under the source rule). A persisted map newer than the fetched one, or
/// one that does not list this server, is ignored.
pub fn boot(persisted: Option<ClusterMap>, fetched: ClusterMap, me: &str) -> Boot {
    match persisted.filter(|p| p.generation <= fetched.generation && p.server(me).is_some()) {
        Some(p) if p.generation < fetched.generation => Boot {
            map: p,
            catch_up: Some(fetched),
        },
        _ => Boot {
            map: fetched,
            catch_up: None,
        },
    }
}

/// Whether a server whose installed map is `map` serves extents and writes to peers: it must
/// be in the map and not marked `down`. (A restarting server also waits for its catch-up
/// install, see [`boot`].)
pub fn serves(map: &ClusterMap, me: &str) -> bool {
    map.server(me).is_some_and(|s| s.state != ServerState::Down)
}

/// The extents that installing `new` over `old` takes away from `me`, as (volume, extent).
pub fn lost_extents(old: &ClusterMap, new: &ClusterMap, me: &str) -> Vec<(String, usize)> {
    ClusterMap::changed_owners(old, new)
        .into_iter()
        .filter(|l| l.old_owner == me)
        .map(|l| (l.volume, l.extent))
        .collect()
}

/// What a sender does with a "stale map" (80h) or "server behind" (81h) answer carrying the
/// receiver's generation `theirs`, to a command it stamped with `sent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnMismatch {
    /// The final copy inside a phase-1a install: our own map cannot move while we install one,
    /// so stamp the receiver's generation and retry at once (docs/cluster-protocol.md, "Rules
    /// added after the simulation").
    Adopt(u64),
    /// We are behind: fetch the map now and wait (bounded) for this generation.
    Refresh(u64),
    /// The receiver is behind (or not serving): it catches up on its own; back off.
    Backoff,
}

/// The rule for [`OnMismatch`].
pub fn on_mismatch(sent: u64, theirs: u64, final_copy: bool) -> OnMismatch {
    match (theirs > sent, final_copy) {
        (true, true) => OnMismatch::Adopt(theirs),
        (true, false) => OnMismatch::Refresh(theirs),
        (false, _) => OnMismatch::Backoff,
    }
}

/// The next run of dirty chunks to copy from chunk `from` on: `[first, end)` with at most
/// `max` chunks, or `None` when no dirty chunk is left (`dirty(i)`: chunk `i` is dirty).
pub fn next_dirty_run(
    len: usize,
    dirty: impl Fn(usize) -> bool,
    from: usize,
    max: usize,
) -> Option<(usize, usize)> {
    let first = (from..len).find(|c| dirty(*c))?;
    let mut end = first + 1;
    while end < len && dirty(end) && end - first < max {
        end += 1;
    }
    Some((first, end))
}

/// Whether a copier that just finished pass number `passes` (1-based), which copied
/// `chunks` dirty chunks, reports move-ready (the final copy under the gate takes the rest).
pub fn converged(chunks: usize, passes: u32, converged_chunks: usize, passes_max: u32) -> bool {
    chunks <= converged_chunks || passes >= passes_max
}

/// What this server's map says about one range of its pool.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    /// This server orders the extent's writes (its owner; with replicas, its primary): routed
    /// writes run here, and go on to `copies`.
    Owner { copies: Arc<[Copy]> },
    /// A non-primary copy whose writes come from the primary `primary` (namespace
    /// [`REPLICA_NSID`]).
    Replica { primary: String },
    /// The destination of a move from `from` (namespace [`COPY_NSID`]).
    Incoming { from: String },
}

/// One other copy of an extent this server is the primary of: where the primary forwards
/// each write (docs/replication.md, "The write path").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    /// The server holding it.
    pub server: String,
    /// The extent's byte offset in that server's pool.
    pub offset: u64,
    /// `in_sync`: the write completes only once this copy has it; `rebuilding`: it gets the
    /// write, but its failure does not fail the write.
    pub counts: bool,
}

/// Where the primary sends one write (see [`Ownership::fanout`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fanout {
    /// The extent's byte range in this server's pool (the range lock's key).
    pub extent: (u64, u64),
    /// The other copies that take writes.
    pub copies: Arc<[Copy]>,
}

/// One range of this server's pool and what its map says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Region {
    start: u64,
    end: u64,
    role: Role,
}

/// This server's pool as its map sees it: the ranges it owns (with the copies it forwards
/// their writes to), the ranges it holds as a replica of another primary, the ranges it is
/// receiving copies into, and the `up` servers. Built once per installed map;
/// [`Ownership::admit`] is a binary search.
#[derive(Debug, Clone, Default)]
pub struct Ownership {
    /// The generation of the map this view is of.
    generation: u64,
    serving: bool,
    up: Vec<String>,
    regions: Vec<Region>,
}

impl Ownership {
    /// The view of `map` from server `me`; `serving` false while the server catches up.
    pub fn new(map: &ClusterMap, me: &str, serving: bool) -> Self {
        let mut regions = Vec::new();
        for v in &map.volumes {
            for e in &v.extents {
                // Writes are ordered by the primary (`replicas[0]` while it is in sync and its
                // server not down: with one copy, the owner as before).
                let Some(owner) = map.write_owner(e) else {
                    continue;
                };
                let span = |offset: u64| (offset, offset.saturating_add(v.extent_size));
                if owner.server == me {
                    let copies: Arc<[Copy]> = e
                        .replicas
                        .iter()
                        .filter(|r| r.server != me && r.state.takes_writes())
                        // A copy on a server marked down takes nothing (as a stale one).
                        .filter(|r| {
                            map.server(&r.server)
                                .is_some_and(|s| s.state != ServerState::Down)
                        })
                        .map(|r| Copy {
                            server: r.server.clone(),
                            offset: r.offset,
                            counts: r.state == ReplicaState::InSync,
                        })
                        .collect();
                    let (start, end) = span(owner.offset);
                    regions.push(Region {
                        start,
                        end,
                        role: Role::Owner { copies },
                    });
                } else if let Some(r) = e
                    .replicas
                    .iter()
                    .find(|r| r.server == me && r.state.takes_writes())
                {
                    let (start, end) = span(r.offset);
                    regions.push(Region {
                        start,
                        end,
                        role: Role::Replica {
                            primary: owner.server.clone(),
                        },
                    });
                }
                if let (Some(mv), Some(source)) = (&e.moving, e.replicas.first())
                    && mv.to.server == me
                {
                    let (start, end) = span(mv.to.offset);
                    regions.push(Region {
                        start,
                        end,
                        role: Role::Incoming {
                            from: source.server.clone(),
                        },
                    });
                }
            }
        }
        regions.sort_by_key(|r| r.start);
        let up = map
            .servers
            .iter()
            .filter(|s| s.state != ServerState::Down)
            .map(|s| s.id.clone())
            .collect();
        Self {
            generation: map.generation,
            serving: serving && serves(map, me),
            up,
            regions,
        }
    }

    /// The generation of the map this view is of.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// [`Ownership::admit`] for a command stamped `stamp`, which passed the stamp check. An
    /// install stores the new view just before it moves the server's generation, so a
    /// command checked against one generation may meet the next one's view: a refusal then
    /// says nothing final about the sender's map, and is answered as [`Refusal::NotServing`]
    /// (retryable: the sender tries again and meets the new generation).
    pub fn admit_stamped(
        &self,
        stamp: u64,
        sender: &str,
        via: Via,
        range: (u64, u64),
        write: bool,
    ) -> Result<(), Refusal> {
        self.admit(sender, via, range, write).map_err(|why| {
            if self.generation == stamp {
                why
            } else {
                Refusal::NotServing
            }
        })
    }

    /// Whether this server serves (see [`serves`]).
    pub fn serving(&self) -> bool {
        self.serving
    }

    /// The region holding all of `[off, off + len)`, if one does.
    fn region(&self, off: u64, len: u64) -> Option<&Region> {
        let end = off.saturating_add(len);
        self.regions
            .partition_point(|r| r.start <= off)
            .checked_sub(1)
            .and_then(|i| self.regions.get(i))
            .filter(|r| end <= r.end)
    }

    /// Where a write to pool bytes `[off, off + len)` of this server goes besides its own
    /// pool: `Some` when they lie in an extent this server is the primary of and that has
    /// other copies taking writes (docs/replication.md, "The write path"); `None` otherwise
    /// (one copy, or not ours: the write runs on this pool alone, as it always did).
    pub fn fanout(&self, off: u64, len: u64) -> Option<Fanout> {
        match self.region(off, len.max(1)) {
            Some(Region {
                start,
                end,
                role: Role::Owner { copies },
            }) if !copies.is_empty() => Some(Fanout {
                extent: (*start, *end),
                copies: Arc::clone(copies),
            }),
            _ => None,
        }
    }

    /// Whether this server holds an `in_sync` or `rebuilding` copy at pool bytes
    /// `[off, off + len)` (as the primary or a replica).
    pub fn holds(&self, off: u64, len: u64) -> bool {
        matches!(
            self.region(off, len.max(1)),
            Some(Region {
                role: Role::Owner { .. } | Role::Replica { .. },
                ..
            })
        )
    }

    /// Whether an internal command from `sender`, arriving `via`, may touch pool bytes
    /// `[off, off + len)` (`len` 0: no range, e.g. Flush; `write`: it changes them). Checked
    /// after the generation stamp (docs/cluster-protocol.md, "Fencing"). A read is not held
    /// to the owner or primary rule: it changes nothing, and a sender whose stamp passed has
    /// our map, so it reads only what we hold.
    pub fn admit(
        &self,
        sender: &str,
        via: Via,
        (off, len): (u64, u64),
        write: bool,
    ) -> Result<(), Refusal> {
        if !self.serving {
            return Err(Refusal::NotServing);
        }
        if !self.up.iter().any(|s| s == sender) {
            return Err(Refusal::SenderFenced);
        }
        if len == 0 || (matches!(via, Via::Routed | Via::Replica) && !write) {
            return Ok(());
        }
        let role = self.region(off, len).map(|r| &r.role);
        match via {
            Via::Routed => match role {
                Some(Role::Owner { .. }) => Ok(()),
                _ => Err(Refusal::NotOwner),
            },
            Via::Copy => match role {
                Some(Role::Incoming { from }) if from == sender => Ok(()),
                _ => Err(Refusal::NotSource),
            },
            Via::Replica => match role {
                Some(Role::Replica { primary }) if primary == sender => Ok(()),
                _ => Err(Refusal::NotPrimary),
            },
        }
    }
}

/// Cluster maps for the node's unit tests (node.rs, install.rs, copier.rs): one volume `vol1`
/// of 4 KiB extents (512-byte blocks) over servers that are up unless said otherwise.
#[cfg(test)]
pub(crate) mod fixtures {
    use manager::map::{ClusterMap, ExtentEntry, Replica, ServerEntry, ServerState, VolumeEntry};

    pub const EXTENT: u64 = 4096;

    pub fn rep(server: &str, offset: u64) -> Replica {
        Replica::new(server, offset)
    }

    pub fn server(id: &str, state: ServerState) -> ServerEntry {
        ServerEntry {
            id: id.to_string(),
            portal: "127.0.0.1:1".parse().expect("addr"),
            internal: "127.0.0.1:2".parse().expect("addr"),
            state,
            pool_bytes: 1 << 20,
            cntlid_min: 1,
            cntlid_max: 999,
            rack: None,
            pool: None,
        }
    }

    /// `servers` and `vol1` made of `extents`, at `generation`.
    pub fn map(
        generation: u64,
        servers: Vec<ServerEntry>,
        extents: Vec<ExtentEntry>,
    ) -> ClusterMap {
        let mut m = ClusterMap::empty();
        m.generation = generation;
        m.servers = servers;
        m.volumes = vec![VolumeEntry {
            name: "vol1".to_string(),
            uuid: [0; 16],
            size_bytes: EXTENT * u64::try_from(extents.len()).expect("few extents"),
            block_size: 512,
            extent_size: EXTENT,
            replicas: 1,
            subsystem: "nqn.test:vol1".to_string(),
            nsid: 1,
            extents,
        }];
        m
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{rep, server};
    use super::*;
    use manager::map::{ExtentEntry as Extent, Move, ReplicaState};

    #[test]
    fn a_forwarded_command_expires_before_its_sender_gives_up() {
        // 5 s deadline: the receiver may start it for 4 s (1 s for the clocks to disagree).
        assert_eq!(expires_at(10_000, 5_000), 14_000);
        // A short deadline keeps half of it.
        assert_eq!(expires_at(10_000, 1_000), 10_500);
        assert_eq!(expires_at(u64::MAX - 1, 5_000), u64::MAX);
        assert!(!expired(14_000, 14_000));
        assert!(expired(14_000, 14_001));
        // 0: no expiry (copies, commands from an older server, tests).
        assert!(!expired(0, u64::MAX));
    }

    /// vol1: extent 0 on s1 at 0; extent 1 on s2 at 0, moving to s3 at 4096 (extent 4 KiB).
    fn map(generation: u64, s2: ServerState, moving: bool) -> ClusterMap {
        let e1 = if moving {
            Extent {
                replicas: vec![rep("s2", 0)],
                moving: Some(Move {
                    to: rep("s3", 4096),
                }),
                lost: false,
            }
        } else {
            Extent {
                replicas: vec![rep("s3", 4096)],
                moving: None,
                lost: false,
            }
        };
        let e0 = Extent {
            replicas: vec![rep("s1", 0)],
            moving: None,
            lost: false,
        };
        let servers = vec![
            server("s1", ServerState::Up),
            server("s2", s2),
            server("s3", ServerState::Up),
        ];
        fixtures::map(generation, servers, vec![e0, e1])
    }

    #[test]
    fn a_copy_is_accepted_only_from_the_source_of_a_move_in_progress() {
        let during = Ownership::new(&map(5, ServerState::Up, true), "s3", true);
        assert_eq!(during.admit("s2", Via::Copy, (4096, 4096), true), Ok(()));
        assert_eq!(
            during.admit("s1", Via::Copy, (4096, 512), true),
            Err(Refusal::NotSource)
        );
        // A routed command for the destination range: not ours yet.
        assert_eq!(
            during.admit("s1", Via::Routed, (4096, 512), true),
            Err(Refusal::NotOwner)
        );
        // After the switch (the old owner marked down, or not): the old owner's copy is
        // refused, routed commands run.
        for s2 in [ServerState::Up, ServerState::Down] {
            let after = Ownership::new(&map(7, s2, false), "s3", true);
            assert_eq!(
                after.admit("s2", Via::Copy, (4096, 4096), true),
                Err(if s2 == ServerState::Up {
                    Refusal::NotSource
                } else {
                    Refusal::SenderFenced
                })
            );
            assert_eq!(after.admit("s1", Via::Routed, (4096, 4096), true), Ok(()));
            // Straddling the end of the extent: refused.
            assert_eq!(
                after.admit("s1", Via::Routed, (4096, 8192), true),
                Err(Refusal::NotOwner)
            );
        }
    }

    #[test]
    fn a_refusal_under_another_generation_than_the_stamp_is_retryable() {
        // s3 is installing generation 7 (the switch to it done): its view is of 7, its
        // generation still 5 for a moment. A routed write the sender stamped 5 and sent by
        // the old map is checked against the new view: refused, but retryably.
        let after = Ownership::new(&map(7, ServerState::Up, false), "s3", true);
        assert_eq!(after.generation(), 7);
        assert_eq!(
            after.admit("s1", Via::Routed, (4096, 8192), true),
            Err(Refusal::NotOwner)
        );
        assert_eq!(
            after.admit_stamped(7, "s1", Via::Routed, (4096, 8192), true),
            Err(Refusal::NotOwner)
        );
        assert_eq!(
            after.admit_stamped(5, "s1", Via::Routed, (4096, 8192), true),
            Err(Refusal::NotServing)
        );
        // What is let in stays let in, whatever the stamp.
        assert_eq!(
            after.admit_stamped(5, "s1", Via::Routed, (4096, 4096), true),
            Ok(())
        );
    }

    #[test]
    fn a_server_marked_down_or_catching_up_serves_nothing() {
        let down = Ownership::new(&map(7, ServerState::Down, true), "s2", true);
        assert!(!down.serving());
        assert_eq!(
            down.admit("s1", Via::Routed, (0, 512), true),
            Err(Refusal::NotServing)
        );
        let catching_up = Ownership::new(&map(7, ServerState::Up, true), "s1", false);
        assert_eq!(
            catching_up.admit("s3", Via::Routed, (0, 512), true),
            Err(Refusal::NotServing)
        );
        let up = Ownership::new(&map(7, ServerState::Up, true), "s1", true);
        assert_eq!(up.admit("s3", Via::Routed, (0, 512), true), Ok(()));
        assert_eq!(up.admit("s3", Via::Routed, (0, 0), true), Ok(()));
        assert_eq!(
            up.admit("s9", Via::Routed, (0, 512), true),
            Err(Refusal::SenderFenced)
        );
    }

    /// vol1 with 2 copies per extent: extent 0 on s1 at 0 (primary) and s2 at 8192; extent 1
    /// on s2 at 0 (primary) and s3 at 4096; `s1` and the state of extent 0's copy on s2 given.
    fn replicated(s1: ServerState, copy: ReplicaState) -> ClusterMap {
        let mut second = rep("s2", 8192);
        second.state = copy;
        let e0 = Extent {
            replicas: vec![rep("s1", 0), second],
            moving: None,
            lost: false,
        };
        let e1 = Extent {
            replicas: vec![rep("s2", 0), rep("s3", 4096)],
            moving: None,
            lost: false,
        };
        let servers = vec![
            server("s1", s1),
            server("s2", ServerState::Up),
            server("s3", ServerState::Up),
        ];
        let mut m = fixtures::map(9, servers, vec![e0, e1]);
        m.volumes[0].replicas = 2;
        m
    }

    #[test]
    fn a_replica_write_runs_only_on_a_copy_whose_primary_is_the_sender() {
        let s2 = Ownership::new(
            &replicated(ServerState::Up, ReplicaState::InSync),
            "s2",
            true,
        );
        // s2 holds extent 0's second copy (primary s1) and is extent 1's primary.
        assert_eq!(s2.admit("s1", Via::Replica, (8192, 4096), true), Ok(()));
        assert_eq!(
            s2.admit("s3", Via::Replica, (8192, 512), true),
            Err(Refusal::NotPrimary)
        );
        // Its own primary range takes routed writes, not replica writes.
        assert_eq!(
            s2.admit("s1", Via::Replica, (0, 512), true),
            Err(Refusal::NotPrimary)
        );
        assert_eq!(s2.admit("s1", Via::Routed, (0, 512), true), Ok(()));
        // A routed write to a non-primary copy: refused (it must go to the primary).
        assert_eq!(
            s2.admit("s3", Via::Routed, (8192, 512), true),
            Err(Refusal::NotOwner)
        );
        // Straddling the copy's end, or a range it does not hold.
        assert_eq!(
            s2.admit("s1", Via::Replica, (8192, 8192), true),
            Err(Refusal::NotPrimary)
        );
        assert_eq!(
            s2.admit("s1", Via::Replica, (65536, 512), true),
            Err(Refusal::NotPrimary)
        );
        // Reads and flushes are not held to the rule.
        assert_eq!(s2.admit("s3", Via::Replica, (8192, 512), false), Ok(()));
        assert_eq!(s2.admit("s3", Via::Replica, (0, 0), true), Ok(()));
        // A rebuilding copy takes its primary's writes; a stale one takes none.
        let rebuilding = Ownership::new(
            &replicated(ServerState::Up, ReplicaState::Rebuilding),
            "s2",
            true,
        );
        assert_eq!(
            rebuilding.admit("s1", Via::Replica, (8192, 512), true),
            Ok(())
        );
        let stale = Ownership::new(
            &replicated(ServerState::Up, ReplicaState::Stale),
            "s2",
            true,
        );
        assert_eq!(
            stale.admit("s1", Via::Replica, (8192, 512), true),
            Err(Refusal::NotPrimary)
        );
        // The primary's server marked down: s2 is extent 0's primary now, and s1's replica
        // writes are refused (s1 is not an up server any more).
        let failed = Ownership::new(
            &replicated(ServerState::Down, ReplicaState::InSync),
            "s2",
            true,
        );
        assert_eq!(
            failed.admit("s1", Via::Replica, (8192, 512), true),
            Err(Refusal::SenderFenced)
        );
        assert_eq!(failed.admit("s3", Via::Routed, (8192, 512), true), Ok(()));
    }

    #[test]
    fn the_primary_forwards_to_every_copy_that_takes_writes() {
        let m = replicated(ServerState::Up, ReplicaState::InSync);
        let s1 = Ownership::new(&m, "s1", true);
        let f = s1.fanout(512, 1024).expect("s1 is extent 0's primary");
        assert_eq!(f.extent, (0, 4096));
        assert_eq!(
            f.copies.as_ref(),
            &[Copy {
                server: "s2".to_string(),
                offset: 8192,
                counts: true
            }]
        );
        // Not a primary's range: the pool alone.
        assert_eq!(s1.fanout(8192, 512), None);
        assert_eq!(
            Ownership::new(&m, "s2", true).fanout(8192, 512),
            None,
            "a copy does not forward"
        );
        // A rebuilding copy gets the write but does not count; a stale one gets nothing.
        let r = replicated(ServerState::Up, ReplicaState::Rebuilding);
        let f = Ownership::new(&r, "s1", true)
            .fanout(0, 512)
            .expect("primary");
        assert!(!f.copies[0].counts);
        let st = replicated(ServerState::Up, ReplicaState::Stale);
        assert_eq!(Ownership::new(&st, "s1", true).fanout(0, 512), None);
        // One copy per extent: no fan-out at all (the write path as before).
        assert_eq!(
            Ownership::new(&map(5, ServerState::Up, false), "s1", true).fanout(0, 512),
            None
        );
        // s2 primary of extent 0 after s1 is marked down: the copy on s1 takes nothing.
        let d = replicated(ServerState::Down, ReplicaState::InSync);
        let s2 = Ownership::new(&d, "s2", true);
        assert!(s2.holds(8192, 4096) && s2.holds(0, 512));
        assert_eq!(s2.fanout(8192, 512), None);
    }

    #[test]
    fn mismatch_answers_and_dirty_runs() {
        assert_eq!(on_mismatch(5, 7, true), OnMismatch::Adopt(7));
        assert_eq!(on_mismatch(5, 7, false), OnMismatch::Refresh(7));
        assert_eq!(on_mismatch(7, 5, true), OnMismatch::Backoff);
        assert_eq!(on_mismatch(7, 0, false), OnMismatch::Backoff);
        let bits = [false, true, true, true, false, true];
        let d = |i: usize| bits[i];
        assert_eq!(next_dirty_run(6, d, 0, 2), Some((1, 3)));
        assert_eq!(next_dirty_run(6, d, 3, 2), Some((3, 4)));
        assert_eq!(next_dirty_run(6, d, 4, 2), Some((5, 6)));
        assert_eq!(next_dirty_run(6, d, 6, 2), None);
        assert!(converged(64, 1, 64, 16) && converged(65, 16, 64, 16));
        assert!(!converged(65, 15, 64, 16));
    }

    #[test]
    fn a_fence_lifts_only_with_a_map_fetched_after_it() {
        // A restart from an older persisted map: the fetched g7 must be installed first.
        let mut f = Fence::new(false);
        f.fetched(0, 7);
        assert!(!f.try_thaw(5));
        assert!(f.try_thaw(7) && f.caught_up());
        assert_eq!(f.fetch_started(), None);
        // Frozen: a fetch started before the fence lifts nothing, one started after does.
        let mut f = Fence::new(true);
        f.fence();
        let before = 0;
        f.fetched(before, 9);
        assert!(!f.try_thaw(9));
        let e = f.fetch_started().expect("fenced");
        f.fetched(e, 9);
        f.fence();
        assert!(!f.try_thaw(9), "fenced again meanwhile");
        let e = f.fetch_started().expect("fenced");
        f.fetched(e, 9);
        assert!(f.try_thaw(10) && f.caught_up());
    }

    #[test]
    fn a_restart_from_an_older_persisted_map_catches_up_first() {
        let old = map(5, ServerState::Up, true);
        let new = map(7, ServerState::Down, false);
        let b = boot(Some(old.clone()), new.clone(), "s2");
        assert_eq!(b.map.generation, 5);
        assert_eq!(b.catch_up.map(|m| m.generation), Some(7));
        assert_eq!(
            lost_extents(&old, &new, "s2"),
            vec![("vol1".to_string(), 1)]
        );
        // Same generation, none persisted, or a persisted map from the future: no catch-up.
        for p in [Some(new.clone()), None, Some(map(9, ServerState::Up, true))] {
            let b = boot(p, new.clone(), "s2");
            assert_eq!((b.map.generation, b.catch_up), (7, None));
        }
    }
}
