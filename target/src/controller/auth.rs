//! The controller side of NVMe in-band authentication (DH-HMAC-CHAP, NVMe Base 2.0 section
//! 8.13), one transaction per queue: the admin queue and every I/O queue authenticate on their
//! own, as the Linux host does.
//!
//! A subsystem that holds a secret for a host answers that host's Connect with AUTHREQ.ATR set;
//! the queue then accepts only Authentication Send/Receive, Disconnect (and nothing else: every
//! other command gets Authentication Required) until the transaction succeeds. A wrong
//! response is answered with AUTH_Failure1 ("authentication failed") and the queue stays
//! closed to commands. [`Session`] is the sans-I/O state machine: message bytes in, message
//! bytes out.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use codec::nvme::Status;
use codec::nvme::cmd::{AuthReceive, AuthSend};
use codec::nvme::fabrics::auth::{
    AuthMessage, Challenge, DHGROUP_NULL, DhKeyPair, Failure, FailureReason, HashId,
    MESSAGE_LEN_MAX, Negotiate, PROTOCOL_DHCHAP, Reply, ResponseInput, Role, SECP_NVME_AUTH,
    SPSP0_DHCHAP, SPSP1_DHCHAP, Secret, Success1, augmented_challenge, dh_group_supported,
    random_fill, random_seqnum, response, response_matches,
};

use crate::controller::exec::{Completion, Outcome, Queue};

/// AUTHREQ bit "authentication transaction required" (ATR) of a Connect response (DW0 bit 17).
pub const AUTHREQ_ATR: u16 = 1 << 1;

/// The secrets a subsystem holds for one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKeys {
    /// The host's secret: the host proves it knows it.
    pub host: Secret,
    /// The controller's secret, for bidirectional authentication (the host checks it).
    pub ctrl: Option<Secret>,
}

/// How long a queue may stay connected without completing authentication: the Linux host
/// authenticates right after Connect, so this only bounds what a host that never finishes (or
/// failed) may hold (a queue, a CNTLID) before its connection is closed.
pub const AUTH_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// A subsystem's authentication policy.
#[derive(Debug, Clone)]
pub struct AuthPolicy {
    /// Secrets by host NQN: a host listed here must authenticate on every queue.
    pub hosts: HashMap<String, Arc<HostKeys>>,
    /// Refuse the Connect of a host that has no secret here (Connect Invalid Host).
    pub required: bool,
    /// A queue not authenticated this long after its Connect is closed.
    pub timeout: Duration,
    /// The DH group chosen when the host offers it (`DHGROUP_NULL` or `DHGROUP_FFDHE2048`);
    /// otherwise NULL, which every host offers.
    pub dh_group: u8,
}

impl Default for AuthPolicy {
    fn default() -> Self {
        Self {
            hosts: HashMap::new(),
            required: false,
            timeout: AUTH_TIMEOUT_DEFAULT,
            dh_group: DHGROUP_NULL,
        }
    }
}

impl AuthPolicy {
    /// The policy of a cluster server's internal subsystem: only the servers in `peers` (by
    /// their host NQN, with their secrets) may connect, each must authenticate, the
    /// controller proves `own` to a peer that asks (bidirectional), and ffdhe2048 is used
    /// (every Tessera initiator offers it).
    pub fn internal(own: &Secret, peers: impl IntoIterator<Item = (String, Secret)>) -> Self {
        let hosts = peers
            .into_iter()
            .map(|(hostnqn, host)| {
                let keys = HostKeys {
                    host,
                    ctrl: Some(own.clone()),
                };
                (hostnqn, Arc::new(keys))
            })
            .collect();
        Self {
            hosts,
            required: true,
            dh_group: codec::nvme::fabrics::auth::DHGROUP_FFDHE2048,
            ..Self::default()
        }
    }

    /// The secrets `hostnqn` must authenticate with: `Ok(None)` when it need not, `Err(())`
    /// when authentication is required and there is no secret for it.
    #[allow(clippy::result_unit_err)]
    pub fn keys_for(&self, hostnqn: &str) -> Result<Option<Arc<HostKeys>>, ()> {
        match self.hosts.get(hostnqn) {
            Some(k) => Ok(Some(Arc::clone(k))),
            None if self.required => Err(()),
            None => Ok(None),
        }
    }
}

/// Where a queue's transaction is.
#[derive(Debug)]
enum State {
    /// Waiting for AUTH_Negotiate.
    AwaitNegotiate,
    /// Negotiated: the next Authentication Receive returns this Challenge (with the DH key
    /// pair whose public value it carries, for a DH group).
    ChallengeReady(Challenge, Option<DhKeyPair>),
    /// The Challenge went out: waiting for the Reply.
    AwaitReply {
        t_id: u16,
        hash: HashId,
        c1: Vec<u8>,
        s1: u32,
        dh: Option<DhKeyPair>,
    },
    /// The Reply was right: the next Authentication Receive returns Success1.
    Success1Ready(Success1),
    /// Success1 carried R2: waiting for Success2 (or AUTH_Failure2).
    AwaitSuccess2 { t_id: u16 },
    /// The next Authentication Receive returns AUTH_Failure1.
    Failure1Ready(Failure),
    /// The transaction succeeded.
    Done,
    /// The transaction failed; the queue stays closed to commands.
    Failed,
}

/// One queue's authentication.
#[derive(Debug)]
pub struct Session {
    keys: Arc<HostKeys>,
    hostnqn: String,
    subnqn: String,
    state: State,
    authenticated: bool,
    /// When the connection is closed if the queue is not authenticated by then.
    deadline: Instant,
    /// The DH group preferred by the subsystem.
    dh_group: u8,
}

impl Session {
    /// A transaction to run on a queue connected now, under `policy` (its deadline and DH
    /// group).
    pub fn new(keys: Arc<HostKeys>, hostnqn: &str, subnqn: &str, policy: &AuthPolicy) -> Self {
        let now = Instant::now();
        let timeout = policy.timeout;
        Self {
            keys,
            hostnqn: hostnqn.to_owned(),
            subnqn: subnqn.to_owned(),
            state: State::AwaitNegotiate,
            authenticated: false,
            deadline: now.checked_add(timeout).unwrap_or(now),
            dh_group: policy.dh_group,
        }
    }

    /// Whether the queue may run commands other than authentication.
    pub fn authenticated(&self) -> bool {
        self.authenticated
    }

    /// While the queue is not authenticated: when its connection is to be closed.
    pub fn deadline(&self) -> Option<Instant> {
        (!self.authenticated).then_some(self.deadline)
    }

    /// Whether the transaction ended in failure.
    pub fn failed(&self) -> bool {
        matches!(self.state, State::Failed | State::Failure1Ready(_))
    }

    fn fail(&mut self, t_id: u16, reason: FailureReason, why: &str) {
        tracing::info!(hostnqn = %self.hostnqn, subnqn = %self.subnqn, reason = reason.describe(), why, "DH-HMAC-CHAP authentication failed");
        crate::metrics::count_auth(false);
        self.authenticated = false;
        self.state = State::Failure1Ready(Failure::new(t_id, reason));
    }

    /// The data of an Authentication Send: a message from the host.
    pub fn send(&mut self, data: &[u8]) -> Result<(), Status> {
        let msg = match AuthMessage::decode(data) {
            Ok(m) => m,
            Err(e) => {
                let t_id = data
                    .get(4..6)
                    .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
                self.fail(t_id, e.reason, e.what);
                return Ok(());
            }
        };
        let state = std::mem::replace(&mut self.state, State::Failed);
        match (state, msg) {
            // A new transaction: the first one, or a re-authentication of an authenticated
            // queue (which stays usable meanwhile, as long as the new one does not fail).
            (State::AwaitNegotiate | State::Done, AuthMessage::Negotiate(n)) => self.negotiate(&n),
            (
                State::AwaitReply {
                    t_id,
                    hash,
                    c1,
                    s1,
                    dh,
                },
                AuthMessage::Reply(r),
            ) => {
                self.reply(t_id, hash, &c1, s1, dh.as_ref(), &r);
            }
            (State::AwaitSuccess2 { t_id }, AuthMessage::Success2 { t_id: got }) => {
                if got == t_id {
                    tracing::debug!(hostnqn = %self.hostnqn, "DH-HMAC-CHAP bidirectional authentication done");
                    crate::metrics::count_auth(true);
                    self.authenticated = true;
                    self.state = State::Done;
                } else {
                    self.fail(
                        t_id,
                        FailureReason::IncorrectPayload,
                        "Success2 T_ID mismatch",
                    );
                }
            }
            (State::AwaitSuccess2 { t_id }, AuthMessage::Failure2(f)) => {
                tracing::info!(hostnqn = %self.hostnqn, subnqn = %self.subnqn, t_id, reason = ?f.reason(), "host refused the controller's response (AUTH_Failure2): check the controller secret");
                crate::metrics::count_auth(false);
                self.authenticated = false;
                self.state = State::Failed;
            }
            (_, m) => self.fail(
                m.t_id(),
                FailureReason::IncorrectMessage,
                "message out of sequence",
            ),
        }
        Ok(())
    }

    fn negotiate(&mut self, n: &Negotiate) {
        if n.sc_c != 0 {
            return self.fail(
                n.t_id,
                FailureReason::ConcatMismatch,
                "secure channel concatenation is not supported",
            );
        }
        let Some(p) = n.protocols.iter().find(|p| p.authid == PROTOCOL_DHCHAP) else {
            return self.fail(
                n.t_id,
                FailureReason::ProtocolUnusable,
                "no DH-HMAC-CHAP descriptor",
            );
        };
        // SHA-256 first (the hash every host must support), then the longer ones.
        let Some(hash) = HashId::ALL
            .into_iter()
            .find(|h| p.hash_ids.contains(&(*h as u8)))
        else {
            return self.fail(
                n.t_id,
                FailureReason::HashUnusable,
                "no SHA-256/384/512 offered",
            );
        };
        let group = if p.dh_groups.contains(&self.dh_group) && dh_group_supported(self.dh_group) {
            self.dh_group
        } else if p.dh_groups.contains(&DHGROUP_NULL) {
            DHGROUP_NULL
        } else {
            return self.fail(
                n.t_id,
                FailureReason::DhGroupUnusable,
                "neither the NULL DH group nor the subsystem's was offered",
            );
        };
        let dh = if group == DHGROUP_NULL {
            None
        } else {
            match DhKeyPair::generate(group) {
                Ok(k) => Some(k),
                Err(why) => return self.fail(n.t_id, FailureReason::Failed, why),
            }
        };
        let mut c1 = vec![0u8; hash.digest_len()];
        let s1 = match (random_fill(&mut c1), random_seqnum()) {
            (Ok(()), Ok(s)) => s,
            _ => {
                return self.fail(n.t_id, FailureReason::Failed, "no random bytes");
            }
        };
        let dhv = dh.as_ref().map(|k| k.public.clone()).unwrap_or_default();
        self.state = State::ChallengeReady(
            Challenge {
                t_id: n.t_id,
                hash_id: hash as u8,
                dh_group: group,
                seqnum: s1,
                cval: c1,
                dhv,
            },
            dh,
        );
    }

    fn reply(
        &mut self,
        t_id: u16,
        hash: HashId,
        c1: &[u8],
        s1: u32,
        dh: Option<&DhKeyPair>,
        r: &Reply,
    ) {
        if r.t_id != t_id {
            return self.fail(t_id, FailureReason::IncorrectPayload, "Reply T_ID mismatch");
        }
        if r.rval.len() != hash.digest_len() {
            return self.fail(t_id, FailureReason::IncorrectPayload, "Reply HL mismatch");
        }
        // With a DH group both challenges are augmented with the shared value.
        let session = match dh {
            None if r.dhv.is_empty() => None,
            None => {
                return self.fail(
                    t_id,
                    FailureReason::IncorrectPayload,
                    "DH value with the NULL group",
                );
            }
            Some(k) => match k.shared(&r.dhv) {
                Ok(s) => Some(s),
                Err(why) => return self.fail(t_id, FailureReason::IncorrectPayload, why),
            },
        };
        let augment = |c: &[u8]| match &session {
            Some(s) => augmented_challenge(hash, s, c),
            None => c.to_vec(),
        };
        let c1 = augment(c1);
        let kh = self.keys.host.transformed(&self.hostnqn);
        let expected = response(
            Role::Host,
            &ResponseInput {
                hash,
                key: &kh,
                challenge: &c1,
                seqnum: s1,
                t_id,
                sc_c: 0,
                hostnqn: &self.hostnqn,
                subnqn: &self.subnqn,
            },
        );
        if !response_matches(&expected, &r.rval) {
            return self.fail(t_id, FailureReason::Failed, "wrong response (host secret)");
        }
        let rval = if r.cvalid {
            let Some(ctrl) = &self.keys.ctrl else {
                return self.fail(
                    t_id,
                    FailureReason::Failed,
                    "the host asked the controller to authenticate and no controller secret is set",
                );
            };
            if r.seqnum == 0 {
                return self.fail(t_id, FailureReason::IncorrectPayload, "S2 is 0");
            }
            let kc = ctrl.transformed(&self.subnqn);
            let c2 = augment(&r.cval);
            Some(response(
                Role::Controller,
                &ResponseInput {
                    hash,
                    key: &kc,
                    challenge: &c2,
                    seqnum: r.seqnum,
                    t_id,
                    sc_c: 0,
                    hostnqn: &self.hostnqn,
                    subnqn: &self.subnqn,
                },
            ))
        } else {
            None
        };
        self.state = State::Success1Ready(Success1 {
            t_id,
            hl: u8::try_from(hash.digest_len()).unwrap_or(u8::MAX),
            rval,
        });
    }

    /// An Authentication Receive: the message the host reads next.
    pub fn receive(&mut self) -> AuthMessage {
        let state = std::mem::replace(&mut self.state, State::Failed);
        match state {
            State::ChallengeReady(c, dh) => {
                let hash = HashId::from_u8(c.hash_id).unwrap_or(HashId::Sha256);
                self.state = State::AwaitReply {
                    t_id: c.t_id,
                    hash,
                    c1: c.cval.clone(),
                    s1: c.seqnum,
                    dh,
                };
                AuthMessage::Challenge(c)
            }
            State::Success1Ready(s) => {
                if s.rval.is_some() {
                    self.state = State::AwaitSuccess2 { t_id: s.t_id };
                } else {
                    tracing::debug!(hostnqn = %self.hostnqn, "DH-HMAC-CHAP authentication done");
                    crate::metrics::count_auth(true);
                    self.authenticated = true;
                    self.state = State::Done;
                }
                AuthMessage::Success1(s)
            }
            State::Failure1Ready(f) => AuthMessage::Failure1(f),
            // Nothing to read: the host is out of step.
            other => {
                let t_id = match other {
                    State::AwaitReply { t_id, .. } | State::AwaitSuccess2 { t_id } => t_id,
                    _ => 0,
                };
                tracing::info!(hostnqn = %self.hostnqn, "Authentication Receive with no message pending");
                self.authenticated = false;
                AuthMessage::Failure1(Failure::new(t_id, FailureReason::IncorrectMessage))
            }
        }
    }
}

/// Reads a secret file (a `DHHC-1:` secret as `nvme gen-dhchap-key` prints it, at most 4 KiB);
/// the error names the file.
pub fn read_secret_file(path: &std::path::Path) -> Result<Secret, String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(4096).read_to_string(&mut text))
        .map_err(|e| format!("cannot read DH-HMAC-CHAP secret {}: {e}", path.display()))?;
    Secret::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// A cluster's per-server DH-HMAC-CHAP secrets: a directory holding `<server-id>.key` for
/// every server (each made with `nvme gen-dhchap-key`). A server proves its own secret when it
/// connects to a peer's internal portal, and checks the peer's (bidirectional); its internal
/// subsystem accepts only servers whose secret it can read.
#[derive(Debug, Clone)]
pub struct ClusterSecrets {
    pub dir: std::path::PathBuf,
    /// This server's id and secret.
    pub me: String,
    pub own: Secret,
}

impl ClusterSecrets {
    /// Reads this server's secret `dir/<me>.key`; the peers' are read when needed (a server
    /// added later brings its file then).
    pub fn load(dir: &std::path::Path, me: &str) -> Result<Self, String> {
        let own = read_secret_file(&Self::path(dir, me))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            me: me.to_owned(),
            own,
        })
    }

    fn path(dir: &std::path::Path, id: &str) -> std::path::PathBuf {
        dir.join(format!("{id}.key"))
    }

    /// The secret of server `id`.
    pub fn of(&self, id: &str) -> Result<Secret, String> {
        if id == self.me {
            return Ok(self.own.clone());
        }
        read_secret_file(&Self::path(&self.dir, id))
    }

    /// The internal subsystem's policy for `servers` (ids; `hostnqn` gives each one's host
    /// NQN). A server whose secret cannot be read is left out, and said so: it cannot connect.
    pub fn policy<'a>(
        &self,
        servers: impl IntoIterator<Item = &'a str>,
        hostnqn: impl Fn(&str) -> String,
    ) -> AuthPolicy {
        let peers: Vec<(String, Secret)> = servers
            .into_iter()
            .filter_map(|id| match self.of(id) {
                Ok(s) => Some((hostnqn(id), s)),
                Err(e) => {
                    tracing::error!(server = id, error = %e, "no DH-HMAC-CHAP secret for this server: its internal connections are refused");
                    None
                }
            })
            .collect();
        AuthPolicy::internal(&self.own, peers)
    }

    /// What this server connects to peer `id`'s internal portal with: its own secret, and the
    /// peer's to check the peer (bidirectional).
    pub fn initiator(&self, id: &str) -> Result<crate::initiator::DhchapSecrets, String> {
        Ok(crate::initiator::DhchapSecrets {
            host: self.own.clone(),
            ctrl: Some(self.of(id)?),
        })
    }
}

/// SECP/SPSP of an authentication command: NVMe in-band authentication, DH-HMAC-CHAP.
fn check_protocol(secp: u8, spsp0: u8, spsp1: u8) -> Result<(), Status> {
    if secp != SECP_NVME_AUTH || spsp0 != SPSP0_DHCHAP || spsp1 != SPSP1_DHCHAP {
        return Err(Status::INVALID_FIELD.with_dnr());
    }
    Ok(())
}

/// The session of a queue that must authenticate, or the status for an authentication
/// command on a queue that has none.
fn session(queue: &mut Queue) -> Result<&mut Session, Status> {
    if queue.ctrl.is_none() {
        return Err(Status::CMD_SEQ_ERROR.with_dnr());
    }
    // No secret for this host: no transaction to run (Connect answered AUTHREQ 0).
    queue
        .auth
        .as_deref_mut()
        .ok_or(Status::INVALID_OPCODE.with_dnr())
}

/// Authentication Send.
pub fn send(queue: &mut Queue, cmd: AuthSend, data: &[u8]) -> Outcome {
    let mut run = || -> Result<Completion, Status> {
        check_protocol(cmd.secp, cmd.spsp0, cmd.spsp1)?;
        let tl = usize::try_from(cmd.tl).unwrap_or(usize::MAX);
        if tl == 0 || tl > MESSAGE_LEN_MAX || data.len() != tl {
            return Err(Status::INVALID_FIELD.with_dnr());
        }
        session(queue)?.send(data)?;
        Ok(Completion::ok())
    };
    run().into()
}

/// Authentication Receive: the next message, zero-padded to the Allocation Length.
pub fn receive(queue: &mut Queue, cmd: AuthReceive) -> Outcome {
    let mut run = || -> Result<Completion, Status> {
        check_protocol(cmd.secp, cmd.spsp0, cmd.spsp1)?;
        let al = usize::try_from(cmd.al).unwrap_or(usize::MAX);
        if al == 0 || al > MESSAGE_LEN_MAX {
            return Err(Status::INVALID_FIELD.with_dnr());
        }
        let s = session(queue)?;
        let mut msg = s.receive().encode();
        if msg.len() > al {
            // The host's buffer cannot hold the message: the transaction cannot go on.
            s.fail(
                0,
                FailureReason::IncorrectPayload,
                "Allocation Length too small",
            );
            return Err(Status::INVALID_FIELD.with_dnr());
        }
        msg.resize(al, 0);
        Ok(Completion::data(Bytes::from(msg)))
    };
    run().into()
}

/// Commands other than Connect, Authentication Send/Receive and Disconnect need an
/// authenticated queue where authentication is required.
pub fn check(queue: &Queue) -> Result<(), Status> {
    match &queue.auth {
        Some(s) if !s.authenticated() => Err(Status::AUTH_REQUIRED.with_dnr()),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;
    use codec::nvme::fabrics::auth::{Descriptor, auth_id};

    const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:host";
    const SUB: &str = "nqn.2024-01.io.tessera:sub";

    fn secret(b: u8, t: Option<HashId>) -> Secret {
        Secret {
            transform: t,
            key: vec![b; 32],
        }
    }

    fn negotiate(t_id: u16, hashes: Vec<u8>) -> Vec<u8> {
        AuthMessage::Negotiate(Negotiate {
            t_id,
            sc_c: 0,
            protocols: vec![Descriptor {
                authid: PROTOCOL_DHCHAP,
                hash_ids: hashes,
                dh_groups: vec![0, 1],
            }],
        })
        .encode()
    }

    /// Runs a transaction with `host_secret` (and `ctrl_check` for a bidirectional one);
    /// returns the session and the last message the host read.
    fn run(
        keys: HostKeys,
        host_secret: &Secret,
        ctrl_check: Option<&Secret>,
    ) -> (Session, AuthMessage) {
        let mut s = Session::new(Arc::new(keys), HOST, SUB, &AuthPolicy::default());
        assert!(!s.authenticated());
        s.send(&negotiate(7, vec![3, 2])).expect("send");
        let AuthMessage::Challenge(c) = s.receive() else {
            panic!("no challenge")
        };
        assert_eq!((c.hash_id, c.dh_group, c.t_id), (2, 0, 7), "SHA-384 chosen");
        assert_ne!(c.seqnum, 0);
        let hash = HashId::Sha384;
        let kh = host_secret.transformed(HOST);
        let rval = response(
            Role::Host,
            &ResponseInput {
                hash,
                key: &kh,
                challenge: &c.cval,
                seqnum: c.seqnum,
                t_id: 7,
                sc_c: 0,
                hostnqn: HOST,
                subnqn: SUB,
            },
        );
        let c2 = vec![0x5a; hash.digest_len()];
        let reply = Reply {
            t_id: 7,
            rval,
            cvalid: ctrl_check.is_some(),
            seqnum: u32::from(ctrl_check.is_some()) * 99,
            cval: c2.clone(),
            dhv: Vec::new(),
        };
        s.send(&AuthMessage::Reply(reply).encode()).expect("send");
        let m = s.receive();
        if let (Some(cs), AuthMessage::Success1(ok)) = (ctrl_check, &m) {
            let kc = cs.transformed(SUB);
            let want = response(
                Role::Controller,
                &ResponseInput {
                    hash,
                    key: &kc,
                    challenge: &c2,
                    seqnum: 99,
                    t_id: 7,
                    sc_c: 0,
                    hostnqn: HOST,
                    subnqn: SUB,
                },
            );
            assert_eq!(ok.rval.as_deref(), Some(&want[..]));
            assert!(!s.authenticated(), "not before Success2");
            s.send(&AuthMessage::Success2 { t_id: 7 }.encode())
                .expect("send");
        }
        (s, m)
    }

    #[test]
    fn internal_policy_and_secret_files() {
        let own = secret(3, None);
        let p = AuthPolicy::internal(&own, [("nqn.h1".to_owned(), secret(4, None))]);
        assert!(p.required);
        assert_eq!(p.dh_group, codec::nvme::fabrics::auth::DHGROUP_FFDHE2048);
        let k = p.keys_for("nqn.h1").expect("listed").expect("keys");
        assert_eq!(
            (k.host.key[0], k.ctrl.as_ref().map(|c| c.key[0])),
            (4, Some(3))
        );
        assert_eq!(p.keys_for("nqn.other"), Err(()));
        let dir = std::env::temp_dir().join(format!("tessera-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("s1.key");
        std::fs::write(&f, format!("{}\n", own.to_text())).expect("write");
        assert_eq!(read_secret_file(&f), Ok(own.clone()));
        std::fs::write(&f, "DHHC-1:00:AAAA:").expect("write");
        assert!(read_secret_file(&f).expect_err("short").contains("s1.key"));
        assert!(read_secret_file(&dir.join("none.key")).is_err());
        // A cluster's secrets directory.
        let s2 = secret(5, None);
        std::fs::write(&f, own.to_text()).expect("write");
        std::fs::write(dir.join("s2.key"), s2.to_text()).expect("write");
        let cs = ClusterSecrets::load(&dir, "s1").expect("own secret");
        assert_eq!(cs.of("s2"), Ok(s2.clone()));
        assert!(cs.of("s3").is_err());
        let p = cs.policy(["s1", "s2", "s3"], |id| format!("nqn.x:server:{id}"));
        assert_eq!(p.hosts.len(), 2, "s3 has no secret: left out");
        let i = cs.initiator("s2").expect("peer secret");
        assert_eq!((i.host, i.ctrl), (own.clone(), Some(s2)));
        assert!(ClusterSecrets::load(&dir, "s9").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn right_secret_authenticates() {
        let k = secret(1, Some(HashId::Sha256));
        let (s, m) = run(
            HostKeys {
                host: k.clone(),
                ctrl: None,
            },
            &k,
            None,
        );
        assert!(matches!(
            m,
            AuthMessage::Success1(Success1 { rval: None, .. })
        ));
        assert!(s.authenticated());
    }

    #[test]
    fn bidirectional() {
        let k = secret(1, None);
        let c = secret(2, Some(HashId::Sha512));
        let (s, _) = run(
            HostKeys {
                host: k.clone(),
                ctrl: Some(c.clone()),
            },
            &k,
            Some(&c),
        );
        assert!(s.authenticated());
        // Without a controller secret the controller cannot prove itself.
        let (s, m) = run(
            HostKeys {
                host: k.clone(),
                ctrl: None,
            },
            &k,
            Some(&c),
        );
        assert!(!s.authenticated());
        assert!(matches!(m, AuthMessage::Failure1(f) if f.reason() == Some(FailureReason::Failed)));
    }

    #[test]
    fn wrong_secret_fails() {
        let (s, m) = run(
            HostKeys {
                host: secret(1, None),
                ctrl: None,
            },
            &secret(9, None),
            None,
        );
        let AuthMessage::Failure1(f) = m else {
            panic!("expected Failure1, got {m:?}")
        };
        assert_eq!((f.t_id, f.reason()), (7, Some(FailureReason::Failed)));
        assert!(!s.authenticated());
        assert!(s.failed());
    }

    #[test]
    fn bad_sequences() {
        let keys = Arc::new(HostKeys {
            host: secret(1, None),
            ctrl: None,
        });
        // Receive first.
        let mut s = Session::new(keys.clone(), HOST, SUB, &AuthPolicy::default());
        let m = s.receive();
        assert!(
            matches!(m, AuthMessage::Failure1(f) if f.reason() == Some(FailureReason::IncorrectMessage))
        );
        // Garbage, then the failure is what the host reads.
        let mut s = Session::new(keys.clone(), HOST, SUB, &AuthPolicy::default());
        s.send(&[1, auth_id::REPLY, 0, 0, 4, 0]).expect("send");
        let m = s.receive();
        assert!(
            matches!(m, AuthMessage::Failure1(f) if f.t_id == 4 && f.reason() == Some(FailureReason::IncorrectPayload))
        );
        // No acceptable hash, no NULL group.
        let mut s = Session::new(keys.clone(), HOST, SUB, &AuthPolicy::default());
        s.send(&negotiate(1, vec![9])).expect("send");
        assert!(
            matches!(s.receive(), AuthMessage::Failure1(f) if f.reason() == Some(FailureReason::HashUnusable))
        );
        let mut s = Session::new(keys.clone(), HOST, SUB, &AuthPolicy::default());
        let mut n = negotiate(1, vec![1]);
        n[8 + 4 + 30] = 1; // the DH list now holds 1, 1: no NULL group.
        s.send(&n).expect("send");
        assert!(
            matches!(s.receive(), AuthMessage::Failure1(f) if f.reason() == Some(FailureReason::DhGroupUnusable))
        );
        // A Reply with another T_ID.
        let mut s = Session::new(keys, HOST, SUB, &AuthPolicy::default());
        s.send(&negotiate(1, vec![1])).expect("send");
        let _ = s.receive();
        let r = Reply {
            t_id: 2,
            rval: vec![0; 32],
            cvalid: false,
            seqnum: 0,
            cval: vec![0; 32],
            dhv: vec![],
        };
        s.send(&AuthMessage::Reply(r).encode()).expect("send");
        assert!(
            matches!(s.receive(), AuthMessage::Failure1(f) if f.reason() == Some(FailureReason::IncorrectPayload))
        );
        assert!(!s.authenticated());
    }
}
