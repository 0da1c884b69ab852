//! Copy-then-switch for extents this server owns and the map says are moving
//! (docs/cluster-protocol.md, "Moving an extent").
//!
//! While the map says `moving: {to}`, writes to the extent's pool range are recorded in a dirty
//! map ([`super::pool::DirtyRegion`]); the copier copies the whole extent to `to`, then only
//! what was written meanwhile, until a pass finds little left, and tells the manager. At the
//! switch ([`finish`], called with the install gate closed) the copier is stopped at a chunk
//! boundary (chunks it had taken but not copied are marked dirty again), the remaining dirty
//! chunks are copied, and tracking ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bitvec::prelude::{BitVec, Lsb0};
use manager::api::MoveReadyRequest;
use manager::map::{ClusterMap, Replica};

use super::NodeShared;
use super::node::{self as rules, COPY_NSID, policy};
use super::peers::INTERNAL_BLOCK;
use super::pool::{DirtyRegion, TRACK_CHUNK, read_pool};
use crate::initiator::InitiatorError;
use crate::subsystem::lock;

/// Bytes copied per write to the new owner (one MDTS).
pub const COPY_IO_MAX: u64 = 128 * 1024;
/// Dirty passes before the copier reports ready anyway (the final pass under the gate copies
/// whatever is left).
pub const PASSES_MAX: u32 = 16;
/// A pass that copied at most this many chunks counts as converged.
pub const CONVERGED_CHUNKS: usize = 64;

struct Active {
    region: Arc<DirtyRegion>,
    dest: Replica,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// Movers of one server, by (volume, extent).
#[derive(Default)]
pub struct Movers {
    active: std::sync::Mutex<HashMap<(String, usize), Active>>,
    /// One install at a time (installs and movers' start/stop agree on the map).
    pub install_lock: tokio::sync::Mutex<()>,
}

/// Starts copiers for extents this server owns that `map` says are moving; forgets the ones
/// that are no longer moving here (a move that was switched or cancelled).
pub fn sync(node: &Arc<NodeShared>, map: &ClusterMap) {
    let mut want: HashMap<(String, usize), (u64, u64, Replica)> = HashMap::new();
    // A server that does not serve (marked down, or catching up) copies nothing.
    let serving = node.admission.serving();
    for v in map.volumes.iter().filter(|_| serving) {
        for (i, e) in v.extents.iter().enumerate() {
            let (Some(owner), Some(mv)) = (e.replicas.first(), &e.moving) else {
                continue;
            };
            if owner.server != node.me {
                continue;
            }
            if let Some((_, len)) = v.extent_range(i) {
                want.insert((v.name.clone(), i), (owner.offset, len, mv.to.clone()));
            }
        }
    }
    let mut active = lock(&node.movers.active);
    active.retain(|k, a| {
        let keep = want.get(k).is_some_and(|(_, _, to)| *to == a.dest);
        if !keep {
            a.stop.store(true, Ordering::Release);
            a.task.abort();
            node.pool.0.untrack(&a.region);
        }
        keep
    });
    for (k, (off, len, dest)) in want {
        if active.contains_key(&k) {
            continue;
        }
        let region = node.pool.0.track(off, len);
        region.mark_all();
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(copier(
            Arc::clone(node),
            k.0.clone(),
            k.1,
            Arc::clone(&region),
            dest.clone(),
            Arc::clone(&stop),
        ));
        tracing::info!(volume = %k.0, extent = k.1, to = %dest.server, "extent copy started");
        active.insert(
            k,
            Active {
                region,
                dest,
                stop,
                task,
            },
        );
    }
}

async fn copier(
    node: Arc<NodeShared>,
    volume: String,
    extent: usize,
    region: Arc<DirtyRegion>,
    dest: Replica,
    stop: Arc<AtomicBool>,
) {
    let mut passes = 0u32;
    loop {
        let bits = region.take();
        let n = bits.count_ones();
        if copy(&node, &region, &bits, &dest, Some(&stop), false)
            .await
            .is_err()
        {
            if stop.load(Ordering::Acquire) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(policy::PASS_RETRY_MS)).await;
            continue;
        }
        passes += 1;
        if rules::converged(n, passes, CONVERGED_CHUNKS, PASSES_MAX) {
            break;
        }
    }
    tracing::info!(%volume, extent, passes, "extent copy converged");
    let req = MoveReadyRequest {
        server: node.me.clone(),
        volume: volume.clone(),
        extent,
        generation: node.registry.generation.current(),
    };
    // Keep telling the manager until it switches (or this mover is stopped).
    while !stop.load(Ordering::Acquire) {
        match node.client.move_ready(&req).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "move-ready not accepted yet");
                tokio::time::sleep(Duration::from_millis(policy::READY_RETRY_MS)).await;
            }
        }
    }
}

/// Why a copy did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyError {
    /// Try again later (the peer is unreachable, or kept answering stale/behind).
    Failed(String),
    /// The new owner refused the copy under the source rule: its map no longer names this
    /// server as the source of the move (switched or cancelled without us). Final.
    NotSource,
}

impl std::fmt::Display for CopyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Failed(e) => f.write_str(e),
            Self::NotSource => f.write_str("refused: this server is not the move's source"),
        }
    }
}

/// Copies the chunks set in `bits` of `region` to `dest`. With `stop`, it stops at a chunk
/// boundary when asked and marks what it had not copied dirty again.
async fn copy(
    node: &Arc<NodeShared>,
    region: &DirtyRegion,
    bits: &BitVec<u64, Lsb0>,
    dest: &Replica,
    stop: Option<&AtomicBool>,
    final_pass: bool,
) -> Result<(), CopyError> {
    let chunks_per_io = usize::try_from(COPY_IO_MAX / TRACK_CHUNK).unwrap_or(1);
    let mut from = 0usize;
    while let Some((c, end)) = rules::next_dirty_run(bits.len(), |i| bits[i], from, chunks_per_io) {
        if stop.is_some_and(|s| s.load(Ordering::Acquire)) {
            remark(region, bits, c);
            return Err(CopyError::Failed("stopped".to_string()));
        }
        let off = region.start + c as u64 * TRACK_CHUNK;
        let len = ((end - c) as u64 * TRACK_CHUNK).min(region.start + region.len - off);
        if let Err(e) = copy_range(
            node,
            off,
            len,
            dest.offset + (off - region.start),
            &dest.server,
            final_pass,
        )
        .await
        {
            tracing::warn!(error = %e, "extent copy I/O failed");
            remark(region, bits, c);
            return Err(e);
        }
        from = end;
    }
    Ok(())
}

/// Marks chunks `from..` of a taken map dirty again (they were not copied).
fn remark(region: &DirtyRegion, bits: &BitVec<u64, Lsb0>, from: usize) {
    for i in bits.iter_ones().filter(|i| *i >= from) {
        let off = region.start + i as u64 * TRACK_CHUNK;
        region.mark_range(off, TRACK_CHUNK);
    }
}

/// Copies one range to the new owner. `final_pass`: the copy runs inside an install (the
/// watch loop is busy with it), so instead of waiting for our own map to catch up, the write is
/// stamped with the generation the new owner reports — the protocol's rule for the final copy
/// ("stamped with the generation the target server still has").
async fn copy_range(
    node: &Arc<NodeShared>,
    pool_off: u64,
    len: u64,
    dest_off: u64,
    dest_server: &str,
    final_pass: bool,
) -> Result<(), CopyError> {
    let data = read_pool(&node.pool, pool_off, usize::try_from(len).unwrap_or(0))
        .await
        .map_err(|e| CopyError::Failed(e.to_string()))?;
    let mut backoff = Duration::from_millis(policy::COPY_BACKOFF_MIN_MS);
    let backoff_max = Duration::from_millis(policy::COPY_BACKOFF_MAX_MS);
    let mut stamp = node.registry.generation.current();
    for _ in 0..policy::COPY_TRIES {
        let map = node.map.load_full();
        let addr = map
            .server(dest_server)
            .map(|s| s.internal)
            .ok_or_else(|| CopyError::Failed(format!("server {dest_server} left the map")))?;
        let q = match node.peers.queue(dest_server, addr).await {
            Ok(q) => q,
            Err(e) => {
                node.peers.drop_peer(dest_server);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(backoff_max);
                tracing::debug!(error = %e, "copy: peer unreachable");
                continue;
            }
        };
        if !final_pass {
            stamp = node.registry.generation.current();
        }
        let g = stamp;
        match q
            .with_generation(g)
            .write(
                COPY_NSID,
                dest_off / u64::from(INTERNAL_BLOCK),
                INTERNAL_BLOCK,
                data.clone(),
                false,
            )
            .await
        {
            Ok(()) => return Ok(()),
            Err(InitiatorError::Generation {
                server_generation, ..
            }) => {
                match rules::on_mismatch(g, server_generation, final_pass) {
                    // Inside an install our own map cannot move: adopt the new owner's
                    // generation for the final copy and retry at once.
                    rules::OnMismatch::Adopt(theirs) => {
                        stamp = theirs;
                        continue;
                    }
                    rules::OnMismatch::Refresh(theirs) => {
                        node.refresh.notify_one();
                        node.registry.generation.wait_for(theirs, backoff * 4).await;
                    }
                    rules::OnMismatch::Backoff => tokio::time::sleep(backoff).await,
                }
            }
            Err(e) if e.is_connection_fatal() => {
                node.peers.drop_peer(dest_server);
                tokio::time::sleep(backoff).await;
            }
            Err(InitiatorError::Status(s)) if s.same_code(codec::nvme::Status::ACCESS_DENIED) => {
                return Err(CopyError::NotSource);
            }
            Err(e) => return Err(CopyError::Failed(e.to_string())),
        }
        backoff = (backoff * 2).min(backoff_max);
    }
    Err(CopyError::Failed(format!(
        "copy to {dest_server} kept failing"
    )))
}

/// The switch, on the old owner, with the install gate closed: stop the copier, copy what is
/// still dirty, stop tracking. `new` names the new owner. On failure nothing is lost: the region
/// stays tracked, the caller does not install the new map (and does not ack it), and the manager
/// sends it again, so the final copy is retried while the extent keeps being served here.
pub async fn finish(
    node: &Arc<NodeShared>,
    old: &ClusterMap,
    new: &ClusterMap,
    volume: &str,
    extent: usize,
) -> Result<(), ()> {
    let key = (volume.to_string(), extent);
    let taken = lock(&node.movers.active).remove(&key);
    let Some(dest) = new.owner(volume, extent).cloned() else {
        return Ok(());
    };
    let a = match taken {
        Some(a) => a,
        None => {
            // No copier state (this server restarted during the move, or the move started and
            // switched between two maps we did not see): what was written meanwhile is not
            // known, so the whole extent is copied.
            let (Some(v), Some(old_owner)) = (old.volume(volume), old.owner(volume, extent)) else {
                return Ok(());
            };
            let Some((_, len)) = v.extent_range(extent) else {
                return Ok(());
            };
            let region = node.pool.0.track(old_owner.offset, len);
            region.mark_all();
            Active {
                region,
                dest: dest.clone(),
                stop: Arc::new(AtomicBool::new(true)),
                task: tokio::spawn(async {}),
            }
        }
    };
    let Active {
        region, stop, task, ..
    } = a;
    stop.store(true, Ordering::Release);
    let _ = task.await;
    // The gate is closed: nothing writes the region now. Copy the rest until clean.
    for _ in 0..policy::FINAL_ROUNDS {
        let bits = region.take();
        if bits.not_any() {
            node.pool.0.untrack(&region);
            tracing::info!(volume, extent, to = %dest.server, "extent switched");
            return Ok(());
        }
        match copy(node, &region, &bits, &dest, None, true).await {
            Ok(()) => {}
            Err(CopyError::NotSource) => {
                // The new owner's map no longer names us as the source: the switch happened
                // without us (we were marked down). Our copy of the extent is obsolete.
                node.pool.0.untrack(&region);
                tracing::warn!(volume, extent, to = %dest.server,
                    "final copy refused: the move was switched without this server; \
                     dropping its copy");
                return Ok(());
            }
            Err(CopyError::Failed(_)) => {
                remark(&region, &bits, 0);
                tokio::time::sleep(Duration::from_millis(policy::FINAL_RETRY_MS)).await;
            }
        }
    }
    let left = region.take();
    if left.not_any() {
        node.pool.0.untrack(&region);
        return Ok(());
    }
    remark(&region, &left, 0);
    tracing::error!(volume, extent, to = %dest.server, "final copy failed; not installing, will retry");
    lock(&node.movers.active).insert(
        key,
        Active {
            region,
            dest,
            stop: Arc::new(AtomicBool::new(true)),
            task: tokio::spawn(async {}),
        },
    );
    Err(())
}
