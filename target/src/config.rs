//! From a validated YAML layout to the objects a target serves: opens every backend and builds
//! subsystems. Errors name the layout file, line and field (the `yaml` crate keeps locations).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use codec::nvme::fabrics::auth::{DHGROUP_FFDHE2048, DHGROUP_NULL, Secret};
use hw::BackendSpec;
use yaml::{BackendDecl, Layout, Location, SecretFile};

use crate::subsystem::namespace::Namespace;
use crate::subsystem::volume::LocalVolume;
use crate::subsystem::{AuthPolicy, HostKeys, HostPolicy, Registry, Subsystem};

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
    let mut subsystems = Vec::new();
    for s in &layout.subsystems {
        let mut namespaces = BTreeMap::new();
        for n in &s.namespaces {
            let backend =
                hw::open(&spec_of(&n.backend, n.size_bytes)).map_err(|e| ConfigError {
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
            let ns = Namespace::new(n.nsid, n.block_size, n.nguid, n.uuid, volume);
            namespaces.insert(n.nsid, Arc::new(ns));
        }
        let hosts = match &s.hosts {
            yaml::HostPolicy::Any => HostPolicy::Any,
            yaml::HostPolicy::Only(v) => HostPolicy::Only(v.clone()),
        };
        let sub = Subsystem::new(
            s.nqn.clone(),
            s.serial.clone(),
            s.model.clone(),
            hosts,
            namespaces,
        );
        sub.set_auth(auth_policy(s)?);
        subsystems.push(sub);
    }
    Ok(Arc::new(Registry::new(subsystems, STANDALONE_GENERATION)))
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
