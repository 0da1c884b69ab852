//! Where a declaration lives, and what is wrong with it.

use std::fmt;

/// A place in a layout file: the file, the 1-based line and column of a node, and the node's
/// field path (`subsystems[0].namespaces[1].nsid`).
///
/// The target keeps these to name the declaration behind a runtime failure ("port in use",
/// "missing file"): `format!("{loc}: address in use")` prints
/// `layout.yaml:3:5: listeners[0]: address in use`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Location {
    /// The layout's source name: the path given to [`crate::load`], or the name given to
    /// [`crate::parse_str`].
    pub file: String,
    /// 1-based line; 0 when the error concerns the whole file (it could not be read).
    pub line: usize,
    /// 1-based column, in characters; 0 when `line` is 0.
    pub column: usize,
    /// Field path from the document root, e.g. `subsystems[0].namespaces[1].nsid`.
    /// `(document)` names the root node, `(syntax)` a YAML syntax error, and it is empty for a
    /// file that could not be read.
    pub field: String,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if self.line != 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        Ok(())
    }
}

/// What kind of mistake a [`LayoutError`] reports, for callers that match on it.
/// The message carries the specifics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The layout file could not be read, is too large or is not UTF-8.
    Io,
    /// The text is not well-formed YAML.
    Syntax,
    /// A mapping declares the same key twice.
    DuplicateKey,
    /// A key that the schema does not define.
    UnknownKey,
    /// A required field is absent.
    MissingField,
    /// A value of the wrong YAML type (a string where an integer belongs, ...).
    WrongType,
    /// An empty file, or more than one YAML document.
    Document,
    /// More entries than the named limit allows.
    TooMany,
    /// NSID 0, NSID 0xFFFFFFFF, or an NSID beyond 32 bits.
    BadNsid,
    /// Two namespaces of one subsystem share an NSID.
    DuplicateNsid,
    /// An NQN that does not follow NVMe Base 2.0 section 4.5, or a reserved one.
    BadNqn,
    /// Two subsystems share an NQN, or a host list names a host twice.
    DuplicateNqn,
    /// A size that does not parse or overflows.
    BadSize,
    /// A size of zero bytes.
    ZeroSize,
    /// A size that is not a whole number of blocks.
    SizeNotMultiple,
    /// A block size other than 512 or 4096.
    BadBlockSize,
    /// A listener address that is not an IP literal.
    BadAddress,
    /// Port 0 or a port beyond 65535.
    BadPort,
    /// Two listeners on the same address and port (or one hidden by a wildcard).
    DuplicateListener,
    /// A serial number or model that is empty, too long or not printable ASCII.
    BadString,
    /// Both or neither of `hosts` and `allow_any_host: true`, or an empty host list.
    HostPolicy,
    /// A malformed or all-zero NGUID or UUID.
    BadId,
    /// Two namespaces share an NGUID or a UUID.
    DuplicateId,
    /// An unknown backend kind, or a backend path of the wrong file type or length.
    BadBackend,
    /// A file or block backend whose path does not exist (and `create` is false).
    MissingFile,
    /// A server id or volume name with characters outside `A-Z a-z 0-9 . _ -`, or too long.
    BadName,
    /// Two servers share an id, or two volumes a name.
    DuplicateName,
    /// A volume names a subsystem the cluster file does not declare.
    UnknownReference,
    /// A replica count of 0 or above the limit.
    BadReplicas,
    /// A transport limit out of its bounds, not a power of two (`max_io_size`) or not a
    /// multiple of 16 (`in_capsule_data_size`).
    BadTransport,
    /// A DH-HMAC-CHAP secret file that cannot be read or is not a `DHHC-1:` secret, or a
    /// subsystem that requires authentication and lists a host without a secret.
    BadSecret,
}

/// A layout that cannot be served, with the place that says so.
///
/// Display: `FILE:LINE:COLUMN: FIELD: message (expected ...)`, e.g.
/// `layout.yaml:7:15: subsystems[0].namespaces[1].nsid: duplicate NSID 1 (first declared at line 4)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutError {
    /// What kind of mistake this is.
    pub kind: ErrorKind,
    /// The offending node.
    pub loc: Location,
    /// What is wrong, usually ending with what was expected in parentheses.
    pub message: String,
}

impl LayoutError {
    pub(crate) fn new(kind: ErrorKind, loc: Location, message: impl Into<String>) -> Self {
        Self {
            kind,
            loc,
            message: message.into(),
        }
    }
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.loc, self.message)
    }
}

impl std::error::Error for LayoutError {}
