//! Log pages (NVMe Base 2.0, section 5.16.1; discovery: section 5.16.1.23).
//!
//! Builders produce the full page; the Get Log Page command ([`GetLogPage`], parsed in
//! [`crate::nvme::cmd`]) selects the window the host asked for with [`GetLogPage::window`].
//! Parsers are the host-side view (for our initiator and tests) and never panic on short input.

mod discovery;
mod health;
mod ns;

pub use discovery::*;
pub use health::*;
pub use ns::*;

pub use crate::nvme::cmd::GetLogPage;

/// Log Page Identifiers (NVMe Base 2.0, Figure 202).
pub mod lid {
    pub const SUPPORTED_LOG_PAGES: u8 = 0x00;
    pub const ERROR_INFORMATION: u8 = 0x01;
    pub const SMART_HEALTH: u8 = 0x02;
    pub const FIRMWARE_SLOT: u8 = 0x03;
    pub const CHANGED_NS_LIST: u8 = 0x04;
    pub const COMMANDS_SUPPORTED_AND_EFFECTS: u8 = 0x05;
    pub const DEVICE_SELF_TEST: u8 = 0x06;
    pub const TELEMETRY_HOST: u8 = 0x07;
    pub const TELEMETRY_CONTROLLER: u8 = 0x08;
    pub const ENDURANCE_GROUP: u8 = 0x09;
    pub const ANA: u8 = 0x0c;
    pub const DISCOVERY: u8 = 0x70;
    pub const RESERVATION_NOTIFICATION: u8 = 0x80;
    pub const SANITIZE_STATUS: u8 = 0x81;
    /// Tessera's generation log (vendor specific, see [`crate::nvme::generation`]).
    pub const VENDOR_GENERATION: u8 = crate::nvme::generation::GENERATION_LOG_LID;
}

/// `N` bytes at `off` of `b` (zeros where `b` is short).
pub(crate) fn get_array<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut a = [0u8; N];
    if let Some(s) = b.get(off..off + N) {
        a.copy_from_slice(s);
    }
    a
}

pub(crate) fn le_u16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(get_array(b, off))
}

pub(crate) fn le_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(get_array(b, off))
}

pub(crate) fn le_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(get_array(b, off))
}

pub(crate) fn le_u128(b: &[u8], off: usize) -> u128 {
    u128::from_le_bytes(get_array(b, off))
}

/// Write `src` at `off` of `b` (nothing if it does not fit: offsets are our constants).
pub(crate) fn put(b: &mut [u8], off: usize, src: &[u8]) {
    debug_assert!(
        off + src.len() <= b.len(),
        "log field at {off} outside a {}-byte page",
        b.len()
    );
    if let Some(d) = b.get_mut(off..off + src.len()) {
        d.copy_from_slice(src);
    }
}
