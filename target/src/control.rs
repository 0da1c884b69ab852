//! Live reconfiguration of a standalone target and its local control interface.
//!
//! [`LiveConfig`] holds the layout in force. A reload (SIGHUP, or `reload` on the control
//! socket) re-reads the layout file the target was started with; `apply` takes a layout's text
//! from the caller. Either way the new layout is validated whole (YAML, then the change against
//! the layout in force, then every new listener bound and every new backend opened) before
//! anything changes: a layout with an error changes nothing, and the error
//! (`FILE:LINE:COL: field: message`) is logged and returned. Then the difference is applied
//! (`config::PreparedChange::apply`, `server::Portals`): connections the change does not
//! concern are left alone.
//!
//! The control interface is a Unix stream socket speaking line-delimited JSON: one request
//! object per line, one response object per line (docs/reload.md has the protocol).
//! [`request`] is its client (the `tessera target` commands and the tests use it).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::config::{self, ConfigError};
use crate::server::{ConnInfo, Portals};
use crate::subsystem::{HostPolicy, Registry, lock};

/// Default directory of control sockets when the service manager gives none
/// (`RUNTIME_DIRECTORY`).
pub const DEFAULT_CONTROL_DIR: &str = "/run/tessera";

/// Mode of the control socket: whoever can use it can reconfigure the target, so only its
/// owner (the user the daemon runs as).
pub const CONTROL_SOCKET_MODE: u32 = 0o600;

/// Longest request line: a layout is at most `yaml::LAYOUT_BYTES_MAX` bytes, and JSON escaping
/// can grow a text up to six times (`\u00XX` for control characters).
pub const REQUEST_BYTES_MAX: usize = 6 * yaml::LAYOUT_BYTES_MAX + 4096;

/// Control clients served at once; more wait in the socket's backlog.
pub const CLIENTS_MAX: usize = 8;

/// How long a client may take to send its request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`request`] waits for the target's answer (a reload may open large backends).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);

// -------------------------------------------------------------------------------------------
// Service manager hooks
// -------------------------------------------------------------------------------------------

/// Called once as a reload or apply starts, before anything is read. The one place where the
/// service manager is told that the daemon is reloading (systemd: `RELOADING=1` with
/// `MONOTONIC_USEC`).
fn on_reload_begin() {
    tracing::debug!("reload begins");
    crate::notify::reloading();
}

/// Called once as a reload or apply ends, whether it was applied or refused (systemd:
/// `READY=1` again, with a `STATUS=` line).
fn on_reload_end() {
    tracing::debug!("reload ends");
    crate::notify::ready();
}

// -------------------------------------------------------------------------------------------
// The layout in force and how it changes
// -------------------------------------------------------------------------------------------

/// The layout a standalone target serves, and what changes it.
pub struct LiveConfig {
    registry: Arc<Registry>,
    portals: Arc<Portals>,
    /// The layout file the target was started with (`None`: the embedded default layout).
    path: Option<PathBuf>,
    /// The layout in force. Held across a whole reload: reloads run one at a time.
    current: tokio::sync::Mutex<yaml::Layout>,
}

impl LiveConfig {
    /// `layout` is what the target serves now (read from `path`, if any).
    pub fn new(
        registry: Arc<Registry>,
        portals: Arc<Portals>,
        layout: yaml::Layout,
        path: Option<PathBuf>,
    ) -> Self {
        Self {
            registry,
            portals,
            path,
            current: tokio::sync::Mutex::new(layout),
        }
    }

    /// The layout file reloads re-read.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Re-reads the layout file the target was started with and applies the difference.
    /// Returns one line per change (none: the file declares what is served), or the error
    /// that kept the file from being applied (nothing changed).
    pub async fn reload(&self) -> Result<Vec<String>, String> {
        on_reload_begin();
        let r = match &self.path {
            None => Err(
                "no layout file to re-read: the target serves its embedded default \
                         layout (start it with --config FILE)"
                    .to_string(),
            ),
            Some(p) => {
                let p = p.clone();
                match tokio::task::spawn_blocking(move || yaml::load(&p)).await {
                    Ok(Ok(layout)) => self.apply_layout(layout).await,
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(format!("reading the layout failed: {e}")),
                }
            }
        };
        self.log_outcome("reload", &r);
        on_reload_end();
        r
    }

    /// Applies a layout given as text; `source` names it in errors and locates relative
    /// backend paths (the caller's absolute path of the file). Later reloads re-read the file
    /// the target was started with, not this one.
    pub async fn apply_text(&self, source: &str, text: &str) -> Result<Vec<String>, String> {
        on_reload_begin();
        let r = match yaml::parse_str(source, text) {
            Ok(layout) => self.apply_layout(layout).await,
            Err(e) => Err(e.to_string()),
        };
        self.log_outcome("apply", &r);
        on_reload_end();
        r
    }

    fn log_outcome(&self, what: &str, r: &Result<Vec<String>, String>) {
        crate::metrics::count_reload(r.is_ok());
        match r {
            Ok(changes) if changes.is_empty() => {
                tracing::info!("{what}: the layout declares what is served; nothing changed");
            }
            Ok(changes) => {
                for c in changes {
                    tracing::info!("{what}: {c}");
                }
            }
            Err(e) => {
                tracing::error!("{what} refused, the configuration in force is unchanged: {e}")
            }
        }
    }

    /// Validates `new` against the layout in force, prepares it whole, then applies it.
    async fn apply_layout(&self, new: yaml::Layout) -> Result<Vec<String>, String> {
        let mut current = self.current.lock().await;
        let diff = config::diff(&current, &new).map_err(|e| e.to_string())?;
        if diff.is_empty() {
            *current = new;
            return Ok(Vec::new());
        }
        // Bind the new portals first: "address in use" must refuse the change before any
        // backend is opened or anything served changes.
        let mut bound = Vec::new();
        for l in &diff.listeners_added {
            match Portals::bind(l.socket_addr()).await {
                Ok(sock) => bound.push(sock),
                Err(e) => {
                    return Err(ConfigError {
                        loc: l.loc.clone(),
                        message: e.to_string(),
                    }
                    .to_string());
                }
            }
        }
        // Opening backends may block (files, devices, preallocated RAM).
        let prepared = tokio::task::spawn_blocking(move || config::prepare(diff))
            .await
            .map_err(|e| format!("opening backends failed: {e}"))?
            .map_err(|e| e.to_string())?;
        let changes = prepared.diff.describe();
        let discovery = prepared.diff.changes_discovery();
        let closing = prepared.diff.listeners_removed.clone();
        let removed = prepared.apply(&self.registry);
        for sock in bound {
            self.portals
                .serve(sock)
                .map_err(|e| format!("a bound listener has no address: {e}"))?;
        }
        for addr in closing {
            if let Some(n) = self.portals.close(addr).await {
                tracing::info!(%addr, connections = n, "listener closed");
            }
        }
        if discovery {
            self.registry.bump_genctr();
        }
        if removed.controllers > 0 {
            tracing::info!(
                controllers = removed.controllers,
                "controllers torn down by the change"
            );
        }
        // Data written to removed namespaces reaches their backends before they are dropped.
        if !removed.namespaces.is_empty() {
            tokio::spawn(async move {
                for ns in removed.namespaces {
                    if let Err(e) = ns.volume.flush().await {
                        tracing::error!(nsid = ns.nsid, error = %e, "flush of a removed namespace failed");
                    }
                }
            });
        }
        *current = new;
        Ok(changes)
    }

    /// What the target serves now.
    pub fn status(&self) -> Status {
        let ctrl = |c: &crate::controller::ctrl::Controller| {
            let mut io_queues: Vec<u16> = lock(&c.io_queues).iter().copied().collect();
            io_queues.sort_unstable();
            ControllerStatus {
                cntlid: c.cntlid,
                hostnqn: c.hostnqn.clone(),
                io_queues,
                kato_ms: c.kato_ms(),
            }
        };
        let sorted = |mut v: Vec<ControllerStatus>| {
            v.sort_by_key(|c| c.cntlid);
            v
        };
        let subsystems = self
            .registry
            .subsystems()
            .values()
            .map(|s| {
                let (allow_any_host, hosts) = match s.host_policy() {
                    HostPolicy::Any => (true, Vec::new()),
                    HostPolicy::Only(v) => (false, v),
                };
                SubsystemStatus {
                    nqn: s.nqn.clone(),
                    serial: s.serial.clone(),
                    model: s.model.clone(),
                    allow_any_host,
                    hosts,
                    namespaces: s
                        .namespaces()
                        .values()
                        .map(|n| NamespaceStatus {
                            nsid: n.nsid,
                            block_size: n.block_size,
                            size_bytes: n.nlbas << n.lba_shift,
                            nguid: yaml::hex16(&n.nguid),
                            uuid: yaml::uuid_string(&n.uuid),
                        })
                        .collect(),
                    controllers: sorted(s.controllers().iter().map(|c| ctrl(c)).collect()),
                }
            })
            .collect();
        let mut connections = self.portals.connections();
        connections.sort_by_key(|c| c.id);
        Status {
            config: self.path.as_ref().map(|p| p.display().to_string()),
            generation: self.registry.generation.current(),
            genctr: self.registry.genctr(),
            listeners: self.portals.addrs(),
            subsystems,
            discovery_controllers: sorted(
                self.registry
                    .discovery
                    .controllers()
                    .iter()
                    .map(|c| ctrl(c))
                    .collect(),
            ),
            connections,
        }
    }
}

// -------------------------------------------------------------------------------------------
// The protocol
// -------------------------------------------------------------------------------------------

/// One request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// What the target serves.
    Status,
    /// Re-read the layout file the target was started with and apply the difference.
    Reload,
    /// Apply this layout (`yaml`: its text; `source`: its path, for errors and relative
    /// backend paths).
    Apply { source: String, yaml: String },
}

/// One response line: `ok` and, for `status`, the status; for `reload` and `apply`, the
/// changes made (one line each, none when nothing differed); on failure, the error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

impl Response {
    fn changes(r: Result<Vec<String>, String>) -> Self {
        match r {
            Ok(c) => Self {
                ok: true,
                changes: Some(c),
                ..Self::default()
            },
            Err(e) => Self::error(e),
        }
    }

    fn error(e: String) -> Self {
        Self {
            ok: false,
            error: Some(e),
            ..Self::default()
        }
    }
}

/// What a target serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The layout file reloads re-read (absent: the embedded default layout).
    pub config: Option<String>,
    /// The map generation stamped commands are checked against.
    pub generation: u64,
    /// The discovery log's generation counter.
    pub genctr: u64,
    pub listeners: Vec<SocketAddr>,
    pub subsystems: Vec<SubsystemStatus>,
    pub discovery_controllers: Vec<ControllerStatus>,
    pub connections: Vec<ConnInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubsystemStatus {
    pub nqn: String,
    pub serial: String,
    pub model: String,
    pub allow_any_host: bool,
    /// The allowed hosts (empty when any host is allowed).
    pub hosts: Vec<String>,
    pub namespaces: Vec<NamespaceStatus>,
    pub controllers: Vec<ControllerStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceStatus {
    pub nsid: u32,
    pub block_size: u32,
    pub size_bytes: u64,
    /// 32 hex digits.
    pub nguid: String,
    /// 8-4-4-4-12 form.
    pub uuid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerStatus {
    pub cntlid: u16,
    pub hostnqn: String,
    /// QIDs of its connected I/O queues.
    pub io_queues: Vec<u16>,
    pub kato_ms: u32,
}

/// Answers one request line.
async fn answer(live: &LiveConfig, line: &str) -> Response {
    match serde_json::from_str::<Request>(line) {
        Err(e) => Response::error(format!(
            "bad request: {e} (expected one JSON object per line: {{\"op\":\"status\"}}, \
             {{\"op\":\"reload\"}} or {{\"op\":\"apply\",\"source\":PATH,\"yaml\":TEXT}})"
        )),
        Ok(Request::Status) => Response {
            ok: true,
            status: Some(live.status()),
            ..Response::default()
        },
        Ok(Request::Reload) => Response::changes(live.reload().await),
        Ok(Request::Apply { source, yaml }) => {
            Response::changes(live.apply_text(&source, &yaml).await)
        }
    }
}

// -------------------------------------------------------------------------------------------
// The socket
// -------------------------------------------------------------------------------------------

/// The default control socket of a target started with `config` (`None`: the embedded
/// default layout): `<dir>/<file stem>.sock`, where `<dir>` is the first directory of
/// `RUNTIME_DIRECTORY` (systemd's `RuntimeDirectory=`) or [`DEFAULT_CONTROL_DIR`].
pub fn default_socket_path(config: Option<&Path>) -> PathBuf {
    let dir = std::env::var_os("RUNTIME_DIRECTORY")
        .and_then(|v| {
            v.to_str()
                .and_then(|s| s.split(':').next())
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_DIR));
    let name = config
        .and_then(Path::file_stem)
        .and_then(|s| s.to_str())
        .unwrap_or("default");
    dir.join(format!("{name}.sock"))
}

/// A control socket being served; [`ControlSocket::close`] stops it and removes the file.
pub struct ControlSocket {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl ControlSocket {
    /// Creates the socket at `path` (mode [`CONTROL_SOCKET_MODE`], its directory created if
    /// missing) and serves `live` on it. A stale socket file (nobody answers) is replaced; a
    /// live one is an error: another target serves it.
    pub fn start(path: &Path, live: Arc<LiveConfig>) -> std::io::Result<Self> {
        let listener = bind_socket(path)?;
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let task = tokio::spawn(serve_socket(listener, live));
        tracing::info!(path = %path.display(), "control socket ready");
        Ok(Self {
            path: path.to_path_buf(),
            task,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops serving and removes the socket file.
    pub fn close(self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

fn bind_socket(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::io::{Error, ErrorKind};
    let err = |kind: ErrorKind, m: String| Error::new(kind, format!("{}: {m}", path.display()));
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(err(
                    ErrorKind::AlreadyExists,
                    "exists and is not a socket; not replacing it".into(),
                ));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(err(
                    ErrorKind::AddrInUse,
                    "another process answers on this control socket (another tessera-target?)"
                        .into(),
                ));
            }
            std::fs::remove_file(path)
                .map_err(|e| err(e.kind(), format!("cannot remove the stale socket: {e}")))?;
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(err(e.kind(), e.to_string())),
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| {
        err(
            e.kind(),
            format!("cannot create directory {}: {e}", dir.display()),
        )
    })?;
    // Bind under a temporary name, restrict it, then rename: the socket is never reachable
    // with the umask's wider mode.
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("control");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let l = std::os::unix::net::UnixListener::bind(&tmp)
        .map_err(|e| err(e.kind(), format!("cannot bind: {e}")))?;
    let done = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(CONTROL_SOCKET_MODE))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = done {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e.kind(), format!("cannot set up the socket: {e}")));
    }
    l.set_nonblocking(true)?;
    Ok(l)
}

async fn serve_socket(listener: tokio::net::UnixListener, live: Arc<LiveConfig>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(CLIENTS_MAX));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                let live = Arc::clone(&live);
                tokio::spawn(async move {
                    serve_client(stream, &live).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves one client: request lines until it closes, each answered in turn.
async fn serve_client(stream: tokio::net::UnixStream, live: &LiveConfig) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = tokio::io::BufReader::new(rd);
    loop {
        let mut line = Vec::new();
        let read = tokio::time::timeout(
            REQUEST_TIMEOUT,
            (&mut rd)
                .take(u64::try_from(REQUEST_BYTES_MAX).unwrap_or(u64::MAX))
                .read_until(b'\n', &mut line),
        )
        .await;
        let response = match read {
            Err(_) => return, // Idle client.
            Ok(Err(_) | Ok(0)) => return,
            Ok(Ok(_)) if !line.ends_with(b"\n") && line.len() >= REQUEST_BYTES_MAX => {
                let r = Response::error(format!("request longer than {REQUEST_BYTES_MAX} bytes"));
                let _ = write_response(&mut wr, &r).await;
                return;
            }
            Ok(Ok(_)) => match std::str::from_utf8(&line) {
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => answer(live, text.trim()).await,
                Err(_) => Response::error("bad request: not UTF-8".to_string()),
            },
        };
        if write_response(&mut wr, &response).await.is_err() {
            return;
        }
    }
}

async fn write_response(
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    r: &Response,
) -> std::io::Result<()> {
    let mut text = serde_json::to_string(r).map_err(std::io::Error::other)?;
    text.push('\n');
    wr.write_all(text.as_bytes()).await
}

/// Sends one request to the control socket at `path` and returns its response (blocking).
pub fn request(path: &Path, req: &Request) -> Result<Response, String> {
    let show = path.display();
    let mut s = std::os::unix::net::UnixStream::connect(path)
        .map_err(|e| format!("{show}: cannot connect to the control socket: {e}"))?;
    s.set_read_timeout(Some(RESPONSE_TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(REQUEST_TIMEOUT)))
        .map_err(|e| format!("{show}: {e}"))?;
    let mut line = serde_json::to_string(req).map_err(|e| format!("request: {e}"))?;
    line.push('\n');
    s.write_all(line.as_bytes())
        .map_err(|e| format!("{show}: sending the request: {e}"))?;
    let mut text = String::new();
    BufReader::new(&s)
        .read_line(&mut text)
        .map_err(|e| format!("{show}: reading the response: {e}"))?;
    if text.is_empty() {
        return Err(format!(
            "{show}: the target closed the socket without answering"
        ));
    }
    serde_json::from_str(&text).map_err(|e| format!("{show}: bad response: {e}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_read_as_documented() {
        for (req, text) in [
            (Request::Status, r#"{"op":"status"}"#),
            (Request::Reload, r#"{"op":"reload"}"#),
            (
                Request::Apply {
                    source: "/etc/tessera/a.yaml".into(),
                    yaml: "x: 1\n".into(),
                },
                r#"{"op":"apply","source":"/etc/tessera/a.yaml","yaml":"x: 1\n"}"#,
            ),
        ] {
            assert_eq!(serde_json::to_string(&req).unwrap(), text);
            assert_eq!(serde_json::from_str::<Request>(text).unwrap(), req);
        }
        assert!(serde_json::from_str::<Request>(r#"{"op":"format"}"#).is_err());
        assert!(
            serde_json::from_str::<Request>(r#"{"op":"apply","yaml":"","source":"","x":1}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"apply","yml":""}"#).is_err());
    }

    #[test]
    fn default_socket_is_named_after_the_layout_file() {
        // RUNTIME_DIRECTORY is not set under cargo test.
        if std::env::var_os("RUNTIME_DIRECTORY").is_none() {
            assert_eq!(
                default_socket_path(Some(Path::new("/etc/tessera/lab.yaml"))),
                Path::new("/run/tessera/lab.sock")
            );
            assert_eq!(
                default_socket_path(None),
                Path::new("/run/tessera/default.sock")
            );
        }
    }

    #[test]
    fn a_live_socket_is_not_taken_over_and_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub").join("t.sock");
        let l = bind_socket(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, CONTROL_SOCKET_MODE);
        let e = bind_socket(&p).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
        drop(l); // The file stays: stale.
        assert!(p.exists());
        let _l = bind_socket(&p).unwrap();
        let f = dir.path().join("plain");
        std::fs::write(&f, b"x").unwrap();
        assert_eq!(
            bind_socket(&f).unwrap_err().kind(),
            std::io::ErrorKind::AlreadyExists
        );
    }
}
