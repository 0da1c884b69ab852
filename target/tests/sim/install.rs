//! The shell of a server's `install` (target/src/cluster/mod.rs `install`), started by the
//! watch loop (`node::watch::Watch`, fed in server.rs `srv_feed`). The install itself (gate, the final copy of each lost extent in rounds, postponement, persist,
//! ack tries) is the REAL state machine `tessera::cluster::node::install::Install`: this file
//! only carries out its actions on the simulated server, as `cluster::install` does on the
//! daemon, and feeds it the events.

use std::sync::Arc;

use manager::map::ClusterMap;

use tessera::cluster::node::install::{self as machine, Action, Event, PassOutcome};
use tessera::cluster::node::watch::Event as WatchEvent;

use super::mover::{CONVERGED_CHUNKS, Mover, MvSt, PASSES_MAX, Pass, chunks};
use super::server::{Copied, CopyOwner, FinalCopy, InWait, Install, RpcFor};
use super::world::{BLOCK, Mutation, Req, Timer, World};
use tessera::cluster::node::copier::Copier;

impl World {
    // ---- install ---------------------------------------------------------------------

    pub fn install_start(&mut self, i: usize, new: Arc<ClusterMap>) {
        let s = &mut self.srv[i];
        let old = Arc::clone(&s.map);
        // A server catching up after a restart serves nothing: its install closes no gate.
        let Some(m) = machine::Install::start(old, new, &s.id, s.watcher.caught_up()) else {
            // Nothing to do, and no ack (`install` returns early).
            return self.srv_feed(i, WatchEvent::InstallDone);
        };
        if std::mem::take(&mut s.boot_install) && !m.lost().is_empty() {
            self.stats.restart_final_copies += 1;
        }
        self.srv[i].install = Some(Install {
            m,
            wait: InWait::No,
            token: 0,
        });
        self.install_feed(i, Event::Start);
    }

    /// Feeds the machine one event and carries out its actions.
    fn install_feed(&mut self, i: usize, ev: Event) {
        let Some(ins) = &mut self.srv[i].install else {
            return;
        };
        ins.wait = InWait::No;
        let actions = ins.m.on_event_at(ev, self.now);
        for a in actions {
            self.install_act(i, a);
        }
    }

    fn set_wait(&mut self, i: usize, w: InWait) {
        if let Some(ins) = &mut self.srv[i].install {
            ins.wait = w;
        }
    }

    fn install_act(&mut self, i: usize, a: Action) {
        match a {
            Action::CloseGate => {
                let s = &mut self.srv[i];
                s.gate_closed = true;
                s.gate_closed_at = self.now;
                s.gate_drained_at = None;
                s.gate_lost = s.install.as_ref().map_or(0, |x| x.m.lost().len() as u64);
                let what = format!(
                    "{} installing g{}: gate closed, fencing {:?} ({} commands inside)",
                    s.id,
                    s.install.as_ref().map_or(0, |x| x.m.map().generation),
                    s.install
                        .as_ref()
                        .map(|x| x.m.lost().to_vec())
                        .unwrap_or_default(),
                    s.inside
                );
                self.note(what);
                self.set_wait(i, InWait::Drain);
                self.install_drained(i);
            }
            Action::StopCopier { key, whole } => self.install_stop_copier(i, key, whole),
            Action::FinalPass { key, dest } => {
                let Some(m) = self.srv[i].movers.get_mut(&key) else {
                    return self.install_feed(i, Event::Pass(PassOutcome::Clean));
                };
                let (start, nblk) = (m.start, m.nblk);
                let bits = m.take();
                if !bits.iter().any(|b| *b) {
                    return self.install_feed(i, Event::Pass(PassOutcome::Clean));
                }
                let what = format!(
                    "{}: final copy of {}[{}] to {}",
                    self.srv[i].id, key.0, key.1, dest.server,
                );
                self.note(what);
                let fc = FinalCopy {
                    key,
                    dest,
                    start,
                    nblk,
                    pass: Pass::new(bits),
                };
                self.set_wait(i, InWait::Final(fc));
                self.final_step(i);
            }
            Action::FinalCheck { key } => {
                let dirty = self.srv[i]
                    .movers
                    .get(&key)
                    .is_some_and(|m| m.dirty.iter().any(|b| *b));
                self.install_feed(i, Event::Checked { clean: !dirty });
            }
            Action::Untrack { key } | Action::Forget { key } => {
                self.srv[i].movers.remove(&key);
            }
            Action::KeepTracked { key } => {
                let id = self.srv[i].id.clone();
                self.note(format!(
                    "{id}: {}[{}] stays tracked until the install",
                    key.0, key.1
                ));
            }
            Action::RetryAfter(ms) => {
                let token = self.install_token(i);
                self.set_wait(i, InWait::Sleep);
                self.timer(Self::me(i), ms, Timer::InstallWake(token));
            }
            Action::Install(new) => {
                let s = &mut self.srv[i];
                s.map = Arc::clone(&new);
                s.watcher.installed(new.generation);
                s.generation.install(new.generation);
                s.model_gen = new.generation;
                s.own = tessera::cluster::node::Ownership::new(&new, &s.id, s.watcher.caught_up());
                let id = s.id.clone();
                self.note(format!("{id} installed g{}", new.generation));
                self.state_check = true;
            }
            // Durably, after the final copies and the install, before the ack.
            Action::Persist(map) => self.srv[i].persisted = Some(map),
            Action::OpenGate => self.gate_open(i),
            Action::SyncMovers => {
                self.srv_thaw(i);
                self.mover_sync(i);
                self.wake_waiters(i);
            }
            Action::Ack(generation) => {
                self.set_wait(i, InWait::Ack);
                self.srv_rpc(
                    i,
                    Req::Ack {
                        server: i,
                        generation,
                    },
                    RpcFor::InstallAck,
                );
            }
            Action::Postpone(g) => {
                self.stats.installs_postponed += 1;
                let then = self.srv[i].watcher.postpone(g);
                let id = self.srv[i].id.clone();
                self.note(format!(
                    "{id}: install of g{g} postponed: final copy incomplete"
                ));
                // Retried every POSTPONED_RETRY_MS (the watch stream will not send that
                // generation again); a fenced server fetches again (`node::watch`).
                for a in then {
                    self.srv_watch_act(i, a);
                }
            }
            Action::Done => {
                self.srv[i].install = None;
                self.srv_feed(i, WatchEvent::InstallDone);
            }
        }
    }

    /// `Action::StopCopier`: stop the extent's copier (wait for it if it is inside an await);
    /// without copier state, track the whole extent, all of it dirty.
    fn install_stop_copier(&mut self, i: usize, key: (String, usize), whole: Option<(u64, u64)>) {
        if let Some(m) = self.srv[i].movers.get_mut(&key) {
            m.stop = true;
            if m.busy() {
                let st = format!("{:?}", m.st);
                let what = format!(
                    "{}: stopping the copier of {}[{}] ({st})",
                    self.srv[i].id, key.0, key.1
                );
                self.note(what);
                self.set_wait(i, InWait::Stopping(key.clone()));
                // Nor does it wait out its backoff (mover.rs `sleep_unless_stopped`): a copy
                // task between tries ends now; one with a command in flight ends at its answer
                // or timeout. (The daemon's copier also cuts a pause short and gives up its
                // move-ready request once stopped; here they run out, at most
                // `READY_RETRY_MS` and `RPC_TIMEOUT_MS`, shorter than a try in flight.)
                let idle = match self.srv[i].movers.get(&key).map(|m| &m.st) {
                    Some(MvSt::Pass(Pass { task: Some(t), .. })) => Some(*t),
                    _ => None,
                }
                .filter(|t| {
                    self.srv[i]
                        .tasks
                        .get_mut(t)
                        .is_some_and(|tk| tk.retry().io.is_none())
                });
                if let Some(t) = idle {
                    self.copy_finish(i, t, Copied::No);
                }
            } else {
                m.finish();
                self.install_feed(i, Event::CopierStopped { tracked: true });
            }
            return;
        }
        let dest = self.srv[i]
            .install
            .as_ref()
            .and_then(|ins| ins.m.map().owner(&key.0, key.1).cloned());
        let (Some((off, len)), Some(dest)) = (whole, dest) else {
            return self.install_feed(i, Event::CopierStopped { tracked: false });
        };
        let nblk = len / BLOCK;
        let id = self.srv[i].id.clone();
        self.note(format!(
            "{id}: no copier state for {}[{}]: the whole extent is dirty",
            key.0, key.1
        ));
        self.srv[i].movers.insert(
            key,
            Mover {
                start: off / BLOCK,
                nblk,
                dest,
                dirty: vec![true; chunks(nblk)],
                stop: true,
                c: Copier::new(CONVERGED_CHUNKS, PASSES_MAX),
                st: MvSt::Done,
                token: 0,
                req: None,
            },
        );
        self.install_feed(i, Event::CopierStopped { tracked: true });
    }

    /// Called when a command leaves the gate.
    pub fn install_drained(&mut self, i: usize) {
        let s = &self.srv[i];
        let draining = matches!(s.install.as_ref().map(|x| &x.wait), Some(InWait::Drain));
        if draining && s.inside == 0 {
            self.srv[i].gate_drained_at = Some(self.now);
            self.install_feed(i, Event::Drained);
        }
    }

    /// The copier of `key` has stopped.
    pub fn install_copier_stopped(&mut self, i: usize, key: &(String, usize)) {
        let stopping = matches!(
            self.srv[i].install.as_ref().map(|x| &x.wait),
            Some(InWait::Stopping(k)) if k.0 == key.0 && k.1 == key.1
        );
        if stopping {
            self.install_feed(i, Event::CopierStopped { tracked: true });
        }
    }

    /// Whether the install's final-copy budget is spent (`Install::deadline`): no try of a
    /// range starts (mover.rs `final_pass`).
    pub fn install_out_of_time(&self, i: usize) -> bool {
        if self.cfg.mutation == Mutation::UnboundedFinalPass {
            return false;
        }
        self.srv[i]
            .install
            .as_ref()
            .and_then(|ins| ins.m.deadline())
            .is_some_and(|d| self.now >= d)
    }

    /// Copies the next dirty range of the final pass (no stop flag: all of it, unless the
    /// install's budget is spent: then the pass fails, what it took marked dirty again).
    fn final_step(&mut self, i: usize) {
        let late = self.install_out_of_time(i);
        let Some(ins) = &mut self.srv[i].install else {
            return;
        };
        let InWait::Final(fc) = &mut ins.wait else {
            return;
        };
        if late {
            let (key, bits) = (fc.key.clone(), std::mem::take(&mut fc.pass.bits));
            if let Some(m) = self.srv[i].movers.get_mut(&key) {
                m.remark(&bits, 0);
            }
            let what = format!(
                "{}: final copy of {}[{}] stopped: the install's budget is spent",
                self.srv[i].id, key.0, key.1
            );
            self.note(what);
            return self.install_feed(i, Event::Pass(PassOutcome::Failed));
        }
        match fc.pass.next_range(fc.nblk) {
            // The pass succeeded.
            None => self.install_feed(i, Event::Pass(PassOutcome::Copied)),
            Some((first, n)) => {
                let src = fc.start + first;
                let dest_blk = fc.dest.offset / BLOCK + first;
                let dest = fc.dest.server.clone();
                let t = self.copy_start(i, CopyOwner::Install, src, n, dest, dest_blk);
                if let Some(Install {
                    wait: InWait::Final(fc),
                    ..
                }) = &mut self.srv[i].install
                {
                    fc.pass.task = Some(t);
                }
            }
        }
    }

    pub fn install_copy_done(&mut self, i: usize, res: Copied) {
        let id = self.srv[i].id.clone();
        let Some(ins) = &mut self.srv[i].install else {
            return;
        };
        let InWait::Final(fc) = &mut ins.wait else {
            return;
        };
        fc.pass.task = None;
        match res {
            Copied::Yes => self.final_step(i),
            Copied::NotSource => {
                // The move was switched without us; our copy is obsolete.
                let what = format!(
                    "{id}: final copy of {}[{}] refused (not the source): dropped",
                    fc.key.0, fc.key.1
                );
                self.note(what);
                self.stats.copies_refused += 1;
                self.install_feed(i, Event::Pass(PassOutcome::NotSource));
            }
            Copied::No => {
                let what = format!(
                    "{id}: final copy of {}[{}] failed; retrying",
                    fc.key.0, fc.key.1
                );
                let (key, bits) = (fc.key.clone(), std::mem::take(&mut fc.pass.bits));
                self.note(what);
                if let Some(m) = self.srv[i].movers.get_mut(&key) {
                    m.remark(&bits, 0);
                }
                self.install_feed(i, Event::Pass(PassOutcome::Failed));
            }
        }
    }

    fn install_token(&mut self, i: usize) -> u64 {
        match &mut self.srv[i].install {
            Some(ins) => {
                ins.token += 1;
                ins.token
            }
            None => 0,
        }
    }

    pub fn install_wake(&mut self, i: usize, token: u64) {
        let due = self.srv[i]
            .install
            .as_ref()
            .is_some_and(|x| x.token == token && matches!(x.wait, InWait::Sleep));
        if due {
            self.install_feed(i, Event::Timer);
        }
    }

    pub fn install_ack_done(&mut self, i: usize, ok: bool) {
        let acking = matches!(
            self.srv[i].install.as_ref().map(|x| &x.wait),
            Some(InWait::Ack)
        );
        if acking {
            self.install_feed(i, Event::AckDone { ok });
        }
    }
}
