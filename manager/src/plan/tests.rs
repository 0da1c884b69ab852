//! Plan unit tests and the property test: any sequence of changes keeps `validate()` true and
//! moves the generation by exactly one per applied change.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use proptest::prelude::*;

use super::*;
use crate::api::{AddServerRequest, CreateVolumeRequest, MoveReadyRequest, MoveRequest};
use crate::map::{ClusterMap, HostPolicy, ServerState};

const MIB: u64 = 1 << 20;
const NQN: &str = "nqn.2026-11.dev.tessera:t";

pub(crate) fn server(id: &str, n: u16, pool: u64) -> AddServerRequest {
    AddServerRequest {
        id: id.to_owned(),
        portal: format!("127.0.0.1:{}", 4420 + n).parse().unwrap(),
        internal: format!("127.0.0.1:{}", 4520 + n).parse().unwrap(),
        pool_bytes: pool,
        rack: None,
    }
}

/// Generation 2: servers s1 and s2 with 64 MiB pools (s2 added second).
pub(crate) fn two_servers() -> ClusterMap {
    let mut m = ClusterMap::empty();
    edit_add_server(&mut m, &server("s1", 0, 64 * MIB)).unwrap();
    m.generation = 1;
    add_server(&m, &server("s2", 1, 64 * MIB)).unwrap()
}

fn vol(name: &str, size: u64, extent: u64) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.to_owned(),
        size,
        block_size: None,
        extent_size: Some(extent),
        replicas: None,
        subsystem: NQN.to_owned(),
        nsid: None,
        hosts: Some(HostPolicy::Any),
    }
}

fn owners(m: &ClusterMap, v: &str) -> Vec<(String, u64)> {
    m.volume(v)
        .unwrap()
        .extents
        .iter()
        .map(|e| (e.replicas[0].server.clone(), e.replicas[0].offset))
        .collect()
}

#[test]
fn create_stripes_round_robin_from_the_emptiest_server() {
    let m = two_servers();
    let m1 = create_volume(&m, &vol("a", 24 * MIB, 8 * MIB)).unwrap();
    assert_eq!(m1.generation, m.generation + 1);
    assert_eq!(
        owners(&m1, "a"),
        [("s1".into(), 0), ("s2".into(), 0), ("s1".into(), 8 * MIB)]
    );
    // s2 now has more free space: the next volume starts there.
    let m2 = create_volume(&m1, &vol("b", 16 * MIB, 8 * MIB)).unwrap();
    assert_eq!(
        owners(&m2, "b"),
        [("s2".into(), 8 * MIB), ("s1".into(), 16 * MIB)]
    );
    let b = m2.volume("b").unwrap();
    assert_eq!((b.nsid, b.subsystem.as_str()), (2, NQN));
    assert_eq!(b.uuid, yaml::derived_volume_uuid("b"));
    assert_eq!(m2.extent_range("b", 1), Some((8 * MIB, 8 * MIB)));
    assert_eq!(m2.extent_of("b", 8 * MIB), Some(1));
    assert_eq!(m2.owner("b", 1).unwrap().server, "s1");
}

#[test]
fn create_refusals_name_the_problem() {
    let m = two_servers();
    let err = |req: CreateVolumeRequest| create_volume(&m, &req).unwrap_err().to_string();
    let mut r = vol("a", 1000, 8 * MIB);
    assert_eq!(
        err(r.clone()),
        "size 1000 bytes is not a multiple of the block size 512"
    );
    r.size = 8 * MIB;
    r.extent_size = Some(1000);
    assert_eq!(
        err(r.clone()),
        "extent size 1000 bytes is not a multiple of the block size 512"
    );
    r.extent_size = Some(MIB);
    r.block_size = Some(1024);
    assert_eq!(
        err(r.clone()),
        "unsupported block size 1024 (expected 512 or 4096)"
    );
    r.block_size = None;
    r.hosts = None;
    assert_eq!(
        err(r.clone()),
        "subsystem nqn.2026-11.dev.tessera:t does not exist; give \"hosts\" (\"any\" or {\"only\": [host NQNs]}) to create it"
    );
    r.hosts = Some(HostPolicy::Any);
    r.size = 256 * MIB;
    assert_eq!(
        err(r.clone()),
        "no pool space left for extent 128 of volume \"a\" (1048576 bytes per replica)"
    );
    r.size = MIB;
    r.replicas = Some(3);
    assert_eq!(
        err(r.clone()),
        "3 replicas need 3 up servers, the cluster has 2"
    );
    r.replicas = None;
    r.name = "a/b".into();
    assert!(err(r.clone()).starts_with("invalid volume name \"a/b\""));
    let m1 = create_volume(&m, &vol("a", MIB, MIB)).unwrap();
    let e = create_volume(&m1, &vol("a", MIB, MIB)).unwrap_err();
    assert_eq!(e.to_string(), "volume \"a\" already exists");
    assert_eq!(e.http_status(), 409);
    let mut r = vol("b", MIB, MIB);
    r.nsid = Some(1);
    assert_eq!(
        create_volume(&m1, &r).unwrap_err().to_string(),
        "NSID 1 of subsystem nqn.2026-11.dev.tessera:t is already volume \"a\""
    );
}

#[test]
fn two_replicas_on_distinct_servers() {
    let m = two_servers();
    let mut r = vol("a", 2 * MIB, MIB);
    r.replicas = Some(2);
    let m1 = create_volume(&m, &r).unwrap();
    for e in &m1.volume("a").unwrap().extents {
        assert_eq!(e.replicas.len(), 2);
        assert_ne!(e.replicas[0].server, e.replicas[1].server);
    }
}

#[test]
fn resize_grows_and_refuses_shrink() {
    let m = create_volume(&two_servers(), &vol("a", 12 * MIB, 8 * MIB)).unwrap();
    let m1 = resize_volume(&m, "a", 20 * MIB).unwrap();
    assert_eq!(m1.generation, m.generation + 1);
    let a = m1.volume("a").unwrap();
    assert_eq!((a.size_bytes, a.extents.len()), (20 * MIB, 3));
    // The last extent grew in place; the new one continues the stripe.
    assert_eq!(owners(&m1, "a")[..2], owners(&m, "a")[..]);
    assert_eq!(owners(&m1, "a")[2].0, "s1");
    assert_eq!(
        resize_volume(&m1, "a", 8 * MIB).unwrap_err().to_string(),
        "volume \"a\" cannot shrink from 20971520 to 8388608 bytes (only growing is supported)"
    );
    assert_eq!(
        resize_volume(&m1, "a", 20 * MIB).unwrap(),
        m1,
        "same size: no change"
    );
    assert_eq!(
        resize_volume(&m1, "zz", MIB).unwrap_err().to_string(),
        "unknown volume \"zz\""
    );
}

#[test]
fn add_server_gets_the_next_cntlid_range() {
    let m = two_servers();
    let s2 = m.server("s2").unwrap();
    assert_eq!((s2.cntlid_min, s2.cntlid_max), (1001, 1999));
    let m1 = add_server(&m, &server("s3", 2, MIB)).unwrap();
    let s3 = m1.server("s3").unwrap();
    assert_eq!(
        (s3.cntlid_min, s3.cntlid_max, s3.state),
        (2001, 2999, ServerState::Up)
    );
    let mut dup = server("s4", 2, MIB);
    dup.internal = "127.0.0.1:9999".parse().unwrap();
    assert_eq!(
        add_server(&m1, &dup).unwrap_err().to_string(),
        "address 127.0.0.1:4422 is already used by server \"s3\""
    );
    assert_eq!(
        add_server(&m1, &server("s3", 9, MIB))
            .unwrap_err()
            .to_string(),
        "server \"s3\" already exists"
    );
}

#[test]
fn move_then_switch_frees_the_old_range() {
    let m = add_server(&two_servers(), &server("s3", 2, 64 * MIB)).unwrap();
    let m = create_volume(&m, &vol("a", 16 * MIB, 8 * MIB)).unwrap();
    let from = m.owner("a", 1).unwrap().clone();
    let to = if from.server == "s3" { "s1" } else { "s3" };
    let mv = MoveRequest {
        volume: "a".into(),
        extent: 1,
        to: to.into(),
        from: None,
    };
    let m1 = start_move(&m, &mv).unwrap();
    let moving = m1.volume("a").unwrap().extents[1].moving.clone().unwrap();
    assert_eq!(moving.to.server, to);
    assert_eq!(
        m1.owner("a", 1),
        Some(&from),
        "ownership only changes at the switch"
    );
    assert!(ClusterMap::changed_owners(&m, &m1).is_empty());
    assert_eq!(
        start_move(&m1, &mv).unwrap_err().to_string(),
        format!("extent 1 of volume \"a\" is already moving to \"{to}\"")
    );
    let ready = |server: &str| MoveReadyRequest {
        server: server.into(),
        volume: "a".into(),
        extent: 1,
        generation: m1.generation,
    };
    let e = switch_move(&m1, &ready(to)).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "server \"{to}\" does not own extent 1 of volume \"a\" (\"{}\" does)",
            from.server
        )
    );
    let m2 = switch_move(&m1, &ready(&from.server)).unwrap();
    assert_eq!(m2.owner("a", 1), Some(&moving.to));
    assert!(m2.volume("a").unwrap().extents[1].moving.is_none());
    let lost = ClusterMap::changed_owners(&m1, &m2);
    assert_eq!(lost.len(), 1);
    assert_eq!((lost[0].volume.as_str(), lost[0].extent), ("a", 1));
    assert_eq!(lost[0].old_owner, from.server);
    assert_eq!(
        m2.free_bytes(&from.server),
        m.free_bytes(&from.server) + 8 * MIB
    );
    assert_eq!(
        switch_move(&m2, &ready(to)).unwrap_err().to_string(),
        "extent 1 of volume \"a\" is not moving"
    );
    // Moving to a holder, a down server, or a missing extent.
    let back = MoveRequest {
        volume: "a".into(),
        extent: 1,
        to: to.into(),
        from: None,
    };
    assert!(
        start_move(&m2, &back)
            .unwrap_err()
            .to_string()
            .contains("already on server")
    );
    let down = set_server_state(&m2, &from.server, ServerState::Down).unwrap();
    let e = start_move(
        &down,
        &MoveRequest {
            volume: "a".into(),
            extent: 1,
            to: from.server.clone(),
            from: None,
        },
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "server \"{}\" is Down, not up (new extents go only to up servers)",
            from.server
        )
    );
    let e = start_move(
        &m2,
        &MoveRequest {
            volume: "a".into(),
            extent: 9,
            to: to.into(),
            from: None,
        },
    )
    .unwrap_err();
    assert_eq!(e.to_string(), "volume \"a\" has no extent 9 (it has 2)");
    assert_eq!(e.http_status(), 404);
}

const CLUSTER: &str = "servers:
  - id: s1
    portal: 127.0.0.1:4420
    internal: 127.0.0.1:4430
    pool: 64MiB
  - id: s2
    portal: 127.0.0.1:4421
    internal: 127.0.0.1:4431
    pool: 64MiB
subsystems:
  - nqn: nqn.2026-11.dev.tessera:t
    allow_any_host: true
volumes:
  - name: a
    size: 16MiB
    extent_size: 8MiB
    subsystem: nqn.2026-11.dev.tessera:t
    nsid: 1
";

fn cluster(text: &str) -> yaml::Cluster {
    yaml::parse_cluster_str("c.yaml", text).unwrap()
}

#[test]
fn initial_map_and_reload() {
    let m = initial_map(&cluster(CLUSTER)).unwrap();
    assert_eq!(m.generation, 1);
    assert_eq!(owners(&m, "a"), [("s1".into(), 0), ("s2".into(), 0)]);
    // Unchanged file: unchanged map.
    assert_eq!(reload(&m, &cluster(CLUSTER)).unwrap(), m);
    // Several differences: one generation.
    let grown = CLUSTER
        .replace("size: 16MiB", "size: 24MiB")
        .replace("  - id: s2\n", "  - id: s2\n    state: draining\n")
        + "  - name: b\n    size: 8MiB\n    extent_size: 8MiB\n    subsystem: nqn.2026-11.dev.tessera:t\n    nsid: 2\n";
    let m1 = reload(&m, &cluster(&grown)).unwrap();
    assert_eq!(m1.generation, 2);
    assert_eq!(m1.volume("a").unwrap().extents.len(), 3);
    assert_eq!(m1.server("s2").unwrap().state, ServerState::Draining);
    assert_eq!(
        owners(&m1, "b"),
        [("s1".into(), 16 * MIB)],
        "only up servers get new extents"
    );
    // Refused whole.
    let shrink = grown.replace("size: 24MiB", "size: 8MiB");
    assert_eq!(
        reload(&m1, &cluster(&shrink)).unwrap_err().to_string(),
        "volume \"a\" cannot shrink from 25165824 to 8388608 bytes (only growing is supported)"
    );
    let removed = CLUSTER.replace("size: 16MiB", "size: 24MiB");
    assert_eq!(
        reload_from(&m1, Some(&cluster(&grown)), &cluster(&removed))
            .unwrap_err()
            .to_string(),
        "reload cannot remove volume \"b\": the cluster file declared it at the last load and no longer does (removal is not supported; declare it again)"
    );
    let changed = grown.replace("nsid: 2", "nsid: 3");
    assert_eq!(
        reload(&m1, &cluster(&changed)).unwrap_err().to_string(),
        "reload cannot change nsid of volume \"b\" (2 in the map, 3 in the file; only size may grow)"
    );
}

/// One source of truth: a reload applies the file's edits since the last load on top of what
/// the API (or the manager) changed meanwhile, and keeps what the file does not declare.
#[test]
fn reload_applies_file_edits_over_api_changes() {
    let file = cluster(CLUSTER);
    let m = initial_map(&file).unwrap();
    // API: a server, a volume on a new subsystem, a grown volume; the manager marks s2 down.
    let m = add_server(
        &m,
        &AddServerRequest {
            id: "s4".into(),
            portal: "127.0.0.1:4429".parse().unwrap(),
            internal: "127.0.0.1:4439".parse().unwrap(),
            pool_bytes: 64 * MIB,
            rack: None,
        },
    )
    .unwrap();
    let m = create_volume(
        &m,
        &CreateVolumeRequest {
            name: "api".into(),
            size: 8 * MIB,
            block_size: None,
            extent_size: Some(8 * MIB),
            replicas: None,
            subsystem: "nqn.2026-11.dev.tessera:api".into(),
            nsid: None,
            hosts: Some(HostPolicy::Any),
        },
    )
    .unwrap();
    let m = resize_volume(&m, "a", 32 * MIB).unwrap();
    let m = set_server_state(&m, "s2", ServerState::Down).unwrap();
    // The unchanged file changes nothing (and refuses nothing).
    assert_eq!(reload_from(&m, Some(&file), &file).unwrap(), m);
    // Without a recorded file, what the file does not declare is kept too.
    let r = reload(&m, &file).unwrap_err().to_string();
    assert!(r.contains("shrink"), "every declared field applies: {r}");
    // The operator's edit applies; the rest stays as the API left it.
    let edited = CLUSTER.replace("  - id: s2\n", "  - id: s2\n    state: draining\n");
    let m2 = reload_from(&m, Some(&file), &cluster(&edited)).unwrap();
    assert_eq!(m2.generation, m.generation + 1);
    assert_eq!(m2.server("s2").unwrap().state, ServerState::Draining);
    assert!(m2.server("s4").is_some() && m2.volume("api").is_some());
    assert_eq!(m2.volume("a").unwrap().size_bytes, 32 * MIB);
    // Declaring the API-made server in the file (same addresses) is accepted and changes nothing.
    let declared = CLUSTER.replace(
            "subsystems:",
            "  - id: s4\n    portal: 127.0.0.1:4429\n    internal: 127.0.0.1:4439\n    pool: 64MiB\nsubsystems:"
        );
    assert_eq!(
        reload_from(&m, Some(&file), &cluster(&declared)).unwrap(),
        m
    );
    // ... but with other addresses it is refused.
    let wrong = declared.replace("127.0.0.1:4439", "127.0.0.1:4438");
    let e = reload_from(&m, Some(&file), &cluster(&wrong))
        .unwrap_err()
        .to_string();
    assert!(e.contains("addresses"), "{e}");
    // Removing a server the file declared is refused; one only the API made is not removed.
    let e = reload_from(&m, Some(&cluster(&declared)), &file)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot remove server \"s4\""), "{e}");
}

#[test]
fn initial_map_without_space_is_refused() {
    let text = CLUSTER.replace("size: 16MiB", "size: 1GiB");
    assert_eq!(
        initial_map(&cluster(&text)).unwrap_err().to_string(),
        "no pool space left for extent 16 of volume \"a\" (8388608 bytes per replica)"
    );
}

/// A random change against a map with servers s0..s3 and volumes v0..v3.
fn arb_change() -> impl Strategy<Value = Change> {
    let name = |p: &'static str| (0..4u8).prop_map(move |i| format!("{p}{i}"));
    prop_oneof![
        (name("v"), 1..40u64, 1..8u64, 1..3u32).prop_map(|(n, size, ext, r)| {
            Change::CreateVolume(CreateVolumeRequest {
                name: n,
                size: size * MIB,
                block_size: None,
                extent_size: Some(ext * MIB),
                replicas: Some(r),
                subsystem: NQN.to_owned(),
                nsid: None,
                hosts: Some(HostPolicy::Any),
            })
        }),
        (name("v"), 1..60u64).prop_map(|(name, size)| Change::ResizeVolume {
            name,
            size: size * MIB
        }),
        (0..4u16, 8..64u64, proptest::option::of(0..2u8)).prop_map(|(i, pool, rack)| {
            let mut req = server(&format!("s{i}"), i, pool * MIB);
            req.rack = rack.map(|r| format!("r{r}"));
            Change::AddServer(req)
        }),
        (name("v"), 0..8usize, name("s")).prop_map(|(volume, extent, to)| Change::StartMove(
            MoveRequest {
                volume,
                extent,
                to,
                from: None
            }
        )),
        (name("v"), 0..8usize, name("s")).prop_map(|(volume, extent, server)| {
            Change::SwitchMove(MoveReadyRequest {
                server,
                volume,
                extent,
                generation: 1,
            })
        }),
        (
            name("s"),
            prop_oneof![
                Just(ServerState::Up),
                Just(ServerState::Down),
                Just(ServerState::Draining)
            ]
        )
            .prop_map(|(id, state)| Change::SetServerState { id, state }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn random_changes_keep_the_map_valid(changes in proptest::collection::vec(arb_change(), 1..40)) {
        let mut m = ClusterMap::empty();
        edit_add_server(&mut m, &server("s0", 0, 32 * MIB)).unwrap();
        m.generation = 1;
        for change in &changes {
            match apply(&m, change) {
                Ok(next) => {
                    prop_assert!(next.validate().is_ok(), "{:?}", next.validate());
                    if next == m {
                        continue;
                    }
                    prop_assert_eq!(next.generation, m.generation + 1);
                    m = next;
                }
                Err(e) => {
                    prop_assert!(!matches!(e, PlanError::Invalid(_) | PlanError::GenerationExhausted), "{e}");
                }
            }
        }
    }
}
