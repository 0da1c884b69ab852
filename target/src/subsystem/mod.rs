//! Subsystems and the target-wide registry: which NQNs exist, their namespaces, allowed hosts,
//! live controllers (CNTLID allocation) and the discovery generation counter.

pub mod namespace;
pub mod paths;
pub mod volume;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;

use crate::cluster::generation::GenerationState;
pub use crate::controller::auth::{AuthPolicy, HostKeys};
use crate::controller::ctrl::{Controller, aec, aen};
use crate::subsystem::namespace::Namespace;
use crate::subsystem::paths::{PathChange, PathPortal, Paths};

/// The well-known discovery subsystem NQN (defined once, in the codec).
pub use codec::nvme::fabrics::DISCOVERY_NQN;

/// Dynamic controller IDs are allocated from this range (NVMe-oF 1.1, section 3.3.1.1: FFFFh asks
/// for a dynamic CNTLID; FFF0h–FFFFh are reserved). A cluster gives each server a disjoint slice.
pub const CNTLID_MIN: u16 = 1;
pub const CNTLID_MAX: u16 = codec::nvme::fabrics::CNTLID_MAX;

/// Which hosts may connect (the YAML's type, shared with the cluster map).
pub use yaml::HostPolicy;

/// Namespaces of a subsystem by NSID; replaced whole when the set changes (cluster map).
pub type NamespaceMap = BTreeMap<u32, Arc<Namespace>>;

/// An NVM subsystem: NQN, identity strings, namespaces and allowed hosts.
pub struct Subsystem {
    pub nqn: String,
    pub serial: String,
    pub model: String,
    hosts: Mutex<HostPolicy>,
    /// Read on every I/O command without a lock (one atomic load); written on map changes.
    namespaces: ArcSwap<NamespaceMap>,
    ctrls: Mutex<CtrlTable>,
    /// A server-to-server subsystem: every I/O command on it must carry a generation stamp.
    pub internal: bool,
    /// Removed from the registry (live reconfiguration): no controller may join it any more,
    /// not even one whose Connect found it just before it went.
    retired: std::sync::atomic::AtomicBool,
    /// In-band authentication (DH-HMAC-CHAP): the secrets held per host.
    auth: Mutex<Arc<AuthPolicy>>,
}

/// Live controllers of one subsystem, by CNTLID.
struct CtrlTable {
    by_id: HashMap<u16, Weak<Controller>>,
    next: u16,
    min: u16,
    max: u16,
}

impl Subsystem {
    pub fn new(
        nqn: String,
        serial: String,
        model: String,
        hosts: HostPolicy,
        namespaces: NamespaceMap,
    ) -> Self {
        Self::with_cntlid_range(
            nqn, serial, model, hosts, namespaces, CNTLID_MIN, CNTLID_MAX,
        )
    }

    /// A subsystem whose controllers get CNTLIDs in `[min, max]` (a cluster gives every server
    /// a disjoint range so that multipath hosts see distinct controllers).
    pub fn with_cntlid_range(
        nqn: String,
        serial: String,
        model: String,
        hosts: HostPolicy,
        namespaces: NamespaceMap,
        min: u16,
        max: u16,
    ) -> Self {
        debug_assert!(
            min >= CNTLID_MIN && min <= max && max <= CNTLID_MAX,
            "CNTLID range"
        );
        Self {
            nqn,
            serial,
            model,
            hosts: Mutex::new(hosts),
            namespaces: ArcSwap::from_pointee(namespaces),
            ctrls: Mutex::new(CtrlTable {
                by_id: HashMap::new(),
                next: min,
                min,
                max,
            }),
            internal: false,
            retired: std::sync::atomic::AtomicBool::new(false),
            auth: Mutex::new(Arc::new(AuthPolicy::default())),
        }
    }

    /// Marks this subsystem as internal (stamps required).
    #[must_use]
    pub fn into_internal(mut self) -> Self {
        self.internal = true;
        self
    }

    pub fn namespace(&self, nsid: u32) -> Option<Arc<Namespace>> {
        self.namespaces.load().get(&nsid).cloned()
    }

    /// A snapshot of the namespaces.
    pub fn namespaces(&self) -> Arc<NamespaceMap> {
        self.namespaces.load_full()
    }

    /// Replaces the namespace set; returns the NSIDs whose attributes changed (added, removed,
    /// resized) so that controllers can be told (Namespace Attribute Changed).
    pub fn set_namespaces(&self, new: NamespaceMap) -> Vec<u32> {
        let old = self.namespaces.swap(Arc::new(new));
        let new = self.namespaces.load();
        let mut changed: Vec<u32> = Vec::new();
        for (id, ns) in new.iter() {
            match old.get(id) {
                Some(o) if o.nlbas == ns.nlbas && o.block_size == ns.block_size => {}
                _ => changed.push(*id),
            }
        }
        for id in old.keys() {
            if !new.contains_key(id) {
                changed.push(*id);
            }
        }
        changed.sort_unstable();
        changed
    }

    pub fn hosts_allow(&self, hostnqn: &str) -> bool {
        lock(&self.hosts).allows(hostnqn)
    }

    /// Whether any host may connect (no allow-list applies).
    pub fn allows_any_host(&self) -> bool {
        matches!(*lock(&self.hosts), HostPolicy::Any)
    }

    pub fn set_hosts(&self, hosts: HostPolicy) {
        *lock(&self.hosts) = hosts;
    }

    /// Replaces the authentication policy (queues connected before keep their transaction).
    pub fn set_auth(&self, auth: AuthPolicy) {
        *lock(&self.auth) = Arc::new(auth);
    }

    /// The authentication policy in force.
    pub fn auth_policy(&self) -> Arc<AuthPolicy> {
        Arc::clone(&lock(&self.auth))
    }

    /// Allocates a free CNTLID and registers the controller `make` builds for it.
    /// `None` when every CNTLID in range is taken, and when a reload retired the subsystem or
    /// stopped allowing the controller's host while its Connect was under way (the check runs
    /// under the table's lock, so a controller is either refused here or registered in time
    /// for the reload to tear it down).
    pub fn add_controller(
        &self,
        make: impl FnOnce(u16) -> Arc<Controller>,
    ) -> Option<Arc<Controller>> {
        let mut t = lock(&self.ctrls);
        t.by_id.retain(|_, w| w.strong_count() > 0);
        if self.retired.load(Ordering::Acquire) {
            return None;
        }
        let span = usize::from(t.max - t.min) + 1;
        for _ in 0..span {
            let id = t.next;
            t.next = if id >= t.max { t.min } else { id + 1 };
            if let std::collections::hash_map::Entry::Vacant(e) = t.by_id.entry(id) {
                let c = make(id);
                if !self.hosts_allow(&c.hostnqn) {
                    return None;
                }
                e.insert(Arc::downgrade(&c));
                return Some(c);
            }
        }
        None
    }

    pub fn controller(&self, cntlid: u16) -> Option<Arc<Controller>> {
        lock(&self.ctrls).by_id.get(&cntlid).and_then(Weak::upgrade)
    }

    /// Frees `cntlid` (the controller was torn down).
    pub fn remove_controller(&self, cntlid: u16) {
        lock(&self.ctrls).by_id.remove(&cntlid);
    }

    pub fn controllers(&self) -> Vec<Arc<Controller>> {
        lock(&self.ctrls)
            .by_id
            .values()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// The allowed hosts in force.
    pub fn host_policy(&self) -> HostPolicy {
        lock(&self.hosts).clone()
    }

    /// Tears down every controller whose host the policy no longer allows (its connections
    /// close); returns their CNTLIDs. Live reconfiguration calls it after [`Self::set_hosts`].
    pub fn drop_disallowed_hosts(&self, why: &str) -> Vec<u16> {
        let mut gone = Vec::new();
        for c in self.controllers() {
            if !self.hosts_allow(&c.hostnqn) {
                c.teardown(why);
                gone.push(c.cntlid);
            }
        }
        gone.sort_unstable();
        gone
    }

    /// Retires the subsystem (it was removed from the registry: no controller joins it from
    /// now on) and tears down every controller it has.
    pub fn drop_all_controllers(&self, why: &str) -> usize {
        self.retired.store(true, Ordering::Release);
        let all = self.controllers();
        for c in &all {
            c.teardown(why);
        }
        all.len()
    }
}

/// Locks a mutex, recovering the data if a holder panicked: every table here stays consistent
/// between statements, so a poisoned lock carries no torn state.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether a listener bound at `portal` accepts connections to `local`.
fn portal_accepts(portal: SocketAddr, local: SocketAddr) -> bool {
    portal.port() == local.port() && (portal.ip() == local.ip() || portal.ip().is_unspecified())
}

/// Whether two portal addresses name the same listener.
fn same_portal(a: SocketAddr, b: SocketAddr) -> bool {
    a == b
}

/// Subsystems by NQN; replaced whole when the set changes.
pub type SubsystemMap = BTreeMap<String, Arc<Subsystem>>;

/// Everything a target serves.
pub struct Registry {
    subsystems: ArcSwap<SubsystemMap>,
    /// Portals this target listens on (for the discovery log).
    listeners: Mutex<Vec<SocketAddr>>,
    /// Portals reserved for server-to-server traffic (a cluster's internal portal): they serve
    /// internal subsystems only, host portals never serve those, and discovery lists host
    /// portals only. Empty (standalone): every portal serves every subsystem.
    internal_portals: Mutex<Vec<SocketAddr>>,
    /// Discovery log GENCTR: bumped whenever subsystems or portals change.
    genctr: AtomicU64,
    /// This server's ANA group and state, and (in a cluster) every server's host portal.
    paths: Mutex<Arc<Paths>>,
    /// Whether this server's paths are ANA Inaccessible (a cluster server `draining` or
    /// `down`): host I/O then fails with Asymmetric Access Inaccessible. Read without a lock on
    /// every I/O command.
    ana_inaccessible: std::sync::atomic::AtomicBool,
    /// Discovery controllers (not part of any subsystem), for CNTLID allocation and AENs.
    pub discovery: Subsystem,
    /// The map generation this server checks stamped commands against.
    pub generation: GenerationState,
    /// Cluster nodes: the install gate every NVM I/O command passes (none when standalone).
    pub gate: Option<Arc<crate::cluster::gate::Gate>>,
    /// The transport limits in force (Identify advertises them); set when the target starts.
    transport: std::sync::OnceLock<crate::transport::TransportConfig>,
    /// Cluster nodes: who may touch which range of the pool on internal connections.
    pub admission: std::sync::OnceLock<Arc<crate::cluster::Admission>>,
}

impl Registry {
    pub fn new(subsystems: Vec<Subsystem>, generation: u64) -> Self {
        let subsystems = subsystems
            .into_iter()
            .map(|s| (s.nqn.clone(), Arc::new(s)))
            .collect();
        Self {
            subsystems: ArcSwap::from_pointee(subsystems),
            listeners: Mutex::new(Vec::new()),
            internal_portals: Mutex::new(Vec::new()),
            genctr: AtomicU64::new(1),
            paths: Mutex::new(Arc::new(Paths::default())),
            ana_inaccessible: std::sync::atomic::AtomicBool::new(false),
            discovery: Subsystem::new(
                DISCOVERY_NQN.to_string(),
                String::new(),
                String::new(),
                HostPolicy::Any,
                BTreeMap::new(),
            ),
            generation: GenerationState::new(generation),
            gate: None,
            transport: std::sync::OnceLock::new(),
            admission: std::sync::OnceLock::new(),
        }
    }

    /// A cluster node's registry: generation from the map, an install gate on the I/O path.
    pub fn new_cluster(subsystems: Vec<Subsystem>, generation: u64) -> Self {
        let mut r = Self::new(subsystems, generation);
        r.gate = Some(Arc::new(crate::cluster::gate::Gate::default()));
        r
    }

    /// Records the transport limits the target serves with (first call wins).
    pub fn set_transport(&self, cfg: crate::transport::TransportConfig) {
        let _ = self.transport.set(cfg);
    }

    /// The transport limits in force.
    pub fn transport(&self) -> crate::transport::TransportConfig {
        self.transport.get().copied().unwrap_or_default()
    }

    pub fn subsystem(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        self.subsystems.load().get(nqn).cloned()
    }

    /// A snapshot of the subsystems.
    pub fn subsystems(&self) -> Arc<SubsystemMap> {
        self.subsystems.load_full()
    }

    /// Adds a subsystem (cluster map change); the discovery log changes.
    pub fn add_subsystem(&self, s: Arc<Subsystem>) {
        self.insert_subsystem(s);
        self.bump_genctr();
    }

    /// Adds (or replaces) a subsystem without moving GENCTR: for a batch of changes after
    /// which the caller calls [`Self::bump_genctr`] once (live reconfiguration).
    pub fn insert_subsystem(&self, s: Arc<Subsystem>) {
        self.subsystems.rcu(|m| {
            let mut m = SubsystemMap::clone(m);
            m.insert(s.nqn.clone(), Arc::clone(&s));
            m
        });
    }

    /// Removes a subsystem without moving GENCTR (see [`Self::insert_subsystem`]). New
    /// Connects to it fail at once; the caller tears down its controllers.
    pub fn remove_subsystem(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        let mut gone = None;
        self.subsystems.rcu(|m| {
            let mut m = SubsystemMap::clone(m);
            gone = m.remove(nqn);
            m
        });
        gone
    }

    /// The discovery log changed: GENCTR moves and discovery controllers are notified.
    pub fn bump_genctr(&self) {
        self.genctr.fetch_add(1, Ordering::AcqRel);
        for c in self.discovery.controllers() {
            c.notify_discovery_change();
        }
    }

    /// Records a portal we now listen on; the discovery log changes, so GENCTR moves and every
    /// discovery controller that asked for it gets a Discovery Log Page Change notice.
    pub fn add_listener(&self, addr: SocketAddr) {
        lock(&self.listeners).push(addr);
        self.bump_genctr();
    }

    /// Records a portal without moving GENCTR (see [`Self::insert_subsystem`]).
    pub fn insert_listener(&self, addr: SocketAddr) {
        let mut l = lock(&self.listeners);
        if !l.contains(&addr) {
            l.push(addr);
        }
    }

    /// Forgets a portal (the discovery log no longer lists it) without moving GENCTR.
    pub fn remove_listener(&self, addr: SocketAddr) -> bool {
        let mut l = lock(&self.listeners);
        let before = l.len();
        l.retain(|a| *a != addr);
        l.len() != before
    }

    pub fn listeners(&self) -> Vec<SocketAddr> {
        lock(&self.listeners).clone()
    }

    /// Reserves the portal `addr` (listened on, or about to be) for server-to-server
    /// connections: from now on internal subsystems are reachable only there, host
    /// subsystems only elsewhere, and discovery no longer lists it.
    pub fn add_internal_portal(&self, addr: SocketAddr) {
        lock(&self.internal_portals).push(addr);
        self.bump_genctr();
    }

    /// The portals reserved for server-to-server connections.
    pub fn internal_portals(&self) -> Vec<SocketAddr> {
        lock(&self.internal_portals).clone()
    }

    /// The portals hosts use: every listener that is not an internal portal.
    pub fn host_listeners(&self) -> Vec<SocketAddr> {
        let internal = self.internal_portals();
        self.listeners()
            .into_iter()
            .filter(|l| !internal.iter().any(|p| same_portal(*p, *l)))
            .collect()
    }

    /// Whether a connection accepted at `local` (its socket's local address; `None` when
    /// unknown) may reach `subsys`. With no internal portal every portal serves everything;
    /// otherwise internal subsystems only on internal portals, host subsystems only on the
    /// others.
    pub fn serves_on(&self, subsys: &Subsystem, local: Option<SocketAddr>) -> bool {
        let internal = self.internal_portals();
        if internal.is_empty() {
            return true;
        }
        let on_internal = local.is_some_and(|local| {
            // The listener that accepted it: an exact address first (the kernel prefers the
            // most specific bind), else a wildcard one on the same port.
            let mut all = self.listeners();
            all.extend(internal.iter().copied());
            let portal = all
                .iter()
                .find(|p| **p == local)
                .or_else(|| all.iter().find(|p| portal_accepts(**p, local)));
            portal.is_some_and(|p| internal.iter().any(|i| same_portal(*i, *p)))
        });
        subsys.internal == on_internal
    }

    /// The path view in force (ANA group and state, cluster portals).
    /// Whether host I/O through this server must fail with Asymmetric Access Inaccessible.
    pub fn ana_inaccessible(&self) -> bool {
        self.ana_inaccessible.load(Ordering::Acquire)
    }

    pub fn paths(&self) -> Arc<Paths> {
        Arc::clone(&lock(&self.paths))
    }

    /// A cluster map was installed: this server (discovery PORTID `portid`) reports `state`
    /// for its namespaces' ANA group, and discovery lists `portals`. When the state changed, CHGCNT
    /// moves and every host controller that enabled them gets an ANA Change notice; when the
    /// portals changed, GENCTR moves and discovery controllers are notified.
    pub fn set_cluster_paths(
        &self,
        portid: u16,
        state: u8,
        portals: Vec<PathPortal>,
    ) -> PathChange {
        let change = {
            let mut cur = lock(&self.paths);
            let (new, change) = paths::next(&cur, portid, state, portals);
            *cur = Arc::new(new);
            self.ana_inaccessible.store(
                state == codec::nvme::log::ana_state::INACCESSIBLE,
                Ordering::Release,
            );
            change
        };
        if change.ana {
            tracing::info!(
                portid,
                state = paths::ana_state_name(state),
                "ANA state changed"
            );
            for s in self.subsystems.load().values().filter(|s| !s.internal) {
                for c in s.controllers() {
                    c.post_event(aen::ANA_CHANGE, aec::ANA_CHANGE);
                }
            }
        }
        if change.portals {
            self.bump_genctr();
        }
        change
    }

    pub fn genctr(&self) -> u64 {
        self.genctr.load(Ordering::Acquire)
    }

    /// Every live controller of every subsystem (and discovery).
    pub fn all_controllers(&self) -> Vec<Arc<Controller>> {
        let mut v = self.discovery.controllers();
        for s in self.subsystems.load().values() {
            v.extend(s.controllers());
        }
        v
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::controller::ctrl::CtrlKind;

    #[test]
    fn removed_hosts_and_retired_subsystems_lose_their_controllers_and_get_no_new_ones() {
        let reg = Arc::new(Registry::new(Vec::new(), 1));
        let s = Subsystem::new(
            "nqn.2026-11.dev.tessera:s".into(),
            "S".into(),
            "M".into(),
            HostPolicy::Only(vec!["h1".into(), "h2".into()]),
            BTreeMap::new(),
        );
        let make = |host: &str| {
            let (reg, host) = (Arc::clone(&reg), host.to_string());
            move |id| {
                Arc::new(Controller::new(
                    id,
                    CtrlKind::Io,
                    None,
                    reg,
                    host,
                    [0; 16],
                    0,
                    false,
                ))
            }
        };
        let c1 = s.add_controller(make("h1")).unwrap();
        let c2 = s.add_controller(make("h2")).unwrap();
        assert!(s.add_controller(make("h3")).is_none(), "a host not allowed");
        s.set_hosts(HostPolicy::Only(vec!["h1".into()]));
        assert_eq!(s.drop_disallowed_hosts("test"), [c2.cntlid]);
        assert!(c2.is_dead() && !c1.is_dead());
        // (A real controller frees its CNTLID in teardown; this one has no subsystem link.)
        drop(c2);
        assert!(s.add_controller(make("h2")).is_none(), "a removed host");
        assert_eq!(s.drop_all_controllers("test"), 1);
        assert!(c1.is_dead());
        assert!(
            s.add_controller(make("h1")).is_none(),
            "a retired subsystem"
        );
    }
}
