//! Log pages (NVMe Base 2.0, section 5.16) built from live state.

use std::sync::atomic::Ordering;

use codec::nvme::Status;
use codec::nvme::cmd::GetLogPage;
use codec::nvme::generation::GenerationLog;
use codec::nvme::log::{
    AnaGroup, AnaLog, CommandsEffectsLog, FwSlotLog, SmartLog, changed_ns_list, effects, lid,
};
use codec::nvme::opcode::{AdminOpcode, IoOpcode};

use crate::controller::ctrl::Controller;
use crate::controller::identify::FIRMWARE_REVISION;
use crate::subsystem::paths::Paths;

/// Error Information log entries kept: none (ELPE 0 = one entry, always empty); errors are
/// reported in completions and counted in SMART.
const ERROR_LOG_LEN: usize = 64;

/// ANA log LSP bit 0: return only the group descriptors, no NSID lists (RGO).
const ANA_LSP_RGO: u8 = 1;

/// Builds the whole log page `g.lid` for an I/O controller.
pub fn build(ctrl: &Controller, g: &GetLogPage) -> Result<Vec<u8>, Status> {
    let page = match g.lid {
        lid::ERROR_INFORMATION => vec![0; ERROR_LOG_LEN],
        lid::SMART_HEALTH => smart(ctrl).to_vec(),
        lid::FIRMWARE_SLOT => {
            let mut frs: [String; 7] = Default::default();
            frs[0] = FIRMWARE_REVISION.to_string();
            FwSlotLog { afi: 1, frs }.to_bytes().to_vec()
        }
        lid::CHANGED_NS_LIST => changed_ns_list(&ctrl.take_changed_namespaces()).to_vec(),
        lid::COMMANDS_SUPPORTED_AND_EFFECTS => effects_log().to_bytes().to_vec(),
        lid::ANA => ana(ctrl, g.lsp & ANA_LSP_RGO != 0),
        lid::VENDOR_GENERATION => generation_log(ctrl).to_vec(),
        _ => return Err(Status::INVALID_LOG_PAGE.with_dnr()),
    };
    Ok(page)
}

fn smart(ctrl: &Controller) -> [u8; codec::nvme::log::SMART_LOG_LEN] {
    let c = &ctrl.counters;
    // Data units are thousands of 512-byte units, rounded up (NVMe Base 2.0, Figure 207).
    let units = |bytes: u64| u128::from(bytes.div_ceil(512 * 1000));
    SmartLog {
        // 300 K: a plausible composite temperature; we have no sensor.
        composite_temperature: 300,
        available_spare: 100,
        available_spare_threshold: 10,
        data_units_read: units(c.bytes_read.load(Ordering::Relaxed)),
        data_units_written: units(c.bytes_written.load(Ordering::Relaxed)),
        host_read_commands: u128::from(c.read_cmds.load(Ordering::Relaxed)),
        host_write_commands: u128::from(c.write_cmds.load(Ordering::Relaxed)),
        media_errors: u128::from(c.errors.load(Ordering::Relaxed)),
        power_cycles: 1,
        ..SmartLog::default()
    }
    .to_bytes()
}

fn effects_log() -> CommandsEffectsLog {
    let mut log = CommandsEffectsLog {
        acs: [0; 256],
        iocs: [0; 256],
    };
    for op in [
        AdminOpcode::GET_LOG_PAGE,
        AdminOpcode::IDENTIFY,
        AdminOpcode::ABORT,
        AdminOpcode::SET_FEATURES,
        AdminOpcode::GET_FEATURES,
        AdminOpcode::ASYNC_EVENT_REQUEST,
        AdminOpcode::KEEP_ALIVE,
    ] {
        log.acs[usize::from(op.0)] = effects::CSUPP;
    }
    for op in [IoOpcode::FLUSH, IoOpcode::READ, IoOpcode::COMPARE] {
        log.iocs[usize::from(op.0)] = effects::CSUPP;
    }
    for op in [
        IoOpcode::WRITE,
        IoOpcode::WRITE_ZEROES,
        IoOpcode::DATASET_MANAGEMENT,
    ] {
        log.iocs[usize::from(op.0)] = effects::CSUPP | effects::LBCC;
    }
    log
}

/// The ANA log: one group, the one every namespace of this controller is reported in (this
/// server's), in the state the server has (see `subsystem::paths`). CHGCNT, in the header and in
/// the descriptor, is the count of the group's state changes.
fn ana(ctrl: &Controller, groups_only: bool) -> Vec<u8> {
    let nsids = ctrl
        .subsys
        .as_ref()
        .map(|s| s.namespaces().keys().copied().collect())
        .unwrap_or_default();
    ana_log(&ctrl.registry.paths(), nsids).to_bytes(groups_only)
}

fn ana_log(paths: &Paths, nsids: Vec<u32>) -> AnaLog {
    AnaLog {
        chgcnt: paths.ana_chgcnt,
        groups: vec![AnaGroup {
            anagrpid: paths.ana_group,
            chgcnt: paths.ana_chgcnt,
            state: paths.ana_state,
            nsids,
        }],
    }
}

fn generation_log(ctrl: &Controller) -> [u8; codec::nvme::generation::GENERATION_LOG_LEN] {
    let g = &ctrl.registry.generation;
    GenerationLog {
        version: codec::nvme::generation::GENCHK_VERSION,
        current_generation: g.current(),
        stale_map_seen: g.stale_seen.load(Ordering::Relaxed),
        server_behind_seen: g.behind_seen.load(Ordering::Relaxed),
        reports_sent: g.reports_sent.load(Ordering::Relaxed),
        reports_dropped: g.reports_dropped.load(Ordering::Relaxed),
        unstamped_rejected: g.unstamped_rejected.load(Ordering::Relaxed),
    }
    .to_bytes()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use codec::nvme::log::{ANA_GROUP_DESC_LEN, ANA_HEADER_LEN, ana_state};

    #[test]
    fn ana_log_reports_this_servers_group_state_and_change_count() {
        let paths = Paths {
            ana_group: 3,
            ana_state: ana_state::INACCESSIBLE,
            ana_chgcnt: 7,
            portid: 2,
            portals: Some(Vec::new()),
        };
        let log = ana_log(&paths, vec![1, 2, 5]);
        let b = log.to_bytes(false);
        assert_eq!(b.len(), ANA_HEADER_LEN + ANA_GROUP_DESC_LEN + 3 * 4);
        // Header: CHGCNT (bytes 0-7), NGRPS (8-9).
        assert_eq!(u64::from_le_bytes(b[0..8].try_into().unwrap()), 7);
        assert_eq!(u16::from_le_bytes([b[8], b[9]]), 1);
        // Descriptor: ANAGRPID, NNSIDS, CHGCNT, state, then the NSIDs.
        let d = &b[ANA_HEADER_LEN..];
        assert_eq!(u32::from_le_bytes(d[0..4].try_into().unwrap()), 3);
        assert_eq!(u32::from_le_bytes(d[4..8].try_into().unwrap()), 3);
        assert_eq!(u64::from_le_bytes(d[8..16].try_into().unwrap()), 7);
        assert_eq!(d[16], ana_state::INACCESSIBLE);
        assert_eq!(u32::from_le_bytes(d[40..44].try_into().unwrap()), 5);
        // Return Groups Only: the same descriptor, no NSID list and NNSIDS 0.
        let rgo = log.to_bytes(true);
        assert_eq!(rgo.len(), ANA_HEADER_LEN + ANA_GROUP_DESC_LEN);
        assert_eq!(u32::from_le_bytes(rgo[20..24].try_into().unwrap()), 0);
        assert_eq!(rgo[ANA_HEADER_LEN + 16], ana_state::INACCESSIBLE);
        assert_eq!(AnaLog::parse(&b).unwrap(), log);
    }

    #[test]
    fn standalone_ana_log_is_group_one_optimized() {
        let log = ana_log(&Paths::default(), vec![1]);
        assert_eq!(log.chgcnt, 1);
        assert_eq!(log.groups.len(), 1);
        assert_eq!(log.groups[0].anagrpid, 1);
        assert_eq!(log.groups[0].state, ana_state::OPTIMIZED);
    }
}
