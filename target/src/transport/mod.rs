//! The NVMe/TCP transport (NVMe/TCP Transport Specification 1.0): connection handling on tokio.

pub mod bufpool;
pub mod busypoll;
pub mod command;
pub mod conn;
pub mod writer;

use codec::pdu::params::{ADMIN_INCAPSULE_DATA, DEFAULT_MAX_H2C_DATA};

/// In-capsule data an I/O queue accepts (advertised as IOCCSZ = (64 + this) / 16): 8 KiB, so
/// 4 KiB and 8 KiB writes need no R2T round trip (SPDK defaults to 4 KiB, Linux nvmet to 8 KiB
/// on TCP... either way at least 4 KiB as the issue asks).
pub const IO_INCAPSULE_DATA: u32 = 8192;

/// Maximum Data Transfer Size in bytes: 128 KiB (MDTS = 5 with 4 KiB pages), SPDK's default
/// max_io_size. It bounds the buffer one command can pin: queue depth x MDTS per connection.
pub const MDTS_BYTES: u32 = 128 * 1024;

/// Per-connection transport limits (named constants by default; tests may shrink them to
/// exercise multi-R2T and multi-PDU paths).
#[derive(Debug, Clone, Copy)]
pub struct TransportConfig {
    /// MAXH2CDATA advertised in ICResp (a multiple of 4, at least 4096).
    pub max_h2c_data: u32,
    /// In-capsule data on admin queues (Linux assumes 8 KiB for admin and fabrics commands).
    pub admin_incapsule: u32,
    /// In-capsule data on I/O queues.
    pub io_incapsule: u32,
    /// Largest transfer one command may carry.
    pub mdts_bytes: u32,
    /// Largest R2TL we solicit at once.
    pub r2t_len_max: u32,
    /// R2Ts outstanding per command at most (also bounded by the host's MAXR2T + 1).
    pub r2t_outstanding_max: u32,
    /// Reads of RAM and null namespaces send the backend's memory as it is (no copy into a
    /// buffer). Off only to measure what that buys (`tessera-target --no-zero-copy`).
    pub zero_copy_reads: bool,
}

impl TransportConfig {
    /// The default limits with MDTS `mdts_bytes` and I/O in-capsule data `io_incapsule` (the
    /// layout's `transport:` section, already checked by the yaml crate; docs/transport.md).
    ///
    /// MAXH2CDATA and the largest R2T follow MDTS, so a host sends a whole write in one
    /// H2CData PDU, which the connection hands on where it landed in the receive buffer (no
    /// copy, no per-command buffer); the codec's largest PDU follows both
    /// ([`TransportConfig::limits`]). MAXH2CDATA must be at least 4 KiB (NVMe/TCP 1.0, section
    /// 3.6.2.3), which MDTS's own lower bound (4 KiB) already ensures.
    pub fn with_limits(mdts_bytes: u32, io_incapsule: u32) -> Self {
        let mdts = mdts_bytes.max(codec::pdu::params::MAXH2CDATA_MIN);
        Self {
            max_h2c_data: mdts,
            io_incapsule,
            mdts_bytes: mdts,
            r2t_len_max: mdts,
            ..Self::default()
        }
    }
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            max_h2c_data: DEFAULT_MAX_H2C_DATA,
            admin_incapsule: ADMIN_INCAPSULE_DATA,
            io_incapsule: IO_INCAPSULE_DATA,
            mdts_bytes: MDTS_BYTES,
            r2t_len_max: MDTS_BYTES,
            r2t_outstanding_max: 4,
            zero_copy_reads: true,
        }
    }
}
