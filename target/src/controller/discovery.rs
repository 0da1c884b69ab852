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
        // Secure channel "not specified" (there is none), as Linux nvmet reports; SQ flow control
        // may be disabled (C2HData SUCCESS is then used). Not "not required" (10b): libnvme 1.3
        // (Debian 12's nvme-cli) asks the kernel for TLS on such entries in `nvme connect-all`,
        // and a kernel without TLS support refuses the connect.
        treq: treq::SECURE_NOT_SPECIFIED | treq::SQ_FLOW_CONTROL_DISABLE,
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

/// The discovery log page as `hostnqn` sees it: one entry per host portal of this target for the
/// current discovery subsystem, then one entry per path for every subsystem that host may
/// connect to. Standalone, the paths are this target's host portals; on a cluster server, they
/// are the host portals of every server that serves hosts (`up` or `draining` in the map), each
/// with its server's stable PORTID, so that `nvme connect-all` through any one server connects
/// every path. Internal portals (server-to-server) and internal subsystems are never listed:
/// they are not for hosts, and a host that followed such an entry would be refused anyway.
pub fn log_page(registry: &Registry, hostnqn: &str) -> DiscoveryLog {
    let paths = registry.paths();
    let local: Vec<(u16, SocketAddr)> = registry
        .host_listeners()
        .into_iter()
        .enumerate()
        .map(|(i, addr)| (paths.local_portid(i), addr))
        .collect();
    let subsystems: Vec<String> = registry
        .subsystems()
        .values()
        .filter(|s| !s.internal && s.hosts_allow(hostnqn))
        .map(|s| s.nqn.clone())
        .collect();
    let mut entries = Vec::new();
    let by_path = |entries: &mut Vec<DiscoveryLogEntry>, portid: u16, addr: SocketAddr| {
        for nqn in &subsystems {
            entries.push(entry(addr, portid, subtype::NVME, nqn));
        }
    };
    match &paths.portals {
        None => {
            for &(portid, addr) in &local {
                entries.push(entry(
                    addr,
                    portid,
                    subtype::CURRENT_DISCOVERY,
                    DISCOVERY_NQN,
                ));
                by_path(&mut entries, portid, addr);
            }
        }
        Some(portals) => {
            for &(portid, addr) in &local {
                entries.push(entry(
                    addr,
                    portid,
                    subtype::CURRENT_DISCOVERY,
                    DISCOVERY_NQN,
                ));
            }
            for p in portals {
                by_path(&mut entries, p.portid, p.addr);
            }
        }
    }
    DiscoveryLog {
        genctr: registry.genctr(),
        recfmt: 0,
        entries,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use codec::nvme::log::ana_state;

    use super::*;
    use crate::subsystem::paths::PathPortal;
    use crate::subsystem::{HostPolicy, Subsystem};

    fn registry() -> Registry {
        let sub = |nqn: &str, hosts| {
            Subsystem::new(
                nqn.to_string(),
                "S".into(),
                "M".into(),
                hosts,
                BTreeMap::new(),
            )
        };
        let r = Registry::new(
            vec![
                sub("nqn.2026-11.dev.tessera:a", HostPolicy::Any),
                sub(
                    "nqn.2026-11.dev.tessera:b",
                    HostPolicy::Only(vec!["h1".into()]),
                ),
            ],
            1,
        );
        r.add_listener("127.0.0.1:4421".parse().unwrap());
        r
    }

    fn listed(log: &DiscoveryLog) -> Vec<(u8, u16, String, String)> {
        log.entries
            .iter()
            .map(|e| {
                (
                    e.subtype,
                    e.portid,
                    format!("{}:{}", e.traddr, e.trsvcid),
                    e.subnqn.rsplit(':').next().unwrap().to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn standalone_lists_its_own_portal() {
        let r = registry();
        let log = log_page(&r, "h2");
        assert_eq!(
            listed(&log),
            [
                (
                    subtype::CURRENT_DISCOVERY,
                    1,
                    "127.0.0.1:4421".into(),
                    DISCOVERY_NQN.into()
                ),
                (subtype::NVME, 1, "127.0.0.1:4421".into(), "a".into()),
            ]
        );
    }

    #[test]
    fn cluster_server_lists_every_serving_servers_portal_and_bumps_genctr_on_changes() {
        let r = registry();
        let p = |portid, port| PathPortal {
            portid,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        // This is server 2 of 3; server 3 is down (not listed). Optimized, as when standalone:
        // the ANA state did not change, the portals did.
        let g0 = r.genctr();
        let c = r.set_cluster_paths(2, ana_state::OPTIMIZED, vec![p(1, 4420), p(2, 4421)]);
        assert!(c.portals && !c.ana);
        assert_eq!(r.paths().ana_chgcnt, 1);
        assert_eq!(r.genctr(), g0 + 1);
        let log = log_page(&r, "h1");
        assert_eq!(log.genctr, g0 + 1);
        assert_eq!(
            listed(&log),
            [
                (
                    subtype::CURRENT_DISCOVERY,
                    2,
                    "127.0.0.1:4421".into(),
                    DISCOVERY_NQN.into()
                ),
                (subtype::NVME, 1, "127.0.0.1:4420".into(), "a".into()),
                (subtype::NVME, 1, "127.0.0.1:4420".into(), "b".into()),
                (subtype::NVME, 2, "127.0.0.1:4421".into(), "a".into()),
                (subtype::NVME, 2, "127.0.0.1:4421".into(), "b".into()),
            ]
        );
        // A state change alone leaves the discovery log (and GENCTR) as it was.
        let c = r.set_cluster_paths(2, ana_state::INACCESSIBLE, vec![p(1, 4420), p(2, 4421)]);
        assert!(c.ana && !c.portals);
        assert_eq!(r.genctr(), g0 + 1);
        assert_eq!(r.paths().ana_chgcnt, 2);
        // Server 3 comes up: a new entry per subsystem, GENCTR moves.
        r.set_cluster_paths(
            2,
            ana_state::INACCESSIBLE,
            vec![p(1, 4420), p(2, 4421), p(3, 4422)],
        );
        assert_eq!(r.genctr(), g0 + 2);
        let log = log_page(&r, "h2");
        let ports: Vec<u16> = log.entries.iter().map(|e| e.portid).collect();
        assert_eq!(ports, [2, 1, 2, 3]);
    }
}
