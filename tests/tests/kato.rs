//! Keep Alive Timeout (NVMe Base 2.0, section 3.9.4): a controller that hears nothing for KATO is
//! torn down, its queues' connections closed and its CNTLID freed; Keep Alive commands keep it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use codec::nvme::Status;
use codec::nvme::cmd::FeatureId;
use codec::nvme::fabrics::connect_data_off;
use tessera::initiator::{Controller, ControllerOptions, InitiatorError, Queue, QueueOptions};
use tessera_tests::*;

const KATO_MS: u32 = 1000;
/// The KATO of the test where keep alives must keep the controller: the host sends one every
/// KATO/2 (as Linux), so a host task delayed by up to KATO/2 on a loaded machine is still in
/// time. 4 s leaves 2 s of slack.
const KEPT_KATO_MS: u32 = 4000;
/// Bounds the wait for a silent controller's teardown. Not a promptness check a loaded 2-core
/// machine could break (the target notices within KATO plus its watchdog's granularity, up to
/// 1 s after a Set Features; scheduling adds milliseconds, rarely more): it catches a target that
/// never tears down, or only after many KATOs.
const TEARDOWN_MAX: Duration = Duration::from_secs(15);
/// The target stores the time a command was last heard in whole milliseconds, so it may count
/// up to 1 ms more silence than the host measured (which started its clock before sending).
const CLOCK_GRAIN: Duration = Duration::from_millis(1);
/// Bounds the wait for the I/O queues of a dead controller to close: a hang fails the test.
const CLOSE_DEADLINE: Duration = Duration::from_secs(15);

fn silent_opts(kato_ms: u32) -> ControllerOptions {
    ControllerOptions {
        kato_ms,
        keep_alive: false,
        ..ctrl_opts()
    }
}

/// Waits for `q` to be closed by the target; returns when (bounded by `limit`).
async fn closed_within(q: &Queue, limit: Duration, what: &str) -> Instant {
    let why = within_for(limit, what, q.closed()).await;
    assert!(why.is_connection_fatal(), "{what}: {why}");
    Instant::now()
}

/// After a controller is gone: an I/O Connect naming its CNTLID is refused, and the target no
/// longer holds it.
async fn assert_controller_gone(t: &TestTarget, cntlid: u16) {
    let mut o = QueueOptions::io(SUBNQN, HOSTNQN, cntlid, 1, 31);
    o.transport.connect_timeout = STEP;
    match within(
        "I/O Connect to a dead controller",
        Queue::connect_tcp(t.addr, &o),
    )
    .await
    {
        Err(InitiatorError::ConnectRejected(r)) => {
            assert_status(r.status, Status::CONNECT_INVALID_PARAMETERS, Some(true));
            assert_eq!((r.iattr, usize::from(r.ipo)), (1, connect_data_off::CNTLID));
        }
        other => panic!("I/O Connect with a torn-down CNTLID: {other:?}"),
    }
    let subsys = t.registry().subsystem(SUBNQN).unwrap();
    assert!(
        subsys.controller(cntlid).is_none(),
        "CNTLID {cntlid} is still allocated: it could not be reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_controller_is_torn_down_after_kato() {
    let t = TestTarget::start(STD_YAML).await;
    let c = connect_as(t.addr, SUBNQN, HOSTNQN, &silent_opts(KATO_MS))
        .await
        .unwrap();
    let cntlid = c.cntlid();
    let qs = io_queues(&c, 2).await;
    // The last thing the controller hears; the timer restarts no earlier than this.
    let last = Instant::now();
    c.keep_alive().await.unwrap();
    let gone = closed_within(c.admin(), TEARDOWN_MAX, "admin queue after KATO").await;
    // A lower bound, which load cannot break (it only delays the teardown and its noticing).
    let silent = gone - last;
    assert!(
        silent + CLOCK_GRAIN >= Duration::from_millis(u64::from(KATO_MS)),
        "torn down after {silent:?}, before KATO ({KATO_MS} ms)"
    );
    for q in &qs {
        closed_within(q, CLOSE_DEADLINE, "I/O queue of the dead controller").await;
    }
    assert_controller_gone(&t, cntlid).await;
    // The subsystem serves a new association.
    let c2 = connect(t.addr, SUBNQN).await;
    assert_ne!(c2.cntlid(), 0);
    c2.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alives_keep_the_controller() {
    let t = TestTarget::start(STD_YAML).await;
    let opts = ControllerOptions {
        kato_ms: KEPT_KATO_MS,
        keep_alive: true, // every KATO/2, as Linux
        ..ctrl_opts()
    };
    let c = connect_as(t.addr, SUBNQN, HOSTNQN, &opts).await.unwrap();
    let q = io_queues(&c, 1).await.remove(0);
    // Two KATOs with nothing but keep alives: without them the controller would be gone.
    tokio::time::sleep(2 * Duration::from_millis(u64::from(KEPT_KATO_MS))).await;
    assert!(
        !c.admin().is_closed(),
        "controller torn down despite keep alives"
    );
    assert!(!q.is_closed(), "I/O queue closed despite keep alives");
    q.read(NS_RAM512, 0, 1, 512).await.unwrap();
    c.identify_controller().await.unwrap();
    q.close().await;
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kato_set_by_set_features_is_enforced() {
    let t = TestTarget::start(STD_YAML).await;
    // Connected without a keep-alive timeout: nothing to enforce...
    let c = connect_as(t.addr, SUBNQN, HOSTNQN, &silent_opts(0))
        .await
        .unwrap();
    let cntlid = c.cntlid();
    // ...until the host sets one (Set Features, Keep Alive Timer).
    let last = Instant::now();
    c.set_features(FeatureId::KEEP_ALIVE_TIMER, 0, KATO_MS, None)
        .await
        .unwrap();
    let gone = closed_within(c.admin(), TEARDOWN_MAX, "admin queue after KATO").await;
    let silent = gone - last;
    assert!(
        silent + CLOCK_GRAIN >= Duration::from_millis(u64::from(KATO_MS)),
        "after {silent:?}"
    );
    assert_controller_gone(&t, cntlid).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_traffic_alone_does_not_outlive_a_dead_admin_queue() {
    // A controller whose admin connection drops is gone at once (the association ends with its
    // admin queue), whatever its KATO: its I/O queues close and the CNTLID is freed.
    let t = TestTarget::start(STD_YAML).await;
    let c = connect_as(t.addr, SUBNQN, HOSTNQN, &silent_opts(30_000))
        .await
        .unwrap();
    let cntlid = c.cntlid();
    let q = io_queues(&c, 1).await.remove(0);
    let admin: Controller = c;
    admin.admin().close().await;
    closed_within(&q, CLOSE_DEADLINE, "I/O queue after its admin queue closed").await;
    assert_controller_gone(&t, cntlid).await;
    t.stop().await;
}
