//! Subsystems and the target-wide registry: which NQNs exist, their namespaces, allowed hosts,
//! live controllers (CNTLID allocation) and the discovery generation counter.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::ctrl::Controller;
use crate::generation::GenerationState;
use crate::namespace::Namespace;

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

/// An NVM subsystem: NQN, identity strings, namespaces and allowed hosts.
pub struct Subsystem {
    pub nqn: String,
    pub serial: String,
    pub model: String,
    pub hosts: HostPolicy,
    pub namespaces: BTreeMap<u32, Arc<Namespace>>,
    ctrls: Mutex<CtrlTable>,
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
        namespaces: BTreeMap<u32, Arc<Namespace>>,
    ) -> Self {
        Self {
            nqn,
            serial,
            model,
            hosts,
            namespaces,
            ctrls: Mutex::new(CtrlTable {
                by_id: HashMap::new(),
                next: CNTLID_MIN,
                min: CNTLID_MIN,
                max: CNTLID_MAX,
            }),
        }
    }

    pub fn namespace(&self, nsid: u32) -> Option<&Arc<Namespace>> {
        self.namespaces.get(&nsid)
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

/// Everything a target serves.
pub struct Registry {
    pub subsystems: BTreeMap<String, Arc<Subsystem>>,
    /// Portals this target listens on (for the discovery log).
    listeners: Mutex<Vec<SocketAddr>>,
    /// Discovery log GENCTR: bumped whenever subsystems or portals change.
    genctr: AtomicU64,
    /// Discovery controllers (not part of any subsystem), for CNTLID allocation and AENs.
    pub discovery: Subsystem,
    /// The map generation this server checks stamped commands against.
    pub generation: GenerationState,
}

impl Registry {
    pub fn new(subsystems: Vec<Subsystem>, generation: u64) -> Self {
        let subsystems = subsystems
            .into_iter()
            .map(|s| (s.nqn.clone(), Arc::new(s)))
            .collect();
        Self {
            subsystems,
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
        }
    }

    pub fn subsystem(&self, nqn: &str) -> Option<&Arc<Subsystem>> {
        self.subsystems.get(nqn)
    }

    /// Records a portal we now listen on; the discovery log changes, so GENCTR moves and every
    /// discovery controller that asked for it gets a Discovery Log Page Change notice.
    pub fn add_listener(&self, addr: SocketAddr) {
        lock(&self.listeners).push(addr);
        self.genctr.fetch_add(1, Ordering::AcqRel);
        for c in self.discovery.controllers() {
            c.notify_discovery_change();
        }
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
        for s in self.subsystems.values() {
            v.extend(s.controllers());
        }
        v
    }
}
