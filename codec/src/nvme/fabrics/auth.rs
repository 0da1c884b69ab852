//! NVMe in-band authentication with DH-HMAC-CHAP (NVMe Base 2.0, section 8.13; the messages
//! travel as the data of Authentication Send and Authentication Receive, section 6.2/6.3).
//!
//! * The messages: AUTH_Negotiate, DH-HMAC-CHAP_Challenge, _Reply, _Success1, _Success2, and
//!   AUTH_Failure1/AUTH_Failure2, with their byte layouts ([`AuthMessage`]).
//! * Secrets in the `DHHC-1:XX:<base64 of key and CRC-32>:` text form `nvme gen-dhchap-key`
//!   prints ([`Secret`]), the key transform (`HMAC(key, NQN || "NVMe-over-Fabrics")`) and the
//!   response value each side computes ([`response`]).
//!
//! The transaction (host H, controller C), for the NULL Diffie-Hellman group:
//!
//! 1. H -> C  AUTH_Negotiate: transaction ID, the hashes and DH groups H accepts.
//! 2. C -> H  Challenge: the hash chosen, a sequence number S1 and a random challenge C1.
//! 3. H -> C  Reply: R1 = HMAC(Kh, C1 || S1 || T_ID || SC_C || "HostHost" || HostNQN || 0 ||
//!    SubNQN), and, to authenticate the controller too, its own S2 and C2.
//! 4. C -> H  Success1 (with R2 = HMAC(Kc, C2 || S2 || T_ID || SC_C || "Controller" || SubNQN ||
//!    0 || HostNQN) when asked), or AUTH_Failure1.
//! 5. H -> C  Success2 when H checked R2 (or AUTH_Failure2 when R2 was wrong).
//!
//! Kh is the host's secret transformed with the host NQN, Kc the controller's secret
//! transformed with the subsystem NQN. Integers are little-endian.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Sha256, Sha384, Sha512};

/// Little-endian fields of a slice whose length the caller checked (0 if out of range).
fn get_u16(b: &[u8], off: usize) -> u16 {
    b.get(off..off + 2)
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}

fn get_u32(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn put_u16(b: &mut [u8], off: usize, v: u16) {
    if let Some(s) = b.get_mut(off..off + 2) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    if let Some(s) = b.get_mut(off..off + 4) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

/// SECP of Authentication Send/Receive for NVMe in-band authentication.
pub const SECP_NVME_AUTH: u8 = 0xE9;
/// SPSP0 and SPSP1 of Authentication Send/Receive for DH-HMAC-CHAP.
pub const SPSP0_DHCHAP: u8 = 0x01;
pub const SPSP1_DHCHAP: u8 = 0x01;

/// AUTH_Type of common messages (AUTH_Negotiate, AUTH_Failure1/2).
pub const AUTH_TYPE_COMMON: u8 = 0x00;
/// AUTH_Type of DH-HMAC-CHAP messages.
pub const AUTH_TYPE_DHCHAP: u8 = 0x01;

/// AUTH_Id values.
pub mod auth_id {
    pub const NEGOTIATE: u8 = 0x00;
    pub const CHALLENGE: u8 = 0x01;
    pub const REPLY: u8 = 0x02;
    pub const SUCCESS1: u8 = 0x03;
    pub const SUCCESS2: u8 = 0x04;
    pub const FAILURE2: u8 = 0xF0;
    pub const FAILURE1: u8 = 0xF1;
}

/// AUTHID of a DH-HMAC-CHAP protocol descriptor in AUTH_Negotiate.
pub const PROTOCOL_DHCHAP: u8 = 0x01;
/// Size of one protocol descriptor in AUTH_Negotiate.
pub const DESCRIPTOR_LEN: usize = 64;
/// Identifiers one descriptor holds: 30 hash IDs, then 30 DH group IDs.
pub const DESCRIPTOR_IDS_MAX: usize = 30;
/// Header of AUTH_Negotiate (before the descriptors).
pub const NEGOTIATE_HEADER_LEN: usize = 8;
/// Header of Challenge, Reply, Success1 (before the values), and the whole Success2.
pub const DHCHAP_HEADER_LEN: usize = 16;
/// Size of AUTH_Failure1/AUTH_Failure2.
pub const FAILURE_LEN: usize = 8;
/// The largest message this implementation sends or accepts: a Reply with SHA-512 and no DH
/// value is 144 bytes; AUTH_Negotiate with many descriptors is the only longer one.
pub const MESSAGE_LEN_MAX: usize = 4096;

/// DH group identifier of the NULL group (no Diffie-Hellman exchange).
pub const DHGROUP_NULL: u8 = 0x00;
/// DH group identifier of ffdhe2048 (RFC 7919, 2048-bit safe prime, generator 2).
pub const DHGROUP_FFDHE2048: u8 = 0x01;

/// The Diffie-Hellman groups this implementation runs (NULL and ffdhe2048).
pub fn dh_group_supported(id: u8) -> bool {
    id == DHGROUP_NULL || id == DHGROUP_FFDHE2048
}

/// The name of a DH group identifier (as nvme-cli and Linux spell them).
pub fn dh_group_name(id: u8) -> &'static str {
    match id {
        0x00 => "null",
        0x01 => "ffdhe2048",
        0x02 => "ffdhe3072",
        0x03 => "ffdhe4096",
        0x04 => "ffdhe6144",
        0x05 => "ffdhe8192",
        _ => "unknown",
    }
}

/// Reason code of AUTH_Failure1/2 ("authentication failure").
pub const FAILURE_RC: u8 = 0x01;

/// Reason code explanations of AUTH_Failure1/2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FailureReason {
    /// The response value was wrong (wrong secret).
    Failed = 0x01,
    /// No protocol both sides accept.
    ProtocolUnusable = 0x02,
    /// Secure channel concatenation asked for and not supported.
    ConcatMismatch = 0x03,
    /// No hash function both sides accept.
    HashUnusable = 0x04,
    /// No DH group both sides accept.
    DhGroupUnusable = 0x05,
    /// A message field is wrong (length, transaction ID...).
    IncorrectPayload = 0x06,
    /// A message out of sequence or of an unknown type.
    IncorrectMessage = 0x07,
}

impl FailureReason {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0x01 => Self::Failed,
            0x02 => Self::ProtocolUnusable,
            0x03 => Self::ConcatMismatch,
            0x04 => Self::HashUnusable,
            0x05 => Self::DhGroupUnusable,
            0x06 => Self::IncorrectPayload,
            0x07 => Self::IncorrectMessage,
            _ => return None,
        })
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Failed => "authentication failed (wrong secret)",
            Self::ProtocolUnusable => "authentication protocol not usable",
            Self::ConcatMismatch => "secure channel concatenation mismatch",
            Self::HashUnusable => "hash function not usable",
            Self::DhGroupUnusable => "DH group not usable",
            Self::IncorrectPayload => "incorrect payload",
            Self::IncorrectMessage => "incorrect protocol message",
        }
    }
}

/// A hash function of DH-HMAC-CHAP (HMAC identifier).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum HashId {
    Sha256 = 0x01,
    Sha384 = 0x02,
    Sha512 = 0x03,
}

impl HashId {
    pub const ALL: [HashId; 3] = [Self::Sha256, Self::Sha384, Self::Sha512];

    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0x01 => Self::Sha256,
            0x02 => Self::Sha384,
            0x03 => Self::Sha512,
            _ => return None,
        })
    }

    /// Digest length in bytes (the challenge and response lengths, HL).
    pub fn digest_len(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }

    /// The hash whose digest is `hl` bytes long.
    pub fn from_len(hl: usize) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.digest_len() == hl)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "SHA-256",
            Self::Sha384 => "SHA-384",
            Self::Sha512 => "SHA-512",
        }
    }

    /// The plain hash of `data`.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        match self {
            Self::Sha256 => Sha256::digest(data).to_vec(),
            Self::Sha384 => Sha384::digest(data).to_vec(),
            Self::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// HMAC of the concatenation of `parts` under `key`.
    pub fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
            // HMAC accepts a key of any length: new_from_slice cannot fail for it.
            let mut m = match <M as hmac::digest::KeyInit>::new_from_slice(key) {
                Ok(m) => m,
                Err(_) => return Vec::new(),
            };
            for p in parts {
                m.update(p);
            }
            m.finalize().into_bytes().to_vec()
        }
        match self {
            Self::Sha256 => run::<Hmac<Sha256>>(key, parts),
            Self::Sha384 => run::<Hmac<Sha384>>(key, parts),
            Self::Sha512 => run::<Hmac<Sha512>>(key, parts),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

/// One DH-HMAC-CHAP protocol descriptor of AUTH_Negotiate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// AUTHID: [`PROTOCOL_DHCHAP`] is the only protocol defined.
    pub authid: u8,
    /// Hash function identifiers, at most 30.
    pub hash_ids: Vec<u8>,
    /// DH group identifiers, at most 30.
    pub dh_groups: Vec<u8>,
}

/// AUTH_Negotiate (host to controller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiate {
    pub t_id: u16,
    /// Secure channel concatenation (0: none; anything else is not supported here).
    pub sc_c: u8,
    pub protocols: Vec<Descriptor>,
}

/// DH-HMAC-CHAP_Challenge (controller to host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub t_id: u16,
    /// Raw HASHID (a [`HashId`] when valid).
    pub hash_id: u8,
    pub dh_group: u8,
    /// S1.
    pub seqnum: u32,
    /// C1, HL bytes.
    pub cval: Vec<u8>,
    /// The controller's DH value (empty for the NULL group).
    pub dhv: Vec<u8>,
}

/// DH-HMAC-CHAP_Reply (host to controller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub t_id: u16,
    /// R1, HL bytes.
    pub rval: Vec<u8>,
    /// The host asks the controller to authenticate itself (C2 and S2 are valid).
    pub cvalid: bool,
    /// S2 (0 when `cvalid` is false).
    pub seqnum: u32,
    /// C2, HL bytes (zeroes when `cvalid` is false).
    pub cval: Vec<u8>,
    /// The host's DH value (empty for the NULL group).
    pub dhv: Vec<u8>,
}

/// DH-HMAC-CHAP_Success1 (controller to host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Success1 {
    pub t_id: u16,
    /// HL.
    pub hl: u8,
    /// R2 when the host asked for it (RVALID).
    pub rval: Option<Vec<u8>>,
}

/// AUTH_Failure1 (controller to host) or AUTH_Failure2 (host to controller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub t_id: u16,
    /// Reason code ([`FAILURE_RC`]).
    pub rescode: u8,
    /// Reason code explanation (a [`FailureReason`] when known).
    pub rescode_exp: u8,
}

impl Failure {
    pub fn new(t_id: u16, reason: FailureReason) -> Self {
        Self {
            t_id,
            rescode: FAILURE_RC,
            rescode_exp: reason as u8,
        }
    }

    pub fn reason(&self) -> Option<FailureReason> {
        FailureReason::from_u8(self.rescode_exp)
    }
}

/// Any authentication message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMessage {
    Negotiate(Negotiate),
    Challenge(Challenge),
    Reply(Reply),
    Success1(Success1),
    Success2 { t_id: u16 },
    Failure1(Failure),
    Failure2(Failure),
}

/// Why a message could not be decoded, and the failure reason to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError {
    pub what: &'static str,
    pub reason: FailureReason,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.what, self.reason.describe())
    }
}

impl std::error::Error for DecodeError {}

fn payload(what: &'static str) -> DecodeError {
    DecodeError {
        what,
        reason: FailureReason::IncorrectPayload,
    }
}

fn message(what: &'static str) -> DecodeError {
    DecodeError {
        what,
        reason: FailureReason::IncorrectMessage,
    }
}

/// `b[off..off + len]`, or the error.
fn slice<'a>(
    b: &'a [u8],
    off: usize,
    len: usize,
    what: &'static str,
) -> Result<&'a [u8], DecodeError> {
    off.checked_add(len)
        .and_then(|end| b.get(off..end))
        .ok_or(payload(what))
}

/// A length that fits the one-byte HL field (digests are at most 64 bytes).
fn hl_byte(len: usize) -> u8 {
    u8::try_from(len).unwrap_or(u8::MAX)
}

/// A DH value length in the two-byte DHVLEN field.
fn dhvlen(len: usize) -> u16 {
    u16::try_from(len).unwrap_or(u16::MAX)
}

impl AuthMessage {
    /// The transaction ID every message carries at bytes 4..6.
    pub fn t_id(&self) -> u16 {
        match self {
            Self::Negotiate(m) => m.t_id,
            Self::Challenge(m) => m.t_id,
            Self::Reply(m) => m.t_id,
            Self::Success1(m) => m.t_id,
            Self::Success2 { t_id } => *t_id,
            Self::Failure1(m) | Self::Failure2(m) => m.t_id,
        }
    }

    /// A short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Negotiate(_) => "AUTH_Negotiate",
            Self::Challenge(_) => "DH-HMAC-CHAP_Challenge",
            Self::Reply(_) => "DH-HMAC-CHAP_Reply",
            Self::Success1(_) => "DH-HMAC-CHAP_Success1",
            Self::Success2 { .. } => "DH-HMAC-CHAP_Success2",
            Self::Failure1(_) => "AUTH_Failure1",
            Self::Failure2(_) => "AUTH_Failure2",
        }
    }

    /// Decode one message. Every length field is checked against the buffer; bytes past the
    /// message's end are ignored (a transfer may be padded).
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() > MESSAGE_LEN_MAX {
            return Err(payload("message longer than 4096 bytes"));
        }
        let hdr = slice(b, 0, 6, "message shorter than its 6-byte header")?;
        let (ty, id) = (hdr[0], hdr[1]);
        let t_id = get_u16(hdr, 4);
        match (ty, id) {
            (AUTH_TYPE_COMMON, auth_id::NEGOTIATE) => Self::decode_negotiate(b, t_id),
            (AUTH_TYPE_COMMON, auth_id::FAILURE1 | auth_id::FAILURE2) => {
                let f = slice(b, 0, FAILURE_LEN, "AUTH_Failure shorter than 8 bytes")?;
                let fail = Failure {
                    t_id,
                    rescode: f[6],
                    rescode_exp: f[7],
                };
                Ok(if id == auth_id::FAILURE1 {
                    Self::Failure1(fail)
                } else {
                    Self::Failure2(fail)
                })
            }
            (AUTH_TYPE_DHCHAP, auth_id::CHALLENGE) => {
                let h = slice(b, 0, DHCHAP_HEADER_LEN, "Challenge shorter than 16 bytes")?;
                let hl = usize::from(h[6]);
                if HashId::from_len(hl).is_none() {
                    return Err(payload("Challenge HL is not 32, 48 or 64"));
                }
                let dhvlen = usize::from(get_u16(h, 10));
                let cval = slice(b, DHCHAP_HEADER_LEN, hl, "Challenge shorter than HL")?;
                let dhv = slice(
                    b,
                    DHCHAP_HEADER_LEN + hl,
                    dhvlen,
                    "Challenge shorter than HL + DHVLEN",
                )?;
                Ok(Self::Challenge(Challenge {
                    t_id,
                    hash_id: h[8],
                    dh_group: h[9],
                    seqnum: get_u32(h, 12),
                    cval: cval.to_vec(),
                    dhv: dhv.to_vec(),
                }))
            }
            (AUTH_TYPE_DHCHAP, auth_id::REPLY) => {
                let h = slice(b, 0, DHCHAP_HEADER_LEN, "Reply shorter than 16 bytes")?;
                let hl = usize::from(h[6]);
                if HashId::from_len(hl).is_none() {
                    return Err(payload("Reply HL is not 32, 48 or 64"));
                }
                let dhvlen = usize::from(get_u16(h, 10));
                let rval = slice(b, DHCHAP_HEADER_LEN, hl, "Reply shorter than HL")?;
                let cval = slice(b, DHCHAP_HEADER_LEN + hl, hl, "Reply shorter than 2 * HL")?;
                let dhv = slice(
                    b,
                    DHCHAP_HEADER_LEN + 2 * hl,
                    dhvlen,
                    "Reply shorter than 2 * HL + DHVLEN",
                )?;
                Ok(Self::Reply(Reply {
                    t_id,
                    rval: rval.to_vec(),
                    cvalid: h[8] & 1 != 0,
                    seqnum: get_u32(h, 12),
                    cval: cval.to_vec(),
                    dhv: dhv.to_vec(),
                }))
            }
            (AUTH_TYPE_DHCHAP, auth_id::SUCCESS1) => {
                let h = slice(b, 0, DHCHAP_HEADER_LEN, "Success1 shorter than 16 bytes")?;
                let hl = h[6];
                let rval = if h[8] & 1 != 0 {
                    if HashId::from_len(usize::from(hl)).is_none() {
                        return Err(payload("Success1 HL is not 32, 48 or 64"));
                    }
                    Some(
                        slice(
                            b,
                            DHCHAP_HEADER_LEN,
                            usize::from(hl),
                            "Success1 shorter than HL",
                        )?
                        .to_vec(),
                    )
                } else {
                    None
                };
                Ok(Self::Success1(Success1 { t_id, hl, rval }))
            }
            (AUTH_TYPE_DHCHAP, auth_id::SUCCESS2) => {
                slice(b, 0, DHCHAP_HEADER_LEN, "Success2 shorter than 16 bytes")?;
                Ok(Self::Success2 { t_id })
            }
            (AUTH_TYPE_COMMON | AUTH_TYPE_DHCHAP, _) => Err(message("unknown AUTH_Id")),
            _ => Err(message("unknown AUTH_Type")),
        }
    }

    fn decode_negotiate(b: &[u8], t_id: u16) -> Result<Self, DecodeError> {
        let h = slice(
            b,
            0,
            NEGOTIATE_HEADER_LEN,
            "AUTH_Negotiate shorter than 8 bytes",
        )?;
        let napd = usize::from(h[7]);
        if napd == 0 {
            return Err(payload("AUTH_Negotiate names no protocol (NAPD 0)"));
        }
        let mut protocols = Vec::with_capacity(napd);
        for i in 0..napd {
            let d = slice(
                b,
                NEGOTIATE_HEADER_LEN + i * DESCRIPTOR_LEN,
                DESCRIPTOR_LEN,
                "AUTH_Negotiate shorter than its NAPD descriptors",
            )?;
            let (halen, dhlen) = (usize::from(d[2]), usize::from(d[3]));
            if halen > DESCRIPTOR_IDS_MAX || dhlen > DESCRIPTOR_IDS_MAX {
                return Err(payload("AUTH_Negotiate HALEN or DHLEN above 30"));
            }
            protocols.push(Descriptor {
                authid: d[0],
                hash_ids: d[4..4 + halen].to_vec(),
                dh_groups: d[4 + DESCRIPTOR_IDS_MAX..4 + DESCRIPTOR_IDS_MAX + dhlen].to_vec(),
            });
        }
        Ok(Self::Negotiate(Negotiate {
            t_id,
            sc_c: h[6],
            protocols,
        }))
    }

    /// Encode the message (lists longer than their fields allow are cut).
    pub fn encode(&self) -> Vec<u8> {
        let header = |ty: u8, id: u8, len: usize| {
            let mut v = vec![0u8; len];
            v[0] = ty;
            v[1] = id;
            put_u16(&mut v, 4, self.t_id());
            v
        };
        match self {
            Self::Negotiate(m) => {
                let napd = m.protocols.len().min(usize::from(u8::MAX));
                let mut v = header(
                    AUTH_TYPE_COMMON,
                    auth_id::NEGOTIATE,
                    NEGOTIATE_HEADER_LEN + napd * DESCRIPTOR_LEN,
                );
                v[6] = m.sc_c;
                v[7] = hl_byte(napd);
                for (i, p) in m.protocols.iter().take(napd).enumerate() {
                    let d = &mut v[NEGOTIATE_HEADER_LEN + i * DESCRIPTOR_LEN..][..DESCRIPTOR_LEN];
                    let halen = p.hash_ids.len().min(DESCRIPTOR_IDS_MAX);
                    let dhlen = p.dh_groups.len().min(DESCRIPTOR_IDS_MAX);
                    d[0] = p.authid;
                    d[2] = hl_byte(halen);
                    d[3] = hl_byte(dhlen);
                    d[4..4 + halen].copy_from_slice(&p.hash_ids[..halen]);
                    d[4 + DESCRIPTOR_IDS_MAX..4 + DESCRIPTOR_IDS_MAX + dhlen]
                        .copy_from_slice(&p.dh_groups[..dhlen]);
                }
                v
            }
            Self::Challenge(m) => {
                let mut v = header(AUTH_TYPE_DHCHAP, auth_id::CHALLENGE, DHCHAP_HEADER_LEN);
                v[6] = hl_byte(m.cval.len());
                v[8] = m.hash_id;
                v[9] = m.dh_group;
                put_u16(&mut v, 10, dhvlen(m.dhv.len()));
                put_u32(&mut v, 12, m.seqnum);
                v.extend_from_slice(&m.cval);
                v.extend_from_slice(&m.dhv);
                v
            }
            Self::Reply(m) => {
                let mut v = header(AUTH_TYPE_DHCHAP, auth_id::REPLY, DHCHAP_HEADER_LEN);
                v[6] = hl_byte(m.rval.len());
                v[8] = u8::from(m.cvalid);
                put_u16(&mut v, 10, dhvlen(m.dhv.len()));
                put_u32(&mut v, 12, m.seqnum);
                v.extend_from_slice(&m.rval);
                // C2 always takes HL bytes, zeroes when not valid.
                let mut c2 = m.cval.clone();
                c2.resize(m.rval.len(), 0);
                v.extend_from_slice(&c2);
                v.extend_from_slice(&m.dhv);
                v
            }
            Self::Success1(m) => {
                let mut v = header(AUTH_TYPE_DHCHAP, auth_id::SUCCESS1, DHCHAP_HEADER_LEN);
                v[6] = m.hl;
                if let Some(r) = &m.rval {
                    v[8] = 1;
                    v.extend_from_slice(r);
                }
                v
            }
            Self::Success2 { .. } => header(AUTH_TYPE_DHCHAP, auth_id::SUCCESS2, DHCHAP_HEADER_LEN),
            Self::Failure1(f) | Self::Failure2(f) => {
                let id = if matches!(self, Self::Failure1(_)) {
                    auth_id::FAILURE1
                } else {
                    auth_id::FAILURE2
                };
                let mut v = header(AUTH_TYPE_COMMON, id, FAILURE_LEN);
                v[6] = f.rescode;
                v[7] = f.rescode_exp;
                v
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Secrets and responses
// ---------------------------------------------------------------------------------------------

/// The text that follows the NQNs in the key transform.
const TRANSFORM_SUFFIX: &[u8] = b"NVMe-over-Fabrics";

/// A DH-HMAC-CHAP secret as `nvme gen-dhchap-key` prints it: `DHHC-1:XX:<base64>:` where XX
/// is the hash the key is transformed with before use (00 none, 01 SHA-256, 02 SHA-384,
/// 03 SHA-512) and the base64 holds the 32, 48 or 64-byte key followed by its CRC-32
/// (the ISO-HDLC/zlib polynomial), little-endian.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    /// The transform hash (`None`: the key is used as it is).
    pub transform: Option<HashId>,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("transform", &self.transform)
            .field("key_len", &self.key.len())
            .finish()
    }
}

/// Why a secret string is not a usable DHHC-1 secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretError(pub String);

impl std::fmt::Display for SecretError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SecretError {}

/// Key lengths a secret may have.
pub const SECRET_KEY_LENS: [usize; 3] = [32, 48, 64];

/// CRC-32 (ISO-HDLC, as zlib) of a DHHC-1 key.
pub fn key_crc32(key: &[u8]) -> u32 {
    crc_fast::crc32_iso_hdlc(key)
}

impl Secret {
    /// Parse `DHHC-1:XX:<base64>:` (surrounding whitespace, such as a file's final newline, is
    /// ignored).
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        const EXPECTED: &str = "expected DHHC-1:XX:<base64>: as printed by nvme gen-dhchap-key";
        let err = |m: &str| SecretError(format!("{m} ({EXPECTED})"));
        let s = text.trim();
        let rest = s
            .strip_prefix("DHHC-1:")
            .ok_or_else(|| err("secret does not start with DHHC-1:"))?;
        let (hash, rest) = rest
            .split_once(':')
            .ok_or_else(|| err("secret has no hash field"))?;
        let b64 = rest
            .strip_suffix(':')
            .ok_or_else(|| err("secret does not end with ':'"))?;
        let transform = match hash {
            "00" => None,
            "01" => Some(HashId::Sha256),
            "02" => Some(HashId::Sha384),
            "03" => Some(HashId::Sha512),
            other => {
                return Err(err(&format!(
                    "secret hash field {other:?} is not 00, 01, 02 or 03"
                )));
            }
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| err(&format!("secret is not valid base64: {e}")))?;
        let key_len = raw.len().saturating_sub(4);
        if raw.len() < 4 || !SECRET_KEY_LENS.contains(&key_len) {
            return Err(err(&format!(
                "secret key is {key_len} bytes long (expected 32, 48 or 64 bytes and a CRC-32)"
            )));
        }
        let (key, crc) = raw.split_at(key_len);
        let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if key_crc32(key) != stored {
            return Err(err(
                "secret CRC-32 does not match its key (a mistyped secret?)",
            ));
        }
        Ok(Self {
            transform,
            key: key.to_vec(),
        })
    }

    /// A new random secret of `key_len` bytes (32, 48 or 64).
    pub fn generate(transform: Option<HashId>, key_len: usize) -> Result<Self, SecretError> {
        if !SECRET_KEY_LENS.contains(&key_len) {
            return Err(SecretError(format!(
                "key length {key_len} (expected 32, 48 or 64)"
            )));
        }
        let mut key = vec![0u8; key_len];
        random_fill(&mut key).map_err(|e| SecretError(format!("no random bytes: {e}")))?;
        Ok(Self { transform, key })
    }

    /// The `DHHC-1:XX:<base64>:` text.
    pub fn to_text(&self) -> String {
        let mut raw = self.key.clone();
        raw.extend_from_slice(&key_crc32(&self.key).to_le_bytes());
        let hash = self.transform.map_or(0, |h| h as u8);
        format!(
            "DHHC-1:{hash:02x}:{}:",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }

    /// The key used in responses: the key itself, or HMAC(key, NQN || "NVMe-over-Fabrics")
    /// with the secret's hash. The host's secret is transformed with the host NQN, the
    /// controller's with the subsystem NQN.
    pub fn transformed(&self, nqn: &str) -> Vec<u8> {
        match self.transform {
            None => self.key.clone(),
            Some(h) => h.hmac(&self.key, &[nqn.as_bytes(), TRANSFORM_SUFFIX]),
        }
    }
}

/// Which side a response value authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// R1: the host proves its secret ("HostHost", host NQN first).
    Host,
    /// R2: the controller proves its secret ("Controller", subsystem NQN first).
    Controller,
}

/// The fields a response value covers.
#[derive(Debug, Clone, Copy)]
pub struct ResponseInput<'a> {
    pub hash: HashId,
    /// The transformed key of the side that answers ([`Secret::transformed`]).
    pub key: &'a [u8],
    /// The challenge (C1 for [`Role::Host`], C2 for [`Role::Controller`]); with a DH group it
    /// would be augmented first, which the NULL group does not.
    pub challenge: &'a [u8],
    pub seqnum: u32,
    pub t_id: u16,
    pub sc_c: u8,
    pub hostnqn: &'a str,
    pub subnqn: &'a str,
}

/// HMAC(key, challenge || seqnum || T_ID || SC_C || "HostHost"/"Controller" || NQN1 || 0 ||
/// NQN2), NQN1 being the answering side's.
pub fn response(role: Role, r: &ResponseInput<'_>) -> Vec<u8> {
    let (label, nqn1, nqn2): (&[u8], &str, &str) = match role {
        Role::Host => (b"HostHost", r.hostnqn, r.subnqn),
        Role::Controller => (b"Controller", r.subnqn, r.hostnqn),
    };
    r.hash.hmac(
        r.key,
        &[
            r.challenge,
            &r.seqnum.to_le_bytes(),
            &r.t_id.to_le_bytes(),
            &[r.sc_c],
            label,
            nqn1.as_bytes(),
            &[0],
            nqn2.as_bytes(),
        ],
    )
}

/// Compare two response values in time independent of where they differ.
pub fn response_matches(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The challenge a response covers when a DH group is in use: HMAC(H(session key), C), the
/// session key being the Diffie-Hellman shared value ([`DhKeyPair::shared`]). With the NULL
/// group the challenge is used as it is.
pub fn augmented_challenge(hash: HashId, session_key: &[u8], challenge: &[u8]) -> Vec<u8> {
    hash.hmac(&hash.digest(session_key), &[challenge])
}

/// The ffdhe2048 prime (RFC 7919, appendix A.1).
const FFDHE2048_P: &str = "\
    FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695A9E13641146433FBCC939DCE\
    249B3EF97D2FE363630C75D8F681B202AEC4617AD3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3\
    B557135E7F57C935984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797ABC0AB182\
    B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4AE56EDE76372BB190B07A7C8EE0A6D70\
    9E02FCE1CDF7E2ECC03404CD28342F619172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC\
    2EC22005C58EF1837D1683B2C6F34A26C1B2EFFA886B423861285C97FFFFFFFFFFFFFFFF";

/// Bytes of an ffdhe2048 public or shared value (big-endian, left-padded).
pub const FFDHE2048_LEN: usize = 256;

/// Bits of a private exponent: well above the 225 RFC 7919 asks for with this group.
const DH_PRIVATE_BITS: usize = 512;

fn ffdhe2048_p() -> num_bigint::BigUint {
    // A constant of hexadecimal digits: parsing cannot fail.
    num_bigint::BigUint::parse_bytes(FFDHE2048_P.as_bytes(), 16).unwrap_or_default()
}

/// `v` big-endian in exactly `len` bytes (left-padded with zeroes).
fn be_padded(v: &num_bigint::BigUint, len: usize) -> Vec<u8> {
    let b = v.to_bytes_be();
    let mut out = vec![0u8; len.saturating_sub(b.len())];
    out.extend_from_slice(&b);
    out
}

/// An ephemeral ffdhe2048 key pair (one per transaction).
pub struct DhKeyPair {
    private: num_bigint::BigUint,
    /// g^x mod p, the DH value sent to the peer ([`FFDHE2048_LEN`] bytes).
    pub public: Vec<u8>,
}

impl std::fmt::Debug for DhKeyPair {
    // The private exponent is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhKeyPair").finish_non_exhaustive()
    }
}

impl DhKeyPair {
    /// A new key pair for `group` (only [`DHGROUP_FFDHE2048`] has one).
    pub fn generate(group: u8) -> Result<Self, &'static str> {
        if group != DHGROUP_FFDHE2048 {
            return Err("DH group not supported");
        }
        let mut x = [0u8; DH_PRIVATE_BITS / 8];
        random_fill(&mut x).map_err(|_| "no random bytes")?;
        let private = num_bigint::BigUint::from_bytes_be(&x) | num_bigint::BigUint::from(2u8);
        let p = ffdhe2048_p();
        let public = num_bigint::BigUint::from(2u8).modpow(&private, &p);
        Ok(Self {
            private,
            public: be_padded(&public, FFDHE2048_LEN),
        })
    }

    /// The shared value (the session key) with the peer's DH value `peer`: refused unless it
    /// is [`FFDHE2048_LEN`] bytes and 2 <= Y <= p - 2 (1 and p - 1 would force a known result).
    pub fn shared(&self, peer: &[u8]) -> Result<Vec<u8>, &'static str> {
        if peer.len() != FFDHE2048_LEN {
            return Err("the DH value is not 256 bytes (ffdhe2048)");
        }
        let p = ffdhe2048_p();
        let y = num_bigint::BigUint::from_bytes_be(peer);
        let two = num_bigint::BigUint::from(2u8);
        if y < two || y > &p - &two {
            return Err("the DH value is out of range");
        }
        Ok(be_padded(&y.modpow(&self.private, &p), FFDHE2048_LEN))
    }
}

/// Fill `buf` from the operating system's random source.
pub fn random_fill(buf: &mut [u8]) -> Result<(), getrandom::Error> {
    getrandom::fill(buf)
}

/// A random non-zero sequence number (0 means "no sequence number" in a Reply).
pub fn random_seqnum() -> Result<u32, getrandom::Error> {
    loop {
        let v = getrandom::u32()?;
        if v != 0 {
            return Ok(v);
        }
    }
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn crc32_is_iso_hdlc() {
        assert_eq!(key_crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn secret_round_trip_and_checks() {
        // What `nvme gen-dhchap-key --secret 000102...1f --hmac 0` prints.
        let text = "DHHC-1:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";
        let s = Secret::parse(text).expect("valid secret");
        assert_eq!(s.transform, None);
        assert_eq!(s.key, (0u8..32).collect::<Vec<_>>());
        assert_eq!(s.to_text(), text);
        assert_eq!(Secret::parse(&format!("  {text}\n")), Ok(s.clone()));
        // A changed character breaks the CRC.
        let bad = text.replace("AAEC", "AAED");
        let e = Secret::parse(&bad).expect_err("crc");
        assert!(e.0.contains("CRC-32"), "{e}");
        for (t, want) in [
            ("DHHC-2:00:AAAA:", "start with DHHC-1"),
            (
                "DHHC-1:04:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:",
                "not 00",
            ),
            (
                "DHHC-1:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR",
                "end with",
            ),
            ("DHHC-1:00:!!!!:", "base64"),
            ("DHHC-1:00:AAECAwQF:", "bytes long"),
            ("DHHC-1:00", "no hash field"),
        ] {
            let e = Secret::parse(t).expect_err(t);
            assert!(e.0.contains(want), "{t}: {e}");
        }
        let g = Secret::generate(Some(HashId::Sha384), 48).expect("random");
        assert_eq!(Secret::parse(&g.to_text()), Ok(g.clone()));
        assert!(Secret::generate(None, 33).is_err());
        assert_eq!(
            format!("{g:?}"),
            "Secret { transform: Some(Sha384), key_len: 48 }"
        );
    }

    #[test]
    fn transform_and_response() {
        let s = Secret {
            transform: None,
            key: vec![7; 32],
        };
        assert_eq!(s.transformed("nqn.x"), vec![7; 32]);
        let t = Secret {
            transform: Some(HashId::Sha512),
            key: vec![7; 32],
        };
        let k = t.transformed("nqn.x");
        assert_eq!(k.len(), 64);
        assert_ne!(k, t.transformed("nqn.y"));
        let input = ResponseInput {
            hash: HashId::Sha256,
            key: &k,
            challenge: &[1; 32],
            seqnum: 5,
            t_id: 9,
            sc_c: 0,
            hostnqn: "nqn.2014-08.org.nvmexpress:uuid:h",
            subnqn: "nqn.2024-01.io.tessera:s",
        };
        let r1 = response(Role::Host, &input);
        let r2 = response(Role::Controller, &input);
        assert_eq!(r1.len(), 32);
        assert_ne!(r1, r2);
        assert!(response_matches(&r1, &response(Role::Host, &input)));
        assert!(!response_matches(&r1, &r2));
        assert!(!response_matches(&r1, &r1[..31]));
        // The response covers every field.
        let other = ResponseInput { seqnum: 6, ..input };
        assert_ne!(r1, response(Role::Host, &other));
        // The HMAC itself against RFC 4231 test case 2 (key "Jefe").
        let mac = HashId::Sha256.hmac(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(mac[..8], [0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e]);
    }

    #[test]
    fn ffdhe2048() {
        let p = ffdhe2048_p();
        assert_eq!(p.bits(), 2048);
        // A Fermat test of p and of (p - 1) / 2 (a safe prime): a mistyped digit fails it.
        let one = num_bigint::BigUint::from(1u8);
        let two = num_bigint::BigUint::from(2u8);
        assert_eq!(two.modpow(&(&p - &one), &p), one);
        let q = (&p - &one) >> 1;
        assert_eq!(two.modpow(&(&q - &one), &q), one);
        let a = DhKeyPair::generate(DHGROUP_FFDHE2048).expect("key");
        let b = DhKeyPair::generate(DHGROUP_FFDHE2048).expect("key");
        assert_eq!(a.public.len(), 256);
        let ab = a.shared(&b.public).expect("shared");
        assert_eq!(ab, b.shared(&a.public).expect("shared"));
        assert_ne!(a.public, b.public);
        assert!(a.shared(&[0; 256]).is_err());
        assert!(a.shared(&[1; 255]).is_err());
        let mut one_v = vec![0u8; 256];
        one_v[255] = 1;
        assert!(a.shared(&one_v).is_err());
        assert!(a.shared(&be_padded(&(&p - &one), 256)).is_err());
        assert!(DhKeyPair::generate(DHGROUP_NULL).is_err());
        assert_eq!(format!("{a:?}"), "DhKeyPair { .. }");
        let aug = augmented_challenge(HashId::Sha256, &ab, &[3; 32]);
        assert_eq!(aug.len(), 32);
        assert_ne!(
            aug,
            augmented_challenge(HashId::Sha256, &[0; 256], &[3; 32])
        );
        // SHA-256 of "abc" (FIPS 180-2).
        assert_eq!(HashId::Sha256.digest(b"abc")[..4], [0xba, 0x78, 0x16, 0xbf]);
    }

    fn samples() -> Vec<AuthMessage> {
        vec![
            AuthMessage::Negotiate(Negotiate {
                t_id: 3,
                sc_c: 0,
                protocols: vec![Descriptor {
                    authid: PROTOCOL_DHCHAP,
                    hash_ids: vec![1, 2, 3],
                    dh_groups: vec![0, 1, 2, 3, 4, 5],
                }],
            }),
            AuthMessage::Challenge(Challenge {
                t_id: 3,
                hash_id: 2,
                dh_group: 0,
                seqnum: 77,
                cval: vec![9; 48],
                dhv: vec![],
            }),
            AuthMessage::Reply(Reply {
                t_id: 3,
                rval: vec![1; 64],
                cvalid: true,
                seqnum: 5,
                cval: vec![2; 64],
                dhv: vec![3; 5],
            }),
            AuthMessage::Success1(Success1 {
                t_id: 3,
                hl: 32,
                rval: Some(vec![4; 32]),
            }),
            AuthMessage::Success1(Success1 {
                t_id: 3,
                hl: 32,
                rval: None,
            }),
            AuthMessage::Success2 { t_id: 3 },
            AuthMessage::Failure1(Failure::new(3, FailureReason::Failed)),
            AuthMessage::Failure2(Failure::new(3, FailureReason::IncorrectPayload)),
        ]
    }

    #[test]
    fn messages_round_trip() {
        for m in samples() {
            let b = m.encode();
            assert_eq!(AuthMessage::decode(&b), Ok(m.clone()), "{}", m.name());
            // Every strict prefix of a message is refused, never misread.
            for cut in 0..b.len() {
                if let Ok(d) = AuthMessage::decode(&b[..cut]) {
                    // Only a Reply's or Challenge's trailing DH value could be cut, and their
                    // DHVLEN forbids it; Success1 without RVALID has nothing past 16 bytes.
                    panic!("{} cut at {cut} decoded as {d:?}", m.name());
                }
            }
        }
        // Layout spot checks.
        let neg = samples()[0].encode();
        assert_eq!(neg.len(), 8 + 64);
        assert_eq!(
            (neg[0], neg[1], neg[7], neg[8], neg[10], neg[11]),
            (0, 0, 1, 1, 3, 6)
        );
        assert_eq!(&neg[12..15], &[1, 2, 3]);
        assert_eq!(&neg[42..48], &[0, 1, 2, 3, 4, 5]);
        let f = samples()[6].encode();
        assert_eq!(f, vec![0, 0xF1, 0, 0, 3, 0, 1, 1]);
        let reply = samples()[2].encode();
        assert_eq!(reply.len(), 16 + 128 + 5);
        assert_eq!((reply[1], reply[6], reply[8], reply[10]), (2, 64, 1, 5));
    }

    #[test]
    fn malformed_messages() {
        let e = |b: &[u8]| AuthMessage::decode(b).expect_err("malformed");
        assert_eq!(e(&[]).reason, FailureReason::IncorrectPayload);
        assert_eq!(
            e(&[2, 0, 0, 0, 0, 0, 0, 0]).reason,
            FailureReason::IncorrectMessage
        );
        assert_eq!(
            e(&[1, 9, 0, 0, 0, 0, 0, 0]).reason,
            FailureReason::IncorrectMessage
        );
        // NAPD 0.
        assert_eq!(
            e(&[0, 0, 0, 0, 1, 0, 0, 0]).reason,
            FailureReason::IncorrectPayload
        );
        // HALEN 31.
        let mut neg = samples()[0].encode();
        neg[10] = 31;
        assert_eq!(e(&neg).reason, FailureReason::IncorrectPayload);
        // Reply HL 33.
        let mut reply = samples()[2].encode();
        reply[6] = 33;
        assert_eq!(e(&reply).reason, FailureReason::IncorrectPayload);
        // Too long.
        assert_eq!(
            e(&vec![0; MESSAGE_LEN_MAX + 1]).what,
            "message longer than 4096 bytes"
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(m) = AuthMessage::decode(&b) {
                // What decodes re-encodes to something that decodes the same.
                prop_assert_eq!(AuthMessage::decode(&m.encode()), Ok(m));
            }
        }

        #[test]
        fn decode_mutated(idx in 0usize..200, val in any::<u8>(), which in 0usize..8) {
            let mut b = samples()[which].encode();
            let i = idx % b.len();
            b[i] = val;
            if let Ok(m) = AuthMessage::decode(&b) {
                prop_assert_eq!(AuthMessage::decode(&m.encode()), Ok(m));
            }
        }

        #[test]
        fn secret_parse_never_panics(s in "\\PC{0,120}") {
            let _ = Secret::parse(&s);
        }
    }
}
