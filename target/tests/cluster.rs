//! The cluster, multi-process: one `tessera-manager` and three `tessera-target` storage
//! servers on loopback, started by the test. A host (our initiator, speaking standard unstamped
//! NVMe/TCP) writes and reads through every server's portal; blocks land where the map says;
//! stale stamps are refused and reported; extents move under a verified write load.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use codec::nvme::Status;
use manager::api::Role;
use manager::client::Client;
use manager::map::ClusterMap;
use tessera::cluster::peers::{INTERNAL_BLOCK, INTERNAL_NSID, internal_nqn, server_hostnqn};
use tessera::initiator::{Controller, ControllerOptions, InitiatorError, Queue};

const NQN: &str = "nqn.2026-11.dev.tessera:vol1";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:c1c1c1c1-0000-0000-0000-000000000001";
const EXTENT: u64 = 1 << 20;
const VOL: u64 = 16 << 20;
const LBA: u32 = 512;

// Deadlines. They only bound waiting, so that a hang fails the test instead of hanging the
// suite; none asserts speed. They are generous because the suite runs on 2 shared cores next to
// other builds and tests (`stress-ng --cpu 2` included): five processes start, fsync and talk
// over loopback, and each may get a fraction of a core.

/// The cluster is up: the manager answers and every server acknowledged generation 1.
const START_DEADLINE: Duration = Duration::from_secs(90);
/// Every server acknowledged a new generation (publication, install, ack: each a round trip).
const ACK_DEADLINE: Duration = Duration::from_secs(60);
/// An extent move finished (copy of 1 MiB, final copy, switch: several generations).
const MOVE_DEADLINE: Duration = Duration::from_secs(120);
/// A restarted process (the manager, a server) answers again.
const RESTART_DEADLINE: Duration = Duration::from_secs(60);
/// The manager heard the servers' mismatch reports (rate-limited, sent in the background).
const REPORT_DEADLINE: Duration = Duration::from_secs(30);
/// A host's parked Asynchronous Event Request completes after a namespace change.
const AEN_DEADLINE: Duration = Duration::from_secs(30);
/// How often a wait loop looks again.
const POLL: Duration = Duration::from_millis(50);

/// Sends `req` until the manager accepts it, as the owner's copier does: the manager answers
/// 409 until the move's destination has acked the map with the move.
async fn move_ready_once_accepted(
    client: &manager::client::Client,
    req: &manager::api::MoveReadyRequest,
) {
    let deadline = Instant::now() + MOVE_DEADLINE;
    loop {
        match client.move_ready(req).await {
            Ok(()) => return,
            Err(manager::client::ClientError::Http {
                status: 409,
                message,
                ..
            }) if Instant::now() < deadline => {
                eprintln!("move-ready refused, retrying: {message}");
                tokio::time::sleep(POLL).await;
            }
            Err(e) => panic!("move-ready {req:?}: {e}"),
        }
    }
}
/// Starts of the whole cluster, each on fresh ports, when a process finds a port taken.
const START_ATTEMPTS: usize = 4;

#[path = "../../tests/support/daemons.rs"]
#[allow(dead_code)]
mod daemons;
#[path = "../../tests/support/kept_dir.rs"]
mod kept_dir;

#[path = "support/harness.rs"]
mod harness;

use daemons::daemon_port;
use harness::{
    Proc, all_acked, log_file, servers_yaml, sibling_bin, spawn_manager, spawn_server, try_start,
};
use kept_dir::{KeptDir, tail};

struct Cluster {
    /// This start's directory (inside `_logs`).
    dir: PathBuf,
    manager: Proc,
    maddr: String,
    servers: Vec<(String, SocketAddr, SocketAddr, Proc)>,
    client: Client,
    /// Last: dropped after the processes are killed, so that kept logs are complete.
    _logs: KeptDir,
}

fn cluster_yaml(ports: &[(u16, u16)]) -> String {
    let mut y = servers_yaml(ports);
    y.push_str(&format!(
        "subsystems:\n  - nqn: {NQN}\n    allow_any_host: true\nvolumes:\n  - name: vol1\n    size: {VOL}\n    subsystem: {NQN}\n    nsid: 1\n    extent_size: {EXTENT}\n"
    ));
    y
}

async fn start_cluster() -> Cluster {
    start_cluster_with(false).await
}

async fn start_cluster_with(file_pools: bool) -> Cluster {
    let logs = KeptDir::with_prefix("tessera-cluster-test-");
    for attempt in 1..=START_ATTEMPTS {
        let dir = logs.path().join(format!("start{attempt}"));
        std::fs::create_dir(&dir).unwrap();
        match try_start(&dir, cluster_yaml, &[], file_pools, START_DEADLINE).await {
            Ok((manager, maddr, servers)) => {
                let client = Client::new(&maddr);
                return Cluster {
                    dir,
                    manager,
                    maddr,
                    servers,
                    client,
                    _logs: logs,
                };
            }
            // The processes of this attempt are gone (dropped); its logs stay in `dir`.
            Err(why) => eprintln!("cluster start {attempt}: {why}; starting again"),
        }
    }
    panic!("the cluster did not start in {START_ATTEMPTS} attempts (ports taken every time)");
}

impl Cluster {
    /// Waits until every server acknowledged generation `g` or later.
    async fn wait_acked(&self, g: u64) {
        let deadline = Instant::now() + ACK_DEADLINE;
        while !all_acked(&self.client, g, self.servers.len()).await {
            assert!(
                Instant::now() < deadline,
                "servers did not reach generation {g} within {ACK_DEADLINE:?}; manager status: {:?}",
                self.client.status().await
            );
            tokio::time::sleep(POLL).await;
        }
    }

    async fn map(&self) -> ClusterMap {
        self.client.map(&Role::Client).await.unwrap()
    }

    async fn host_queue(&self, i: usize) -> (Controller, Queue) {
        connect_queue(self.servers[i].1, NQN, HOST).await
    }

    /// A stamped queue to server `i`'s internal namespace (as a peer server would open it).
    async fn internal_queue(&self, i: usize) -> (Controller, Queue) {
        connect_queue(
            self.servers[i].2,
            &internal_nqn(&self.servers[i].0),
            &server_hostnqn("s1"),
        )
        .await
    }
}

async fn connect_queue(addr: SocketAddr, nqn: &str, host: &str) -> (Controller, Queue) {
    let ctrl = Controller::connect(addr, nqn, host, &ControllerOptions::default())
        .await
        .unwrap();
    ctrl.enable().await.unwrap();
    ctrl.set_num_queues(1).await.unwrap();
    let q = ctrl.connect_io_queue(1, 63).await.unwrap();
    (ctrl, q)
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn striped_volume_is_served_by_every_server_and_blocks_live_where_the_map_says() {
    let c = start_cluster().await;
    let map = c.map().await;
    let vol = map.volume("vol1").unwrap();
    let owners: std::collections::BTreeSet<&str> = vol
        .extents
        .iter()
        .map(|e| e.replicas[0].server.as_str())
        .collect();
    assert_eq!(
        owners.len(),
        3,
        "extents must be striped over all servers: {owners:?}"
    );

    // Write the whole volume through s1, 4 KiB blocks at the start of every 64 KiB.
    let (_c1, q1) = c.host_queue(0).await;
    let step = 64 * 1024;
    for off in (0..VOL).step_by(step) {
        let lba = off / u64::from(LBA);
        q1.write(1, lba, LBA, block(lba, 1), false).await.unwrap();
    }
    // A write spanning an extent boundary (split and joined by the server).
    let span = EXTENT - 2048;
    let mut both = block(span / 512, 9).to_vec();
    both.truncate(4096);
    q1.write(1, span / 512, LBA, Bytes::from(both.clone()), false)
        .await
        .unwrap();

    // Read back through every server.
    for i in 0..3 {
        let (_ci, qi) = c.host_queue(i).await;
        for off in (0..VOL).step_by(step) {
            let lba = off / u64::from(LBA);
            // The boundary-spanning write overwrote part of the block after it.
            if off < span + 4096 && span < off + 4096 {
                continue;
            }
            let got = qi.read(1, lba, 8, LBA).await.unwrap();
            assert_eq!(got, block(lba, 1), "server s{} read LBA {lba}", i + 1);
        }
        let got = qi.read(1, span / 512, 8, LBA).await.unwrap();
        assert_eq!(
            &got[..],
            &both[..],
            "boundary-spanning block through s{}",
            i + 1
        );
    }

    // Every block is where the map says: read each extent's first block straight from its
    // owner's pool (internal namespace, stamped with the current generation).
    let g = map.generation;
    for (i, e) in vol.extents.iter().enumerate() {
        let owner = &e.replicas[0];
        let k = c.servers.iter().position(|s| s.0 == owner.server).unwrap();
        let (_ck, qk) = c.internal_queue(k).await;
        let ext_start = i as u64 * EXTENT;
        let lba = ext_start / 512;
        let got = qk
            .with_generation(g)
            .read(
                INTERNAL_NSID,
                owner.offset / u64::from(INTERNAL_BLOCK),
                8,
                INTERNAL_BLOCK,
            )
            .await
            .unwrap();
        if !(ext_start < span + 4096 && span < ext_start + 4096) {
            assert_eq!(
                got,
                block(lba, 1),
                "extent {i} on {} at pool offset {}",
                owner.server,
                owner.offset
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_and_unstamped_internal_commands_are_refused_and_reported() {
    let c = start_cluster().await;
    let (_ci, qi) = c.internal_queue(1).await;
    // Unstamped on an internal connection: refused.
    let e = qi
        .with_generation(0)
        .read(INTERNAL_NSID, 0, 8, INTERNAL_BLOCK)
        .await
        .unwrap_err();
    assert!(
        matches!(e, InitiatorError::Status(s) if s.same_code(Status::INVALID_FIELD)),
        "{e:?}"
    );
    // A change: create a second volume → generation 2.
    let req = manager::api::CreateVolumeRequest {
        name: "vol2".into(),
        size: 8 << 20,
        block_size: None,
        extent_size: Some(EXTENT),
        replicas: None,
        subsystem: NQN.into(),
        nsid: Some(2),
        hosts: None,
    };
    let m = c.client.create_volume(&req).await.unwrap();
    assert_eq!(m.generation, 2);
    c.wait_acked(2).await;
    // A client still stamping generation 1 gets SC 80h with the server's generation (2).
    let e = qi
        .with_generation(1)
        .read(INTERNAL_NSID, 0, 8, INTERNAL_BLOCK)
        .await
        .unwrap_err();
    match e {
        InitiatorError::Generation {
            status,
            server_generation,
        } => {
            assert!(status.same_code(Status::STALE_MAP), "{status}");
            assert_eq!(server_generation, 2);
        }
        other => panic!("expected stale map, got {other:?}"),
    }
    // One stamped ahead (3): the server waits (bounded) for generation 3, then says 81h.
    let t = Instant::now();
    let e = qi
        .with_generation(3)
        .read(INTERNAL_NSID, 0, 8, INTERNAL_BLOCK)
        .await
        .unwrap_err();
    assert!(
        matches!(e, InitiatorError::Generation { status, .. } if status.same_code(Status::SERVER_BEHIND)),
        "{e:?}"
    );
    // A lower bound only, which load cannot break: the server holds the command for
    // BEHIND_WAIT (2 s) of its own monotonic clock before it answers, and this clock started
    // before the command was sent. (Half of it, in case BEHIND_WAIT is tuned down.)
    assert!(
        t.elapsed() >= tessera::controller::io::BEHIND_WAIT / 2,
        "server behind answered without waiting"
    );
    // The current generation runs.
    qi.with_generation(2)
        .read(INTERNAL_NSID, 0, 8, INTERNAL_BLOCK)
        .await
        .unwrap();
    // The manager heard about all three kinds.
    let deadline = Instant::now() + REPORT_DEADLINE;
    loop {
        let r = c.client.status().await.unwrap().reports;
        if r.stale >= 1 && r.behind >= 1 && r.unstamped >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "reports not received: {r:?}");
        tokio::time::sleep(POLL).await;
    }
    // The new volume is a namespace on every server (NSID 2), of the declared size.
    for i in 0..3 {
        let (ctrl, _q) = c.host_queue(i).await;
        let ns = ctrl.identify_namespace_parsed(2).await.unwrap();
        assert_eq!(ns.nsze * 512, 8 << 20, "vol2 size on s{}", i + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_write_past_its_expiry_is_not_started() {
    let c = start_cluster().await;
    let map = c.map().await;
    let g = map.generation;
    // The first block of an extent s2 owns (routed writes run only where the receiver owns).
    let vol = map.volume("vol1").unwrap();
    let owner = vol
        .extents
        .iter()
        .map(|e| &e.replicas[0])
        .find(|r| r.server == "s2")
        .expect("an extent on s2");
    let lba = owner.offset / u64::from(INTERNAL_BLOCK);
    let (_ci, qi) = c.internal_queue(1).await;
    let before = qi
        .with_generation(g)
        .read(INTERNAL_NSID, lba, 8, INTERNAL_BLOCK)
        .await
        .unwrap();
    // Expired a minute ago (its sender gave it up): refused, retryable, and not written.
    let now = tessera::cluster::wall_clock_ms();
    let e = qi
        .with_generation(g)
        .expiring(now - 60_000)
        .write(INTERNAL_NSID, lba, INTERNAL_BLOCK, block(lba, 7), false)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, InitiatorError::Generation { status, .. } if status.same_code(Status::SERVER_BEHIND)),
        "{e:?}"
    );
    let after = qi
        .with_generation(g)
        .read(INTERNAL_NSID, lba, 8, INTERNAL_BLOCK)
        .await
        .unwrap();
    assert_eq!(after, before, "an expired write changed the block");
    // Zeroes and deallocation expire the same way.
    let e = qi
        .with_generation(g)
        .expiring(now - 60_000)
        .write_zeroes(INTERNAL_NSID, lba, 8, false)
        .await
        .unwrap_err();
    assert!(matches!(&e, InitiatorError::Generation { .. }), "{e:?}");
    // A read is not held to it (it changes nothing).
    qi.with_generation(g)
        .expiring(now - 60_000)
        .read(INTERNAL_NSID, lba, 8, INTERNAL_BLOCK)
        .await
        .unwrap();
    // Not yet expired: it runs.
    qi.with_generation(g)
        .expiring(now + 3_600_000)
        .write(INTERNAL_NSID, lba, INTERNAL_BLOCK, block(lba, 8), false)
        .await
        .unwrap();
    let got = qi
        .with_generation(g)
        .read(INTERNAL_NSID, lba, 8, INTERNAL_BLOCK)
        .await
        .unwrap();
    assert_eq!(got, block(lba, 8));
    // And the routed path stamps an expiry that a live peer meets: a host write through s1
    // to that block lands.
    let (_c1, q1) = c.host_queue(0).await;
    let vlba = vol
        .extents
        .iter()
        .position(|e| e.replicas[0].server == "s2")
        .unwrap() as u64
        * EXTENT
        / u64::from(LBA);
    q1.write(1, vlba, LBA, block(vlba, 9), false).await.unwrap();
    let got = qi
        .with_generation(g)
        .read(INTERNAL_NSID, lba, 8, INTERNAL_BLOCK)
        .await
        .unwrap();
    assert_eq!(got, block(vlba, 9), "the routed write did not land on s2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extents_move_back_and_forth_under_a_verified_write_load() {
    let c = start_cluster().await;
    let (_c2, host) = c.host_queue(1).await; // the host uses s2's portal
    // Versions written per 4 KiB block of the first 4 extents.
    let blocks = (4 * EXTENT / 4096) as usize;
    let mut version = vec![0u32; blocks];
    for (b, v) in version.iter_mut().enumerate() {
        let lba = b as u64 * 8;
        host.write(1, lba, LBA, block(lba, 1), false).await.unwrap();
        *v = 1;
    }
    let servers = ["s1", "s2", "s3"];
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut moves = 0;
    for round in 0..6u32 {
        // Start moving extent (round % 4) to another server, keep writing and reading while
        // the copy runs and the switch happens.
        let ext = (round % 4) as usize;
        let map = c.map().await;
        let owner = map.volume("vol1").unwrap().extents[ext].replicas[0]
            .server
            .clone();
        let to = servers.iter().find(|s| **s != owner).copied().unwrap();
        let before = map.generation;
        c.client.move_extent("vol1", ext, to).await.unwrap();
        let deadline = Instant::now() + MOVE_DEADLINE;
        loop {
            for _ in 0..32 {
                let b = (next() % blocks as u64) as usize;
                let lba = b as u64 * 8;
                if next() % 2 == 0 {
                    version[b] += 1;
                    host.write(1, lba, LBA, block(lba, version[b]), false)
                        .await
                        .unwrap();
                } else {
                    let got = host.read(1, lba, 8, LBA).await.unwrap();
                    assert_eq!(
                        got,
                        block(lba, version[b]),
                        "round {round}: LBA {lba} stale or lost"
                    );
                }
            }
            let m = c.map().await;
            if m.volume("vol1").unwrap().extents[ext].replicas[0].server == to
                && m.volume("vol1").unwrap().extents[ext].moving.is_none()
                && m.generation >= before + 2
            {
                c.wait_acked(m.generation).await;
                moves += 1;
                break;
            }
            assert!(
                Instant::now() < deadline,
                "move of extent {ext} to {to} did not finish"
            );
        }
    }
    assert_eq!(moves, 6);
    // Everything reads back at its last acknowledged version, through every server.
    for i in 0..3 {
        let (_ci, qi) = c.host_queue(i).await;
        for (b, v) in version.iter().enumerate() {
            let lba = b as u64 * 8;
            let got = qi.read(1, lba, 8, LBA).await.unwrap();
            assert_eq!(got, block(lba, *v), "after moves, s{} LBA {lba}", i + 1);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_the_old_map_cannot_write_to_the_old_owner_after_the_switch() {
    let c = start_cluster().await;
    let (_h, host) = c.host_queue(0).await;
    for b in 0..(EXTENT / 4096) {
        let lba = b * 8;
        host.write(1, lba, LBA, block(lba, 1), false).await.unwrap();
    }
    let before = c.map().await;
    let old = before.volume("vol1").unwrap().extents[0].replicas[0].clone();
    let a = c.servers.iter().position(|s| s.0 == old.server).unwrap();
    let to = c
        .servers
        .iter()
        .find(|s| s.0 != old.server)
        .unwrap()
        .0
        .clone();
    c.client.move_extent("vol1", 0, &to).await.unwrap();
    // Wait for the switch.
    let deadline = Instant::now() + MOVE_DEADLINE;
    let after = loop {
        let m = c.map().await;
        let e = &m.volume("vol1").unwrap().extents[0];
        if e.replicas[0].server == to && e.moving.is_none() {
            c.wait_acked(m.generation).await;
            break m;
        }
        assert!(Instant::now() < deadline, "switch did not happen");
        tokio::time::sleep(POLL).await;
    };
    // A client still on the map before the switch keeps writing to the old owner: every write
    // is refused as stale, with the old owner's (new) generation.
    let (_ca, qa) = c.internal_queue(a).await;
    let stale_gen = after.generation - 1;
    let mut refused = 0;
    for b in 0..64u64 {
        let lba = b * 8;
        let r = qa
            .with_generation(stale_gen)
            .write(
                INTERNAL_NSID,
                old.offset / 512 + lba,
                INTERNAL_BLOCK,
                block(lba, 2),
                false,
            )
            .await;
        match r {
            Err(InitiatorError::Generation {
                status,
                server_generation,
            }) => {
                assert!(status.same_code(Status::STALE_MAP));
                assert_eq!(server_generation, after.generation);
                refused += 1;
            }
            other => panic!("write with the old map was not refused: {other:?}"),
        }
    }
    assert_eq!(refused, 64);
    // The old copy did not change, and every path reads version 1; new writes land on the new
    // owner only.
    let old_copy = qa
        .with_generation(after.generation)
        .read(INTERNAL_NSID, old.offset / 512, 8, INTERNAL_BLOCK)
        .await
        .unwrap();
    assert_eq!(
        old_copy,
        block(0, 1),
        "the old owner's copy was modified after the switch"
    );
    for i in 0..3 {
        let (_ci, qi) = c.host_queue(i).await;
        assert_eq!(qi.read(1, 8, 8, LBA).await.unwrap(), block(8, 1));
    }
    host.write(1, 0, LBA, block(0, 3), false).await.unwrap();
    let new = after.volume("vol1").unwrap().extents[0].replicas[0].clone();
    let b = c.servers.iter().position(|s| s.0 == new.server).unwrap();
    let (_cb, qb) = c.internal_queue(b).await;
    let on_new = qb
        .with_generation(after.generation)
        .read(INTERNAL_NSID, new.offset / 512, 8, INTERNAL_BLOCK)
        .await
        .unwrap();
    assert_eq!(
        on_new,
        block(0, 3),
        "the write did not land on the new owner"
    );
    let still_old = qa
        .with_generation(after.generation)
        .read(INTERNAL_NSID, old.offset / 512, 8, INTERNAL_BLOCK)
        .await
        .unwrap();
    assert_eq!(
        still_old,
        block(0, 1),
        "a write landed on the old owner after the switch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_keeps_serving_when_the_manager_is_killed_and_it_comes_back_with_the_same_generation()
 {
    let mut c = start_cluster().await;
    // Generation 2 before the crash.
    let req = manager::api::CreateVolumeRequest {
        name: "vol2".into(),
        size: 4 << 20,
        block_size: None,
        extent_size: Some(EXTENT),
        replicas: None,
        subsystem: NQN.into(),
        nsid: Some(2),
        hosts: None,
    };
    assert_eq!(c.client.create_volume(&req).await.unwrap().generation, 2);
    c.wait_acked(2).await;
    let (_h, host) = c.host_queue(2).await;
    // Load running while the manager dies (SIGKILL) and is down: verified writes and reads,
    // until OPS_WITHOUT_MANAGER of them were done after the manager was dead (counted, not
    // timed: the point is that they are served at all, however slowly a loaded machine runs).
    const OPS_BEFORE_KILL: u64 = 20;
    const OPS_WITHOUT_MANAGER: u64 = 50;
    let killed = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let load = {
        let host = host.clone();
        let (killed, done) = (Arc::clone(&killed), Arc::clone(&done));
        tokio::spawn(async move {
            let mut ops = 0u64;
            let mut after_kill = 0u64;
            while after_kill < OPS_WITHOUT_MANAGER {
                let dead = killed.load(Ordering::Acquire);
                let lba = (ops * 8 * 17) % (VOL / 512 - 8);
                host.write(1, lba, LBA, block(lba, ops as u32), false)
                    .await
                    .unwrap();
                assert_eq!(
                    host.read(1, lba, 8, LBA).await.unwrap(),
                    block(lba, ops as u32)
                );
                ops += 1;
                done.store(ops, Ordering::Release);
                if dead {
                    after_kill += 1;
                }
            }
            ops
        })
    };
    let deadline = Instant::now() + ACK_DEADLINE;
    while done.load(Ordering::Acquire) < OPS_BEFORE_KILL {
        assert!(
            Instant::now() < deadline && !load.is_finished(),
            "the load did not get going"
        );
        tokio::time::sleep(POLL).await;
    }
    let _ = c.manager.0.kill(); // SIGKILL
    let _ = c.manager.0.wait();
    killed.store(true, Ordering::Release);
    let ops = tokio::time::timeout(ACK_DEADLINE, load)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the cluster stopped serving without its manager ({} ops in all)",
                done.load(Ordering::Acquire)
            )
        })
        .unwrap();
    assert!(ops >= OPS_BEFORE_KILL + OPS_WITHOUT_MANAGER);
    // Back with the same data directory: same generation, and it pushes on.
    c.manager = spawn_manager(&c.dir, &c.maddr, &[]);
    let deadline = Instant::now() + RESTART_DEADLINE;
    let status = loop {
        if let Ok(s) = c.client.status().await {
            break s;
        }
        assert!(Instant::now() < deadline, "manager did not come back");
        tokio::time::sleep(POLL).await;
    };
    assert_eq!(status.generation, 2, "the manager lost its generation");
    let req3 = manager::api::CreateVolumeRequest {
        name: "vol3".into(),
        nsid: Some(3),
        ..req
    };
    assert_eq!(c.client.create_volume(&req3).await.unwrap().generation, 3);
    c.wait_acked(3).await;
    let (ctrl, _q) = c.host_queue(0).await;
    assert!(
        ctrl.active_ns_list(0).await.unwrap().contains(&3),
        "generation 3 did not reach s1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resize_reaches_hosts_as_a_namespace_change_and_a_new_server_gets_new_extents() {
    let mut c = start_cluster().await;
    let (ctrl, q) = c.host_queue(1).await;
    // The host enables namespace attribute notices and parks an AER, as Linux does.
    ctrl.set_features(
        codec::nvme::cmd::FeatureId::ASYNC_EVENT_CONFIG,
        0,
        1 << 8,
        None,
    )
    .await
    .unwrap();
    let aer = ctrl.async_event_request().await.unwrap();
    q.write(1, 0, LBA, block(0, 1), false).await.unwrap();
    let m = c.client.resize_volume("vol1", 2 * VOL).await.unwrap();
    assert_eq!(m.generation, 2);
    c.wait_acked(2).await;
    let ev = tokio::time::timeout(AEN_DEADLINE, aer)
        .await
        .expect("no AEN after resize")
        .unwrap();
    assert_eq!(
        (ev.event_type, ev.event_info, ev.log_page),
        (2, 0x00, 0x04),
        "{ev:?}"
    );
    let changed = ctrl.get_log_page(0x04, 0xFFFF_FFFF, 4096, 0).await.unwrap();
    assert_eq!(
        u32::from_le_bytes(changed[..4].try_into().unwrap()),
        1,
        "changed NS list"
    );
    let ns = ctrl.identify_namespace_parsed(1).await.unwrap();
    assert_eq!(ns.nsze * 512, 2 * VOL, "new size not visible");
    // The grown part works and the old data is still there.
    let last = 2 * VOL / 512 - 8;
    q.write(1, last, LBA, block(last, 1), false).await.unwrap();
    assert_eq!(q.read(1, last, 8, LBA).await.unwrap(), block(last, 1));
    assert_eq!(q.read(1, 0, 8, LBA).await.unwrap(), block(0, 1));

    // A fourth server joins; a new volume's extents are spread over it too.
    let (p, i) = (daemon_port(), daemon_port());
    let add = manager::api::AddServerRequest {
        id: "s4".into(),
        portal: SocketAddr::from(([127, 0, 0, 1], p)),
        internal: SocketAddr::from(([127, 0, 0, 1], i)),
        pool_bytes: 64 << 20,
        rack: None,
    };
    let m = c.client.add_server(&add).await.unwrap();
    assert_eq!(m.generation, 3);
    let child = Command::new(env!("CARGO_BIN_EXE_tessera-target"))
        .args([
            "--manager",
            &c.maddr,
            "--server-id",
            "s4",
            "--reactors",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(log_file(&c.dir, "s4"))
        .spawn()
        .unwrap();
    c.servers
        .push(("s4".into(), add.portal, add.internal, Proc(child, "server")));
    let req = manager::api::CreateVolumeRequest {
        name: "vol2".into(),
        size: 8 * EXTENT,
        block_size: None,
        extent_size: Some(EXTENT),
        replicas: None,
        subsystem: NQN.into(),
        nsid: Some(2),
        hosts: None,
    };
    let m = c.client.create_volume(&req).await.unwrap();
    c.wait_acked(m.generation).await;
    let on_s4 = m
        .volume("vol2")
        .unwrap()
        .extents
        .iter()
        .filter(|e| e.replicas[0].server == "s4")
        .count();
    assert!(on_s4 >= 2, "the new server got {on_s4} of 8 extents");
    // Data written through the new server lands and reads back through an old one.
    let (_c4, q4) = c.host_queue(3).await;
    for e in 0..8u64 {
        let lba = e * EXTENT / 512;
        q4.write(2, lba, LBA, block(lba, 5), false).await.unwrap();
    }
    let (_c1, q1) = c.host_queue(0).await;
    for e in 0..8u64 {
        let lba = e * EXTENT / 512;
        assert_eq!(q1.read(2, lba, 8, LBA).await.unwrap(), block(lba, 5));
    }
}

/// Runs the `tessera` CLI against the cluster's manager.
fn cli(c: &Cluster, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(sibling_bin("tessera", "tessera-tool"))
        .args(args)
        .args(["--manager", &c.maddr])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tessera_cli_changes_the_cluster_and_refuses_bad_changes_whole() {
    let c = start_cluster().await;
    let (ok, out, err) = cli(&c, &["status"]);
    assert!(ok, "status failed: {err}");
    assert!(
        out.contains("generation 1") && out.contains("s1") && out.contains("vol1"),
        "{out}"
    );
    let (ok, out, err) = cli(
        &c,
        &[
            "volume",
            "create",
            "vol2",
            "--size",
            "4MiB",
            "--subsystem",
            NQN,
            "--nsid",
            "2",
            "--extent-size",
            "1MiB",
        ],
    );
    assert!(ok, "create failed: {err}");
    assert!(out.contains("generation 2"), "{out}");
    let (ok, out, err) = cli(&c, &["volume", "resize", "vol2", "--size", "8MiB"]);
    assert!(ok && out.contains("generation 3"), "resize: {out} {err}");
    // Refused whole: shrinking, an unknown volume, a size not a multiple of the block size.
    for bad in [
        vec!["volume", "resize", "vol2", "--size", "2MiB"],
        vec!["volume", "resize", "nope", "--size", "8MiB"],
        vec![
            "volume",
            "create",
            "vol3",
            "--size",
            "1000",
            "--subsystem",
            NQN,
            "--nsid",
            "3",
        ],
    ] {
        let (ok, _out, err) = cli(&c, &bad);
        assert!(!ok, "{bad:?} was accepted");
        assert!(
            err.starts_with("tessera: ") && err.len() > 20,
            "unclear error for {bad:?}: {err}"
        );
    }
    // The manager answers once a change is durable; publishing it to servers and clients
    // follows. Wait for that, then check nothing else moved.
    c.wait_acked(3).await;
    assert_eq!(
        c.client.status().await.unwrap().generation,
        3,
        "a refused change moved the generation"
    );
    let owner = c.map().await.volume("vol2").unwrap().extents[0].replicas[0]
        .server
        .clone();
    let to = if owner == "s1" { "s2" } else { "s1" };
    let (ok, out, err) = cli(&c, &["extent", "move", "vol2", "0", "--to", to]);
    assert!(
        ok && out.contains("moving vol2 extent 0"),
        "move: {out} {err}"
    );
    let deadline = Instant::now() + MOVE_DEADLINE;
    loop {
        let m = c.map().await;
        let e = &m.volume("vol2").unwrap().extents[0];
        if e.replicas[0].server == to && e.moving.is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "the move did not finish");
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ahead_of_a_server_is_served_once_the_server_catches_up() {
    let c = start_cluster().await;
    let (_ci, qi) = c.internal_queue(2).await;
    qi.with_generation(1)
        .write(INTERNAL_NSID, 0, INTERNAL_BLOCK, block(0, 7), false)
        .await
        .unwrap();
    // Stamped with generation 2 while every server is still at 1: the server waits for its map.
    // Whether it waited is told by order, not by time: `changing` is set before generation 2
    // is asked for, so a command served at generation 1 completes while it is still unset.
    let changing = Arc::new(AtomicBool::new(false));
    let ahead = {
        let qi = qi.clone();
        let changing = Arc::clone(&changing);
        tokio::spawn(async move {
            let r = qi
                .with_generation(2)
                .read(INTERNAL_NSID, 0, 8, INTERNAL_BLOCK)
                .await;
            (r, changing.load(Ordering::Acquire))
        })
    };
    // Time for the command to reach the server (if it has not, it is sent later and the test
    // proves less, but does not fail), well inside the server's BEHIND_WAIT (2 s).
    tokio::time::sleep(Duration::from_millis(200)).await;
    changing.store(true, Ordering::Release);
    let req = manager::api::CreateVolumeRequest {
        name: "vol2".into(),
        size: 4 << 20,
        block_size: None,
        extent_size: Some(EXTENT),
        replicas: None,
        subsystem: NQN.into(),
        nsid: Some(2),
        hosts: None,
    };
    assert_eq!(c.client.create_volume(&req).await.unwrap().generation, 2);
    let (r, after_change) = ahead.await.unwrap();
    assert_eq!(
        r.unwrap(),
        block(0, 7),
        "the command ahead was not served after the catch-up"
    );
    assert!(
        after_change,
        "served before generation 2 was even asked for"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_pool_server_restarts_from_its_persisted_map_and_keeps_its_data() {
    let mut c = start_cluster_with(true).await;
    let (_h, host) = c.host_queue(1).await;
    for e in 0..(VOL / EXTENT) {
        let lba = e * EXTENT / 512;
        host.write(1, lba, LBA, block(lba, 4), true).await.unwrap();
    }
    // Generation 2, installed and persisted by every server.
    let owner = c.map().await.volume("vol1").unwrap().extents[0].replicas[0]
        .server
        .clone();
    let to = if owner == "s1" { "s2" } else { "s1" };
    c.client.move_extent("vol1", 0, to).await.unwrap();
    let deadline = Instant::now() + MOVE_DEADLINE;
    let g = loop {
        let m = c.map().await;
        let e = &m.volume("vol1").unwrap().extents[0];
        if e.replicas[0].server == to && e.moving.is_none() {
            c.wait_acked(m.generation).await;
            break m.generation;
        }
        assert!(Instant::now() < deadline, "move did not finish");
        tokio::time::sleep(POLL).await;
    };
    let state = c.dir.join("s1.pool.tessera-map.json");
    let persisted: ClusterMap = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(
        persisted.generation, g,
        "the installed map was not persisted"
    );
    // SIGKILL s1 and start it again: it resumes from its map and serves the same data.
    let _ = c.servers[0].3.0.kill();
    let _ = c.servers[0].3.0.wait();
    c.servers[0].3 = spawn_server(&c.dir, &c.maddr, "s1", true);
    let deadline = Instant::now() + RESTART_DEADLINE;
    let q = loop {
        if let Ok(ctrl) =
            Controller::connect(c.servers[0].1, NQN, HOST, &ControllerOptions::default()).await
        {
            ctrl.enable().await.unwrap();
            ctrl.set_num_queues(1).await.unwrap();
            break (ctrl.connect_io_queue(1, 63).await.unwrap(), ctrl);
        }
        assert!(Instant::now() < deadline, "s1 did not come back");
        tokio::time::sleep(POLL).await;
    };
    for e in 0..(VOL / EXTENT) {
        let lba = e * EXTENT / 512;
        assert_eq!(
            q.0.read(1, lba, 8, LBA).await.unwrap(),
            block(lba, 4),
            "extent {e} after restart"
        );
    }
}

/// Issue 10, scenario 1 (docs/cluster-protocol.md, "Fencing"): the old owner A of a moving
/// extent hangs (SIGSTOP) before it acks the switch; the operator marks it `down` in the YAML
/// and reloads; the switch commits without it; a host write lands on the new owner B; then A
/// is restarted on its file pool, from its persisted older map. Its catch-up install would
/// copy its stale extent over B's (the final copy used to pass B's stamp check); B refuses it
/// under the source rule, or A does not send it (the map it installs marks it down), and the
/// acknowledged write survives on every path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_old_owner_marked_down_and_restarted_cannot_undo_an_acknowledged_write() {
    let mut c = start_cluster_with(true).await;
    let before = c.map().await;
    let a_id = before.volume("vol1").unwrap().extents[0].replicas[0]
        .server
        .clone();
    let a = c.servers.iter().position(|s| s.0 == a_id).unwrap();
    let b = (a + 1) % 3;
    let h = (a + 2) % 3;
    let b_id = c.servers[b].0.clone();
    let (_hc, host) = c.host_queue(h).await;
    for k in 0..(EXTENT / 4096) {
        let lba = k * 8;
        host.write(1, lba, LBA, block(lba, 1), true).await.unwrap();
    }
    // A hangs. The move starts; A cannot copy, so the test reports move-ready in its place
    // (the state the issue reached with a real copy: the switch waits for A in phase 1a).
    let pid = c.servers[a].3.0.id().to_string();
    let stopped = Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    assert!(stopped.success(), "kill -STOP {pid}");
    let moved = c.client.move_extent("vol1", 0, &b_id).await.unwrap();
    move_ready_once_accepted(
        &c.client,
        &manager::api::MoveReadyRequest {
            server: a_id.clone(),
            volume: "vol1".to_string(),
            extent: 0,
            generation: moved.generation,
        },
    )
    .await;
    // The switch waits for A in phase 1a. (The operator marks A down only then: the manager
    // excuses a down old owner only from a publication already in phase 1a when the map
    // marking it down is stored; a switch still queued then would wait for A forever.)
    let deadline = Instant::now() + MOVE_DEADLINE;
    loop {
        let s = c.client.status().await.unwrap();
        if s.publishing
            .as_ref()
            .is_some_and(|p| p.phase == "1a" && p.waiting == [a_id.clone()])
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the switch did not reach phase 1a waiting for {a_id}: {s:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    // The operator marks A down and reloads: the switch commits without A.
    let yaml_path = c.dir.join("cluster.yaml");
    let yaml = std::fs::read_to_string(&yaml_path).unwrap();
    let marked = yaml.replace(
        &format!("  - id: {a_id}\n"),
        &format!("  - id: {a_id}\n    state: down\n"),
    );
    assert_ne!(yaml, marked);
    std::fs::write(&yaml_path, marked).unwrap();
    let down = c.client.reload().await.unwrap();
    let deadline = Instant::now() + MOVE_DEADLINE;
    loop {
        let s = c.client.status().await.unwrap();
        if s.committed >= down.generation {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the switch did not commit with {a_id} down: {s:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    let m = c.map().await;
    assert_eq!(
        m.volume("vol1").unwrap().extents[0].replicas[0].server,
        b_id
    );
    // Every up server has the map; a host write lands on B (acknowledged).
    let deadline = Instant::now() + ACK_DEADLINE;
    while !c
        .client
        .status()
        .await
        .unwrap()
        .servers
        .iter()
        .filter(|s| s.id != a_id)
        .all(|s| s.acked >= down.generation)
    {
        assert!(
            Instant::now() < deadline,
            "servers did not install the down map"
        );
        tokio::time::sleep(POLL).await;
    }
    host.write(1, 0, LBA, block(0, 3), true).await.unwrap();
    assert_eq!(host.read(1, 0, 8, LBA).await.unwrap(), block(0, 3));
    // A is restarted on its file pool (it starts from its persisted, older, map) and installs
    // the current one (its catch-up install, with the final copy of the extent it lost).
    let log = c.dir.join(format!("{a_id}.log"));
    let installs = |text: &str| text.matches("map installed").count();
    let before_restart = installs(&std::fs::read_to_string(&log).unwrap_or_default());
    let _ = c.servers[a].3.0.kill();
    let _ = c.servers[a].3.0.wait();
    c.servers[a].3 = spawn_server(&c.dir, &c.maddr, &a_id, true);
    let deadline = Instant::now() + RESTART_DEADLINE;
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if installs(&text) > before_restart {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "{a_id} did not install the current map after its restart; its log ends:\n{}",
            tail(&text, 20)
        );
        tokio::time::sleep(POLL).await;
    };
    // The acknowledged write is still there, through every portal that serves.
    for i in [b, h] {
        let (_ci, qi) = c.host_queue(i).await;
        assert_eq!(
            qi.read(1, 0, 8, LBA).await.unwrap(),
            block(0, 3),
            "the write acknowledged on {b_id} was undone (read through {})",
            c.servers[i].0
        );
    }
    // Its stale copy never landed: refused by B under the source rule, or not even sent (the
    // map it installs marks it down, so every switch of its extents in it went on without it).
    // (A switched no extent before it hung.)
    assert!(
        !text.contains("extent switched"),
        "{a_id} completed a final copy of its stale extent; its log ends:\n{}",
        tail(&text, 20)
    );
}

/// Issue 10, scenario 3 (docs/cluster-protocol.md, "Bounds"): with the owner of an extent hung
/// (SIGSTOP), a host write to that extent through another server completes, with a retryable
/// path error, within the forwarding deadline (5 s by default) instead of waiting for the
/// peer; the Linux host's 30 s I/O timeout is the bound that matters here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_write_forwarded_to_a_hung_peer_fails_over_instead_of_waiting() {
    let c = start_cluster().await;
    let map = c.map().await;
    let owner = map.volume("vol1").unwrap().extents[0].replicas[0]
        .server
        .clone();
    let o = c.servers.iter().position(|s| s.0 == owner).unwrap();
    let via = (o + 1) % 3;
    let (_hc, host) = c.host_queue(via).await;
    host.write(1, 0, LBA, block(0, 1), true).await.unwrap();
    let pid = c.servers[o].3.0.id().to_string();
    let stop = Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    assert!(stop.success(), "kill -STOP {pid}");
    /// Under a Linux host's 30 s I/O timeout, with room for a loaded machine.
    const HOST_IO_TIMEOUT: Duration = Duration::from_secs(28);
    let r = tokio::time::timeout(HOST_IO_TIMEOUT, host.write(1, 0, LBA, block(0, 2), true)).await;
    let cont = Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    assert!(cont.success(), "kill -CONT {pid}");
    let r = r.expect("a write forwarded to a hung peer was not answered within 28 s");
    let status = r
        .expect_err("a write forwarded to a hung peer succeeded")
        .status();
    assert!(
        status.is_some_and(|s| s.same_code(Status::INTERNAL_PATH_ERROR) && !s.dnr()),
        "expected a retryable path error, got {status:?}"
    );
    // The peer is back: the host's retry succeeds (within the bounded retries of a host).
    let deadline = Instant::now() + ACK_DEADLINE;
    loop {
        match host.write(1, 0, LBA, block(0, 3), true).await {
            Ok(()) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "retry after the peer resumed: {e}"
            ),
        }
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(host.read(1, 0, 8, LBA).await.unwrap(), block(0, 3));
}

/// Sets `state` on server `id` in the cluster YAML (`up` removes the line) and reloads.
async fn set_state_in_yaml(c: &Cluster, id: &str, state: &str) -> ClusterMap {
    let path = c.dir.join("cluster.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    let entry = format!("  - id: {id}\n");
    let cleared = yaml.replace(&format!("{entry}    state: down\n"), &entry);
    let edited = if state == "up" {
        cleared
    } else {
        cleared.replace(&entry, &format!("{entry}    state: {state}\n"))
    };
    assert_ne!(yaml, edited, "the YAML already says {id} is {state}");
    std::fs::write(&path, edited).unwrap();
    c.client.reload().await.unwrap()
}

/// Issue 10 (docs/cluster-protocol.md, "Cancelling a switch to a server marked down"): the
/// new owner N of a switch hangs (SIGSTOP) while the switch waits in phase 1a for the old
/// owner A, whose final copy to N cannot finish. The operator marks N down in the YAML and
/// reloads: the switch is cancelled (the extent stays A's, at the same pool offset), host
/// writes go on, and every acknowledged block reads back through every serving portal. N,
/// resumed, serves nothing until it is marked up again, then serves the current data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_new_owner_marked_down_cancels_its_switch_and_loses_no_write() {
    let c = start_cluster_with(true).await;
    let before = c.map().await;
    let owner = before.volume("vol1").unwrap().extents[0].replicas[0].clone();
    let a = c.servers.iter().position(|s| s.0 == owner.server).unwrap();
    let n = (a + 1) % 3;
    let h = (a + 2) % 3;
    let (a_id, n_id) = (c.servers[a].0.clone(), c.servers[n].0.clone());
    let (_hc, host) = c.host_queue(h).await;
    // Every block of extent 0, version 1, acknowledged through h.
    let blocks = EXTENT / 4096;
    let mut version = vec![1u32; blocks as usize];
    for k in 0..blocks {
        host.write(1, k * 8, LBA, block(k * 8, 1), true)
            .await
            .unwrap();
    }
    // N hangs; the move to it starts. The manager switches a move only once its destination
    // has acked the map with the move: the move-ready is refused while N is hung.
    let pid = c.servers[n].3.0.id().to_string();
    let stopped = Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    assert!(stopped.success(), "kill -STOP {pid}");
    let moved = c.client.move_extent("vol1", 0, &n_id).await.unwrap();
    let ready = manager::api::MoveReadyRequest {
        server: a_id.clone(),
        volume: "vol1".to_string(),
        extent: 0,
        generation: moved.generation,
    };
    match c.client.move_ready(&ready).await {
        Err(manager::client::ClientError::Http {
            status, message, ..
        }) => assert!(
            status == 409 && message.contains(&format!("its destination {n_id} has acked")),
            "{status}: {message}"
        ),
        other => panic!("a move-ready for a move to a hung server: {other:?}"),
    }
    // The state of a move whose copy converged just before N hung: N had acked the move's
    // map (the test sends that ack in its place: no credentials), and the move is reported
    // ready (its copy cannot run). The switch waits for A in phase 1a.
    c.client.ack(&n_id, moved.generation).await.unwrap();
    c.client.move_ready(&ready).await.unwrap();
    let deadline = Instant::now() + MOVE_DEADLINE;
    loop {
        let s = c.client.status().await.unwrap();
        if s.publishing
            .as_ref()
            .is_some_and(|p| p.phase == "1a" && p.waiting == [a_id.clone()])
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the switch did not wait for {a_id} in phase 1a: {s:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    // Writes go on meanwhile (A postpones its install and serves; a write that meets its
    // closed gate gets a retryable error, as a Linux host would, and is retried).
    let write = |q: &Queue, k: u64, v: u32| {
        let q = q.clone();
        async move {
            let deadline = Instant::now() + ACK_DEADLINE;
            loop {
                match q.write(1, k * 8, LBA, block(k * 8, v), true).await {
                    Ok(()) => return,
                    Err(e) => assert!(
                        Instant::now() < deadline,
                        "write of block {k} v{v} kept failing: {e}"
                    ),
                }
                tokio::time::sleep(POLL).await;
            }
        }
    };
    for k in (0..blocks).step_by(7) {
        write(&host, k, 2).await;
        version[k as usize] = 2;
    }
    // The operator marks N down: the switch is cancelled.
    let down = set_state_in_yaml(&c, &n_id, "down").await;
    let deadline = Instant::now() + MOVE_DEADLINE;
    loop {
        let s = c.client.status().await.unwrap();
        if s.committed >= down.generation {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the map marking {n_id} down did not commit: {s:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    let m = c.map().await;
    let e0 = &m.volume("vol1").unwrap().extents[0];
    assert_eq!(
        e0.replicas[0], owner,
        "the extent did not go back to {a_id} at its offset"
    );
    assert!(e0.moving.is_none(), "the move to {n_id} was not cancelled");
    // Writes go on, through both serving portals, and every acknowledged block reads back.
    let (_ac, via_a) = c.host_queue(a).await;
    for k in (0..blocks).step_by(5) {
        let q = if k % 2 == 0 { &host } else { &via_a };
        write(q, k, 3).await;
        version[k as usize] = 3;
    }
    for (q, via) in [(&host, &c.servers[h].0), (&via_a, &a_id)] {
        for k in 0..blocks {
            let deadline = Instant::now() + ACK_DEADLINE;
            let data = loop {
                match q.read(1, k * 8, 8, LBA).await {
                    Ok(d) => break d,
                    Err(e) => assert!(
                        Instant::now() < deadline,
                        "read of block {k} through {via} kept failing: {e}"
                    ),
                }
                tokio::time::sleep(POLL).await;
            };
            assert_eq!(
                data,
                block(k * 8, version[k as usize]),
                "block {k} through {via}: an acknowledged write was lost"
            );
        }
    }
    // N resumes: marked down, it serves nothing.
    let cont = Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    assert!(cont.success(), "kill -CONT {pid}");
    let (_nc, via_n) = c.host_queue(n).await;
    for k in [0, blocks / 2, blocks - 1] {
        assert!(
            via_n.read(1, k * 8, 8, LBA).await.is_err(),
            "{n_id}, marked down, served block {k}"
        );
    }
    // Marked up again, it serves the current data.
    let up = set_state_in_yaml(&c, &n_id, "up").await;
    c.wait_acked(up.generation).await;
    for k in 0..blocks {
        let deadline = Instant::now() + ACK_DEADLINE;
        let data = loop {
            match via_n.read(1, k * 8, 8, LBA).await {
                Ok(d) => break d,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "read of block {k} through {n_id} after it was marked up: {e}"
                ),
            }
            tokio::time::sleep(POLL).await;
        };
        assert_eq!(
            data,
            block(k * 8, version[k as usize]),
            "block {k} through {n_id}"
        );
    }
}
