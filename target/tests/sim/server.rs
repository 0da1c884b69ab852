//! A storage server: the shell of the REAL node (`tessera::cluster::node`), as
//! target/src/cluster/mod.rs (start, watch, install, heartbeat), controller/io.rs and
//! routed.rs are the daemon's. Every decision is the node's: which map a restart boots from
//! (`node::boot`), the watch loop (`node::watch::Watch`: next map, fetches, re-acks,
//! postponed installs, the fence after a restart or a freeze), a command's admission
//! (`node::admission::step`: gate, stamp check with the REAL `GenerationState`, behind-wait,
//! fencing rule `Ownership::admit`), where host I/O goes (`node::route`), the retries
//! (`node::retry`), the install and the copiers (`node::install`, `node::copier`: install.rs
//! and mover.rs here). This file delivers events and carries out actions on simulated time,
//! network and pool. The simulation keeps its own record of the installed generation too,
//! so a broken check is caught at the execution point.
//!
//! The pool is durable (a crash is a process restart: the pool survives, RAM does not: map,
//! generation, gate, dirty maps, commands in flight). So is the persisted map (the restart-in-1a
//! fix): every install persists its map after the final copies and before the ack, a boot
//! persists the map it boots with, and a restart boots from the persisted map, then installs
//! the manager's newer map through the normal `install` (gate, the final copy of the whole
//! lost extent: a restarted server has no copier state).

use std::collections::BTreeMap;
use std::sync::Arc;

use manager::map::{ClusterMap, Replica};
use tessera::cluster::generation::GenerationState;
use tessera::cluster::node::admission::{self, Stage, Stamp, Step};
use tessera::cluster::node::route::{self, Route};
use tessera::cluster::node::watch::{
    Action as WatchAction, Event as WatchEvent, Timer as WatchTimer,
};
use tessera::cluster::node::{self, Ownership, Refusal, Via};

use super::client::Watch;
use super::mover::{Mover, Pass};
use super::world::{
    BLOCK, BlockKey, Gen, IoRes, Msg, Mutation, Node, POOL_BLOCKS, Rep, Req, Role, Timer, World,
    gate_closed_max_ms,
};

// The daemon's boot policy (`tessera::cluster::node::policy`). (Re-acks, catch-up fetches,
// postponed installs, retries of routed pieces and copies, final copies and acks are the
// node's machines: `node::watch`, `node::retry`, `node::install`.)
pub use tessera::cluster::node::policy::BOOT_RETRY_MS;
/// io.rs `BEHIND_WAIT`.
pub const BEHIND_WAIT_MS: u64 = tessera::controller::io::BEHIND_WAIT.as_millis() as u64;

/// An internal command waiting at this server (closed gate or behind-wait).
#[derive(Debug, Clone)]
pub struct Cmd {
    pub id: u64,
    pub from: Node,
    pub stamp: Gen,
    pub blk: u64,
    pub nblk: u64,
    pub data: Option<Vec<u64>>,
    /// Sent on the copy namespace (a copy of a moving extent), else routed.
    pub copy: bool,
}

/// What a control-API request of this server was for.
#[derive(Debug, Clone)]
pub enum RpcFor {
    Boot,
    BootAck,
    InstallAck,
    MoveReady((String, usize)),
    /// A refresh fetch (`node::watch::Action::Fetch`).
    Refresh,
    /// The watch loop's periodic re-ack (`reack.tick()`).
    ReAck,
}

/// Retry state shared by routed pieces and copies: the REAL retry rule
/// (`tessera::cluster::node::retry::Retry`: tries, stamps, backoff, mismatch answers), and
/// what the shell waits for.
#[derive(Debug, Clone)]
pub struct Retry {
    pub m: node::retry::Retry,
    /// The command in flight and the generation it was stamped with.
    pub io: Option<(u64, Gen)>,
    /// Waiting for this server to reach this generation (`wait_for`).
    pub wait: Option<Gen>,
    pub token: u64,
}

impl Retry {
    fn new(m: node::retry::Retry) -> Self {
        Self {
            m,
            io: None,
            wait: None,
            token: 0,
        }
    }
}

/// How one `copy_range` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copied {
    Yes,
    No,
    /// Refused under the source rule: final.
    NotSource,
}

#[derive(Debug, Clone)]
pub enum CopyOwner {
    Mover((String, usize)),
    Install,
}

#[derive(Debug)]
pub enum Task {
    /// A host command routed by this server (holds a gate pass once started).
    Host {
        host: usize,
        hid: u64,
        key: BlockKey,
        data: Option<u64>,
        started: bool,
        r: Retry,
    },
    /// One `copy_range`: data read once, then written to `dest` with retries.
    Copy {
        owner: CopyOwner,
        dest: String,
        dest_blk: u64,
        data: Vec<u64>,
        /// A final copy (inside an install) adopts the generation the new owner reports
        /// (`Retry::copy(final_pass, ..)`).
        r: Retry,
    },
}

impl Task {
    pub fn retry(&mut self) -> &mut Retry {
        match self {
            Self::Host { r, .. } | Self::Copy { r, .. } => r,
        }
    }
}

/// The final copy of one lost extent in progress (`Action::FinalPass`).
#[derive(Debug)]
pub struct FinalCopy {
    pub key: (String, usize),
    pub dest: Replica,
    pub start: u64,
    pub nblk: u64,
    pub pass: Pass,
}

/// What the install waits for (the event it will be fed).
#[derive(Debug)]
pub enum InWait {
    /// Nothing (running its actions).
    No,
    /// Gate closed, the commands inside to leave (`Drained`).
    Drain,
    /// The copier of this extent to stop (`CopierStopped`).
    Stopping((String, usize)),
    /// The copies of a final pass (`Pass`).
    Final(FinalCopy),
    /// A timer (`Timer`).
    Sleep,
    /// The ack's answer (`AckDone`).
    Ack,
}

/// An install in progress: the REAL `tessera::cluster::node::install::Install` machine, and
/// what its shell here waits for.
#[derive(Debug)]
pub struct Install {
    pub m: node::install::Install,
    pub wait: InWait,
    pub token: u64,
}

pub struct Server {
    pub id: String,
    /// In the cluster (a joining server starts when the operator adds it).
    pub started: bool,
    pub up: bool,
    pub inc: u64,
    /// Has its first map (serves).
    pub booted: bool,
    pub map: Arc<ClusterMap>,
    pub generation: GenerationState,
    /// The model's own record of the installed generation (invariant 1's second witness).
    pub model_gen: Gen,
    /// Durable: one version per pool block (0: never written).
    pub pool: Vec<u64>,
    /// Durable, beside the pool: the map last installed (or booted with).
    pub persisted: Option<Arc<ClusterMap>>,
    /// The next install is the first one after a boot from the persisted map (figures only).
    pub boot_install: bool,
    /// For the known-bug label only: the generation installed when it last crashed.
    pub before_crash: Gen,
    /// The real fencing rule's view of this server's map (`node::Ownership`), rebuilt at
    /// every install; not serving until the catch-up install after a restart.
    pub own: Ownership,
    /// The watch loop: the REAL `node::watch::Watch` (which map next, fetches, re-acks,
    /// postponed installs, the fence after a restart or a freeze), as `cluster::watch` runs it.
    pub watcher: node::watch::Watch,
    /// Hung (SIGSTOP) since then, until `hung_until` (world.rs `hang_one`).
    pub hung_since: Option<u64>,
    pub hung_until: u64,
    /// The generation of the map the operator marked it down in (while hung).
    pub down_gen: Option<Gen>,
    /// The operator restarts it (from its durable pool) instead of letting it resume.
    pub restart_on_resume: bool,
    pub gate_closed: bool,
    /// When the gate closed, and when the commands inside had left (sim time, shifted by
    /// any hang since: a stopped process's gate is not the install's doing).
    pub gate_closed_at: u64,
    pub gate_drained_at: Option<u64>,
    /// The extents the install that closed the gate loses.
    pub gate_lost: u64,
    pub inside: u32,
    pub gate_wait: Vec<Cmd>,
    pub gate_wait_hosts: Vec<u64>,
    pub behind_wait: Vec<Cmd>,
    pub watch: Watch,
    pub install: Option<Install>,
    pub movers: BTreeMap<(String, usize), Mover>,
    pub tasks: BTreeMap<u64, Task>,
    pub rpcs: BTreeMap<u64, RpcFor>,
}

impl Server {
    pub fn new(i: usize) -> Self {
        Self {
            id: format!("s{}", i + 1),
            started: false,
            up: false,
            inc: 0,
            booted: false,
            map: Arc::new(ClusterMap::empty()),
            generation: GenerationState::new(0),
            model_gen: 0,
            pool: vec![0; POOL_BLOCKS as usize],
            persisted: None,
            boot_install: false,
            before_crash: 0,
            own: Ownership::default(),
            watcher: node::watch::Watch::new(None),
            hung_since: None,
            hung_until: 0,
            down_gen: None,
            restart_on_resume: false,
            gate_closed: false,
            gate_closed_at: 0,
            gate_drained_at: None,
            gate_lost: 0,
            inside: 0,
            gate_wait: Vec::new(),
            gate_wait_hosts: Vec::new(),
            behind_wait: Vec::new(),
            watch: Watch::default(),
            install: None,
            movers: BTreeMap::new(),
            tasks: BTreeMap::new(),
            rpcs: BTreeMap::new(),
        }
    }

    /// Forgets a command whose connection was torn down.
    pub fn drop_cmd(&mut self, id: u64) {
        self.gate_wait.retain(|c| c.id != id);
        self.behind_wait.retain(|c| c.id != id);
    }

    fn task_by_io(&self, io: u64) -> Option<u64> {
        self.tasks.iter().find_map(|(t, task)| match task {
            Task::Host { r, .. } | Task::Copy { r, .. } => {
                (r.io.map(|x| x.0) == Some(io)).then_some(*t)
            }
        })
    }
}

impl World {
    pub fn me(i: usize) -> Node {
        Node::Srv(i)
    }

    pub fn rpc(&mut self, node: Node, req: Req) -> u64 {
        let id = self.id();
        self.send(node, Node::Mgr, Msg::Rpc { id, req });
        self.timer(node, super::world::RPC_TIMEOUT_MS, Timer::RpcTimeout(id));
        id
    }

    pub fn srv_rpc(&mut self, i: usize, req: Req, purpose: RpcFor) -> u64 {
        let id = self.rpc(Self::me(i), req);
        self.srv[i].rpcs.insert(id, purpose);
        id
    }

    // ---- start, crash ----------------------------------------------------------------

    /// `cluster::start`: fetch the first map (role=server), serve, start movers, ack, watch.
    pub fn srv_start(&mut self, i: usize) {
        let s = &mut self.srv[i];
        s.started = true;
        if s.up {
            return;
        }
        let pool = std::mem::take(&mut s.pool);
        let inc = s.inc + 1;
        let before_crash = s.before_crash;
        let persisted = s.persisted.take();
        *s = Server::new(i);
        s.started = true;
        s.up = true;
        s.inc = inc;
        s.pool = pool;
        s.persisted = persisted;
        s.before_crash = before_crash;
        self.srv_rpc(i, Req::Fetch(Role::Server(i)), RpcFor::Boot);
    }

    /// `fetched`: the manager's role=server map, which lists this server. With a persisted
    /// map the server boots from it, serving at its generation, and then installs `fetched`
    /// (if newer) through the normal `install`; without one (first boot) it boots at `fetched`.
    /// Either way the map it boots with is persisted.
    fn srv_booted(&mut self, i: usize, fetched: Arc<ClusterMap>) {
        let persisted = if self.cfg.mutation == Mutation::BootAtFetchedMap {
            None
        } else {
            self.srv[i].persisted.clone()
        };
        let from_persisted = persisted.is_some();
        // The real rule: `node::boot` (the daemon's `cluster::start`).
        let b = node::boot(
            persisted.map(|p| (*p).clone()),
            (*fetched).clone(),
            &self.srv[i].id,
        );
        let (map, newer) = (Arc::new(b.map), b.catch_up.map(Arc::new));
        self.note_boot(i, &map);
        let s = &mut self.srv[i];
        let g = map.generation;
        s.booted = true;
        s.persisted = Some(Arc::clone(&map));
        s.map = map;
        s.generation = GenerationState::new(g);
        s.model_gen = g;
        s.boot_install = newer.is_some();
        // Fenced until the catch-up install (of a map fetched after the start) is done.
        s.watcher = node::watch::Watch::new(newer.clone());
        s.own = Ownership::new(&s.map, &s.id, s.watcher.caught_up());
        let how = if from_persisted {
            self.stats.boots_from_persisted += 1;
            " from its persisted map"
        } else {
            ""
        };
        let then = newer
            .as_ref()
            .map(|m| format!(", then installs g{}", m.generation))
            .unwrap_or_default();
        self.note(format!("{} booted at g{g}{how}{then}", self.srv[i].id));
        self.srv[i].watch.after = g;
        // With a newer map to install, the copiers start after that install (`install_apply`
        // syncs them): the install finds no copier state and final-copies whole extents.
        if newer.is_none() {
            self.mover_sync(i);
        }
        self.srv_rpc(
            i,
            Req::Ack {
                server: i,
                generation: g,
            },
            RpcFor::BootAck,
        );
        self.subscribe(Self::me(i));
        self.state_check = true;
        // The re-ack period's first tick, then the catch-up install if any.
        self.srv_feed(i, WatchEvent::Started);
    }

    pub fn srv_crash(&mut self, i: usize) {
        self.note(format!("CRASH {}", self.srv[i].id));
        self.stats.server_crashes += 1;
        self.srv[i].up = false;
        self.srv[i].inc += 1;
        self.purge_node(Self::me(i));
        self.mgr_drop_sub(Self::me(i));
        // Hosts whose command was at (or on its way to) this server see the connection drop.
        for k in 0..self.cli.len() {
            if let Some(op) = &self.cli[k].op
                && op.via == Some(i)
            {
                let id = op.id;
                self.timer(Node::Cli(k), 1, Timer::HostLost(id));
            }
        }
        let s = &mut self.srv[i];
        let pool = std::mem::take(&mut s.pool);
        let inc = s.inc;
        // (A server that crashes again before booting keeps the generation it had.)
        let before_crash = if s.booted {
            s.model_gen
        } else {
            s.before_crash
        };
        let persisted = s.persisted.take();
        *s = Server::new(i);
        s.started = true;
        s.inc = inc;
        s.pool = pool;
        s.persisted = persisted;
        s.before_crash = before_crash;
    }

    /// The first event after a hang: the daemon's heartbeat notices the jump of its clock
    /// (`node::frozen`) and the server fences itself until it has fetched the current map.
    pub fn srv_resumed(&mut self, i: usize) {
        let Some(since) = self.srv[i].hung_since.take() else {
            return;
        };
        // The hang does not count against the gate's bound.
        let hung = self.now.saturating_sub(since);
        let s = &mut self.srv[i];
        if s.gate_closed {
            s.gate_closed_at += hung;
            s.gate_drained_at = s.gate_drained_at.map(|d| d + hung);
        }
        if std::mem::take(&mut self.srv[i].restart_on_resume) {
            // Killed (before it handles anything) and restarted on its durable pool: it boots
            // from its persisted map.
            self.operator_action(super::world::OperatorAction::Restart(i));
            return;
        }
        let up = self.rng.range(1_000, 10_000);
        let now = self.now;
        self.at(
            now + up,
            super::world::Ev::Operator(super::world::OperatorAction::MarkUp(i)),
        );
        let s = &mut self.srv[i];
        // The heartbeat last ticked when the process stopped.
        if !s.booted
            || !node::frozen(since, self.now)
            || self.cfg.mutation == Mutation::NoFreezeFence
        {
            return;
        }
        s.watcher.freeze();
        s.own = Ownership::new(&s.map, &s.id, false);
        self.stats.freezes_detected += 1;
        let what = format!(
            "{} resumed after {} ms frozen: serving nothing until it has the current map",
            self.srv[i].id,
            self.now - since
        );
        self.note(what);
        self.srv_refresh(i);
    }

    /// `Action::SyncMovers` (`cluster::install`): the installed map may lift the fence.
    pub fn srv_thaw(&mut self, i: usize) {
        let s = &mut self.srv[i];
        if s.watcher.try_thaw(s.map.generation) {
            self.srv_thawed(i);
        }
    }

    /// The fence lifted: serve again, start the copiers.
    fn srv_thawed(&mut self, i: usize) {
        let s = &mut self.srv[i];
        s.own = Ownership::new(&s.map, &s.id, true);
        let what = format!(
            "{} has the current map (g{}): serving",
            s.id, s.map.generation
        );
        self.note(what);
        self.mover_sync(i);
    }

    // ---- the watch loop (`cluster::watch`: the real `node::watch::Watch`) ---------------

    /// Feeds the watch loop one event and carries out its actions.
    pub fn srv_feed(&mut self, i: usize, ev: WatchEvent) {
        let s = &mut self.srv[i];
        if !s.up || !s.booted {
            return;
        }
        for a in s.watcher.on(ev) {
            self.srv_watch_act(i, a);
        }
    }

    pub fn srv_watch_act(&mut self, i: usize, a: WatchAction) {
        match a {
            WatchAction::Install(m) => self.install_start(i, m),
            WatchAction::Fetch => {
                self.srv_rpc(i, Req::Fetch(Role::Server(i)), RpcFor::Refresh);
            }
            WatchAction::ReAck => {
                let generation = self.srv[i].generation.current();
                self.stats.reacks += 1;
                self.srv_rpc(
                    i,
                    Req::Ack {
                        server: i,
                        generation,
                    },
                    RpcFor::ReAck,
                );
            }
            WatchAction::After { ms, timer } => {
                let t = match timer {
                    WatchTimer::ReAck => Timer::ReAck,
                    WatchTimer::CatchUp => Timer::CatchUp,
                    WatchTimer::PostponedRetry => Timer::PostponedRetry,
                };
                self.timer(Self::me(i), ms, t);
            }
            WatchAction::Thaw => self.srv_thawed(i),
        }
    }

    /// `refresh.notify_one()`.
    pub fn srv_refresh(&mut self, i: usize) {
        self.srv_feed(i, WatchEvent::Refresh);
    }

    // ---- messages and timers -----------------------------------------------------------

    pub fn srv_on_msg(&mut self, i: usize, from: Node, msg: Msg) {
        match msg {
            Msg::StreamOpened { .. } | Msg::StreamMap { .. } => {
                if let Some(map) = self.on_stream_msg(Self::me(i), msg)
                    && self.srv[i].booted
                {
                    self.srv_feed(i, WatchEvent::Pushed(map));
                }
            }
            Msg::RpcReply { id, rep } => {
                if let Some(p) = self.srv[i].rpcs.remove(&id) {
                    self.srv_rpc_done(i, p, Some(rep));
                }
            }
            Msg::Io {
                id,
                stamp,
                blk,
                nblk,
                data,
                copy,
            } => {
                if !self.srv[i].booted {
                    // Not serving yet: the connection is refused.
                    self.timer(from, 1, Timer::IoTimeout(id));
                    return;
                }
                let cmd = Cmd {
                    id,
                    from,
                    stamp,
                    blk,
                    nblk,
                    data,
                    copy,
                };
                self.srv_on_cmd(i, cmd, Stage::Arrived);
            }
            Msg::IoReply { id, res } => {
                if self.ios.remove(&id).is_none() {
                    return; // a duplicate, or a command given up on
                }
                if let Some(t) = self.srv[i].task_by_io(id) {
                    self.task_result(i, t, Some(res));
                }
            }
            Msg::HostIo { id, key, data } => {
                let Node::Cli(host) = from else {
                    return;
                };
                if !self.srv[i].booted {
                    self.send(Self::me(i), from, Msg::HostReply { id, res: None });
                    return;
                }
                let t = self.id();
                self.srv[i].tasks.insert(
                    t,
                    Task::Host {
                        host,
                        hid: id,
                        key,
                        data,
                        started: false,
                        r: Retry::new(node::retry::Retry::route()),
                    },
                );
                if self.srv[i].gate_closed {
                    self.srv[i].gate_wait_hosts.push(t);
                } else {
                    self.host_begin(i, t);
                }
            }
            _ => {}
        }
    }

    pub fn srv_on_timer(&mut self, i: usize, t: Timer) {
        match t {
            Timer::WatchCheck(_) | Timer::StreamBroken(_) | Timer::Resubscribe(_) => {
                self.on_watch_timer(Self::me(i), &t);
            }
            Timer::RpcTimeout(id) => {
                if let Some(p) = self.srv[i].rpcs.remove(&id) {
                    self.srv_rpc_done(i, p, None);
                }
            }
            Timer::Boot if !self.srv[i].booted => {
                self.srv_rpc(i, Req::Fetch(Role::Server(i)), RpcFor::Boot);
            }
            Timer::IoTimeout(id) => {
                if !self.ios.contains_key(&id) {
                    return;
                }
                self.cancel_io(id);
                if let Some(t) = self.srv[i].task_by_io(id) {
                    self.task_result(i, t, None);
                }
            }
            Timer::TaskWake { task, token } => {
                let Some(tk) = self.srv[i].tasks.get_mut(&task) else {
                    return;
                };
                let r = tk.retry();
                if r.token != token || r.io.is_some() {
                    return;
                }
                r.wait = None;
                self.task_try(i, task);
            }
            Timer::BehindTimeout(id) => {
                let s = &mut self.srv[i];
                if let Some(k) = s.behind_wait.iter().position(|c| c.id == id) {
                    let cmd = s.behind_wait.remove(k);
                    self.srv_on_cmd(i, cmd, Stage::Waited);
                }
            }
            Timer::MoverWake { key, token } => self.mover_wake(i, &key, token),
            Timer::InstallWake(token) => self.install_wake(i, token),
            Timer::CatchUp => self.srv_feed(i, WatchEvent::Timer(WatchTimer::CatchUp)),
            Timer::ReAck => self.srv_feed(i, WatchEvent::Timer(WatchTimer::ReAck)),
            Timer::PostponedRetry => {
                self.srv_feed(i, WatchEvent::Timer(WatchTimer::PostponedRetry));
            }
            _ => {}
        }
    }

    fn srv_rpc_done(&mut self, i: usize, p: RpcFor, rep: Option<Rep>) {
        match p {
            RpcFor::Boot => match rep {
                Some(Rep::Map(m)) if m.server(&self.srv[i].id).is_some() => self.srv_booted(i, m),
                _ => self.timer(Self::me(i), BOOT_RETRY_MS, Timer::Boot),
            },
            RpcFor::BootAck => {}
            RpcFor::InstallAck => self.install_ack_done(i, matches!(rep, Some(Rep::Ok))),
            RpcFor::MoveReady(key) => self.mover_ready_done(i, &key, matches!(rep, Some(Rep::Ok))),
            RpcFor::ReAck => self.srv_feed(i, WatchEvent::ReAcked),
            RpcFor::Refresh => {
                let map = match rep {
                    Some(Rep::Map(m)) => Some(m),
                    _ => None,
                };
                let installed = self.srv[i].map.generation;
                self.srv_feed(i, WatchEvent::Fetched { map, installed });
            }
        }
    }

    // ---- the gate and the stamp check --------------------------------------------------

    pub fn gate_open(&mut self, i: usize) {
        if self.srv[i].gate_closed {
            self.gate_closed_check(i);
        }
        self.srv[i].gate_closed = false;
        let cmds = std::mem::take(&mut self.srv[i].gate_wait);
        for c in cmds {
            self.srv_on_cmd(i, c, Stage::Waited);
        }
        let hosts = std::mem::take(&mut self.srv[i].gate_wait_hosts);
        for t in hosts {
            self.host_begin(i, t);
        }
    }

    /// The gate is about to open (or the run ends with it closed): how long it was closed,
    /// against the bound past the drain ([`gate_closed_max_ms`]).
    pub fn gate_closed_check(&mut self, i: usize) {
        let s = &self.srv[i];
        let closed = self.now.saturating_sub(s.gate_closed_at);
        let drain = s
            .gate_drained_at
            .map_or(closed, |d| d.saturating_sub(s.gate_closed_at));
        self.stats.gate_closed_max_ms = self.stats.gate_closed_max_ms.max(closed);
        let after = closed - drain.min(closed);
        self.stats.gate_after_drain_max_ms = self.stats.gate_after_drain_max_ms.max(after);
        let bound = gate_closed_max_ms(s.gate_lost);
        if after > bound {
            let what = format!(
                "bound: {}'s gate stayed closed {closed} ms, {after} ms after the commands \
                 inside had left, more than {bound} ms (an install losing {} extents)",
                s.id, s.gate_lost
            );
            self.fail(what);
        }
        let s = &mut self.srv[i];
        s.gate_drained_at = None;
    }

    /// Wakes what waits for this server's generation (`installed.notify_waiters()`).
    pub fn wake_waiters(&mut self, i: usize) {
        let cur = self.srv[i].generation.current();
        let (ready, wait): (Vec<Cmd>, Vec<Cmd>) = std::mem::take(&mut self.srv[i].behind_wait)
            .into_iter()
            .partition(|c| c.stamp <= cur);
        self.srv[i].behind_wait = wait;
        for c in ready {
            self.srv_on_cmd(i, c, Stage::Waited);
        }
        let mut wake = Vec::new();
        for (t, task) in &mut self.srv[i].tasks {
            let r = task.retry();
            if r.wait.is_some_and(|g| g <= cur) {
                r.token += 1;
                wake.push((*t, r.token));
            }
        }
        for (task, token) in wake {
            self.timer(Self::me(i), 0, Timer::TaskWake { task, token });
        }
    }

    /// The stamp check: the real `GenerationState::verdict`, plus the test's deliberate bug.
    fn srv_check(&self, i: usize, stamp: Gen) -> Stamp {
        let s = &self.srv[i];
        match s.generation.verdict(stamp, true, true) {
            Stamp::Stale { .. }
                if self.cfg.mutation == Mutation::AcceptStaleByOne
                    && stamp + 1 == s.generation.current() =>
            {
                Stamp::Current
            }
            v => v,
        }
    }

    /// The fencing rule for `cmd`: the real `node::Ownership::admit`. External clients are
    /// layout-aware tools: admitted as routed commands from an up server.
    fn srv_fencing(&self, i: usize, cmd: &Cmd) -> Result<(), Refusal> {
        // The mutation: a copy passes on its stamp alone (the target before the fix).
        if cmd.copy && self.cfg.mutation == Mutation::NoSourceRule {
            return Ok(());
        }
        let s = &self.srv[i];
        let sender = match cmd.from {
            Node::Srv(d) => self.srv[d].id.as_str(),
            _ => s.id.as_str(),
        };
        let via = if cmd.copy { Via::Copy } else { Via::Routed };
        let range = (cmd.blk * BLOCK, cmd.nblk * BLOCK);
        s.own.admit(sender, via, range, cmd.data.is_some())
    }

    /// io.rs `execute` / `checked`: the real `node::admission::step` (the gate, the stamp
    /// check, the behind-wait, the fencing rule), carried out.
    fn srv_on_cmd(&mut self, i: usize, cmd: Cmd, stage: Stage) {
        let step = admission::step(
            stage,
            !self.srv[i].gate_closed,
            true,
            || self.srv_check(i, cmd.stamp),
            || self.srv_fencing(i, &cmd),
        );
        match step {
            Step::Run => self.srv_exec(i, &cmd),
            Step::WaitGate => self.srv[i].gate_wait.push(cmd),
            Step::WaitBehind => {
                let id = cmd.id;
                self.srv[i].behind_wait.push(cmd);
                self.timer(Self::me(i), BEHIND_WAIT_MS, Timer::BehindTimeout(id));
            }
            Step::Answer(v) => {
                let res = match v {
                    Stamp::Stale { current } => IoRes::Stale(current),
                    Stamp::Ahead { current } => IoRes::Behind(current),
                    // (The simulation stamps every command: as the check answered before.)
                    Stamp::Unstamped { current } if current > 0 => IoRes::Stale(current),
                    Stamp::Unstamped { current } => IoRes::Behind(current),
                    Stamp::Current => return self.fail("model: a current stamp answered".into()),
                };
                self.srv_reply(i, &cmd, res);
            }
            Step::Refuse(why) => {
                let res = match why {
                    // `cluster::refusal_completion`: 81h with no generation.
                    Refusal::NotServing | Refusal::Expired => IoRes::Behind(0),
                    _ => IoRes::Denied,
                };
                self.stats.fenced += 1;
                self.srv_reply(i, &cmd, res);
            }
        }
    }

    fn srv_reply(&mut self, i: usize, cmd: &Cmd, res: IoRes) {
        if !matches!(res, IoRes::Done(_)) {
            self.stats.refused += 1;
        }
        self.send(Self::me(i), cmd.from, Msg::IoReply { id: cmd.id, res });
    }

    /// Runs a command that `admission::step` let through.
    fn srv_exec(&mut self, i: usize, cmd: &Cmd) {
        let s = &self.srv[i];
        // Invariant 1, witnessed by the model independently of `GenerationState::check`.
        if cmd.stamp != s.model_gen {
            let what = format!(
                "invariant 1: io#{} stamped g{} from {:?} executed on {} whose installed \
                 generation is g{}",
                cmd.id, cmd.stamp, cmd.from, s.id, s.model_gen
            );
            return self.fail(what);
        }
        if s.gate_closed {
            return self.fail(format!(
                "model: io#{} ran on {} with its gate closed",
                cmd.id, s.id
            ));
        }
        if cmd.blk + cmd.nblk > POOL_BLOCKS {
            return self.fail(format!("model: io#{} outside {}'s pool", cmd.id, s.id));
        }
        self.stats.executed += 1;
        let res = match &cmd.data {
            Some(d) => {
                self.pool_write(i, cmd.blk, d);
                IoRes::Done(Vec::new())
            }
            None => {
                let (a, b) = (cmd.blk as usize, (cmd.blk + cmd.nblk) as usize);
                IoRes::Done(self.srv[i].pool[a..b].to_vec())
            }
        };
        self.srv_reply(i, cmd, res);
    }

    /// A write to the pool; regions being moved record it in their dirty maps.
    pub fn pool_write(&mut self, i: usize, blk: u64, data: &[u64]) {
        let s = &mut self.srv[i];
        for (k, v) in data.iter().enumerate() {
            if let Some(p) = s.pool.get_mut(blk as usize + k) {
                *p = *v;
            }
        }
        for m in s.movers.values_mut() {
            m.mark(blk, data.len() as u64);
        }
    }

    // ---- routed host I/O (routed.rs) and copies (mover.rs copy_range) -----------------

    fn host_begin(&mut self, i: usize, t: u64) {
        let s = &mut self.srv[i];
        let Some(Task::Host { started, key, .. }) = s.tasks.get_mut(&t) else {
            return;
        };
        *started = true;
        let key = *key;
        s.inside += 1;
        // routed.rs: a server that does not serve fails the host's command at once (a
        // retryable path error).
        if !s.own.serving() {
            return self.host_finish(i, t, None);
        }
        // `pieces` (the real `node::route::split`): the volume and range must exist in our map.
        let exists = route::split(&s.map, &self.vol_names[key.0], key.1 * BLOCK, BLOCK).is_ok();
        if exists {
            self.task_try(i, t);
        } else {
            self.host_finish(i, t, None);
        }
    }

    fn host_finish(&mut self, i: usize, t: u64, res: Option<u64>) {
        let Some(Task::Host {
            host, hid, started, ..
        }) = self.srv[i].tasks.remove(&t)
        else {
            return;
        };
        if started {
            self.srv[i].inside -= 1;
        }
        self.send(
            Self::me(i),
            Node::Cli(host),
            Msg::HostReply { id: hid, res },
        );
        self.install_drained(i);
    }

    /// Starts one `copy_range` from pool block `src`; returns its task id. The final copy
    /// (`CopyOwner::Install`) runs with `final_pass`.
    pub fn copy_start(
        &mut self,
        i: usize,
        owner: CopyOwner,
        src: u64,
        n: u64,
        dest: String,
        dest_blk: u64,
    ) -> u64 {
        let data = self.srv[i].pool[src as usize..(src + n) as usize].to_vec();
        let t = self.id();
        let final_pass = matches!(owner, CopyOwner::Install);
        let mut m = node::retry::Retry::copy(final_pass, self.srv[i].generation.current());
        // The mutation takes the final copy for an ordinary one (no adoption).
        if self.cfg.mutation == Mutation::FinalCopyKeepsOwnStamp {
            m = m.without_adoption();
        }
        self.srv[i].tasks.insert(
            t,
            Task::Copy {
                owner,
                dest,
                dest_blk,
                data,
                r: Retry::new(m),
            },
        );
        self.task_try(i, t);
        t
    }

    /// One try of a routed piece or a copy.
    fn task_try(&mut self, i: usize, t: u64) {
        // A copier asked to stop does not try again (mover.rs `copy_range`).
        let stopped = matches!(
            self.srv[i].tasks.get(&t),
            Some(Task::Copy { owner: CopyOwner::Mover(k), .. })
                if self.srv[i].movers.get(k).is_some_and(|m| m.stop)
        );
        // Nor does a final copy once its install's budget is spent (mover.rs `copy_range`).
        let late = matches!(
            self.srv[i].tasks.get(&t),
            Some(Task::Copy {
                owner: CopyOwner::Install,
                ..
            })
        ) && self.install_out_of_time(i);
        if stopped || late {
            return self.copy_finish(i, t, Copied::No);
        }
        let cur = self.srv[i].generation.current();
        let me = self.srv[i].id.clone();
        let map = Arc::clone(&self.srv[i].map);
        let serving = self.srv[i].own.serving();
        let Some(task) = self.srv[i].tasks.get_mut(&t) else {
            return;
        };
        match task {
            Task::Host { key, data, r, .. } => {
                let Some(cur) = r.m.next_try(cur) else {
                    return self.host_finish(i, t, None);
                };
                // routed.rs checks before every try, not only when the command arrives: a
                // server that stopped serving meanwhile (frozen, marked down) fails it. (Seed
                // 1686 of healing with hangs, once traces shifted: a piece whose first try was
                // lost before a hang was retried after the resume, while the server was fenced
                // and marked down, and acknowledged a write nobody else had.)
                if !serving {
                    return self.host_finish(i, t, None);
                }
                let (key, data) = (*key, *data);
                // `locate`, under the current map (the real `node::route`).
                let name = &self.vol_names[key.0];
                let Some(p) = route::split(&map, name, key.1 * BLOCK, BLOCK)
                    .ok()
                    .and_then(|mut p| p.next())
                else {
                    return self.host_finish(i, t, None);
                };
                let (owner, blk) = match route::locate(&map, name, &p, &me) {
                    Route::Local { pool_off } => (None, pool_off / BLOCK),
                    Route::Remote { server, pool_off } => {
                        (Some(server.id.clone()), pool_off / BLOCK)
                    }
                    Route::NoPath => return self.host_finish(i, t, None),
                };
                let Some(owner) = owner else {
                    let v = match data {
                        Some(v) => {
                            self.pool_write(i, blk, &[v]);
                            0
                        }
                        None => self.srv[i].pool[blk as usize],
                    };
                    return self.host_finish(i, t, Some(v));
                };
                let Some(d) = World::server_index(&owner) else {
                    return self.host_finish(i, t, None);
                };
                let io = self.send_io(
                    Self::me(i),
                    Node::Srv(d),
                    cur,
                    (blk, 1),
                    data.map(|v| vec![v]),
                    false,
                );
                if let Some(task) = self.srv[i].tasks.get_mut(&t) {
                    task.retry().io = Some((io, cur));
                }
            }
            Task::Copy {
                dest,
                dest_blk,
                data,
                r,
                ..
            } => {
                let Some(g) = r.m.next_try(cur) else {
                    return self.copy_finish(i, t, Copied::No);
                };
                let (dest, dest_blk, data) = (dest.clone(), *dest_blk, data.clone());
                // A final copy may go to a server that only the map being installed knows.
                let known = map.server(&dest).is_some()
                    || self.srv[i]
                        .install
                        .as_ref()
                        .is_some_and(|ins| ins.m.map().server(&dest).is_some());
                let Some(d) = known.then(|| World::server_index(&dest)).flatten() else {
                    return self.copy_finish(i, t, Copied::No);
                };
                let n = data.len() as u64;
                let io = self.send_io(
                    Self::me(i),
                    Node::Srv(d),
                    g,
                    (dest_blk, n),
                    Some(data),
                    true,
                );
                if let Some(task) = self.srv[i].tasks.get_mut(&t) {
                    task.retry().io = Some((io, g));
                }
            }
        }
    }

    /// The answer to a task's command (`None`: the connection failed or timed out).
    fn task_result(&mut self, i: usize, t: u64, res: Option<IoRes>) {
        let Some(task) = self.srv[i].tasks.get_mut(&t) else {
            return;
        };
        let is_host = matches!(task, Task::Host { .. });
        let r = task.retry();
        let Some((_, sent)) = r.io.take() else {
            return;
        };
        let answer = match res {
            Some(IoRes::Done(v)) => {
                return if is_host {
                    let val = v.first().copied().unwrap_or(0);
                    self.host_finish(i, t, Some(val));
                } else {
                    self.copy_finish(i, t, Copied::Yes);
                };
            }
            // Access Denied (DNR): routed.rs gives the host an error; a copy is refused under
            // the source rule (mover.rs `CopyError::NotSource`).
            Some(IoRes::Denied) => {
                return if is_host {
                    self.host_finish(i, t, None);
                } else {
                    self.copy_finish(i, t, Copied::NotSource);
                };
            }
            // The peer serves nothing (marked down, fenced, catching up): a copy ends here
            // (mover.rs `copy_range`); its pass fails and is tried again later.
            Some(IoRes::Behind(0)) if !is_host => {
                return self.copy_finish(i, t, Copied::No);
            }
            Some(IoRes::Stale(g) | IoRes::Behind(g)) => node::retry::Answer::Mismatch { theirs: g },
            None => node::retry::Answer::Lost,
        };
        match r.m.on_answer(sent, answer) {
            // The final copy adopted the new owner's generation and retries at once (our own
            // map cannot catch up: the watch loop is inside this install).
            node::retry::Next::Now => {
                self.stats.stamps_adopted += 1;
                self.task_wait(i, t, None, 0);
            }
            // We are behind: fetch the map now and wait for it (bounded).
            node::retry::Next::WaitFor { generation, ms } => {
                self.srv_refresh(i);
                self.task_wait(i, t, Some(generation), ms);
            }
            // The peer is behind (it catches up through its own watch stream), or lost.
            node::retry::Next::Sleep { ms, refresh } => {
                if refresh {
                    self.srv_refresh(i);
                }
                self.task_wait(i, t, None, ms);
            }
        }
    }

    /// Sleeps, or waits for generation `g` (woken early by an install).
    fn task_wait(&mut self, i: usize, t: u64, g: Option<Gen>, ms: u64) {
        let cur = self.srv[i].generation.current();
        // A final copy's pause ends at its install's budget (mover.rs `until_at_most`).
        let until = self.srv[i]
            .install
            .as_ref()
            .and_then(|ins| ins.m.deadline())
            .filter(|_| self.cfg.mutation != Mutation::UnboundedFinalPass)
            .filter(|_| {
                matches!(
                    self.srv[i].tasks.get(&t),
                    Some(Task::Copy {
                        owner: CopyOwner::Install,
                        ..
                    })
                )
            });
        let ms = until.map_or(ms, |d| ms.min(d.saturating_sub(self.now)));
        let Some(task) = self.srv[i].tasks.get_mut(&t) else {
            return;
        };
        let r = task.retry();
        r.token += 1;
        let token = r.token;
        let ms = if g.is_some_and(|g| g <= cur) { 0 } else { ms };
        r.wait = g;
        self.timer(Self::me(i), ms, Timer::TaskWake { task: t, token });
    }

    pub fn copy_finish(&mut self, i: usize, t: u64, res: Copied) {
        let Some(Task::Copy { owner, .. }) = self.srv[i].tasks.remove(&t) else {
            return;
        };
        match owner {
            CopyOwner::Mover(key) => self.mover_copy_done(i, &key, res == Copied::Yes),
            CopyOwner::Install => self.install_copy_done(i, res),
        }
    }
}
