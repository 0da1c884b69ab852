//! Copy-then-switch on the owner, following target/src/cluster/mover.rs: while the owner's map
//! says an extent it owns is moving, writes to its pool range are tracked (dirty chunks of
//! `TRACK_CHUNK` bytes); the copier copies the dirty chunks (all of them at first) in ranges of
//! up to `COPY_IO_MAX`, pass after pass, until a pass copied at most `CONVERGED_CHUNKS`
//! (or `PASSES_MAX` passes), then tells the manager (`move-ready`) until it is stopped.
//! `sync` starts copiers for new moves and aborts those no longer wanted.

use manager::api::MoveReadyRequest;
use manager::map::Replica;

use super::server::{CopyOwner, Task};
use super::world::{BLOCK, Node, Req, Timer, World};

// The daemon's copier policy (`tessera::cluster::mover`, `pool`, `node::policy`).
pub use tessera::cluster::mover::{CONVERGED_CHUNKS, PASSES_MAX};
pub use tessera::cluster::node::policy::{PASS_RETRY_MS, READY_RETRY_MS};
/// pool.rs `TRACK_CHUNK` (4 KiB) in blocks.
pub const CHUNK_BLOCKS: u64 = tessera::cluster::pool::TRACK_CHUNK / BLOCK;
/// mover.rs `COPY_IO_MAX / TRACK_CHUNK`.
pub const CHUNKS_PER_IO: usize =
    (tessera::cluster::mover::COPY_IO_MAX / tessera::cluster::pool::TRACK_CHUNK) as usize;

pub fn chunks(nblk: u64) -> usize {
    nblk.div_ceil(CHUNK_BLOCKS) as usize
}

/// One pass over a taken dirty map.
#[derive(Debug, Default)]
pub struct Pass {
    pub bits: Vec<bool>,
    /// Next chunk to look at.
    pub cursor: usize,
    /// First chunk of the range being copied (remarked from there on failure).
    pub current: usize,
    pub task: Option<u64>,
}

impl Pass {
    pub fn new(bits: Vec<bool>) -> Self {
        Self {
            bits,
            ..Self::default()
        }
    }

    /// The next range to copy as (first block, blocks) within the region, advancing.
    pub fn next_range(&mut self, nblk: u64) -> Option<(u64, u64)> {
        let total = self.bits.len();
        let bits = &self.bits;
        // The real rule (`node::next_dirty_run`, mover.rs `copy`).
        let Some((c, end)) =
            tessera::cluster::node::next_dirty_run(total, |i| bits[i], self.cursor, CHUNKS_PER_IO)
        else {
            self.cursor = total;
            return None;
        };
        self.current = c;
        self.cursor = end;
        let first = c as u64 * CHUNK_BLOCKS;
        let last = (end as u64 * CHUNK_BLOCKS).min(nblk);
        Some((first, last - first))
    }
}

#[derive(Debug)]
pub enum MvSt {
    Pass(Pass),
    Sleep(u64),
    Ready(Option<u64>),
    ReadySleep(u64),
    Done,
}

#[derive(Debug)]
pub struct Mover {
    /// The region: pool blocks `start..start + nblk` of this server.
    pub start: u64,
    pub nblk: u64,
    pub dest: Replica,
    pub dirty: Vec<bool>,
    pub stop: bool,
    pub st: MvSt,
    pub passes: u32,
    pub token: u64,
    pub req: Option<MoveReadyRequest>,
}

impl Mover {
    /// Whether the copier task is inside an await (it sees `stop` when that completes).
    pub fn busy(&self) -> bool {
        match &self.st {
            MvSt::Pass(p) => p.task.is_some(),
            MvSt::Sleep(_) | MvSt::ReadySleep(_) | MvSt::Ready(Some(_)) => true,
            MvSt::Ready(None) | MvSt::Done => false,
        }
    }

    pub fn finish(&mut self) {
        self.st = MvSt::Done;
    }

    /// Takes (and clears) the dirty map.
    pub fn take(&mut self) -> Vec<bool> {
        let n = self.dirty.len();
        std::mem::replace(&mut self.dirty, vec![false; n])
    }

    /// Marks chunks `from..` of a taken map dirty again.
    pub fn remark(&mut self, bits: &[bool], from: usize) {
        for (c, b) in bits.iter().enumerate().skip(from) {
            if *b {
                self.dirty[c] = true;
            }
        }
    }

    /// A write to pool blocks `blk..blk + n`.
    pub fn mark(&mut self, blk: u64, n: u64) {
        let (lo, hi) = (blk.max(self.start), (blk + n).min(self.start + self.nblk));
        if lo >= hi {
            return;
        }
        for c in (lo - self.start) / CHUNK_BLOCKS..=(hi - 1 - self.start) / CHUNK_BLOCKS {
            self.dirty[c as usize] = true;
        }
    }
}

impl World {
    /// mover.rs `sync`: copiers for the extents this server owns that its map says are moving.
    pub fn mover_sync(&mut self, i: usize) {
        let me = self.srv[i].id.clone();
        let map = std::sync::Arc::clone(&self.srv[i].map);
        let mut want = Vec::new();
        // A server that does not serve (marked down, or catching up) copies nothing.
        let serving = self.srv[i].own.serving();
        for v in map.volumes.iter().filter(|_| serving) {
            for (e, ext) in v.extents.iter().enumerate() {
                let (Some(owner), Some(mv)) = (ext.replicas.first(), &ext.moving) else {
                    continue;
                };
                if owner.server != me {
                    continue;
                }
                if let Some((_, len)) = v.extent_range(e) {
                    want.push((
                        (v.name.clone(), e),
                        owner.offset / BLOCK,
                        len / BLOCK,
                        mv.to.clone(),
                    ));
                }
            }
        }
        let s = &mut self.srv[i];
        let unwanted: Vec<_> = s
            .movers
            .iter()
            .filter(|(k, m)| !want.iter().any(|(wk, _, _, to)| wk == *k && *to == m.dest))
            .map(|(k, _)| k.clone())
            .collect();
        for k in unwanted {
            // Aborted: a copy in flight still lands, nobody waits for it.
            if let Some(m) = s.movers.remove(&k)
                && let MvSt::Pass(Pass { task: Some(t), .. }) = m.st
                && let Some(Task::Copy { owner, .. }) = s.tasks.get_mut(&t)
            {
                *owner = CopyOwner::Orphan;
            }
        }
        for (key, start, nblk, dest) in want {
            if self.srv[i].movers.contains_key(&key) {
                continue;
            }
            self.note(format!(
                "{me}: copy of {}[{}] to {} started",
                key.0, key.1, dest.server
            ));
            self.srv[i].movers.insert(
                key.clone(),
                Mover {
                    start,
                    nblk,
                    dest,
                    dirty: vec![true; chunks(nblk)],
                    stop: false,
                    st: MvSt::Done,
                    passes: 0,
                    token: 0,
                    req: None,
                },
            );
            self.mover_pass_begin(i, &key);
        }
    }

    fn mover_pass_begin(&mut self, i: usize, key: &(String, usize)) {
        let Some(m) = self.srv[i].movers.get_mut(key) else {
            return;
        };
        let bits = m.take();
        m.st = MvSt::Pass(Pass::new(bits));
        self.mover_step(i, key);
    }

    fn mover_step(&mut self, i: usize, key: &(String, usize)) {
        let Some(m) = self.srv[i].movers.get_mut(key) else {
            return;
        };
        let (stop, nblk, start) = (m.stop, m.nblk, m.start);
        let dest = m.dest.clone();
        let MvSt::Pass(p) = &mut m.st else {
            return;
        };
        let saved = p.cursor;
        match p.next_range(nblk) {
            None => self.mover_pass_done(i, key, true),
            Some(_) if stop => {
                p.cursor = saved;
                let from = p.current.max(saved);
                let bits = std::mem::take(&mut p.bits);
                m.remark(&bits, from);
                self.mover_pass_done(i, key, false);
            }
            Some((first, n)) => {
                let t = self.copy_start(
                    i,
                    CopyOwner::Mover(key.clone()),
                    start + first,
                    n,
                    dest.server.clone(),
                    dest.offset / BLOCK + first,
                );
                if let Some(Mover {
                    st: MvSt::Pass(p), ..
                }) = self.srv[i].movers.get_mut(key)
                {
                    // The copy may have finished synchronously (it cannot: it sends a
                    // command), so the task id is recorded here.
                    p.task = Some(t);
                }
            }
        }
    }

    pub fn mover_copy_done(&mut self, i: usize, key: &(String, usize), ok: bool) {
        let Some(m) = self.srv[i].movers.get_mut(key) else {
            return;
        };
        let MvSt::Pass(p) = &mut m.st else {
            return;
        };
        p.task = None;
        if ok {
            return self.mover_step(i, key);
        }
        let from = p.current;
        let bits = std::mem::take(&mut p.bits);
        m.remark(&bits, from);
        self.mover_pass_done(i, key, false);
    }

    fn mover_pass_done(&mut self, i: usize, key: &(String, usize), ok: bool) {
        let cur = self.srv[i].generation.current();
        let me = self.srv[i].id.clone();
        let Some(m) = self.srv[i].movers.get_mut(key) else {
            return;
        };
        if !ok {
            if m.stop {
                m.st = MvSt::Done;
                return self.install_copier_stopped(i, key);
            }
            m.token += 1;
            m.st = MvSt::Sleep(m.token);
            let token = m.token;
            return self.timer(
                Node::Srv(i),
                PASS_RETRY_MS,
                Timer::MoverWake {
                    key: key.clone(),
                    token,
                },
            );
        }
        let n = match &m.st {
            MvSt::Pass(p) => p.bits.iter().filter(|b| **b).count(),
            _ => 0,
        };
        m.passes += 1;
        if tessera::cluster::node::converged(n, m.passes, CONVERGED_CHUNKS, PASSES_MAX) {
            m.req = Some(MoveReadyRequest {
                server: me.clone(),
                volume: key.0.clone(),
                extent: key.1,
                generation: cur,
            });
            m.st = MvSt::Ready(None);
            self.note(format!("{me}: copy of {}[{}] converged", key.0, key.1));
            self.mover_ready_send(i, key);
        } else {
            self.mover_pass_begin(i, key);
        }
    }

    fn mover_ready_send(&mut self, i: usize, key: &(String, usize)) {
        let Some(m) = self.srv[i].movers.get_mut(key) else {
            return;
        };
        if m.stop {
            m.st = MvSt::Done;
            return self.install_copier_stopped(i, key);
        }
        let Some(req) = m.req.clone() else {
            return;
        };
        let id = self.rpc(Node::Srv(i), Req::MoveReady(req));
        self.srv[i]
            .rpcs
            .insert(id, super::server::RpcFor::MoveReady(key.clone()));
        if let Some(m) = self.srv[i].movers.get_mut(key) {
            m.st = MvSt::Ready(Some(id));
        }
    }

    pub fn mover_ready_done(&mut self, i: usize, key: &(String, usize), ok: bool) {
        let Some(m) = self.srv[i].movers.get_mut(key) else {
            return;
        };
        if !matches!(m.st, MvSt::Ready(Some(_))) {
            return;
        }
        if ok {
            m.st = MvSt::Done;
            if m.stop {
                self.install_copier_stopped(i, key);
            }
            return;
        }
        m.token += 1;
        m.st = MvSt::ReadySleep(m.token);
        let token = m.token;
        self.timer(
            Node::Srv(i),
            READY_RETRY_MS,
            Timer::MoverWake {
                key: key.clone(),
                token,
            },
        );
    }

    pub fn mover_wake(&mut self, i: usize, key: &(String, usize), token: u64) {
        let Some(m) = self.srv[i].movers.get_mut(key) else {
            return;
        };
        match m.st {
            MvSt::Sleep(t) if t == token => {
                if m.stop {
                    m.st = MvSt::Done;
                    self.install_copier_stopped(i, key);
                } else {
                    self.mover_pass_begin(i, key);
                }
            }
            MvSt::ReadySleep(t) if t == token => self.mover_ready_send(i, key),
            _ => {}
        }
    }
}
