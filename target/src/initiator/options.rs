//! Options of a connection, a queue and a controller, with Linux's defaults.

use std::sync::Arc;
use std::time::Duration;

use codec::nvme::fabrics::CNTLID_DYNAMIC;
use codec::pdu::params::MAX_PDU_LEN_CAP;

use super::auth::DhchapSecrets;
use super::{
    ADMIN_SQSIZE, COMMAND_TIMEOUT_DEFAULT, CONNECT_TIMEOUT_DEFAULT, DEFAULT_IO_INCAPSULE_DATA,
    DEFAULT_IO_SQSIZE, DEFAULT_KATO_MS,
};

/// Transport options of one TCP connection (one queue).
#[derive(Debug, Clone)]
pub struct TransportOptions {
    /// Ask for header digests (ICReq HDGST_ENABLE; `nvme connect -g`).
    pub hdgst: bool,
    /// Ask for data digests (ICReq DDGST_ENABLE; `nvme connect -G`).
    pub ddgst: bool,
    /// ICReq MAXR2T, 0's based: outstanding R2Ts per command the target may issue. Linux asks
    /// for 0 (one R2T at a time); the initiator answers any number in order anyway.
    pub maxr2t: u32,
    /// Largest PDU accepted from the target. A PDU is buffered whole before it is handled and
    /// the target chooses how much read data one C2HData carries, so this defaults to the
    /// codec's hard cap (16 MiB).
    pub max_pdu_len: u32,
    /// TCP connect plus ICReq/ICResp plus Fabrics Connect.
    pub connect_timeout: Duration,
    /// Per-command timeout (`None`: wait forever). Asynchronous Event Requests never time out.
    pub command_timeout: Option<Duration>,
}

impl Default for TransportOptions {
    fn default() -> Self {
        Self {
            hdgst: false,
            ddgst: false,
            maxr2t: 0,
            max_pdu_len: MAX_PDU_LEN_CAP,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            command_timeout: Some(COMMAND_TIMEOUT_DEFAULT),
        }
    }
}

/// Everything [`super::Queue::connect_tcp`] needs: transport options plus the Fabrics Connect
/// fields (NVMe Base 2.0, section 6.3, Figures 548–549).
#[derive(Debug, Clone)]
pub struct QueueOptions {
    pub transport: TransportOptions,
    /// SUBNQN of the Connect data.
    pub subnqn: String,
    /// HOSTNQN of the Connect data.
    pub hostnqn: String,
    /// HOSTID of the Connect data (the same for every queue of a host).
    pub hostid: [u8; 16],
    /// Queue ID: 0 for the admin queue.
    pub qid: u16,
    /// SQSIZE, 0's based (31 on the admin queue as Linux; queue size - 1 on I/O queues).
    pub sqsize: u16,
    /// CNTLID of the Connect data: FFFFh (dynamic) on the admin queue, the admin Connect's
    /// answer on I/O queues.
    pub cntlid: u16,
    /// Keep Alive Timeout in ms (admin queue only; Linux sends 0 on I/O queues).
    pub kato_ms: u32,
    /// CATTR bit 2, "disable SQ flow control" (Linux sets it): SQHD is not tracked, and the
    /// queue may hold SQSIZE + 1 commands instead of SQSIZE.
    pub disable_sq_flow_control: bool,
    /// Most in-capsule write data on an I/O queue: IOCCSZ * 16 - 64 from Identify Controller
    /// (see [`incapsule_data_from_ioccsz`]). The admin queue and Fabrics commands always
    /// allow 8 KiB.
    pub incapsule_data_max: u32,
    /// Generation stamped by default on this queue's I/O helpers (0: unstamped).
    pub generation: u64,
    /// DH-HMAC-CHAP secrets, used when the Connect response asks for authentication.
    pub dhchap: Option<Arc<DhchapSecrets>>,
}

impl QueueOptions {
    /// Options for an admin queue (QID 0, SQSIZE 31, dynamic CNTLID, KATO 5 s).
    pub fn admin(subnqn: &str, hostnqn: &str) -> Self {
        Self {
            transport: TransportOptions::default(),
            subnqn: subnqn.to_owned(),
            hostnqn: hostnqn.to_owned(),
            hostid: hostid_from_nqn(hostnqn),
            qid: 0,
            sqsize: ADMIN_SQSIZE,
            cntlid: CNTLID_DYNAMIC,
            kato_ms: DEFAULT_KATO_MS,
            disable_sq_flow_control: true,
            incapsule_data_max: DEFAULT_IO_INCAPSULE_DATA,
            generation: 0,
            dhchap: None,
        }
    }

    /// Options for I/O queue `qid` of controller `cntlid` (KATO 0, as Linux).
    pub fn io(subnqn: &str, hostnqn: &str, cntlid: u16, qid: u16, sqsize: u16) -> Self {
        Self {
            qid,
            sqsize,
            cntlid,
            kato_ms: 0,
            ..Self::admin(subnqn, hostnqn)
        }
    }
}

/// Options of [`super::Controller::connect`] (and the I/O queues it connects).
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    pub transport: TransportOptions,
    /// HOSTID; `None` derives a stable one from the host NQN ([`hostid_from_nqn`]).
    pub hostid: Option<[u8; 16]>,
    /// KATO of the admin Connect in ms (Linux: 5 s; 0 for a non-persistent discovery
    /// controller).
    pub kato_ms: u32,
    /// Send Keep Alive every KATO/2 from a background task, as Linux does. Turn it off to
    /// test KATO expiry.
    pub keep_alive: bool,
    /// See [`QueueOptions::disable_sq_flow_control`].
    pub disable_sq_flow_control: bool,
    /// See [`QueueOptions::incapsule_data_max`] (I/O queues).
    pub io_incapsule_data_max: u32,
    /// Default I/O queue size for [`super::Controller::connect_io_queue`] callers (SQSIZE + 1).
    pub io_queue_size: u16,
    /// Generation stamped by default on the I/O queues' helpers (0: unstamped).
    pub generation: u64,
    /// DH-HMAC-CHAP secrets for the admin queue and every I/O queue (`nvme connect
    /// --dhchap-secret`, `--dhchap-ctrl-secret`); `None`: a target that asks for
    /// authentication is refused with [`super::InitiatorError::AuthRequired`].
    pub dhchap: Option<Arc<DhchapSecrets>>,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        Self {
            transport: TransportOptions::default(),
            hostid: None,
            kato_ms: DEFAULT_KATO_MS,
            keep_alive: true,
            disable_sq_flow_control: true,
            io_incapsule_data_max: DEFAULT_IO_INCAPSULE_DATA,
            io_queue_size: DEFAULT_IO_SQSIZE + 1,
            generation: 0,
            dhchap: None,
        }
    }
}

/// In-capsule data bytes an I/O queue allows for Identify Controller IOCCSZ (NVMe over Fabrics:
/// IOCCSZ is the capsule size in 16-byte units, the 64-byte SQE included; Linux
/// `cmnd_capsule_len - sizeof(struct nvme_command)`).
pub fn incapsule_data_from_ioccsz(ioccsz: u32) -> u32 {
    ioccsz.saturating_mul(16).saturating_sub(64)
}

/// A stable HOSTID for a host NQN: the NQN's CRC32C under four seeds, with the UUID version
/// (4) and variant bits set so that it reads as a well-formed UUID. Linux reads it from
/// /etc/nvme/hostid; a test host has none, and the same NQN must keep the same HOSTID.
pub fn hostid_from_nqn(hostnqn: &str) -> [u8; 16] {
    let mut id = [0u8; 16];
    for (i, chunk) in id.chunks_exact_mut(4).enumerate() {
        let mut seeded = Vec::with_capacity(hostnqn.len() + 1);
        // i < 4: the seed byte is exact.
        seeded.push(u8::try_from(i).unwrap_or(0));
        seeded.extend_from_slice(hostnqn.as_bytes());
        chunk.copy_from_slice(&codec::pdu::crc32c(&seeded).to_le_bytes());
    }
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}
