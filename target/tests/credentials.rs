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
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use manager::client::Client;

/// Bounds a hang only; generous for a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(90);

const TOKENS: [(&str, &str); 3] = [
    ("operator", "Y3JlZC10ZXN0LW9wZXJhdG9yLXRva2Vu"),
    ("s1", "Y3JlZC10ZXN0LXMxLXRva2VuLXZhbHVl"),
    ("s2", "Y3JlZC10ZXN0LXMyLXRva2VuLXZhbHVl"),
];

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The test directory, kept (with the logs) when the test fails.
struct KeptDir(Option<tempfile::TempDir>);

impl Drop for KeptDir {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(d) = self.0.take()
        {
            let path = d.keep();
            eprintln!(
                "test failed: its directory and logs are kept in {}",
                path.display()
            );
            for log in ["manager.log", "s1.log", "s2.log"] {
                let text = std::fs::read_to_string(path.join(log)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!(
                    "----- {log}\n{}",
                    lines[lines.len().saturating_sub(30)..].join("\n")
                );
            }
        }
    }
}

/// A free loopback port from this process's block below the ephemeral range (as
/// target/tests/cluster.rs does), so parallel test processes do not collide.
fn daemon_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    const SLICE: u64 = 128;
    let (eph_lo, eph_hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u64>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    let (lo, hi) = if eph_lo.saturating_sub(10_000) >= 65_535u64.saturating_sub(eph_hi) {
        (10_000, eph_lo)
    } else {
        (eph_hi + 1, 65_536)
    };
    let slices = ((hi - lo) / SLICE).max(1);
    let base = lo + (u64::from(std::process::id()) % slices) * SLICE;
    for _ in 0..SLICE {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(base + n % SLICE).unwrap();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {base}..{}", base + SLICE);
}

/// `tessera-manager` next to `tessera-target` (built if absent).
fn manager_bin() -> PathBuf {
    let ours = PathBuf::from(env!("CARGO_BIN_EXE_tessera-target"));
    let theirs = ours.with_file_name("tessera-manager");
    if !theirs.exists() {
        let release = ours
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|n| n == "release");
        let mut c = Command::new(env!("CARGO"));
        c.args(["build", "-p", "tessera-manager", "--bin", "tessera-manager"]);
        if release {
            c.arg("--release");
        }
        assert!(
            c.status().unwrap().success(),
            "building tessera-manager failed"
        );
    }
    theirs
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
    let kept = KeptDir(Some(
        tempfile::Builder::new()
            .prefix("tessera-credentials-test-")
            .tempdir()
            .unwrap(),
    ));
    let dir = kept.0.as_ref().unwrap().path().to_path_buf();
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
