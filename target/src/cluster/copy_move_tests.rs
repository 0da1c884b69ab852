//! A copy of a replicated extent moved by add, rebuild, drop (docs/replication.md, "Moving a
//! copy"), as the target sees it: the primary rebuilds the added copy whole, and the server
//! whose copy is dropped (the first copy) fences the extent without a final copy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;

use manager::map::{ClusterMap, ExtentEntry, ReplicaState, ServerState};

use super::node::fixtures::{self, EXTENT, rep, server};
use super::node::install::{Action, Event, Install};
use super::replica::testing;

/// `vol1` of one extent with copies `copies` (server, state, replaces) at offset 0 of each
/// server, on s1..s3.
fn map(generation: u64, copies: &[(&str, ReplicaState, Option<&str>)]) -> ClusterMap {
    let replicas = copies
        .iter()
        .map(|(s, st, replaces)| {
            let mut r = rep(s, 0);
            r.state = *st;
            r.replaces = replaces.map(str::to_owned);
            if *st == ReplicaState::Rebuilding {
                r.rebuilding_since = Some(generation);
            }
            r
        })
        .collect();
    let servers = ["s1", "s2", "s3"]
        .iter()
        .map(|id| server(id, ServerState::Up))
        .collect();
    let mut m = fixtures::map(
        generation,
        servers,
        vec![ExtentEntry {
            replicas,
            moving: None,
            lost: false,
        }],
    );
    m.volumes[0].replicas = 2;
    m
}

use ReplicaState::{InSync, Rebuilding, Stale};

#[tokio::test]
async fn the_primary_rebuilds_a_copy_new_to_the_extent_whole() {
    let g1 = map(1, &[("s1", InSync, None), ("s2", InSync, None)]);
    let node = testing::node(&g1, "s1", 1000);
    assert!(node.rebuilds.tracked().is_empty(), "every copy counts");
    // The move adds s3, replacing s2: the primary has no record of what s3 holds.
    let g2 = map(
        2,
        &[
            ("s1", InSync, None),
            ("s2", InSync, None),
            ("s3", Rebuilding, Some("s2")),
        ],
    );
    testing::install(&node, &g2);
    let t = node.rebuilds.tracked();
    assert_eq!(t.len(), 1);
    assert_eq!((t[0].server.as_str(), t[0].offset), ("s3", 0));
    assert_eq!(
        t[0].dirty.dirty_bytes(),
        EXTENT,
        "the whole extent is copied"
    );
    // Contrast: a copy that counted under this primary and goes stale starts clean.
    let g3 = map(
        3,
        &[
            ("s1", InSync, None),
            ("s2", Stale, None),
            ("s3", Rebuilding, Some("s2")),
        ],
    );
    testing::install(&node, &g3);
    let t = node.rebuilds.tracked();
    let s2 = t.iter().find(|t| t.server == "s2").expect("s2 tracked");
    assert_eq!(s2.dirty.dirty_bytes(), 0);
    // The rebuild copies everything, then the move is done: s2's copy leaves the extent, s3
    // counts; nothing is tracked any more.
    let s3 = t.iter().find(|t| t.server == "s3").expect("s3 tracked");
    s3.dirty.clear(0, EXTENT);
    let g4 = map(4, &[("s1", InSync, None), ("s3", InSync, None)]);
    testing::install(&node, &g4);
    assert!(node.rebuilds.tracked().is_empty());
}

/// A copy write that fails after its copy left the extent (a forward started under the older
/// map) leaves a record with one dirty chunk; a copy added back at the same server and offset
/// in the next map is still new to the extent (it missed every write since the drop): it is
/// rebuilt whole, not just that chunk.
#[tokio::test]
async fn a_copy_added_back_where_a_dropped_one_was_is_rebuilt_whole() {
    // Extents of four 64 KiB dirty chunks (the fixtures' are one chunk).
    const BIG: u64 = 256 * 1024;
    let map = |g, copies: &[(&str, ReplicaState, Option<&str>)]| {
        let mut m = map(g, copies);
        m.volumes[0].extent_size = BIG;
        m.volumes[0].size_bytes = BIG;
        m
    };
    let g1 = map(1, &[("s1", InSync, None), ("s2", InSync, None)]);
    let node = testing::node(&g1, "s1", 1000);
    let g2 = map(2, &[("s1", InSync, None), ("s3", InSync, None)]);
    testing::install(&node, &g2);
    assert!(node.rebuilds.tracked().is_empty());
    // A forward to s2 from before g2 fails now: its chunk is marked on a fresh record.
    node.rebuilds
        .failed(4096, 4096, &(0, BIG, ("s2".to_owned(), 0)));
    assert_eq!(node.rebuilds.tracked().len(), 1);
    // The next map adds s2 back at offset 0 (a move of s3's copy to it).
    let g3 = map(
        3,
        &[
            ("s1", InSync, None),
            ("s3", InSync, None),
            ("s2", Rebuilding, Some("s3")),
        ],
    );
    testing::install(&node, &g3);
    let t = node.rebuilds.tracked();
    let s2 = t.iter().find(|t| t.server == "s2").expect("s2 tracked");
    assert_eq!(s2.dirty.dirty_bytes(), BIG, "the whole extent is copied");
}

#[test]
fn the_dropped_first_copy_fences_without_a_final_copy() {
    let g1 = Arc::new(map(
        1,
        &[
            ("s1", InSync, None),
            ("s2", InSync, None),
            ("s3", Rebuilding, Some("s1")),
        ],
    ));
    let g2 = Arc::new(map(2, &[("s2", InSync, None), ("s3", InSync, None)]));
    let mut install = Install::start(Arc::clone(&g1), Arc::clone(&g2), "s1", true).unwrap();
    assert_eq!(install.lost(), [("vol1".to_owned(), 0)]);
    assert!(install.closes_gate());
    assert_eq!(install.on_event(Event::Start), [Action::CloseGate]);
    // No copier and no dirty region to copy: the copier stop finds nothing tracked.
    let acts = install.on_event(Event::Drained);
    assert_eq!(
        acts,
        [Action::StopCopier {
            key: ("vol1".to_owned(), 0),
            whole: None
        }]
    );
    let acts = install.on_event(Event::CopierStopped { tracked: false });
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::Install(m) if m.generation == 2)),
        "{acts:?}"
    );
    assert!(!acts.iter().any(|a| matches!(a, Action::FinalPass { .. })));
}
