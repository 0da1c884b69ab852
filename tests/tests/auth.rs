//! NVMe in-band authentication (DH-HMAC-CHAP, NVMe Base 2.0 section 8.13): our initiator
//! against our target, secrets from YAML-named files, malformed messages, and the nvme-cli
//! secret format.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use codec::nvme::Status;
use codec::nvme::cmd::{AuthReceive, AuthSend, FabricsCommand};
use codec::nvme::fabrics::auth::{
    AuthMessage, DHGROUP_FFDHE2048, DHGROUP_NULL, Descriptor, FailureReason, HashId, Negotiate,
    PROTOCOL_DHCHAP, SECP_NVME_AUTH, SPSP0_DHCHAP, SPSP1_DHCHAP, Secret,
};
use codec::nvme::fabrics::{PropertyGet, prop};
use codec::nvme::sgl::SglDescriptor;
use tessera::initiator::{
    AUTHREQ_MASK, ControllerOptions, DhchapSecrets, InitiatorError, Queue, QueueOptions,
    authenticate,
};
use tessera::subsystem::AuthPolicy;
use tessera_tests::*;

const SUB: &str = "nqn.2026-11.dev.tessera:auth";
const OPEN_SUB: &str = "nqn.2026-11.dev.tessera:open";

fn secret(transform: Option<HashId>, len: usize) -> Secret {
    Secret::generate(transform, len).expect("random secret")
}

/// Writes `s` into `dir/name` as nvme-cli prints it (with a newline).
fn write_secret(dir: &Path, name: &str, s: &Secret) {
    std::fs::write(dir.join(name), format!("{}\n", s.to_text())).expect("write secret");
}

/// A layout: [`SUB`] where [`HOSTNQN`] authenticates with `host.key` (and, if `ctrl`, the
/// controller with `ctrl.key`), [`HOSTNQN2`] without a secret; [`OPEN_SUB`] open to any host.
fn layout(dir: &Path, ctrl: bool) -> String {
    let ctrl_line = if ctrl {
        format!(
            "\n        dhchap_ctrl_secret_file: {}",
            dir.join("ctrl.key").display()
        )
    } else {
        String::new()
    };
    format!(
        "{PLACEHOLDER_LISTENER}subsystems:
  - nqn: {SUB}
    hosts:
      - nqn: {HOSTNQN}
        dhchap_secret_file: {}{ctrl_line}
      - {HOSTNQN2}
    namespaces:
      - nsid: 1
        backend: {{ kind: ram, size: 1MiB }}
  - nqn: {OPEN_SUB}
    allow_any_host: true
    namespaces:
      - nsid: 1
        backend: {{ kind: ram, size: 1MiB }}
",
        dir.join("host.key").display()
    )
}

fn opts_with(host: &Secret, ctrl: Option<&Secret>) -> ControllerOptions {
    let mut o = ctrl_opts();
    o.dhchap = Some(Arc::new(DhchapSecrets {
        host: host.clone(),
        ctrl: ctrl.cloned(),
    }));
    o
}

/// Admin queue options for a hand-driven queue.
fn admin_opts(subnqn: &str, hostnqn: &str) -> QueueOptions {
    let mut o = QueueOptions::admin(subnqn, hostnqn);
    o.transport.connect_timeout = STEP;
    o.transport.command_timeout = Some(STEP);
    o
}

/// A queue connected (Fabrics Connect only, no authentication); returns it and the
/// Connect response DW0.
async fn raw_connected(addr: SocketAddr, o: &QueueOptions) -> (Queue, u32) {
    let q = within("establish", Queue::establish(addr, o))
        .await
        .expect("TCP + ICReq");
    let dw0 = within("Connect", q.fabrics_connect_dw0(o))
        .await
        .expect("Connect accepted");
    (q, dw0)
}

async fn property_get_status(q: &Queue) -> Status {
    let sqe = PropertyGet {
        size8: true,
        offset: prop::CAP,
    }
    .to_sqe(0);
    within("Property Get", q.submit(sqe, None, 0))
        .await
        .expect("queue up")
        .status()
}

async fn auth_send(q: &Queue, secp: u8, data: Vec<u8>) -> Status {
    let sqe = FabricsCommand::AuthSend(AuthSend {
        secp,
        spsp0: SPSP0_DHCHAP,
        spsp1: SPSP1_DHCHAP,
        tl: u32::try_from(data.len()).unwrap(),
    })
    .to_sqe(0, SglDescriptor::transport(0));
    within(
        "Authentication Send",
        q.submit(sqe, Some(Bytes::from(data)), 0),
    )
    .await
    .expect("queue up")
    .status()
}

async fn auth_receive(q: &Queue, al: u32) -> (Status, Bytes) {
    let sqe = FabricsCommand::AuthReceive(AuthReceive {
        secp: SECP_NVME_AUTH,
        spsp0: SPSP0_DHCHAP,
        spsp1: SPSP1_DHCHAP,
        al,
    })
    .to_sqe(0, SglDescriptor::transport(0));
    let c = within("Authentication Receive", q.submit(sqe, None, al))
        .await
        .expect("queue up");
    (c.status(), c.data)
}

#[track_caller]
fn assert_auth_failed(r: Result<impl Sized, InitiatorError>, want: FailureReason, text: &str) {
    match r {
        Err(e @ InitiatorError::AuthFailed { reason, .. }) => {
            assert_eq!(reason, Some(want), "{e}");
            assert!(e.to_string().contains(text), "{e} (expected {text:?})");
        }
        Err(e) => panic!("expected an authentication failure, got {e}"),
        Ok(_) => panic!("expected an authentication failure, got success"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn right_secret_authenticates_every_queue_and_io_passes() {
    let dir = TestDir::new();
    // The nvme-cli default form: transformed with SHA-256 before use.
    let host = secret(Some(HashId::Sha256), 32);
    write_secret(dir.path(), "host.key", &host);
    let t = TestTarget::start(&layout(dir.path(), false)).await;

    let c = connect_as(t.addr, SUB, HOSTNQN, &opts_with(&host, None))
        .await
        .expect("authenticated connect");
    // Every I/O queue runs its own transaction.
    let qs = io_queues(&c, 2).await;
    for (i, q) in qs.iter().enumerate() {
        let slba = u64::try_from(i).unwrap() * 8;
        let data = blocks(7, slba, 8, 512);
        within("write", q.write(1, slba, 512, data.clone(), false))
            .await
            .expect("write after authentication");
        let got = within("read", q.read(1, slba, 8, 512))
            .await
            .expect("read after authentication");
        assert_blocks(&got, &data, slba, 512, "authenticated queue");
    }
    // A host with no secret on the subsystem connects without authenticating.
    let c2 = connect_as(t.addr, SUB, HOSTNQN2, &ctrl_opts())
        .await
        .expect("host without a secret");
    drop(c2);
    // Authentication is per subsystem: the open one does not ask for it.
    let c3 = connect(t.addr, OPEN_SUB).await;
    drop(c3);
    drop(qs);
    drop(c);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_fails_and_the_queue_refuses_commands() {
    let dir = TestDir::new();
    let host = secret(None, 48);
    write_secret(dir.path(), "host.key", &host);
    let t = TestTarget::start(&layout(dir.path(), false)).await;

    let wrong = secret(None, 48);
    let r = connect_as(t.addr, SUB, HOSTNQN, &opts_with(&wrong, None)).await;
    assert_auth_failed(r, FailureReason::Failed, "wrong secret");

    // The same by hand: the queue that failed stays connected and refuses every command.
    let o = admin_opts(SUB, HOSTNQN);
    let (q, dw0) = raw_connected(t.addr, &o).await;
    assert_ne!(dw0 & AUTHREQ_MASK, 0, "Connect asks for authentication");
    let secrets = DhchapSecrets {
        host: wrong,
        ctrl: None,
    };
    let r = within("authenticate", authenticate(&q, HOSTNQN, SUB, &secrets)).await;
    assert_auth_failed(r, FailureReason::Failed, "AUTH_Failure1");
    assert_status(
        property_get_status(&q).await,
        Status::AUTH_REQUIRED,
        Some(true),
    );
    drop(q);

    // The right secret still works afterwards.
    let c = connect_as(t.addr, SUB, HOSTNQN, &opts_with(&host, None))
        .await
        .expect("right secret");
    drop(c);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_when_required() {
    let dir = TestDir::new();
    let host = secret(Some(HashId::Sha512), 64);
    write_secret(dir.path(), "host.key", &host);
    let t = TestTarget::start(&layout(dir.path(), false)).await;

    // Our initiator refuses to go on without a secret, with a clear error.
    match connect_as(t.addr, SUB, HOSTNQN, &ctrl_opts()).await {
        Err(e @ InitiatorError::AuthRequired) => {
            assert!(e.to_string().contains("no secret"), "{e}");
        }
        Err(e) => panic!("expected AuthRequired, got {e}"),
        Ok(_) => panic!("connected without a secret"),
    }

    // A host that ignores AUTHREQ gets Authentication Required on the admin queue...
    let o = admin_opts(SUB, HOSTNQN);
    let (q, dw0) = raw_connected(t.addr, &o).await;
    assert_ne!(dw0 & AUTHREQ_MASK, 0);
    assert_status(
        property_get_status(&q).await,
        Status::AUTH_REQUIRED,
        Some(true),
    );
    drop(q);

    // ... and on an I/O queue of an authenticated controller: every queue authenticates.
    let c = connect_as(t.addr, SUB, HOSTNQN, &opts_with(&host, None))
        .await
        .expect("authenticated");
    within("set queues", c.set_num_queues(2))
        .await
        .expect("queues");
    let mut io = c.io_queue_options(1, 31);
    io.dhchap = None;
    let r = within("I/O queue connect", Queue::connect_tcp(t.addr, &io)).await;
    assert!(
        matches!(r, Err(InitiatorError::AuthRequired)),
        "I/O queue without a secret: {r:?}"
    );
    let io = c.io_queue_options(2, 31);
    let (q, dw0) = raw_connected(t.addr, &io).await;
    assert_ne!(
        dw0 & AUTHREQ_MASK,
        0,
        "I/O queue Connect asks for authentication"
    );
    let st = q.read(1, 0, 1, 512).await.expect_err("read before auth");
    assert_status(
        st.status().expect("a status"),
        Status::AUTH_REQUIRED,
        Some(true),
    );

    // A subsystem that requires authentication refuses a host it holds no secret for.
    let sub = t.registry().subsystem(SUB).expect("subsystem");
    sub.set_auth(AuthPolicy {
        required: true,
        ..AuthPolicy::default()
    });
    let r = connect_as(t.addr, SUB, HOSTNQN2, &ctrl_opts()).await;
    match r {
        Err(InitiatorError::ConnectRejected(rej)) => {
            assert_status(rej.status, Status::CONNECT_INVALID_HOST, Some(true));
        }
        Err(e) => panic!("expected Connect Invalid Host, got {e}"),
        Ok(_) => panic!("a host without a secret connected to a subsystem that requires one"),
    }
    drop(q);
    drop(c);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidirectional() {
    let dir = TestDir::new();
    let host = secret(Some(HashId::Sha384), 48);
    let ctrl = secret(Some(HashId::Sha256), 32);
    write_secret(dir.path(), "host.key", &host);
    write_secret(dir.path(), "ctrl.key", &ctrl);
    let t = TestTarget::start(&layout(dir.path(), true)).await;

    let c = connect_as(t.addr, SUB, HOSTNQN, &opts_with(&host, Some(&ctrl)))
        .await
        .expect("bidirectional authentication");
    let q = io_queues(&c, 1).await.remove(0);
    within("write", q.write(1, 0, 512, blocks(1, 0, 1, 512), false))
        .await
        .expect("I/O after bidirectional authentication");
    drop(q);
    drop(c);

    // A host expecting another controller secret refuses the controller.
    let other = secret(Some(HashId::Sha256), 32);
    let r = connect_as(t.addr, SUB, HOSTNQN, &opts_with(&host, Some(&other))).await;
    assert_auth_failed(r, FailureReason::Failed, "controller secret mismatch");

    // Unidirectional still works where the controller has a secret.
    let c = connect_as(t.addr, SUB, HOSTNQN, &opts_with(&host, None))
        .await
        .expect("unidirectional");
    drop(c);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_auth_messages_get_clean_errors() {
    let dir = TestDir::new();
    let host = secret(None, 32);
    write_secret(dir.path(), "host.key", &host);
    let t = TestTarget::start(&layout(dir.path(), false)).await;
    let o = admin_opts(SUB, HOSTNQN);

    // Wrong SECP: Invalid Field in Command.
    let (q, _) = raw_connected(t.addr, &o).await;
    assert_status(
        auth_send(&q, 0xEA, vec![0; 8]).await,
        Status::INVALID_FIELD,
        Some(true),
    );
    // Allocation Length 0 and above 4 KiB.
    assert_status(
        auth_receive(&q, 0).await.0,
        Status::INVALID_FIELD,
        Some(true),
    );
    assert_status(
        auth_receive(&q, 8192).await.0,
        Status::INVALID_FIELD,
        Some(true),
    );
    // Garbage is accepted as data, and the host then reads AUTH_Failure1 with the reason.
    for (bytes, reason) in [
        (vec![0x55; 3], FailureReason::IncorrectPayload),
        (
            vec![7, 0, 0, 0, 9, 0, 0, 0],
            FailureReason::IncorrectMessage,
        ),
        (
            vec![0, 0, 0, 0, 9, 0, 0, 0],
            FailureReason::IncorrectPayload,
        ),
        (
            vec![1, 2, 0, 0, 9, 0, 33, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            FailureReason::IncorrectPayload,
        ),
    ] {
        let (q, _) = raw_connected(t.addr, &o).await;
        assert!(
            auth_send(&q, SECP_NVME_AUTH, bytes.clone())
                .await
                .is_success()
        );
        let (st, data) = auth_receive(&q, 4096).await;
        assert!(st.is_success(), "{st}");
        assert_eq!(data.len(), 4096, "padded to the Allocation Length");
        match AuthMessage::decode(&data) {
            Ok(AuthMessage::Failure1(f)) => assert_eq!(f.reason(), Some(reason), "{bytes:?}"),
            other => panic!("{bytes:?}: expected AUTH_Failure1, got {other:?}"),
        }
        assert_status(
            property_get_status(&q).await,
            Status::AUTH_REQUIRED,
            Some(true),
        );
    }
    // A receive with nothing pending: AUTH_Failure1 (incorrect message).
    let (st, data) = auth_receive(&q, 64).await;
    assert!(st.is_success());
    assert!(matches!(
        AuthMessage::decode(&data),
        Ok(AuthMessage::Failure1(f)) if f.reason() == Some(FailureReason::IncorrectMessage)
    ));
    drop(q);
    // Authentication commands where no authentication applies: Invalid Command Opcode.
    let (q, dw0) = raw_connected(t.addr, &admin_opts(OPEN_SUB, HOSTNQN)).await;
    assert_eq!(dw0 & AUTHREQ_MASK, 0);
    assert_status(
        auth_send(&q, SECP_NVME_AUTH, vec![0; 8]).await,
        Status::INVALID_OPCODE,
        Some(true),
    );
    drop(q);
    // The target still serves.
    let (c, q) = connect_with_io(t.addr, OPEN_SUB).await;
    within("write", q.write(1, 0, 512, blocks(2, 0, 1, 512), false))
        .await
        .expect("I/O after malformed authentication");
    drop(q);
    drop(c);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffdhe2048_group() {
    let dir = TestDir::new();
    let host = secret(Some(HashId::Sha256), 32);
    let ctrl = secret(None, 64);
    write_secret(dir.path(), "host.key", &host);
    write_secret(dir.path(), "ctrl.key", &ctrl);
    let yaml = layout(dir.path(), true).replacen(
        "    namespaces:",
        "    dhchap_dhgroup: ffdhe2048\n    namespaces:",
        1,
    );
    let t = TestTarget::start(&yaml).await;
    assert_eq!(
        t.registry()
            .subsystem(SUB)
            .expect("sub")
            .auth_policy()
            .dh_group,
        DHGROUP_FFDHE2048
    );

    // The controller asks for the group when offered: a 256-byte DH value in the Challenge.
    let o = admin_opts(SUB, HOSTNQN);
    let (q, _) = raw_connected(t.addr, &o).await;
    let negotiate = AuthMessage::Negotiate(Negotiate {
        t_id: 5,
        sc_c: 0,
        protocols: vec![Descriptor {
            authid: PROTOCOL_DHCHAP,
            hash_ids: vec![1],
            dh_groups: vec![DHGROUP_NULL, DHGROUP_FFDHE2048],
        }],
    });
    assert!(
        auth_send(&q, SECP_NVME_AUTH, negotiate.encode())
            .await
            .is_success()
    );
    let (st, data) = auth_receive(&q, 4096).await;
    assert!(st.is_success());
    match AuthMessage::decode(&data) {
        Ok(AuthMessage::Challenge(c)) => {
            assert_eq!((c.dh_group, c.dhv.len()), (DHGROUP_FFDHE2048, 256));
        }
        other => panic!("expected a Challenge, got {other:?}"),
    }
    drop(q);

    // Uni- and bidirectional transactions with the group, then I/O.
    for ctrl_check in [None, Some(&ctrl)] {
        let c = connect_as(t.addr, SUB, HOSTNQN, &opts_with(&host, ctrl_check))
            .await
            .expect("authenticated with ffdhe2048");
        let q = io_queues(&c, 1).await.remove(0);
        let data = blocks(9, 0, 4, 512);
        within("write", q.write(1, 0, 512, data.clone(), false))
            .await
            .expect("write");
        let got = within("read", q.read(1, 0, 4, 512)).await.expect("read");
        assert_blocks(&got, &data, 0, 512, "ffdhe2048 queue");
        drop(q);
        drop(c);
    }
    // Wrong secrets still fail.
    let r = connect_as(t.addr, SUB, HOSTNQN, &opts_with(&secret(None, 32), None)).await;
    assert_auth_failed(r, FailureReason::Failed, "wrong secret");
    let r = connect_as(
        t.addr,
        SUB,
        HOSTNQN,
        &opts_with(&host, Some(&secret(None, 64))),
    )
    .await;
    assert_auth_failed(r, FailureReason::Failed, "controller secret mismatch");
    // A bad DH group name in the layout.
    let bad = yaml.replace("dhchap_dhgroup: ffdhe2048", "dhchap_dhgroup: ffdhe9999");
    let e = yaml::parse_str("l.yaml", &bad).expect_err("bad group");
    assert!(e.message.contains("ffdhe9999"), "{e}");
    assert_eq!(e.loc.field, "subsystems[0].dhchap_dhgroup");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_that_does_not_authenticate_in_time_is_closed() {
    let dir = TestDir::new();
    let host = secret(None, 32);
    write_secret(dir.path(), "host.key", &host);
    let t = TestTarget::start(&layout(dir.path(), false)).await;
    let sub = t.registry().subsystem(SUB).expect("subsystem");
    let mut policy = AuthPolicy::clone(&sub.auth_policy());
    assert_eq!(policy.timeout, Duration::from_secs(30), "the default");
    policy.timeout = Duration::from_secs(1);
    sub.set_auth(policy);

    // An authenticated controller keeps working past the timeout.
    let c = connect_as(t.addr, SUB, HOSTNQN, &opts_with(&host, None))
        .await
        .expect("authenticated");
    let q = io_queues(&c, 1).await.remove(0);
    // Connected but never authenticated (admin queue), and failed (another admin queue).
    let o = admin_opts(SUB, HOSTNQN);
    let (idle, _) = raw_connected(t.addr, &o).await;
    let (failed, _) = raw_connected(t.addr, &o).await;
    let wrong = DhchapSecrets {
        host: secret(None, 32),
        ctrl: None,
    };
    assert!(authenticate(&failed, HOSTNQN, SUB, &wrong).await.is_err());
    for (what, queue) in [("never authenticated", &idle), ("failed", &failed)] {
        within("the target closes the queue", async {
            loop {
                let sqe = PropertyGet {
                    size8: true,
                    offset: prop::CAP,
                }
                .to_sqe(0);
                match queue.submit(sqe, None, 0).await {
                    Err(e) if e.is_connection_fatal() => break,
                    Err(e) => panic!("{what}: {e}"),
                    Ok(c) => {
                        assert_status(c.status(), Status::AUTH_REQUIRED, Some(true));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    within("write", q.write(1, 0, 512, blocks(3, 0, 1, 512), false))
        .await
        .expect("an authenticated queue is not closed");
    drop(q);
    drop(c);
    t.stop().await;
}

#[tokio::test]
async fn yaml_secret_errors_name_the_field() {
    let dir = TestDir::new();
    let d = dir.path();
    let host = secret(None, 32);
    write_secret(d, "host.key", &host);
    let base = |hosts: &str, extra: &str| {
        format!(
            "{PLACEHOLDER_LISTENER}subsystems:
  - nqn: {SUB}
    hosts:
{hosts}{extra}    namespaces:
      - nsid: 1
        backend: {{ kind: ram, size: 1MiB }}
"
        )
    };
    let parse = |text: &str| yaml::parse_str(&d.join("l.yaml").display().to_string(), text);
    // A missing file.
    let e = parse(&base(
        &format!("      - nqn: {HOSTNQN}\n        dhchap_secret_file: nope.key\n"),
        "",
    ))
    .expect_err("missing file");
    assert_eq!(e.kind, yaml::ErrorKind::BadSecret);
    assert_eq!(e.loc.field, "subsystems[0].hosts[0].dhchap_secret_file");
    assert!(e.message.contains("nope.key"), "{e}");
    // A file that is not a secret.
    std::fs::write(d.join("junk.key"), "hello\n").unwrap();
    let e = parse(&base(
        &format!("      - nqn: {HOSTNQN}\n        dhchap_secret_file: junk.key\n"),
        "",
    ))
    .expect_err("not a secret");
    assert!(e.message.contains("DHHC-1"), "{e}");
    // A controller secret without the host's.
    let e = parse(&base(
        &format!("      - nqn: {HOSTNQN}\n        dhchap_ctrl_secret_file: host.key\n"),
        "",
    ))
    .expect_err("ctrl without host");
    assert_eq!(
        e.loc.field,
        "subsystems[0].hosts[0].dhchap_ctrl_secret_file"
    );
    // require_dhchap with a host that has no secret.
    let e = parse(&base(
        &format!(
            "      - nqn: {HOSTNQN}\n        dhchap_secret_file: host.key\n      - {HOSTNQN2}\n"
        ),
        "    require_dhchap: true\n",
    ))
    .expect_err("host without secret");
    assert!(e.message.contains(HOSTNQN2), "{e}");
    assert_eq!(e.loc.field, "subsystems[0].require_dhchap");
    // An unknown key in a host entry.
    let e = parse(&base(
        &format!("      - nqn: {HOSTNQN}\n        secret: x\n"),
        "",
    ))
    .expect_err("unknown key");
    assert_eq!(e.kind, yaml::ErrorKind::UnknownKey);
    // A secret whose CRC is wrong: the YAML loads, building the target names the field.
    let text = host.to_text();
    let broken = format!("{}A{}", &text[..12], &text[13..]);
    std::fs::write(d.join("bad.key"), broken).unwrap();
    let l = parse(&base(
        &format!("      - nqn: {HOSTNQN}\n        dhchap_secret_file: bad.key\n"),
        "    require_dhchap: true\n",
    ))
    .expect("shape is right");
    assert!(l.subsystems[0].require_dhchap);
    let e = tessera::config::check_backends(&l).expect_err("bad CRC");
    assert_eq!(e.loc.field, "subsystems[0].hosts[0].dhchap_secret_file");
    assert!(e.to_string().contains("bad.key"), "{e}");
    let Err(e) = tessera::config::build_registry(&l) else {
        panic!("a bad secret must not be served");
    };
    assert!(
        e.message.contains("CRC-32") || e.message.contains("base64"),
        "{e}"
    );
    // The secret is never printed in a Debug of the layout.
    let good = parse(&base(
        &format!("      - nqn: {HOSTNQN}\n        dhchap_secret_file: host.key\n"),
        "",
    ))
    .expect("good");
    assert!(!format!("{good:?}").contains(&text[10..30]));
}

/// `nvme gen-dhchap-key` (nvme-cli 2.x) output is read by our parser, and, when it transforms
/// the key with an NQN (`--hmac N --nqn NQN`), it stores HMAC(secret, NQN || "NVMe-over-Fabrics"):
/// exactly our key transform.
#[test]
fn nvme_cli_secret_format() {
    let nvme = ["/usr/sbin/nvme", "/sbin/nvme", "/usr/bin/nvme"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(nvme) = nvme else {
        eprintln!("SKIPPED: nvme-cli is not installed (ci/install-deps installs it)");
        return;
    };
    let run = |args: &[&str]| -> String {
        let out = std::process::Command::new(nvme)
            .args(args)
            .output()
            .expect("run nvme");
        assert!(out.status.success(), "nvme {args:?}: {out:?}");
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    };
    let nqn = HOSTNQN;
    for (hmac, hash, len) in [
        ("1", HashId::Sha256, 32usize),
        ("2", HashId::Sha384, 48),
        ("3", HashId::Sha512, 64),
    ] {
        let raw: Vec<u8> = (0..len)
            .map(|i| u8::try_from(i * 7 % 256).unwrap())
            .collect();
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let len_s = len.to_string();
        // No transform: the key is the secret itself, and our text is the tool's.
        let plain = run(&[
            "gen-dhchap-key",
            "--secret",
            &hex,
            "--hmac",
            "0",
            "--key-length",
            &len_s,
            "--nqn",
            nqn,
        ]);
        let s = Secret::parse(&plain).expect("nvme-cli secret parses");
        assert_eq!((s.transform, &s.key), (None, &raw));
        assert_eq!(s.to_text(), plain);
        // With a transform: the tool stores the transformed key.
        let out = run(&[
            "gen-dhchap-key",
            "--secret",
            &hex,
            "--hmac",
            hmac,
            "--key-length",
            &len_s,
            "--nqn",
            nqn,
        ]);
        let s = Secret::parse(&out).expect("nvme-cli secret parses");
        assert_eq!(s.transform, Some(hash));
        let ours = Secret {
            transform: Some(hash),
            key: raw.clone(),
        }
        .transformed(nqn);
        assert_eq!(s.key, ours, "key transform with {}", hash.name());
        // The tool accepts what we write.
        let check = std::process::Command::new(nvme)
            .args(["check-dhchap-key", "--key", &s.to_text()])
            .output()
            .expect("run nvme");
        assert!(check.status.success(), "check-dhchap-key: {check:?}");
    }
    // A random key of the tool's parses (its CRC checks out).
    let random = run(&["gen-dhchap-key", "--hmac", "1", "--nqn", nqn]);
    assert!(Secret::parse(&random).is_ok(), "{random}");
}
