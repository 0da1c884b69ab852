//! A deterministic, seeded simulation of replication (docs/replication.md): one replicated
//! extent on N servers, a manager that plans every map change with the REAL planner
//! (`manager::plan::replica_failed`, `rebuild_start`, `rebuild_due`, `rebuild_done`,
//! `set_server_state`, which applies `down_copies_stale`), copy servers that hold replica
//! writes to the REAL stamp rule (`tessera::cluster::node::admission::compare`), and primaries
//! that keep the REAL dirty maps (`tessera::cluster::rebuild::DirtyMap`). The asynchronous
//! parts of the daemon are modelled, message by message and single-threaded, after the daemon
//! functions each model names: `replica::write` (range lock, local write, fan-out, completion
//! once every `in_sync` copy acked, report and wait for a newer map when one failed),
//! `still_primary`, `rebuild::reconcile` (dirty maps on install) and the rebuild task.
//!
//! Faults: lost and reordered replica messages (a lost one is the replica deadline passing),
//! copy write errors, server crashes (losing in-flight state, keeping durable data and the
//! persisted map) and restarts, at most N-1 servers down at once. A host writes through any
//! server, which routes the write to the primary of its own map and retries on refusal.
//!
//! Copy moves (docs/replication.md, "Moving a copy"; [`Config::moves`], with spare servers):
//! the operator's `POST /v1/extents/move` with `from` planned by the REAL planner
//! (`plan::apply_cancelling` of `Change::StartMove`) at random points, `from` any copy (the
//! primary, `replicas[0]`, a stale copy on a down server), `to` a server without one. The
//! primary installs the added copy with an all-set dirty map (a copy new to the extent, by
//! server and offset, as `rebuild::reconcile`) and rebuilds it whole; the manager's REAL
//! `plan::rebuild_done` drops `from` in the generation that accepts the new copy; a dropped
//! server neither takes replica writes nor serves reads for the extent (its map names no copy
//! there). A map that changes `replicas[0]` is published with a phase 1a: the old owner gets it
//! first and installs it once its gate drained the writes it ordered (a write waiting there for
//! a map fails at its deadline); the other servers get it (and any map queued behind) once it
//! acked, or once the newest map marks it down.
//!
//! Checked after every step: every acknowledged write is on every `in_sync` copy of the
//! committed map, except while a replica write carrying it is still on its way to that copy
//! (the window of docs/replication.md, "Rebuild": a write that fails between the rebuild-done
//! report and that map's install) or the primary has recorded the miss in its dirty map and
//! reports it. At quiescence (faults off, every server back, every message delivered, every
//! rebuild finished): the extent has exactly `replicas` copies, none replacing another, every
//! copy is `in_sync` and equal, and a read through every server returns the last acknowledged
//! value.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use manager::api::{
    AddServerRequest, CopiesDivergedRequest, CreateVolumeRequest, MoveRequest, RebuildDoneRequest,
    ReplicaFailedRequest,
};
use manager::map::{ClusterMap, HostPolicy, ReplicaState, ServerState};
use manager::plan::{self, Change};
use tessera::cluster::node::admission::{Stamp, compare};
use tessera::cluster::rebuild::DirtyMap;

use super::rng::Rng;

/// One dirty-map chunk (the daemon's `DIRTY_CHUNK`): the model's unit of writes.
const CHUNK: u64 = 64 * 1024;
/// Chunks in the extent.
const BLOCKS: usize = 4;
const EXTENT: u64 = CHUNK * BLOCKS as u64;
/// The rebuild task's run size (the daemon's is 128 KiB; the model copies one chunk a run).
const RUN: u64 = CHUNK;
const VOL: &str = "vol1";
/// The start of the failure of a run that dropped a primary which was not `replicas[0]`.
pub const KNOWN_GAP: &str = "known gap: a primary not first dropped";
/// The start of the failure of a run in which a write of an old owner in phase 1a (the drop of
/// `replicas[0]`) failed at its gate: its forward to an `in_sync` copy failed, its
/// replica-failed report is refused (the manager's newest map no longer names it the primary)
/// and the newer map it waits for is the one its own gate holds back, so it fails at its
/// deadline, having reached some copies of the new map and not others; nothing reports or
/// repairs that (docs/replication.md says the drain makes the drop of `replicas[0]` safe).
pub const PHASE_1A_GATE: &str = "phase-1a gate: an old owner's write failed at its gate";
/// Steps of the quiescing phase before it gives up.
const QUIESCE_STEPS: u64 = 60_000;

/// The three daemon bugs the simulation found; `true` runs the fixed behaviour.
#[derive(Debug, Clone, Copy)]
pub struct Fixes {
    /// A forward refused by a copy the primary sees as `rebuilding`, because the copy has a
    /// newer map, waits for that map and re-sends (instead of acknowledging without it).
    pub handover: bool,
    /// Skipped copies' dirty bits are marked once the range lock is held, a failed copy's when
    /// its forward fails (instead of when the write completes). In this model a write
    /// completes, marking, before it releases its lock, so the switch finds no loss in 1000
    /// seeds: the model does not reproduce this bug (no test asserts it).
    pub mark_late: bool,
    /// The rebuild's end takes the whole-extent range lock before its last dirty-map check.
    pub in_flight: bool,
    /// A write to a `rebuilding` copy that fails after the primary reported that copy's
    /// rebuild done waits until the report's outcome is installed (the manager's answer, or a
    /// map in which the copy is not `rebuilding`: the daemon's `promotions_settled`), then is
    /// re-checked as one whose `in_sync` copy failed. Without it the old primary acknowledges
    /// the write, and when the rebuilt copy is its extent's first copy it becomes the primary
    /// without it. (The daemon has it; [`Fixes::DAEMON`] leaves it off so that the other
    /// switches' tests find their own losses.)
    pub after_done: bool,
    /// The manager's (`plan::rebuild_done`): a rebuild-done report stamped with a generation
    /// older than the one in which the copy last became `rebuilding` (the map's
    /// `Replica::rebuilding_since`, set by `plan::rebuild_start`) is refused. Off, the model's
    /// manager drops that record from the map it hands the planner, so the real check never
    /// fires: a late report from an earlier rebuild of the copy (the copy's server went down and
    /// came back meanwhile) then marks the new rebuild's copy `in_sync` before it is.
    pub stale_done: bool,
    /// The manager's (`plan::set_server_state`'s mark-down): a failover makes the other
    /// `in_sync` copies of the old primary's extent `rebuilding`, so the new primary rebuilds
    /// them whole (a write the old primary forwarded to some copies only, never acknowledged
    /// and never retried, would leave them different). Off, the model's manager sets them back
    /// `in_sync` in the map it commits.
    pub failover_resync: bool,
    /// A primary whose write fails because it lost the role meanwhile (a handover: a rebuilt
    /// first copy turned `in_sync`; or a mark-down) reports `POST /v1/copies-diverged`, and
    /// the manager has every other `in_sync` copy rebuilt whole by the new primary (its own
    /// copy has the failed write, some copy does not, and no primary recorded it). The
    /// primary's half of the rule (a copy going straight from `in_sync` to `rebuilding` is
    /// rebuilt whole) stays on either way. Off, no report is sent.
    pub diverged_report: bool,
    /// A rebuild-done report the manager refuses has its outcome too: the refusal names the
    /// manager's generation (the daemon's `rebuild::settled_by`), and the writes that missed
    /// the copy wait until that map is installed, then are re-checked. Off (the daemon before
    /// it), a refusal gives no outcome, and those writes fail at their forwarding deadline (a
    /// host-visible 5 s stall; the model has no clock: they fail at once).
    pub refused_answer: bool,
    /// A copy that refuses a replica write because its stamp is older than the copy's map, from
    /// a sender that map no longer names the primary, while its own copy is `in_sync` there,
    /// reports `POST /v1/copies-diverged` itself (once per map generation): the former primary
    /// may die, or lose the manager, before its own report arrives
    /// ([`Config::lose_diverged`]). Off, only the former primary reports.
    pub refuser_report: bool,
}

impl Fixes {
    pub const ALL: Self = Self {
        handover: true,
        mark_late: true,
        in_flight: true,
        after_done: true,
        stale_done: true,
        failover_resync: true,
        diverged_report: true,
        refused_answer: true,
        refuser_report: true,
    };
    /// The daemon as it is with the three fixes (no `after_done`; the manager's rebuild-done
    /// check, `stale_done`, kept on so that its losses do not hide theirs).
    pub const DAEMON: Self = Self {
        after_done: false,
        ..Self::ALL
    };
}

/// Deliberate breakages of the model, to show the checks catch them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// The primary acknowledges once its own write is done, not waiting for `in_sync` copies.
    AckEarly,
    /// A copy accepts a replica write stamped with an older generation.
    AcceptOldStamp,
}

#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub replicas: usize,
    pub steps: u64,
    pub fixes: Fixes,
    pub mutation: Option<Mutation>,
    /// The host sometimes gives up a refused or failed write instead of retrying it (never
    /// acknowledged; its value may be on any copy). The quiescence check then allows a read
    /// to return such a value newer than the last acknowledged one, but still requires every
    /// copy to be equal.
    pub give_up: bool,
    /// A former primary's copies-diverged report is lost half the time, while quiescing too
    /// (the former primary killed, or cut off from the manager, before it arrives). Off, no
    /// random draw is made for it.
    pub lose_diverged: bool,
    /// Servers besides the extent's `replicas` copies, holding none at first.
    pub spares: usize,
    /// The operator moves copies ([`Sim::move_copy`]): `POST /v1/extents/move` with `from`
    /// (any copy, the primary and stale copies on down servers included) and `to` (a server
    /// without a copy), planned by the REAL planner, at random points.
    pub moves: bool,
    /// A move may name as `from` the primary when it is not `replicas[0]` (the known gap of
    /// docs/replication.md, "Moving a copy": a write of the dropped primary in flight at the
    /// drop may leave the copies different, its copies-diverged report refused). Off, such a
    /// `from` is not chosen at the move's start (the primary may still become it later: the
    /// drops of such a primary are counted, [`Faults::gap_drops`]).
    pub gap_moves: bool,
}

/// Faults injected in one run, per kind.
#[derive(Debug, Default, Clone, Copy)]
pub struct Faults {
    pub lost: u64,
    pub copy_errors: u64,
    pub crashes: u64,
    pub restarts: u64,
    pub rebuilds: u64,
    pub failovers: u64,
    /// Former primaries' copies-diverged reports lost ([`Config::lose_diverged`]).
    pub diverged_lost: u64,
    /// Copies-diverged reports sent by a copy that refused a stale replica write.
    pub refuser_reports: u64,
    /// Copy moves the planner accepted (a copy added, `replaces` set).
    pub moves_started: u64,
    /// Of those, refused by the planner (pending move, `to` not up, no primary, ...).
    pub moves_refused: u64,
    /// Copy moves completed: the rebuild-done of the new copy accepted and `from` dropped.
    pub moves_done: u64,
    /// Drops whose `from` was `replicas[0]` (the owner): published with a phase 1a.
    pub owner_drops: u64,
    /// Drops whose `from` was the primary but not `replicas[0]` (the known gap).
    pub gap_drops: u64,
    /// A pending copy on a server marked down replaced by a new move.
    pub moves_replaced: u64,
    /// Writes of an old owner in phase 1a that waited for a map the closed gate held back
    /// (a newer map, or a rebuild-done report's outcome), failed at their deadline.
    pub gate_deadlines: u64,
    /// A copy added to the extent (a move's) whose primary already had a dirty record for it,
    /// at that offset (made by a forward to the same copy that failed after its drop), and so
    /// kept it instead of rebuilding the copy whole (`rebuild::reconcile` matches records by
    /// server and offset).
    pub stray_records_kept: u64,
}

impl Faults {
    pub fn add(&mut self, o: &Self) {
        self.lost += o.lost;
        self.copy_errors += o.copy_errors;
        self.crashes += o.crashes;
        self.restarts += o.restarts;
        self.rebuilds += o.rebuilds;
        self.failovers += o.failovers;
        self.diverged_lost += o.diverged_lost;
        self.refuser_reports += o.refuser_reports;
        self.moves_started += o.moves_started;
        self.moves_refused += o.moves_refused;
        self.moves_done += o.moves_done;
        self.owner_drops += o.owner_drops;
        self.gap_drops += o.gap_drops;
        self.moves_replaced += o.moves_replaced;
        self.gate_deadlines += o.gate_deadlines;
        self.stray_records_kept += o.stray_records_kept;
    }
}

pub struct Outcome {
    pub hash: u64,
    pub faults: Faults,
    pub acked: u64,
    /// Writes that missed a `rebuilding` copy while a rebuild-done report of it was out, and
    /// so waited for that report's outcome.
    pub settle_waits: u64,
    /// Of those, writes whose report was refused: they waited for the map the refusal named
    /// (with [`Fixes::refused_answer`]).
    pub refused_waits: u64,
    /// Writes failed at their deadline because the report they waited for was refused (only
    /// without [`Fixes::refused_answer`]).
    pub refused_deadlines: u64,
}

#[derive(Debug, Clone)]
enum Refusal {
    /// The copy's map is newer than the stamp (80h).
    Stale(u64),
    /// Anything else: behind, not our primary, an I/O error.
    Other,
}

#[derive(Debug, Clone)]
enum Msg {
    /// Manager to server: a map to install.
    Install { to: usize, map: Box<ClusterMap> },
    /// Server to manager: installed (an ack on the watch stream).
    Ack { from: usize },
    /// Primary to manager: `POST /v1/replica-failed`.
    Failed {
        from: usize,
        copy: usize,
        generation: u64,
    },
    /// Former primary to manager: `POST /v1/copies-diverged`.
    Diverged { from: usize, generation: u64 },
    /// Primary to manager: `POST /v1/rebuild-done`.
    Done {
        from: usize,
        copy: usize,
        generation: u64,
    },
    /// Manager to primary: the answer to a rebuild-done report sent at `generation` (the map,
    /// and whether it was accepted).
    DoneAnswer {
        to: usize,
        copy: usize,
        generation: u64,
        accepted: bool,
        map: Box<ClusterMap>,
    },
    /// The manager notices a server's watch stream is gone.
    Lost { server: usize, epoch: u64 },
    /// Primary to copy: a replica write (namespace 3), stamped; `rebuild` for a rebuild run.
    Fwd {
        from: usize,
        to: usize,
        stamp: u64,
        block: usize,
        val: u64,
        wid: u64,
        rebuild: bool,
    },
    /// Copy to primary: the answer (or the replica deadline passing: `Other`).
    Reply {
        to: usize,
        from: usize,
        wid: u64,
        result: Result<(), Refusal>,
        rebuild: bool,
    },
}

/// A write in progress at its primary (mirrors `replica::write`).
struct Write {
    block: usize,
    val: u64,
    /// Copies a forward went to, and whether it resolved.
    sent: BTreeMap<usize, bool>,
    acked: BTreeSet<usize>,
    failed: BTreeSet<usize>,
    /// Copies not in the fan-out (their misses, marked at completion without the fix).
    skipped: Vec<usize>,
    /// The pool offset of each copy in the write's map (a dirty record is per copy and offset).
    offs: BTreeMap<usize, u64>,
    /// Waiting for a map newer than this generation (`out_of_write_set`).
    wait_newer: Option<u64>,
    /// `rebuilding` copies it missed while a rebuild-done report of theirs was out: it waits
    /// until that report's outcome is installed (`promotions_settled`).
    wait_done: BTreeSet<usize>,
    /// Its forwarding deadline passed (it fails; the host retries).
    expired: bool,
    /// The host has its answer; the record stays until every forward resolved (lock held).
    answered: bool,
}

/// A rebuild run in flight (mirrors the rebuild task's run: lock, clear, read, write).
struct Run {
    copy: usize,
    /// The copy's offset when the run started.
    off: u64,
    at: u64,
    len: u64,
}

struct Server {
    running: bool,
    /// Since its (re)start it has heard the manager's current map (`node::boot` fetches it
    /// and catches up before serving; the model assumes nothing is served before that).
    serving: bool,
    epoch: u64,
    /// The installed (persisted) map.
    map: ClusterMap,
    /// Durable data: the value of each chunk.
    data: [u64; BLOCKS],
    writes: BTreeMap<u64, Write>,
    /// Range locks held, by chunk.
    locks: BTreeSet<usize>,
    /// Dirty maps per copy (a primary's, in memory only).
    dirty: BTreeMap<usize, DirtyMap>,
    /// The pool offset of the copy each dirty map is for (the daemon keys them by server and
    /// offset: a copy dropped and added again elsewhere on the same server is another copy).
    dirty_off: BTreeMap<usize, u64>,
    /// A map that takes the extent's ownership (`replicas[0]`) away from this server, held
    /// while its install gate drains the writes it ordered (the phase 1a install of a drop of
    /// the first copy: `node::install`, no final copy for a volume with several copies).
    gated: Option<ClusterMap>,
    /// Whether this server has been primary since it started (a dirty map it creates starts
    /// clean only then).
    was_primary: bool,
    runs: BTreeMap<u64, Run>,
    /// Copies whose rebuild-done was sent at a generation (the daemon's `Tracked::reported_at`).
    done_sent: BTreeMap<usize, u64>,
    /// The generation of the manager's answer to that report, once accepted (`answered_at`).
    done_answered: BTreeMap<usize, u64>,
    /// Map generations at which this server, as a copy, reported copies-diverged after refusing
    /// a former primary's stale replica write (one report per generation).
    diverged_at: BTreeSet<u64>,
    /// Copies whose report out was refused (its outcome is the map the refusal named, kept in
    /// `done_answered`; without [`Fixes::refused_answer`], no outcome will come for it).
    done_refused: BTreeSet<usize>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum HostBlock {
    Idle,
    /// Sent to a primary as write `wid`.
    InFlight {
        val: u64,
        wid: u64,
    },
    /// Refused or failed: to be retried with the same value.
    Retry {
        val: u64,
    },
}

pub struct Sim {
    cfg: Config,
    rng: Rng,
    /// The manager's newest map (stored; maybe still in phase 1a or queued behind it).
    committed: ClusterMap,
    /// The newest map whose phase 1a is done: what servers other than an old owner in phase 1a
    /// get (pushes, and the fetch at boot).
    published: ClusterMap,
    /// A publication in phase 1a: the old owner (`replicas[0]` before) and the map it must
    /// install and ack before any other server gets it (or a newer one).
    phase1a: Option<(usize, ClusterMap)>,
    servers: Vec<Server>,
    /// Servers whose watch stream the manager sees open.
    connected: Vec<bool>,
    msgs: Vec<Msg>,
    host: [HostBlock; BLOCKS],
    acked: [u64; BLOCKS],
    /// Values of writes the host gave up (`Config::give_up`).
    given_up: BTreeSet<u64>,
    next_val: u64,
    next_wid: u64,
    faults_on: bool,
    pub faults: Faults,
    settle_waits: u64,
    refused_waits: u64,
    refused_deadlines: u64,
    hash: u64,
    step_no: u64,
    log: Vec<String>,
    /// Events kept for a failure's trace (`TESSERA_SIM_LOG`, 40 by default).
    log_max: usize,
}

fn name(k: usize) -> String {
    format!("s{}", k + 1)
}

fn index(id: &str) -> usize {
    id.trim_start_matches('s').parse::<usize>().unwrap_or(1) - 1
}

fn initial_map(n: usize, spares: usize) -> ClusterMap {
    let mut m = ClusterMap::empty();
    for k in 0..n + spares {
        let port = u16::try_from(4420 + 2 * k).unwrap_or(4420);
        let req = AddServerRequest {
            id: name(k),
            portal: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            internal: std::net::SocketAddr::from(([127, 0, 0, 1], port + 1)),
            pool_bytes: 16 * EXTENT,
            rack: None,
        };
        m = plan::add_server(&m, &req).expect("servers are valid");
    }
    let req = CreateVolumeRequest {
        name: VOL.to_owned(),
        size: EXTENT,
        block_size: Some(4096),
        extent_size: Some(EXTENT),
        replicas: Some(u32::try_from(n).unwrap_or(2)),
        subsystem: format!("nqn.2026-11.dev.tessera:{VOL}"),
        nsid: Some(1),
        hosts: Some(HostPolicy::Any),
    };
    plan::create_volume(&m, &req).expect("volume fits")
}

/// The state of `k`'s copy in `map`.
fn state_of(map: &ClusterMap, k: usize) -> Option<ReplicaState> {
    let v = map.volume(VOL)?;
    v.extents[0]
        .replicas
        .iter()
        .find(|r| r.server == name(k))
        .map(|r| r.state)
}

/// The pool offset of `k`'s copy in `map`.
fn offset_of(map: &ClusterMap, k: usize) -> Option<u64> {
    let v = map.volume(VOL)?;
    v.extents[0]
        .replicas
        .iter()
        .find(|r| r.server == name(k))
        .map(|r| r.offset)
}

/// `replicas[0]`: the extent's owner.
fn first_of(map: &ClusterMap) -> Option<usize> {
    map.owner(VOL, 0).map(|r| index(&r.server))
}

/// The pending copy move: (the new copy, the copy it replaces).
fn pending_of(map: &ClusterMap) -> Option<(usize, usize)> {
    let v = map.volume(VOL)?;
    plan::pending_copy_move(&v.extents[0]).map(|(r, from)| (index(&r.server), index(from)))
}

fn primary_of(map: &ClusterMap) -> Option<usize> {
    let v = map.volume(VOL)?;
    map.primary(&v.extents[0]).map(|r| index(&r.server))
}

fn copies(map: &ClusterMap) -> Vec<usize> {
    map.volume(VOL)
        .map(|v| {
            v.extents[0]
                .replicas
                .iter()
                .map(|r| index(&r.server))
                .collect()
        })
        .unwrap_or_default()
}

fn is_down(map: &ClusterMap, k: usize) -> bool {
    map.server(&name(k))
        .is_some_and(|s| s.state == ServerState::Down)
}

/// The fan-out of a write at primary `me` (`replica::fan_out`): every other `in_sync` or
/// `rebuilding` copy on a server not marked down.
fn fan_out(map: &ClusterMap, me: usize) -> Vec<usize> {
    copies(map)
        .into_iter()
        .filter(|&k| {
            k != me
                && !is_down(map, k)
                && matches!(
                    state_of(map, k),
                    Some(ReplicaState::InSync | ReplicaState::Rebuilding)
                )
        })
        .collect()
}

fn in_sync_others(map: &ClusterMap, me: usize) -> Vec<usize> {
    copies(map)
        .into_iter()
        .filter(|&k| k != me && state_of(map, k) == Some(ReplicaState::InSync) && !is_down(map, k))
        .collect()
}

impl Sim {
    pub fn new(seed: u64, cfg: Config) -> Self {
        let map = initial_map(cfg.replicas, cfg.spares);
        let n = cfg.replicas + cfg.spares;
        let servers = (0..n)
            .map(|k| Server {
                running: true,
                serving: true,
                epoch: 0,
                map: map.clone(),
                data: [0; BLOCKS],
                writes: BTreeMap::new(),
                locks: BTreeSet::new(),
                dirty: BTreeMap::new(),
                dirty_off: BTreeMap::new(),
                gated: None,
                was_primary: primary_of(&map) == Some(k),
                runs: BTreeMap::new(),
                done_sent: BTreeMap::new(),
                done_answered: BTreeMap::new(),
                done_refused: BTreeSet::new(),
                diverged_at: BTreeSet::new(),
            })
            .collect();
        Self {
            cfg,
            rng: Rng::new(seed),
            committed: map.clone(),
            published: map,
            phase1a: None,
            servers,
            connected: vec![true; n],
            msgs: Vec::new(),
            host: [HostBlock::Idle; BLOCKS],
            acked: [0; BLOCKS],
            given_up: BTreeSet::new(),
            next_val: 1,
            next_wid: 1,
            faults_on: true,
            faults: Faults::default(),
            settle_waits: 0,
            refused_waits: 0,
            refused_deadlines: 0,
            hash: 0xcbf2_9ce4_8422_2325,
            step_no: 0,
            log: Vec::new(),
            log_max: std::env::var("TESSERA_SIM_LOG")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(40),
        }
    }

    fn trace(&mut self, s: String) {
        for b in s.bytes() {
            self.hash = (self.hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        if self.log.len() >= self.log_max {
            self.log.remove(0);
        }
        self.log.push(format!("{}: {s}", self.step_no));
    }

    fn fail(&self, what: &str) -> String {
        // A run in which the primary, not `replicas[0]`, was dropped (the known gap of "Moving
        // a copy") says so first: the scenarios count its failures apart.
        // So does a run in which an old owner's write failed at its phase-1a gate (the bug of
        // `PHASE_1A_GATE`).
        let gap = if self.faults.gap_drops > 0 {
            format!("{KNOWN_GAP} ({} such drops) ", self.faults.gap_drops)
        } else if self.faults.gate_deadlines > 0 {
            format!(
                "{PHASE_1A_GATE} ({} such writes) ",
                self.faults.gate_deadlines
            )
        } else {
            String::new()
        };
        let mut s = format!("{gap}step {}: {what}\nlast events:\n", self.step_no);
        for (k, sv) in self.servers.iter().enumerate() {
            let dirty: Vec<(usize, u64)> = sv
                .dirty
                .iter()
                .map(|(c, d)| (*c, d.dirty_bytes() / CHUNK))
                .collect();
            let _ = writeln!(
                s,
                "  s{}: running {} g{} data {:?} dirty chunks {dirty:?}",
                k + 1,
                sv.running,
                sv.map.generation,
                sv.data
            );
        }
        for l in &self.log {
            let _ = writeln!(s, "  {l}");
        }
        s
    }

    /// Runs the scenario: `steps` steps with faults, then quiescence and the final checks.
    pub fn run(mut self) -> Result<Outcome, String> {
        for _ in 0..self.cfg.steps {
            self.step();
            self.check()?;
        }
        self.faults_on = false;
        let mut n = 0;
        while !self.quiet() {
            n += 1;
            if n > QUIESCE_STEPS {
                return Err(self.fail("did not quiesce"));
            }
            self.step();
            self.check()?;
        }
        self.check_quiet()?;
        let acked = self.acked.iter().filter(|&&v| v > 0).count() as u64;
        Ok(Outcome {
            hash: self.hash,
            faults: self.faults,
            acked,
            settle_waits: self.settle_waits,
            refused_waits: self.refused_waits,
            refused_deadlines: self.refused_deadlines,
        })
    }

    fn quiet(&self) -> bool {
        self.msgs.is_empty()
            && self.host.iter().all(|h| *h == HostBlock::Idle)
            && self
                .servers
                .iter()
                .all(|s| s.running && s.writes.is_empty() && s.runs.is_empty())
            && copies(&self.committed).iter().all(|&k| {
                state_of(&self.committed, k) == Some(ReplicaState::InSync)
                    && !is_down(&self.committed, k)
            })
            && self
                .servers
                .iter()
                .all(|s| s.map.generation == self.committed.generation && s.gated.is_none())
            && self.phase1a.is_none()
    }

    fn step(&mut self) {
        self.step_no += 1;
        let r = self.rng.below(100);
        if r < 55 && !self.msgs.is_empty() {
            let i = self.rng.index(self.msgs.len());
            let m = self.msgs.swap_remove(i);
            self.deliver(m);
        } else if r < 75 {
            self.host_write();
        } else if r < 90 {
            self.rebuild_tick();
        } else if self.faults_on {
            self.fault();
        } else {
            // Quiescing: bring every server back.
            if let Some(k) = (0..self.servers.len()).find(|&k| !self.servers[k].running) {
                self.restart(k);
            }
        }
    }

    fn fault(&mut self) {
        if self.cfg.moves && self.rng.chance(100) {
            self.move_copy();
            return;
        }
        let down = self.servers.iter().filter(|s| !s.running).count();
        let k = self.rng.index(self.servers.len());
        if self.servers[k].running {
            // At most N-1 servers down at once (spares included).
            if down + 1 < self.cfg.replicas && self.rng.chance(300) {
                self.crash(k);
            }
        } else {
            self.restart(k);
        }
    }

    fn send(&mut self, m: Msg) {
        // Replica writes and their answers may be lost: the sender's replica deadline passes.
        if self.faults_on
            && let Msg::Fwd {
                from,
                to,
                wid,
                rebuild,
                ..
            } = m
            && self.rng.chance(40)
        {
            self.faults.lost += 1;
            self.trace(format!("lost fwd w{wid} {to}"));
            self.msgs.push(Msg::Reply {
                to: from,
                from: to,
                wid,
                result: Err(Refusal::Other),
                rebuild,
            });
            return;
        }
        self.msgs.push(m);
    }

    fn crash(&mut self, k: usize) {
        self.faults.crashes += 1;
        self.trace(format!("crash s{}", k + 1));
        let s = &mut self.servers[k];
        s.running = false;
        s.epoch += 1;
        s.writes.clear();
        s.locks.clear();
        s.dirty.clear();
        s.dirty_off.clear();
        s.gated = None;
        s.runs.clear();
        s.done_sent.clear();
        s.done_answered.clear();
        s.done_refused.clear();
        s.diverged_at.clear();
        s.was_primary = false;
        // The host's writes in flight there fail (connection lost).
        for h in &mut self.host {
            if let HostBlock::InFlight { val, wid } = *h
                && !self.servers.iter().any(|s| s.writes.contains_key(&wid))
            {
                *h = HostBlock::Retry { val };
            }
        }
        let epoch = self.servers[k].epoch;
        self.msgs.push(Msg::Lost { server: k, epoch });
    }

    fn restart(&mut self, k: usize) {
        self.faults.restarts += 1;
        self.trace(format!("restart s{}", k + 1));
        self.servers[k].running = true;
        self.servers[k].serving = false;
        // Boots from its persisted map and acks it on a new watch stream.
        self.connected[k] = true;
        self.msgs.push(Msg::Ack { from: k });
    }

    // ---- the manager ----

    fn commit(&mut self, next: ClusterMap, why: &str) {
        if next.generation == self.committed.generation {
            return;
        }
        if primary_of(&next) != primary_of(&self.committed) {
            self.faults.failovers += 1;
        }
        self.trace(format!("commit g{} ({why})", next.generation));
        let old_first = first_of(&self.committed);
        self.committed = next;
        if let Some((o, _)) = &self.phase1a {
            // Queued behind the publication in phase 1a; phase 1a does not wait for an old
            // owner the newest map marks down.
            if is_down(&self.committed, *o) {
                self.release();
            }
            return;
        }
        // A map that changes the owner (a drop of `replicas[0]`: "Moving a copy") goes to the
        // old owner first (phase 1a), unless that server is marked down.
        if let Some(o) = old_first
            && first_of(&self.committed) != Some(o)
            && !is_down(&self.committed, o)
        {
            self.trace(format!(
                "phase 1a of g{} at s{}",
                self.committed.generation,
                o + 1
            ));
            self.phase1a = Some((o, self.committed.clone()));
            self.msgs.push(Msg::Install {
                to: o,
                map: Box::new(self.committed.clone()),
            });
            return;
        }
        self.publish();
    }

    /// The newest map becomes every server's (phase 1b).
    fn publish(&mut self) {
        self.published = self.committed.clone();
        for k in 0..self.servers.len() {
            self.msgs.push(Msg::Install {
                to: k,
                map: Box::new(self.committed.clone()),
            });
        }
    }

    /// Phase 1a is done (the old owner acked, or is marked down): the newest map is published.
    fn release(&mut self) {
        if let Some((o, m)) = self.phase1a.take() {
            self.trace(format!("phase 1a of g{} done (s{})", m.generation, o + 1));
            self.publish();
        }
    }

    /// The map server `k` gets from the manager: the phase-1a map for the old owner in phase
    /// 1a, else the newest map through phase 1a.
    fn map_for(&self, k: usize) -> Box<ClusterMap> {
        match &self.phase1a {
            Some((o, m)) if *o == k => Box::new(m.clone()),
            _ => Box::new(self.published.clone()),
        }
    }

    /// The operator moves a copy (`POST /v1/extents/move` with `from`, planned by the REAL
    /// planner as the route does: `Change::StartMove`): `from` any copy of the extent (the
    /// primary, `replicas[0]`, a stale copy on a down server), `to` a server without a copy.
    fn move_copy(&mut self) {
        let map = self.committed.clone();
        let cs = copies(&map);
        let (first, primary) = (first_of(&map), primary_of(&map));
        let gap = self.cfg.gap_moves;
        let froms: Vec<usize> = cs
            .iter()
            .copied()
            .filter(|&c| gap || Some(c) != primary || Some(c) == first)
            .collect();
        let tos: Vec<usize> = (0..self.servers.len())
            .filter(|k| !cs.contains(k))
            .collect();
        if froms.is_empty() || tos.is_empty() {
            return;
        }
        let from = froms[self.rng.index(froms.len())];
        let to = tos[self.rng.index(tos.len())];
        let req = MoveRequest {
            volume: VOL.to_owned(),
            extent: 0,
            to: name(to),
            from: Some(name(from)),
        };
        let pending = pending_of(&map);
        match plan::apply_cancelling(&map, &Change::StartMove(req), &[]) {
            Ok((next, _)) => {
                self.faults.moves_started += 1;
                if pending.is_some() {
                    self.faults.moves_replaced += 1;
                }
                self.commit(next, &format!("move s{} to s{}", from + 1, to + 1));
            }
            Err(e) => {
                self.faults.moves_refused += 1;
                self.trace(format!("move s{} to s{} refused: {e}", from + 1, to + 1));
            }
        }
    }

    fn manager(&mut self, m: Msg) {
        match m {
            Msg::Ack { from } => {
                if !self.connected[from] {
                    return;
                }
                if let Some((o, m)) = &self.phase1a
                    && *o == from
                    && self.servers[from].map.generation >= m.generation
                {
                    self.release();
                }
                if is_down(&self.committed, from) {
                    let next =
                        plan::set_server_state(&self.committed, &name(from), ServerState::Up)
                            .expect("known server");
                    self.commit(next, "up");
                }
                if plan::rebuild_due(&self.committed, &name(from)) {
                    let next = plan::rebuild_start(&self.committed, &name(from)).expect("known");
                    self.faults.rebuilds += 1;
                    self.commit(next, "rebuild start");
                }
                let map = self.map_for(from);
                self.msgs.push(Msg::Install { to: from, map });
            }
            Msg::Lost { server, epoch } => {
                if self.servers[server].running || self.servers[server].epoch != epoch {
                    return;
                }
                self.connected[server] = false;
                let mut next =
                    plan::set_server_state(&self.committed, &name(server), ServerState::Down)
                        .expect("known server");
                if !self.cfg.fixes.failover_resync {
                    // Without the fix: copies `in_sync` before stay `in_sync`.
                    for (v, ov) in next.volumes.iter_mut().zip(&self.committed.volumes) {
                        for (e, oe) in v.extents.iter_mut().zip(&ov.extents) {
                            for (r, or) in e.replicas.iter_mut().zip(&oe.replicas) {
                                if or.state == ReplicaState::InSync
                                    && r.state == ReplicaState::Rebuilding
                                {
                                    r.state = ReplicaState::InSync;
                                    r.rebuilding_since = None;
                                }
                            }
                        }
                    }
                }
                self.commit(next, "down");
            }
            Msg::Failed {
                from,
                copy,
                generation,
            } => {
                let req = ReplicaFailedRequest {
                    primary: name(from),
                    volume: VOL.to_owned(),
                    extent: 0,
                    server: name(copy),
                    generation,
                };
                if let Ok(next) = plan::replica_failed(&self.committed, &req, !self.connected[copy])
                {
                    self.commit(next, "replica failed");
                }
                let map = self.map_for(from);
                self.msgs.push(Msg::Install { to: from, map });
            }
            Msg::Diverged { from, generation } => {
                let req = CopiesDivergedRequest {
                    server: name(from),
                    volume: VOL.to_owned(),
                    extent: 0,
                    generation,
                };
                match plan::copies_diverged(&self.committed, &req) {
                    Ok(next) => self.commit(next, "copies diverged"),
                    Err(e) => {
                        self.trace(format!("copies diverged from s{} refused: {e}", from + 1))
                    }
                }
                let map = self.map_for(from);
                self.msgs.push(Msg::Install { to: from, map });
            }
            Msg::Done {
                from,
                copy,
                generation,
            } => {
                let req = RebuildDoneRequest {
                    primary: name(from),
                    volume: VOL.to_owned(),
                    extent: 0,
                    server: name(copy),
                    generation,
                };
                // Without the fix, the planner gets the map without the record it checks
                // the report against (as a manager from before it kept none).
                let mut current = self.committed.clone();
                if !self.cfg.fixes.stale_done {
                    for r in current
                        .volumes
                        .iter_mut()
                        .flat_map(|v| v.extents.iter_mut())
                        .flat_map(|e| e.replicas.iter_mut())
                    {
                        r.rebuilding_since = None;
                    }
                }
                let accepted = match plan::rebuild_done(&current, &req) {
                    Ok(next) => {
                        // A copy move's drop: `from` leaves the extent in the same generation.
                        let before = copies(&self.committed);
                        let after = copies(&next);
                        if let Some(&gone) = before.iter().find(|c| !after.contains(c)) {
                            self.faults.moves_done += 1;
                            if first_of(&self.committed) == Some(gone) {
                                self.faults.owner_drops += 1;
                            } else if primary_of(&self.committed) == Some(gone) {
                                self.faults.gap_drops += 1;
                                self.trace(format!("drop of primary s{} (not first)", gone + 1));
                            }
                        }
                        self.commit(next, "rebuild done");
                        true
                    }
                    Err(e) => {
                        self.trace(format!("rebuild done s{} refused: {e}", copy + 1));
                        false
                    }
                };
                let map = self.map_for(from);
                self.msgs.push(Msg::DoneAnswer {
                    to: from,
                    copy,
                    generation,
                    accepted,
                    map,
                });
            }
            _ => {}
        }
    }

    // ---- servers ----

    fn deliver(&mut self, m: Msg) {
        match m {
            Msg::Ack { .. }
            | Msg::Lost { .. }
            | Msg::Failed { .. }
            | Msg::Diverged { .. }
            | Msg::Done { .. } => {
                self.manager(m);
            }
            Msg::DoneAnswer {
                to,
                copy,
                generation,
                accepted,
                map,
            } => {
                if !self.servers[to].running {
                    return;
                }
                // `finish` (`rebuild::settled_by`): an accepted answer to the report still out
                // records the answer's generation; so does a refused one, whose 409 names the
                // manager's generation (the map sent here is the manager's at the refusal):
                // every report accepted before is in it. The writes waiting for the outcome
                // wait until that map is installed, then are re-checked. Without the fix a
                // refusal gives no outcome: those writes wait until their deadline, since the
                // next report needs the whole-extent lock they hold (the model has no clock:
                // they fail now, as at their deadline).
                let refused_answer = self.cfg.fixes.refused_answer;
                let s = &mut self.servers[to];
                if s.done_sent.get(&copy) == Some(&generation) {
                    if accepted {
                        s.done_answered.insert(copy, map.generation);
                    } else {
                        s.done_refused.insert(copy);
                        if refused_answer {
                            s.done_answered.insert(copy, map.generation);
                        }
                        for w in s.writes.values_mut() {
                            if !w.answered && w.wait_done.contains(&copy) && !w.expired {
                                self.refused_waits += 1;
                                if !refused_answer {
                                    w.expired = true;
                                    self.refused_deadlines += 1;
                                }
                            }
                        }
                    }
                }
                let newer = map.generation > s.map.generation;
                self.deliver(Msg::Install { to, map });
                if !newer {
                    let wids: Vec<u64> = self.servers[to].writes.keys().copied().collect();
                    for wid in wids {
                        self.advance(to, wid);
                    }
                }
            }
            Msg::Install { to, map } => {
                if !self.servers[to].running {
                    return;
                }
                // Serving again once it has the manager's current map (the model's shortcut
                // for the fetch at boot; an older map still on its way does not count).
                if map.generation >= self.published.generation {
                    self.servers[to].serving = true;
                }
                if map.generation > self.servers[to].map.generation {
                    if self.loses_ownership(to, &map) {
                        // Phase 1a at the old owner: its gate closes and the writes it ordered
                        // drain (no final copy: the other copies have every write); the map is
                        // installed once none is left.
                        let newer = self.servers[to]
                            .gated
                            .as_ref()
                            .is_none_or(|g| g.generation < map.generation);
                        if newer {
                            self.trace(format!(
                                "s{} gate closed for g{} ({} writes inside)",
                                to + 1,
                                map.generation,
                                self.servers[to].writes.len()
                            ));
                            self.servers[to].gated = Some(*map);
                        }
                        let wids: Vec<u64> = self.servers[to].writes.keys().copied().collect();
                        for wid in wids {
                            self.advance(to, wid);
                        }
                        self.open_gate(to);
                    } else {
                        self.install(to, *map);
                    }
                }
            }
            Msg::Fwd {
                from,
                to,
                stamp,
                block,
                val,
                wid,
                rebuild,
            } => {
                let result = self.copy_write(to, from, stamp, block, val);
                self.trace(format!(
                    "fwd w{wid} s{}->s{} g{stamp} {result:?}",
                    from + 1,
                    to + 1
                ));
                if self.servers[to].running || result.is_err() {
                    self.msgs.push(Msg::Reply {
                        to: from,
                        from: to,
                        wid,
                        result,
                        rebuild,
                    });
                }
            }
            Msg::Reply {
                to,
                from,
                wid,
                result,
                rebuild,
            } => {
                if !self.servers[to].running {
                    return;
                }
                if rebuild {
                    self.run_done(to, wid, result.is_ok());
                } else {
                    self.write_reply(to, from, wid, result);
                }
            }
        }
    }

    /// A replica write at copy `me` from `from` (the primary rule and the stamp rule,
    /// `admission::compare` for internal commands).
    fn copy_write(
        &mut self,
        me: usize,
        from: usize,
        stamp: u64,
        block: usize,
        val: u64,
    ) -> Result<(), Refusal> {
        // A closed gate (phase 1a) holds the command, then answers 81h.
        if !self.servers[me].running
            || !self.servers[me].serving
            || self.servers[me].gated.is_some()
        {
            return Err(Refusal::Other);
        }
        if self.faults_on && self.rng.chance(15) {
            self.faults.copy_errors += 1;
            return Err(Refusal::Other);
        }
        let s = &self.servers[me];
        let current = s.map.generation;
        match compare(stamp, current, true) {
            Stamp::Current => {}
            Stamp::Stale { current } => {
                if self.cfg.mutation != Some(Mutation::AcceptOldStamp) {
                    self.refused_stale(me, from, current);
                    return Err(Refusal::Stale(current));
                }
            }
            Stamp::Ahead { .. } | Stamp::Unstamped { .. } => return Err(Refusal::Other),
        }
        let old = self.cfg.mutation == Some(Mutation::AcceptOldStamp) && stamp < current;
        if !old {
            let ok = primary_of(&s.map) == Some(from)
                && matches!(
                    state_of(&s.map, me),
                    Some(ReplicaState::InSync | ReplicaState::Rebuilding)
                );
            if !ok {
                return Err(Refusal::Other);
            }
        }
        self.servers[me].data[block] = val;
        Ok(())
    }

    /// Copy `me` refused a replica write from `from` as stale (its map is at `current`): when
    /// that map no longer names `from` the primary and has `me`'s copy `in_sync` on a server
    /// not down, `me` reports copies-diverged itself, once per generation (the daemon's
    /// `replica::refused_stale`, with [`Fixes::refuser_report`]). The sender's write cannot
    /// complete any more, and it may be on other copies already.
    fn refused_stale(&mut self, me: usize, from: usize, current: u64) {
        if !self.cfg.fixes.refuser_report {
            return;
        }
        let s = &self.servers[me];
        let due = primary_of(&s.map) != Some(from)
            && state_of(&s.map, me) == Some(ReplicaState::InSync)
            && !is_down(&s.map, me)
            && !s.diverged_at.contains(&current);
        if !due {
            return;
        }
        self.servers[me].diverged_at.insert(current);
        self.faults.refuser_reports += 1;
        self.trace(format!(
            "s{} refused a stale write of s{}: copies diverged",
            me + 1,
            from + 1
        ));
        self.msgs.push(Msg::Diverged {
            from: me,
            generation: current,
        });
    }

    /// Whether installing `map` takes the extent's ownership (`replicas[0]`) away from `k`:
    /// a phase 1a install, whose gate closes (a server not serving, or marked down in `map`,
    /// closes none: nothing runs that it could hold).
    fn loses_ownership(&self, k: usize, map: &ClusterMap) -> bool {
        let s = &self.servers[k];
        s.running
            && s.serving
            && first_of(&s.map) == Some(k)
            && first_of(map) != Some(k)
            && !is_down(map, k)
    }

    /// The gate of `k`'s phase 1a install: once the writes inside have left, the held map is
    /// installed (and acked).
    fn open_gate(&mut self, k: usize) {
        if !self.servers[k].writes.is_empty() {
            return;
        }
        let Some(map) = self.servers[k].gated.take() else {
            return;
        };
        self.trace(format!("s{} drained: gate open", k + 1));
        if map.generation > self.servers[k].map.generation {
            self.install(k, map);
        }
    }

    /// Installs `map` at `k` (the watch loop's install, then `rebuild::reconcile`): dirty maps
    /// for copies out of the write set, writes waiting for a newer map go on, rebuilds start.
    fn install(&mut self, k: usize, map: ClusterMap) {
        self.trace(format!("s{} installs g{}", k + 1, map.generation));
        let old = std::mem::replace(&mut self.servers[k].map, map);
        let map = self.servers[k].map.clone();
        let me_primary = primary_of(&map) == Some(k);
        if me_primary {
            let fresh = !self.servers[k].was_primary;
            // `reconcile` keeps only the records of copies of the map (by server and offset):
            // a dropped copy's goes, and so do its report's records.
            let now = copies(&map);
            let s = &mut self.servers[k];
            let keep: Vec<usize> = s
                .dirty
                .keys()
                .copied()
                .filter(|c| now.contains(c) && s.dirty_off.get(c) == offset_of(&map, *c).as_ref())
                .collect();
            s.dirty.retain(|c, _| keep.contains(c));
            s.dirty_off.retain(|c, _| keep.contains(c));
            s.done_sent.retain(|c, _| now.contains(c));
            s.done_answered.retain(|c, _| now.contains(c));
            s.done_refused.retain(|c| now.contains(c));
            for c in now {
                if c == k {
                    continue;
                }
                let off = offset_of(&map, c).unwrap_or(u64::MAX);
                // A copy new to the extent (not in the map before, at this offset: a copy
                // move's): no record of what it holds, rebuilt whole.
                let new_copy = offset_of(&old, c) != Some(off);
                let out = is_down(&map, c) || state_of(&map, c) != Some(ReplicaState::InSync);
                if state_of(&map, c) != Some(ReplicaState::Rebuilding) {
                    self.servers[k].done_sent.remove(&c);
                    self.servers[k].done_answered.remove(&c);
                    self.servers[k].done_refused.remove(&c);
                }
                // Straight from counting to `rebuilding`: the manager asks for the whole
                // extent (`rebuild::reconcile`'s resync).
                let resync = state_of(&map, c) == Some(ReplicaState::Rebuilding)
                    && state_of(&old, c) == Some(ReplicaState::InSync)
                    && !is_down(&old, c);
                if resync {
                    if let Some(d) = self.servers[k].dirty.get(&c) {
                        d.mark(0, EXTENT);
                    } else {
                        self.servers[k].dirty.insert(c, DirtyMap::new(EXTENT, true));
                        self.servers[k].dirty_off.insert(c, off);
                    }
                }
                if new_copy && let Some(d) = self.servers[k].dirty.get(&c) {
                    // A record made by a failed forward after the copy's drop, at the offset it
                    // is added at again: `reconcile` marks it whole (it says nothing of the
                    // writes missed since the drop).
                    d.mark(0, EXTENT);
                    self.faults.stray_records_kept += 1;
                    self.trace(format!(
                        "s{} finds a record of s{} new to the extent: rebuilt whole",
                        k + 1,
                        c + 1
                    ));
                }
                if out && !self.servers[k].dirty.contains_key(&c) {
                    self.servers[k]
                        .dirty
                        .insert(c, DirtyMap::new(EXTENT, fresh || new_copy));
                    self.servers[k].dirty_off.insert(c, off);
                }
                if !out {
                    // Back in sync: a miss recorded since the rebuild-done report makes it
                    // stale again.
                    if let Some(d) = self.servers[k].dirty.remove(&c)
                        && !d.is_clean()
                    {
                        self.servers[k].dirty.insert(c, d);
                        let generation = map.generation;
                        self.msgs.push(Msg::Failed {
                            from: k,
                            copy: c,
                            generation,
                        });
                    } else {
                        self.servers[k].dirty_off.remove(&c);
                    }
                    self.servers[k].done_sent.remove(&c);
                    self.servers[k].done_answered.remove(&c);
                    self.servers[k].done_refused.remove(&c);
                }
            }
            self.servers[k].was_primary = true;
        } else {
            self.servers[k].dirty.clear();
            self.servers[k].dirty_off.clear();
            self.servers[k].was_primary = false;
        }
        let wids: Vec<u64> = self.servers[k].writes.keys().copied().collect();
        for wid in wids {
            self.advance(k, wid);
        }
        self.msgs.push(Msg::Ack { from: k });
    }

    fn host_write(&mut self) {
        let b = self.rng.index(BLOCKS);
        let val = match self.host[b] {
            HostBlock::Idle => {
                let v = self.next_val;
                self.next_val += 1;
                v
            }
            HostBlock::Retry { val } => {
                if self.cfg.give_up && self.rng.index(3) == 0 {
                    self.given_up.insert(val);
                    self.host[b] = HostBlock::Idle;
                    self.trace(format!("host gave up b{b}={val}"));
                    return;
                }
                val
            }
            HostBlock::InFlight { .. } => return,
        };
        self.host[b] = HostBlock::Retry { val };
        // Through any running server, which routes to the primary of its own map, stamped
        // with its generation (`route::locate`).
        let r = self.rng.index(self.servers.len());
        if !self.servers[r].running || !self.servers[r].serving {
            return;
        }
        let Some(p) = primary_of(&self.servers[r].map) else {
            return;
        };
        let stamp = self.servers[r].map.generation;
        if !self.servers[p].running || !self.servers[p].serving {
            return;
        }
        if compare(stamp, self.servers[p].map.generation, true) != Stamp::Current
            || primary_of(&self.servers[p].map) != Some(p)
            || self.servers[p].gated.is_some()
        {
            return;
        }
        if self.servers[p].locks.contains(&b) {
            return;
        }
        let wid = self.next_wid;
        self.next_wid += 1;
        self.host[b] = HostBlock::InFlight { val, wid };
        self.start_write(p, wid, b, val);
    }

    /// `replica::write`: lock, write locally, fan out stamped replica writes.
    fn start_write(&mut self, p: usize, wid: u64, block: usize, val: u64) {
        let map = self.servers[p].map.clone();
        let stamp = map.generation;
        self.trace(format!("w{wid} at s{} b{block}={val} g{stamp}", p + 1));
        let s = &mut self.servers[p];
        s.locks.insert(block);
        s.data[block] = val;
        let fan = fan_out(&map, p);
        let skipped: Vec<usize> = copies(&map)
            .into_iter()
            .filter(|c| *c != p && !fan.contains(c))
            .collect();
        let offs: BTreeMap<usize, u64> = copies(&map)
            .into_iter()
            .filter_map(|c| offset_of(&map, c).map(|o| (c, o)))
            .collect();
        if self.cfg.fixes.mark_late {
            for c in &skipped {
                mark(s, *c, offs[c], block);
            }
        }
        let mut w = Write {
            block,
            val,
            sent: BTreeMap::new(),
            acked: BTreeSet::new(),
            failed: BTreeSet::new(),
            skipped,
            offs,
            wait_newer: None,
            wait_done: BTreeSet::new(),
            expired: false,
            answered: false,
        };
        for &c in &fan {
            w.sent.insert(c, false);
        }
        s.writes.insert(wid, w);
        for c in fan {
            self.send(Msg::Fwd {
                from: p,
                to: c,
                stamp,
                block,
                val,
                wid,
                rebuild: false,
            });
        }
        self.advance(p, wid);
    }

    fn write_reply(&mut self, p: usize, c: usize, wid: u64, result: Result<(), Refusal>) {
        self.trace(format!("reply w{wid} s{}->s{} {result:?}", c + 1, p + 1));
        let map = self.servers[p].map.clone();
        let fixes = self.cfg.fixes;
        let s = &mut self.servers[p];
        let Some(w) = s.writes.get_mut(&wid) else {
            return;
        };
        w.sent.insert(c, true);
        match result {
            Ok(()) => {
                w.acked.insert(c);
            }
            Err(why) => {
                w.failed.insert(c);
                let block = w.block;
                let in_sync = state_of(&map, c) == Some(ReplicaState::InSync) && !is_down(&map, c);
                let after_done = fixes.after_done && s.done_sent.contains_key(&c);
                if in_sync {
                    // `out_of_write_set`: report, wait for a map without it in sync.
                    w.wait_newer = Some(w.wait_newer.unwrap_or(0).max(map.generation));
                } else if after_done {
                    // `promotions_settled`: wait until the report's outcome is installed,
                    // then re-check as for an `in_sync` copy.
                    w.wait_done.insert(c);
                    // Refused: the outcome is the map the refusal named (already installed: it
                    // came with the answer); without the fix, none comes before its deadline
                    // (see `DoneAnswer`).
                    if s.done_refused.contains(&c) && !w.expired {
                        self.refused_waits += 1;
                        if !fixes.refused_answer {
                            w.expired = true;
                            self.refused_deadlines += 1;
                        }
                    }
                    self.settle_waits += 1;
                } else if let Refusal::Stale(current) = why
                    && fixes.handover
                    && current > map.generation
                {
                    w.wait_newer = Some(w.wait_newer.unwrap_or(0).max(current - 1));
                }
                if fixes.mark_late {
                    let off = w.offs[&c];
                    mark(s, c, off, block);
                }
                let generation = map.generation;
                self.msgs.push(Msg::Failed {
                    from: p,
                    copy: c,
                    generation,
                });
            }
        }
        self.advance(p, wid);
    }

    /// Completes write `wid` at `p` when it can (`still_primary`, completion once every
    /// `in_sync` copy of the current map has it), re-sends to in-sync copies that lack it,
    /// and drops the record (releasing the lock) once every forward resolved.
    fn advance(&mut self, p: usize, wid: u64) {
        let map = self.servers[p].map.clone();
        let early = self.cfg.mutation == Some(Mutation::AckEarly);
        let mark_late = !self.cfg.fixes.mark_late;
        let gated = self.servers[p].gated.is_some();
        // Copies with a rebuild-done report out whose outcome is not installed here
        // (`Tracked::promotion_settled_at` above the installed generation).
        let s = &self.servers[p];
        let unsettled: BTreeSet<usize> = s
            .done_sent
            .keys()
            .copied()
            .filter(|c| s.done_answered.get(c).is_none_or(|g| map.generation < *g))
            .collect();
        let Some(w) = self.servers[p].writes.get_mut(&wid) else {
            return;
        };
        if !w.answered {
            let settling = w.wait_done.iter().any(|c| unsettled.contains(c));
            if !settling {
                w.wait_done.clear();
            }
            let newer = w.wait_newer.is_some_and(|g| map.generation <= g);
            if !newer {
                w.wait_newer = None;
            }
            let waiting = newer || settling;
            // At an old owner whose phase 1a install drains its writes, a write waiting for a
            // map (a newer one, or a report's outcome) waits for what the closed gate holds
            // back: it fails at its deadline (the model has no clock: now).
            if gated && waiting && !w.expired {
                w.expired = true;
                self.faults.gate_deadlines += 1;
            }
            let mut answer = None;
            if primary_of(&map) != Some(p) {
                answer = Some(false);
                // `out_of_write_set`'s "no longer the primary": its own copy has the write.
                if self.cfg.fixes.diverged_report {
                    let generation = map.generation;
                    // The former primary killed (or cut off) before its report arrives. Also
                    // while quiescing (a lost report does not keep the cluster from going
                    // quiet; the handovers back to rebuilt first copies happen then).
                    if self.cfg.lose_diverged && self.rng.chance(500) {
                        self.faults.diverged_lost += 1;
                        self.trace(format!("copies-diverged report of s{} lost", p + 1));
                    } else {
                        self.msgs.push(Msg::Diverged {
                            from: p,
                            generation,
                        });
                    }
                }
            } else if w.expired {
                answer = Some(false);
            } else if early {
                answer = Some(true);
            } else if !waiting {
                let need = in_sync_others(&map, p);
                let missing: Vec<usize> = need
                    .iter()
                    .copied()
                    .filter(|c| !w.acked.contains(c))
                    .collect();
                let unsent: Vec<usize> = missing
                    .iter()
                    .copied()
                    .filter(|c| w.sent.get(c) != Some(&false))
                    .collect();
                // Every forward's outcome is awaited (a failed one to a copy out of the write
                // set marks its bits and does not fail the write).
                if missing.is_empty() && w.sent.values().all(|r| *r) {
                    answer = Some(true);
                } else if !unsent.is_empty() {
                    // Re-send to the write set of the newer map.
                    let (block, val) = (w.block, w.val);
                    for &c in &unsent {
                        w.sent.insert(c, false);
                        w.failed.remove(&c);
                    }
                    for c in unsent {
                        self.send(Msg::Fwd {
                            from: p,
                            to: c,
                            stamp: map.generation,
                            block,
                            val,
                            wid,
                            rebuild: false,
                        });
                    }
                }
            }
            let w = self.servers[p].writes.get_mut(&wid).expect("present");
            if let Some(ok) = answer {
                w.answered = true;
                let (block, val) = (w.block, w.val);
                if mark_late {
                    let missed: Vec<(usize, u64)> = w
                        .skipped
                        .iter()
                        .copied()
                        .chain(w.failed.iter().copied())
                        .map(|c| (c, w.offs[&c]))
                        .collect();
                    for (c, off) in missed {
                        mark(&mut self.servers[p], c, off, block);
                    }
                }
                if let HostBlock::InFlight { val: v, wid: hw } = self.host[block]
                    && hw == wid
                {
                    if ok {
                        self.host[block] = HostBlock::Idle;
                        self.acked[block] = self.acked[block].max(v);
                        self.trace(format!("w{wid} acked b{block}={val}"));
                    } else {
                        self.host[block] = HostBlock::Retry { val: v };
                        self.trace(format!("w{wid} failed"));
                    }
                }
            }
        }
        let w = self.servers[p].writes.get(&wid).expect("present");
        if w.answered && w.sent.values().all(|r| *r) {
            let block = w.block;
            self.servers[p].writes.remove(&wid);
            self.servers[p].locks.remove(&block);
            self.open_gate(p);
        }
    }

    /// The rebuild task at a random primary: one run of a rebuilding copy, or its end.
    fn rebuild_tick(&mut self) {
        let p = self.rng.index(self.servers.len());
        if !self.servers[p].serving || primary_of(&self.servers[p].map) != Some(p) {
            return;
        }
        if !self.servers[p].running {
            return;
        }
        let map = self.servers[p].map.clone();
        let rebuilding: Vec<usize> = copies(&map)
            .into_iter()
            .filter(|&c| state_of(&map, c) == Some(ReplicaState::Rebuilding) && !is_down(&map, c))
            .collect();
        if rebuilding.is_empty() {
            return;
        }
        let c = rebuilding[self.rng.index(rebuilding.len())];
        if self.servers[p].runs.values().any(|r| r.copy == c) {
            return;
        }
        let s = &mut self.servers[p];
        let off = offset_of(&map, c).unwrap_or(u64::MAX);
        if s.dirty_off.get(&c) != Some(&off) {
            s.dirty.remove(&c);
        }
        s.dirty_off.insert(c, off);
        let d = s
            .dirty
            .entry(c)
            .or_insert_with(|| DirtyMap::new(EXTENT, true));
        if let Some((at, len)) = d.next_run(0, RUN) {
            let blocks = block_range(at, len);
            if blocks.clone().any(|b| s.locks.contains(&b)) {
                return;
            }
            d.clear(at, len);
            for b in blocks.clone() {
                s.locks.insert(b);
            }
            let wid = self.next_wid;
            self.next_wid += 1;
            s.runs.insert(
                wid,
                Run {
                    copy: c,
                    off,
                    at,
                    len,
                },
            );
            let stamp = map.generation;
            let b0 = blocks.start;
            let v0 = s.data[b0];
            self.trace(format!(
                "rebuild run w{wid} s{}->s{} {at}+{len}",
                p + 1,
                c + 1
            ));
            self.send(Msg::Fwd {
                from: p,
                to: c,
                stamp,
                block: b0,
                val: v0,
                wid,
                rebuild: true,
            });
        } else {
            // The end: with the fix, under the whole-extent range lock.
            if self.cfg.fixes.in_flight && !s.locks.is_empty() {
                return;
            }
            if s.done_sent.get(&c) == Some(&map.generation) {
                return;
            }
            s.done_sent.insert(c, map.generation);
            s.done_answered.remove(&c);
            s.done_refused.remove(&c);
            self.trace(format!("rebuild done s{} by s{}", c + 1, p + 1));
            self.msgs.push(Msg::Done {
                from: p,
                copy: c,
                generation: map.generation,
            });
        }
    }

    fn run_done(&mut self, p: usize, wid: u64, ok: bool) {
        let s = &mut self.servers[p];
        let Some(run) = s.runs.remove(&wid) else {
            return;
        };
        for b in block_range(run.at, run.len) {
            s.locks.remove(&b);
        }
        if !ok
            && s.dirty_off.get(&run.copy) == Some(&run.off)
            && let Some(d) = s.dirty.get(&run.copy)
        {
            d.mark(run.at, run.len);
        }
    }

    // ---- checks ----

    fn check(&self) -> Result<(), String> {
        let map = &self.committed;
        for k in copies(map) {
            if state_of(map, k) != Some(ReplicaState::InSync) {
                continue;
            }
            for b in 0..BLOCKS {
                let v = self.acked[b];
                if v == 0 || self.servers[k].data[b] >= v {
                    continue;
                }
                if self.in_window(k, b, v) {
                    continue;
                }
                return Err(self.fail(&format!(
                    "acknowledged write b{b}={v} missing on in_sync copy s{} (has {}) at g{}",
                    k + 1,
                    self.servers[k].data[b],
                    map.generation
                )));
            }
        }
        Ok(())
    }

    /// Whether copy `k` lacking value `v` of block `b` is in the documented window: a replica
    /// write carrying it is on its way, or the primary recorded the miss and reports it.
    fn in_window(&self, k: usize, b: usize, v: u64) -> bool {
        let on_way = self.msgs.iter().any(|m| {
            matches!(m, Msg::Fwd { to, block, val, .. } if *to == k && *block == b && *val >= v)
        });
        // Or its answer is on its way back to a write still in progress.
        let answering = self.msgs.iter().any(|m| match m {
            Msg::Reply {
                to,
                from,
                wid,
                rebuild: false,
                ..
            } if *from == k => self.servers[*to]
                .writes
                .get(wid)
                .is_some_and(|w| w.block == b && w.val >= v),
            _ => false,
        });
        let off = offset_of(&self.committed, k);
        let recorded = self.servers.iter().any(|s| {
            s.running
                && s.dirty_off.get(&k) == off.as_ref()
                && s.dirty.get(&k).is_some_and(|d| {
                    let at = b as u64 * CHUNK;
                    d.next_run(at, CHUNK).is_some_and(|(a, _)| a == at)
                })
        });
        // Or a rebuild run that took the bit is on its way (its failure sets the bit again).
        let running = self.servers.iter().any(|s| {
            s.running
                && s.runs
                    .values()
                    .any(|r| r.copy == k && block_range(r.at, r.len).contains(&b))
        });
        on_way || answering || recorded || running
    }

    fn check_quiet(&self) -> Result<(), String> {
        let map = &self.committed;
        let cs = copies(map);
        // Every copy move over: exactly `replicas` copies, none replacing another.
        if cs.len() != self.cfg.replicas || pending_of(map).is_some() {
            return Err(self.fail(&format!(
                "quiescent extent has copies {:?} (pending move {:?}), not {} plain ones",
                cs.iter().map(|c| name(*c)).collect::<Vec<_>>(),
                pending_of(map),
                self.cfg.replicas
            )));
        }
        let first = self.servers[cs[0]].data;
        for &k in &cs {
            if self.servers[k].data != first {
                return Err(self.fail(&format!(
                    "quiescent in_sync copies differ: s{} {:?} vs s{} {:?}",
                    cs[0] + 1,
                    first,
                    k + 1,
                    self.servers[k].data
                )));
            }
        }
        // A read through every server (`route::locate_read`: its own in-sync copy, else the
        // primary).
        for r in 0..self.servers.len() {
            let m = &self.servers[r].map;
            let src = if state_of(m, r) == Some(ReplicaState::InSync) {
                r
            } else {
                primary_of(m).unwrap_or(r)
            };
            for b in 0..BLOCKS {
                let got = self.servers[src].data[b];
                // A given-up write newer than the last acknowledged one may have landed (on
                // every copy: they are equal, checked above).
                if got > self.acked[b] && self.given_up.contains(&got) {
                    continue;
                }
                if got != self.acked[b] {
                    return Err(self.fail(&format!(
                        "read of b{b} through s{} returns {}, last acknowledged {}",
                        r + 1,
                        self.servers[src].data[b],
                        self.acked[b]
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Marks `block` missed by copy `c` at pool offset `off` (`Rebuilds::failed`, `missed`): the
/// record of that copy, made first when there is none, as the daemon does, even for a copy no
/// longer in the map (a forward to a copy dropped meanwhile; `reconcile` drops it at the next
/// install). A record of the same server at another offset is another copy's: left alone.
fn mark(s: &mut Server, c: usize, off: u64, block: usize) {
    if let Some(d) = s.dirty.get(&c) {
        if s.dirty_off.get(&c) == Some(&off) {
            d.mark(block as u64 * CHUNK, CHUNK);
        }
    } else {
        // Created now: clean only if this server has been the primary, seeing every write,
        // since it started (`rebuild::reconcile`).
        let d = DirtyMap::new(EXTENT, !s.was_primary);
        d.mark(block as u64 * CHUNK, CHUNK);
        s.dirty.insert(c, d);
        s.dirty_off.insert(c, off);
    }
}

fn block_range(at: u64, len: u64) -> std::ops::Range<usize> {
    (at / CHUNK) as usize..(at + len).div_ceil(CHUNK) as usize
}
