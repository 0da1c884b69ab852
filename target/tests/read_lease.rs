//! Read leases, multi-process (docs/replication.md, "Read leases"): one `tessera-manager` and
//! three `tessera-target` servers on loopback, a volume with two copies of every extent.
//!
//! 1. **A manager outage stops no reads.** The manager is stopped (SIGSTOP) past the lease
//!    time: every server's lease runs out (each logs it), and every block still reads back
//!    right through every server (reads of a copy are confirmed with the other copy).
//! 2. **A copy cut off from the manager serves no stale reads.** s2 reaches the manager through
//!    a proxy that the test cuts; the operator then marks s2 `down` (s2 cannot learn it), and
//!    a block of an extent with a copy on s2 is written again through another server. A read
//!    of that block through s2 must not return the old data: s2 has no lease, so it confirms
//!    its read with the other copy, which has the newer map and refuses it. Without the lease
//!    s2 served the old data from its copy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use codec::nvme::Status;
use manager::api::Role;
use manager::client::Client;
use manager::map::{ReplicaState, ServerState};
use tessera::initiator::{Controller, ControllerOptions, InitiatorError, Queue};
use tokio::net::{TcpListener, TcpStream};

const NQN: &str = "nqn.2026-11.dev.tessera:lvol";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:c1c1c1c1-0000-0000-0000-000000000003";
const EXTENT: u64 = 1 << 20;
const VOL: u64 = 4 << 20;
const LBA: u32 = 512;
const START_DEADLINE: Duration = Duration::from_secs(90);
const START_ATTEMPTS: usize = 4;
/// Bounds waits only (a hang fails the test); nothing here asserts speed.
const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);

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

/// A TCP proxy to the manager that the test can cut: open connections are closed and new ones
/// are closed at once.
struct Proxy {
    addr: SocketAddr,
    to: Arc<Mutex<Option<String>>>,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let to: Arc<Mutex<Option<String>>> = Arc::default();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let accept = tokio::spawn({
            let (to, cut, conns) = (Arc::clone(&to), Arc::clone(&cut), Arc::clone(&conns));
            async move {
                while let Ok((mut a, _)) = l.accept().await {
                    let dest = to.lock().unwrap().clone();
                    let (false, Some(dest)) = (cut.load(Ordering::SeqCst), dest) else {
                        continue; // dropped: closed at once
                    };
                    let t = tokio::spawn(async move {
                        if let Ok(mut b) = TcpStream::connect(dest).await {
                            let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                        }
                    });
                    conns.lock().unwrap().push(t.abort_handle());
                }
            }
        });
        Self {
            addr,
            to,
            cut,
            conns,
            accept,
        }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

struct Cluster {
    manager: Proc,
    client: Client,
    dir: std::path::PathBuf,
    /// Id, host portal, process.
    servers: Vec<(String, SocketAddr, Proc)>,
    _logs: KeptDir,
}

/// Three servers and a two-copy volume; s2 reaches the manager through `proxy`.
async fn start(proxy: &Proxy) -> Cluster {
    let logs = KeptDir::with_prefix("tessera-read-lease-test-");
    for attempt in 1..=START_ATTEMPTS {
        let dir = logs.path().join(format!("start{attempt}"));
        std::fs::create_dir(&dir).unwrap();
        let yaml = |ports: &[(u16, u16)]| {
            let mut y = servers_yaml(ports);
            y.push_str(&format!(
                "subsystems:\n  - nqn: {NQN}\n    allow_any_host: true\nvolumes:\n  - name: lvol\n    size: {VOL}\n    subsystem: {NQN}\n    nsid: 1\n    extent_size: {EXTENT}\n    replicas: 2\n"
            ));
            y
        };
        let via = |id: &str, maddr: &str| {
            if id == "s2" {
                *proxy.to.lock().unwrap() = Some(maddr.to_string());
                proxy.addr.to_string()
            } else {
                maddr.to_string()
            }
        };
        match harness::try_start_via(&dir, yaml, (&[], &[]), false, START_DEADLINE, via).await {
            Ok((manager, maddr, servers)) => {
                return Cluster {
                    manager,
                    client: Client::new(&maddr),
                    dir,
                    servers: servers
                        .into_iter()
                        .map(|(id, p, _, c)| (id, p, c))
                        .collect(),
                    _logs: logs,
                };
            }
            Err(why) => eprintln!("cluster start {attempt}: {why}; starting again"),
        }
    }
    panic!("the cluster did not start in {START_ATTEMPTS} attempts (ports taken every time)");
}

async fn host_queue(addr: SocketAddr) -> (Controller, Queue) {
    let ctrl = Controller::connect(addr, NQN, HOST, &ControllerOptions::default())
        .await
        .unwrap();
    ctrl.enable().await.unwrap();
    ctrl.set_num_queues(1).await.unwrap();
    let q = ctrl.connect_io_queue(1, 31).await.unwrap();
    (ctrl, q)
}

/// 4 KiB block `n`, version `v`: recognisable when read back.
fn block(n: u64, v: u8) -> Bytes {
    let mut b = vec![v; 4096];
    b[..8].copy_from_slice(&n.to_le_bytes());
    Bytes::from(b)
}

async fn write_block(q: &Queue, n: u64, v: u8) {
    for _ in 0..50 {
        match q.write(1, n * 8, LBA, block(n, v), false).await {
            Ok(()) => return,
            Err(InitiatorError::Status(s)) if s.same_code(Status::INTERNAL_PATH_ERROR) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("write of block {n}: {e}"),
        }
    }
    panic!("write of block {n}: path errors 50 times");
}

/// Reads block `n`, retrying path errors (as a host does) a few times; the last error if it
/// never succeeds.
async fn read_block(q: &Queue, n: u64, tries: usize) -> Result<Bytes, InitiatorError> {
    let mut last = None;
    for _ in 0..tries {
        match q.read(1, n * 8, 8, LBA).await {
            Ok(b) => return Ok(b),
            Err(InitiatorError::Status(s)) if s.same_code(Status::INTERNAL_PATH_ERROR) => {
                last = Some(InitiatorError::Status(s));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap())
}

fn signal(sig: &str, p: &Proc) {
    let pid = p.0.id().to_string();
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid])
        .status()
        .unwrap();
    assert!(ok.success(), "kill -{sig} {pid}");
}

fn log_of(c: &Cluster, id: &str) -> String {
    std::fs::read_to_string(c.dir.join(format!("{id}.log"))).unwrap_or_default()
}

const LAPSED: &str = "read lease call timed out";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_on_through_a_manager_outage_and_a_copy_cut_off_serves_none_stale() {
    let proxy = Proxy::start().await;
    let c = start(&proxy).await;
    let blocks = VOL / 4096;
    // Every block written once through s1 (version 1).
    let (_c1, q1) = host_queue(c.servers[0].1).await;
    for n in 0..blocks {
        write_block(&q1, n, 1).await;
    }

    // 1. The manager stopped past the lease time (1.5 s): every server's lease runs out and
    //    every block still reads right through every server.
    signal("STOP", &c.manager);
    let until = Instant::now() + WAIT;
    while !c.servers.iter().all(|s| log_of(&c, &s.0).contains(LAPSED)) {
        assert!(
            Instant::now() < until,
            "the servers' leases did not run out with the manager stopped"
        );
        tokio::time::sleep(POLL).await;
    }
    let mut verified = 0;
    for s in &c.servers {
        let (_ci, qi) = host_queue(s.1).await;
        for n in 0..blocks {
            let got = read_block(&qi, n, 20)
                .await
                .unwrap_or_else(|e| panic!("block {n} through {} in the outage: {e}", s.0));
            assert_eq!(got, block(n, 1), "block {n} through {} in the outage", s.0);
            verified += 1;
        }
    }
    signal("CONT", &c.manager);
    eprintln!("manager outage: {verified} blocks verified through 3 servers without leases");

    // 2. s2 cut off from the manager; the operator marks it down.
    let (_c2, q2) = host_queue(c.servers[1].1).await;
    let map = c.client.map(&Role::Client).await.unwrap();
    let vol = map.volume("lvol").unwrap();
    let (e, _) = vol
        .extents
        .iter()
        .enumerate()
        .find(|(_, e)| {
            e.replicas
                .iter()
                .any(|r| r.server == "s2" && r.state == ReplicaState::InSync)
        })
        .expect("an extent with a copy on s2");
    let other = vol.extents[e]
        .replicas
        .iter()
        .find(|r| r.server != "s2")
        .unwrap()
        .server
        .clone();
    let n = e as u64 * (EXTENT / 4096) + 3;
    assert_eq!(read_block(&q2, n, 20).await.unwrap(), block(n, 1));
    proxy.cut();
    let g = c
        .client
        .set_server_state("s2", ServerState::Down)
        .await
        .unwrap()
        .generation;
    let until = Instant::now() + WAIT;
    while c.client.map(&Role::Client).await.unwrap().generation < g {
        assert!(Instant::now() < until, "generation {g} was not committed");
        tokio::time::sleep(POLL).await;
    }
    // Written again through the other copy's server: only that copy takes it now.
    let k = c.servers.iter().position(|s| s.0 == other).unwrap();
    let (_ck, qk) = host_queue(c.servers[k].1).await;
    write_block(&qk, n, 2).await;
    assert_eq!(read_block(&qk, n, 20).await.unwrap(), block(n, 2));
    match read_block(&q2, n, 3).await {
        Ok(b) => assert_ne!(
            b,
            block(n, 1),
            "s2, cut off and marked down, served the old data of block {n}"
        ),
        Err(e) => eprintln!("read of block {n} through the cut-off s2: {e} (no stale data)"),
    }
    assert!(
        log_of(&c, "s2").contains("read lease not granted"),
        "s2 did not notice that it has no lease once cut off"
    );
}
