//! Subsystems and the target-wide registry: which NQNs exist, their namespaces, allowed hosts,
//! live controllers (CNTLID allocation) and the discovery generation counter.

pub mod namespace;
pub mod volume;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;

use crate::cluster::generation::GenerationState;
use crate::controller::ctrl::Controller;
use crate::subsystem::namespace::Namespace;

/// The well-known discovery subsystem NQN (NVMe Base 2.0, section 7.9 / NVMe-oF 1.1 5.1).
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// Dynamic controller IDs are allocated from this range (NVMe-oF 1.1, section 3.3.1.1: FFFFh asks
/// for a dynamic CNTLID; FFF0h–FFFFh are reserved). A cluster gives each server a disjoint slice.
pub const CNTLID_MIN: u16 = 1;
pub const CNTLID_MAX: u16 = 0xFFEF;

/// Which hosts may connect.
#[derive(Debug, Clone)]
pub enum HostPolicy {
    Any,
    Only(Vec<String>),
}

impl HostPolicy {
    pub fn allows(&self, hostnqn: &str) -> bool {
        match self {
            HostPolicy::Any => true,
            HostPolicy::Only(list) => list.iter().any(|h| h == hostnqn),
        }
    }
}

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

    /// Allocates a free CNTLID and registers the controller `make` builds for it.
    /// `None` when every CNTLID in range is taken.
    pub fn add_controller(
        &self,
        make: impl FnOnce(u16) -> Arc<Controller>,
    ) -> Option<Arc<Controller>> {
        let mut t = lock(&self.ctrls);
        t.by_id.retain(|_, w| w.strong_count() > 0);
        let span = usize::from(t.max - t.min) + 1;
        for _ in 0..span {
            let id = t.next;
            t.next = if id >= t.max { t.min } else { id + 1 };
            if let std::collections::hash_map::Entry::Vacant(e) = t.by_id.entry(id) {
                let c = make(id);
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
}

/// Locks a mutex, recovering the data if a holder panicked: every table here stays consistent
/// between statements, so a poisoned lock carries no torn state.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Subsystems by NQN; replaced whole when the set changes.
pub type SubsystemMap = BTreeMap<String, Arc<Subsystem>>;

/// Everything a target serves.
pub struct Registry {
    subsystems: ArcSwap<SubsystemMap>,
    /// Portals this target listens on (for the discovery log).
    listeners: Mutex<Vec<SocketAddr>>,
    /// Discovery log GENCTR: bumped whenever subsystems or portals change.
    genctr: AtomicU64,
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
            genctr: AtomicU64::new(1),
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
        let mut m = SubsystemMap::clone(&self.subsystems.load());
        m.insert(s.nqn.clone(), s);
        self.subsystems.store(Arc::new(m));
        self.bump_genctr();
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

    pub fn listeners(&self) -> Vec<SocketAddr> {
        lock(&self.listeners).clone()
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
