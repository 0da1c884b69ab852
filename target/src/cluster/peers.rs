//! Internal NVMe/TCP connections to the other storage servers (server-to-server I/O).
//!
//! One controller per peer, opened on first use and reopened after a failure, with two kinds of
//! I/O queue on it: one task-based [`Queue`] (I/O queue 1: flushes, extent copies, a primary's
//! copy writes) and, for host commands routed to the peer, one [`PolledQueue`] per reactor
//! thread (I/O queues 2 and up), found without a lock through a thread-local table: a forwarded
//! command is written to the socket by the connection that routes it and its completion wakes
//! that connection's task only (docs/performance.md, "The cluster path").
//! The peer must advertise the generation check in its Identify Controller vendor area, or it
//! is refused (fail closed, docs/cluster-protocol.md).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::initiator::{Controller, ControllerOptions, InitiatorError, PolledQueue, Queue};
use crate::subsystem::lock;

/// The internal subsystem NQN of a server.
pub fn internal_nqn(server_id: &str) -> String {
    format!("nqn.2026-11.dev.tessera:internal:{server_id}")
}

/// The host NQN a server uses on internal connections: this prefix and its id.
pub const SERVER_HOSTNQN_PREFIX: &str = "nqn.2026-11.dev.tessera:server:";

/// The host NQN a server uses on internal connections.
pub fn server_hostnqn(server_id: &str) -> String {
    format!("{SERVER_HOSTNQN_PREFIX}{server_id}")
}

/// Block size of the internal namespace (NSID 1 = the whole pool).
pub const INTERNAL_BLOCK: u32 = 512;
pub const INTERNAL_NSID: u32 = 1;

/// Queue entries of an internal I/O queue.
const INTERNAL_QUEUE_SQSIZE: u16 = 127;

/// I/O queues asked of a peer's controller: queue 1 (task-based) and a polled queue per
/// reactor thread that forwards to it (the target grants up to 64).
const INTERNAL_QUEUES: u16 = 64;

struct Peer {
    addr: SocketAddr,
    ctrl: Controller,
    queue: Queue,
    /// I/O queues the peer granted, and the next free QID for a polled queue.
    granted: u16,
    next_qid: AtomicU16,
    /// Every polled queue opened on this controller (closed with it).
    polled: Mutex<Vec<Arc<PolledQueue>>>,
}

impl Peer {
    fn close_polled(&self) {
        for q in lock(&self.polled).drain(..) {
            q.close();
        }
    }
}

/// Distinguishes the `Peers` of several servers in one process (tests) in the thread-local
/// table of polled queues.
static NEXT_PEERS_ID: AtomicU64 = AtomicU64::new(1);

/// A reactor thread's polled queue to one peer.
struct Cached {
    peers: u64,
    server: String,
    addr: SocketAddr,
    queue: Arc<PolledQueue>,
}

thread_local! {
    /// This thread's polled queues (a handful: one per peer it forwards to).
    static POLLED: RefCell<Vec<Cached>> = const { RefCell::new(Vec::new()) };
}

/// Connections to peers, by server id.
pub struct Peers {
    /// This instance's key in the thread-local table.
    id: u64,
    me: String,
    conns: Mutex<HashMap<String, Arc<Peer>>>,
    /// Serialises connection setup (one connect per peer at a time).
    connecting: tokio::sync::Mutex<()>,
    /// DH-HMAC-CHAP secrets for the peers' internal portals.
    dhchap: Option<crate::controller::auth::ClusterSecrets>,
}

impl Peers {
    pub fn new(me: &str) -> Self {
        Self {
            id: NEXT_PEERS_ID.fetch_add(1, Ordering::Relaxed),
            me: me.to_string(),
            conns: Mutex::new(HashMap::new()),
            connecting: tokio::sync::Mutex::new(()),
            dhchap: None,
        }
    }

    /// Authenticate internal connections with these secrets.
    #[must_use]
    pub fn with_dhchap(mut self, dhchap: Option<crate::controller::auth::ClusterSecrets>) -> Self {
        self.dhchap = dhchap;
        self
    }

    /// The I/O queue to `id` at `addr`, connecting if needed.
    pub async fn queue(&self, id: &str, addr: SocketAddr) -> Result<Queue, InitiatorError> {
        Ok(self.peer(id, addr).await?.queue.clone())
    }

    /// The live connection to `id` at `addr`, connecting if needed.
    async fn peer(&self, id: &str, addr: SocketAddr) -> Result<Arc<Peer>, InitiatorError> {
        if let Some(p) = self.live(id, addr) {
            return Ok(p);
        }
        let _g = self.connecting.lock().await;
        if let Some(p) = self.live(id, addr) {
            return Ok(p);
        }
        let mut opts = ControllerOptions::default();
        if let Some(s) = &self.dhchap {
            let secrets = s.initiator(id).map_err(|e| {
                tracing::error!(peer = id, error = %e, "no DH-HMAC-CHAP secret for this peer");
                InitiatorError::AuthRequired
            })?;
            opts.dhchap = Some(Arc::new(secrets));
        }
        let ctrl =
            Controller::connect(addr, &internal_nqn(id), &server_hostnqn(&self.me), &opts).await?;
        ctrl.enable().await?;
        // Fail closed: a peer that does not check generations must not get our I/O.
        ctrl.require_generation_check().await?;
        let granted = ctrl.set_num_queues(INTERNAL_QUEUES).await?;
        let queue = ctrl.connect_io_queue(1, INTERNAL_QUEUE_SQSIZE).await?;
        tracing::info!(peer = id, %addr, "internal connection up");
        let peer = Arc::new(Peer {
            addr,
            ctrl,
            queue,
            granted,
            next_qid: AtomicU16::new(2),
            polled: Mutex::new(Vec::new()),
        });
        if let Some(old) = lock(&self.conns).insert(id.to_string(), Arc::clone(&peer)) {
            old.close_polled();
        }
        Ok(peer)
    }

    fn live(&self, id: &str, addr: SocketAddr) -> Option<Arc<Peer>> {
        lock(&self.conns)
            .get(id)
            .filter(|p| p.addr == addr && !p.queue.is_closed())
            .cloned()
    }

    /// This reactor thread's polled queue to `id` at `addr` (for routed host commands),
    /// connecting it (and the peer's controller) if needed. Found without a lock once open.
    pub async fn polled(
        &self,
        id: &str,
        addr: SocketAddr,
    ) -> Result<Arc<PolledQueue>, InitiatorError> {
        if let Some(q) = self.cached(id, addr) {
            return Ok(q);
        }
        let peer = self.peer(id, addr).await?;
        let qid = peer.next_qid.fetch_add(1, Ordering::Relaxed);
        if qid > peer.granted || qid == 0 {
            // Every QID was used (queues that failed without the peer being dropped): start
            // over with a new controller on the next try.
            self.drop_peer(id);
            return Err(InitiatorError::InvalidArgument {
                what: "no I/O queue left on the internal controller",
            });
        }
        let opts = peer.ctrl.io_queue_options(qid, INTERNAL_QUEUE_SQSIZE);
        let q = PolledQueue::connect(addr, &opts).await?;
        lock(&peer.polled).push(Arc::clone(&q));
        if !self.live(id, addr).is_some_and(|p| Arc::ptr_eq(&p, &peer)) {
            // The peer was dropped (or replaced) while this queue connected.
            q.close();
            return Err(InitiatorError::Closed);
        }
        tracing::debug!(peer = id, qid, "polled internal queue up");
        POLLED.with(|t| {
            let mut t = t.borrow_mut();
            t.retain(|c| !c.queue.is_closed());
            match t.iter().position(|c| c.peers == self.id && c.server == id) {
                // Another command of this thread connected one meanwhile: keep the first.
                Some(k) if t[k].addr == addr => {
                    q.close();
                    Ok(Arc::clone(&t[k].queue))
                }
                Some(k) => {
                    t[k].addr = addr;
                    t[k].queue = Arc::clone(&q);
                    Ok(q)
                }
                None => {
                    t.push(Cached {
                        peers: self.id,
                        server: id.to_string(),
                        addr,
                        queue: Arc::clone(&q),
                    });
                    Ok(q)
                }
            }
        })
    }

    fn cached(&self, id: &str, addr: SocketAddr) -> Option<Arc<PolledQueue>> {
        POLLED.with(|t| {
            t.borrow()
                .iter()
                .find(|c| c.peers == self.id && c.server == id && c.addr == addr)
                .filter(|c| !c.queue.is_closed())
                .map(|c| Arc::clone(&c.queue))
        })
    }

    /// Forgets a broken connection, its polled queues included (the next use reconnects).
    pub fn drop_peer(&self, id: &str) {
        if let Some(p) = lock(&self.conns).remove(id) {
            p.close_polled();
            tracing::debug!(
                peer = id,
                cntlid = p.ctrl.cntlid(),
                "internal connection dropped"
            );
        }
    }
}
