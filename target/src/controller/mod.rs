//! The NVMe controller side of the target: one [`ctrl::Controller`] per association, and the
//! command sets it executes once the transport has gathered a command and its data.
//!
//! - [`exec`]: dispatch by queue and opcode, the controller's state checks (CC.EN, queue type);
//! - [`fabrics`]: Connect, Property Get/Set, Disconnect (NVMe over Fabrics);
//! - [`auth`]: in-band authentication (DH-HMAC-CHAP) of each queue after its Connect;
//! - [`admin`]: the admin command set (Identify, Get Log Page, features, AER, keep-alive);
//! - [`discovery`]: the discovery controller's log page;
//! - [`io`]: the NVM command set (Read, Write, Flush, Write Zeroes, Dataset Management);
//! - [`identify`], [`logpage`]: the structures those commands return;
//! - [`status`]: NVMe completion statuses the target returns.

pub mod admin;
pub mod auth;
pub mod ctrl;
pub mod discovery;
pub mod exec;
pub mod fabrics;
pub mod identify;
pub mod io;
pub mod logpage;
pub mod status;
