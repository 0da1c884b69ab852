//! CapsuleCmd and CapsuleResp: NVMe command and response capsules (NVMe/TCP 1.0, sections
//! 3.6.2.6 and 3.6.2.7, Figures 17-20).

use bytes::Bytes;

use crate::nvme::{CQE_LEN, Cqe, SQE_LEN, Sqe};

/// HLEN of a CapsuleCmd: common header plus the 64-byte SQE.
pub const CMD_HLEN: usize = 72;
/// HLEN of a CapsuleResp: common header plus the 16-byte CQE.
pub const RESP_HLEN: usize = 24;

/// Byte offsets in a CapsuleCmd (Figure 18).
pub mod cmd_off {
    /// SQE: the 64-byte submission queue entry (the "command" of the capsule).
    pub const SQE: usize = 8;
}

/// Byte offsets in a CapsuleResp (Figure 20).
pub mod resp_off {
    /// CQE: the 16-byte completion queue entry.
    pub const CQE: usize = 8;
}

const _: () = assert!(cmd_off::SQE + SQE_LEN == CMD_HLEN);
const _: () = assert!(resp_off::CQE + CQE_LEN == RESP_HLEN);

/// Command Capsule (section 3.6.2.6, Figure 18): an SQE and its in-capsule data.
///
/// The in-capsule data starts at PDO; a data digest follows it when enabled. A capsule without
/// data has PDO 0 and no DDGSTF (as the Linux host sends it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CapsuleCmd {
    /// The submission queue entry.
    pub sqe: Sqe,
    /// In-capsule data (may be empty), sliced from the receive buffer.
    pub data: Bytes,
}

impl CapsuleCmd {
    pub(crate) fn load(h: &[u8; CMD_HLEN], data: Bytes) -> Self {
        let mut sqe = [0u8; SQE_LEN];
        sqe.copy_from_slice(&h[cmd_off::SQE..cmd_off::SQE + SQE_LEN]);
        CapsuleCmd {
            sqe: Sqe(sqe),
            data,
        }
    }

    pub(crate) fn encode_psh(&self, h: &mut [u8; CMD_HLEN]) {
        h[cmd_off::SQE..cmd_off::SQE + SQE_LEN].copy_from_slice(&self.sqe.0);
    }
}

/// Response Capsule (section 3.6.2.7, Figure 20): a CQE, never data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapsuleResp {
    /// The completion queue entry.
    pub cqe: Cqe,
}

impl CapsuleResp {
    pub(crate) fn load(h: &[u8; RESP_HLEN]) -> Self {
        let mut cqe = [0u8; CQE_LEN];
        cqe.copy_from_slice(&h[resp_off::CQE..resp_off::CQE + CQE_LEN]);
        CapsuleResp { cqe: Cqe(cqe) }
    }

    pub(crate) fn encode_psh(&self, h: &mut [u8; RESP_HLEN]) {
        h[resp_off::CQE..resp_off::CQE + CQE_LEN].copy_from_slice(&self.cqe.0);
    }
}
