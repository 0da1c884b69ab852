//! The control API over loopback: an in-process manager on 127.0.0.1:0 and `manager::client`.
//! Storage servers are simulated by `client.ack` calls and server-role watches.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use manager::api::{
    AddServerRequest, CreateVolumeRequest, MoveReadyRequest, ReportKind, ReportRequest, Role,
};
use manager::client::{Client, ClientError};
use manager::map::{ClusterMap, HostPolicy};
use manager::server::{Config, Running, start};

const MIB: u64 = 1 << 20;
const NQN: &str = "nqn.2026-11.dev.tessera:t";

const CLUSTER: &str = "servers:
  - id: s1
    portal: 127.0.0.1:24420
    internal: 127.0.0.1:24430
    pool: 256MiB
  - id: s2
    portal: 127.0.0.1:24421
    internal: 127.0.0.1:24431
    pool: 256MiB
subsystems:
  - nqn: nqn.2026-11.dev.tessera:t
    allow_any_host: true
";

type Maps = Pin<Box<dyn Stream<Item = Result<ClusterMap, ClientError>> + Send>>;

/// The next map within `ms`, or `None`.
async fn next_within(s: &mut Maps, ms: u64) -> Option<ClusterMap> {
    match tokio::time::timeout(Duration::from_millis(ms), s.next()).await {
        Ok(Some(Ok(m))) => Some(m),
        Ok(Some(Err(e))) => panic!("watch error: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => None,
    }
}

/// How long a test waits for a map that must arrive: it bounds a hang only, so it is generous for
/// a loaded 2-core machine. (The short waits elsewhere check that nothing arrives, which load
/// cannot turn into a false failure.)
const MAP_DEADLINE_MS: u64 = 30_000;

async fn expect_gen(s: &mut Maps, g: u64) -> ClusterMap {
    let m = next_within(s, MAP_DEADLINE_MS)
        .await
        .unwrap_or_else(|| panic!("no map {g} on the watch"));
    assert_eq!(m.generation, g);
    m
}

async fn manager(dir: &std::path::Path) -> (Running, Client) {
    let cluster_file = dir.join("cluster.yaml");
    if !cluster_file.exists() {
        std::fs::write(&cluster_file, CLUSTER).unwrap();
    }
    let running = start(&Config {
        cluster_file,
        data_dir: dir.join("data"),
        listen: "127.0.0.1:0".parse().unwrap(),
        old_owner_timeout_ms: manager::server::OLD_OWNER_TIMEOUT_MS,
    })
    .await
    .unwrap();
    let client = Client::new(running.local_addr());
    (running, client)
}

fn http_err(e: ClientError) -> (u16, String) {
    match e {
        ClientError::Http {
            status, message, ..
        } => (status, message),
        other => panic!("expected an HTTP error, got {other}"),
    }
}

fn create(name: &str, size: u64) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        size,
        block_size: None,
        extent_size: Some(8 * MIB),
        replicas: None,
        subsystem: NQN.into(),
        nsid: None,
        hosts: None,
    }
}

#[tokio::test]
async fn changes_are_published_in_two_phases() {
    let dir = tempfile::tempdir().unwrap();
    let (running, c) = manager(dir.path()).await;

    let st = c.status().await.unwrap();
    assert_eq!((st.generation, st.committed), (1, 1));
    let m1 = c.map(&Role::Client).await.unwrap();
    assert_eq!(m1.generation, 1);
    assert_eq!(m1.servers.len(), 2);

    let mut clients: Maps = Box::pin(c.watch(Role::Client, 0));
    let mut w1: Maps = Box::pin(c.watch(Role::server("s1"), 1));
    let mut w2: Maps = Box::pin(c.watch(Role::server("s2"), 1));
    // First line: the current map, because it is newer than `after`.
    expect_gen(&mut clients, 1).await;

    // Create: no owner changes, so phase 1b at once; clients wait for both acks.
    let m2 = c.create_volume(&create("v", 24 * MIB)).await.unwrap();
    assert_eq!(m2.generation, 2);
    assert_eq!(m2.volume("v").unwrap().extents.len(), 3);
    expect_gen(&mut w1, 2).await;
    expect_gen(&mut w2, 2).await;
    assert!(next_within(&mut clients, 300).await.is_none());
    assert_eq!(c.map(&Role::Client).await.unwrap().generation, 1);
    c.ack("s1", 2).await.unwrap();
    assert!(
        next_within(&mut clients, 300).await.is_none(),
        "s2 has not acked"
    );
    c.ack("s2", 2).await.unwrap();
    c.ack("s2", 2).await.unwrap(); // idempotent
    expect_gen(&mut clients, 2).await;
    assert_eq!(c.map(&Role::Client).await.unwrap(), m2);

    // Refusals come back as 4xx with the reason, and the generation does not move.
    assert_eq!(
        http_err(c.create_volume(&create("v", MIB)).await.unwrap_err()),
        (409, "volume \"v\" already exists".to_owned())
    );
    assert_eq!(
        http_err(c.resize_volume("v", 8 * MIB).await.unwrap_err()),
        (
            400,
            "volume \"v\" cannot shrink from 25165824 to 8388608 bytes (only growing is supported)"
                .to_owned()
        )
    );
    assert_eq!(
        http_err(c.resize_volume("nope", 8 * MIB).await.unwrap_err()),
        (404, "unknown volume \"nope\"".to_owned())
    );
    assert_eq!(
        http_err(c.create_volume(&create("w", 1000)).await.unwrap_err()),
        (
            400,
            "size 1000 bytes is not a multiple of the block size 512".to_owned()
        )
    );
    assert_eq!(
        http_err(c.move_extent("v", 7, "s2").await.unwrap_err()),
        (404, "volume \"v\" has no extent 7 (it has 3)".to_owned())
    );
    assert_eq!(c.status().await.unwrap().generation, 2);

    // Resize: g3.
    let m3 = c.resize_volume("v", 32 * MIB).await.unwrap();
    assert_eq!(
        (m3.generation, m3.volume("v").unwrap().extents.len()),
        (3, 4)
    );
    expect_gen(&mut w1, 3).await;
    expect_gen(&mut w2, 3).await;
    c.ack("s1", 3).await.unwrap();
    c.ack("s2", 3).await.unwrap();
    expect_gen(&mut clients, 3).await;

    // Start a move: g4 (ownership unchanged).
    let owner = m3.owner("v", 0).unwrap().server.clone();
    let other = if owner == "s1" { "s2" } else { "s1" };
    let (mut w_owner, mut w_other) = if owner == "s1" { (w1, w2) } else { (w2, w1) };
    let m4 = c.move_extent("v", 0, other).await.unwrap();
    assert_eq!(
        m4.volume("v").unwrap().extents[0]
            .moving
            .as_ref()
            .unwrap()
            .to
            .server,
        other
    );
    expect_gen(&mut w_owner, 4).await;
    expect_gen(&mut w_other, 4).await;
    c.ack("s1", 4).await.unwrap();
    c.ack("s2", 4).await.unwrap();
    expect_gen(&mut clients, 4).await;
    let st = c.status().await.unwrap();
    assert_eq!(st.moves.len(), 1);
    assert_eq!(
        (st.moves[0].from.as_str(), st.moves[0].to.as_str()),
        (owner.as_str(), other)
    );
    assert_eq!(
        http_err(c.move_extent("v", 0, other).await.unwrap_err()).0,
        409,
        "already moving"
    );

    // move-ready from a non-owner is refused; from the owner it switches: g5, phase 1a first.
    let ready = |server: &str| MoveReadyRequest {
        server: server.into(),
        volume: "v".into(),
        extent: 0,
        generation: 4,
    };
    assert_eq!(
        http_err(c.move_ready(&ready(other)).await.unwrap_err()).0,
        409
    );
    c.move_ready(&ready(&owner)).await.unwrap();
    let m5 = expect_gen(&mut w_owner, 5).await;
    assert_eq!(m5.owner("v", 0).unwrap().server, other);
    assert_eq!(
        c.map(&Role::server(owner.clone()))
            .await
            .unwrap()
            .generation,
        5
    );
    assert!(
        next_within(&mut w_other, 300).await.is_none(),
        "phase 1a: old owner only"
    );
    assert_eq!(c.map(&Role::server(other)).await.unwrap().generation, 4);
    let st = c.status().await.unwrap();
    let p = st.publishing.unwrap();
    assert_eq!(
        (p.generation, p.phase.as_str(), p.waiting),
        (5, "1a", vec![owner.clone()])
    );
    c.ack(&owner, 5).await.unwrap();
    expect_gen(&mut w_other, 5).await;
    assert!(
        next_within(&mut clients, 200).await.is_none(),
        "phase 1b: waiting for the other"
    );
    c.ack(other, 5).await.unwrap();
    expect_gen(&mut clients, 5).await;
    assert!(c.status().await.unwrap().moves.is_empty());

    // Add a server, then reload a file that declares it and a new volume: g6, g7.
    let m6 = c
        .add_server(&AddServerRequest {
            id: "s3".into(),
            portal: "127.0.0.1:24422".parse().unwrap(),
            internal: "127.0.0.1:24432".parse().unwrap(),
            pool_bytes: 256 * MIB,
            rack: None,
        })
        .await
        .unwrap();
    assert_eq!(m6.server("s3").unwrap().cntlid_min, 2001);
    // The unchanged file keeps what the API made (issue: "cannot remove server s3").
    assert_eq!(c.reload().await.unwrap().generation, 6);
    let text = format!(
        "{CLUSTER}volumes:\n  - name: v\n    size: 32MiB\n    extent_size: 8MiB\n    subsystem: {NQN}\n    nsid: 1\n  - name: w\n    size: 8MiB\n    subsystem: {NQN}\n    nsid: 2\n"
    )
    .replace(
        "subsystems:",
        "  - id: s3\n    portal: 127.0.0.1:24422\n    internal: 127.0.0.1:24432\n    pool: 256MiB\nsubsystems:",
    );
    std::fs::write(dir.path().join("cluster.yaml"), &text).unwrap();
    let m7 = c.reload().await.unwrap();
    assert_eq!(m7.generation, 7);
    assert!(m7.volume("w").is_some());
    // Reloading the same file again changes nothing.
    assert_eq!(c.reload().await.unwrap().generation, 7);
    std::fs::write(dir.path().join("cluster.yaml"), "servers: 3\n").unwrap();
    let (status, message) = http_err(c.reload().await.unwrap_err());
    assert_eq!(status, 400);
    assert!(message.ends_with("cluster.yaml:1:10: servers: wrong type: found integer 3 (expected a list of servers {id, portal, internal, pool})"), "{message}");

    running.shutdown().await.unwrap();
}

/// A planner's refusal names the manager's generation, machine-readable beside the message
/// (a primary whose rebuild-done report is refused learns from it which map settles the
/// report: docs/replication.md, "The end of a rebuild"); other errors do not.
#[tokio::test]
async fn a_refused_rebuild_done_report_names_the_managers_generation() {
    let dir = tempfile::tempdir().unwrap();
    let (running, c) = manager(dir.path()).await;
    let mut req = create("r", 8 * MIB);
    req.replicas = Some(2);
    let m = c.create_volume(&req).await.unwrap();
    let e = &m.volume("r").unwrap().extents[0];
    let primary = m.primary(e).unwrap().server.clone();
    let other = e
        .replicas
        .iter()
        .find(|r| r.server != primary)
        .unwrap()
        .server
        .clone();
    // From a copy that is not the primary: refused against the newest map, which is not
    // published yet (no server acked it): the generation is the manager's, not a published one.
    let done = manager::api::RebuildDoneRequest {
        primary: other.clone(),
        volume: "r".into(),
        extent: 0,
        server: primary.clone(),
        generation: m.generation,
    };
    match c.rebuild_done(&done).await {
        Err(ClientError::Http {
            status,
            message,
            generation,
        }) => {
            assert_eq!(status, 409, "{message}");
            assert!(message.contains("not the primary"), "{message}");
            assert_eq!(generation, Some(m.generation), "{message}");
        }
        other => panic!("rebuild-done from a copy: {other:?}"),
    }
    // The same over raw HTTP: the message kept for humans, the generation beside it.
    let http = reqwest::Client::new();
    let base = format!("http://{}", running.local_addr());
    let resp = http
        .post(format!("{base}/v1/rebuild-done"))
        .json(&done)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 409);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("not the primary"),
        "{v}"
    );
    assert_eq!(v["generation"].as_u64(), Some(m.generation), "{v}");
    // An error not decided by the planner names none (and a body without it still decodes).
    let unknown = manager::api::RebuildDoneRequest {
        primary: "s9".into(),
        ..done
    };
    match c.rebuild_done(&unknown).await {
        Err(ClientError::Http {
            status, generation, ..
        }) => assert_eq!((status, generation), (404, None)),
        other => panic!("rebuild-done from an unknown server: {other:?}"),
    }
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_requests_get_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (running, c) = manager(dir.path()).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", running.local_addr());
    let post = |path: &str, body: &'static str| {
        http.post(format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let check = |resp: reqwest::Response, status: u16, contains: &'static str| async move {
        assert_eq!(resp.status().as_u16(), status);
        let v: serde_json::Value = resp.json().await.unwrap();
        let msg = v["error"].as_str().unwrap().to_owned();
        assert!(msg.contains(contains), "{msg:?} lacks {contains:?}");
    };
    check(post("/v1/volumes", "{").await.unwrap(), 400, "EOF").await;
    check(
        post(
            "/v1/volumes",
            r#"{"name":"v","size":1,"subsystem":"x","colour":1}"#,
        )
        .await
        .unwrap(),
        422,
        "unknown field `colour`",
    )
    .await;
    check(
        post("/v1/ack", r#"{"server":"s9","generation":1}"#)
            .await
            .unwrap(),
        404,
        "unknown server \"s9\"",
    )
    .await;
    check(
        http.get(format!("{base}/v1/map?role=admin"))
            .send()
            .await
            .unwrap(),
        400,
        "unknown role \"admin\"",
    )
    .await;
    check(
        http.get(format!("{base}/v2/nothing")).send().await.unwrap(),
        404,
        "no such endpoint",
    )
    .await;
    check(
        http.get(format!("{base}/v1/volumes")).send().await.unwrap(),
        405,
        "method not allowed",
    )
    .await;
    let big: &'static str = Box::leak("x".repeat(100 << 10).into_boxed_str());
    check(post("/v1/volumes", big).await.unwrap(), 413, "").await;
    // A new subsystem needs hosts; with hosts it is created.
    let mut req = create("v", 8 * MIB);
    req.subsystem = "nqn.2026-11.dev.tessera:new".into();
    assert_eq!(http_err(c.create_volume(&req).await.unwrap_err()).0, 400);
    req.hosts = Some(HostPolicy::Only(vec!["nqn.2026-11.dev.tessera:h1".into()]));
    let m = c.create_volume(&req).await.unwrap();
    assert_eq!(
        m.subsystem("nqn.2026-11.dev.tessera:new").unwrap().hosts,
        req.hosts.unwrap()
    );

    // Reports are counted, and rate-limited per server.
    let report = ReportRequest {
        server: "s1".into(),
        kind: ReportKind::Stale,
        stamp: 1,
        current: 2,
        count: 3,
    };
    c.report(&report).await.unwrap();
    c.report(&ReportRequest {
        kind: ReportKind::Unstamped,
        count: 1,
        ..report.clone()
    })
    .await
    .unwrap();
    let st = c.status().await.unwrap();
    assert_eq!(
        (st.reports.stale, st.reports.behind, st.reports.unstamped),
        (3, 0, 1)
    );
    let mut limited = false;
    for _ in 0..manager::server::REPORTS_PER_SECOND_MAX {
        if let Err(e) = c.report(&report).await {
            assert_eq!(http_err(e).0, 429);
            limited = true;
            break;
        }
    }
    assert!(limited, "the 21st report within a second is refused");
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn watch_reconnects_after_a_restart_and_reports_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let (running, c) = manager(dir.path()).await;
    let addr = running.local_addr();
    let mut w: Maps = Box::pin(c.watch(Role::Client, 0));
    expect_gen(&mut w, 1).await;
    running.shutdown().await.unwrap();
    // While the manager is down the stream reports failed reconnects and goes on.
    match tokio::time::timeout(Duration::from_secs(5), w.next()).await {
        Ok(Some(Err(ClientError::Unreachable(_)))) => {}
        other => panic!("expected Unreachable, got {other:?}"),
    }
    // Restart on the same address and store; the change made there reaches the old stream.
    let running = start(&Config {
        cluster_file: dir.path().join("cluster.yaml"),
        data_dir: dir.path().join("data"),
        listen: addr,
        old_owner_timeout_ms: manager::server::OLD_OWNER_TIMEOUT_MS,
    })
    .await
    .unwrap();
    let m2 = c.create_volume(&create("v", 8 * MIB)).await.unwrap();
    c.ack("s1", m2.generation).await.unwrap();
    c.ack("s2", m2.generation).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), w.next()).await {
            Ok(Some(Ok(m))) => {
                assert_eq!(m.generation, 2);
                break;
            }
            Ok(Some(Err(ClientError::Unreachable(_)))) => {}
            other => panic!("expected generation 2, got {other:?}"),
        }
    }
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn unreachable_manager_is_a_typed_error() {
    // Bind then drop a listener to get a port nobody listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let e = Client::new(addr).status().await.unwrap_err();
    assert!(matches!(e, ClientError::Unreachable(_)), "{e}");
}
