//! Coordinator tests: the two phases step by step, and a property test over random event
//! orders checking the protocol's ordering rules.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::api::{CreateVolumeRequest, MoveReadyRequest, MoveRequest};
use crate::map::{ClusterMap, HostPolicy};
use crate::plan;

const MIB: u64 = 1 << 20;

fn base() -> ClusterMap {
    let m = plan::tests::two_servers();
    plan::create_volume(
        &m,
        &CreateVolumeRequest {
            name: "a".into(),
            size: 16 * MIB,
            block_size: None,
            extent_size: Some(8 * MIB),
            replicas: None,
            subsystem: "nqn.2026-11.dev.tessera:t".into(),
            nsid: None,
            hosts: Some(HostPolicy::Any),
        },
    )
    .unwrap()
}

/// Maps g+1 (start moving extent 0 to the other server) and g+2 (switch it).
fn move_maps(m: &ClusterMap) -> (ClusterMap, ClusterMap, String) {
    let owner = m.owner("a", 0).unwrap().server.clone();
    let to = if owner == "s1" { "s2" } else { "s1" };
    let m1 = plan::start_move(
        m,
        &MoveRequest {
            volume: "a".into(),
            extent: 0,
            to: to.into(),
            from: None,
        },
    )
    .unwrap();
    let m2 = plan::switch_move(
        &m1,
        &MoveReadyRequest {
            server: owner.clone(),
            volume: "a".into(),
            extent: 0,
            generation: m1.generation,
        },
    )
    .unwrap();
    (m1, m2, owner)
}

fn ack(server: &str, generation: u64) -> Event {
    Event::Ack {
        server: server.into(),
        generation,
    }
}

fn published_to_clients(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::PublishToClients(m) => Some(m.generation),
            _ => None,
        })
        .collect()
}

#[test]
fn change_without_owner_change_skips_phase_1a() {
    let m = base();
    let g = m.generation;
    let (m1, _, _) = move_maps(&m);
    let mut c = Coordinator::new(m);
    let a = c.handle(Event::Committed(Arc::new(m1.clone())));
    assert!(matches!(
        &a[0],
        Action::StartTimer {
            phase: Phase::Servers,
            ms: PHASE_1B_TIMEOUT_MS,
            ..
        }
    ));
    assert!(matches!(&a[1], Action::PublishToServers(x) if x.generation == g + 1));
    assert_eq!(c.server_map(Some("s1")).generation, g + 1);
    assert_eq!(c.client_map().generation, g);
    assert!(c.handle(ack("s1", g + 1)).is_empty());
    assert_eq!(
        c.client_map().generation,
        g,
        "clients wait for every up server"
    );
    let a = c.handle(ack("s2", g + 1));
    assert_eq!(published_to_clients(&a), [g + 1]);
    assert_eq!(c.client_map().generation, g + 1);
    assert!(c.publishing().is_none());
}

#[test]
fn switch_goes_to_the_old_owner_first() {
    let m = base();
    let (m1, m2, owner) = move_maps(&m);
    let other = if owner == "s1" { "s2" } else { "s1" };
    let mut c = Coordinator::new(m1.clone());
    let g2 = m2.generation;
    let a = c.handle(Event::Committed(Arc::new(m2)));
    assert_eq!(
        a[0],
        Action::SendToServers {
            servers: vec![owner.clone()],
            map: c.server_map(Some(&owner)),
        }
    );
    assert_eq!(c.server_map(Some(&owner)).generation, g2);
    assert_eq!(
        c.server_map(Some(other)).generation,
        m1.generation,
        "others wait for 1a"
    );
    assert_eq!(c.server_map(None).generation, m1.generation);
    // An ack from a server that is not an old owner does not end phase 1a.
    assert!(c.handle(ack(other, g2)).is_empty());
    // 1a timeout: re-send, never skip.
    let a = c.handle(Event::Timeout {
        generation: g2,
        phase: Phase::OldOwners,
    });
    assert!(matches!(&a[0], Action::SendToServers { servers, .. } if *servers == [owner.clone()]));
    let a = c.handle(ack(&owner, g2));
    // `other` acked already, so phase 1b has nothing to wait for: committed at once.
    assert!(
        a.iter()
            .any(|x| matches!(x, Action::PublishToServers(m) if m.generation == g2))
    );
    assert_eq!(published_to_clients(&a), [g2]);
}

#[test]
fn phase_1b_deadline_commits_and_marks_late() {
    let m = base();
    let (m1, _, _) = move_maps(&m);
    let g = m1.generation;
    let mut c = Coordinator::new(m);
    let _ = c.handle(Event::Committed(Arc::new(m1)));
    let _ = c.handle(ack("s1", g));
    // A stale timer is ignored.
    assert!(
        c.handle(Event::Timeout {
            generation: g - 1,
            phase: Phase::Servers
        })
        .is_empty()
    );
    let a = c.handle(Event::Timeout {
        generation: g,
        phase: Phase::Servers,
    });
    assert_eq!(published_to_clients(&a), [g]);
    assert!(c.is_late("s2") && !c.is_late("s1"));
    let _ = c.handle(ack("s2", g));
    assert!(!c.is_late("s2"));
    assert_eq!(c.acked("s2"), g);
}

#[test]
fn changes_queue_behind_the_publication() {
    let m = base();
    let (m1, m2, owner) = move_maps(&m);
    let (g1, g2) = (m1.generation, m2.generation);
    let mut c = Coordinator::new(m);
    let _ = c.handle(Event::Committed(Arc::new(m1)));
    let a = c.handle(Event::Committed(Arc::new(m2)));
    assert!(a.is_empty(), "g2 waits for g1");
    assert_eq!(c.publishing().unwrap().3, 1);
    assert_eq!(c.head_generation(), g2);
    let _ = c.handle(ack("s1", g1));
    let a = c.handle(ack("s2", g1));
    assert_eq!(published_to_clients(&a), [g1]);
    assert!(matches!(&a[1], Action::SendToServers { servers, .. } if *servers == [owner.clone()]));
    assert_eq!(c.publishing().unwrap().1, Phase::OldOwners);
}

#[test]
fn old_owner_declared_down_is_no_longer_awaited() {
    let m = base();
    let (m1, m2, owner) = move_maps(&m);
    let mut c = Coordinator::new(m1);
    let _ = c.handle(Event::Committed(Arc::new(m2.clone())));
    let down = plan::set_server_state(&m2, &owner, crate::map::ServerState::Down).unwrap();
    let a = c.handle(Event::Committed(Arc::new(down)));
    assert!(
        a.iter()
            .any(|x| matches!(x, Action::PublishToServers(m) if m.generation == m2.generation))
    );
}

/// A switch still queued when the map marking its old owner down is stored (the old owner is
/// excused on arrival only from the publication in progress) is not held by it either once it
/// reaches phase 1a (the simulation's seed 0 waited forever).
#[test]
fn queued_switch_does_not_wait_for_an_old_owner_marked_down_later() {
    let m = base();
    let (m1, m2, owner) = move_maps(&m);
    let other = if owner == "s1" { "s2" } else { "s1" };
    let (g1, g2) = (m1.generation, m2.generation);
    let mut c = Coordinator::new(m);
    let _ = c.handle(Event::Committed(Arc::new(m1)));
    let _ = c.handle(Event::Committed(Arc::new(m2.clone())));
    let down = plan::set_server_state(&m2, &owner, crate::map::ServerState::Down).unwrap();
    let gd = down.generation;
    let _ = c.handle(Event::Committed(Arc::new(down)));
    assert_eq!(c.publishing().unwrap().0, g1, "g1 still in phase 1b");
    assert_eq!(c.publishing().unwrap().3, 2, "switch and mark-down queued");
    // The old owner acked the move's start, then hung.
    let _ = c.handle(ack(&owner, g1));
    let a = c.handle(ack(other, g1));
    assert_eq!(published_to_clients(&a), [g1]);
    // The switch's phase 1a awaits nobody: straight to 1b, then the mark-down map follows.
    assert!(
        a.iter()
            .any(|x| matches!(x, Action::PublishToServers(m) if m.generation == g2)),
        "the switch waits for its old owner marked down in g{gd}: {a:?}"
    );
    assert!(
        !a.iter().any(
            |x| matches!(x, Action::SendToServers { servers, .. } if servers.contains(&owner))
        )
    );
    let a = c.handle(ack(other, g2));
    assert_eq!(published_to_clients(&a), [g2]);
    let a = c.handle(ack(other, gd));
    assert_eq!(published_to_clients(&a), [gd]);
    assert!(c.publishing().is_none());
}

fn publishes_to_servers(actions: &[Action], g: u64) -> bool {
    actions
        .iter()
        .any(|x| matches!(x, Action::PublishToServers(m) if m.generation == g))
}

/// With a down fence, an old owner marked down is released only after the fence has passed
/// (counted in 1a re-send periods, one more for the period the map arrived in); asking to mark
/// it down again is pointless meanwhile; its own ack still ends the wait at once.
#[test]
fn an_old_owner_marked_down_is_released_after_the_down_fence() {
    let m = base();
    let (m1, m2, owner) = move_maps(&m);
    let g2 = m2.generation;
    let timeout = Event::Timeout {
        generation: g2,
        phase: Phase::OldOwners,
    };
    let periods = DOWN_FENCE_MS / PHASE_1A_RESEND_MS + 1;
    let down = plan::set_server_state(&m2, &owner, crate::map::ServerState::Down).unwrap();
    let mut c = Coordinator::new(m1.clone())
        .with_down_fence(DOWN_FENCE_MS)
        .with_old_owner_timeout(PHASE_1A_RESEND_MS);
    let _ = c.handle(Event::Committed(Arc::new(m2.clone())));
    let a = c.handle(Event::Committed(Arc::new(down.clone())));
    assert!(!publishes_to_servers(&a, g2), "released at once: {a:?}");
    for i in 1..periods {
        let a = c.handle(timeout.clone());
        assert!(!publishes_to_servers(&a, g2), "released after {i} periods");
        assert!(mark_downs(&a).is_empty(), "already marked down: {a:?}");
        assert_eq!(c.publishing().unwrap().2, std::slice::from_ref(&owner));
    }
    let a = c.handle(timeout.clone());
    assert!(publishes_to_servers(&a, g2), "{a:?}");
    // Its own ack during the fence ends the wait at once.
    let mut c = Coordinator::new(m1).with_down_fence(DOWN_FENCE_MS);
    let _ = c.handle(Event::Committed(Arc::new(m2)));
    let _ = c.handle(Event::Committed(Arc::new(down)));
    let _ = c.handle(timeout.clone());
    let a = c.handle(ack(&owner, g2));
    assert!(publishes_to_servers(&a, g2), "{a:?}");
}

/// The fence also holds for a switch that reaches phase 1a from the queue after the map
/// marking its old owner down was stored.
#[test]
fn a_queued_switch_releases_an_old_owner_marked_down_after_the_down_fence() {
    let m = base();
    let (m1, m2, owner) = move_maps(&m);
    let other = if owner == "s1" { "s2" } else { "s1" };
    let (g1, g2) = (m1.generation, m2.generation);
    let mut c = Coordinator::new(m).with_down_fence(DOWN_FENCE_MS);
    let _ = c.handle(Event::Committed(Arc::new(m1)));
    let _ = c.handle(Event::Committed(Arc::new(m2.clone())));
    let down = plan::set_server_state(&m2, &owner, crate::map::ServerState::Down).unwrap();
    let _ = c.handle(Event::Committed(Arc::new(down)));
    let _ = c.handle(ack(&owner, g1));
    let a = c.handle(ack(other, g1));
    assert_eq!(published_to_clients(&a), [g1]);
    assert!(!publishes_to_servers(&a, g2), "released at once: {a:?}");
    assert_eq!(c.publishing().unwrap().1, Phase::OldOwners);
    let timeout = Event::Timeout {
        generation: g2,
        phase: Phase::OldOwners,
    };
    let periods = DOWN_FENCE_MS / PHASE_1A_RESEND_MS + 1;
    for _ in 1..periods {
        assert!(!publishes_to_servers(&c.handle(timeout.clone()), g2));
    }
    let a = c.handle(timeout);
    assert!(publishes_to_servers(&a, g2), "{a:?}");
    assert_eq!(c.publishing().unwrap().1, Phase::Servers);
}

/// The map the manager stores when the operator marks `id` down over `head`, with the
/// cancellation of moves and uncommitted switches to it (`plan::apply_cancelling`, against the
/// coordinator's newest map whose phase 1a is done).
fn mark_down_map(
    c: &Coordinator,
    head: &ClusterMap,
    id: &str,
) -> (ClusterMap, Vec<plan::Cancelled>) {
    let change = plan::Change::SetServerState {
        id: id.into(),
        state: crate::map::ServerState::Down,
    };
    plan::apply_cancelling(head, &change, &c.phase_1a_chain()).unwrap()
}

fn sends(actions: &[Action], g: u64) -> bool {
    actions
        .iter()
        .any(|x| matches!(x, Action::SendToServers { map, .. } if map.generation == g))
}

/// The new owner of a switch waiting in phase 1a hangs and is marked down: the mark-down map
/// gives the extent back to the old owner at the same offset (`moving` cleared), the switch is
/// abandoned (never sent again, never any server's map), and the mark-down map is published
/// with its phase 1a computed against the committed map: nobody is waited for there (the old
/// owner gains nothing it lacks, the new owner is down), and it commits on the old owner's ack.
#[test]
fn marking_a_switchs_new_owner_down_in_phase_1a_cancels_the_switch() {
    let m = base();
    let (m1, m2, owner) = move_maps(&m);
    let new_owner = if owner == "s1" { "s2" } else { "s1" };
    let (g1, g2) = (m1.generation, m2.generation);
    let old_offset = m1.owner("a", 0).unwrap().offset;
    let mut c = Coordinator::new(m1.clone()).with_down_fence(DOWN_FENCE_MS);
    let a = c.handle(Event::Committed(Arc::new(m2.clone())));
    assert!(sends(&a, g2));
    let (g3map, cancelled) = mark_down_map(&c, &m2, new_owner);
    assert_eq!(
        cancelled,
        [plan::Cancelled {
            volume: "a".into(),
            extent: 0,
            owner: owner.clone(),
            to: new_owner.into(),
            switch: true,
            moving_again: false,
        }]
    );
    let back = &g3map.volume("a").unwrap().extents[0];
    assert_eq!(back.replicas[0].server, owner);
    assert_eq!(back.replicas[0].offset, old_offset, "same pool offset");
    assert!(back.moving.is_none());
    let g3 = g3map.generation;
    assert!(ClusterMap::changed_owners(&m1, &g3map).is_empty());
    let a = c.handle(Event::Committed(Arc::new(g3map)));
    assert_eq!(c.abandoned(), g2);
    assert!(!sends(&a, g2), "{a:?}");
    assert!(publishes_to_servers(&a, g3), "{a:?}");
    assert_eq!(c.publishing().unwrap().1, Phase::Servers);
    // Nobody fetches the abandoned map any more; the old owner gets g3.
    assert_eq!(c.server_map(Some(&owner)).generation, g3);
    assert_eq!(c.server_map(Some(new_owner)).generation, g3);
    assert_eq!(c.client_map().generation, g1);
    // A late ack of g2 moves nothing; the old owner's ack of g3 commits it (the new owner is
    // down: not waited for).
    assert!(c.handle(ack(&owner, g2)).is_empty());
    let a = c.handle(ack(&owner, g3));
    assert_eq!(published_to_clients(&a), [g3]);
    assert!(c.publishing().is_none());
}

/// The same with the switch still queued (behind the move's start, in phase 1b) when its new
/// owner is marked down: the switch is dropped from the queue, never published.
#[test]
fn marking_a_queued_switchs_new_owner_down_cancels_the_switch() {
    let m = base();
    let (m1, m2, owner) = move_maps(&m);
    let new_owner = if owner == "s1" { "s2" } else { "s1" };
    let (g1, g2) = (m1.generation, m2.generation);
    let mut c = Coordinator::new(m);
    let _ = c.handle(Event::Committed(Arc::new(m1)));
    let _ = c.handle(Event::Committed(Arc::new(m2.clone())));
    let (g3map, cancelled) = mark_down_map(&c, &m2, new_owner);
    assert_eq!(cancelled.len(), 1);
    let g3 = g3map.generation;
    let _ = c.handle(Event::Committed(Arc::new(g3map)));
    // The new owner, marked down, is not waited for in g1's phase 1b either.
    let a = c.handle(ack(&owner, g1));
    assert_eq!(published_to_clients(&a), [g1]);
    assert!(!sends(&a, g2) && !publishes_to_servers(&a, g2), "{a:?}");
    assert!(publishes_to_servers(&a, g3), "{a:?}");
    assert_eq!(c.abandoned(), g2);
    let a = c.handle(ack(&owner, g3));
    assert_eq!(published_to_clients(&a), [g3]);
}

/// An extent that a map not through phase 1a adds (a resize queued behind a switch), then
/// moved and switched to a server that is marked down: that switch is given back too, to the
/// extent's first owner and offset (the simulation's seed 173: the chain's first map lacks the
/// extent, so the switch was not seen and waited forever for a final copy to a hung server).
#[test]
fn a_switch_of_an_extent_added_in_phase_1a_is_given_back() {
    let m = base();
    let (m1, m2, owner) = move_maps(&m);
    let new_owner = if owner == "s1" { "s2" } else { "s1" };
    let mut c = Coordinator::new(m1.clone());
    let a = c.handle(Event::Committed(Arc::new(m2.clone())));
    assert!(sends(&a, m2.generation), "{a:?}");
    // Each change planned as the manager does (holding the chain's ranges), then stored.
    let store = |c: &mut Coordinator, head: &ClusterMap, change: plan::Change| {
        let (next, cancelled) = plan::apply_cancelling(head, &change, &c.phase_1a_chain()).unwrap();
        assert!(cancelled.is_empty());
        let _ = c.handle(Event::Committed(Arc::new(next.clone())));
        next
    };
    let m3 = store(
        &mut c,
        &m2,
        plan::Change::AddServer(plan::tests::server("s3", 2, 64 * MIB)),
    );
    let m4 = store(
        &mut c,
        &m3,
        plan::Change::ResizeVolume {
            name: "a".into(),
            size: 24 * MIB,
        },
    );
    let born = m4.owner("a", 2).unwrap().clone();
    // Neither its owner nor the new owner of extent 0 (whose switch goes to an up server).
    let to = ["s1", "s2", "s3"]
        .into_iter()
        .find(|s| *s != born.server && *s != new_owner)
        .unwrap();
    let m5 = store(
        &mut c,
        &m4,
        plan::Change::StartMove(MoveRequest {
            volume: "a".into(),
            extent: 2,
            to: to.into(),
            from: None,
        }),
    );
    let m6 = store(
        &mut c,
        &m5,
        plan::Change::SwitchMove(MoveReadyRequest {
            server: born.server.clone(),
            volume: "a".into(),
            extent: 2,
            generation: m5.generation,
        }),
    );
    let (g7map, cancelled) = mark_down_map(&c, &m6, to);
    assert!(
        cancelled
            .iter()
            .any(|x| x.extent == 2 && x.switch && x.owner == born.server && x.to == to),
        "{cancelled:?}"
    );
    assert_eq!(
        g7map.owner("a", 2),
        Some(&born),
        "its first owner, same offset"
    );
    assert!(ClusterMap::changed_owners(&m1, &g7map).is_empty());
    let _ = c.handle(Event::Committed(Arc::new(g7map)));
    assert_eq!(c.abandoned(), m6.generation);
}

/// What is not cancelled: a switch whose phase 1a is done (its new owner may have taken
/// writes) stays; a move only started is cancelled (`moving` cleared, the owner keeps it); a
/// switch whose old range was taken meanwhile stays (and waits).
#[test]
fn cancelling_keeps_switches_through_phase_1a_and_taken_ranges() {
    let m = base();
    let (m1, m2, owner) = move_maps(&m);
    let new_owner = if owner == "s1" { "s2" } else { "s1" };
    // A move only started: cancelled.
    let c = Coordinator::new(m1.clone());
    let (g, cancelled) = mark_down_map(&c, &m1, new_owner);
    assert_eq!(cancelled.len(), 1);
    assert!(!cancelled[0].switch);
    assert!(g.volume("a").unwrap().extents[0].moving.is_none());
    assert_eq!(g.owner("a", 0).unwrap().server, owner);
    // A switch through phase 1a (the coordinator's server map is g2): kept.
    let mut c = Coordinator::new(m1.clone());
    let _ = c.handle(Event::Committed(Arc::new(m2.clone())));
    let _ = c.handle(ack(&owner, m2.generation));
    assert_eq!(c.server_map(None).generation, m2.generation);
    let (g, cancelled) = mark_down_map(&c, &m2, new_owner);
    assert!(cancelled.is_empty());
    assert_eq!(g.owner("a", 0).unwrap().server, new_owner);
    // While the switch is not through phase 1a, the manager allocates nothing in the old
    // owner's range (plain `plan::create_volume` would: first fit).
    let mut c = Coordinator::new(m1.clone());
    let _ = c.handle(Event::Committed(Arc::new(m2.clone())));
    let old = m1.owner("a", 0).unwrap().clone();
    let create = CreateVolumeRequest {
        name: "b".into(),
        size: 8 * MIB,
        block_size: None,
        extent_size: Some(8 * MIB),
        replicas: None,
        subsystem: "nqn.2026-11.dev.tessera:t".into(),
        nsid: None,
        hosts: None,
    };
    let (held, _) = plan::apply_cancelling(
        &m2,
        &plan::Change::CreateVolume(create.clone()),
        &c.phase_1a_chain(),
    )
    .unwrap();
    assert_eq!(held.owner("b", 0).unwrap().server, old.server);
    assert_ne!(
        held.owner("b", 0).unwrap().offset,
        old.offset,
        "held range allocated"
    );
    // Were it taken anyway, the switch would stay (and wait).
    let m3 = plan::create_volume(&m2, &create).unwrap();
    assert_eq!(
        m3.owner("b", 0),
        Some(&old),
        "the test needs b[0] on the freed range"
    );
    let (g, cancelled) = mark_down_map(&c, &m3, new_owner);
    assert!(cancelled.is_empty());
    assert_eq!(g.owner("a", 0).unwrap().server, new_owner);
}

fn mark_downs(actions: &[Action]) -> Vec<(u64, Vec<String>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::MarkDown {
                generation,
                servers,
            } => Some((*generation, servers.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn phase_1a_is_bounded_by_the_old_owner_timeout() {
    let m = base();
    let (m1, m2, owner) = move_maps(&m);
    let g2 = m2.generation;
    let mut c = Coordinator::new(m1).with_old_owner_timeout(3 * PHASE_1A_RESEND_MS);
    let a = c.handle(Event::Committed(Arc::new(m2.clone())));
    assert!(mark_downs(&a).is_empty());
    let timeout = Event::Timeout {
        generation: g2,
        phase: Phase::OldOwners,
    };
    // Re-sent each period; asked to mark down once the bound is reached, and only once.
    for _ in 0..2 {
        let a = c.handle(timeout.clone());
        assert!(mark_downs(&a).is_empty(), "{a:?}");
        assert!(a.iter().any(|x| matches!(x, Action::SendToServers { .. })));
    }
    let a = c.handle(timeout.clone());
    assert_eq!(mark_downs(&a), [(g2, vec![owner.clone()])]);
    assert_eq!(c.publishing().unwrap().1, Phase::OldOwners, "still waiting");
    for _ in 0..5 {
        let a = c.handle(timeout.clone());
        assert!(mark_downs(&a).is_empty(), "asked twice: {a:?}");
    }
    // The durable mark-down map releases phase 1a; the switch goes on without the old owner.
    let down = plan::set_server_state(&m2, &owner, crate::map::ServerState::Down).unwrap();
    let a = c.handle(Event::Committed(Arc::new(down.clone())));
    assert!(
        a.iter()
            .any(|x| matches!(x, Action::PublishToServers(m) if m.generation == g2)),
        "{a:?}"
    );
    // The down server is not awaited in 1b either: the other server's acks commit both.
    let other = if owner == "s1" { "s2" } else { "s1" };
    let a = c.handle(ack(other, g2));
    assert_eq!(published_to_clients(&a), [g2]);
    let a = c.handle(ack(other, down.generation));
    assert_eq!(published_to_clients(&a), [down.generation]);
}

#[test]
fn phase_1a_without_a_bound_never_asks_to_mark_down() {
    let m = base();
    let (m1, m2, _) = move_maps(&m);
    let mut c = Coordinator::new(m1).with_old_owner_timeout(0);
    let _ = c.handle(Event::Committed(Arc::new(m2.clone())));
    for _ in 0..1000 {
        let a = c.handle(Event::Timeout {
            generation: m2.generation,
            phase: Phase::OldOwners,
        });
        assert!(mark_downs(&a).is_empty());
    }
    // Unbounded unless asked (the manager asks for 30 s by default).
    let c = Coordinator::new(base());
    assert_eq!(c.old_owner_timeout_ms, 0);
    assert_eq!(OLD_OWNER_TIMEOUT_MS, 30_000, "the manager's default");
}

#[test]
fn acks_of_unknown_generations_are_ignored() {
    let m = base();
    let g = m.generation;
    let mut c = Coordinator::new(m);
    assert!(c.handle(ack("s1", g + 5)).is_empty());
    assert_eq!(c.acked("s1"), 0);
}

#[derive(Debug, Clone)]
enum Step {
    Ack(usize),
    Timeout1a,
    Timeout1b,
    Commit,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Random interleavings of commits (moves and switches), acks and timeouts: clients get
    /// every generation once, in order, and never before the old owners acked it; servers get
    /// a map before clients do.
    #[test]
    fn publication_order_holds(steps in proptest::collection::vec(
        prop_oneof![
            (0..2usize).prop_map(Step::Ack),
            Just(Step::Timeout1a),
            Just(Step::Timeout1b),
            Just(Step::Commit),
        ], 1..80)) {
        let servers = ["s1", "s2"];
        let mut head = base();
        let mut c = Coordinator::new(head.clone());
        let mut maps: BTreeMap<u64, ClusterMap> = BTreeMap::new();
        let mut installed: BTreeMap<&str, u64> = servers.iter().map(|s| (*s, head.generation)).collect();
        let mut client_seen = vec![head.generation];
        let mut server_published = vec![head.generation];
        for step in steps {
            let actions = match step {
                Step::Commit => {
                    if !c.can_accept() { continue; }
                    let moving = head.volume("a").unwrap().extents[0].moving.is_some();
                    let next = if moving {
                        let owner = head.owner("a", 0).unwrap().server.clone();
                        plan::switch_move(&head, &MoveReadyRequest { server: owner, volume: "a".into(), extent: 0, generation: head.generation }).unwrap()
                    } else {
                        move_maps(&head).0
                    };
                    maps.insert(next.generation, next.clone());
                    head = next;
                    c.handle(Event::Committed(Arc::new(head.clone())))
                }
                Step::Ack(k) => {
                    // A server installs whatever the coordinator gives it, then acks.
                    let id = servers[k];
                    let m = c.server_map(Some(id));
                    installed.insert(id, m.generation);
                    c.handle(ack(id, m.generation))
                }
                Step::Timeout1a | Step::Timeout1b => {
                    let Some((g, phase, _, _)) = c.publishing() else { continue };
                    let want = if matches!(step, Step::Timeout1a) { Phase::OldOwners } else { Phase::Servers };
                    if phase != want { continue; }
                    c.handle(Event::Timeout { generation: g, phase })
                }
            };
            for a in actions {
                match a {
                    Action::PublishToServers(m) => {
                        prop_assert_eq!(m.generation, server_published.last().unwrap() + 1);
                        // Every old owner of the previous map has installed this one.
                        let prev = maps.get(&(m.generation - 1)).cloned().unwrap_or_else(base);
                        for lost in ClusterMap::changed_owners(&prev, &m) {
                            prop_assert!(installed[lost.old_owner.as_str()] >= m.generation);
                        }
                        server_published.push(m.generation);
                    }
                    Action::PublishToClients(m) => {
                        prop_assert_eq!(m.generation, client_seen.last().unwrap() + 1);
                        prop_assert!(server_published.contains(&m.generation));
                        client_seen.push(m.generation);
                    }
                    // The mark-down map is not made here: the old owner stays awaited.
                    Action::SendToServers { .. } | Action::StartTimer { .. } | Action::MarkDown { .. } | Action::AwaitLeases { .. } => {}
                }
            }
            prop_assert!(c.client_map().generation <= c.server_map(None).generation);
            prop_assert!(c.server_map(None).generation <= c.head_generation());
        }
    }
}

#[derive(Debug, Clone)]
enum CStep {
    Ack(usize),
    Timeout1a,
    Timeout1b,
    Commit,
    Down(usize),
    Up(usize),
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Random interleavings of moves, switches, mark-downs (which cancel switches not through
    /// phase 1a, `plan::apply_cancelling`) and mark-ups with acks and timeouts: servers and
    /// clients get maps in increasing generation order, clients only maps servers got; a map
    /// reaches every server only once the old owners of its switches installed it or are down;
    /// a server is never given an abandoned map; and once every server is up and acks, every
    /// durable map is published or abandoned and the clients get the newest.
    #[test]
    fn cancellations_keep_publication_order(steps in proptest::collection::vec(
        prop_oneof![
            (0..2usize).prop_map(CStep::Ack),
            Just(CStep::Timeout1a),
            Just(CStep::Timeout1b),
            Just(CStep::Commit),
            Just(CStep::Commit),
            (0..2usize).prop_map(CStep::Down),
            (0..2usize).prop_map(CStep::Up),
        ], 1..80)) {
        let servers = ["s1", "s2"];
        let mut head = Arc::new(base());
        let mut c = Coordinator::new((*head).clone());
        let mut installed: BTreeMap<&str, u64> =
            servers.iter().map(|s| (*s, head.generation)).collect();
        let mut to_servers = head.generation;
        let mut servers_map = Arc::clone(&head);
        let mut to_clients = head.generation;
        let mut published: Vec<u64> = vec![head.generation];
        let mut durable: Vec<Arc<ClusterMap>> = vec![Arc::clone(&head)];
        let mut steps = steps;
        // Then heal: everybody up, acks and timeouts until nothing is left to publish.
        steps.extend([CStep::Up(0), CStep::Up(1)]);
        for _ in 0..40 {
            steps.extend([CStep::Ack(0), CStep::Ack(1), CStep::Timeout1a, CStep::Timeout1b]);
        }
        for step in steps {
            let change = match &step {
                CStep::Commit => {
                    let e = &head.volume("a").unwrap().extents[0];
                    let owner = e.replicas[0].server.clone();
                    Some(if e.moving.is_some() {
                        plan::Change::SwitchMove(MoveReadyRequest {
                            server: owner,
                            volume: "a".into(),
                            extent: 0,
                            generation: head.generation,
                        })
                    } else {
                        let to = if owner == "s1" { "s2" } else { "s1" };
                        plan::Change::StartMove(MoveRequest {
                            volume: "a".into(),
                            extent: 0,
                            to: to.into(),
                            from: None,
                        })
                    })
                }
                CStep::Down(k) | CStep::Up(k) => Some(plan::Change::SetServerState {
                    id: servers[*k].into(),
                    state: if matches!(step, CStep::Down(_)) {
                        crate::map::ServerState::Down
                    } else {
                        crate::map::ServerState::Up
                    },
                }),
                _ => None,
            };
            let actions = if let Some(change) = change {
                let chain = c.hold_chain();
                match plan::apply_cancelling(&head, &change, &chain) {
                    Ok((next, _)) if next.generation > head.generation => {
                        head = Arc::new(next);
                        durable.push(Arc::clone(&head));
                        c.handle(Event::Committed(Arc::clone(&head)))
                    }
                    _ => c.release(),
                }
            } else {
                match step {
                    CStep::Ack(k) => {
                        let id = servers[k];
                        let m = c.server_map(Some(id));
                        prop_assert!(
                            m.generation > c.abandoned() || published.contains(&m.generation)
                                || m.generation == head.generation
                                || c.publishing().is_some_and(|p| p.0 == m.generation),
                            "{id} was given g{}, abandoned", m.generation
                        );
                        installed.insert(id, m.generation);
                        c.handle(ack(id, m.generation))
                    }
                    CStep::Timeout1a | CStep::Timeout1b => {
                        let Some((g, phase, _, _)) = c.publishing() else { continue };
                        let want = if matches!(step, CStep::Timeout1a) {
                            Phase::OldOwners
                        } else {
                            Phase::Servers
                        };
                        if phase != want { continue; }
                        c.handle(Event::Timeout { generation: g, phase })
                    }
                    _ => continue,
                }
            };
            for a in actions {
                match a {
                    Action::PublishToServers(m) => {
                        prop_assert!(m.generation > to_servers);
                        for lost in ClusterMap::changed_owners(&servers_map, &m) {
                            // Released: marked down in this map or a newer durable one.
                            let down = durable.iter().filter(|d| d.generation >= m.generation).any(
                                |d| {
                                    d.server(&lost.old_owner)
                                        .is_none_or(|s| s.state == crate::map::ServerState::Down)
                                },
                            );
                            prop_assert!(
                                down || installed[lost.old_owner.as_str()] >= m.generation,
                                "g{} reached every server before its old owner {} installed it",
                                m.generation, lost.old_owner
                            );
                        }
                        to_servers = m.generation;
                        servers_map = Arc::clone(&m);
                        published.push(m.generation);
                    }
                    Action::PublishToClients(m) => {
                        prop_assert!(m.generation > to_clients);
                        prop_assert!(published.contains(&m.generation));
                        to_clients = m.generation;
                    }
                    Action::SendToServers { .. }
                    | Action::StartTimer { .. }
                    | Action::MarkDown { .. }
                    | Action::AwaitLeases { .. } => {}
                }
            }
        }
        prop_assert!(c.publishing().is_none(), "still publishing: {:?}", c.publishing());
        prop_assert_eq!(c.client_map().generation, head.generation);
    }
}

/// Phase 1b stops waiting for a server without a watch stream (`Event::ServersLost`), as at
/// its deadline: the map is committed and the server marked late. Phase 1a never does: an old
/// owner is not skipped. A report for another generation or phase is ignored.
#[test]
fn phase_1b_does_not_wait_for_a_server_without_a_watch_stream() {
    let lost = |generation, servers: &[&str]| Event::ServersLost {
        generation,
        servers: servers.iter().map(|s| (*s).to_string()).collect(),
    };
    // Phase 1b of a change without an owner change.
    let m = base();
    let (m1, _, _) = move_maps(&m);
    let g = m1.generation;
    let mut c = Coordinator::new(m);
    let _ = c.handle(Event::Committed(Arc::new(m1)));
    let _ = c.handle(ack("s1", g));
    assert!(
        c.handle(lost(g - 1, &["s2"])).is_empty(),
        "another generation"
    );
    assert!(
        c.handle(lost(g, &["s1"])).is_empty(),
        "not waited for: acked"
    );
    assert_eq!(c.publishing().map(|p| p.2), Some(vec!["s2".to_string()]));
    let a = c.handle(lost(g, &["s2"]));
    assert_eq!(published_to_clients(&a), [g]);
    assert!(c.is_late("s2") && !c.is_late("s1"));
    // Its later ack clears it, as after a deadline.
    let _ = c.handle(ack("s2", g));
    assert!(!c.is_late("s2"));

    // Phase 1a: the old owner is still waited for.
    let m = base();
    let (m1, m2, owner) = move_maps(&m);
    let g2 = m2.generation;
    let mut c = Coordinator::new(m1);
    let _ = c.handle(Event::Committed(Arc::new(m2)));
    assert!(c.handle(lost(g2, &[owner.as_str()])).is_empty());
    let (_, phase, waiting, _) = c.publishing().unwrap();
    assert_eq!((phase, waiting), (Phase::OldOwners, vec![owner.clone()]));
    // Then phase 1b: the other server, lost, is not waited for.
    let other = if owner == "s1" { "s2" } else { "s1" };
    let a = c.handle(ack(&owner, g2));
    assert!(published_to_clients(&a).is_empty());
    let a = c.handle(lost(g2, &[other]));
    assert_eq!(published_to_clients(&a), [g2]);
    assert!(c.is_late(other));
}

/// A move-ready switches a move only once its destination has acked the newest map through
/// phase 1a, and only if that map has the move (docs/cluster-protocol.md, "Moving an extent"):
/// a destination that is catching up, hung or behind has not had the copier's passes.
#[test]
fn move_ready_waits_for_the_destination_to_ack_the_move() {
    let m = base();
    let (m1, _, owner) = move_maps(&m);
    let to = m1.volume("a").unwrap().extents[0]
        .moving
        .as_ref()
        .unwrap()
        .to
        .server
        .clone();
    let ready = |extent: usize, server: &str, generation: u64| MoveReadyRequest {
        server: server.into(),
        volume: "a".into(),
        extent,
        generation,
    };
    let mut c = Coordinator::new(m);
    // No owner changes: the move's start skips phase 1a.
    let _ = c.handle(Event::Committed(Arc::new(m1.clone())));
    assert_eq!(c.server_map(None).generation, m1.generation);
    let e = c
        .move_ready_check(&ready(0, &owner, m1.generation))
        .unwrap_err();
    assert!(
        e.contains(&format!("move of a[0] to {to}"))
            && e.contains(&format!("its destination {to} has acked generation 0"))
            && e.contains(&format!("generation {}", m1.generation)),
        "{e}"
    );
    // The owner's ack is not the destination's.
    let _ = c.handle(ack(&owner, m1.generation));
    assert!(
        c.move_ready_check(&ready(0, &owner, m1.generation))
            .is_err()
    );
    let _ = c.handle(ack(&to, m1.generation - 1));
    assert!(
        c.move_ready_check(&ready(0, &owner, m1.generation))
            .is_err()
    );
    let _ = c.handle(ack(&to, m1.generation));
    assert_eq!(c.move_ready_check(&ready(0, &owner, m1.generation)), Ok(()));
    // An extent that is not moving: left to the plan's own error.
    assert_eq!(c.move_ready_check(&ready(1, &owner, m1.generation)), Ok(()));
}

/// A move whose start is still queued behind a publication in phase 1a is not in the
/// servers' map: its move-ready is refused, whatever the destination acked.
#[test]
fn move_ready_waits_for_the_moves_start_to_pass_phase_1a() {
    let m = base();
    // Extent 1 switches to the other server and waits in phase 1a for its old owner.
    let owner1 = m.owner("a", 1).unwrap().server.clone();
    let to1 = if owner1 == "s1" { "s2" } else { "s1" };
    let s1 = plan::start_move(
        &m,
        &MoveRequest {
            volume: "a".into(),
            extent: 1,
            to: to1.into(),
            from: None,
        },
    )
    .unwrap();
    let s2 = plan::switch_move(
        &s1,
        &MoveReadyRequest {
            server: owner1.clone(),
            volume: "a".into(),
            extent: 1,
            generation: s1.generation,
        },
    )
    .unwrap();
    let (m3, _, owner0) = move_maps(&s2);
    let to0 = if owner0 == "s1" { "s2" } else { "s1" };
    let mut c = Coordinator::new(s1);
    let _ = c.handle(Event::Committed(Arc::new(s2.clone())));
    let _ = c.handle(Event::Committed(Arc::new(m3.clone())));
    assert_eq!(c.server_map(None).generation, s2.generation - 1);
    for s in ["s1", "s2"] {
        if s != owner1 {
            let _ = c.handle(ack(s, m3.generation));
        }
    }
    let req = MoveReadyRequest {
        server: owner0,
        volume: "a".into(),
        extent: 0,
        generation: m3.generation,
    };
    let e = c.move_ready_check(&req).unwrap_err();
    assert!(
        e.contains(&format!("move of a[0] to {to0}")) && e.contains("does not have it"),
        "{e}"
    );
    // Once the switch ahead is through phase 1a and the move's start too, it may switch.
    let _ = c.handle(ack(&owner1, m3.generation));
    assert_eq!(c.server_map(None).generation, m3.generation);
    assert_eq!(c.move_ready_check(&req), Ok(()));
}

/// `a` with two copies of each extent (on s1 and s2), and the same map one generation later
/// with the copy of extent 0 on `stale` made stale.
fn replicated_maps(stale: &str) -> (ClusterMap, ClusterMap) {
    let m = plan::tests::two_servers();
    let m = plan::create_volume(
        &m,
        &CreateVolumeRequest {
            name: "a".into(),
            size: 16 * MIB,
            block_size: None,
            extent_size: Some(8 * MIB),
            replicas: Some(2),
            subsystem: "nqn.2026-11.dev.tessera:t".into(),
            nsid: None,
            hosts: Some(HostPolicy::Any),
        },
    )
    .unwrap();
    let mut next = m.clone();
    next.generation += 1;
    let e = &mut next.volumes[0].extents[0];
    let r = e.replicas.iter_mut().find(|r| r.server == stale).unwrap();
    r.state = crate::map::ReplicaState::Stale;
    (m, next)
}

/// A copy made stale without its ack is waited for in phase 1a, and gets no read lease, until
/// it acks or its lease has run out (docs/replication.md, "Read leases"); the other servers
/// learn the map only then.
#[test]
fn a_copy_losing_its_reads_is_waited_for_until_its_lease_runs_out() {
    let (m, next) = replicated_maps("s2");
    let g = next.generation;
    assert_eq!(
        readers_losing(&m, &next),
        BTreeSet::from(["s2".to_string()])
    );
    let mut c = Coordinator::new(m).with_read_leases();
    let a = c.handle(Event::Committed(Arc::new(next)));
    assert!(
        a.contains(&Action::AwaitLeases {
            generation: g,
            servers: vec!["s2".into()]
        }),
        "{a:?}"
    );
    assert!(
        a.iter().any(
            |x| matches!(x, Action::SendToServers { servers, .. } if servers == &["s2".to_string()])
        ),
        "{a:?}"
    );
    assert!(!a.iter().any(|x| matches!(x, Action::PublishToServers(_))));
    // It gets the map when it fetches or watches (so it can ack); nobody else does yet.
    assert_eq!(c.server_map(Some("s2")).generation, g);
    assert_eq!(c.server_map(Some("s1")).generation, g - 1);
    assert_eq!(c.lease_fenced("s2"), Some(g));
    assert_eq!(c.lease_fenced("s1"), None);
    // Not for another generation, nor for a server it does not wait for as a reader.
    assert!(
        c.handle(Event::LeasesExpired {
            generation: g + 1,
            servers: vec!["s2".into()]
        })
        .is_empty()
    );
    assert!(
        c.handle(Event::LeasesExpired {
            generation: g,
            servers: vec!["s1".into()]
        })
        .is_empty()
    );
    // The phase-1a timer re-sends and asks no mark-down of a reader, however long it waits.
    for _ in 0..100 {
        let a = c.handle(Event::Timeout {
            generation: g,
            phase: Phase::OldOwners,
        });
        assert!(
            !a.iter().any(|x| matches!(x, Action::MarkDown { .. })),
            "{a:?}"
        );
    }
    let a = c.handle(Event::LeasesExpired {
        generation: g,
        servers: vec!["s2".into()],
    });
    assert!(
        a.iter()
            .any(|x| matches!(x, Action::PublishToServers(m) if m.generation == g)),
        "{a:?}"
    );
    // Still no lease until it has the map.
    assert_eq!(c.lease_fenced("s2"), Some(g));
    let _ = c.handle(ack("s2", g));
    assert_eq!(c.lease_fenced("s2"), None);
}

/// Its ack releases it at once; without read leases (the simulation's coordinator) nobody
/// waits.
#[test]
fn a_copy_losing_its_reads_that_acks_is_released_and_without_leases_nobody_waits() {
    let (m, next) = replicated_maps("s1");
    let g = next.generation;
    let mut c = Coordinator::new(m.clone()).with_read_leases();
    let _ = c.handle(Event::Committed(Arc::new(next.clone())));
    assert_eq!(c.publishing().map(|p| p.1), Some(Phase::OldOwners));
    let a = c.handle(ack("s1", g));
    assert!(
        a.iter()
            .any(|x| matches!(x, Action::PublishToServers(m) if m.generation == g)),
        "{a:?}"
    );
    assert_eq!(c.lease_fenced("s1"), None);
    let mut plain = Coordinator::new(m);
    let a = plain.handle(Event::Committed(Arc::new(next)));
    assert!(
        a.iter().any(|x| matches!(x, Action::PublishToServers(_))),
        "{a:?}"
    );
    assert_eq!(plain.lease_fenced("s1"), None);
}

/// Who loses reads: a copy made stale or rebuilding, dropped, or on a server marked down;
/// not a copy that stays in sync, nor one of a single-copy extent (its owner is an old owner
/// when it changes), nor one that was not in sync.
#[test]
fn readers_losing_names_exactly_the_copies_that_stop_reading() {
    let (m, stale) = replicated_maps("s2");
    assert!(readers_losing(&m, &m).is_empty());
    let mut down = m.clone();
    down.servers
        .iter_mut()
        .find(|s| s.id == "s1")
        .unwrap()
        .state = ServerState::Down;
    assert_eq!(
        readers_losing(&m, &down),
        BTreeSet::from(["s1".to_string()])
    );
    let mut dropped = m.clone();
    dropped.volumes[0].extents[1]
        .replicas
        .retain(|r| r.server != "s1");
    assert_eq!(
        readers_losing(&m, &dropped),
        BTreeSet::from(["s1".to_string()])
    );
    let mut rebuilding = m.clone();
    for r in &mut rebuilding.volumes[0].extents[0].replicas {
        if r.server == "s2" {
            r.state = crate::map::ReplicaState::Rebuilding;
        }
    }
    assert_eq!(
        readers_losing(&m, &rebuilding),
        BTreeSet::from(["s2".to_string()])
    );
    // From stale back to rebuilding: it was not reading.
    assert!(readers_losing(&stale, &rebuilding).is_empty());
    let single = base();
    let mut single_down = single.clone();
    single_down
        .servers
        .iter_mut()
        .for_each(|s| s.state = ServerState::Down);
    assert!(readers_losing(&single, &single_down).is_empty());
}

/// A server losing reads of one extent that becomes the primary of another whose reads a
/// second server loses is not sent the map in phase 1a (it could acknowledge writes that the
/// second one misses while it still serves reads): only the end of its lease releases it.
#[test]
fn a_reader_that_becomes_a_primary_of_an_affected_extent_is_held_back() {
    let (m, _) = replicated_maps("s1");
    let mut m = m;
    // Extent 0 led by s1, extent 1 by s2.
    for (i, first) in [(0, "s1"), (1, "s2")] {
        let e = &mut m.volumes[0].extents[i];
        e.replicas.sort_by_key(|r| r.server != first);
    }
    let mut next = m.clone();
    next.generation += 1;
    // s1's copy of extent 0 and s2's copy of extent 1 go stale: each leads the other's extent.
    for (i, stale) in [(0, "s1"), (1, "s2")] {
        let e = &mut next.volumes[0].extents[i];
        e.replicas
            .iter_mut()
            .find(|r| r.server == stale)
            .unwrap()
            .state = crate::map::ReplicaState::Stale;
    }
    let g = next.generation;
    let mut c = Coordinator::new(m).with_read_leases();
    let a = c.handle(Event::Committed(Arc::new(next)));
    assert!(
        a.contains(&Action::AwaitLeases {
            generation: g,
            servers: vec!["s1".into(), "s2".into()]
        }),
        "{a:?}"
    );
    assert!(
        !a.iter().any(|x| matches!(x, Action::SendToServers { .. })),
        "{a:?}"
    );
    assert_eq!(c.server_map(Some("s1")).generation, g - 1);
    assert_eq!(c.server_map(Some("s2")).generation, g - 1);
    let a = c.handle(Event::Timeout {
        generation: g,
        phase: Phase::OldOwners,
    });
    assert!(
        !a.iter().any(|x| matches!(x, Action::SendToServers { .. })),
        "{a:?}"
    );
    let a = c.handle(Event::LeasesExpired {
        generation: g,
        servers: vec!["s1".into(), "s2".into()],
    });
    assert!(
        a.iter()
            .any(|x| matches!(x, Action::PublishToServers(m) if m.generation == g)),
        "{a:?}"
    );
}

/// Copy moves that drop the first copy of two replicated extents, one map after the other
/// (their rebuild-done reports arrive together): the second map does not abandon the first
/// (it gives no switched extent back: the new first copy was already a copy of the extent),
/// so each is published in turn once the old first copy acks. The first used to be abandoned,
/// and its old owner, which had installed it, routed with a generation nobody else would get.
#[test]
fn a_dropped_first_copy_is_not_taken_for_a_cancelled_switch() {
    let (m, _) = replicated_maps("s1");
    let mut m = m;
    for e in &mut m.volumes[0].extents {
        e.replicas.sort_by_key(|r| r.server != "s1");
    }
    let drop_first = |from: &ClusterMap, i: usize| {
        let mut next = from.clone();
        next.generation += 1;
        next.volumes[0].extents[i]
            .replicas
            .retain(|r| r.server != "s1");
        next
    };
    let m1 = drop_first(&m, 0);
    let m2 = drop_first(&m1, 1);
    assert!(!cancels(&m1, &m2) && !cancels(&m, &m1));
    let mut c = Coordinator::new(m).with_read_leases();
    let _ = c.handle(Event::Committed(Arc::new(m1.clone())));
    assert_eq!(
        c.publishing().map(|p| (p.0, p.1)),
        Some((m1.generation, Phase::OldOwners))
    );
    let _ = c.handle(Event::Committed(Arc::new(m2.clone())));
    assert_eq!(c.abandoned(), 0, "the first drop was abandoned");
    let a = c.handle(ack("s1", m1.generation));
    assert!(
        a.iter()
            .any(|x| matches!(x, Action::PublishToServers(p) if p.generation == m1.generation)),
        "{a:?}"
    );
}
