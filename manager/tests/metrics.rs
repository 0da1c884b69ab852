//! The `tessera-manager` binary's Prometheus metrics (`--metrics`): scraped over HTTP, parsed
//! with a Prometheus text-format parser, and checked against known actions (a volume create
//! bumps the generation, bad credentials count as authentication failures, a move is counted
//! started then finished, a mismatch report is counted, a server's watch stream is open).
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use manager::api::{CreateVolumeRequest, MoveReadyRequest, ReportKind, ReportRequest, Role};
use manager::client::{Client, ClientError};
use manager::map::HostPolicy;

/// Bounds a hang only; generous for a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(30);

mod common;
use common::{CLUSTER, MIB, TOKENS, write_cluster};

/// Kills the manager when the test ends, passing or not; its log is printed on failure.
struct Manager {
    child: Child,
    api: SocketAddr,
    metrics: SocketAddr,
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary with the control API and the metrics on ports it picks itself, and reads
/// both addresses from its log (the log is echoed to the test's stderr, kept on failure).
fn spawn(dir: &Path) -> Manager {
    write_cluster(dir, CLUSTER);
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera-manager"))
        .arg("--config")
        .arg(dir.join("cluster.yaml"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
        .args(["--old-owner-timeout", "0"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("manager: {line}");
            for (what, key) in [
                ("control API listening", "api"),
                ("serving Prometheus metrics", "metrics"),
            ] {
                if line.contains(what) {
                    let addr = line.rsplit("addr=").next().unwrap().trim().to_owned();
                    let _ = tx.send((key, addr));
                }
            }
        }
    });
    let (mut api, mut metrics) = (None, None);
    while api.is_none() || metrics.is_none() {
        let (key, addr) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the manager logs its addresses");
        let addr: SocketAddr = addr.parse().unwrap();
        if key == "api" {
            api = Some(addr);
        } else {
            metrics = Some(addr);
        }
    }
    Manager {
        child,
        api: api.unwrap(),
        metrics: metrics.unwrap(),
    }
}

async fn scrape(addr: SocketAddr) -> prometheus_parse::Scrape {
    let body = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .text()
        .await
        .unwrap();
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// The value of the one sample named `name` whose labels include `labels`.
fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<_> = s
        .samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(v)))
        .collect();
    assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}");
    match found[0].value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{name}: {other:?}"),
    }
}

fn status_of<T: std::fmt::Debug>(r: Result<T, ClientError>) -> u16 {
    match r {
        Err(ClientError::Http { status, .. }) => status,
        other => panic!("expected an HTTP error, got {other:?}"),
    }
}

/// Scrapes until `f` holds (bounded by [`DEADLINE`]; the scrape is returned either way for
/// the assertions that follow).
async fn scrape_until(
    addr: SocketAddr,
    what: &str,
    f: impl Fn(&prometheus_parse::Scrape) -> bool,
) -> prometheus_parse::Scrape {
    let t = Instant::now();
    loop {
        let s = scrape(addr).await;
        if f(&s) {
            return s;
        }
        assert!(t.elapsed() < DEADLINE, "{what}: {:?}", s.samples);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn scraped_metrics_follow_known_actions() {
    let dir = tempfile::tempdir().unwrap();
    let m = spawn(dir.path());
    let op = Client::with_credential(m.api, TOKENS[0].1);
    let s1 = Client::with_credential(m.api, TOKENS[1].1);
    let s2 = Client::with_credential(m.api, TOKENS[2].1);

    let s = scrape(m.metrics).await;
    assert_eq!(value(&s, "tessera_manager_generation", &[]), 1.0);
    assert_eq!(value(&s, "tessera_manager_committed_generation", &[]), 1.0);
    assert_eq!(
        value(&s, "tessera_manager_servers", &[("state", "up")]),
        2.0
    );
    assert_eq!(
        value(&s, "tessera_manager_servers", &[("state", "down")]),
        0.0
    );
    for status in ["401", "403"] {
        assert_eq!(
            value(
                &s,
                "tessera_manager_auth_failures_total",
                &[("status", status)]
            ),
            0.0
        );
    }
    assert_eq!(
        value(
            &s,
            "tessera_manager_extent_moves_total",
            &[("event", "started")]
        ),
        0.0
    );

    // A volume create bumps the generation; the publication waits for the servers' acks.
    let m2 = op
        .create_volume(&CreateVolumeRequest {
            name: "v".into(),
            size: 16 * MIB,
            block_size: None,
            extent_size: Some(8 * MIB),
            replicas: None,
            subsystem: "nqn.2026-11.dev.tessera:t".into(),
            nsid: None,
            hosts: Some(HostPolicy::Any),
        })
        .await
        .unwrap();
    assert_eq!(m2.generation, 2);
    let s = scrape(m.metrics).await;
    assert_eq!(value(&s, "tessera_manager_generation", &[]), 2.0);
    assert_eq!(
        value(
            &s,
            "tessera_manager_http_requests_total",
            &[
                ("route", "/v1/volumes"),
                ("method", "POST"),
                ("status", "200")
            ]
        ),
        1.0
    );
    s1.ack("s1", 2).await.unwrap();
    s2.ack("s2", 2).await.unwrap();
    scrape_until(m.metrics, "g2 committed", |s| {
        value(s, "tessera_manager_committed_generation", &[]) == 2.0
    })
    .await;

    // Bad credentials: none and unknown (401), a server speaking for another (403).
    let anon = Client::new(m.api);
    let forged = Client::with_credential(m.api, "bm90LWEtdG9rZW4tb2YtdGhpcy1jbHVzdGVy");
    assert_eq!(status_of(anon.status().await), 401);
    assert_eq!(status_of(forged.ack("s1", 2).await), 401);
    assert_eq!(status_of(s2.ack("s1", 2).await), 403);
    let s = scrape(m.metrics).await;
    assert_eq!(
        value(
            &s,
            "tessera_manager_auth_failures_total",
            &[("status", "401")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &s,
            "tessera_manager_auth_failures_total",
            &[("status", "403")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "tessera_manager_http_requests_total",
            &[("route", "/v1/ack"), ("status", "403")]
        ),
        1.0
    );

    // A mismatch report is counted by kind.
    s1.report(&ReportRequest {
        server: "s1".into(),
        kind: ReportKind::Behind,
        stamp: 3,
        current: 2,
        count: 5,
    })
    .await
    .unwrap();
    let s = scrape(m.metrics).await;
    assert_eq!(
        value(
            &s,
            "tessera_manager_mismatch_reports_total",
            &[("kind", "behind")]
        ),
        5.0
    );

    // A server's own watch stream is counted while it is open.
    let mut watch = Box::pin(s1.watch(Role::Server("s1".into()), 0));
    let first = tokio::time::timeout(DEADLINE, watch.next()).await.unwrap();
    assert!(matches!(first, Some(Ok(_))), "{first:?}");
    scrape_until(m.metrics, "one server stream", |s| {
        value(s, "tessera_manager_watch_streams", &[("kind", "server")]) == 1.0
    })
    .await;

    // A move: started, then (the owner's move-ready) switched, which waits in phase 1a for the
    // owner's ack; then finished.
    let owner = m2.owner("v", 0).unwrap().server.clone();
    let (owner_c, other, other_c) = if owner == "s1" {
        (&s1, "s2", &s2)
    } else {
        (&s2, "s1", &s1)
    };
    let m3 = op.move_extent("v", 0, other).await.unwrap();
    owner_c.ack(&owner, m3.generation).await.unwrap();
    other_c.ack(other, m3.generation).await.unwrap();
    let s = scrape_until(m.metrics, "g3 committed", |s| {
        value(s, "tessera_manager_committed_generation", &[]) == 3.0
    })
    .await;
    assert_eq!(
        value(
            &s,
            "tessera_manager_extent_moves_total",
            &[("event", "started")]
        ),
        1.0
    );
    owner_c
        .move_ready(&MoveReadyRequest {
            server: owner.clone(),
            volume: "v".into(),
            extent: 0,
            generation: m3.generation,
        })
        .await
        .unwrap();
    let s = scrape(m.metrics).await;
    assert_eq!(value(&s, "tessera_manager_generation", &[]), 4.0);
    assert_eq!(
        value(
            &s,
            "tessera_manager_publication_in_progress",
            &[("phase", "1a")]
        ),
        1.0
    );
    assert_eq!(value(&s, "tessera_manager_acks_pending", &[]), 1.0);
    assert_eq!(
        value(
            &s,
            "tessera_manager_extent_moves_total",
            &[("event", "finished")]
        ),
        1.0
    );
    owner_c.ack(&owner, 4).await.unwrap();
    other_c.ack(other, 4).await.unwrap();
    let s = scrape_until(m.metrics, "g4 committed", |s| {
        value(s, "tessera_manager_committed_generation", &[]) == 4.0
    })
    .await;
    assert_eq!(
        value(
            &s,
            "tessera_manager_publication_in_progress",
            &[("phase", "1a")]
        ),
        0.0
    );
    assert_eq!(value(&s, "tessera_manager_acks_pending", &[]), 0.0);
    assert_eq!(
        value(
            &s,
            "tessera_manager_extent_moves_total",
            &[("event", "aborted")]
        ),
        0.0
    );
    // Every metric the Grafana dashboard queries exists.
    let dash = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/grafana/tessera-manager.json"),
    )
    .expect("dist/grafana/tessera-manager.json");
    let names: std::collections::BTreeSet<String> = dash
        .match_indices("tessera_manager_")
        .map(|(i, _)| {
            dash[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect();
    assert!(names.len() >= 8, "{names:?}");
    for n in &names {
        assert!(
            s.samples.iter().any(|x| &x.metric == n),
            "the dashboard queries {n}, which the manager does not export"
        );
    }
    drop(watch);
}

/// An explicit metrics address that cannot be bound (here: the first manager's) stops the
/// start with a message that names it.
#[test]
fn an_explicit_metrics_address_must_bind() {
    let dir = tempfile::tempdir().unwrap();
    let m = spawn(dir.path());
    let dir2 = tempfile::tempdir().unwrap();
    let plain = "servers:\n  - id: s1\n    portal: 127.0.0.1:24420\n    internal: 127.0.0.1:24430\n    \
                 pool: 256MiB\nsubsystems: []\n";
    std::fs::write(dir2.path().join("cluster.yaml"), plain).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tessera-manager"))
        .arg("--config")
        .arg(dir2.path().join("cluster.yaml"))
        .arg("--data-dir")
        .arg(dir2.path().join("data"))
        .args(["--listen", "127.0.0.1:0"])
        .arg("--metrics")
        .arg(m.metrics.to_string())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("cannot listen for metrics on {}", m.metrics)),
        "{err}"
    );
}
