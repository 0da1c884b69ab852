//! The host side of NVMe in-band authentication (DH-HMAC-CHAP with the NULL or the ffdhe2048
//! DH group, whichever the controller chooses): run
//! on a queue whose Connect response asked for it (AUTHREQ.ATR), before any other command, on
//! the admin queue and on every I/O queue (as the Linux host does).

use std::sync::atomic::{AtomicU16, Ordering};

use bytes::Bytes;
use codec::nvme::cmd::{AuthReceive, AuthSend, FabricsCommand};
use codec::nvme::fabrics::auth::{
    AuthMessage, DHGROUP_FFDHE2048, DHGROUP_NULL, Descriptor, DhKeyPair, Failure, FailureReason,
    HashId, MESSAGE_LEN_MAX, Negotiate, PROTOCOL_DHCHAP, Reply, ResponseInput, Role,
    SECP_NVME_AUTH, SPSP0_DHCHAP, SPSP1_DHCHAP, Secret, augmented_challenge, random_fill,
    random_seqnum, response, response_matches,
};
use codec::nvme::sgl::SglDescriptor;

use super::error::{InitiatorError, Result};
use super::queue::{Completion, Queue};

/// A queue the authentication transaction can run on: the task-based [`Queue`] or the polled
/// [`super::PolledQueue`].
pub(crate) trait AuthQueue: Sync {
    /// Submit `sqe` and wait for its completion (any NVMe status is a completion).
    fn run(
        &self,
        sqe: codec::nvme::Sqe,
        data_out: Option<Bytes>,
        data_in_len: u32,
    ) -> impl Future<Output = Result<Completion>> + Send;
}

impl AuthQueue for Queue {
    fn run(
        &self,
        sqe: codec::nvme::Sqe,
        data_out: Option<Bytes>,
        data_in_len: u32,
    ) -> impl Future<Output = Result<Completion>> + Send {
        self.submit(sqe, data_out, data_in_len)
    }
}

/// The AUTHREQ bits of a Connect response (DW0 bits 31:16) that ask for a transaction: ATR
/// (bit 17) and ASCR (bit 18, secure channel, which needs ATR's transaction as well).
pub const AUTHREQ_MASK: u32 = 0b11 << 17;

/// A host's DH-HMAC-CHAP secrets for one subsystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhchapSecrets {
    /// The host's secret (`nvme connect --dhchap-secret`).
    pub host: Secret,
    /// The controller's secret (`--dhchap-ctrl-secret`): when set, the controller must prove
    /// it too (bidirectional authentication).
    pub ctrl: Option<Secret>,
}

/// Transaction IDs: distinct per transaction of this process.
static NEXT_TID: AtomicU16 = AtomicU16::new(1);

fn send_sqe(len: usize) -> Result<codec::nvme::Sqe> {
    let tl = u32::try_from(len).map_err(|_| InitiatorError::InvalidArgument {
        what: "authentication message above 4 GiB",
    })?;
    Ok(FabricsCommand::AuthSend(AuthSend {
        secp: SECP_NVME_AUTH,
        spsp0: SPSP0_DHCHAP,
        spsp1: SPSP1_DHCHAP,
        tl,
    })
    .to_sqe(0, SglDescriptor::transport(0)))
}

async fn send(q: &impl AuthQueue, m: &AuthMessage) -> Result<()> {
    let data = m.encode();
    let sqe = send_sqe(data.len())?;
    q.run(sqe, Some(Bytes::from(data)), 0)
        .await?
        .into_result()?;
    Ok(())
}

async fn receive(q: &impl AuthQueue) -> Result<AuthMessage> {
    let al = u32::try_from(MESSAGE_LEN_MAX).unwrap_or(4096);
    let sqe = FabricsCommand::AuthReceive(AuthReceive {
        secp: SECP_NVME_AUTH,
        spsp0: SPSP0_DHCHAP,
        spsp1: SPSP1_DHCHAP,
        al,
    })
    .to_sqe(0, SglDescriptor::transport(0));
    let c = q.run(sqe, None, al).await?.into_result()?;
    AuthMessage::decode(&c.data).map_err(|e| InitiatorError::AuthFailed {
        reason: Some(e.reason),
        what: "the controller sent a malformed authentication message",
    })
}

/// Tell the controller we refuse its answer (AUTH_Failure2), best effort, and fail.
async fn refuse(
    q: &impl AuthQueue,
    t_id: u16,
    reason: FailureReason,
    what: &'static str,
) -> InitiatorError {
    if let Err(e) = send(q, &AuthMessage::Failure2(Failure::new(t_id, reason))).await {
        tracing::debug!(error = %e, "sending AUTH_Failure2 failed");
    }
    InitiatorError::AuthFailed {
        reason: Some(reason),
        what,
    }
}

/// Run one DH-HMAC-CHAP transaction on `q` (connected to `subnqn` as `hostnqn`).
pub async fn authenticate(
    q: &Queue,
    hostnqn: &str,
    subnqn: &str,
    secrets: &DhchapSecrets,
) -> Result<()> {
    authenticate_on(q, hostnqn, subnqn, secrets).await
}

/// [`authenticate`] on any queue the transaction can run on.
pub(crate) async fn authenticate_on(
    q: &impl AuthQueue,
    hostnqn: &str,
    subnqn: &str,
    secrets: &DhchapSecrets,
) -> Result<()> {
    let t_id = NEXT_TID.fetch_add(1, Ordering::Relaxed);
    send(
        q,
        &AuthMessage::Negotiate(Negotiate {
            t_id,
            sc_c: 0,
            protocols: vec![Descriptor {
                authid: PROTOCOL_DHCHAP,
                hash_ids: HashId::ALL.iter().map(|h| *h as u8).collect(),
                dh_groups: vec![DHGROUP_NULL, DHGROUP_FFDHE2048],
            }],
        }),
    )
    .await?;
    let challenge = match receive(q).await? {
        AuthMessage::Challenge(c) => c,
        AuthMessage::Failure1(f) => return Err(failure1(&f)),
        _ => {
            return Err(refuse(
                q,
                t_id,
                FailureReason::IncorrectMessage,
                "expected a DH-HMAC-CHAP Challenge",
            )
            .await);
        }
    };
    let Some(hash) = HashId::from_u8(challenge.hash_id) else {
        return Err(refuse(
            q,
            t_id,
            FailureReason::HashUnusable,
            "the controller chose a hash we did not offer",
        )
        .await);
    };
    if challenge.t_id != t_id || challenge.cval.len() != hash.digest_len() {
        return Err(refuse(
            q,
            t_id,
            FailureReason::IncorrectPayload,
            "the Challenge does not match the transaction",
        )
        .await);
    }
    // With a DH group: our key pair, the shared value, and both challenges augmented with it.
    let (dh, session) = match challenge.dh_group {
        DHGROUP_NULL if challenge.dhv.is_empty() => (None, None),
        DHGROUP_FFDHE2048 => {
            let pair = DhKeyPair::generate(DHGROUP_FFDHE2048)
                .map_err(|what| InitiatorError::AuthFailed { reason: None, what })?;
            match pair.shared(&challenge.dhv) {
                Ok(s) => (Some(pair), Some(s)),
                Err(what) => {
                    return Err(refuse(q, t_id, FailureReason::IncorrectPayload, what).await);
                }
            }
        }
        _ => {
            return Err(refuse(
                q,
                t_id,
                FailureReason::DhGroupUnusable,
                "the controller chose a DH group we did not offer",
            )
            .await);
        }
    };
    let augment = |c: &[u8]| match &session {
        Some(s) => augmented_challenge(hash, s, c),
        None => c.to_vec(),
    };
    let c1 = augment(&challenge.cval);
    let kh = secrets.host.transformed(hostnqn);
    let rval = response(
        Role::Host,
        &ResponseInput {
            hash,
            key: &kh,
            challenge: &c1,
            seqnum: challenge.seqnum,
            t_id,
            sc_c: 0,
            hostnqn,
            subnqn,
        },
    );
    // Bidirectional: our challenge C2 and sequence number S2 for the controller.
    let mut c2 = vec![0u8; hash.digest_len()];
    let s2 = if secrets.ctrl.is_some() {
        random_fill(&mut c2).map_err(|_| InitiatorError::AuthFailed {
            reason: None,
            what: "no random bytes for the controller challenge",
        })?;
        random_seqnum().map_err(|_| InitiatorError::AuthFailed {
            reason: None,
            what: "no random sequence number",
        })?
    } else {
        0
    };
    send(
        q,
        &AuthMessage::Reply(Reply {
            t_id,
            rval,
            cvalid: secrets.ctrl.is_some(),
            seqnum: s2,
            cval: c2.clone(),
            dhv: dh.map(|k| k.public).unwrap_or_default(),
        }),
    )
    .await?;
    let success = match receive(q).await? {
        AuthMessage::Success1(s) if s.t_id == t_id => s,
        AuthMessage::Failure1(f) => return Err(failure1(&f)),
        _ => {
            return Err(refuse(
                q,
                t_id,
                FailureReason::IncorrectMessage,
                "expected DH-HMAC-CHAP Success1",
            )
            .await);
        }
    };
    let Some(ctrl) = &secrets.ctrl else {
        return Ok(());
    };
    let Some(r2) = success.rval else {
        return Err(refuse(
            q,
            t_id,
            FailureReason::IncorrectPayload,
            "the controller did not answer our challenge",
        )
        .await);
    };
    let kc = ctrl.transformed(subnqn);
    let c2 = augment(&c2);
    let expected = response(
        Role::Controller,
        &ResponseInput {
            hash,
            key: &kc,
            challenge: &c2,
            seqnum: s2,
            t_id,
            sc_c: 0,
            hostnqn,
            subnqn,
        },
    );
    if !response_matches(&expected, &r2) {
        return Err(refuse(
            q,
            t_id,
            FailureReason::Failed,
            "the controller's response is wrong (controller secret mismatch)",
        )
        .await);
    }
    send(q, &AuthMessage::Success2 { t_id }).await
}

fn failure1(f: &Failure) -> InitiatorError {
    InitiatorError::AuthFailed {
        reason: f.reason(),
        what: "the controller refused the authentication (AUTH_Failure1)",
    }
}
