//! The per-extent `lost` mark (docs/replication.md, "The last copy"): set when a server comes
//! back with another pool identity and held the only `in_sync` copy of an extent; cleared only
//! by an operator.

use crate::map::{ClusterMap, PoolId, ReplicaState, ServerState};

use super::{PlanError, replica, step, volume_mut};

/// The extents (volume, index) whose data is gone if server `id`'s pool is: `id` holds an
/// `in_sync` copy of them and no other server that is not `down` does.
#[must_use]
pub fn lost_with(map: &ClusterMap, id: &str) -> Vec<(String, usize)> {
    let live = |s: &str| map.server(s).is_some_and(|e| e.state != ServerState::Down);
    let mut out = Vec::new();
    for v in &map.volumes {
        for (i, e) in v.extents.iter().enumerate() {
            let in_sync = |r: &&crate::map::Replica| r.state == ReplicaState::InSync;
            let here = e.replicas.iter().filter(in_sync).any(|r| r.server == id);
            let elsewhere = e
                .replicas
                .iter()
                .filter(in_sync)
                .any(|r| r.server != id && live(&r.server));
            if here && !elsewhere {
                out.push((v.name.clone(), i));
            }
        }
    }
    out
}

/// [`replica::pool_seen`], and when the identity differs from the recorded one (or, when the
/// map records none, from `previous`: the one the manager saw from that server before and
/// kept in memory only), every extent of [`lost_with`] (in the map before the change) marked
/// `lost` in that same generation.
///
/// # Errors
/// Unknown server.
pub fn pool_seen(
    map: &ClusterMap,
    id: &str,
    pool: PoolId,
    previous: Option<PoolId>,
) -> Result<ClusterMap, PlanError> {
    let replaced = map
        .server(id)
        .and_then(|s| s.pool.or(previous))
        .is_some_and(|p| p != pool);
    let mut next = replica::pool_seen(map, id, pool)?;
    if !replaced {
        return Ok(next);
    }
    for (name, i) in lost_with(map, id) {
        if let Some(e) = volume_mut(&mut next, &name)?.extents.get_mut(i) {
            e.lost = true;
        }
    }
    next.validate().map_err(PlanError::Invalid)?;
    Ok(next)
}

/// `POST /v1/volumes/{name}/clear-lost`: the map without the `lost` mark on extent `extent`
/// of `volume`, or on all its extents. An operator's acknowledgement that the data is gone:
/// the blocks then read as the pool holds them. Nothing marked: the map unchanged.
///
/// # Errors
/// Unknown volume, an extent index past the end.
pub fn clear_lost(
    map: &ClusterMap,
    volume: &str,
    extent: Option<usize>,
) -> Result<ClusterMap, PlanError> {
    step(map, |m| {
        let v = volume_mut(m, volume)?;
        let count = v.extents.len();
        match extent {
            Some(i) => {
                let e = v.extents.get_mut(i).ok_or(PlanError::NoSuchExtent {
                    volume: volume.to_owned(),
                    extent: i,
                    count,
                })?;
                e.lost = false;
            }
            None => {
                for e in &mut v.extents {
                    e.lost = false;
                }
            }
        }
        Ok(())
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::api::{AddServerRequest, CreateVolumeRequest};
    use crate::map::HostPolicy;
    use crate::plan::{add_server, create_volume};

    const MIB: u64 = 1 << 20;

    fn volume(name: &str, replicas: u32) -> CreateVolumeRequest {
        CreateVolumeRequest {
            name: name.to_owned(),
            size: 6 * MIB,
            block_size: None,
            extent_size: Some(MIB),
            replicas: Some(replicas),
            subsystem: "nqn.2026-11.dev.tessera:t".to_owned(),
            nsid: None,
            hosts: Some(HostPolicy::Any),
        }
    }

    /// Servers s1..s3 (s1's pool identity recorded), volume `two` of 6 extents with 2 copies,
    /// volume `one` of 6 extents with 1 copy.
    fn cluster() -> ClusterMap {
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
        m = create_volume(&m, &volume("two", 2)).unwrap();
        m = create_volume(&m, &volume("one", 1)).unwrap();
        pool_seen(&m, "s1", PoolId(1), None).unwrap()
    }

    fn on(m: &ClusterMap, v: &str, i: usize, id: &str) -> bool {
        m.volume(v).unwrap().extents[i]
            .replicas
            .iter()
            .any(|r| r.server == id)
    }

    fn marked(m: &ClusterMap) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for v in &m.volumes {
            for (i, e) in v.extents.iter().enumerate() {
                if e.lost {
                    out.push((v.name.clone(), i));
                }
            }
        }
        out
    }

    #[test]
    fn another_pool_marks_lost_exactly_the_extents_whose_only_in_sync_copy_was_there() {
        let mut m = cluster();
        assert!(marked(&m).is_empty(), "a first identity marks nothing");
        // Of the 2-copy extents s1 holds, the first one's other copy is stale: s1's copy is
        // its only in_sync one. The others keep an in_sync copy elsewhere.
        let held: Vec<usize> = (0..6).filter(|&i| on(&m, "two", i, "s1")).collect();
        assert!(held.len() >= 2, "the test needs two 2-copy extents on s1");
        let alone = held[0];
        for r in &mut m.volumes[0].extents[alone].replicas {
            if r.server != "s1" {
                r.state = ReplicaState::Stale;
            }
        }
        m.validate().unwrap();
        let ones: Vec<usize> = (0..6).filter(|&i| on(&m, "one", i, "s1")).collect();
        assert!(
            !ones.is_empty() && ones.len() < 6,
            "the test needs 1-copy extents on s1 and elsewhere"
        );
        let mut want = vec![("two".to_owned(), alone)];
        want.extend(ones.iter().map(|&i| ("one".to_owned(), i)));
        want.sort();

        // The same identity: nothing.
        assert_eq!(pool_seen(&m, "s1", PoolId(1), None).unwrap(), m);
        // Another identity: exactly those, in the generation recording it.
        let next = pool_seen(&m, "s1", PoolId(2), None).unwrap();
        assert_eq!(next.generation, m.generation + 1);
        assert_eq!(next.server("s1").unwrap().pool, Some(PoolId(2)));
        let mut got = marked(&next);
        got.sort();
        assert_eq!(got, want);
        // Still a valid map that serializes the mark, and parses back.
        let json = serde_json::to_string(&next).unwrap();
        assert_eq!(json.matches("\"lost\":true").count(), want.len());
        assert!(!json.contains("\"lost\":false"));
        assert_eq!(serde_json::from_str::<ClusterMap>(&json).unwrap(), next);
        // Seen again with that identity: unchanged, the mark stays.
        assert_eq!(pool_seen(&next, "s1", PoolId(2), None).unwrap(), next);

        // The operator clears one extent, then the whole volume.
        let one = clear_lost(&next, "one", Some(ones[0])).unwrap();
        assert_eq!(one.generation, next.generation + 1);
        assert!(!one.volume("one").unwrap().extents[ones[0]].lost);
        assert_eq!(marked(&one).len(), want.len() - 1);
        let all = clear_lost(&one, "one", None).unwrap();
        assert_eq!(marked(&all), vec![("two".to_owned(), alone)]);
        // Nothing left to clear: the same map, generation included.
        assert_eq!(clear_lost(&all, "one", None).unwrap(), all);
        assert!(matches!(
            clear_lost(&all, "one", Some(6)).unwrap_err(),
            PlanError::NoSuchExtent {
                extent: 6,
                count: 6,
                ..
            }
        ));
        assert!(matches!(
            clear_lost(&all, "nope", None).unwrap_err(),
            PlanError::UnknownVolume(_)
        ));
    }

    /// A server holding only single-copy extents has its identity in the manager's memory
    /// only (no generation of its own): back with another one, its extents are lost all the
    /// same; seen for the first time, nothing is.
    #[test]
    fn an_identity_kept_in_memory_only_counts_as_the_recorded_one() {
        let mut m = crate::plan::tests::two_servers();
        m = create_volume(&m, &volume("one", 1)).unwrap();
        let ones: Vec<usize> = (0..6).filter(|&i| on(&m, "one", i, "s1")).collect();
        assert!(!ones.is_empty());
        let first = pool_seen(&m, "s1", PoolId(1), None).unwrap();
        assert!(marked(&first).is_empty());
        let next = pool_seen(&m, "s1", PoolId(2), Some(PoolId(1))).unwrap();
        assert_eq!(next.server("s1").unwrap().pool, Some(PoolId(2)));
        let want: Vec<(String, usize)> = ones.iter().map(|&i| ("one".to_owned(), i)).collect();
        assert_eq!(marked(&next), want);
        assert!(marked(&pool_seen(&m, "s1", PoolId(1), Some(PoolId(1))).unwrap()).is_empty());
    }
}
