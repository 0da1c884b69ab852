//! What the multi-process cluster tests share (target/tests/cluster.rs, ana.rs, replication.rs):
//! one `tessera-manager` and three `tessera-target` storage servers on loopback ports from
//! `daemons::daemon_port`, each process killed by PID when dropped and logging into the test's
//! directory, and a start that a caller tries again on fresh ports when a port was taken.
//! Included with `#[path]` next to `mod daemons;` and `mod kept_dir;` (tests/support).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use manager::client::Client;

use crate::daemons::{self, daemon_port};
use crate::kept_dir::tail;

/// How often a wait loop looks again.
const POLL: Duration = Duration::from_millis(50);

/// A child process killed when the test ends (by PID, never by name), and what it is.
pub struct Proc(pub Child, pub &'static str);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Id, host portal, internal portal and process of each storage server.
pub type Servers = Vec<(String, SocketAddr, SocketAddr, Proc)>;

/// The manager binary sits next to ours in the same target directory (`cargo test
/// --workspace` builds it); built if this package's tests run alone.
pub fn manager_bin() -> PathBuf {
    sibling_bin("tessera-manager", "tessera-manager")
}

/// A binary of another workspace package (`bin` of `package`), next to ours.
pub fn sibling_bin(bin: &str, package: &str) -> PathBuf {
    daemons::sibling_bin(
        Path::new(env!("CARGO_BIN_EXE_tessera-target")),
        bin,
        package,
    )
}

/// A log file of `dir`, appended to (a restarted process continues its predecessor's log).
pub fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .unwrap()
}

/// Runs `c` with its log in `dir/<name>.log`.
pub fn spawn(dir: &Path, mut c: Command, name: &str, what: &'static str) -> Proc {
    Proc(
        c.env(
            "RUST_LOG",
            std::env::var("TESSERA_TEST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::null())
        .stderr(log_file(dir, name))
        .spawn()
        .unwrap(),
        what,
    )
}

/// The manager on `maddr`, with `dir/cluster.yaml` and its store in `dir/mgr`.
pub fn spawn_manager(dir: &Path, maddr: &str, extra: &[&str]) -> Proc {
    let mut c = Command::new(manager_bin());
    c.arg("--config")
        .arg(dir.join("cluster.yaml"))
        .arg("--data-dir")
        .arg(dir.join("mgr"))
        .args(["--listen", maddr])
        .args(extra);
    spawn(dir, c, "manager", "manager")
}

/// A storage server process; with `file_pool`, its pool is a file in the test directory.
pub fn spawn_server(dir: &Path, maddr: &str, id: &str, file_pool: bool) -> Proc {
    spawn_server_with(dir, maddr, id, file_pool, &[])
}

/// [`spawn_server`] with `extra` arguments.
pub fn spawn_server_with(
    dir: &Path,
    maddr: &str,
    id: &str,
    file_pool: bool,
    extra: &[&str],
) -> Proc {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tessera-target"));
    c.args(["--manager", maddr, "--server-id", id, "--reactors", "1"])
        .args(extra);
    if file_pool {
        c.arg("--pool")
            .arg(format!("file:{}", dir.join(format!("{id}.pool")).display()));
    }
    spawn(dir, c, id, "server")
}

/// The `servers:` section of a cluster file: `s1`, `s2`... on `ports` (host, internal), 64 MiB
/// pools.
pub fn servers_yaml(ports: &[(u16, u16)]) -> String {
    let mut y = String::from("servers:\n");
    for (i, (p, q)) in ports.iter().enumerate() {
        y.push_str(&format!(
            "  - id: s{}\n    portal: 127.0.0.1:{p}\n    internal: 127.0.0.1:{q}\n    pool: 64MiB\n",
            i + 1
        ));
    }
    y
}

/// Why a process of a starting cluster exited.
pub enum Exited {
    /// One of its ports was taken (by another process): start again on other ports.
    PortTaken(String),
    /// Anything else: a failure.
    Failed(String),
}

/// Whether `p` exited; why, from its log.
pub fn exited(p: &mut Proc, log: &Path) -> Option<Exited> {
    let st = p.0.try_wait().unwrap()?;
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let what = format!(
        "{} exited with {st}; its log ends:\n{}",
        p.1,
        tail(&text, 20)
    );
    Some(if text.contains("in use") {
        Exited::PortTaken(what)
    } else {
        Exited::Failed(what)
    })
}

/// Whether the manager committed generation `g` and all `n` servers acknowledged it (or later).
pub async fn all_acked(client: &Client, g: u64, n: usize) -> bool {
    matches!(client.status().await, Ok(s) if s.committed >= g
        && s.servers.len() == n
        && s.servers.iter().all(|x| x.acked >= g))
}

/// One start in `dir`: three servers on fresh ports, the cluster file `yaml(ports)`, the
/// manager (with `manager_args`) and the servers, until every server acknowledged generation
/// 1 (within `deadline`). Returns the manager, its address and the servers; `Err` if a process
/// found its port taken (the caller starts again); panics on any other failure.
pub async fn try_start(
    dir: &Path,
    yaml: impl Fn(&[(u16, u16)]) -> String,
    manager_args: &[&str],
    file_pools: bool,
    deadline: Duration,
) -> Result<(Proc, String, Servers), String> {
    try_start_with(dir, yaml, (manager_args, &[]), file_pools, deadline).await
}

/// [`try_start`] with `server_args` given to every storage server.
pub async fn try_start_with(
    dir: &Path,
    yaml: impl Fn(&[(u16, u16)]) -> String,
    args: (&[&str], &[&str]),
    file_pools: bool,
    deadline: Duration,
) -> Result<(Proc, String, Servers), String> {
    try_start_via(dir, yaml, args, file_pools, deadline, |_, m| m.to_string()).await
}

/// [`try_start_with`], each server reaching the manager at `via(server id, manager address)`
/// (a proxy the test can cut).
pub async fn try_start_via(
    dir: &Path,
    yaml: impl Fn(&[(u16, u16)]) -> String,
    (manager_args, server_args): (&[&str], &[&str]),
    file_pools: bool,
    deadline: Duration,
    via: impl Fn(&str, &str) -> String,
) -> Result<(Proc, String, Servers), String> {
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (daemon_port(), daemon_port())).collect();
    std::fs::write(dir.join("cluster.yaml"), yaml(&ports)).unwrap();
    let maddr = format!("127.0.0.1:{}", daemon_port());
    let mut manager = spawn_manager(dir, &maddr, manager_args);
    let mut servers = Vec::new();
    for (i, (p, q)) in ports.iter().enumerate() {
        let id = format!("s{}", i + 1);
        let child = spawn_server_with(dir, &via(&id, &maddr), &id, file_pools, server_args);
        servers.push((
            id,
            SocketAddr::from(([127, 0, 0, 1], *p)),
            SocketAddr::from(([127, 0, 0, 1], *q)),
            child,
        ));
    }
    let client = Client::new(&maddr);
    let until = Instant::now() + deadline;
    loop {
        // A process that exited will never ack.
        let mut gone = exited(&mut manager, &dir.join("manager.log"));
        for s in &mut servers {
            gone = gone.or_else(|| exited(&mut s.3, &dir.join(format!("{}.log", s.0))));
        }
        match gone {
            Some(Exited::PortTaken(why)) => return Err(why),
            Some(Exited::Failed(why)) => panic!("cluster start: {why}"),
            None => {}
        }
        if all_acked(&client, 1, servers.len()).await {
            return Ok((manager, maddr, servers));
        }
        assert!(
            Instant::now() < until,
            "servers did not reach generation 1 within {deadline:?}; manager status: {:?}",
            client.status().await
        );
        tokio::time::sleep(POLL).await;
    }
}
