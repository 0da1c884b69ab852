//! From a validated YAML layout to the objects a target serves: opens every backend and builds
//! subsystems. Errors name the layout file, line and field (the `yaml` crate keeps locations).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use codec::nvme::fabrics::auth::{DHGROUP_FFDHE2048, DHGROUP_NULL, Secret};
use hw::BackendSpec;
use yaml::{BackendDecl, Layout, Location, SecretFile};

use crate::subsystem::namespace::Namespace;
use crate::subsystem::volume::LocalVolume;
use crate::subsystem::{AuthPolicy, HostKeys, NamespaceMap, Registry, Subsystem};

/// The generation a standalone server (no manager) runs at. Stamped commands must carry it.
pub const STANDALONE_GENERATION: u64 = 1;

/// A layout that could not be brought up.
#[derive(Debug)]
pub struct ConfigError {
    pub loc: Location,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.loc, self.message)
    }
}

impl std::error::Error for ConfigError {}

fn spec_of(decl: &BackendDecl, size_bytes: u64) -> BackendSpec {
    match decl {
        BackendDecl::Null { size } => BackendSpec::Null { size: *size },
        BackendDecl::Ram { size, preallocate } => BackendSpec::Ram {
            size: *size,
            preallocate: *preallocate,
        },
        BackendDecl::File { path, size, create } => BackendSpec::File {
            path: path.clone(),
            size: size.or(Some(size_bytes)),
            create: *create,
        },
        BackendDecl::Block { path } => BackendSpec::Block { path: path.clone() },
    }
}

/// The transport limits a layout asks for (its `transport:` section; defaults when absent).
/// Other transport settings (zero-copy reads...) keep their defaults for the caller to change.
pub fn transport_config(layout: &Layout) -> crate::transport::TransportConfig {
    let t = layout.transport;
    crate::transport::TransportConfig::with_limits(t.max_io_size, t.in_capsule_data_size)
}

/// Opens every backend of `layout` and builds the registry.
pub fn build_registry(layout: &Layout) -> Result<Arc<Registry>, ConfigError> {
    let subsystems = layout
        .subsystems
        .iter()
        .map(build_subsystem)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Arc::new(Registry::new(subsystems, STANDALONE_GENERATION)))
}

/// Opens the backend of one declared namespace.
pub fn open_namespace(n: &yaml::Namespace) -> Result<Arc<Namespace>, ConfigError> {
    let backend = hw::open(&spec_of(&n.backend, n.size_bytes)).map_err(|e| ConfigError {
        loc: n.backend_loc.clone(),
        message: format!("cannot open {} backend: {e}", n.backend.kind()),
    })?;
    let len = backend.len_bytes();
    if len < u64::from(n.block_size) {
        return Err(ConfigError {
            loc: n.backend_loc.clone(),
            message: format!(
                "backend is {len} bytes, smaller than one {}-byte block",
                n.block_size
            ),
        });
    }
    let volume = Arc::new(LocalVolume::new(backend));
    Ok(Arc::new(Namespace::new(
        n.nsid,
        n.block_size,
        n.nguid,
        n.uuid,
        volume,
    )))
}

/// Opens every backend of one declared subsystem and builds it.
pub fn build_subsystem(s: &yaml::Subsystem) -> Result<Subsystem, ConfigError> {
    let mut namespaces = BTreeMap::new();
    for n in &s.namespaces {
        namespaces.insert(n.nsid, open_namespace(n)?);
    }
    let sub = Subsystem::new(
        s.nqn.clone(),
        s.serial.clone(),
        s.model.clone(),
        s.hosts.clone(),
        namespaces,
    );
    sub.set_auth(auth_policy(s)?);
    Ok(sub)
}

/// A secret file's DH-HMAC-CHAP secret; errors name the layout field and the file.
pub fn load_secret(f: &SecretFile) -> Result<Secret, ConfigError> {
    Secret::parse(&f.text).map_err(|e| ConfigError {
        loc: f.loc.clone(),
        message: format!("{}: {e}", f.path.display()),
    })
}

/// A subsystem's DH-HMAC-CHAP policy: the secrets of its hosts (decoded and checked).
pub fn auth_policy(s: &yaml::Subsystem) -> Result<AuthPolicy, ConfigError> {
    let mut hosts = HashMap::new();
    for h in &s.host_auth {
        let keys = HostKeys {
            host: load_secret(&h.secret)?,
            ctrl: h.ctrl_secret.as_ref().map(load_secret).transpose()?,
        };
        hosts.insert(h.nqn.clone(), Arc::new(keys));
    }
    Ok(AuthPolicy {
        hosts,
        required: s.require_dhchap,
        dh_group: match s.dhchap_dhgroup {
            yaml::DhGroupDecl::Null => DHGROUP_NULL,
            yaml::DhGroupDecl::Ffdhe2048 => DHGROUP_FFDHE2048,
        },
        ..AuthPolicy::default()
    })
}

/// What `tessera-target --check` verifies beyond the YAML: that every DH-HMAC-CHAP secret
/// decodes, and that every file and block backend can be opened as declared (without creating
/// anything: a file to be created needs an existing directory). RAM and null backends need
/// nothing.
pub fn check_backends(layout: &Layout) -> Result<(), ConfigError> {
    for s in &layout.subsystems {
        auth_policy(s)?;
    }
    for s in &layout.subsystems {
        for n in &s.namespaces {
            let err = |message: String| ConfigError {
                loc: n.backend_loc.clone(),
                message,
            };
            match &n.backend {
                BackendDecl::Null { .. } | BackendDecl::Ram { .. } => {}
                BackendDecl::File { path, create, .. } if *create && !path.exists() => {
                    let dir = path
                        .parent()
                        .filter(|p| !p.as_os_str().is_empty())
                        .unwrap_or_else(|| std::path::Path::new("."));
                    if !dir.is_dir() {
                        return Err(err(format!(
                            "cannot create {}: directory {} does not exist",
                            path.display(),
                            dir.display()
                        )));
                    }
                }
                decl => {
                    hw::open(&spec_of(decl, n.size_bytes))
                        .map_err(|e| err(format!("cannot open {} backend: {e}", decl.kind())))?;
                }
            }
        }
    }
    Ok(())
}

// -------------------------------------------------------------------------------------------
// Live reconfiguration: what differs between the layout in force and a new one
// -------------------------------------------------------------------------------------------

/// How one subsystem present in both layouts changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubsystemChange {
    pub nqn: String,
    /// The new host policy, when it differs.
    pub hosts: Option<yaml::HostPolicy>,
    /// Namespaces declared only in the new layout.
    pub namespaces_added: Vec<yaml::Namespace>,
    /// NSIDs declared only in the old layout.
    pub namespaces_removed: Vec<u32>,
    /// The subsystem as newly declared, when its authentication (host secrets, whether it is
    /// required, the DH group) differs: the new policy applies to Connects from then on; queues
    /// already authenticated stay (as with Linux nvmet, a host re-authenticates when it
    /// reconnects).
    pub auth: Option<yaml::Subsystem>,
}

/// The difference between the layout a target serves and a new one: what a reload does.
/// Everything the new layout declares identically is left alone (and so are the connections
/// that use it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayoutDiff {
    /// Portals to open (with their place in the new layout, to name a bind failure).
    pub listeners_added: Vec<yaml::Listener>,
    /// Portals to close.
    pub listeners_removed: Vec<SocketAddr>,
    /// Subsystems declared only in the new layout.
    pub subsystems_added: Vec<yaml::Subsystem>,
    /// NQNs declared only in the old layout.
    pub subsystems_removed: Vec<String>,
    /// Subsystems in both layouts whose hosts or namespaces differ.
    pub subsystems_changed: Vec<SubsystemChange>,
}

impl LayoutDiff {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Whether the discovery log changes (GENCTR must move): portals, subsystems or the hosts
    /// that may see a subsystem.
    pub fn changes_discovery(&self) -> bool {
        !self.listeners_added.is_empty()
            || !self.listeners_removed.is_empty()
            || !self.subsystems_added.is_empty()
            || !self.subsystems_removed.is_empty()
            || self.subsystems_changed.iter().any(|c| c.hosts.is_some())
    }

    /// One line per change, for logs and for the caller of a reload.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        for l in &self.listeners_added {
            out.push(format!("listener {} added", l.socket_addr()));
        }
        for a in &self.listeners_removed {
            out.push(format!("listener {a} removed"));
        }
        for s in &self.subsystems_added {
            out.push(format!(
                "subsystem {} added ({} namespace(s))",
                s.nqn,
                s.namespaces.len()
            ));
        }
        for nqn in &self.subsystems_removed {
            out.push(format!("subsystem {nqn} removed"));
        }
        for c in &self.subsystems_changed {
            if let Some(h) = &c.hosts {
                let shown = match h {
                    yaml::HostPolicy::Any => "any host".to_string(),
                    yaml::HostPolicy::Only(v) => v.join(", "),
                };
                out.push(format!("subsystem {}: allowed hosts now {shown}", c.nqn));
            }
            if c.auth.is_some() {
                out.push(format!("subsystem {}: authentication changed", c.nqn));
            }
            for n in &c.namespaces_added {
                out.push(format!("subsystem {}: namespace {} added", c.nqn, n.nsid));
            }
            for id in &c.namespaces_removed {
                out.push(format!("subsystem {}: namespace {id} removed", c.nqn));
            }
        }
        out
    }
}

/// Whether two declarations of one subsystem authenticate hosts the same way (locations aside:
/// the secrets' text, whether authentication is required, the DH group).
fn same_auth(a: &yaml::Subsystem, b: &yaml::Subsystem) -> bool {
    let keys = |s: &yaml::Subsystem| {
        s.host_auth
            .iter()
            .map(|h| {
                (
                    h.nqn.clone(),
                    h.secret.text.clone(),
                    h.ctrl_secret.as_ref().map(|c| c.text.clone()),
                )
            })
            .collect::<Vec<_>>()
    };
    a.require_dhchap == b.require_dhchap
        && a.dhchap_dhgroup == b.dhchap_dhgroup
        && keys(a) == keys(b)
}

/// Whether two declarations of one NSID describe the same namespace (locations aside).
fn same_namespace(a: &yaml::Namespace, b: &yaml::Namespace) -> bool {
    a.nsid == b.nsid
        && a.block_size == b.block_size
        && a.size_bytes == b.size_bytes
        && a.backend == b.backend
        && a.nguid == b.nguid
        && a.uuid == b.uuid
}

/// What differs between `old` (in force) and `new`, or why `new` cannot be applied to a
/// running target. Refused, with the new layout's location:
/// - a namespace whose backend, size, block size, NGUID or UUID changed under the same NSID:
///   a host holding it would read other data, or see its size change, under the same identity.
///   Remove it (or declare it under a new NSID) in one reload and add it back in another;
/// - a subsystem whose serial or model changed: hosts key their view of a subsystem on them;
/// - a changed `transport:` section: the limits are advertised to every live controller.
pub fn diff(old: &Layout, new: &Layout) -> Result<LayoutDiff, ConfigError> {
    let mut d = LayoutDiff::default();
    if old.transport != new.transport {
        return Err(ConfigError {
            loc: Location {
                file: new.source.clone(),
                line: 0,
                column: 0,
                field: "transport".to_string(),
            },
            message: "the transport limits cannot change while the target runs (every live \
                      controller was told them); restart the target to change them"
                .to_string(),
        });
    }
    let old_addrs: Vec<SocketAddr> = old
        .listeners
        .iter()
        .map(yaml::Listener::socket_addr)
        .collect();
    let new_addrs: Vec<SocketAddr> = new
        .listeners
        .iter()
        .map(yaml::Listener::socket_addr)
        .collect();
    d.listeners_added = new
        .listeners
        .iter()
        .filter(|l| !old_addrs.contains(&l.socket_addr()))
        .cloned()
        .collect();
    d.listeners_removed = old_addrs
        .iter()
        .filter(|a| !new_addrs.contains(a))
        .copied()
        .collect();
    for o in &old.subsystems {
        if !new.subsystems.iter().any(|n| n.nqn == o.nqn) {
            d.subsystems_removed.push(o.nqn.clone());
        }
    }
    for n in &new.subsystems {
        let Some(o) = old.subsystems.iter().find(|o| o.nqn == n.nqn) else {
            d.subsystems_added.push(n.clone());
            continue;
        };
        if o.serial != n.serial || o.model != n.model {
            return Err(ConfigError {
                loc: n.loc.clone(),
                message: format!(
                    "subsystem {}: serial and model cannot change while it is served (hosts \
                     identify the subsystem by them); remove the subsystem in one reload and \
                     declare it again in the next",
                    n.nqn
                ),
            });
        }
        let mut c = SubsystemChange {
            nqn: n.nqn.clone(),
            hosts: (o.hosts != n.hosts).then(|| n.hosts.clone()),
            namespaces_added: Vec::new(),
            namespaces_removed: Vec::new(),
            auth: None,
        };
        if !same_auth(o, n) {
            auth_policy(n)?; // A secret that does not decode refuses the whole file.
            c.auth = Some(n.clone());
        }
        for ns in &n.namespaces {
            match o.namespaces.iter().find(|x| x.nsid == ns.nsid) {
                None => c.namespaces_added.push(ns.clone()),
                Some(x) if same_namespace(x, ns) => {}
                Some(x) => {
                    return Err(ConfigError {
                        loc: ns.loc.clone(),
                        message: format!(
                            "namespace {} of {}: {} cannot change while it is served (a host \
                             would see other blocks under the same identity); remove it in \
                             one reload and add it back in the next, or declare the new one \
                             under another NSID",
                            ns.nsid,
                            n.nqn,
                            namespace_difference(x, ns)
                        ),
                    });
                }
            }
        }
        for x in &o.namespaces {
            if !n.namespaces.iter().any(|ns| ns.nsid == x.nsid) {
                c.namespaces_removed.push(x.nsid);
            }
        }
        if c.hosts.is_some()
            || c.auth.is_some()
            || !c.namespaces_added.is_empty()
            || !c.namespaces_removed.is_empty()
        {
            d.subsystems_changed.push(c);
        }
    }
    Ok(d)
}

/// Names what differs between two declarations of one NSID.
fn namespace_difference(a: &yaml::Namespace, b: &yaml::Namespace) -> String {
    let mut what = Vec::new();
    if a.backend != b.backend {
        what.push("its backend");
    }
    if a.size_bytes != b.size_bytes {
        what.push("its size");
    }
    if a.block_size != b.block_size {
        what.push("its block size");
    }
    if a.nguid != b.nguid || a.uuid != b.uuid {
        what.push("its NGUID/UUID");
    }
    if what.is_empty() {
        "its declaration".to_string()
    } else {
        what.join(" and ")
    }
}

/// A [`LayoutDiff`] whose new backends are open: applying it cannot fail.
pub struct PreparedChange {
    pub diff: LayoutDiff,
    subsystems: Vec<Arc<Subsystem>>,
    /// Per changed subsystem (same order as `diff.subsystems_changed`), its new namespaces.
    namespaces: Vec<Vec<Arc<Namespace>>>,
}

/// Opens every backend `diff` adds (nothing in the registry changes). A backend that does not
/// open fails the whole change.
pub fn prepare(diff: LayoutDiff) -> Result<PreparedChange, ConfigError> {
    let subsystems = diff
        .subsystems_added
        .iter()
        .map(|s| build_subsystem(s).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    let namespaces = diff
        .subsystems_changed
        .iter()
        .map(|c| c.namespaces_added.iter().map(open_namespace).collect())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PreparedChange {
        diff,
        subsystems,
        namespaces,
    })
}

/// What applying a change removed, for the caller to flush (off the registry's path).
#[derive(Default)]
pub struct Removed {
    pub namespaces: Vec<Arc<Namespace>>,
    /// Controllers torn down (removed hosts and removed subsystems).
    pub controllers: usize,
}

impl PreparedChange {
    /// Applies the subsystem part of the change to `registry` (listeners are the server's):
    /// - subsystems added, then removed (their controllers torn down, their connections
    ///   closed);
    /// - per changed subsystem: the host policy, then every controller of a host no longer
    ///   allowed torn down; the namespace set, then a Namespace Attribute Changed notice (and
    ///   log page 04h entries) to every remaining controller. A removed NSID answers Invalid
    ///   Namespace from then on; commands already running on it finish.
    ///
    /// GENCTR is left to the caller, which moves it once after the listeners changed too.
    pub fn apply(self, registry: &Registry) -> Removed {
        let mut removed = Removed::default();
        for s in self.subsystems {
            registry.insert_subsystem(s);
        }
        for nqn in &self.diff.subsystems_removed {
            if let Some(s) = registry.remove_subsystem(nqn) {
                removed.controllers += s.drop_all_controllers("subsystem removed by reload");
                removed.namespaces.extend(s.namespaces().values().cloned());
            }
        }
        for (c, added) in self.diff.subsystems_changed.iter().zip(self.namespaces) {
            let Some(s) = registry.subsystem(&c.nqn) else {
                // diff() was taken against the layout in force, which this registry serves.
                debug_assert!(false, "changed subsystem {} is not served", c.nqn);
                continue;
            };
            if let Some(decl) = &c.auth {
                // Decoded once already by diff(), which refuses a file whose secrets do not.
                if let Ok(policy) = auth_policy(decl) {
                    s.set_auth(policy);
                }
            }
            if let Some(h) = &c.hosts {
                s.set_hosts(h.clone());
                removed.controllers += s
                    .drop_disallowed_hosts("host no longer allowed (reload)")
                    .len();
            }
            if added.is_empty() && c.namespaces_removed.is_empty() {
                continue;
            }
            let old = s.namespaces();
            let mut next = NamespaceMap::clone(&old);
            for id in &c.namespaces_removed {
                if let Some(ns) = next.remove(id) {
                    removed.namespaces.push(ns);
                }
            }
            for ns in added {
                next.insert(ns.nsid, ns);
            }
            let changed = s.set_namespaces(next);
            if !changed.is_empty() {
                for ctrl in s.controllers() {
                    ctrl.namespaces_changed(&changed);
                }
            }
        }
        removed
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    const BASE: &str = "listeners:
  - address: 127.0.0.1
    port: 4420
subsystems:
  - nqn: nqn.2026-11.dev.tessera:a
    allow_any_host: true
    namespaces:
      - nsid: 1
        backend: { kind: ram, size: 1MiB }
      - nsid: 2
        backend: { kind: null, size: 1MiB }
  - nqn: nqn.2026-11.dev.tessera:b
    hosts: [nqn.2026-11.dev.tessera:host:one]
    namespaces:
      - nsid: 1
        backend: { kind: ram, size: 1MiB }
";

    fn layout(name: &str, text: &str) -> Layout {
        yaml::parse_str(name, text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    /// A layout whose subsystem `a` authenticates host one with the secret in `key`.
    fn auth_layout(name: &str, key: &std::path::Path, prefix: &str) -> Layout {
        layout(
            name,
            &format!(
                "{prefix}listeners:
  - address: 127.0.0.1
    port: 4420
subsystems:
  - nqn: nqn.2026-11.dev.tessera:a
    hosts:
      - nqn: nqn.2026-11.dev.tessera:host:one
        dhchap_secret_file: {}
    namespaces:
      - nsid: 1
        backend: {{ kind: ram, size: 1MiB }}
",
                key.display()
            ),
        )
    }

    #[test]
    fn a_changed_host_secret_is_an_authentication_change_and_a_moved_one_is_none() {
        use codec::nvme::fabrics::auth::Secret;
        let dir = tempfile::tempdir().unwrap();
        let (k1, k2) = (dir.path().join("one.key"), dir.path().join("two.key"));
        for k in [&k1, &k2] {
            let text = Secret::generate(None, 32).unwrap().to_text();
            std::fs::write(k, format!("{text}\n")).unwrap();
        }
        let old = auth_layout("old.yaml", &k1, "");
        let moved = auth_layout("new.yaml", &k1, "# a comment moves every line\n");
        assert!(diff(&old, &moved).unwrap().is_empty());
        let d = diff(&old, &auth_layout("new.yaml", &k2, "")).unwrap();
        assert_eq!(d.subsystems_changed.len(), 1, "{d:?}");
        let c = &d.subsystems_changed[0];
        assert!(c.auth.is_some() && c.hosts.is_none(), "{c:?}");
        assert!(!d.changes_discovery());
        assert_eq!(
            d.describe(),
            ["subsystem nqn.2026-11.dev.tessera:a: authentication changed"]
        );
    }

    #[test]
    fn the_same_declarations_elsewhere_in_another_file_are_no_change() {
        let old = layout("old.yaml", BASE);
        // Same content, other source name and other locations (a comment shifts every line).
        let new = layout("new.yaml", &format!("# moved\n{BASE}"));
        let d = diff(&old, &new).unwrap();
        assert!(d.is_empty(), "{d:?}");
        assert!(!d.changes_discovery());
        assert!(d.describe().is_empty());
    }

    #[test]
    fn additions_and_removals_of_every_kind_are_found() {
        let old = layout("old.yaml", BASE);
        let text = BASE
            .replace("    port: 4420\n", "    port: 4421\n")
            .replace(
                "      - nsid: 2\n        backend: { kind: null, size: 1MiB }\n",
                "      - nsid: 3\n        backend: { kind: null, size: 2MiB }\n",
            )
            .replace(
                "hosts: [nqn.2026-11.dev.tessera:host:one]",
                "hosts: [nqn.2026-11.dev.tessera:host:two]",
            )
            + "  - nqn: nqn.2026-11.dev.tessera:c
    allow_any_host: true
    namespaces:
      - nsid: 9
        backend: { kind: null, size: 1MiB }
";
        let new = layout("new.yaml", &text);
        let d = diff(&old, &new).unwrap();
        assert_eq!(
            d.describe(),
            [
                "listener 127.0.0.1:4421 added",
                "listener 127.0.0.1:4420 removed",
                "subsystem nqn.2026-11.dev.tessera:c added (1 namespace(s))",
                "subsystem nqn.2026-11.dev.tessera:a: namespace 3 added",
                "subsystem nqn.2026-11.dev.tessera:a: namespace 2 removed",
                "subsystem nqn.2026-11.dev.tessera:b: allowed hosts now \
                 nqn.2026-11.dev.tessera:host:two",
            ]
        );
        assert!(d.changes_discovery());
        // Removing a subsystem, the other way round.
        let back = diff(&new, &old).unwrap();
        assert_eq!(back.subsystems_removed, ["nqn.2026-11.dev.tessera:c"]);
    }

    #[test]
    fn a_namespace_changed_in_place_is_refused_at_its_location() {
        let old = layout("old.yaml", BASE);
        for (from, to, what) in [
            (
                "kind: null, size: 1MiB",
                "kind: null, size: 2MiB",
                "its size",
            ),
            (
                "kind: null, size: 1MiB",
                "kind: ram, size: 1MiB",
                "its backend",
            ),
        ] {
            let new = layout("new.yaml", &BASE.replace(from, to));
            let e = diff(&old, &new).unwrap_err().to_string();
            assert!(
                e.starts_with(
                    "new.yaml:10:9: subsystems[0].namespaces[1]: namespace 2 of \
                               nqn.2026-11.dev.tessera:a: "
                ) && e.contains(what)
                    && e.contains("remove it in one reload"),
                "{e}"
            );
        }
        let new = layout(
            "new.yaml",
            &BASE.replace(
                "  - nqn: nqn.2026-11.dev.tessera:b\n",
                "  - nqn: nqn.2026-11.dev.tessera:b\n    serial: OTHER\n",
            ),
        );
        let e = diff(&old, &new).unwrap_err().to_string();
        assert!(
            e.contains("subsystems[1]") && e.contains("serial and model"),
            "{e}"
        );
        let new = layout(
            "new.yaml",
            &format!("{BASE}transport:\n  max_io_size: 1MiB\n"),
        );
        let e = diff(&old, &new).unwrap_err().to_string();
        assert!(e.starts_with("new.yaml: transport: "), "{e}");
    }

    #[test]
    fn applying_a_change_moves_namespaces_hosts_and_subsystems() {
        let old = layout("old.yaml", BASE);
        let registry = build_registry(&old).unwrap();
        let genctr = registry.genctr();
        let text = BASE
            .replace(
                "      - nsid: 2\n        backend: { kind: null, size: 1MiB }\n",
                "      - nsid: 3\n        backend: { kind: null, size: 2MiB }\n",
            )
            .replace(
                "  - nqn: nqn.2026-11.dev.tessera:b
    hosts: [nqn.2026-11.dev.tessera:host:one]
    namespaces:
      - nsid: 1
        backend: { kind: ram, size: 1MiB }
",
                "",
            )
            .replace(
                "allow_any_host: true",
                "hosts: [nqn.2026-11.dev.tessera:host:one]",
            );
        let new = layout("new.yaml", &text);
        let a = registry.subsystem("nqn.2026-11.dev.tessera:a").unwrap();
        let kept = a.namespace(1).unwrap();
        let removed = prepare(diff(&old, &new).unwrap()).unwrap().apply(&registry);
        assert_eq!(removed.namespaces.len(), 2, "NSID 2 of a and NSID 1 of b");
        assert!(registry.subsystem("nqn.2026-11.dev.tessera:b").is_none());
        assert!(a.namespace(2).is_none());
        assert_eq!(a.namespace(3).unwrap().nlbas, 2 * 1024 * 1024 / 512);
        assert!(
            Arc::ptr_eq(&kept, &a.namespace(1).unwrap()),
            "an unchanged namespace is the same live object"
        );
        assert!(a.hosts_allow("nqn.2026-11.dev.tessera:host:one"));
        assert!(!a.hosts_allow("nqn.2026-11.dev.tessera:host:two"));
        assert_eq!(registry.genctr(), genctr, "GENCTR is the caller's to move");
    }

    #[test]
    fn a_backend_that_does_not_open_fails_the_whole_change() {
        let dir = tempfile::tempdir().unwrap();
        let old = layout("old.yaml", BASE);
        let path = dir.path().join("gone.img");
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        let text = format!(
            "{BASE}  - nqn: nqn.2026-11.dev.tessera:c
    allow_any_host: true
    namespaces:
      - nsid: 1
        backend: {{ kind: file, path: {} }}
",
            path.display()
        );
        let new = layout("new.yaml", &text);
        std::fs::remove_file(&path).unwrap();
        let e = prepare(diff(&old, &new).unwrap())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with(
                "new.yaml:21:38: subsystems[2].namespaces[0].backend.path: cannot open file backend"
            ),
            "{e}"
        );
    }
}
