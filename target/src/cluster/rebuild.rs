//! Rebuild of a copy that missed writes (docs/replication.md, "Rebuild"), on the extent's
//! primary.
//!
//! **Dirty maps.** For every copy of an extent this server is the primary of that does not
//! count for the ack (`stale`, `rebuilding`, or on a server marked down), the primary keeps a
//! [`DirtyMap`]: one bit per [`DIRTY_CHUNK`] of the extent, set for every write the copy did
//! not take. The map is created when a map is installed (before the writes see it: see
//! [`reconcile`]) or when a write to an `in_sync` copy fails: empty when the copy took every
//! write until then under this primary, all set otherwise (this server restarted, or became
//! the primary after a failover: it cannot know what the copy missed, so the whole extent is
//! copied), or when the copy goes straight from `in_sync` to `rebuilding` in one map (the
//! manager asks for a whole rebuild: a failover's resync, or a former primary's
//! copies-diverged report, docs/replication.md). Bits are set and cleared only under the extent's range lock
//! ([`super::replica::RangeLocks`]), by the write that did not reach the copy and by the
//! rebuild chunk that copies it, so a host write and a rebuild chunk of the same blocks are
//! ordered.
//!
//! **The rebuild.** When the installed map marks such a copy `rebuilding`, a task copies each
//! dirty run from this server's pool to the copy (internal namespace 3, stamped, under the
//! range lock), at most [`NodeShared::rebuild_rate`] bytes a second over all rebuilds of this
//! server. Host writes reach a `rebuilding` copy through the normal fan-out meanwhile (a failed
//! one sets its bits again), so once no bit is left the copy is equal: the task flushes the
//! copy, checks the dirty map once more under the range lock of the whole extent (every write
//! in flight to it has completed and marked what the copy missed: [`last_check`]) and reports
//! `POST /v1/rebuild-done`, and the manager marks it `in_sync`. A write that misses the copy
//! once that report is out waits for its outcome before it completes
//! ([`Tracked::promotion_settled_at`]). Progress goes to the manager about once a second and
//! to the log every 10 %.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bitvec::prelude::{BitVec, Lsb0};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use manager::api::{RebuildDoneRequest, RebuildProgressRequest};
use manager::client::ClientError;
use manager::map::{ClusterMap, ReplicaState, ServerState};

use super::NodeShared;
use super::node::{self, Copy};
use super::replica::{self, CopyKey, WriteOp};
use crate::subsystem::lock;
use crate::subsystem::volume::VolumeError;

/// Dirty-map granularity: 64 KiB (a 64 MiB extent is a 128-byte bitmap; a 4 KiB host write
/// costs at most a 64 KiB re-copy).
pub const DIRTY_CHUNK: u64 = 64 * 1024;

/// Default rebuild rate of a server, in MB/s (`tessera-target --rebuild-rate`).
pub const DEFAULT_RATE_MB: u64 = 200;

/// Largest rebuild write (the internal hop's transfer size, as a move's copy).
const IO_MAX: u64 = super::mover::COPY_IO_MAX;

/// Rebuild writes of one copy in flight at once (each up to [`IO_MAX`], on disjoint ranges).
const RUNS_IN_FLIGHT: usize = 4;

/// How often a running rebuild reports its progress to the manager.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Pause after a failed rebuild write or report before trying again.
const RETRY: Duration = Duration::from_secs(1);

/// How often the supervisor looks for copies to rebuild when no new map wakes it.
const SUPERVISE_EVERY: Duration = Duration::from_millis(500);

/// Bound on one rebuild-done or progress call to the manager.
const MANAGER_CALL: Duration = Duration::from_secs(5);

/// The blocks of one extent a copy missed: one bit per [`DIRTY_CHUNK`].
#[derive(Debug)]
pub struct DirtyMap {
    /// The extent's length in bytes.
    len: u64,
    bits: Mutex<BitVec<u64, Lsb0>>,
}

impl DirtyMap {
    /// A map of an extent of `len` bytes: clean, or (`all`) every chunk dirty.
    pub fn new(len: u64, all: bool) -> Self {
        let chunks = usize::try_from(len.div_ceil(DIRTY_CHUNK)).unwrap_or(0);
        Self {
            len,
            bits: Mutex::new(BitVec::repeat(all, chunks)),
        }
    }

    /// The chunks of bytes `[at, at + len)` of the extent (clipped to it), as bit indices.
    fn chunks(&self, at: u64, len: u64) -> std::ops::Range<usize> {
        let end = at.saturating_add(len).min(self.len);
        if at >= end {
            return 0..0;
        }
        let first = usize::try_from(at / DIRTY_CHUNK).unwrap_or(usize::MAX);
        let last = usize::try_from((end - 1) / DIRTY_CHUNK).unwrap_or(usize::MAX);
        first..last.saturating_add(1)
    }

    /// Marks bytes `[at, at + len)` of the extent dirty.
    pub fn mark(&self, at: u64, len: u64) {
        let r = self.chunks(at, len);
        let mut bits = lock(&self.bits);
        if let Some(s) = bits.get_mut(r) {
            s.fill(true);
        }
    }

    /// Clears the chunks of bytes `[at, at + len)` (a rebuild run copied them).
    pub fn clear(&self, at: u64, len: u64) {
        let r = self.chunks(at, len);
        let mut bits = lock(&self.bits);
        if let Some(s) = bits.get_mut(r) {
            s.fill(false);
        }
    }

    /// Whether no chunk is dirty.
    pub fn is_clean(&self) -> bool {
        lock(&self.bits).not_any()
    }

    /// Bytes left to copy.
    pub fn dirty_bytes(&self) -> u64 {
        let bits = lock(&self.bits);
        bits.iter_ones()
            .map(|i| {
                let at = (i as u64).saturating_mul(DIRTY_CHUNK);
                DIRTY_CHUNK.min(self.len.saturating_sub(at))
            })
            .sum()
    }

    /// The first run of dirty chunks at or after byte `from`, at most `max` bytes (at least one
    /// chunk), clipped to the extent: `(at, len)` in bytes. Not cleared.
    pub fn next_run(&self, from: u64, max: u64) -> Option<(u64, u64)> {
        let bits = lock(&self.bits);
        let start = usize::try_from(from.div_ceil(DIRTY_CHUNK)).ok()?;
        let first = start + bits.get(start..)?.first_one()?;
        let most = usize::try_from((max / DIRTY_CHUNK).max(1)).unwrap_or(1);
        let tail = bits.get(first..)?;
        let n = tail.first_zero().unwrap_or(tail.len()).min(most);
        let at = (first as u64).saturating_mul(DIRTY_CHUNK);
        let end = ((first + n) as u64)
            .saturating_mul(DIRTY_CHUNK)
            .min(self.len);
        Some((at, end.saturating_sub(at)))
    }
}

/// A copy this server (its extent's primary) keeps a dirty map for.
#[derive(Debug)]
pub struct Tracked {
    /// This server's copy of the extent: pool bytes `[start, start + len)`.
    pub start: u64,
    /// The extent's length.
    pub len: u64,
    /// The other copy's server.
    pub server: String,
    /// The extent's offset in that server's pool.
    pub offset: u64,
    /// What it missed.
    pub dirty: DirtyMap,
    /// A rebuild task runs for it.
    running: AtomicBool,
    /// The installed generation when this server last sent a rebuild-done report for the
    /// copy (0: never). From then on the manager may mark the copy `in_sync` at any moment, so
    /// a write that did not reach it must not complete on a map that still has it
    /// `rebuilding` ([`Tracked::promotion_settled_at`]).
    reported_at: AtomicU64,
    /// The generation of the manager's answer to that report (0: no answer yet): the map of
    /// an accepting answer, or the manager's generation named by a refusal (every report the
    /// manager accepted before it is in that map or an older one).
    answered_at: AtomicU64,
    /// The latest map installed (or being installed) here in which the copy is not
    /// `rebuilding` under this primary (0: none).
    left_at: AtomicU64,
}

impl Tracked {
    fn new(start: u64, len: u64, server: &str, offset: u64, all: bool) -> Self {
        Self {
            start,
            len,
            server: server.to_owned(),
            offset,
            dirty: DirtyMap::new(len, all),
            running: AtomicBool::new(false),
            reported_at: AtomicU64::new(0),
            answered_at: AtomicU64::new(0),
            left_at: AtomicU64::new(0),
        }
    }

    /// The generation this server must have installed before a write whose forward to this
    /// copy failed may trust its map about the copy (docs/replication.md, "The end of a
    /// rebuild"): 0 when no rebuild-done report of the copy can be pending; else the map in
    /// which its outcome is known here (the manager's answer, or a later map in which the copy
    /// is not `rebuilding` under this primary); `u64::MAX` while neither has come.
    pub fn promotion_settled_at(&self) -> u64 {
        let reported = self.reported_at.load(Ordering::Acquire);
        if reported == 0 {
            return 0;
        }
        let left = self.left_at.load(Ordering::Acquire);
        if left >= reported {
            return left;
        }
        match self.answered_at.load(Ordering::Acquire) {
            0 => u64::MAX,
            g => g,
        }
    }

    /// A rebuild-done report of the copy goes out now, with generation `installed` here.
    pub(super) fn reporting(&self, installed: u64) {
        self.answered_at.store(0, Ordering::Release);
        self.reported_at.store(installed.max(1), Ordering::Release);
    }

    /// The manager answered the report out: its outcome is known in the map of `generation`
    /// (see [`settled_by`]).
    fn answered(&self, generation: u64) {
        self.answered_at.store(generation.max(1), Ordering::Release);
    }

    fn key(&self) -> CopyKey {
        (self.server.clone(), self.offset)
    }

    fn overlaps(&self, off: u64, len: u64) -> bool {
        off < self.start.saturating_add(self.len) && self.start < off.saturating_add(len)
    }
}

/// This server's dirty maps and rebuild pacing.
pub struct Rebuilds {
    /// Read by every replicated write (empty on a server with every copy in sync).
    tracked: ArcSwap<Vec<Arc<Tracked>>>,
    /// Serializes edits of `tracked` (installs, failed writes, the supervisor).
    edit: Mutex<()>,
    /// Rebuild bytes per second over all rebuilds of this server; 0: unlimited.
    rate: AtomicU64,
    /// When the next rebuild write may start (the pacing's virtual clock).
    next_slot: Mutex<Option<tokio::time::Instant>>,
}

impl Default for Rebuilds {
    fn default() -> Self {
        Self {
            tracked: ArcSwap::from_pointee(Vec::new()),
            edit: Mutex::new(()),
            rate: AtomicU64::new(DEFAULT_RATE_MB * 1_000_000),
            next_slot: Mutex::new(None),
        }
    }
}

impl Rebuilds {
    /// Whether a dirty map covers any of pool bytes `[off, off + len)` (the write must then
    /// take the range lock and mark what it did not send).
    pub fn tracks(&self, off: u64, len: u64) -> bool {
        let t = self.tracked.load();
        !t.is_empty() && t.iter().any(|t| t.overlaps(off, len))
    }

    /// A write of pool bytes `[off, off + len)` (under the range lock) reached this server's
    /// copy and the copies in `acked`: marks it in the dirty map of every other copy of the
    /// extent; `failed` copies (in sync until now, whose write just failed) get a clean map
    /// first if they have none (they took every earlier write).
    pub fn missed(&self, off: u64, len: u64, acked: &[CopyKey], failed: &[(u64, u64, CopyKey)]) {
        if !failed.is_empty() {
            let _e = lock(&self.edit);
            let mut next = Vec::clone(&self.tracked.load());
            for (start, ext_len, k) in failed {
                if !next
                    .iter()
                    .any(|t| t.start == *start && t.server == k.0 && t.offset == k.1)
                {
                    next.push(Arc::new(Tracked::new(*start, *ext_len, &k.0, k.1, false)));
                }
            }
            self.tracked.store(Arc::new(next));
        }
        for t in self.tracked.load().iter() {
            if t.overlaps(off, len) && !acked.contains(&t.key()) {
                let from = off.max(t.start) - t.start;
                let to = off.saturating_add(len).min(t.start + t.len) - t.start;
                t.dirty.mark(from, to.saturating_sub(from));
            }
        }
    }

    /// The write of pool bytes `[off, off + len)` to copy `k` of the extent at this server's
    /// pool bytes `[start, start + ext_len)` failed: marks it in the copy's dirty map (made
    /// clean first if there is none: the copy took every earlier write), at once, before the
    /// write can complete or anything can check the map.
    pub fn failed(&self, off: u64, len: u64, (start, ext_len, k): &(u64, u64, CopyKey)) {
        let find = |t: &Arc<Vec<Arc<Tracked>>>| {
            t.iter()
                .find(|t| t.start == *start && t.server == k.0 && t.offset == k.1)
                .cloned()
        };
        let t = match find(&self.tracked.load_full()) {
            Some(t) => t,
            None => {
                let _e = lock(&self.edit);
                let current = self.tracked.load_full();
                if let Some(t) = find(&current) {
                    t
                } else {
                    let t = Arc::new(Tracked::new(*start, *ext_len, &k.0, k.1, false));
                    let mut next = Vec::clone(&current);
                    next.push(Arc::clone(&t));
                    self.tracked.store(Arc::new(next));
                    t
                }
            }
        };
        let from = off.max(t.start) - t.start;
        let to = off.saturating_add(len).min(t.start + t.len) - t.start;
        t.dirty.mark(from, to.saturating_sub(from));
    }

    /// The dirty map kept for copy `k` of the extent at this server's pool offset `start`.
    pub fn find(&self, start: u64, k: &CopyKey) -> Option<Arc<Tracked>> {
        self.tracked
            .load()
            .iter()
            .find(|t| t.start == start && t.server == k.0 && t.offset == k.1)
            .cloned()
    }

    /// The dirty maps kept now (tests, status).
    pub fn tracked(&self) -> Arc<Vec<Arc<Tracked>>> {
        self.tracked.load_full()
    }

    /// Sets the rebuild rate in bytes per second (0: unlimited).
    pub fn set_rate(&self, bytes_per_second: u64) {
        self.rate.store(bytes_per_second, Ordering::Relaxed);
    }

    /// Waits for the turn of a rebuild write of `bytes` under the rate.
    async fn pace(&self, bytes: u64) {
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 {
            return;
        }
        let nanos = u128::from(bytes) * 1_000_000_000 / u128::from(rate);
        let cost = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        let start = {
            let mut next = lock(&self.next_slot);
            let now = tokio::time::Instant::now();
            let start = next.map_or(now, |n| n.max(now));
            *next = Some(start + cost);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

/// Where copy `(server, offset)` of the extent at this server's pool offset `start` is in
/// `map`: (volume, extent index, its state, its server's state), when this server is that
/// extent's primary.
fn locate<'m>(
    map: &'m ClusterMap,
    me: &str,
    start: u64,
    copy: &CopyKey,
) -> Option<(&'m str, usize, ReplicaState, ServerState)> {
    map.volumes.iter().find_map(|v| {
        v.extents.iter().enumerate().find_map(|(i, e)| {
            let owner = map.write_owner(e)?;
            if owner.server != me || owner.offset != start {
                return None;
            }
            let r = e
                .replicas
                .iter()
                .find(|r| r.server == copy.0 && r.offset == copy.1)?;
            let s = map.server(&r.server).map_or(ServerState::Down, |s| s.state);
            Some((v.name.as_str(), i, r.state, s))
        })
    })
}

/// Brings the dirty maps in line with map `new` (installed now, replacing `old`); called
/// before the writes see `new`, so that every write that skips a copy under `new` finds its
/// map. For every extent this server is the primary of in `new`, each other copy that does not
/// count for the ack gets a map: clean when it counted under this primary in `old` (it took
/// every write until now), all dirty otherwise. Maps of copies no longer such a copy of an
/// extent this server is the primary of are dropped, as are clean ones of copies `in_sync`
/// again; a dirty one of an `in_sync` copy (a write to it failed) is kept and the copy
/// reported, since it differs.
pub fn reconcile(node: &Arc<NodeShared>, old: Option<&ClusterMap>, new: &ClusterMap) {
    let me = node.me.as_str();
    let rebuilds = &node.rebuilds;
    let _e = lock(&rebuilds.edit);
    let current = rebuilds.tracked.load_full();
    let mut next: Vec<Arc<Tracked>> = Vec::new();
    let mut differ = Vec::new();
    for v in &new.volumes {
        for (i, e) in v.extents.iter().enumerate() {
            let Some(owner) = new.write_owner(e) else {
                continue;
            };
            if owner.server != me {
                continue;
            }
            let start = owner.offset;
            let counts = |m: &ClusterMap, r: &manager::map::Replica| {
                r.state == ReplicaState::InSync
                    && m.server(&r.server)
                        .is_some_and(|s| s.state != ServerState::Down)
            };
            for r in e.replicas.iter().filter(|r| r.server != me) {
                // The copy's server came back on another pool (its data is gone): nothing
                // this primary recorded for it applies, the whole extent is copied.
                let pool_replaced = old.is_some_and(|m| {
                    let was = m.server(&r.server).and_then(|s| s.pool);
                    was.is_some() && was != new.server(&r.server).and_then(|s| s.pool)
                });
                let existing = current
                    .iter()
                    .find(|t| t.start == start && t.server == r.server && t.offset == r.offset)
                    .filter(|_| !pool_replaced);
                if counts(new, r) {
                    if let Some(t) = existing
                        && (t.running.load(Ordering::Acquire) || !t.dirty.is_clean())
                    {
                        next.push(Arc::clone(t));
                        if !t.running.load(Ordering::Acquire) {
                            differ.push((v.name.clone(), i, r.server.clone(), new.generation));
                        }
                    }
                    continue;
                }
                // Straight from counting to `rebuilding`: the manager asks for the whole
                // extent (a failover's resync, or a former primary's diverged report: the copy
                // may hold a write no primary recorded; docs/replication.md).
                let resync = r.state == ReplicaState::Rebuilding
                    && old.is_some_and(|m| {
                        m.volume(&v.name)
                            .and_then(|ov| ov.extents.get(i))
                            .is_some_and(|oe| {
                                oe.replicas.iter().any(|or| {
                                    or.server == r.server && or.offset == r.offset && counts(m, or)
                                })
                            })
                    });
                // Not a copy of the extent in the map before (added by a copy move, maybe where
                // a dropped copy was): a record of it can only be a stray one, made by a write
                // that failed to the dropped copy after that map's install, and says nothing of
                // the writes it missed since the drop.
                let new_to_extent = old.is_some_and(|m| {
                    !m.volume(&v.name)
                        .and_then(|ov| ov.extents.get(i))
                        .is_some_and(|oe| {
                            oe.replicas
                                .iter()
                                .any(|or| or.server == r.server && or.offset == r.offset)
                        })
                });
                if let Some(t) = existing {
                    if resync || new_to_extent {
                        t.dirty.mark(0, t.len);
                    }
                    next.push(Arc::clone(t));
                    continue;
                }
                // Counted under this primary in the map before: it has every write so far.
                let took_all = !pool_replaced
                    && !resync
                    && old.is_some_and(|m| {
                        m.volume(&v.name)
                            .and_then(|ov| ov.extents.get(i))
                            .is_some_and(|oe| {
                                m.write_owner(oe)
                                    .is_some_and(|o| o.server == me && o.offset == start)
                                    && oe.replicas.iter().any(|or| {
                                        or.server == r.server
                                            && or.offset == r.offset
                                            && counts(m, or)
                                    })
                            })
                    });
                if resync {
                    tracing::info!(volume = %v.name, extent = i, copy = %r.server,
                        "the manager asks for a whole rebuild of this copy (it may differ)");
                } else if !took_all {
                    tracing::info!(volume = %v.name, extent = i, copy = %r.server,
                        "no record of what this copy missed: a rebuild will copy the whole extent");
                }
                next.push(Arc::new(Tracked::new(
                    start,
                    v.extent_size,
                    &r.server,
                    r.offset,
                    !took_all,
                )));
            }
        }
    }
    // A copy not `rebuilding` under this primary in `new`: a rebuild-done report sent before
    // has its outcome in `new` (writes that missed the copy wait until `new` is installed).
    for t in current.iter().chain(next.iter()) {
        let rebuilding = locate(new, me, t.start, &t.key())
            .is_some_and(|(_, _, st, _)| st == ReplicaState::Rebuilding);
        if !rebuilding {
            t.left_at.fetch_max(new.generation, Ordering::AcqRel);
        }
    }
    rebuilds.tracked.store(Arc::new(next));
    drop(_e);
    for (volume, extent, server, generation) in differ {
        tracing::warn!(volume, extent, copy = %server,
            "an in_sync copy missed a write: reporting it");
        let node = Arc::clone(node);
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + MANAGER_CALL;
            replica::report(&node, &volume, extent, &server, generation, deadline).await;
        });
    }
}

/// Starts a rebuild task for every tracked copy that the installed map marks `rebuilding`
/// (and whose server is up), until the node goes away. Wakes on every new generation and
/// every [`SUPERVISE_EVERY`].
pub async fn supervise(node: std::sync::Weak<NodeShared>) {
    loop {
        let Some(n) = node.upgrade() else {
            return;
        };
        let map = n.map.load_full();
        for t in n.rebuilds.tracked().iter() {
            let due = locate(&map, &n.me, t.start, &t.key()).is_some_and(|(_, _, st, ss)| {
                st == ReplicaState::Rebuilding && ss == ServerState::Up
            });
            if due && !t.running.swap(true, Ordering::AcqRel) {
                tokio::spawn(run(Arc::clone(&n), Arc::clone(t)));
            }
        }
        let generation = map.generation;
        let registry = Arc::clone(&n.registry);
        drop(n);
        registry
            .generation
            .wait_for(generation + 1, SUPERVISE_EVERY)
            .await;
    }
}

/// Clears a tracked copy's `running` flag however its task ends.
struct Running(Arc<Tracked>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Release);
    }
}

/// How far one rebuild is, for progress reports and the 10 % log lines.
struct Progress {
    volume: String,
    extent: usize,
    done: u64,
    total: u64,
    logged_tenths: u64,
    reported: Option<tokio::time::Instant>,
}

impl Progress {
    fn advance(&mut self, node: &Arc<NodeShared>, t: &Tracked, bytes: u64) {
        self.done = self.done.saturating_add(bytes);
        self.total = self
            .total
            .max(self.done.saturating_add(t.dirty.dirty_bytes()));
        let tenths = self.done.saturating_mul(10) / self.total.max(1);
        if tenths > self.logged_tenths {
            self.logged_tenths = tenths;
            tracing::info!(volume = %self.volume, extent = self.extent, copy = %t.server,
                done_bytes = self.done, total_bytes = self.total,
                "rebuild {}% done", tenths.min(10) * 10);
        }
        let now = tokio::time::Instant::now();
        if self
            .reported
            .is_none_or(|at| now.duration_since(at) >= PROGRESS_EVERY)
        {
            self.reported = Some(now);
            let req = RebuildProgressRequest {
                primary: node.me.clone(),
                volume: self.volume.clone(),
                extent: self.extent,
                server: t.server.clone(),
                done_bytes: self.done,
                total_bytes: self.total,
            };
            let node = Arc::clone(node);
            tokio::spawn(async move {
                match tokio::time::timeout(MANAGER_CALL, node.client.rebuild_progress(&req)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(error = %e, "rebuild progress report refused"),
                    Err(_) => tracing::debug!("rebuild progress report: no answer"),
                }
            });
        }
    }
}

/// One copy's rebuild: copies its dirty runs until none is left, flushes it and reports it
/// done; ends early when the installed map no longer has it `rebuilding` under this primary.
async fn run(node: Arc<NodeShared>, t: Arc<Tracked>) {
    let _running = Running(Arc::clone(&t));
    let key = t.key();
    let Some((volume, extent)) =
        locate(&node.map.load(), &node.me, t.start, &key).map(|(v, i, _, _)| (v.to_owned(), i))
    else {
        return;
    };
    let total = t.dirty.dirty_bytes();
    tracing::info!(volume, extent, copy = %t.server, total_bytes = total, whole = total >= t.len,
        "rebuild started");
    let mut progress = Progress {
        volume,
        extent,
        done: 0,
        total,
        logged_tenths: 0,
        reported: None,
    };
    let copy = Copy {
        server: t.server.clone(),
        offset: t.offset,
        counts: false,
    };
    let mut from = 0u64;
    // Runs being copied: up to [`RUNS_IN_FLIGHT`] at once, on disjoint ranges (each takes its
    // own range lock), so that the copy is not one internal round trip per 128 KiB.
    let mut in_flight: FuturesUnordered<_> = FuturesUnordered::new();
    let (n, tr, cr) = (&node, &*t, &copy);
    loop {
        let map = node.map.load_full();
        let located = locate(&map, &node.me, t.start, &key);
        // A dirty map dropped by an install (and maybe replaced since) gets no marks from
        // writes any more: its task must not go on to report the copy done.
        let replaced = !node
            .rebuilds
            .find(t.start, &key)
            .is_some_and(|c| Arc::ptr_eq(&c, &t));
        let stop = match located {
            _ if replaced => Some("rebuild stopped: its dirty map was replaced"),
            None => Some("rebuild stopped: no longer this extent's primary"),
            Some((_, _, state, _)) if state != ReplicaState::Rebuilding => {
                Some("rebuild stopped: the copy is no longer rebuilding")
            }
            Some(_) => None,
        };
        if let Some(why) = stop {
            // The runs in flight end first: a run dropped halfway would leave its bits
            // cleared without the copy having the data (one that fails sets them again).
            while let Some((_, len, r)) = in_flight.next().await {
                let r: Result<(), VolumeError> = r;
                if r.is_ok() {
                    progress.advance(&node, &t, len);
                }
            }
            tracing::info!(copy = %t.server, state = ?located.map(|l| l.2), "{why}");
            return;
        }
        let Some((volume, extent, _, _)) = located else {
            return;
        };
        let next = if in_flight.len() < RUNS_IN_FLIGHT {
            t.dirty.next_run(from, IO_MAX)
        } else {
            None
        };
        if let Some((at, len)) = next {
            node.rebuilds.pace(len).await;
            // Its bits are cleared when it holds the lock; `from` keeps the next pick past it.
            in_flight.push(async move { (at, len, copy_run(n, tr, cr, at, len).await) });
            from = at + len;
            continue;
        }
        if let Some((at, len, r)) = in_flight.next().await {
            match r {
                Ok(()) => progress.advance(&node, &t, len),
                Err(e) => {
                    tracing::warn!(volume, extent, copy = %t.server, at, len, error = %e,
                        "rebuild write failed; retrying");
                    // The others end before the pause (they hold range locks).
                    while let Some((_, len, r)) = in_flight.next().await {
                        if r.is_ok() {
                            progress.advance(&node, &t, len);
                        }
                    }
                    tokio::time::sleep(RETRY).await;
                }
            }
            continue;
        }
        // Nothing in flight and no dirty run at or after `from`.
        if from > 0 {
            // Wrap around: runs marked behind us since (failed writes).
            from = 0;
            continue;
        }
        match finish(&node, &t, &copy, volume, extent).await {
            Finish::Done => {
                // A write to the copy failed between the last pass and the map that has it
                // in sync: it differs, so it goes out of the write set again.
                if !t.dirty.is_clean() {
                    tracing::warn!(volume, extent, copy = %t.server,
                        "the rebuilt copy missed a write since: reporting it");
                    let deadline = tokio::time::Instant::now() + MANAGER_CALL;
                    let g = node.map.load().generation;
                    replica::report(&node, volume, extent, &t.server, g, deadline).await;
                }
                return;
            }
            Finish::Refused => return,
            Finish::Retry => {
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Copies bytes `[at, at + len)` of the extent to the copy, under the range lock; on failure
/// they are dirty again.
async fn copy_run(
    node: &Arc<NodeShared>,
    t: &Tracked,
    copy: &Copy,
    at: u64,
    len: u64,
) -> Result<(), VolumeError> {
    let timeout = node.forward_timeout();
    let deadline = tokio::time::Instant::now() + timeout;
    let pool_off = t.start + at;
    let Ok(_guard) =
        tokio::time::timeout_at(deadline, node.replica_locks.lock(pool_off, pool_off + len)).await
    else {
        return Err(VolumeError::NoPath(
            crate::subsystem::volume::NoPath::MapSettling,
        ));
    };
    // Cleared before the read: a write after this run (once the lock is released) that does
    // not reach the copy sets the bits again.
    t.dirty.clear(at, len);
    let buf_len = usize::try_from(len).unwrap_or(0);
    let result = async {
        let data = super::pool::read_pool(&node.pool, pool_off, buf_len).await?;
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let expires = node::expires_at(super::wall_clock_ms(), timeout_ms);
        let op = WriteOp::Data { data, fua: false };
        replica::forward(node, copy, t.offset + at, len, &op, deadline, expires).await
    }
    .await;
    if result.is_err() {
        t.dirty.mark(at, len);
    }
    result
}

/// How the end of a rebuild went.
enum Finish {
    /// The manager marked the copy `in_sync`.
    Done,
    /// The manager refused (the copy went stale, or this server is no longer the primary).
    Refused,
    /// Try again later (a failed flush, no answer).
    Retry,
}

/// The end of a rebuild (docs/replication.md, "The end of a rebuild"): takes the range lock
/// of the copy's whole extent, so that every write in flight to the extent has completed
/// (and marked what the copy missed), and checks the dirty map under it; when it is clean,
/// `report` (still under the lock) records that a rebuild-done report goes out and says
/// whether the copy is still `rebuilding` under this primary. True: the report may be sent
/// (the lock is released on return: a write from then on that misses the copy waits for the
/// report's outcome, [`Tracked::promotion_settled_at`]).
async fn last_check(
    locks: &replica::RangeLocks,
    t: &Tracked,
    deadline: tokio::time::Instant,
    report: impl FnOnce() -> bool,
) -> bool {
    let Ok(_whole) =
        tokio::time::timeout_at(deadline, locks.lock(t.start, t.start.saturating_add(t.len))).await
    else {
        return false;
    };
    t.dirty.is_clean() && report()
}

/// No dirty chunk left: flush the copy, then report it done, with the generation of the map
/// in which the last check (under the whole extent's lock) saw the copy `rebuilding` under
/// this server. The manager refuses a report older than the generation in which the copy last
/// became `rebuilding` (an earlier rebuild's); sent at the map the last check saw, the report
/// of this rebuild is never that old once this server has installed that generation (a
/// refused one is sent again by the next task, [`supervise`], from the newer map).
async fn finish(
    node: &Arc<NodeShared>,
    t: &Tracked,
    copy: &Copy,
    volume: &str,
    extent: usize,
) -> Finish {
    let Some(addr) = node.map.load().server(&copy.server).map(|s| s.internal) else {
        return Finish::Refused;
    };
    let flushed = tokio::time::timeout(node.forward_timeout(), async {
        let q = node.peers.queue(&copy.server, addr).await?;
        q.with_generation(node.admission.ownership().generation())
            .flush(node::REPLICA_NSID)
            .await
    })
    .await;
    if !matches!(flushed, Ok(Ok(()))) {
        tracing::warn!(volume, extent, copy = %copy.server, "rebuild: flushing the copy failed");
        return Finish::Retry;
    }
    let key = t.key();
    let deadline = tokio::time::Instant::now() + node.forward_timeout();
    let checked = AtomicU64::new(0);
    let clean = last_check(&node.replica_locks, t, deadline, || {
        let installed = node.registry.generation.current();
        t.reporting(installed);
        let map = node.map.load();
        checked.store(map.generation, Ordering::Relaxed);
        locate(&map, &node.me, t.start, &key)
            .is_some_and(|(_, _, st, _)| st == ReplicaState::Rebuilding)
    })
    .await;
    if !clean {
        return Finish::Retry;
    }
    let req = RebuildDoneRequest {
        primary: node.me.clone(),
        volume: volume.to_owned(),
        extent,
        server: copy.server.clone(),
        generation: checked.load(Ordering::Relaxed),
    };
    let answer = tokio::time::timeout(MANAGER_CALL, node.client.rebuild_done(&req)).await;
    if let Ok(r) = &answer
        && let Some(g) = settled_by(r)
    {
        // Writes that missed the copy since the last check wait until this server has
        // installed that map, then re-check it ([`Tracked::promotion_settled_at`]).
        t.answered(g);
    }
    match answer {
        Ok(Ok(m)) => {
            tracing::info!(volume, extent, copy = %copy.server, generation = m.generation,
                "rebuild done: the copy is in sync again");
            node.refresh.notify_one();
            // The task ends once this server has the map (the next one drops the clean map).
            node.registry
                .generation
                .wait_for(m.generation, MANAGER_CALL)
                .await;
            Finish::Done
        }
        Ok(Err(ClientError::Http {
            status: 409,
            message,
            generation,
        })) => {
            tracing::warn!(volume, extent, copy = %copy.server, message, manager_generation = ?generation,
                "rebuild-done refused");
            node.refresh.notify_one();
            Finish::Refused
        }
        Ok(Err(e)) => {
            tracing::warn!(volume, extent, copy = %copy.server, error = %e, "rebuild-done report failed");
            Finish::Retry
        }
        Err(_) => {
            tracing::warn!(volume, extent, copy = %copy.server, "rebuild-done report: no answer");
            Finish::Retry
        }
    }
}

/// The generation of the map in which the outcome of a rebuild-done report is known, from
/// the manager's answer `r` (docs/replication.md, "The end of a rebuild"): accepted, the
/// answer's map (the copy `in_sync` there); refused by the planner, the manager's generation
/// the refusal names (the report changed nothing, and every earlier report of the copy the
/// manager accepted, e.g. one whose answer was lost, is in that map or an older one). `None`
/// when nothing is known: no answer, or an error that names no generation (a manager from
/// before refusals named one, an authentication or transport error); writes that missed the
/// copy then wait for a map in which it is not `rebuilding`, or their deadline.
///
/// The refusal's own generation, not the one installed here: this server may not yet have
/// the map of an earlier report's acceptance, and a write that missed the copy must not be
/// acknowledged on a map older than that.
fn settled_by(r: &Result<manager::map::ClusterMap, ClientError>) -> Option<u64> {
    match r {
        Ok(m) => Some(m.generation),
        Err(ClientError::Http { generation, .. }) => *generation,
        Err(_) => None,
    }
}

/// Per-copy rebuild state for status displays: (volume, extent, copy's server) → dirty bytes.
pub fn dirty_bytes(node: &NodeShared) -> HashMap<(String, usize, String), u64> {
    let map = node.map.load();
    node.rebuilds
        .tracked()
        .iter()
        .filter_map(|t| {
            let (v, i, _, _) = locate(&map, &node.me, t.start, &t.key())?;
            Some(((v.to_owned(), i, t.server.clone()), t.dirty.dirty_bytes()))
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;

    #[test]
    fn a_dirty_map_marks_whole_chunks_and_finds_runs() {
        // 1 MiB + 10 KiB: 17 chunks, the last one short.
        let m = DirtyMap::new(1024 * KIB + 10 * KIB, false);
        assert!(m.is_clean());
        assert_eq!(m.next_run(0, IO_MAX), None);
        // A 4 KiB write in chunk 1 and one straddling chunks 3 and 4.
        m.mark(64 * KIB + 8 * KIB, 4 * KIB);
        m.mark(4 * 64 * KIB - 2 * KIB, 4 * KIB);
        assert!(!m.is_clean());
        assert_eq!(m.dirty_bytes(), 3 * DIRTY_CHUNK);
        assert_eq!(m.next_run(0, IO_MAX), Some((64 * KIB, 64 * KIB)));
        // Runs are capped at `max` (here two chunks) and start at or after `from`.
        assert_eq!(m.next_run(128 * KIB, IO_MAX), Some((192 * KIB, 128 * KIB)));
        assert_eq!(m.next_run(200 * KIB, 64 * KIB), Some((256 * KIB, 64 * KIB)));
        assert_eq!(m.next_run(320 * KIB, IO_MAX), None);
        // Out of range marks are clipped; the short last chunk counts its real length.
        m.mark(1024 * KIB + 9 * KIB, 1 << 30);
        assert_eq!(m.next_run(320 * KIB, IO_MAX), Some((1024 * KIB, 10 * KIB)));
        assert_eq!(m.dirty_bytes(), 3 * DIRTY_CHUNK + 10 * KIB);
        m.clear(0, 1 << 40);
        assert!(m.is_clean());
        // A whole map: every chunk.
        let all = DirtyMap::new(256 * KIB, true);
        assert_eq!(all.dirty_bytes(), 256 * KIB);
        all.clear(64 * KIB, 64 * KIB);
        assert_eq!(all.next_run(0, 1 << 20), Some((0, 64 * KIB)));
        assert_eq!(
            all.next_run(64 * KIB, 1 << 20),
            Some((128 * KIB, 128 * KIB))
        );
    }

    #[test]
    fn a_write_marks_the_copies_that_did_not_take_it() {
        let r = Rebuilds::default();
        let ext = 1024 * KIB;
        // A failed in_sync copy gets a clean map, then the write that missed it is marked.
        let a: CopyKey = ("s2".to_owned(), 0);
        let b: CopyKey = ("s3".to_owned(), 4 * ext);
        assert!(!r.tracks(ext, 4096));
        r.missed(
            ext + 4096,
            4096,
            std::slice::from_ref(&b),
            &[(ext, ext, a.clone())],
        );
        assert!(r.tracks(ext, 4096));
        assert!(!r.tracks(2 * ext, 4096), "another extent");
        let t = r.tracked();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].dirty.next_run(0, IO_MAX), Some((0, 64 * KIB)));
        // A write that reached it marks nothing; one that did not, marks.
        r.missed(ext + 512 * KIB, 4096, &[a.clone(), b.clone()], &[]);
        assert_eq!(t[0].dirty.dirty_bytes(), DIRTY_CHUNK);
        r.missed(ext + 512 * KIB, 4096, &[b], &[]);
        assert_eq!(t[0].dirty.dirty_bytes(), 2 * DIRTY_CHUNK);
        // Failing again does not replace the map.
        r.missed(ext + 256 * KIB, 4096, &[], &[(ext, ext, a)]);
        assert_eq!(r.tracked().len(), 1);
        assert_eq!(r.tracked()[0].dirty.dirty_bytes(), 3 * DIRTY_CHUNK);
    }

    #[tokio::test]
    async fn the_end_of_a_rebuild_waits_for_the_writes_in_flight_to_the_extent() {
        let locks = Arc::new(replica::RangeLocks::default());
        let t = Arc::new(Tracked::new(1 << 20, 256 * KIB, "s2", 0, false));
        // A write in flight to the extent (it holds its range; its forward to the copy will
        // fail).
        let write = locks.lock((1 << 20) + 8 * KIB, (1 << 20) + 12 * KIB).await;
        let (l, tc) = (Arc::clone(&locks), Arc::clone(&t));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let check = tokio::spawn(async move {
            let reported = AtomicBool::new(false);
            let clean = last_check(&l, &tc, deadline, || {
                reported.store(true, Ordering::Relaxed);
                true
            })
            .await;
            (clean, reported.load(Ordering::Relaxed))
        });
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(
            !check.is_finished(),
            "the last check must wait for the write in flight"
        );
        // The write's forward fails: it marks the copy, then completes.
        t.dirty.mark(8 * KIB, 4 * KIB);
        drop(write);
        let (clean, reported) = tokio::time::timeout(Duration::from_secs(30), check)
            .await
            .expect("hang guard")
            .expect("task");
        assert!(
            !clean && !reported,
            "the missed write must hold the report back"
        );
        assert_eq!(t.promotion_settled_at(), 0, "no report went out");
        // Clean: the report goes out, and a write that misses the copy from now on waits
        // for its outcome.
        t.dirty.clear(0, 256 * KIB);
        assert!(
            last_check(&locks, &t, deadline, || {
                t.reporting(7);
                true
            })
            .await
        );
        assert_eq!(t.promotion_settled_at(), u64::MAX);
        t.answered_at.store(8, Ordering::Release);
        assert_eq!(t.promotion_settled_at(), 8);
        // A map in which the copy is not rebuilding settles it too.
        t.left_at.store(9, Ordering::Release);
        assert_eq!(t.promotion_settled_at(), 9);
    }

    #[test]
    fn a_refused_rebuild_done_report_is_settled_at_the_managers_generation() {
        let t = Tracked::new(1 << 20, 256 * KIB, "s2", 0, false);
        t.reporting(7);
        assert_eq!(t.promotion_settled_at(), u64::MAX, "no answer yet");
        // A 409 naming the manager's generation (12): the outcome is known once this server
        // has installed map 12 (an earlier report accepted meanwhile is in it or older), not
        // at the map installed here (7), and not never.
        let refused: Result<manager::map::ClusterMap, ClientError> = Err(ClientError::Http {
            status: 409,
            message: "rebuild-done report ... is from an earlier rebuild".to_owned(),
            generation: Some(12),
        });
        assert_eq!(settled_by(&refused), Some(12));
        t.answered(settled_by(&refused).unwrap());
        assert_eq!(t.promotion_settled_at(), 12);
        // An accepted answer: its map.
        let mut m = manager::map::ClusterMap::empty();
        m.generation = 13;
        assert_eq!(settled_by(&Ok(m)), Some(13));
        // Nothing known: a refusal from a manager that names no generation, no answer.
        let old_manager: Result<manager::map::ClusterMap, ClientError> = Err(ClientError::Http {
            status: 409,
            message: "refused".to_owned(),
            generation: None,
        });
        assert_eq!(settled_by(&old_manager), None);
        assert_eq!(
            settled_by(&Err(ClientError::Unreachable("reset".to_owned()))),
            None
        );
        // The next report starts without an answer again.
        t.reporting(12);
        assert_eq!(t.promotion_settled_at(), u64::MAX);
    }

    #[tokio::test]
    async fn pacing_spreads_rebuild_writes_at_the_rate() {
        let r = Rebuilds::default();
        r.set_rate(10_000_000);
        let t0 = tokio::time::Instant::now();
        for _ in 0..4 {
            r.pace(250_000).await;
        }
        // Four 25 ms slots: the fourth cannot start before 75 ms (a lower bound only: a loaded
        // machine may be later, never earlier).
        assert!(
            t0.elapsed() >= Duration::from_millis(75),
            "{:?}",
            t0.elapsed()
        );
        // Unlimited: no slot is reserved.
        r.set_rate(0);
        let before = *lock(&r.next_slot);
        r.pace(1 << 30).await;
        assert_eq!(*lock(&r.next_slot), before);
    }
}
