//! A server's watch loop and `install` (target/src/cluster/mod.rs): one map at a time, and a
//! re-ack of the installed generation every `REACK_PERIOD` (1 s); a map that takes extents
//! away closes the gate, waits for the commands inside, stops each lost extent's copier and
//! final-copies its dirty chunks (`mover::finish`; the copy is stamped with the generation
//! the new owner reports), then installs the generation, opens the gate and acks (5 tries).
//! If a final copy fails, the gate reopens and nothing is installed or acked: the extent stays
//! tracked, and the install runs again when the watch loop gets that map again.

use std::sync::Arc;

use manager::map::{ClusterMap, Replica};

use super::mover::{Mover, MvSt, Pass, chunks};
use super::server::{
    ACK_BACKOFF_MS, ACK_TRIES, CATCH_UP_RETRY_MS, Copied, CopyOwner, FINAL_RETRY_MS, FINAL_ROUNDS,
    FinalCopy, InSt, Install, POSTPONED_RETRY_MS, REACK_MS, RpcFor,
};
use super::world::{BLOCK, Req, Role, Timer, World};

impl World {
    // ---- the watch loop and install ----------------------------------------------------

    /// The watch loop: one install (or refresh fetch, or re-ack) at a time.
    pub fn srv_kick(&mut self, i: usize) {
        let s = &mut self.srv[i];
        if !s.up || !s.booted || s.install.is_some() || s.fetching || s.reacking {
            return;
        }
        if let Some(m) = s.inbox.pop_front() {
            self.install_start(i, m);
        } else if s.refresh {
            s.refresh = false;
            s.fetching = true;
            let fenced = (!s.caught_up).then_some(s.epoch);
            self.srv_rpc(i, Req::Fetch(Role::Server(i)), RpcFor::Refresh(fenced));
        } else if s.reack_due {
            // `reack.tick()` (MissedTickBehavior::Delay: the next tick is a period after this
            // one was taken): ack the installed generation again.
            s.reack_due = false;
            s.reacking = true;
            let generation = s.generation.current();
            self.stats.reacks += 1;
            self.srv_rpc(
                i,
                Req::Ack {
                    server: i,
                    generation,
                },
                RpcFor::ReAck,
            );
            self.timer(Self::me(i), REACK_MS, Timer::ReAck);
        }
    }

    /// `refresh.notify_one()`.
    pub fn srv_refresh(&mut self, i: usize) {
        self.srv[i].refresh = true;
        self.srv_kick(i);
    }

    fn install_start(&mut self, i: usize, new: Arc<ClusterMap>) {
        let s = &mut self.srv[i];
        if new.generation <= s.map.generation {
            // Nothing to do, and no ack (`install` returns early).
            return self.srv_kick(i);
        }
        let old = Arc::clone(&s.map);
        let lost = tessera::cluster::node::lost_extents(&old, &new, &s.id);
        let fence = !lost.is_empty();
        // A server catching up after a restart serves nothing: its install closes no gate.
        let close_gate = fence && s.caught_up;
        if std::mem::take(&mut s.boot_install) && fence {
            self.stats.restart_final_copies += 1;
        }
        let s = &mut self.srv[i];
        s.install = Some(Install {
            new,
            old,
            lost,
            idx: 0,
            ok: true,
            st: None,
            token: 0,
        });
        if fence {
            s.gate_closed = close_gate;
            let what = format!(
                "{} installing g{}: gate closed, fencing {:?} ({} commands inside)",
                s.id,
                s.install.as_ref().map_or(0, |x| x.new.generation),
                s.install
                    .as_ref()
                    .map(|x| x.lost.clone())
                    .unwrap_or_default(),
                s.inside
            );
            self.note(what);
            self.set_install(i, InSt::Drain);
            self.install_drained(i);
        } else {
            self.install_apply(i);
        }
    }

    fn set_install(&mut self, i: usize, st: InSt) {
        if let Some(ins) = &mut self.srv[i].install {
            ins.st = Some(st);
        }
    }

    fn install_state(&mut self, i: usize) -> Option<InSt> {
        self.srv[i].install.as_mut().and_then(|ins| ins.st.take())
    }

    /// Called when a command leaves the gate.
    pub fn install_drained(&mut self, i: usize) {
        let s = &self.srv[i];
        let draining = matches!(
            s.install.as_ref().and_then(|x| x.st.as_ref()),
            Some(InSt::Drain)
        );
        if draining && s.inside == 0 {
            self.install_next_lost(i);
        }
    }

    /// `mover::finish` for each lost extent, in order (all of them, even after a failure).
    pub fn install_next_lost(&mut self, i: usize) {
        let Some(ins) = &self.srv[i].install else {
            return;
        };
        let Some(key) = ins.lost.get(ins.idx).cloned() else {
            return if ins.ok {
                self.install_apply(i)
            } else {
                self.install_postpone(i)
            };
        };
        let (old, new) = (Arc::clone(&ins.old), Arc::clone(&ins.new));
        let Some(dest) = new.owner(&key.0, key.1).cloned() else {
            self.srv[i].movers.remove(&key);
            return self.install_lost_done(i);
        };
        if let Some(m) = self.srv[i].movers.get_mut(&key) {
            m.stop = true;
            if m.busy() {
                let what = format!(
                    "{}: stopping the copier of {}[{}] ({:?})",
                    self.srv[i].id,
                    key.0,
                    key.1,
                    self.srv[i].movers.get(&key).map(|m| &m.st)
                );
                self.note(what);
                self.set_install(i, InSt::Stopping(key));
            } else {
                m.finish();
                self.final_begin(i, key, dest);
            }
            return;
        }
        // No copier state (restarted during the move, or a move started and switched between
        // two maps we did not see): track the whole extent, all of it dirty, and go on as
        // with a stopped copier.
        let range = old.volume(&key.0).and_then(|v| v.extent_range(key.1));
        match (old.owner(&key.0, key.1), range) {
            (Some(o), Some((_, len))) => {
                let nblk = len / BLOCK;
                let id = self.srv[i].id.clone();
                self.note(format!(
                    "{id}: no copier state for {}[{}]: the whole extent is dirty",
                    key.0, key.1
                ));
                self.srv[i].movers.insert(
                    key.clone(),
                    Mover {
                        start: o.offset / BLOCK,
                        nblk,
                        dest: dest.clone(),
                        dirty: vec![true; chunks(nblk)],
                        stop: true,
                        st: MvSt::Done,
                        passes: 0,
                        token: 0,
                        req: None,
                    },
                );
                self.final_begin(i, key, dest);
            }
            _ => self.install_lost_done(i),
        }
    }

    /// The copier of `key` has stopped.
    pub fn install_copier_stopped(&mut self, i: usize, key: &(String, usize)) {
        let stopping = matches!(
            self.srv[i].install.as_ref().and_then(|x| x.st.as_ref()),
            Some(InSt::Stopping(k)) if k.0 == key.0 && k.1 == key.1
        );
        if !stopping {
            return;
        }
        let Some(dest) = self.srv[i]
            .install
            .as_ref()
            .and_then(|ins| ins.new.owner(&key.0, key.1).cloned())
        else {
            return;
        };
        self.final_begin(i, key.clone(), dest);
    }

    fn final_begin(&mut self, i: usize, key: (String, usize), dest: Replica) {
        let (start, nblk) = match self.srv[i].movers.get(&key) {
            Some(m) => (m.start, m.nblk),
            None => return self.install_lost_done(i),
        };
        let fc = FinalCopy {
            key,
            dest,
            start,
            nblk,
            round: 0,
            pass: Pass::default(),
        };
        self.final_round(i, fc);
    }

    fn final_round(&mut self, i: usize, mut fc: FinalCopy) {
        if fc.round >= FINAL_ROUNDS {
            return self.final_done(i, &fc);
        }
        let bits = match self.srv[i].movers.get_mut(&fc.key) {
            Some(m) => m.take(),
            None => return self.final_done(i, &fc),
        };
        if !bits.iter().any(|b| *b) {
            return self.final_done(i, &fc);
        }
        let what = format!(
            "{}: final copy of {}[{}] to {}, round {}",
            self.srv[i].id, fc.key.0, fc.key.1, fc.dest.server, fc.round,
        );
        self.note(what);
        fc.pass = Pass::new(bits);
        self.set_install(i, InSt::Final(fc));
        self.final_step(i);
    }

    /// Copies the next dirty range of the final pass (no stop flag: all of it).
    fn final_step(&mut self, i: usize) {
        let Some(InSt::Final(mut fc)) = self.install_state(i) else {
            return;
        };
        match fc.pass.next_range(fc.nblk) {
            None => {
                // The pass succeeded.
                fc.round += 1;
                self.final_round(i, fc);
            }
            Some((first, n)) => {
                let src = fc.start + first;
                let dest_blk = fc.dest.offset / BLOCK + first;
                let dest = fc.dest.server.clone();
                let t = self.copy_start(i, CopyOwner::Install, src, n, dest, dest_blk);
                fc.pass.task = Some(t);
                self.set_install(i, InSt::Final(fc));
            }
        }
    }

    pub fn install_copy_done(&mut self, i: usize, res: Copied) {
        let Some(InSt::Final(mut fc)) = self.install_state(i) else {
            return;
        };
        fc.pass.task = None;
        if res == Copied::NotSource {
            // mover.rs `finish`: the move was switched without us; our copy is obsolete.
            let id = self.srv[i].id.clone();
            self.note(format!(
                "{id}: final copy of {}[{}] refused (not the source): dropped",
                fc.key.0, fc.key.1
            ));
            self.stats.copies_refused += 1;
            self.srv[i].movers.remove(&fc.key);
            return self.install_lost_done(i);
        }
        if res == Copied::Yes {
            self.set_install(i, InSt::Final(fc));
            return self.final_step(i);
        }
        let id = self.srv[i].id.clone();
        self.note(format!(
            "{id}: final copy of {}[{}] failed; retrying",
            fc.key.0, fc.key.1
        ));
        if let Some(m) = self.srv[i].movers.get_mut(&fc.key) {
            m.remark(&fc.pass.bits, 0);
        }
        let token = self.install_token(i);
        self.set_install(i, InSt::FinalSleep(fc));
        self.timer(Self::me(i), FINAL_RETRY_MS, Timer::InstallWake(token));
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

    /// The end of `mover::finish`: clean -> `untrack`, Ok; dirty chunks left -> the region
    /// stays tracked (a stopped mover), Err.
    fn final_done(&mut self, i: usize, fc: &FinalCopy) {
        let dirty = self.srv[i]
            .movers
            .get(&fc.key)
            .is_some_and(|m| m.dirty.iter().any(|b| *b));
        if dirty {
            let id = self.srv[i].id.clone();
            self.note(format!(
                "{id}: final copy of {}[{}] failed; not installing, will retry",
                fc.key.0, fc.key.1
            ));
            if let Some(ins) = &mut self.srv[i].install {
                ins.ok = false;
            }
        } else {
            self.srv[i].movers.remove(&fc.key);
        }
        self.install_lost_done(i);
    }

    /// `install` after a failed `mover::finish`: gate open, no install, no ack.
    fn install_postpone(&mut self, i: usize) {
        let Some(ins) = self.srv[i].install.take() else {
            return;
        };
        self.stats.installs_postponed += 1;
        self.srv[i].postponed = Some(ins.new.generation);
        let id = self.srv[i].id.clone();
        self.note(format!(
            "{id}: install of g{} postponed: final copy incomplete",
            ins.new.generation
        ));
        self.gate_open(i);
        if !self.srv[i].caught_up {
            // `cluster::catch_up_done`: a fenced server fetches again.
            self.timer(Self::me(i), CATCH_UP_RETRY_MS, Timer::CatchUp);
        }
        // The watch stream will not send that generation again: the target schedules a
        // refresh fetch (cluster::POSTPONED_RETRY, 1 s) to retry the install.
        self.timer(Self::me(i), POSTPONED_RETRY_MS, Timer::PostponedRetry);
        self.srv_kick(i);
    }

    fn install_lost_done(&mut self, i: usize) {
        if let Some(ins) = &mut self.srv[i].install {
            ins.idx += 1;
        }
        self.install_next_lost(i);
    }

    pub fn install_wake(&mut self, i: usize, token: u64) {
        if self.srv[i]
            .install
            .as_ref()
            .is_none_or(|x| x.token != token)
        {
            return;
        }
        match self.install_state(i) {
            Some(InSt::FinalSleep(mut fc)) => {
                fc.round += 1;
                self.final_round(i, fc);
            }
            Some(InSt::AckSleep(attempt)) => self.install_ack(i, attempt + 1),
            Some(other) => self.set_install(i, other),
            None => {}
        }
    }

    /// Map, generation, gate open, movers, then the ack (cluster/mod.rs `install`).
    fn install_apply(&mut self, i: usize) {
        let Some(ins) = &self.srv[i].install else {
            return;
        };
        let new = Arc::clone(&ins.new);
        let fenced = !ins.lost.is_empty();
        let s = &mut self.srv[i];
        s.map = Arc::clone(&new);
        if s.postponed.is_some_and(|g| g <= new.generation) {
            s.postponed = None;
        }
        s.generation.install(new.generation);
        s.model_gen = new.generation;
        s.own = tessera::cluster::node::Ownership::new(&new, &s.id, s.caught_up);
        // Persisted (durably) after the final copies and the install, before the ack.
        s.persisted = Some(Arc::clone(&new));
        let id = s.id.clone();
        self.note(format!("{id} installed g{}", new.generation));
        self.state_check = true;
        if fenced {
            self.gate_open(i);
        }
        self.srv_thaw(i);
        self.mover_sync(i);
        self.wake_waiters(i);
        self.install_ack(i, 0);
    }

    fn install_ack(&mut self, i: usize, attempt: u32) {
        if attempt >= ACK_TRIES {
            self.srv[i].install = None;
            return self.srv_kick(i);
        }
        let Some(g) = self.srv[i].install.as_ref().map(|x| x.new.generation) else {
            return;
        };
        self.set_install(i, InSt::Ack(attempt));
        self.srv_rpc(
            i,
            Req::Ack {
                server: i,
                generation: g,
            },
            RpcFor::InstallAck,
        );
    }

    pub fn install_ack_done(&mut self, i: usize, ok: bool) {
        let Some(InSt::Ack(attempt)) = self.install_state(i) else {
            return;
        };
        if ok {
            self.srv[i].install = None;
            return self.srv_kick(i);
        }
        let token = self.install_token(i);
        self.set_install(i, InSt::AckSleep(attempt));
        self.timer(
            Self::me(i),
            ACK_BACKOFF_MS << attempt,
            Timer::InstallWake(token),
        );
    }
}
