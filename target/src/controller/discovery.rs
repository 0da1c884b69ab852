//! The discovery controller (NVMe Base 2.0, section 3.1.3.3; NVMe-oF 1.1, section 5): Identify,
//! the Discovery log page (70h) with GENCTR, Get/Set Features, Keep Alive and AERs for
//! Discovery Log Page Change notices.

use std::net::SocketAddr;
use std::sync::Arc;

use codec::nvme::Status;
use codec::nvme::cmd::{AdminCommand, FeatureId, cns};
use codec::nvme::log::{
    DiscoveryLog, DiscoveryLogEntry, adrfam, lid, sectype, subtype, treq, trtype,
};

use crate::controller::admin::{async_event_request, sized};
use crate::controller::ctrl::{Controller, aec};
use crate::controller::exec::{Completion, Outcome};
use crate::controller::identify;
use crate::subsystem::{DISCOVERY_NQN, Registry, lock};

/// ASQSZ advertised for each entry: the admin queue size a host should use (32 entries).
const ASQSZ: u16 = 32;
/// CNTLID FFFFh in an entry: the subsystem uses the dynamic controller model.
const CNTLID_DYNAMIC: u16 = 0xFFFF;

pub fn execute(ctrl: &Arc<Controller>, cmd: AdminCommand) -> Outcome {
    match cmd {
        AdminCommand::Identify(id) if id.cns == cns::CONTROLLER => Completion::data(sized(
            &identify::controller(ctrl),
            codec::nvme::IDENTIFY_DATA_LEN,
        ))
        .into(),
        AdminCommand::Identify(_) => Status::INVALID_FIELD.with_dnr().into(),
        AdminCommand::GetLogPage(g) if g.lid == lid::DISCOVERY => {
            let page = log_page(&ctrl.registry, &ctrl.hostnqn).to_bytes();
            let r = g.window(page.len()).and_then(|(start, n)| {
                let want =
                    usize::try_from(g.numd_bytes).map_err(|_| Status::INVALID_FIELD.with_dnr())?;
                Ok(Completion::data(sized(&page[start..start + n], want)))
            });
            Completion::from(r).into()
        }
        AdminCommand::GetLogPage(_) => Status::INVALID_LOG_PAGE.with_dnr().into(),
        AdminCommand::GetFeatures(g) => match g.fid {
            FeatureId::KEEP_ALIVE_TIMER => Completion::dw0(ctrl.kato_ms()).into(),
            FeatureId::ASYNC_EVENT_CONFIG => {
                Completion::dw0(lock(&ctrl.features).async_event_config).into()
            }
            _ => Status::INVALID_FIELD.with_dnr().into(),
        },
        AdminCommand::SetFeatures(s) => match s.fid {
            FeatureId::KEEP_ALIVE_TIMER => {
                ctrl.set_kato_ms(s.cdw11);
                Completion::ok().into()
            }
            FeatureId::ASYNC_EVENT_CONFIG => {
                lock(&ctrl.features).async_event_config = s.cdw11 & aec::DISCOVERY_CHANGE;
                Completion::ok().into()
            }
            _ => Status::INVALID_FIELD.with_dnr().into(),
        },
        AdminCommand::AsyncEventRequest => async_event_request(ctrl),
        AdminCommand::KeepAlive => {
            ctrl.keep_alive();
            Completion::ok().into()
        }
        AdminCommand::Abort(_) => Completion::dw0(1).into(),
    }
}

fn entry(addr: SocketAddr, portid: u16, subtype: u8, subnqn: &str) -> DiscoveryLogEntry {
    DiscoveryLogEntry {
        trtype: trtype::TCP,
        adrfam: if addr.is_ipv4() {
            adrfam::IPV4
        } else {
            adrfam::IPV6
        },
        subtype,
        // No secure channel; SQ flow control may be disabled (C2HData SUCCESS is then used).
        treq: treq::SECURE_NOT_REQUIRED | treq::SQ_FLOW_CONTROL_DISABLE,
        portid,
        cntlid: CNTLID_DYNAMIC,
        asqsz: ASQSZ,
        eflags: 0,
        trsvcid: addr.port().to_string(),
        subnqn: subnqn.to_string(),
        traddr: addr.ip().to_string(),
        sectype: sectype::NONE,
    }
}

/// The discovery log page as `hostnqn` sees it: one entry per host portal for the current
/// discovery subsystem, then one per host portal for every subsystem that host may connect
/// to. Internal portals (server-to-server) and internal subsystems are never listed: they are
/// not for hosts, and a host that followed such an entry would be refused anyway.
pub fn log_page(registry: &Registry, hostnqn: &str) -> DiscoveryLog {
    let mut entries = Vec::new();
    for (i, addr) in registry.host_listeners().into_iter().enumerate() {
        let portid = u16::try_from(i + 1).unwrap_or(u16::MAX);
        entries.push(entry(
            addr,
            portid,
            subtype::CURRENT_DISCOVERY,
            DISCOVERY_NQN,
        ));
        for s in registry.subsystems().values() {
            if !s.internal && s.hosts_allow(hostnqn) {
                entries.push(entry(addr, portid, subtype::NVME, &s.nqn));
            }
        }
    }
    DiscoveryLog {
        genctr: registry.genctr(),
        recfmt: 0,
        entries,
    }
}
