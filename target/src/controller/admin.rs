//! Admin commands of an NVM (I/O) controller (NVMe Base 2.0, section 5).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use codec::nvme::Status;
use codec::nvme::cmd::{AdminCommand, FeatureId, GetFeatures, GetLogPage, SetFeatures, cns, sel};

use super::{identify, logpage};
use crate::controller::ctrl::{Controller, IO_QUEUES_MAX};
use crate::controller::exec::{Completion, Outcome};
use crate::subsystem::lock;

pub fn execute(ctrl: &Arc<Controller>, cmd: AdminCommand, data: Bytes) -> Outcome {
    match cmd {
        AdminCommand::Identify(id) => identify_cmd(ctrl, id).into(),
        AdminCommand::GetLogPage(g) => get_log_page(ctrl, &g).into(),
        AdminCommand::GetFeatures(g) => get_features(ctrl, &g).into(),
        AdminCommand::SetFeatures(s) => set_features(ctrl, &s, &data).into(),
        AdminCommand::AsyncEventRequest => async_event_request(ctrl),
        AdminCommand::KeepAlive => {
            ctrl.keep_alive();
            Completion::ok().into()
        }
        // NVMe Base 2.0, section 5.1: DW0 bit 0 set = the command was not aborted. Commands
        // here finish quickly; we never abort one.
        AdminCommand::Abort(_) => Completion::dw0(1).into(),
    }
}

/// Returns `page` as the data of a command that asked for `want` bytes (zero-padded).
pub fn sized(page: &[u8], want: usize) -> Bytes {
    let mut b = BytesMut::zeroed(want);
    let n = page.len().min(want);
    b[..n].copy_from_slice(&page[..n]);
    b.freeze()
}

fn identify_cmd(
    ctrl: &Arc<Controller>,
    id: codec::nvme::cmd::Identify,
) -> Result<Completion, Status> {
    let Some(subsys) = &ctrl.subsys else {
        return Err(Status::INVALID_FIELD.with_dnr());
    };
    let page: Vec<u8> = match id.cns {
        cns::CONTROLLER => identify::controller(ctrl).to_vec(),
        cns::NAMESPACE => {
            let ns = subsys
                .namespace(id.nsid)
                .ok_or(Status::INVALID_NS.with_dnr())?;
            identify::namespace(&ns, ctrl.registry.paths().ana_group).to_vec()
        }
        // NVMe Base 2.0, section 5.17.2.2: NSID FFFFFFFEh and FFFFFFFFh are invalid here.
        cns::ACTIVE_NSID_LIST if id.nsid >= 0xFFFF_FFFE => {
            return Err(Status::INVALID_NS.with_dnr());
        }
        cns::ACTIVE_NSID_LIST => identify::active_ns_list(subsys, id.nsid).to_vec(),
        cns::NS_ID_DESCRIPTOR_LIST => {
            let ns = subsys
                .namespace(id.nsid)
                .ok_or(Status::INVALID_NS.with_dnr())?;
            identify::ns_descriptors(&ns).to_vec()
        }
        // I/O Command Set specific structures for the NVM command set (CSI 0): all fields are
        // reserved or zero for us (no PI, no extended LBA formats).
        cns::CS_NAMESPACE if id.csi == 0 => {
            subsys
                .namespace(id.nsid)
                .ok_or(Status::INVALID_NS.with_dnr())?;
            vec![0; codec::nvme::IDENTIFY_DATA_LEN]
        }
        cns::CS_CONTROLLER if id.csi == 0 => vec![0; codec::nvme::IDENTIFY_DATA_LEN],
        cns::CS_INDEPENDENT_NAMESPACE => {
            let ns = subsys
                .namespace(id.nsid)
                .ok_or(Status::INVALID_NS.with_dnr())?;
            identify::cs_independent_namespace(&ns, ctrl.registry.paths().ana_group).to_vec()
        }
        _ => return Err(Status::INVALID_FIELD.with_dnr()),
    };
    Ok(Completion::data(sized(
        &page,
        codec::nvme::IDENTIFY_DATA_LEN,
    )))
}

fn get_log_page(ctrl: &Arc<Controller>, g: &GetLogPage) -> Result<Completion, Status> {
    let page = logpage::build(ctrl, g)?;
    let (start, n) = g.window(page.len())?;
    let want = usize::try_from(g.numd_bytes).map_err(|_| Status::INVALID_FIELD.with_dnr())?;
    Ok(Completion::data(sized(&page[start..start + n], want)))
}

fn get_features(ctrl: &Arc<Controller>, g: &GetFeatures) -> Result<Completion, Status> {
    if g.sel == sel::SUPPORTED_CAPABILITIES {
        // Nothing is saveable or namespace specific; everything settable is changeable.
        let changeable = matches!(
            g.fid,
            FeatureId::ASYNC_EVENT_CONFIG
                | FeatureId::KEEP_ALIVE_TIMER
                | FeatureId::VOLATILE_WRITE_CACHE
                | FeatureId::HOST_BEHAVIOR
        );
        return Ok(Completion::dw0(if changeable { 1 << 2 } else { 0 }));
    }
    if g.sel == sel::SAVED {
        // No saveable features (ONCS bit 4 clear): SAVED reports the current value.
    }
    let f = *lock(&ctrl.features);
    let dw0 = match g.fid {
        // Arbitration and power management: fixed, read-only answers.
        FeatureId::ARBITRATION => 0,
        FeatureId::POWER_MANAGEMENT => 0,
        // Temperature threshold: the default 0x0157 (343 K) that hosts expect to read back.
        FeatureId::TEMPERATURE_THRESHOLD => 0x0157,
        FeatureId::ERROR_RECOVERY => 0,
        FeatureId::VOLATILE_WRITE_CACHE => u32::from(f.volatile_write_cache),
        FeatureId::NUMBER_OF_QUEUES => {
            let n = u32::from(f.io_queues.max(1) - 1);
            n | (n << 16)
        }
        FeatureId::INTERRUPT_COALESCING | FeatureId::WRITE_ATOMICITY => 0,
        FeatureId::ASYNC_EVENT_CONFIG => f.async_event_config,
        FeatureId::KEEP_ALIVE_TIMER => ctrl.kato_ms(),
        FeatureId::HOST_BEHAVIOR => {
            let mut page = [0u8; 512];
            page[0] = u8::from(f.acre);
            return Ok(Completion::data(Bytes::copy_from_slice(&page)));
        }
        _ => return Err(Status::INVALID_FIELD.with_dnr()),
    };
    Ok(Completion::dw0(dw0))
}

/// AEN kinds this controller can send (OAES): namespace attribute and ANA change notices.
const AEC_SUPPORTED: u32 =
    crate::controller::ctrl::aec::NS_ATTR | crate::controller::ctrl::aec::ANA_CHANGE;

fn set_features(
    ctrl: &Arc<Controller>,
    s: &SetFeatures,
    data: &[u8],
) -> Result<Completion, Status> {
    if s.sv {
        // NVMe Base 2.0, section 5.27: Save on a feature that cannot be saved.
        return Err(Status::FEATURE_NOT_SAVEABLE.with_dnr());
    }
    let mut f = lock(&ctrl.features);
    match s.fid {
        FeatureId::NUMBER_OF_QUEUES => {
            // NVMe Base 2.0, section 5.27.1.7: NSQR/NCQR are 0's based; FFFFh is invalid.
            let nsqr = s.cdw11 & 0xFFFF;
            let ncqr = s.cdw11 >> 16;
            if nsqr == 0xFFFF || ncqr == 0xFFFF {
                return Err(Status::INVALID_FIELD.with_dnr());
            }
            if !lock(&ctrl.io_queues).is_empty() {
                // Only before I/O queues exist (section 5.27.1.7).
                return Err(Status::CMD_SEQ_ERROR.with_dnr());
            }
            let want = nsqr.min(ncqr) + 1;
            let granted =
                u16::try_from(want.min(u32::from(IO_QUEUES_MAX))).unwrap_or(IO_QUEUES_MAX);
            f.io_queues = granted;
            let n = u32::from(granted - 1);
            Ok(Completion::dw0(n | (n << 16)))
        }
        FeatureId::ASYNC_EVENT_CONFIG => {
            f.async_event_config = s.cdw11 & AEC_SUPPORTED;
            Ok(Completion::ok())
        }
        FeatureId::KEEP_ALIVE_TIMER => {
            drop(f);
            ctrl.set_kato_ms(s.cdw11);
            Ok(Completion::ok())
        }
        FeatureId::VOLATILE_WRITE_CACHE => {
            let any_volatile = ctrl.subsys.as_ref().is_some_and(|s| {
                s.namespaces()
                    .values()
                    .any(|n| n.volume.volatile_write_cache())
            });
            let enable = s.cdw11 & 1 == 1;
            if !any_volatile && enable {
                // No cache to enable: VWC is reported absent.
                return Err(Status::INVALID_FIELD.with_dnr());
            }
            if any_volatile && !enable {
                // Our caches are the OS page cache: they cannot be switched off, so the host
                // must keep issuing Flush (a changeable feature would lie).
                return Err(Status::FEATURE_NOT_CHANGEABLE.with_dnr());
            }
            Ok(Completion::ok())
        }
        FeatureId::HOST_BEHAVIOR => {
            let acre = data.first().copied().unwrap_or(0);
            if acre > 1 {
                return Err(Status::INVALID_FIELD.with_dnr());
            }
            f.acre = acre == 1;
            Ok(Completion::ok())
        }
        FeatureId::ARBITRATION | FeatureId::POWER_MANAGEMENT | FeatureId::TEMPERATURE_THRESHOLD => {
            Err(Status::FEATURE_NOT_CHANGEABLE.with_dnr())
        }
        _ => Err(Status::INVALID_FIELD.with_dnr()),
    }
}

/// Parks an Asynchronous Event Request until an event arrives (NVMe Base 2.0, section 5.2).
pub fn async_event_request(ctrl: &Arc<Controller>) -> Outcome {
    if !ctrl.aer_begin() {
        return Status::ASYNC_LIMIT.with_dnr().into();
    }
    let ctrl = Arc::clone(ctrl);
    Outcome::Pending(Box::pin(async move {
        match ctrl.aer_wait().await {
            Some(ev) => Completion::dw0(ev),
            None => {
                ctrl.aer_abandon();
                Completion::status(Status::ABORT_SQ_DELETED)
            }
        }
    }))
}
