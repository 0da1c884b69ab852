//! Unit tests of moving a copy of a replicated extent (add, rebuild, drop).
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::Arc;

use super::*;
use crate::api::{AddServerRequest, CreateVolumeRequest};
use crate::map::{ClusterMap, HostPolicy, ServerState};
use crate::plan::{
    Change, add_server, apply, apply_cancelling, create_volume, rebuild_start, set_server_state,
};

const MIB: u64 = 1 << 20;

fn server(id: &str, n: u16, pool: u64, rack: Option<&str>) -> AddServerRequest {
    AddServerRequest {
        id: id.to_owned(),
        portal: format!("127.0.0.1:{}", 4420 + n).parse().unwrap(),
        internal: format!("127.0.0.1:{}", 4520 + n).parse().unwrap(),
        pool_bytes: pool,
        rack: rack.map(str::to_owned),
    }
}

/// Servers `ids` (each with a 16 MiB pool and its rack, if any), then volume `v` of 4 extents of
/// 1 MiB with `copies` copies each.
fn cluster(servers: &[(&str, Option<&str>)], copies: u32) -> ClusterMap {
    let mut m = ClusterMap::empty();
    m.generation = 1;
    for (n, (id, rack)) in servers.iter().enumerate() {
        m = add_server(&m, &server(id, u16::try_from(n).unwrap(), 16 * MIB, *rack)).unwrap();
    }
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

fn three() -> ClusterMap {
    cluster(&[("s1", None), ("s2", None), ("s3", None)], 2)
}

fn mv(extent: usize, from: Option<&str>, to: &str) -> Change {
    Change::StartMove(MoveRequest {
        volume: "v".to_owned(),
        extent,
        to: to.to_owned(),
        from: from.map(str::to_owned),
    })
}

fn ext(m: &ClusterMap, i: usize) -> &crate::map::ExtentEntry {
    &m.volume("v").unwrap().extents[i]
}

fn servers_of(m: &ClusterMap, i: usize) -> Vec<String> {
    ext(m, i)
        .replicas
        .iter()
        .map(|r| r.server.clone())
        .collect()
}

/// The extent of `m` whose copies are on exactly `on` (in order).
fn extent_on(m: &ClusterMap, on: &[&str]) -> usize {
    (0..4)
        .find(|i| servers_of(m, *i) == on)
        .unwrap_or_else(|| panic!("no extent on {on:?}"))
}

fn done(m: &ClusterMap, extent: usize, copy: &str) -> RebuildDoneRequest {
    RebuildDoneRequest {
        primary: m.primary(ext(m, extent)).unwrap().server.clone(),
        volume: "v".to_owned(),
        extent,
        server: copy.to_owned(),
        generation: m.generation,
    }
}

fn refusal(m: &ClusterMap, c: &Change) -> (u16, String) {
    let e = apply(m, c).unwrap_err();
    (e.http_status(), e.to_string())
}

#[test]
fn a_move_adds_a_rebuilding_copy_on_to_that_replaces_from() {
    let m = three();
    let i = extent_on(&m, &["s1", "s2"]);
    let free_s3 = m.free_bytes("s3");
    let m1 = apply(&m, &mv(i, Some("s2"), "s3")).unwrap();
    assert_eq!(m1.generation, m.generation + 1);
    let e = ext(&m1, i);
    assert_eq!(servers_of(&m1, i), ["s1", "s2", "s3"]);
    let new = &e.replicas[2];
    assert_eq!(new.state, ReplicaState::Rebuilding);
    assert_eq!(new.rebuilding_since, Some(m1.generation));
    assert_eq!(new.replaces.as_deref(), Some("s2"));
    // The other copies are as they were: both in_sync, s1 the primary.
    assert_eq!(e.replicas[..2], ext(&m, i).replicas[..]);
    assert_eq!(m1.primary(e).unwrap().server, "s1");
    assert_eq!(
        m1.free_bytes("s3"),
        free_s3 - MIB,
        "the new copy's range is reserved"
    );
    assert_eq!(
        pending(e).map(|(r, f)| (r.server.as_str(), f)),
        Some(("s3", "s2"))
    );
    // Owners unchanged: no phase 1a for the add.
    assert!(ClusterMap::changed_owners(&m, &m1).is_empty());
    m1.validate().unwrap();
}

#[test]
fn refusals_name_the_field_at_fault() {
    let m = cluster(&[("s1", None), ("s2", None), ("s3", None), ("s4", None)], 2);
    let i = extent_on(&m, &["s1", "s2"]);
    // `from` missing for a replicated volume: 400 naming the field.
    let (code, msg) = refusal(&m, &mv(i, None, "s3"));
    assert_eq!(code, 400, "{msg}");
    assert!(
        msg.contains("\"from\"") && msg.contains("2 copies"),
        "{msg}"
    );
    // `from` holds no copy.
    let (code, msg) = refusal(&m, &mv(i, Some("s3"), "s4"));
    assert_eq!(code, 409);
    assert!(
        msg.contains("\"from\": server \"s3\" holds no copy"),
        "{msg}"
    );
    // `to` holds one already.
    let (code, msg) = refusal(&m, &mv(i, Some("s2"), "s1"));
    assert_eq!(code, 409);
    assert!(msg.contains("s1"), "{msg}");
    // `to` unknown.
    assert_eq!(refusal(&m, &mv(i, Some("s2"), "s9")).0, 404);
    // Unknown extent.
    assert_eq!(refusal(&m, &mv(9, Some("s2"), "s3")).0, 404);
    // `to` not up: draining and down.
    for state in [ServerState::Draining, ServerState::Down] {
        let d = set_server_state(&m, "s3", state).unwrap();
        let (code, msg) = refusal(&d, &mv(i, Some("s2"), "s3"));
        assert_eq!(code, 409, "{msg}");
        assert!(msg.contains("s3"), "{msg}");
    }
    // `to` without room (a pool of nothing left).
    let mut full = m.clone();
    full.servers
        .iter_mut()
        .find(|s| s.id == "s4")
        .unwrap()
        .pool_bytes = 0;
    let (code, msg) = refusal(&full, &mv(i, Some("s2"), "s4"));
    assert_eq!(code, 409, "{msg}");
    assert!(msg.contains("s4"), "{msg}");
    // Nothing moved on any refusal.
    assert!(pending(ext(&m, i)).is_none());
}

#[test]
fn a_single_copy_volume_moves_as_before_and_from_must_be_its_owner() {
    let m = cluster(&[("s1", None), ("s2", None), ("s3", None)], 1);
    let owner = ext(&m, 0).replicas[0].server.clone();
    let other = ["s1", "s2", "s3"]
        .into_iter()
        .find(|s| *s != owner)
        .unwrap();
    let to = ["s1", "s2", "s3"]
        .into_iter()
        .find(|s| *s != owner && *s != other)
        .unwrap();
    let (code, msg) = refusal(&m, &mv(0, Some(other), to));
    assert_eq!(code, 409);
    assert!(msg.contains("is not the owner"), "{msg}");
    for from in [None, Some(owner.as_str())] {
        let m1 = apply(&m, &mv(0, from, to)).unwrap();
        let e = ext(&m1, 0);
        assert_eq!(e.moving.as_ref().unwrap().to.server, to, "copy-then-switch");
        assert_eq!(e.replicas.len(), 1);
        assert!(pending(e).is_none());
    }
}

#[test]
fn rebuild_done_of_the_new_copy_makes_it_in_sync_and_drops_from_in_the_same_generation() {
    let m = three();
    let i = extent_on(&m, &["s1", "s2"]);
    let m1 = apply(&m, &mv(i, Some("s2"), "s3")).unwrap();
    let free_s2 = m1.free_bytes("s2");
    let m2 = apply(&m1, &Change::RebuildDone(done(&m1, i, "s3"))).unwrap();
    assert_eq!(m2.generation, m1.generation + 1, "one generation");
    let e = ext(&m2, i);
    assert_eq!(servers_of(&m2, i), ["s1", "s3"]);
    assert!(e.replicas.iter().all(|r| r.state == ReplicaState::InSync));
    assert!(
        e.replicas
            .iter()
            .all(|r| r.replaces.is_none() && r.rebuilding_since.is_none())
    );
    assert_eq!(m2.free_bytes("s2"), free_s2 + MIB, "s2's range is free");
    assert_eq!(m2.primary(e).unwrap().server, "s1");
    assert!(ClusterMap::changed_owners(&m1, &m2).is_empty());
    // The exported `plan::rebuild_done` is the same change.
    assert_eq!(
        crate::plan::rebuild_done(&m1, &done(&m1, i, "s3")).unwrap(),
        m2
    );
    // A repeated report changes nothing.
    assert_eq!(
        apply(&m2, &Change::RebuildDone(done(&m2, i, "s3"))).unwrap(),
        m2
    );
    // A report for the new copy from an earlier rebuild (before the move) is refused.
    let mut old = done(&m1, i, "s3");
    old.generation = m.generation;
    assert_eq!(
        apply(&m1, &Change::RebuildDone(old))
            .unwrap_err()
            .http_status(),
        409
    );
    // A report about the replaced copy (in sync already) changes nothing and drops nothing.
    assert_eq!(
        apply(&m1, &Change::RebuildDone(done(&m1, i, "s2"))).unwrap(),
        m1
    );
}

#[test]
fn the_primary_replaced_the_next_copy_leads_and_phase_1a_fences_the_old_one() {
    let m = three();
    let i = extent_on(&m, &["s1", "s2"]);
    let m1 = apply(&m, &mv(i, Some("s1"), "s3")).unwrap();
    assert_eq!(m1.primary(ext(&m1, i)).unwrap().server, "s1");
    let m2 = apply(&m1, &Change::RebuildDone(done(&m1, i, "s3"))).unwrap();
    assert_eq!(servers_of(&m2, i), ["s2", "s3"]);
    assert_eq!(m2.primary(ext(&m2, i)).unwrap().server, "s2");
    // The former primary is the old owner of phase 1a: it drains its writes in flight before
    // any other server installs the map.
    let lost = ClusterMap::changed_owners(&m1, &m2);
    assert_eq!(lost.len(), 1);
    assert_eq!((lost[0].extent, lost[0].old_owner.as_str()), (i, "s1"));
    // The dropped copy led: the new copy is rebuilt again, whole, from the new primary (a
    // write of s1's in flight may have reached it and not s2), then turns `in_sync`.
    let s3 = &ext(&m2, i).replicas[1];
    assert_eq!(s3.state, ReplicaState::Rebuilding);
    assert_eq!(s3.rebuilding_since, Some(m2.generation));
    assert!(s3.replaces.is_none());
    let m3 = apply(&m2, &Change::RebuildDone(done(&m2, i, "s3"))).unwrap();
    assert!(
        ext(&m3, i)
            .replicas
            .iter()
            .all(|r| r.state == ReplicaState::InSync)
    );
}

#[test]
fn a_dead_servers_stale_copy_is_re_placed() {
    let m = three();
    let i = extent_on(&m, &["s1", "s2"]);
    // s1 dies: its copy goes stale, s2 is the primary.
    let d = set_server_state(&m, "s1", ServerState::Down).unwrap();
    assert_eq!(ext(&d, i).replicas[0].state, ReplicaState::Stale);
    assert_eq!(d.primary(ext(&d, i)).unwrap().server, "s2");
    let m1 = apply(&d, &mv(i, Some("s1"), "s3")).unwrap();
    assert_eq!(servers_of(&m1, i), ["s1", "s2", "s3"]);
    let r = done(&m1, i, "s3");
    assert_eq!(r.primary, "s2");
    let m2 = apply(&m1, &Change::RebuildDone(r)).unwrap();
    assert_eq!(servers_of(&m2, i), ["s2", "s3"]);
    assert!(
        ext(&m2, i)
            .replicas
            .iter()
            .all(|r| r.state == ReplicaState::InSync)
    );
    // s1 is down: phase 1a does not wait for it (the coordinator skips down old owners), and
    // it holds nothing of this extent any more.
    assert!(
        !m2.volume("v").unwrap().extents[i]
            .replicas
            .iter()
            .any(|r| r.server == "s1")
    );
}

#[test]
fn a_second_move_of_the_extent_is_refused_while_one_is_pending() {
    let m = cluster(&[("s1", None), ("s2", None), ("s3", None), ("s4", None)], 2);
    let i = extent_on(&m, &["s1", "s2"]);
    let m1 = apply(&m, &mv(i, Some("s2"), "s3")).unwrap();
    for c in [mv(i, Some("s1"), "s4"), mv(i, Some("s2"), "s4")] {
        let (code, msg) = refusal(&m1, &c);
        assert_eq!(code, 409);
        assert!(
            msg.contains("already has a copy move pending")
                && msg.contains("\"s3\" replacing the one on \"s2\""),
            "{msg}"
        );
    }
    // Another extent moves meanwhile.
    let j = (0..4).find(|j| *j != i).unwrap();
    let from = ext(&m1, j).replicas[0].server.clone();
    let to = ["s1", "s2", "s3", "s4"]
        .into_iter()
        .find(|s| !servers_of(&m1, j).iter().any(|o| o == s))
        .unwrap();
    apply(&m1, &mv(j, Some(&from), to)).unwrap();
}

#[test]
fn to_down_during_the_rebuild_the_new_copy_goes_stale_and_a_new_move_can_replace_it() {
    let m = cluster(&[("s1", None), ("s2", None), ("s3", None), ("s4", None)], 2);
    let i = extent_on(&m, &["s1", "s2"]);
    let m1 = apply(&m, &mv(i, Some("s2"), "s3")).unwrap();
    // s3 goes down: its new copy is stale (no writes), s2's stays.
    let d = set_server_state(&m1, "s3", ServerState::Down).unwrap();
    let e = ext(&d, i);
    assert_eq!(servers_of(&d, i), ["s1", "s2", "s3"]);
    assert_eq!(e.replicas[2].state, ReplicaState::Stale);
    assert_eq!(e.replicas[2].replaces.as_deref(), Some("s2"));
    assert_eq!(e.replicas[1].state, ReplicaState::InSync);
    // Back up: rebuilt again, then the move finishes.
    let up = set_server_state(&d, "s3", ServerState::Up).unwrap();
    let r = rebuild_start(&up, "s3").unwrap();
    assert_eq!(ext(&r, i).replicas[2].state, ReplicaState::Rebuilding);
    let fin = apply(&r, &Change::RebuildDone(done(&r, i, "s3"))).unwrap();
    assert_eq!(servers_of(&fin, i), ["s1", "s3"]);
    // Or, s3 still down, a new move gives the pending copy up (its range freed).
    let free_s3 = d.free_bytes("s3");
    let m2 = apply(&d, &mv(i, Some("s2"), "s4")).unwrap();
    assert_eq!(servers_of(&m2, i), ["s1", "s2", "s4"]);
    assert_eq!(m2.free_bytes("s3"), free_s3 + MIB);
    assert_eq!(pending(ext(&m2, i)).unwrap().1, "s2");
}

#[test]
fn racks_a_copy_goes_to_a_rack_no_remaining_copy_uses_when_one_has_room() {
    // r1: s1, s3; r2: s2; r3: s4.
    let racks = [
        ("s1", Some("r1")),
        ("s2", Some("r2")),
        ("s3", Some("r1")),
        ("s4", Some("r3")),
    ];
    let m = cluster(&racks, 2);
    let i = extent_on(&m, &["s1", "s2"]);
    // Replacing s2 (r2) by s3 (r1, like s1) while s4 (r3) has room: refused, naming s4.
    let (code, msg) = refusal(&m, &mv(i, Some("s2"), "s3"));
    assert_eq!(code, 409);
    assert!(
        msg.contains("rack \"r1\"") && msg.contains("\"s4\""),
        "{msg}"
    );
    apply(&m, &mv(i, Some("s2"), "s4")).unwrap();
    // Replacing s1 (r1) by s3 (r1): s2 is r2, s3 is r1: fine.
    apply(&m, &mv(i, Some("s1"), "s3")).unwrap();
    // With s4 down, no other rack has room: s3 is allowed (the copies share a rack, as
    // placement would).
    let d = set_server_state(&m, "s4", ServerState::Down).unwrap();
    apply(&d, &mv(i, Some("s2"), "s3")).unwrap();
}

#[test]
fn a_copy_move_is_not_a_switch_to_give_back() {
    let m = three();
    let i = extent_on(&m, &["s1", "s2"]);
    let m1 = apply(&m, &mv(i, Some("s1"), "s3")).unwrap();
    let m2 = apply(&m1, &Change::RebuildDone(done(&m1, i, "s3"))).unwrap();
    // While m2 is in phase 1a (chain [m1, m2]), s2 (the new first copy) is marked down.
    let chain = vec![Arc::new(m1.clone()), Arc::new(m2.clone())];
    let change = Change::SetServerState {
        id: "s2".to_owned(),
        state: ServerState::Down,
    };
    let (next, cancelled) = apply_cancelling(&m2, &change, &chain).unwrap();
    assert!(cancelled.is_empty(), "{cancelled:?}");
    assert_eq!(servers_of(&next, i), ["s2", "s3"]);
    // The drop of the primary had s3 rebuilt again from s2: with s2 down the extent has no
    // primary until s2 is back (the price of the resync; "Moving a copy").
    assert_eq!(ext(&next, i).replicas[1].state, ReplicaState::Rebuilding);
    assert!(next.primary(ext(&next, i)).is_none());
}

#[test]
fn the_map_records_the_replaced_copy_and_older_maps_load() {
    let m = three();
    let i = extent_on(&m, &["s1", "s2"]);
    let m1 = apply(&m, &mv(i, Some("s2"), "s3")).unwrap();
    let json = serde_json::to_string(&m1).unwrap();
    assert!(json.contains(r#""replaces":"s2""#), "{json}");
    let back: ClusterMap = serde_json::from_str(&json).unwrap();
    assert_eq!(back, m1);
    back.validate().unwrap();
    // A map stored before the field: no `replaces` anywhere, written back without it.
    let old = serde_json::to_string(&m).unwrap();
    assert!(!old.contains("replaces"));
    let loaded: ClusterMap = serde_json::from_str(&old).unwrap();
    assert_eq!(loaded, m);
    let r: Replica = serde_json::from_str(r#"{"server":"s1","offset":0}"#).unwrap();
    assert_eq!(r.replaces, None);
    // A map with two pending copies, or one replacing a server without a copy, is invalid.
    let mut bad = m1.clone();
    bad.volumes[0].extents[i].replicas[2].replaces = Some("s3".to_owned());
    assert!(bad.validate().is_err());
    let mut bad = m1;
    bad.volumes[0].extents[i].replicas[2].replaces = None;
    assert!(bad.validate().is_err(), "three copies of a two-copy volume");
}

/// The primary replaced is not the first copy (that one is `stale`): no phase 1a fences it, so
/// a write it ordered under the older map may have reached some copies only. The drop map
/// treats it as a failover: the copies but the new primary are rebuilt whole from it.
#[test]
fn a_primary_that_is_not_the_first_copy_replaced_the_others_are_rebuilt_from_the_next() {
    let m = cluster(&[("s1", None), ("s2", None), ("s3", None), ("s4", None)], 3);
    let i = extent_on(&m, &["s1", "s2", "s3"]);
    // s1 dies: s2 leads, and the failover has s3 rebuilt whole; s3's rebuild completes.
    let d = set_server_state(&m, "s1", ServerState::Down).unwrap();
    assert_eq!(d.primary(ext(&d, i)).unwrap().server, "s2");
    let d = apply(&d, &Change::RebuildDone(done(&d, i, "s3"))).unwrap();
    assert_eq!(ext(&d, i).replicas[2].state, ReplicaState::InSync);
    // The copy on s2 (the primary, not replicas[0]) moves to s4.
    let m1 = apply(&d, &mv(i, Some("s2"), "s4")).unwrap();
    assert_eq!(servers_of(&m1, i), ["s1", "s2", "s3", "s4"]);
    let m2 = apply(&m1, &Change::RebuildDone(done(&m1, i, "s4"))).unwrap();
    assert_eq!(m2.generation, m1.generation + 1, "one generation");
    assert_eq!(servers_of(&m2, i), ["s1", "s3", "s4"]);
    let e = ext(&m2, i);
    assert_eq!(m2.primary(e).unwrap().server, "s3");
    let s4 = &e.replicas[2];
    assert_eq!(s4.state, ReplicaState::Rebuilding, "{e:?}");
    assert_eq!(s4.rebuilding_since, Some(m2.generation));
    assert!(s4.replaces.is_none());
    assert_eq!(e.replicas[0].state, ReplicaState::Stale);
    // No owner change: no phase 1a.
    assert!(ClusterMap::changed_owners(&m1, &m2).is_empty());
    // The new copy's second rebuild, reported by the new primary, makes it `in_sync`.
    let m3 = apply(&m2, &Change::RebuildDone(done(&m2, i, "s4"))).unwrap();
    assert!(
        ext(&m3, i).replicas[1..]
            .iter()
            .all(|r| r.state == ReplicaState::InSync)
    );
    // A copy that does not lead moves without touching the others.
    let m4 = apply(&m3, &mv(i, Some("s4"), "s2")).unwrap();
    let m5 = apply(&m4, &Change::RebuildDone(done(&m4, i, "s2"))).unwrap();
    assert_eq!(servers_of(&m5, i), ["s1", "s3", "s2"]);
    assert_eq!(m5.primary(ext(&m5, i)).unwrap().server, "s3");
    assert!(
        ext(&m5, i).replicas[1..]
            .iter()
            .all(|r| r.state == ReplicaState::InSync),
        "{:?}",
        ext(&m5, i)
    );
}
