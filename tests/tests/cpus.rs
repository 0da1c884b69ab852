//! `tessera-target --cpus`: reactors pinned to CPUs that exist and that the process may use; a
//! CPU number beyond the CPU set (`--cpus 1024`) or one the machine does not give us (`--cpus 7`
//! on a 2-CPU machine) is a clear startup error and a non-zero exit: no panic, and never a
//! target serving unpinned. Runs the real binary (see `tessera_tests::target_bin`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tessera_tests::*;

/// Bounds every wait on the daemon (to listen, to exit): a hang fails the test. Not a speed
/// requirement; generous for 2 shared cores.
const DAEMON_STEP: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);
/// Starts of a daemon, each on a fresh port, when its port was taken by another process.
const START_ATTEMPTS: usize = 5;

struct Daemon {
    child: Child,
    stderr: PathBuf,
}

impl Daemon {
    fn spawn(args: &[&str], log: PathBuf) -> Daemon {
        let child = Command::new(target_bin())
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn tessera-target");
        Daemon { child, stderr: log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("PID fits a pid_t")
    }

    /// Waits (bounded) for the process to exit or to listen on `addr`.
    async fn exit_or_listen(&mut self, addr: SocketAddr) -> Result<ExitStatus, ()> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Ok(st);
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Err(());
            }
            assert!(
                start.elapsed() < DAEMON_STEP,
                "daemon neither exited nor listened on {addr} within {DAEMON_STEP:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }

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

fn ram_layout(dir: &Path, port: u16) -> PathBuf {
    let p = dir.join(format!("layout-{port}.yaml"));
    std::fs::write(
        &p,
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
        backend: {{ kind: ram, size: 1MiB }}
"
        ),
    )
    .unwrap();
    p
}

/// What a start with `args` (after `--config LAYOUT`) came to: the exit status, or `None` with
/// the daemon still running and listening; retried on a fresh port when the port was taken.
async fn start(dir: &Path, name: &str, args: &[&str]) -> (Daemon, SocketAddr, Option<ExitStatus>) {
    for attempt in 0..START_ATTEMPTS {
        let port = daemon_port();
        let layout = ram_layout(dir, port);
        let mut all = vec!["--config", layout.to_str().unwrap()];
        all.extend_from_slice(args);
        let mut d = Daemon::spawn(&all, dir.join(format!("{name}-{attempt}.stderr")));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        match d.exit_or_listen(addr).await {
            Ok(st) if d.log().contains("in use") => {
                eprintln!("port {port} was taken ({st}); trying another");
            }
            Ok(st) => return (d, addr, Some(st)),
            Err(()) => return (d, addr, None),
        }
    }
    panic!("no free port after {START_ATTEMPTS} attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_beyond_the_set_or_not_ours_is_a_startup_error() {
    let dir = TestDir::new();
    let allowed = hw::sys::allowed_cpus().unwrap();
    let allowed_list = hw::sys::cpu_list(&allowed);
    let mut cases: Vec<(String, Vec<String>)> = vec![
        // Beyond CPU_SETSIZE: once a panic in a reactor thread.
        ("1024".into(), vec![]),
        ("4096".into(), vec![]),
        // Listed but not used by the one reactor: still checked.
        (
            format!("{},1024", allowed[0]),
            vec!["--reactors".into(), "1".into()],
        ),
    ];
    // A CPU the machine does not give this process (e.g. 7 on a 2-CPU machine): once only a
    // warning, and the target served unpinned.
    if let Some(absent) = (0..1024).find(|c| !allowed.contains(c)) {
        cases.push((absent.to_string(), vec![]));
    }
    for (i, (cpus, extra)) in cases.iter().enumerate() {
        let bad = cpus.rsplit(',').next().unwrap();
        let mut args = vec!["--cpus", cpus.as_str()];
        args.extend(extra.iter().map(String::as_str));
        let (d, addr, st) = start(dir.path(), &format!("bad-{i}"), &args).await;
        let log = d.log();
        let Some(st) = st else {
            panic!("--cpus {cpus}: the target serves on {addr} instead of refusing:\n{log}");
        };
        assert_eq!(
            st.code(),
            Some(1),
            "--cpus {cpus}: exit status {st}:\n{log}"
        );
        assert!(!log.contains("panicked"), "--cpus {cpus}: a panic:\n{log}");
        assert!(
            log.contains(&format!("CPU {bad} is not one this process may run on")),
            "--cpus {cpus}: the error must name the CPU:\n{log}"
        );
        assert!(
            log.contains(&format!("it may use CPUs {allowed_list}")),
            "--cpus {cpus}: the error must name the usable CPUs:\n{log}"
        );
    }
}

/// The CPUs the thread `name` of process `pid` may run on, from /proc.
fn thread_cpus(pid: i32, name: &str) -> Option<String> {
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let status = std::fs::read_to_string(e.path().join("status")).ok()?;
        return status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .map(|v| v.trim().to_string());
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_cpu_pins_the_reactor_and_the_target_serves() {
    let dir = TestDir::new();
    let allowed = hw::sys::allowed_cpus().unwrap();
    let cpu = allowed.last().unwrap().to_string();
    let (mut d, addr, st) = start(
        dir.path(),
        "good",
        &["--cpus", cpu.as_str(), "--reactors", "1"],
    )
    .await;
    assert!(
        st.is_none(),
        "--cpus {cpu}: exited with {st:?}:\n{}",
        d.log()
    );
    assert_eq!(
        thread_cpus(d.pid(), "reactor-0").as_deref(),
        Some(cpu.as_str()),
        "reactor-0 pinned to CPU {cpu}:\n{}",
        d.log()
    );
    // It serves: a host connects and does I/O.
    let (c, q) = connect_with_io(addr, SUBNQN).await;
    let data = blocks(5, 0, 8, 512);
    within("write", q.write(1, 0, 512, data.clone(), false))
        .await
        .unwrap();
    let got = within("read", q.read(1, 0, 8, 512)).await.unwrap();
    assert_blocks(&got, &data, 0, 512, "pinned target");
    q.close().await;
    within("disconnect", c.disconnect()).await.unwrap();
    // SAFETY: kill(2) with the PID of a child we spawned and have not reaped yet (so the PID
    // cannot have been reused); it touches no memory of ours.
    let r = unsafe { libc::kill(d.pid(), libc::SIGTERM) };
    assert_eq!(r, 0);
    let st = d.wait_exit().await;
    assert_eq!(st.code(), Some(0), "exit after SIGTERM:\n{}", d.log());
}
