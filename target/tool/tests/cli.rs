//! The `tessera` operator CLI against a real `tessera-manager` with credentials: the global
//! `--manager`/`--credential` flags (before or after the subcommand, or `TESSERA_CREDENTIAL`),
//! `volume create --hosts`, `server state`, and one source of truth between the YAML and API
//! changes (reloading the unchanged file after `server add`, then the mark-down-and-reload
//! procedure of docs/cluster.md). No storage servers: answers come once a change is durable.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use manager::api::Role;
use manager::client::Client;
use manager::map::{ClusterMap, HostPolicy, ServerState};

const TOKENS: [(&str, &str); 3] = [
    ("operator", "Y2xpLXRlc3Qtb3BlcmF0b3ItdG9rZW4="),
    ("s1", "Y2xpLXRlc3QtczEtdG9rZW4tdmFsdWU="),
    ("s2", "Y2xpLXRlc3QtczItdG9rZW4tdmFsdWU="),
];

const CLUSTER: &str = "servers:
  - id: s1
    portal: 127.0.0.1:24520
    internal: 127.0.0.1:24530
    pool: 256MiB
    credential: keys/s1.key
  - id: s2
    portal: 127.0.0.1:24521
    internal: 127.0.0.1:24531
    pool: 256MiB
    credential: keys/s2.key
credentials:
  operator: keys/operator.key
subsystems:
  - nqn: nqn.2026-11.dev.tessera:vol1
    allow_any_host: true
volumes:
  - name: vol1
    size: 16MiB
    extent_size: 8MiB
    subsystem: nqn.2026-11.dev.tessera:vol1
    nsid: 1
";

/// A scratch directory, removed when the test passes (kept for its logs when it fails).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The manager, killed on drop.
struct Manager(Child);

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[path = "../../../tests/support/daemons.rs"]
#[allow(dead_code)]
mod daemons;

/// `tessera-manager` next to our `tessera` (built if absent).
fn manager_bin() -> PathBuf {
    daemons::sibling_bin(
        Path::new(env!("CARGO_BIN_EXE_tessera")),
        "tessera-manager",
        "tessera-manager",
    )
}

/// Starts the manager on 127.0.0.1:0 and reads the bound address from its log (kept in
/// `dir/manager.log`).
fn start_manager(dir: &Path) -> (Manager, String) {
    let mut child = Command::new(manager_bin())
        .arg("--config")
        .arg(dir.join("cluster.yaml"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = dir.join("manager.log");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = std::fs::File::create(log).unwrap();
        let mut sent = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            use std::io::Write;
            let _ = writeln!(out, "{line}");
            if !sent && line.contains("control API listening") {
                let addr = line.rsplit("addr=").next().unwrap().trim().to_owned();
                let _ = tx.send(addr);
                sent = true;
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the manager logs its address");
    (Manager(child), addr)
}

/// Runs `tessera ARGS` (with `env`); (success, stdout, stderr).
fn tessera(args: &[&str], env: &[(&str, &Path)]) -> (bool, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tessera"));
    c.args(args).env_remove("TESSERA_CREDENTIAL");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn client_map(addr: &str, key: &Path) -> ClusterMap {
    let token = manager::credential::read_token(key).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = Client::with_credential(addr, token);
        // The head map: what the manager has made durable, published or not.
        let status = c.status().await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let m = c.map(&Role::Client).await.unwrap();
            if m.generation >= status.generation {
                return m;
            }
            // Without storage servers each generation commits after the 5 s phase-1b bound.
            assert!(
                std::time::Instant::now() < deadline,
                "generation {} not committed",
                status.generation
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

#[test]
fn the_cli_authenticates_and_reloads_keep_api_changes() {
    let dir = std::env::temp_dir().join(format!("tessera-cli-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    let scratch = Scratch(dir.clone());
    for (who, token) in TOKENS {
        let f = dir.join(format!("keys/{who}.key"));
        std::fs::write(&f, format!("{token}\n")).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let op_key = dir.join("keys/operator.key");
    let s1_key = dir.join("keys/s1.key");
    std::fs::write(dir.join("cluster.yaml"), CLUSTER).unwrap();
    let (_manager, addr) = start_manager(&dir);
    let op = op_key.to_str().unwrap();

    // No credential: refused with the manager's reason.
    let (ok, _, err) = tessera(&["--manager", &addr, "status"], &[]);
    assert!(!ok);
    assert!(
        err.contains("HTTP 401") && err.contains("missing credential"),
        "{err}"
    );
    // Global flags before the subcommand, after it, and the environment variable.
    let (ok, out, err) = tessera(&["--manager", &addr, "--credential", op, "status"], &[]);
    assert!(ok, "{err}");
    assert!(out.starts_with("generation 1"), "{out}");
    let (ok, out, err) = tessera(&["status", "--manager", &addr, "--credential", op], &[]);
    assert!(ok && out.starts_with("generation 1"), "{out}{err}");
    let env = [("TESSERA_CREDENTIAL", op_key.as_path())];
    let (ok, out, err) = tessera(&["--manager", &addr, "status"], &env);
    assert!(ok && out.starts_with("generation 1"), "{out}{err}");
    // A server's credential does not change the cluster.
    let (ok, _, err) = tessera(
        &[
            "--manager",
            &addr,
            "--credential",
            s1_key.to_str().unwrap(),
            "reload",
        ],
        &[],
    );
    assert!(!ok && err.contains("HTTP 403"), "{err}");

    // volume create --hosts makes the new subsystem with those hosts.
    let host = "nqn.2014-08.org.nvmexpress:uuid:6f1c2e3a-0b5d-4a4e-9a43-1c2d3e4f5a6b";
    let (ok, out, err) = tessera(
        &[
            "--manager",
            &addr,
            "volume",
            "create",
            "vol2",
            "--size",
            "8MiB",
            "--extent-size",
            "8MiB",
            "--subsystem",
            "nqn.2026-11.dev.tessera:vol2",
            "--hosts",
            host,
        ],
        &env,
    );
    assert!(ok && out.contains("generation 2"), "{out}{err}");
    // Without --hosts a new subsystem is refused, naming the flag's purpose.
    let (ok, _, err) = tessera(
        &[
            "--manager",
            &addr,
            "volume",
            "create",
            "vol3",
            "--size",
            "8MiB",
            "--subsystem",
            "nqn.2026-11.dev.tessera:vol3",
        ],
        &env,
    );
    assert!(!ok && err.starts_with("tessera: "), "{err}");
    // volume clear-lost: nothing marked leaves the map as it is; a missing extent is refused.
    let (ok, out, err) = tessera(&["--manager", &addr, "volume", "clear-lost", "vol2"], &env);
    assert!(
        ok && out.contains("every extent of volume vol2 (generation 2)"),
        "{out}{err}"
    );
    let (ok, _, err) = tessera(
        &[
            "--manager",
            &addr,
            "volume",
            "clear-lost",
            "vol2",
            "--extent",
            "1",
        ],
        &env,
    );
    assert!(
        !ok && err.contains("HTTP 404") && err.contains("no extent 1"),
        "{err}"
    );

    // server add, then the unchanged file reloads without a word and keeps both API changes.
    let (ok, out, err) = tessera(
        &[
            "--manager",
            &addr,
            "server",
            "add",
            "s3",
            "--portal",
            "127.0.0.1:24522",
            "--internal",
            "127.0.0.1:24532",
            "--pool",
            "256MiB",
            "--rack",
            "r3",
        ],
        &env,
    );
    assert!(ok && out.contains("generation 3"), "{out}{err}");
    let (ok, out, err) = tessera(&["--manager", &addr, "reload"], &env);
    assert!(ok, "reloading the unchanged file failed: {err}");
    assert!(out.contains("generation 3"), "{out}");

    // The mark-down-and-reload procedure: `state: down` in the file, reload.
    std::fs::write(
        dir.join("cluster.yaml"),
        CLUSTER.replace(
            "    credential: keys/s2.key\n",
            "    credential: keys/s2.key\n    state: down\n",
        ),
    )
    .unwrap();
    let (ok, out, err) = tessera(&["--manager", &addr, "reload"], &env);
    assert!(ok && out.contains("generation 4"), "{out}{err}");
    let m = client_map(&addr, &op_key);
    assert_eq!(m.generation, 4);
    assert_eq!(m.server("s2").unwrap().state, ServerState::Down);
    assert!(m.server("s3").is_some(), "the API-made server is kept");
    assert_eq!(m.server("s3").unwrap().rack.as_deref(), Some("r3"));
    // status shows each server's rack (`-`: none) once clients have the map with s3.
    let (ok, out, err) = tessera(&["--manager", &addr, "status"], &env);
    assert!(ok, "{err}");
    let line = |id: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no line for {id}: {out}"))
            .to_owned()
    };
    assert!(line("s3").contains("rack r3 "), "{out}");
    assert!(line("s1").contains("rack - "), "{out}");
    let sub = m
        .subsystems
        .iter()
        .find(|s| s.nqn.ends_with(":vol2"))
        .unwrap();
    assert_eq!(sub.hosts, HostPolicy::Only(vec![host.to_owned()]));

    // Back up once repaired (the file's edit is applied; `server state` does the same).
    let (ok, out, err) = tessera(&["--manager", &addr, "server", "state", "s2", "up"], &env);
    assert!(
        ok && out.contains("server s2 is up (generation 5)"),
        "{out}{err}"
    );
    drop(scratch);
}
