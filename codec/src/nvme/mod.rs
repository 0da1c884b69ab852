//! NVMe structures: NVMe Base 2.x, NVMe over Fabrics 1.1 and the NVM Command Set.

pub mod cqe;
pub mod sqe;

pub use cqe::{CQE_LEN, Cqe};
pub use sqe::{SQE_LEN, Sqe};
