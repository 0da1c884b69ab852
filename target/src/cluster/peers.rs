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

/// A polled queue being connected by one task of a reactor thread; the thread's other tasks
/// that want the same peer wait for its result instead of connecting their own (each connect
/// uses up a QID of the peer's controller).
struct Pending {
    peers: u64,
    server: String,
    addr: SocketAddr,
    done: tokio::sync::Notify,
    result: Mutex<Option<Result<Arc<PolledQueue>, InitiatorError>>>,
}

impl Pending {
    fn finish(&self, r: Result<Arc<PolledQueue>, InitiatorError>) {
        lock(&self.result).get_or_insert(r);
        PENDING.with(|t| t.borrow_mut().retain(|p| !std::ptr::eq(&**p, self)));
        self.done.notify_waiters();
    }
}

/// Reports a connect abandoned midway (its future dropped) to the waiters.
struct PendingGuard(Arc<Pending>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.finish(Err(InitiatorError::Closed));
    }
}

thread_local! {
    /// This thread's polled queues (a handful: one per peer it forwards to).
    static POLLED: RefCell<Vec<Cached>> = const { RefCell::new(Vec::new()) };
    /// This thread's polled queues being connected (at most one per peer).
    static PENDING: RefCell<Vec<Arc<Pending>>> = const { RefCell::new(Vec::new()) };
}

/// Polled queues connected (tests count them).
#[cfg(test)]
static POLLED_CONNECTS: AtomicU64 = AtomicU64::new(0);

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
        // One connect per (thread, peer) at a time: join the one in flight, if any.
        let (pending, leader) = PENDING.with(|t| {
            let mut t = t.borrow_mut();
            // A finished connect whose task ended on another thread left its entry here.
            t.retain(|p| lock(&p.result).is_none());
            if let Some(p) = t
                .iter()
                .find(|p| p.peers == self.id && p.server == id && p.addr == addr)
            {
                return (Arc::clone(p), false);
            }
            let p = Arc::new(Pending {
                peers: self.id,
                server: id.to_string(),
                addr,
                done: tokio::sync::Notify::new(),
                result: Mutex::new(None),
            });
            t.push(Arc::clone(&p));
            (p, true)
        });
        if !leader {
            loop {
                let notified = pending.done.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if let Some(r) = lock(&pending.result).clone() {
                    // A failed connect fails its waiters too (no storm of retries).
                    return match r {
                        Ok(q) if !q.is_closed() => Ok(q),
                        Ok(_) => Err(InitiatorError::Closed),
                        Err(e) => Err(e),
                    };
                }
                notified.await;
            }
        }
        let guard = PendingGuard(pending);
        let r = self.connect_polled(id, addr).await;
        guard.0.finish(r.clone());
        r
    }

    /// Connects this thread's polled queue to `id` at `addr` (one at a time per thread and
    /// peer, see [`Peers::polled`]).
    ///
    /// QIDs are not reused: the target frees a QID only when it notices the queue's
    /// connection ended, which may be after our close, and a Connect with a QID still in use
    /// is refused (controller busy); so a closed queue's QID stays spent until the peer's
    /// controller is replaced.
    async fn connect_polled(
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
        #[cfg(test)]
        POLLED_CONNECTS.fetch_add(1, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// Many first users of one peer on one thread at once: one connect, whose failure every
    /// one of them gets (without the per-thread pending connect, each connected on its own).
    #[tokio::test]
    async fn concurrent_first_users_on_one_thread_share_one_connect() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let a = Arc::clone(&accepted);
        let acceptor = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                a.fetch_add(1, Ordering::Relaxed);
                // Not a target: hang up at once, so the connect fails.
                drop(s);
            }
        });
        let peers = Arc::new(Peers::new("me"));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let p = Arc::clone(&peers);
            set.spawn(async move { p.polled("peer", addr).await.map(|_| ()) });
        }
        let all = tokio::time::timeout(Duration::from_secs(60), async {
            let mut errs = 0;
            while let Some(r) = set.join_next().await {
                if r.expect("task").is_err() {
                    errs += 1;
                }
            }
            errs
        })
        .await
        .expect("hang guard");
        assert_eq!(all, 16, "every user gets the failed connect");
        assert_eq!(accepted.load(Ordering::Relaxed), 1, "one connect");
        assert!(PENDING.with(|t| t.borrow().is_empty()));
        acceptor.abort();
    }
}
