//! The map's JSON is exactly docs/cluster-protocol.md's; lookups and invariant checks.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use manager::map::{ClusterMap, HostPolicy, MapError, ServerState};

/// The example of docs/cluster-protocol.md, completed (two servers, a full UUID).
const DOC: &str = r#"{
  "generation": 7,
  "servers": [
    {"id": "s1", "portal": "127.0.0.1:4420", "internal": "127.0.0.1:4430",
     "state": "up", "pool_bytes": 2147483648, "cntlid_min": 1, "cntlid_max": 999},
    {"id": "s2", "portal": "127.0.0.1:4421", "internal": "127.0.0.1:4431",
     "state": "draining", "pool_bytes": 2147483648, "cntlid_min": 1001, "cntlid_max": 1999},
    {"id": "s3", "portal": "127.0.0.1:4422", "internal": "127.0.0.1:4432",
     "state": "down", "pool_bytes": 2147483648, "cntlid_min": 2001, "cntlid_max": 2999}
  ],
  "subsystems": [
    {"nqn": "nqn.2026-11.dev.tessera:vol1", "hosts": "any"},
    {"nqn": "nqn.2026-11.dev.tessera:vol2", "hosts": {"only": ["nqn.2026-11.dev.tessera:h1"]}}
  ],
  "volumes": [
    {"name": "vol1", "uuid": "0f0e3d528a8b4c3e9d2a6b1f5e7c9a01", "size_bytes": 100663296,
     "block_size": 512, "extent_size": 67108864, "replicas": 1,
     "subsystem": "nqn.2026-11.dev.tessera:vol1", "nsid": 1,
     "extents": [
       {"replicas": [{"server": "s1", "offset": 0}], "moving": null},
       {"replicas": [{"server": "s2", "offset": 0}],
        "moving": {"to": {"server": "s3", "offset": 67108864}}}
     ]}
  ]
}"#;

fn doc() -> ClusterMap {
    serde_json::from_str(DOC).unwrap()
}

#[test]
fn json_round_trips_exactly() {
    let m = doc();
    let back: serde_json::Value = serde_json::to_value(&m).unwrap();
    let want: serde_json::Value = serde_json::from_str(DOC).unwrap();
    assert_eq!(back, want);
    assert_eq!(m.server("s2").unwrap().state, ServerState::Draining);
    assert_eq!(
        m.subsystems[1].hosts,
        HostPolicy::Only(vec!["nqn.2026-11.dev.tessera:h1".into()])
    );
    assert!(m.subsystems[1].hosts.allows("nqn.2026-11.dev.tessera:h1"));
    assert!(!m.subsystems[1].hosts.allows("nqn.2026-11.dev.tessera:h2"));
    m.validate().unwrap();
}

#[test]
fn hyphenated_uuid_is_read_too() {
    let text = DOC.replace(
        "0f0e3d528a8b4c3e9d2a6b1f5e7c9a01",
        "0f0e3d52-8a8b-4c3e-9d2a-6b1f5e7c9a01",
    );
    let m: ClusterMap = serde_json::from_str(&text).unwrap();
    assert_eq!(m, doc());
    let bad = DOC.replace("0f0e3d528a8b4c3e9d2a6b1f5e7c9a01", "xyz");
    let e = serde_json::from_str::<ClusterMap>(&bad).unwrap_err();
    assert!(e.to_string().contains("invalid volume uuid \"xyz\""), "{e}");
}

#[test]
fn lookups() {
    let m = doc();
    assert_eq!(m.extent_range("vol1", 0), Some((0, 64 << 20)));
    // The last extent ends with the volume.
    assert_eq!(m.extent_range("vol1", 1), Some((64 << 20, 32 << 20)));
    assert_eq!(m.extent_range("vol1", 2), None);
    assert_eq!(m.extent_of("vol1", (64 << 20) - 1), Some(0));
    assert_eq!(m.extent_of("vol1", 64 << 20), Some(1));
    assert_eq!(m.extent_of("vol1", 96 << 20), None);
    assert_eq!(m.owner("vol1", 1).unwrap().server, "s2");
    assert!(m.volume("nope").is_none() && m.server("s9").is_none());
    assert_eq!(m.free_bytes("s3"), (2 << 30) - (64 << 20));
}

#[test]
fn changed_owners_lists_lost_extents() {
    let old = doc();
    let mut new = old.clone();
    new.generation = 8;
    new.volumes[0].extents[1].replicas[0] = new.volumes[0].extents[1].moving.take().unwrap().to;
    let lost = ClusterMap::changed_owners(&old, &new);
    assert_eq!(lost.len(), 1);
    assert_eq!(
        (
            lost[0].volume.as_str(),
            lost[0].extent,
            lost[0].old_owner.as_str()
        ),
        ("vol1", 1, "s2")
    );
    assert!(ClusterMap::changed_owners(&old, &old).is_empty());
}

#[test]
fn validate_catches_each_broken_invariant() {
    let check = |f: &dyn Fn(&mut ClusterMap)| {
        let mut m = doc();
        f(&mut m);
        m.validate().unwrap_err()
    };
    assert_eq!(check(&|m| m.generation = 0), MapError::GenerationZero);
    assert_eq!(
        check(&|m| m.volumes[0].extents[1].moving.as_mut().unwrap().to.offset = 2147483648 - 512)
            .to_string(),
        "volume vol1 extent 1: offset 2147483136 is outside server s3's pool"
    );
    assert_eq!(
        check(&|m| m.volumes[0].extents[1].replicas[0].server = "s1".into()).to_string(),
        "server s1: pool ranges of vol1[0] and vol1[1] overlap"
    );
    assert_eq!(
        check(&|m| m.volumes[0].extents.pop().map(drop).unwrap_or(())).to_string(),
        "volume vol1: 1 extents, expected 2"
    );
    assert_eq!(
        check(&|m| {
            let mut v = m.volumes[0].clone();
            v.name = "vol2".into();
            v.uuid[0] ^= 1;
            for e in &mut v.extents {
                e.replicas[0].offset += 1 << 30;
                e.moving = None;
            }
            m.volumes.push(v);
        })
        .to_string(),
        "subsystem nqn.2026-11.dev.tessera:vol1: NSID 1 used by both vol1 and vol2"
    );
    assert_eq!(
        check(&|m| m.servers[1].cntlid_min = 1).to_string(),
        "server s2: CNTLID range is not 1001..=1999"
    );
    assert_eq!(
        check(&|m| m.volumes[0].subsystem = "nqn.2026-11.dev.tessera:x".into()).to_string(),
        "volume vol1: unknown subsystem nqn.2026-11.dev.tessera:x"
    );
    assert_eq!(
        check(&|m| m.volumes[0].extents[0].replicas[0].server = "s9".into()).to_string(),
        "volume vol1 extent 0: unknown server s9"
    );
    assert_eq!(
        check(&|m| m.servers[2].id = "s1".into()).to_string(),
        "duplicate server id s1"
    );
}
