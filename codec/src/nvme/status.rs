//! Completion Queue Entry Status Field (NVMe Base 2.0, section 4.6.1, Figure 98–101).
//!
//! The Status Field is the 15 bits above the phase tag in CQE Dword 3:
//!
//! | bits  | field | meaning                                  |
//! |-------|-------|------------------------------------------|
//! | 7:0   | SC    | Status Code                              |
//! | 10:8  | SCT   | Status Code Type                         |
//! | 12:11 | CRD   | Command Retry Delay (index into CRDT1-3) |
//! | 13    | M     | More (a log page holds more information) |
//! | 14    | DNR   | Do Not Retry                             |
//!
//! The code space is open (vendors, newer spec revisions), so [`Status`] is a lossless `u16`
//! newtype with named constants rather than a closed enum: a status we have no name for survives
//! a round trip unchanged and is displayed by its numbers.

use std::fmt;

/// The 15-bit CQE Status Field (NVMe Base 2.0, Figure 98).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Status(pub u16);

/// Status Code Type values (NVMe Base 2.0, Figure 100).
pub mod sct {
    pub const GENERIC: u8 = 0x0;
    pub const COMMAND_SPECIFIC: u8 = 0x1;
    pub const MEDIA: u8 = 0x2;
    pub const PATH: u8 = 0x3;
    pub const VENDOR: u8 = 0x7;
}

const SC_MASK: u16 = 0x00ff;
const SCT_SHIFT: u16 = 8;
const SCT_MASK: u16 = 0x7;
const CRD_SHIFT: u16 = 11;
const CRD_MASK: u16 = 0x3;
const MORE_BIT: u16 = 1 << 13;
const DNR_BIT: u16 = 1 << 14;
/// The Status Field is 15 bits wide; bit 15 of the `u16` does not exist on the wire.
const FIELD_MASK: u16 = 0x7fff;

impl Status {
    /// A status from its Status Code Type (3 bits, higher bits ignored) and Status Code.
    pub const fn new(sct: u8, sc: u8) -> Self {
        // u8 -> u16 widening is lossless.
        Self((((sct as u16) & SCT_MASK) << SCT_SHIFT) | sc as u16)
    }

    /// Status Code Type (bits 10:8).
    pub const fn sct(self) -> u8 {
        // Masked to 3 bits, so the narrowing cannot truncate.
        ((self.0 >> SCT_SHIFT) & SCT_MASK) as u8
    }

    /// Status Code (bits 7:0).
    pub const fn sc(self) -> u8 {
        // Masked to 8 bits.
        (self.0 & SC_MASK) as u8
    }

    /// Command Retry Delay (bits 12:11): 0 = no delay, 1..=3 select CRDT1..CRDT3 of Identify
    /// Controller.
    pub const fn crd(self) -> u8 {
        // Masked to 2 bits.
        ((self.0 >> CRD_SHIFT) & CRD_MASK) as u8
    }

    /// More (bit 13).
    pub const fn more(self) -> bool {
        self.0 & MORE_BIT != 0
    }

    /// Do Not Retry (bit 14).
    pub const fn dnr(self) -> bool {
        self.0 & DNR_BIT != 0
    }

    /// The same status with Do Not Retry set.
    #[must_use]
    pub const fn with_dnr(self) -> Self {
        Self(self.0 | DNR_BIT)
    }

    /// The same status with the Command Retry Delay index set to `n` (0..=3; higher bits of `n`
    /// are ignored).
    #[must_use]
    pub const fn with_crd(self, n: u8) -> Self {
        let crd = ((n as u16) & CRD_MASK) << CRD_SHIFT;
        Self((self.0 & !(CRD_MASK << CRD_SHIFT)) | crd)
    }

    /// The same status with More set.
    #[must_use]
    pub const fn with_more(self) -> Self {
        Self(self.0 | MORE_BIT)
    }

    /// SCT and SC only (bits 10:0), without CRD, More and DNR: compare statuses by this.
    pub const fn code(self) -> u16 {
        self.0 & ((SCT_MASK << SCT_SHIFT) | SC_MASK)
    }

    /// Whether `self` and `other` carry the same SCT and SC (ignoring CRD, More and DNR).
    pub const fn same_code(self, other: Status) -> bool {
        self.code() == other.code()
    }

    /// Successful Completion (SCT 0, SC 0), whatever the other bits say.
    pub const fn is_success(self) -> bool {
        self.code() == 0
    }

    /// Path Related Status (SCT 3h): the host may retry on another path.
    pub const fn is_path_error(self) -> bool {
        self.sct() == sct::PATH
    }

    /// Vendor Specific (SCT 7h).
    pub const fn is_vendor(self) -> bool {
        self.sct() == sct::VENDOR
    }

    /// The status as it sits in the 15-bit CQE field (bit 15 cleared).
    pub const fn field(self) -> u16 {
        self.0 & FIELD_MASK
    }

    /// A status from the 15-bit CQE field (bit 15, which does not exist there, is dropped).
    pub const fn from_field(v: u16) -> Self {
        Self(v & FIELD_MASK)
    }

    /// The spec's name of this SCT/SC, if it is one we define.
    pub fn name(self) -> Option<&'static str> {
        let code = self.code();
        ALL.iter().find(|(s, _)| s.code() == code).map(|(_, n)| *n)
    }
}

macro_rules! statuses {
    ($( $(#[$m:meta])* $name:ident = ($sct:expr, $sc:expr, $text:expr); )*) => {
        impl Status {
            $( $(#[$m])* pub const $name: Status = Status::new($sct, $sc); )*
        }
        /// Every named status with its display name, in definition order.
        ///
        /// Where two names share one code (the command-specific space is reused by command
        /// sets: NVM's Conflicting Attributes and Fabrics' Connect Incompatible Format are both
        /// SCT 1h / SC 80h), the first entry is the one [`Status::name`] reports.
        pub const ALL: &[(Status, &str)] = &[ $( (Status::$name, $text), )* ];
    };
}

use sct::{COMMAND_SPECIFIC as CS, GENERIC as G, MEDIA as M, PATH as P, VENDOR as V};

statuses! {
    // Generic Command Status (SCT 0h), NVMe Base 2.0 Figure 101.
    SUCCESS = (G, 0x00, "Successful Completion");
    INVALID_OPCODE = (G, 0x01, "Invalid Command Opcode");
    INVALID_FIELD = (G, 0x02, "Invalid Field in Command");
    CID_CONFLICT = (G, 0x03, "Command ID Conflict");
    DATA_XFER_ERROR = (G, 0x04, "Data Transfer Error");
    ABORTED_POWER_LOSS = (G, 0x05, "Commands Aborted due to Power Loss Notification");
    INTERNAL = (G, 0x06, "Internal Error");
    ABORT_REQ = (G, 0x07, "Command Abort Requested");
    ABORT_SQ_DELETED = (G, 0x08, "Command Aborted due to SQ Deletion");
    FUSED_FAIL = (G, 0x09, "Command Aborted due to Failed Fused Command");
    FUSED_MISSING = (G, 0x0a, "Command Aborted due to Missing Fused Command");
    INVALID_NS = (G, 0x0b, "Invalid Namespace or Format");
    CMD_SEQ_ERROR = (G, 0x0c, "Command Sequence Error");
    SGL_INVALID_LAST = (G, 0x0d, "Invalid SGL Segment Descriptor");
    SGL_INVALID_COUNT = (G, 0x0e, "Invalid Number of SGL Descriptors");
    SGL_INVALID_DATA_LEN = (G, 0x0f, "Data SGL Length Invalid");
    SGL_INVALID_METADATA_LEN = (G, 0x10, "Metadata SGL Length Invalid");
    SGL_INVALID_TYPE = (G, 0x11, "SGL Descriptor Type Invalid");
    INVALID_USE_CMB = (G, 0x12, "Invalid Use of Controller Memory Buffer");
    PRP_OFFSET_INVALID = (G, 0x13, "PRP Offset Invalid");
    ATOMIC_WRITE_UNIT_EXCEEDED = (G, 0x14, "Atomic Write Unit Exceeded");
    OPERATION_DENIED = (G, 0x15, "Operation Denied");
    SGL_OFFSET_INVALID = (G, 0x16, "SGL Offset Invalid");
    // 17h is reserved.
    HOST_ID_INCONSISTENT_FORMAT = (G, 0x18, "Host Identifier Inconsistent Format");
    KEEP_ALIVE_EXPIRED = (G, 0x19, "Keep Alive Timer Expired");
    KEEP_ALIVE_INVALID = (G, 0x1a, "Keep Alive Timeout Invalid");
    ABORTED_PREEMPT = (G, 0x1b, "Command Aborted due to Preempt and Abort");
    SANITIZE_FAILED = (G, 0x1c, "Sanitize Failed");
    SANITIZE_IN_PROGRESS = (G, 0x1d, "Sanitize In Progress");
    SGL_DATA_BLOCK_GRANULARITY_INVALID = (G, 0x1e, "SGL Data Block Granularity Invalid");
    CMD_NOT_SUPPORTED_FOR_CMB_QUEUE = (G, 0x1f, "Command Not Supported for Queue in CMB");
    NS_WRITE_PROTECTED = (G, 0x20, "Namespace is Write Protected");
    CMD_INTERRUPTED = (G, 0x21, "Command Interrupted");
    TRANSIENT_TRANSPORT_ERROR = (G, 0x22, "Transient Transport Error");
    CMD_PROHIBITED_BY_LOCKDOWN = (G, 0x23, "Command Prohibited by Command and Feature Lockdown");
    ADMIN_CMD_MEDIA_NOT_READY = (G, 0x24, "Admin Command Media Not Ready");
    INVALID_IO_CMD_SET = (G, 0x2c, "Invalid I/O Command Set");
    // Generic, NVM Command Set specific range (80h..BFh).
    LBA_RANGE = (G, 0x80, "LBA Out of Range");
    CAP_EXCEEDED = (G, 0x81, "Capacity Exceeded");
    NS_NOT_READY = (G, 0x82, "Namespace Not Ready");
    RESERVATION_CONFLICT = (G, 0x83, "Reservation Conflict");
    FORMAT_IN_PROGRESS = (G, 0x84, "Format In Progress");

    // Command Specific Status (SCT 1h), NVMe Base 2.0 Figure 102.
    INVALID_CQ = (CS, 0x00, "Completion Queue Invalid");
    INVALID_QID = (CS, 0x01, "Invalid Queue Identifier");
    INVALID_QSIZE = (CS, 0x02, "Invalid Queue Size");
    ABORT_LIMIT = (CS, 0x03, "Abort Command Limit Exceeded");
    // 04h is reserved (was Abort Command Is Missing).
    ASYNC_LIMIT = (CS, 0x05, "Asynchronous Event Request Limit Exceeded");
    INVALID_FW_SLOT = (CS, 0x06, "Invalid Firmware Slot");
    INVALID_FW_IMAGE = (CS, 0x07, "Invalid Firmware Image");
    INVALID_INTERRUPT_VECTOR = (CS, 0x08, "Invalid Interrupt Vector");
    INVALID_LOG_PAGE = (CS, 0x09, "Invalid Log Page");
    INVALID_FORMAT = (CS, 0x0a, "Invalid Format");
    FW_NEEDS_CONVENTIONAL_RESET = (CS, 0x0b, "Firmware Activation Requires Conventional Reset");
    INVALID_QUEUE_DELETION = (CS, 0x0c, "Invalid Queue Deletion");
    FEATURE_NOT_SAVEABLE = (CS, 0x0d, "Feature Identifier Not Saveable");
    FEATURE_NOT_CHANGEABLE = (CS, 0x0e, "Feature Not Changeable");
    FEATURE_NOT_NS_SPECIFIC = (CS, 0x0f, "Feature Not Namespace Specific");
    FW_NEEDS_SUBSYSTEM_RESET = (CS, 0x10, "Firmware Activation Requires NVM Subsystem Reset");
    FW_NEEDS_RESET = (CS, 0x11, "Firmware Activation Requires Controller Level Reset");
    FW_NEEDS_MAX_TIME = (CS, 0x12, "Firmware Activation Requires Maximum Time Violation");
    FW_ACTIVATION_PROHIBITED = (CS, 0x13, "Firmware Activation Prohibited");
    OVERLAPPING_RANGE = (CS, 0x14, "Overlapping Range");
    NS_INSUFFICIENT_CAPACITY = (CS, 0x15, "Namespace Insufficient Capacity");
    NS_ID_UNAVAILABLE = (CS, 0x16, "Namespace Identifier Unavailable");
    NS_ALREADY_ATTACHED = (CS, 0x18, "Namespace Already Attached");
    NS_IS_PRIVATE = (CS, 0x19, "Namespace Is Private");
    NS_NOT_ATTACHED = (CS, 0x1a, "Namespace Not Attached");
    THIN_PROVISIONING_NOT_SUPPORTED = (CS, 0x1b, "Thin Provisioning Not Supported");
    CONTROLLER_LIST_INVALID = (CS, 0x1c, "Controller List Invalid");
    SELF_TEST_IN_PROGRESS = (CS, 0x1d, "Device Self-test In Progress");
    BOOT_PARTITION_WRITE_PROHIBITED = (CS, 0x1e, "Boot Partition Write Prohibited");
    INVALID_CONTROLLER_ID = (CS, 0x1f, "Invalid Controller Identifier");
    INVALID_SECONDARY_CONTROLLER_STATE = (CS, 0x20, "Invalid Secondary Controller State");
    INVALID_CONTROLLER_RESOURCES = (CS, 0x21, "Invalid Number of Controller Resources");
    INVALID_RESOURCE_ID = (CS, 0x22, "Invalid Resource Identifier");
    SANITIZE_PROHIBITED_PMR = (CS, 0x23, "Sanitize Prohibited While Persistent Memory Region is Enabled");
    ANA_GROUP_ID_INVALID = (CS, 0x24, "ANA Group Identifier Invalid");
    ANA_ATTACH_FAILED = (CS, 0x25, "ANA Attach Failed");
    // Command specific, NVM Command Set (NVM Command Set 1.0, Figure 29).
    CONFLICTING_ATTRS = (CS, 0x80, "Conflicting Attributes");
    INVALID_PROT_INFO = (CS, 0x81, "Invalid Protection Information");
    WRITE_TO_RO = (CS, 0x82, "Attempted Write to Read Only Range");
    // Command specific, Fabrics commands (NVMe Base 2.0 Figure 102, Fabrics rows; NVMe over
    // Fabrics 1.1 Figure 20). These share 80h..84h with the NVM rows above.
    CONNECT_INCOMPATIBLE_FORMAT = (CS, 0x80, "Connect Incompatible Format");
    CONTROLLER_BUSY = (CS, 0x81, "Connect Controller Busy");
    CONNECT_INVALID_PARAMETERS = (CS, 0x82, "Connect Invalid Parameters");
    CONNECT_RESTART_DISCOVERY = (CS, 0x83, "Connect Restart Discovery");
    CONNECT_INVALID_HOST = (CS, 0x84, "Connect Invalid Host");
    DISCOVERY_RESTART = (CS, 0x90, "Discovery Restart");
    AUTH_REQUIRED = (CS, 0x91, "Authentication Required");

    // Media and Data Integrity Errors (SCT 2h), NVMe Base 2.0 Figure 103.
    WRITE_FAULT = (M, 0x80, "Write Fault");
    UNRECOVERED_READ = (M, 0x81, "Unrecovered Read Error");
    GUARD_CHECK = (M, 0x82, "End-to-end Guard Check Error");
    APPTAG_CHECK = (M, 0x83, "End-to-end Application Tag Check Error");
    REFTAG_CHECK = (M, 0x84, "End-to-end Reference Tag Check Error");
    COMPARE_FAILURE = (M, 0x85, "Compare Failure");
    ACCESS_DENIED = (M, 0x86, "Access Denied");
    DEALLOCATED = (M, 0x87, "Deallocated or Unwritten Logical Block");

    // Path Related Status (SCT 3h), NVMe Base 2.0 Figure 104.
    INTERNAL_PATH_ERROR = (P, 0x00, "Internal Path Error");
    ANA_PERSISTENT_LOSS = (P, 0x01, "Asymmetric Access Persistent Loss");
    ANA_INACCESSIBLE = (P, 0x02, "Asymmetric Access Inaccessible");
    ANA_TRANSITION = (P, 0x03, "Asymmetric Access Transition");
    CTRL_PATH_ERROR = (P, 0x60, "Controller Pathing Error");
    HOST_PATH_ERROR = (P, 0x70, "Host Pathing Error");
    CMD_ABORTED_BY_HOST = (P, 0x71, "Command Aborted By Host");

    // Vendor Specific (SCT 7h): Tessera's generation check (docs/cluster-protocol.md, "The generation on the
    // wire"). The server's generation rides in CQE DW0 (low) / DW1 (high).
    /// The request's generation is older than the server's map: refresh the map and retry.
    STALE_MAP = (V, 0x80, "Stale Map");
    /// The request's generation is newer than the server's map and the server could not catch
    /// up within its bounded wait: retry after the Command Retry Delay.
    SERVER_BEHIND = (V, 0x81, "Server Behind");
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A code shared by two command sets is shown with both names: the CQE alone does not
        // say which command it completed.
        let mut named = false;
        for (_, n) in ALL.iter().filter(|(s, _)| s.same_code(*self)) {
            if named {
                write!(f, " / ")?;
            }
            write!(f, "{n}")?;
            named = true;
        }
        if !named {
            write!(f, "Unknown Status")?;
        }
        write!(f, " (sct {:#x}, sc {:#04x}", self.sct(), self.sc())?;
        if self.crd() != 0 {
            write!(f, ", crd {}", self.crd())?;
        }
        if self.more() {
            write!(f, ", more")?;
        }
        if self.dnr() {
            write!(f, ", dnr")?;
        }
        write!(f, ")")
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Status({:#06x}: {self})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_layout_matches_figure_98() {
        // SCT 1h / SC 82h with DNR: 0x4000 | 0x0100 | 0x82.
        let s = Status::CONNECT_INVALID_PARAMETERS.with_dnr();
        assert_eq!(s.0, 0x4182);
        assert_eq!(
            (s.sct(), s.sc(), s.dnr(), s.more(), s.crd()),
            (1, 0x82, true, false, 0)
        );
        let s = Status::SERVER_BEHIND.with_crd(2);
        assert_eq!(s.0, 0x1000 | 0x0781);
        assert_eq!(s.crd(), 2);
        assert_eq!(s.with_crd(1).crd(), 1);
        assert_eq!(Status::SUCCESS.with_more().0, 0x2000);
        assert!(Status::SUCCESS.with_more().is_success());
    }

    #[test]
    fn values_match_the_spec_tables() {
        assert_eq!(Status::INVALID_FIELD.0, 0x0002);
        assert_eq!(Status::SGL_INVALID_TYPE.0, 0x0011);
        assert_eq!(Status::TRANSIENT_TRANSPORT_ERROR.0, 0x0022);
        assert_eq!(Status::LBA_RANGE.0, 0x0080);
        assert_eq!(Status::INVALID_LOG_PAGE.0, 0x0109);
        assert_eq!(Status::CONNECT_INVALID_HOST.0, 0x0184);
        assert_eq!(Status::COMPARE_FAILURE.0, 0x0285);
        assert_eq!(Status::ANA_TRANSITION.0, 0x0303);
        assert_eq!(Status::CMD_ABORTED_BY_HOST.0, 0x0371);
        assert_eq!(Status::STALE_MAP.0, 0x0780);
        assert_eq!(Status::SERVER_BEHIND.0, 0x0781);
    }

    #[test]
    fn display_names_and_unknowns() {
        assert_eq!(
            Status::INVALID_FIELD.with_dnr().to_string(),
            "Invalid Field in Command (sct 0x0, sc 0x02, dnr)"
        );
        assert_eq!(
            Status::STALE_MAP.to_string(),
            "Stale Map (sct 0x7, sc 0x80)"
        );
        assert_eq!(
            Status::new(7, 0x99).to_string(),
            "Unknown Status (sct 0x7, sc 0x99)"
        );
        // Shared code: the NVM name is reported first.
        assert_eq!(
            Status::CONNECT_INCOMPATIBLE_FORMAT.name(),
            Some("Conflicting Attributes")
        );
        assert_eq!(
            Status::CONNECT_INVALID_PARAMETERS.to_string(),
            "Attempted Write to Read Only Range / Connect Invalid Parameters (sct 0x1, sc 0x82)"
        );
    }

    #[test]
    fn sct_is_three_bits() {
        assert_eq!(Status::new(0xff, 1).sct(), 7);
        assert_eq!(Status::from_field(0xffff).0, 0x7fff);
    }
}
