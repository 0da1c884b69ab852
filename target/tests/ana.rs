//! Multipath as a host sees it, multi-process: one `tessera-manager` and three `tessera-target`
//! storage servers on loopback. Discovery through any one server lists every serving server's
//! host portal; every namespace is in ANA group 1 on every server, and each server reports its
//! own state for it, following the server's map state (draining: Inaccessible), with the change count, ANA Change and Discovery Log Page Change
//! notices a Linux host relies on.
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
use codec::nvme::cmd::FeatureId;
use codec::nvme::fabrics::DISCOVERY_NQN;
use codec::nvme::log::{AnaLog, DiscoveryLog, ana_state, subtype};
use manager::client::Client;
use manager::map::ServerState;
use tessera::initiator::{AsyncEvent, Controller, ControllerOptions, InitiatorError};

const NQN: &str = "nqn.2026-11.dev.tessera:vol1";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:a1a1a1a1-0000-0000-0000-000000000001";
const VOL: u64 = 16 << 20;
const EXTENT: u64 = 1 << 20;

/// Bounds on waiting only (a hang fails instead of hanging the suite); generous because the
/// suite shares 2 cores with builds and other tests. Nothing here asserts speed.
const START_DEADLINE: Duration = Duration::from_secs(90);
const CHANGE_DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);
const START_ATTEMPTS: usize = 4;

/// AEC bits (feature 0Bh): ANA Change and Discovery Log Page Change notices.
const AEC_ANA_CHANGE: u32 = 1 << 11;
const AEC_DISCOVERY_CHANGE: u32 = 1 << 31;
/// Get Log Page LIDs.
const LID_ANA: u8 = 0x0C;

#[path = "../../tests/support/daemons.rs"]
#[allow(dead_code)]
mod daemons;
#[path = "../../tests/support/kept_dir.rs"]
#[allow(dead_code)]
mod kept_dir;

#[path = "support/harness.rs"]
#[allow(dead_code)]
mod harness;

use harness::{Proc, servers_yaml, try_start};
use kept_dir::KeptDir;

struct Cluster {
    _manager: Proc,
    /// (id, host portal, internal portal, process).
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
    let logs = KeptDir::with_prefix("tessera-ana-test-");
    for attempt in 1..=START_ATTEMPTS {
        let dir = logs.path().join(format!("start{attempt}"));
        std::fs::create_dir(&dir).unwrap();
        match try_start(
            &dir,
            cluster_yaml,
            &["--metrics", "off"],
            false,
            START_DEADLINE,
        )
        .await
        {
            Ok((manager, maddr, servers)) => {
                return Cluster {
                    _manager: manager,
                    servers,
                    client: Client::new(&maddr),
                    _logs: logs,
                };
            }
            Err(why) => eprintln!("cluster start {attempt}: {why}; starting again"),
        }
    }
    panic!("the cluster did not start in {START_ATTEMPTS} attempts (ports taken every time)");
}

async fn host(addr: SocketAddr) -> Controller {
    let c = Controller::connect(addr, NQN, HOST, &ControllerOptions::default())
        .await
        .unwrap();
    c.enable().await.unwrap();
    c
}

async fn ana_log(c: &Controller) -> AnaLog {
    let page = c.get_log_page(LID_ANA, 0, 4096, 0).await.unwrap();
    AnaLog::parse(&page).expect("ANA log parses")
}

/// The paths to [`NQN`] a discovery log lists: (PORTID, portal).
fn paths(log: &DiscoveryLog) -> Vec<(u16, String)> {
    log.entries
        .iter()
        .filter(|e| e.subtype == subtype::NVME && e.subnqn == NQN)
        .map(|e| (e.portid, format!("{}:{}", e.traddr, e.trsvcid)))
        .collect()
}

/// Polls `check` until it holds, failing after [`CHANGE_DEADLINE`] with `what`.
async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + CHANGE_DEADLINE;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what}: not seen within {CHANGE_DEADLINE:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

async fn event(
    aer: impl std::future::Future<Output = tessera::initiator::Result<AsyncEvent>>,
) -> (u8, u8, u8) {
    let ev = tokio::time::timeout(CHANGE_DEADLINE, aer)
        .await
        .expect("no asynchronous event")
        .unwrap();
    (ev.event_type, ev.event_info, ev.log_page)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_server_is_a_path_with_its_own_ana_state_and_map_changes_reach_hosts() {
    let c = start_cluster().await;
    let portal = |i: usize| c.servers[i].1.to_string();

    // Discovery through s1 alone lists every server's host portal (never an internal one),
    // each with its server's number as PORTID; the discovery entry is s1's own portal.
    let disc_opts = ControllerOptions {
        kato_ms: 30_000,
        keep_alive: true,
        ..ControllerOptions::default()
    };
    let disc = Controller::connect(c.servers[0].1, DISCOVERY_NQN, HOST, &disc_opts)
        .await
        .unwrap();
    disc.enable().await.unwrap();
    let log = disc.discovery_log().await.unwrap();
    assert_eq!(
        paths(&log),
        [(1, portal(0)), (2, portal(1)), (3, portal(2))],
        "{log:?}"
    );
    let current: Vec<(u16, String)> = log
        .entries
        .iter()
        .filter(|e| e.subtype == subtype::CURRENT_DISCOVERY)
        .map(|e| (e.portid, format!("{}:{}", e.traddr, e.trsvcid)))
        .collect();
    assert_eq!(current, [(1, portal(0))]);
    for s in &c.servers {
        let internal = s.2.port().to_string();
        assert!(
            log.entries.iter().all(|e| e.trsvcid != internal),
            "internal portal of {} listed: {log:?}",
            s.0
        );
    }
    let genctr0 = log.genctr;

    // Every path: the same namespace identity and ANA group, a distinct controller, Optimized
    // while the server is up.
    let mut ctrls = Vec::new();
    for i in 0..3 {
        let h = host(c.servers[i].1).await;
        let id = h.identify_controller_parsed().await.unwrap();
        assert_eq!((id.anagrpmax, id.nanagrpid), (1, 1), "s{}", i + 1);
        assert!(id.cmic & (1 << 3) != 0, "ANA reporting");
        let ns = h.identify_namespace_parsed(1).await.unwrap();
        assert_eq!(ns.anagrpid, 1, "s{} ANAGRPID", i + 1);
        let ana = ana_log(&h).await;
        assert_eq!(ana.groups.len(), 1, "s{}: {ana:?}", i + 1);
        assert_eq!(ana.groups[0].anagrpid, 1);
        assert_eq!(ana.groups[0].state, ana_state::OPTIMIZED);
        assert_eq!(ana.groups[0].nsids, [1]);
        // Return Groups Only: the descriptor without its NSIDs.
        let rgo = h
            .get_log_page_with(codec::nvme::cmd::GetLogPage {
                nsid: 0,
                lid: LID_ANA,
                lsp: 1,
                rae: false,
                numd_bytes: 4096,
                lsi: 0,
                lpo: 0,
                uuid_index: 0,
                csi: 0,
            })
            .await
            .unwrap();
        let rgo = AnaLog::parse(&rgo).unwrap();
        assert!(rgo.groups[0].nsids.is_empty(), "{rgo:?}");
        ctrls.push((h, id.cntlid, ns.nguid, ana.chgcnt));
    }
    assert!(
        ctrls
            .windows(2)
            .all(|w| w[0].1 != w[1].1 && w[0].2 == w[1].2)
    );

    // The host enables ANA Change notices on s2's controller and parks an AER (as Linux does).
    let s2 = &ctrls[1].0;
    s2.set_features(FeatureId::ASYNC_EVENT_CONFIG, 0, AEC_ANA_CHANGE, None)
        .await
        .unwrap();
    let aer = s2.async_event_request().await.unwrap();

    // Draining s2: its path turns Inaccessible, with a notice and a new change count; the
    // other paths stay Optimized; s2 is still listed (it still serves).
    c.client
        .set_server_state("s2", ServerState::Draining)
        .await
        .unwrap();
    assert_eq!(event(aer).await, (2, 0x03, 0x0C), "ANA Change notice");
    let ana = ana_log(s2).await;
    assert_eq!(ana.groups[0].state, ana_state::INACCESSIBLE, "{ana:?}");
    assert!(ana.chgcnt > ctrls[1].3, "CHGCNT moves: {ana:?}");
    assert_eq!(ana.groups[0].chgcnt, ana.chgcnt);
    let s1_ana = ana_log(&ctrls[0].0).await;
    assert_eq!(s1_ana.groups[0].state, ana_state::OPTIMIZED);
    assert_eq!(s1_ana.chgcnt, ctrls[0].3, "s1's state did not change");
    assert_eq!(paths(&disc.discovery_log().await.unwrap()).len(), 3);
    // Data still flows through the optimized path.
    let (_c1, q1) = {
        let h = host(c.servers[0].1).await;
        h.set_num_queues(1).await.unwrap();
        let q = h.connect_io_queue(1, 31).await.unwrap();
        (h, q)
    };
    let data = Bytes::from(vec![0x5a; 4096]);
    q1.write(1, 8, 512, data.clone(), false).await.unwrap();
    assert_eq!(q1.read(1, 8, 8, 512).await.unwrap(), data);
    // Through s2 itself, host I/O fails with Asymmetric Access Inaccessible (a path error: a
    // host retries on another path) and changes nothing.
    let (_c2, q2) = {
        let h = host(c.servers[1].1).await;
        h.set_num_queues(1).await.unwrap();
        let q = h.connect_io_queue(1, 31).await.unwrap();
        (h, q)
    };
    let inaccessible = |e: &InitiatorError| matches!(e, InitiatorError::Status(s) if s.same_code(Status::ANA_INACCESSIBLE));
    let e = q2
        .write(1, 8, 512, Bytes::from(vec![0xa5; 4096]), false)
        .await
        .unwrap_err();
    assert!(inaccessible(&e), "write through a draining server: {e:?}");
    let e = q2.read(1, 8, 8, 512).await.unwrap_err();
    assert!(inaccessible(&e), "read through a draining server: {e:?}");
    assert_eq!(q1.read(1, 8, 8, 512).await.unwrap(), data);

    // Back up: Optimized again, the count moves again.
    let aer = s2.async_event_request().await.unwrap();
    c.client
        .set_server_state("s2", ServerState::Up)
        .await
        .unwrap();
    assert_eq!(event(aer).await, (2, 0x03, 0x0C));
    let back = ana_log(s2).await;
    assert_eq!(back.groups[0].state, ana_state::OPTIMIZED);
    assert!(back.chgcnt > ana.chgcnt);
    assert_eq!(
        q2.read(1, 8, 8, 512).await.unwrap(),
        data,
        "s2 serves again"
    );

    // s3 marked down leaves the discovery log: GENCTR moves and the persistent discovery
    // controller that asked for it gets a Discovery Log Page Change notice.
    disc.set_features(FeatureId::ASYNC_EVENT_CONFIG, 0, AEC_DISCOVERY_CHANGE, None)
        .await
        .unwrap();
    let aer = disc.async_event_request().await.unwrap();
    c.client
        .set_server_state("s3", ServerState::Down)
        .await
        .unwrap();
    assert_eq!(
        event(aer).await,
        (2, 0xF0, 0x70),
        "Discovery Log Page Change"
    );
    let log = disc.discovery_log().await.unwrap();
    assert_eq!(paths(&log), [(1, portal(0)), (2, portal(1))], "{log:?}");
    assert!(log.genctr > genctr0);
    // Through s2 too (every server lists the same paths).
    wait_for("s2's discovery log without s3", || async {
        let d = tessera::initiator::discover(c.servers[1].1, HOST, &ControllerOptions::discovery())
            .await
            .unwrap();
        paths(&d) == [(1, portal(0)), (2, portal(1))]
    })
    .await;

    // s3 back: listed again with the same PORTID.
    c.client
        .set_server_state("s3", ServerState::Up)
        .await
        .unwrap();
    wait_for("s3 listed again", || async {
        let d = disc.discovery_log().await.unwrap();
        paths(&d) == [(1, portal(0)), (2, portal(1)), (3, portal(2))]
    })
    .await;
}
