//! The Tessera NVMe/TCP target daemon (`tessera-target`) and the initiator that its cluster
//! mode forwards with (the `tessera` tool and the tests use it too).
//!
//! The modules follow the parts of the NVMe over Fabrics model:
//! - [`transport`]: NVMe/TCP: one task per connection decodes PDUs with the `codec` crate,
//!   gathers each command's data (in-capsule or R2T) and writes responses; its buffer pool and
//!   the reactors' busy polling;
//! - [`controller`]: controllers and the command sets they execute (fabrics, admin,
//!   discovery, NVM I/O), with the Identify and log page structures;
//! - [`subsystem`]: subsystems, their namespaces, allowed hosts, and the volumes (the
//!   [`subsystem::volume::Volume`] trait) that namespaces read and write;
//! - [`cluster`]: cluster mode: the map from the manager, the generation check and gate,
//!   routing of I/O to the server that owns an extent, and extent moves;
//! - [`initiator`]: an NVMe/TCP host (controllers, queues, the polled `DirectQueue`);
//! - [`server`]: reactors and listeners; [`config`]: a YAML layout to a subsystem registry,
//!   and the difference between two layouts; [`control`]: live reconfiguration (SIGHUP,
//!   reload, apply) and the local control socket; [`notify`]: readiness, status and the
//!   reactors' watchdog for the service manager; [`metrics`]: Prometheus metrics over HTTP.
//!
//! docs/design.md follows one command from the socket to the backend and back, file by file.
//!
//! No `unsafe` here: system calls go through `hw::sys` (CPU affinity) or std and tokio. The two
//! exceptions are raw socket calls where the call itself is the point, each allowed locally
//! with its `// SAFETY:` argument: the transport's `writev` of backend memory (which must never
//! become a Rust reference) and the polled initiator's `recv` into a buffer's spare capacity.
#![deny(unsafe_code)]

pub mod cluster;
pub mod config;
pub mod control;
pub mod controller;
pub mod initiator;
pub mod metrics;
pub mod notify;
pub mod server;
pub mod subsystem;
pub mod transport;
