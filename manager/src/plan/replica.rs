//! A copy taken out of the write set (docs/replication.md, "Failure"): the primary of an
//! extent reports that its write to a copy failed, and the next map marks that copy `stale`.
//! The copy keeps its pool range (a rebuild writes into it in place). A server whose copies
//! are stale is back (`up`, and acking): they become `rebuilding` ([`rebuild_start`]), and once
//! the primary has copied what they missed, `in_sync` again ([`rebuild_done`];
//! docs/replication.md, "Rebuild").

use super::{PlanError, extent_mut, step};
use crate::api::{CopiesDivergedRequest, RebuildDoneRequest, ReplicaFailedRequest};
use crate::map::{ClusterMap, PoolId, Replica, ReplicaState, ServerState};

/// `POST /v1/replica-failed`: the map with `req.server`'s copy of the extent `stale`; with
/// `server_gone` (that server is not connected to the manager), every copy on that server
/// that is not its extent's primary too, in the same generation.
///
/// Accepted only from the extent's primary in `map` (the copy that orders its writes), about
/// another copy. A copy already `stale` leaves the map unchanged, generation included (a
/// repeated or late report publishes nothing), as does a `rebuilding` copy whose server is
/// still connected (its misses are in the primary's dirty map; marking it stale would only
/// have it marked rebuilding again at its next ack). A primary never goes stale this way, so a
/// report never leaves an extent without an `in_sync` copy.
///
/// # Errors
/// Unknown volume or extent, a server holding no copy of it, a sender that is not its primary
/// (or reports itself), a generation newer than the map's.
pub fn replica_failed(
    map: &ClusterMap,
    req: &ReplicaFailedRequest,
    server_gone: bool,
) -> Result<ClusterMap, PlanError> {
    let report = Report {
        primary: &req.primary,
        volume: &req.volume,
        extent: req.extent,
        server: &req.server,
        generation: req.generation,
    };
    let primary = report.check(map)?;
    step(map, |m| {
        let copy = report.copy_mut(m, primary.as_deref())?;
        // A rebuilding copy whose server is alive keeps taking writes (the primary records
        // what it misses); only a gone server's is taken out of the fan-out.
        if copy.state == ReplicaState::Rebuilding && !server_gone {
            return Ok(());
        }
        copy.state = ReplicaState::Stale;
        if server_gone {
            let primaries: Vec<Vec<Option<String>>> = map
                .volumes
                .iter()
                .map(|v| {
                    v.extents
                        .iter()
                        .map(|e| map.primary(e).map(|r| r.server.clone()))
                        .collect()
                })
                .collect();
            for (v, ps) in m.volumes.iter_mut().zip(&primaries) {
                for (e, p) in v.extents.iter_mut().zip(ps) {
                    if p.as_deref() == Some(req.server.as_str()) {
                        continue;
                    }
                    for r in e.replicas.iter_mut().filter(|r| r.server == req.server) {
                        r.state = ReplicaState::Stale;
                    }
                }
            }
        }
        Ok(())
    })
}

/// The map in which every `stale` copy on server `id` that can be rebuilt is `rebuilding`: `id`
/// is `up`, and the copy's extent has a primary on another server (which copies it). The
/// manager applies it when `id` acks a map while connected (docs/replication.md, "Rebuild").
/// Nothing to do leaves the map unchanged, generation included.
///
/// # Errors
/// Unknown server.
pub fn rebuild_start(map: &ClusterMap, id: &str) -> Result<ClusterMap, PlanError> {
    let Some(server) = map.server(id) else {
        return Err(PlanError::UnknownServer(id.to_owned()));
    };
    if server.state != ServerState::Up {
        return Ok(map.clone());
    }
    let rebuildable: Vec<Vec<bool>> = map
        .volumes
        .iter()
        .map(|v| {
            v.extents
                .iter()
                .map(|e| map.primary(e).is_some_and(|p| p.server != id))
                .collect()
        })
        .collect();
    // The generation of the map this change makes (`step` bumps it by one).
    let since = map.generation.saturating_add(1);
    step(map, |m| {
        for (v, ok) in m.volumes.iter_mut().zip(&rebuildable) {
            for (e, ok) in v.extents.iter_mut().zip(ok) {
                if !*ok {
                    continue;
                }
                for r in e.replicas.iter_mut().filter(|r| r.server == id) {
                    if r.state == ReplicaState::Stale {
                        r.state = ReplicaState::Rebuilding;
                        r.rebuilding_since = Some(since);
                    }
                }
            }
        }
        Ok(())
    })
}

/// A server fetched or watched the map with pool identity `pool` (docs/replication.md, "A
/// server whose data is gone"). The same identity as the map records leaves the map unchanged,
/// generation included; none recorded yet records it (a first start, or a server from before
/// pool identities: its data is trusted). Another identity means the server's pool data is
/// gone: in one generation the identity is recorded and every copy on that server that is
/// `in_sync` or `rebuilding` becomes `stale` (a primary's copy too: the next `in_sync` copy is
/// the primary), except the only `in_sync` copy of an extent on a server not `down`, which
/// stays `in_sync` ([`pool_lost_extents`] names them: their data is lost).
///
/// # Errors
/// Unknown server.
pub fn pool_seen(map: &ClusterMap, id: &str, pool: PoolId) -> Result<ClusterMap, PlanError> {
    let Some(server) = map.server(id) else {
        return Err(PlanError::UnknownServer(id.to_owned()));
    };
    let replaced = match server.pool {
        Some(p) if p == pool => return Ok(map.clone()),
        Some(_) => true,
        None => false,
    };
    let lost = pool_lost_extents(map, id);
    step(map, |m| {
        for s in m.servers.iter_mut().filter(|s| s.id == id) {
            s.pool = Some(pool);
        }
        if !replaced {
            return Ok(());
        }
        for v in &mut m.volumes {
            for (i, e) in v.extents.iter_mut().enumerate() {
                if lost.iter().any(|(lv, li)| *lv == v.name && *li == i) {
                    continue;
                }
                for r in e.replicas.iter_mut().filter(|r| r.server == id) {
                    r.state = ReplicaState::Stale;
                }
            }
        }
        Ok(())
    })
}

/// Whether server `id` holds a copy of an extent that has other copies (one a rebuild could
/// bring back).
#[must_use]
pub fn holds_replicated_copy(map: &ClusterMap, id: &str) -> bool {
    map.volumes.iter().any(|v| {
        v.extents
            .iter()
            .any(|e| e.replicas.len() > 1 && e.replicas.iter().any(|r| r.server == id))
    })
}

/// The extents (volume, index) whose only `in_sync` copy on a server not `down` is on server
/// `id`: if `id`'s pool data is gone, so is theirs (no copy left to rebuild from).
#[must_use]
pub fn pool_lost_extents(map: &ClusterMap, id: &str) -> Vec<(String, usize)> {
    let live = |s: &str| map.server(s).is_some_and(|e| e.state != ServerState::Down);
    let mut out = Vec::new();
    for v in &map.volumes {
        for (i, e) in v.extents.iter().enumerate() {
            let mut in_sync = e
                .replicas
                .iter()
                .filter(|r| r.state == ReplicaState::InSync && live(&r.server));
            if in_sync.next().is_some_and(|r| r.server == id) && in_sync.next().is_none() {
                out.push((v.name.clone(), i));
            }
        }
    }
    out
}

/// Whether [`rebuild_start`] would change anything for server `id` (a cheap check before
/// queueing the change).
#[must_use]
pub fn rebuild_due(map: &ClusterMap, id: &str) -> bool {
    map.server(id).is_some_and(|s| s.state == ServerState::Up)
        && map.volumes.iter().any(|v| {
            v.extents.iter().any(|e| {
                map.primary(e).is_some_and(|p| p.server != id)
                    && e.replicas
                        .iter()
                        .any(|r| r.server == id && r.state == ReplicaState::Stale)
            })
        })
}

/// `POST /v1/rebuild-done`: the map with `req.server`'s copy of the extent `in_sync`.
///
/// Accepted only from the extent's primary in `map`, about a `rebuilding` copy, sent at a
/// generation no older than the one in which the copy last became `rebuilding`
/// (`Replica::rebuilding_since`; the primary sends the generation it has installed, in which it
/// saw the copy `rebuilding`). A copy already `in_sync` leaves the map unchanged (a repeated
/// report). A copy gone `stale` since (it failed a write, or its server was lost) is refused:
/// it missed writes the rebuild did not copy. So is an older report, even for a copy
/// `rebuilding` again: it comes from an earlier rebuild, late (docs/replication.md, "The end of
/// a rebuild").
///
/// # Errors
/// Unknown volume or extent, a server holding no copy of it, a sender that is not its primary
/// (or reports itself), a copy that is `stale`, a report older than the copy's rebuild, a
/// generation newer than the map's.
pub fn rebuild_done(map: &ClusterMap, req: &RebuildDoneRequest) -> Result<ClusterMap, PlanError> {
    let report = Report {
        primary: &req.primary,
        volume: &req.volume,
        extent: req.extent,
        server: &req.server,
        generation: req.generation,
    };
    let primary = report.check(map)?;
    step(map, |m| {
        let copy = report.copy_mut(m, primary.as_deref())?;
        match copy.state {
            ReplicaState::InSync => Ok(()),
            ReplicaState::Rebuilding => {
                if let Some(since) = copy.rebuilding_since
                    && req.generation < since
                {
                    return Err(PlanError::StaleRebuildDone {
                        server: req.server.clone(),
                        volume: req.volume.clone(),
                        extent: req.extent,
                        generation: req.generation,
                        since,
                    });
                }
                copy.state = ReplicaState::InSync;
                Ok(())
            }
            ReplicaState::Stale => Err(PlanError::NotRebuilding {
                server: req.server.clone(),
                volume: req.volume.clone(),
                extent: req.extent,
            }),
        }
    })
}

/// A former primary of an extent lost the role while a write it had applied to its own copy
/// failed (a forward refused by a copy already on the map that took the role away): that
/// write may be on some copies and not others, and no primary records which
/// (docs/replication.md, "A primary that loses the role mid-write"). Every `in_sync` copy of
/// the extent on a server not `down`, except the current primary's, becomes `rebuilding` since
/// the generation of the map this makes, so the primary rebuilds each whole from its own copy
/// (a copy going straight from `in_sync` to `rebuilding` is rebuilt whole: `rebuild::reconcile`
/// in the target). Nothing to do (the sender's copy is no longer `in_sync`: a failover already
/// did this; the extent has no primary; no other `in_sync` copy) leaves the map unchanged,
/// generation included.
///
/// # Errors
/// Unknown volume or extent, a sender holding no copy of it, a generation newer than the
/// map's.
pub fn copies_diverged(
    map: &ClusterMap,
    req: &CopiesDivergedRequest,
) -> Result<ClusterMap, PlanError> {
    if req.generation > map.generation {
        return Err(PlanError::FutureGeneration {
            generation: req.generation,
            current: map.generation,
        });
    }
    let since = map.generation.saturating_add(1);
    let down: Vec<String> = map
        .servers
        .iter()
        .filter(|s| s.state == ServerState::Down)
        .map(|s| s.id.clone())
        .collect();
    step(map, |m| {
        let (_, ext) = extent_mut(m, &req.volume, req.extent)?;
        let Some(mine) = ext.replicas.iter().find(|r| r.server == req.server) else {
            return Err(PlanError::NoSuchReplica {
                server: req.server.clone(),
                volume: req.volume.clone(),
                extent: req.extent,
            });
        };
        if mine.state != ReplicaState::InSync || down.contains(&req.server) {
            return Ok(());
        }
        let live = |r: &Replica| r.state == ReplicaState::InSync && !down.contains(&r.server);
        let Some(primary) = ext.replicas.iter().position(&live) else {
            return Ok(());
        };
        for (i, r) in ext.replicas.iter_mut().enumerate() {
            if i != primary && live(r) {
                r.state = ReplicaState::Rebuilding;
                r.rebuilding_since = Some(since);
            }
        }
        Ok(())
    })
}

/// Every `in_sync` copy on a server marked `down` becomes `stale`, unless no copy of its
/// extent on a server that is not down is `in_sync` (then it stays: it holds the newest data,
/// as no write could complete without it). Run on every next map, so a mark-down (operator,
/// reload, or the manager's old-owner timeout) hands each extent it was the primary of to the
/// next `in_sync` copy, and setting the server `up` again does not bring back copies that
/// missed writes meanwhile. Volumes with one copy are unchanged.
///
/// A failover (the extent's primary is a copy made `stale` this way) also makes every other
/// `in_sync` copy of the extent on a server not down, except the new primary, `rebuilding`
/// since the generation of the map being made (`m`'s own plus one: `m` is a copy of the
/// previous map being edited): a write the old primary forwarded
/// but never acknowledged may be on some of them only, so the new primary rebuilds them whole
/// from its own copy (docs/replication.md, "Failover: a new primary").
///
/// It also drops the `rebuilding_since` record of every copy that is not `rebuilding` (any
/// change that takes a copy out of `rebuilding` drops it with it, so `in_sync` and `stale`
/// copies are written as before).
pub(super) fn down_copies_stale(m: &mut ClusterMap) {
    mark_down_copies_stale(m);
    for r in m
        .volumes
        .iter_mut()
        .flat_map(|v| v.extents.iter_mut())
        .flat_map(|e| e.replicas.iter_mut())
        .filter(|r| r.state != ReplicaState::Rebuilding)
    {
        r.rebuilding_since = None;
    }
}

/// [`down_copies_stale`] without the `rebuilding_since` tidying.
fn mark_down_copies_stale(m: &mut ClusterMap) {
    let since = m.generation.saturating_add(1);
    let down: Vec<String> = m
        .servers
        .iter()
        .filter(|s| s.state == ServerState::Down)
        .map(|s| s.id.clone())
        .collect();
    if down.is_empty() {
        return;
    }
    let is_down = |id: &str| down.iter().any(|d| d == id);
    for v in &mut m.volumes {
        for e in &mut v.extents {
            let live_in_sync = e
                .replicas
                .iter()
                .any(|r| r.state == ReplicaState::InSync && !is_down(&r.server));
            if !live_in_sync {
                continue;
            }
            // The primary before this map is the first `in_sync` copy; on a down server now,
            // it loses the role here: a failover. (Had its server been down already, it was
            // `in_sync` as the last such copy, and a copy whose server is back is rebuilt as
            // well: a copy more, nothing lost.)
            let failover = e
                .replicas
                .iter()
                .find(|r| r.state == ReplicaState::InSync)
                .is_some_and(|r| is_down(&r.server));
            for r in e.replicas.iter_mut().filter(|r| is_down(&r.server)) {
                // A rebuilding copy on a down server stops taking writes too: it is stale
                // again (rebuilt when its server is back).
                if r.state != ReplicaState::Stale {
                    r.state = ReplicaState::Stale;
                }
            }
            if !failover {
                continue;
            }
            // The new primary is the first live `in_sync` copy; the others may lack a write
            // the old primary forwarded to some copies only.
            let mut live = e
                .replicas
                .iter_mut()
                .filter(|r| r.state == ReplicaState::InSync && !is_down(&r.server));
            let _new_primary = live.next();
            for r in live {
                r.state = ReplicaState::Rebuilding;
                r.rebuilding_since = Some(since);
            }
        }
    }
}

/// What a primary reports about one copy of one of its extents (replica-failed, rebuild-done).
struct Report<'r> {
    primary: &'r str,
    volume: &'r str,
    extent: usize,
    server: &'r str,
    generation: u64,
}

impl Report<'_> {
    /// Refuses a generation newer than `map`'s; returns the extent's primary in `map`.
    fn check(&self, map: &ClusterMap) -> Result<Option<String>, PlanError> {
        if self.generation > map.generation {
            return Err(PlanError::FutureGeneration {
                generation: self.generation,
                current: map.generation,
            });
        }
        Ok(map
            .volume(self.volume)
            .and_then(|v| v.extents.get(self.extent))
            .and_then(|e| map.primary(e))
            .map(|r| r.server.clone()))
    }

    /// The reported copy in `m`, once the sender is the extent's `primary` and not the copy.
    fn copy_mut<'m>(
        &self,
        m: &'m mut ClusterMap,
        primary: Option<&str>,
    ) -> Result<&'m mut Replica, PlanError> {
        let (_, ext) = extent_mut(m, self.volume, self.extent)?;
        if primary != Some(self.primary) || self.server == self.primary {
            return Err(PlanError::NotPrimary {
                server: self.primary.to_owned(),
                volume: self.volume.to_owned(),
                extent: self.extent,
                primary: primary.map_or_else(|| "no primary".to_owned(), |p| format!("{p:?}")),
            });
        }
        ext.replicas
            .iter_mut()
            .find(|r| r.server == self.server)
            .ok_or_else(|| PlanError::NoSuchReplica {
                server: self.server.to_owned(),
                volume: self.volume.to_owned(),
                extent: self.extent,
            })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::api::{AddServerRequest, CreateVolumeRequest};
    use crate::map::HostPolicy;
    use crate::plan::{add_server, create_volume};

    const MIB: u64 = 1 << 20;

    /// Three servers and volume `v` of 4 extents with 2 copies each.
    fn cluster() -> ClusterMap {
        cluster_with(2)
    }

    /// Three servers and volume `v` of 4 extents with `copies` copies each.
    fn cluster_with(copies: u32) -> ClusterMap {
        let mut m = crate::plan::tests::two_servers();
        m = add_server(
            &m,
            &AddServerRequest {
                id: "s3".to_owned(),
                portal: "127.0.0.1:4422".parse().unwrap(),
                internal: "127.0.0.1:4522".parse().unwrap(),
                pool_bytes: 64 * MIB,
                rack: None,
            },
        )
        .unwrap();
        create_volume(
            &m,
            &CreateVolumeRequest {
                name: "v".to_owned(),
                size: 4 * MIB,
                block_size: None,
                extent_size: Some(MIB),
                replicas: Some(copies),
                subsystem: "nqn.2026-11.dev.tessera:t".to_owned(),
                nsid: None,
                hosts: Some(HostPolicy::Any),
            },
        )
        .unwrap()
    }

    fn report(m: &ClusterMap, extent: usize, from: &str, copy: &str) -> ReplicaFailedRequest {
        ReplicaFailedRequest {
            primary: from.to_owned(),
            volume: "v".to_owned(),
            extent,
            server: copy.to_owned(),
            generation: m.generation,
        }
    }

    fn copies(m: &ClusterMap, extent: usize) -> (String, String) {
        let e = &m.volume("v").unwrap().extents[extent];
        (e.replicas[0].server.clone(), e.replicas[1].server.clone())
    }

    #[test]
    fn the_primarys_report_marks_the_copy_stale_in_the_next_generation_keeping_its_space() {
        let m = cluster();
        let (p, c) = copies(&m, 1);
        let free = m.free_bytes(&c);
        let next = replica_failed(&m, &report(&m, 1, &p, &c), false).unwrap();
        assert_eq!(next.generation, m.generation + 1);
        let e = &next.volume("v").unwrap().extents[1];
        assert_eq!(e.replicas[1].server, c);
        assert_eq!(e.replicas[1].state, ReplicaState::Stale);
        assert_eq!(e.replicas[0].state, ReplicaState::InSync);
        assert_eq!(next.primary(e).unwrap().server, p);
        // The stale copy keeps its pool range.
        assert_eq!(next.free_bytes(&c), free);
        assert_eq!(
            e.replicas[1].offset,
            m.volume("v").unwrap().extents[1].replicas[1].offset
        );
        // Other extents are untouched.
        for i in [0, 2, 3] {
            assert_eq!(
                next.volume("v").unwrap().extents[i],
                m.volume("v").unwrap().extents[i]
            );
        }
        next.validate().unwrap();
    }

    #[test]
    fn a_new_pool_id_marks_the_servers_copies_stale_in_one_generation_and_moves_its_primaries() {
        let m = cluster();
        let id = |n: u128| PoolId(n);
        // First seen: recorded, nothing else changes.
        let first = pool_seen(&m, "s1", id(1)).unwrap();
        assert_eq!(first.generation, m.generation + 1);
        assert_eq!(first.server("s1").unwrap().pool, Some(id(1)));
        assert_eq!(first.volumes, m.volumes);
        // The same identity again: the same map, generation included.
        assert_eq!(pool_seen(&first, "s1", id(1)).unwrap(), first);
        // Another identity: every copy on s1 stale, in one generation.
        let held: Vec<usize> = (0..4)
            .filter(|&i| {
                let (a, b) = copies(&first, i);
                a == "s1" || b == "s1"
            })
            .collect();
        assert!(!held.is_empty());
        assert!(
            held.iter().any(|&i| copies(&first, i).0 == "s1"),
            "the test needs an extent s1 is the primary of"
        );
        assert!(pool_lost_extents(&first, "s1").is_empty());
        let next = pool_seen(&first, "s1", id(2)).unwrap();
        assert_eq!(next.generation, first.generation + 1);
        assert_eq!(next.server("s1").unwrap().pool, Some(id(2)));
        for (i, e) in next.volume("v").unwrap().extents.iter().enumerate() {
            let old = &first.volume("v").unwrap().extents[i];
            for (r, o) in e.replicas.iter().zip(&old.replicas) {
                assert_eq!(r.offset, o.offset, "copies keep their pool ranges");
                let want = if r.server == "s1" {
                    ReplicaState::Stale
                } else {
                    o.state
                };
                assert_eq!(r.state, want, "extent {i}, copy on {}", r.server);
            }
            // The primary is an in_sync copy on another server.
            let p = next.primary(e).unwrap();
            assert_ne!(p.server, "s1", "extent {i}");
            assert_eq!(p.state, ReplicaState::InSync);
        }
        next.validate().unwrap();
        // The server comes back again with that new identity: nothing more.
        assert_eq!(pool_seen(&next, "s1", id(2)).unwrap(), next);
        // An unknown server.
        assert!(matches!(
            pool_seen(&m, "s9", id(1)).unwrap_err(),
            PlanError::UnknownServer(_)
        ));
    }

    #[test]
    fn the_last_in_sync_copy_stays_in_sync_when_its_pool_is_gone_and_is_named_lost() {
        let (p, c) = copies(&cluster(), 0);
        // Only one copy of extent 0 in sync: the one on the server whose pool goes.
        let base = pool_seen(&cluster(), &p, PoolId(1)).unwrap();
        let base = replica_failed(&base, &report(&base, 0, &p, &c), false).unwrap();
        assert_eq!(pool_lost_extents(&base, &p), vec![("v".to_owned(), 0)]);
        let next = pool_seen(&base, &p, PoolId(2)).unwrap();
        let e = &next.volume("v").unwrap().extents[0];
        assert_eq!(
            next.primary(e).unwrap().server,
            p,
            "never left without a primary"
        );
        assert_eq!(e.replicas[0].state, ReplicaState::InSync);
        assert_eq!(e.replicas[1].state, ReplicaState::Stale);
        // Its other copies (with an in_sync copy elsewhere) do go stale.
        for (i, e) in next.volume("v").unwrap().extents.iter().enumerate().skip(1) {
            for r in e.replicas.iter().filter(|r| r.server == p) {
                assert_eq!(r.state, ReplicaState::Stale, "extent {i}");
            }
        }
        next.validate().unwrap();
    }

    #[test]
    fn a_repeated_or_late_report_changes_nothing() {
        let m = cluster();
        let (p, c) = copies(&m, 0);
        let next = replica_failed(&m, &report(&m, 0, &p, &c), false).unwrap();
        // The same report again, and one sent at the older generation: no new generation.
        let again = replica_failed(&next, &report(&next, 0, &p, &c), false).unwrap();
        assert_eq!(again, next);
        let late = replica_failed(&next, &report(&m, 0, &p, &c), false).unwrap();
        assert_eq!(late, next);
    }

    #[test]
    fn only_the_primary_may_report_and_never_itself() {
        let m = cluster();
        let (p, c) = copies(&m, 2);
        // The copy reporting the primary: refused, whatever it says.
        let e = replica_failed(&m, &report(&m, 2, &c, &p), false).unwrap_err();
        assert!(matches!(e, PlanError::NotPrimary { .. }), "{e}");
        assert_eq!(e.http_status(), 409);
        // A server holding no copy.
        let other = ["s1", "s2", "s3"]
            .into_iter()
            .find(|s| *s != p && *s != c)
            .unwrap();
        let e = replica_failed(&m, &report(&m, 2, other, &c), false).unwrap_err();
        assert!(matches!(e, PlanError::NotPrimary { .. }), "{e}");
        // The primary about itself.
        let e = replica_failed(&m, &report(&m, 2, &p, &p), false).unwrap_err();
        assert!(matches!(e, PlanError::NotPrimary { .. }), "{e}");
        // The primary about a server without a copy.
        let e = replica_failed(&m, &report(&m, 2, &p, other), false).unwrap_err();
        assert!(matches!(e, PlanError::NoSuchReplica { .. }), "{e}");
        assert_eq!(e.http_status(), 404);
        // Unknown extent, future generation.
        let e = replica_failed(&m, &report(&m, 9, &p, &c), false).unwrap_err();
        assert!(matches!(e, PlanError::NoSuchExtent { .. }), "{e}");
        let mut future = report(&m, 2, &p, &c);
        future.generation = m.generation + 1;
        let e = replica_failed(&m, &future, false).unwrap_err();
        assert!(matches!(e, PlanError::FutureGeneration { .. }), "{e}");
    }

    #[test]
    fn a_primary_gone_stale_is_not_a_cancelled_switch() {
        // Marking the primary's server down turns replicas[0] stale: the owner is the same
        // copy, so the manager (plan and coordinator) must not take it for a cancellation and
        // "give back" the in_sync copy (found merging the cancellation with replica states).
        let m = cluster();
        let (p, _c) = copies(&m, 3);
        let chain = vec![std::sync::Arc::new(m.clone())];
        let (next, cancelled) = crate::plan::apply_cancelling(
            &m,
            &crate::plan::Change::SetServerState {
                id: p.clone(),
                state: crate::map::ServerState::Down,
            },
            &chain,
        )
        .unwrap();
        assert!(cancelled.is_empty(), "{cancelled:?}");
        let first = &next.volume("v").unwrap().extents[3].replicas[0];
        assert_eq!(
            (first.server.as_str(), first.state),
            (p.as_str(), ReplicaState::Stale)
        );
    }

    #[test]
    fn once_the_primary_is_down_the_next_copy_is_primary_and_the_last_in_sync_stays() {
        let m = cluster();
        let (p, c) = copies(&m, 3);
        let down = crate::plan::set_server_state(&m, &p, crate::map::ServerState::Down).unwrap();
        // The old primary (down) may no longer report; the copy, now the primary, may report
        // the old primary's copy but never itself: the extent keeps an in_sync copy.
        let e = replica_failed(&down, &report(&down, 3, &p, &c), false).unwrap_err();
        assert!(matches!(e, PlanError::NotPrimary { .. }), "{e}");
        let e = replica_failed(&down, &report(&down, 3, &c, &c), false).unwrap_err();
        assert!(matches!(e, PlanError::NotPrimary { .. }), "{e}");
        let next = replica_failed(&down, &report(&down, 3, &c, &p), false).unwrap();
        let ext = &next.volume("v").unwrap().extents[3];
        assert!(
            ext.replicas
                .iter()
                .any(|r| r.state == ReplicaState::InSync && r.server == c)
        );
    }

    #[test]
    fn a_gone_server_loses_every_copy_but_those_it_is_the_primary_of() {
        let m = cluster();
        let (p, c) = copies(&m, 0);
        let next = replica_failed(&m, &report(&m, 0, &p, &c), true).unwrap();
        assert_eq!(next.generation, m.generation + 1);
        let (old, new) = (m.volume("v").unwrap(), next.volume("v").unwrap());
        for (x, (e0, e1)) in old.extents.iter().zip(&new.extents).enumerate() {
            for (r0, r1) in e0.replicas.iter().zip(&e1.replicas) {
                let primary = m.primary(e0).unwrap().server == r0.server;
                let want = if r0.server == c && !primary {
                    ReplicaState::Stale
                } else {
                    ReplicaState::InSync
                };
                assert_eq!(r1.state, want, "extent {x}: {e1:?}");
                assert_eq!(r1.offset, r0.offset);
            }
            assert!(
                new.extents[x]
                    .replicas
                    .iter()
                    .any(|r| r.state == ReplicaState::InSync)
            );
        }
        next.validate().unwrap();
    }

    #[test]
    fn a_server_marked_down_loses_its_copies_but_never_the_last_in_sync_one() {
        let m = cluster();
        let (p, c) = copies(&m, 0);
        let down = crate::plan::set_server_state(&m, &p, ServerState::Down).unwrap();
        let v = down.volume("v").unwrap();
        for (x, e) in v.extents.iter().enumerate() {
            for r in &e.replicas {
                let want = if r.server == p {
                    ReplicaState::Stale
                } else {
                    ReplicaState::InSync
                };
                assert_eq!(r.state, want, "extent {x}: {e:?}");
            }
        }
        // Extent 0's next copy is its primary now; back up, the stale copy stays stale.
        assert_eq!(down.primary(&v.extents[0]).unwrap().server, c);
        let up = crate::plan::set_server_state(&down, &p, ServerState::Up).unwrap();
        let e0 = &up.volume("v").unwrap().extents[0];
        assert_eq!(up.primary(e0).unwrap().server, c);
        assert!(
            e0.replicas
                .iter()
                .any(|r| r.server == p && r.state == ReplicaState::Stale)
        );
        // Both copies' servers down: the last in_sync copy stays in_sync.
        let both = crate::plan::set_server_state(&down, &c, ServerState::Down).unwrap();
        let e0 = &both.volume("v").unwrap().extents[0];
        assert!(
            e0.replicas
                .iter()
                .any(|r| r.server == c && r.state == ReplicaState::InSync)
        );
        both.validate().unwrap();
    }

    /// The copies' servers and states of extent `x`, in map order.
    fn states(m: &ClusterMap, x: usize) -> Vec<(String, ReplicaState)> {
        m.volume("v").unwrap().extents[x]
            .replicas
            .iter()
            .map(|r| (r.server.clone(), r.state))
            .collect()
    }

    #[test]
    fn a_failover_with_three_copies_has_the_new_primary_rebuild_the_other_copy() {
        let m = cluster_with(3);
        let p = m.volume("v").unwrap().extents[0].replicas[0].server.clone();
        let down = crate::plan::set_server_state(&m, &p, ServerState::Down).unwrap();
        assert_eq!(down.generation, m.generation + 1);
        let mut failovers = 0;
        for x in 0..4 {
            let before = states(&m, x);
            assert_eq!(before.len(), 3);
            let after = states(&down, x);
            let e = &down.volume("v").unwrap().extents[x];
            if before[0].0 == p {
                // p was the primary: the next copy takes over, the third is rebuilt whole
                // from it, since this generation.
                failovers += 1;
                assert_eq!(after[0], (p.clone(), ReplicaState::Stale), "extent {x}");
                assert_eq!(after[1].1, ReplicaState::InSync, "extent {x}");
                assert_eq!(after[2].1, ReplicaState::Rebuilding, "extent {x}");
                assert_eq!(down.primary(e).unwrap().server, after[1].0);
                assert_eq!(since_of(&down, x, &after[2].0), Some(down.generation));
            } else {
                // Not the primary: only p's copy leaves the write set.
                for ((s0, st0), (s1, st1)) in before.iter().zip(&after) {
                    assert_eq!(s0, s1);
                    let want = if *s0 == p { ReplicaState::Stale } else { *st0 };
                    assert_eq!(*st1, want, "extent {x}: {after:?}");
                }
                assert_eq!(down.primary(e).unwrap().server, before[0].0);
            }
        }
        assert!(failovers > 0);
        down.validate().unwrap();
        // The new primary reports the rebuild done: in_sync again.
        let x = 0;
        let after = states(&down, x);
        let synced = rebuild_done(&down, &done(&down, x, &after[1].0, &after[2].0)).unwrap();
        assert_eq!(state_of(&synced, x, &after[2].0), ReplicaState::InSync);
        // p back up and rebuilt: its copy, first again, is the primary again (a handover,
        // not a failover): the other copies stay in_sync.
        let up = crate::plan::set_server_state(&synced, &p, ServerState::Up).unwrap();
        let rebuilding = rebuild_start(&up, &p).unwrap();
        assert_eq!(state_of(&rebuilding, x, &p), ReplicaState::Rebuilding);
        let back = rebuild_done(&rebuilding, &done(&rebuilding, x, &after[1].0, &p)).unwrap();
        assert!(
            states(&back, x)
                .iter()
                .all(|(_, st)| *st == ReplicaState::InSync),
            "{:?}",
            states(&back, x)
        );
        let e = &back.volume("v").unwrap().extents[x];
        assert_eq!(back.primary(e).unwrap().server, p);
    }

    #[test]
    fn a_non_primarys_mark_down_rebuilds_nothing_else() {
        let m = cluster_with(3);
        let c = m.volume("v").unwrap().extents[0].replicas[1].server.clone();
        let down = crate::plan::set_server_state(&m, &c, ServerState::Down).unwrap();
        let x = 0;
        for (s, st) in states(&down, x) {
            let want = if s == c {
                ReplicaState::Stale
            } else {
                ReplicaState::InSync
            };
            assert_eq!(st, want, "{s}");
        }
    }

    #[test]
    fn a_failover_with_two_copies_leaves_no_other_copy_to_rebuild() {
        let m = cluster();
        let (p, c) = copies(&m, 0);
        let down = crate::plan::set_server_state(&m, &p, ServerState::Down).unwrap();
        assert_eq!(state_of(&down, 0, &c), ReplicaState::InSync);
        assert!(
            down.volumes
                .iter()
                .flat_map(|v| &v.extents)
                .flat_map(|e| &e.replicas)
                .all(|r| r.state != ReplicaState::Rebuilding)
        );
    }

    fn diverged(m: &ClusterMap, extent: usize, from: &str) -> CopiesDivergedRequest {
        CopiesDivergedRequest {
            server: from.to_owned(),
            volume: "v".to_owned(),
            extent,
            generation: m.generation,
        }
    }

    #[test]
    fn a_former_primarys_diverged_report_rebuilds_every_copy_but_the_primarys() {
        // Three copies, all in_sync; the first is the primary.
        let m = cluster_with(3);
        let x = 0;
        let before = states(&m, x);
        let (first, second, third) = (
            before[0].0.clone(),
            before[1].0.clone(),
            before[2].0.clone(),
        );
        // The second copy's server reports: it was the primary (say) and lost the role
        // mid-write. The primary's copy stays in_sync; both others are rebuilt whole.
        let next = copies_diverged(&m, &diverged(&m, x, &second)).unwrap();
        assert_eq!(next.generation, m.generation + 1);
        assert_eq!(state_of(&next, x, &first), ReplicaState::InSync);
        assert_eq!(state_of(&next, x, &second), ReplicaState::Rebuilding);
        assert_eq!(state_of(&next, x, &third), ReplicaState::Rebuilding);
        assert_eq!(since_of(&next, x, &second), Some(next.generation));
        assert_eq!(since_of(&next, x, &third), Some(next.generation));
        let e = &next.volume("v").unwrap().extents[x];
        assert_eq!(next.primary(e).unwrap().server, first);
        next.validate().unwrap();
        // Other extents are untouched.
        for y in 1..4 {
            assert_eq!(states(&next, y), states(&m, y), "extent {y}");
        }
        // Repeated (the sender's copy is rebuilding now): nothing changes, no generation.
        let again = copies_diverged(&next, &diverged(&next, x, &second)).unwrap();
        assert_eq!(again, next);
        // Rebuilt and reported done by the primary: in_sync again.
        let d = rebuild_done(&next, &done(&next, x, &first, &second)).unwrap();
        assert_eq!(state_of(&d, x, &second), ReplicaState::InSync);
    }

    #[test]
    fn a_diverged_report_changes_nothing_without_another_in_sync_copy_and_refuses_strangers() {
        // Two copies, the other copy's server down: the sender's copy is the only live
        // in_sync one (the primary): nothing to rebuild.
        let m = cluster();
        let (p, c) = copies(&m, 0);
        let down = crate::plan::set_server_state(&m, &c, ServerState::Down).unwrap();
        let same = copies_diverged(&down, &diverged(&down, 0, &p)).unwrap();
        assert_eq!(same, down);
        // The primary itself reporting (it got the role back): the other copy is rebuilt
        // whole from it.
        let next = copies_diverged(&m, &diverged(&m, 0, &p)).unwrap();
        assert_eq!(state_of(&next, 0, &p), ReplicaState::InSync);
        assert_eq!(state_of(&next, 0, &c), ReplicaState::Rebuilding);
        // A sender on a server marked down (a failover already rebuilds the others): nothing.
        let p_down = crate::plan::set_server_state(&m, &p, ServerState::Down).unwrap();
        let same = copies_diverged(&p_down, &diverged(&p_down, 0, &p)).unwrap();
        assert_eq!(same, p_down);
        // A server holding no copy of the extent, an unknown extent, a future generation.
        let stranger = ["s1", "s2", "s3"]
            .into_iter()
            .find(|s| *s != p && *s != c)
            .unwrap();
        assert!(matches!(
            copies_diverged(&m, &diverged(&m, 0, stranger)),
            Err(PlanError::NoSuchReplica { .. })
        ));
        assert!(matches!(
            copies_diverged(&m, &diverged(&m, 9, &p)),
            Err(PlanError::NoSuchExtent { .. })
        ));
        let mut future = diverged(&m, 0, &p);
        future.generation = m.generation + 1;
        assert!(matches!(
            copies_diverged(&m, &future),
            Err(PlanError::FutureGeneration { .. })
        ));
    }

    fn done(m: &ClusterMap, extent: usize, from: &str, copy: &str) -> RebuildDoneRequest {
        RebuildDoneRequest {
            primary: from.to_owned(),
            volume: "v".to_owned(),
            extent,
            server: copy.to_owned(),
            generation: m.generation,
        }
    }

    fn state_of(m: &ClusterMap, extent: usize, server: &str) -> ReplicaState {
        m.volume("v").unwrap().extents[extent]
            .replicas
            .iter()
            .find(|r| r.server == server)
            .unwrap()
            .state
    }

    #[test]
    fn a_stale_copy_goes_rebuilding_then_in_sync_on_the_primarys_report() {
        let m = cluster();
        let (p, c) = copies(&m, 1);
        let stale = replica_failed(&m, &report(&m, 1, &p, &c), true).unwrap();
        assert!(rebuild_due(&stale, &c));
        assert!(!rebuild_due(&stale, &p));
        let stale_extents: Vec<usize> = (0..4)
            .filter(|&x| {
                stale.volume("v").unwrap().extents[x]
                    .replicas
                    .iter()
                    .any(|r| r.server == c && r.state == ReplicaState::Stale)
            })
            .collect();
        assert!(stale_extents.contains(&1));
        // The server is back: every stale copy of it is rebuilding, in one new generation,
        // keeping its pool range.
        let rebuilding = rebuild_start(&stale, &c).unwrap();
        assert_eq!(rebuilding.generation, stale.generation + 1);
        assert!(!rebuild_due(&rebuilding, &c));
        for &x in &stale_extents {
            assert_eq!(state_of(&rebuilding, x, &c), ReplicaState::Rebuilding);
            // A rebuilding copy does not count: the primary stays the primary.
            let e = &rebuilding.volume("v").unwrap().extents[x];
            assert_ne!(rebuilding.primary(e).unwrap().server, c);
        }
        assert_eq!(rebuilding.free_bytes(&c), m.free_bytes(&c));
        rebuilding.validate().unwrap();
        // Nothing more to start: unchanged, generation included.
        assert_eq!(rebuild_start(&rebuilding, &c).unwrap(), rebuilding);
        // Done, reported by the primary: in_sync in the next generation.
        let synced = rebuild_done(&rebuilding, &done(&rebuilding, 1, &p, &c)).unwrap();
        assert_eq!(synced.generation, rebuilding.generation + 1);
        assert_eq!(state_of(&synced, 1, &c), ReplicaState::InSync);
        // Repeated: unchanged.
        assert_eq!(
            rebuild_done(&synced, &done(&synced, 1, &p, &c)).unwrap(),
            synced
        );
        synced.validate().unwrap();
    }

    #[test]
    fn only_the_primary_reports_a_rebuild_done_and_never_for_a_stale_copy() {
        let m = cluster();
        let (p, c) = copies(&m, 2);
        let stale = replica_failed(&m, &report(&m, 2, &p, &c), false).unwrap();
        // Still stale (not rebuilding): refused, it missed writes.
        let e = rebuild_done(&stale, &done(&stale, 2, &p, &c)).unwrap_err();
        assert!(matches!(e, PlanError::NotRebuilding { .. }), "{e}");
        assert_eq!(e.http_status(), 409);
        let rebuilding = rebuild_start(&stale, &c).unwrap();
        assert_eq!(state_of(&rebuilding, 2, &c), ReplicaState::Rebuilding);
        // The copy itself, or a server holding no copy: not the primary.
        let e = rebuild_done(&rebuilding, &done(&rebuilding, 2, &c, &c)).unwrap_err();
        assert!(matches!(e, PlanError::NotPrimary { .. }), "{e}");
        let other = ["s1", "s2", "s3"]
            .into_iter()
            .find(|s| *s != p && *s != c)
            .unwrap();
        let e = rebuild_done(&rebuilding, &done(&rebuilding, 2, other, &c)).unwrap_err();
        assert!(matches!(e, PlanError::NotPrimary { .. }), "{e}");
        let e = rebuild_done(&rebuilding, &done(&rebuilding, 2, &p, other)).unwrap_err();
        assert!(matches!(e, PlanError::NoSuchReplica { .. }), "{e}");
        let mut future = done(&rebuilding, 2, &p, &c);
        future.generation += 1;
        let e = rebuild_done(&rebuilding, &future).unwrap_err();
        assert!(matches!(e, PlanError::FutureGeneration { .. }), "{e}");
        // A rebuilding copy whose server is alive stays rebuilding when reported (its misses
        // are in the primary's dirty map).
        assert_eq!(
            replica_failed(&rebuilding, &report(&rebuilding, 2, &p, &c), false).unwrap(),
            rebuilding
        );
        // Its server gone: stale, and a late done is refused.
        let again = replica_failed(&rebuilding, &report(&rebuilding, 2, &p, &c), true).unwrap();
        assert_eq!(state_of(&again, 2, &c), ReplicaState::Stale);
        let e = rebuild_done(&again, &done(&rebuilding, 2, &p, &c)).unwrap_err();
        assert!(matches!(e, PlanError::NotRebuilding { .. }), "{e}");
        // A stale report about it once more changes nothing.
        assert_eq!(
            replica_failed(&again, &report(&again, 2, &p, &c), false).unwrap(),
            again
        );
    }

    fn since_of(m: &ClusterMap, extent: usize, server: &str) -> Option<u64> {
        m.volume("v").unwrap().extents[extent]
            .replicas
            .iter()
            .find(|r| r.server == server)
            .unwrap()
            .rebuilding_since
    }

    #[test]
    fn a_late_rebuild_done_from_an_earlier_rebuild_of_the_copy_is_refused() {
        let m = cluster();
        let (p, c) = copies(&m, 1);
        // First rebuild: the copy's server is gone, then back.
        let stale = replica_failed(&m, &report(&m, 1, &p, &c), true).unwrap();
        assert_eq!(since_of(&stale, 1, &c), None);
        let first = rebuild_start(&stale, &c).unwrap();
        assert_eq!(since_of(&first, 1, &c), Some(first.generation));
        // The primary reports it done at that generation; the report is delayed. Meanwhile
        // the copy's server is gone again (stale: the record goes) and back (a second rebuild).
        let late = done(&first, 1, &p, &c);
        let again = replica_failed(&first, &report(&first, 1, &p, &c), true).unwrap();
        assert_eq!(state_of(&again, 1, &c), ReplicaState::Stale);
        assert_eq!(since_of(&again, 1, &c), None);
        let second = rebuild_start(&again, &c).unwrap();
        assert_eq!(state_of(&second, 1, &c), ReplicaState::Rebuilding);
        assert_eq!(since_of(&second, 1, &c), Some(second.generation));
        // The late report, and one sent at the stale map: refused with a 409 that says why.
        for r in [late, done(&again, 1, &p, &c)] {
            let e = rebuild_done(&second, &r).unwrap_err();
            assert!(
                matches!(
                    e,
                    PlanError::StaleRebuildDone { generation, since, .. }
                        if generation == r.generation && since == second.generation
                ),
                "{e}"
            );
            assert_eq!(e.http_status(), 409);
            assert!(e.to_string().contains("earlier rebuild"), "{e}");
        }
        // The current rebuild's report (sent at the generation that made it rebuilding, or
        // later) is accepted; the in_sync copy carries no record, and is written as before.
        let synced = rebuild_done(&second, &done(&second, 1, &p, &c)).unwrap();
        assert_eq!(state_of(&synced, 1, &c), ReplicaState::InSync);
        assert_eq!(since_of(&synced, 1, &c), None);
        assert_eq!(
            synced.volume("v").unwrap().extents[1],
            m.volume("v").unwrap().extents[1]
        );
        synced.validate().unwrap();
    }

    #[test]
    fn the_rebuilding_record_goes_with_the_rebuilding_state_and_old_maps_are_not_checked() {
        let m = cluster();
        let (p, c) = copies(&m, 0);
        let rebuilding = rebuild_start(&set_down_up(&m, &c), &c).unwrap();
        assert_eq!(state_of(&rebuilding, 0, &c), ReplicaState::Rebuilding);
        assert_eq!(since_of(&rebuilding, 0, &c), Some(rebuilding.generation));
        // Marked down while rebuilding: stale, and the record is dropped with the state.
        let down = crate::plan::set_server_state(&rebuilding, &c, ServerState::Down).unwrap();
        assert_eq!(state_of(&down, 0, &c), ReplicaState::Stale);
        assert_eq!(since_of(&down, 0, &c), None);
        // A map stored before the record: a rebuilding copy without one takes the report of
        // any generation (as before).
        let mut old = rebuilding.clone();
        for e in &mut old.volumes[0].extents {
            for r in &mut e.replicas {
                r.rebuilding_since = None;
            }
        }
        let mut early = done(&old, 0, &p, &c);
        early.generation = 1;
        let synced = rebuild_done(&old, &early).unwrap();
        assert_eq!(state_of(&synced, 0, &c), ReplicaState::InSync);
    }

    /// `m` with server `id` marked down, then up again (its copies stale).
    fn set_down_up(m: &ClusterMap, id: &str) -> ClusterMap {
        let down = crate::plan::set_server_state(m, id, ServerState::Down).unwrap();
        crate::plan::set_server_state(&down, id, ServerState::Up).unwrap()
    }

    #[test]
    fn a_server_not_up_or_an_extent_without_another_primary_is_not_rebuilt() {
        let m = cluster();
        let (p, c) = copies(&m, 0);
        let down = crate::plan::set_server_state(&m, &p, ServerState::Down).unwrap();
        // Down: its copies stay stale.
        assert!(!rebuild_due(&down, &p));
        assert_eq!(rebuild_start(&down, &p).unwrap(), down);
        // Draining: not rebuilt either.
        let draining = crate::plan::set_server_state(&down, &p, ServerState::Draining).unwrap();
        assert_eq!(rebuild_start(&draining, &p).unwrap(), draining);
        // Up again: its copies rebuild from the copies that took over as primaries.
        let up = crate::plan::set_server_state(&down, &p, ServerState::Up).unwrap();
        let rebuilding = rebuild_start(&up, &p).unwrap();
        assert_eq!(state_of(&rebuilding, 0, &p), ReplicaState::Rebuilding);
        let e0 = &rebuilding.volume("v").unwrap().extents[0];
        assert_eq!(rebuilding.primary(e0).unwrap().server, c);
        // Marked down again while rebuilding: stale again.
        let down2 = crate::plan::set_server_state(&rebuilding, &p, ServerState::Down).unwrap();
        assert_eq!(state_of(&down2, 0, &p), ReplicaState::Stale);
        assert!(rebuild_start(&m, "nobody").is_err(), "unknown server");
    }
}
