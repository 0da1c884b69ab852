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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use manager::api::ReplicaFailedRequest;
use manager::map::{ClusterMap, ExtentEntry, ReplicaState, ServerState};

use super::NodeShared;
use super::node::{self, Copy};
use super::peers::INTERNAL_BLOCK;
use super::rebuild::Tracked;
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
/// applies overlapping writes in the same order. Overlapping requests are granted in the order
/// they came: a wide request (the end of a rebuild locks its whole extent) is not starved by
/// a stream of narrow ones, and a narrow one that comes after it waits for it.
#[derive(Default)]
pub struct RangeLocks {
    state: Mutex<LockState>,
    released: tokio::sync::Notify,
}

#[derive(Default)]
struct LockState {
    held: Vec<(u64, u64)>,
    /// Requests not granted yet: (ticket, start, end), in ticket order.
    waiting: Vec<(u64, u64, u64)>,
    next_ticket: u64,
}

/// One held range, released when dropped.
pub struct RangeGuard<'a> {
    locks: &'a RangeLocks,
    range: (u64, u64),
}

/// A request in the queue; leaves it when dropped (granted, or given up by a timeout).
struct Waiting<'a> {
    locks: &'a RangeLocks,
    ticket: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut st = lock(&self.locks.state);
        let before = st.waiting.len();
        st.waiting.retain(|w| w.0 != self.ticket);
        let gone = st.waiting.len() != before;
        drop(st);
        if gone {
            // Requests behind this one may go now.
            self.locks.released.notify_waiters();
        }
    }
}

impl RangeLocks {
    /// Takes pool bytes `[start, end)`, waiting while an overlapping range is held or was
    /// requested earlier.
    pub async fn lock(&self, start: u64, end: u64) -> RangeGuard<'_> {
        let overlaps = |s: u64, e: u64| s < end && start < e;
        let ticket = {
            let mut st = lock(&self.state);
            let ticket = st.next_ticket;
            st.next_ticket += 1;
            st.waiting.push((ticket, start, end));
            ticket
        };
        let queued = Waiting {
            locks: self,
            ticket,
        };
        loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            // Registered before the check: a release between the check and the await wakes us.
            notified.as_mut().enable();
            {
                let mut st = lock(&self.state);
                let free = !st.held.iter().any(|&(s, e)| overlaps(s, e))
                    && !st
                        .waiting
                        .iter()
                        .any(|&(t, s, e)| t < ticket && overlaps(s, e));
                if free {
                    st.waiting.retain(|w| w.0 != ticket);
                    st.held.push((start, end));
                    drop(st);
                    // Already out of the queue: its drop has nothing to do.
                    drop(queued);
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
        lock(&self.state).held.len()
    }

    /// Requests waiting now (tests).
    pub fn waiting(&self) -> usize {
        lock(&self.state).waiting.len()
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut st = lock(&self.locks.state);
        if let Some(i) = st.held.iter().position(|r| *r == self.range) {
            st.held.swap_remove(i);
        }
        drop(st);
        self.locks.released.notify_waiters();
    }
}

/// Runs `op` on this server's pool bytes `[off, off + len)`, as one view of the installed map
/// says ([`path`]): on the pool alone when this server orders the range's writes and no other
/// copy takes them or has a dirty map (every volume with one copy); under the range lock on
/// every copy that takes writes when it orders them and other copies do; not at all when it
/// does not order them (a map installed since the write was admitted made another copy the
/// primary): a retryable path error, and the host's retry goes to the new primary. The
/// decision is taken again from a fresh view once the lock is held.
///
/// A copy whose write fails (an error, a refusal, a lost connection, or no answer within
/// [`replica_timeout`]) is reported to the manager (`POST /v1/replica-failed`), and this
/// write waits, still holding the lock, until this server has installed a map in which that
/// copy is not `in_sync`; it then completes once every copy `in_sync` in that map has it
/// (sending it to one that has not). Past the forwarding deadline it fails with a retryable
/// path error ([`VolumeError::NoPath`]), as does a write whose extent this server is no
/// longer the primary of (docs/replication.md, "Failure").
///
/// Every copy that does not take the write has it in its dirty map before the write completes:
/// a skipped copy as soon as the lock is held, a copy whose forward failed as soon as it
/// failed. A write whose forward to a `rebuilding` copy failed is re-checked the same way as
/// one whose `in_sync` copy failed, once this server has installed the outcome of any
/// rebuild-done report of that copy that may be pending (docs/replication.md, "The end of a
/// rebuild").
pub async fn write(node: &NodeShared, off: u64, len: u64, op: WriteOp) -> IoResult<()> {
    match path(node, off, len) {
        Path::Alone => return own(node, off, len, &op).await,
        Path::NotMine => return Err(not_mine(off, len)),
        Path::Locked(_) => {}
    }
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
    // Decided again, from one view, now that the lock is held: a map installed while this
    // write waited for it decides (a copy that turned `rebuilding` meanwhile gets this write;
    // one that made another copy the primary leaves this write not ours to complete).
    let fanout = match path(node, off, len) {
        Path::NotMine => return Err(not_mine(off, len)),
        Path::Alone => None,
        Path::Locked(f) => f,
    };
    // The copies this write skips (`stale`, or on a server marked down) have it in their
    // dirty maps before anything is sent: a rebuild that checks its map from now on sees it.
    let sent: Vec<CopyKey> = fanout.as_ref().map_or_else(Vec::new, |f| {
        f.copies
            .iter()
            .map(|c| (c.server.clone(), c.offset))
            .collect()
    });
    node.rebuilds.missed(off, len, &sent, &[]);
    let mut acked = Vec::new();
    let mut failed = Vec::new();
    let result = match &fanout {
        None => own(node, off, len, &op).await,
        Some(f) => {
            fan_out(
                node,
                (off, len, f),
                &op,
                (deadline, timeout),
                (&mut acked, &mut failed),
            )
            .await
        }
    };
    // Still under the lock: every copy that did not take this write has it in its dirty map
    // (a rebuild copies it), whatever the outcome (this server's copy may have it).
    if let Some(f) = &fanout {
        let failed: Vec<_> = failed
            .into_iter()
            .map(|k| (f.extent.0, f.extent.1 - f.extent.0, k))
            .collect();
        node.rebuilds.missed(off, len, &acked, &failed);
    } else {
        node.rebuilds.missed(off, len, &[], &[]);
    }
    result
}

/// [`write`] of an extent with other copies, the range lock held: this server's copy and
/// every copy of `f` at once; the copies that took it are added to `acked`, the `in_sync`
/// ones whose write failed to `failed`.
async fn fan_out(
    node: &NodeShared,
    (off, len, f): (u64, u64, &node::Fanout),
    op: &WriteOp,
    (deadline, timeout): (tokio::time::Instant, Duration),
    (acked, failed): (&mut Vec<CopyKey>, &mut Vec<CopyKey>),
) -> IoResult<()> {
    // Forwards carry an expiry too: past it, a copy does not start the write. (While this
    // server stays the primary, a late copy write is still ordered by the range lock.)
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    let expires = node::expires_at(super::wall_clock_ms(), timeout_ms);
    // A copy that has not answered by then is reported, leaving time to install the map that
    // takes it out of the write set before the deadline.
    let copy_deadline = deadline.min(tokio::time::Instant::now() + replica_timeout(timeout));
    let within = off - f.extent.0;
    // The dirty maps of the `rebuilding` copies, taken now (under the lock): a failed
    // forward to one looks at whether a rebuild-done report of it may be pending.
    let tracked: Vec<Option<Arc<Tracked>>> = f
        .copies
        .iter()
        .map(|c| {
            (!c.counts)
                .then(|| {
                    node.rebuilds
                        .find(f.extent.0, &(c.server.clone(), c.offset))
                })
                .flatten()
        })
        .collect();
    let ext = (f.extent.0, f.extent.1 - f.extent.0);
    let forwards = f.copies.iter().map(|c| async move {
        let r = forward(node, c, c.offset + within, len, op, copy_deadline, expires).await;
        if r.is_err() {
            // Marked at once: before this write completes, and before a rebuild of the copy
            // can take its last look at the dirty map.
            node.rebuilds
                .failed(off, len, &(ext.0, ext.1, (c.server.clone(), c.offset)));
        }
        (c, r)
    });
    let (mine, theirs) = futures::join!(own(node, off, len, op), join_all(forwards));
    let mut newly_failed = Vec::new();
    let mut lagging = Vec::new();
    let mut lagging_tracked = Vec::new();
    for ((c, r), t) in theirs.into_iter().zip(tracked) {
        match r {
            Ok(()) => acked.push((c.server.clone(), c.offset)),
            Err(e) => {
                tracing::warn!(copy = %c.server, in_sync = c.counts, error = %e,
                    "replica write failed");
                if c.counts {
                    newly_failed.push((c.server.clone(), c.offset));
                } else {
                    lagging.push(c.server.clone());
                    lagging_tracked.extend(t);
                }
            }
        }
    }
    failed.extend(newly_failed.iter().cloned());
    // A rebuilding copy that failed has the write in its dirty map (the caller marks it); it
    // is reported too, so that a dead server's rebuilding copy leaves the fan-out (the manager
    // marks it stale only when its server is gone) instead of costing every write a timeout.
    if !lagging.is_empty() {
        let map = node.map.load_full();
        if let Some((volume, index, _)) = extent_at(&map, &node.me, off) {
            for server in &lagging {
                report(node, volume, index, server, map.generation, deadline).await;
            }
        }
    }
    mine?;
    if !lagging.is_empty() {
        // Not acknowledged on the strength of this map alone: the copy may have been marked
        // `in_sync` (or made the primary) by the manager meanwhile. Once any rebuild-done
        // report of it has its outcome installed here, the same re-check as for a failed
        // `in_sync` copy below decides (docs/replication.md, "The end of a rebuild").
        promotions_settled(node, &lagging_tracked, deadline).await?;
    }
    if newly_failed.is_empty() && lagging.is_empty() {
        return Ok(());
    }
    out_of_write_set(
        node,
        (off, len, within),
        op,
        (acked, newly_failed),
        (deadline, expires),
    )
    .await
}

/// Waits until this server has installed the outcome of every rebuild-done report of the
/// copies `tracked` that may be pending ([`Tracked::promotion_settled_at`]); past `deadline`,
/// a retryable path error.
async fn promotions_settled(
    node: &NodeShared,
    tracked: &[Arc<Tracked>],
    deadline: tokio::time::Instant,
) -> IoResult<()> {
    loop {
        let need = tracked
            .iter()
            .map(|t| t.promotion_settled_at())
            .max()
            .unwrap_or(0);
        let installed = node.registry.generation.current();
        if installed >= need {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            tracing::warn!(
                installed,
                "replicated write: a rebuilding copy missed it and its rebuild-done report \
                 has no known outcome before the deadline"
            );
            return Err(VolumeError::NoPath(NoPath::MapSettling));
        }
        node.registry
            .generation
            .wait_for(
                need.min(installed.saturating_add(1)),
                left.min(Duration::from_millis(100)),
            )
            .await;
    }
}

/// How a write of this server's pool bytes `[off, off + len)` runs, as one view of the
/// installed map says ([`path`]).
enum Path {
    /// This server orders the range's writes, and no other copy takes them or has a dirty
    /// map: this server's pool alone, no range lock (every volume with one copy).
    Alone,
    /// This server orders the range's writes and other copies take them (`Some`: where to
    /// send them) or have a dirty map: under the range lock.
    Locked(Option<node::Fanout>),
    /// This server does not order the range's writes (another copy is the primary, or this
    /// server serves nothing): the write must not run here.
    NotMine,
}

/// [`Path`] of a write of pool bytes `[off, off + len)`: whether this server orders them and
/// where they go besides its pool, both from the same view of the installed map (its
/// [`node::Ownership`], loaded once), then whether a dirty map covers them.
fn path(node: &NodeShared, off: u64, len: u64) -> Path {
    let view = node.admission.ownership();
    if !orders(&view, &node.me, off, len) {
        return Path::NotMine;
    }
    match view.fanout(off, len) {
        Some(f) => Path::Locked(Some(f)),
        None if node.rebuilds.tracks(off, len) => Path::Locked(None),
        None => Path::Alone,
    }
}

/// Whether `view` names this server `me` the one that orders the writes of pool bytes
/// `[off, off + len)` (the primary of their extent, or its owner with one copy) while it
/// serves: the rule a routed write is admitted by ([`node::Ownership::admit`]).
fn orders(view: &node::Ownership, me: &str, off: u64, len: u64) -> bool {
    view.admit(me, node::Via::Routed, (off, len.max(1)), true)
        .is_ok()
}

/// The error of a write to a range this server does not order (any more): retryable, the
/// host's retry goes to the primary of its map.
fn not_mine(off: u64, len: u64) -> VolumeError {
    tracing::warn!(off, len, "replicated write: this server is not the primary");
    VolumeError::NoPath(NoPath::MapSettling)
}

/// One copy: (server, offset of the extent in its pool).
pub(super) type CopyKey = (String, u64);

/// How long the primary waits for a copy's answer before it reports the copy: 2 s, or less
/// with a short forwarding deadline (half of it), so that the report and the new map fit in.
pub fn replica_timeout(forward: Duration) -> Duration {
    REPLICA_TIMEOUT.min(forward / 2)
}

/// Default bound on a copy's answer to a replica write.
pub const REPLICA_TIMEOUT: Duration = Duration::from_secs(2);

/// After copies in `failed` did not take the write (`acked` did): reports each, waits for a
/// map where none of them is `in_sync`, sends the write to any `in_sync` copy of that map that
/// does not have it, and completes once all have it; or fails at `deadline`.
async fn out_of_write_set(
    node: &NodeShared,
    (off, len, within): (u64, u64, u64),
    op: &WriteOp,
    (acked, mut failed): (&mut Vec<CopyKey>, Vec<CopyKey>),
    (deadline, expires): (tokio::time::Instant, u64),
) -> IoResult<()> {
    let settling = || VolumeError::NoPath(NoPath::MapSettling);
    loop {
        let map = node.map.load_full();
        let generation = map.generation;
        let (volume, index, ext) = primary_or_leave(node, &map, off, generation).await?;
        // The copies this map counts for the ack that do not have the write yet.
        let missing: Vec<CopyKey> = ext
            .replicas
            .iter()
            .filter(|r| r.server != node.me && r.state == ReplicaState::InSync)
            .filter(|r| {
                map.server(&r.server)
                    .is_some_and(|s| s.state != ServerState::Down)
            })
            .map(|r| (r.server.clone(), r.offset))
            .filter(|k| !acked.contains(k))
            .collect();
        if missing.is_empty() {
            tracing::info!(
                volume,
                extent = index,
                generation,
                "replicated write completed without the copies out of the write set"
            );
            return Ok(());
        }
        let mut waiting = false;
        for k in missing {
            if failed.contains(&k) {
                report(node, volume, index, &k.0, generation, deadline).await;
                waiting = true;
                continue;
            }
            // In sync in this map and never sent (or sent to an older placement): send now.
            let c = Copy {
                server: k.0.clone(),
                offset: k.1,
                counts: true,
            };
            let copy_deadline =
                deadline.min(tokio::time::Instant::now() + replica_timeout(node.forward_timeout()));
            match forward(node, &c, k.1 + within, len, op, copy_deadline, expires).await {
                Ok(()) => acked.push(k),
                Err(e) => {
                    tracing::warn!(copy = %c.server, error = %e, "replica write failed");
                    failed.push(k);
                    waiting = true;
                }
            }
        }
        if waiting
            && let Some(next) = node.installing.load_full()
            && next.generation > generation
        {
            // The map this server is installing closed its gate, so it is not installed
            // before this write leaves, and no newer one either: a write it no longer leads
            // would wait out its deadline (the manager refuses its report for that reason).
            // It leaves now, as it would with that map installed.
            primary_or_leave(node, &next, off, generation).await?;
        }
        if waiting {
            // The manager's answer comes back as a new generation on the watch stream.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    volume,
                    extent = index,
                    "replicated write: no map without the failed copy before the deadline"
                );
                return Err(settling());
            }
            node.registry
                .generation
                .wait_for(generation + 1, left.min(Duration::from_millis(100)))
                .await;
        }
    }
}

/// The extent at pool offset `off` if `map` names this server its primary. Otherwise the write
/// leaves with a retryable error; when `map` keeps this server's copy, after a copies-diverged
/// report stamped with `generation` (the installed map's): this copy has the write and some
/// copy does not, and the new primary has no record of it, so the manager has every other copy
/// rebuilt whole from the primary (docs/replication.md, "A primary that loses the role
/// mid-write"). A map that drops this copy rebuilds the others from the new primary by itself
/// (the drop of a primary: "Moving a copy").
async fn primary_or_leave<'m>(
    node: &NodeShared,
    map: &'m ClusterMap,
    off: u64,
    generation: u64,
) -> IoResult<(&'m str, usize, &'m ExtentEntry)> {
    let Some((volume, index, ext)) = extent_at(map, &node.me, off) else {
        return Err(VolumeError::NoPath(NoPath::MapSettling));
    };
    if map.primary(ext).is_none_or(|p| p.server != node.me) {
        tracing::warn!(
            volume,
            extent = index,
            map_generation = map.generation,
            "replicated write: no longer the primary"
        );
        report_diverged(node, volume, index, generation).await;
        return Err(VolumeError::NoPath(NoPath::MapSettling));
    }
    Ok((volume, index, ext))
}

/// The extent this server holds a copy of at pool offset `off`: (volume, index, extent).
fn extent_at<'m>(
    map: &'m ClusterMap,
    me: &str,
    off: u64,
) -> Option<(&'m str, usize, &'m ExtentEntry)> {
    map.volumes.iter().find_map(|v| {
        v.extents.iter().enumerate().find_map(|(i, e)| {
            e.replicas
                .iter()
                .any(|r| r.server == me && r.offset <= off && off - r.offset < v.extent_size)
                .then_some((v.name.as_str(), i, e))
        })
    })
}

/// (volume, extent index, copy's server).
type ReportKey = (String, usize, String);

/// Failed copies reported to the manager: one report per (volume, extent, copy's server)
/// and generation, and none within [`REPORT_GAP`] of the previous one for the same copy.
#[derive(Default)]
pub struct Reports {
    sent: Mutex<HashMap<ReportKey, (u64, std::time::Instant)>>,
    /// Copies-diverged reports this server sent as a copy that refused a stale replica write:
    /// (volume, extent) → the map generation of the refusal (one report per pair).
    diverged: Mutex<HashMap<(String, usize), u64>>,
    /// Peers last reported unreachable, and when.
    unreachable: Mutex<HashMap<String, std::time::Instant>>,
}

/// Least time between two `server-unreachable` reports of the same peer.
const UNREACHABLE_GAP: Duration = Duration::from_secs(1);

/// Tells the manager (in the background, at most once per [`UNREACHABLE_GAP`] per peer) that
/// a command forwarded to `server` was lost or not answered in time. The manager marks
/// `server` down only if it has lost that server's watch stream too (docs/replication.md,
/// "Failover"); the next map then names the next copy as the primary of its extents.
pub fn report_unreachable(node: &Arc<NodeShared>, server: &str) {
    {
        let mut last = lock(&node.replica_reports.unreachable);
        let now = std::time::Instant::now();
        if last
            .get(server)
            .is_some_and(|at| now.duration_since(*at) < UNREACHABLE_GAP)
        {
            return;
        }
        last.retain(|_, at| now.duration_since(*at) < Duration::from_secs(60));
        last.insert(server.to_owned(), now);
    }
    let node = Arc::clone(node);
    let req = manager::api::ServerUnreachableRequest {
        from: node.me.clone(),
        server: server.to_owned(),
    };
    tokio::spawn(async move {
        match tokio::time::timeout(Duration::from_secs(5), node.client.server_unreachable(&req))
            .await
        {
            Ok(Ok(m)) => {
                let down = m
                    .server(&req.server)
                    .is_some_and(|s| s.state == ServerState::Down);
                tracing::info!(peer = %req.server, down, generation = m.generation,
                    "reported an unreachable peer");
                if down {
                    node.refresh.notify_one();
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(peer = %req.server, error = %e, "server-unreachable report failed");
            }
            Err(_) => {
                tracing::warn!(peer = %req.server, "server-unreachable report: no answer");
            }
        }
    });
}

/// Least time between two reports of the same copy.
const REPORT_GAP: Duration = Duration::from_millis(500);

/// Reports `server`'s copy of extent `index` of `volume` to the manager (unless a report of
/// it was sent at this generation or very recently), bounded by `deadline`.
pub(super) async fn report(
    node: &NodeShared,
    volume: &str,
    index: usize,
    server: &str,
    generation: u64,
    deadline: tokio::time::Instant,
) {
    let key = (volume.to_owned(), index, server.to_owned());
    {
        let mut sent = lock(&node.replica_reports.sent);
        let now = std::time::Instant::now();
        if let Some((g, at)) = sent.get(&key)
            && (*g >= generation || now.duration_since(*at) < REPORT_GAP)
        {
            return;
        }
        // Bounded: entries of copies reported long ago go.
        sent.retain(|_, (_, at)| now.duration_since(*at) < Duration::from_secs(60));
        sent.insert(key, (generation, now));
    }
    let req = ReplicaFailedRequest {
        primary: node.me.clone(),
        volume: volume.to_owned(),
        extent: index,
        server: server.to_owned(),
        generation,
    };
    tracing::warn!(volume, extent = index, copy = %server, generation,
        "reporting a failed copy to the manager");
    match tokio::time::timeout_at(deadline, node.client.replica_failed(&req)).await {
        Ok(Ok(m)) => {
            tracing::info!(volume, extent = index, copy = %server, generation = m.generation,
                "the manager answered the failed copy's report");
            node.refresh.notify_one();
        }
        Ok(Err(e)) => {
            tracing::warn!(volume, extent = index, copy = %server, error = %e,
                "replica-failed report refused or lost");
            // A later failed write may report again, after the gap.
            lock(&node.replica_reports.sent).insert(
                (volume.to_owned(), index, server.to_owned()),
                (0, std::time::Instant::now()),
            );
        }
        Err(_) => {
            tracing::warn!(volume, extent = index, copy = %server,
                "replica-failed report: no answer before the deadline");
            // Unanswered is not sent: a later failed write reports again, after the gap.
            lock(&node.replica_reports.sent).insert(
                (volume.to_owned(), index, server.to_owned()),
                (0, std::time::Instant::now()),
            );
        }
    }
}

/// How long a write that lost the primary role waits for the manager to take its
/// copies-diverged report (the write fails either way; its range stays locked meanwhile).
const DIVERGED_CALL: Duration = Duration::from_secs(2);

/// `POST /v1/copies-diverged` for extent `index` of `volume`: a write this server applied to
/// its own copy as the primary failed after it lost the role. Waits at most [`DIVERGED_CALL`]
/// (a lost report is logged; the manager answers a repeated one without a new generation).
async fn report_diverged(node: &NodeShared, volume: &str, index: usize, generation: u64) {
    let req = manager::api::CopiesDivergedRequest {
        server: node.me.clone(),
        volume: volume.to_owned(),
        extent: index,
        generation,
    };
    match tokio::time::timeout(DIVERGED_CALL, node.client.copies_diverged(&req)).await {
        Ok(Ok(m)) => {
            tracing::info!(
                volume,
                extent = index,
                generation = m.generation,
                "the manager answered the copies-diverged report"
            );
            node.refresh.notify_one();
        }
        Ok(Err(e)) => {
            tracing::warn!(volume, extent = index, error = %e,
                "copies-diverged report refused or lost: the copies may differ on blocks whose last write failed");
        }
        Err(_) => {
            tracing::warn!(
                volume,
                extent = index,
                "copies-diverged report: no answer in time: the copies may differ on blocks whose last write failed"
            );
        }
    }
}

/// A replica write this server refused because its stamp was older than this server's map
/// (`Admission::refused_stale`).
#[derive(Debug)]
pub struct StaleCopyWrite {
    /// The sender's server id.
    pub sender: String,
    /// Where it wrote: this server's pool offset.
    pub offset: u64,
    /// Its stamp.
    pub stamp: u64,
}

/// Handles the replica writes refused as stale ([`refused_stale`]) until the node goes away.
pub async fn stale_copy_writes(
    node: Weak<NodeShared>,
    mut rx: tokio::sync::mpsc::Receiver<StaleCopyWrite>,
) {
    while let Some(w) = rx.recv().await {
        let Some(n) = node.upgrade() else {
            return;
        };
        refused_stale(&n, &w);
    }
}

/// Whether this server `me`, having refused a replica write of `sender` to its pool offset
/// `off` as stale under `map` (its installed map, newer than the write's stamp), reports
/// copies-diverged for that extent: `Some((volume, extent))` when `map` has this server's copy
/// of the extent `in_sync` on a server not `down`, and no longer names `sender` its primary.
///
/// The sender then cannot complete that write (it fails it as "no longer the primary"), and
/// it may be on the sender's copy and on copies still on the older map already: the copies
/// may differ on its blocks. The sender reports that itself, but it may be killed, or cut off
/// from the manager, before its report arrives; the copy that refused reports too (the
/// manager takes a repeated report as a no-op). A sender this map still names the primary
/// is not reported: it fetches the map and sends the write again, stamped anew. A `rebuilding`
/// copy does not report: the manager would change nothing for it (only an `in_sync` copy's
/// report counts), and it does not count for the ack anyway, so it is rebuilt from the
/// primary before it serves (docs/replication.md, "A primary that loses the role mid-write").
fn diverged_due(map: &ClusterMap, me: &str, sender: &str, off: u64) -> Option<(String, usize)> {
    let (volume, index, ext) = extent_at(map, me, off)?;
    let mine = ext.replicas.iter().find(|r| r.server == me)?;
    let live = map.server(me).is_some_and(|s| s.state != ServerState::Down);
    let sender_primary = map.primary(ext).is_some_and(|p| p.server == sender);
    (mine.state == ReplicaState::InSync && live && !sender_primary)
        .then(|| (volume.to_owned(), index))
}

/// A replica write `w` was refused here as stale: reports copies-diverged in the background
/// when [`diverged_due`], at most once per (extent, generation of the refusing map), bounded
/// like the former primary's report ([`DIVERGED_CALL`]). The refusal's answer does not wait.
pub(super) fn refused_stale(node: &Arc<NodeShared>, w: &StaleCopyWrite) {
    let map = node.map.load_full();
    let Some((volume, index)) = diverged_due(&map, &node.me, &w.sender, w.offset) else {
        return;
    };
    let generation = map.generation;
    {
        let mut sent = lock(&node.replica_reports.diverged);
        if sent.get(&(volume.clone(), index)) == Some(&generation) {
            return;
        }
        // Bounded: a report of an older map is of no use once a newer one is installed.
        sent.retain(|_, g| *g >= generation);
        sent.insert((volume.clone(), index), generation);
    }
    tracing::warn!(volume, extent = index, sender = %w.sender, stamp = w.stamp, generation,
        "refused a stale replica write of a former primary: the copies may differ, reporting it");
    let node = Arc::clone(node);
    tokio::spawn(async move {
        report_diverged(&node, &volume, index, generation).await;
    });
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
pub(super) async fn forward(
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
        // Stamped with the generation of the view the copies came from (an install stores
        // the view just before it moves the server's generation): a copy on that map takes
        // the write; one on the older map answers a mismatch, never a refusal.
        let generation = node.admission.ownership().generation();
        let once = async {
            // This thread's polled queue to the copy (found without a lock once open): the
            // write is sent by this task and its completion wakes this task only
            // (initiator/polled.rs), as for a routed host command.
            let q = node.peers.polled(&c.server, addr).await?;
            let stamp = (generation, expires);
            let lba = pool_off / u64::from(INTERNAL_BLOCK);
            match op {
                WriteOp::Data { data, fua } => {
                    q.write(
                        stamp,
                        node::REPLICA_NSID,
                        lba,
                        INTERNAL_BLOCK,
                        data.clone(),
                        *fua,
                    )
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
                        q.write_zeroes(stamp, node::REPLICA_NSID, at, nlb, deac)
                            .await?;
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
        // An extent with no other copy (every volume with one copy) is the pool's write, as
        // before replication: no boxed future, no range lock per command. (A copy out of the
        // write set keeps a dirty map: then the write takes the lock to mark it.) A range a
        // map installed since admission took away runs nowhere ([`write`]).
        match path(&node, off, len) {
            Path::Alone => own(&node, off, len, &op),
            Path::NotMine => IoFuture::Ready(Some(Err(not_mine(off, len)))),
            Path::Locked(_) => {
                IoFuture::Boxed(Box::pin(async move { write(&node, off, len, op).await }))
            }
        }
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

    /// A routed read (this server is the extent's primary in the sender's map, which is
    /// ours): from the pool; without a read lease, confirmed with the other copies first
    /// (docs/replication.md, "Read leases").
    fn read(&self, offset: u64, buf: Vec<u8>) -> IoFuture<Bytes> {
        match self.node.upgrade() {
            Some(node) if !node.lease.valid() => {
                let pool = self.pool.clone();
                IoFuture::Boxed(Box::pin(async move {
                    let len = buf.len() as u64;
                    let data = pool.read(offset, buf).await?;
                    super::lease::confirm(&node, offset, len)
                        .await
                        .map_err(|_| VolumeError::NoPath(NoPath::MapSettling))?;
                    Ok(data)
                }))
            }
            _ => self.pool.read(offset, buf),
        }
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

/// A node of one server for unit tests: a RAM pool, peers at the map's internal addresses, a
/// manager nobody answers at, and the install steps of the watch loop.
#[cfg(test)]
pub(super) mod testing {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    use arc_swap::ArcSwap;
    use manager::client::Client;
    use manager::map::ClusterMap;

    use super::super::pool::{PoolVolume, TrackedPool};
    use super::super::{Admission, NodeShared, mover, node, rebuild};
    use super::{RangeLocks, Reports};
    use crate::cluster::peers::Peers;
    use crate::subsystem::Registry;

    /// Server `me` of `map`, with a forwarding deadline of `forward_ms`.
    pub fn node(map: &ClusterMap, me: &str, forward_ms: u64) -> Arc<NodeShared> {
        // Nothing listens there: every report fails at once.
        node_with_manager(map, me, forward_ms, "127.0.0.1:1")
    }

    /// [`node`], its manager at `manager`.
    pub fn node_with_manager(
        map: &ClusterMap,
        me: &str,
        forward_ms: u64,
        manager: &str,
    ) -> Arc<NodeShared> {
        #[allow(clippy::expect_used)]
        let backend = hw::open(&hw::BackendSpec::Ram {
            size: 1 << 20,
            preallocate: false,
        })
        .expect("a RAM pool");
        let shared = Arc::new(NodeShared {
            me: me.to_owned(),
            map: ArcSwap::from_pointee(map.clone()),
            pool: PoolVolume(Arc::new(TrackedPool::new(backend))),
            peers: Peers::new(me),
            registry: Arc::new(Registry::new_cluster(Vec::new(), map.generation)),
            client: Client::new(manager),
            refresh: tokio::sync::Notify::new(),
            stale_retries: AtomicU64::new(0),
            movers: mover::Movers::default(),
            state: None,
            admission: Arc::new(Admission::new(map, me, node::watch::Watch::new(None))),
            forward_timeout_ms: AtomicU64::new(forward_ms),
            dhchap: None,
            replica_locks: RangeLocks::default(),
            replica_reports: Reports::default(),
            rebuilds: rebuild::Rebuilds::default(),
            lease: super::super::lease::Lease::forever(),
            installing: arc_swap::ArcSwapOption::empty(),
        });
        rebuild::reconcile(&shared, None, map);
        shared
    }

    /// Installs `map` as the watch loop does: dirty maps, the map, the fencing view, the
    /// generation.
    pub fn install(node: &Arc<NodeShared>, map: &ClusterMap) {
        rebuild::reconcile(node, Some(&node.map.load_full()), map);
        node.map.store(Arc::new(map.clone()));
        node.admission.installed(map, &node.me);
        node.registry.generation.install(map.generation);
    }

    /// A peer that accepts internal connections and never answers (its writes hang until
    /// the sender's deadline). Dropped with the runtime.
    pub async fn silent_peer() -> std::net::SocketAddr {
        #[allow(clippy::expect_used)]
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        #[allow(clippy::expect_used)]
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((c, _)) = l.accept().await {
                held.push(c);
            }
        });
        addr
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::cluster::node::fixtures::{self, rep, server};
    use crate::cluster::rebuild::DIRTY_CHUNK;
    use manager::map::ExtentEntry;

    /// `vol1` of one 4 KiB extent at offset 0 of each server, with copies `copies` in order.
    fn one_extent(
        generation: u64,
        servers: &[manager::map::ServerEntry],
        copies: &[(&str, ReplicaState)],
    ) -> ClusterMap {
        let replicas = copies
            .iter()
            .map(|(s, st)| {
                let mut r = rep(s, 0);
                r.state = *st;
                r
            })
            .collect();
        let mut m = fixtures::map(
            generation,
            servers.to_vec(),
            vec![ExtentEntry {
                replicas,
                moving: None,
                lost: false,
            }],
        );
        m.volumes[0].replicas = u32::try_from(copies.len()).unwrap();
        m
    }

    fn servers(ids: &[&str]) -> Vec<manager::map::ServerEntry> {
        ids.iter().map(|id| server(id, ServerState::Up)).collect()
    }

    fn data() -> WriteOp {
        WriteOp::Data {
            data: Bytes::from(vec![7u8; 512]),
            fua: false,
        }
    }

    /// Yields until `cond` holds (a hang guard of 30 s, never a timing assertion).
    async fn until(mut cond: impl FnMut() -> bool) {
        let guard = tokio::time::Instant::now() + Duration::from_secs(30);
        while !cond() {
            assert!(tokio::time::Instant::now() < guard, "hang guard");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    use ReplicaState::{InSync, Rebuilding, Stale};

    /// A manager that records the body of every request and answers 409: its address and the
    /// bodies so far.
    async fn recording_manager() -> (String, Arc<Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let b = Arc::clone(&bodies);
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let b = Arc::clone(&b);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // One request: its headers, then Content-Length bytes of body.
                        let head_end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            match c.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        while buf.len() < head_end + len {
                            match c.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let body = String::from_utf8_lossy(&buf[head_end..head_end + len]);
                        lock(&b).push(body.into_owned());
                        buf.drain(..head_end + len);
                        let answer = r#"{"error":"recorded"}"#;
                        let resp = format!(
                            "HTTP/1.1 409 Conflict\r\ncontent-type: application/json\r\n\
                             content-length: {}\r\n\r\n{answer}",
                            answer.len()
                        );
                        if c.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, bodies)
    }

    #[test]
    fn a_copy_that_refuses_a_stale_write_of_a_former_primary_reports_it() {
        let sv = servers(&["s1", "s2", "s3"]);
        // s1 still the primary in s3's map: it re-sends the write stamped anew, no report.
        let g = one_extent(5, &sv, &[("s1", InSync), ("s2", InSync), ("s3", InSync)]);
        assert_eq!(diverged_due(&g, "s3", "s1", 0), None);
        // s1 lost the role (stale: s2 is the primary): s3 and s2 report, whoever refused.
        let g = one_extent(6, &sv, &[("s1", Stale), ("s2", InSync), ("s3", InSync)]);
        assert_eq!(
            diverged_due(&g, "s3", "s1", 0),
            Some(("vol1".to_owned(), 0))
        );
        assert_eq!(
            diverged_due(&g, "s2", "s1", 0),
            Some(("vol1".to_owned(), 0))
        );
        // A handover: a rebuilt first copy is the primary again.
        let g = one_extent(7, &sv, &[("s3", InSync), ("s1", InSync), ("s2", InSync)]);
        assert_eq!(
            diverged_due(&g, "s3", "s1", 0),
            Some(("vol1".to_owned(), 0))
        );
        // A rebuilding copy does not report (the manager would change nothing for it).
        let g = one_extent(8, &sv, &[("s1", Stale), ("s2", InSync), ("s3", Rebuilding)]);
        assert_eq!(diverged_due(&g, "s3", "s1", 0), None);
        // Nor one on a server marked down, nor a range that is no copy of this server's.
        let mut down = sv.clone();
        down[2].state = ServerState::Down;
        let g = one_extent(9, &down, &[("s1", Stale), ("s2", InSync), ("s3", InSync)]);
        assert_eq!(diverged_due(&g, "s3", "s1", 0), None);
        let g = one_extent(9, &sv, &[("s1", Stale), ("s2", InSync), ("s3", InSync)]);
        assert_eq!(diverged_due(&g, "s3", "s1", 1 << 30), None);
    }

    #[tokio::test]
    async fn a_refused_stale_write_is_reported_once_per_extent_and_generation() {
        let (manager, bodies) = recording_manager().await;
        let sv = servers(&["s1", "s2", "s3"]);
        let g6 = one_extent(6, &sv, &[("s1", Stale), ("s2", InSync), ("s3", InSync)]);
        let node = testing::node_with_manager(&g6, "s3", 4000, &manager);
        let w = StaleCopyWrite {
            sender: "s1".to_owned(),
            offset: 512,
            stamp: 5,
        };
        // A burst of refusals at g6: one report, sent by this copy, at g6.
        for _ in 0..5 {
            refused_stale(&node, &w);
        }
        until(|| !lock(&bodies).is_empty()).await;
        let got: serde_json::Value = serde_json::from_str(&lock(&bodies)[0]).expect("json");
        assert_eq!(
            got,
            serde_json::json!({"server": "s3", "volume": "vol1", "extent": 0, "generation": 6})
        );
        // A refusal from a sender still the primary at a newer map: none.
        testing::install(
            &node,
            &one_extent(7, &sv, &[("s1", InSync), ("s2", InSync), ("s3", InSync)]),
        );
        refused_stale(&node, &w);
        // The next map that took the role from the sender: one more.
        testing::install(
            &node,
            &one_extent(8, &sv, &[("s1", Stale), ("s2", InSync), ("s3", InSync)]),
        );
        refused_stale(&node, &w);
        refused_stale(&node, &w);
        until(|| lock(&bodies).len() >= 2).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let all = lock(&bodies).clone();
        assert_eq!(all.len(), 2, "{all:?}");
        let got: serde_json::Value = serde_json::from_str(&all[1]).expect("json");
        assert_eq!(got["generation"], 8);
    }

    #[tokio::test]
    async fn a_write_marks_the_copies_it_skips_before_it_sends_anything() {
        // s2 in sync never answers (the write stays in flight); s3 went stale while s1 was
        // the primary (a clean dirty map).
        let mut sv = servers(&["s1", "s2", "s3"]);
        sv[1].internal = testing::silent_peer().await;
        let g1 = one_extent(1, &sv, &[("s1", InSync), ("s2", InSync), ("s3", InSync)]);
        let node = testing::node(&g1, "s1", 4000);
        testing::install(
            &node,
            &one_extent(2, &sv, &[("s1", InSync), ("s2", InSync), ("s3", Stale)]),
        );
        let t = node
            .rebuilds
            .find(0, &("s3".to_owned(), 0))
            .expect("tracked");
        assert!(t.dirty.is_clean());
        let n = Arc::clone(&node);
        let w = tokio::spawn(async move { write(&n, 0, 512, data()).await });
        until(|| node.replica_locks.held() == 1).await;
        // In flight (s2 has not answered), and s3's map has it already: a rebuild of s3 that
        // checks its map now copies these blocks.
        assert!(!w.is_finished());
        assert!(
            !t.dirty.is_clean(),
            "the skipped copy's bits must be set before the write completes"
        );
        w.abort();
    }

    #[tokio::test]
    async fn a_failed_copy_is_marked_as_soon_as_its_write_fails() {
        // s2 in sync cannot be reached: its write fails at the copy deadline (2 s), and the
        // write then waits for a map without it (no manager answers: until 4 s).
        let sv = servers(&["s1", "s2"]);
        let g1 = one_extent(1, &sv, &[("s1", InSync), ("s2", InSync)]);
        let node = testing::node(&g1, "s1", 4000);
        let n = Arc::clone(&node);
        let w = tokio::spawn(async move { write(&n, 0, 512, data()).await });
        let key = ("s2".to_owned(), 0);
        until(|| {
            assert!(
                !w.is_finished(),
                "the write completed before the failed copy's bits were marked"
            );
            node.rebuilds
                .find(0, &key)
                .is_some_and(|t| t.dirty.dirty_bytes() == DIRTY_CHUNK.min(4096))
        })
        .await;
        // Still waiting for the map that takes s2 out: nothing completed yet.
        assert!(!w.is_finished());
        w.abort();
    }

    #[tokio::test]
    async fn a_write_that_missed_a_rebuilding_copy_is_not_acked_on_the_map_it_started_on() {
        // replicas [s2, s1]: s2 was stale and is rebuilding, s1 is the primary. The rebuild
        // has sent its rebuild-done report; the manager makes s2 in sync, so the primary
        // again. A write whose forward to s2 failed meanwhile must not be acknowledged by s1.
        let sv = servers(&["s1", "s2"]);
        let g1 = one_extent(1, &sv, &[("s2", Stale), ("s1", InSync)]);
        let node = testing::node(&g1, "s1", 600);
        let g2 = one_extent(2, &sv, &[("s2", Rebuilding), ("s1", InSync)]);
        testing::install(&node, &g2);
        let t = node
            .rebuilds
            .find(0, &("s2".to_owned(), 0))
            .expect("tracked");
        t.reporting(2);
        let n = Arc::clone(&node);
        let w = tokio::spawn(async move { write(&n, 0, 512, data()).await });
        until(|| node.replica_locks.held() == 1).await;
        testing::install(
            &node,
            &one_extent(3, &sv, &[("s2", InSync), ("s1", InSync)]),
        );
        let r = tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .expect("hang guard")
            .expect("task");
        assert!(
            matches!(r, Err(VolumeError::NoPath(_))),
            "acknowledged without the new primary: {r:?}"
        );
    }

    #[tokio::test]
    async fn a_missed_rebuilding_copy_with_a_report_of_unknown_outcome_fails_the_write() {
        let sv = servers(&["s1", "s2"]);
        let g1 = one_extent(1, &sv, &[("s1", InSync), ("s2", Stale)]);
        let node = testing::node(&g1, "s1", 600);
        testing::install(
            &node,
            &one_extent(2, &sv, &[("s1", InSync), ("s2", Rebuilding)]),
        );
        // A rebuilding copy that fails, no report out: the write completes (the rebuild
        // copies the blocks; a rebuilding copy's failure does not fail host writes).
        let r = write(&node, 0, 512, data()).await;
        assert!(r.is_ok(), "{r:?}");
        // A report out and no answer: the manager may have made s2 in sync already.
        let t = node
            .rebuilds
            .find(0, &("s2".to_owned(), 0))
            .expect("tracked");
        t.reporting(2);
        let r = write(&node, 0, 512, data()).await;
        assert!(matches!(r, Err(VolumeError::NoPath(_))), "{r:?}");
    }

    /// A primary draining for an install of a map that drops it (phase 1a of a copy move: its
    /// gate closed) whose copy write fails does not wait for a newer map, which its own gate
    /// holds back: the map being installed no longer names it the primary, so the write fails
    /// at once (retryable; that map rebuilds the other copies from the new primary). It waited
    /// until its forwarding deadline before (docs/replication.md, "Known problems", fixed).
    #[tokio::test]
    async fn a_failed_copy_write_under_an_install_that_drops_the_primary_fails_at_once() {
        let (maddr, bodies) = recording_manager().await;
        let sv = servers(&["s1", "s2", "s3"]);
        let g5 = one_extent(5, &sv, &[("s1", InSync), ("s2", InSync)]);
        // A forwarding deadline the hang guard below is well inside of.
        let node = testing::node_with_manager(&g5, "s1", 60_000, &maddr);
        // Being installed: s1's copy dropped for one on s3, s2 the primary.
        let g6 = one_extent(6, &sv, &[("s2", InSync), ("s3", InSync)]);
        node.installing.store(Some(Arc::new(g6)));
        // Nothing listens at s2's internal address: its copy write fails.
        let r = tokio::time::timeout(Duration::from_secs(30), write(&node, 0, 512, data()))
            .await
            .expect("the write waited for a map its own install holds back");
        assert!(
            matches!(r, Err(VolumeError::NoPath(NoPath::MapSettling))),
            "{r:?}"
        );
        // Its report of s2 went out (and was refused) before: the wait it ends.
        let sent = lock(&bodies).clone();
        assert!(
            sent.iter()
                .any(|b| b.contains("\"primary\":\"s1\"") && b.contains("\"server\":\"s2\"")),
            "no replica-failed report: {sent:?}"
        );
        // Without a map being installed, the same write waits for one (here until the guard).
        node.installing.store(None);
        let waited =
            tokio::time::timeout(Duration::from_millis(1500), write(&node, 0, 512, data())).await;
        assert!(waited.is_err(), "{waited:?}");
    }

    #[tokio::test]
    async fn a_write_that_waited_for_the_lock_is_not_completed_by_a_former_primary() {
        let sv = servers(&["s1", "s2"]);
        let g1 = one_extent(1, &sv, &[("s1", InSync), ("s2", InSync)]);
        let node = testing::node(&g1, "s1", 5000);
        let held = node.replica_locks.lock(0, 4096).await;
        let n = Arc::clone(&node);
        let w = tokio::spawn(async move { write(&n, 0, 512, data()).await });
        until(|| node.replica_locks.waiting() == 1).await;
        // s2 becomes the primary while the write waits for the lock.
        testing::install(
            &node,
            &one_extent(2, &sv, &[("s2", InSync), ("s1", InSync)]),
        );
        drop(held);
        let r = tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .expect("hang guard")
            .expect("task");
        assert!(matches!(r, Err(VolumeError::NoPath(_))), "{r:?}");
    }

    #[tokio::test]
    async fn a_write_admitted_before_a_map_that_demotes_the_primary_is_not_acked_on_its_copy() {
        // replicas [s2, s1]: s2 is rebuilding, s1 the primary. A write is admitted at g2 (a
        // routed write whose stamp and owner check passed, or a host piece routed here); then
        // another thread installs g3, in which s2's rebuild is done and s2, in sync and first,
        // is the primary. The write reaches `write` (or the routed namespace) only now: it
        // must not run on s1's copy alone and be acknowledged (s2 never gets it).
        let sv = servers(&["s1", "s2"]);
        let g1 = one_extent(1, &sv, &[("s2", Stale), ("s1", InSync)]);
        let node = testing::node(&g1, "s1", 600);
        testing::install(
            &node,
            &one_extent(2, &sv, &[("s2", Rebuilding), ("s1", InSync)]),
        );
        testing::install(
            &node,
            &one_extent(3, &sv, &[("s2", InSync), ("s1", InSync)]),
        );
        let r = write(&node, 0, 512, data()).await;
        assert!(
            matches!(r, Err(VolumeError::NoPath(_))),
            "acknowledged by a former primary: {r:?}"
        );
        // The same through the routed namespace's volume (`FanoutPool`).
        let r = FanoutPool::new(&node)
            .write(0, Bytes::from(vec![7u8; 512]), false)
            .await;
        assert!(
            matches!(r, Err(VolumeError::NoPath(_))),
            "acknowledged by a former primary (routed): {r:?}"
        );
        // s1's copy did not take it either (it would differ from the primary's).
        let back = node.pool.read(0, vec![1u8; 512]).await.expect("read");
        assert!(back.iter().all(|b| *b == 0), "written on a former primary");
    }

    #[tokio::test]
    async fn a_wide_request_is_not_starved_and_later_overlapping_ones_queue_behind_it() {
        let locks = Arc::new(RangeLocks::default());
        let write_a = locks.lock(0, 4096).await;
        let l = Arc::clone(&locks);
        let whole = tokio::spawn(async move {
            let g = l.lock(0, 1 << 20).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
            drop(g);
        });
        until(|| locks.waiting() == 1).await;
        // A later write elsewhere in the extent: free of held ranges, but after the wide
        // request, so it waits for it.
        let l = Arc::clone(&locks);
        let write_b = tokio::spawn(async move {
            let _g = l.lock(8192, 12288).await;
        });
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(
            !write_b.is_finished(),
            "a later overlapping request went first"
        );
        assert_eq!(locks.waiting(), 2);
        drop(write_a);
        tokio::time::timeout(Duration::from_secs(30), whole)
            .await
            .expect("hang guard")
            .expect("task");
        tokio::time::timeout(Duration::from_secs(30), write_b)
            .await
            .expect("hang guard")
            .expect("task");
        // A request given up (a timeout) leaves the queue.
        let g = locks.lock(0, 10).await;
        assert!(
            tokio::time::timeout(Duration::from_millis(1), locks.lock(0, 10))
                .await
                .is_err()
        );
        assert_eq!(locks.waiting(), 0);
        drop(g);
        assert_eq!(locks.held(), 0);
    }

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
