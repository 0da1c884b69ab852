//! The real `tessera-target` binary and signals: SIGHUP re-reads the layout file and applies
//! the difference (an unchanged file changes nothing, a file with an error is refused and
//! logged, and the target keeps serving the same connections throughout); SIGTERM still
//! drains, removes the control socket and exits 0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tessera::control::{self, Request};
use tessera_tests::*;

/// How long the daemon may take to listen, to handle a signal, or to exit after one.
const DAEMON_STEP: Duration = Duration::from_secs(15);
/// Ports tried: another process may take a port before the daemon binds it.
const PORT_TRIES: usize = 5;

/// The daemon; killed (by its PID) if the test fails while it runs.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn signal(child: &Child, sig: i32) {
    let pid = i32::try_from(child.id()).expect("PID fits a pid_t");
    // SAFETY: kill(2) with the PID of a child we spawned and have not reaped yet (so the PID
    // cannot have been reused); it touches no memory of ours.
    let r = unsafe { libc::kill(pid, sig) };
    assert_eq!(r, 0, "kill({pid}, {sig})");
}

/// Spawns the daemon on a free port below the ephemeral range (`daemon_port`), its files
/// named after `tag` in `dir`. Returns the daemon, its address, its layout file, its log and
/// its control socket; the daemon may still be starting, or may exit because another process
/// took the port meanwhile ([`port_taken`]).
fn spawn(dir: &Path, tag: &str) -> (Daemon, std::net::SocketAddr, PathBuf, PathBuf, PathBuf) {
    let port = daemon_port();
    let layout = dir.join(format!("layout{tag}.yaml"));
    std::fs::write(
        &layout,
        STD_YAML.replace("port: 4420", &format!("port: {port}")),
    )
    .unwrap();
    let log = dir.join(format!("target{tag}.stderr"));
    let socket = dir.join(format!("control{tag}.sock"));
    let child = Command::new(target_bin())
        .arg("--config")
        .arg(&layout)
        .arg("--control")
        .arg(&socket)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn tessera-target");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    (Daemon(child), addr, layout, log, socket)
}

/// Whether the daemon exited at start because its port was taken (then the caller tries
/// another); any other exit at start fails the test. `false` while it runs.
fn port_taken(d: &mut Daemon, log: &Path) -> bool {
    if d.0.try_wait().unwrap().is_none() {
        return false;
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(text.contains("in use"), "daemon exited at start:\n{text}");
    true
}

/// Starts the daemon ([`spawn`]) and waits until it listens and has its control socket; if
/// another process took the port in between, tries another one.
async fn start(dir: &Path) -> (Daemon, std::net::SocketAddr, PathBuf, PathBuf, PathBuf) {
    'attempt: for attempt in 0..PORT_TRIES {
        let (mut d, addr, layout, log, socket) = spawn(dir, &attempt.to_string());
        let t0 = Instant::now();
        loop {
            if port_taken(&mut d, &log) {
                continue 'attempt;
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() && socket.exists() {
                return (d, addr, layout, log, socket);
            }
            assert!(t0.elapsed() < DAEMON_STEP, "daemon not listening on {addr}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    panic!("no free port after {PORT_TRIES} tries");
}

/// Waits until the daemon's log holds `n` lines containing `needle`; the daemon must stay up.
async fn wait_log(d: &mut Daemon, log: &Path, needle: &str, n: usize) -> String {
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.lines().filter(|l| l.contains(needle)).count() >= n {
            return text;
        }
        assert!(
            d.0.try_wait().unwrap().is_none(),
            "the target died waiting for {needle:?}:\n{text}"
        );
        assert!(
            t0.elapsed() < DAEMON_STEP,
            "no {needle:?} in the log:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn status(socket: &Path) -> control::Status {
    let p = socket.to_path_buf();
    let r = within(
        "control status",
        tokio::task::spawn_blocking(move || control::request(&p, &Request::Status)),
    )
    .await
    .unwrap()
    .unwrap();
    r.status.expect("a status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_layout_and_sigterm_still_exits_0() {
    let dir = TestDir::new();
    let (mut d, addr, layout, log, socket) = start(dir.path()).await;
    let (ctrl, q) = connect_with_io(addr, SUBNQN).await;
    let data = blocks(1, 0, 8, 512);
    within("write", q.write(NS_RAM512, 0, 512, data.clone(), false))
        .await
        .unwrap();
    let before = status(&socket).await;

    // An unchanged file: nothing changes, and the target keeps serving the same queue.
    signal(&d.0, libc::SIGHUP);
    wait_log(&mut d, &log, "nothing changed", 1).await;
    let got = within("read after SIGHUP", q.read(NS_RAM512, 0, 8, 512))
        .await
        .unwrap();
    assert_blocks(&got, &data, 0, 512, "after SIGHUP");
    let after = status(&socket).await;
    assert_eq!(after.subsystems, before.subsystems);
    assert_eq!(after.genctr, before.genctr);

    // A namespace added to the file: the same controller sees it.
    let text = std::fs::read_to_string(&layout).unwrap();
    std::fs::write(
        &layout,
        format!("{text}      - nsid: 9\n        backend: {{ kind: ram, size: 1MiB }}\n"),
    )
    .unwrap();
    signal(&d.0, libc::SIGHUP);
    wait_log(&mut d, &log, "namespace 9 added", 1).await;
    let active = within("active NS list", ctrl.active_ns_list(0))
        .await
        .unwrap();
    assert!(active.contains(&9), "{active:?}");

    // A file with an error: refused whole, logged with its place, still serving.
    std::fs::write(&layout, format!("{text}      - nsid: 0\n")).unwrap();
    signal(&d.0, libc::SIGHUP);
    let text = wait_log(&mut d, &log, "reload refused", 1).await;
    let line = text.lines().find(|l| l.contains("reload refused")).unwrap();
    assert!(
        line.contains(&format!("{}:", layout.display())) && line.contains("namespaces[3]"),
        "{line}"
    );
    assert!(
        within("active NS list", ctrl.active_ns_list(0))
            .await
            .unwrap()
            .contains(&9),
        "a refused file changed the namespaces"
    );
    let got = within("read after a refused reload", q.read(NS_RAM512, 0, 8, 512))
        .await
        .unwrap();
    assert_blocks(&got, &data, 0, 512, "after a refused reload");
    drop(q);
    ctrl.disconnect().await.unwrap();

    signal(&d.0, libc::SIGTERM);
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = d.0.try_wait().unwrap() {
            break st;
        }
        assert!(t0.elapsed() < DAEMON_STEP, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(st.code(), Some(0), "SIGTERM exit status");
    assert!(!socket.exists(), "the control socket outlived the target");
}

/// A SIGTERM sent the moment the listener accepts (a supervisor stopping a target that has just
/// started) still takes the orderly way out, exit status 0, never the default action that
/// kills the process. The handlers used to be installed only once the control socket and the
/// metrics endpoint were up, a few milliseconds after the listener; a signal in that window
/// killed the target (exit by signal, no `stopped` line). Several starts, since each probes
/// one moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_the_moment_the_listener_accepts_exits_0() {
    let dir = TestDir::new();
    for round in 0..8 {
        let mut started = None;
        'attempt: for attempt in 0..PORT_TRIES {
            let (mut d, addr, _, log, _) = spawn(dir.path(), &format!("early{round}-{attempt}"));
            let t0 = Instant::now();
            // Probe with a blocking connect in a tight loop: the signal follows the first
            // accepted connection as closely as this test can make it.
            loop {
                if port_taken(&mut d, &log) {
                    continue 'attempt;
                }
                if std::net::TcpStream::connect(addr).is_ok() {
                    signal(&d.0, libc::SIGTERM);
                    started = Some((d, log));
                    break 'attempt;
                }
                assert!(t0.elapsed() < DAEMON_STEP, "daemon not listening on {addr}");
                std::thread::yield_now();
            }
        }
        let (mut d, log) = started.expect("a free port");
        let t0 = Instant::now();
        let st = loop {
            if let Some(st) = d.0.try_wait().unwrap() {
                break st;
            }
            assert!(
                t0.elapsed() < DAEMON_STEP,
                "round {round}: no exit within {DAEMON_STEP:?} of the SIGTERM:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(
            st.code(),
            Some(0),
            "round {round}: a SIGTERM right after the listener accepted: {st}:\n{text}"
        );
        assert!(
            text.contains("stopped"),
            "round {round}: no `stopped` line:\n{text}"
        );
    }
}
