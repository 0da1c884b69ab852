//! A server whose pool data is gone gets a full copy, multi-process: one `tessera-manager` and
//! three `tessera-target` storage servers on loopback, a volume with 2 copies of every extent.
//! Every block is written; one server is killed (SIGKILL) and restarted on an empty pool (a RAM
//! pool, or a file pool whose file was deleted). Its pool identity differs from the one the
//! manager recorded, so its copies go `stale` and are rebuilt whole from the other copies; then
//! every block reads back right through every server, and a checker reads every copy of every
//! extent from its server's internal namespace and finds them equal (docs/replication.md, "A
//! server whose data is gone"). With one copy per extent, the extents of the restarted server
//! are marked lost: their reads fail with Unrecovered Read Error until an operator clears the
//! mark ("The last copy").
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use codec::nvme::Status;
use manager::api::Role;
use manager::client::Client;
use manager::map::{ClusterMap, ReplicaState};
use tessera::cluster::peers::{INTERNAL_BLOCK, INTERNAL_NSID, internal_nqn, server_hostnqn};
use tessera::initiator::{Controller, ControllerOptions, InitiatorError, Queue};

const NQN: &str = "nqn.2026-11.dev.tessera:pvol";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:c1c1c1c1-0000-0000-0000-000000000008";
const EXTENT: u64 = 1 << 20;
const VOL: u64 = 6 << 20;
const LBA: u32 = 512;
/// Blocks of 4 KiB (8 LBAs) in the volume.
const BLOCKS: u64 = VOL / 4096;

// Deadlines only bound waiting (a hang fails the test instead of hanging the suite); none
// asserts speed: the suite runs on 2 shared cores next to other builds and tests.

/// The cluster is up: the manager answers and every server acknowledged generation 1.
const START_DEADLINE: Duration = Duration::from_secs(90);
/// Writes, the restart and the rebuild.
const DEADLINE: Duration = Duration::from_secs(300);
/// How often a wait loop looks again.
const POLL: Duration = Duration::from_millis(100);
/// Starts of the whole cluster, each on fresh ports, when a process finds a port taken.
const START_ATTEMPTS: usize = 4;

#[path = "../../tests/support/daemons.rs"]
#[allow(dead_code)]
mod daemons;
#[path = "../../tests/support/kept_dir.rs"]
mod kept_dir;

#[path = "support/harness.rs"]
#[allow(dead_code)]
mod harness;

use harness::{Proc, servers_yaml};
use kept_dir::KeptDir;

struct Cluster {
    _manager: Proc,
    client: Client,
    maddr: String,
    dir: std::path::PathBuf,
    /// Id, host portal, internal portal, process.
    servers: Vec<(String, SocketAddr, SocketAddr, Proc)>,
    /// Last: dropped after the processes are killed, so that kept logs are complete.
    _logs: KeptDir,
}

async fn start_cluster(file_pools: bool, replicas: u32) -> Cluster {
    let logs = KeptDir::with_prefix("tessera-pool-identity-test-");
    for attempt in 1..=START_ATTEMPTS {
        let dir = logs.path().join(format!("start{attempt}"));
        std::fs::create_dir(&dir).unwrap();
        let yaml = |ports: &[(u16, u16)]| {
            let mut y = servers_yaml(ports);
            y.push_str(&format!(
                "subsystems:\n  - nqn: {NQN}\n    allow_any_host: true\nvolumes:\n  - name: pvol\n    size: {VOL}\n    subsystem: {NQN}\n    nsid: 1\n    extent_size: {EXTENT}\n    replicas: {replicas}\n"
            ));
            y
        };
        match harness::try_start_with(&dir, yaml, (&[], &[]), file_pools, START_DEADLINE).await {
            Ok((manager, maddr, servers)) => {
                return Cluster {
                    _manager: manager,
                    client: Client::new(&maddr),
                    maddr,
                    dir,
                    servers,
                    _logs: logs,
                };
            }
            Err(why) => eprintln!("cluster start {attempt}: {why}; starting again"),
        }
    }
    panic!("the cluster did not start in {START_ATTEMPTS} attempts (ports taken every time)");
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

impl Cluster {
    async fn map(&self) -> ClusterMap {
        self.client.map(&Role::Client).await.unwrap()
    }

    fn index(&self, id: &str) -> usize {
        self.servers.iter().position(|s| s.0 == id).unwrap()
    }
}

/// The pattern of one 4 KiB block: its number in every 16 bytes (never all zeros).
fn block(n: u64) -> Bytes {
    let mut v = vec![0u8; 4096];
    for (i, c) in v.chunks_mut(16).enumerate() {
        c[..8].copy_from_slice(&n.to_le_bytes());
        c[8..12].copy_from_slice(&0x7e55_e7a0u32.to_le_bytes());
        c[12..16].copy_from_slice(&(i as u32).to_le_bytes());
    }
    Bytes::from(v)
}

/// Writes block `n`, retrying a retryable path error (as a host does).
async fn write_block(q: &Queue, n: u64) {
    for _ in 0..50 {
        match q.write(1, n * 8, LBA, block(n), false).await {
            Ok(()) => return,
            Err(InitiatorError::Status(s)) if s.same_code(Status::INTERNAL_PATH_ERROR) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("write of block {n}: {e}"),
        }
    }
    panic!("write of block {n}: path errors 50 times");
}

fn all_in_sync(m: &ClusterMap) -> bool {
    m.volumes.iter().all(|v| {
        v.extents
            .iter()
            .all(|e| e.replicas.iter().all(|r| r.state == ReplicaState::InSync))
    })
}

/// Every copy of every extent, read from its server's internal namespace (stamped with the
/// current generation), equals the others. Returns the copies compared.
async fn check_copies(c: &Cluster) -> usize {
    let map = c.map().await;
    let vol = map.volume("pvol").unwrap();
    let mut queues = Vec::new();
    for s in &c.servers {
        queues.push(connect_queue(s.2, &internal_nqn(&s.0), &server_hostnqn("s1")).await);
    }
    let mut compared = 0;
    for (x, e) in vol.extents.iter().enumerate() {
        let mut copies = Vec::new();
        for r in &e.replicas {
            let (_, q) = &queues[c.index(&r.server)];
            let mut data = Vec::with_capacity(EXTENT as usize);
            let chunk = 128 * 1024u64;
            for at in (0..EXTENT).step_by(chunk as usize) {
                let got = q
                    .with_generation(map.generation)
                    .read(
                        INTERNAL_NSID,
                        (r.offset + at) / u64::from(INTERNAL_BLOCK),
                        (chunk / u64::from(INTERNAL_BLOCK)) as u32,
                        INTERNAL_BLOCK,
                    )
                    .await
                    .unwrap();
                data.extend_from_slice(&got);
            }
            // The extent's own blocks are the pattern (never zeros).
            let n0 = x as u64 * EXTENT / 4096;
            for (k, b) in data.chunks(4096).enumerate() {
                assert!(
                    b == &block(n0 + k as u64)[..],
                    "extent {x}: block {k} of the copy on {} is not what was written (first \
                     bytes {:?})",
                    r.server,
                    &b[..16]
                );
            }
            copies.push((r.server.clone(), data));
        }
        let (first_server, first) = &copies[0];
        for (server, data) in &copies[1..] {
            assert!(
                data == first,
                "extent {x}: the copy on {server} differs from the one on {first_server}"
            );
            compared += 1;
        }
    }
    compared
}

/// Writes every block, kills a server, restarts it on an empty pool (`file_pool`: its pool
/// file deleted first; else a RAM pool), and checks that its copies are rebuilt whole.
async fn data_gone_is_rebuilt_whole(file_pool: bool) {
    let mut c = start_cluster(file_pool, 2).await;
    let deadline = Instant::now() + DEADLINE;
    let map = c.map().await;
    // The victim is the primary of extent 0 (its primaries must move).
    let victim = map.volume("pvol").unwrap().extents[0].replicas[0]
        .server
        .clone();
    let k = c.index(&victim);
    let recorded = map.server(&victim).unwrap().pool;
    assert!(
        recorded.is_some(),
        "{victim} holds copies of a replicated volume: its pool identity is recorded"
    );

    // Every block, through the three servers in turn.
    let mut queues = Vec::new();
    for s in &c.servers {
        queues.push(connect_queue(s.1, NQN, HOST).await);
    }
    for n in 0..BLOCKS {
        write_block(&queues[(n % 3) as usize].1, n).await;
    }
    drop(queues);
    eprintln!("{BLOCKS} blocks written; killing {victim}");

    c.servers[k].3.0.kill().unwrap();
    c.servers[k].3.0.wait().unwrap();
    if file_pool {
        std::fs::remove_file(c.dir.join(format!("{victim}.pool"))).unwrap();
    }
    let restarted = harness::spawn_server(&c.dir, &c.maddr, &victim, file_pool);
    c.servers[k].3 = restarted;

    // A new identity recorded, then every copy in sync again (bounded, generous).
    let mut map = c.map().await;
    loop {
        let pool = map.server(&victim).unwrap().pool;
        if pool.is_some() && pool != recorded && all_in_sync(&map) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{victim}'s copies not rebuilt: {:?}; status: {:?}",
            map,
            c.client.status().await
        );
        tokio::time::sleep(POLL).await;
        map = c.map().await;
    }
    let mut verified = 0;
    for s in &c.servers {
        let (_ctrl, q) = connect_queue(s.1, NQN, HOST).await;
        for first in (0..BLOCKS).step_by(16) {
            let got = q.read(1, first * 8, 128, LBA).await.unwrap();
            for (i, b) in got.chunks(4096).enumerate() {
                let n = first + i as u64;
                assert!(
                    b == &block(n)[..],
                    "block {n} through {}: not what was written (first bytes {:?})",
                    s.0,
                    &b[..16]
                );
                verified += 1;
            }
        }
    }
    let compared = check_copies(&c).await;
    let log = std::fs::read_to_string(c.dir.join("manager.log")).unwrap_or_default();
    assert!(
        log.contains("its data is gone"),
        "the manager did not log the pool change"
    );
    eprintln!(
        "{victim} restarted on an empty {} pool and rebuilt: {verified} reads verified through \
         3 servers, {compared} copies equal to their first (generation {})",
        if file_pool { "file" } else { "RAM" },
        map.generation
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_back_on_an_empty_ram_pool_is_rebuilt_whole() {
    data_gone_is_rebuilt_whole(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_pool_file_was_deleted_is_rebuilt_whole() {
    data_gone_is_rebuilt_whole(true).await;
}

/// Reads 8 LBAs at block `n` through `q`, retrying a retryable path error (as a host does).
async fn read_block(q: &Queue, n: u64) -> Result<Bytes, InitiatorError> {
    for _ in 0..50 {
        match q.read(1, n * 8, 8, LBA).await {
            Err(InitiatorError::Status(s)) if s.same_code(Status::INTERNAL_PATH_ERROR) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            r => return r,
        }
    }
    panic!("read of block {n}: path errors 50 times");
}

/// Waits until the manager committed generation `g` and every server acknowledged it.
async fn all_acked(c: &Cluster, g: u64, deadline: Instant) {
    while !harness::all_acked(&c.client, g, c.servers.len()).await {
        assert!(
            Instant::now() < deadline,
            "generation {g} not acknowledged by every server; status: {:?}",
            c.client.status().await
        );
        tokio::time::sleep(POLL).await;
    }
}

/// One copy per extent: a server back on an empty RAM pool has its extents marked lost; their
/// reads fail with Unrecovered Read Error (DNR) through every server, the other extents read
/// as written, and once the operator clears the mark they read as zeros and take writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_copy_on_an_empty_ram_pool_is_lost_until_the_operator_clears_it() {
    let mut c = start_cluster(false, 1).await;
    let deadline = Instant::now() + DEADLINE;
    let map = c.map().await;
    let vol = map.volume("pvol").unwrap();
    let victim = vol.extents[0].replicas[0].server.clone();
    let k = c.index(&victim);
    let lost: Vec<usize> = (0..vol.extents.len())
        .filter(|&i| vol.extents[i].replicas[0].server == victim)
        .collect();
    let kept = (0..vol.extents.len())
        .find(|i| !lost.contains(i))
        .expect("an extent on another server");
    let per_extent = EXTENT / 4096;

    let mut queues = Vec::new();
    for s in &c.servers {
        queues.push(connect_queue(s.1, NQN, HOST).await);
    }
    for n in 0..BLOCKS {
        write_block(&queues[(n % 3) as usize].1, n).await;
    }
    drop(queues);
    eprintln!("{BLOCKS} blocks written; killing {victim}, which holds extents {lost:?}");

    c.servers[k].3.0.kill().unwrap();
    c.servers[k].3.0.wait().unwrap();
    c.servers[k].3 = harness::spawn_server(&c.dir, &c.maddr, &victim, false);

    // The manager marks exactly the victim's extents lost.
    let status = loop {
        let s = c.client.status().await.unwrap();
        if !s.lost_extents.is_empty() {
            break s;
        }
        assert!(Instant::now() < deadline, "no extent marked lost: {s:?}");
        tokio::time::sleep(POLL).await;
    };
    let marked: Vec<usize> = status.lost_extents.iter().map(|l| l.extent).collect();
    assert_eq!(marked, lost, "lost extents: {:?}", status.lost_extents);
    all_acked(&c, status.generation, deadline).await;
    let log = std::fs::read_to_string(c.dir.join("manager.log")).unwrap_or_default();
    assert!(
        log.contains("DATA LOST"),
        "the manager did not log the loss"
    );

    // A lost block fails through every server; a kept one reads as written.
    let lost_block = lost[lost.len() - 1] as u64 * per_extent + 3;
    let kept_block = kept as u64 * per_extent + 5;
    for s in &c.servers {
        let (_ctrl, q) = connect_queue(s.1, NQN, HOST).await;
        match read_block(&q, lost_block).await {
            Err(InitiatorError::Status(st)) => {
                assert!(
                    st.same_code(Status::UNRECOVERED_READ) && st.dnr(),
                    "read of lost block {lost_block} through {}: {st}",
                    s.0
                );
            }
            other => panic!(
                "read of lost block {lost_block} through {}: {:?}",
                s.0,
                other.map(|b| b.slice(..16))
            ),
        }
        let got = read_block(&q, kept_block).await.unwrap();
        assert!(
            got == block(kept_block),
            "block {kept_block} through {}",
            s.0
        );
    }

    // The operator acknowledges the loss: the blocks read as the new pool holds them (zeros),
    // and take writes.
    let m = c.client.clear_lost("pvol", None).await.unwrap();
    assert!(m.volume("pvol").unwrap().extents.iter().all(|e| !e.lost));
    all_acked(&c, m.generation, deadline).await;
    assert!(c.client.status().await.unwrap().lost_extents.is_empty());
    for s in &c.servers {
        let (_ctrl, q) = connect_queue(s.1, NQN, HOST).await;
        let got = read_block(&q, lost_block).await.unwrap();
        assert!(
            got.iter().all(|b| *b == 0),
            "block {lost_block} through {}",
            s.0
        );
    }
    let (_ctrl, q) = connect_queue(c.servers[(k + 1) % 3].1, NQN, HOST).await;
    write_block(&q, lost_block).await;
    for s in &c.servers {
        let (_ctrl, q) = connect_queue(s.1, NQN, HOST).await;
        let got = read_block(&q, lost_block).await.unwrap();
        assert!(
            got == block(lost_block),
            "block {lost_block} through {} after a write",
            s.0
        );
    }
    eprintln!(
        "{victim}'s extents {lost:?} lost, read errors through 3 servers, cleared at generation {}",
        m.generation
    );
}

/// How many lines of `dir/<name>.log` contain `what`.
fn log_count(dir: &std::path::Path, name: &str, what: &str) -> usize {
    std::fs::read_to_string(dir.join(format!("{name}.log")))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(what))
        .count()
}

/// Kills server `k` and starts it again on the block pool `disk`; returns once it is up.
async fn restart_on_block(c: &mut Cluster, k: usize, disk: &std::path::Path, deadline: Instant) {
    let id = c.servers[k].0.clone();
    c.servers[k].3.0.kill().unwrap();
    c.servers[k].3.0.wait().unwrap();
    let ups = log_count(&c.dir, &id, "cluster storage server up");
    let pool = format!("block:{}", disk.display());
    let state_dir = c.dir.display().to_string();
    c.servers[k].3 = harness::spawn_server_with(
        &c.dir,
        &c.maddr,
        &id,
        false,
        &["--pool", &pool, "--state-dir", &state_dir],
    );
    while log_count(&c.dir, &id, "cluster storage server up") == ups {
        assert!(
            c.servers[k].3.0.try_wait().unwrap().is_none(),
            "{id} exited on {pool}; its log: {}",
            std::fs::read_to_string(c.dir.join(format!("{id}.log"))).unwrap_or_default()
        );
        assert!(Instant::now() < deadline, "{id} not up on {pool}");
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `victim` has a pool identity other than `old` recorded and every copy is in
/// sync; returns the new identity.
async fn rebuilt_with_new_pool(
    c: &Cluster,
    victim: &str,
    old: Option<manager::map::PoolId>,
    deadline: Instant,
) -> manager::map::PoolId {
    loop {
        let map = c.map().await;
        let pool = map.server(victim).unwrap().pool;
        if let Some(p) = pool.filter(|p| Some(*p) != old)
            && all_in_sync(&map)
        {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "{victim}'s copies not rebuilt on a new pool: {map:?}; status: {:?}",
            c.client.status().await
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The identity in the label of the device (here a file) `disk`.
fn label_of(disk: &std::path::Path) -> tessera::cluster::pool::BlockLabel {
    let bytes = std::fs::read(disk).unwrap();
    let at = tessera::cluster::pool::label_offset(bytes.len() as u64).unwrap();
    tessera::cluster::pool::decode_label(&bytes[at as usize..], at).unwrap()
}

/// A block pool (a regular file stands in for the device: the block backend opens both the
/// same way, with O_DIRECT). A server moved from RAM onto a new disk labels it with a new
/// identity and its copies are rebuilt whole; the same disk under another path keeps its
/// identity (nothing is rebuilt and its copies hold the data); an empty disk at that path gets
/// a new identity and the copies are rebuilt whole again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_pool_keeps_its_identity_in_its_label_and_a_new_disk_is_rebuilt_whole() {
    use tessera::cluster::pool::BlockLabel;
    let mut c = start_cluster(false, 2).await;
    let deadline = Instant::now() + DEADLINE;
    let map = c.map().await;
    let victim = map.volume("pvol").unwrap().extents[0].replicas[0]
        .server
        .clone();
    let k = c.index(&victim);
    let ram_pool = map.server(&victim).unwrap().pool;
    assert!(ram_pool.is_some());
    let mut queues = Vec::new();
    for s in &c.servers {
        queues.push(connect_queue(s.1, NQN, HOST).await);
    }
    for n in 0..BLOCKS {
        write_block(&queues[(n % 3) as usize].1, n).await;
    }
    drop(queues);
    // The map's pool (64 MiB) and the label's 64 KiB: a sparse file, all zeros.
    let disk_len = (64 << 20) + 64 * 1024;
    let new_disk = |path: &std::path::Path| {
        let f = std::fs::File::create(path).unwrap();
        f.set_len(disk_len).unwrap();
    };
    // The "disks" live on the build's filesystem: O_DIRECT may fail on the temporary
    // directory (an older tmpfs).
    let disks = tempfile::Builder::new()
        .prefix("block-pool-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let disk = disks.path().join("disk-a");
    new_disk(&disk);
    let gone = |c: &Cluster| log_count(&c.dir, "manager", "its data is gone");
    let gone0 = gone(&c);

    // 1. A new disk: labeled, a new identity, rebuilt whole.
    restart_on_block(&mut c, k, &disk, deadline).await;
    let labeled = rebuilt_with_new_pool(&c, &victim, ram_pool, deadline).await;
    assert_eq!(label_of(&disk), BlockLabel::Found(labeled));
    assert_eq!(gone(&c), gone0 + 1);
    let compared = check_copies(&c).await;

    // 2. The same disk under another path: the same identity, nothing marked, data kept.
    let moved = disks.path().join("disk-a-moved");
    let generation = c.map().await.generation;
    c.servers[k].3.0.kill().unwrap();
    c.servers[k].3.0.wait().unwrap();
    std::fs::rename(&disk, &moved).unwrap();
    restart_on_block(&mut c, k, &moved, deadline).await;
    let (_ctrl, q) = connect_queue(c.servers[k].1, NQN, HOST).await;
    for n in (0..BLOCKS).step_by(7) {
        assert!(read_block(&q, n).await.unwrap() == block(n), "block {n}");
    }
    let map = c.map().await;
    assert_eq!(map.server(&victim).unwrap().pool, Some(labeled));
    assert!(
        all_in_sync(&map),
        "copies marked after a restart on the same disk"
    );
    assert_eq!(
        map.generation, generation,
        "a restart on the same disk changed the map"
    );
    assert_eq!(gone(&c), gone0 + 1);
    // Its copies, read from its internal namespace, still hold what was written.
    assert_eq!(check_copies(&c).await, compared);

    // 2b. The map it installed is kept in the state directory under the pool's identity, and
    // a restart starts from it: a generation made while the server is down arrives through
    // the catch-up install (docs/cluster-protocol.md, "Restarting during phase 1a").
    all_acked(&c, map.generation, deadline).await;
    let state = c.dir.join(format!("pool-{labeled}.tessera-map.json"));
    let persisted = |state: &std::path::Path| -> ClusterMap {
        serde_json::from_slice(&std::fs::read(state).unwrap()).unwrap()
    };
    assert_eq!(persisted(&state).generation, map.generation);
    c.servers[k].3.0.kill().unwrap();
    c.servers[k].3.0.wait().unwrap();
    let created = c
        .client
        .create_volume(&manager::api::CreateVolumeRequest {
            name: "other".to_owned(),
            size: EXTENT,
            block_size: None,
            extent_size: Some(EXTENT),
            replicas: Some(1),
            subsystem: NQN.to_owned(),
            nsid: Some(2),
            hosts: None,
        })
        .await
        .unwrap();
    assert!(created.generation > map.generation);
    let from_state = "starting from the persisted map";
    assert_eq!(log_count(&c.dir, &victim, from_state), 0);
    restart_on_block(&mut c, k, &moved, deadline).await;
    assert_eq!(
        log_count(&c.dir, &victim, from_state),
        1,
        "{victim} did not start from its persisted map"
    );
    all_acked(&c, created.generation, deadline).await;
    assert_eq!(persisted(&state).generation, created.generation);
    let (_ctrl, q) = connect_queue(c.servers[k].1, NQN, HOST).await;
    for n in (0..BLOCKS).step_by(7) {
        assert!(read_block(&q, n).await.unwrap() == block(n), "block {n}");
    }

    // 2c. The device grows (by 1 MiB) while the server is down: the label is no longer at
    // the end, but where the last start saw it (recorded in the state directory). It moves to
    // the new end and the pool keeps its identity and its data: nothing is marked.
    let generation = c.map().await.generation;
    c.servers[k].3.0.kill().unwrap();
    c.servers[k].3.0.wait().unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&moved)
        .unwrap()
        .set_len(disk_len + (1 << 20))
        .unwrap();
    assert_eq!(
        label_of(&moved),
        BlockLabel::Missing,
        "no label at the new end yet"
    );
    restart_on_block(&mut c, k, &moved, deadline).await;
    assert_eq!(label_of(&moved), BlockLabel::Found(labeled));
    assert_eq!(log_count(&c.dir, &victim, "device grew"), 1);
    let map = c.map().await;
    assert_eq!(map.server(&victim).unwrap().pool, Some(labeled));
    assert!(all_in_sync(&map), "copies marked after the device grew");
    assert_eq!(
        map.generation, generation,
        "growing the device changed the map"
    );
    assert_eq!(gone(&c), gone0 + 1);
    let (_ctrl, q) = connect_queue(c.servers[k].1, NQN, HOST).await;
    for n in (0..BLOCKS).step_by(7) {
        assert!(read_block(&q, n).await.unwrap() == block(n), "block {n}");
    }
    assert_eq!(check_copies(&c).await, compared);

    // 3. A replaced disk at that path: a new identity, rebuilt whole.
    c.servers[k].3.0.kill().unwrap();
    c.servers[k].3.0.wait().unwrap();
    std::fs::remove_file(&moved).unwrap();
    new_disk(&moved);
    restart_on_block(&mut c, k, &moved, deadline).await;
    let replaced = rebuilt_with_new_pool(&c, &victim, Some(labeled), deadline).await;
    assert_eq!(label_of(&moved), BlockLabel::Found(replaced));
    assert_eq!(gone(&c), gone0 + 2);
    let compared = check_copies(&c).await;
    eprintln!(
        "{victim}: RAM pool {ram_pool:?}, new disk {labeled}, same disk moved {labeled}, \
         replaced disk {replaced}; {compared} copies equal"
    );
}
