//! Discovery: the Discovery Log Page (LID 70h; NVMe Base 2.0, section 5.16.1.23), fetched the
//! way Linux/libnvme does. The page layout is the codec's (`codec::nvme::log`).

use std::net::SocketAddr;

use codec::nvme::fabrics::DISCOVERY_NQN;
use codec::nvme::log::{DISCOVERY_ENTRY_LEN, DISCOVERY_HEADER_LEN, lid};

pub use codec::nvme::log::{DiscoveryLog, DiscoveryLogEntry};

use super::controller::Controller;
use super::error::{InitiatorError, Result};
use super::options::ControllerOptions;

/// Most records we fetch: 1024 (1 MiB of log). A target listing more is not one we test, and
/// NUMREC is the peer's number: it must not size our allocation unchecked.
pub const DISCOVERY_RECORDS_MAX: u64 = 1024;

/// Re-reads when GENCTR changes under us (libnvme's default `max_retries`, 10).
pub const DISCOVERY_GENCTR_RETRIES: u32 = 10;

/// Parse a whole Discovery Log Page, strictly: every one of NUMREC entries must be present.
pub fn parse_discovery_log(page: &[u8]) -> Result<DiscoveryLog> {
    let short = InitiatorError::Protocol {
        what: "discovery log page shorter than NUMREC says",
    };
    if page.len() < DISCOVERY_HEADER_LEN {
        return Err(short);
    }
    let numrec = DiscoveryLog::numrec(page);
    let log = DiscoveryLog::parse(page);
    if u64::try_from(log.entries.len()).ok() != Some(numrec) {
        return Err(short);
    }
    Ok(log)
}

impl ControllerOptions {
    /// Options for a (non-persistent) discovery controller: KATO 0, no keep alive (Linux).
    pub fn discovery() -> Self {
        Self {
            kato_ms: 0,
            keep_alive: false,
            ..Self::default()
        }
    }
}

impl Controller {
    /// Read the Discovery Log Page as libnvme does: the header for NUMREC, then the whole
    /// page; if GENCTR changed in between, again (up to [`DISCOVERY_GENCTR_RETRIES`] times).
    pub async fn discovery_log(&self) -> Result<DiscoveryLog> {
        // 1024: fits a u32.
        let hdr_len = u32::try_from(DISCOVERY_HEADER_LEN).unwrap_or(1024);
        for _ in 0..DISCOVERY_GENCTR_RETRIES {
            let hdr = self.get_log_page(lid::DISCOVERY, 0, hdr_len, 0).await?;
            let genctr = DiscoveryLog::parse(&hdr).genctr;
            let numrec = DiscoveryLog::numrec(&hdr);
            if numrec > DISCOVERY_RECORDS_MAX {
                return Err(InitiatorError::Protocol {
                    what: "discovery log NUMREC above 1024",
                });
            }
            // numrec <= 1024: at most 1 MiB + 1 KiB.
            let entries = usize::try_from(numrec).unwrap_or(0);
            let len = u32::try_from(DISCOVERY_HEADER_LEN + entries * DISCOVERY_ENTRY_LEN)
                .unwrap_or(u32::MAX);
            let page = self.get_log_page(lid::DISCOVERY, 0, len, 0).await?;
            if DiscoveryLog::numrec(&page) != numrec || DiscoveryLog::parse(&page).genctr != genctr
            {
                tracing::debug!(genctr, "discovery log changed while reading it; again");
                continue;
            }
            return parse_discovery_log(&page);
        }
        Err(InitiatorError::Protocol {
            what: "discovery log GENCTR kept changing",
        })
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
