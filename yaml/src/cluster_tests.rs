//! `rack:` on cluster servers: parsed, optional, and refused with file:line:field when bad.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use super::*;

/// A cluster file whose two servers have the `rack:` lines given (`""`: none).
fn with_racks(r1: &str, r2: &str) -> String {
    format!(
        "servers:
  - id: s1
    portal: 127.0.0.1:4420
    internal: 127.0.0.1:4430
    pool: 1GiB
{r1}
  - id: s2
    portal: 127.0.0.1:4421
    internal: 127.0.0.1:4431
    pool: 1GiB
{r2}
subsystems: []
"
    )
}

fn error(text: &str) -> LayoutError {
    match parse_cluster_str("c.yaml", text) {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(e) => e,
    }
}

#[test]
fn racks_are_optional_and_kept_as_written() {
    let c = parse_cluster_str("c.yaml", &with_racks("    rack: r-1", "")).unwrap();
    assert_eq!(c.servers[0].rack.as_deref(), Some("r-1"));
    assert_eq!(c.servers[1].rack, None);
    let c =
        parse_cluster_str("c.yaml", &with_racks("    rack: \"12\"", "    rack: A.b_c")).unwrap();
    assert_eq!(c.servers[0].rack.as_deref(), Some("12"));
    assert_eq!(c.servers[1].rack.as_deref(), Some("A.b_c"));
    let c = parse_cluster_str("c.yaml", &with_racks("", "")).unwrap();
    assert!(c.servers.iter().all(|s| s.rack.is_none()));
}

#[test]
fn flow_style_rack() {
    let text = "servers:
  - { id: s1, portal: 127.0.0.1:4420, internal: 127.0.0.1:4430, pool: 1GiB, rack: a }
subsystems: []
";
    let c = parse_cluster_str("c.yaml", text).unwrap();
    assert_eq!(c.servers[0].rack.as_deref(), Some("a"));
}

#[test]
fn empty_rack_is_refused_with_its_location() {
    let e = error(&with_racks("", "    rack: \"\""));
    assert_eq!(e.kind, ErrorKind::BadName);
    assert_eq!(
        e.to_string(),
        "c.yaml:11:11: servers[1].rack: invalid rack \"\" (expected a rack name: 1 to 64 \
         characters among A-Z a-z 0-9 . _ - (quote a number: rack: \"12\"))"
    );
}

#[test]
fn bad_rack_characters_are_refused() {
    for (line, shown) in [
        ("    rack: row 1", "\"row 1\""),
        ("    rack: a/b", "\"a/b\""),
        ("    rack: \"rü\"", "\"rü\""),
    ] {
        let e = error(&with_racks(line, ""));
        assert_eq!(e.kind, ErrorKind::BadName, "{line}");
        assert_eq!(
            (e.loc.line, e.loc.field.as_str()),
            (6, "servers[0].rack"),
            "{line}"
        );
        assert!(
            e.to_string().contains(&format!("invalid rack {shown}")),
            "{line}: {e}"
        );
    }
    let long = format!("    rack: {}", "r".repeat(NAME_CHARS_MAX + 1));
    assert_eq!(error(&with_racks(&long, "")).kind, ErrorKind::BadName);
    let longest = format!("    rack: {}", "r".repeat(NAME_CHARS_MAX));
    assert!(parse_cluster_str("c.yaml", &with_racks(&longest, "")).is_ok());
}

#[test]
fn non_string_racks_are_refused() {
    for (value, found) in [
        ("12", "integer"),
        ("true", "boolean"),
        ("[a, b]", "a list"),
        ("{a: 1}", "a mapping"),
        ("", "null"),
        ("1.5", "number 1.5"),
    ] {
        let e = error(&with_racks("", &format!("    rack: {value}")));
        assert_eq!(e.kind, ErrorKind::WrongType, "rack: {value}");
        assert_eq!(e.loc.line, 11, "rack: {value}");
        assert_eq!(e.loc.field, "servers[1].rack", "rack: {value}");
        let text = e.to_string();
        assert!(
            text.contains(found) && text.contains("quote a number"),
            "rack: {value}: {text}"
        );
    }
}
