//! The real `tessera-target` under a pretend service manager: the test binds the notification
//! socket (a Unix datagram socket, as systemd does), sets `NOTIFY_SOCKET` and `WATCHDOG_USEC`,
//! and checks what the daemon says and when: `READY=1` first and only once the port accepts,
//! `STATUS=` lines that follow the connections, `WATCHDOG=1` at about half of `WATCHDOG_USEC`,
//! `STOPPING=1` on SIGTERM; that a reactor stalled on purpose (`TESSERA_TEST_STALL_REACTOR`)
//! stops the pings; and that `--log-format json` writes one JSON object per line. The same for
//! `tessera-manager` (ready once its control API listens, watchdog, stopping), and the
//! `journald` log format's fallback where there is no journal.
//!
//! `TESSERA_TARGET_BIN` runs these against an installed binary (ci/install does).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera_tests::*;

/// Bounds every wait (start-up, a message, an exit); generous for a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(30);
/// `WATCHDOG_USEC` given to the daemon: pings every 200 ms.
const WATCHDOG_USEC: u64 = 400_000;
const PING_INTERVAL: Duration = Duration::from_micros(WATCHDOG_USEC / 2);

/// The pretend service manager's notification socket and every datagram received on it, in
/// order, with when it arrived.
struct Manager {
    path: PathBuf,
    got: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Manager {
    fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the notification socket");
        let got = Arc::new(Mutex::new(Vec::new()));
        let got2 = Arc::clone(&got);
        // Ends when the test process does (the socket lives in the test's directory).
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                for line in text.lines() {
                    got2.lock()
                        .unwrap()
                        .push((Instant::now(), line.to_string()));
                }
            }
        });
        Self { path, got }
    }

    fn lines(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, l)| l.clone())
            .collect()
    }

    fn count(&self, line: &str) -> usize {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, l)| l == line)
            .count()
    }

    /// Waits (bounded) until a received line satisfies `f`; returns it.
    async fn wait_for(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let t0 = Instant::now();
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| f(l)) {
                return l;
            }
            assert!(
                t0.elapsed() < DEADLINE,
                "no {what} from the daemon within {DEADLINE:?}; got {:?}",
                self.lines()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The daemon; killed (by its PID) if the test fails while it runs.
struct Daemon {
    child: Child,
    addr: std::net::SocketAddr,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Daemon {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: i32) {
        let pid = i32::try_from(self.child.id()).expect("PID fits a pid_t");
        // SAFETY: kill(2) with the PID of a child we spawned and have not reaped yet (so the
        // PID cannot have been reused); it touches no memory of ours.
        let r = unsafe { libc::kill(pid, sig) };
        assert_eq!(r, 0, "kill({pid}, {sig})");
    }

    /// Waits (bounded) for the exit; returns its status.
    async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(t0.elapsed() < DEADLINE, "daemon did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Starts `tessera-target` with two reactors on a fresh port under the manager `m`, with
/// `extra` arguments and environment; retries another port if the one chosen was taken.
/// Returns once `READY=1` arrived.
async fn start(dir: &Path, m: &Manager, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
    for attempt in 0..5 {
        let port = daemon_port();
        let layout = dir.join(format!("layout{attempt}.yaml"));
        std::fs::write(
            &layout,
            STD_YAML.replace("port: 4420", &format!("port: {port}")),
        )
        .unwrap();
        let log = dir.join(format!("target{attempt}.stderr"));
        let mut cmd = Command::new(target_bin());
        cmd.arg("--config")
            .arg(&layout)
            .args(["--reactors", "2"])
            .args(extra)
            .env("NOTIFY_SOCKET", &m.path)
            .env("WATCHDOG_USEC", WATCHDOG_USEC.to_string())
            .env_remove("WATCHDOG_PID")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn tessera-target");
        let mut d = Daemon {
            child,
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            log,
        };
        let t0 = Instant::now();
        loop {
            if m.count("READY=1") > 0 {
                return d;
            }
            if d.child.try_wait().unwrap().is_some() {
                let text = d.log_text();
                assert!(text.contains("in use"), "daemon exited at start:\n{text}");
                break; // The port was taken meanwhile: another one.
            }
            assert!(t0.elapsed() < DEADLINE, "no READY=1 within {DEADLINE:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    panic!("no free port after 5 tries");
}

/// The number of connections a `STATUS=` line reports.
fn status_connections(line: &str) -> Option<usize> {
    line.strip_prefix("STATUS=")?
        .split(" connection(s)")
        .next()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_status_watchdog_stopping_and_json_logs() {
    let dir = TestDir::new();
    let m = Manager::bind(dir.path());
    let mut d = start(dir.path(), &m, &["--log-format", "json"], &[]).await;

    // READY=1 comes first, and only once the listener is bound: the port accepts right away.
    assert_eq!(m.lines().first().map(String::as_str), Some("READY=1"));
    tokio::net::TcpStream::connect(d.addr)
        .await
        .expect("the port accepts once READY=1 was sent");

    // STATUS= says what is served, and follows the connections.
    let idle = m
        .wait_for("STATUS= line", |l| l.starts_with("STATUS="))
        .await;
    assert!(
        idle.contains("3 namespace(s)")
            && idle.contains("1 subsystem(s)")
            && idle.contains(&format!("generation {STANDALONE_GENERATION}")),
        "{idle}"
    );
    let (c, q) = connect_with_io(d.addr, SUBNQN).await;
    let busy = m
        .wait_for("STATUS= line with the host's connections", |l| {
            status_connections(l).is_some_and(|n| n >= 2)
        })
        .await;
    assert!(busy.contains("3 namespace(s)"), "{busy}");
    q.close().await;
    within("disconnect", c.disconnect()).await.unwrap();

    // WATCHDOG=1 keeps coming while the reactors run, at about half of WATCHDOG_USEC: at least
    // a few pings (bounded wait), and never faster than the interval allows.
    let t0 = Instant::now();
    let before = m.count("WATCHDOG=1");
    m.wait_for("watchdog pings", |_| m.count("WATCHDOG=1") >= before + 5)
        .await;
    let pings: Vec<Instant> = m
        .got
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, l)| l == "WATCHDOG=1")
        .map(|(t, _)| *t)
        .collect();
    let span = pings.last().unwrap().duration_since(pings[0]);
    // n pings span at least (n - 1) intervals, less a scheduling jitter allowance of half an
    // interval each (the pinger delays missed ticks, so pings can only come later, not more
    // often).
    let n = u32::try_from(pings.len()).unwrap();
    assert!(
        span >= PING_INTERVAL * (n - 1) / 2,
        "{n} pings within {span:?}: faster than every {PING_INTERVAL:?}"
    );
    assert!(t0.elapsed() < DEADLINE);

    // SIGTERM: STOPPING=1, then a clean exit.
    d.signal(libc::SIGTERM);
    let st = d.wait_exit().await;
    assert!(st.success(), "exit after SIGTERM: {st}");
    let lines = m.lines();
    let ready = lines.iter().position(|l| l == "READY=1").unwrap();
    let stopping = lines
        .iter()
        .position(|l| l == "STOPPING=1")
        .unwrap_or_else(|| panic!("no STOPPING=1 after SIGTERM: {lines:?}"));
    assert!(ready < stopping, "{lines:?}");
    assert_eq!(m.count("READY=1"), 1, "{lines:?}");

    // --log-format json: every stderr line is one JSON object with a level and a message.
    let text = d.log_text();
    let mut n = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
        assert!(v["fields"]["message"].is_string(), "{line}");
        n += 1;
    }
    assert!(
        text.contains("listening for NVMe/TCP") && n >= 3,
        "expected the start-up lines:\n{text}"
    );
}

/// `ExecReload=kill -HUP $MAINPID`: a reload says `RELOADING=1` with `MONOTONIC_USEC=`, then
/// `READY=1` again when it ends, whether the file was applied or refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_says_reloading_with_its_time_then_ready_again() {
    let dir = TestDir::new();
    let m = Manager::bind(dir.path());
    let mut d = start(dir.path(), &m, &["--control", "off"], &[]).await;
    assert_eq!(m.count("READY=1"), 1);
    for round in 1..=2 {
        if round == 2 {
            // A file with an error: refused whole, and the daemon is ready again all the same.
            let layout = dir.path().join("layout0.yaml");
            std::fs::write(&layout, "subsystems: [ {").unwrap();
        }
        d.signal(libc::SIGHUP);
        m.wait_for("READY=1 after the reload", |_| m.count("READY=1") > round)
            .await;
        let lines = m.lines();
        let reloading: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| *l == "RELOADING=1")
            .map(|(i, _)| i)
            .collect();
        assert_eq!(reloading.len(), round, "{lines:?}");
        let at = reloading[round - 1];
        let usec = lines[at + 1]
            .strip_prefix("MONOTONIC_USEC=")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no MONOTONIC_USEC after RELOADING=1: {lines:?}"));
        assert!(usec > 0);
        let ready_after = lines[at..].iter().filter(|l| *l == "READY=1").count();
        assert_eq!(ready_after, 1, "one READY=1 ends the reload: {lines:?}");
    }
    assert!(
        d.log_text().contains("layout0.yaml"),
        "the refused file is named in the log:\n{}",
        d.log_text()
    );
    // Still serving after both.
    tokio::net::TcpStream::connect(d.addr)
        .await
        .expect("the port still accepts");
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reactor_stops_the_watchdog_pings() {
    let dir = TestDir::new();
    let m = Manager::bind(dir.path());
    // Reactor 1 blocks its thread 1.5 s after it starts.
    let d = start(
        dir.path(),
        &m,
        &[],
        &[("TESSERA_TEST_STALL_REACTOR", "1:1500")],
    )
    .await;
    // The pinger notices (its log names the stuck reactor) ...
    let t0 = Instant::now();
    while !d.log_text().contains("withholding the watchdog ping") {
        assert!(
            t0.elapsed() < DEADLINE,
            "the watchdog kept pinging with a stalled reactor: {} pings",
            m.count("WATCHDOG=1")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = d.log_text();
    assert!(
        text.lines()
            .any(|l| l.contains("withholding") && l.contains("reactor-1")),
        "{text}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.contains("withholding") && l.contains("reactor-0")),
        "{text}"
    );
    // ... and the pings stop for good (the count does not move over many intervals).
    tokio::time::sleep(PING_INTERVAL * 2).await;
    let stopped_at = m.count("WATCHDOG=1");
    tokio::time::sleep(PING_INTERVAL * 10).await;
    assert_eq!(
        m.count("WATCHDOG=1"),
        stopped_at,
        "WATCHDOG=1 still sent with reactor 1 stalled"
    );
    assert!(stopped_at >= 1, "the first ping comes before any check");
    // The stalled reactor never returns: the daemon is killed (Drop), as the service manager
    // would.
    drop(d);
}

/// The `tessera-manager` binary beside the target binary (cargo puts both in one directory;
/// ci/install puts both in `usr/bin`), built first when missing or older than its sources.
fn manager_bin() -> PathBuf {
    let target = target_bin();
    let bin = target.with_file_name("tessera-manager");
    if std::env::var_os("TESSERA_TARGET_BIN").is_some() {
        return bin; // An installed set: used as it is.
    }
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    let ws = workspace_dir();
    let newest = [
        "manager/src",
        "manager/Cargo.toml",
        "daemon/src",
        "Cargo.lock",
    ]
    .iter()
    .flat_map(|p| walk(&ws.join(p)))
    .max();
    if built.is_none() || newest.is_some_and(|n| Some(n) > built) {
        let profile_dir = target.parent().unwrap();
        let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cmd.arg("build")
            .arg("--manifest-path")
            .arg(ws.join("Cargo.toml"))
            .args([
                "--quiet",
                "-p",
                "tessera-manager",
                "--bin",
                "tessera-manager",
            ])
            .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap());
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let out = cmd.output().expect("run cargo build for tessera-manager");
        assert!(
            out.status.success(),
            "cargo build of tessera-manager failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    bin
}

/// Modification times of every file under `p`.
fn walk(p: &Path) -> Vec<std::time::SystemTime> {
    let Ok(meta) = std::fs::metadata(p) else {
        return Vec::new();
    };
    if meta.is_dir() {
        std::fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|e| walk(&e.path()))
            .collect()
    } else {
        meta.modified().into_iter().collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_ready_watchdog_stopping_and_json_logs() {
    let dir = TestDir::new();
    let m = Manager::bind(dir.path());
    std::fs::write(
        dir.path().join("cluster.yaml"),
        "servers:\n  - id: s1\n    portal: 127.0.0.1:24420\n    internal: 127.0.0.1:24430\n    pool: 256MiB\nsubsystems: []\n",
    )
    .unwrap();
    let log = dir.path().join("manager.stderr");
    let child = Command::new(manager_bin())
        .arg("--config")
        .arg(dir.path().join("cluster.yaml"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        // Port 0: the manager binds it and logs the address; nothing to race for.
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .env("NOTIFY_SOCKET", &m.path)
        .env("WATCHDOG_USEC", WATCHDOG_USEC.to_string())
        .env_remove("WATCHDOG_PID")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn tessera-manager");
    let mut d = Daemon {
        child,
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        log,
    };
    m.wait_for("READY=1", |l| l == "READY=1").await;
    assert_eq!(m.lines().first().map(String::as_str), Some("READY=1"));

    // Ready means the control API listens: the address it logged accepts at once.
    let text = d.log_text();
    let listening = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "control API listening")
        .unwrap_or_else(|| panic!("no \"control API listening\" line before READY=1:\n{text}"));
    d.addr = listening["fields"]["addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    tokio::net::TcpStream::connect(d.addr)
        .await
        .expect("the control API accepts once READY=1 was sent");

    // The watchdog is fed from the manager's runtime.
    m.wait_for("watchdog pings", |_| m.count("WATCHDOG=1") >= 3)
        .await;

    d.signal(libc::SIGTERM);
    let st = d.wait_exit().await;
    assert!(st.success(), "exit after SIGTERM: {st}");
    let lines = m.lines();
    let stopping = lines.iter().position(|l| l == "STOPPING=1");
    assert!(stopping.is_some_and(|s| s > 0), "{lines:?}");
    for line in d.log_text().lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
    }
}

/// `--log-format journald` logs to the journal's socket; where there is none (a container, a
/// CI machine without systemd) the daemon says so and logs text on stderr instead of failing.
#[test]
fn journald_log_format_falls_back_to_stderr_without_a_journal() {
    let out = Command::new(target_bin())
        .args(["--log-format", "journald", "--check"])
        .arg(examples_dir().join("default.yaml"))
        .stdin(Stdio::null())
        .output()
        .expect("run tessera-target --check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
    if !Path::new("/run/systemd/journal/socket").exists() {
        assert!(stderr.contains("no journal to log to"), "{stderr}");
    }
}
