//! A storage server joins an authenticated cluster with `tessera-target --credential FILE`;
//! one presenting another server's credential gets nothing (its map fetches are refused), and
//! the manager never counts an ack from it. Issue 10, scenario 2, multi-process: with the old
//! owner of a moving extent hung, forged move-ready and ack requests in its name are refused
//! and the switch waits for it; resumed, it completes the move and no data is lost.
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

use bytes::Bytes;
use manager::api::{MoveReadyRequest, Role};
use manager::client::{Client, ClientError};
use tessera::initiator::{Controller, ControllerOptions, Queue};

/// Bounds a hang only; generous for a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(90);

const TOKENS: [(&str, &str); 4] = [
    ("operator", "Y3JlZC10ZXN0LW9wZXJhdG9yLXRva2Vu"),
    ("s1", "Y3JlZC10ZXN0LXMxLXRva2VuLXZhbHVl"),
    ("s2", "Y3JlZC10ZXN0LXMyLXRva2VuLXZhbHVl"),
    ("s3", "Y3JlZC10ZXN0LXMzLXRva2VuLXZhbHVl"),
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

const NQN: &str = "nqn.2026-11.dev.tessera:vol1";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:c2c2c2c2-0000-0000-0000-000000000002";
const EXTENT: u64 = 1 << 20;
const LBA: u32 = 512;
/// How often a wait loop looks again.
const POLL: Duration = Duration::from_millis(50);

/// The pattern of one 4 KiB block: its LBA and a version, so stale data is recognisable.
fn block(lba: u64, version: u32) -> Bytes {
    let mut v = vec![0u8; 4096];
    for (i, c) in v.chunks_mut(16).enumerate() {
        c[..8].copy_from_slice(&lba.to_le_bytes());
        c[8..12].copy_from_slice(&version.to_le_bytes());
        c[12..16].copy_from_slice(&(i as u32).to_le_bytes());
    }
    Bytes::from(v)
}

async fn host_queue(addr: &str) -> (Controller, Queue) {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let ctrl = Controller::connect(addr, NQN, HOST, &ControllerOptions::default())
        .await
        .unwrap();
    ctrl.enable().await.unwrap();
    ctrl.set_num_queues(1).await.unwrap();
    let q = ctrl.connect_io_queue(1, 63).await.unwrap();
    (ctrl, q)
}

/// The HTTP status of a refused call.
fn refused<T: std::fmt::Debug>(r: Result<T, ClientError>) -> u16 {
    match r {
        Err(ClientError::Http { status, .. }) => status,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Polls `op`'s status until `f` holds, within `DEADLINE`.
async fn wait_status(op: &Client, what: &str, f: impl Fn(&manager::api::Status) -> bool) {
    let start = Instant::now();
    loop {
        let s = op.status().await.unwrap();
        if f(&s) {
            return;
        }
        assert!(start.elapsed() < DEADLINE, "{what}: {s:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// Sends `kill -SIG PID`.
fn signal(sig: &str, p: &Proc) {
    let pid = p.0.id().to_string();
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid])
        .status()
        .unwrap();
    assert!(ok.success(), "kill -{sig} {pid}");
}

/// Issue 10, scenario 2: s2 owns an extent being moved to s3 and hangs (SIGSTOP) after its
/// move-ready. Forged `POST /v1/move-ready` and `POST /v1/ack` in s2's name (no credential, the
/// operator's, s3's) are refused, and the switch does not commit while s2 is hung: the map
/// keeps s2 as the owner. Resumed (SIGCONT), s2 fences the extent, makes its final copy and
/// acks; the move completes, and a host write and read through s1 find the data whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_move_ready_and_ack_cannot_switch_past_a_hung_old_owner() {
    let kept = KeptDir::with_prefix("tessera-forged-test-");
    let dir = kept.path().to_path_buf();
    std::fs::create_dir(dir.join("keys")).unwrap();
    for (who, token) in TOKENS {
        let f = dir.join(format!("keys/{who}.key"));
        std::fs::write(&f, format!("{token}\n")).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mport = daemon_port();
    let p: Vec<u16> = (0..6).map(|_| daemon_port()).collect();
    let mut yaml = String::from("credentials:\n  operator: keys/operator.key\nservers:\n");
    for i in 0..3 {
        yaml.push_str(&format!(
            "  - {{ id: s{n}, portal: 127.0.0.1:{}, internal: 127.0.0.1:{}, pool: 64MiB, \
             credential: keys/s{n}.key }}\n",
            p[2 * i],
            p[2 * i + 1],
            n = i + 1
        ));
    }
    yaml.push_str(&format!(
        "subsystems:\n  - nqn: {NQN}\n    allow_any_host: true\nvolumes:\n  - name: vol1\n    \
         size: {}\n    subsystem: {NQN}\n    nsid: 1\n    extent_size: {EXTENT}\n",
        8 * EXTENT
    ));
    std::fs::write(dir.join("cluster.yaml"), yaml).unwrap();
    let maddr = format!("127.0.0.1:{mport}");
    // No old-owner bound: this test is about forged messages, and s2 stays hung for a while.
    let _manager = Proc(
        Command::new(manager_bin())
            .arg("--config")
            .arg(dir.join("cluster.yaml"))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen", &maddr, "--old-owner-timeout", "0"])
            .env("RUST_LOG", "info")
            .stderr(log(&dir, "manager"))
            .spawn()
            .unwrap(),
    );
    let client = |who: usize| Client::with_credential(&maddr, TOKENS[who].1);
    let (op, s2c, s3c, anon) = (client(0), client(2), client(3), Client::new(&maddr));
    let start = Instant::now();
    while op.status().await.is_err() {
        assert!(start.elapsed() < DEADLINE, "the manager does not answer");
        tokio::time::sleep(POLL).await;
    }
    let servers: Vec<Proc> = ["s1", "s2", "s3"]
        .iter()
        .map(|id| spawn_server(&dir, &maddr, id, id))
        .collect();
    wait_status(&op, "every server acks generation 1", |s| {
        s.committed >= 1 && s.servers.iter().all(|x| x.acked >= 1)
    })
    .await;

    // An extent s2 owns; data on it, written through s1.
    let map = op.map(&Role::Client).await.unwrap();
    let vol = map.volume("vol1").unwrap();
    let e = (0..vol.extents.len())
        .find(|&i| map.owner("vol1", i).is_some_and(|r| r.server == "s2"))
        .expect("s2 owns an extent");
    let first = e as u64 * EXTENT / u64::from(LBA);
    let blocks = EXTENT / 4096;
    let s1_portal = format!("127.0.0.1:{}", p[0]);
    let (_hc, host) = host_queue(&s1_portal).await;
    for k in 0..blocks {
        let lba = first + k * 8;
        host.write(1, lba, LBA, block(lba, 1), true).await.unwrap();
    }

    // s2 hangs; the operator starts the move to s3. (A hung s2 cannot copy: its move-ready is
    // sent below with its own credential, standing for the one it sent before it hung; its
    // final copy, made when it resumes, carries the whole extent.)
    signal("STOP", &servers[1]);
    let started = op.move_extent("vol1", e, "s3").await.unwrap();
    let g_start = started.generation;
    let ready = MoveReadyRequest {
        server: "s2".into(),
        volume: "vol1".into(),
        extent: e,
        generation: g_start,
    };
    assert_eq!(refused(anon.move_ready(&ready).await), 401);
    assert_eq!(refused(op.move_ready(&ready).await), 403);
    assert_eq!(refused(s3c.move_ready(&ready).await), 403);
    let s = op.status().await.unwrap();
    assert_eq!(
        s.generation, g_start,
        "a forged move-ready made a map: {s:?}"
    );

    // s2's own move-ready: the switch waits for s2 in phase 1a. (The manager takes it only
    // once the destination has the map with the move, 409 before: a real source's copy takes
    // longer than that.)
    wait_status(&op, "s3 acks the map with the move", |s| {
        s.servers.iter().any(|x| x.id == "s3" && x.acked >= g_start)
    })
    .await;
    s2c.move_ready(&ready).await.unwrap();
    let g_switch = g_start + 1;
    wait_status(&op, "the switch waits for s2 in phase 1a", |s| {
        s.publishing.as_ref().is_some_and(|p| {
            p.generation == g_switch && p.phase == "1a" && p.waiting == ["s2".to_string()]
        })
    })
    .await;
    assert_eq!(refused(anon.ack("s2", g_switch).await), 401);
    assert_eq!(refused(op.ack("s2", g_switch).await), 403);
    assert_eq!(refused(s3c.ack("s2", g_switch).await), 403);
    // Given time to (wrongly) commit, the switch still waits and clients keep s2 as the owner.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = op.status().await.unwrap();
    let publishing = s
        .publishing
        .as_ref()
        .expect("the switch is still being published");
    assert_eq!(
        (publishing.generation, publishing.phase.as_str()),
        (g_switch, "1a"),
        "{s:?}"
    );
    assert!(
        s.committed < g_switch,
        "the switch committed without s2: {s:?}"
    );
    let m = op.map(&Role::Client).await.unwrap();
    assert_eq!(m.owner("vol1", e).unwrap().server, "s2");
    assert!(m.volume("vol1").unwrap().extents[e].moving.is_some());

    // s2 resumes: it fences, makes its final copy, acks; the move completes.
    signal("CONT", &servers[1]);
    wait_status(&op, "the switch commits and every server has it", |s| {
        s.committed >= g_switch && s.servers.iter().all(|x| x.acked >= g_switch)
    })
    .await;
    // The switch went through s2's own install (its final copy), not around it.
    let s2_log = std::fs::read_to_string(dir.join("s2.log")).unwrap_or_default();
    assert!(
        s2_log.contains("extent switched") && !s2_log.contains("final copy refused"),
        "s2 did not make its final copy; its log:\n{s2_log}"
    );
    let m = op.map(&Role::Client).await.unwrap();
    assert_eq!(m.owner("vol1", e).unwrap().server, "s3");
    assert!(m.volume("vol1").unwrap().extents[e].moving.is_none());

    // Through s1 (retried while s1 catches up, bounded): a new write lands and reads back, and
    // the blocks written before the hang survived the move.
    let start = Instant::now();
    loop {
        match host.write(1, first, LBA, block(first, 2), true).await {
            Ok(()) => break,
            Err(err) => assert!(start.elapsed() < DEADLINE, "write after the move: {err}"),
        }
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(host.read(1, first, 8, LBA).await.unwrap(), block(first, 2));
    for k in 1..blocks {
        let lba = first + k * 8;
        assert_eq!(
            host.read(1, lba, 8, LBA).await.unwrap(),
            block(lba, 1),
            "block {lba} lost in the move"
        );
    }
    // The new owner has the new block: read it through s3's own portal too.
    let (_hc3, host3) = host_queue(&format!("127.0.0.1:{}", p[4])).await;
    assert_eq!(host3.read(1, first, 8, LBA).await.unwrap(), block(first, 2));
    drop(servers);
}
