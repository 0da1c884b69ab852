//! A two-server cluster with credentials, shared by the manager's integration tests
//! (`mod common;`): its YAML, its tokens, and how to write them into a test directory.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub const MIB: u64 = 1 << 20;

/// Two servers (s1, s2), an operator credential, one subsystem open to any host. The token
/// files are relative to the YAML's directory.
pub const CLUSTER: &str = "servers:
  - id: s1
    portal: 127.0.0.1:24420
    internal: 127.0.0.1:24430
    pool: 256MiB
    credential: keys/s1.key
  - id: s2
    portal: 127.0.0.1:24421
    internal: 127.0.0.1:24431
    pool: 256MiB
    credential: keys/s2.key
credentials:
  operator: keys/operator.key
subsystems:
  - nqn: nqn.2026-11.dev.tessera:t
    allow_any_host: true
";

/// The tokens of [`CLUSTER`]'s credentials: operator, s1, s2.
pub const TOKENS: [(&str, &str); 3] = [
    ("operator", "b3BlcmF0b3ItdG9rZW4tZm9yLXRlc3Rz"),
    ("s1", "czEtdG9rZW4tZm9yLXRoZS1hdXRoLXRlc3Q="),
    ("s2", "czItdG9rZW4tZm9yLXRoZS1hdXRoLXRlc3Q="),
];

/// Writes `token` into `path` (creating its directory) with permissions `mode`.
pub fn write_key(path: &Path, token: &str, mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, format!("{token}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Writes every token of [`TOKENS`] (mode 0600) and `cluster` as `dir/cluster.yaml`.
pub fn write_cluster(dir: &Path, cluster: &str) {
    for (who, token) in TOKENS {
        write_key(&dir.join(format!("keys/{who}.key")), token, 0o600);
    }
    std::fs::write(dir.join("cluster.yaml"), cluster).unwrap();
}
