//! Clients and watch streams.
//!
//! - External layout-aware clients (the `tessera` CLI/bench, tests): keep the committed map
//!   (watch and fetch with role=client), stamp its generation, send each block command to the
//!   owner; on 80h with a newer server generation they fetch the map and retry, on 81h they
//!   wait the Command Retry Delay (100 ms) and retry; 5 tries, backoff 10 ms -> 200 ms.
//! - Hosts: standard unstamped NVMe/TCP through any server's portal; that server routes the
//!   command (server.rs, routed.rs rules). The host never sees a vendor status.
//!
//! Writes carry a fresh version; one write per block is in flight at a time, so versions order
//! a block's writes. Every completed read is checked against the newest write acknowledged
//! before the read began (invariant 3).

use std::sync::Arc;

use manager::map::ClusterMap;

use super::world::{
    BLOCK, BlockKey, Gen, IoRes, Msg, Node, RPC_TIMEOUT_MS, Rep, Req, Role, SERVERS_MAX, Timer,
    World,
};

/// Tries of an external client's command, and its backoff bound.
pub const CLIENT_TRIES: u32 = 5;
pub const CLIENT_BACKOFF_MAX_MS: u64 = 200;
/// CRDT1 of a "server behind" completion: 100 ms.
pub const CRD_MS: u64 = 100;
/// Pause between a client's operations.
pub const THINK_MS_MAX: u64 = 30;
/// Delay before a broken watch stream reconnects (the daemon's, `node::policy`).
pub use tessera::cluster::node::policy::RECONNECT_MS;

/// A watch stream (manager/src/client.rs `watch`): it keeps the generation of the last map
/// it passed on, skips lines not newer than that, and reconnects with it as `after`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Watch {
    pub stream: u64,
    pub open: bool,
    pub after: Gen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    External,
    Host,
}

#[derive(Debug)]
pub struct Op {
    pub id: u64,
    pub key: BlockKey,
    /// The version written, for a write.
    pub write: Option<u64>,
    /// Newest version acknowledged when the read began.
    pub floor: u64,
    pub tries: u32,
    pub backoff: u64,
    /// External: the command in flight and its stamp.
    pub io: Option<(u64, Gen)>,
    /// External: a map fetch in flight.
    pub fetch: Option<u64>,
    pub token: u64,
    /// Host: the server it went through.
    pub via: Option<usize>,
}

pub struct Client {
    pub kind: ClientKind,
    pub map: Arc<ClusterMap>,
    pub watch: Watch,
    pub op: Option<Op>,
}

impl Client {
    pub fn new(kind: ClientKind) -> Self {
        Self {
            kind,
            map: Arc::new(ClusterMap::empty()),
            watch: Watch::default(),
            op: None,
        }
    }
}

impl World {
    // ---- watch streams (servers and external clients) ---------------------------------

    fn watch_mut(&mut self, node: Node) -> Option<&mut Watch> {
        match node {
            Node::Srv(i) => Some(&mut self.srv[i].watch),
            Node::Cli(k) => Some(&mut self.cli[k].watch),
            Node::Mgr => None,
        }
    }

    /// Opens a watch stream (`GET /v1/watch?after=`), replacing any previous one.
    pub fn subscribe(&mut self, node: Node) {
        let stream = self.id();
        let (role, after) = match node {
            // A server's stream starts at its generation (`watch`), set at boot.
            Node::Srv(i) => (Role::Server(i), self.srv[i].watch.after),
            Node::Cli(k) => (Role::Client, self.cli[k].map.generation),
            Node::Mgr => return,
        };
        if let Some(w) = self.watch_mut(node) {
            *w = Watch {
                stream,
                open: false,
                after,
            };
        }
        self.send(
            node,
            Node::Mgr,
            Msg::Subscribe {
                stream,
                role,
                after,
            },
        );
        self.timer(node, RPC_TIMEOUT_MS, Timer::WatchCheck(stream));
    }

    pub fn on_watch_timer(&mut self, node: Node, t: &Timer) {
        let Some(w) = self.watch_mut(node).copied() else {
            return;
        };
        match *t {
            Timer::WatchCheck(s) if s == w.stream && !w.open => self.subscribe(node),
            Timer::StreamBroken(s) if s == w.stream => {
                if let Some(w) = self.watch_mut(node) {
                    w.open = false;
                }
                self.timer(node, RECONNECT_MS, Timer::Resubscribe(s));
            }
            Timer::Resubscribe(s) if s == w.stream => self.subscribe(node),
            _ => {}
        }
    }

    /// A stream line for `node`: the map it carries, if on the current stream.
    pub fn on_stream_msg(&mut self, node: Node, msg: Msg) -> Option<Arc<ClusterMap>> {
        let w = self.watch_mut(node)?;
        match msg {
            Msg::StreamOpened { stream } if stream == w.stream => {
                w.open = true;
                None
            }
            Msg::StreamMap { stream, map } if stream == w.stream => {
                w.open = true;
                if map.generation <= w.after {
                    return None;
                }
                w.after = map.generation;
                Some(map)
            }
            _ => None,
        }
    }

    // ---- clients ------------------------------------------------------------------------

    pub fn cli_start(&mut self, k: usize) {
        if self.cli[k].kind == ClientKind::External {
            self.subscribe(Node::Cli(k));
        }
        self.timer(Node::Cli(k), 1, Timer::NextOp);
    }

    fn adopt(&mut self, k: usize, map: Arc<ClusterMap>) {
        if map.generation > self.cli[k].map.generation {
            self.cli[k].map = map;
        }
    }

    /// Starts an operation; `false` if there was nothing to do it on yet.
    pub fn cli_begin_op(&mut self, k: usize) -> bool {
        let key = match self.cli[k].kind {
            ClientKind::External => {
                let map = Arc::clone(&self.cli[k].map);
                if map.volumes.is_empty() {
                    return false;
                }
                let v = &map.volumes[self.rng.index(map.volumes.len())];
                let blocks = v.size_bytes / BLOCK;
                let b = self.rng.below(blocks);
                (self.vol_index(&v.name), b)
            }
            ClientKind::Host => {
                let vi = self.rng.index(self.vol_names.len());
                let blocks = self.known_blocks[vi];
                (vi, self.rng.below(blocks))
            }
        };
        let write = if !self.writing.contains(&key) && self.rng.chance(500) {
            let v = self.versions.len() as u64;
            self.versions.push(key);
            self.writing.insert(key);
            Some(v)
        } else {
            None
        };
        let floor = self.last_acked.get(&key).copied().unwrap_or(0);
        let id = self.id();
        self.cli[k].op = Some(Op {
            id,
            key,
            write,
            floor,
            tries: 0,
            backoff: 10,
            io: None,
            fetch: None,
            token: 0,
            via: None,
        });
        match self.cli[k].kind {
            ClientKind::External => {
                self.ext_try(k);
            }
            ClientKind::Host => {
                let started: Vec<usize> =
                    (0..SERVERS_MAX).filter(|i| self.srv[*i].started).collect();
                let via = started[self.rng.index(started.len())];
                if !self.srv[via].up {
                    self.op_done(k, None); // connection refused: try another path later
                    return true;
                }
                if let Some(op) = &mut self.cli[k].op {
                    op.via = Some(via);
                }
                self.send(
                    Node::Cli(k),
                    Node::Srv(via),
                    Msg::HostIo {
                        id,
                        key,
                        data: write,
                    },
                );
            }
        }
        true
    }

    fn ext_try(&mut self, k: usize) {
        let map = Arc::clone(&self.cli[k].map);
        let Some(op) = &mut self.cli[k].op else {
            return;
        };
        if op.tries >= CLIENT_TRIES {
            return self.op_done(k, None);
        }
        op.tries += 1;
        let (key, write) = (op.key, op.write);
        let loc = map.volume(&self.vol_names[key.0]).and_then(|v| {
            let e = v.extent_of(key.1 * BLOCK)?;
            let (start, _) = v.extent_range(e)?;
            let o = v.owner(e)?;
            let d = World::server_index(&o.server)?;
            Some((d, o.offset / BLOCK + key.1 - start / BLOCK))
        });
        let Some((d, blk)) = loc else {
            return self.op_done(k, None);
        };
        let g = map.generation;
        let io = self.send_io(
            Node::Cli(k),
            Node::Srv(d),
            g,
            (blk, 1),
            write.map(|v| vec![v]),
            false,
        );
        if let Some(op) = &mut self.cli[k].op {
            op.io = Some((io, g));
        }
    }

    fn ext_sleep(&mut self, k: usize, ms: u64) {
        let Some(op) = &mut self.cli[k].op else {
            return;
        };
        op.token += 1;
        let token = op.token;
        self.timer(Node::Cli(k), ms, Timer::ClientWake(token));
    }

    pub fn cli_on_msg(&mut self, k: usize, msg: Msg) {
        match msg {
            Msg::StreamOpened { .. } | Msg::StreamMap { .. } => {
                if let Some(map) = self.on_stream_msg(Node::Cli(k), msg) {
                    self.adopt(k, map);
                }
            }
            Msg::RpcReply { id, rep } => {
                let Some(op) = &mut self.cli[k].op else {
                    return;
                };
                if op.fetch != Some(id) {
                    return;
                }
                op.fetch = None;
                if let Rep::Map(m) = rep {
                    self.adopt(k, m);
                }
                self.ext_try(k);
            }
            Msg::IoReply { id, res } => {
                if self.ios.remove(&id).is_none() {
                    return;
                }
                let Some(op) = &mut self.cli[k].op else {
                    return;
                };
                let Some((io, sent)) = op.io else {
                    return;
                };
                if io != id {
                    return;
                }
                op.io = None;
                let backoff = op.backoff;
                op.backoff = (op.backoff * 2).min(CLIENT_BACKOFF_MAX_MS);
                match res {
                    IoRes::Done(v) => self.op_done(k, Some(v.first().copied().unwrap_or(0))),
                    IoRes::Stale(g) if g > sent => {
                        let rpc = self.rpc(Node::Cli(k), Req::Fetch(Role::Client));
                        if let Some(op) = &mut self.cli[k].op {
                            op.fetch = Some(rpc);
                        }
                    }
                    IoRes::Stale(_) => self.ext_sleep(k, backoff),
                    IoRes::Behind(_) => self.ext_sleep(k, CRD_MS),
                    IoRes::Denied => self.op_done(k, None),
                }
            }
            Msg::HostReply { id, res } if self.cli[k].op.as_ref().is_some_and(|o| o.id == id) => {
                self.op_done(k, res);
            }
            _ => {}
        }
    }

    pub fn cli_on_timer(&mut self, k: usize, t: Timer) {
        match t {
            Timer::WatchCheck(_) | Timer::StreamBroken(_) | Timer::Resubscribe(_) => {
                self.on_watch_timer(Node::Cli(k), &t);
            }
            Timer::RpcTimeout(id) => {
                if let Some(op) = &mut self.cli[k].op
                    && op.fetch == Some(id)
                {
                    op.fetch = None;
                    self.ext_try(k);
                }
            }
            Timer::IoTimeout(id) => {
                let Some(op) = &mut self.cli[k].op else {
                    return;
                };
                if op.io.map(|x| x.0) != Some(id) || !self.ios.contains_key(&id) {
                    return;
                }
                op.io = None;
                let backoff = op.backoff;
                op.backoff = (op.backoff * 2).min(CLIENT_BACKOFF_MAX_MS);
                self.cancel_io(id);
                self.ext_sleep(k, backoff);
            }
            Timer::ClientWake(token)
                if self.cli[k]
                    .op
                    .as_ref()
                    .is_some_and(|o| o.token == token && o.io.is_none()) =>
            {
                self.ext_try(k);
            }
            Timer::NextOp if self.cli[k].op.is_none() && !self.cli_begin_op(k) => {
                self.timer(Node::Cli(k), THINK_MS_MAX, Timer::NextOp);
            }
            Timer::HostLost(id) if self.cli[k].op.as_ref().is_some_and(|o| o.id == id) => {
                self.op_done(k, None);
            }
            _ => {}
        }
    }

    /// An operation completed: `Some(value read)` (0 for a write), or `None` (failed).
    fn op_done(&mut self, k: usize, res: Option<u64>) {
        let Some(op) = self.cli[k].op.take() else {
            return;
        };
        let name = self.vol_names[op.key.0].clone();
        let what = match (op.write, res) {
            (Some(v), Some(_)) => {
                self.stats.ops_ok += 1;
                self.writing.remove(&op.key);
                let prev = self.last_acked.insert(op.key, v).unwrap_or(0);
                assert!(
                    prev < v,
                    "one write per block at a time: versions only grow"
                );
                self.state_check = true;
                format!("write #{v} acknowledged")
            }
            (Some(v), None) => {
                self.stats.ops_failed += 1;
                self.writing.remove(&op.key);
                format!("write #{v} failed")
            }
            (None, Some(have)) => {
                self.stats.ops_ok += 1;
                self.stats.reads_checked += 1;
                if op.floor > 0
                    && !self.serves(have, op.key, op.floor)
                    && !self.forgiven_floor(op.key, op.floor)
                {
                    let path = match op.via {
                        Some(s) => format!("through host path {}", self.srv[s].id),
                        None => format!("by layout-aware client {k}"),
                    };
                    let extent = (op.key.1 * BLOCK / super::world::EXTENT) as usize;
                    let msg = format!(
                        "invariant 3: read of {name}[{}] {path} returned {}, but write #{} was \
                         acknowledged before the read began{}",
                        op.key.1,
                        self.describe(have),
                        op.floor,
                        self.known_bug(&name, extent),
                    );
                    self.fail(msg);
                }
                format!("read -> {}", self.describe(have))
            }
            (None, None) => {
                self.stats.ops_failed += 1;
                "read failed".to_owned()
            }
        };
        self.note(format!("client {k}: {name}[{}] {what}", op.key.1));
        let think = self.rng.range(1, THINK_MS_MAX);
        self.timer(Node::Cli(k), think, Timer::NextOp);
    }
}
