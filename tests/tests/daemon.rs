//! The real `tessera-target` binary: `--check` messages, listener errors, the embedded default
//! layout, and data surviving a restart (SIGTERM: flush then exit 0) and a crash after Flush
//! (SIGKILL). See `tessera_tests::target_bin` for how the binary is found and built.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tessera::initiator::{ControllerOptions, discover};
use tessera_tests::*;

/// Bounds the wait for the daemon to listen, or to exit after a signal: a hang fails the test
/// rather than hanging the suite. Not a speed requirement (both take milliseconds when the
/// machine is idle); generous because the suite runs on 2 shared cores next to builds and
/// other tests, and a file backend's flush on exit waits for the disk.
const DAEMON_STEP: Duration = Duration::from_secs(60);
/// How often a wait loop looks again.
const POLL: Duration = Duration::from_millis(20);
/// Starts of a daemon, each on a fresh port, when its port was taken by another process.
const START_ATTEMPTS: usize = 5;

/// A `tessera-target` process; killed (by its PID) if a test fails while it runs.
struct Daemon {
    child: Child,
    stderr: PathBuf,
}

impl Daemon {
    fn spawn(args: &[&str], log_dir: &Path, name: &str) -> Daemon {
        let stderr = log_dir.join(format!("{name}.stderr"));
        let child = Command::new(target_bin())
            .args(args)
            // Run from elsewhere: relative backend paths must follow the layout file.
            .current_dir("/")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn tessera-target");
        Daemon { child, stderr }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until `addr` accepts connections (the daemon may instead exit: returns its status).
    async fn wait_listening(&mut self, addr: SocketAddr) -> Result<(), ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Err(st);
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            assert!(
                start.elapsed() < DAEMON_STEP,
                "daemon not listening on {addr} after {DAEMON_STEP:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    fn signal(&self, sig: i32) {
        let pid = i32::try_from(self.child.id()).expect("PID fits a pid_t");
        // SAFETY: kill(2) with the PID of a child we spawned and have not reaped yet (so the
        // PID cannot have been reused); it touches no memory of ours.
        let r = unsafe { libc::kill(pid, sig) };
        assert_eq!(r, 0, "kill({pid}, {sig})");
    }

    /// Waits (bounded) for the process to exit.
    async fn wait_exit(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                start.elapsed() < DAEMON_STEP,
                "daemon did not exit within {DAEMON_STEP:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// How long the default-layout test waits for 127.0.0.1:4420 to be free.
const PORT_4420_WAIT: Duration = Duration::from_secs(120);

/// Runs the binary to completion (bounded) and returns (exit code, stdout, stderr).
fn run(args: &[&Path]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(target_bin());
    cmd.args(args).env("RUST_LOG", "warn");
    let out = cmd.output().expect("run tessera-target");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_reports_every_bad_example_exactly_as_the_yaml_crate() {
    let dir = examples_dir().join("bad");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "examples/bad has {} files", files.len());
    for f in &files {
        let want = yaml::load(f)
            .expect_err("a bad example must not load")
            .to_string();
        let (code, stdout, stderr) = run(&[Path::new("--check"), f]);
        assert_eq!(code, Some(1), "--check {}: exit code", f.display());
        assert_eq!(stderr.trim_end(), want, "--check {}: message", f.display());
        assert!(
            stdout.is_empty(),
            "--check {}: stdout {stdout:?}",
            f.display()
        );
        // The message has the FILE:LINE:COL: field: shape (or FILE: for unreadable files).
        assert!(want.starts_with(&f.display().to_string()), "{want}");
    }
}

#[test]
fn check_accepts_the_good_examples() {
    for name in ["default.yaml", "file-backed.yaml", "multi.yaml"] {
        let f = examples_dir().join(name);
        let (code, stdout, stderr) = run(&[Path::new("--check"), &f]);
        assert_eq!(code, Some(0), "--check {name}: {stderr}");
        assert!(stdout.contains("OK"), "--check {name}: {stdout}");
    }
}

#[test]
fn check_fails_when_a_backend_cannot_be_opened() {
    // `tessera-target --help`: "--check: Validate this YAML layout (and that its backends open)
    // without serving it". A file backend with create: true in a directory that does not exist
    // passes the YAML checks but cannot be opened.
    let dir = TestDir::new();
    let layout = dir.path().join("layout.yaml");
    std::fs::write(
        &layout,
        format!(
            "{PLACEHOLDER_LISTENER}subsystems:
  - nqn: {SUBNQN}
    allow_any_host: true
    namespaces:
      - nsid: 1
        backend: {{ kind: file, path: {}/no/such/dir/ns.img, size: 1MiB, create: true }}
",
            dir.path().display()
        ),
    )
    .unwrap();
    let (code, _, stderr) = run(&[Path::new("--check"), &layout]);
    assert_eq!(code, Some(1), "--check of an unopenable backend: {stderr}");
    assert!(stderr.contains("backend"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_port_in_use_is_reported_with_its_place_in_the_layout() {
    let dir = TestDir::new();
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let layout = dir.path().join("layout.yaml");
    std::fs::write(
        &layout,
        format!(
            "# a comment line
listeners:
  - address: 127.0.0.1
    port: {port}
subsystems:
  - nqn: {SUBNQN}
    allow_any_host: true
    namespaces:
      - nsid: 1
        backend: {{ kind: ram, size: 1MiB }}
"
        ),
    )
    .unwrap();
    let loc = yaml::load(&layout).unwrap().listeners[0].loc.to_string();
    assert!(loc.contains("listeners[0]"), "{loc}");
    let mut d = Daemon::spawn(
        &["--config", layout.to_str().unwrap(), "--reactors", "1"],
        dir.path(),
        "in-use",
    );
    let st = d.wait_exit().await;
    let log = d.log();
    assert_eq!(
        st.code(),
        Some(1),
        "exit status with the port taken:\n{log}"
    );
    assert!(log.contains(&loc), "message names {loc}:\n{log}");
    assert!(
        log.contains(&layout.display().to_string()),
        "names the file:\n{log}"
    );
    assert!(
        log.contains(":3:"),
        "names the line of listeners[0]:\n{log}"
    );
    assert!(log.contains("in use"), "says the address is in use:\n{log}");
    drop(holder);
}

/// A layout serving two file namespaces (one relative to the layout file) on `port`.
fn file_layout(dir: &Path, port: u16) -> PathBuf {
    let layout = dir.join("layout.yaml");
    std::fs::write(
        &layout,
        format!(
            "listeners:
  - address: 127.0.0.1
    port: {port}
subsystems:
  - nqn: {SUBNQN}
    allow_any_host: true
    namespaces:
      - nsid: 1
        block_size: 512
        backend: {{ kind: file, path: ns1.img, size: 8MiB, create: true }}
      - nsid: 2
        block_size: 4096
        backend: {{ kind: file, path: {}, size: 8MiB, create: true }}
",
            dir.join("ns2.img").display()
        ),
    )
    .unwrap();
    layout
}

/// Starts the daemon on a free port (see `daemon_port`), on another one if a process took it
/// first.
async fn start_daemon(dir: &Path, name: &str) -> (Daemon, SocketAddr) {
    for attempt in 0..START_ATTEMPTS {
        let port = daemon_port();
        let layout = file_layout(dir, port);
        let mut d = Daemon::spawn(
            &["--config", layout.to_str().unwrap(), "--reactors", "1"],
            dir,
            &format!("{name}-{attempt}"),
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        match d.wait_listening(addr).await {
            Ok(()) => return (d, addr),
            Err(st) if d.log().contains("in use") => {
                eprintln!("port {port} was taken ({st}); trying another");
            }
            Err(st) => panic!("daemon exited with {st}:\n{}", d.log()),
        }
    }
    panic!("no free port after {START_ATTEMPTS} attempts");
}

/// What each phase writes: (NSID, block size, LBA, blocks, seed, FUA).
const WRITES: [(u32, u32, u64, u32, u64, bool); 4] = [
    (1, 512, 0, 64, 1, true),      // FUA
    (1, 512, 1000, 200, 2, false), // Flush below
    (2, 4096, 7, 32, 3, true),
    (2, 4096, 500, 9, 4, false),
];

async fn write_phase(addr: SocketAddr, salt: u64) {
    let (c, q) = connect_with_io(addr, SUBNQN).await;
    for (nsid, bs, slba, nlb, seed, fua) in WRITES {
        let d = blocks(seed + salt, slba, nlb, bs);
        within("write", q.write(nsid, slba, bs, d, fua))
            .await
            .unwrap();
    }
    within("flush", q.flush(1)).await.unwrap();
    within("flush", q.flush(2)).await.unwrap();
    q.close().await;
    within("disconnect", c.disconnect()).await.unwrap();
}

async fn verify_phase(addr: SocketAddr, salt: u64, what: &str) {
    let (c, q) = connect_with_io(addr, SUBNQN).await;
    for (nsid, bs, slba, nlb, seed, _) in WRITES {
        let want = blocks(seed + salt, slba, nlb, bs);
        let got = within("read", q.read(nsid, slba, nlb, bs)).await.unwrap();
        assert_blocks(
            &got,
            &want,
            slba,
            bs,
            &format!("{what}: nsid {nsid} LBA {slba}"),
        );
    }
    q.close().await;
    within("disconnect", c.disconnect()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_sigterm_and_a_restart() {
    let dir = TestDir::new();
    let (mut d, addr) = start_daemon(dir.path(), "first").await;
    write_phase(addr, 0).await;
    // Written but neither FUA nor flushed: SIGTERM flushes before exit.
    let (c, q) = connect_with_io(addr, SUBNQN).await;
    let late = blocks(99, 3000, 16, 512);
    q.write(1, 3000, 512, late.clone(), false).await.unwrap();
    q.close().await;
    c.disconnect().await.unwrap();
    d.signal(libc::SIGTERM);
    let st = d.wait_exit().await;
    assert_eq!(st.code(), Some(0), "exit after SIGTERM:\n{}", d.log());
    // The relative backend path was resolved against the layout's directory.
    assert!(dir.path().join("ns1.img").is_file());
    let (mut d2, addr2) = start_daemon(dir.path(), "second").await;
    verify_phase(addr2, 0, "after SIGTERM and restart").await;
    let (c, q) = connect_with_io(addr2, SUBNQN).await;
    assert_blocks(
        &q.read(1, 3000, 16, 512).await.unwrap(),
        &late,
        3000,
        512,
        "unflushed write",
    );
    q.close().await;
    c.disconnect().await.unwrap();
    d2.signal(libc::SIGTERM);
    assert_eq!(d2.wait_exit().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_data_survives_sigkill() {
    let dir = TestDir::new();
    let (mut d, addr) = start_daemon(dir.path(), "killed").await;
    write_phase(addr, 1000).await;
    d.signal(libc::SIGKILL);
    let st = d.wait_exit().await;
    assert_eq!(st.code(), None, "killed by a signal");
    let (mut d2, addr2) = start_daemon(dir.path(), "after-kill").await;
    verify_phase(addr2, 1000, "after SIGKILL and restart").await;
    d2.signal(libc::SIGTERM);
    assert_eq!(d2.wait_exit().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_serves_the_default_subsystem() {
    const DEFAULT_NQN: &str = "nqn.2026-11.dev.tessera:default";
    // The default layout listens on 127.0.0.1:4420 (the NVMe/TCP port), which another test
    // (e.g. a QEMU guest's target run by hand) may hold for a while. Wait for it (bounded), then
    // fail: a test that cannot run is not a pass.
    let dir = TestDir::new();
    let addr = SocketAddr::from(([127, 0, 0, 1], 4420));
    let deadline = Instant::now() + PORT_4420_WAIT;
    let mut attempt = 0;
    let mut d = loop {
        while let Err(e) = TcpListener::bind(addr) {
            assert!(
                Instant::now() < deadline,
                "127.0.0.1:4420, which the embedded default layout listens on, stayed in use \
                 for {PORT_4420_WAIT:?} ({e}): this test cannot run"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        attempt += 1;
        let mut d = Daemon::spawn(
            &["--reactors", "1"],
            dir.path(),
            &format!("default-{attempt}"),
        );
        match d.wait_listening(addr).await {
            Ok(()) => break d,
            // Taken between the check and the daemon's bind: wait for it again.
            Err(st) if d.log().contains("in use") && Instant::now() < deadline => {
                eprintln!("127.0.0.1:4420 was taken meanwhile ({st}); waiting again");
            }
            Err(st) => panic!("default daemon exited with {st}:\n{}", d.log()),
        }
    };
    let mut o = ControllerOptions::discovery();
    o.transport.connect_timeout = STEP;
    o.transport.command_timeout = Some(STEP);
    let log = within("discover", discover(addr, HOSTNQN, &o))
        .await
        .unwrap();
    assert!(
        log.entries.iter().any(|e| e.subnqn == DEFAULT_NQN),
        "discovery lists the default subsystem: {log:?}"
    );
    let (c, q) = connect_with_io(addr, DEFAULT_NQN).await;
    let ns = c.identify_namespace_parsed(1).await.unwrap();
    assert_eq!(ns.lba_size(), Some(512));
    assert_eq!(ns.nsze * 512, 1 << 30, "1 GiB");
    let data = blocks(1, 10, 8, 512);
    q.write(1, 10, 512, data.clone(), false).await.unwrap();
    assert_blocks(
        &q.read(1, 10, 8, 512).await.unwrap(),
        &data,
        10,
        512,
        "default namespace",
    );
    q.close().await;
    c.disconnect().await.unwrap();
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit().await.code(), Some(0), "{}", d.log());
}
