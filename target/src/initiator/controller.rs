//! A controller as the host sees it: the admin queue and its CNTLID, with helpers for the
//! bring-up sequence the Linux host runs (Connect, read CAP and VS, set CC.EN, wait for
//! CSTS.RDY, Identify, Set Features Number of Queues, I/O queues) and the admin commands tests need.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use codec::nvme::cmd::{
    AdminCommand, FeatureId, GetFeatures, GetLogPage, Identify, SetFeatures, cns, feature_data_len,
};
use codec::nvme::fabrics::{
    CAP_CSS_IO_SETS, CNTLID_DYNAMIC, Cap, Cc, Csts, PropertyGet, PropertySet, Version, cc_css,
    prop, property_size, shn, shst,
};
use codec::nvme::generation::{
    GENCHK_VERSION, GENERATION_LOG_LEN, GENERATION_LOG_LID, GenCheckInfo, GenerationLog,
};
use codec::nvme::identify::{
    IdentifyController, IdentifyNamespace, NsIdDescriptor, parse_active_ns_list,
    parse_ns_id_descriptors,
};
use codec::nvme::sgl::SglDescriptor;
use codec::nvme::{IDENTIFY_DATA_LEN, Sqe};
use tokio::task::JoinHandle;

use super::ADMIN_SQSIZE;
use super::error::{InitiatorError, Result};
use super::options::{ControllerOptions, QueueOptions, hostid_from_nqn};
use super::queue::{Completion, Queue};

/// How often CSTS is polled while waiting for RDY or SHST.
pub const CSTS_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Bound on a normal shutdown (CC.SHN = 01b until CSTS.SHST = 10b): Linux's default
/// `shutdown_timeout` (5 s) when RTD3E does not say otherwise.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// CC.IOSQES: 64-byte SQEs (2^6), CC.IOCQES: 16-byte CQEs (2^4) — the only sizes NVMe/TCP uses.
pub const CC_IOSQES: u8 = 6;
pub const CC_IOCQES: u8 = 4;

/// An Asynchronous Event (NVMe Base 2.0, section 5.2, Figure 146: completion DW0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsyncEvent {
    /// Asynchronous Event Type, bits 2:0 (2 = Notice).
    pub event_type: u8,
    /// Asynchronous Event Information, bits 15:8 (for Notice: 00h NS attribute changed,
    /// 03h ANA change, F0h discovery log page change).
    pub event_info: u8,
    /// Log Page Identifier to read to clear the event, bits 23:16.
    pub log_page: u8,
    /// The whole DW0.
    pub dw0: u32,
}

impl AsyncEvent {
    /// Event type Notice.
    pub const TYPE_NOTICE: u8 = 2;
    /// Notice: Namespace Attribute Changed.
    pub const NOTICE_NS_ATTR_CHANGED: u8 = 0x00;
    /// Notice: Asymmetric Namespace Access Change.
    pub const NOTICE_ANA_CHANGE: u8 = 0x03;
    /// Notice: Discovery Log Page Change.
    pub const NOTICE_DISCOVERY_LOG_CHANGE: u8 = 0xf0;

    /// Decode completion DW0.
    pub fn from_dw0(dw0: u32) -> Self {
        let b = dw0.to_le_bytes();
        Self {
            event_type: b[0] & 0x7,
            event_info: b[1],
            log_page: b[2],
            dw0,
        }
    }
}

/// The admin queue of one controller, its CNTLID, and what is needed to add I/O queues.
#[derive(Debug)]
pub struct Controller {
    admin: Queue,
    cntlid: u16,
    addr: SocketAddr,
    subnqn: String,
    hostnqn: String,
    hostid: [u8; 16],
    opts: ControllerOptions,
    keep_alive: Option<JoinHandle<()>>,
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(k) = self.keep_alive.take() {
            k.abort();
        }
    }
}

impl Controller {
    /// Connect the admin queue (QID 0, SQSIZE 31, CNTLID FFFFh, KATO from `opts`) and start
    /// the keep-alive task if asked. The controller is not enabled: see [`Controller::enable`].
    pub async fn connect(
        addr: SocketAddr,
        subnqn: &str,
        hostnqn: &str,
        opts: &ControllerOptions,
    ) -> Result<Controller> {
        let hostid = opts.hostid.unwrap_or_else(|| hostid_from_nqn(hostnqn));
        let qopts = QueueOptions {
            transport: opts.transport.clone(),
            subnqn: subnqn.to_owned(),
            hostnqn: hostnqn.to_owned(),
            hostid,
            qid: 0,
            sqsize: ADMIN_SQSIZE,
            cntlid: CNTLID_DYNAMIC,
            kato_ms: opts.kato_ms,
            disable_sq_flow_control: opts.disable_sq_flow_control,
            incapsule_data_max: opts.io_incapsule_data_max,
            generation: 0,
            dhchap: opts.dhchap.clone(),
        };
        let admin = Queue::connect_tcp(addr, &qopts).await?;
        let cntlid = admin.cntlid();
        let keep_alive = (opts.keep_alive && opts.kato_ms > 0).then(|| {
            spawn_keep_alive(
                admin.clone(),
                Duration::from_millis(u64::from(opts.kato_ms) / 2),
            )
        });
        Ok(Controller {
            admin,
            cntlid,
            addr,
            subnqn: subnqn.to_owned(),
            hostnqn: hostnqn.to_owned(),
            hostid,
            opts: opts.clone(),
            keep_alive,
        })
    }

    /// The admin queue (for raw admin commands: [`Queue::submit`]).
    pub fn admin(&self) -> &Queue {
        &self.admin
    }

    /// Controller ID from the admin Connect.
    pub fn cntlid(&self) -> u16 {
        self.cntlid
    }

    /// The target's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// SUBNQN this controller belongs to.
    pub fn subnqn(&self) -> &str {
        &self.subnqn
    }

    /// Our host NQN.
    pub fn hostnqn(&self) -> &str {
        &self.hostnqn
    }

    /// Our HOSTID.
    pub fn hostid(&self) -> [u8; 16] {
        self.hostid
    }

    /// Connect I/O queue `qid` with `sqsize` (0's based) on a new TCP connection, to this
    /// controller (its CNTLID), with the I/O options of the controller.
    pub async fn connect_io_queue(&self, qid: u16, sqsize: u16) -> Result<Queue> {
        Queue::connect_tcp(self.addr, &self.io_queue_options(qid, sqsize)).await
    }

    /// The options [`Controller::connect_io_queue`] connects I/O queue `qid` with (for a
    /// queue of another kind, e.g. a [`super::DirectQueue`]).
    pub fn io_queue_options(&self, qid: u16, sqsize: u16) -> QueueOptions {
        let mut q = QueueOptions::io(&self.subnqn, &self.hostnqn, self.cntlid, qid, sqsize);
        q.transport = self.opts.transport.clone();
        q.hostid = self.hostid;
        q.disable_sq_flow_control = self.opts.disable_sq_flow_control;
        q.incapsule_data_max = self.opts.io_incapsule_data_max;
        q.generation = self.opts.generation;
        q.dhchap = self.opts.dhchap.clone();
        q
    }

    /// Run an admin command built by the codec; an NVMe error status becomes an error.
    pub async fn admin_command(
        &self,
        cmd: &AdminCommand,
        data_out: Option<Bytes>,
        data_in_len: u32,
    ) -> Result<Completion> {
        let sqe = cmd.to_sqe(0, SglDescriptor::transport(0));
        self.admin
            .submit(sqe, data_out, data_in_len)
            .await?
            .into_result()
    }

    async fn submit_ok(&self, sqe: Sqe) -> Result<Completion> {
        self.admin.submit(sqe, None, 0).await?.into_result()
    }

    // -- Properties (Fabrics Property Get/Set, NVMe Base 2.0 sections 6.5-6.6) ----------------

    /// Property Get; 8 bytes for CAP, 4 for the others (and for offsets we do not know).
    pub async fn property_get(&self, offset: u32) -> Result<u64> {
        let size8 = property_size(offset) == Some(8);
        let c = self
            .submit_ok(PropertyGet { size8, offset }.to_sqe(0))
            .await?;
        Ok(if size8 {
            c.cqe.dw0_1()
        } else {
            u64::from(c.dw0())
        })
    }

    /// Property Set; 8 bytes for CAP (read-only anyway), 4 for the others.
    pub async fn property_set(&self, offset: u32, value: u64) -> Result<()> {
        let size8 = property_size(offset) == Some(8);
        self.submit_ok(
            PropertySet {
                size8,
                offset,
                value,
            }
            .to_sqe(0),
        )
        .await
        .map(drop)
    }

    async fn property_get32(&self, offset: u32) -> Result<u32> {
        let v = self.property_get(offset).await?;
        // A 4-byte property: only DW0 was read.
        Ok(u32::try_from(v & 0xffff_ffff).unwrap_or(0))
    }

    /// Controller Capabilities.
    pub async fn cap(&self) -> Result<Cap> {
        Ok(Cap::from_u64(self.property_get(prop::CAP).await?))
    }

    /// Version.
    pub async fn vs(&self) -> Result<Version> {
        Ok(Version::from_u32(self.property_get32(prop::VS).await?))
    }

    /// Controller Configuration.
    pub async fn cc(&self) -> Result<Cc> {
        Ok(Cc::from_u32(self.property_get32(prop::CC).await?))
    }

    /// Controller Status.
    pub async fn csts(&self) -> Result<Csts> {
        Ok(Csts::from_u32(self.property_get32(prop::CSTS).await?))
    }

    /// Enable as Linux does (`nvme_enable_ctrl`): read CAP, write CC with EN=1, CSS NVM (or
    /// "all I/O command sets" when CAP.CSS says so), MPS 4 KiB, round robin, IOSQES 6,
    /// IOCQES 4, then poll CSTS until RDY=1 within CAP.TO (500 ms units).
    pub async fn enable(&self) -> Result<()> {
        let cap = self.cap().await?;
        let css = if cap.css & CAP_CSS_IO_SETS != 0 {
            cc_css::ALL_IO_SETS
        } else {
            cc_css::NVM
        };
        let cc = Cc {
            en: true,
            css,
            mps: 0,
            ams: 0,
            shn: shn::NONE,
            iosqes: CC_IOSQES,
            iocqes: CC_IOCQES,
            crime: false,
        };
        self.property_set(prop::CC, u64::from(cc.to_u32())).await?;
        let timeout = Duration::from_millis(500 * (u64::from(cap.to) + 1));
        self.wait_csts(timeout, "CSTS.RDY = 1", |c| c.rdy).await
    }

    /// Disable: CC.EN = 0, then poll CSTS until RDY = 0 (bounded by CAP.TO).
    pub async fn disable(&self) -> Result<()> {
        let cap = self.cap().await?;
        let cc = Cc {
            en: false,
            ..self.cc().await?
        };
        self.property_set(prop::CC, u64::from(cc.to_u32())).await?;
        let timeout = Duration::from_millis(500 * (u64::from(cap.to) + 1));
        self.wait_csts(timeout, "CSTS.RDY = 0", |c| !c.rdy).await
    }

    /// Normal shutdown: CC.SHN = 01b, then poll CSTS until SHST = 10b (complete).
    pub async fn shutdown(&self) -> Result<()> {
        let cc = Cc {
            shn: shn::NORMAL,
            ..self.cc().await?
        };
        self.property_set(prop::CC, u64::from(cc.to_u32())).await?;
        self.wait_csts(SHUTDOWN_TIMEOUT, "CSTS.SHST = complete", |c| {
            c.shst == shst::COMPLETE
        })
        .await
    }

    async fn wait_csts(
        &self,
        timeout: Duration,
        what: &'static str,
        done: impl Fn(&Csts) -> bool,
    ) -> Result<()> {
        let start = Instant::now();
        loop {
            let csts = self.csts().await?;
            if done(&csts) {
                return Ok(());
            }
            if csts.cfs {
                return Err(InitiatorError::Protocol {
                    what: "controller fatal status (CSTS.CFS)",
                });
            }
            if start.elapsed() >= timeout {
                tracing::debug!(what, ?csts, "CSTS wait timed out");
                return Err(InitiatorError::Timeout { what });
            }
            tokio::time::sleep(CSTS_POLL_INTERVAL).await;
        }
    }

    // -- Identify (NVMe Base 2.0, section 5.17) -----------------------------------------------

    /// Identify with any CNS; returns the 4096-byte data structure.
    pub async fn identify(&self, cns: u8, nsid: u32, cntid: u16) -> Result<Bytes> {
        let cmd = AdminCommand::Identify(Identify {
            nsid,
            cns,
            cntid,
            cnssid: 0,
            csi: 0,
            uuid_index: 0,
        });
        // 4096: fits a u32.
        let len = u32::try_from(IDENTIFY_DATA_LEN).unwrap_or(4096);
        Ok(self.admin_command(&cmd, None, len).await?.data)
    }

    /// Identify Controller (CNS 01h), raw.
    pub async fn identify_controller(&self) -> Result<Bytes> {
        self.identify(cns::CONTROLLER, 0, 0).await
    }

    /// Identify Namespace (CNS 00h), raw.
    pub async fn identify_namespace(&self, nsid: u32) -> Result<Bytes> {
        self.identify(cns::NAMESPACE, nsid, 0).await
    }

    /// Identify Controller, parsed by the codec.
    pub async fn identify_controller_parsed(&self) -> Result<IdentifyController> {
        Ok(IdentifyController::parse(
            &self.identify_controller().await?,
        ))
    }

    /// Identify Namespace, parsed by the codec.
    pub async fn identify_namespace_parsed(&self, nsid: u32) -> Result<IdentifyNamespace> {
        Ok(IdentifyNamespace::parse(
            &self.identify_namespace(nsid).await?,
        ))
    }

    /// Active Namespace ID list (CNS 02h): the active NSIDs greater than `after_nsid`, in
    /// order (up to 1024).
    pub async fn active_ns_list(&self, after_nsid: u32) -> Result<Vec<u32>> {
        let data = self.identify(cns::ACTIVE_NSID_LIST, after_nsid, 0).await?;
        Ok(parse_active_ns_list(&data))
    }

    /// Namespace Identification Descriptor list (CNS 03h), raw.
    pub async fn ns_descriptors(&self, nsid: u32) -> Result<Bytes> {
        self.identify(cns::NS_ID_DESCRIPTOR_LIST, nsid, 0).await
    }

    /// Namespace Identification Descriptor list, parsed by the codec.
    pub async fn ns_descriptors_parsed(&self, nsid: u32) -> Result<Vec<NsIdDescriptor>> {
        Ok(parse_ns_id_descriptors(&self.ns_descriptors(nsid).await?))
    }

    /// The generation-check advertisement in Identify Controller's vendor area, if any
    /// (docs/cluster-protocol.md). A layout-aware client refuses a peer without it: see
    /// [`Controller::require_generation_check`].
    pub async fn generation_check_info(&self) -> Result<Option<GenCheckInfo>> {
        let raw = self.identify_controller().await?;
        // A short reply reads as zeros (no advertisement) rather than failing.
        let mut id = [0u8; IDENTIFY_DATA_LEN];
        let n = raw.len().min(IDENTIFY_DATA_LEN);
        id[..n].copy_from_slice(&raw[..n]);
        Ok(GenCheckInfo::parse(&id))
    }

    /// Fail closed: the peer must advertise the generation check (version 1 or later).
    pub async fn require_generation_check(&self) -> Result<GenCheckInfo> {
        match self.generation_check_info().await? {
            Some(i) if i.version >= GENCHK_VERSION => Ok(i),
            _ => Err(InitiatorError::Protocol {
                what: "peer does not advertise the generation check",
            }),
        }
    }

    /// Vendor log page C0h: the peer's generation and mismatch counters.
    pub async fn generation_log(&self) -> Result<GenerationLog> {
        // 512: fits a u32.
        let len = u32::try_from(GENERATION_LOG_LEN).unwrap_or(512);
        let page = self.get_log_page(GENERATION_LOG_LID, 0, len, 0).await?;
        GenerationLog::parse(&page).ok_or(InitiatorError::Protocol {
            what: "generation log page short",
        })
    }

    // -- Log pages, features -------------------------------------------------------------------

    /// Get Log Page `lid` for `nsid`: `len` bytes (a non-zero multiple of 4) from byte
    /// `offset` (a multiple of 4).
    pub async fn get_log_page(&self, lid: u8, nsid: u32, len: u32, offset: u64) -> Result<Bytes> {
        self.get_log_page_with(GetLogPage {
            nsid,
            lid,
            lsp: 0,
            rae: false,
            numd_bytes: u64::from(len),
            lsi: 0,
            lpo: offset,
            uuid_index: 0,
            csi: 0,
        })
        .await
    }

    /// Get Log Page with every field chosen by the caller (LSP, RAE, LSI, CSI...).
    pub async fn get_log_page_with(&self, g: GetLogPage) -> Result<Bytes> {
        if g.numd_bytes == 0 || !g.numd_bytes.is_multiple_of(4) || !g.lpo.is_multiple_of(4) {
            return Err(InitiatorError::InvalidArgument {
                what: "log page length and offset must be whole dwords (length non-zero)",
            });
        }
        let len = u32::try_from(g.numd_bytes).map_err(|_| InitiatorError::InvalidArgument {
            what: "log page above 4 GiB",
        })?;
        Ok(self
            .admin_command(&AdminCommand::GetLogPage(g), None, len)
            .await?
            .data)
    }

    /// Get Features (current value): the completion has DW0 and, for features with a data
    /// structure, the data.
    pub async fn get_features(&self, fid: FeatureId, nsid: u32, cdw11: u32) -> Result<Completion> {
        let cmd = AdminCommand::GetFeatures(GetFeatures {
            nsid,
            fid,
            sel: 0,
            cdw11,
            uuid_index: 0,
        });
        let len = u32::try_from(feature_data_len(fid, false, cdw11)).unwrap_or(0);
        self.admin_command(&cmd, None, len).await
    }

    /// Set Features, with the feature's data structure if it has one.
    pub async fn set_features(
        &self,
        fid: FeatureId,
        nsid: u32,
        cdw11: u32,
        data: Option<Bytes>,
    ) -> Result<Completion> {
        let cmd = AdminCommand::SetFeatures(SetFeatures {
            nsid,
            fid,
            sv: false,
            cdw11,
            cdw12: 0,
            cdw13: 0,
            uuid_index: 0,
        });
        self.admin_command(&cmd, data, 0).await
    }

    /// Set Features Number of Queues (07h) asking for `n` submission and completion queues;
    /// returns how many I/O queue pairs were granted (min of NSQA and NCQA, 1's based).
    pub async fn set_num_queues(&self, n: u16) -> Result<u16> {
        if n == 0 {
            return Err(InitiatorError::InvalidArgument {
                what: "at least one I/O queue",
            });
        }
        let n0 = u32::from(n - 1);
        let c = self
            .set_features(FeatureId::NUMBER_OF_QUEUES, 0, n0 | (n0 << 16), None)
            .await?;
        let [a, b, c2, d] = c.dw0().to_le_bytes();
        let nsqa = u16::from_le_bytes([a, b]);
        let ncqa = u16::from_le_bytes([c2, d]);
        Ok(nsqa.min(ncqa).saturating_add(1))
    }

    /// Keep Alive (18h).
    pub async fn keep_alive(&self) -> Result<()> {
        self.admin_command(&AdminCommand::KeepAlive, None, 0)
            .await
            .map(drop)
    }

    /// Submit an Asynchronous Event Request. Returns once it is queued, with a future that
    /// resolves when the target reports an event (no timeout applies to it).
    pub async fn async_event_request(
        &self,
    ) -> Result<impl Future<Output = Result<AsyncEvent>> + Send + 'static> {
        let sqe = AdminCommand::AsyncEventRequest.to_sqe(0, SglDescriptor::transport(0));
        let pending = self.admin.start_with_timeout(sqe, None, 0, None).await?;
        Ok(async move {
            let c = pending.await?.into_result()?;
            Ok(AsyncEvent::from_dw0(c.dw0()))
        })
    }

    /// Disconnect as Linux's `nvme disconnect` does: stop keep alive, shut the controller
    /// down (best effort: errors are ignored, the connection goes anyway), close the admin
    /// queue. I/O queues are separate connections: close them first.
    pub async fn disconnect(mut self) -> Result<()> {
        if let Some(k) = self.keep_alive.take() {
            k.abort();
        }
        if let Err(e) = self.shutdown().await {
            tracing::debug!(error = %e, "shutdown before disconnect failed");
        }
        self.admin.close().await;
        Ok(())
    }
}

/// Send Keep Alive every `interval` (KATO/2, as Linux) until the queue closes.
fn spawn_keep_alive(admin: Queue, interval: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let sqe = AdminCommand::KeepAlive.to_sqe(0, SglDescriptor::transport(0));
        loop {
            tokio::time::sleep(interval).await;
            match admin.submit(sqe, None, 0).await {
                Ok(c) if c.status().is_success() => {}
                Ok(c) => tracing::debug!(status = ?c.status(), "keep alive failed"),
                Err(e) if e.is_connection_fatal() => return,
                Err(e) => tracing::debug!(error = %e, "keep alive failed"),
            }
        }
    })
}
