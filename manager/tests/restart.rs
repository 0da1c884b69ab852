//! The `tessera-manager` binary: killed with SIGKILL, it comes back with the same map and
//! generation; SIGTERM stops it cleanly; a bad cluster file is refused at start, and a failed
//! start leaves no store; `--check` validates a file without starting.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use manager::api::{CreateVolumeRequest, Role};
use manager::client::Client;
use manager::map::HostPolicy;

const CLUSTER: &str = "servers:
  - id: s1
    portal: 127.0.0.1:24420
    internal: 127.0.0.1:24430
    pool: 256MiB
subsystems: []
";

/// Starts the binary on 127.0.0.1:0 and reads the bound address from its log.
fn spawn(dir: &Path) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera-manager"))
        .arg("--config")
        .arg(dir.join("cluster.yaml"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if !sent && line.contains("control API listening") {
                // ... addr=127.0.0.1:PORT
                let addr = line.rsplit("addr=").next().unwrap().trim().to_owned();
                let _ = tx.send(addr);
                sent = true;
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the manager logs its address");
    (child, addr.parse().unwrap())
}

#[tokio::test]
async fn sigkill_keeps_the_generation_and_sigterm_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.yaml"), CLUSTER).unwrap();
    let (mut child, addr) = spawn(dir.path());
    let c = Client::new(addr);
    let m = c
        .create_volume(&CreateVolumeRequest {
            name: "v".into(),
            size: 16 << 20,
            block_size: None,
            extent_size: Some(8 << 20),
            replicas: None,
            subsystem: "nqn.2026-11.dev.tessera:t".into(),
            nsid: None,
            hosts: Some(HostPolicy::Any),
        })
        .await
        .unwrap();
    assert_eq!(m.generation, 2);
    let m3 = c.resize_volume("v", 24 << 20).await.unwrap();
    assert_eq!(m3.generation, 3);
    // Not acked: both are durable but not committed when the manager dies.
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // The cluster file is not read again: the store wins.
    std::fs::write(dir.path().join("cluster.yaml"), "not: a cluster\n").unwrap();
    let (mut child, addr) = spawn(dir.path());
    let c = Client::new(addr);
    let st = c.status().await.unwrap();
    assert_eq!(st.generation, 3);
    assert_eq!(st.committed, 1, "g2 and g3 are published again");
    c.ack("s1", 3).await.unwrap();
    // Polls until committed; the deadline only bounds a hang (generous for a loaded machine).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut committed = 0;
    while std::time::Instant::now() < deadline {
        committed = c.status().await.unwrap().committed;
        if committed == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(committed, 3);
    assert_eq!(c.map(&Role::Client).await.unwrap(), m3);

    // SIGTERM: clean exit.
    let pid = child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");

    // Committed survives too.
    let (mut child, addr) = spawn(dir.path());
    let st = Client::new(addr).status().await.unwrap();
    assert_eq!((st.generation, st.committed), (3, 3));
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn bad_cluster_file_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.yaml");
    std::fs::write(&file, CLUSTER.replace("pool: 256MiB", "pool: 1000")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tessera-manager"))
        .arg("--config")
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "tessera-manager: {}:5:11: servers[0].pool: size 1000 bytes is not a multiple of the block size 512",
            file.display()
        )),
        "{stderr}"
    );
    // A failed first start leaves no store behind: the next start builds generation 1.
    assert!(
        !dir.path().join("data").exists(),
        "a failed start left a store"
    );
}

#[test]
fn a_start_that_cannot_listen_leaves_no_store() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.yaml");
    std::fs::write(&file, CLUSTER).unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tessera-manager"))
        .arg("--config")
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", &busy.local_addr().unwrap().to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot listen on"), "{stderr}");
    assert!(
        !dir.path().join("data").exists(),
        "a failed start left a store"
    );
}

#[test]
fn check_validates_a_cluster_file_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.yaml");
    std::fs::write(&file, CLUSTER).unwrap();
    let check = || {
        Command::new(env!("CARGO_BIN_EXE_tessera-manager"))
            .arg("--check")
            .arg(&file)
            .output()
            .unwrap()
    };
    let out = check();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!(
            "{}: ok (servers 1, subsystems 0, volumes 0; credentials not configured",
            file.display()
        )),
        "{stdout}"
    );
    std::fs::write(&file, CLUSTER.replace("pool: 256MiB", "pool: 1000")).unwrap();
    let out = check();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "tessera-manager: {}:5:11: servers[0].pool: size 1000 bytes",
            file.display()
        )),
        "{stderr}"
    );
    // A credential file it names must exist and be private.
    let with_creds = CLUSTER.replace("pool: 256MiB", "pool: 256MiB\n    credential: s1.key")
        + "credentials:\n  operator: op.key\n";
    std::fs::write(&file, &with_creds).unwrap();
    let out = check();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("op.key: cannot read it"), "{stderr}");
    assert!(!dir.path().join("data").exists());
}

#[test]
fn check_warns_about_volumes_whose_copies_share_a_rack() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.yaml");
    let text = |rack2: &str| {
        format!(
            "servers:
  - {{ id: s1, portal: 127.0.0.1:24420, internal: 127.0.0.1:24430, pool: 64MiB, rack: a }}
  - {{ id: s2, portal: 127.0.0.1:24421, internal: 127.0.0.1:24431, pool: 64MiB, rack: {rack2} }}
subsystems:
  - {{ nqn: nqn.2026-11.dev.tessera:t, allow_any_host: true }}
volumes:
  - name: v
    size: 4MiB
    extent_size: 1MiB
    replicas: 2
    subsystem: nqn.2026-11.dev.tessera:t
    nsid: 1
"
        )
    };
    let check = || {
        Command::new(env!("CARGO_BIN_EXE_tessera-manager"))
            .arg("--check")
            .arg(&file)
            .output()
            .unwrap()
    };
    // One rack for both copies: valid, with a warning naming the volume and its line.
    std::fs::write(&file, text("a")).unwrap();
    let out = check();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "tessera-manager: warning: {}:7:5: volumes[0]: volume v: 4 of 4 extents have copies \
             sharing a failure domain (replicas 2, the up servers span 1 domain",
            file.display()
        )),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok (servers 2"));
    // Two racks: no warning.
    std::fs::write(&file, text("b")).unwrap();
    let out = check();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    // A rack that is not a string is an error with its place.
    std::fs::write(&file, text("7")).unwrap();
    let out = check();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "tessera-manager: {}:3:86: servers[1].rack: wrong type: found integer 7",
            file.display()
        )),
        "{stderr}"
    );
}

/// The manager's log warns about volumes whose copies share a rack: at start (the file's), and
/// when a change places more such copies (naming the volume the change made).
#[tokio::test]
async fn the_log_warns_about_volumes_whose_copies_share_a_rack() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "servers:
  - { id: s1, portal: 127.0.0.1:24420, internal: 127.0.0.1:24430, pool: 64MiB, rack: a }
  - { id: s2, portal: 127.0.0.1:24421, internal: 127.0.0.1:24431, pool: 64MiB, rack: a }
subsystems:
  - { nqn: nqn.2026-11.dev.tessera:t, allow_any_host: true }
volumes:
  - { name: v, size: 2MiB, extent_size: 1MiB, replicas: 2, subsystem: nqn.2026-11.dev.tessera:t, nsid: 1 }
";
    std::fs::write(dir.path().join("cluster.yaml"), yaml).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera-manager"))
        .arg("--config")
        .arg(dir.path().join("cluster.yaml"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0", "--metrics", "off"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Every line up to the first that contains `want` (bounded: the manager logs it at once).
    let mut log = Vec::new();
    let mut until = |want: &str| -> String {
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|e| {
                    panic!(
                        "no log line with {want:?} ({e}); log so far:\n{}",
                        log.join("\n")
                    )
                });
            log.push(line.clone());
            if line.contains(want) {
                return line;
            }
        }
    };
    let warned = until("volume v: 2 of 2 extents have copies sharing a failure domain");
    assert!(warned.contains("WARN"), "{warned}");
    let listening = until("control API listening");
    let addr: SocketAddr = listening
        .rsplit("addr=")
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let c = Client::new(addr);
    c.create_volume(&CreateVolumeRequest {
        name: "w".into(),
        size: 1 << 20,
        block_size: None,
        extent_size: Some(1 << 20),
        replicas: Some(2),
        subsystem: "nqn.2026-11.dev.tessera:t".into(),
        nsid: None,
        hosts: None,
    })
    .await
    .unwrap();
    let warned = until("volume w: 1 of 1 extents have copies sharing a failure domain");
    assert!(warned.contains("WARN"), "{warned}");
    let _ = child.kill();
    let _ = child.wait();
}
