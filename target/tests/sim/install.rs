//! A server's watch loop and `install` (target/src/cluster/mod.rs): one map at a time; a map
//! that takes extents away closes the gate, waits for the commands inside, stops each lost
//! extent's copier and final-copies its dirty chunks (`mover::finish`), then installs the
//! generation, opens the gate and acks (5 tries).

use std::sync::Arc;

use manager::map::{ClusterMap, Replica};

use super::mover::Pass;
use super::server::{ACK_TRIES, CopyOwner, FINAL_ROUNDS, FinalCopy, InSt, Install, RpcFor};
use super::world::{BLOCK, Req, Role, Timer, World};

impl World {
    // ---- the watch loop and install ----------------------------------------------------

    /// The watch loop: one install (or refresh fetch) at a time.
    pub fn srv_kick(&mut self, i: usize) {
        let s = &mut self.srv[i];
        if !s.up || !s.booted || s.install.is_some() || s.fetching {
            return;
        }
        if let Some(m) = s.inbox.pop_front() {
            self.install_start(i, m);
        } else if s.refresh {
            s.refresh = false;
            s.fetching = true;
            self.srv_rpc(i, Req::Fetch(Role::Server(i)), RpcFor::Refresh);
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
        let lost: Vec<(String, usize)> = ClusterMap::changed_owners(&old, &new)
            .into_iter()
            .filter(|l| l.old_owner == s.id)
            .map(|l| (l.volume, l.extent))
            .collect();
        let fence = !lost.is_empty();
        s.install = Some(Install {
            new,
            old,
            lost,
            idx: 0,
            st: None,
            token: 0,
        });
        if fence {
            s.gate_closed = true;
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

    /// `mover::finish` for each lost extent, in order.
    pub fn install_next_lost(&mut self, i: usize) {
        let Some(ins) = &self.srv[i].install else {
            return;
        };
        let Some(key) = ins.lost.get(ins.idx).cloned() else {
            return self.install_apply(i);
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
                self.final_begin(i, key, dest, false, 0, 0);
            }
            return;
        }
        // No copier (restarted during the move): copy the whole extent, errors ignored.
        let range = old.volume(&key.0).and_then(|v| v.extent_range(key.1));
        match (old.owner(&key.0, key.1), range) {
            (Some(o), Some((_, len))) => {
                let start = o.offset / BLOCK;
                self.final_begin(i, key, dest, true, start, len / BLOCK);
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
        self.final_begin(i, key.clone(), dest, false, 0, 0);
    }

    fn final_begin(
        &mut self,
        i: usize,
        key: (String, usize),
        dest: Replica,
        fallback: bool,
        start: u64,
        nblk: u64,
    ) {
        let (start, nblk) = if fallback {
            (start, nblk)
        } else {
            match self.srv[i].movers.get(&key) {
                Some(m) => (m.start, m.nblk),
                None => return self.install_lost_done(i),
            }
        };
        let fc = FinalCopy {
            key,
            dest,
            start,
            nblk,
            round: 0,
            fallback,
            pass: Pass::default(),
        };
        self.final_round(i, fc);
    }

    fn final_round(&mut self, i: usize, mut fc: FinalCopy) {
        if fc.round >= FINAL_ROUNDS {
            return self.final_done(i, &fc);
        }
        let bits = if fc.fallback {
            vec![true; super::mover::chunks(fc.nblk)]
        } else {
            match self.srv[i].movers.get_mut(&fc.key) {
                Some(m) => m.take(),
                None => return self.final_done(i, &fc),
            }
        };
        if !bits.iter().any(|b| *b) {
            return self.final_done(i, &fc);
        }
        let what = format!(
            "{}: final copy of {}[{}] to {}, round {}{}",
            self.srv[i].id,
            fc.key.0,
            fc.key.1,
            fc.dest.server,
            fc.round,
            if fc.fallback {
                " (whole extent: no copier)"
            } else {
                ""
            }
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
                if fc.fallback {
                    return self.final_done(i, &fc);
                }
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

    pub fn install_copy_done(&mut self, i: usize, ok: bool) {
        let Some(InSt::Final(mut fc)) = self.install_state(i) else {
            return;
        };
        fc.pass.task = None;
        if ok {
            self.set_install(i, InSt::Final(fc));
            return self.final_step(i);
        }
        if fc.fallback {
            return self.final_done(i, &fc);
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
        self.timer(Self::me(i), 100, Timer::InstallWake(token));
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

    fn final_done(&mut self, i: usize, fc: &FinalCopy) {
        if !fc.fallback
            && let Some(m) = self.srv[i].movers.remove(&fc.key)
            && m.dirty.iter().any(|b| *b)
        {
            // (The mover is removed either way: `untrack`.)
            let id = self.srv[i].id.clone();
            self.note(format!(
                "{id}: final copy of {}[{}] gave up with dirty blocks left",
                fc.key.0, fc.key.1
            ));
        }
        self.install_lost_done(i);
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
        s.generation.install(new.generation);
        s.model_gen = new.generation;
        let id = s.id.clone();
        self.note(format!("{id} installed g{}", new.generation));
        self.state_check = true;
        if fenced {
            self.gate_open(i);
        }
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
        self.timer(Self::me(i), 100 << attempt, Timer::InstallWake(token));
    }
}
