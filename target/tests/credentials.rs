//! A storage server joins an authenticated cluster with `tessera-target --credential FILE`;
//! one presenting another server's credential gets nothing (its map fetches are refused), and
//! the manager never counts an ack from it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use manager::client::Client;

/// Bounds a hang only; generous for a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(90);

const TOKENS: [(&str, &str); 3] = [
    ("operator", "Y3JlZC10ZXN0LW9wZXJhdG9yLXRva2Vu"),
    ("s1", "Y3JlZC10ZXN0LXMxLXRva2VuLXZhbHVl"),
    ("s2", "Y3JlZC10ZXN0LXMyLXRva2VuLXZhbHVl"),
];

#[path = "../../tests/support/daemons.rs"]
mod daemons;
#[path = "../../tests/support/kept_dir.rs"]
#[allow(dead_code)]
mod kept_dir;

use daemons::{Proc, daemon_port};
use kept_dir::KeptDir;

fn manager_bin() -> PathBuf {
    daemons::manager_bin(Path::new(env!("CARGO_BIN_EXE_tessera-target")))
}

fn log(dir: &Path, name: &str) -> std::fs::File {
    std::fs::File::create(dir.join(format!("{name}.log"))).unwrap()
}

fn spawn_server(dir: &Path, maddr: &str, id: &str, key: &str) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_tessera-target"))
            .args(["--manager", maddr, "--server-id", id, "--reactors", "1"])
            .arg("--credential")
            .arg(dir.join(format!("keys/{key}.key")))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log(dir, id))
            .spawn()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_joins_with_its_credential_and_not_with_another() {
    let kept = KeptDir::with_prefix("tessera-credentials-test-");
    let dir = kept.path().to_path_buf();
    std::fs::create_dir(dir.join("keys")).unwrap();
    for (who, token) in TOKENS {
        let f = dir.join(format!("keys/{who}.key"));
        std::fs::write(&f, format!("{token}\n")).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mport = daemon_port();
    let p: Vec<u16> = (0..4).map(|_| daemon_port()).collect();
    let yaml = format!(
        "credentials:\n  operator: keys/operator.key\nservers:\n\
         \x20 - {{ id: s1, portal: 127.0.0.1:{}, internal: 127.0.0.1:{}, pool: 64MiB, credential: keys/s1.key }}\n\
         \x20 - {{ id: s2, portal: 127.0.0.1:{}, internal: 127.0.0.1:{}, pool: 64MiB, credential: keys/s2.key }}\n\
         subsystems: []\n",
        p[0], p[1], p[2], p[3]
    );
    std::fs::write(dir.join("cluster.yaml"), yaml).unwrap();
    let maddr = format!("127.0.0.1:{mport}");
    let _manager = Proc(
        Command::new(manager_bin())
            .arg("--config")
            .arg(dir.join("cluster.yaml"))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen", &maddr])
            .env("RUST_LOG", "info")
            .stderr(log(&dir, "manager"))
            .spawn()
            .unwrap(),
    );
    let op = Client::with_credential(&maddr, TOKENS[0].1);
    let start = Instant::now();
    while op.status().await.is_err() {
        assert!(start.elapsed() < DEADLINE, "the manager does not answer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // s1 with its own credential; "s2" started with s1's.
    let _s1 = spawn_server(&dir, &maddr, "s1", "s1");
    let _s2 = spawn_server(&dir, &maddr, "s2", "s1");
    let start = Instant::now();
    loop {
        let s = op.status().await.unwrap();
        let acked = |id: &str| s.servers.iter().find(|e| e.id == id).unwrap().acked;
        if acked("s1") == 1 {
            assert_eq!(
                acked("s2"),
                0,
                "an ack under another server's credential counted"
            );
            break;
        }
        assert!(start.elapsed() < DEADLINE, "s1 never acked: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The impostor's fetches are refused, with the reason in its log.
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(dir.join("s2.log")).unwrap_or_default();
        if text.contains("HTTP 403") && text.contains("cannot ask for server s2's map") {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no refusal in s2's log:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        op.status().await.unwrap().servers[1].acked,
        0,
        "s2 never acked"
    );
}
