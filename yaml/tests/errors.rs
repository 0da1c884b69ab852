//! Error kinds beyond the examples: exact messages from `parse_str`, and load-time file checks.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::io::Write;

use yaml::{BackendDecl, ErrorKind, parse_str};

/// Parses `text` as `t.yaml` and returns the error's kind and Display.
fn fail(text: &str) -> (ErrorKind, String) {
    match parse_str("t.yaml", text) {
        Ok(l) => panic!("expected an error, got {l:?}"),
        Err(e) => (e.kind, e.to_string()),
    }
}

/// A layout with one subsystem whose only namespace has `ns` as its body (indented 8).
fn with_namespace(ns: &str) -> String {
    format!(
        "listeners:\n  - address: 127.0.0.1\nsubsystems:\n  - nqn: nqn.2026-11.dev.tessera:t\n    \
         allow_any_host: true\n    namespaces:\n      - nsid: 1\n{ns}"
    )
}

#[test]
fn non_string_key() {
    assert_eq!(
        fail("listeners: []\n1: 2\n"),
        (
            ErrorKind::WrongType,
            "t.yaml:2:1: (document): wrong type: found key integer 1 (expected a key, one of: listeners, subsystems, transport)".to_owned()
        )
    );
}

#[test]
fn root_not_a_mapping() {
    assert_eq!(
        fail("- a\n- b\n"),
        (
            ErrorKind::WrongType,
            "t.yaml:1:1: (document): wrong type: found a list (expected a mapping with listeners and subsystems)".to_owned()
        )
    );
}

#[test]
fn second_document() {
    assert_eq!(
        fail("listeners: []\n---\nsubsystems: []\n").0,
        ErrorKind::Document
    );
}

#[test]
fn empty_listener_list() {
    assert_eq!(
        fail("listeners: []\nsubsystems: []\n"),
        (
            ErrorKind::MissingField,
            "t.yaml:1:12: listeners: no listeners (expected at least one {address, port})"
                .to_owned()
        )
    );
}

#[test]
fn too_many_listeners() {
    let mut text = String::from("listeners:\n");
    for port in 1..=65 {
        text.push_str(&format!("  - {{address: 127.0.0.1, port: {port}}}\n"));
    }
    text.push_str("subsystems: []\n");
    assert_eq!(
        fail(&text),
        (
            ErrorKind::TooMany,
            "t.yaml:66:5: listeners[64]: more than 64 listeners (expected at most 64)".to_owned()
        )
    );
}

#[test]
fn port_out_of_range_and_ipv6_wildcards() {
    assert_eq!(
        fail("listeners:\n  - {address: 127.0.0.1, port: 65536}\nsubsystems: []\n"),
        (
            ErrorKind::BadPort,
            "t.yaml:2:32: listeners[0].port: port 65536 is out of range (expected a TCP port from 1 to 65535, usually 4420)".to_owned()
        )
    );
    assert_eq!(
        fail("listeners:\n  - {address: \"::1\"}\n  - {address: \"::\"}\nsubsystems: []\n").0,
        ErrorKind::DuplicateListener
    );
    // Different families do not overlap here; whether `::` also takes IPv4 is the target's
    // socket option (IPV6_V6ONLY), not a layout property.
    let ok = parse_str(
        "t.yaml",
        "listeners:\n  - {address: 0.0.0.0}\n  - {address: \"::\"}\n  - {address: 127.0.0.1, port: 4421}\nsubsystems: []\n",
    )
    .unwrap();
    assert_eq!(ok.listeners.len(), 3);
    assert_eq!(ok.listeners[0].port, 4420, "default port");
}

#[test]
fn negative_and_fractional_sizes() {
    assert_eq!(
        fail(&with_namespace("        backend: {kind: ram, size: -512}\n")),
        (
            ErrorKind::BadSize,
            "t.yaml:8:36: subsystems[0].namespaces[0].backend.size: negative size -512 (expected a byte count such as 1073741824, or a number with a binary unit such as \"512MiB\" or \"1G\": K/KiB, M/MiB, G/GiB, T/TiB)".to_owned()
        )
    );
    assert_eq!(
        fail(&with_namespace(
            "        backend: {kind: ram, size: 1.5GiB}\n"
        ))
        .0,
        ErrorKind::BadSize
    );
    assert_eq!(
        fail(&with_namespace("        backend: {kind: ram, size: 1.5}\n")),
        (
            ErrorKind::WrongType,
            "t.yaml:8:36: subsystems[0].namespaces[0].backend.size: wrong type: found number 1.5 (expected a byte count such as 1073741824, or a number with a binary unit such as \"512MiB\" or \"1G\": K/KiB, M/MiB, G/GiB, T/TiB)".to_owned()
        )
    );
}

#[test]
fn null_kind_must_be_spelled() {
    let ok = parse_str(
        "t.yaml",
        &with_namespace("        backend: {kind: null, size: 1M}\n"),
    )
    .unwrap();
    assert_eq!(
        ok.subsystems[0].namespaces[0].backend,
        BackendDecl::Null { size: 1 << 20 }
    );
    // `~` and an empty value are YAML nulls too, but not a spelled backend kind.
    for kind in ["~", ""] {
        let text = with_namespace(&format!(
            "        backend:\n          kind: {kind}\n          size: 1M\n"
        ));
        assert_eq!(fail(&text).0, ErrorKind::WrongType, "kind: {kind:?}");
    }
}

#[test]
fn backend_without_kind() {
    assert_eq!(
        fail(&with_namespace("        backend: {size: 1M}\n")),
        (
            ErrorKind::MissingField,
            "t.yaml:8:18: subsystems[0].namespaces[0].backend.kind: missing required field \"kind\" (expected null, ram, file, block)".to_owned()
        )
    );
}

#[test]
fn tagged_value_is_a_wrong_type() {
    assert_eq!(
        fail(&with_namespace(
            "        backend: !disk {kind: ram, size: 1M}\n"
        ))
        .0,
        ErrorKind::WrongType
    );
}

#[test]
fn host_list_errors() {
    let sub = |hosts: &str| {
        format!(
            "listeners:\n  - address: 127.0.0.1\nsubsystems:\n  - nqn: nqn.2026-11.dev.tessera:t\n    hosts: {hosts}\n    namespaces: []\n"
        )
    };
    assert_eq!(
        fail(&sub("[]")),
        (
            ErrorKind::HostPolicy,
            "t.yaml:5:12: subsystems[0].hosts: empty host list: no host may connect (expected exactly one of: hosts: [host NQNs], allow_any_host: true)".to_owned()
        )
    );
    assert_eq!(
        fail(&sub("[nqn.2026-11.dev.tessera:h, nqn.2026-11.dev.tessera:h]")),
        (
            ErrorKind::DuplicateNqn,
            "t.yaml:5:40: subsystems[0].hosts[1]: duplicate host NQN nqn.2026-11.dev.tessera:h (first listed at line 5)".to_owned()
        )
    );
    assert_eq!(
        fail(&sub("[nqn.2014-08.org.nvmexpress.discovery]")).0,
        ErrorKind::BadNqn
    );
    assert_eq!(fail(&sub("[not-an-nqn]")).0, ErrorKind::BadNqn);
    // allow_any_host: false with hosts is a host list.
    let text = sub("[nqn.2026-11.dev.tessera:h]")
        .replace("    hosts:", "    allow_any_host: false\n    hosts:");
    assert!(parse_str("t.yaml", &text).is_ok());
    // allow_any_host: false alone lets no one in.
    let text = "listeners:\n  - address: 127.0.0.1\nsubsystems:\n  - nqn: nqn.2026-11.dev.tessera:t\n    allow_any_host: false\n    namespaces: []\n";
    assert_eq!(
        fail(text),
        (
            ErrorKind::HostPolicy,
            "t.yaml:5:5: subsystems[0].allow_any_host: no host may connect: neither hosts nor allow_any_host: true is set (expected exactly one of: hosts: [host NQNs], allow_any_host: true)".to_owned()
        )
    );
}

#[test]
fn empty_serial_and_control_characters() {
    let sub = |field: &str| {
        format!(
            "listeners:\n  - address: 127.0.0.1\nsubsystems:\n  - nqn: nqn.2026-11.dev.tessera:t\n    {field}\n    allow_any_host: true\n    namespaces: []\n"
        )
    };
    assert_eq!(
        fail(&sub("serial: \"\"")),
        (
            ErrorKind::BadString,
            "t.yaml:5:13: subsystems[0].serial: empty serial number (expected 1 to 20 printable ASCII characters, or omit the field)".to_owned()
        )
    );
    assert_eq!(fail(&sub("model: \"Tess\\tera\"")).0, ErrorKind::BadString);
    assert_eq!(fail(&sub("serial: 1234")).0, ErrorKind::WrongType);
    // Exactly at the limits is fine.
    let ok = parse_str(
        "t.yaml",
        &sub(&format!(
            "serial: {}\n    model: {}",
            "S".repeat(20),
            "M".repeat(40)
        )),
    )
    .unwrap();
    assert_eq!(ok.subsystems[0].serial.len(), 20);
    assert_eq!(ok.subsystems[0].model.len(), 40);
}

#[test]
fn all_zero_identifiers_are_refused() {
    assert_eq!(
        fail(&with_namespace("        nguid: \"00000000000000000000000000000000\"\n        backend: {kind: ram, size: 1M}\n")).0,
        ErrorKind::BadId
    );
    assert_eq!(
        fail(&with_namespace("        uuid: 00000000-0000-0000-0000-000000000000\n        backend: {kind: ram, size: 1M}\n")).0,
        ErrorKind::BadId
    );
    // Only the hyphenated form.
    assert_eq!(
        fail(&with_namespace("        uuid: \"{0f0e3d52-8a8b-4c3e-9d2a-6b1f5e7c9a01}\"\n        backend: {kind: ram, size: 1M}\n")).0,
        ErrorKind::BadId
    );
}

#[test]
fn declared_nguid_may_not_equal_another_namespaces_derived_one() {
    let derived = yaml::hex16(&yaml::derived_namespace_id("nqn.2026-11.dev.tessera:t", 1));
    let text = format!(
        "listeners:\n  - address: 127.0.0.1\nsubsystems:\n  - nqn: nqn.2026-11.dev.tessera:t\n    allow_any_host: true\n    namespaces:\n      - nsid: 1\n        backend: {{kind: ram, size: 1M}}\n      - nsid: 2\n        nguid: {derived}\n        backend: {{kind: ram, size: 1M}}\n"
    );
    assert_eq!(
        fail(&text),
        (
            ErrorKind::DuplicateId,
            format!(
                "t.yaml:10:16: subsystems[0].namespaces[1].nguid: duplicate NGUID {derived} (first used by subsystems[0].namespaces[0].nguid at line 7; expected identifiers unique across the layout)"
            )
        )
    );
}

#[test]
fn deep_nesting_and_alias_bombs_fail_cleanly() {
    let deep = format!("listeners: {}{}\n", "[".repeat(10_000), "]".repeat(10_000));
    assert_eq!(fail(&deep).0, ErrorKind::Syntax);
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let prev = i - 1;
        bomb.push_str(&format!(
            "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
        ));
    }
    assert_eq!(fail(&bomb).0, ErrorKind::Syntax);
}

#[test]
fn oversized_text_is_refused() {
    let text = "#".repeat(yaml::LAYOUT_BYTES_MAX + 1);
    assert_eq!(
        fail(&text),
        (
            ErrorKind::Io,
            format!(
                "t.yaml: layout is {} bytes (expected at most 1048576)",
                yaml::LAYOUT_BYTES_MAX + 1
            )
        )
    );
}

#[test]
fn load_reports_unreadable_and_non_utf8_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.yaml");
    let e = yaml::load(&missing).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Io);
    assert!(
        e.to_string()
            .starts_with(&format!("{}: cannot read layout: ", missing.display())),
        "{e}"
    );
    let bin = dir.path().join("bin.yaml");
    std::fs::write(&bin, b"listeners:\n  - address: \xff\n").unwrap();
    assert_eq!(
        yaml::load(&bin).unwrap_err().to_string(),
        format!(
            "{}:2:14: (syntax): invalid UTF-8 (expected a UTF-8 text file)",
            bin.display()
        )
    );
}

/// A layout with one file-backed namespace: `backend` is the flow mapping's body.
fn file_layout(backend: &str, block_size: u32) -> String {
    with_namespace(&format!(
        "        block_size: {block_size}\n        backend: {{kind: file, {backend}}}\n"
    ))
}

#[test]
fn file_backend_checks_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let layout_path = dir.path().join("layout.yaml");
    let load = |text: &str| {
        std::fs::write(&layout_path, text).unwrap();
        yaml::load(&layout_path)
    };
    let img = dir.path().join("disk.img");
    let mut f = std::fs::File::create(&img).unwrap();
    f.write_all(&[0u8; 8192]).unwrap();
    drop(f);

    // Relative to the layout's directory; no size: the file's length.
    let l = load(&file_layout("path: disk.img", 4096)).unwrap();
    let ns = &l.subsystems[0].namespaces[0];
    assert_eq!(ns.size_bytes, 8192);
    assert_eq!(
        ns.backend,
        BackendDecl::File {
            path: std::path::absolute(&img).unwrap(),
            size: None,
            create: false
        }
    );
    assert_eq!(
        ns.backend_loc.field,
        "subsystems[0].namespaces[0].backend.path"
    );
    assert_eq!((ns.backend_loc.line, ns.backend_loc.column), (9, 37));

    // A declared size must match an existing file.
    let e = load(&file_layout("path: disk.img, size: 4KiB", 512)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadBackend);
    assert_eq!(
        e.message,
        format!(
            "size 4096 bytes differs from the length of {}, 8192 bytes (expected the file's length; omit size to use it)",
            img.display()
        )
    );
    assert_eq!(
        load(&file_layout("path: disk.img, size: 8KiB", 512))
            .unwrap()
            .subsystems[0]
            .namespaces[0]
            .size_bytes,
        8192
    );

    // A length that is not whole blocks.
    std::fs::write(dir.path().join("odd.img"), [0u8; 1000]).unwrap();
    let e = load(&file_layout("path: odd.img", 512)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::SizeNotMultiple);
    // An empty file.
    std::fs::write(dir.path().join("empty.img"), []).unwrap();
    assert_eq!(
        load(&file_layout("path: empty.img", 512)).unwrap_err().kind,
        ErrorKind::ZeroSize
    );
    // A directory.
    assert_eq!(
        load(&file_layout("path: .", 512)).unwrap_err().kind,
        ErrorKind::BadBackend
    );

    // Absent: missing unless create, and create needs a size.
    assert_eq!(
        load(&file_layout("path: new.img", 512)).unwrap_err().kind,
        ErrorKind::MissingFile
    );
    let e = load(&file_layout("path: new.img, create: true", 512)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::MissingField);
    assert_eq!(
        e.to_string(),
        format!(
            "{}:9:18: subsystems[0].namespaces[0].backend.size: missing required field \"size\" (expected a size: {} does not exist and create: true needs one)",
            layout_path.display(),
            dir.path().join("new.img").display()
        )
    );
    let l = load(&file_layout("path: new.img, create: true, size: 1M", 512)).unwrap();
    assert_eq!(l.subsystems[0].namespaces[0].size_bytes, 1 << 20);
    assert!(
        !dir.path().join("new.img").exists(),
        "loading never creates files"
    );
}

#[test]
fn block_backend_checks_at_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("plain.img"), [0u8; 4096]).unwrap();
    let text =
        |path: &str| with_namespace(&format!("        backend: {{kind: block, path: {path}}}\n"));
    let src = dir.path().join("l.yaml").display().to_string();
    let e = parse_str(&src, &text("plain.img")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadBackend);
    assert!(e.message.contains("is not a block device"), "{e}");
    let e = parse_str(&src, &text("/dev/tessera-no-such-device")).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{src}:8:38: subsystems[0].namespaces[0].backend.path: missing block device /dev/tessera-no-such-device (expected an existing block device)"
        )
    );
    assert_eq!(
        parse_str(
            &src,
            &with_namespace("        backend: {kind: block, path: /dev/x, size: 1M}\n")
        )
        .unwrap_err()
        .kind,
        ErrorKind::UnknownKey
    );
}

#[test]
fn transport_section_defaults_and_values() {
    let base = "listeners:\n  - address: 127.0.0.1\nsubsystems:\n  - nqn: nqn.2026-11.dev.tessera:t\n    \
                allow_any_host: true\n    namespaces:\n      - nsid: 1\n        backend: { kind: ram, size: 1MiB }\n";
    let l = parse_str("t.yaml", base).unwrap();
    assert_eq!(l.transport, yaml::TransportDecl::default());
    assert_eq!(l.transport.max_io_size, 128 * 1024);
    assert_eq!(l.transport.in_capsule_data_size, 8192);
    let l = parse_str(
        "t.yaml",
        &format!("{base}transport:\n  max_io_size: 1MiB\n  in_capsule_data_size: 0\n"),
    )
    .unwrap();
    assert_eq!(l.transport.max_io_size, 1 << 20);
    assert_eq!(l.transport.in_capsule_data_size, 0);
    let l = parse_str(
        "t.yaml",
        &format!("{base}transport: {{ max_io_size: 8MiB }}\n"),
    )
    .unwrap();
    assert_eq!(l.transport.max_io_size, 8 << 20);
    assert_eq!(l.transport.in_capsule_data_size, 8192);
    // Below the minimum, above the in-capsule maximum, above max_io_size, negative, not a map.
    for (t, msg) in [
        (
            "{ max_io_size: 2KiB }",
            "t.yaml:9:27: transport.max_io_size: max_io_size 2048 is out of range",
        ),
        (
            "{ in_capsule_data_size: 128KiB }",
            "t.yaml:9:36: transport.in_capsule_data_size: in_capsule_data_size 131072 is out of range",
        ),
        (
            "{ max_io_size: 4KiB, in_capsule_data_size: 8KiB }",
            "t.yaml:9:55: transport.in_capsule_data_size: in_capsule_data_size 8192 is above max_io_size 4096",
        ),
        (
            "{ max_io_size: -1 }",
            "t.yaml:9:27: transport.max_io_size: negative size -1",
        ),
    ] {
        let (kind, text) = fail(&format!("{base}transport: {t}\n"));
        assert_eq!(kind, ErrorKind::BadTransport, "{t}");
        assert!(text.starts_with(msg), "{t}: {text}");
    }
    assert_eq!(
        fail(&format!("{base}transport: 1MiB\n")).0,
        ErrorKind::WrongType
    );
    assert_eq!(
        fail(&format!("{base}transport: {{ max_io_size: 1GB }}\n")).0,
        ErrorKind::BadSize
    );
}
