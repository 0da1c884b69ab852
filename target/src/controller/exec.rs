//! Transport-independent command execution: the one ops table between a transport's queue and
//! the controller (as Linux nvmet's transports reach its core through one table).
//!
//! The transport parses a command, asks [`resolve`] where its data goes (and which namespace it
//! addresses, looked up once), gathers the data, then calls [`execute`], which returns either a
//! completion or a future of one.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use codec::nvme::Status;
use codec::nvme::cmd::{Command, DataDir, IoCommand};

use super::{admin, auth, discovery, fabrics, io};
use crate::controller::ctrl::Controller;
use crate::subsystem::namespace::Namespace;
use crate::subsystem::{Registry, lock};
use crate::transport::bufpool::BufPool;

/// The result of a command.
#[derive(Debug, Clone, Default)]
pub struct Completion {
    pub status: Status,
    pub dw0: u32,
    pub dw1: u32,
    /// Data for the host (controller-to-host commands), sent before the completion.
    pub data: Option<Bytes>,
    /// Or the same straight from the backend's memory (zero-copy reads of RAM and null).
    pub mapped: Option<hw::Mapped>,
    /// Close the connection once this completion is sent (Disconnect).
    pub close_after: bool,
}

impl Completion {
    pub fn ok() -> Self {
        Self::default()
    }

    pub fn status(status: Status) -> Self {
        Self {
            status,
            ..Self::default()
        }
    }

    pub fn dw0(dw0: u32) -> Self {
        Self {
            dw0,
            ..Self::default()
        }
    }

    pub fn data(data: Bytes) -> Self {
        Self {
            data: Some(data),
            ..Self::default()
        }
    }

    pub fn mapped(data: hw::Mapped) -> Self {
        Self {
            mapped: Some(data),
            ..Self::default()
        }
    }
}

impl From<Result<Completion, Status>> for Completion {
    fn from(r: Result<Completion, Status>) -> Self {
        r.unwrap_or_else(Completion::status)
    }
}

/// A completion that is not ready yet (I/O on a backend, an AER waiting for an event).
pub type PendingCompletion = Pin<Box<dyn Future<Output = Completion> + Send>>;

/// What [`execute`] produced.
pub enum Outcome {
    Done(Completion),
    Pending(PendingCompletion),
    /// A Connect succeeded: the queue is now bound to a controller.
    Connected(Completion),
}

impl From<Completion> for Outcome {
    fn from(c: Completion) -> Self {
        Outcome::Done(c)
    }
}

impl From<Result<Completion, Status>> for Outcome {
    fn from(r: Result<Completion, Status>) -> Self {
        Outcome::Done(r.into())
    }
}

impl From<Status> for Outcome {
    fn from(s: Status) -> Self {
        Outcome::Done(Completion::status(s))
    }
}

/// A queue (one connection) as the core sees it.
#[derive(Default)]
pub struct Queue {
    pub qid: u16,
    /// SQSIZE from Connect (0's based); 0 before Connect.
    pub sqsize: u16,
    pub ctrl: Option<Arc<Controller>>,
    /// Connect CATTR "disable SQ flow control": C2HData may carry SUCCESS instead of a response.
    pub sq_flow_disabled: bool,
    /// An internal (server-to-server) connection: every I/O command must be stamped.
    pub internal: bool,
    /// Data buffers for reads on this queue, recycled after they are sent.
    pub pool: BufPool,
    /// In-band authentication this queue must pass (None: not required); see `auth`.
    pub auth: Option<Box<super::auth::Session>>,
    /// The local address the connection was accepted at (which portal), when known.
    pub local: Option<std::net::SocketAddr>,
}

/// Commands a queue holds before Connect sets its real size (Connect is the only one legal).
pub const UNCONNECTED_DEPTH: usize = 4;

impl Queue {
    /// Commands the queue may hold at once: SQSIZE + 1 entries.
    pub fn depth_limit(&self) -> usize {
        if self.ctrl.is_none() {
            UNCONNECTED_DEPTH
        } else {
            usize::from(self.sqsize) + 1
        }
    }
}

/// Where a command's data goes and how much, before anything runs, and for an NVM I/O command
/// the namespace it addresses: looked up here once, then carried to [`execute`].
pub fn resolve(queue: &Queue, cmd: &Command) -> Result<(DataDir, Option<Arc<Namespace>>), Status> {
    match cmd {
        Command::Fabrics(f) => Ok((f.data_dir(), None)),
        Command::Admin(a) => Ok((a.data_dir(), None)),
        // A Flush may name every namespace (NSID FFFFFFFFh), which io.rs handles.
        Command::Io(IoCommand::Flush(f)) if f.nsid == io::NSID_BROADCAST => {
            Ok((DataDir::None, None))
        }
        Command::Io(io) => {
            let ctrl = queue
                .ctrl
                .as_ref()
                .ok_or(Status::CMD_SEQ_ERROR.with_dnr())?;
            // A discovery controller has no namespaces and no NVM command set.
            let subsys = ctrl
                .subsys
                .as_ref()
                .ok_or(Status::INVALID_OPCODE.with_dnr())?;
            let ns = subsys
                .namespace(io.nsid())
                .ok_or(Status::INVALID_NS.with_dnr())?;
            Ok((io.data_dir(ns.block_size), Some(ns)))
        }
    }
}

/// Runs a command whose data (if any) has arrived; `ns` is what [`resolve`] found.
pub fn execute(
    registry: &Arc<Registry>,
    queue: &mut Queue,
    cmd: Command,
    ns: Option<Arc<Namespace>>,
    data: Bytes,
) -> Outcome {
    match cmd {
        Command::Fabrics(f) => fabrics::execute(registry, queue, f, data),
        Command::Admin(a) => {
            let Some(ctrl) = queue.ctrl.clone() else {
                return Status::CMD_SEQ_ERROR.with_dnr().into();
            };
            if let Err(st) = auth::check(queue).and_then(|()| check_enabled(&ctrl)) {
                return st.into();
            }
            if ctrl.is_discovery() {
                discovery::execute(&ctrl, a)
            } else {
                admin::execute(&ctrl, a, data)
            }
        }
        Command::Io(io) => {
            let Some(ctrl) = queue.ctrl.clone() else {
                return Status::CMD_SEQ_ERROR.with_dnr().into();
            };
            if let Err(st) = auth::check(queue).and_then(|()| check_enabled(&ctrl)) {
                return st.into();
            }
            io::execute(&ctrl, queue.internal, ns, io, data, &mut queue.pool)
        }
    }
}

/// Admin and I/O commands need an enabled, ready controller (NVMe Base 2.0, section 3.5.1).
/// Read without a lock: Property Set publishes CC.EN && CSTS.RDY in an atomic.
fn check_enabled(ctrl: &Controller) -> Result<(), Status> {
    if !ctrl.is_ready() {
        return Err(Status::CMD_SEQ_ERROR.with_dnr());
    }
    Ok(())
}

/// A queue's connection ended: an admin queue takes its controller with it (the association
/// ends), an I/O queue frees its QID.
pub fn queue_closed(queue: &Queue) {
    let Some(ctrl) = &queue.ctrl else { return };
    if queue.qid == 0 {
        ctrl.teardown("admin queue closed");
    } else {
        lock(&ctrl.io_queues).remove(&queue.qid);
    }
}
