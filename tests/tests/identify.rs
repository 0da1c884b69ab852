//! Identify as a careful target reports it (docs/identify.md): every field nvme-cli prints for
//! an I/O controller, a namespace and the discovery controller, decoded from the raw 4096-byte
//! structures at the spec's offsets (NVMe Base 2.0, Figure 275 and 276; NVM Command Set 1.0,
//! Figure 97), independently of the codec's structs, and compared with the intended values in
//! docs/identify-expected.json (keyed by nvme-cli's JSON names), which the QEMU guest test
//! compares with nvme-cli's own output.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use tessera::initiator::{Controller, ControllerOptions};
use tessera::transport::TransportConfig;
use tessera_tests::*;

/// ci/qemu/target.yaml, served on an ephemeral loopback port.
const CI_YAML: &str = "listeners:
  - address: 127.0.0.1
    port: 4420
subsystems:
  - nqn: nqn.2026-11.dev.tessera:ci
    hosts: [nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555]
    namespaces:
      - nsid: 1
        block_size: 512
        backend: { kind: ram, size: 256MiB }
";
const CI_NQN: &str = "nqn.2026-11.dev.tessera:ci";
const CI_HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555";

/// How to read one field from a raw structure.
#[derive(Clone, Copy)]
enum F {
    /// Little-endian unsigned integer of `len` bytes at `off` (nvme-cli prints a JSON number).
    Num(usize, usize),
    /// Bits `mask` of the byte at `off`, shifted down.
    Bits(usize, u8),
    /// ASCII, space padded (SN, MN, FR): a JSON string, trailing spaces trimmed.
    Ascii(usize, usize),
    /// NUL-terminated string (SUBNQN).
    Cstr(usize, usize),
    /// Bytes as lower-case hex (NGUID, EUI64).
    Hex(usize, usize),
}

fn render(b: &[u8], f: F) -> String {
    match f {
        F::Num(off, len) => {
            let mut v: u128 = 0;
            for (i, &x) in b[off..off + len].iter().enumerate() {
                v |= u128::from(x) << (8 * i);
            }
            v.to_string()
        }
        F::Bits(off, mask) => ((b[off] & mask) >> mask.trailing_zeros()).to_string(),
        F::Ascii(off, len) => {
            let s = String::from_utf8(b[off..off + len].to_vec()).expect("ASCII field");
            format!("{:?}", s.trim_end_matches(' '))
        }
        F::Cstr(off, len) => {
            let f = &b[off..off + len];
            let end = f.iter().position(|&c| c == 0).expect("NUL terminated");
            format!("{:?}", std::str::from_utf8(&f[..end]).unwrap())
        }
        F::Hex(off, len) => format!(
            "\"{}\"",
            b[off..off + len]
                .iter()
                .map(|x| format!("{x:02x}"))
                .collect::<String>()
        ),
    }
}

/// Identify Controller fields nvme-cli prints (NVMe Base 2.0, Figures 275-276).
fn ctrl_fields() -> Vec<(&'static str, F)> {
    use F::*;
    vec![
        ("vid", Num(0, 2)),
        ("ssvid", Num(2, 2)),
        ("sn", Ascii(4, 20)),
        ("mn", Ascii(24, 40)),
        ("fr", Ascii(64, 8)),
        ("rab", Num(72, 1)),
        ("ieee", Num(73, 3)),
        ("cmic", Num(76, 1)),
        ("mdts", Num(77, 1)),
        ("ver", Num(80, 4)),
        ("rtd3r", Num(84, 4)),
        ("rtd3e", Num(88, 4)),
        ("oaes", Num(92, 4)),
        ("ctratt", Num(96, 4)),
        ("rrls", Num(100, 2)),
        ("cntrltype", Num(111, 1)),
        ("crdt1", Num(128, 2)),
        ("crdt2", Num(130, 2)),
        ("crdt3", Num(132, 2)),
        ("oacs", Num(256, 2)),
        ("acl", Num(258, 1)),
        ("aerl", Num(259, 1)),
        ("frmw", Num(260, 1)),
        ("lpa", Num(261, 1)),
        ("elpe", Num(262, 1)),
        ("npss", Num(263, 1)),
        ("avscc", Num(264, 1)),
        ("apsta", Num(265, 1)),
        ("wctemp", Num(266, 2)),
        ("cctemp", Num(268, 2)),
        ("mtfa", Num(270, 2)),
        ("hmpre", Num(272, 4)),
        ("hmmin", Num(276, 4)),
        ("kas", Num(320, 2)),
        ("anatt", Num(342, 1)),
        ("anacap", Num(343, 1)),
        ("anagrpmax", Num(344, 4)),
        ("nanagrpid", Num(348, 4)),
        ("sqes", Num(512, 1)),
        ("cqes", Num(513, 1)),
        ("maxcmd", Num(514, 2)),
        ("nn", Num(516, 4)),
        ("oncs", Num(520, 2)),
        ("fuses", Num(522, 2)),
        ("fna", Num(524, 1)),
        ("vwc", Num(525, 1)),
        ("awun", Num(526, 2)),
        ("awupf", Num(528, 2)),
        ("icsvscc", Num(530, 1)),
        ("nwpc", Num(531, 1)),
        ("acwu", Num(532, 2)),
        ("sgls", Num(536, 4)),
        ("mnan", Num(540, 4)),
        ("subnqn", Cstr(768, 256)),
        ("ioccsz", Num(1792, 4)),
        ("iorcsz", Num(1796, 4)),
        ("icdoff", Num(1800, 2)),
        ("fcatt", Num(1802, 1)),
        ("msdbd", Num(1803, 1)),
        ("ofcs", Num(1804, 2)),
        // Power state descriptor 0 at 2048 (Figure 276).
        ("max_power", Num(2048, 2)),
        // Byte 3 of the descriptor: MXPS (bit 0) and NOPS (bit 1); nvme-cli prints it whole.
        ("flags", Num(2051, 1)),
        ("entry_lat", Num(2052, 4)),
        ("exit_lat", Num(2056, 4)),
    ]
}

/// Identify Namespace fields nvme-cli prints (NVM Command Set 1.0, Figures 97-98).
fn ns_fields() -> Vec<(&'static str, F)> {
    use F::*;
    vec![
        ("nsze", Num(0, 8)),
        ("ncap", Num(8, 8)),
        ("nuse", Num(16, 8)),
        ("nsfeat", Num(24, 1)),
        ("nlbaf", Num(25, 1)),
        ("flbas", Num(26, 1)),
        ("mc", Num(27, 1)),
        ("dpc", Num(28, 1)),
        ("dps", Num(29, 1)),
        ("nmic", Num(30, 1)),
        ("rescap", Num(31, 1)),
        ("fpi", Num(32, 1)),
        ("dlfeat", Num(33, 1)),
        ("nawun", Num(34, 2)),
        ("nawupf", Num(36, 2)),
        ("nacwu", Num(38, 2)),
        ("nabsn", Num(40, 2)),
        ("nabo", Num(42, 2)),
        ("nabspf", Num(44, 2)),
        ("noiob", Num(46, 2)),
        ("npwg", Num(64, 2)),
        ("npwa", Num(66, 2)),
        ("npdg", Num(68, 2)),
        ("npda", Num(70, 2)),
        ("nows", Num(72, 2)),
        ("anagrpid", Num(92, 4)),
        ("nsattr", Num(99, 1)),
        ("nvmsetid", Num(100, 2)),
        ("endgid", Num(102, 2)),
        ("nguid", Hex(104, 16)),
        ("eui64", Hex(120, 8)),
        // LBA format 0 at 128.
        ("ms", Num(128, 2)),
        ("ds", Num(130, 1)),
        ("rp", Bits(131, 0b11)),
    ]
}

/// `"key": value` lines of one top-level object of docs/identify-expected.json (the file is
/// kept one field per line; nested psds/lbafs keys are unique within their object).
fn expected(section: &str) -> BTreeMap<String, String> {
    let path = workspace_dir().join("docs/identify-expected.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let start = text
        .find(&format!("\n  \"{section}\": {{"))
        .unwrap_or_else(|| panic!("no {section} in {path:?}"));
    let body = &text[start + 1..];
    let end = body.find("\n  }").expect("object end");
    let mut m = BTreeMap::new();
    for line in body[..end].lines().skip(1) {
        let line = line.trim().trim_end_matches(',');
        let Some((k, v)) = line.split_once(": ") else {
            continue;
        };
        if v == "[" || v == "{" {
            continue;
        }
        let k = k.trim_matches('"').to_string();
        assert!(
            m.insert(k.clone(), v.to_string()).is_none(),
            "{section}.{k} twice"
        );
    }
    m
}

/// Checks every field of `raw` in `fields` against the intent, and that every intended value
/// was checked (nothing in the JSON goes unverified), except `skip`.
fn check(section: &str, raw: &[u8], fields: &[(&str, F)], skip: &[&str]) {
    assert_eq!(raw.len(), 4096, "{section}: Identify data is 4096 bytes");
    let mut want = expected(section);
    let mut wrong = Vec::new();
    for &(name, f) in fields {
        if skip.contains(&name) {
            want.remove(name);
            continue;
        }
        let got = render(raw, f);
        match want.remove(name) {
            Some(w) if w == got => {}
            Some(w) => wrong.push(format!("{name}: got {got}, intended {w}")),
            None => panic!("{section}.{name}: no intended value in docs/identify-expected.json"),
        }
    }
    assert!(wrong.is_empty(), "{section}: {wrong:#?}");
    assert!(
        want.is_empty(),
        "{section}: intended but not checked: {want:?}"
    );
}

fn ci_transport() -> TransportConfig {
    // `transport: { max_io_size: 1MiB }` of the CI layout; the rest are the defaults.
    TransportConfig {
        mdts_bytes: 1 << 20,
        ..TransportConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_controller_and_namespace_report_the_intended_values() {
    let t = TestTarget::start_with(CI_YAML, ci_transport(), 1).await;
    let c = connect_as(t.addr, CI_NQN, CI_HOST, &ctrl_opts())
        .await
        .unwrap();
    let id = c.identify_controller().await.unwrap();
    check("io_ctrl", &id, &ctrl_fields(), &[]);
    // CNTLID is the one Connect returned (it varies with the association, so not in the JSON).
    assert_eq!(u16::from_le_bytes([id[78], id[79]]), c.cntlid());
    let ns = c.identify_namespace(1).await.unwrap();
    check("namespace", &ns, &ns_fields(), &[]);
    // The NGUID is the layout's derived one (stable for every target serving this layout).
    assert_eq!(ns[104..120], yaml::derived_namespace_id(CI_NQN, 1));
    c.disconnect().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_controller_reports_the_intended_values() {
    let t = TestTarget::start_with(CI_YAML, ci_transport(), 1).await;
    let mut opts = ControllerOptions::discovery();
    opts.transport.connect_timeout = STEP;
    opts.transport.command_timeout = Some(STEP);
    let mut serials = Vec::new();
    for _ in 0..2 {
        let d = within(
            "discovery connect",
            Controller::connect(t.addr, DISCOVERY_NQN, CI_HOST, &opts),
        )
        .await
        .unwrap();
        d.enable().await.unwrap();
        let id = d.identify_controller().await.unwrap();
        // SN depends on the listener (an ephemeral port here, 127.0.0.1:4420 in CI).
        check("discovery_ctrl", &id, &ctrl_fields(), &["sn"]);
        serials.push(render(&id, F::Ascii(4, 20)));
        d.disconnect().await.unwrap();
    }
    // Non-empty, 20 printable ASCII bytes, the same for every discovery controller of this
    // target, and derived from its portals (so the CI value in the JSON is the one for
    // 127.0.0.1:4420).
    let sn = serials[0].trim_matches('"').to_string();
    assert_eq!(sn.len(), 20, "discovery SN {sn:?}");
    assert!(sn.bytes().all(|c| c.is_ascii_graphic()), "{sn:?}");
    assert_eq!(serials[0], serials[1], "discovery SN is stable");
    assert_eq!(
        sn,
        tessera::controller::identify::discovery_serial(&t.target.addrs)
    );
    let ci: std::net::SocketAddr = "127.0.0.1:4420".parse().unwrap();
    assert_eq!(
        format!(
            "{:?}",
            tessera::controller::identify::discovery_serial(&[ci])
        ),
        expected("discovery_ctrl")["sn"],
        "the JSON's discovery SN is the CI listener's"
    );
    t.stop().await;
}
