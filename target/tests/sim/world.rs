//! The simulated world: one clock, one event queue, the network between the manager, the
//! storage servers and the clients (with its faults), the workload driver and the invariant
//! checks.
//!
//! Every run is a pure function of its seed: all randomness comes from [`Rng`], all state is
//! in ordered maps, and events at the same millisecond run in the order they were scheduled.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;

use manager::api::{AddServerRequest, CreateVolumeRequest, MoveReadyRequest, MoveRequest};
use manager::coord::Phase;
use manager::map::{ClusterMap, HostPolicy};
use manager::plan::{self, Change};

use super::client::{Client, ClientKind};
use super::manager::Manager;
use super::rng::Rng;
use super::server::Server;

pub type Gen = u64;
/// A block of a volume: (index in [`World::vol_names`], block number).
pub type BlockKey = (usize, u64);

/// Logical (and pool) block size of the simulated volumes.
pub const BLOCK: u64 = 512;
/// Extent size: four blocks, so a handful of blocks spans several extents and servers.
pub const EXTENT: u64 = 4 * BLOCK;
/// Extents per volume at creation; resizes add one at a time up to [`EXTENTS_MAX`].
pub const EXTENTS_INITIAL: u64 = 4;
pub const EXTENTS_MAX: u64 = 6;
/// Pool of every server: room for every extent of both volumes plus move targets.
pub const POOL_BLOCKS: u64 = 128;
/// Servers in the first map; one more may join during the run.
pub const SERVERS_INITIAL: usize = 3;
pub const SERVERS_MAX: usize = 4;
/// Events kept for the failure report.
pub const TRACE_LEN: usize = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Node {
    Mgr,
    Srv(usize),
    Cli(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server(usize),
    Client,
}

/// Control-API requests (HTTP in the real system).
#[derive(Debug, Clone)]
pub enum Req {
    Ack { server: usize, generation: Gen },
    MoveReady(MoveReadyRequest),
    Fetch(Role),
}

#[derive(Debug, Clone)]
pub enum Rep {
    Ok,
    Err(String),
    Map(Arc<ClusterMap>),
}

/// Completion of an internal (stamped) command.
#[derive(Debug, Clone)]
pub enum IoRes {
    Done(Vec<u64>),
    /// SC 80h with the server's generation.
    Stale(Gen),
    /// SC 81h with the server's generation.
    Behind(Gen),
    /// Access Denied (DNR): refused by the fencing rule (not the owner, not the source).
    Denied,
}

#[derive(Debug, Clone)]
pub enum Msg {
    // Watch streams (manager -> subscriber), in order per subscriber.
    Subscribe {
        stream: u64,
        role: Role,
        after: Gen,
    },
    StreamOpened {
        stream: u64,
    },
    StreamMap {
        stream: u64,
        map: Arc<ClusterMap>,
    },
    // Control API.
    Rpc {
        id: u64,
        req: Req,
    },
    RpcReply {
        id: u64,
        rep: Rep,
    },
    // Internal connections: stamped commands on a server's pool (block addresses).
    Io {
        id: u64,
        stamp: Gen,
        blk: u64,
        nblk: u64,
        data: Option<Vec<u64>>,
        /// On the copy namespace.
        copy: bool,
    },
    IoReply {
        id: u64,
        res: IoRes,
    },
    // A standard host's command to a routing server (unstamped) and its completion.
    HostIo {
        id: u64,
        key: BlockKey,
        data: Option<u64>,
    },
    HostReply {
        id: u64,
        res: Option<u64>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Watch stream lines: delayed (in order), a lost one breaks the stream.
    Stream,
    /// Control API and internal I/O: delayed, reordered, dropped, duplicated (requests of
    /// internal I/O are not duplicated: TCP does not, and a retried command's first copy is
    /// cancelled with its connection).
    Control,
    IoRequest,
    IoReply,
    /// Host <-> routing server: delayed only (a crash breaks the connection).
    Host,
}

impl Msg {
    fn class(&self) -> Class {
        match self {
            Self::Subscribe { .. } | Self::Rpc { .. } | Self::RpcReply { .. } => Class::Control,
            Self::StreamOpened { .. } | Self::StreamMap { .. } => Class::Stream,
            Self::Io { .. } => Class::IoRequest,
            Self::IoReply { .. } => Class::IoReply,
            Self::HostIo { .. } | Self::HostReply { .. } => Class::Host,
        }
    }

    fn io_id(&self) -> Option<u64> {
        match self {
            Self::Io { id, .. } | Self::IoReply { id, .. } => Some(*id),
            _ => None,
        }
    }
}

impl fmt::Display for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Subscribe {
                stream,
                role,
                after,
            } => {
                write!(f, "subscribe#{stream} {role:?} after={after}")
            }
            Self::StreamOpened { stream } => write!(f, "stream#{stream} opened"),
            Self::StreamMap { stream, map } => {
                write!(f, "stream#{stream} map g{}", map.generation)
            }
            Self::Rpc { id, req } => match req {
                Req::Ack { server, generation } => {
                    write!(f, "rpc#{id} ack s{} g{generation}", server + 1)
                }
                Req::MoveReady(r) => write!(
                    f,
                    "rpc#{id} move-ready {}[{}] by {} g{}",
                    r.volume, r.extent, r.server, r.generation
                ),
                Req::Fetch(role) => write!(f, "rpc#{id} fetch {role:?}"),
            },
            Self::RpcReply { id, rep } => match rep {
                Rep::Ok => write!(f, "rpc#{id} ok"),
                Rep::Err(e) => write!(f, "rpc#{id} err {e}"),
                Rep::Map(m) => write!(f, "rpc#{id} map g{}", m.generation),
            },
            Self::Io {
                id,
                stamp,
                blk,
                nblk,
                data,
                ..
            } => match data {
                Some(d) => write!(f, "io#{id} write stamp={stamp} pool[{blk}..+{nblk}]={d:?}"),
                None => write!(f, "io#{id} read stamp={stamp} pool[{blk}..+{nblk}]"),
            },
            Self::IoReply { id, res } => write!(f, "io#{id} -> {res:?}"),
            Self::HostIo { id, key, data } => match data {
                Some(v) => write!(f, "host#{id} write v{}[{}]=#{v}", key.0, key.1),
                None => write!(f, "host#{id} read v{}[{}]", key.0, key.1),
            },
            Self::HostReply { id, res } => write!(f, "host#{id} -> {res:?}"),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Timer {
    // Manager.
    Coord {
        generation: Gen,
        phase: Phase,
    },
    DiskCommit(Gen),
    // Watch stream subscribers.
    WatchCheck(u64),
    StreamBroken(u64),
    Resubscribe(u64),
    // Senders of control-API requests and internal commands.
    RpcTimeout(u64),
    IoTimeout(u64),
    // Servers.
    Boot,
    TaskWake {
        task: u64,
        token: u64,
    },
    BehindTimeout(u64),
    MoverWake {
        key: (String, usize),
        token: u64,
    },
    InstallWake(u64),
    ReAck,
    /// `install` postponed: `refresh.notify_one()` after POSTPONED_RETRY (target/src/cluster).
    PostponedRetry,
    /// A fenced server's map fetch failed: fetch again.
    CatchUp,
    // Clients.
    ClientWake(u64),
    HostLost(u64),
    NextOp,
}

#[derive(Debug, Clone)]
pub enum Ev {
    Msg {
        from: Node,
        to: Node,
        msg: Msg,
    },
    Timer {
        node: Node,
        inc: u64,
        t: Timer,
    },
    Restart(Node),
    Drive,
    /// An operator's action on a server (docs/cluster.md: a dead server is marked `down`
    /// in the YAML and the manager reloads it).
    Operator(OperatorAction),
}

/// What the operator does about a hung server.
#[derive(Debug, Clone, Copy)]
pub enum OperatorAction {
    /// `state: down` and reload (`Change::SetServerState`), as for a dead server.
    MarkDown(usize),
    /// The server is repaired: `state: up` and reload.
    MarkUp(usize),
    /// The hung process is killed and restarted on its durable pool (from its persisted,
    /// older, map) instead of resuming.
    Restart(usize),
}

/// An internal command in flight: who sent it, where to.
#[derive(Debug, Clone, Copy)]
pub struct IoRec {
    pub from: Node,
    pub to: Node,
}

/// What the seed's run may do (drawn from the seed, so seeds also vary the fault mix).
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    pub drop_pm: u64,
    pub dup_pm: u64,
    pub delay_pm: u64,
    pub server_crash_pm: u64,
    pub manager_crash_pm: u64,
    /// A server hangs (SIGSTOP: its process stops, its connections stay open) and the
    /// operator marks it down, then up.
    pub hang_pm: u64,
    /// Of crashes, how many keep the process down for tens of seconds.
    pub long_down_pm: u64,
    pub change_pm: u64,
    pub delay_ms_max: u64,
}

/// Longest delay of a message when long delays are off.
pub const SHORT_DELAY_MS_MAX: u64 = 200;
/// Longest delay of a message when they are on.
pub const LONG_DELAY_MS_MAX: u64 = 1_500;

impl Faults {
    fn draw(rng: &mut Rng, set: FaultSet) -> Self {
        let on = |b: bool, v: u64| if b { v } else { 0 };
        Self {
            drop_pm: on(set.drops, rng.range(0, 60)),
            dup_pm: on(set.reorder, rng.range(0, 60)),
            delay_pm: on(set.reorder, rng.range(0, 100)),
            server_crash_pm: on(set.server_crashes, rng.range(0, 4)),
            manager_crash_pm: on(set.manager_crashes, rng.range(0, 2)),
            // Drawn only when on, so that the other scenarios' seeds replay as before.
            hang_pm: if set.hangs { rng.range(1, 4) } else { 0 },
            long_down_pm: rng.range(0, 200),
            change_pm: rng.range(10, 60),
            delay_ms_max: if set.long_delays {
                LONG_DELAY_MS_MAX
            } else {
                SHORT_DELAY_MS_MAX
            },
        }
    }

    const NONE: Self = Self {
        drop_pm: 0,
        dup_pm: 0,
        delay_pm: 0,
        server_crash_pm: 0,
        manager_crash_pm: 0,
        hang_pm: 0,
        long_down_pm: 0,
        change_pm: 0,
        delay_ms_max: SHORT_DELAY_MS_MAX,
    };
}

/// A deliberate deviation of the model, to prove the checks catch one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    None,
    /// Accept a stamp one generation older than the server's.
    AcceptStaleByOne,
    /// The final copy does not adopt the generation of the new owner's 80h answer: it keeps
    /// its own stamp, and refreshes and waits as the copier does (`copy_range` before the
    /// late-old-owner fix, and as committed in 6886384, whose 80h branch never assigns the
    /// answer's generation to `stamp`).
    FinalCopyKeepsOwnStamp,
    /// A restarted server ignores its persisted map and boots directly at the map it fetches
    /// (`cluster::start` before the restart-in-1a fix: no gate, no final copy).
    BootAtFetchedMap,
    /// A copy is admitted on its stamp alone, without `node::Ownership::admit` (the target
    /// before the fencing fix).
    NoSourceRule,
    /// A hung process that resumes serves at once at its old map (no freeze fence).
    NoFreezeFence,
    /// Marking a switch's new owner down cancels nothing (`plan::apply` instead of
    /// `plan::apply_cancelling`: the manager before the fix).
    NoCancel,
    /// A final pass runs to its end once started, whatever the install's budget (every range,
    /// each with all its tries): the shell before the gate's bound.
    UnboundedFinalPass,
    /// The manager switches a move on any move-ready, whether or not its destination has acked
    /// the newest map through phase 1a that has the move (`Coordinator::move_ready_check`):
    /// the manager before the fix.
    SwitchBeforeDestAck,
}

#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Events processed with faults on.
    pub steps: u64,
    /// Clients: external layout-aware ones, then hosts going through any server.
    pub external_clients: usize,
    pub hosts: usize,
    pub mutation: Mutation,
    /// After the faulty steps: no more faults, everything restarted; the cluster must
    /// converge (every durable map committed and installed) within [`HEAL_MS`].
    pub check_liveness: bool,
    /// Which faults this scenario injects.
    pub faults: FaultSet,
    /// Check invariant 3 in state form too (off: only reads can catch a violation).
    pub state_check: bool,
}

/// Fault classes a scenario turns on (each seed then draws their rates).
#[derive(Debug, Clone, Copy)]
pub struct FaultSet {
    /// Delays (hence reordering) and duplicates.
    pub reorder: bool,
    /// Some delays last seconds (long enough for a server to miss a phase-1b deadline);
    /// otherwise at most [`SHORT_DELAY_MS_MAX`].
    pub long_delays: bool,
    /// Lost messages and broken watch streams.
    pub drops: bool,
    pub manager_crashes: bool,
    pub server_crashes: bool,
    /// Server crashes spare a server that is, or may become while it is down, the old owner
    /// in a map whose phase 1a may not be done (it owns an extent moving in the newest
    /// durable map, or loses one in a durable map newer than the commit record): the
    /// restart-in-1a bug (fixed) could not happen.
    pub spare_old_owners: bool,
    /// Hung (not crashed) servers, marked down by the operator while hung, then resumed or
    /// restarted from their durable pool, then marked up (docs/cluster-protocol.md,
    /// "Fencing"). Writes a hung old owner acknowledged after its last copy pass are lost
    /// when it is marked down (the operator's choice; replica count 1): the checks forget
    /// them, and hold every write acknowledged after that.
    pub hangs: bool,
}

impl FaultSet {
    pub const ALL: Self = Self {
        reorder: true,
        long_delays: true,
        drops: true,
        manager_crashes: true,
        server_crashes: true,
        spare_old_owners: false,
        hangs: false,
    };
}

/// How long a healed cluster may take to converge (sim time): phase-1b timeouts are 5 s.
pub const HEAL_MS: u64 = 60_000;

#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub events: u64,
    pub sim_ms: u64,
    pub ops_ok: u64,
    pub ops_failed: u64,
    pub reads_checked: u64,
    pub executed: u64,
    pub refused: u64,
    pub commits: u64,
    pub switches: u64,
    pub server_crashes: u64,
    pub manager_crashes: u64,
    /// Final copies that adopted the new owner's generation (late-old-owner fix).
    pub stamps_adopted: u64,
    /// Installs postponed by a failed final copy.
    pub installs_postponed: u64,
    /// Periodic re-acks sent (forgotten-acks fix).
    pub reacks: u64,
    /// Restarts that booted from the persisted map (restart-in-1a fix).
    pub boots_from_persisted: u64,
    /// Of those, restarts whose first install (of the newer fetched map) took extents away
    /// from the server: the final copy of the whole extent (the restart-in-1a case).
    pub restart_final_copies: u64,
    /// Internal commands refused by the fencing rule (`node::Ownership::admit`).
    pub fenced: u64,
    /// Servers hung, marked down, and frozen servers that fenced themselves on resuming.
    pub hangs: u64,
    pub marked_down: u64,
    pub freezes_detected: u64,
    /// Forged move-ready requests the manager accepted.
    pub forged: u64,
    /// Final copies refused under the source rule (the move was switched without the sender).
    pub copies_refused: u64,
    /// The longest any install gate stayed closed (ms, hangs excluded), and the longest it
    /// stayed closed after the commands inside had left; maxima, not sums. (This model's
    /// router has no forwarding deadline, so its drains can outlast the daemon's 5 s.)
    pub gate_closed_max_ms: u64,
    pub gate_after_drain_max_ms: u64,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, o: Self) {
        self.events += o.events;
        self.sim_ms += o.sim_ms;
        self.ops_ok += o.ops_ok;
        self.ops_failed += o.ops_failed;
        self.reads_checked += o.reads_checked;
        self.executed += o.executed;
        self.refused += o.refused;
        self.commits += o.commits;
        self.switches += o.switches;
        self.server_crashes += o.server_crashes;
        self.manager_crashes += o.manager_crashes;
        self.stamps_adopted += o.stamps_adopted;
        self.installs_postponed += o.installs_postponed;
        self.reacks += o.reacks;
        self.boots_from_persisted += o.boots_from_persisted;
        self.restart_final_copies += o.restart_final_copies;
        self.fenced += o.fenced;
        self.hangs += o.hangs;
        self.marked_down += o.marked_down;
        self.freezes_detected += o.freezes_detected;
        self.forged += o.forged;
        self.copies_refused += o.copies_refused;
        self.gate_closed_max_ms = self.gate_closed_max_ms.max(o.gate_closed_max_ms);
        self.gate_after_drain_max_ms = self.gate_after_drain_max_ms.max(o.gate_after_drain_max_ms);
    }
}

/// A broken invariant: everything needed to replay and read it.
#[derive(Debug)]
pub struct Failure {
    pub seed: u64,
    pub step: u64,
    pub now: u64,
    pub what: String,
    pub trace: Vec<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {} failed at step {} (t={} ms): {}",
            self.seed, self.step, self.now, self.what
        )?;
        writeln!(f, "last {} events:", self.trace.len())?;
        for t in &self.trace {
            writeln!(f, "  {t}")?;
        }
        write!(
            f,
            "replay: TESSERA_SIM_SEED={} [TESSERA_SIM_VERBOSE=1] cargo test --release -p \
             tessera-target --test sim <this test> -- --include-ignored --nocapture",
            self.seed
        )
    }
}

pub struct World {
    pub seed: u64,
    pub rng: Rng,
    pub now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    next_id: u64,
    pub cfg: Config,
    pub faults: Faults,
    pub healing: bool,
    pub mgr: Manager,
    pub srv: Vec<Server>,
    pub cli: Vec<Client>,
    /// Per subscriber: when its stream's last line arrives (streams are in order).
    stream_tail: BTreeMap<Node, u64>,
    pub ios: BTreeMap<u64, IoRec>,
    // Invariant bookkeeping.
    pub vol_names: Vec<String>,
    /// Per volume: blocks that exist in some committed map (sizes only grow).
    pub known_blocks: Vec<u64>,
    /// Newest acknowledged write of each block (a version; 0: none).
    pub last_acked: BTreeMap<BlockKey, u64>,
    /// Blocks whose acknowledged writes up to this version the operator gave up by marking
    /// their hung owner down (see [`FaultSet::hangs`]).
    pub forgiven: BTreeMap<BlockKey, u64>,
    /// Blocks with a write in flight (one at a time per block, so versions order writes).
    pub writing: BTreeSet<BlockKey>,
    /// Version -> the block it was written to (index 0 unused: "never written").
    pub versions: Vec<BlockKey>,
    pub state_check: bool,
    /// Occurrences of the known bug restart-in-1a: (volume, extent, what happened).
    pub restarts_in_1a: Vec<(String, usize, String)>,
    failure: Option<String>,
    trace: VecDeque<String>,
    pub step: u64,
    pub stats: Stats,
    /// `TESSERA_SIM_VERBOSE=1`: print every event (for replaying one seed).
    verbose: bool,
}

impl World {
    pub fn new(seed: u64, cfg: Config) -> Self {
        let mut rng = Rng::new(seed);
        let faults = Faults::draw(&mut rng, cfg.faults);
        let initial = initial_map();
        let mut w = Self {
            seed,
            rng,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            next_id: 1,
            cfg,
            faults,
            healing: false,
            mgr: Manager::new(Arc::new(initial.clone())),
            srv: (0..SERVERS_MAX).map(Server::new).collect(),
            cli: (0..cfg.external_clients + cfg.hosts)
                .map(|k| {
                    let kind = if k < cfg.external_clients {
                        ClientKind::External
                    } else {
                        ClientKind::Host
                    };
                    Client::new(kind)
                })
                .collect(),
            stream_tail: BTreeMap::new(),
            ios: BTreeMap::new(),
            vol_names: Vec::new(),
            known_blocks: Vec::new(),
            last_acked: BTreeMap::new(),
            forgiven: BTreeMap::new(),
            writing: BTreeSet::new(),
            versions: vec![(usize::MAX, u64::MAX)],
            state_check: false,
            restarts_in_1a: Vec::new(),
            failure: None,
            trace: VecDeque::new(),
            step: 0,
            stats: Stats::default(),
            verbose: std::env::var_os("TESSERA_SIM_VERBOSE").is_some(),
        };
        w.learn_blocks(&initial);
        for i in 0..SERVERS_INITIAL {
            w.srv_start(i);
        }
        for k in 0..w.cli.len() {
            w.cli_start(k);
        }
        w.at(0, Ev::Drive);
        w
    }

    /// Runs the seed: `cfg.steps` events with faults, then (optionally) the healing phase.
    pub fn run(mut self) -> Result<Stats, Failure> {
        while self.step < self.cfg.steps {
            if !self.step_once() {
                break;
            }
            if let Some(what) = self.failure.take() {
                return Err(self.failed(what));
            }
        }
        if self.cfg.check_liveness {
            self.heal();
            let deadline = self.now + HEAL_MS;
            while self.now < deadline && self.step_once() {
                if let Some(what) = self.failure.take() {
                    return Err(self.failed(what));
                }
            }
        }
        // A gate still closed counts too (a running server's: a hung one's clock stopped).
        for i in 0..SERVERS_MAX {
            let s = &self.srv[i];
            if s.up && s.gate_closed && s.hung_since.is_none() {
                self.gate_closed_check(i);
            }
        }
        if let Some(what) = self.failure.take() {
            return Err(self.failed(what));
        }
        if self.cfg.check_liveness
            && let Some(what) = self.converged()
        {
            return Err(self.failed(format!("liveness: {what}")));
        }
        self.stats.events = self.step;
        self.stats.sim_ms = self.now;
        Ok(self.stats)
    }

    fn failed(&mut self, what: String) -> Failure {
        Failure {
            seed: self.seed,
            step: self.step,
            now: self.now,
            what,
            trace: self.trace.iter().cloned().collect(),
        }
    }

    fn step_once(&mut self) -> bool {
        let Some(((t, _), ev)) = self.queue.pop_first() else {
            return false;
        };
        self.now = t;
        self.step += 1;
        self.handle(ev);
        if self.state_check {
            self.state_check = false;
            if self.cfg.state_check {
                self.check_state();
            }
        }
        true
    }

    fn handle(&mut self, ev: Ev) {
        // A hung server handles nothing until it resumes: its events wait (its peers' TCP
        // connections stay open; their own timeouts still run).
        let hung = match &ev {
            Ev::Msg {
                to: Node::Srv(i), ..
            }
            | Ev::Timer {
                node: Node::Srv(i), ..
            } => Some(*i),
            _ => None,
        };
        if let Some(i) = hung {
            let s = &self.srv[i];
            // The operator keeps a server it marked down off until the map marking it down
            // is committed (docs/cluster.md).
            let down_pending =
                s.hung_since.is_some() && s.down_gen.is_none_or(|g| self.mgr.committed_gen < g);
            if s.up && (s.hung_until > self.now || down_pending) {
                let t = s.hung_until.max(self.now + HANG_EXTEND_MS);
                if s.hung_until <= self.now {
                    self.srv[i].hung_until = t;
                }
                self.step -= 1;
                self.at(t, ev);
                return;
            }
            if s.up && s.hung_since.is_some() {
                self.srv_resumed(i);
            }
        }
        match ev {
            Ev::Msg { from, to, msg } => {
                if !self.is_up(to) {
                    return;
                }
                self.note(format!("{from:?}->{to:?} {msg}"));
                match to {
                    Node::Mgr => self.mgr_on_msg(from, msg),
                    Node::Srv(i) => self.srv_on_msg(i, from, msg),
                    Node::Cli(k) => self.cli_on_msg(k, msg),
                }
            }
            Ev::Timer { node, inc, t } => {
                if inc != self.inc(node) || !self.is_up(node) {
                    return;
                }
                match node {
                    Node::Mgr => self.mgr_on_timer(t),
                    Node::Srv(i) => self.srv_on_timer(i, t),
                    Node::Cli(k) => self.cli_on_timer(k, t),
                }
            }
            Ev::Restart(node) => {
                self.note(format!("restart {node:?}"));
                match node {
                    Node::Mgr => self.mgr_restart(),
                    Node::Srv(i) => self.srv_start(i),
                    Node::Cli(_) => {}
                }
            }
            Ev::Drive => {
                // The driver's own ticks are not steps: steps are the system's events.
                self.step -= 1;
                self.drive();
                let next = self.now + self.rng.range(DRIVE_MS_MIN, DRIVE_MS_MAX);
                self.at(next, Ev::Drive);
            }
            Ev::Operator(a) => self.operator_action(a),
        }
    }

    pub fn note(&mut self, s: String) {
        if self.verbose {
            eprintln!("[{} t={}] {s}", self.step, self.now);
        }
        if self.trace.len() == TRACE_LEN {
            self.trace.pop_front();
        }
        self.trace
            .push_back(format!("[{} t={}] {s}", self.step, self.now));
    }

    /// Records a broken invariant; the run stops after this step.
    pub fn fail(&mut self, what: String) {
        if self.failure.is_none() {
            self.failure = Some(what);
        }
    }

    pub fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((t, self.seq), ev);
    }

    pub fn timer(&mut self, node: Node, after_ms: u64, t: Timer) {
        let inc = self.inc(node);
        self.at(self.now + after_ms, Ev::Timer { node, inc, t });
    }

    pub fn inc(&self, node: Node) -> u64 {
        match node {
            Node::Mgr => self.mgr.inc,
            Node::Srv(i) => self.srv[i].inc,
            Node::Cli(_) => 0,
        }
    }

    pub fn is_up(&self, node: Node) -> bool {
        match node {
            Node::Mgr => self.mgr.up,
            Node::Srv(i) => self.srv[i].up,
            Node::Cli(_) => true,
        }
    }

    fn faults_now(&self) -> Faults {
        if self.healing {
            Faults::NONE
        } else {
            self.faults
        }
    }

    /// Sends `msg`, subject to the network's faults for its class.
    pub fn send(&mut self, from: Node, to: Node, msg: Msg) {
        if !self.is_up(from) {
            return;
        }
        let f = self.faults_now();
        let class = msg.class();
        if !self.is_up(to) {
            // Connection refused: an internal command's sender learns at once.
            if let Msg::Io { id, .. } = msg {
                self.timer(from, 1, Timer::IoTimeout(id));
            }
            return;
        }
        let mut lat = self.rng.range(1, 4);
        if self.rng.chance(f.delay_pm) {
            lat += self.rng.range(20, f.delay_ms_max);
        }
        let droppable = matches!(class, Class::Control | Class::IoRequest | Class::IoReply);
        if class == Class::Stream && self.rng.chance(f.drop_pm / 4) {
            // A lost line: the stream is broken; the subscriber notices when it goes idle.
            self.note(format!("lost {from:?}->{to:?} {msg} (stream broken)"));
            self.mgr_drop_sub(to);
            let stream = match msg {
                Msg::StreamMap { stream, .. } | Msg::StreamOpened { stream } => stream,
                _ => 0,
            };
            let after = self.rng.range(1_000, 15_000);
            self.timer(to, after, Timer::StreamBroken(stream));
            return;
        }
        if droppable && self.rng.chance(f.drop_pm) {
            self.note(format!("lost {from:?}->{to:?} {msg}"));
            return;
        }
        let mut t = self.now + lat;
        if class == Class::Stream {
            let tail = self.stream_tail.entry(to).or_insert(0);
            t = t.max(*tail);
            *tail = t;
        }
        let dup = matches!(class, Class::Control | Class::IoReply | Class::Stream)
            && self.rng.chance(f.dup_pm);
        if dup {
            let later = if class == Class::Stream {
                t
            } else {
                t + self.rng.range(0, 300)
            };
            self.at(
                later,
                Ev::Msg {
                    from,
                    to,
                    msg: msg.clone(),
                },
            );
        }
        self.at(t, Ev::Msg { from, to, msg });
    }

    /// Sends an internal command and arms its timeout.
    pub fn send_io(
        &mut self,
        from: Node,
        to: Node,
        stamp: Gen,
        (blk, nblk): (u64, u64),
        data: Option<Vec<u64>>,
        copy: bool,
    ) -> u64 {
        let id = self.id();
        self.ios.insert(id, IoRec { from, to });
        self.send(
            from,
            to,
            Msg::Io {
                id,
                stamp,
                blk,
                nblk,
                data,
                copy,
            },
        );
        self.timer(from, IO_TIMEOUT_MS, Timer::IoTimeout(id));
        id
    }

    /// The sender gave up on command `id` (timeout, refused): its connection is torn down, so
    /// a copy still in the network or waiting at the server is gone with it.
    pub fn cancel_io(&mut self, id: u64) {
        let Some(rec) = self.ios.remove(&id) else {
            return;
        };
        self.queue.retain(|_, e| match e {
            Ev::Msg { msg, .. } => msg.io_id() != Some(id),
            _ => true,
        });
        if let Node::Srv(i) = rec.to {
            self.srv[i].drop_cmd(id);
        }
    }

    /// Removes what a crashed process had in flight (its connections reset).
    pub fn purge_node(&mut self, node: Node) {
        self.queue.retain(|_, e| match e {
            Ev::Msg { from, to, .. } => *from != node && *to != node,
            _ => true,
        });
        let mut gone = Vec::new();
        let mut refused = Vec::new();
        for (id, r) in &self.ios {
            if r.from == node {
                gone.push(*id);
            } else if r.to == node {
                refused.push((*id, r.from));
            }
        }
        for id in gone {
            self.ios.remove(&id);
            for s in &mut self.srv {
                s.drop_cmd(id);
            }
        }
        for (id, from) in refused {
            self.timer(from, 1, Timer::IoTimeout(id));
        }
        self.stream_tail.remove(&node);
    }

    pub fn learn_blocks(&mut self, map: &ClusterMap) {
        for v in &map.volumes {
            let vi = self.vol_index(&v.name);
            let blocks = v.size_bytes / BLOCK;
            if self.known_blocks[vi] < blocks {
                self.known_blocks[vi] = blocks;
            }
        }
    }

    pub fn vol_index(&mut self, name: &str) -> usize {
        if let Some(i) = self.vol_names.iter().position(|n| n == name) {
            return i;
        }
        self.vol_names.push(name.to_owned());
        self.known_blocks.push(0);
        self.vol_names.len() - 1
    }

    pub fn server_index(id: &str) -> Option<usize> {
        id.strip_prefix('s')
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| n.checked_sub(1))
            .filter(|i| *i < SERVERS_MAX)
    }

    // ---- the workload and the faults --------------------------------------------------

    fn drive(&mut self) {
        let f = self.faults_now();
        if self.mgr.up && self.rng.chance(f.change_pm) {
            self.operator_change();
        }
        if self.rng.chance(f.server_crash_pm) {
            let spare = self.cfg.faults.spare_old_owners;
            let started: Vec<usize> = (0..SERVERS_MAX)
                .filter(|i| self.srv[*i].started && self.srv[*i].up)
                .filter(|i| !spare || !self.may_be_old_owner_in_1a(*i))
                .filter(|i| self.srv[*i].hung_since.is_none())
                .collect();
            if !started.is_empty() {
                let i = started[self.rng.index(started.len())];
                let down = self.downtime(f);
                self.srv_crash(i);
                self.at(self.now + down, Ev::Restart(Node::Srv(i)));
            }
        }
        if self.mgr.up && self.rng.chance(f.manager_crash_pm) {
            let down = self.downtime(f);
            self.mgr_crash();
            self.at(self.now + down, Ev::Restart(Node::Mgr));
        }
        if f.hang_pm > 0 {
            // Mostly the scenario: the old owner hangs in phase 1a of a switch.
            let waiter = self.phase_1a_waiter();
            let pm = if waiter.is_some() {
                HANG_IN_1A_PM
            } else {
                f.hang_pm
            };
            if self.rng.chance(pm) {
                self.hang_one(waiter);
            }
            if self.mgr.up && self.rng.chance(FORGED_PM) {
                self.forge_move_ready();
            }
        }
    }

    /// A server hangs (preferably an old owner mid-move: issue scenario "SIGSTOP the old
    /// owner"); the operator marks it down while it is hung; it then resumes or is restarted
    /// from its durable pool; later it is marked up again.
    fn hang_one(&mut self, waiter: Option<usize>) {
        if self.srv.iter().any(|s| s.hung_since.is_some()) {
            return;
        }
        let live: Vec<usize> = (0..SERVERS_MAX)
            .filter(|i| self.srv[*i].started && self.srv[*i].up && self.srv[*i].booted)
            .collect();
        let old_owners: Vec<usize> = live
            .iter()
            .copied()
            .filter(|i| self.may_be_old_owner_in_1a(*i))
            .collect();
        let pool = match waiter {
            Some(w) if live.contains(&w) => vec![w],
            _ if old_owners.is_empty() => live,
            _ => old_owners,
        };
        if pool.is_empty() {
            return;
        }
        let i = pool[self.rng.index(pool.len())];
        let hang = self.rng.range(HANG_MS_MIN, HANG_MS_MAX);
        let mark = self.rng.range(MARK_DOWN_AFTER_MS, hang - 500);
        self.note(format!("HANG {} for {hang} ms", self.srv[i].id));
        self.stats.hangs += 1;
        self.srv[i].hung_since = Some(self.now);
        self.srv[i].hung_until = self.now + hang;
        self.srv[i].down_gen = None;
        self.srv[i].restart_on_resume = self.rng.chance(500);
        // A mark-up still due from an earlier hang is not done while this one lasts (the
        // operator marks a server up once it is repaired; this resume schedules its own).
        self.queue
            .retain(|_, e| !matches!(e, Ev::Operator(OperatorAction::MarkUp(k)) if *k == i));
        // The manager drops the watch stream of a reader that stopped reading; the server
        // sees it closed when it resumes (and reconnects after RECONNECT_MS).
        self.mgr_drop_sub(Node::Srv(i));
        self.queue.retain(|_, e| {
            !matches!(e, Ev::Msg { to, msg: Msg::StreamMap { .. } | Msg::StreamOpened { .. }, .. }
                if *to == Node::Srv(i))
        });
        let stream = self.srv[i].watch.stream;
        self.timer(Node::Srv(i), 0, Timer::StreamBroken(stream));
        self.at(self.now + mark, Ev::Operator(OperatorAction::MarkDown(i)));
    }

    pub fn operator_action(&mut self, a: OperatorAction) {
        match a {
            OperatorAction::MarkDown(i) | OperatorAction::MarkUp(i) => {
                let down = matches!(a, OperatorAction::MarkDown(_));
                let id = self.srv[i].id.clone();
                if down {
                    self.forgive_extents_of(&id);
                }
                let state = if down {
                    manager::map::ServerState::Down
                } else {
                    manager::map::ServerState::Up
                };
                let result = self.mgr_change(Change::SetServerState {
                    id: id.clone(),
                    state,
                });
                let head = self.mgr.head().generation;
                self.note(format!(
                    "operator marks {id} {state:?} -> {result:?} (g{head})"
                ));
                match result {
                    Ok(()) if down => {
                        self.stats.marked_down += 1;
                        self.srv[i].down_gen = Some(head);
                    }
                    Ok(()) => {}
                    // The manager is down or busy: the operator tries again.
                    Err(_) => self.at(self.now + 1_000, Ev::Operator(a)),
                }
            }
            OperatorAction::Restart(i) => {
                if self.srv[i].up {
                    self.srv_crash(i);
                    let after = self.rng.range(10, 500);
                    self.at(self.now + after, Ev::Restart(Node::Srv(i)));
                }
                let up = self.rng.range(1_000, 10_000);
                self.at(self.now + up, Ev::Operator(OperatorAction::MarkUp(i)));
            }
        }
    }

    /// Marking `id` down gives up the writes it acknowledged that no other server has: every
    /// block of an extent it owns in a map not yet committed everywhere (or the head).
    fn forgive_extents_of(&mut self, id: &str) {
        let maps: Vec<Arc<ClusterMap>> = self
            .mgr
            .durable
            .iter()
            .filter(|m| m.generation >= self.mgr.committed_gen)
            .cloned()
            .collect();
        let mut blocks = Vec::new();
        for m in &maps {
            for v in &m.volumes {
                let Some(vi) = self.vol_names.iter().position(|n| *n == v.name) else {
                    continue;
                };
                for (e, ext) in v.extents.iter().enumerate() {
                    if ext.replicas.first().is_none_or(|o| o.server != id) {
                        continue;
                    }
                    let Some((start, len)) = v.extent_range(e) else {
                        continue;
                    };
                    for b in 0..len / BLOCK {
                        blocks.push((vi, start / BLOCK + b));
                    }
                }
            }
        }
        for key in blocks {
            if let Some(v) = self.last_acked.remove(&key) {
                let f = self.forgiven.entry(key).or_insert(0);
                *f = (*f).max(v);
            }
        }
    }

    /// Whether a read that began with `floor` as the newest acknowledged version of `key` may
    /// return anything: that version was given up (marked down).
    pub fn forgiven_floor(&self, key: BlockKey, floor: u64) -> bool {
        self.forgiven.get(&key).is_some_and(|f| floor <= *f)
    }

    /// A local process forges `POST /v1/move-ready` for a move whose copy may not have
    /// converged (the control API has no authentication yet): the switch still waits for the
    /// old owner's phase-1a ack, and its final copy carries whatever the copier had not
    /// copied, so no acknowledged write may be lost.
    fn forge_move_ready(&mut self) {
        let head = self.mgr.head();
        let moving: Vec<(String, usize, String)> = head
            .volumes
            .iter()
            .flat_map(|v| {
                v.extents.iter().enumerate().filter_map(|(e, x)| {
                    let owner = x.replicas.first()?;
                    x.moving.as_ref()?;
                    Some((v.name.clone(), e, owner.server.clone()))
                })
            })
            .collect();
        let Some((volume, extent, server)) = pick(&mut self.rng, &moving).cloned() else {
            return;
        };
        let req = MoveReadyRequest {
            server,
            volume,
            extent,
            generation: head.generation,
        };
        let result = self.mgr_change(Change::SwitchMove(req.clone()));
        self.stats.forged += u64::from(result.is_ok());
        self.note(format!(
            "FORGED move-ready {}[{}] as {} -> {result:?}",
            req.volume, req.extent, req.server
        ));
    }

    /// A server the manager waits for in phase 1a (an old owner that has not acked a switch).
    fn phase_1a_waiter(&self) -> Option<usize> {
        let (_, phase, waiting, _) = self.mgr.coord.as_ref()?.publishing()?;
        if phase != Phase::OldOwners {
            return None;
        }
        waiting.iter().find_map(|id| Self::server_index(id))
    }

    /// See [`FaultSet::spare_old_owners`].
    fn may_be_old_owner_in_1a(&self, i: usize) -> bool {
        let id = &self.srv[i].id;
        let head = self.mgr.head();
        let moving = head.volumes.iter().any(|v| {
            v.extents
                .iter()
                .any(|e| e.moving.is_some() && e.replicas.first().is_some_and(|o| o.server == *id))
        });
        moving
            || self.mgr.durable.windows(2).any(|w| {
                w[1].generation > self.mgr.committed_gen
                    && ClusterMap::changed_owners(&w[0], &w[1])
                        .iter()
                        .any(|l| l.old_owner == *id)
            })
    }

    fn downtime(&mut self, f: Faults) -> u64 {
        if self.rng.chance(f.long_down_pm) {
            self.rng.range(10_000, 60_000)
        } else {
            self.rng.range(10, 3_000)
        }
    }

    /// An operator's change through the real planner (the manager's HTTP handlers).
    fn operator_change(&mut self) {
        let head = self.mgr.head();
        let roll = self.rng.below(100);
        let change = if roll < 65 {
            let Some(vol) = pick(&mut self.rng, &head.volumes) else {
                return;
            };
            let extent = self.rng.index(vol.extents.len());
            let Some(to) = pick(&mut self.rng, &head.servers) else {
                return;
            };
            Change::StartMove(MoveRequest {
                volume: vol.name.clone(),
                extent,
                to: to.id.clone(),
                from: None,
            })
        } else if roll < 85 {
            let Some(vol) = pick(&mut self.rng, &head.volumes) else {
                return;
            };
            if vol.extents.len() as u64 >= EXTENTS_MAX {
                return;
            }
            Change::ResizeVolume {
                name: vol.name.clone(),
                size: vol.size_bytes + EXTENT,
            }
        } else if roll < 93 {
            let n = head.servers.len();
            if n >= SERVERS_MAX {
                return;
            }
            Change::AddServer(add_server_request(n))
        } else {
            if head.volumes.len() >= 2 {
                return;
            }
            Change::CreateVolume(create_volume_request("vol2"))
        };
        let added = match &change {
            Change::AddServer(r) => Self::server_index(&r.id),
            _ => None,
        };
        let result = self.mgr_change(change.clone());
        self.note(format!("operator {} -> {result:?}", change_name(&change)));
        if let (Ok(()), Some(i)) = (result, added)
            && !self.srv[i].started
        {
            self.srv_start(i);
        }
    }

    // ---- healing and liveness ---------------------------------------------------------

    fn heal(&mut self) {
        self.healing = true;
        self.note("heal: faults off, everything restarted".to_owned());
        self.queue.retain(|_, e| !matches!(e, Ev::Restart(_)));
        if !self.mgr.up {
            self.at(self.now + 1, Ev::Restart(Node::Mgr));
        }
        for i in 0..SERVERS_MAX {
            if self.srv[i].started && !self.srv[i].up {
                self.at(self.now + 1, Ev::Restart(Node::Srv(i)));
            }
        }
    }

    /// `None` when the healed cluster has converged, else what is stuck.
    fn converged(&self) -> Option<String> {
        let head = self.mgr.head();
        let coord = self.mgr.coord.as_ref()?;
        for s in &self.srv {
            if let Some(g) = s.watcher.postponed() {
                // Retried every POSTPONED_RETRY_MS (`node::watch`): either every retry was
                // postponed again, or the retries stopped (the bug the label names).
                let now = match &s.install {
                    Some(ins) => format!(
                        "a retry of g{} is in progress ({})",
                        ins.m.map().generation,
                        match ins.wait {
                            super::server::InWait::Drain => "waiting for the commands inside",
                            super::server::InWait::Final(_) => "final-copying",
                            super::server::InWait::Stopping(_) => "stopping a copier",
                            _ => "acking or pausing",
                        }
                    ),
                    None => "no retry is in progress".to_owned(),
                };
                return Some(format!(
                    "{} s after healing, {} is at generation {} with the install of g{g} still \
                     postponed (a failed final copy; {now}): retried and postponed again, or \
                     NEW BUG postponed-install-never-retried (the phase-1a re-send sends \
                     nothing on a watch stream that already carried g{g})",
                    HEAL_MS / 1000,
                    s.id,
                    s.model_gen
                ));
            }
        }
        if let Some((g, phase, waiting, queued)) = coord.publishing() {
            return Some(format!(
                "{} s after healing, generation {g} is still in phase {phase} waiting for \
                 {waiting:?} ({queued} maps queued behind it; head {})",
                HEAL_MS / 1000,
                head.generation
            ));
        }
        for s in &self.srv {
            if s.started && s.booted && s.model_gen != head.generation {
                return Some(format!(
                    "{} is at generation {} after healing, the head is {}",
                    s.id, s.model_gen, head.generation
                ));
            }
        }
        None
    }

    // ---- invariant 3, in state form ---------------------------------------------------

    /// After every step that installed a map or acknowledged a write: every server serves,
    /// for each extent its own map says it owns, the newest acknowledged write of every block
    /// (or a newer one). A server that would answer a read with older data breaks invariant 3
    /// on that path, whether or not the workload happens to read it.
    fn check_state(&mut self) {
        let mut bad = None;
        'servers: for s in &self.srv {
            // A server that serves nothing (catching up, marked down, fenced after a freeze)
            // or is hung answers no read.
            if !s.up || !s.booted || !s.own.serving() || s.hung_until > self.now {
                continue;
            }
            for v in &s.map.volumes {
                let Some(vi) = self.vol_names.iter().position(|n| *n == v.name) else {
                    continue;
                };
                for (e, ext) in v.extents.iter().enumerate() {
                    let Some(owner) = ext.replicas.first() else {
                        continue;
                    };
                    if owner.server != s.id {
                        continue;
                    }
                    let Some((start, len)) = v.extent_range(e) else {
                        continue;
                    };
                    for b in 0..len / BLOCK {
                        let block = start / BLOCK + b;
                        let Some(&acked) = self.last_acked.get(&(vi, block)) else {
                            continue;
                        };
                        let pool_blk = owner.offset / BLOCK + b;
                        let have = s.pool.get(pool_blk as usize).copied().unwrap_or(0);
                        if !self.serves(have, (vi, block), acked) {
                            bad = Some(format!(
                                "invariant 3: {} (generation {}) owns {}[{e}] in its map and \
                                 would serve block {block} from pool block {pool_blk} = {}, \
                                 but write #{acked} was acknowledged{}",
                                s.id,
                                s.model_gen,
                                v.name,
                                self.describe(have),
                                self.known_bug(&v.name, e),
                            ));
                            break 'servers;
                        }
                    }
                }
            }
        }
        if let Some(b) = bad {
            self.fail(b);
        }
    }

    /// A server restarted and booted directly at map `g` in which it loses extents it owned
    /// in the map it had installed before its crash: their final copy was skipped
    /// (restart-in-1a). Recorded so that a failure on those extents is labelled. Since the fix
    /// a restart boots from its persisted map (the one installed before the crash), so this
    /// fires only under `Mutation::BootAtFetchedMap` (or if the fix breaks).
    pub fn note_boot(&mut self, i: usize, map: &ClusterMap) {
        let g = map.generation;
        let h = self.srv[i].before_crash;
        if h == 0 || h >= g {
            return;
        }
        let Some(prev) = self.mgr.durable.iter().find(|m| m.generation == h).cloned() else {
            return;
        };
        let id = self.srv[i].id.clone();
        for l in ClusterMap::changed_owners(&prev, map) {
            if l.old_owner == id {
                let what = format!(
                    "{id} restarted and booted directly at g{g} (t={} ms), in which it loses \
                     {}[{}]: no final copy",
                    self.now, l.volume, l.extent
                );
                self.note(format!("KNOWN BUG restart-in-1a: {what}"));
                self.restarts_in_1a.push((l.volume, l.extent, what));
            }
        }
    }

    /// " [restart-in-1a: ...]" when the known bug hit this extent earlier in the run.
    pub fn known_bug(&self, volume: &str, extent: usize) -> String {
        self.restarts_in_1a
            .iter()
            .find(|(v, e, _)| v == volume && *e == extent)
            .map(|(_, _, what)| format!(" [after known bug restart-in-1a: {what}]"))
            .unwrap_or_default()
    }

    /// Whether pool value `have` is block `key`'s data at version `acked` or newer.
    pub fn serves(&self, have: u64, key: BlockKey, acked: u64) -> bool {
        have >= acked && self.versions.get(have as usize) == Some(&key)
    }

    pub fn describe(&self, v: u64) -> String {
        match self.versions.get(v as usize) {
            _ if v == 0 => "never written".to_owned(),
            Some((vi, b)) => format!("#{v} (written to {}[{b}])", self.vol_names[*vi]),
            None => format!("#{v} (unknown)"),
        }
    }
}

/// How long a server hangs, and when (after it hung) the operator marks it down: late
/// enough that its peers gave up its commands (the 3 s initiator timeout).
pub const HANG_MS_MIN: u64 = 6_000;
pub const HANG_MS_MAX: u64 = 20_000;
pub const MARK_DOWN_AFTER_MS: u64 = 4_000;
/// A hung server whose down map is not committed yet stays hung this much longer.
pub const HANG_EXTEND_MS: u64 = 1_000;
/// Per mille per driver tick: a server hangs while the manager waits for it in phase 1a.
pub const HANG_IN_1A_PM: u64 = 100;
/// Per mille per driver tick (scenario `hangs`): a forged move-ready.
pub const FORGED_PM: u64 = 2;

/// The workload driver's period (operator changes, crashes).
pub const DRIVE_MS_MIN: u64 = 10;
pub const DRIVE_MS_MAX: u64 = 30;

/// Per internal command: the initiator's timeout (a peer that answers nothing is dropped).
pub const IO_TIMEOUT_MS: u64 = 3_000;
/// Per control-API request.
pub const RPC_TIMEOUT_MS: u64 = 1_000;

/// The longest an install losing `lost` extents may keep its gate closed once the commands
/// inside have left (docs/cluster-protocol.md, "Bounds";
/// `tessera::cluster::mover::gate_closed_max_ms`), with this model's timings: the final-copy
/// budget, past which no final pass or try starts, plus per lost extent one try in flight
/// ([`IO_TIMEOUT_MS`], shorter than the daemon's) or one copier stop, which here waits for its
/// try in flight and then the backoff after it (the daemon's cuts it short), at most
/// `COPY_BACKOFF_MAX_MS`; longer than the pause or move-ready request a stopped copier also
/// waits out here (at most `READY_RETRY_MS`, [`RPC_TIMEOUT_MS`]).
pub const fn gate_closed_max_ms(lost: u64) -> u64 {
    tessera::cluster::node::install::FINAL_BUDGET_MS
        + lost * (IO_TIMEOUT_MS + tessera::cluster::node::policy::COPY_BACKOFF_MAX_MS)
}
// Within the daemon's bound, which the documentation states.
const _: () = assert!(gate_closed_max_ms(1) <= tessera::cluster::mover::gate_closed_max_ms(1));
const _: () = assert!(RPC_TIMEOUT_MS <= IO_TIMEOUT_MS);

fn pick<'a, T>(rng: &mut Rng, v: &'a [T]) -> Option<&'a T> {
    if v.is_empty() {
        None
    } else {
        v.get(rng.index(v.len()))
    }
}

fn change_name(c: &Change) -> String {
    match c {
        Change::CreateVolume(r) => format!("create {}", r.name),
        Change::ResizeVolume { name, size } => format!("resize {name} to {size}"),
        Change::AddServer(r) => format!("add server {}", r.id),
        Change::StartMove(r) => format!("move {}[{}] to {}", r.volume, r.extent, r.to),
        Change::SwitchMove(r) => format!("switch {}[{}]", r.volume, r.extent),
        other => format!("{other:?}"),
    }
}

fn add_server_request(k: usize) -> AddServerRequest {
    let port = u16::try_from(4420 + 2 * k).unwrap_or(4420);
    AddServerRequest {
        id: format!("s{}", k + 1),
        portal: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        internal: std::net::SocketAddr::from(([127, 0, 0, 1], port + 1)),
        pool_bytes: POOL_BLOCKS * BLOCK,
        rack: None,
    }
}

fn create_volume_request(name: &str) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.to_owned(),
        size: EXTENTS_INITIAL * EXTENT,
        block_size: Some(u32::try_from(BLOCK).unwrap_or(512)),
        extent_size: Some(EXTENT),
        replicas: Some(1),
        subsystem: format!("nqn.2026-11.dev.tessera:{name}"),
        nsid: Some(1),
        hosts: Some(HostPolicy::Any),
    }
}

/// The first committed map, built by the real planner: three servers and one volume.
fn initial_map() -> ClusterMap {
    let mut m = ClusterMap::empty();
    for k in 0..SERVERS_INITIAL {
        m = plan::add_server(&m, &add_server_request(k)).expect("initial servers are valid");
    }
    plan::create_volume(&m, &create_volume_request("vol1")).expect("initial volume fits")
}
