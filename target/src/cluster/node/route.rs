//! Where a host's I/O goes (docs/cluster-protocol.md, "Routing host I/O"): a byte range of a
//! volume is split at extent boundaries into pieces, and each piece goes to its extent's
//! primary under this server's map (a read: to this server's own copy when it has one) — this
//! server's own pool, or a peer. Pure: the daemon's
//! `routed.rs` and the simulation both route with these. [`split`] allocates nothing (the
//! pieces are an iterator over the volume's geometry, taken when the command arrives).

use manager::map::{ClusterMap, Replica, ReplicaState, ServerEntry, ServerState, VolumeEntry};

/// One piece of a request: `len` bytes at byte `vol_off` of the volume, all in extent
/// `extent`, at `buf_off` in the request's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub extent: usize,
    pub vol_off: u64,
    pub len: u64,
    pub buf_off: usize,
}

/// Why a request cannot be split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitError {
    /// The map has no such volume (or it has no extents).
    Unmapped,
    /// The range ends past the volume's end (`capacity` bytes).
    OutOfRange { capacity: u64 },
}

/// The pieces of one request, in order (see [`split`]).
#[derive(Debug, Clone, Copy)]
pub struct Pieces {
    start: u64,
    at: u64,
    end: u64,
    extent_size: u64,
}

/// Splits bytes `[off, off + len)` of volume `volume` of `map` at its extent boundaries.
pub fn split(map: &ClusterMap, volume: &str, off: u64, len: u64) -> Result<Pieces, SplitError> {
    let vol = map.volume(volume).ok_or(SplitError::Unmapped)?;
    let end = off
        .checked_add(len)
        .filter(|e| *e <= vol.size_bytes)
        .ok_or(SplitError::OutOfRange {
            capacity: vol.size_bytes,
        })?;
    if vol.extent_size == 0 && len > 0 {
        return Err(SplitError::Unmapped);
    }
    Ok(Pieces {
        start: off,
        at: off,
        end,
        extent_size: vol.extent_size,
    })
}

impl Iterator for Pieces {
    type Item = Piece;

    fn next(&mut self) -> Option<Piece> {
        if self.at >= self.end {
            return None;
        }
        let extent = self.at / self.extent_size;
        let extent_end = extent
            .saturating_add(1)
            .saturating_mul(self.extent_size)
            .min(self.end);
        let p = Piece {
            extent: usize::try_from(extent).unwrap_or(usize::MAX),
            vol_off: self.at,
            len: extent_end - self.at,
            buf_off: usize::try_from(self.at - self.start).unwrap_or(usize::MAX),
        };
        self.at = extent_end;
        Some(p)
    }
}

/// Where one piece goes under a map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// This server owns the extent: the piece is at `pool_off` of its own pool.
    Local { pool_off: u64 },
    /// Server `server` owns it: forward the piece to its pool at `pool_off`.
    Remote {
        server: &'a ServerEntry,
        pool_off: u64,
    },
    /// The map has no owner for it (the volume or extent is gone, or its owner is not listed),
    /// or only one on a server it marks `down`: that server serves nothing (or is dead), so a
    /// piece sent there could only wait out its retries; the host gets a retryable path error
    /// at once instead.
    NoPath,
}

/// Where a write to piece `p` of volume `volume` goes under `map`, seen from server `me`: the
/// extent's primary (`ClusterMap::write_owner`: with one copy, its owner), which forwards it
/// to the other copies (docs/replication.md, "The write path"). No path when that copy is on
/// a peer the map marks `down` (`write_owner` already prefers an in-sync copy on a live
/// server; it falls back to `replicas[0]` only when there is none).
pub fn locate<'a>(map: &'a ClusterMap, volume: &str, p: &Piece, me: &str) -> Route<'a> {
    let Some(vol) = map.volume(volume) else {
        return Route::NoPath;
    };
    let owner = vol.extents.get(p.extent).and_then(|e| map.write_owner(e));
    at(map, vol, p, owner, me)
}

/// Where a read of piece `p` goes: this server's own `in_sync` copy when it has one, else
/// where a write goes ([`locate`]).
pub fn locate_read<'a>(map: &'a ClusterMap, volume: &str, p: &Piece, me: &str) -> Route<'a> {
    let Some(vol) = map.volume(volume) else {
        return Route::NoPath;
    };
    let mine = vol.extents.get(p.extent).and_then(|e| {
        e.replicas
            .iter()
            .find(|r| r.server == me && r.state == ReplicaState::InSync)
    });
    match mine {
        Some(r) => at(map, vol, p, Some(r), me),
        None => locate(map, volume, p, me),
    }
}

/// Whether piece `p` of volume `volume` lies in an extent the map marks `lost` (its data is
/// gone): a host read of it fails with Unrecovered Read Error instead of being routed
/// (docs/replication.md, "The last copy"). Writes are routed as usual.
pub fn lost(map: &ClusterMap, volume: &str, p: &Piece) -> bool {
    map.volume(volume)
        .and_then(|v| v.extents.get(p.extent))
        .is_some_and(|e| e.lost)
}

/// Piece `p` of `vol` on copy `copy`.
fn at<'a>(
    map: &'a ClusterMap,
    vol: &VolumeEntry,
    p: &Piece,
    copy: Option<&Replica>,
    me: &str,
) -> Route<'a> {
    let (Some(copy), Some((start, _))) = (copy, vol.extent_range(p.extent)) else {
        return Route::NoPath;
    };
    let Some(pool_off) = p
        .vol_off
        .checked_sub(start)
        .and_then(|d| copy.offset.checked_add(d))
    else {
        return Route::NoPath;
    };
    if copy.server == me {
        return Route::Local { pool_off };
    }
    // A peer marked `down` serves nothing (docs/cluster-protocol.md, "Fencing", rule 7), or
    // is dead or hung: a piece sent there would wait out the forwarding deadline for nothing.
    match map.server(&copy.server) {
        Some(server) if server.state != ServerState::Down => Route::Remote { server, pool_off },
        _ => Route::NoPath,
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{EXTENT, map, rep, server};
    use super::*;
    use manager::map::ExtentEntry;

    fn two_extents() -> ClusterMap {
        let e = |s: &str, off: u64| ExtentEntry {
            replicas: vec![rep(s, off)],
            moving: None,
            lost: false,
        };
        map(
            3,
            vec![server("s1", ServerState::Up), server("s2", ServerState::Up)],
            vec![e("s1", 8192), e("s2", 0)],
        )
    }

    #[test]
    fn a_range_is_split_at_extent_boundaries_and_each_piece_goes_to_its_owner() {
        let m = two_extents();
        let pieces: Vec<Piece> = split(&m, "vol1", 4000, 200).expect("in range").collect();
        assert_eq!(
            pieces,
            vec![
                Piece {
                    extent: 0,
                    vol_off: 4000,
                    len: 96,
                    buf_off: 0
                },
                Piece {
                    extent: 1,
                    vol_off: 4096,
                    len: 104,
                    buf_off: 96
                },
            ]
        );
        assert_eq!(
            locate(&m, "vol1", &pieces[0], "s1"),
            Route::Local { pool_off: 12192 }
        );
        let remote = match locate(&m, "vol1", &pieces[1], "s1") {
            Route::Remote { server, pool_off } => Some((server.id.as_str(), pool_off)),
            _ => None,
        };
        assert_eq!(remote, Some(("s2", 0)));
        assert_eq!(locate(&m, "vol9", &pieces[0], "s1"), Route::NoPath);
        assert_eq!(split(&m, "vol1", 0, 0).expect("empty").count(), 0);
        assert_eq!(split(&m, "vol1", 0, 2 * EXTENT).expect("all").count(), 2);
    }

    #[test]
    fn writes_go_to_the_primary_and_reads_to_a_local_in_sync_copy() {
        use manager::map::ReplicaState;
        let e = |copies: &[(&str, u64)]| ExtentEntry {
            replicas: copies.iter().map(|(s, o)| rep(s, *o)).collect(),
            moving: None,
            lost: false,
        };
        let servers = || {
            vec![
                server("s1", ServerState::Up),
                server("s2", ServerState::Up),
                server("s3", ServerState::Up),
            ]
        };
        let mut m = map(4, servers(), vec![e(&[("s1", 0), ("s2", 4096)])]);
        m.volumes[0].replicas = 2;
        let p = split(&m, "vol1", 512, 512)
            .expect("in range")
            .next()
            .expect("one");
        let on = |r: Route<'_>| match r {
            Route::Local { pool_off } => Some(("local".to_string(), pool_off)),
            Route::Remote { server, pool_off } => Some((server.id.clone(), pool_off)),
            Route::NoPath => None,
        };
        // A write goes to the primary from everywhere.
        for me in ["s2", "s3"] {
            assert_eq!(
                on(locate(&m, "vol1", &p, me)),
                Some(("s1".to_string(), 512))
            );
        }
        assert_eq!(
            on(locate(&m, "vol1", &p, "s1")),
            Some(("local".to_string(), 512))
        );
        // A read: the own copy when in sync, else the primary.
        assert_eq!(
            on(locate_read(&m, "vol1", &p, "s2")),
            Some(("local".to_string(), 4608))
        );
        assert_eq!(
            on(locate_read(&m, "vol1", &p, "s3")),
            Some(("s1".to_string(), 512))
        );
        m.volumes[0].extents[0].replicas[1].state = ReplicaState::Rebuilding;
        assert_eq!(
            on(locate_read(&m, "vol1", &p, "s2")),
            Some(("s1".to_string(), 512))
        );
        // The primary's server marked down: the next in-sync copy takes the writes.
        m.volumes[0].extents[0].replicas[1].state = ReplicaState::InSync;
        m.servers[0].state = ServerState::Down;
        assert_eq!(
            on(locate(&m, "vol1", &p, "s3")),
            Some(("s2".to_string(), 4608))
        );
        // No in-sync copy on a live server: `write_owner` falls back to replicas[0], on a
        // server marked down: no path (the host retries; nothing waits on a dead server).
        m.volumes[0].extents[0].replicas[1].state = ReplicaState::Stale;
        assert_eq!(on(locate(&m, "vol1", &p, "s3")), None);
        assert_eq!(on(locate_read(&m, "vol1", &p, "s3")), None);
        // ... and on a live one, there (it refuses what it may not run).
        m.servers[0].state = ServerState::Up;
        assert_eq!(
            on(locate(&m, "vol1", &p, "s3")),
            Some(("s1".to_string(), 512))
        );
    }

    /// An extent whose only owner is on a server the map marks `down`: no path for a write or
    /// a read from any other server (no forward to wait out); the local route of the owner
    /// itself is unchanged (a server marked down serves nothing anyway, before routing).
    #[test]
    fn an_owner_marked_down_gets_no_path_at_once() {
        let mut m = two_extents();
        m.servers[1].state = ServerState::Down;
        let p = split(&m, "vol1", EXTENT, 512)
            .expect("in range")
            .next()
            .expect("one");
        assert_eq!(p.extent, 1);
        assert_eq!(locate(&m, "vol1", &p, "s1"), Route::NoPath);
        assert_eq!(locate_read(&m, "vol1", &p, "s1"), Route::NoPath);
        assert_eq!(locate(&m, "vol1", &p, "s2"), Route::Local { pool_off: 0 });
        // The other extent, on a live server, is routed as before.
        let q = split(&m, "vol1", 0, 512)
            .expect("in range")
            .next()
            .expect("one");
        assert_eq!(
            locate(&m, "vol1", &q, "s1"),
            Route::Local { pool_off: 8192 }
        );
        let remote = |r: Route<'_>| match r {
            Route::Remote { server, pool_off } => Some((server.id.clone(), pool_off)),
            _ => None,
        };
        assert_eq!(
            remote(locate(&m, "vol1", &q, "s2")),
            Some(("s1".to_string(), 8192))
        );
        // Draining is not down: still routed.
        m.servers[1].state = ServerState::Draining;
        assert_eq!(
            remote(locate(&m, "vol1", &p, "s1")),
            Some(("s2".to_string(), 0))
        );
    }

    #[test]
    fn a_range_past_the_end_or_of_an_unknown_volume_is_not_split() {
        let m = two_extents();
        assert_eq!(
            split(&m, "vol1", EXTENT, EXTENT + 1).err(),
            Some(SplitError::OutOfRange {
                capacity: 2 * EXTENT
            })
        );
        assert_eq!(
            split(&m, "vol1", u64::MAX, 2).err(),
            Some(SplitError::OutOfRange {
                capacity: 2 * EXTENT
            })
        );
        assert_eq!(split(&m, "nope", 0, 1).err(), Some(SplitError::Unmapped));
    }
}
