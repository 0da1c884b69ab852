//! NQN rules (NVMe Base 2.0 section 4.5).
#![allow(clippy::unwrap_used)]

use yaml::check_nqn;

#[test]
fn accepted_nqns() {
    for nqn in [
        "nqn.2026-11.dev.tessera:default",
        "nqn.2014-08.org.nvmexpress:uuid:6a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
        "nqn.2014-08.org.nvmexpress.discovery",
        "nqn.1999-01.com.example",
        "nqn.2016-06.io.spdk:cnode1",
        "nqn.2026-11.dev.tessera:a:b/c=d",
        "nqn.2026-11.com.my-company:éèà",
    ] {
        assert_eq!(check_nqn(nqn), Ok(()), "{nqn}");
    }
    let longest = format!("nqn.2026-11.dev.tessera:{}", "x".repeat(223 - 24));
    assert_eq!(longest.len(), yaml::NQN_BYTES_MAX);
    assert_eq!(check_nqn(&longest), Ok(()));
}

#[test]
fn refused_nqns() {
    let cases: &[(&str, &str)] = &[
        ("iqn.2026-11.dev.tessera:x", "does not start with \"nqn.\""),
        ("nqn.26-11.dev.tessera:x", "is not followed by a date"),
        ("nqn.2026-1.dev.tessera:x", "is not followed by a date"),
        ("nqn.2026-13.dev.tessera:x", "month 13 is not 01 to 12"),
        ("nqn.2026-00.dev.tessera:x", "month 00 is not 01 to 12"),
        ("nqn.2026-11.:x", "no reverse domain name"),
        ("nqn.2026-11.dev..tessera:x", "invalid label \"\""),
        ("nqn.2026-11.dev.-tessera:x", "invalid label \"-tessera\""),
        ("nqn.2026-11.dev.tes_sera:x", "invalid label \"tes_sera\""),
        ("nqn.2026-11.dev.tessera:", "nothing after \":\""),
        ("nqn.2026-11.dev.tessera:a b", "whitespace"),
        ("nqn.2014-08.org.nvmexpress:uuid:6a1b2c3d", "not a UUID"),
        ("nqn.2014-08.org.nvmexpress:uuid:", "not a UUID"),
    ];
    for (nqn, part) in cases {
        let e = check_nqn(nqn).expect_err(nqn);
        assert!(e.contains(part), "{nqn}: {e}");
    }
    let long = format!("nqn.2026-11.dev.tessera:{}", "x".repeat(224 - 24));
    assert!(
        check_nqn(&long)
            .unwrap_err()
            .contains("224 bytes long, more than 223")
    );
}
