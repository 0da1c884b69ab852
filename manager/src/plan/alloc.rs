//! Pool space and placement: free ranges per server, first-fit allocation, and the round-robin
//! stripe of new extents.

use std::collections::BTreeMap;

use crate::map::{ClusterMap, Replica, ServerState};

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

/// Ids of the `up` servers, in declaration order: where new extents may go.
pub(super) fn up_servers(map: &ClusterMap) -> Vec<String> {
    map.servers
        .iter()
        .filter(|s| s.state == ServerState::Up)
        .map(|s| s.id.clone())
        .collect()
}

/// Index in `up` of the server with the most free pool space (the first of equals): where a new
/// volume's stripe starts, so several volumes do not all start on the first server.
pub(super) fn stripe_start(pools: &Pools, up: &[String]) -> usize {
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
/// `start + index` and skipping servers whose pool has no room. `None`: not enough room.
pub(super) fn place_extent(
    pools: &mut Pools,
    up: &[String],
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
    for k in 0..n {
        if out.len() == want {
            break;
        }
        let pos = start.wrapping_add(index).wrapping_add(k) % n;
        let id = up.get(pos)?;
        if let Some(offset) = pools.alloc(id, extent_size) {
            out.push(Replica::new(id.clone(), offset));
        }
    }
    (out.len() == want).then_some(out)
}
