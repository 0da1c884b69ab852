//! The real `tessera-target` binary and signals: SIGHUP is not fatal (live reload does not
//! exist yet: the target says so and keeps serving), SIGTERM still drains and exits 0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tessera_tests::*;

/// How long the daemon may take to listen, or to exit after a signal.
const DAEMON_STEP: Duration = Duration::from_secs(15);
/// Ports tried: a port found free may be taken by someone else before the daemon binds it.
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

/// Starts the daemon on a port the kernel just handed out; if another process took that port
/// in between (the daemon exits), tries another one. Returns the daemon and its address.
async fn start(dir: &std::path::Path) -> (Daemon, std::net::SocketAddr, std::path::PathBuf) {
    for attempt in 0..PORT_TRIES {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let layout = dir.join(format!("layout{attempt}.yaml"));
        std::fs::write(
            &layout,
            STD_YAML.replace("port: 4420", &format!("port: {port}")),
        )
        .unwrap();
        let log = dir.join(format!("target{attempt}.stderr"));
        let child = Command::new(target_bin())
            .arg("--config")
            .arg(&layout)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn tessera-target");
        let mut d = Daemon(child);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let t0 = Instant::now();
        loop {
            if d.0.try_wait().unwrap().is_some() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                assert!(text.contains("in use"), "daemon exited at start:\n{text}");
                break; // The port was taken meanwhile: another one.
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return (d, addr, log);
            }
            assert!(t0.elapsed() < DAEMON_STEP, "daemon not listening on {addr}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    panic!("no free port after {PORT_TRIES} tries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_is_not_fatal_and_sigterm_still_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let (mut d, addr, log) = start(dir.path()).await;
    let (ctrl, q) = connect_with_io(addr, SUBNQN).await;
    let data = blocks(1, 0, 8, 512);
    within("write", q.write(NS_RAM512, 0, 512, data.clone(), false))
        .await
        .unwrap();

    signal(&d.0, libc::SIGHUP);
    // The log line says the signal was handled; until then the process might still die of it.
    let t0 = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("reload is not supported")
    {
        assert!(
            d.0.try_wait().unwrap().is_none(),
            "SIGHUP killed the target:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(t0.elapsed() < DAEMON_STEP, "no SIGHUP log line");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Still serving, on the same controller and queue: the data is there.
    let got = within("read after SIGHUP", q.read(NS_RAM512, 0, 8, 512))
        .await
        .unwrap();
    assert_blocks(&got, &data, 0, 512, "after SIGHUP");
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
}
