//! What Tessera's daemons (`tessera-target`, `tessera-manager`) share to run under a service
//! manager: the sd_notify protocol with a progress-checked watchdog ([`notify`]) and log
//! formats ([`log`]).

pub mod log;
pub mod notify;
