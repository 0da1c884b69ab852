//! Fabrics commands and controller properties (NVMe Base 2.0, section 6 "Fabrics Command Set";
//! NVMe over Fabrics 1.1, sections 3.3 and 3.5; registers: NVMe Base 2.0, section 3.1.3).
//!
//! * Connect: SQE fields (Figure 548), the 1024-byte Connect data (Figure 549) and the response
//!   DW0 (Figures 550–551).
//! * Authentication Send / Receive data: the DH-HMAC-CHAP messages and secrets ([`auth`]).
//! * Property Get / Property Set: SQE fields (Figures 556, 558) and the controller properties they
//!   reach (CAP, VS, CC, CSTS, NSSR), with typed views.

use crate::nvme::Status;
use crate::nvme::opcode::{AdminOpcode, FabricsType};
use crate::nvme::sgl::SglDescriptor;
use crate::nvme::sqe::{self, Sqe};
use crate::wire::{get_u16, get_u32, put_u16, put_u32};

pub mod auth;
pub mod property;
pub use property::*;

/// Byte offset of FCTYPE in a Fabrics command (NVMe Base 2.0, Figure 541).
pub const FCTYPE_OFFSET: usize = 4;

// ---------------------------------------------------------------------------------------------
// Connect
// ---------------------------------------------------------------------------------------------

/// Connect command fields (NVMe Base 2.0, Figure 548), byte offsets in the SQE.
pub mod connect_off {
    /// Record Format (CDW10 bits 15:0); 0 is the only format defined.
    pub const RECFMT: usize = 40;
    /// Queue ID (CDW10 bits 31:16): 0 = Admin Queue.
    pub const QID: usize = 42;
    /// Submission Queue Size (CDW11 bits 15:0), 0's based.
    pub const SQSIZE: usize = 44;
    /// Connect Attributes (CDW11 bits 23:16).
    pub const CATTR: usize = 46;
    /// Keep Alive Timeout in milliseconds (CDW12); Admin Queue only.
    pub const KATO: usize = 48;
}

const _: () = assert!(connect_off::RECFMT == sqe::off::CDW10);
const _: () = assert!(connect_off::SQSIZE == sqe::off::CDW11);
const _: () = assert!(connect_off::KATO == sqe::off::CDW12);

/// CATTR bit 2: the host disables SQ flow control (SQHD in completions is then meaningless).
pub const CATTR_DISABLE_SQ_FLOW_CONTROL: u8 = 1 << 2;

/// Length of the Connect data (NVMe Base 2.0, Figure 549).
pub const CONNECT_DATA_LEN: usize = 1024;
/// Size of an NQN field in Connect data and the Discovery log page.
pub const NQN_FIELD_LEN: usize = 256;
/// Longest NQN (NVMe Base 2.0, section 4.5): 223 bytes, UTF-8, NUL terminated in its field.
pub const NQN_MAX_LEN: usize = 223;
/// CNTLID in Connect data asking for any controller (dynamic controller model).
pub const CNTLID_DYNAMIC: u16 = 0xffff;
/// Highest valid controller ID; FFF0h..FFFEh are reserved (NVMe Base 2.0, section 3.1.2).
pub const CNTLID_MAX: u16 = 0xffef;
/// The well-known discovery subsystem NQN (NVMe Base 2.0, section 4.5).
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// Byte offsets in the Connect data (NVMe Base 2.0, Figure 549).
pub mod connect_data_off {
    pub const HOSTID: usize = 0;
    pub const CNTLID: usize = 16;
    pub const SUBNQN: usize = 256;
    pub const HOSTNQN: usize = 512;
    /// Bytes 768..1023 are reserved.
    pub const RESERVED: usize = 768;
}

const _: () = assert!(connect_data_off::SUBNQN + NQN_FIELD_LEN == connect_data_off::HOSTNQN);
const _: () = assert!(connect_data_off::HOSTNQN + NQN_FIELD_LEN == connect_data_off::RESERVED);
const _: () = assert!(connect_data_off::RESERVED + 256 == CONNECT_DATA_LEN);

/// The Connect command's own fields (the data travels separately, see [`ConnectData`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connect {
    pub recfmt: u16,
    pub qid: u16,
    /// SQSIZE as on the wire: 0's based (31 means 32 entries).
    pub sqsize: u16,
    pub cattr: u8,
    /// Keep Alive Timeout in milliseconds; 0 disables keep alive. Meaningful on the Admin Queue.
    pub kato_ms: u32,
}

impl Connect {
    /// Read the fields from a Connect SQE (opcode and FCTYPE are the caller's to check).
    pub fn from_sqe(sqe: &Sqe) -> Self {
        let b = &sqe.0;
        Self {
            recfmt: get_u16(b, connect_off::RECFMT),
            qid: get_u16(b, connect_off::QID),
            sqsize: get_u16(b, connect_off::SQSIZE),
            cattr: b[connect_off::CATTR],
            kato_ms: get_u32(b, connect_off::KATO),
        }
    }

    /// Build a Connect SQE carrying `cid`, whose 1024-byte data is described by `sgl`.
    pub fn to_sqe(&self, cid: u16, sgl: SglDescriptor) -> Sqe {
        let mut s = fabrics_sqe(FabricsType::CONNECT, cid);
        s.set_dptr(sgl.to_bytes());
        put_u16(&mut s.0, connect_off::RECFMT, self.recfmt);
        put_u16(&mut s.0, connect_off::QID, self.qid);
        put_u16(&mut s.0, connect_off::SQSIZE, self.sqsize);
        s.0[connect_off::CATTR] = self.cattr;
        put_u32(&mut s.0, connect_off::KATO, self.kato_ms);
        s
    }

    /// Number of entries of the submission queue asked for (SQSIZE + 1).
    pub fn queue_entries(&self) -> u32 {
        u32::from(self.sqsize) + 1
    }

    pub fn is_admin(&self) -> bool {
        self.qid == 0
    }

    pub fn sq_flow_control_disabled(&self) -> bool {
        self.cattr & CATTR_DISABLE_SQ_FLOW_CONTROL != 0
    }

    /// Checks of the SQE fields that need only the controller's limits (NVMe Base 2.0,
    /// section 6.3): RECFMT 0, and 1 <= SQSIZE <= `max_sqsize` (0's based, e.g. CAP.MQES).
    pub fn validate(&self, max_sqsize: u16) -> Result<(), ConnectReject> {
        if self.recfmt != 0 {
            return Err(ConnectReject::incompatible_format());
        }
        // A 1-entry queue cannot hold a command (a full queue keeps one slot empty).
        if self.sqsize == 0 || self.sqsize > max_sqsize {
            return Err(ConnectReject::invalid_sqe_field(connect_off::SQSIZE));
        }
        Ok(())
    }
}

/// The 1024-byte Connect data (NVMe Base 2.0, Figure 549).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectData {
    /// Host Identifier (a UUID, 128 bits).
    pub hostid: [u8; 16],
    /// Controller ID asked for: [`CNTLID_DYNAMIC`] for any.
    pub cntlid: u16,
    pub subnqn: String,
    pub hostnqn: String,
}

impl ConnectData {
    /// Decode Connect data. A short buffer or a malformed field is Connect Invalid Parameters
    /// with IATTR = 1 (the data) and IPO = the offending field's offset (NVMe Base 2.0,
    /// Figure 551).
    ///
    /// SUBNQN must be a non-empty UTF-8 string of at most 223 bytes, NUL terminated in its
    /// field (NVMe Base 2.0, section 4.5): it names what the host wants and must match one of
    /// ours exactly. HOSTNQN is only required to be UTF-8 and NUL terminated within its 256
    /// bytes; it may be empty or not NQN-formed (SPDK's initiator sends an empty one by default,
    /// `nvme connect --hostnqn myhost` sends "myhost"). Whether such a host may connect is the
    /// subsystem's host policy to decide, not the decoder's (Linux nvmet likewise only forces
    /// the field's last byte to NUL and leaves the rest to its host allow-list). A field with
    /// no NUL at all is refused rather than cut: the identity compared against an allow-list
    /// must be exactly what the host sent.
    pub fn parse(b: &[u8]) -> Result<Self, ConnectReject> {
        let b: &[u8; CONNECT_DATA_LEN] = b
            .get(..CONNECT_DATA_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(ConnectReject::invalid_data_field(connect_data_off::HOSTID))?;
        let mut hostid = [0u8; 16];
        hostid.copy_from_slice(&b[connect_data_off::HOSTID..connect_data_off::HOSTID + 16]);
        Ok(Self {
            hostid,
            cntlid: get_u16(b, connect_data_off::CNTLID),
            subnqn: parse_nqn(b, connect_data_off::SUBNQN)?,
            hostnqn: parse_host_nqn(b)?,
        })
    }

    /// Whether HOSTNQN has the NQN form a host should send (see [`is_nqn_formed`]); an empty
    /// or free-form host NQN is accepted only where the subsystem allows any host.
    pub fn hostnqn_is_nqn_formed(&self) -> bool {
        is_nqn_formed(&self.hostnqn)
    }

    /// Encode; NQNs longer than [`NQN_MAX_LEN`] are truncated so the field stays NUL terminated.
    pub fn to_bytes(&self) -> [u8; CONNECT_DATA_LEN] {
        let mut b = [0u8; CONNECT_DATA_LEN];
        b[..16].copy_from_slice(&self.hostid);
        put_u16(&mut b, connect_data_off::CNTLID, self.cntlid);
        put_nqn(&mut b, connect_data_off::SUBNQN, &self.subnqn);
        put_nqn(&mut b, connect_data_off::HOSTNQN, &self.hostnqn);
        b
    }
}

/// Read a NUL-terminated NQN from a 256-byte field at `off` of `b`.
fn parse_nqn(b: &[u8; CONNECT_DATA_LEN], off: usize) -> Result<String, ConnectReject> {
    let reject = ConnectReject::invalid_data_field(off);
    let field = b.get(off..off + NQN_FIELD_LEN).ok_or(reject)?;
    let len = field.iter().position(|&c| c == 0).ok_or(reject)?;
    if len == 0 || len > NQN_MAX_LEN {
        return Err(reject);
    }
    let s = std::str::from_utf8(&field[..len]).map_err(|_| reject)?;
    Ok(s.to_owned())
}

/// Read HOSTNQN: UTF-8, NUL terminated within its 256-byte field, possibly empty or longer
/// than [`NQN_MAX_LEN`] (see [`ConnectData::parse`] for why it is not held to the NQN rules).
fn parse_host_nqn(b: &[u8; CONNECT_DATA_LEN]) -> Result<String, ConnectReject> {
    let off = connect_data_off::HOSTNQN;
    let reject = ConnectReject::invalid_data_field(off);
    let field = b.get(off..off + NQN_FIELD_LEN).ok_or(reject)?;
    let len = field.iter().position(|&c| c == 0).ok_or(reject)?;
    let s = std::str::from_utf8(&field[..len]).map_err(|_| reject)?;
    Ok(s.to_owned())
}

/// Whether `s` has the form of an NQN (NVMe Base 2.0, section 4.5): at most 223 bytes,
/// "nqn." followed by a date "yyyy-mm", a ".", and at least one more byte (the reverse domain
/// name and the rest; the UUID form "nqn.2014-08.org.nvmexpress:uuid:..." fits the same
/// pattern). A loose check: it only tells a host that followed the rule from one that did not.
pub fn is_nqn_formed(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    b.len() <= NQN_MAX_LEN
        && b.len() > 12
        && b.starts_with(b"nqn.")
        && digits(4..8)
        && b[8] == b'-'
        && digits(9..11)
        && b[11] == b'.'
}

/// Write `nqn` NUL-terminated into a 256-byte field (any byte slice of at least `off + 256`).
pub(crate) fn put_nqn(b: &mut [u8], off: usize, nqn: &str) {
    if let Some(field) = b.get_mut(off..off + NQN_FIELD_LEN) {
        field.fill(0);
        let mut n = nqn.len().min(NQN_MAX_LEN);
        // Do not cut a UTF-8 sequence in half.
        while !nqn.is_char_boundary(n) {
            n -= 1;
        }
        field[..n].copy_from_slice(&nqn.as_bytes()[..n]);
    }
}

/// Why a Connect is refused: the status and, for Connect Invalid Parameters, where the bad
/// parameter is (NVMe Base 2.0, Figure 551: IPO in DW0 bits 15:0, IATTR in bits 23:16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectReject {
    pub status: Status,
    /// IATTR bit 0: 0 = the parameter is in the SQE, 1 = it is in the Connect data.
    pub iattr: u8,
    /// Invalid Parameter Offset: byte offset of the parameter in the SQE or the data.
    pub ipo: u16,
}

impl ConnectReject {
    /// IATTR value naming the SQE.
    pub const IATTR_SQE: u8 = 0;
    /// IATTR value naming the Connect data.
    pub const IATTR_DATA: u8 = 1;

    /// Connect Incompatible Format (RECFMT not supported), DNR.
    pub const fn incompatible_format() -> Self {
        Self {
            status: Status::CONNECT_INCOMPATIBLE_FORMAT.with_dnr(),
            iattr: 0,
            ipo: 0,
        }
    }

    /// Connect Invalid Parameters for the SQE field at byte `ipo`, DNR.
    pub fn invalid_sqe_field(ipo: usize) -> Self {
        Self::invalid(Self::IATTR_SQE, ipo)
    }

    /// Connect Invalid Parameters for the data field at byte `ipo` (e.g. an unknown SUBNQN at
    /// 256, a CNTLID that does not exist at 16), DNR.
    pub fn invalid_data_field(ipo: usize) -> Self {
        Self::invalid(Self::IATTR_DATA, ipo)
    }

    fn invalid(iattr: u8, ipo: usize) -> Self {
        // Offsets are of a 64-byte SQE or 1024-byte data structure: they fit in u16.
        let ipo = u16::try_from(ipo).unwrap_or(u16::MAX);
        Self {
            status: Status::CONNECT_INVALID_PARAMETERS.with_dnr(),
            iattr,
            ipo,
        }
    }

    /// Connect Invalid Host (host NQN not allowed on this subsystem), DNR. IPO/IATTR are only
    /// defined for Connect Invalid Parameters, so DW0 is 0.
    pub const fn invalid_host() -> Self {
        Self {
            status: Status::CONNECT_INVALID_HOST.with_dnr(),
            iattr: 0,
            ipo: 0,
        }
    }

    /// Controller busy (no free controller or queue): retryable, so no DNR.
    pub const fn controller_busy() -> Self {
        Self {
            status: Status::CONTROLLER_BUSY,
            iattr: 0,
            ipo: 0,
        }
    }

    /// The response's DW0.
    pub fn dw0(&self) -> u32 {
        if self.status.same_code(Status::CONNECT_INVALID_PARAMETERS) {
            u32::from(self.ipo) | (u32::from(self.iattr) << 16)
        } else {
            0
        }
    }

    /// Read IPO/IATTR back from a response DW0.
    pub fn from_dw0(status: Status, dw0: u32) -> Self {
        // Masked fields: bits 15:0 and 23:16.
        let ipo = (dw0 & 0xffff) as u16;
        let iattr = ((dw0 >> 16) & 0xff) as u8;
        Self { status, iattr, ipo }
    }
}

/// Successful Connect response DW0 (NVMe Base 2.0, Figure 550): CNTLID in bits 15:0 and
/// AUTHREQ (authentication required, bits 31:16).
pub fn connect_success_dw0(cntlid: u16, authreq: u16) -> u32 {
    u32::from(cntlid) | (u32::from(authreq) << 16)
}

/// CNTLID from a successful Connect response DW0.
pub fn connect_response_cntlid(dw0: u32) -> u16 {
    // Bits 15:0.
    (dw0 & 0xffff) as u16
}

/// A zeroed SQE with opcode 7Fh, FCTYPE `fctype`, `cid`, and PSDT 01b (SGL) as NVMe/TCP hosts
/// send.
pub fn fabrics_sqe(fctype: FabricsType, cid: u16) -> Sqe {
    let mut s = Sqe::default();
    s.set_opcode(AdminOpcode::FABRICS.0);
    s.set_flags(sqe::PSDT_SGL);
    s.set_cid(cid);
    s.0[FCTYPE_OFFSET] = fctype.0;
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_reject_dw0() {
        let r = ConnectReject::invalid_data_field(connect_data_off::SUBNQN);
        assert_eq!(r.dw0(), 0x0001_0100);
        assert_eq!(ConnectReject::from_dw0(r.status, r.dw0()), r);
        assert_eq!(
            ConnectReject::invalid_sqe_field(connect_off::SQSIZE).dw0(),
            44
        );
        assert_eq!(ConnectReject::invalid_host().dw0(), 0);
        assert_eq!(connect_success_dw0(0x0102, 0), 0x0102);
        assert_eq!(connect_response_cntlid(0xffff_0102), 0x0102);
    }

    #[test]
    fn nqn_rules() {
        let mut d = ConnectData {
            hostid: [7; 16],
            cntlid: CNTLID_DYNAMIC,
            subnqn: "nqn.2024-01.io.tessera:vol".into(),
            hostnqn: "nqn.2014-08.org.nvmexpress:uuid:1".into(),
        };
        assert_eq!(ConnectData::parse(&d.to_bytes()), Ok(d.clone()));
        // An empty SUBNQN is rejected, naming its offset.
        d.subnqn.clear();
        let e = ConnectData::parse(&d.to_bytes()).expect_err("empty nqn");
        assert_eq!((e.iattr, e.ipo), (1, 256));
        // An empty or free-form HOSTNQN decodes (the host policy decides), a long one too.
        d.subnqn = "nqn.2024-01.io.tessera:vol".into();
        for host in ["", "myhost", &"h".repeat(255)] {
            let mut raw = d.to_bytes();
            raw[512..768].fill(0);
            raw[512..512 + host.len()].copy_from_slice(host.as_bytes());
            let got = ConnectData::parse(&raw).expect("any NUL-terminated host NQN decodes");
            assert_eq!(got.hostnqn, host);
            assert!(!got.hostnqn_is_nqn_formed());
        }
        assert!(is_nqn_formed("nqn.2014-08.org.nvmexpress:uuid:1"));
        assert!(!is_nqn_formed("nqn.2014-08."));
        assert!(!is_nqn_formed("nqn.14-08-2000.org"));
        // A field with no NUL is rejected.
        let mut raw = [b'a'; CONNECT_DATA_LEN];
        raw[256 + 10] = 0;
        let e = ConnectData::parse(&raw).expect_err("unterminated hostnqn");
        assert_eq!(e.ipo, 512);
        // Short data.
        assert_eq!(ConnectData::parse(&[0; 100]).expect_err("short").ipo, 0);
    }
}
