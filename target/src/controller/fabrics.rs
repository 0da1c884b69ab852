//! Fabrics commands (NVMe Base 2.0, section 6): Connect, Property Get/Set, Disconnect,
//! Authentication Send/Receive.

use std::sync::Arc;

use bytes::Bytes;
use codec::nvme::Status;
use codec::nvme::cmd::FabricsCommand;
use codec::nvme::fabrics::{
    CAP_CSS_ADMIN_ONLY, CAP_CSS_NVM, CNTLID_DYNAMIC, Cap, Cc, Connect, ConnectData, ConnectReject,
    Csts, PropertyGet, PropertySet, VS_1_4, connect_data_off, connect_off, connect_success_dw0,
    prop, shn, shst,
};

use crate::controller::auth;
use crate::controller::ctrl::{Controller, CtrlKind, Regs};
use crate::controller::exec::{Completion, Outcome, Queue};
use crate::subsystem::{DISCOVERY_NQN, Registry, lock};

/// CAP.MQES (0's based): 128 entries per queue, SPDK's default queue depth; Linux asks for 128
/// I/O queue entries and 32 admin entries by default.
pub const MQES: u16 = 127;

/// Smallest admin queue a host may ask for (NVMe-oF 1.1, section 3.3.1: ASQSZ 32 entries).
pub const ADMIN_SQSIZE_MIN: u16 = 31;

/// CAP.TO in 500 ms units: CSTS.RDY follows CC.EN at once here, so 5 s is generous.
const CAP_TO_500MS: u8 = 10;

/// The CAP value every controller of this target reports.
pub fn cap(kind: CtrlKind) -> u64 {
    let css = match kind {
        // NVM command set only: the Linux host then uses CC.CSS = NVM and the classic Identify
        // Namespace path (CNS 00h) rather than the I/O Command Set specific structures.
        CtrlKind::Io => CAP_CSS_NVM,
        CtrlKind::Discovery => CAP_CSS_ADMIN_ONLY,
    };
    Cap {
        mqes: MQES,
        cqr: true,
        to: CAP_TO_500MS,
        css,
        ..Cap::default()
    }
    .to_u64()
}

pub fn execute(
    registry: &Arc<Registry>,
    queue: &mut Queue,
    cmd: FabricsCommand,
    data: Bytes,
) -> Outcome {
    match cmd {
        FabricsCommand::Connect(c) => connect(registry, queue, c, &data),
        FabricsCommand::PropertyGet(p) => auth::check(queue)
            .and_then(|()| property_get(queue, p))
            .into(),
        FabricsCommand::PropertySet(p) => match auth::check(queue) {
            Ok(()) => property_set(queue, p),
            Err(st) => st.into(),
        },
        FabricsCommand::Disconnect(_) => {
            // NVMe Base 2.0, section 6.4: Disconnect deletes the queue it arrives on (and on
            // the admin queue, the association). Closing the connection after the response
            // does exactly that (see exec::queue_closed).
            if queue.ctrl.is_none() {
                return Status::CMD_SEQ_ERROR.with_dnr().into();
            }
            Completion {
                close_after: true,
                ..Completion::ok()
            }
            .into()
        }
        FabricsCommand::AuthSend(a) => auth::send(queue, a, &data),
        FabricsCommand::AuthReceive(a) => auth::receive(queue, a),
    }
}

fn reject(r: ConnectReject) -> Outcome {
    Completion {
        status: r.status,
        dw0: r.dw0(),
        ..Completion::default()
    }
    .into()
}

fn connect(registry: &Arc<Registry>, queue: &mut Queue, c: Connect, data: &[u8]) -> Outcome {
    if queue.ctrl.is_some() {
        return Status::CMD_SEQ_ERROR.with_dnr().into();
    }
    if let Err(r) = c.validate(MQES) {
        return reject(r);
    }
    if c.is_admin() && c.sqsize < ADMIN_SQSIZE_MIN {
        return reject(ConnectReject::invalid_sqe_field(connect_off::SQSIZE));
    }
    let d = match ConnectData::parse(data) {
        Ok(d) => d,
        Err(r) => return reject(r),
    };
    // An empty or free-form HOSTNQN (SPDK's initiator sends "" by default) is for the host
    // policy to judge: refused below where an allow-list applies, accepted (and said so once
    // per association) where the subsystem allows any host.
    let informal_host = !d.hostnqn_is_nqn_formed();
    // The DH-HMAC-CHAP transaction this queue must pass (a host with a secret on the subsystem).
    let mut session: Option<Box<auth::Session>> = None;
    let ctrl = if d.subnqn == DISCOVERY_NQN {
        if !c.is_admin() {
            // A discovery controller has only an admin queue.
            return reject(ConnectReject::invalid_sqe_field(connect_off::QID));
        }
        if d.cntlid != CNTLID_DYNAMIC {
            return reject(ConnectReject::invalid_data_field(connect_data_off::CNTLID));
        }
        let reg = Arc::clone(registry);
        let made = registry.discovery.add_controller(|id| {
            Arc::new(Controller::new(
                id,
                CtrlKind::Discovery,
                None,
                reg,
                d.hostnqn.clone(),
                d.hostid,
                c.kato_ms,
                false,
            ))
        });
        match made {
            Some(ctrl) => {
                ctrl.spawn_keep_alive_watchdog();
                ctrl
            }
            None => return reject(ConnectReject::controller_busy()),
        }
    } else {
        let Some(subsys) = registry.subsystem(&d.subnqn) else {
            tracing::debug!(subnqn = %d.subnqn, "Connect to an unknown subsystem");
            return reject(ConnectReject::invalid_data_field(connect_data_off::SUBNQN));
        };
        if !registry.serves_on(&subsys, queue.local) {
            // Internal subsystems live on internal portals only, host subsystems never there:
            // on the wrong portal the subsystem does not exist.
            tracing::info!(subnqn = %d.subnqn, hostnqn = %d.hostnqn, local = ?queue.local, "Connect to a subsystem not served on this portal");
            return reject(ConnectReject::invalid_data_field(connect_data_off::SUBNQN));
        }
        if informal_host && !subsys.allows_any_host() {
            tracing::info!(subnqn = %d.subnqn, hostnqn = %d.hostnqn, "Connect refused: host NQN is empty/not NQN-formed and the subsystem has a host allow-list");
            return reject(ConnectReject::invalid_host());
        }
        if !subsys.hosts_allow(&d.hostnqn) {
            tracing::info!(subnqn = %d.subnqn, hostnqn = %d.hostnqn, "Connect from a host that is not allowed");
            return reject(ConnectReject::invalid_host());
        }
        let policy = subsys.auth_policy();
        let keys = match policy.keys_for(&d.hostnqn) {
            Ok(k) => k,
            Err(()) => {
                tracing::info!(subnqn = %d.subnqn, hostnqn = %d.hostnqn, "Connect refused: the subsystem requires authentication and holds no secret for this host");
                return reject(ConnectReject::invalid_host());
            }
        };
        session = keys.map(|k| Box::new(auth::Session::new(k, &d.hostnqn, &d.subnqn, &policy)));
        if c.is_admin() {
            if d.cntlid != CNTLID_DYNAMIC {
                return reject(ConnectReject::invalid_data_field(connect_data_off::CNTLID));
            }
            let vwc = subsys
                .namespaces()
                .values()
                .any(|n| n.volume.volatile_write_cache());
            let reg = Arc::clone(registry);
            let sub = Arc::clone(&subsys);
            let made = subsys.add_controller(|id| {
                Arc::new(Controller::new(
                    id,
                    CtrlKind::Io,
                    Some(sub),
                    reg,
                    d.hostnqn.clone(),
                    d.hostid,
                    c.kato_ms,
                    vwc,
                ))
            });
            match made {
                Some(ctrl) => {
                    ctrl.spawn_keep_alive_watchdog();
                    ctrl
                }
                None => return reject(ConnectReject::controller_busy()),
            }
        } else {
            let Some(ctrl) = subsys.controller(d.cntlid) else {
                return reject(ConnectReject::invalid_data_field(connect_data_off::CNTLID));
            };
            if ctrl.hostnqn != d.hostnqn || ctrl.hostid != d.hostid {
                return reject(ConnectReject::invalid_host());
            }
            let granted = lock(&ctrl.features).io_queues;
            if c.qid > granted {
                return reject(ConnectReject::invalid_sqe_field(connect_off::QID));
            }
            if !Csts::from_u32(lock(&ctrl.regs).csts).rdy {
                return Status::CMD_SEQ_ERROR.with_dnr().into();
            }
            if !lock(&ctrl.io_queues).insert(c.qid) {
                return reject(ConnectReject::controller_busy());
            }
            ctrl
        }
    };
    if c.is_admin() {
        // A new association: worth an info line (the connection's span carries the peer).
        if informal_host {
            tracing::info!(subnqn = %d.subnqn, hostnqn = %d.hostnqn, cntlid = ctrl.cntlid, "host NQN is empty/not NQN-formed, accepted because the subsystem allows any host");
        }
        tracing::info!(subnqn = %d.subnqn, hostnqn = %d.hostnqn, cntlid = ctrl.cntlid, kato_ms = c.kato_ms, "host connected (new association)");
    }
    tracing::debug!(cntlid = ctrl.cntlid, qid = c.qid, sqsize = c.sqsize, hostnqn = %ctrl.hostnqn, "queue connected");
    let cntlid = ctrl.cntlid;
    queue.internal = ctrl.subsys.as_ref().is_some_and(|s| s.internal);
    queue.qid = c.qid;
    queue.sqsize = c.sqsize;
    queue.sq_flow_disabled = c.sq_flow_control_disabled();
    queue.ctrl = Some(ctrl);
    let authreq = if session.is_some() {
        auth::AUTHREQ_ATR
    } else {
        0
    };
    queue.auth = session;
    Outcome::Connected(Completion::dw0(connect_success_dw0(cntlid, authreq)))
}

fn admin_ctrl(queue: &Queue) -> Result<&Arc<Controller>, Status> {
    let ctrl = queue
        .ctrl
        .as_ref()
        .ok_or(Status::CMD_SEQ_ERROR.with_dnr())?;
    // Property commands belong to the admin queue (NVMe Base 2.0, section 6.5/6.6).
    if queue.qid != 0 {
        return Err(Status::INVALID_FIELD.with_dnr());
    }
    Ok(ctrl)
}

fn split(v: u64) -> (u32, u32) {
    let [a, b, c, d, e, f, g, h] = v.to_le_bytes();
    (
        u32::from_le_bytes([a, b, c, d]),
        u32::from_le_bytes([e, f, g, h]),
    )
}

fn property_get(queue: &Queue, p: PropertyGet) -> Result<Completion, Status> {
    let ctrl = admin_ctrl(queue)?;
    let regs = *lock(&ctrl.regs);
    let value: u64 = match (p.offset, p.size8) {
        (prop::CAP, true) => cap(ctrl.kind),
        (prop::VS, false) => u64::from(VS_1_4),
        (prop::CC, false) => u64::from(regs.cc),
        (prop::CSTS, false) => u64::from(regs.csts),
        _ => return Err(Status::INVALID_FIELD.with_dnr()),
    };
    let (dw0, dw1) = split(value);
    Ok(Completion {
        dw0,
        dw1,
        ..Completion::default()
    })
}

fn property_set(queue: &Queue, p: PropertySet) -> Outcome {
    let ctrl = match admin_ctrl(queue) {
        Ok(c) => Arc::clone(c),
        Err(st) => return st.into(),
    };
    if p.offset != prop::CC || p.size8 {
        // CAP, VS and CSTS are read-only; NSSR is not supported (CAP.NSSRS 0).
        return Status::INVALID_FIELD.with_dnr().into();
    }
    let Ok(value) = u32::try_from(p.value) else {
        return Status::INVALID_FIELD.with_dnr().into();
    };
    let new = Cc::from_u32(value);
    let mut regs = lock(&ctrl.regs);
    let old = Cc::from_u32(regs.cc);
    let mut csts = Csts::from_u32(regs.csts);
    if new.en && !old.en {
        // CC.IOSQES/IOCQES must be 6 (64 B) and 4 (16 B) for an I/O controller (NVMe-oF 1.1
        // section 3.x): anything else is a configuration the host may not ask for.
        if ctrl.kind == CtrlKind::Io && (new.iosqes != 6 || new.iocqes != 4) {
            csts.cfs = true;
        } else if new.mps != 0 {
            // CAP.MPSMIN = MPSMAX = 0: 4 KiB pages only.
            csts.cfs = true;
        } else {
            csts.rdy = true;
        }
    } else if !new.en && old.en {
        // Controller reset: the host reconnects its queues afterwards.
        csts.rdy = false;
        csts.shst = shst::NORMAL;
    }
    let shutting = new.shn != shn::NONE && old.shn == shn::NONE;
    if shutting {
        csts.shst = shst::OCCURRING;
    }
    ctrl.set_regs(
        &mut regs,
        Regs {
            cc: new.to_u32(),
            csts: csts.to_u32(),
        },
    );
    drop(regs);
    if !shutting {
        return Completion::ok().into();
    }
    // Shutdown notification: make volatile data durable, then report shutdown complete.
    Outcome::Pending(Box::pin(async move {
        if let Some(s) = &ctrl.subsys {
            for ns in s.namespaces().values() {
                if ns.volume.volatile_write_cache()
                    && let Err(e) = ns.volume.flush().await
                {
                    tracing::warn!(nsid = ns.nsid, error = %e, "flush at shutdown failed");
                }
            }
        }
        let mut regs = lock(&ctrl.regs);
        let mut csts = Csts::from_u32(regs.csts);
        csts.shst = shst::COMPLETE;
        let cc = regs.cc;
        ctrl.set_regs(
            &mut regs,
            Regs {
                cc,
                csts: csts.to_u32(),
            },
        );
        Completion::ok()
    }))
}
