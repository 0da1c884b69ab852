//! Internal NVMe/TCP connections to the other storage servers (server-to-server I/O).
//!
//! One controller and one I/O queue per peer, opened on first use and reopened after a failure.
//! The peer must advertise the generation check in its Identify Controller vendor area, or it
//! is refused (fail closed, docs/cluster-protocol.md).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::initiator::{Controller, ControllerOptions, InitiatorError, Queue};
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

struct Peer {
    addr: SocketAddr,
    ctrl: Controller,
    queue: Queue,
}

/// Connections to peers, by server id.
pub struct Peers {
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
        if let Some(p) = lock(&self.conns).get(id)
            && p.addr == addr
            && !p.queue.is_closed()
        {
            return Ok(p.queue.clone());
        }
        let _g = self.connecting.lock().await;
        if let Some(p) = lock(&self.conns).get(id)
            && p.addr == addr
            && !p.queue.is_closed()
        {
            return Ok(p.queue.clone());
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
        ctrl.set_num_queues(1).await?;
        let queue = ctrl.connect_io_queue(1, INTERNAL_QUEUE_SQSIZE).await?;
        tracing::info!(peer = id, %addr, "internal connection up");
        let peer = Arc::new(Peer {
            addr,
            ctrl,
            queue: queue.clone(),
        });
        lock(&self.conns).insert(id.to_string(), peer);
        Ok(queue)
    }

    /// Forgets a broken connection (the next use reconnects).
    pub fn drop_peer(&self, id: &str) {
        if let Some(p) = lock(&self.conns).remove(id) {
            tracing::debug!(
                peer = id,
                cntlid = p.ctrl.cntlid(),
                "internal connection dropped"
            );
        }
    }
}
