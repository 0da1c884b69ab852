//! NVM I/O commands (NVM Command Set 1.0, section 3): Read, Write, Compare, Flush, Write Zeroes,
//! Dataset Management. Every command is checked against the map generation, then the namespace
//! range, before it touches a volume.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use codec::nvme::Sqe;
use codec::nvme::Status;
use codec::nvme::cmd::{DatasetManagement, DsmRange, IoCommand, Rw, WriteZeroes};

use crate::bufpool::BufPool;
use crate::ctrl::Controller;
use crate::exec::{Completion, Outcome};
use crate::namespace::Namespace;
use crate::status::from_io_error;
use crate::volume::Volume;

/// NSID FFFFFFFFh: "all namespaces" (Flush only, when VWC reports broadcast support).
pub const NSID_BROADCAST: u32 = 0xFFFF_FFFF;

pub fn execute(
    ctrl: &Arc<Controller>,
    internal: bool,
    _sqe: &Sqe,
    cmd: IoCommand,
    data: Bytes,
    pool: &mut BufPool,
) -> Outcome {
    // Invariant 1: nothing stamped with generation g runs unless this server is at g.
    let stamp = cmd.generation().map_or(0, std::num::NonZeroU64::get);
    if let Err(m) = ctrl.registry.generation.check(stamp, internal) {
        return Completion {
            status: m.status,
            dw0: m.dw0,
            dw1: m.dw1,
            ..Completion::default()
        }
        .into();
    }
    let Some(subsys) = &ctrl.subsys else {
        return Status::INVALID_OPCODE.with_dnr().into();
    };
    if let IoCommand::Flush(f) = &cmd
        && f.nsid == NSID_BROADCAST
    {
        let vols: Vec<Arc<dyn Volume>> = subsys
            .namespaces
            .values()
            .map(|n| Arc::clone(&n.volume))
            .collect();
        return Outcome::Pending(Box::pin(async move {
            for v in vols {
                if let Err(e) = v.flush().await {
                    return Completion::status(from_io_error(&e));
                }
            }
            Completion::ok()
        }));
    }
    let Some(ns) = subsys.namespace(cmd.nsid()).cloned() else {
        return Status::INVALID_NS.with_dnr().into();
    };
    let run = match cmd {
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
    run.unwrap_or_else(Outcome::from)
}

fn done(r: Result<(), hw::IoError>) -> Completion {
    match r {
        Ok(()) => Completion::ok(),
        Err(e) => {
            tracing::warn!(error = %e, "backend I/O failed");
            Completion::status(from_io_error(&e))
        }
    }
}

fn read(
    ctrl: &Arc<Controller>,
    ns: &Namespace,
    rw: Rw,
    pool: &mut BufPool,
) -> Result<Outcome, Status> {
    let (off, len) = ns.byte_range(rw.slba, u64::from(rw.nlb))?;
    let len = usize::try_from(len).map_err(|_| Status::INVALID_FIELD.with_dnr())?;
    let mut f = ns.volume.read(off, pool.take(len));
    if let Some(r) = f.take_ready() {
        return Ok(read_done(ctrl, r).into());
    }
    let ctrl = Arc::clone(ctrl);
    Ok(Outcome::Pending(Box::pin(async move {
        read_done(&ctrl, f.await)
    })))
}

fn read_done(ctrl: &Controller, r: Result<Bytes, hw::IoError>) -> Completion {
    let c = &ctrl.counters;
    match r {
        Ok(b) => {
            c.read_cmds.fetch_add(1, Ordering::Relaxed);
            c.bytes_read.fetch_add(b.len() as u64, Ordering::Relaxed);
            Completion::data(b)
        }
        Err(e) => {
            c.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "backend read failed");
            Completion::status(from_io_error(&e))
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

fn write_done(ctrl: &Controller, len: u64, r: Result<(), hw::IoError>) -> Completion {
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
            Err(e) => Completion::status(from_io_error(&e)),
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
                return Completion::status(from_io_error(&e));
            }
        }
        Completion::ok()
    })))
}
