//! Errors of the initiator: transport failures, peer protocol violations, NVMe statuses.

use std::fmt;
use std::sync::Arc;

use codec::nvme::Status;
use codec::nvme::fabrics::ConnectReject;
use codec::pdu::{Fes, PduError};

/// Result of initiator operations.
pub type Result<T, E = InitiatorError> = std::result::Result<T, E>;

/// What went wrong. `Clone` because one connection failure is delivered to every command that
/// was in flight on it.
#[derive(Debug, Clone)]
pub enum InitiatorError {
    /// The socket failed (connect, read, write) or the target closed it.
    Io(Arc<std::io::Error>),
    /// The target broke an NVMe/TCP or NVMe rule (bad PDU, unknown CID, bad ICResp, data out
    /// of range...). Connection-fatal unless it names a single command.
    Protocol { what: &'static str },
    /// The target terminated the connection with a C2HTermReq.
    TermReq { fes: Fes, fei: u32 },
    /// An operation did not finish in time.
    Timeout { what: &'static str },
    /// A helper that expects success got this NVMe status.
    Status(Status),
    /// A stamped command was refused for its map generation (SCT 7h, SC 80h "stale map" or
    /// 81h "server behind"); `server_generation` is CQE DW0/DW1 (docs/cluster-protocol.md).
    Generation {
        status: Status,
        server_generation: u64,
    },
    /// Fabrics Connect was rejected; for Connect Invalid Parameters, `iattr`/`ipo` name the
    /// offending field.
    ConnectRejected(ConnectReject),
    /// The queue was closed (by us, or after an earlier error).
    Closed,
    /// The target requires in-band authentication (Connect AUTHREQ) and no DH-HMAC-CHAP secret
    /// was given.
    AuthRequired,
    /// The DH-HMAC-CHAP transaction failed: the controller refused us (AUTH_Failure1, with its
    /// reason) or we refused the controller.
    AuthFailed {
        reason: Option<codec::nvme::fabrics::auth::FailureReason>,
        what: &'static str,
    },
    /// The caller asked for something the initiator cannot express (e.g. NLB 0, a transfer
    /// length above 4 GiB, data in both directions).
    InvalidArgument { what: &'static str },
}

impl InitiatorError {
    /// The NVMe status carried by the error, if it is one.
    pub fn status(&self) -> Option<Status> {
        match self {
            Self::Status(s) | Self::Generation { status: s, .. } => Some(*s),
            Self::ConnectRejected(r) => Some(r.status),
            _ => None,
        }
    }

    /// Whether this error ends the connection (as opposed to failing one command).
    pub fn is_connection_fatal(&self) -> bool {
        matches!(
            self,
            Self::Io(_) | Self::Protocol { .. } | Self::TermReq { .. } | Self::Closed
        )
    }

    pub(crate) fn io(e: std::io::Error) -> Self {
        Self::Io(Arc::new(e))
    }

    pub(crate) fn eof() -> Self {
        Self::io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed by the target",
        ))
    }
}

impl From<std::io::Error> for InitiatorError {
    fn from(e: std::io::Error) -> Self {
        Self::io(e)
    }
}

impl From<PduError> for InitiatorError {
    /// A PDU the codec refused: a fatal header error or digest error is the peer's protocol
    /// violation; an I/O error stays one.
    fn from(e: PduError) -> Self {
        match e {
            PduError::Fatal { what, .. } | PduError::Abort { what } => Self::Protocol { what },
            PduError::DataDigest { .. } => Self::Protocol {
                what: "data digest mismatch",
            },
            PduError::Io(e) => Self::io(e),
        }
    }
}

impl fmt::Display for InitiatorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "I/O error: {e}"),
            Self::Protocol { what } => write!(f, "protocol error: {what}"),
            Self::TermReq { fes, fei } => {
                write!(f, "target terminated the connection: {fes}, FEI {fei:#x}")
            }
            Self::Timeout { what } => write!(f, "timed out: {what}"),
            Self::Status(s) => write!(f, "NVMe status {s:?}"),
            Self::Generation {
                status,
                server_generation,
            } => {
                write!(
                    f,
                    "generation refused ({status:?}), server generation {server_generation}"
                )
            }
            Self::ConnectRejected(r) => write!(
                f,
                "Connect rejected: {:?} (IATTR {}, IPO {:#x})",
                r.status, r.iattr, r.ipo
            ),
            Self::Closed => write!(f, "queue closed"),
            Self::AuthRequired => write!(
                f,
                "the target requires DH-HMAC-CHAP authentication and no secret was given"
            ),
            Self::AuthFailed { reason, what } => match reason {
                Some(r) => write!(f, "authentication failed: {what}: {}", r.describe()),
                None => write!(f, "authentication failed: {what}"),
            },
            Self::InvalidArgument { what } => write!(f, "invalid argument: {what}"),
        }
    }
}

impl std::error::Error for InitiatorError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}
