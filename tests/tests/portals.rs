//! Portals: a target with an internal (server-to-server) portal serves internal subsystems only
//! there and host subsystems only on its host portals; discovery lists host portals and host
//! subsystems only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use codec::nvme::Status;
use codec::nvme::fabrics::connect_data_off;
use codec::nvme::log::subtype;
use tessera::initiator::{ControllerOptions, InitiatorError, discover};
use tessera::subsystem::namespace::Namespace;
use tessera::subsystem::volume::LocalVolume;
use tessera::subsystem::{HostPolicy, Registry, Subsystem};
use tessera::transport::TransportConfig;
use tessera_tests::*;

const INTERNAL: &str = "nqn.2026-11.dev.tessera:internal:s1";
/// A host that names itself like a server.
const SERVER_HOST: &str = "nqn.2026-11.dev.tessera:server:s2";

fn ram_ns(nsid: u32, id: u8) -> Arc<Namespace> {
    let backend = hw::open(&hw::BackendSpec::Ram {
        size: 1 << 20,
        preallocate: false,
    })
    .unwrap();
    Arc::new(Namespace::new(
        nsid,
        512,
        [id; 16],
        [id; 16],
        Arc::new(LocalVolume::new(backend)),
    ))
}

/// A host subsystem ([`SUBNQN`], any host) and an internal one ([`INTERNAL`], any host: the
/// portal is what keeps hosts out here) on two listeners.
async fn target() -> TestTarget {
    let host = Subsystem::new(
        SUBNQN.to_string(),
        "HOST0001".to_string(),
        "Tessera".to_string(),
        HostPolicy::Any,
        BTreeMap::from([(1, ram_ns(1, 1))]),
    );
    let internal = Subsystem::new(
        INTERNAL.to_string(),
        "INTERNAL0001".to_string(),
        "Tessera internal".to_string(),
        HostPolicy::Any,
        BTreeMap::from([(1, ram_ns(1, 2))]),
    )
    .into_internal();
    let registry = Arc::new(Registry::new(vec![host, internal], STANDALONE_GENERATION));
    TestTarget::start_registry(registry, TransportConfig::default(), 2).await
}

async fn refused(addr: SocketAddr, subnqn: &str) {
    match connect_as(addr, subnqn, SERVER_HOST, &ctrl_opts()).await {
        Err(InitiatorError::ConnectRejected(r)) => {
            assert_status(r.status, Status::CONNECT_INVALID_PARAMETERS, Some(true));
            assert_eq!(
                (r.iattr, usize::from(r.ipo)),
                (1, connect_data_off::SUBNQN),
                "{subnqn} at {addr}: an unknown subsystem there"
            );
        }
        Err(e) => panic!("{subnqn} at {addr}: expected a Connect rejection, got {e}"),
        Ok(_) => panic!("{subnqn} at {addr}: served on the wrong portal"),
    }
}

async fn discovered(addr: SocketAddr) -> Vec<(String, String)> {
    let log = within(
        "discover",
        discover(addr, SERVER_HOST, &ControllerOptions::discovery()),
    )
    .await
    .expect("discovery");
    log.entries
        .iter()
        .map(|e| {
            let kind = if e.subtype == subtype::NVME {
                e.subnqn.clone()
            } else {
                "discovery".to_string()
            };
            (kind, format!("{}:{}", e.traddr, e.trsvcid))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_portal_serves_internal_subsystems_only() {
    let t = target().await;
    let (host_portal, internal_portal) = (t.addrs()[0], t.addrs()[1]);

    // Without an internal portal declared (a standalone target) every portal serves
    // everything, but discovery never advertises an internal subsystem.
    for addr in [host_portal, internal_portal] {
        let c = connect_as(addr, SUBNQN, SERVER_HOST, &ctrl_opts())
            .await
            .expect("host subsystem");
        drop(c);
        let log = discovered(addr).await;
        assert!(
            log.iter().all(|(k, _)| k != INTERNAL),
            "internal subsystem advertised: {log:?}"
        );
    }

    t.registry().add_internal_portal(internal_portal);
    // Host subsystems: host portal only.
    let c = connect_as(host_portal, SUBNQN, SERVER_HOST, &ctrl_opts())
        .await
        .expect("host subsystem on the host portal");
    drop(c);
    refused(internal_portal, SUBNQN).await;
    // Internal subsystems: internal portal only, whatever the host calls itself.
    refused(host_portal, INTERNAL).await;
    let c = connect_as(internal_portal, INTERNAL, SERVER_HOST, &ctrl_opts())
        .await
        .expect("internal subsystem on the internal portal");
    drop(c);

    // Discovery, asked on either portal, lists the host portal and the host subsystem only.
    let want = vec![
        ("discovery".to_string(), host_portal.to_string()),
        (SUBNQN.to_string(), host_portal.to_string()),
    ];
    for addr in [host_portal, internal_portal] {
        assert_eq!(discovered(addr).await, want, "discovery asked at {addr}");
    }
    assert_eq!(t.registry().host_listeners(), vec![host_portal]);
    t.stop().await;
}

/// What a cluster server's internal portal is meant to run: the internal subsystem requires
/// every peer to authenticate with its own secret, and proves its own (bidirectional, ffdhe2048).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_subsystem_with_per_server_secrets() {
    use codec::nvme::fabrics::auth::Secret;
    use tessera::initiator::DhchapSecrets;
    use tessera::subsystem::AuthPolicy;

    let t = target().await;
    let internal_portal = t.addrs()[1];
    t.registry().add_internal_portal(internal_portal);
    let s1 = Secret::generate(None, 32).unwrap();
    let s2 = Secret::generate(None, 32).unwrap();
    let sub = t.registry().subsystem(INTERNAL).unwrap();
    sub.set_auth(AuthPolicy::internal(
        &s1,
        [(SERVER_HOST.to_string(), s2.clone())],
    ));

    let with = |host: &Secret, ctrl: &Secret| {
        let mut o = ctrl_opts();
        o.dhchap = Some(Arc::new(DhchapSecrets {
            host: host.clone(),
            ctrl: Some(ctrl.clone()),
        }));
        o
    };
    let c = connect_as(internal_portal, INTERNAL, SERVER_HOST, &with(&s2, &s1))
        .await
        .expect("a peer with its secret");
    let q = io_queues(&c, 1).await.remove(0);
    drop(q);
    drop(c);
    // No secret, the wrong one, a server the policy does not list, the wrong controller.
    let r = connect_as(internal_portal, INTERNAL, SERVER_HOST, &ctrl_opts()).await;
    assert!(
        matches!(r, Err(InitiatorError::AuthRequired)),
        "{:?}",
        r.err()
    );
    let r = connect_as(internal_portal, INTERNAL, SERVER_HOST, &with(&s1, &s1)).await;
    assert!(
        matches!(r, Err(InitiatorError::AuthFailed { .. })),
        "{:?}",
        r.err()
    );
    let r = connect_as(internal_portal, INTERNAL, HOSTNQN, &with(&s2, &s1)).await;
    assert!(
        matches!(&r, Err(InitiatorError::ConnectRejected(rej)) if rej.status.same_code(Status::CONNECT_INVALID_HOST)),
        "{:?}",
        r.err()
    );
    let r = connect_as(internal_portal, INTERNAL, SERVER_HOST, &with(&s2, &s2)).await;
    assert!(
        matches!(r, Err(InitiatorError::AuthFailed { .. })),
        "{:?}",
        r.err()
    );
    t.stop().await;
}
