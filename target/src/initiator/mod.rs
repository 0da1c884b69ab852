//! NVMe/TCP initiator (host side): the project's own client, used by cluster mode to forward
//! commands to the server that owns an extent and to copy extents (stamped with a map
//! generation), by `tessera bench`, and by the integration tests.
//!
//! # Layers
//! * [`Queue`] (`queue.rs`, engine in `conn.rs`): one TCP connection = one NVMe queue.
//!   [`Queue::connect_tcp`] does ICReq/ICResp (checked as Linux checks them) and Fabrics
//!   Connect; [`Queue::submit`] sends any SQE and returns its [`Completion`] (CQE plus data).
//! * I/O helpers (`io.rs`): read, write, flush, write zeroes, deallocate, compare, each
//!   optionally stamped with a map generation in CDW2/CDW3 ([`Queue::with_generation`]).
//! * [`Controller`] (`controller.rs`): the admin queue and its CNTLID; properties, enable and
//!   shutdown, Identify, log pages, features, keep alive, asynchronous events, I/O queues.
//! * Discovery (`discovery.rs`): the discovery log page, read the way Linux reads it.
//! * [`RawConn`] (`raw.rs`): arbitrary bytes in, next PDU out, for malformed-PDU tests.
//! * [`DirectQueue`] (`direct.rs`): a queue driven by one thread's loop, for load generators.
//! * [`PolledQueue`] (`polled.rs`): a queue driven by the tasks that wait on it, with no task
//!   or allocation per command: a storage server's forwarded commands.
//!
//! # Tasks and CIDs
//! Each queue runs two tasks: a writer (owns the socket's write half and the free CID slots)
//! and a reader (owns the read half and the table of commands in flight). Submitters talk to
//! them through channels only; there is no lock per command. A semaphore with one permit per
//! slot bounds commands in flight to the queue depth (SQSIZE + 1 with SQ flow control disabled,
//! SQSIZE otherwise, at most [`QUEUE_DEPTH_MAX`]); a submitter waits for a permit, so a full
//! queue is back-pressure, not an error. A CID is the slot index in its low
//! [`CID_INDEX_BITS`] bits and a per-slot generation above, so a late or duplicated
//! completion for an earlier user of the slot is detected instead of completing the wrong
//! command (Linux does the same with its `genctr`).
//!
//! The writer registers each command with the reader before its capsule is written, then
//! batches everything that is ready (capsules, H2CData) into one vectored write of at most
//! [`WRITE_BATCH_PDUS_MAX`] PDUs / [`WRITE_BATCH_BYTES_MAX`] bytes; large data is not copied.
//!
//! # Data transfer
//! * Writes up to the in-capsule limit go in the command capsule (SGL Data Block, Offset
//!   subtype): 8 KiB on the admin queue and for Fabrics commands, IOCCSZ * 16 - 64 on I/O
//!   queues (set by the caller, default [`DEFAULT_IO_INCAPSULE_DATA`]).
//! * Larger writes use a Transport SGL Data Block; each R2T is answered with H2CData PDUs of
//!   at most MAXH2CDATA (from the ICResp) covering exactly [R2TO, R2TO + R2TL), the last one
//!   with LAST_PDU. R2Ts must not go backwards or past the data (Linux's checks).
//! * Reads are reassembled by DATAO; C2HData PDUs must not overlap or go backwards. A single
//!   PDU carrying the whole transfer is kept without a copy. C2HData with SUCCESS completes the
//!   command without a response capsule.
//! * A data digest error on C2HData completes the command with Data Transfer Error (as Linux).
//!
//! # Errors
//! A target's protocol violation ends the connection: every command in flight fails with the
//! same [`InitiatorError`], and for violations with a FES we send an H2CTermReq first. A
//! C2HTermReq from the target becomes [`InitiatorError::TermReq`]. NVMe statuses are not
//! errors for [`Queue::submit`]; helpers that expect success turn them into
//! [`InitiatorError::Status`] (or [`InitiatorError::Generation`] for the generation statuses).
//! A command timeout ([`TransportOptions::command_timeout`]) fails the waiting future only:
//! NVMe/TCP cannot cancel a command, so its CID stays busy until the target answers.

mod auth;
mod conn;
mod controller;
mod direct;
mod discovery;
mod error;
mod io;
mod options;
mod polled;
mod queue;
mod raw;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use auth::{AUTHREQ_MASK, DhchapSecrets, authenticate};
pub use controller::{
    AsyncEvent, CC_IOCQES, CC_IOSQES, CSTS_POLL_INTERVAL, Controller, SHUTDOWN_TIMEOUT,
};
pub use direct::{DirectCompletion, DirectQueue};
pub use discovery::{
    DISCOVERY_GENCTR_RETRIES, DISCOVERY_RECORDS_MAX, DiscoveryLog, DiscoveryLogEntry, discover,
    parse_discovery_log,
};
pub use error::{InitiatorError, Result};
pub use io::{DSM_RANGES_MAX, NLB_MAX, Stamped};
pub use options::{
    ControllerOptions, QueueOptions, TransportOptions, hostid_from_nqn, incapsule_data_from_ioccsz,
};
pub use polled::{PolledCommand, PolledQueue};
pub use queue::{Completion, PendingCompletion, Queue};
pub use raw::{RawConn, RawEvent};

/// Most commands in flight on one queue: Linux's `NVMF_MAX_QUEUE_SIZE` (1024), which also
/// bounds the per-queue table and leaves 6 bits of the CID for the slot generation.
pub const QUEUE_DEPTH_MAX: u32 = 1024;

/// Low bits of a CID: the slot index (2^10 = [`QUEUE_DEPTH_MAX`]).
pub const CID_INDEX_BITS: u32 = 10;
pub(crate) const CID_INDEX_MASK: usize = (1 << CID_INDEX_BITS) - 1;
/// The remaining 6 bits: the slot's generation.
pub(crate) const CID_GEN_MASK: u16 = (1 << (16 - CID_INDEX_BITS)) - 1;
const _: () = assert!(QUEUE_DEPTH_MAX as usize == CID_INDEX_MASK + 1);

/// Admin queue SQSIZE: 32 entries, as Linux (`NVME_AQ_DEPTH`).
pub const ADMIN_SQSIZE: u16 = 31;

/// Default I/O queue SQSIZE: 128 entries (Linux `NVMF_DEF_QUEUE_SIZE`).
pub const DEFAULT_IO_SQSIZE: u16 = 127;

/// Default KATO: 5 s (Linux `NVME_DEFAULT_KATO`).
pub const DEFAULT_KATO_MS: u32 = 5000;

/// Default in-capsule data limit of I/O queues when Identify Controller was not consulted:
/// 8 KiB, what our target and Linux nvmet advertise (IOCCSZ 516).
pub const DEFAULT_IO_INCAPSULE_DATA: u32 = 8192;

/// Default bound on TCP connect + IC exchange + Fabrics Connect.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// Default per-command timeout: Linux's I/O timeout (`nvme_core.io_timeout`, 30 s).
pub const COMMAND_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// Most PDUs in one vectored write: enough to amortize the syscall at queue depth 128 with a
/// handful of PDUs per write, while keeping latency of the first one low.
pub const WRITE_BATCH_PDUS_MAX: usize = 64;

/// Most bytes gathered before a vectored write is issued (it may exceed this by one PDU).
pub const WRITE_BATCH_BYTES_MAX: usize = 1024 * 1024;

/// Most iovecs per `writev` (Linux `IOV_MAX` is 1024; more buys nothing here).
pub const WRITE_IOVECS_MAX: usize = 64;

/// Data up to this size is copied next to its PDU header rather than given its own iovec:
/// the copy costs less than the iovec bookkeeping.
pub const INLINE_COPY_MAX: usize = 2048;

/// Receive buffer reserved up front; it grows to the largest PDU seen.
pub(crate) const READ_BUF_INITIAL: usize = 64 * 1024;

/// How long to try sending an H2CTermReq before closing anyway.
pub const TERM_REQ_GRACE: Duration = Duration::from_secs(1);
