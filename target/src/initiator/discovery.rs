//! Discovery: the Discovery Log Page (LID 70h; NVMe Base 2.0, section 5.16.1.23, Figures
//! 262–263), fetched the way Linux/libnvme does.
//!
//! The layout is parsed here, host side, with named offsets; it belongs in `codec` (a `log`
//! module is planned there) and should move once that exists.

use std::net::SocketAddr;

use bytes::Bytes;
use codec::nvme::fabrics::DISCOVERY_NQN;

use super::controller::Controller;
use super::error::{InitiatorError, Result};
use super::options::ControllerOptions;

/// Log Identifier of the Discovery Log Page.
pub const DISCOVERY_LOG_LID: u8 = 0x70;

/// Header and each entry are 1024 bytes.
pub const DISCOVERY_HEADER_LEN: usize = 1024;
pub const DISCOVERY_ENTRY_LEN: usize = 1024;

/// Most records we fetch: 1024 (1 MiB of log). A target listing more is not one we test.
pub const DISCOVERY_RECORDS_MAX: u64 = 1024;

/// Re-reads when GENCTR changes under us (libnvme's default `max_retries`, 10).
pub const DISCOVERY_GENCTR_RETRIES: u32 = 10;

/// Header field offsets (Figure 262).
pub mod hdr_off {
    pub const GENCTR: usize = 0;
    pub const NUMREC: usize = 8;
    pub const RECFMT: usize = 16;
}

/// Entry field offsets (Figure 263).
pub mod entry_off {
    pub const TRTYPE: usize = 0;
    pub const ADRFAM: usize = 1;
    pub const SUBTYPE: usize = 2;
    pub const TREQ: usize = 3;
    pub const PORTID: usize = 4;
    pub const CNTLID: usize = 6;
    pub const ASQSZ: usize = 8;
    pub const EFLAGS: usize = 10;
    pub const TRSVCID: usize = 32;
    pub const TRSVCID_LEN: usize = 32;
    pub const SUBNQN: usize = 256;
    pub const TRADDR: usize = 512;
    pub const TSAS: usize = 768;
    pub const FIELD_256: usize = 256;
}

const _: () = assert!(entry_off::TSAS + entry_off::FIELD_256 == DISCOVERY_ENTRY_LEN);
const _: () = assert!(entry_off::TRSVCID + entry_off::TRSVCID_LEN <= entry_off::SUBNQN);

/// One Discovery Log Page Entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryEntry {
    /// Transport type (3 = TCP).
    pub trtype: u8,
    /// Address family (1 = IPv4, 2 = IPv6).
    pub adrfam: u8,
    /// Subsystem type (1 = referral, 2 = NVM subsystem, 3 = current discovery subsystem).
    pub subtype: u8,
    /// Transport requirements.
    pub treq: u8,
    pub portid: u16,
    pub cntlid: u16,
    /// Admin max SQ size.
    pub asqsz: u16,
    pub eflags: u16,
    /// Transport service ID (the TCP port, as text; space padding removed).
    pub trsvcid: String,
    pub subnqn: String,
    /// Transport address (as text; padding removed).
    pub traddr: String,
    /// Transport specific address subtype, raw (for TCP: SECTYPE in byte 0).
    pub tsas: Vec<u8>,
}

/// The Discovery Log Page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryLog {
    pub genctr: u64,
    pub numrec: u64,
    pub recfmt: u16,
    pub entries: Vec<DiscoveryEntry>,
}

fn le<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    b.get(off..off + N)?.try_into().ok()
}

/// A text field: up to the first NUL, trailing spaces removed (TRSVCID and TRADDR are
/// space padded, SUBNQN NUL terminated).
fn text(b: &[u8], off: usize, len: usize) -> String {
    let f = b.get(off..off + len).unwrap_or_default();
    let f = &f[..f.iter().position(|&c| c == 0).unwrap_or(f.len())];
    String::from_utf8_lossy(f).trim_end_matches(' ').to_owned()
}

impl DiscoveryEntry {
    /// Parse one 1024-byte entry; `None` if `b` is short.
    pub fn parse(b: &[u8]) -> Option<Self> {
        use entry_off as o;
        let b = b.get(..DISCOVERY_ENTRY_LEN)?;
        Some(Self {
            trtype: b[o::TRTYPE],
            adrfam: b[o::ADRFAM],
            subtype: b[o::SUBTYPE],
            treq: b[o::TREQ],
            portid: u16::from_le_bytes(le(b, o::PORTID)?),
            cntlid: u16::from_le_bytes(le(b, o::CNTLID)?),
            asqsz: u16::from_le_bytes(le(b, o::ASQSZ)?),
            eflags: u16::from_le_bytes(le(b, o::EFLAGS)?),
            trsvcid: text(b, o::TRSVCID, o::TRSVCID_LEN),
            subnqn: text(b, o::SUBNQN, o::FIELD_256),
            traddr: text(b, o::TRADDR, o::FIELD_256),
            tsas: b.get(o::TSAS..o::TSAS + o::FIELD_256)?.to_vec(),
        })
    }
}

impl DiscoveryLog {
    /// GENCTR and NUMREC from the header (at least 16 bytes).
    pub fn parse_header(b: &[u8]) -> Option<(u64, u64, u16)> {
        Some((
            u64::from_le_bytes(le(b, hdr_off::GENCTR)?),
            u64::from_le_bytes(le(b, hdr_off::NUMREC)?),
            u16::from_le_bytes(le(b, hdr_off::RECFMT)?),
        ))
    }

    /// Parse a whole page: the header and `NUMREC` entries, which must all be present.
    pub fn parse(b: &[u8]) -> Result<Self> {
        let short = InitiatorError::Protocol { what: "discovery log page shorter than NUMREC says" };
        let (genctr, numrec, recfmt) = Self::parse_header(b).ok_or(short.clone())?;
        let n = usize::try_from(numrec).map_err(|_| short.clone())?;
        let entries = (0..n)
            .map(|i| {
                let off = DISCOVERY_HEADER_LEN + i * DISCOVERY_ENTRY_LEN;
                b.get(off..).and_then(DiscoveryEntry::parse)
            })
            .collect::<Option<Vec<_>>>()
            .ok_or(short)?;
        Ok(Self { genctr, numrec, recfmt, entries })
    }
}

impl ControllerOptions {
    /// Options for a (non-persistent) discovery controller: KATO 0, no keep alive (Linux).
    pub fn discovery() -> Self {
        Self { kato_ms: 0, keep_alive: false, ..Self::default() }
    }
}

impl Controller {
    /// Read the Discovery Log Page as libnvme does: the header for NUMREC, then the whole
    /// page; if GENCTR changed in between, again (up to [`DISCOVERY_GENCTR_RETRIES`] times).
    pub async fn discovery_log(&self) -> Result<DiscoveryLog> {
        // 1024: fits a u32.
        let hdr_len = u32::try_from(DISCOVERY_HEADER_LEN).unwrap_or(1024);
        let mut retries = 0;
        loop {
            let hdr: Bytes = self.get_log_page(DISCOVERY_LOG_LID, 0, hdr_len, 0).await?;
            let short = InitiatorError::Protocol { what: "discovery log header short" };
            let (genctr, numrec, _) = DiscoveryLog::parse_header(&hdr).ok_or(short)?;
            if numrec > DISCOVERY_RECORDS_MAX {
                return Err(InitiatorError::Protocol { what: "discovery log NUMREC above 1024" });
            }
            // numrec <= 1024: at most 1 MiB + 1 KiB.
            let len = u32::try_from((numrec + 1) * 1024).unwrap_or(u32::MAX);
            let page = self.get_log_page(DISCOVERY_LOG_LID, 0, len, 0).await?;
            let log = DiscoveryLog::parse(&page)?;
            if log.genctr == genctr && log.numrec == numrec {
                return Ok(log);
            }
            retries += 1;
            if retries >= DISCOVERY_GENCTR_RETRIES {
                return Err(InitiatorError::Protocol { what: "discovery log GENCTR kept changing" });
            }
        }
    }
}

/// Connect to the discovery subsystem at `addr`, enable the controller, read the discovery
/// log and disconnect. Use [`ControllerOptions::discovery`] for Linux's defaults.
pub async fn discover(
    addr: SocketAddr,
    hostnqn: &str,
    opts: &ControllerOptions,
) -> Result<DiscoveryLog> {
    let ctrl = Controller::connect(addr, DISCOVERY_NQN, hostnqn, opts).await?;
    ctrl.enable().await?;
    let log = ctrl.discovery_log().await;
    ctrl.disconnect().await?;
    log
}
