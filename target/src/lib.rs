//! The Tessera NVMe/TCP target: transport, controllers, namespaces; and the initiator that the
//! bench tool, the tests and (later) server-to-server forwarding use.
//!
//! Request flow: `transport` (one task per connection) decodes PDUs with `codec`, parses each
//! command (`codec::nvme::cmd`), gathers its data (in-capsule or R2T), and hands it to `exec`,
//! which dispatches to `fabrics`, `admin`/`discovery` or `io`; namespaces reach their blocks
//! through the `volume::Volume` trait.

pub mod admin;
pub mod bufpool;
pub mod busypoll;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod ctrl;
pub mod discovery;
pub mod exec;
pub mod fabrics;
pub mod gate;
pub mod generation;
pub mod identify;
pub mod initiator;
pub mod io;
pub mod logpage;
pub mod namespace;
pub mod server;
pub mod status;
pub mod subsys;
pub mod transport;
pub mod volume;
