//! Error Information (01h), SMART / Health Information (02h) and Firmware Slot Information (03h)
//! log pages (NVMe Base 2.0, sections 5.16.1.2–5.16.1.4).

use super::{get_array, le_u16, le_u32, le_u64, le_u128, put};
use crate::nvme::Status;

/// Size of one Error Information entry (NVMe Base 2.0, Figure 205).
pub const ERROR_LOG_ENTRY_LEN: usize = 64;

/// Byte offsets in an Error Information entry (NVMe Base 2.0, Figure 205).
pub mod error_off {
    pub const ERROR_COUNT: usize = 0;
    pub const SQID: usize = 8;
    pub const CID: usize = 10;
    /// Status Field (bits 15:1) and Phase Tag (bit 0) of the completion.
    pub const STATUS: usize = 12;
    /// Byte (bits 7:0) and bit (bits 10:8) in the command of the parameter in error.
    pub const PARAM_ERROR_LOCATION: usize = 14;
    pub const LBA: usize = 16;
    pub const NSID: usize = 24;
    pub const VS: usize = 28;
    pub const TRTYPE: usize = 29;
    /// Command Specific Information.
    pub const CS: usize = 32;
    /// Transport Type Specific Information.
    pub const TTSI: usize = 40;
}

const _: () = assert!(error_off::TTSI + 2 <= ERROR_LOG_ENTRY_LEN);

/// One Error Information log entry. An entry with `error_count` 0 is an empty slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ErrorLogEntry {
    pub error_count: u64,
    pub sqid: u16,
    pub cid: u16,
    pub status: Status,
    /// FFFFh when not applicable.
    pub param_error_location: u16,
    pub lba: u64,
    pub nsid: u32,
    pub vs: u8,
    pub trtype: u8,
    pub cs: u64,
    pub ttsi: u16,
}

impl ErrorLogEntry {
    pub fn to_bytes(&self) -> [u8; ERROR_LOG_ENTRY_LEN] {
        use error_off as o;
        let mut b = [0u8; ERROR_LOG_ENTRY_LEN];
        put(&mut b, o::ERROR_COUNT, &self.error_count.to_le_bytes());
        put(&mut b, o::SQID, &self.sqid.to_le_bytes());
        put(&mut b, o::CID, &self.cid.to_le_bytes());
        put(&mut b, o::STATUS, &(self.status.field() << 1).to_le_bytes());
        put(
            &mut b,
            o::PARAM_ERROR_LOCATION,
            &self.param_error_location.to_le_bytes(),
        );
        put(&mut b, o::LBA, &self.lba.to_le_bytes());
        put(&mut b, o::NSID, &self.nsid.to_le_bytes());
        b[o::VS] = self.vs;
        b[o::TRTYPE] = self.trtype;
        put(&mut b, o::CS, &self.cs.to_le_bytes());
        put(&mut b, o::TTSI, &self.ttsi.to_le_bytes());
        b
    }

    pub fn parse(b: &[u8]) -> Self {
        use error_off as o;
        Self {
            error_count: le_u64(b, o::ERROR_COUNT),
            sqid: le_u16(b, o::SQID),
            cid: le_u16(b, o::CID),
            status: Status::from_field(le_u16(b, o::STATUS) >> 1),
            param_error_location: le_u16(b, o::PARAM_ERROR_LOCATION),
            lba: le_u64(b, o::LBA),
            nsid: le_u32(b, o::NSID),
            vs: b.get(o::VS).copied().unwrap_or(0),
            trtype: b.get(o::TRTYPE).copied().unwrap_or(0),
            cs: le_u64(b, o::CS),
            ttsi: le_u16(b, o::TTSI),
        }
    }
}

/// Size of the SMART / Health Information log page (NVMe Base 2.0, Figure 207).
pub const SMART_LOG_LEN: usize = 512;

/// Byte offsets in the SMART / Health Information log page (NVMe Base 2.0, Figure 207).
pub mod smart_off {
    pub const CRITICAL_WARNING: usize = 0;
    /// Composite Temperature, Kelvin, u16.
    pub const COMPOSITE_TEMPERATURE: usize = 1;
    pub const AVAILABLE_SPARE: usize = 3;
    pub const AVAILABLE_SPARE_THRESHOLD: usize = 4;
    pub const PERCENTAGE_USED: usize = 5;
    pub const ENDURANCE_GROUP_CRITICAL_WARNING: usize = 6;
    /// u128 counters from here (16 bytes each).
    pub const DATA_UNITS_READ: usize = 32;
    pub const DATA_UNITS_WRITTEN: usize = 48;
    pub const HOST_READ_COMMANDS: usize = 64;
    pub const HOST_WRITE_COMMANDS: usize = 80;
    pub const CONTROLLER_BUSY_TIME: usize = 96;
    pub const POWER_CYCLES: usize = 112;
    pub const POWER_ON_HOURS: usize = 128;
    pub const UNSAFE_SHUTDOWNS: usize = 144;
    pub const MEDIA_ERRORS: usize = 160;
    pub const ERROR_LOG_ENTRIES: usize = 176;
    pub const WARNING_TEMP_TIME: usize = 192;
    pub const CRITICAL_TEMP_TIME: usize = 196;
    /// Temperature Sensors 1..8, u16 each.
    pub const TEMPERATURE_SENSOR1: usize = 200;
}

const _: () = assert!(smart_off::TEMPERATURE_SENSOR1 + 16 <= SMART_LOG_LEN);

/// SMART / Health Information. Data units are thousands of 512-byte units, rounded up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SmartLog {
    pub critical_warning: u8,
    /// Kelvin.
    pub composite_temperature: u16,
    pub available_spare: u8,
    pub available_spare_threshold: u8,
    pub percentage_used: u8,
    pub endurance_group_critical_warning: u8,
    pub data_units_read: u128,
    pub data_units_written: u128,
    pub host_read_commands: u128,
    pub host_write_commands: u128,
    pub controller_busy_time: u128,
    pub power_cycles: u128,
    pub power_on_hours: u128,
    pub unsafe_shutdowns: u128,
    pub media_errors: u128,
    pub error_log_entries: u128,
    pub warning_temp_time: u32,
    pub critical_temp_time: u32,
    pub temperature_sensors: [u16; 8],
}

impl SmartLog {
    pub fn to_bytes(&self) -> [u8; SMART_LOG_LEN] {
        use smart_off as o;
        let mut b = [0u8; SMART_LOG_LEN];
        b[o::CRITICAL_WARNING] = self.critical_warning;
        put(
            &mut b,
            o::COMPOSITE_TEMPERATURE,
            &self.composite_temperature.to_le_bytes(),
        );
        b[o::AVAILABLE_SPARE] = self.available_spare;
        b[o::AVAILABLE_SPARE_THRESHOLD] = self.available_spare_threshold;
        b[o::PERCENTAGE_USED] = self.percentage_used;
        b[o::ENDURANCE_GROUP_CRITICAL_WARNING] = self.endurance_group_critical_warning;
        for (off, v) in self.counters() {
            put(&mut b, off, &v.to_le_bytes());
        }
        put(
            &mut b,
            o::WARNING_TEMP_TIME,
            &self.warning_temp_time.to_le_bytes(),
        );
        put(
            &mut b,
            o::CRITICAL_TEMP_TIME,
            &self.critical_temp_time.to_le_bytes(),
        );
        for (i, t) in self.temperature_sensors.iter().enumerate() {
            put(&mut b, o::TEMPERATURE_SENSOR1 + 2 * i, &t.to_le_bytes());
        }
        b
    }

    fn counters(&self) -> [(usize, u128); 10] {
        use smart_off as o;
        [
            (o::DATA_UNITS_READ, self.data_units_read),
            (o::DATA_UNITS_WRITTEN, self.data_units_written),
            (o::HOST_READ_COMMANDS, self.host_read_commands),
            (o::HOST_WRITE_COMMANDS, self.host_write_commands),
            (o::CONTROLLER_BUSY_TIME, self.controller_busy_time),
            (o::POWER_CYCLES, self.power_cycles),
            (o::POWER_ON_HOURS, self.power_on_hours),
            (o::UNSAFE_SHUTDOWNS, self.unsafe_shutdowns),
            (o::MEDIA_ERRORS, self.media_errors),
            (o::ERROR_LOG_ENTRIES, self.error_log_entries),
        ]
    }

    pub fn parse(b: &[u8]) -> Self {
        use smart_off as o;
        let byte = |off: usize| b.get(off).copied().unwrap_or(0);
        let mut temperature_sensors = [0u16; 8];
        for (i, t) in temperature_sensors.iter_mut().enumerate() {
            *t = le_u16(b, o::TEMPERATURE_SENSOR1 + 2 * i);
        }
        Self {
            critical_warning: byte(o::CRITICAL_WARNING),
            composite_temperature: le_u16(b, o::COMPOSITE_TEMPERATURE),
            available_spare: byte(o::AVAILABLE_SPARE),
            available_spare_threshold: byte(o::AVAILABLE_SPARE_THRESHOLD),
            percentage_used: byte(o::PERCENTAGE_USED),
            endurance_group_critical_warning: byte(o::ENDURANCE_GROUP_CRITICAL_WARNING),
            data_units_read: le_u128(b, o::DATA_UNITS_READ),
            data_units_written: le_u128(b, o::DATA_UNITS_WRITTEN),
            host_read_commands: le_u128(b, o::HOST_READ_COMMANDS),
            host_write_commands: le_u128(b, o::HOST_WRITE_COMMANDS),
            controller_busy_time: le_u128(b, o::CONTROLLER_BUSY_TIME),
            power_cycles: le_u128(b, o::POWER_CYCLES),
            power_on_hours: le_u128(b, o::POWER_ON_HOURS),
            unsafe_shutdowns: le_u128(b, o::UNSAFE_SHUTDOWNS),
            media_errors: le_u128(b, o::MEDIA_ERRORS),
            error_log_entries: le_u128(b, o::ERROR_LOG_ENTRIES),
            warning_temp_time: le_u32(b, o::WARNING_TEMP_TIME),
            critical_temp_time: le_u32(b, o::CRITICAL_TEMP_TIME),
            temperature_sensors,
        }
    }
}

/// Size of the Firmware Slot Information log page (NVMe Base 2.0, Figure 208).
pub const FW_SLOT_LOG_LEN: usize = 512;
/// Active Firmware Info (byte 0): bits 2:0 active slot, bits 6:4 slot activated at next reset.
pub const FW_SLOT_AFI: usize = 0;
/// Firmware Revision for Slot 1 (8 ASCII bytes); slots 2..7 follow every 8 bytes.
pub const FW_SLOT_FRS1: usize = 8;
/// Number of firmware slots.
pub const FW_SLOTS: usize = 7;

const _: () = assert!(FW_SLOT_FRS1 + FW_SLOTS * 8 == 64);

/// Firmware Slot Information.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FwSlotLog {
    pub afi: u8,
    /// Revisions of slots 1..7 (empty string = slot empty), at most 8 ASCII bytes each.
    pub frs: [String; FW_SLOTS],
}

impl FwSlotLog {
    pub fn to_bytes(&self) -> [u8; FW_SLOT_LOG_LEN] {
        let mut b = [0u8; FW_SLOT_LOG_LEN];
        b[FW_SLOT_AFI] = self.afi;
        for (i, r) in self.frs.iter().enumerate() {
            if r.is_empty() {
                continue; // An empty slot is all zeros, not spaces.
            }
            let mut field = [b' '; 8];
            let n = r.len().min(8);
            field[..n].copy_from_slice(&r.as_bytes()[..n]);
            put(&mut b, FW_SLOT_FRS1 + 8 * i, &field);
        }
        b
    }

    pub fn parse(b: &[u8]) -> Self {
        let frs = std::array::from_fn(|i| {
            let f: [u8; 8] = get_array(b, FW_SLOT_FRS1 + 8 * i);
            let end = f
                .iter()
                .rposition(|&c| c != b' ' && c != 0)
                .map_or(0, |p| p + 1);
            String::from_utf8_lossy(&f[..end]).into_owned()
        });
        Self {
            afi: b.first().copied().unwrap_or(0),
            frs,
        }
    }
}
