//! From text to a validated [`Layout`]: the document, listeners and subsystems.
//! Namespaces and backends are in `namespace.rs`.

use std::net::IpAddr;
use std::path::Path;

use saphyr::{LoadableYamlNode, MarkedYaml, ScanError};

use crate::error::{ErrorKind, LayoutError, Location};
use crate::ids::{MODEL_BYTES_MAX, SERIAL_BYTES_MAX, derived_serial};
use crate::model::{
    DhGroupDecl, HostAuth, HostPolicy, Layout, Listener, SecretFile, Subsystem, TransportDecl,
};
use crate::namespace::{IdRegistry, build_namespaces};
use crate::nqn::{DISCOVERY_NQN, NQN_EXPECTED, check_nqn};
use crate::size::parse_size;
use crate::tree::{At, IntOrStr, Map};

/// A layout is written by hand; 1 MiB holds thousands of namespaces and bounds what a wrong
/// path (a disk image given as `--config`) makes us parse.
pub const LAYOUT_BYTES_MAX: usize = 1 << 20;
/// Listeners per layout: a server has a handful of portals; 64 bounds accept tasks and sockets.
pub const LISTENERS_MAX: usize = 64;
/// Subsystems per layout (SPDK's `nvmf_tgt` defaults to the same 1024).
pub const SUBSYSTEMS_MAX: usize = 1024;
/// Allowed hosts per subsystem: bounds the linear host check done on every Connect.
pub const HOSTS_MAX: usize = 1024;

/// Largest DH-HMAC-CHAP secret file read: a `DHHC-1:` secret of a 64-byte key is 101 bytes.
pub const SECRET_FILE_BYTES_MAX: u64 = 4096;

/// Default model number (Identify Controller MN).
pub const DEFAULT_MODEL: &str = "Tessera";
/// IANA-assigned NVMe/TCP port, the default when a listener names none.
pub const DEFAULT_PORT: u16 = 4420;

/// Default `transport.max_io_size` (MDTS): 128 KiB, SPDK's default max_io_size.
pub const DEFAULT_MAX_IO_SIZE: u32 = 128 * 1024;
/// Smallest `max_io_size`: 4 KiB, one memory page (MDTS is a power of two in units of the
/// 4 KiB minimum page size, NVMe Base 2.0, Figure 275; MDTS 0 would mean "no limit").
pub const MAX_IO_SIZE_MIN: u32 = 4096;
/// Largest `max_io_size`: 8 MiB. One command's buffer is held whole, so this bounds what one
/// command may pin (Linux caps its own requests far below: max_hw_sectors).
pub const MAX_IO_SIZE_MAX: u32 = 8 << 20;
/// Default `transport.in_capsule_data_size`: 8 KiB (Linux nvmet's default on TCP).
pub const DEFAULT_IN_CAPSULE_DATA: u32 = 8192;
/// Largest `in_capsule_data_size`: 64 KiB. A capsule is received whole before the command
/// runs; larger writes gain little over one R2T round trip.
pub const IN_CAPSULE_DATA_MAX: u32 = 64 * 1024;

const ROOT_KEYS: &[&str] = &["listeners", "subsystems", "transport"];
const TRANSPORT_KEYS: &[&str] = &["max_io_size", "in_capsule_data_size"];
const LISTENER_KEYS: &[&str] = &["address", "port"];
const SUBSYSTEM_KEYS: &[&str] = &[
    "nqn",
    "serial",
    "model",
    "allow_any_host",
    "hosts",
    "require_dhchap",
    "dhchap_dhgroup",
    "namespaces",
];
const HOST_KEYS: &[&str] = &["nqn", "dhchap_secret_file", "dhchap_ctrl_secret_file"];
const HOST_EXPECTED: &str =
    "a host NQN, or a mapping {nqn, dhchap_secret_file, dhchap_ctrl_secret_file}";

pub(crate) fn build(file: &str, text: &str, base_dir: &Path) -> Result<Layout, LayoutError> {
    let docs = load_docs(file, text)?;
    let root = single_root(
        file,
        &docs,
        "empty layout (expected a mapping with listeners and subsystems)",
    )?;
    let root = At::root(file, text, root);
    let map = root.map(ROOT_KEYS, "a mapping with listeners and subsystems")?;
    let listeners = build_listeners(&map)?;
    let subsystems = build_subsystems(&map, base_dir)?;
    let transport = build_transport(&map)?;
    Ok(Layout {
        listeners,
        subsystems,
        source: file.to_owned(),
        transport,
    })
}

/// Parses `text` (at most [`LAYOUT_BYTES_MAX`] bytes) into spanned documents.
pub(crate) fn load_docs<'y>(file: &str, text: &'y str) -> Result<Vec<MarkedYaml<'y>>, LayoutError> {
    if text.len() > LAYOUT_BYTES_MAX {
        return Err(LayoutError::new(
            ErrorKind::Io,
            Location {
                file: file.to_owned(),
                ..Location::default()
            },
            format!(
                "layout is {} bytes (expected at most {LAYOUT_BYTES_MAX})",
                text.len()
            ),
        ));
    }
    MarkedYaml::load_from_str(text).map_err(|e| syntax_error(file, text, &e))
}

/// The one document of a file; `empty_message` when there is none (or it is null).
pub(crate) fn single_root<'a, 'y>(
    file: &str,
    docs: &'a [MarkedYaml<'y>],
    empty_message: &str,
) -> Result<&'a MarkedYaml<'y>, LayoutError> {
    match docs {
        [] => {}
        [only] if only.data.is_badvalue() || only.data.is_null() => {}
        [only] => return Ok(only),
        [_, second, ..] => {
            return Err(LayoutError::new(
                ErrorKind::Document,
                crate::tree::loc_of(file, second, "(document)"),
                "a second YAML document (expected one document per layout file)",
            ));
        }
    }
    Err(LayoutError::new(
        ErrorKind::Document,
        Location {
            file: file.to_owned(),
            line: 1,
            column: 1,
            field: "(document)".to_owned(),
        },
        empty_message,
    ))
}

fn syntax_error(file: &str, text: &str, e: &ScanError) -> LayoutError {
    /// Longest key quoted in a duplicate-key message.
    const KEY_CHARS_MAX: usize = 40;
    let m = e.marker();
    let (kind, message) = if e.info() == "duplicated key in mapping" {
        // saphyr marks the key; name it (up to the `:` on its line).
        let key: String = text
            .chars()
            .skip(m.index())
            .take_while(|&c| c != ':' && c != '\n')
            .take(KEY_CHARS_MAX)
            .collect();
        (
            ErrorKind::DuplicateKey,
            format!(
                "duplicate key {:?} in one mapping (expected each key once)",
                key.trim()
            ),
        )
    } else {
        (
            ErrorKind::Syntax,
            format!("YAML syntax error: {}", e.info()),
        )
    };
    LayoutError::new(
        kind,
        Location {
            file: file.to_owned(),
            line: m.line(),
            column: m.col().saturating_add(1),
            field: "(syntax)".to_owned(),
        },
        message,
    )
}

/// Refuses more than `max` entries, pointing at the first one past the limit.
pub(crate) fn check_count(items: &[At<'_, '_>], max: usize, what: &str) -> Result<(), LayoutError> {
    match items.get(max) {
        Some(extra) => Err(extra.err(
            ErrorKind::TooMany,
            format!("more than {max} {what} (expected at most {max})"),
        )),
        None => Ok(()),
    }
}

fn build_listeners(root: &Map<'_, '_>) -> Result<Vec<Listener>, LayoutError> {
    let node = root.require("listeners", "a list of {address, port}")?;
    let items = node.seq("a list of {address, port}")?;
    if items.is_empty() {
        return Err(node.err(
            ErrorKind::MissingField,
            "no listeners (expected at least one {address, port})",
        ));
    }
    check_count(&items, LISTENERS_MAX, "listeners")?;
    let mut out: Vec<(Listener, usize)> = Vec::with_capacity(items.len());
    for item in &items {
        let map = item.map(LISTENER_KEYS, "a mapping {address, port}")?;
        let addr_node = map.require("address", "an IP address such as 127.0.0.1 or \"::1\"")?;
        let text = addr_node.str("an IP address such as 127.0.0.1 or \"::1\"")?;
        let addr: IpAddr = text.parse().map_err(|_| {
            addr_node.err(
                ErrorKind::BadAddress,
                format!(
                    "not an IP address: {text:?} (expected an IPv4 or IPv6 literal such as \
                     127.0.0.1 or \"::1\"; host names are not resolved)"
                ),
            )
        })?;
        let port = match map.get("port") {
            None => DEFAULT_PORT,
            Some(p) => {
                let expected = "a TCP port from 1 to 65535, usually 4420";
                let n = p.int(expected)?;
                match u16::try_from(n) {
                    Ok(port) if port != 0 => port,
                    _ => {
                        return Err(p.err(
                            ErrorKind::BadPort,
                            format!("port {n} is out of range (expected {expected})"),
                        ));
                    }
                }
            }
        };
        for (earlier, line) in &out {
            if earlier.port != port {
                continue;
            }
            let here = std::net::SocketAddr::new(addr, port);
            let same_family = earlier.addr.is_ipv4() == addr.is_ipv4();
            if earlier.addr == addr {
                return Err(item.err(
                    ErrorKind::DuplicateListener,
                    format!("duplicate listener {here} (first declared at line {line})"),
                ));
            }
            if same_family && (earlier.addr.is_unspecified() || addr.is_unspecified()) {
                return Err(item.err(
                    ErrorKind::DuplicateListener,
                    format!(
                        "listener {here} overlaps {} declared at line {line} (expected each \
                         address and port once; a wildcard address covers its whole family)",
                        earlier.socket_addr()
                    ),
                ));
            }
        }
        out.push((
            Listener {
                addr,
                port,
                loc: item.loc(),
            },
            item.line(),
        ));
    }
    Ok(out.into_iter().map(|(l, _)| l).collect())
}

fn build_subsystems(root: &Map<'_, '_>, base_dir: &Path) -> Result<Vec<Subsystem>, LayoutError> {
    let expected = "a list of subsystems {nqn, hosts or allow_any_host, namespaces}";
    let node = root.require("subsystems", expected)?;
    let items = node.seq(expected)?;
    check_count(&items, SUBSYSTEMS_MAX, "subsystems")?;
    let mut out: Vec<Subsystem> = Vec::with_capacity(items.len());
    let mut nqn_lines: Vec<(String, usize)> = Vec::with_capacity(items.len());
    let mut ids = IdRegistry::default();
    for item in &items {
        let map = item.map(
            SUBSYSTEM_KEYS,
            "a mapping {nqn, hosts or allow_any_host, namespaces}",
        )?;
        let nqn_node = map.require("nqn", NQN_EXPECTED)?;
        let nqn = nqn_node.str(NQN_EXPECTED)?;
        check_nqn(nqn).map_err(|m| nqn_node.err(ErrorKind::BadNqn, m))?;
        if nqn == DISCOVERY_NQN {
            return Err(nqn_node.err(
                ErrorKind::BadNqn,
                format!(
                    "{DISCOVERY_NQN} is the discovery subsystem, served on every listener \
                     (expected the NQN of an NVM subsystem)"
                ),
            ));
        }
        if let Some((_, line)) = nqn_lines.iter().find(|(n, _)| n == nqn) {
            return Err(nqn_node.err(
                ErrorKind::DuplicateNqn,
                format!("duplicate subsystem NQN {nqn} (first declared at line {line})"),
            ));
        }
        nqn_lines.push((nqn.to_owned(), nqn_node.line()));

        let serial = match map.get("serial") {
            Some(s) => ascii_field(&s, "serial number", SERIAL_BYTES_MAX)?,
            None => derived_serial(nqn),
        };
        let model = match map.get("model") {
            Some(s) => ascii_field(&s, "model number", MODEL_BYTES_MAX)?,
            None => DEFAULT_MODEL.to_owned(),
        };
        let (hosts, host_auth) = host_entries(item, &map, Some(base_dir))?;
        let require_dhchap = require_dhchap(&map, &hosts, &host_auth)?;
        let dhchap_dhgroup = match map.get("dhchap_dhgroup") {
            None => DhGroupDecl::default(),
            Some(n) => match n.str("null or ffdhe2048")? {
                "null" => DhGroupDecl::Null,
                "ffdhe2048" => DhGroupDecl::Ffdhe2048,
                other => {
                    return Err(n.err(
                        ErrorKind::BadSecret,
                        format!("unsupported DH group {other:?} (expected null or ffdhe2048)"),
                    ));
                }
            },
        };
        let namespaces = build_namespaces(&map, nqn, base_dir, &mut ids)?;
        out.push(Subsystem {
            nqn: nqn.to_owned(),
            serial,
            model,
            hosts,
            host_auth,
            require_dhchap,
            dhchap_dhgroup,
            namespaces,
            loc: item.loc(),
        });
    }
    Ok(out)
}

/// Identify Controller SN and MN are ASCII strings (NVMe Base 2.0 section 1.5, "ASCII string":
/// printable characters 20h to 7Eh, padded with spaces).
fn ascii_field(node: &At<'_, '_>, what: &str, max: usize) -> Result<String, LayoutError> {
    let expected = format!("1 to {max} printable ASCII characters");
    let s = node.str(&expected)?;
    if s.is_empty() {
        return Err(node.err(
            ErrorKind::BadString,
            format!("empty {what} (expected {expected}, or omit the field)"),
        ));
    }
    if let Some(c) = s.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(node.err(
            ErrorKind::BadString,
            format!(
                "{what} {s:?} contains {c:?}, which is not printable ASCII (expected {expected})"
            ),
        ));
    }
    if s.len() > max {
        return Err(node.err(
            ErrorKind::BadString,
            format!(
                "{what} {s:?} is {} characters long (expected {expected})",
                s.len()
            ),
        ));
    }
    Ok(s.to_owned())
}

/// `hosts` / `allow_any_host` where every host is a plain NQN (cluster files).
pub(crate) fn host_policy(item: &At<'_, '_>, map: &Map<'_, '_>) -> Result<HostPolicy, LayoutError> {
    host_entries(item, map, None).map(|(p, _)| p)
}

/// `require_dhchap: true` holds only with a host list whose every host has a secret.
fn require_dhchap(
    map: &Map<'_, '_>,
    hosts: &HostPolicy,
    auth: &[HostAuth],
) -> Result<bool, LayoutError> {
    let Some(node) = map.get("require_dhchap") else {
        return Ok(false);
    };
    if !node.bool()? {
        return Ok(false);
    }
    match hosts {
        HostPolicy::Any => Err(node.err(
            ErrorKind::BadSecret,
            "require_dhchap: true with allow_any_host: true (expected a hosts list whose every \
             host has a dhchap_secret_file)",
        )),
        HostPolicy::Only(list) => {
            if let Some(h) = list.iter().find(|h| !auth.iter().any(|a| &a.nqn == *h)) {
                return Err(node.err(
                    ErrorKind::BadSecret,
                    format!(
                        "require_dhchap: true but host {h} has no dhchap_secret_file (expected \
                         {{nqn, dhchap_secret_file}} for every host)"
                    ),
                ));
            }
            Ok(true)
        }
    }
}

/// A secret file: a path (relative to the layout's directory) to a readable file of at most
/// [`SECRET_FILE_BYTES_MAX`] bytes holding a `DHHC-1:` secret. Crate-visible so that a cluster
/// file's per-server secrets are read the same way.
pub(crate) fn secret_file(node: &At<'_, '_>, base_dir: &Path) -> Result<SecretFile, LayoutError> {
    const EXPECTED: &str = "a file holding a secret printed by nvme gen-dhchap-key";
    let text = node.str(&format!("a path to {EXPECTED}"))?;
    if text.is_empty() {
        return Err(node.err(
            ErrorKind::BadSecret,
            format!("empty path (expected a path to {EXPECTED})"),
        ));
    }
    let p = Path::new(text);
    let path = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    };
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| {
            use std::io::Read;
            f.take(SECRET_FILE_BYTES_MAX + 1).read_to_end(&mut bytes)
        })
        .map_err(|e| {
            node.err(
                ErrorKind::BadSecret,
                format!("cannot read {}: {e} (expected {EXPECTED})", path.display()),
            )
        })?;
    if bytes.len() as u64 > SECRET_FILE_BYTES_MAX {
        return Err(node.err(
            ErrorKind::BadSecret,
            format!(
                "{} is larger than {SECRET_FILE_BYTES_MAX} bytes (expected {EXPECTED})",
                path.display()
            ),
        ));
    }
    let content = String::from_utf8(bytes).unwrap_or_default();
    let content = content.trim();
    if !content.starts_with("DHHC-1:") {
        return Err(node.err(
            ErrorKind::BadSecret,
            format!(
                "{} does not hold a DHHC-1: secret (expected {EXPECTED})",
                path.display()
            ),
        ));
    }
    Ok(SecretFile {
        path,
        text: content.to_owned(),
        loc: node.loc(),
    })
}

/// `hosts` / `allow_any_host`; with `auth_base` (standalone layouts) a host may be a mapping
/// that names its DH-HMAC-CHAP secret files, resolved against `auth_base`.
pub(crate) fn host_entries(
    item: &At<'_, '_>,
    map: &Map<'_, '_>,
    auth_base: Option<&Path>,
) -> Result<(HostPolicy, Vec<HostAuth>), LayoutError> {
    const EXACTLY_ONE: &str = "expected exactly one of: hosts: [host NQNs], allow_any_host: true";
    let any = match map.get("allow_any_host") {
        Some(node) => node.bool()?,
        None => false,
    };
    let Some(hosts_node) = map.get("hosts") else {
        if any {
            return Ok((HostPolicy::Any, Vec::new()));
        }
        let loc = map.key_loc("allow_any_host").unwrap_or_else(|| item.loc());
        return Err(LayoutError::new(
            ErrorKind::HostPolicy,
            loc,
            format!(
                "no host may connect: neither hosts nor allow_any_host: true is set ({EXACTLY_ONE})"
            ),
        ));
    };
    if any {
        let loc = map.key_loc("hosts").unwrap_or_else(|| hosts_node.loc());
        return Err(LayoutError::new(
            ErrorKind::HostPolicy,
            loc,
            format!("both hosts and allow_any_host: true are set ({EXACTLY_ONE})"),
        ));
    }
    let expected = "a list of host NQNs";
    let items = hosts_node.seq(expected)?;
    if items.is_empty() {
        return Err(hosts_node.err(
            ErrorKind::HostPolicy,
            format!("empty host list: no host may connect ({EXACTLY_ONE})"),
        ));
    }
    check_count(&items, HOSTS_MAX, "hosts")?;
    let mut hosts: Vec<(String, usize)> = Vec::with_capacity(items.len());
    let mut auth: Vec<HostAuth> = Vec::new();
    for item in &items {
        let is_map = matches!(item.node.data, saphyr::YamlData::Mapping(_));
        let (h, entry) = match auth_base {
            Some(base) if is_map => {
                let m = item.map(HOST_KEYS, HOST_EXPECTED)?;
                let nqn_node = m.require("nqn", NQN_EXPECTED)?;
                let nqn = nqn_node.str(NQN_EXPECTED)?;
                let secret = match m.get("dhchap_secret_file") {
                    Some(n) => Some(secret_file(&n, base)?),
                    None => None,
                };
                let ctrl_secret = match m.get("dhchap_ctrl_secret_file") {
                    Some(n) if secret.is_none() => {
                        return Err(n.err(
                            ErrorKind::BadSecret,
                            "dhchap_ctrl_secret_file without dhchap_secret_file (expected the \
                             host's secret too: the controller proves itself only to a host \
                             that authenticated)",
                        ));
                    }
                    Some(n) => Some(secret_file(&n, base)?),
                    None => None,
                };
                let entry = secret.map(|secret| HostAuth {
                    nqn: nqn.to_owned(),
                    secret,
                    ctrl_secret,
                });
                (nqn_node, entry)
            }
            _ => (item.clone(), None),
        };
        let h = &h;
        let expected = if auth_base.is_some() {
            HOST_EXPECTED
        } else {
            NQN_EXPECTED
        };
        let nqn = h.str(expected)?;
        check_nqn(nqn).map_err(|m| h.err(ErrorKind::BadNqn, m))?;
        if nqn == DISCOVERY_NQN {
            return Err(h.err(
                ErrorKind::BadNqn,
                format!("{DISCOVERY_NQN} is the discovery subsystem NQN (expected a host NQN)"),
            ));
        }
        if let Some((_, line)) = hosts.iter().find(|(n, _)| n == nqn) {
            return Err(h.err(
                ErrorKind::DuplicateNqn,
                format!("duplicate host NQN {nqn} (first listed at line {line})"),
            ));
        }
        hosts.push((nqn.to_owned(), h.line()));
        auth.extend(entry);
    }
    Ok((
        HostPolicy::Only(hosts.into_iter().map(|(h, _)| h).collect()),
        auth,
    ))
}

/// The optional `transport:` section: MDTS and I/O queue in-capsule data size.
fn build_transport(root: &Map<'_, '_>) -> Result<TransportDecl, LayoutError> {
    let mut t = TransportDecl::default();
    let Some(node) = root.get("transport") else {
        return Ok(t);
    };
    let map = node.map(
        TRANSPORT_KEYS,
        "a mapping {max_io_size, in_capsule_data_size}",
    )?;
    if let Some(n) = map.get("max_io_size") {
        let expected = "a power of two from 4KiB to 8MiB, such as \"1MiB\"";
        let v = transport_size(&n, expected)?;
        if !(u64::from(MAX_IO_SIZE_MIN)..=u64::from(MAX_IO_SIZE_MAX)).contains(&v) {
            return Err(n.err(
                ErrorKind::BadTransport,
                format!("max_io_size {v} is out of range (expected {expected})"),
            ));
        }
        if !v.is_power_of_two() {
            return Err(n.err(
                ErrorKind::BadTransport,
                format!("max_io_size {v} is not a power of two (expected {expected})"),
            ));
        }
        t.max_io_size = u32::try_from(v).unwrap_or(MAX_IO_SIZE_MAX);
    }
    if let Some(n) = map.get("in_capsule_data_size") {
        let expected = "a multiple of 16 from 0 to 64KiB, such as \"8KiB\"";
        let v = transport_size(&n, expected)?;
        if v > u64::from(IN_CAPSULE_DATA_MAX) {
            return Err(n.err(
                ErrorKind::BadTransport,
                format!("in_capsule_data_size {v} is out of range (expected {expected})"),
            ));
        }
        if v % 16 != 0 {
            // IOCCSZ counts 16-byte units (NVMe over Fabrics 1.1, Identify Controller IOCCSZ).
            return Err(n.err(
                ErrorKind::BadTransport,
                format!("in_capsule_data_size {v} is not a multiple of 16 (expected {expected})"),
            ));
        }
        if v > u64::from(t.max_io_size) {
            return Err(n.err(
                ErrorKind::BadTransport,
                format!(
                    "in_capsule_data_size {v} is above max_io_size {} (expected at most \
                     max_io_size: no command carries more)",
                    t.max_io_size
                ),
            ));
        }
        t.in_capsule_data_size = u32::try_from(v).unwrap_or(IN_CAPSULE_DATA_MAX);
    }
    Ok(t)
}

/// A transport size: an integer byte count or a string with a unit (0 allowed).
fn transport_size(node: &At<'_, '_>, expected: &str) -> Result<u64, LayoutError> {
    match node.int_or_str(expected)? {
        IntOrStr::Int(i) => u64::try_from(i).map_err(|_| {
            node.err(
                ErrorKind::BadTransport,
                format!("negative size {i} (expected {expected})"),
            )
        }),
        IntOrStr::Str(s) => parse_size(s).map_err(|m| node.err(ErrorKind::BadSize, m)),
    }
}
