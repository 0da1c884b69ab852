//! Derived identifiers are stable, distinct, and declared ones are kept.
#![allow(clippy::unwrap_used)]

use yaml::{derived_namespace_id, derived_serial, hex16, uuid_string};

#[test]
fn derived_ids_are_pinned() {
    // Pinned: a change here changes what every deployed namespace reports to hosts.
    let id = derived_namespace_id("nqn.2026-11.dev.tessera:default", 1);
    assert_eq!(uuid_string(&id), PINNED_DEFAULT_NS1);
    assert_eq!(
        derived_serial("nqn.2026-11.dev.tessera:default"),
        PINNED_DEFAULT_SERIAL
    );
}

// Cross-checked with Python: uuid.uuid5(UUID("3fc722f8-ab30-47f9-9d45-688ab40060c2"), name).
const PINNED_DEFAULT_NS1: &str = "881b2a9a-5c20-5cd2-92a5-7aa845e19e43";
const PINNED_DEFAULT_SERIAL: &str = "TSD936290583635EAC81";

#[test]
fn derived_ids_are_stable_and_distinct() {
    let a = "nqn.2026-11.dev.tessera:a";
    let b = "nqn.2026-11.dev.tessera:b";
    assert_eq!(derived_namespace_id(a, 1), derived_namespace_id(a, 1));
    assert_ne!(derived_namespace_id(a, 1), derived_namespace_id(a, 2));
    assert_ne!(derived_namespace_id(a, 1), derived_namespace_id(b, 1));
    // "…:a1" + NSID 1 is not "…:a" + NSID 11.
    assert_ne!(
        derived_namespace_id("nqn.2026-11.dev.tessera:a1", 1),
        derived_namespace_id(a, 11)
    );
    // RFC 4122 version 5, variant 10xx.
    let id = derived_namespace_id(a, 1);
    assert_eq!(id[6] >> 4, 5);
    assert_eq!(id[8] >> 6, 0b10);
    assert_eq!(derived_serial(a), derived_serial(a));
    assert_ne!(derived_serial(a), derived_serial(b));
    let s = derived_serial(a);
    assert_eq!(s.len(), yaml::SERIAL_BYTES_MAX);
    assert!(s.starts_with("TS") && s.bytes().all(|c| c.is_ascii_graphic()));
}

#[test]
fn parsed_layouts_use_the_derived_ids() {
    let text = "listeners:\n  - address: 127.0.0.1\nsubsystems:\n  - nqn: nqn.2026-11.dev.tessera:a\n    allow_any_host: true\n    namespaces:\n      - {nsid: 1, backend: {kind: null, size: 1M}}\n      - {nsid: 2, backend: {kind: null, size: 1M}}\n  - nqn: nqn.2026-11.dev.tessera:b\n    allow_any_host: true\n    namespaces:\n      - {nsid: 1, backend: {kind: null, size: 1M}}\n";
    let l1 = yaml::parse_str("x.yaml", text).unwrap();
    let l2 = yaml::parse_str("y.yaml", text).unwrap();
    let ids = |l: &yaml::Layout| -> Vec<[u8; 16]> {
        l.subsystems
            .iter()
            .flat_map(|s| s.namespaces.iter().map(|n| n.nguid))
            .collect()
    };
    assert_eq!(ids(&l1), ids(&l2), "same declaration, same identifiers");
    let v = ids(&l1);
    assert_eq!(v[0], derived_namespace_id("nqn.2026-11.dev.tessera:a", 1));
    assert_eq!(v[1], derived_namespace_id("nqn.2026-11.dev.tessera:a", 2));
    assert_eq!(v[2], derived_namespace_id("nqn.2026-11.dev.tessera:b", 1));
    assert_eq!(
        l1.subsystems[0].serial,
        derived_serial("nqn.2026-11.dev.tessera:a")
    );
}

#[test]
fn one_declared_id_serves_as_both() {
    let ns = |extra: &str| {
        let text = format!(
            "listeners:\n  - address: 127.0.0.1\nsubsystems:\n  - nqn: nqn.2026-11.dev.tessera:a\n    allow_any_host: true\n    namespaces:\n      - nsid: 1\n        backend: {{kind: null, size: 1M}}\n{extra}"
        );
        let l = yaml::parse_str("x.yaml", &text).unwrap();
        let n = &l.subsystems[0].namespaces[0];
        (n.nguid, n.uuid)
    };
    let (g, u) = ns("        uuid: 0F0E3D52-8A8B-4C3E-9D2A-6B1F5E7C9A01\n");
    assert_eq!(uuid_string(&u), "0f0e3d52-8a8b-4c3e-9d2a-6b1f5e7c9a01");
    assert_eq!(g, u);
    let (g, u) = ns("        nguid: 0123456789ABCDEF0123456789abcdef\n");
    assert_eq!(hex16(&g), "0123456789abcdef0123456789abcdef");
    assert_eq!(g, u);
    let (g, u) = ns(
        "        nguid: 0123456789abcdef0123456789abcdef\n        uuid: 0f0e3d52-8a8b-4c3e-9d2a-6b1f5e7c9a01\n",
    );
    assert_eq!(hex16(&g), "0123456789abcdef0123456789abcdef");
    assert_eq!(uuid_string(&u), "0f0e3d52-8a8b-4c3e-9d2a-6b1f5e7c9a01");
}
