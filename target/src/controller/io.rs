//! NVM I/O commands (NVM Command Set 1.0, section 3): Read, Write, Compare, Flush, Write Zeroes,
//! Dataset Management. Every command is checked against the map generation, then the namespace
//! range, before it touches a volume.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use codec::nvme::Status;
use codec::nvme::cmd::{DatasetManagement, DsmRange, IoCommand, Rw, WriteZeroes};

use crate::cluster::gate::GATE_WAIT;
use crate::cluster::node::Refusal;
use crate::cluster::node::admission::{self, Stage, Stamp, Step};
use crate::controller::ctrl::Controller;
use crate::controller::exec::{Completion, Outcome};
use crate::controller::status::from_volume_error;
use crate::subsystem::namespace::Namespace;
use crate::subsystem::volume::{IoResult, Volume};
use crate::transport::bufpool::BufPool;

/// NSID FFFFFFFFh: "all namespaces" (Flush only, when VWC reports broadcast support).
pub const NSID_BROADCAST: u32 = 0xFFFF_FFFF;

/// How long a command stamped with a newer generation than ours waits for our map to catch up
/// before it completes with "server behind" (cluster mode; docs/cluster-protocol.md).
pub const BEHIND_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs an NVM I/O command on `ns`, the namespace the transport resolved when the command
/// arrived (`None` only for a Flush to every namespace).
pub fn execute(
    ctrl: &Arc<Controller>,
    internal: bool,
    ns: Option<Arc<Namespace>>,
    cmd: IoCommand,
    data: Bytes,
    pool: &mut BufPool,
) -> Outcome {
    // What to do is the node's rule (`cluster::node::admission::step`): the install gate
    // first, so that a command held while a new map is installed is checked against that map;
    // then the stamp (invariant 1: nothing stamped with generation g runs unless this server
    // is at g); then, on internal connections, the fencing rule.
    // A path the server reports ANA Inaccessible (a cluster server draining or down) runs no
    // host I/O: the host retries on another path (NVMe Base 2.0, section 8.1.3.3).
    if !internal && ctrl.registry.ana_inaccessible() {
        return Status::ANA_INACCESSIBLE.into();
    }
    let pass = ctrl.registry.gate.as_ref().and_then(|g| g.try_enter());
    let gate_open = ctrl.registry.gate.is_none() || pass.is_some();
    let stamp = cmd.generation().map_or(0, std::num::NonZeroU64::get);
    let generation = &ctrl.registry.generation;
    let step = admission::step(
        Stage::Arrived,
        gate_open,
        generation.behind_wait().is_some(),
        || generation.verdict(stamp, internal, true),
        || admitted(ctrl, internal, stamp, &cmd, &data),
    );
    match step {
        Step::Run => with_pass(run(ctrl, ns, cmd, data, Some(pool)), pass),
        Step::WaitGate => {
            let gate = ctrl.registry.gate.clone();
            let ctrl = Arc::clone(ctrl);
            Outcome::Pending(Box::pin(async move {
                let pass = match gate {
                    Some(gate) => match gate.enter_within(GATE_WAIT).await {
                        Some(p) => Some(p),
                        None => return gate_timed_out(internal),
                    },
                    None => None,
                };
                checked(&ctrl, internal, ns, cmd, data, pass, false).await
            }))
        }
        Step::WaitBehind => {
            // Ahead of us: our map is on its way (watch stream); wait for it, bounded. The gate
            // pass is released meanwhile so an install can proceed.
            drop(pass);
            let ctrl = Arc::clone(ctrl);
            Outcome::Pending(Box::pin(async move {
                let g = &ctrl.registry.generation;
                if let Some(wait) = g.behind_wait() {
                    g.wait_for(stamp, wait).await;
                }
                let pass = match &ctrl.registry.gate {
                    Some(gate) => match gate.enter_within(GATE_WAIT).await {
                        Some(p) => Some(p),
                        None => return gate_timed_out(internal),
                    },
                    None => None,
                };
                checked(&ctrl, internal, ns, cmd, data, pass, true).await
            }))
        }
        Step::Answer(v) => {
            refused_stale(ctrl, internal, stamp, v, &cmd, &data);
            mismatch(v)
        }
        Step::Refuse(why) => crate::cluster::refusal_completion(why).into(),
    }
}

/// A peer's command refused because its stamp is older than our map: a replica write may mean
/// that its sender lost the primary role mid-write, which the cluster node may report
/// (`cluster::Admission::refused_stale`; it never delays the answer).
fn refused_stale(
    ctrl: &Controller,
    internal: bool,
    stamp: u64,
    v: Stamp,
    cmd: &IoCommand,
    data: &Bytes,
) {
    if internal
        && matches!(v, Stamp::Stale { .. })
        && let Some(a) = ctrl.registry.admission.get()
    {
        a.refused_stale(stamp, &ctrl.hostnqn, cmd, data);
    }
}

/// A command that waited [`GATE_WAIT`] at a closed gate is answered without running: a host
/// gets Internal Path Error (it retries, on another path if it has one), a peer "server
/// behind" with a retry delay (it retries within its own deadline).
fn gate_timed_out(internal: bool) -> Completion {
    if internal {
        crate::cluster::refusal_completion(Refusal::NotServing)
    } else {
        Completion::status(Status::INTERNAL_PATH_ERROR)
    }
}

fn mismatch(v: Stamp) -> Outcome {
    match crate::cluster::generation::Mismatch::of(v) {
        Ok(()) => Completion::ok().into(),
        Err(m) => Completion {
            status: m.status,
            dw0: m.dw0,
            dw1: m.dw1,
            ..Completion::default()
        }
        .into(),
    }
}

/// Checks the stamp (again) and runs: the slow path, after waiting at the gate (holding its
/// `pass`) or for a map.
async fn checked(
    ctrl: &Arc<Controller>,
    internal: bool,
    ns: Option<Arc<Namespace>>,
    cmd: IoCommand,
    data: Bytes,
    pass: Option<crate::cluster::gate::Pass>,
    after_behind_wait: bool,
) -> Completion {
    let stamp = cmd.generation().map_or(0, std::num::NonZeroU64::get);
    let g = &ctrl.registry.generation;
    // After a wait for our map the first check already counted this command as "behind".
    let step = admission::step(
        Stage::Waited,
        true,
        g.behind_wait().is_some(),
        || g.verdict(stamp, internal, !after_behind_wait),
        || admitted(ctrl, internal, stamp, &cmd, &data),
    );
    let outcome = match step {
        Step::Run => run(ctrl, ns, cmd, data, None),
        Step::Answer(v) => {
            refused_stale(ctrl, internal, stamp, v, &cmd, &data);
            mismatch(v)
        }
        Step::Refuse(why) => crate::cluster::refusal_completion(why).into(),
        // Not at this stage: the gate pass is held, and a command waits for our map once.
        Step::WaitGate | Step::WaitBehind => Status::INTERNAL.into(),
    };
    let c = match outcome {
        Outcome::Done(c) | Outcome::Connected(c) => c,
        Outcome::Pending(f) => f.await,
    };
    drop(pass);
    c
}

/// Cluster nodes: an internal command whose stamp passed must also come from a peer this
/// server's map allows on that range (docs/cluster-protocol.md, "Fencing").
fn admitted(
    ctrl: &Controller,
    internal: bool,
    stamp: u64,
    cmd: &IoCommand,
    data: &Bytes,
) -> Result<(), Refusal> {
    match ctrl.registry.admission.get() {
        Some(a) if internal => a.check(stamp, &ctrl.hostnqn, cmd, data),
        _ => Ok(()),
    }
}

/// Keeps the gate pass until the command has completed.
fn with_pass(o: Outcome, pass: Option<crate::cluster::gate::Pass>) -> Outcome {
    match (o, pass) {
        (Outcome::Pending(f), Some(pass)) => Outcome::Pending(Box::pin(async move {
            let c = f.await;
            drop(pass);
            c
        })),
        (o, _) => o,
    }
}

/// Runs a command whose stamp passed.
fn run(
    ctrl: &Arc<Controller>,
    ns: Option<Arc<Namespace>>,
    cmd: IoCommand,
    data: Bytes,
    pool: Option<&mut BufPool>,
) -> Outcome {
    let Some(subsys) = &ctrl.subsys else {
        return Status::INVALID_OPCODE.with_dnr().into();
    };
    if let IoCommand::Flush(f) = &cmd
        && f.nsid == NSID_BROADCAST
    {
        let vols: Vec<Arc<dyn Volume>> = subsys
            .namespaces()
            .values()
            .map(|n| Arc::clone(&n.volume))
            .collect();
        return Outcome::Pending(Box::pin(async move {
            for v in vols {
                if let Err(e) = v.flush().await {
                    return Completion::status(from_volume_error(&e));
                }
            }
            Completion::ok()
        }));
    }
    // Resolved once when the command arrived (exec::resolve).
    let Some(ns) = ns else {
        return Status::INVALID_NS.with_dnr().into();
    };
    let probe = crate::metrics::IoProbe::start(&ns, &cmd);
    let r = match cmd {
        IoCommand::Read(rw) => read(ctrl, &ns, rw, pool),
        IoCommand::Write(rw) => write(ctrl, &ns, rw, data),
        IoCommand::Compare(rw) => compare(&ns, rw, data),
        IoCommand::Flush(_) => {
            let f = ns.volume.flush();
            Ok(Outcome::Pending(Box::pin(async move { done(f.await) })))
        }
        IoCommand::WriteZeroes(wz) => write_zeroes(&ns, wz),
        IoCommand::DatasetManagement(dsm) => dataset_management(&ns, dsm, &data),
        // Not advertised in ONCS: the host never sends them.
        IoCommand::WriteUncorrectable(_) | IoCommand::Verify(_) => {
            Err(Status::INVALID_OPCODE.with_dnr())
        }
    };
    crate::metrics::IoProbe::finish(probe, &ns, r.unwrap_or_else(Outcome::from))
}

fn done(r: IoResult<()>) -> Completion {
    match r {
        Ok(()) => Completion::ok(),
        Err(e) => {
            tracing::warn!(error = %e, "backend I/O failed");
            Completion::status(from_volume_error(&e))
        }
    }
}

fn read(
    ctrl: &Arc<Controller>,
    ns: &Namespace,
    rw: Rw,
    pool: Option<&mut BufPool>,
) -> Result<Outcome, Status> {
    let (off, len) = ns.byte_range(rw.slba, u64::from(rw.nlb))?;
    if let Some(r) = ctrl
        .registry
        .transport()
        .zero_copy_reads
        .then(|| ns.volume.read_mapped(off, len))
        .flatten()
    {
        // Zero-copy: the transport sends the backend's own bytes.
        return Ok(read_done(ctrl, r.map(ReadData::Mapped)).into());
    }
    let len = usize::try_from(len).map_err(|_| Status::INVALID_FIELD.with_dnr())?;
    let buf = match pool {
        Some(p) => p.take(len),
        None => vec![0u8; len],
    };
    let mut f = ns.volume.read(off, buf);
    if let Some(r) = f.take_ready() {
        return Ok(read_done(ctrl, r.map(ReadData::Buf)).into());
    }
    let ctrl = Arc::clone(ctrl);
    Ok(Outcome::Pending(Box::pin(async move {
        read_done(&ctrl, f.await.map(ReadData::Buf))
    })))
}

/// What a read returns: a filled buffer, or the backend's own memory.
enum ReadData {
    Buf(Bytes),
    Mapped(hw::Mapped),
}

fn read_done(ctrl: &Controller, r: IoResult<ReadData>) -> Completion {
    let c = &ctrl.counters;
    match r {
        Ok(d) => {
            c.read_cmds.fetch_add(1, Ordering::Relaxed);
            match d {
                ReadData::Buf(b) => {
                    c.bytes_read.fetch_add(b.len() as u64, Ordering::Relaxed);
                    Completion::data(b)
                }
                ReadData::Mapped(m) => {
                    c.bytes_read.fetch_add(m.len() as u64, Ordering::Relaxed);
                    Completion::mapped(m)
                }
            }
        }
        Err(e) => {
            c.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "backend read failed");
            Completion::status(from_volume_error(&e))
        }
    }
}

fn write(ctrl: &Arc<Controller>, ns: &Namespace, rw: Rw, data: Bytes) -> Result<Outcome, Status> {
    let (off, len) = ns.byte_range(rw.slba, u64::from(rw.nlb))?;
    if data.len() as u64 != len {
        // The transport checked the SGL length against NLB; this is our own invariant.
        return Err(Status::SGL_INVALID_DATA_LEN.with_dnr());
    }
    let mut f = ns.volume.write(off, data, rw.fua);
    if let Some(r) = f.take_ready() {
        return Ok(write_done(ctrl, len, r).into());
    }
    let ctrl = Arc::clone(ctrl);
    Ok(Outcome::Pending(Box::pin(async move {
        write_done(&ctrl, len, f.await)
    })))
}

fn write_done(ctrl: &Controller, len: u64, r: IoResult<()>) -> Completion {
    let c = &ctrl.counters;
    if r.is_ok() {
        c.write_cmds.fetch_add(1, Ordering::Relaxed);
        c.bytes_written.fetch_add(len, Ordering::Relaxed);
    } else {
        c.errors.fetch_add(1, Ordering::Relaxed);
    }
    done(r)
}

fn compare(ns: &Namespace, rw: Rw, data: Bytes) -> Result<Outcome, Status> {
    let (off, len) = ns.byte_range(rw.slba, u64::from(rw.nlb))?;
    if data.len() as u64 != len {
        return Err(Status::SGL_INVALID_DATA_LEN.with_dnr());
    }
    let len = usize::try_from(len).map_err(|_| Status::INVALID_FIELD.with_dnr())?;
    let f = ns.volume.read(off, vec![0u8; len]);
    Ok(Outcome::Pending(Box::pin(async move {
        match f.await {
            Ok(b) if b == data => Completion::ok(),
            // NVM Command Set 1.0, section 3.2.1: a miscompare is Compare Failure.
            Ok(_) => Completion::status(Status::COMPARE_FAILURE.with_dnr()),
            Err(e) => Completion::status(from_volume_error(&e)),
        }
    })))
}

fn write_zeroes(ns: &Namespace, wz: WriteZeroes) -> Result<Outcome, Status> {
    let (off, len) = ns.byte_range(wz.slba, u64::from(wz.nlb))?;
    let vol = Arc::clone(&ns.volume);
    // DEAC asks to deallocate too; our deallocated blocks read as zeros (DLFEAT), so either
    // way the range reads back zeros afterwards.
    let f = if wz.deac {
        vol.deallocate(off, len)
    } else {
        vol.write_zeroes(off, len)
    };
    let fua = wz.fua;
    Ok(Outcome::Pending(Box::pin(async move {
        let r = f.await;
        if r.is_ok() && fua {
            return done(vol.flush().await);
        }
        done(r)
    })))
}

fn dataset_management(
    ns: &Namespace,
    dsm: DatasetManagement,
    data: &[u8],
) -> Result<Outcome, Status> {
    if !dsm.ad {
        // Only attribute hints (IDR/IDW): nothing to do.
        return Ok(Completion::ok().into());
    }
    let ranges = DsmRange::parse_list(data, dsm.nr).ok_or(Status::INVALID_FIELD.with_dnr())?;
    let mut spans = Vec::with_capacity(ranges.len());
    for r in &ranges {
        spans.push(ns.byte_range(r.slba, u64::from(r.nlb))?);
    }
    let vol = Arc::clone(&ns.volume);
    Ok(Outcome::Pending(Box::pin(async move {
        for (off, len) in spans {
            if len == 0 {
                continue;
            }
            if let Err(e) = vol.deallocate(off, len).await {
                return Completion::status(from_volume_error(&e));
            }
        }
        Completion::ok()
    })))
}
