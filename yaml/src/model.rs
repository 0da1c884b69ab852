//! The validated layout: what the target serves. Every value here has passed every check in
//! this crate; the target only has to open backends and sockets.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use crate::error::Location;

/// A validated layout declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// NVMe/TCP portals, in declaration order. The discovery service is served on every one.
    pub listeners: Vec<Listener>,
    /// Subsystems, in declaration order; NQNs are unique.
    pub subsystems: Vec<Subsystem>,
    /// The source name the layout was read from (the path given to `load`).
    pub source: String,
    /// Transport limits (the optional `transport:` section; defaults when absent).
    pub transport: TransportDecl,
}

/// Transport limits of the target (`transport:`), checked against their bounds
/// ([`crate::MAX_IO_SIZE_MIN`]..=[`crate::MAX_IO_SIZE_MAX`], a power of two;
/// in-capsule data 0..=[`crate::IN_CAPSULE_DATA_MAX`], a multiple of 16, at most `max_io_size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportDecl {
    /// Largest transfer one command may carry, in bytes (advertised as MDTS).
    pub max_io_size: u32,
    /// In-capsule data I/O queues accept, in bytes (advertised as IOCCSZ = (64 + this) / 16).
    pub in_capsule_data_size: u32,
}

impl Default for TransportDecl {
    fn default() -> Self {
        Self {
            max_io_size: crate::build::DEFAULT_MAX_IO_SIZE,
            in_capsule_data_size: crate::build::DEFAULT_IN_CAPSULE_DATA,
        }
    }
}

/// One NVMe/TCP portal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// IP literal to bind (no host name resolution).
    pub addr: IpAddr,
    /// TCP port, 1..=65535.
    pub port: u16,
    /// The listener entry (`listeners[0]`).
    pub loc: Location,
}

impl Listener {
    /// The socket address to bind.
    #[must_use]
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.addr, self.port)
    }
}

/// One NVM subsystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subsystem {
    /// Subsystem NQN (NVMe Base 2.0 section 4.5), never the discovery NQN.
    pub nqn: String,
    /// Serial number (Identify Controller SN): 1..=20 printable ASCII characters.
    pub serial: String,
    /// Model number (Identify Controller MN): 1..=40 printable ASCII characters.
    pub model: String,
    /// Which hosts may connect.
    pub hosts: HostPolicy,
    /// DH-HMAC-CHAP secrets of the hosts that must authenticate (host entries written as
    /// `{nqn, dhchap_secret_file, dhchap_ctrl_secret_file}`), in declaration order.
    pub host_auth: Vec<HostAuth>,
    /// `require_dhchap: true`: every listed host has a secret (checked here), and a host
    /// without one is refused at Connect.
    pub require_dhchap: bool,
    /// `dhchap_dhgroup`: the Diffie-Hellman group the target asks for when the host offers it
    /// (NULL, which every host offers, otherwise).
    pub dhchap_dhgroup: DhGroupDecl,
    /// Namespaces, in declaration order; NSIDs are unique within the subsystem.
    pub namespaces: Vec<Namespace>,
    /// The subsystem entry (`subsystems[0]`).
    pub loc: Location,
}

/// A DH-HMAC-CHAP Diffie-Hellman group (`dhchap_dhgroup:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DhGroupDecl {
    /// `null`: no Diffie-Hellman exchange (the default, as Linux nvmet's).
    #[default]
    Null,
    /// `ffdhe2048`: RFC 7919's 2048-bit group.
    Ffdhe2048,
}

/// The DH-HMAC-CHAP secrets of one host of a subsystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAuth {
    /// The host NQN (also in the subsystem's [`HostPolicy::Only`] list).
    pub nqn: String,
    /// The host's secret (`dhchap_secret_file`): the host proves it knows it.
    pub secret: SecretFile,
    /// The controller's secret (`dhchap_ctrl_secret_file`), for bidirectional authentication.
    pub ctrl_secret: Option<SecretFile>,
}

/// A secret file named in the layout, read at load time. The text is only checked to look
/// like a `DHHC-1:` secret here; the target decodes it (base64, CRC-32) and names `loc` when
/// that fails.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretFile {
    /// The path, resolved like a backend path (relative to the layout file's directory).
    pub path: PathBuf,
    /// The file's content without surrounding whitespace.
    pub text: String,
    /// The path's value in the layout (`subsystems[0].hosts[1].dhchap_secret_file`).
    pub loc: Location,
}

impl std::fmt::Debug for SecretFile {
    // The secret itself is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretFile")
            .field("path", &self.path)
            .field("loc", &self.loc)
            .finish_non_exhaustive()
    }
}

/// Which host NQNs may connect to a subsystem: the one definition for the YAML, the cluster
/// map (JSON `"any"` or `{"only": [...]}`, feature `serde`) and the target's registry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum HostPolicy {
    /// Any host (`allow_any_host: true`).
    Any,
    /// Only these host NQNs (non-empty, no duplicates).
    Only(Vec<String>),
}

impl HostPolicy {
    /// Whether `hostnqn` may connect.
    #[must_use]
    pub fn allows(&self, hostnqn: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Only(hosts) => hosts.iter().any(|h| h == hostnqn),
        }
    }
}

/// One namespace of a subsystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// Namespace ID, 1..=0xFFFF_FFFE.
    pub nsid: u32,
    /// Logical block size in bytes: 512 or 4096.
    pub block_size: u32,
    /// Namespace size in bytes: non-zero, a multiple of `block_size`. For a file backend without
    /// `size` and for a block backend it is the length found at load time.
    pub size_bytes: u64,
    /// Where the blocks live.
    pub backend: BackendDecl,
    /// Namespace Globally Unique Identifier (Identify Namespace NGUID), never all zero.
    pub nguid: [u8; 16],
    /// Namespace UUID (Namespace Identification Descriptor type 3h), never nil.
    pub uuid: [u8; 16],
    /// The namespace entry (`subsystems[0].namespaces[1]`).
    pub loc: Location,
    /// The backend's path value for file and block backends
    /// (`subsystems[0].namespaces[1].backend.path`), the backend entry otherwise: what the
    /// target names when opening the backend fails.
    pub backend_loc: Location,
}

/// A declared backend. The target opens it; this crate only checks the declaration (and, for
/// file and block backends, that the path exists at load time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendDecl {
    /// Discards writes, reads zeroes.
    Null {
        /// Size in bytes.
        size: u64,
    },
    /// Memory-backed.
    Ram {
        /// Size in bytes.
        size: u64,
        /// Touch every page at start (true), or allocate on first write (false, sparse).
        preallocate: bool,
    },
    /// A regular file.
    File {
        /// Absolute, or relative to the current directory; a relative path in the YAML has been
        /// resolved against the layout file's directory.
        path: PathBuf,
        /// Declared size; `None` means "the file's length" (then `Namespace::size_bytes`
        /// holds the length found at load).
        size: Option<u64>,
        /// Create the file (sparse, `size` bytes) if it does not exist.
        create: bool,
    },
    /// A block device.
    Block {
        /// Device path, resolved like a file backend's.
        path: PathBuf,
    },
}

impl BackendDecl {
    /// The kind's name as spelled in YAML.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Null { .. } => "null",
            Self::Ram { .. } => "ram",
            Self::File { .. } => "file",
            Self::Block { .. } => "block",
        }
    }
}
