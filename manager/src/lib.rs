//! The management service: the cluster map, its generation, and the control API.
//!
//! - [`map`]: the map's JSON types and lookups (what the target routes with);
//! - [`plan`]: changes to a map (pure);
//! - [`coord`]: the two-phase publication state machine (sans-I/O);
//! - `store`: the durable copy of the map (redb; feature `server`);
//! - `server`: the control API (HTTP + JSON; feature `server`);
//! - [`api`]: request and answer bodies of the control API;
//! - [`credential`]: the control API's token files;
//! - [`client`]: the control API's client, used by the target and the `tessera` CLI.
#![forbid(unsafe_code)]

pub mod api;
pub mod client;
pub mod coord;
pub mod credential;
pub mod map;
pub mod plan;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod store;
