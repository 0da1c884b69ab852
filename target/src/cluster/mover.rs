//! Copy-then-switch for extents this server owns and the map says are moving
//! (docs/cluster-protocol.md, "Moving an extent").
//!
//! While the map says `moving: {to}`, writes to the extent's pool range are recorded in a dirty
//! map ([`super::pool::DirtyRegion`]); the copier copies the whole extent to `to`, then only
//! what was written meanwhile, until a pass finds little left, and tells the manager. At the
//! switch (the install's final copy: [`stop_copier`], [`final_pass`], with the install gate
//! closed) the copier is stopped at a chunk boundary (chunks it had taken but not copied are marked dirty again), the remaining dirty
//! chunks are copied, and tracking ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bitvec::prelude::{BitVec, Lsb0};
use manager::api::MoveReadyRequest;
use manager::map::{ClusterMap, Replica};

use super::NodeShared;
use super::node::{self as rules, COPY_NSID};
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
    pub install_lock: InstallLock,
}

/// The lock that lets one install run at a time, and the start of the install holding it:
/// its final copies must end [`rules::install::FINAL_BUDGET_MS`] after that start (the
/// machine's [`rules::install::Install::deadline`], which the install takes right after the
/// lock), so [`final_pass`] starts no try of a range past it.
#[derive(Default)]
pub struct InstallLock {
    one: tokio::sync::Mutex<()>,
    began: std::sync::Mutex<Option<tokio::time::Instant>>,
}

/// An install holding [`InstallLock`]; the lock and its start are released when dropped.
pub struct InstallGuard<'a> {
    lock: &'a InstallLock,
    _one: tokio::sync::MutexGuard<'a, ()>,
}

impl InstallLock {
    /// Waits for the install before this one to end; the budget of this one starts now.
    pub async fn lock(&self) -> InstallGuard<'_> {
        let one = self.one.lock().await;
        *lock(&self.began) = Some(tokio::time::Instant::now());
        InstallGuard {
            lock: self,
            _one: one,
        }
    }

    /// When the final copies of the install holding the lock must stop (none without one).
    fn final_deadline(&self) -> Option<tokio::time::Instant> {
        let budget = Duration::from_millis(rules::install::FINAL_BUDGET_MS);
        lock(&self.began).map(|t| t + budget)
    }
}

impl Drop for InstallGuard<'_> {
    fn drop(&mut self) {
        *lock(&self.lock.began) = None;
    }
}

/// Starts copiers for extents this server owns that `map` says are moving; forgets the ones
/// that are no longer moving here (a move that was switched or cancelled).
pub fn sync(node: &Arc<NodeShared>, map: &ClusterMap) {
    // A server that does not serve (marked down, or catching up) copies nothing.
    let want: HashMap<(String, usize), (u64, u64, Replica)> =
        rules::copier::wanted(map, &node.me, node.admission.serving())
            .into_iter()
            .map(|w| (w.key, (w.offset, w.len, w.dest)))
            .collect();
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

/// The shell of [`rules::copier::Copier`], which decides when to copy, retry, report the
/// move ready and end.
async fn copier(
    node: Arc<NodeShared>,
    volume: String,
    extent: usize,
    region: Arc<DirtyRegion>,
    dest: Replica,
    stop: Arc<AtomicBool>,
) {
    use rules::copier::{Action, Copier, Event};
    let mut c = Copier::new(CONVERGED_CHUNKS, PASSES_MAX);
    let mut req: Option<MoveReadyRequest> = None;
    let mut event = Event::Start;
    loop {
        let Some(action) = c.on_event(event, stop.load(Ordering::Acquire)) else {
            return;
        };
        event = match action {
            Action::CopyPass => {
                let bits = region.take();
                let chunks = bits.count_ones();
                match copy(&node, &region, &bits, &dest, Some(&stop), None).await {
                    Ok(()) => Event::PassDone { chunks },
                    Err(_) => Event::PassFailed,
                }
            }
            Action::RetryAfter(ms) => {
                // Cut short once stopped: the install that stops us holds its gate closed.
                sleep_unless_stopped(Duration::from_millis(ms), Some(&stop), None).await;
                Event::Timer
            }
            Action::MoveReady => {
                let req = req.get_or_insert_with(|| {
                    tracing::info!(%volume, extent, passes = c.passes(), "extent copy converged");
                    MoveReadyRequest {
                        server: node.me.clone(),
                        volume: volume.clone(),
                        extent,
                        generation: node.registry.generation.current(),
                    }
                });
                // Given up once stopped (the request may still reach the manager: the switch
                // waits for our install's ack anyway), instead of waiting out its timeout while
                // the install that stops us holds its gate closed.
                match unless_stopped(node.client.move_ready(req), &stop).await {
                    Some(Ok(())) => Event::ReadyDone { ok: true },
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "move-ready not accepted yet");
                        Event::ReadyDone { ok: false }
                    }
                    None => Event::ReadyDone { ok: false },
                }
            }
            Action::Done => return,
        };
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
/// boundary when asked and marks what it had not copied dirty again. `until`: a final copy
/// (inside an install), which starts no try of a range from then on.
async fn copy(
    node: &Arc<NodeShared>,
    region: &DirtyRegion,
    bits: &BitVec<u64, Lsb0>,
    dest: &Replica,
    stop: Option<&AtomicBool>,
    until: Option<Final>,
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
            stop,
            until,
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

/// How long one try of a copy waits for the destination's answer: longer than a frozen
/// peer's freeze threshold plus a heartbeat (`node::FREEZE_MS`, `node::HEARTBEAT_MS`), so a
/// peer that let it pass unanswered because it was stopped fences itself on resume.
pub const COPY_TRY_TIMEOUT_MS: u64 = rules::FREEZE_MS + rules::HEARTBEAT_MS + 500;
const COPY_TRY_TIMEOUT: Duration = Duration::from_millis(COPY_TRY_TIMEOUT_MS);

/// The longest a phase-1a install losing `lost` extents keeps its gate closed once the
/// commands that were inside have left (docs/cluster-protocol.md, "Bounds"): the final-copy
/// budget ([`rules::install::FINAL_BUDGET_MS`]), past which no final pass starts and no try of
/// a range either, plus, per lost extent, one copy try in flight: the final pass's try begun
/// before the budget ended, or the stop of an extent's copier, which waits only for its try
/// in flight (a stopped copier cuts its pause short and gives up its move-ready request).
/// Local work (reading the pool, persisting the map) is not counted. One switch: 7 s.
pub const fn gate_closed_max_ms(lost: u64) -> u64 {
    rules::install::FINAL_BUDGET_MS + lost * COPY_TRY_TIMEOUT_MS
}

/// The expiry of one copy try (docs/cluster-protocol.md, "Bounds").
fn copy_expiry() -> u64 {
    let timeout_ms = u64::try_from(COPY_TRY_TIMEOUT.as_millis()).unwrap_or(u64::MAX);
    rules::expires_at(super::wall_clock_ms(), timeout_ms)
}

/// A final copy (inside an install): no try of a range starts at or after this instant, the
/// end of the install's final-copy budget ([`InstallLock`]).
type Final = tokio::time::Instant;

/// Copies one range to the new owner. `until` (a final copy): the copy runs inside an install
/// (the watch loop is busy with it), so instead of waiting for our own map to catch up, the
/// write is stamped with the generation the new owner reports — the protocol's rule for the
/// final copy ("stamped with the generation the target server still has"); and no try starts
/// at or after `until`, nor does a pause between tries last past it.
async fn copy_range(
    node: &Arc<NodeShared>,
    pool_off: u64,
    len: u64,
    dest_off: u64,
    dest_server: &str,
    stop: Option<&AtomicBool>,
    until: Option<Final>,
) -> Result<(), CopyError> {
    let data = read_pool(&node.pool, pool_off, usize::try_from(len).unwrap_or(0))
        .await
        .map_err(|e| CopyError::Failed(e.to_string()))?;
    use rules::retry::{Answer, Next, Retry};
    let mut retry = Retry::copy(until.is_some(), node.registry.generation.current());
    while let Some(g) = retry.next_try(node.registry.generation.current()) {
        // A copier asked to stop does not wait out its retries (the install that stops it
        // holds its gate closed meanwhile); the try in flight, if any, has ended.
        if stop.is_some_and(|s| s.load(Ordering::Acquire)) {
            return Err(CopyError::Failed("stopped".to_string()));
        }
        // Nor does a final copy past the install's budget (the gate is closed).
        if until.is_some_and(|u| tokio::time::Instant::now() >= u) {
            return Err(CopyError::Failed(
                "the final-copy budget is spent".to_string(),
            ));
        }
        let map = node.map.load_full();
        let addr = map
            .server(dest_server)
            .map(|s| s.internal)
            .ok_or_else(|| CopyError::Failed(format!("server {dest_server} left the map")))?;
        // One try, the connection to the peer included, waits at most COPY_TRY_TIMEOUT: a
        // hung peer may accept a TCP connection and never answer.
        let expires = copy_expiry();
        let attempt = async {
            match node.peers.queue(dest_server, addr).await {
                Err(e) => Try::Unreachable(e),
                // The peer does not start the copy past `expires` (shortly before we give the
                // try up): a copy given up cannot land later over a newer copy of the same
                // blocks.
                Ok(q) => Try::Answered(
                    q.with_generation(g)
                        .expiring(expires)
                        .write(
                            COPY_NSID,
                            dest_off / u64::from(INTERNAL_BLOCK),
                            INTERNAL_BLOCK,
                            data.clone(),
                            false,
                        )
                        .await,
                ),
            }
        };
        let answer = match tokio::time::timeout(COPY_TRY_TIMEOUT, attempt).await {
            Ok(Try::Unreachable(e)) => {
                tracing::debug!(error = %e, "copy: peer unreachable");
                node.peers.drop_peer(dest_server);
                Answer::Lost
            }
            Err(_) => {
                // A hung peer (SIGSTOP, a stalled VM) never answers: give the try up and
                // drop the connection. The command may still be in the peer's socket; a
                // peer stopped this long fences itself when it resumes (its heartbeat sees
                // the jump, `node::FREEZE_MS`) and refuses it, and a slow one finds it
                // expired.
                tracing::debug!(to = dest_server, "copy: no answer in time");
                node.peers.drop_peer(dest_server);
                Answer::Lost
            }
            Ok(Try::Answered(r)) => match r {
                Ok(()) => return Ok(()),
                // "Server behind" without a generation: the peer serves nothing (marked
                // down, fenced, catching up). Retrying cannot help before its map
                // changes: the pass fails (the copier or the install tries again later).
                Err(InitiatorError::Generation {
                    server_generation: 0,
                    ..
                }) => {
                    return Err(CopyError::Failed(format!("{dest_server} serves nothing")));
                }
                Err(InitiatorError::Generation {
                    server_generation, ..
                }) => Answer::Mismatch {
                    theirs: server_generation,
                },
                Err(e) if e.is_connection_fatal() => {
                    node.peers.drop_peer(dest_server);
                    Answer::Lost
                }
                Err(InitiatorError::Status(s))
                    if s.same_code(codec::nvme::Status::ACCESS_DENIED) =>
                {
                    return Err(CopyError::NotSource);
                }
                Err(e) => return Err(CopyError::Failed(e.to_string())),
            },
        };
        match retry.on_answer(g, answer) {
            // Inside an install our own map cannot move: the final copy adopted the new
            // owner's generation; retry at once.
            Next::Now => {}
            Next::WaitFor { generation, ms } => {
                node.refresh.notify_one();
                let d = until_at_most(Duration::from_millis(ms), until);
                node.registry.generation.wait_for(generation, d).await;
            }
            Next::Sleep { ms, refresh } => {
                if refresh {
                    node.refresh.notify_one();
                }
                sleep_unless_stopped(Duration::from_millis(ms), stop, until).await;
            }
        }
    }
    Err(CopyError::Failed(format!(
        "copy to {dest_server} kept failing"
    )))
}

/// How one try of a copy ended (within its time limit).
enum Try {
    /// No connection to the peer.
    Unreachable(InitiatorError),
    /// The peer's answer to the write.
    Answered(Result<(), InitiatorError>),
}

/// `d`, or less so as to end at `until`.
fn until_at_most(d: Duration, until: Option<Final>) -> Duration {
    until.map_or(d, |u| {
        d.min(u.saturating_duration_since(tokio::time::Instant::now()))
    })
}

/// Runs `f` unless `stop` is set first (looked at every [`STOP_POLL`]): `None` if stopped.
async fn unless_stopped<F: std::future::Future>(f: F, stop: &AtomicBool) -> Option<F::Output> {
    let watch = async {
        while !stop.load(Ordering::Acquire) {
            tokio::time::sleep(STOP_POLL).await;
        }
    };
    tokio::select! {
        out = f => Some(out),
        () = watch => None,
    }
}

/// Sleeps `d`, in slices of [`STOP_POLL`], ending early once `stop` is set (a stopped copier
/// does not wait out its backoff) or at `until` (a final copy past its budget starts no try).
async fn sleep_unless_stopped(d: Duration, stop: Option<&AtomicBool>, until: Option<Final>) {
    let d = until_at_most(d, until);
    let Some(stop) = stop else {
        return tokio::time::sleep(d).await;
    };
    let end = tokio::time::Instant::now() + d;
    while !stop.load(Ordering::Acquire) {
        let now = tokio::time::Instant::now();
        if now >= end {
            return;
        }
        tokio::time::sleep((end - now).min(STOP_POLL)).await;
    }
}

/// How often a copier's backoff looks at its stop flag.
const STOP_POLL: Duration = Duration::from_millis(20);

// ---- the install's side (`node::install`: the shell carries out its actions) -------------

/// `StopCopier`: stops the copier of `key` at a chunk boundary and takes its region; without
/// copier state (this server restarted during the move, or the move started and switched
/// between two maps we did not see) what was written meanwhile is not known, so the whole
/// extent `whole` (pool offset, length) is tracked, all of it dirty. `None`: nothing to copy.
pub async fn stop_copier(
    node: &Arc<NodeShared>,
    key: &(String, usize),
    whole: Option<(u64, u64)>,
) -> Option<Arc<DirtyRegion>> {
    let taken = lock(&node.movers.active).remove(key);
    match taken {
        Some(a) => {
            a.stop.store(true, Ordering::Release);
            let _ = a.task.await;
            Some(a.region)
        }
        None => {
            let (off, len) = whole?;
            let region = node.pool.0.track(off, len);
            region.mark_all();
            Some(region)
        }
    }
}

/// `FinalPass`: the gate is closed, nothing writes the region; copy what is dirty to `dest`,
/// starting no try of a range once the install's final-copy budget is spent (the install
/// holds [`Movers::install_lock`], which knows when it began).
pub async fn final_pass(
    node: &Arc<NodeShared>,
    region: &DirtyRegion,
    dest: &Replica,
) -> rules::install::PassOutcome {
    use rules::install::PassOutcome;
    let bits = region.take();
    if bits.not_any() {
        return PassOutcome::Clean;
    }
    // Bounded by the install's budget (the install holds the lock; were none to, this pass
    // gets a budget of its own).
    let until = node
        .movers
        .install_lock
        .final_deadline()
        .unwrap_or_else(|| {
            tokio::time::Instant::now() + Duration::from_millis(rules::install::FINAL_BUDGET_MS)
        });
    match copy(node, region, &bits, dest, None, Some(until)).await {
        Ok(()) => PassOutcome::Copied,
        Err(CopyError::NotSource) => {
            // The new owner's map no longer names us as the source: the switch happened
            // without us (we were marked down). Our copy of the extent is obsolete.
            tracing::warn!(to = %dest.server,
                "final copy refused: the move was switched without this server; \
                 dropping its copy");
            PassOutcome::NotSource
        }
        Err(CopyError::Failed(_)) => {
            remark(region, &bits, 0);
            PassOutcome::Failed
        }
    }
}

/// `FinalCheck`: whether no dirty chunk is left (those left are marked dirty again).
pub fn final_check(region: &DirtyRegion) -> bool {
    let left = region.take();
    if left.not_any() {
        return true;
    }
    remark(region, &left, 0);
    false
}

/// `Untrack`: the extent is switched; its writes are no longer tracked.
pub fn untrack(node: &NodeShared, region: &Arc<DirtyRegion>) {
    node.pool.0.untrack(region);
}

/// `KeepTracked`: the region stays tracked under a stopped copier until the install is over
/// (its final copy is incomplete, or another lost extent's is not done yet).
pub fn keep_tracked(
    node: &NodeShared,
    key: (String, usize),
    region: Arc<DirtyRegion>,
    dest: Replica,
) {
    tracing::debug!(volume = %key.0, extent = key.1, to = %dest.server,
        "extent stays tracked until the install is over");
    lock(&node.movers.active).insert(
        key,
        Active {
            region,
            dest,
            stop: Arc::new(AtomicBool::new(true)),
            task: tokio::spawn(async {}),
        },
    );
}

/// `Forget`: the extent's volume is gone from the new map; stop its copier and tracking.
pub fn forget(node: &NodeShared, key: &(String, usize)) {
    if let Some(a) = lock(&node.movers.active).remove(key) {
        a.stop.store(true, Ordering::Release);
        a.task.abort();
        node.pool.0.untrack(&a.region);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_install_lock_knows_when_the_final_copies_must_stop() {
        let l = InstallLock::default();
        assert_eq!(l.final_deadline(), None, "no install holds it");
        let before = tokio::time::Instant::now();
        let held = l.lock().await;
        let budget = Duration::from_millis(rules::install::FINAL_BUDGET_MS);
        let d = l.final_deadline().expect("an install holds it");
        assert!(d >= before + budget && d <= tokio::time::Instant::now() + budget);
        drop(held);
        assert_eq!(l.final_deadline(), None, "released");
    }

    /// A final copy's pause ends at its deadline; a stopped copier's pause and move-ready end
    /// at once (the install that stops it holds its gate closed).
    /// (The upper limits are generous hang guards, not timing assertions.)
    #[tokio::test]
    async fn pauses_and_requests_end_at_the_deadline_or_the_stop() {
        let t0 = tokio::time::Instant::now();
        let until = t0 + Duration::from_millis(50);
        sleep_unless_stopped(Duration::from_secs(600), None, Some(until)).await;
        assert!(tokio::time::Instant::now() >= until);
        assert!(t0.elapsed() < Duration::from_secs(300));
        let stop = AtomicBool::new(true);
        let t1 = tokio::time::Instant::now();
        sleep_unless_stopped(Duration::from_secs(600), Some(&stop), None).await;
        assert!(t1.elapsed() < Duration::from_secs(300));
        let never = std::future::pending::<()>();
        assert_eq!(unless_stopped(never, &stop).await, None);
        let go = AtomicBool::new(false);
        assert_eq!(unless_stopped(async { 7 }, &go).await, Some(7));
    }
}
