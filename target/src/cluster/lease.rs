//! Read leases (docs/replication.md, "Read leases"). A copy of a replicated extent may serve a
//! host read from its own pool only while no other copy can have acknowledged a write it
//! lacks. The manager publishes a map that takes a copy's reads away (its copy made `stale`,
//! `rebuilding` or dropped, its server marked `down`) to anyone else only once that server has
//! acked it or the last lease granted to it has run out. So a server holding a lease serves
//! its copies' reads at once, and one without (cut off from the manager, or the manager down)
//! confirms each such read after reading it: a stamped one-block read to every other
//! `in_sync` copy of the extent, which all answer at its generation only if none has
//! installed a newer map, so none can have taken a write in one (a new primary installs its
//! map before it takes writes). A refusal or an unreachable copy fails the read with a
//! retryable path error.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use manager::map::{ReplicaState, ServerState};

use super::NodeShared;
use super::node::REPLICA_NSID;
use super::peers::INTERNAL_BLOCK;
use super::routed::RouteError;

/// How often a lease is asked for: several times within one lease, so a late answer or two
/// loses nothing.
pub const RENEW_MS: u64 = 250;
/// One lease call's bound (a hung manager must not hold the loop).
const CALL_TIMEOUT_MS: u64 = 1_000;
/// The longest lease taken from an answer, whatever the manager says.
const LEASE_MAX_MS: u64 = 10_000;

/// This server's read lease: until when (ms since `base`) it may serve its copies' reads
/// without confirming them.
pub struct Lease {
    base: Instant,
    until_ms: AtomicU64,
}

impl Default for Lease {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            until_ms: AtomicU64::new(0),
        }
    }
}

impl Lease {
    /// Milliseconds since this lease's base (monotonic; counts while the process is stopped).
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the lease runs now.
    pub fn valid(&self) -> bool {
        self.now_ms() < self.until_ms.load(Ordering::Acquire)
    }

    /// A lease of `lease_ms` granted to a request sent at `sent_ms` ([`Lease::now_ms`]): it
    /// runs from the send, never from the answer (the manager counts from its grant, later).
    pub fn granted(&self, sent_ms: u64, lease_ms: u64) {
        let until = sent_ms.saturating_add(lease_ms.min(LEASE_MAX_MS));
        self.until_ms.fetch_max(until, Ordering::AcqRel);
    }

    /// A lease that never runs out (unit tests of other parts).
    #[cfg(test)]
    pub fn forever() -> Self {
        let l = Self::default();
        l.until_ms.store(u64::MAX, Ordering::Release);
        l
    }

    /// Ends the lease now (tests).
    #[cfg(test)]
    pub fn end(&self) {
        self.until_ms.store(0, Ordering::Release);
    }
}

/// Asks the manager for a lease every [`RENEW_MS`], for as long as the server runs.
pub async fn renew(node: std::sync::Arc<NodeShared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(RENEW_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refused = false;
    loop {
        tick.tick().await;
        let sent = node.lease.now_ms();
        let answer = tokio::time::timeout(
            Duration::from_millis(CALL_TIMEOUT_MS),
            node.client.lease(&node.me),
        )
        .await;
        match answer {
            Ok(Ok(ms)) => {
                if refused {
                    tracing::info!("read lease granted again");
                    refused = false;
                }
                node.lease.granted(sent, ms);
            }
            Ok(Err(e)) => {
                if !refused {
                    tracing::warn!(error = %e, "read lease not granted: reads of replicated extents are confirmed with the other copies until it is");
                    refused = true;
                }
            }
            Err(_) => {
                if !refused {
                    tracing::warn!(
                        "read lease call timed out: reads of replicated extents are confirmed with the other copies until a lease is granted"
                    );
                    refused = true;
                }
            }
        }
    }
}

/// Confirms a read of pool bytes `[pool_off, pool_off + len)` that this server has just read
/// from its own copy without a lease (see the module's comment). `Ok` at once for a copy of
/// a single-copy extent; an error the routing retry handles otherwise (a generation mismatch,
/// or a path error).
pub async fn confirm(node: &NodeShared, pool_off: u64, len: u64) -> Result<(), RouteError> {
    let map = node.map.load_full();
    let mut mine = None;
    for v in &map.volumes {
        for e in &v.extents {
            if let Some(r) = e.replicas.iter().find(|r| {
                r.server == node.me
                    && r.offset <= pool_off
                    && pool_off.saturating_add(len) <= r.offset.saturating_add(v.extent_size)
            }) {
                mine = Some((e, r.state));
            }
        }
    }
    let Some((extent, state)) = mine else {
        return Err(RouteError::PathError);
    };
    if extent.replicas.len() < 2 {
        return Ok(());
    }
    if state != ReplicaState::InSync {
        return Err(RouteError::PathError);
    }
    crate::metrics::count_read_confirmed();
    let deadline = node.forward_timeout();
    for r in &extent.replicas {
        if r.server == node.me || r.state != ReplicaState::InSync {
            continue;
        }
        let Some(s) = map.server(&r.server) else {
            continue;
        };
        if s.state == ServerState::Down {
            continue;
        }
        let one = async {
            let q = node.peers.polled(&s.id, s.internal).await?;
            q.read(
                (map.generation, 0),
                REPLICA_NSID,
                r.offset / u64::from(INTERNAL_BLOCK),
                1,
                INTERNAL_BLOCK,
            )
            .await
        };
        match tokio::time::timeout(deadline, one).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(peer = %s.id, error = %e, "read not confirmed by a copy");
                return Err(match e {
                    crate::initiator::InitiatorError::Generation {
                        server_generation, ..
                    } => {
                        // A copy with another map: ours may be old; ask for the current one
                        // (a routed read's retry waits for it; a peer's read is retried by
                        // its sender).
                        node.refresh.notify_one();
                        RouteError::Generation { server_generation }
                    }
                    _ => RouteError::PathError,
                });
            }
            Err(_) => {
                tracing::debug!(peer = %s.id, "read confirmation timed out");
                node.peers.drop_peer(&s.id);
                return Err(RouteError::PathError);
            }
        }
    }
    Ok(())
}
