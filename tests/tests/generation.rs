//! The map generation on the wire (docs/cluster-protocol.md, "The generation on the wire"): NVM I/O commands
//! stamped in CDW2/CDW3 are checked before they run. Equal runs; older is "stale map" (SCT 7h,
//! SC 80h) and newer "server behind" (SC 81h), both retryable with the server generation in CQE
//! DW0/DW1; unstamped commands are accepted from hosts and refused on internal connections;
//! every mismatch is counted in vendor log page C0h, and Identify advertises the check.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::cast_possible_truncation)]

use std::num::NonZeroU64;

use bytes::Bytes;
use codec::nvme::cmd::{DatasetManagement, DsmRange, Flush, IoCommand, Rw, WriteZeroes};
use codec::nvme::generation::cqe_generation;
use tessera::initiator::InitiatorError;
use tessera::transport::TransportConfig;
use tessera_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_stamps() {
    let t = TestTarget::start(STD_YAML).await;
    let (c, q) = connect_with_io(t.addr, SUBNQN).await;
    let g = c.generation_log().await.unwrap().current_generation;
    assert_eq!(g, STANDALONE_GENERATION);
    let d = blocks(1, 0, 8, 512);
    // Unstamped (0) and stamped with the server's generation: executed.
    q.write(NS_RAM512, 0, 512, d.clone(), false).await.unwrap();
    let s = q.with_generation(g);
    s.write(NS_RAM512, 0, 512, d.clone(), false).await.unwrap();
    assert_blocks(
        &s.read(NS_RAM512, 0, 8, 512).await.unwrap(),
        &d,
        0,
        512,
        "stamped read",
    );
    s.flush(NS_RAM512).await.unwrap();
    s.compare(NS_RAM512, 0, 512, d.clone()).await.unwrap();
    // Newer than the server: SCT 7h / SC 81h "server behind", retryable, generation in DW0/DW1.
    let done = submit_io(
        &q,
        &IoCommand::Read(Rw::new(NS_RAM512, 0, 1, g + 1)),
        None,
        512,
    )
    .await;
    let st = done.status();
    assert_eq!((st.sct(), st.sc()), (7, 0x81), "newer stamp: {st}");
    assert!(!st.dnr(), "server behind is retryable");
    assert_eq!(cqe_generation(&done.cqe), g);
    assert!(done.data.is_empty());
    // The cluster moves on: this server installs a generation whose high half is not zero.
    let newer: u64 = 0x0000_0001_0000_0005;
    t.registry().generation.install(newer);
    assert_eq!(c.generation_log().await.unwrap().current_generation, newer);
    let id = c.identify_controller_parsed().await.unwrap();
    assert_eq!(
        id.genchk.unwrap().generation,
        newer,
        "Identify advertises the current generation"
    );
    let before = c.generation_log().await.unwrap();
    // Every stamped command kind with the old generation: "stale map", DW0/DW1 = our generation,
    // and nothing executes (invariant 1).
    let other = blocks(2, 0, 8, 512);
    let stale = g;
    let cmds: Vec<(IoCommand, Option<Bytes>, u32)> = vec![
        (
            IoCommand::Read(Rw::new(NS_RAM512, 0, 8, stale)),
            None,
            8 * 512,
        ),
        (
            IoCommand::Write(Rw::new(NS_RAM512, 0, 8, stale)),
            Some(other.clone()),
            0,
        ),
        (
            IoCommand::Write(Rw::new(NS_RAM512, 0, 128, stale)),
            Some(blocks(3, 0, 128, 512)),
            0,
        ),
        (
            IoCommand::Compare(Rw::new(NS_RAM512, 0, 8, stale)),
            Some(other.clone()),
            0,
        ),
        (
            IoCommand::Flush(Flush {
                nsid: NS_RAM512,
                generation: NonZeroU64::new(stale),
            }),
            None,
            0,
        ),
        (
            IoCommand::WriteZeroes(WriteZeroes {
                nsid: NS_RAM512,
                slba: 0,
                nlb: 8,
                deac: false,
                fua: false,
                lr: false,
                generation: NonZeroU64::new(stale),
                expires: 0,
            }),
            None,
            0,
        ),
        (
            IoCommand::DatasetManagement(DatasetManagement {
                nsid: NS_RAM512,
                nr: 1,
                ad: true,
                idw: false,
                idr: false,
                generation: NonZeroU64::new(stale),
                expires: 0,
            }),
            Some(Bytes::copy_from_slice(
                &DsmRange {
                    cattr: 0,
                    nlb: 8,
                    slba: 0,
                }
                .to_bytes(),
            )),
            0,
        ),
    ];
    let n = cmds.len() as u64;
    for (cmd, out, inl) in cmds {
        let done = submit_io(&q, &cmd, out, inl).await;
        let st = done.status();
        assert_eq!(
            (st.sct(), st.sc()),
            (7, 0x80),
            "{:?} stale: {st}",
            cmd.opcode()
        );
        assert!(!st.dnr(), "stale map is retryable (refresh, retry)");
        assert_eq!(done.dw0(), 5, "DW0: low half of the server generation");
        assert_eq!(done.dw1(), 1, "DW1: high half of the server generation");
        assert_eq!(cqe_generation(&done.cqe), newer);
        assert!(done.data.is_empty(), "no data for a refused read");
    }
    // The stale write, Write Zeroes and deallocate did not run.
    assert_blocks(
        &q.read(NS_RAM512, 0, 8, 512).await.unwrap(),
        &d,
        0,
        512,
        "after stale commands",
    );
    // The new generation is accepted; the initiator's error carries the server generation.
    q.with_generation(newer)
        .read(NS_RAM512, 0, 8, 512)
        .await
        .unwrap();
    match q
        .with_generation(newer - 1)
        .read(NS_RAM512, 0, 1, 512)
        .await
    {
        Err(InitiatorError::Generation {
            server_generation, ..
        }) => {
            assert_eq!(server_generation, newer);
        }
        other => panic!("stale read: {other:?}"),
    }
    let after = c.generation_log().await.unwrap();
    assert_eq!(
        after.stale_map_seen - before.stale_map_seen,
        n + 1,
        "stale counter"
    );
    assert!(after.server_behind_seen >= 1, "server-behind counter");
    q.close().await;
    c.disconnect().await.unwrap();
    t.stop().await;
}

/// A target whose only subsystem is internal (server-to-server: every command must be
/// stamped), with one 1 MiB RAM namespace of 512-byte blocks, at `generation`.
async fn internal_target(generation: u64) -> TestTarget {
    use tessera::subsystem::namespace::Namespace;
    use tessera::subsystem::volume::LocalVolume;
    use tessera::subsystem::{HostPolicy, Registry, Subsystem};
    let backend = hw::open(&hw::BackendSpec::Ram {
        size: 1 << 20,
        preallocate: false,
    })
    .unwrap();
    let ns = Namespace::new(
        1,
        512,
        [7; 16],
        [7; 16],
        std::sync::Arc::new(LocalVolume::new(backend)),
    );
    let s = Subsystem::new(
        SUBNQN.to_string(),
        "INTERNAL0001".to_string(),
        "Tessera internal".to_string(),
        HostPolicy::Any,
        Default::default(),
    )
    .into_internal();
    s.set_namespaces(std::collections::BTreeMap::from([(
        1,
        std::sync::Arc::new(ns),
    )]));
    let registry = std::sync::Arc::new(Registry::new(vec![s], generation));
    TestTarget::start_registry(registry, TransportConfig::default(), 1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_connections_require_stamps() {
    // docs/cluster-protocol.md: "Commands on internal connections must be stamped; an unstamped one there is
    // rejected." The rejection carries the server generation in DW0/DW1 and is counted in log
    // page C0h; stamped commands follow the usual rules.
    let g: u64 = 0x0000_0002_0000_0009;
    let t = internal_target(g).await;
    let (c, q) = connect_with_io(t.addr, SUBNQN).await;
    let d = blocks(1, 0, 8, 512);
    let before = c.generation_log().await.unwrap();
    for (cmd, out, inl) in [
        (IoCommand::Read(Rw::new(1, 0, 8, 0)), None, 4096),
        (IoCommand::Write(Rw::new(1, 0, 8, 0)), Some(d.clone()), 0),
        (
            IoCommand::Flush(Flush {
                nsid: 1,
                generation: None,
            }),
            None,
            0,
        ),
    ] {
        let done = submit_io(&q, &cmd, out, inl).await;
        assert!(
            !done.status().is_success(),
            "unstamped {:?} on an internal connection",
            cmd.opcode()
        );
        assert_eq!(cqe_generation(&done.cqe), g, "server generation in DW0/DW1");
    }
    let after = c.generation_log().await.unwrap();
    assert_eq!(after.unstamped_rejected - before.unstamped_rejected, 3);
    assert_zero(
        &q.with_generation(g).read(1, 0, 8, 512).await.unwrap(),
        "unstamped write ran",
    );
    // Stamped with the current generation: executed.
    let s = q.with_generation(g);
    s.write(1, 0, 512, d.clone(), false).await.unwrap();
    assert_blocks(
        &s.read(1, 0, 8, 512).await.unwrap(),
        &d,
        0,
        512,
        "stamped read",
    );
    // Stale: refused, nothing written.
    match q
        .with_generation(g - 1)
        .write(1, 0, 512, blocks(2, 0, 8, 512), false)
        .await
    {
        Err(InitiatorError::Generation {
            status,
            server_generation,
        }) => {
            assert_eq!((status.sct(), status.sc()), (7, 0x80));
            assert_eq!(server_generation, g);
        }
        other => panic!("stale stamp on an internal connection: {other:?}"),
    }
    assert_blocks(
        &s.read(1, 0, 8, 512).await.unwrap(),
        &d,
        0,
        512,
        "after a stale write",
    );
    q.close().await;
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_controllers_advertise_that_they_require_stamps() {
    // codec::nvme::generation: GenCheckInfo flags bit 0 (GENCHK_FLAG_REQUIRE_STAMP) means
    // "this controller rejects unstamped I/O", which an internal controller does.
    let t = internal_target(3).await;
    let c = connect(t.addr, SUBNQN).await;
    let info = c.require_generation_check().await.unwrap();
    assert_eq!(info.generation, 3);
    assert_ne!(
        info.flags & codec::nvme::generation::GENCHK_FLAG_REQUIRE_STAMP,
        0,
        "REQUIRE_STAMP flag"
    );
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_target_answers_a_newer_stamp_at_once_counted_once() {
    // No manager will ever bring a standalone target's generation forward, so a command stamped
    // ahead of it gets SCT 7h / SC 81h at once (with CRD 1), never after a wait.
    let t = TestTarget::start(STD_YAML).await;
    // "At once" without a clock: a registry without a manager has no behind wait, so the I/O
    // path takes its no-wait branch (io.rs waits only when behind_wait_ms > 0).
    let gen_state = &t.registry().generation;
    assert_eq!(gen_state.behind_wait(), None);
    assert_eq!(
        gen_state
            .behind_wait_ms
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    let (c, q) = connect_with_io(t.addr, SUBNQN).await;
    let before = c.generation_log().await.unwrap();
    let g = before.current_generation;
    let done = within(
        "a newer-stamped read completes",
        submit_io(
            &q,
            &IoCommand::Read(Rw::new(NS_RAM512, 0, 1, g + 1)),
            None,
            512,
        ),
    )
    .await;
    let st = done.status();
    assert_eq!((st.sct(), st.sc()), (7, 0x81), "newer stamp: {st}");
    assert_eq!(st.crd(), 1, "CRD names CRDT1");
    assert!(!st.dnr());
    assert_eq!(cqe_generation(&done.cqe), g);
    let after = c.generation_log().await.unwrap();
    assert_eq!(after.server_behind_seen, before.server_behind_seen + 1);
    assert_eq!(after.stale_map_seen, before.stale_map_seen);
    assert_eq!(after.current_generation, g, "nothing moved the generation");
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_waits_for_the_map_is_counted_once() {
    // Cluster mode lets a command stamped ahead wait for the map; whether it then runs or still
    // gets 81h, log C0h counts it once. The wait is switched on here by hand, as cluster mode
    // does (cluster/mod.rs), on an otherwise standalone registry.
    let t = TestTarget::start(STD_YAML).await;
    let gen_state = &t.registry().generation;
    let (c, q) = connect_with_io(t.addr, SUBNQN).await;
    let g = c.generation_log().await.unwrap().current_generation;
    // 1. Waits (briefly), nothing arrives, 81h: counted once.
    gen_state.set_behind_wait(std::time::Duration::from_millis(20));
    let before = c.generation_log().await.unwrap();
    let done = within(
        "newer-stamped read after its wait",
        submit_io(
            &q,
            &IoCommand::Read(Rw::new(NS_RAM512, 0, 1, g + 1)),
            None,
            512,
        ),
    )
    .await;
    assert_eq!((done.status().sct(), done.status().sc()), (7, 0x81));
    let after = c.generation_log().await.unwrap();
    assert_eq!(
        after.server_behind_seen,
        before.server_behind_seen + 1,
        "waited and got 81h: counted once"
    );
    // 2. Waits (generously), the map arrives meanwhile, the command runs: counted once too.
    gen_state.set_behind_wait(STEP * 3);
    let before = after;
    let q2 = q.clone();
    let read = tokio::spawn(async move {
        submit_io(
            &q2,
            &IoCommand::Read(Rw::new(NS_RAM512, 0, 1, g + 1)),
            None,
            512,
        )
        .await
    });
    // The first check counts it before it waits: install only then (deterministic order).
    within("the command is seen ahead", async {
        while gen_state
            .behind_seen
            .load(std::sync::atomic::Ordering::Relaxed)
            == before.server_behind_seen
        {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    })
    .await;
    gen_state.install(g + 1);
    let done = within("the waiting read runs", read).await.unwrap();
    assert!(done.status().is_success(), "{}", done.status());
    let after = c.generation_log().await.unwrap();
    assert_eq!(after.server_behind_seen, before.server_behind_seen + 1);
    assert_eq!(after.stale_map_seen, before.stale_map_seen);
    c.disconnect().await.unwrap();
    t.stop().await;
}
