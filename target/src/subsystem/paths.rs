//! What a host learns about its paths to a subsystem: the ANA group of the namespaces and the
//! state this server reports for it (Identify, ANA log page 0Ch), and the host portals of
//! every server that serves the subsystem (the discovery log page).
//!
//! Every namespace is in ANA group 1, on every server: in NVMe the group is a property of the
//! namespace, the same through every controller of the subsystem, and the *state* is what
//! each controller reports for it (Linux's nvmet and SPDK do the same: groups belong to
//! namespaces, states to ports). So each server is a path with its own ANA state, which is
//! what a host's multipath acts on. A standalone target reports Optimized, never changing. A
//! cluster storage server derives its view from the cluster map ([`from_map`]): its state
//! follows its map state, and discovery lists every `up` or `draining` server's host portal
//! with PORTID = the server's position in the map's server list plus one (the same order fixes
//! its CNTLID range, and the manager only appends servers, so the number never changes).

use std::net::SocketAddr;

use codec::nvme::log::ana_state;
use manager::map::{ClusterMap, ServerState};

/// The ANA group of every namespace (ANAGRPMAX and NANAGRPID are 1).
pub const ANA_GROUP: u32 = 1;

/// A host portal of a server that serves every host subsystem of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathPortal {
    /// Discovery log PORTID: the server's position in the map plus one (stable).
    pub portid: u16,
    pub addr: SocketAddr,
}

/// The path view a server reports; replaced whole on every map change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// ANAGRPID of every namespace ([`ANA_GROUP`]).
    pub ana_group: u32,
    /// The group's state as seen through this server (see [`ana_state`]).
    pub ana_state: u8,
    /// ANA log CHGCNT: starts at 1 and moves by one whenever the state changes.
    pub ana_chgcnt: u64,
    /// A cluster server's discovery PORTID (its position in the map plus one); 0 standalone.
    pub portid: u16,
    /// `None` on a standalone target (discovery lists its own host listeners); in a cluster,
    /// every server's host portal that hosts may use, in map order.
    pub portals: Option<Vec<PathPortal>>,
}

impl Default for Paths {
    fn default() -> Self {
        Self {
            ana_group: ANA_GROUP,
            ana_state: ana_state::OPTIMIZED,
            ana_chgcnt: 1,
            portid: 0,
            portals: None,
        }
    }
}

impl Paths {
    /// Whether this is a cluster server's view (discovery lists every server).
    pub fn is_cluster(&self) -> bool {
        self.portals.is_some()
    }

    /// ANAGRPMAX and NANAGRPID for Identify Controller.
    pub fn ana_groups_max(&self) -> u32 {
        ANA_GROUP
    }

    /// The discovery PORTID of this server's own host portals (`i`: the listener's index, used
    /// when standalone, where every listener is its own port).
    pub fn local_portid(&self, i: usize) -> u16 {
        if self.is_cluster() {
            self.portid
        } else {
            u16::try_from(i + 1).unwrap_or(u16::MAX)
        }
    }
}

/// The ANA state a server in `state` reports: Optimized while `up`; Inaccessible
/// while `draining` (hosts move their I/O to other paths before the server is taken out) and
/// while `down` (it serves nothing then).
pub fn ana_state_of(state: ServerState) -> u8 {
    match state {
        ServerState::Up => ana_state::OPTIMIZED,
        ServerState::Draining | ServerState::Down => ana_state::INACCESSIBLE,
    }
}

/// The name Linux shows for an ANA state (sysfs `ana_state`), for logs.
pub fn ana_state_name(state: u8) -> &'static str {
    match state {
        ana_state::OPTIMIZED => "optimized",
        ana_state::NON_OPTIMIZED => "non-optimized",
        ana_state::INACCESSIBLE => "inaccessible",
        ana_state::PERSISTENT_LOSS => "persistent-loss",
        ana_state::CHANGE => "change",
        _ => "invalid",
    }
}

/// What `me` reports under `map`: (its PORTID, its ANA state, host portals of the servers hosts
/// may use). `None` when the map does not name `me`.
pub fn from_map(map: &ClusterMap, me: &str) -> Option<(u16, u8, Vec<PathPortal>)> {
    let idx = map.servers.iter().position(|s| s.id == me)?;
    let number = |i: usize| u16::try_from(i + 1).unwrap_or(u16::MAX);
    let portals = map
        .servers
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s.state, ServerState::Up | ServerState::Draining))
        .map(|(i, s)| PathPortal {
            portid: number(i),
            addr: s.portal,
        })
        .collect();
    Some((number(idx), ana_state_of(map.servers[idx].state), portals))
}

/// What changed between two views.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathChange {
    /// The ANA state changed (CHGCNT moved): send ANA Change notices.
    pub ana: bool,
    /// The listed portals changed: GENCTR moves and discovery controllers are notified.
    pub portals: bool,
}

/// The view after `old` of the server with PORTID `portid`, in `state`, listing `portals`,
/// and what changed.
pub fn next(old: &Paths, portid: u16, state: u8, portals: Vec<PathPortal>) -> (Paths, PathChange) {
    let ana = old.ana_state != state;
    let change = PathChange {
        ana,
        portals: old.portals.as_ref() != Some(&portals),
    };
    let new = Paths {
        ana_group: ANA_GROUP,
        portid,
        ana_state: state,
        ana_chgcnt: if ana {
            old.ana_chgcnt.wrapping_add(1).max(1)
        } else {
            old.ana_chgcnt
        },
        portals: Some(portals),
    };
    (new, change)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn map(states: &[(&str, ServerState)]) -> ClusterMap {
        let servers = states
            .iter()
            .enumerate()
            .map(|(i, (id, state))| {
                let (cntlid_min, cntlid_max) = manager::map::cntlid_range(i).unwrap();
                manager::map::ServerEntry {
                    id: (*id).to_string(),
                    portal: SocketAddr::from(([127, 0, 0, 1], 4420 + u16::try_from(i).unwrap())),
                    internal: SocketAddr::from(([127, 0, 0, 1], 4430 + u16::try_from(i).unwrap())),
                    state: *state,
                    pool_bytes: 64 << 20,
                    cntlid_min,
                    cntlid_max,
                    rack: None,
                    pool: None,
                }
            })
            .collect();
        ClusterMap {
            generation: 1,
            servers,
            subsystems: Vec::new(),
            volumes: Vec::new(),
        }
    }

    #[test]
    fn each_server_reports_its_own_state_in_group_1_and_lists_serving_portals() {
        use ServerState::{Down, Draining, Up};
        let m = map(&[("s1", Up), ("s2", Draining), ("s3", Down), ("s4", Up)]);
        let (g, st, portals) = from_map(&m, "s2").unwrap();
        assert_eq!((g, st), (2, ana_state::INACCESSIBLE));
        let listed: Vec<(u16, u16)> = portals.iter().map(|p| (p.portid, p.addr.port())).collect();
        // s3 is down: not listed; PORTIDs are map positions, not list positions.
        assert_eq!(listed, [(1, 4420), (2, 4421), (4, 4423)]);
        assert_eq!(from_map(&m, "s1").unwrap().1, ana_state::OPTIMIZED);
        assert_eq!(from_map(&m, "s3").unwrap().1, ana_state::INACCESSIBLE);
        assert_eq!(from_map(&m, "s4").unwrap().0, 4);
        assert_eq!(Paths::default().ana_groups_max(), ANA_GROUP);
        assert!(from_map(&m, "s9").is_none());
    }

    #[test]
    fn change_count_moves_on_state_changes_only() {
        let p0 = Paths::default();
        assert_eq!(p0.ana_groups_max(), 1);
        let portals = vec![PathPortal {
            portid: 1,
            addr: "127.0.0.1:4420".parse().unwrap(),
        }];
        // Standalone → cluster server 1, up: group 1, Optimized.
        let (p1, c1) = next(&p0, 1, ana_state::OPTIMIZED, portals.clone());
        assert_eq!(
            c1,
            PathChange {
                ana: false,
                portals: true
            }
        );
        assert_eq!(p1.ana_chgcnt, 1);
        assert_eq!(
            (p1.ana_group, p1.ana_groups_max(), p1.local_portid(5)),
            (1, 1, 1)
        );
        // Same again: nothing changes.
        let (p2, c2) = next(&p1, 1, ana_state::OPTIMIZED, portals.clone());
        assert_eq!(c2, PathChange::default());
        assert_eq!(p2, p1);
        // Draining: the state and CHGCNT move, the portals do not.
        let (p3, c3) = next(&p2, 1, ana_state::INACCESSIBLE, portals.clone());
        assert_eq!(
            c3,
            PathChange {
                ana: true,
                portals: false
            }
        );
        assert_eq!(p3.ana_chgcnt, 2);
        // Up again.
        let (p4, _) = next(&p3, 1, ana_state::OPTIMIZED, portals);
        assert_eq!(p4.ana_chgcnt, 3);
        // A server leaves the list.
        let (_, c5) = next(&p4, 1, ana_state::OPTIMIZED, Vec::new());
        assert!(c5.portals && !c5.ana);
    }
}
