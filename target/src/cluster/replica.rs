//! The primary's side of a replicated write (docs/replication.md, "The write path"): a write
//! to an extent this server is the primary of takes a range lock on the written blocks, runs
//! on this server's pool and is forwarded to every other copy that takes writes (internal
//! namespace [`node::REPLICA_NSID`], stamped with this server's generation), and completes
//! once this server's write and every `in_sync` copy's write succeeded. Both ways a write
//! reaches the primary use [`write`]: a piece of a host command received here
//! (`routed.rs`), and a piece routed here by another server (internal namespace
//! [`node::ROUTED_NSID`], whose volume is a [`FanoutPool`]). Which copies a range has is the
//! node's rule ([`node::Ownership::fanout`]); an extent with one copy is written as before,
//! with no lock.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;

use super::NodeShared;
use super::node::{self, Copy};
use super::peers::INTERNAL_BLOCK;
use crate::initiator::InitiatorError;
use crate::subsystem::lock;
use crate::subsystem::volume::{IoFuture, IoResult, NoPath, Volume, VolumeError};

/// Pause between tries of a replica write the copy answered with a generation mismatch or
/// could not be reached (each try is bounded by the forwarding deadline as a whole).
const REPLICA_RETRY_MS: u64 = 20;

/// What one write does to its blocks.
#[derive(Clone)]
pub enum WriteOp {
    /// Write these bytes (FUA: durably before completion, on every copy).
    Data { data: Bytes, fua: bool },
    /// Write zeroes.
    Zeroes,
    /// Deallocate (reads back zeros).
    Deallocate,
}

/// Ranges of this server's pool held by writes in flight to replicated extents: an
/// overlapping write waits until the holder has completed on every copy, so every copy
/// applies overlapping writes in the same order.
#[derive(Default)]
pub struct RangeLocks {
    held: Mutex<Vec<(u64, u64)>>,
    released: tokio::sync::Notify,
}

/// One held range, released when dropped.
pub struct RangeGuard<'a> {
    locks: &'a RangeLocks,
    range: (u64, u64),
}

impl RangeLocks {
    /// Takes pool bytes `[start, end)`, waiting while an overlapping range is held.
    pub async fn lock(&self, start: u64, end: u64) -> RangeGuard<'_> {
        loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            // Registered before the check: a release between the check and the await wakes us.
            notified.as_mut().enable();
            {
                let mut held = lock(&self.held);
                if !held.iter().any(|&(s, e)| s < end && start < e) {
                    held.push((start, end));
                    return RangeGuard {
                        locks: self,
                        range: (start, end),
                    };
                }
            }
            notified.await;
        }
    }

    /// Ranges held now (tests).
    pub fn held(&self) -> usize {
        lock(&self.held).len()
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut held = lock(&self.locks.held);
        if let Some(i) = held.iter().position(|r| *r == self.range) {
            held.swap_remove(i);
        }
        drop(held);
        self.locks.released.notify_waiters();
    }
}

/// Runs `op` on this server's pool bytes `[off, off + len)`: on the pool alone when they are
/// not in an extent this server is the primary of with other copies, else under the range
/// lock on every copy that takes writes. Fails with a retryable path error
/// ([`VolumeError::NoPath`]) when an `in_sync` copy's write failed or did not complete before
/// the forwarding deadline: marking that copy stale is not done yet (docs/replication.md,
/// "Status").
pub async fn write(node: &NodeShared, off: u64, len: u64, op: WriteOp) -> IoResult<()> {
    let Some(fanout) = node.admission.ownership().fanout(off, len) else {
        return own(node, off, len, &op).await;
    };
    let timeout = node.forward_timeout();
    let deadline = tokio::time::Instant::now() + timeout;
    let end = off.saturating_add(len);
    let Ok(_guard) = tokio::time::timeout_at(deadline, node.replica_locks.lock(off, end)).await
    else {
        tracing::warn!(
            off,
            len,
            "replicated write: the range lock was not free in time"
        );
        return Err(VolumeError::NoPath(NoPath::MapSettling));
    };
    // Forwards carry an expiry too: past it, a copy does not start the write. (While this
    // server stays the primary, a late copy write is still ordered by the range lock.)
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    let expires = node::expires_at(super::wall_clock_ms(), timeout_ms);
    let within = off - fanout.extent.0;
    let op = &op;
    let forwards = fanout.copies.iter().map(|c| async move {
        let r = forward(node, c, c.offset + within, len, op, deadline, expires).await;
        (c, r)
    });
    let (mine, theirs) = futures::join!(own(node, off, len, op), join_all(forwards));
    mine?;
    let mut failed = None;
    for (c, r) in theirs {
        if let Err(e) = r {
            tracing::warn!(copy = %c.server, in_sync = c.counts, error = %e,
                "replica write failed");
            if c.counts {
                failed = Some(e);
            }
        }
    }
    failed.map_or(Ok(()), Err)
}

/// `op` on this server's own pool.
fn own(node: &NodeShared, off: u64, len: u64, op: &WriteOp) -> IoFuture<()> {
    match op {
        WriteOp::Data { data, fua } => node.pool.write(off, data.clone(), *fua),
        WriteOp::Zeroes => node.pool.write_zeroes(off, len),
        WriteOp::Deallocate => node.pool.deallocate(off, len),
    }
}

/// Sends `op` to copy `c` at `pool_off` of its pool, retrying (with the current generation)
/// after a generation mismatch or a lost connection, until `deadline`.
async fn forward(
    node: &NodeShared,
    c: &Copy,
    pool_off: u64,
    len: u64,
    op: &WriteOp,
    deadline: tokio::time::Instant,
    expires: u64,
) -> IoResult<()> {
    let mut last = VolumeError::NoPath(NoPath::Unreachable);
    loop {
        let Some(addr) = node.map.load().server(&c.server).map(|s| s.internal) else {
            return Err(VolumeError::NoPath(NoPath::Unmapped));
        };
        let generation = node.registry.generation.current();
        let once = async {
            let q = node.peers.queue(&c.server, addr).await?;
            let s = q.with_generation(generation).expiring(expires);
            let lba = pool_off / u64::from(INTERNAL_BLOCK);
            match op {
                WriteOp::Data { data, fua } => {
                    s.write(node::REPLICA_NSID, lba, INTERNAL_BLOCK, data.clone(), *fua)
                        .await
                }
                WriteOp::Zeroes | WriteOp::Deallocate => {
                    let deac = matches!(op, WriteOp::Deallocate);
                    // Write Zeroes NLB is 16 bits: split large ranges.
                    let max = u64::from(crate::initiator::NLB_MAX);
                    let mut left = len / u64::from(INTERNAL_BLOCK);
                    let mut at = lba;
                    while left > 0 {
                        let n = left.min(max);
                        let nlb = u32::try_from(n).unwrap_or(u32::MAX);
                        s.write_zeroes(node::REPLICA_NSID, at, nlb, deac).await?;
                        left -= n;
                        at += n;
                    }
                    Ok(())
                }
            }
        };
        let retry = match tokio::time::timeout_at(deadline, once).await {
            Err(_) => {
                // No answer in time: the connection is given up (its commands with it).
                node.peers.drop_peer(&c.server);
                return Err(last);
            }
            Ok(Ok(())) => return Ok(()),
            Ok(Err(InitiatorError::Generation {
                server_generation, ..
            })) => {
                last = VolumeError::NoPath(NoPath::MapSettling);
                if server_generation > generation {
                    // We are behind: fetch the map now and wait for it (bounded).
                    node.refresh.notify_one();
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    node.registry
                        .generation
                        .wait_for(server_generation, left.min(Duration::from_millis(500)))
                        .await;
                }
                // A newer map may have made this write not ours to forward any more.
                if !still_primary(node, c) {
                    return Err(last);
                }
                true
            }
            Ok(Err(InitiatorError::Status(s))) => {
                // Refused (Access Denied: not its primary in its map) or failed on the copy.
                tracing::debug!(copy = %c.server, status = ?s, "replica write refused");
                return Err(VolumeError::NoPath(NoPath::MapSettling));
            }
            Ok(Err(_)) => {
                node.peers.drop_peer(&c.server);
                last = VolumeError::NoPath(NoPath::Unreachable);
                true
            }
        };
        if !retry || tokio::time::Instant::now() >= deadline {
            return Err(last);
        }
        let until =
            deadline.min(tokio::time::Instant::now() + Duration::from_millis(REPLICA_RETRY_MS));
        tokio::time::sleep_until(until).await;
        if tokio::time::Instant::now() >= deadline {
            return Err(last);
        }
    }
}

/// Whether copy `c` is still one this server forwards writes to under its current map.
fn still_primary(node: &NodeShared, c: &Copy) -> bool {
    let map = node.map.load();
    map.volumes.iter().any(|v| {
        v.extents.iter().any(|e| {
            map.write_owner(e).is_some_and(|o| o.server == node.me)
                && e.replicas
                    .iter()
                    .any(|r| r.server == c.server && r.offset == c.offset)
        })
    })
}

/// The volume of internal namespace [`node::ROUTED_NSID`]: this server's pool, whose writes
/// to extents this server is the primary of reach every copy ([`write`]). Reads and flushes
/// are the pool's.
pub struct FanoutPool {
    node: Weak<NodeShared>,
    pool: super::pool::PoolVolume,
}

impl FanoutPool {
    /// `node`'s pool, replicated (weak: the node owns the registry that owns this volume).
    pub fn new(node: &Arc<NodeShared>) -> Self {
        Self {
            node: Arc::downgrade(node),
            pool: node.pool.clone(),
        }
    }

    fn run(&self, off: u64, len: u64, op: WriteOp) -> IoFuture<()> {
        let Some(node) = self.node.upgrade() else {
            return IoFuture::Boxed(Box::pin(async {
                Err(VolumeError::NoPath(NoPath::Unreachable))
            }));
        };
        IoFuture::Boxed(Box::pin(async move { write(&node, off, len, op).await }))
    }
}

impl Volume for FanoutPool {
    fn len_bytes(&self) -> u64 {
        self.pool.len_bytes()
    }

    fn volatile_write_cache(&self) -> bool {
        self.pool.volatile_write_cache()
    }

    fn kind(&self) -> &'static str {
        self.pool.kind()
    }

    fn read(&self, offset: u64, buf: Vec<u8>) -> IoFuture<Bytes> {
        self.pool.read(offset, buf)
    }

    fn write(&self, offset: u64, data: Bytes, fua: bool) -> IoFuture<()> {
        let len = data.len() as u64;
        self.run(offset, len, WriteOp::Data { data, fua })
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> IoFuture<()> {
        self.run(offset, len, WriteOp::Zeroes)
    }

    fn deallocate(&self, offset: u64, len: u64) -> IoFuture<()> {
        self.run(offset, len, WriteOp::Deallocate)
    }

    fn flush(&self) -> IoFuture<()> {
        self.pool.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_overlapping_range_waits_for_the_holder_and_a_disjoint_one_does_not() {
        let locks = Arc::new(RangeLocks::default());
        let first = locks.lock(0, 4096).await;
        // Disjoint: at once.
        let other = locks.lock(4096, 8192).await;
        assert_eq!(locks.held(), 2);
        let l2 = Arc::clone(&locks);
        let waiter = tokio::spawn(async move {
            let _g = l2.lock(1024, 2048).await;
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished(), "an overlapping range must wait");
        drop(first);
        tokio::time::timeout(Duration::from_secs(30), waiter)
            .await
            .expect("released")
            .expect("task");
        drop(other);
        assert_eq!(locks.held(), 0);
    }
}
