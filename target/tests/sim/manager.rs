//! The management service: the REAL `manager::coord::Coordinator` and `manager::plan`, with a
//! model of what `manager::server` does around them (the store, the watch streams, the
//! control API), following manager/src/server/{mod,routes,watch}.rs:
//! - a change runs plan -> store (durable) -> `Event::Committed`;
//! - `SendToServers` and `PublishTo*` wake the watch streams; each stream sends its role's map
//!   when it is newer than the last one it sent (so a re-send of a map a stream already sent
//!   sends nothing, as in `watch.rs`);
//! - `PublishToClients` records the commit in the store asynchronously (a crash may lose it);
//! - a restart loads the committed map and feeds the later durable ones as `Committed`.

use std::sync::Arc;

use manager::coord::{Action, Coordinator, Event};
use manager::map::ClusterMap;
use manager::plan::{self, Change};

use super::world::{Gen, Msg, Mutation, Node, Rep, Req, Role, Timer, World};

pub struct Sub {
    pub node: Node,
    pub role: Role,
    pub stream: u64,
    pub last: Gen,
}

pub struct Manager {
    pub up: bool,
    pub inc: u64,
    /// Every durable map, in generation order (the store).
    pub durable: Vec<Arc<ClusterMap>>,
    /// The store's commit record.
    pub committed_gen: Gen,
    /// The store's record of the newest switch whose phase 1a is done (written synchronously,
    /// before the map is any other server's: `Shared::handle_locked`).
    pub phase_1a_done: Gen,
    pub coord: Option<Coordinator>,
    pub subs: Vec<Sub>,
}

impl Manager {
    pub fn new(initial: Arc<ClusterMap>) -> Self {
        let g = initial.generation;
        Self {
            up: true,
            inc: 0,
            coord: Some(Coordinator::new((*initial).clone())),
            durable: vec![initial],
            committed_gen: g,
            phase_1a_done: 0,
            subs: Vec::new(),
        }
    }

    /// The newest durable map.
    pub fn head(&self) -> Arc<ClusterMap> {
        Arc::clone(
            self.durable
                .last()
                .expect("the store always holds the first map"),
        )
    }
}

impl World {
    fn mgr_feed(&mut self, ev: Event) {
        let Some(coord) = self.mgr.coord.as_mut() else {
            return;
        };
        let before = coord.server_map(None);
        let actions = coord.handle(ev);
        self.mgr_record_phase_1a(before, &actions);
        self.mgr_actions(actions);
    }

    /// `Shared::record_phase_1a`: the store records the end of phase 1a of a switch before
    /// any other server can get it.
    fn mgr_record_phase_1a(&mut self, mut before: Arc<ClusterMap>, actions: &[Action]) {
        for a in actions {
            if let Action::PublishToServers(m) = a {
                if !ClusterMap::changed_owners(&before, m).is_empty() {
                    self.mgr.phase_1a_done = self.mgr.phase_1a_done.max(m.generation);
                }
                before = Arc::clone(m);
            }
        }
    }

    fn mgr_actions(&mut self, actions: Vec<Action>) {
        let mut wake = false;
        for a in actions {
            match a {
                Action::SendToServers { servers, map } => {
                    self.note(format!("mgr: phase 1a g{} to {servers:?}", map.generation));
                    wake = true;
                }
                Action::PublishToServers(map) => {
                    self.note(format!("mgr: phase 1b g{}", map.generation));
                    wake = true;
                }
                Action::PublishToClients(map) => {
                    self.note(format!("mgr: committed g{}", map.generation));
                    self.stats.commits += 1;
                    self.learn_blocks(&map);
                    wake = true;
                    let ms = self.rng.range(1, 20);
                    self.timer(Node::Mgr, ms, Timer::DiskCommit(map.generation));
                }
                Action::StartTimer {
                    generation,
                    phase,
                    ms,
                } => self.timer(Node::Mgr, ms, Timer::Coord { generation, phase }),
                // Only with read leases, which this coordinator does not set (the simulated
                // servers serve no host reads of their own to fence).
                Action::AwaitLeases { .. } => {}
                // Only with an old-owner timeout, which this coordinator does not set.
                Action::MarkDown {
                    generation,
                    servers,
                } => {
                    self.note(format!(
                        "mgr: mark down {servers:?} (g{generation} phase 1a)"
                    ));
                }
            }
        }
        if wake {
            self.mgr_wake();
        }
    }

    /// The map `role` gets now (`GET /v1/map`, and a watch stream's next line).
    fn mgr_role_map(&mut self, role: Role) -> Option<Arc<ClusterMap>> {
        let coord = self.mgr.coord.as_mut()?;
        Some(match role {
            Role::Client => coord.client_map(),
            Role::Server(i) => {
                let id = self.srv[i].id.clone();
                let m = coord.server_map(Some(&id));
                let _ = coord.handle(Event::ServerFetched {
                    server: id,
                    generation: m.generation,
                });
                m
            }
        })
    }

    /// Every watch stream sends its role's map if newer than what it sent.
    fn mgr_wake(&mut self) {
        // A lost line drops its stream from `subs` while we walk it: walk by subscriber.
        let nodes: Vec<Node> = self.mgr.subs.iter().map(|s| s.node).collect();
        for node in nodes {
            if let Some(k) = self.mgr.subs.iter().position(|s| s.node == node) {
                self.mgr_push(k);
            }
        }
    }

    fn mgr_push(&mut self, k: usize) {
        let (role, last, node, stream) = {
            let s = &self.mgr.subs[k];
            (s.role, s.last, s.node, s.stream)
        };
        let Some(map) = self.mgr_role_map(role) else {
            return;
        };
        if map.generation > last {
            self.mgr.subs[k].last = map.generation;
            self.send(Node::Mgr, node, Msg::StreamMap { stream, map });
        }
    }

    /// The manager side of a broken stream.
    pub fn mgr_drop_sub(&mut self, node: Node) {
        self.mgr.subs.retain(|s| s.node != node);
    }

    /// A change: plan, store, coordinator (`Shared::change`).
    pub fn mgr_change(&mut self, change: Change) -> Result<(), String> {
        if !self.mgr.up {
            return Err("manager down".to_owned());
        }
        let head = self.mgr.head();
        let chain = self
            .mgr
            .coord
            .as_ref()
            .map_or_else(|| vec![Arc::clone(&head)], Coordinator::phase_1a_chain);
        let (next, cancelled) = if self.cfg.mutation == Mutation::NoCancel {
            (
                plan::apply(&head, &change).map_err(|e| e.to_string())?,
                Vec::new(),
            )
        } else {
            plan::apply_cancelling(&head, &change, &chain).map_err(|e| e.to_string())?
        };
        for c in &cancelled {
            self.note(format!(
                "mgr: {} {}[{}] to {} cancelled ({} keeps it)",
                if c.switch { "switch" } else { "move" },
                c.volume,
                c.extent,
                c.to,
                c.owner
            ));
        }
        if next.generation == head.generation {
            return Ok(());
        }
        if let Change::SwitchMove(req) = &change
            && self.cfg.mutation != Mutation::SwitchBeforeDestAck
            && let Some(coord) = self.mgr.coord.as_ref()
        {
            coord
                .move_ready_check(req)
                .map_err(|e| format!("409: {e}"))?;
        }
        if !self.mgr.coord.as_ref().is_some_and(Coordinator::can_accept) {
            return Err("503: publication queue full".to_owned());
        }
        if matches!(change, Change::SwitchMove(_)) {
            self.stats.switches += 1;
        }
        let next = Arc::new(next);
        self.mgr.durable.push(Arc::clone(&next));
        self.mgr_feed(Event::Committed(next));
        Ok(())
    }

    pub fn mgr_on_msg(&mut self, from: Node, msg: Msg) {
        match msg {
            Msg::Subscribe {
                stream,
                role,
                after,
            } => {
                // A request its subscriber gave up on (it re-subscribed since): its connection
                // is closed, so it opens no stream (and does not replace the live one).
                let current = match from {
                    Node::Srv(i) => self.srv[i].watch.stream,
                    Node::Cli(k) => self.cli[k].watch.stream,
                    Node::Mgr => 0,
                };
                if current != stream {
                    return;
                }
                self.mgr_drop_sub(from);
                self.mgr.subs.push(Sub {
                    node: from,
                    role,
                    stream,
                    last: after,
                });
                self.send(Node::Mgr, from, Msg::StreamOpened { stream });
                // (The line may have been lost, breaking the stream already.)
                if let Some(k) = self.mgr.subs.iter().position(|s| s.node == from) {
                    self.mgr_push(k);
                }
            }
            Msg::Rpc { id, req } => {
                let rep = match req {
                    Req::Ack { server, generation } => {
                        let server = self.srv[server].id.clone();
                        self.mgr_feed(Event::Ack { server, generation });
                        Rep::Ok
                    }
                    Req::MoveReady(r) => match self.mgr_change(Change::SwitchMove(r)) {
                        Ok(()) => Rep::Ok,
                        Err(e) => Rep::Err(e),
                    },
                    Req::Fetch(role) => match self.mgr_role_map(role) {
                        Some(m) => Rep::Map(m),
                        None => return,
                    },
                };
                self.send(Node::Mgr, from, Msg::RpcReply { id, rep });
            }
            _ => {}
        }
    }

    pub fn mgr_on_timer(&mut self, t: Timer) {
        match t {
            Timer::Coord { generation, phase } => {
                self.mgr_feed(Event::Timeout { generation, phase });
            }
            Timer::DiskCommit(g) => {
                self.mgr.committed_gen = self.mgr.committed_gen.max(g);
            }
            _ => {}
        }
    }

    pub fn mgr_crash(&mut self) {
        self.note("CRASH manager".to_owned());
        self.stats.manager_crashes += 1;
        self.mgr.up = false;
        self.mgr.inc += 1;
        self.mgr.coord = None;
        let subs = std::mem::take(&mut self.mgr.subs);
        self.purge_node(Node::Mgr);
        for s in subs {
            // The stream's connection is reset: the subscriber notices at once.
            let ms = self.rng.range(1, 10);
            self.timer(s.node, ms, Timer::StreamBroken(s.stream));
        }
    }

    /// `server::start`: the committed map from the store, then the later durable maps.
    pub fn mgr_restart(&mut self) {
        if self.mgr.up {
            return;
        }
        self.mgr.up = true;
        let committed = self
            .mgr
            .durable
            .iter()
            .find(|m| m.generation == self.mgr.committed_gen)
            .cloned()
            .expect("the commit record names a durable map");
        let done = self.mgr.phase_1a_done;
        let mut coord = Coordinator::new((*committed).clone()).resumed_at(done);
        let pending: Vec<_> = self
            .mgr
            .durable
            .iter()
            .filter(|m| m.generation > committed.generation)
            .cloned()
            .collect();
        let before = coord.server_map(None);
        let actions = coord.resume(pending);
        self.mgr.coord = Some(coord);
        self.mgr_record_phase_1a(before, &actions);
        self.mgr_actions(actions);
    }
}
