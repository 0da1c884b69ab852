//! One owner per command: the per-queue command table, and where a command's data comes from.
//!
//! Every command a queue accepts gets one [`Entry`] in its queue's [`CommandTable`] from the
//! moment its capsule is parsed until its completion is queued for the host. The entry holds
//! what the command needs between those two points (the parsed command, its namespace looked up
//! once, the state of its R2T/H2CData transfer) and its [`CmdState`], which changes only
//! through [`CommandTable::set_state`]: one place that knows the legal transitions (as SPDK's
//! TCP transport keeps its request states).
//!
//! An entry's index is its *tag*: the TTAG of its R2Ts (NVMe/TCP 1.0, section 3.4.3), and what
//! an in-flight future returns to find its command again. Tags are bounded by the queue depth.
//! The host's CIDs are tracked in a set of all 65,536 CIDs (8 KiB per connection), so a CID
//! already in flight on the queue is refused with Command ID Conflict (NVMe Base 2.0, Figure
//! 101, status 03h) in constant time, before the command is parsed.
//!
//! [`plan_data`] decides, before anything runs, where a command's data comes from: the one SGL
//! rule of the transport (the codec's `check_sgl`, docs/transport.md), MDTS, and what the
//! capsule carries.
//!
//! Nothing here allocates per command: the entries, the free list and the CID set are sized
//! when the queue connects; a multi-PDU write's buffer is reserved as before.

use std::sync::Arc;

use bytes::BytesMut;
use codec::nvme::Sqe;
use codec::nvme::Status;
use codec::nvme::cmd::{self, Command, DataDir};
use codec::nvme::sgl::SglDescriptor;

use crate::subsystem::namespace::Namespace;

/// Where a command is in its life on a queue (transitions in [`CommandTable::set_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmdState {
    /// The entry holds no command.
    Free,
    /// Capsule received, CID taken; being parsed and checked.
    New,
    /// A write whose data the host sends by H2CData after our R2Ts.
    AwaitingH2cData,
    /// All its data is here: about to run.
    ReadyToExecute,
    /// Running (inline, or as a future the connection polls).
    Executing,
    /// Its completion (or an error status) is being queued for the host.
    Completing,
}

/// An R2T/H2CData transfer in progress (NVMe/TCP 1.0, section 3.4.3).
#[derive(Debug, Default)]
pub struct H2cTransfer {
    /// Data received so far, when it came in several PDUs (reserved on the first one that does
    /// not carry everything).
    pub buf: BytesMut,
    /// Bytes accounted for so far: the next expected DATAO.
    pub received: u32,
    /// A data digest error hit one of its PDUs: the rest of the transfer is received and
    /// discarded, and the command fails with Transient Transport Error (NVMe/TCP 1.0, section
    /// 3.6.2.1: only the command fails, the connection stays).
    pub failed: bool,
    /// Total transfer length.
    pub len: u32,
    /// Offset up to which R2Ts have been sent.
    pub solicited: u32,
}

/// One command on a queue.
pub struct Entry {
    state: CmdState,
    /// The host's command identifier.
    pub cid: u16,
    /// The parsed command, until it runs.
    pub cmd: Option<Command>,
    /// The namespace an NVM I/O command addresses, looked up once when the command arrives
    /// (`None` for admin and Fabrics commands, and a Flush to every namespace).
    pub ns: Option<Arc<Namespace>>,
    /// Its data transfer, while [`CmdState::AwaitingH2cData`].
    pub h2c: H2cTransfer,
}

impl Entry {
    fn free() -> Self {
        Self {
            state: CmdState::Free,
            cid: 0,
            cmd: None,
            ns: None,
            h2c: H2cTransfer::default(),
        }
    }

    pub fn state(&self) -> CmdState {
        self.state
    }
}

/// Why a command could not get an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its CID is already in flight on this queue.
    CidInFlight,
    /// Every entry is taken: the host submitted more than its queue holds.
    Full,
}

impl Refused {
    /// The status the command completes with.
    pub const fn status(self) -> Status {
        match self {
            // The same command resubmitted as is would conflict again: DNR.
            Refused::CidInFlight => Status::CID_CONFLICT.with_dnr(),
            Refused::Full => Status::CMD_SEQ_ERROR,
        }
    }
}

/// Number of CIDs (CID is 16 bits).
const CIDS: usize = 1 << 16;

/// The commands one queue holds, indexed by tag.
pub struct CommandTable {
    entries: Vec<Entry>,
    /// Free tags, used as a stack (the most recently freed entry is warm in cache).
    free: Vec<u16>,
    /// CIDs in flight, one bit each.
    cids: Box<[u64]>,
    /// Entries in use.
    used: usize,
}

impl CommandTable {
    /// A table of `depth` entries (at most 65,536: tags are 16 bits).
    pub fn new(depth: usize) -> Self {
        let mut t = Self {
            entries: Vec::new(),
            free: Vec::new(),
            cids: vec![0u64; CIDS / 64].into_boxed_slice(),
            used: 0,
        };
        t.grow(depth);
        t
    }

    /// Entries the table holds.
    pub fn depth(&self) -> usize {
        self.entries.len()
    }

    /// Entries in use.
    pub fn len(&self) -> usize {
        self.used
    }

    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// Raises the table to `depth` entries (a queue's real depth is known after Connect).
    pub fn grow(&mut self, depth: usize) {
        let depth = depth.min(CIDS);
        let old = self.entries.len();
        if depth <= old {
            return;
        }
        self.entries.resize_with(depth, Entry::free);
        self.free.reserve(depth - old);
        // Lowest tags on top of the stack.
        for tag in (old..depth).rev() {
            // depth <= CIDS = 2^16, so every tag fits.
            self.free.push(u16::try_from(tag).unwrap_or(u16::MAX));
        }
    }

    fn cid_bit(cid: u16) -> (usize, u64) {
        (usize::from(cid) / 64, 1u64 << (cid % 64))
    }

    /// Whether `cid` is in flight.
    pub fn cid_in_flight(&self, cid: u16) -> bool {
        let (w, b) = Self::cid_bit(cid);
        self.cids.get(w).is_some_and(|x| x & b != 0)
    }

    /// Takes an entry for a new command with `cid`: its tag, in state [`CmdState::New`].
    pub fn begin(&mut self, cid: u16) -> Result<u16, Refused> {
        if self.cid_in_flight(cid) {
            return Err(Refused::CidInFlight);
        }
        let tag = self.free.pop().ok_or(Refused::Full)?;
        let (w, b) = Self::cid_bit(cid);
        if let Some(x) = self.cids.get_mut(w) {
            *x |= b;
        }
        self.used += 1;
        self.set_state(tag, CmdState::New);
        if let Some(e) = self.entries.get_mut(usize::from(tag)) {
            e.cid = cid;
        }
        Ok(tag)
    }

    /// The entry of `tag` if it holds a command.
    pub fn get_mut(&mut self, tag: u16) -> Option<&mut Entry> {
        self.entries
            .get_mut(usize::from(tag))
            .filter(|e| e.state != CmdState::Free)
    }

    /// The entry of `tag` if it is waiting for H2CData.
    pub fn awaiting_data(&mut self, tag: u16) -> Option<&mut Entry> {
        self.get_mut(tag)
            .filter(|e| e.state == CmdState::AwaitingH2cData)
    }

    /// Moves `tag` to `next`: the one place a command's state changes.
    pub fn set_state(&mut self, tag: u16, next: CmdState) {
        use CmdState::*;
        let Some(e) = self.entries.get_mut(usize::from(tag)) else {
            debug_assert!(false, "set_state on tag {tag} beyond the table");
            return;
        };
        debug_assert!(
            matches!(
                (e.state, next),
                (Free, New)
                    | (New, AwaitingH2cData | ReadyToExecute)
                    | (AwaitingH2cData, ReadyToExecute)
                    | (ReadyToExecute, Executing)
                    // A command fails before it runs (a bad field, a failed transfer) or
                    // completes.
                    | (New | AwaitingH2cData | ReadyToExecute | Executing, Completing)
                    | (Completing, Free)
            ),
            "illegal command transition {:?} -> {next:?} (tag {tag}, cid {})",
            e.state,
            e.cid
        );
        e.state = next;
    }

    /// Ends the command of `tag`: frees its entry and its CID, and returns the CID its
    /// completion carries. `None` if the tag holds no command (our bug, asserted in debug).
    pub fn complete(&mut self, tag: u16) -> Option<u16> {
        let e = self.get_mut(tag)?;
        let cid = e.cid;
        e.cmd = None;
        e.ns = None;
        e.h2c = H2cTransfer::default();
        self.set_state(tag, CmdState::Completing);
        self.set_state(tag, CmdState::Free);
        let (w, b) = Self::cid_bit(cid);
        if let Some(x) = self.cids.get_mut(w) {
            *x &= !b;
        }
        self.used -= 1;
        self.free.push(tag);
        Some(cid)
    }
}

/// Where a command's data comes from (or goes to), decided before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPlan {
    /// No data moves (whatever DPTR or the capsule hold).
    None,
    /// Host-to-controller data in the capsule: the command uses its first `len` bytes.
    InCapsule { len: u32 },
    /// Host-to-controller data the target solicits with R2Ts: `len` bytes.
    Solicit { len: u32 },
    /// Controller-to-host data sent with C2HData: `len` bytes.
    ToHost { len: u32 },
}

/// Decides where the data of a command moving `dir` comes from, given its SQE (SGL1), the
/// in-capsule data it arrived with (`capsule_len` bytes) and the queue's MDTS (`mdts_bytes`).
///
/// - MDTS bounds the transfer (not the host's buffer): more is Invalid Field in Command, DNR;
/// - SGL1 follows the one SGL rule, the codec's [`cmd::check_sgl`] (docs/transport.md): a longer
///   buffer is accepted and only the transfer moves, a shorter one is Data SGL Length Invalid;
/// - in-capsule data: the capsule carries exactly what its descriptor describes (NVMe/TCP 1.0,
///   section 3.3.2: the SGL length is the in-capsule data length), else Data SGL Length
///   Invalid, DNR;
/// - a Transport SGL for host data: the data comes by R2T, so the capsule carries none (else
///   Data SGL Length Invalid, DNR).
pub fn plan_data(
    sqe: &Sqe,
    dir: DataDir,
    capsule_len: usize,
    mdts_bytes: u32,
) -> Result<DataPlan, Status> {
    let Ok(len) = u32::try_from(dir.len()) else {
        return Err(Status::INVALID_FIELD.with_dnr());
    };
    if len > mdts_bytes {
        return Err(Status::INVALID_FIELD.with_dnr());
    }
    let sgl = cmd::check_sgl(sqe, dir)?;
    match (dir, sgl) {
        (DataDir::HostToCtrl(_), Some(SglDescriptor::InCapsule { len: sgl_len, .. })) => {
            if capsule_len != sgl_len as usize {
                return Err(Status::SGL_INVALID_DATA_LEN.with_dnr());
            }
            Ok(DataPlan::InCapsule { len })
        }
        (DataDir::HostToCtrl(_), Some(_)) => {
            if capsule_len != 0 {
                return Err(Status::SGL_INVALID_DATA_LEN.with_dnr());
            }
            Ok(DataPlan::Solicit { len })
        }
        (DataDir::CtrlToHost(_), Some(_)) => Ok(DataPlan::ToHost { len }),
        // check_sgl returns a descriptor exactly when data moves.
        _ => Ok(DataPlan::None),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_cid_in_flight_is_refused_until_its_command_completes() {
        let mut t = CommandTable::new(4);
        let a = t.begin(7).unwrap();
        assert_eq!(t.begin(7), Err(Refused::CidInFlight));
        let b = t.begin(8).unwrap();
        assert_ne!(a, b);
        assert_eq!(t.len(), 2);
        // The refused command took nothing: the first one still completes with its CID.
        t.set_state(a, CmdState::ReadyToExecute);
        t.set_state(a, CmdState::Executing);
        assert_eq!(t.complete(a), Some(7));
        assert!(!t.cid_in_flight(7));
        assert!(t.cid_in_flight(8));
        let c = t.begin(7).unwrap();
        assert_eq!(t.get_mut(c).unwrap().cid, 7);
        assert_eq!(t.complete(b), Some(8));
        assert_eq!(t.complete(c), Some(7));
        assert!(t.is_empty());
        // A tag that holds nothing completes nothing.
        assert_eq!(t.get_mut(c).map(|e| e.cid), None);
    }

    #[test]
    fn every_cid_value_is_tracked_on_its_own() {
        let mut t = CommandTable::new(3);
        for cid in [0u16, 63, 64, u16::MAX] {
            let tag = t.begin(cid).unwrap();
            assert!(t.cid_in_flight(cid));
            for other in [0u16, 1, 63, 64, 65, u16::MAX - 1, u16::MAX] {
                assert_eq!(t.cid_in_flight(other), other == cid, "cid {cid} vs {other}");
            }
            assert_eq!(t.complete(tag), Some(cid));
        }
    }

    #[test]
    fn a_full_table_refuses_and_grows_after_connect() {
        let mut t = CommandTable::new(2);
        t.begin(1).unwrap();
        t.begin(2).unwrap();
        assert_eq!(t.begin(3), Err(Refused::Full));
        assert!(!t.cid_in_flight(3), "a refused command holds no CID");
        t.grow(4);
        assert_eq!(t.depth(), 4);
        t.begin(3).unwrap();
        t.begin(4).unwrap();
        assert_eq!(t.begin(5), Err(Refused::Full));
        t.grow(3); // never shrinks
        assert_eq!(t.depth(), 4);
    }

    #[test]
    fn only_a_write_waiting_for_data_accepts_h2cdata() {
        let mut t = CommandTable::new(2);
        let tag = t.begin(9).unwrap();
        assert!(t.awaiting_data(tag).is_none());
        t.set_state(tag, CmdState::AwaitingH2cData);
        assert_eq!(t.awaiting_data(tag).unwrap().cid, 9);
        assert!(t.awaiting_data(tag + 1).is_none());
        assert!(t.awaiting_data(u16::MAX).is_none());
        t.set_state(tag, CmdState::ReadyToExecute);
        assert!(t.awaiting_data(tag).is_none());
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "illegal command transition")]
    fn an_illegal_transition_is_caught() {
        let mut t = CommandTable::new(1);
        let tag = t.begin(1).unwrap();
        t.set_state(tag, CmdState::Executing);
    }

    fn sqe_with(sgl: SglDescriptor) -> Sqe {
        let mut sqe = Sqe::default();
        sqe.set_dptr(sgl.to_bytes());
        sqe
    }

    const MDTS: u32 = 128 * 1024;

    #[test]
    fn the_sgl_rule_decides_every_data_source() {
        let w = DataDir::HostToCtrl(4096);
        let r = DataDir::CtrlToHost(4096);
        let inc = SglDescriptor::in_capsule;
        let tr = SglDescriptor::transport;
        let cases: &[(DataDir, SglDescriptor, usize, Result<DataPlan, Status>)] = &[
            // In-capsule: exact, and longer than the transfer (the first `len` bytes are used).
            (w, inc(4096), 4096, Ok(DataPlan::InCapsule { len: 4096 })),
            (w, inc(8192), 8192, Ok(DataPlan::InCapsule { len: 4096 })),
            // The capsule must carry what its descriptor says.
            (
                w,
                inc(8192),
                4096,
                Err(Status::SGL_INVALID_DATA_LEN.with_dnr()),
            ),
            (
                w,
                inc(4096),
                0,
                Err(Status::SGL_INVALID_DATA_LEN.with_dnr()),
            ),
            // Shorter than the transfer.
            (
                w,
                inc(2048),
                2048,
                Err(Status::SGL_INVALID_DATA_LEN.with_dnr()),
            ),
            // Transport SGL: R2T for the transfer only, a longer buffer accepted.
            (w, tr(4096), 0, Ok(DataPlan::Solicit { len: 4096 })),
            (w, tr(65536), 0, Ok(DataPlan::Solicit { len: 4096 })),
            (w, tr(4095), 0, Err(Status::SGL_INVALID_DATA_LEN.with_dnr())),
            (
                w,
                tr(4096),
                512,
                Err(Status::SGL_INVALID_DATA_LEN.with_dnr()),
            ),
            // Reads: C2HData of the transfer; in-capsule is not a way back to the host.
            (r, tr(4096), 0, Ok(DataPlan::ToHost { len: 4096 })),
            (r, tr(1 << 20), 0, Ok(DataPlan::ToHost { len: 4096 })),
            (r, tr(512), 0, Err(Status::SGL_INVALID_DATA_LEN.with_dnr())),
            (r, inc(4096), 0, Err(Status::SGL_INVALID_TYPE.with_dnr())),
            // Nothing moves: DPTR and capsule do not matter.
            (DataDir::None, tr(4096), 0, Ok(DataPlan::None)),
            (DataDir::None, inc(16), 16, Ok(DataPlan::None)),
            (DataDir::HostToCtrl(0), tr(0), 0, Ok(DataPlan::None)),
        ];
        for (i, (dir, sgl, cap, want)) in cases.iter().enumerate() {
            let got = plan_data(&sqe_with(*sgl), *dir, *cap, MDTS);
            assert_eq!(&got, want, "case {i}: {dir:?} {sgl:?} capsule {cap}");
        }
        // A keyed (RDMA) descriptor is not NVMe/TCP's.
        let keyed = SglDescriptor::Keyed {
            addr: 0,
            len: 4096,
            key: 1,
            invalidate: false,
        };
        assert_eq!(
            plan_data(&sqe_with(keyed), w, 0, MDTS),
            Err(Status::SGL_INVALID_TYPE.with_dnr())
        );
        // In-capsule at a non-zero offset (ICDOFF is 0).
        let off = SglDescriptor::InCapsule {
            offset: 16,
            len: 4096,
        };
        assert_eq!(
            plan_data(&sqe_with(off), w, 4096, MDTS),
            Err(Status::SGL_OFFSET_INVALID.with_dnr())
        );
    }

    #[test]
    fn mdts_bounds_the_transfer_not_the_buffer() {
        let big = DataDir::CtrlToHost(u64::from(MDTS) + 512);
        let sqe = sqe_with(SglDescriptor::transport(MDTS * 2));
        assert_eq!(
            plan_data(&sqe, big, 0, MDTS),
            Err(Status::INVALID_FIELD.with_dnr())
        );
        let at = DataDir::CtrlToHost(u64::from(MDTS));
        assert_eq!(
            plan_data(&sqe, at, 0, MDTS),
            Ok(DataPlan::ToHost { len: MDTS })
        );
        let huge = DataDir::HostToCtrl(u64::from(u32::MAX) + 1);
        assert_eq!(
            plan_data(&sqe, huge, 0, MDTS),
            Err(Status::INVALID_FIELD.with_dnr())
        );
    }
}
