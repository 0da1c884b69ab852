//! Authentication and limits of the control API, over loopback with an in-process manager:
//! forged acks and move-ready (issue: two HTTP calls lose an acknowledged write), each role's
//! permissions, watch streams that cannot lock a server out, the non-loopback refusal, and the
//! phase 1a bound.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use manager::api::{
    AckRequest, CopiesDivergedRequest, CreateVolumeRequest, MoveReadyRequest, ReportKind,
    ReportRequest, Role,
};
use manager::client::{Client, ClientError};
use manager::map::ServerState;
use manager::server::{Config, Running, SERVER_WATCHES_MAX, WATCHES_PER_CALLER_MAX, start};

const NQN: &str = "nqn.2026-11.dev.tessera:t";
/// Bounds a hang only; generous for a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(30);

mod common;
use common::{CLUSTER, MIB, TOKENS, write_cluster, write_key};

fn setup(dir: &Path, cluster: &str) -> Config {
    write_cluster(dir, cluster);
    Config::new(
        dir.join("cluster.yaml"),
        dir.join("data"),
        "127.0.0.1:0".parse().unwrap(),
    )
}

struct Clients {
    anon: Client,
    op: Client,
    s1: Client,
    s2: Client,
}

fn clients(r: &Running) -> Clients {
    let a = r.local_addr();
    Clients {
        anon: Client::new(a),
        op: Client::with_credential(a, TOKENS[0].1),
        s1: Client::with_credential(a, TOKENS[1].1),
        s2: Client::with_credential(a, TOKENS[2].1),
    }
}

fn http_err<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, String) {
    match r {
        Err(ClientError::Http {
            status, message, ..
        }) => (status, message),
        other => panic!("expected an HTTP error, got {other:?}"),
    }
}

fn volume(name: &str) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        size: 16 * MIB,
        block_size: None,
        extent_size: Some(8 * MIB),
        replicas: None,
        subsystem: NQN.into(),
        nsid: None,
        hosts: None,
    }
}

/// Polls status until `f` holds (bounded by [`DEADLINE`]).
async fn wait_until(c: &Client, what: &str, f: impl Fn(&manager::api::Status) -> bool) {
    let start = std::time::Instant::now();
    loop {
        let s = c.status().await.unwrap();
        if f(&s) {
            return;
        }
        assert!(start.elapsed() < DEADLINE, "{what}: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Both servers ack `g` (each with its own credential).
async fn ack_both(c: &Clients, g: u64) {
    c.s1.ack("s1", g).await.unwrap();
    c.s2.ack("s2", g).await.unwrap();
}

#[tokio::test]
async fn every_call_needs_a_credential_and_each_role_has_its_rights() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(&setup(dir.path(), CLUSTER)).await.unwrap();
    let c = clients(&r);

    // No credential, or an unknown one: 401 on every endpoint, reads included.
    let (status, message) = http_err(c.anon.status().await);
    assert_eq!(status, 401);
    assert!(message.starts_with("missing credential"), "{message}");
    assert_eq!(http_err(c.anon.map(&Role::Client).await).0, 401);
    assert_eq!(http_err(c.anon.ack("s1", 1).await).0, 401);
    assert_eq!(http_err(c.anon.create_volume(&volume("v")).await).0, 401);
    assert_eq!(http_err(c.anon.clear_lost("v", None).await).0, 401);
    let wrong = Client::with_credential(r.local_addr(), "bm90LWEtdG9rZW4tb2YtdGhpcy1jbHVzdGVy");
    let (status, message) = http_err(wrong.status().await);
    assert_eq!(status, 401);
    assert!(message.starts_with("unknown credential"), "{message}");
    let mut w = Box::pin(c.anon.watch(Role::server("s1"), 0));
    match tokio::time::timeout(DEADLINE, w.next()).await.unwrap() {
        Some(Err(ClientError::Http { status: 401, .. })) => {}
        other => panic!("an anonymous watch got {other:?}"),
    }
    drop(w);

    // Servers read, but do not change the cluster.
    assert_eq!(c.s1.status().await.unwrap().generation, 1);
    assert_eq!(c.s2.map(&Role::server("s2")).await.unwrap().generation, 1);
    let (status, message) = http_err(c.s1.create_volume(&volume("v")).await);
    assert_eq!(status, 403);
    assert_eq!(
        message,
        "server s1's credential cannot create volumes (expected the operator credential)"
    );
    assert_eq!(http_err(c.s1.reload().await).0, 403);
    assert_eq!(http_err(c.s2.move_extent("v", 0, "s1").await).0, 403);
    // A copy move (naming `from`) is the same operator-only route.
    assert_eq!(http_err(c.s2.move_copy("v", 0, "s2", "s1").await).0, 403);
    assert_eq!(http_err(c.s1.map(&Role::server("s2")).await).0, 403);

    // The operator changes the cluster; servers ack for themselves only.
    let m = c.op.create_volume(&volume("v")).await.unwrap();
    assert_eq!(m.generation, 2);
    let (status, message) = http_err(c.s1.ack("s2", 2).await);
    assert_eq!(status, 403);
    assert_eq!(
        message,
        "server s1's credential cannot send a ack for server s2 (expected server s2's own credential)"
    );
    let (status, message) = http_err(c.op.ack("s1", 2).await);
    assert_eq!(status, 403);
    assert!(
        message.starts_with("the operator credential cannot"),
        "{message}"
    );
    let report = ReportRequest {
        server: "s2".into(),
        kind: ReportKind::Stale,
        stamp: 1,
        current: 2,
        count: 1,
    };
    assert_eq!(http_err(c.s1.report(&report).await).0, 403);
    // A copies-diverged report only in the sender's own name (it makes copies rebuild).
    let diverged = CopiesDivergedRequest {
        server: "s2".into(),
        volume: "v".into(),
        extent: 0,
        generation: 2,
    };
    assert_eq!(http_err(c.anon.copies_diverged(&diverged).await).0, 401);
    let (status, message) = http_err(c.s1.copies_diverged(&diverged).await);
    assert_eq!(status, 403);
    assert_eq!(
        message,
        "server s1's credential cannot send a copies-diverged report for server s2 (expected \
         server s2's own credential)"
    );
    assert_eq!(http_err(c.op.copies_diverged(&diverged).await).0, 403);
    c.s2.report(&report).await.unwrap();
    assert_eq!(c.op.status().await.unwrap().reports.stale, 1);
    ack_both(&c, 2).await;
    wait_until(&c.op, "g2 committed", |s| s.committed == 2).await;

    // Clearing lost marks is the operator's; with nothing marked the map is unchanged.
    let (status, message) = http_err(c.s1.clear_lost("v", None).await);
    assert_eq!(status, 403);
    assert_eq!(
        message,
        "server s1's credential cannot clear lost marks (expected the operator credential)"
    );
    assert_eq!(c.op.clear_lost("v", Some(0)).await.unwrap().generation, 2);
    assert_eq!(http_err(c.op.clear_lost("v", Some(999)).await).0, 404);
    assert_eq!(http_err(c.op.clear_lost("nope", None).await).0, 404);

    // A raw forged ack with a server's name in the body and another's token: refused, not counted.
    let raw = reqwest::Client::new()
        .post(format!("http://{}/v1/ack", r.local_addr()))
        .bearer_auth(TOKENS[1].1)
        .json(&AckRequest {
            server: "s2".into(),
            generation: 2,
        })
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 403);
    assert!(
        raw.headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("json")
    );
    r.shutdown().await.unwrap();
}

/// Issue finding 2: with the old owner hung, a forged move-ready and a forged ack in its name
/// must not switch the extent (the owner never fenced it).
#[tokio::test]
async fn forged_move_ready_and_ack_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = setup(dir.path(), CLUSTER);
    config.old_owner_timeout_ms = 0; // this test is not about the bound
    let r = start(&config).await.unwrap();
    let c = clients(&r);
    let m2 = c.op.create_volume(&volume("v")).await.unwrap();
    ack_both(&c, 2).await;
    let owner = m2.owner("v", 0).unwrap().server.clone();
    let (owner_c, other, other_c) = if owner == "s1" {
        (&c.s1, "s2", &c.s2)
    } else {
        (&c.s2, "s1", &c.s1)
    };
    let m3 = c.op.move_extent("v", 0, other).await.unwrap();
    ack_both(&c, 3).await;
    wait_until(&c.op, "g3 committed", |s| s.committed == 3).await;

    // The destination (or anyone but the owner) forges the owner's move-ready: refused.
    let forged = MoveReadyRequest {
        server: owner.clone(),
        volume: "v".into(),
        extent: 0,
        generation: m3.generation,
    };
    assert_eq!(http_err(other_c.move_ready(&forged).await).0, 403);
    assert_eq!(http_err(c.op.move_ready(&forged).await).0, 403);
    assert_eq!(http_err(c.anon.move_ready(&forged).await).0, 401);
    assert_eq!(
        c.op.status().await.unwrap().generation,
        3,
        "nothing switched"
    );

    // The owner's own move-ready switches; the owner then hangs. A forged ack in its name for
    // the switch map must not release phase 1a.
    owner_c.move_ready(&forged).await.unwrap();
    wait_until(&c.op, "g4 in phase 1a", |s| {
        s.publishing
            .as_ref()
            .is_some_and(|p| p.generation == 4 && p.phase == "1a")
    })
    .await;
    assert_eq!(http_err(other_c.ack(&owner, 4).await).0, 403);
    assert_eq!(http_err(c.op.ack(&owner, 4).await).0, 403);
    assert_eq!(http_err(c.anon.ack(&owner, 4).await).0, 401);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = c.op.status().await.unwrap();
    let p = s.publishing.unwrap();
    assert_eq!((p.generation, p.phase.as_str()), (4, "1a"), "still waiting");
    assert_eq!(p.waiting, std::slice::from_ref(&owner));
    assert_eq!(s.committed, 3);
    // The owner's own ack releases it.
    owner_c.ack(&owner, 4).await.unwrap();
    other_c.ack(other, 4).await.unwrap();
    wait_until(&c.op, "g4 committed", |s| s.committed == 4).await;
    r.shutdown().await.unwrap();
}

/// Issue finding 5: many held watch streams from one local process cannot keep a server from
/// its map updates.
#[tokio::test]
async fn held_watch_streams_cannot_lock_a_server_out() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(&setup(dir.path(), CLUSTER)).await.unwrap();
    let c = clients(&r);
    let url = format!("http://{}/v1/watch", r.local_addr());
    let http = reqwest::Client::new();
    // A hostile process with a credential (here s2's) holds as many streams as it may...
    let mut held = Vec::new();
    for _ in 0..WATCHES_PER_CALLER_MAX {
        let resp = http
            .get(&url)
            .bearer_auth(TOKENS[2].1)
            .query(&[("role", "client")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        held.push(resp);
    }
    // ... and is refused the next one.
    let resp = http
        .get(&url)
        .bearer_auth(TOKENS[2].1)
        .query(&[("role", "client")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    let body = resp.text().await.unwrap();
    assert!(body.contains("already has 16 watch streams"), "{body}");
    // Without a credential it gets nothing at all.
    for _ in 0..3 {
        let resp = http
            .get(&url)
            .query(&[("role", "client")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401);
    }
    // Server s1 still gets its stream and every new map.
    let mut w = Box::pin(c.s1.watch(Role::server("s1"), 0));
    let first = tokio::time::timeout(DEADLINE, w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.generation, 1);
    c.op.create_volume(&volume("v")).await.unwrap();
    let next = tokio::time::timeout(DEADLINE, w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.generation, 2);

    // A server's own streams have a reserved path: a new one ends its oldest (a restarted
    // server replaces the stream its previous life left behind).
    let mut own = Vec::new();
    for _ in 0..SERVER_WATCHES_MAX {
        let resp = http
            .get(&url)
            .bearer_auth(TOKENS[2].1)
            .query(&[("role", "server"), ("server", "s2"), ("after", "0")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        own.push(resp);
    }
    let newest = http
        .get(&url)
        .bearer_auth(TOKENS[2].1)
        .query(&[("role", "server"), ("server", "s2"), ("after", "0")])
        .send()
        .await
        .unwrap();
    assert_eq!(newest.status().as_u16(), 200);
    // The oldest ends after the map it had been sent.
    let oldest = own.remove(0);
    let text = tokio::time::timeout(DEADLINE, oldest.text())
        .await
        .expect("the oldest stream of s2 ends")
        .unwrap();
    assert_eq!(
        text.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "{text}"
    );
    drop(held);
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn credentials_are_required_off_loopback_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    // No credentials and a non-loopback address: refused before anything is bound or stored.
    let plain = CLUSTER
        .replace("    credential: keys/s1.key\n", "")
        .replace("    credential: keys/s2.key\n", "")
        .replace("credentials:\n  operator: keys/operator.key\n", "");
    let mut config = setup(dir.path(), &plain);
    config.listen = "0.0.0.0:0".parse().unwrap();
    let e = start(&config).await.err().unwrap().to_string();
    assert!(
        e.starts_with("--listen 0.0.0.0:0 is not a loopback address and")
            && e.contains("configures no credentials"),
        "{e}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "a refused start left a store"
    );
    // A group-readable key file is refused with its fix.
    let config = setup(dir.path(), CLUSTER);
    write_key(&dir.path().join("keys/s2.key"), TOKENS[2].1, 0o640);
    let e = start(&config).await.err().unwrap().to_string();
    assert!(
        e.contains("keys/s2.key") && e.contains("mode 0640") && e.contains("chmod 600"),
        "{e}"
    );
    // Two identities with one token.
    write_key(&dir.path().join("keys/s2.key"), TOKENS[1].1, 0o600);
    let e = start(&config).await.err().unwrap().to_string();
    assert!(
        e.contains("server s2's credential holds server s1's token"),
        "{e}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "a refused start left a store"
    );
}

/// Phase 1a is bounded: an old owner that never acks the switch is marked down in a new
/// generation, and the switch commits without it.
#[tokio::test]
async fn a_hung_old_owner_is_marked_down_after_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = setup(dir.path(), CLUSTER);
    config.old_owner_timeout_ms = 1_000;
    let r = start(&config).await.unwrap();
    let c = clients(&r);
    let m2 = c.op.create_volume(&volume("v")).await.unwrap();
    ack_both(&c, 2).await;
    let owner = m2.owner("v", 0).unwrap().server.clone();
    let (owner_c, other, other_c) = if owner == "s1" {
        (&c.s1, "s2", &c.s2)
    } else {
        (&c.s2, "s1", &c.s1)
    };
    c.op.move_extent("v", 0, other).await.unwrap();
    ack_both(&c, 3).await;
    wait_until(&c.op, "g3 committed", |s| s.committed == 3).await;
    owner_c
        .move_ready(&MoveReadyRequest {
            server: owner.clone(),
            volume: "v".into(),
            extent: 0,
            generation: 3,
        })
        .await
        .unwrap();
    // The owner hangs: no ack of g4. After the bound the manager marks it down (g5).
    wait_until(&c.op, "g5 made", |s| s.generation == 5).await;
    // The other server acks what it has been sent; both generations commit without the owner.
    other_c.ack(other, 5).await.unwrap();
    wait_until(&c.op, "g5 committed", |s| s.committed == 5).await;
    let head = c.op.map(&Role::Client).await.unwrap();
    assert_eq!(head.server(&owner).unwrap().state, ServerState::Down);
    assert_eq!(
        head.owner("v", 0).unwrap().server,
        other,
        "the switch went on"
    );
    // The operator brings it back once it has caught up.
    let m6 =
        c.op.set_server_state(&owner, ServerState::Up)
            .await
            .unwrap();
    assert_eq!(m6.server(&owner).unwrap().state, ServerState::Up);
    assert_eq!(
        http_err(owner_c.set_server_state(&owner, ServerState::Up).await).0,
        403
    );
    r.shutdown().await.unwrap();
}

/// Without credentials (loopback only), one peer address gets at most
/// `WATCHES_PER_CALLER_MAX` client streams, and a server's own stream still gets through.
#[tokio::test]
async fn without_credentials_watch_streams_are_limited_per_peer() {
    let dir = tempfile::tempdir().unwrap();
    let plain = CLUSTER
        .replace("    credential: keys/s1.key\n", "")
        .replace("    credential: keys/s2.key\n", "")
        .replace("credentials:\n  operator: keys/operator.key\n", "");
    let r = start(&setup(dir.path(), &plain)).await.unwrap();
    let url = format!("http://{}/v1/watch", r.local_addr());
    let http = reqwest::Client::new();
    let mut held = Vec::new();
    for _ in 0..WATCHES_PER_CALLER_MAX {
        let resp = http
            .get(&url)
            .query(&[("role", "client")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        held.push(resp);
    }
    let resp = http
        .get(&url)
        .query(&[("role", "client")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    let c = Client::new(r.local_addr());
    let mut w = Box::pin(c.watch(Role::server("s1"), 0));
    let first = tokio::time::timeout(DEADLINE, w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.generation, 1);
    c.create_volume(&volume("v")).await.unwrap();
    let next = tokio::time::timeout(DEADLINE, w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.generation, 2);
    drop(held);
    r.shutdown().await.unwrap();
}

/// A reload switches to the tokens in the files: a rotated token replaces the old one.
#[tokio::test]
async fn a_reload_rotates_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(&setup(dir.path(), CLUSTER)).await.unwrap();
    let c = clients(&r);
    let rotated = "cm90YXRlZC1zMS10b2tlbi1mb3ItdGVzdHM=";
    write_key(&dir.path().join("keys/s1.key"), rotated, 0o600);
    assert_eq!(
        c.s1.status().await.unwrap().generation,
        1,
        "not before the reload"
    );
    // A reload whose files cannot be used is refused and changes nothing.
    write_key(&dir.path().join("keys/s2.key"), TOKENS[2].1, 0o644);
    let (status, message) = http_err(c.op.reload().await);
    assert_eq!(status, 400);
    assert!(message.contains("chmod 600"), "{message}");
    assert_eq!(c.s1.status().await.unwrap().generation, 1);
    write_key(&dir.path().join("keys/s2.key"), TOKENS[2].1, 0o600);
    assert_eq!(c.op.reload().await.unwrap().generation, 1);
    assert_eq!(
        http_err(c.s1.status().await).0,
        401,
        "the old token is gone"
    );
    let s1 = Client::with_credential(r.local_addr(), rotated);
    s1.ack("s1", 1).await.unwrap();
    c.s2.ack("s2", 1).await.unwrap();
    r.shutdown().await.unwrap();
}
