//! Every `examples/*.yaml` loads; every `examples/bad/*.yaml` fails with exactly its message.
#![allow(clippy::unwrap_used, clippy::panic)]

use yaml::ErrorKind;

mod common;
use common::examples_dir;

/// (file in examples/bad, kind, message after `FILE:`). `{dir}` stands for the absolute
/// directory of the bad examples (relative backend paths are resolved against it).
const BAD: &[(&str, ErrorKind, &str)] = &[
    (
        "syntax.yaml",
        ErrorKind::Syntax,
        "3:4: (syntax): YAML syntax error: while parsing a block collection, did not find expected '-' indicator",
    ),
    (
        "duplicate-key.yaml",
        ErrorKind::DuplicateKey,
        "10:9: (syntax): duplicate key \"nsid\" in one mapping (expected each key once)",
    ),
    (
        "unknown-key.yaml",
        ErrorKind::UnknownKey,
        "7:5: subsystems[0].namespace: unknown key \"namespace\" (expected one of: nqn, serial, model, allow_any_host, hosts, require_dhchap, dhchap_dhgroup, namespaces)",
    ),
    (
        "unknown-backend-key.yaml",
        ErrorKind::UnknownKey,
        "8:43: subsystems[0].namespaces[0].backend.path: unknown key \"path\" (expected one of: kind, size, preallocate)",
    ),
    (
        "missing-field.yaml",
        ErrorKind::MissingField,
        "10:9: subsystems[0].namespaces[1].nsid: missing required field \"nsid\" (expected an integer from 1 to 4294967294)",
    ),
    (
        "no-listeners.yaml",
        ErrorKind::MissingField,
        "1:1: listeners: missing required field \"listeners\" (expected a list of {address, port})",
    ),
    (
        "wrong-type.yaml",
        ErrorKind::WrongType,
        "8:15: subsystems[0].namespaces[0].nsid: wrong type: found string \"one\" (expected an integer from 1 to 4294967294)",
    ),
    (
        "duplicate-nsid.yaml",
        ErrorKind::DuplicateNsid,
        "10:15: subsystems[0].namespaces[1].nsid: duplicate NSID 1 (first declared at line 8)",
    ),
    (
        "nsid-zero.yaml",
        ErrorKind::BadNsid,
        "7:15: subsystems[0].namespaces[0].nsid: invalid NSID 0 (expected an integer from 1 to 4294967294: 0 is invalid and 0xFFFFFFFF is the broadcast NSID)",
    ),
    (
        "nsid-broadcast.yaml",
        ErrorKind::BadNsid,
        "7:15: subsystems[0].namespaces[0].nsid: invalid NSID 4294967295 (expected an integer from 1 to 4294967294: 0 is invalid and 0xFFFFFFFF is the broadcast NSID)",
    ),
    (
        "duplicate-nqn.yaml",
        ErrorKind::DuplicateNqn,
        "7:10: subsystems[1].nqn: duplicate subsystem NQN nqn.2026-11.dev.tessera:default (first declared at line 4)",
    ),
    (
        "bad-nqn.yaml",
        ErrorKind::BadNqn,
        "4:10: subsystems[0].nqn: invalid NQN \"nqn.26-11.dev.tessera:default\": \"nqn.\" is not followed by a date yyyy-mm and a dot (expected nqn.yyyy-mm.reverse.domain:name, e.g. nqn.2026-11.dev.tessera:disk1, or nqn.2014-08.org.nvmexpress:uuid:<RFC 4122 UUID>)",
    ),
    (
        "discovery-nqn.yaml",
        ErrorKind::BadNqn,
        "4:10: subsystems[0].nqn: nqn.2014-08.org.nvmexpress.discovery is the discovery subsystem, served on every listener (expected the NQN of an NVM subsystem)",
    ),
    (
        "nqn-too-long.yaml",
        ErrorKind::BadNqn,
        "4:10: subsystems[0].nqn: invalid NQN \"nqn.2026-11.dev.tessera:xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...\": 224 bytes long, more than 223 (expected nqn.yyyy-mm.reverse.domain:name, e.g. nqn.2026-11.dev.tessera:disk1, or nqn.2014-08.org.nvmexpress:uuid:<RFC 4122 UUID>)",
    ),
    (
        "size-not-multiple.yaml",
        ErrorKind::SizeNotMultiple,
        "9:37: subsystems[0].namespaces[0].backend.size: size 1000000 bytes is not a multiple of the block size 4096 (expected a multiple of 4096, e.g. 1003520)",
    ),
    (
        "size-zero.yaml",
        ErrorKind::ZeroSize,
        "8:38: subsystems[0].namespaces[0].backend.size: size is 0 bytes (expected at least one 512-byte block)",
    ),
    (
        "size-unit.yaml",
        ErrorKind::BadSize,
        "8:37: subsystems[0].namespaces[0].backend.size: ambiguous unit \"GB\" in \"1GB\" (expected a binary unit: K/KiB, M/MiB, G/GiB, T/TiB)",
    ),
    (
        "block-size.yaml",
        ErrorKind::BadBlockSize,
        "8:21: subsystems[0].namespaces[0].block_size: unsupported block size 1024 (expected 512 or 4096)",
    ),
    (
        "bad-address.yaml",
        ErrorKind::BadAddress,
        "2:14: listeners[0].address: not an IP address: \"localhost\" (expected an IPv4 or IPv6 literal such as 127.0.0.1 or \"::1\"; host names are not resolved)",
    ),
    (
        "port-zero.yaml",
        ErrorKind::BadPort,
        "3:11: listeners[0].port: port 0 is out of range (expected a TCP port from 1 to 65535, usually 4420)",
    ),
    (
        "duplicate-listener.yaml",
        ErrorKind::DuplicateListener,
        "6:5: listeners[2]: duplicate listener 127.0.0.1:4420 (first declared at line 2)",
    ),
    (
        "wildcard-listener.yaml",
        ErrorKind::DuplicateListener,
        "4:5: listeners[1]: listener 127.0.0.2:4420 overlaps 0.0.0.0:4420 declared at line 2 (expected each address and port once; a wildcard address covers its whole family)",
    ),
    (
        "serial-too-long.yaml",
        ErrorKind::BadString,
        "5:13: subsystems[0].serial: serial number \"TESSERA-SERIAL-NUMBER-0001\" is 26 characters long (expected 1 to 20 printable ASCII characters)",
    ),
    (
        "model-non-ascii.yaml",
        ErrorKind::BadString,
        "5:12: subsystems[0].model: model number \"Tessera Stockage Réseau\" contains 'é', which is not printable ASCII (expected 1 to 40 printable ASCII characters)",
    ),
    (
        "hosts-and-any.yaml",
        ErrorKind::HostPolicy,
        "6:5: subsystems[0].hosts: both hosts and allow_any_host: true are set (expected exactly one of: hosts: [host NQNs], allow_any_host: true)",
    ),
    (
        "no-hosts.yaml",
        ErrorKind::HostPolicy,
        "4:5: subsystems[0]: no host may connect: neither hosts nor allow_any_host: true is set (expected exactly one of: hosts: [host NQNs], allow_any_host: true)",
    ),
    (
        "bad-nguid.yaml",
        ErrorKind::BadId,
        "8:16: subsystems[0].namespaces[0].nguid: invalid NGUID \"0123456789abcdef0123456789abcdeg\" (expected 32 hex digits, e.g. 0123456789abcdef0123456789abcdef)",
    ),
    (
        "bad-uuid.yaml",
        ErrorKind::BadId,
        "8:15: subsystems[0].namespaces[0].uuid: invalid UUID \"0f0e3d52-8a8b-4c3e-9d2a-6b1f5e7c9a0\" (expected 8-4-4-4-12 hex digits, e.g. 123e4567-e89b-12d3-a456-426614174000)",
    ),
    (
        "duplicate-nguid.yaml",
        ErrorKind::DuplicateId,
        "11:16: subsystems[0].namespaces[1].nguid: duplicate NGUID 0123456789abcdef0123456789abcdef (first used by subsystems[0].namespaces[0].nguid at line 8; expected identifiers unique across the layout)",
    ),
    (
        "duplicate-uuid.yaml",
        ErrorKind::DuplicateId,
        "14:15: subsystems[1].namespaces[0].uuid: duplicate UUID 0f0e3d52-8a8b-4c3e-9d2a-6b1f5e7c9a01 (first used by subsystems[0].namespaces[0].uuid at line 8; expected identifiers unique across the layout)",
    ),
    (
        "missing-file.yaml",
        ErrorKind::MissingFile,
        "10:17: subsystems[0].namespaces[0].backend.path: missing file {dir}/no-such-disk.img (expected an existing file, or create: true with a size)",
    ),
    (
        "unknown-backend.yaml",
        ErrorKind::BadBackend,
        "8:26: subsystems[0].namespaces[0].backend.kind: unknown backend kind \"nvme\" (expected one of: null, ram, file, block)",
    ),
    (
        "empty.yaml",
        ErrorKind::Document,
        "1:1: (document): empty layout (expected a mapping with listeners and subsystems)",
    ),
    (
        "transport-not-power-of-two.yaml",
        ErrorKind::BadTransport,
        "10:16: transport.max_io_size: max_io_size 786432 is not a power of two (expected a power of two from 4KiB to 8MiB, such as \"1MiB\")",
    ),
    (
        "transport-max-io-size.yaml",
        ErrorKind::BadTransport,
        "10:16: transport.max_io_size: max_io_size 16777216 is out of range (expected a power of two from 4KiB to 8MiB, such as \"1MiB\")",
    ),
    (
        "transport-in-capsule-multiple.yaml",
        ErrorKind::BadTransport,
        "10:25: transport.in_capsule_data_size: in_capsule_data_size 1000 is not a multiple of 16 (expected a multiple of 16 from 0 to 64KiB, such as \"8KiB\")",
    ),
    (
        "transport-unknown-key.yaml",
        ErrorKind::UnknownKey,
        "11:3: transport.mdts: unknown key \"mdts\" (expected one of: max_io_size, in_capsule_data_size)",
    ),
];

#[test]
fn every_bad_example_fails_with_its_exact_message() {
    let dir = examples_dir().join("bad");
    let abs_dir = std::path::absolute(&dir).unwrap();
    for (name, kind, rest) in BAD {
        let path = dir.join(name);
        let err = yaml::load(&path).expect_err(name);
        let expected = format!(
            "{}:{}",
            path.display(),
            rest.replace("{dir}", &abs_dir.display().to_string())
        );
        assert_eq!(err.to_string(), expected, "{name}");
        assert_eq!(err.kind, *kind, "{name}");
        assert_eq!(err.loc.file, path.display().to_string(), "{name}");
    }
}

#[test]
fn every_bad_example_has_an_expected_message() {
    let mut files: Vec<String> = std::fs::read_dir(examples_dir().join("bad"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        // cluster-*.yaml are the manager's cluster layouts: tests/cluster.rs lists them.
        .filter(|n| n.ends_with(".yaml") && !n.starts_with("cluster-"))
        .collect();
    files.sort();
    let mut listed: Vec<String> = BAD.iter().map(|(n, _, _)| (*n).to_owned()).collect();
    listed.sort();
    assert_eq!(files, listed);
}

#[test]
fn every_good_example_loads() {
    let mut n = 0;
    for entry in std::fs::read_dir(examples_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // cluster*.yaml are the manager's layouts, not the target's.
        if path.extension().is_some_and(|e| e == "yaml") && !name.starts_with("cluster") {
            let layout = yaml::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(layout.source, path.display().to_string());
            n += 1;
        }
    }
    assert!(n >= 3, "default, file-backed and multi at least");
}

#[test]
fn examples_default_is_the_embedded_default() {
    let text = std::fs::read_to_string(examples_dir().join("default.yaml")).unwrap();
    assert_eq!(text, yaml::DEFAULT_YAML);
}

#[test]
fn multi_example_declares_what_it_says() {
    use yaml::{BackendDecl, HostPolicy};
    let layout = yaml::load(&examples_dir().join("multi.yaml")).unwrap();
    let ports: Vec<u16> = layout.listeners.iter().map(|l| l.port).collect();
    assert_eq!(ports, [4420, 4421]);
    assert_eq!(layout.subsystems.len(), 2);
    let fast = &layout.subsystems[0];
    assert_eq!(fast.hosts, HostPolicy::Any);
    let kinds: Vec<&str> = fast.namespaces.iter().map(|n| n.backend.kind()).collect();
    assert_eq!(kinds, ["ram", "ram", "null"]);
    assert_eq!(
        fast.namespaces[1].backend,
        BackendDecl::Ram {
            size: 64 << 20,
            preallocate: true
        }
    );
    assert_eq!(fast.namespaces[1].block_size, 4096);
    assert_eq!(fast.namespaces[2].size_bytes, 1 << 40);
    let scratch = &layout.subsystems[1];
    assert_eq!(scratch.model, "Tessera scratch");
    assert!(matches!(&scratch.hosts, HostPolicy::Only(h) if h.len() == 1));
    let declared_uuid = [
        0x0f, 0x0e, 0x3d, 0x52, 0x8a, 0x8b, 0x4c, 0x3e, 0x9d, 0x2a, 0x6b, 0x1f, 0x5e, 0x7c, 0x9a,
        0x01,
    ];
    assert_eq!(scratch.namespaces[0].uuid, declared_uuid);
    assert_eq!(scratch.namespaces[0].nguid, declared_uuid);
    assert_eq!(scratch.namespaces[1].nsid, 7);
    assert_eq!(
        yaml::hex16(&scratch.namespaces[1].nguid),
        "0123456789abcdef0123456789abcdef"
    );
    assert_eq!(scratch.namespaces[1].size_bytes, 268_435_456);
    // Locations point at the declarations.
    assert_eq!(scratch.loc.field, "subsystems[1]");
    assert_eq!(scratch.loc.line, 19);
    assert_eq!(
        scratch.namespaces[1].loc.field,
        "subsystems[1].namespaces[1]"
    );
    assert_eq!(scratch.namespaces[1].loc.line, 29);
    assert_eq!(layout.listeners[1].loc.line, 5);
    assert_eq!(layout.listeners[1].loc.field, "listeners[1]");
}

#[test]
fn file_backed_example_resolves_and_keeps_the_path_location() {
    use yaml::{BackendDecl, HostPolicy};
    let layout = yaml::load(&examples_dir().join("file-backed.yaml")).unwrap();
    let sub = &layout.subsystems[0];
    assert_eq!(sub.serial, "TESSERAFILES0001");
    assert_eq!(
        sub.hosts,
        HostPolicy::Only(vec![
            "nqn.2014-08.org.nvmexpress:uuid:6a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d".to_owned(),
            "nqn.2026-11.dev.tessera:bench".to_owned(),
        ])
    );
    // `tessera bench`'s default --hostnqn: the example works with the tool's defaults.
    assert!(sub.hosts.allows("nqn.2026-11.dev.tessera:bench"));
    assert!(!sub.hosts.allows("nqn.2026-11.dev.tessera:host:other"));
    let ns = &sub.namespaces[0];
    assert_eq!(
        ns.backend,
        BackendDecl::File {
            path: examples_dir().join("tessera-files-ns1.img"),
            size: Some(256 << 20),
            create: true
        }
    );
    assert_eq!(ns.size_bytes, 256 << 20);
    assert_eq!(
        ns.backend_loc.field,
        "subsystems[0].namespaces[0].backend.path"
    );
    assert_eq!((ns.backend_loc.line, ns.backend_loc.column), (25, 17));
}
