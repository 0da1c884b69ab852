//! Authenticated internal connections, multi-process: one `tessera-manager` and two
//! `tessera-target` storage servers started with `--dhchap-dir` (a directory of per-server
//! DH-HMAC-CHAP secrets). A host writes the whole striped volume through one server and reads
//! it back through the other, so blocks travel over the servers' authenticated internal
//! connections; the internal portal refuses a peer without the right secret and never serves
//! the host subsystem.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use codec::nvme::fabrics::auth::Secret;
use manager::client::Client;
use tessera::cluster::peers::{internal_nqn, server_hostnqn};
use tessera::initiator::{Controller, ControllerOptions, DhchapSecrets, InitiatorError};

const NQN: &str = "nqn.2026-11.dev.tessera:authvol";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:c1c1c1c1-0000-0000-0000-00000000a001";
const VOL: u64 = 8 << 20;
const EXTENT: u64 = 1 << 20;
/// Bounds waiting only (2 shared cores): a hang fails the test, nothing asserts speed.
const DEADLINE: Duration = Duration::from_secs(90);
const STEP: Duration = Duration::from_secs(20);

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

fn opts(secrets: Option<DhchapSecrets>) -> ControllerOptions {
    let mut o = ControllerOptions::default();
    o.transport.connect_timeout = STEP;
    o.transport.command_timeout = Some(STEP);
    o.dhchap = secrets.map(Arc::new);
    o
}

fn block(lba: u64) -> Bytes {
    let mut b = vec![0u8; 512];
    for (i, x) in b.iter_mut().enumerate() {
        *x = u8::try_from((lba.wrapping_mul(31) + i as u64) % 251).unwrap();
    }
    b[..8].copy_from_slice(&lba.to_le_bytes());
    Bytes::from(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_connections_authenticate_with_per_server_secrets() {
    let dir = KeptDir::with_prefix("tessera-cluster-auth-test-");
    let d = dir.path().to_path_buf();
    let secrets = d.join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    let keys: Vec<Secret> = (0..2)
        .map(|_| Secret::generate(None, 32).unwrap())
        .collect();
    for (i, k) in keys.iter().enumerate() {
        std::fs::write(secrets.join(format!("s{}.key", i + 1)), k.to_text()).unwrap();
    }
    let ports: Vec<(u16, u16)> = (0..2).map(|_| (daemon_port(), daemon_port())).collect();
    let mut y = String::from("servers:\n");
    for (i, (p, q)) in ports.iter().enumerate() {
        y.push_str(&format!(
            "  - id: s{}\n    portal: 127.0.0.1:{p}\n    internal: 127.0.0.1:{q}\n    pool: 32MiB\n",
            i + 1
        ));
    }
    y.push_str(&format!(
        "subsystems:\n  - nqn: {NQN}\n    allow_any_host: true\nvolumes:\n  - name: v\n    size: {VOL}\n    subsystem: {NQN}\n    nsid: 1\n    extent_size: {EXTENT}\n"
    ));
    std::fs::write(d.join("cluster.yaml"), y).unwrap();
    let maddr = format!("127.0.0.1:{}", daemon_port());
    let _manager = Proc(
        Command::new(manager_bin())
            .arg("--config")
            .arg(d.join("cluster.yaml"))
            .arg("--data-dir")
            .arg(d.join("mgr"))
            .args(["--listen", &maddr])
            .stdout(Stdio::null())
            .stderr(log(&d, "manager"))
            .spawn()
            .unwrap(),
    );
    let mut servers = Vec::new();
    for i in 1..=2 {
        let id = format!("s{i}");
        servers.push(Proc(
            Command::new(env!("CARGO_BIN_EXE_tessera-target"))
                .args(["--manager", &maddr, "--server-id", &id, "--reactors", "1"])
                .arg("--dhchap-dir")
                .arg(&secrets)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log(&d, &id))
                .spawn()
                .unwrap(),
        ));
    }
    let client = Client::new(&maddr);
    let start = Instant::now();
    loop {
        if let Ok(s) = client.status().await
            && s.committed >= 1
            && s.servers.len() == 2
            && s.servers.iter().all(|x| x.acked >= 1)
        {
            break;
        }
        for s in &mut servers {
            assert!(
                s.0.try_wait().unwrap().is_none(),
                "a server exited during start"
            );
        }
        assert!(start.elapsed() < DEADLINE, "the cluster did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let portal = |i: usize| SocketAddr::from(([127, 0, 0, 1], ports[i].0));
    let internal = |i: usize| SocketAddr::from(([127, 0, 0, 1], ports[i].1));

    // The whole volume through s1, read back through s2: extents of the other server go over
    // the internal connections, which authenticate.
    let host_io = |addr: SocketAddr| async move {
        let c = Controller::connect(addr, NQN, HOST, &opts(None))
            .await
            .unwrap();
        c.enable().await.unwrap();
        c.set_num_queues(1).await.unwrap();
        let q = c.connect_io_queue(1, 63).await.unwrap();
        (c, q)
    };
    let (_c1, q1) = host_io(portal(0)).await;
    let blocks = VOL / 512;
    for lba in (0..blocks).step_by(256) {
        q1.write(1, lba, 512, block(lba), false)
            .await
            .unwrap_or_else(|e| panic!("write at LBA {lba}: {e}"));
    }
    let (_c2, q2) = host_io(portal(1)).await;
    for lba in (0..blocks).step_by(256) {
        let got = q2
            .read(1, lba, 1, 512)
            .await
            .unwrap_or_else(|e| panic!("read at LBA {lba}: {e}"));
        assert_eq!(got, block(lba), "LBA {lba} read through s2");
    }
    let s1_log = std::fs::read_to_string(d.join("s1.log")).unwrap_or_default()
        + &std::fs::read_to_string(d.join("s2.log")).unwrap_or_default();
    assert!(
        s1_log.contains("internal connection up"),
        "no internal connection was used"
    );

    // s2's internal portal, as server s1: no secret, the wrong one, the right one.
    let as_peer = |secrets: Option<DhchapSecrets>| async move {
        Controller::connect(
            internal(1),
            &internal_nqn("s2"),
            &server_hostnqn("s1"),
            &opts(secrets),
        )
        .await
    };
    let r = as_peer(None).await;
    assert!(
        matches!(r, Err(InitiatorError::AuthRequired)),
        "{:?}",
        r.err()
    );
    let r = as_peer(Some(DhchapSecrets {
        host: keys[1].clone(),
        ctrl: Some(keys[1].clone()),
    }))
    .await;
    assert!(
        matches!(r, Err(InitiatorError::AuthFailed { .. })),
        "{:?}",
        r.err()
    );
    let c = as_peer(Some(DhchapSecrets {
        host: keys[0].clone(),
        ctrl: Some(keys[1].clone()),
    }))
    .await
    .expect("s1's secret");
    drop(c);
    // The host subsystem is not served on the internal portal.
    let r = Controller::connect(internal(0), NQN, HOST, &opts(None)).await;
    assert!(
        matches!(r, Err(InitiatorError::ConnectRejected(_))),
        "{:?}",
        r.err()
    );
}
