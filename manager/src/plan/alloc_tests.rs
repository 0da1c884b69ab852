//! Placement over failure domains: distinct racks when the up servers span enough of them, as
//! distinct as possible otherwise (and [`shared_domains`] says so), and, without racks, exactly
//! the placement of the plain round-robin (a reference copy of it below, checked by a property
//! test), so maps made before racks existed place new extents as they always did.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::api::{AddServerRequest, CreateVolumeRequest};
use crate::map::{HostPolicy, ServerEntry};
use crate::plan::{
    Change, PlanError, add_server, apply, create_volume, edit_add_server, initial_map, reload,
    reload_from, resize_volume,
};

const MIB: u64 = 1 << 20;
const NQN: &str = "nqn.2026-11.dev.tessera:t";

/// A map (generation 1) with servers `(id, rack, pool MiB, state)`, in that order.
fn cluster(servers: &[(&str, Option<&str>, u64, ServerState)]) -> ClusterMap {
    let mut m = ClusterMap::empty();
    for (k, (id, rack, pool, state)) in servers.iter().enumerate() {
        let n = u16::try_from(k).unwrap();
        edit_add_server(
            &mut m,
            &AddServerRequest {
                id: (*id).to_owned(),
                portal: format!("127.0.0.1:{}", 4420 + n).parse().unwrap(),
                internal: format!("127.0.0.1:{}", 4520 + n).parse().unwrap(),
                pool_bytes: pool * MIB,
                rack: rack.map(str::to_owned),
            },
        )
        .unwrap();
        m.servers[k].state = *state;
    }
    m.generation = 1;
    m
}

fn up(
    id: &'static str,
    rack: Option<&'static str>,
) -> (&'static str, Option<&'static str>, u64, ServerState) {
    (id, rack, 64, ServerState::Up)
}

fn vol(name: &str, extents: u64, replicas: u32) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.to_owned(),
        size: extents * MIB,
        block_size: None,
        extent_size: Some(MIB),
        replicas: Some(replicas),
        subsystem: NQN.to_owned(),
        nsid: None,
        hosts: Some(HostPolicy::Any),
    }
}

/// The servers of each extent of `v`, primary first.
fn copies(m: &ClusterMap, v: &str) -> Vec<Vec<String>> {
    m.volume(v)
        .unwrap()
        .extents
        .iter()
        .map(|e| e.replicas.iter().map(|r| r.server.clone()).collect())
        .collect()
}

fn rack_of<'a>(m: &'a ClusterMap, id: &'a str) -> Domain<'a> {
    Domain::of(m.server(id).unwrap())
}

/// Distinct domains among the copies of each extent of `v`.
fn domains_per_extent(m: &ClusterMap, v: &str) -> Vec<usize> {
    copies(m, v)
        .iter()
        .map(|c| {
            let mut d: Vec<Domain<'_>> = c.iter().map(|id| rack_of(m, id)).collect();
            d.sort_unstable();
            d.dedup();
            d.len()
        })
        .collect()
}

/// How many copies, and how many primaries, each server holds.
fn load(m: &ClusterMap) -> BTreeMap<String, (usize, usize)> {
    let mut out = BTreeMap::new();
    for v in &m.volumes {
        for e in &v.extents {
            for (k, r) in e.replicas.iter().enumerate() {
                let x: &mut (usize, usize) = out.entry(r.server.clone()).or_default();
                x.0 += 1;
                x.1 += usize::from(k == 0);
            }
        }
    }
    out
}

#[test]
fn two_copies_go_to_two_racks_and_the_load_stays_even() {
    // Declared rack by rack: the stripe interleaves them (a1 b1 a2 b2).
    let m = cluster(&[
        up("a1", Some("a")),
        up("a2", Some("a")),
        up("b1", Some("b")),
        up("b2", Some("b")),
    ]);
    assert_eq!(
        up_servers(&m).iter().collect::<Vec<_>>(),
        ["a1", "b1", "a2", "b2"]
    );
    let m = create_volume(&m, &vol("v", 8, 2)).unwrap();
    assert_eq!(domains_per_extent(&m, "v"), [2; 8]);
    assert_eq!(
        copies(&m, "v")[..4],
        [["a1", "b1"], ["b1", "a2"], ["a2", "b2"], ["b2", "a1"]]
    );
    for (id, (held, primary)) in load(&m) {
        assert_eq!((held, primary), (4, 2), "{id}");
    }
    assert_eq!(shared_domains(&m), []);
}

#[test]
fn three_copies_go_to_three_racks_of_unequal_sizes() {
    let m = cluster(&[
        up("a1", Some("a")),
        up("a2", Some("a")),
        up("a3", Some("a")),
        up("b1", Some("b")),
        up("c1", Some("c")),
        up("c2", Some("c")),
    ]);
    let m = create_volume(&m, &vol("v", 12, 3)).unwrap();
    assert_eq!(domains_per_extent(&m, "v"), [3; 12]);
    // b1 is the only server of rack b: it holds a copy of every extent.
    assert_eq!(load(&m)["b1"].0, 12);
    assert_eq!(shared_domains(&m), []);
    // Growing the volume keeps the rule.
    let m = resize_volume(&m, "v", 20 * MIB).unwrap();
    assert_eq!(domains_per_extent(&m, "v"), [3; 20]);
}

#[test]
fn too_few_racks_spread_as_far_as_they_go_and_name_the_volume() {
    let m = cluster(&[
        up("a1", Some("a")),
        up("a2", Some("a")),
        up("b1", Some("b")),
    ]);
    let m = create_volume(&m, &vol("v", 4, 3)).unwrap();
    // Three distinct servers, two racks: as distinct as it gets.
    for c in copies(&m, "v") {
        let mut s = c.clone();
        s.sort_unstable();
        assert_eq!(s, ["a1", "a2", "b1"]);
    }
    assert_eq!(domains_per_extent(&m, "v"), [2; 4]);
    let w = shared_domains(&m);
    assert_eq!(
        w,
        [SharedDomains {
            volume: "v".into(),
            replicas: 3,
            extents: 4,
            of: 4,
            domains_up: 2,
        }]
    );
    assert!(
        w[0].to_string().starts_with(
            "volume v: 4 of 4 extents have copies sharing a failure domain (replicas 3, the up \
             servers span 2 domains"
        ),
        "{}",
        w[0]
    );
    // A volume with two copies on the same cluster fits on distinct racks.
    let m = create_volume(&m, &vol("w", 4, 2)).unwrap();
    assert_eq!(domains_per_extent(&m, "w"), [2; 4]);
    assert_eq!(shared_domains(&m).len(), 1);
}

#[test]
fn one_rack_for_all_servers_still_means_distinct_servers() {
    let m = cluster(&[
        up("s1", Some("r")),
        up("s2", Some("r")),
        up("s3", Some("r")),
    ]);
    let m = create_volume(&m, &vol("v", 3, 2)).unwrap();
    assert_eq!(copies(&m, "v"), [["s1", "s2"], ["s2", "s3"], ["s3", "s1"]]);
    assert_eq!(shared_domains(&m)[0].extents, 3);
    assert_eq!(shared_domains(&m)[0].domains_up, 1);
    assert!(shared_domains(&m)[0].to_string().contains("span 1 domain:"));
}

#[test]
fn a_full_rack_makes_later_copies_share_another() {
    // Rack a has room for two extents only.
    let m = cluster(&[
        ("a1", Some("a"), 2, ServerState::Up),
        up("b1", Some("b")),
        up("b2", Some("b")),
    ]);
    let m = create_volume(&m, &vol("v", 4, 2)).unwrap();
    assert_eq!(domains_per_extent(&m, "v"), [2, 2, 1, 1]);
    assert_eq!(load(&m)["a1"].0, 2);
    assert_eq!(shared_domains(&m)[0].extents, 2);
}

#[test]
fn only_up_servers_count_as_domains() {
    let m = cluster(&[
        up("a1", Some("a")),
        ("b1", Some("b"), 64, ServerState::Draining),
        up("a2", Some("a")),
        ("c1", Some("c"), 64, ServerState::Down),
    ]);
    let u = up_servers(&m);
    assert_eq!((u.len(), u.domain_count()), (2, 1));
    let m = create_volume(&m, &vol("v", 2, 2)).unwrap();
    assert_eq!(domains_per_extent(&m, "v"), [1, 1]);
    assert_eq!(shared_domains(&m)[0].domains_up, 1);
}

#[test]
fn a_server_without_a_rack_is_a_domain_of_its_own() {
    // s1's rack is named like s2, which has no rack: still two domains.
    let m = cluster(&[up("s1", Some("s2")), up("s2", None), up("s3", Some("s2"))]);
    let u = up_servers(&m);
    assert_eq!(u.domain_count(), 2);
    assert_eq!(u.iter().collect::<Vec<_>>(), ["s1", "s2", "s3"]);
    let m = create_volume(&m, &vol("v", 6, 2)).unwrap();
    assert_eq!(domains_per_extent(&m, "v"), [2; 6]);
    // Without any rack, no volume ever shares a domain.
    let plain = cluster(&[up("s1", None), up("s2", None), up("s3", None)]);
    let plain = create_volume(&plain, &vol("v", 6, 3)).unwrap();
    assert_eq!(shared_domains(&plain), []);
}

#[test]
fn new_shared_domains_reports_what_a_change_made_worse() {
    let m = cluster(&[up("a1", Some("a")), up("a2", Some("a")), up("b1", None)]);
    let m1 = create_volume(&m, &vol("v", 2, 3)).unwrap();
    assert_eq!(new_shared_domains(&m, &m1).len(), 1);
    // Another volume that fits on distinct domains: nothing new.
    let m2 = create_volume(&m1, &vol("w", 2, 2)).unwrap();
    assert_eq!(new_shared_domains(&m1, &m2), []);
    // Growing v adds extents that share: reported again, with the new count.
    let m3 = resize_volume(&m2, "v", 3 * MIB).unwrap();
    let w = new_shared_domains(&m2, &m3);
    assert_eq!((w.len(), w[0].volume.as_str(), w[0].extents), (1, "v", 3));
}

#[test]
fn racks_in_the_map_json_are_optional() {
    // A server entry stored before racks existed loads with none, and none is not written.
    let old = r#"{"id":"s1","portal":"127.0.0.1:4420","internal":"127.0.0.1:4430","state":"up","pool_bytes":1048576,"cntlid_min":1,"cntlid_max":999}"#;
    let s: ServerEntry = serde_json::from_str(old).unwrap();
    assert_eq!(s.rack, None);
    assert_eq!(serde_json::to_string(&s).unwrap(), old);
    let mut r = s.clone();
    r.rack = Some("r1".into());
    let json = serde_json::to_string(&r).unwrap();
    assert!(json.ends_with(r#""cntlid_max":999,"rack":"r1"}"#), "{json}");
    assert_eq!(serde_json::from_str::<ServerEntry>(&json).unwrap(), r);
    // The API request likewise.
    let req: AddServerRequest = serde_json::from_str(
        r#"{"id":"s2","portal":"127.0.0.1:4421","internal":"127.0.0.1:4431","pool_bytes":1048576}"#,
    )
    .unwrap();
    assert_eq!(req.rack, None);
}

#[test]
fn add_server_checks_and_keeps_the_rack() {
    let m = cluster(&[up("s1", None)]);
    let mut req = AddServerRequest {
        id: "s2".into(),
        portal: "127.0.0.1:4421".parse().unwrap(),
        internal: "127.0.0.1:4431".parse().unwrap(),
        pool_bytes: 64 * MIB,
        rack: Some("r 1".into()),
    };
    let e = add_server(&m, &req).unwrap_err();
    assert!(matches!(e, PlanError::BadName { what: "rack", .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "invalid rack \"r 1\" (expected 1 to 64 characters among A-Z a-z 0-9 . _ -)"
    );
    req.rack = Some(String::new());
    assert!(add_server(&m, &req).is_err());
    req.rack = Some("r1".into());
    let m = apply(&m, &Change::AddServer(req)).unwrap();
    assert_eq!(m.server("s2").unwrap().rack.as_deref(), Some("r1"));
}

const YAML: &str = "servers:
  - { id: s1, portal: 127.0.0.1:4420, internal: 127.0.0.1:4430, pool: 64MiB }
  - { id: s2, portal: 127.0.0.1:4421, internal: 127.0.0.1:4431, pool: 64MiB }
  - { id: s3, portal: 127.0.0.1:4422, internal: 127.0.0.1:4432, pool: 64MiB }
  - { id: s4, portal: 127.0.0.1:4423, internal: 127.0.0.1:4433, pool: 64MiB }
subsystems:
  - { nqn: nqn.2026-11.dev.tessera:t, allow_any_host: true }
volumes:
  - { name: a, size: 8MiB, extent_size: 1MiB, replicas: 2, subsystem: nqn.2026-11.dev.tessera:t, nsid: 1 }
";

fn yaml(text: &str) -> yaml::Cluster {
    yaml::parse_cluster_str("c.yaml", text).unwrap()
}

/// `YAML` with s1, s2 in rack x and s3, s4 in rack y.
fn racked() -> String {
    YAML.replace("pool: 64MiB }", "pool: 64MiB, rack: RACK }")
        .replacen("RACK", "x", 2)
        .replace("RACK", "y")
}

#[test]
fn a_yaml_without_racks_places_as_before() {
    let m = initial_map(&yaml(YAML)).unwrap();
    assert!(m.servers.iter().all(|s| s.rack.is_none()));
    // The plain round-robin: copies on the next server along.
    assert_eq!(
        copies(&m, "a")[..4],
        [["s1", "s2"], ["s2", "s3"], ["s3", "s4"], ["s4", "s1"]]
    );
    assert_eq!(shared_domains(&m), []);
}

#[test]
fn a_yaml_with_racks_places_copies_across_them() {
    let m = initial_map(&yaml(&racked())).unwrap();
    let racks: Vec<_> = m.servers.iter().map(|s| s.rack.as_deref()).collect();
    assert_eq!(racks, [Some("x"), Some("x"), Some("y"), Some("y")]);
    assert_eq!(domains_per_extent(&m, "a"), [2; 8]);
    assert_eq!(
        copies(&m, "a")[..4],
        [["s1", "s3"], ["s3", "s2"], ["s2", "s4"], ["s4", "s1"]]
    );
}

#[test]
fn racks_added_by_a_reload_move_nothing() {
    let m = initial_map(&yaml(YAML)).unwrap();
    let before = m.volume("a").unwrap().clone();
    let m1 = reload_from(&m, Some(&yaml(YAML)), &yaml(&racked())).unwrap();
    assert_eq!(m1.generation, m.generation + 1);
    assert_eq!(m1.server("s3").unwrap().rack.as_deref(), Some("y"));
    assert_eq!(*m1.volume("a").unwrap(), before);
    // Existing copies on s1+s2 (rack x) or s3+s4 (rack y), 4 of the 8 extents, now share a
    // rack: the manager says so.
    assert_eq!(shared_domains(&m1)[0].extents, 4);
    // A rack the file did not edit is left as the map has it; an edited one is applied.
    let mut m2 = m1.clone();
    m2.servers[0].rack = Some("z".into());
    assert_eq!(
        reload_from(&m2, Some(&yaml(&racked())), &yaml(&racked())).unwrap(),
        m2
    );
    let unracked = racked().replacen(", rack: x", "", 1);
    let m3 = reload_from(&m2, Some(&yaml(&racked())), &yaml(&unracked)).unwrap();
    assert_eq!(m3.server("s1").unwrap().rack, None);
    // An unchanged file on a fresh reload: the same map.
    assert_eq!(reload(&m1, &yaml(&racked())).unwrap(), m1);
}

/// The placement before failure domains, kept verbatim as the reference: `up` in declaration
/// order, each extent on the first `replicas` servers with room from `start + index` on.
fn plain_place(
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

fn arb_state() -> impl Strategy<Value = ServerState> {
    prop_oneof![
        3 => Just(ServerState::Up),
        1 => Just(ServerState::Down),
        1 => Just(ServerState::Draining)
    ]
}

/// A map with 1 to 8 servers (random pools and states, racks from `racks`) and up to 4
/// volumes placed on it (those that fit).
fn arb_map(racks: impl Strategy<Value = Option<u8>> + Clone) -> impl Strategy<Value = ClusterMap> {
    (
        proptest::collection::vec((1..24u64, arb_state(), racks), 1..8),
        proptest::collection::vec((1..12u64, 1..=3u32), 0..4),
    )
        .prop_map(|(servers, vols)| {
            let names: Vec<String> = (0..servers.len()).map(|k| format!("s{k}")).collect();
            let racks: Vec<Option<String>> = servers
                .iter()
                .map(|(_, _, r)| r.map(|r| format!("r{r}")))
                .collect();
            let spec: Vec<_> = servers
                .iter()
                .enumerate()
                .map(|(k, (pool, state, _))| {
                    (names[k].as_str(), racks[k].as_deref(), *pool, *state)
                })
                .collect();
            let mut m = cluster(&spec);
            for (k, (extents, replicas)) in vols.iter().enumerate() {
                if let Ok(next) = create_volume(&m, &vol(&format!("v{k}"), *extents, *replicas)) {
                    m = next;
                }
            }
            m
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Without racks, placement is the plain round-robin, extent by extent.
    #[test]
    fn without_racks_placement_is_the_plain_round_robin(
        m in arb_map(Just(None)),
        start in 0..8usize,
        replicas in 1..=3u32,
    ) {
        let up = up_servers(&m);
        let plain: Vec<String> = m
            .servers
            .iter()
            .filter(|s| s.state == ServerState::Up)
            .map(|s| s.id.clone())
            .collect();
        prop_assert_eq!(up.iter().cloned().collect::<Vec<_>>(), plain.clone());
        prop_assert_eq!(up.domain_count(), plain.len());
        let (mut a, mut b) = (Pools::of(&m, &[]), Pools::of(&m, &[]));
        prop_assert_eq!(stripe_start(&a, &up), {
            // The reference stripe start: the first server with the most free space.
            let mut best = (0, 0);
            for (k, id) in plain.iter().enumerate() {
                let free = b.free_bytes(id);
                if k == 0 || free > best.1 {
                    best = (k, free);
                }
            }
            best.0
        });
        let start = if plain.is_empty() { 0 } else { start % plain.len() };
        for index in 0..24 {
            let ours = place_extent(&mut a, &up, start, index, replicas, MIB);
            let theirs = plain_place(&mut b, &plain, start, index, replicas, MIB);
            prop_assert_eq!(ours, theirs, "extent {}", index);
        }
        prop_assert_eq!(shared_domains(&m), []);
    }

    /// With racks and room everywhere: distinct servers always, and as many domains per extent
    /// as the copies need or the up servers have; a volume is reported exactly when it must
    /// share.
    #[test]
    fn with_racks_copies_span_as_many_domains_as_there_are(
        servers in proptest::collection::vec((arb_state(), proptest::option::of(0..3u8)), 1..8),
        replicas in 1..=3u32,
        extents in 1..16u64,
    ) {
        let spec: Vec<(String, Option<String>, ServerState)> = servers
            .iter()
            .enumerate()
            .map(|(k, (state, r))| (format!("s{k}"), r.map(|r| format!("r{r}")), *state))
            .collect();
        let spec: Vec<_> = spec
            .iter()
            .map(|(id, r, state)| (id.as_str(), r.as_deref(), 64, *state))
            .collect();
        let m = cluster(&spec);
        let up = up_servers(&m);
        let domains = up.domain_count();
        match create_volume(&m, &vol("v", extents, replicas)) {
            Err(e) => {
                let want = usize::try_from(replicas).unwrap();
                prop_assert!(up.len() < want, "{e}");
            }
            Ok(m) => {
                let want = usize::try_from(replicas).unwrap();
                for c in copies(&m, "v") {
                    let mut s = c.clone();
                    s.sort_unstable();
                    s.dedup();
                    prop_assert_eq!(s.len(), want);
                }
                for d in domains_per_extent(&m, "v") {
                    prop_assert_eq!(d, want.min(domains));
                }
                let shared = shared_domains(&m);
                prop_assert_eq!(shared.is_empty(), domains >= want || want == 1, "{:?}", shared);
            }
        }
    }
}
