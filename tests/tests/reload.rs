//! Live reconfiguration over live connections: a host keeps writing and reading one namespace
//! while the layout file changes under the target (namespaces, subsystems, allowed hosts and
//! listeners added and removed) and the control socket reloads it. Its I/O never fails; the
//! hosts a change concerns get their notices (Namespace Attribute Changed, Discovery Log Page
//! Change) or lose their controllers; a file with an error changes nothing and the caller gets
//! the error with its file, line and column.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use codec::nvme::Status;
use codec::nvme::cmd::FeatureId;
use tessera::control::{self, ControlSocket, LiveConfig, Request, Response};
use tessera::initiator::{AsyncEvent, Controller, ControllerOptions, InitiatorError, Queue};
use tessera::server::{Target, TargetOptions};
use tessera_tests::*;

const SUB_A: &str = "nqn.2026-11.dev.tessera:reload-a";
const SUB_B: &str = "nqn.2026-11.dev.tessera:reload-b";
const SUB_C: &str = "nqn.2026-11.dev.tessera:reload-c";

/// The namespace the steady host writes and reads throughout.
const NS_STEADY: u32 = 1;

/// Bound on waiting for something a reload causes (an AEN, a closed connection, more I/O).
const EFFECT: Duration = Duration::from_secs(20);

/// Asynchronous Event Configuration bits (feature 0Bh): Namespace Attribute and Discovery Log
/// Page Change notices.
const AEC_NS_ATTR: u32 = 1 << 8;
const AEC_DISCOVERY: u32 = 1 << 31;

/// What the layout file declares, step by step.
#[derive(Clone)]
struct Decl {
    listeners: Vec<u16>,
    /// NSIDs of subsystem A (any host; RAM namespaces).
    a_nsids: Vec<u32>,
    /// Hosts allowed on subsystem B.
    b_hosts: Vec<&'static str>,
    /// Subsystem C (any host, one null namespace) declared.
    c: bool,
}

impl Decl {
    fn yaml(&self) -> String {
        let mut y = String::from("listeners:\n");
        for p in &self.listeners {
            y += &format!("  - address: 127.0.0.1\n    port: {p}\n");
        }
        y += &format!("subsystems:\n  - nqn: {SUB_A}\n    allow_any_host: true\n    namespaces:\n");
        for n in &self.a_nsids {
            y += &format!("      - nsid: {n}\n        backend: {{ kind: ram, size: 4MiB }}\n");
        }
        y += &format!(
            "  - nqn: {SUB_B}\n    hosts: [{}]\n",
            self.b_hosts.join(", ")
        );
        y += "    namespaces:\n      - nsid: 1\n        backend: { kind: ram, size: 4MiB }\n";
        if self.c {
            y += &format!(
                "  - nqn: {SUB_C}\n    allow_any_host: true\n    namespaces:\n      - nsid: 1\n        \
                 backend: {{ kind: null, size: 1GiB }}\n"
            );
        }
        y
    }
}

/// A target serving a layout file, with its control socket.
struct Live {
    target: Option<Target>,
    control: Option<ControlSocket>,
    socket: PathBuf,
    layout: PathBuf,
    port: u16,
}

impl Live {
    /// Starts on a fresh port (retried when someone else holds it).
    async fn start(dir: &Path, decl: impl Fn(u16) -> Decl) -> Self {
        let layout = dir.join("target.yaml");
        for _ in 0..5 {
            let port = daemon_port();
            std::fs::write(&layout, decl(port).yaml()).unwrap();
            let l = yaml::load(&layout).unwrap();
            let registry = tessera::config::build_registry(&l).unwrap();
            let addrs: Vec<SocketAddr> = l.listeners.iter().map(|x| x.socket_addr()).collect();
            let opts = TargetOptions {
                reactors: 2,
                ..TargetOptions::default()
            };
            let target = match Target::start_with(registry, &addrs, opts).await {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                Err(e) => panic!("target start: {e}"),
            };
            let live = Arc::new(LiveConfig::new(
                Arc::clone(&target.registry),
                target.portals(),
                l,
                Some(layout.clone()),
            ));
            let socket = dir.join("control.sock");
            let control = ControlSocket::start(&socket, live).unwrap();
            return Self {
                target: Some(target),
                control: Some(control),
                socket,
                layout,
                port,
            };
        }
        panic!("no free port after 5 tries");
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    async fn request(&self, req: Request) -> Response {
        let path = self.socket.clone();
        within(
            "control request",
            tokio::task::spawn_blocking(move || control::request(&path, &req)),
        )
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("control socket: {e}"))
    }

    /// Writes `decl` to the layout file and reloads it; returns the changes.
    async fn reload_to(&self, decl: &Decl) -> Vec<String> {
        std::fs::write(&self.layout, decl.yaml()).unwrap();
        let r = self.request(Request::Reload).await;
        assert!(r.ok, "reload refused: {:?}", r.error);
        r.changes.expect("a reload answers its changes")
    }

    async fn status(&self) -> control::Status {
        let r = self.request(Request::Status).await;
        assert!(r.ok, "status: {:?}", r.error);
        r.status.expect("status answers a status")
    }

    async fn stop(mut self) {
        if let Some(c) = self.control.take() {
            c.close();
        }
        if let Some(t) = self.target.take() {
            within("target shutdown", t.shutdown()).await;
        }
    }
}

/// A host writing and reading back [`NS_STEADY`] of subsystem A in a loop, on its own
/// controller and queue, until told to stop. Any failure ends it with the error.
struct SteadyIo {
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Result<u64, String>>,
}

impl SteadyIo {
    fn start(q: Queue) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let (s, o) = (Arc::clone(&stop), Arc::clone(&ops));
        let task = tokio::spawn(async move {
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                let slba = (i % 64) * 8;
                let data = blocks(i, slba, 8, 512);
                tokio::time::timeout(STEP, q.write(NS_STEADY, slba, 512, data.clone(), false))
                    .await
                    .map_err(|_| format!("write {i} timed out"))?
                    .map_err(|e| format!("write {i}: {e}"))?;
                let got = tokio::time::timeout(STEP, q.read(NS_STEADY, slba, 8, 512))
                    .await
                    .map_err(|_| format!("read {i} timed out"))?
                    .map_err(|e| format!("read {i}: {e}"))?;
                if got != data {
                    return Err(format!("read {i} returned other data"));
                }
                i += 1;
                o.store(i, Ordering::Relaxed);
            }
            q.close().await;
            Ok(i)
        });
        Self { stop, ops, task }
    }

    /// Waits until the loop has done `n` more round trips than now (it still runs, and
    /// succeeds, after whatever just happened).
    async fn advances(&self, n: u64, what: &str) {
        let from = self.ops.load(Ordering::Relaxed);
        let t0 = Instant::now();
        while self.ops.load(Ordering::Relaxed) < from + n {
            assert!(
                !self.task.is_finished(),
                "the steady host's I/O stopped {what}"
            );
            assert!(
                t0.elapsed() < EFFECT,
                "the steady host's I/O made no progress {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        within("steady I/O ends", self.task)
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("the steady host's I/O failed: {e}"))
    }
}

/// Enables the notices in `aec` and parks one Asynchronous Event Request.
async fn park_aer(
    c: &Controller,
    aec: u32,
) -> tokio::task::JoinHandle<Result<AsyncEvent, InitiatorError>> {
    within(
        "Set Features AEC",
        c.set_features(FeatureId::ASYNC_EVENT_CONFIG, 0, aec, None),
    )
    .await
    .unwrap();
    tokio::spawn(within("AER submit", c.async_event_request()).await.unwrap())
}

async fn aen(
    aer: tokio::task::JoinHandle<Result<AsyncEvent, InitiatorError>>,
    what: &str,
) -> AsyncEvent {
    within_for(EFFECT, what, aer).await.unwrap().unwrap()
}

/// Waits until `q`'s connection is closed by the target (its commands fail as a transport
/// error, not with an NVMe status).
async fn closed_by_target(q: &Queue, nsid: u32, what: &str) {
    let t0 = Instant::now();
    loop {
        match tokio::time::timeout(STEP, q.read(nsid, 0, 1, 512)).await {
            Ok(Err(e)) if e.is_connection_fatal() => return,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("{what}: expected the connection closed, got {e}"),
            Err(_) => panic!("{what}: a read hung"),
        }
        assert!(t0.elapsed() < EFFECT, "{what}: the connection stays open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn discovery_opts() -> ControllerOptions {
    let mut o = ControllerOptions::discovery();
    o.transport.command_timeout = Some(STEP);
    o.transport.connect_timeout = STEP;
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_keeps_flowing_while_namespaces_hosts_subsystems_and_listeners_change() {
    let dir = TestDir::new();
    let base = |port| Decl {
        listeners: vec![port],
        a_nsids: vec![1, 2],
        b_hosts: vec![HOSTNQN, HOSTNQN2],
        c: false,
    };
    let live = Live::start(dir.path(), base).await;
    let mut decl = base(live.port);
    let addr = live.addr();

    // The steady host: subsystem A, namespace 1, one I/O queue, notices enabled.
    let (a_ctrl, a_q) = within("connect A", async {
        let c = connect(addr, SUB_A).await;
        let q = io_queues(&c, 1).await.remove(0);
        (c, q)
    })
    .await;
    let a_aer = park_aer(&a_ctrl, AEC_NS_ATTR).await;
    let io = SteadyIo::start(a_q.clone());
    io.advances(20, "before any reload").await;

    // A second host on B, and a discovery controller that asks for log change notices.
    let b_ctrl = connect_as(addr, SUB_B, HOSTNQN2, &ctrl_opts())
        .await
        .unwrap();
    let b_q = io_queues(&b_ctrl, 1).await.remove(0);
    within("B write", b_q.write(1, 0, 512, blocks(7, 0, 1, 512), false))
        .await
        .unwrap();
    let disc = within("discovery connect", async {
        let c = Controller::connect(addr, DISCOVERY_NQN, HOSTNQN, &discovery_opts()).await?;
        c.enable().await?;
        Ok::<_, InitiatorError>(c)
    })
    .await
    .unwrap();
    let genctr0 = within("discovery log", disc.discovery_log())
        .await
        .unwrap()
        .genctr;
    let disc_aer = park_aer(&disc, AEC_DISCOVERY).await;

    // The status lists what is served and who is connected.
    let st = live.status().await;
    assert_eq!(st.listeners, [addr]);
    assert_eq!(st.config.as_deref(), Some(live.layout.to_str().unwrap()));
    let a = st.subsystems.iter().find(|s| s.nqn == SUB_A).unwrap();
    assert_eq!(
        a.namespaces.iter().map(|n| n.nsid).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(a.controllers.len(), 1);
    assert_eq!(a.controllers[0].cntlid, a_ctrl.cntlid());
    assert_eq!(a.controllers[0].io_queues, [1]);
    assert_eq!(st.discovery_controllers.len(), 1);
    // A's admin and I/O queue, B's, the discovery controller's admin queue.
    assert_eq!(st.connections.len(), 5, "{:?}", st.connections);
    assert!(st.connections.iter().all(|c| c.portal == addr));

    // 1. Nothing changed in the file: nothing happens.
    let changes = live.reload_to(&decl).await;
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!(live.status().await.genctr, st.genctr, "GENCTR moved");
    io.advances(10, "after an unchanged reload").await;

    // 2. Namespace 2 removed and 3 added on A; subsystem C added; a second listener.
    let port2 = daemon_port();
    decl.a_nsids = vec![1, 3];
    decl.c = true;
    decl.listeners.push(port2);
    let addr2 = SocketAddr::from(([127, 0, 0, 1], port2));
    let changes = live.reload_to(&decl).await;
    for want in [
        format!("listener {addr2} added"),
        format!("subsystem {SUB_C} added (1 namespace(s))"),
        format!("subsystem {SUB_A}: namespace 3 added"),
        format!("subsystem {SUB_A}: namespace 2 removed"),
    ] {
        assert!(changes.contains(&want), "{want:?} not in {changes:?}");
    }
    assert_eq!(changes.len(), 4, "{changes:?}");
    let ev = aen(
        a_aer,
        "Namespace Attribute Changed after namespaces changed",
    )
    .await;
    assert_eq!(
        (ev.event_type, ev.event_info, ev.log_page),
        (
            AsyncEvent::TYPE_NOTICE,
            AsyncEvent::NOTICE_NS_ATTR_CHANGED,
            0x04
        ),
        "{ev:?}"
    );
    let page = within(
        "Changed Namespace List",
        a_ctrl.get_log_page(0x04, 0xFFFF_FFFF, 4096, 0),
    )
    .await
    .unwrap();
    let listed: Vec<u32> = page
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .take_while(|&n| n != 0)
        .collect();
    assert_eq!(listed, [2, 3], "log page 04h");
    assert_eq!(
        within("active NS list", a_ctrl.active_ns_list(0))
            .await
            .unwrap(),
        [1, 3]
    );
    // The removed namespace is gone for I/O and Identify; the new one serves.
    assert_status(
        status_of(within("read removed NS", a_q.read(2, 0, 1, 512)).await),
        Status::INVALID_NS,
        Some(true),
    );
    assert_status(
        status_of(within("identify removed NS", a_ctrl.identify_namespace(2)).await),
        Status::INVALID_NS,
        Some(true),
    );
    let d = blocks(3, 0, 8, 512);
    within("write NS 3", a_q.write(3, 0, 512, d.clone(), false))
        .await
        .unwrap();
    assert_blocks(
        &within("read NS 3", a_q.read(3, 0, 8, 512)).await.unwrap(),
        &d,
        0,
        512,
        "NS 3",
    );
    // Discovery: a notice, a new GENCTR, the new subsystem on both portals.
    let ev = aen(disc_aer, "Discovery Log Page Change").await;
    assert_eq!(
        (ev.event_type, ev.event_info, ev.log_page),
        (
            AsyncEvent::TYPE_NOTICE,
            AsyncEvent::NOTICE_DISCOVERY_LOG_CHANGE,
            0x70
        ),
        "{ev:?}"
    );
    let log = within("discovery log", disc.discovery_log()).await.unwrap();
    assert!(log.genctr > genctr0, "GENCTR {} -> {}", genctr0, log.genctr);
    for port in [live.port, port2] {
        assert!(
            log.entries
                .iter()
                .any(|e| e.subnqn == SUB_C && e.trsvcid == port.to_string()),
            "no entry for {SUB_C} on port {port}: {:?}",
            log.entries
        );
    }
    // A host reaches C through the new portal.
    let (c_ctrl, c_q) = connect_with_io(addr2, SUB_C).await;
    within("read C", c_q.read(1, 0, 8, 512)).await.unwrap();
    // B's host was not concerned: its I/O works and it was told of no namespace change.
    within("B read", b_q.read(1, 0, 1, 512)).await.unwrap();
    let page = within(
        "B's Changed Namespace List",
        b_ctrl.get_log_page(0x04, 0xFFFF_FFFF, 4096, 0),
    )
    .await
    .unwrap();
    assert_eq!(
        u32::from_le_bytes(page[..4].try_into().unwrap()),
        0,
        "B's controller was told of A's namespace changes"
    );
    io.advances(
        20,
        "after namespaces, a subsystem and a listener were added",
    )
    .await;

    // 3. HOSTNQN2 is no longer allowed on B: its controller goes, and it cannot come back.
    decl.b_hosts = vec![HOSTNQN];
    let changes = live.reload_to(&decl).await;
    assert_eq!(
        changes,
        [format!("subsystem {SUB_B}: allowed hosts now {HOSTNQN}")]
    );
    closed_by_target(&b_q, 1, "the removed host's I/O queue").await;
    let e = connect_as(addr, SUB_B, HOSTNQN2, &ctrl_opts())
        .await
        .unwrap_err();
    assert!(
        matches!(e, InitiatorError::ConnectRejected(_)),
        "a removed host connects again: {e}"
    );
    io.advances(20, "after a host was removed").await;

    // 4. The second listener goes: the connection that came in through it is closed, the
    //    portal refuses new ones, and the discovery log no longer lists it.
    decl.listeners.pop();
    let changes = live.reload_to(&decl).await;
    assert_eq!(changes, [format!("listener {addr2} removed")]);
    closed_by_target(&c_q, 1, "a connection through the removed listener").await;
    assert!(
        tokio::net::TcpStream::connect(addr2).await.is_err(),
        "the removed listener still accepts"
    );
    assert_eq!(live.status().await.listeners, [addr]);
    // The server side of both of C's connections ends once each has drained.
    let t0 = Instant::now();
    loop {
        let st = live.status().await;
        if st.connections.iter().all(|c| c.portal == addr) {
            break;
        }
        assert!(
            t0.elapsed() < EFFECT,
            "connections through the removed listener are still listed: {:?}",
            st.connections
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = within("discovery log", disc.discovery_log()).await.unwrap();
    assert!(
        log.entries.iter().all(|e| e.trsvcid != port2.to_string()),
        "{:?}",
        log.entries
    );
    io.advances(20, "after a listener was removed").await;

    // 5. Files with errors change nothing, and the caller gets the error.
    let before = live.status().await;
    let taken = std::net::TcpListener::bind(("127.0.0.1", daemon_port())).unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    for (bad, want) in [
        // The steady namespace's size changed in place.
        (
            decl.yaml().replacen("size: 4MiB", "size: 8MiB", 1),
            ": subsystems[0].namespaces[0]: namespace 1 of",
        ),
        // Not YAML.
        (format!("{}\n  - [", decl.yaml()), ": (syntax): "),
        // A new listener on a port that is taken.
        (
            {
                let mut d = decl.clone();
                d.listeners.push(taken_port);
                d.yaml()
            },
            ": listeners[1]: cannot listen on ",
        ),
    ] {
        std::fs::write(&live.layout, &bad).unwrap();
        let r = live.request(Request::Reload).await;
        assert!(!r.ok, "a bad file was applied:\n{bad}");
        let e = r.error.unwrap();
        let file = format!("{}:", live.layout.display());
        assert!(e.starts_with(&file) && e.contains(want), "{e}");
        let after = live.status().await;
        assert_eq!(after.subsystems, before.subsystems, "{e}");
        assert_eq!(after.listeners, before.listeners, "{e}");
        assert_eq!(after.genctr, before.genctr, "{e}");
    }
    drop(taken);
    io.advances(20, "after bad files").await;

    // 6. `apply` serves another file; `reload` goes back to the target's own file.
    let other = dir.path().join("other.yaml");
    let mut d = decl.clone();
    d.c = false;
    std::fs::write(&other, d.yaml()).unwrap();
    let r = live
        .request(Request::Apply {
            source: other.display().to_string(),
            yaml: d.yaml(),
        })
        .await;
    assert_eq!(r.changes, Some(vec![format!("subsystem {SUB_C} removed")]));
    assert!(
        !live
            .status()
            .await
            .subsystems
            .iter()
            .any(|s| s.nqn == SUB_C)
    );
    let changes = live.reload_to(&decl).await;
    assert_eq!(
        changes,
        [format!("subsystem {SUB_C} added (1 namespace(s))")]
    );

    // The steady host never dropped: same controller, same queue, every round trip good.
    let n = io.finish().await;
    assert!(n > 0);
    let st = live.status().await;
    let a = st.subsystems.iter().find(|s| s.nqn == SUB_A).unwrap();
    assert_eq!(a.controllers.len(), 1);
    assert_eq!(a.controllers[0].cntlid, a_ctrl.cntlid());
    within("disconnect A", a_ctrl.disconnect()).await.unwrap();
    drop(c_ctrl);
    drop(b_ctrl);
    drop(disc);
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_subsystem_tears_down_its_controllers_only() {
    let dir = TestDir::new();
    let base = |port| Decl {
        listeners: vec![port],
        a_nsids: vec![1],
        b_hosts: vec![HOSTNQN],
        c: true,
    };
    let live = Live::start(dir.path(), base).await;
    let mut decl = base(live.port);
    let (a_ctrl, a_q) = connect_with_io(live.addr(), SUB_A).await;
    let io = SteadyIo::start(a_q);
    let (c_ctrl, c_q) = connect_with_io(live.addr(), SUB_C).await;
    io.advances(10, "at start").await;

    decl.c = false;
    let changes = live.reload_to(&decl).await;
    assert_eq!(changes, [format!("subsystem {SUB_C} removed")]);
    closed_by_target(&c_q, 1, "a controller of the removed subsystem").await;
    let e = connect_as(live.addr(), SUB_C, HOSTNQN, &ctrl_opts())
        .await
        .unwrap_err();
    assert!(matches!(e, InitiatorError::ConnectRejected(_)), "{e}");
    let st = live.status().await;
    assert!(st.subsystems.iter().all(|s| s.nqn != SUB_C));
    io.advances(20, "after a subsystem was removed").await;
    io.finish().await;
    within("disconnect A", a_ctrl.disconnect()).await.unwrap();
    drop(c_ctrl);
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_socket_answers_bad_requests_with_an_error() {
    let dir = TestDir::new();
    let live = Live::start(dir.path(), |port| Decl {
        listeners: vec![port],
        a_nsids: vec![1],
        b_hosts: vec![HOSTNQN],
        c: false,
    })
    .await;
    let path = live.socket.clone();
    let answers = within(
        "raw control requests",
        tokio::task::spawn_blocking(move || {
            use std::io::{BufRead, BufReader, Write};
            let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
            s.set_read_timeout(Some(STEP)).unwrap();
            s.write_all(b"not json\n{\"op\":\"format\"}\n{\"op\":\"status\"}\n")
                .unwrap();
            let mut r = BufReader::new(s);
            (0..3)
                .map(|_| {
                    let mut l = String::new();
                    r.read_line(&mut l).unwrap();
                    l.trim().to_string()
                })
                .collect::<Vec<_>>()
        }),
    )
    .await
    .unwrap();
    assert!(answers[0].starts_with("{\"ok\":false,\"error\":\"bad request: "));
    assert!(answers[1].starts_with("{\"ok\":false,\"error\":\"bad request: "));
    assert!(answers[2].starts_with("{\"ok\":true,\"status\":{"));
    let r = live
        .request(Request::Apply {
            source: "/nowhere/x.yaml".into(),
            yaml: "listeners: [".into(),
        })
        .await;
    assert!(!r.ok);
    let e = r.error.unwrap();
    assert!(e.starts_with("/nowhere/x.yaml:2:1: (syntax): "), "{e}");
    live.stop().await;
}
