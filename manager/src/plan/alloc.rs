//! Pool space and placement: free ranges per server, first-fit allocation, and the round-robin
//! stripe of new extents over failure domains.
//!
//! **Failure domains.** A server's domain is its `rack` or, when it has none, the server itself.
//! The copies of an extent always go to distinct servers and, when the `up` servers with room
//! span at least `replicas` domains, to distinct domains; otherwise to as many domains as there
//! are, and [`shared_domains`] names the volume so the manager can warn. In a cluster without
//! racks every server is its own domain, and placement is exactly the plain round-robin.

use std::collections::BTreeMap;
use std::fmt;

use crate::map::{ClusterMap, Replica, ServerEntry, ServerState};

/// A pool range that is free in the map being changed but must not be allocated: the old
/// owner's range of a switch not yet through phase 1a, which a cancellation gives back
/// (`plan::held_ranges`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Server id.
    pub server: String,
    /// Byte offset in its pool.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Free ranges `(start, len)` of every server's pool, sorted by start.
pub(super) struct Pools {
    free: BTreeMap<String, Vec<(u64, u64)>>,
}

impl Pools {
    /// The free ranges of `map`, whose reserved ranges do not overlap (a validated map), less
    /// the `held` ones.
    pub(super) fn of(map: &ClusterMap, held: &[Held]) -> Self {
        let mut used: BTreeMap<&str, Vec<(u64, u64)>> = map
            .pool_ranges()
            .into_iter()
            .map(|(id, r)| (id, r.into_iter().map(|(off, len, _)| (off, len)).collect()))
            .collect();
        for h in held {
            let ranges = used.entry(h.server.as_str()).or_default();
            ranges.push((h.offset, h.len));
            ranges.sort_unstable();
        }
        let mut free = BTreeMap::new();
        for s in &map.servers {
            let mut gaps = Vec::new();
            let mut cursor = 0u64;
            for &(off, len) in used.get(s.id.as_str()).map_or(&[][..], Vec::as_slice) {
                if off > cursor {
                    gaps.push((cursor, off - cursor));
                }
                cursor = cursor.max(off.saturating_add(len));
            }
            if s.pool_bytes > cursor {
                gaps.push((cursor, s.pool_bytes - cursor));
            }
            free.insert(s.id.clone(), gaps);
        }
        Self { free }
    }

    /// Free bytes of `server`.
    pub(super) fn free_bytes(&self, server: &str) -> u64 {
        self.free
            .get(server)
            .map_or(0, |g| g.iter().map(|&(_, len)| len).sum())
    }

    /// Whether `len` bytes fit in one free range of `server`.
    pub(super) fn fits(&self, server: &str, len: u64) -> bool {
        self.free
            .get(server)
            .is_some_and(|g| g.iter().any(|&(_, l)| l >= len))
    }

    /// Reserves `len` bytes on `server` at the lowest offset that fits (first fit).
    pub(super) fn alloc(&mut self, server: &str, len: u64) -> Option<u64> {
        let gaps = self.free.get_mut(server)?;
        let k = gaps.iter().position(|&(_, l)| l >= len)?;
        let gap = gaps.get_mut(k)?;
        let offset = gap.0;
        if gap.1 == len {
            gaps.remove(k);
        } else {
            *gap = (gap.0 + len, gap.1 - len);
        }
        Some(offset)
    }
}

/// A server's failure domain: its rack, or the server itself when it has no rack (so a rack
/// and a server that share a name are still different domains).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Domain<'a> {
    /// `rack: NAME`.
    Rack(&'a str),
    /// No rack: the server (by id) is a domain of its own.
    Server(&'a str),
}

impl<'a> Domain<'a> {
    pub(crate) fn of(s: &'a ServerEntry) -> Self {
        match &s.rack {
            Some(r) => Self::Rack(r),
            None => Self::Server(&s.id),
        }
    }
}

/// The `up` servers (where new extents may go) in stripe order: declaration order, interleaved
/// by domain (the first server of each domain in order of first appearance, then the second of
/// each, ...), so that walking the stripe meets a new domain at each step for as long as there
/// is one. Without racks (or with racks already declared interleaved) this is declaration order.
pub(super) struct Up {
    /// Server ids in stripe order.
    ids: Vec<String>,
    /// Index of each server's domain (same order as `ids`).
    domains: Vec<usize>,
}

impl Up {
    /// Number of `up` servers.
    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }

    /// The server ids in stripe order.
    pub(super) fn iter(&self) -> std::slice::Iter<'_, String> {
        self.ids.iter()
    }

    /// Distinct domains among the `up` servers.
    pub(super) fn domain_count(&self) -> usize {
        self.domains.iter().max().map_or(0, |d| d + 1)
    }
}

/// The `up` servers of `map`, in stripe order ([`Up`]).
pub(super) fn up_servers(map: &ClusterMap) -> Up {
    // Domains in order of first appearance, each with its up servers in declaration order.
    let mut groups: Vec<(Domain<'_>, Vec<&str>)> = Vec::new();
    for s in map.servers.iter().filter(|s| s.state == ServerState::Up) {
        let d = Domain::of(s);
        match groups.iter_mut().find(|(g, _)| *g == d) {
            Some((_, ids)) => ids.push(&s.id),
            None => groups.push((d, vec![&s.id])),
        }
    }
    let mut up = Up {
        ids: Vec::new(),
        domains: Vec::new(),
    };
    let depth = groups.iter().map(|(_, ids)| ids.len()).max().unwrap_or(0);
    for round in 0..depth {
        for (d, (_, ids)) in groups.iter().enumerate() {
            if let Some(id) = ids.get(round) {
                up.ids.push((*id).to_owned());
                up.domains.push(d);
            }
        }
    }
    up
}

/// Index in `up` of the server with the most free pool space (the first of equals): where a new
/// volume's stripe starts, so several volumes do not all start on the first server.
pub(super) fn stripe_start(pools: &Pools, up: &Up) -> usize {
    let mut best = 0;
    let mut best_free = 0;
    for (k, id) in up.iter().enumerate() {
        let free = pools.free_bytes(id);
        if k == 0 || free > best_free {
            best = k;
            best_free = free;
        }
    }
    best
}

/// Places one extent: `replicas` distinct servers, walking `up` round-robin from position
/// `start + index` and skipping servers whose pool has no room. A first walk takes only servers
/// of domains not taken yet; if that leaves copies unplaced (fewer domains with room than
/// copies), a second walk takes the servers left, in the same order. `None`: not enough room.
pub(super) fn place_extent(
    pools: &mut Pools,
    up: &Up,
    start: usize,
    index: usize,
    replicas: u32,
    extent_size: u64,
) -> Option<Vec<Replica>> {
    let n = up.len();
    if n == 0 {
        return None;
    }
    let want = usize::try_from(replicas).ok()?;
    let mut out = Vec::with_capacity(want);
    // Positions in `up` taken for this extent (at most REPLICAS_MAX).
    let mut taken: Vec<usize> = Vec::with_capacity(want);
    for new_domains_only in [true, false] {
        for k in 0..n {
            if out.len() == want {
                break;
            }
            let pos = start.wrapping_add(index).wrapping_add(k) % n;
            let id = up.ids.get(pos)?;
            let domain = up.domains.get(pos)?;
            if taken.contains(&pos) {
                continue;
            }
            if new_domains_only
                && taken
                    .iter()
                    .any(|&t| up.domains.get(t).is_some_and(|d| d == domain))
            {
                continue;
            }
            if let Some(offset) = pools.alloc(id, extent_size) {
                out.push(Replica::new(id.clone(), offset));
                taken.push(pos);
            }
        }
    }
    (out.len() == want).then_some(out)
}

/// A volume with extents two of whose copies are in one rack (copies are always on distinct
/// servers, so a domain shared is a rack shared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedDomains {
    /// Volume name.
    pub volume: String,
    /// Copies per extent.
    pub replicas: u32,
    /// Extents with two copies in one domain.
    pub extents: usize,
    /// Extents of the volume.
    pub of: usize,
    /// Distinct domains among the `up` servers.
    pub domains_up: usize,
}

impl fmt::Display for SharedDomains {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "volume {}: {} of {} extents have copies sharing a failure domain (replicas {}, \
             the up servers span {} domain{}: a server's domain is its rack, or the server \
             itself when it has none); one rack failure can take out more than one copy of them",
            self.volume,
            self.extents,
            self.of,
            self.replicas,
            self.domains_up,
            if self.domains_up == 1 { "" } else { "s" },
        )
    }
}

/// Every volume of `map` with extents whose copies share a failure domain, in map order. Empty
/// for a map without racks (copies are on distinct servers, and each server is its own domain).
#[must_use]
pub fn shared_domains(map: &ClusterMap) -> Vec<SharedDomains> {
    // A map validates only with the copies of each extent on distinct servers, so without racks
    // no domain is shared: skip the walk over every extent (this runs on every change).
    if map.servers.iter().all(|s| s.rack.is_none()) {
        return Vec::new();
    }
    let domains_up = up_servers(map).domain_count();
    let by_id: BTreeMap<&str, Domain<'_>> = map
        .servers
        .iter()
        .map(|s| (s.id.as_str(), Domain::of(s)))
        .collect();
    let domain = |id: &str| by_id.get(id).copied();
    let mut out = Vec::new();
    for v in map.volumes.iter().filter(|v| v.replicas > 1) {
        let extents = v
            .extents
            .iter()
            .filter(|e| {
                let ds: Vec<Option<Domain<'_>>> =
                    e.replicas.iter().map(|r| domain(&r.server)).collect();
                ds.iter()
                    .enumerate()
                    .any(|(k, d)| d.is_some() && ds.iter().take(k).any(|e| e == d))
            })
            .count();
        if extents > 0 {
            out.push(SharedDomains {
                volume: v.name.clone(),
                replicas: v.replicas,
                extents,
                of: v.extents.len(),
                domains_up,
            });
        }
    }
    out
}

/// The entries of [`shared_domains`] of `after` that are new since `before`: volumes that did
/// not share a domain before, or now have more extents that do. What the manager warns about
/// when a change is made.
#[must_use]
pub fn new_shared_domains(before: &ClusterMap, after: &ClusterMap) -> Vec<SharedDomains> {
    let old = shared_domains(before);
    shared_domains(after)
        .into_iter()
        .filter(|w| {
            old.iter()
                .find(|o| o.volume == w.volume)
                .is_none_or(|o| w.extents > o.extents)
        })
        .collect()
}

#[cfg(test)]
#[path = "alloc_tests.rs"]
mod tests;
