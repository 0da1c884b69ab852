//! The embedded default layout.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};

use yaml::{BackendDecl, HostPolicy};

#[test]
fn default_layout_values() {
    let l = yaml::default_layout();
    assert_eq!(l.source, yaml::DEFAULT_SOURCE);
    assert_eq!(l.listeners.len(), 1);
    assert_eq!(l.listeners[0].addr, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(l.listeners[0].port, 4420);
    assert_eq!(l.listeners[0].socket_addr().to_string(), "127.0.0.1:4420");
    assert_eq!(l.subsystems.len(), 1);
    let s = &l.subsystems[0];
    assert_eq!(s.nqn, "nqn.2026-11.dev.tessera:default");
    assert_eq!(s.hosts, HostPolicy::Any);
    assert_eq!(s.model, "Tessera");
    assert_eq!(s.serial, yaml::derived_serial(&s.nqn));
    assert_eq!(s.namespaces.len(), 1);
    let ns = &s.namespaces[0];
    assert_eq!(ns.nsid, 1);
    assert_eq!(ns.block_size, 512);
    assert_eq!(ns.size_bytes, 1 << 30);
    assert_eq!(
        ns.backend,
        BackendDecl::Ram {
            size: 1 << 30,
            preallocate: false
        }
    );
    let id = yaml::derived_namespace_id(&s.nqn, 1);
    assert_eq!((ns.nguid, ns.uuid), (id, id));
    assert_eq!(ns.loc.field, "subsystems[0].namespaces[0]");
    assert_eq!(ns.loc.file, yaml::DEFAULT_SOURCE);
}

#[test]
fn default_layout_is_the_parsed_embedded_text() {
    assert_eq!(
        yaml::default_layout(),
        yaml::parse_str(yaml::DEFAULT_SOURCE, yaml::DEFAULT_YAML).unwrap()
    );
}

#[test]
fn location_display() {
    let l = yaml::default_layout();
    assert_eq!(
        l.listeners[0].loc.to_string(),
        "<embedded default.yaml>:5:5: listeners[0]"
    );
}
