//! Copy-then-switch on the owner: the shell of the REAL copier
//! (`tessera::cluster::node::copier::Copier`, as target/src/cluster/mover.rs drives it), which
//! decides when to copy a pass, retry, report move-ready and end. Here: while the owner's map
//! says an extent it owns is moving, writes to its pool range are tracked (dirty chunks of
//! `TRACK_CHUNK` bytes); a pass copies the dirty chunks it took in ranges of up to
//! `COPY_IO_MAX` (`node::next_dirty_run`), stopping at a chunk boundary when an install stops
//! it. `sync` starts copiers for new moves and aborts those no longer wanted.

use manager::api::MoveReadyRequest;
use manager::map::Replica;
use tessera::cluster::node::copier::{Action, Copier, Event};

use super::server::CopyOwner;
use super::world::{BLOCK, Node, Req, Timer, World};

// The daemon's copier policy (`tessera::cluster::mover`, `pool`, `node::policy`).
pub use tessera::cluster::mover::{CONVERGED_CHUNKS, PASSES_MAX};
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

/// What the copier's shell waits for.
#[derive(Debug)]
pub enum MvSt {
    /// The copies of a pass (`PassDone` / `PassFailed`).
    Pass(Pass),
    /// A timer with this token (`Timer`).
    Sleep(u64),
    /// The manager's answer to move-ready, the RPC in flight (`ReadyDone`).
    Ready(Option<u64>),
    /// Over (or not started: an install's final copy without copier state).
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
    /// The REAL copier (`tessera::cluster::node::copier::Copier`): it decides.
    pub c: Copier,
    pub st: MvSt,
    pub token: u64,
    pub req: Option<MoveReadyRequest>,
}

impl Mover {
    /// Whether the copier task is inside an await (it sees `stop` when that completes).
    pub fn busy(&self) -> bool {
        match &self.st {
            MvSt::Pass(p) => p.task.is_some(),
            MvSt::Sleep(_) | MvSt::Ready(Some(_)) => true,
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
        // The REAL rule (`node::copier::wanted`): a server that does not serve (marked down,
        // or catching up) copies nothing.
        let want: Vec<_> = tessera::cluster::node::copier::wanted(
            &self.srv[i].map,
            &me,
            self.srv[i].own.serving(),
        )
        .into_iter()
        .map(|w| (w.key, w.offset / BLOCK, w.len / BLOCK, w.dest))
        .collect();
        let s = &mut self.srv[i];
        let unwanted: Vec<_> = s
            .movers
            .iter()
            .filter(|(k, m)| !want.iter().any(|(wk, _, _, to)| wk == *k && *to == m.dest))
            .map(|(k, _)| k.clone())
            .collect();
        for k in unwanted {
            // Aborted (`mover::sync`: the task is aborted): a command already sent may still
            // land, with the stamp it was sent with; no retry follows (a retry would carry the
            // new generation, and the receiver's range may belong to another move by then).
            if let Some(m) = s.movers.remove(&k)
                && let MvSt::Pass(Pass { task: Some(t), .. }) = m.st
            {
                s.tasks.remove(&t);
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
                    c: Copier::new(CONVERGED_CHUNKS, PASSES_MAX),
                    st: MvSt::Done,
                    token: 0,
                    req: None,
                },
            );
            self.mover_feed(i, &key, Event::Start);
        }
    }

    /// Feeds the copier of `key` one event and carries out its action.
    fn mover_feed(&mut self, i: usize, key: &(String, usize), ev: Event) {
        let cur = self.srv[i].generation.current();
        let me = self.srv[i].id.clone();
        let Some(m) = self.srv[i].movers.get_mut(key) else {
            return;
        };
        let Some(action) = m.c.on_event(ev, m.stop) else {
            return;
        };
        match action {
            Action::CopyPass => self.mover_pass_begin(i, key),
            Action::RetryAfter(ms) => {
                m.token += 1;
                m.st = MvSt::Sleep(m.token);
                let token = m.token;
                self.timer(
                    Node::Srv(i),
                    ms,
                    Timer::MoverWake {
                        key: key.clone(),
                        token,
                    },
                );
            }
            Action::MoveReady => {
                if m.req.is_none() {
                    m.req = Some(MoveReadyRequest {
                        server: me.clone(),
                        volume: key.0.clone(),
                        extent: key.1,
                        generation: cur,
                    });
                    self.note(format!("{me}: copy of {}[{}] converged", key.0, key.1));
                }
                self.mover_ready_send(i, key);
            }
            Action::Done => {
                m.st = MvSt::Done;
                if m.stop {
                    self.install_copier_stopped(i, key);
                }
            }
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
            None => {
                let chunks = p.bits.iter().filter(|b| **b).count();
                self.mover_feed(i, key, Event::PassDone { chunks });
            }
            Some(_) if stop => {
                p.cursor = saved;
                let from = p.current.max(saved);
                let bits = std::mem::take(&mut p.bits);
                m.remark(&bits, from);
                self.mover_feed(i, key, Event::PassFailed);
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
        self.mover_feed(i, key, Event::PassFailed);
    }

    fn mover_ready_send(&mut self, i: usize, key: &(String, usize)) {
        let Some(req) = self.srv[i].movers.get(key).and_then(|m| m.req.clone()) else {
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
        let waiting = self.srv[i]
            .movers
            .get(key)
            .is_some_and(|m| matches!(m.st, MvSt::Ready(Some(_))));
        if waiting {
            self.mover_feed(i, key, Event::ReadyDone { ok });
        }
    }

    pub fn mover_wake(&mut self, i: usize, key: &(String, usize), token: u64) {
        let due = self.srv[i]
            .movers
            .get(key)
            .is_some_and(|m| matches!(m.st, MvSt::Sleep(t) if t == token));
        if due {
            self.mover_feed(i, key, Event::Timer);
        }
    }
}
