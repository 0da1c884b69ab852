//! Cluster layouts: `examples/cluster.yaml` loads as documented; every
//! `examples/bad/cluster-*.yaml` fails with exactly its message; more errors from strings.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::Path;

use yaml::{DeclaredState, ErrorKind, HostPolicy, parse_cluster_str};

mod common;
use common::examples_dir;

/// (file in examples/bad, kind, message after `FILE:`).
const BAD: &[(&str, ErrorKind, &str)] = &[
    (
        "cluster-bad-portal.yaml",
        ErrorKind::BadAddress,
        "3:13: servers[0].portal: not an address and port: \"localhost:4420\" (expected an IP address and port such as 127.0.0.1:4420 or \"[::1]:4420\"; host names are not resolved)",
    ),
    (
        "cluster-bad-server-id.yaml",
        ErrorKind::BadName,
        "2:9: servers[0].id: invalid server id \"s 1\" (expected 1 to 64 characters among A-Z a-z 0-9 . _ -)",
    ),
    (
        "cluster-duplicate-address.yaml",
        ErrorKind::DuplicateListener,
        "7:13: servers[1].portal: address 127.0.0.1:4420 is already declared at line 3 (expected every portal and internal address once)",
    ),
    (
        "cluster-duplicate-nsid.yaml",
        ErrorKind::DuplicateNsid,
        "17:11: volumes[1].nsid: duplicate NSID 1 in subsystem nqn.2026-11.dev.tessera:vol1 (first used by volume vol1 at line 10)",
    ),
    (
        "cluster-duplicate-server.yaml",
        ErrorKind::DuplicateName,
        "6:9: servers[1].id: duplicate server id \"s1\" (first declared at line 2)",
    ),
    (
        "cluster-duplicate-volume.yaml",
        ErrorKind::DuplicateName,
        "14:11: volumes[1].name: duplicate volume name \"vol1\" (first declared at line 10)",
    ),
    (
        "cluster-extent-size.yaml",
        ErrorKind::SizeNotMultiple,
        "13:18: volumes[0].extent_size: extent_size 6144 bytes is not a multiple of the block size 4096 (expected a multiple of 4096, e.g. 8192)",
    ),
    (
        "cluster-missing-credential.yaml",
        ErrorKind::MissingField,
        "9:5: servers[1]: server s2 has no credential (expected credential: FILE on every server when credentials.operator is set)",
    ),
    (
        "cluster-no-servers.yaml",
        ErrorKind::MissingField,
        "1:10: servers: no servers (expected at least one {id, portal, internal, pool})",
    ),
    (
        "cluster-replicas.yaml",
        ErrorKind::BadReplicas,
        "12:15: volumes[0].replicas: invalid replica count 0 (expected an integer from 1 to 3)",
    ),
    (
        "cluster-size-not-multiple.yaml",
        ErrorKind::SizeNotMultiple,
        "11:11: volumes[0].size: size 1000000 bytes is not a multiple of the block size 512 (expected a multiple of 512, e.g. 1000448)",
    ),
    (
        "cluster-unknown-key.yaml",
        ErrorKind::UnknownKey,
        "6:5: servers[0].pool_size: unknown key \"pool_size\" (expected one of: id, portal, internal, pool, state, rack, credential)",
    ),
    (
        "cluster-unknown-subsystem.yaml",
        ErrorKind::UnknownReference,
        "12:16: volumes[0].subsystem: unknown subsystem nqn.2026-11.dev.tessera:vol2 (expected the NQN of a subsystem declared under subsystems)",
    ),
];

#[test]
fn every_bad_cluster_example_fails_with_its_message() {
    for (file, kind, message) in BAD {
        let path = examples_dir().join("bad").join(file);
        let e = yaml::load_cluster(&path).unwrap_err();
        assert_eq!(e.kind, *kind, "{file}: {e}");
        assert_eq!(
            e.to_string(),
            format!("{}:{message}", path.display()),
            "{file}"
        );
    }
}

#[test]
fn every_bad_cluster_example_is_listed() {
    let mut files: Vec<String> = std::fs::read_dir(examples_dir().join("bad"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("cluster-") && n.ends_with(".yaml"))
        .collect();
    files.sort();
    let mut listed: Vec<String> = BAD.iter().map(|(n, _, _)| (*n).to_owned()).collect();
    listed.sort();
    assert_eq!(files, listed);
}

#[test]
fn cluster_example_declares_what_it_says() {
    let c = yaml::load_cluster(&examples_dir().join("cluster.yaml")).unwrap();
    let ids: Vec<&str> = c.servers.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["s1", "s2", "s3"]);
    assert_eq!(c.servers[1].portal.to_string(), "127.0.0.1:4421");
    assert_eq!(c.servers[2].internal.to_string(), "127.0.0.1:4432");
    assert!(
        c.servers
            .iter()
            .all(|s| s.pool_bytes == 2 << 30 && s.state == DeclaredState::Up)
    );
    assert_eq!(c.subsystems[0].hosts, HostPolicy::Any);
    let v = &c.volumes[0];
    assert_eq!(
        (v.size_bytes, v.block_size, v.extent_size),
        (1 << 30, 512, 64 << 20)
    );
    assert_eq!((v.replicas, v.nsid), (1, 1));
    assert_eq!(v.uuid, yaml::derived_volume_uuid("vol1"));
    assert_eq!(v.loc.field, "volumes[0]");
}

const HEAD: &str = "servers:\n  - id: s1\n    portal: 127.0.0.1:4420\n    internal: 127.0.0.1:4430\n    pool: 1GiB\nsubsystems:\n  - nqn: nqn.2026-11.dev.tessera:a\n    hosts: [nqn.2026-11.dev.tessera:host1]\n";

fn fail(text: &str) -> (ErrorKind, String) {
    match parse_cluster_str("c.yaml", text) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => (e.kind, e.to_string()),
    }
}

#[test]
fn defaults_and_declared_values() {
    let text = format!(
        "{HEAD}volumes:\n  - name: v\n    size: 8MiB\n    subsystem: nqn.2026-11.dev.tessera:a\n    nsid: 3\n    \
         block_size: 4096\n    extent_size: 1MiB\n    replicas: 1\n    uuid: 123e4567-e89b-12d3-a456-426614174000\n"
    );
    let c = parse_cluster_str("c.yaml", &text).unwrap();
    let v = &c.volumes[0];
    assert_eq!((v.block_size, v.extent_size, v.nsid), (4096, 1 << 20, 3));
    assert_eq!(
        yaml::uuid_string(&v.uuid),
        "123e4567-e89b-12d3-a456-426614174000"
    );
    assert_eq!(
        c.subsystems[0].hosts,
        HostPolicy::Only(vec!["nqn.2026-11.dev.tessera:host1".to_owned()])
    );
    // No volumes key: no volumes.
    assert!(
        parse_cluster_str("c.yaml", HEAD)
            .unwrap()
            .volumes
            .is_empty()
    );
}

#[test]
fn server_state() {
    let text = HEAD.replace("pool: 1GiB", "pool: 1GiB\n    state: draining");
    let c = parse_cluster_str("c.yaml", &text).unwrap();
    assert_eq!(c.servers[0].state, DeclaredState::Draining);
    let text = HEAD.replace("pool: 1GiB", "pool: 1GiB\n    state: sleeping");
    assert_eq!(
        fail(&text),
        (
            ErrorKind::WrongType,
            "c.yaml:6:12: servers[0].state: unknown server state \"sleeping\" (expected up, down or draining)".to_owned()
        )
    );
}

#[test]
fn pool_not_whole_blocks() {
    let text = HEAD.replace("pool: 1GiB", "pool: 1000");
    assert_eq!(
        fail(&text),
        (
            ErrorKind::SizeNotMultiple,
            "c.yaml:5:11: servers[0].pool: size 1000 bytes is not a multiple of the block size 512 (expected a multiple of 512, e.g. 1024)".to_owned()
        )
    );
}

#[test]
fn wildcard_or_port_zero_address() {
    let text = HEAD.replace("internal: 127.0.0.1:4430", "internal: 0.0.0.0:4430");
    assert_eq!(
        fail(&text),
        (
            ErrorKind::BadAddress,
            "c.yaml:4:15: servers[0].internal: 0.0.0.0:4430 cannot be dialed (expected an IP address and port such as 127.0.0.1:4420 or \"[::1]:4420\", with a port from 1 to 65535 and a specific address: peers and hosts connect to it)".to_owned()
        )
    );
}

#[test]
fn unknown_root_key_and_empty_file() {
    assert_eq!(
        fail(&format!("{HEAD}listeners: []\n")),
        (
            ErrorKind::UnknownKey,
            "c.yaml:9:1: listeners: unknown key \"listeners\" (expected one of: servers, subsystems, volumes, credentials)".to_owned()
        )
    );
    assert_eq!(
        fail(""),
        (
            ErrorKind::Document,
            "c.yaml:1:1: (document): empty cluster file (expected a mapping with servers, subsystems and volumes)".to_owned()
        )
    );
}

#[test]
fn internal_nqn_is_reserved() {
    let text = HEAD.replace("tessera:a", "tessera:internal:s1");
    let (kind, msg) = fail(&text);
    assert_eq!(kind, ErrorKind::BadNqn);
    assert!(
        msg.starts_with(
            "c.yaml:7:10: subsystems[0].nqn: nqn.2026-11.dev.tessera:internal:s1 is reserved"
        ),
        "{msg}"
    );
}

#[test]
fn duplicate_volume_uuid() {
    let vol = |name: &str, nsid: u32| {
        format!(
            "  - name: {name}\n    size: 1MiB\n    subsystem: nqn.2026-11.dev.tessera:a\n    nsid: {nsid}\n    uuid: 123e4567-e89b-12d3-a456-426614174000\n"
        )
    };
    let text = format!("{HEAD}volumes:\n{}{}", vol("a", 1), vol("b", 2));
    assert_eq!(
        fail(&text),
        (
            ErrorKind::DuplicateId,
            "c.yaml:15:5: volumes[1]: duplicate volume UUID 123e4567-e89b-12d3-a456-426614174000 (first used by volume a at line 10; expected identifiers unique across the cluster)".to_owned()
        )
    );
}

#[test]
fn credentials_example_names_a_file_per_identity() {
    let c = yaml::load_cluster(&examples_dir().join("cluster-credentials.yaml")).unwrap();
    assert_eq!(
        c.operator_credential.as_deref(),
        Some(Path::new("keys/operator.key"))
    );
    let files: Vec<&Path> = c
        .servers
        .iter()
        .map(|s| s.credential.as_deref().unwrap())
        .collect();
    assert_eq!(
        files,
        [
            Path::new("keys/s1.key"),
            Path::new("keys/s2.key"),
            Path::new("keys/s3.key")
        ]
    );
    // The plain example has none (loopback only).
    let plain = yaml::load_cluster(&examples_dir().join("cluster.yaml")).unwrap();
    assert!(plain.operator_credential.is_none());
}

#[test]
fn credentials_all_or_nothing() {
    let two = HEAD.replace(
        "subsystems:",
        "  - id: s2\n    portal: 127.0.0.1:4421\n    internal: 127.0.0.1:4431\n    pool: 1GiB\nsubsystems:",
    );
    let with = |s1: &str, s2: &str, op: &str| {
        let mut t = two
            .replace(
                "pool: 1GiB\n  - id: s2",
                &format!("pool: 1GiB{s1}\n  - id: s2"),
            )
            .replace(
                "internal: 127.0.0.1:4431\n    pool: 1GiB",
                &format!("internal: 127.0.0.1:4431\n    pool: 1GiB{s2}"),
            );
        t.push_str(op);
        t
    };
    let c1 = "\n    credential: keys/s1.key";
    let c2 = "\n    credential: keys/s2.key";
    let op = "credentials:\n  operator: keys/operator.key\n";
    let c = parse_cluster_str("c.yaml", &with(c1, c2, op)).unwrap();
    assert_eq!(
        c.operator_credential.as_deref(),
        Some(Path::new("keys/operator.key"))
    );
    assert_eq!(
        c.servers[1].credential.as_deref(),
        Some(Path::new("keys/s2.key"))
    );
    // None at all: no authentication.
    let c = parse_cluster_str("c.yaml", &two).unwrap();
    assert!(c.operator_credential.is_none() && c.servers.iter().all(|s| s.credential.is_none()));
    // A server without one.
    assert_eq!(
        fail(&with(c1, "", op)),
        (
            ErrorKind::MissingField,
            "c.yaml:7:5: servers[1]: server s2 has no credential (expected credential: FILE on every server when credentials.operator is set)".to_owned()
        )
    );
    // Server credentials without an operator one.
    assert_eq!(
        fail(&with(c1, c2, "")),
        (
            ErrorKind::MissingField,
            "c.yaml:2:5: servers[0]: server s1 names a credential but there is no credentials.operator (expected credentials: {operator: FILE} with a credential for every server, or no credentials at all)".to_owned()
        )
    );
    // One file for two identities.
    assert_eq!(
        fail(&with(c1, "\n    credential: keys/s1.key", op)),
        (
            ErrorKind::DuplicateName,
            "c.yaml:7:5: servers[1]: server s2 names credential file keys/s1.key already named by server s1 (expected one file per server: a token identifies its holder)".to_owned()
        )
    );
    let (kind, msg) = fail(&with(c1, c2, "credentials:\n  operator: \"\"\n"));
    assert_eq!(kind, ErrorKind::BadString, "{msg}");
    let (kind, msg) = fail(&with(c1, c2, "credentials:\n  operator: k\n  servers: x\n"));
    assert_eq!(kind, ErrorKind::UnknownKey, "{msg}");
}
