//! Log pages: byte vectors built from NVMe Base 2.0 Figures 205-262 and round trips.
#![allow(clippy::unwrap_used, clippy::panic)]

use codec::nvme::Status;
use codec::nvme::log::{
    AnaGroup, AnaLog, CHANGED_NS_OVERFLOW, CommandsEffectsLog, DiscoveryLog, DiscoveryLogEntry,
    ErrorLogEntry, FwSlotLog, SmartLog, adrfam, ana_state, changed_ns_list, effects, lid,
    parse_changed_ns_list, sectype, subtype, treq, trtype,
};
use proptest::prelude::*;

#[test]
fn log_ids() {
    assert_eq!(
        [
            lid::ERROR_INFORMATION,
            lid::SMART_HEALTH,
            lid::FIRMWARE_SLOT,
            lid::CHANGED_NS_LIST
        ],
        [0x01, 0x02, 0x03, 0x04]
    );
    assert_eq!(
        [
            lid::COMMANDS_SUPPORTED_AND_EFFECTS,
            lid::ANA,
            lid::DISCOVERY,
            lid::VENDOR_GENERATION
        ],
        [0x05, 0x0c, 0x70, 0xc0]
    );
}

#[test]
fn error_entry_vector() {
    let e = ErrorLogEntry {
        error_count: 1,
        sqid: 2,
        cid: 0x1234,
        status: Status::INVALID_FIELD.with_dnr(),
        param_error_location: 0x28,
        lba: 0x10,
        nsid: 1,
        vs: 0,
        trtype: 3,
        cs: 0,
        ttsi: 0,
    };
    let b = e.to_bytes();
    assert_eq!(b.len(), 64);
    assert_eq!(&b[0..8], &1u64.to_le_bytes());
    assert_eq!(&b[8..12], &[2, 0, 0x34, 0x12]);
    // Status Field 4002h shifted above the phase tag: 8004h.
    assert_eq!(&b[12..14], &[0x04, 0x80]);
    assert_eq!(&b[14..16], &[0x28, 0]);
    assert_eq!(&b[16..24], &0x10u64.to_le_bytes());
    assert_eq!(&b[24..28], &1u32.to_le_bytes());
    assert_eq!(b[29], 3, "TRTYPE at 29");
    assert_eq!(ErrorLogEntry::parse(&b), e);
}

#[test]
fn smart_vector() {
    let s = SmartLog {
        critical_warning: 0,
        composite_temperature: 300,
        available_spare: 100,
        available_spare_threshold: 10,
        percentage_used: 1,
        data_units_read: 0x1_0000_0000_0000_0001,
        host_write_commands: 77,
        power_on_hours: 5,
        temperature_sensors: [301, 0, 0, 0, 0, 0, 0, 302],
        ..SmartLog::default()
    };
    let b = s.to_bytes();
    assert_eq!(b.len(), 512);
    assert_eq!(
        &b[1..3],
        &300u16.to_le_bytes(),
        "composite temperature at 1"
    );
    assert_eq!((b[3], b[4], b[5]), (100, 10, 1));
    assert_eq!(
        &b[32..48],
        &0x1_0000_0000_0000_0001u128.to_le_bytes(),
        "data units read at 32"
    );
    assert_eq!(&b[80..96], &77u128.to_le_bytes(), "host writes at 80");
    assert_eq!(&b[128..144], &5u128.to_le_bytes(), "power on hours at 128");
    assert_eq!(&b[200..202], &301u16.to_le_bytes(), "sensor 1 at 200");
    assert_eq!(&b[214..216], &302u16.to_le_bytes(), "sensor 8 at 214");
    assert_eq!(SmartLog::parse(&b), s);
}

#[test]
fn fw_slot_vector() {
    let f = FwSlotLog {
        afi: 1,
        frs: [
            "0.1.0".into(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ],
    };
    let b = f.to_bytes();
    assert_eq!(b[0], 1);
    assert_eq!(&b[8..16], b"0.1.0   ");
    assert!(b[16..].iter().all(|&x| x == 0));
    assert_eq!(FwSlotLog::parse(&b), f);
}

#[test]
fn changed_ns_vector() {
    let b = changed_ns_list(&[1, 7]);
    assert_eq!(&b[..12], &[1, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(parse_changed_ns_list(&b), vec![1, 7]);
    let many: Vec<u32> = (1..=1025).collect();
    assert_eq!(
        parse_changed_ns_list(&changed_ns_list(&many)),
        vec![CHANGED_NS_OVERFLOW]
    );
    let exactly: Vec<u32> = (1..=1024).collect();
    assert_eq!(parse_changed_ns_list(&changed_ns_list(&exactly)), exactly);
}

#[test]
fn effects_vector() {
    let mut l = CommandsEffectsLog::default();
    l.acs[0x06] = effects::CSUPP;
    l.iocs[0x01] = effects::CSUPP | effects::LBCC;
    let b = l.to_bytes();
    assert_eq!(b.len(), 4096);
    assert_eq!(
        &b[24..28],
        &[1, 0, 0, 0],
        "ACS entry for Identify (06h) at 6*4"
    );
    assert_eq!(
        &b[1028..1032],
        &[3, 0, 0, 0],
        "IOCS entry for Write (01h) at 1024+4"
    );
    assert_eq!(CommandsEffectsLog::parse(&b), l);
}

#[test]
fn ana_vector() {
    let l = AnaLog {
        chgcnt: 9,
        groups: vec![
            AnaGroup {
                anagrpid: 1,
                chgcnt: 4,
                state: ana_state::OPTIMIZED,
                nsids: vec![1, 2],
            },
            AnaGroup {
                anagrpid: 2,
                chgcnt: 5,
                state: ana_state::INACCESSIBLE,
                nsids: vec![],
            },
        ],
    };
    let b = l.to_bytes(false);
    assert_eq!(b.len(), 16 + 32 + 8 + 32);
    assert_eq!(&b[0..8], &9u64.to_le_bytes(), "CHGCNT");
    assert_eq!(&b[8..10], &2u16.to_le_bytes(), "NGRPS");
    assert_eq!(&b[16..20], &1u32.to_le_bytes(), "ANAGRPID");
    assert_eq!(&b[20..24], &2u32.to_le_bytes(), "NNSIDS");
    assert_eq!(&b[24..32], &4u64.to_le_bytes(), "group CHGCNT");
    assert_eq!(b[32], 1, "ANA state");
    assert_eq!(&b[48..56], &[1, 0, 0, 0, 2, 0, 0, 0], "NSIDs");
    assert_eq!(&b[56..60], &2u32.to_le_bytes(), "second group");
    assert_eq!(b[72], 3);
    assert_eq!(AnaLog::parse(&b), Some(l.clone()));
    // Return Groups Only: no NSID lists, NNSIDS 0.
    let rgo = l.to_bytes(true);
    assert_eq!(rgo.len(), 16 + 64);
    assert_eq!(&rgo[20..24], &[0; 4]);
    // Truncated input is None, not a panic.
    assert_eq!(AnaLog::parse(&b[..50]), None);
}

fn tcp_entry() -> DiscoveryLogEntry {
    DiscoveryLogEntry {
        trtype: trtype::TCP,
        adrfam: adrfam::IPV4,
        subtype: subtype::NVME,
        treq: treq::SECURE_NOT_REQUIRED,
        portid: 1,
        cntlid: 0xffff,
        asqsz: 32,
        eflags: 0,
        trsvcid: "4420".into(),
        subnqn: "nqn.2024-01.io.tessera:vol0".into(),
        traddr: "10.0.2.2".into(),
        sectype: sectype::NONE,
    }
}

#[test]
fn discovery_vector() {
    let e = tcp_entry();
    let b = e.to_bytes();
    assert_eq!(
        &b[0..4],
        &[3, 1, 2, 2],
        "TRTYPE TCP, ADRFAM IPv4, SUBTYPE NVMe, TREQ"
    );
    assert_eq!(
        &b[4..10],
        &[1, 0, 0xff, 0xff, 32, 0],
        "PORTID, CNTLID, ASQSZ"
    );
    assert_eq!(&b[32..36], b"4420");
    assert_eq!(b[36], b' ', "TRSVCID space padded");
    assert_eq!(&b[256..283], b"nqn.2024-01.io.tessera:vol0");
    assert_eq!(b[283], 0);
    assert_eq!(&b[512..520], b"10.0.2.2");
    assert_eq!(b[768], 0, "TSAS SECTYPE");
    assert_eq!(DiscoveryLogEntry::parse(&b), e);

    let current = DiscoveryLogEntry {
        subtype: subtype::CURRENT_DISCOVERY,
        subnqn: codec::nvme::fabrics::DISCOVERY_NQN.into(),
        ..tcp_entry()
    };
    let log = DiscoveryLog {
        genctr: 5,
        recfmt: 0,
        entries: vec![current, e],
    };
    let b = log.to_bytes();
    assert_eq!(b.len(), 3 * 1024);
    assert_eq!(&b[0..8], &5u64.to_le_bytes(), "GENCTR");
    assert_eq!(&b[8..16], &2u64.to_le_bytes(), "NUMREC");
    assert_eq!(&b[16..18], &[0, 0], "RECFMT");
    assert_eq!(b[1024 + 2], 3);
    assert_eq!(DiscoveryLog::numrec(&b[..16]), 2);
    assert_eq!(DiscoveryLog::parse(&b), log);
    // A host reading only the header sees NUMREC and no entries.
    assert_eq!(DiscoveryLog::parse(&b[..1024]).entries, vec![]);
    // NUL-padded addresses (Linux nvmet style) parse the same.
    let mut nul = log.to_bytes();
    nul[1024 + 36..1024 + 64].fill(0);
    assert_eq!(DiscoveryLog::parse(&nul).entries[0].trsvcid, "4420");
}

proptest! {
    #[test]
    fn ana_round_trips(chgcnt: u64, groups in proptest::collection::vec(
        (any::<u32>(), any::<u64>(), 1u8..5, proptest::collection::vec(any::<u32>(), 0..8)), 0..8)) {
        let l = AnaLog {
            chgcnt,
            groups: groups.into_iter().map(|(anagrpid, chgcnt, state, nsids)| AnaGroup { anagrpid, chgcnt, state, nsids }).collect(),
        };
        prop_assert_eq!(AnaLog::parse(&l.to_bytes(false)), Some(l));
    }

    #[test]
    fn discovery_round_trips(genctr: u64, portid: u16, cntlid: u16, port in 1u16.., a: u8, b: u8) {
        let e = DiscoveryLogEntry { portid, cntlid, trsvcid: port.to_string(), traddr: format!("10.{a}.{b}.1"), ..tcp_entry() };
        let log = DiscoveryLog { genctr, recfmt: 0, entries: vec![e; 3] };
        prop_assert_eq!(DiscoveryLog::parse(&log.to_bytes()), log);
    }

    #[test]
    fn log_parsers_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..2100)) {
        let _ = AnaLog::parse(&raw);
        let _ = DiscoveryLog::parse(&raw);
        let _ = ErrorLogEntry::parse(&raw);
        let _ = SmartLog::parse(&raw);
        let _ = FwSlotLog::parse(&raw);
        let _ = CommandsEffectsLog::parse(&raw);
        let _ = parse_changed_ns_list(&raw);
    }
}
