//! Shared helpers for the end-to-end tests in `tests/tests/` (one file per spec area).
//!
//! * [`TestTarget`]: a target started in-process from a YAML layout string, listening on
//!   127.0.0.1 with an ephemeral port (the layout's own listeners are not bound: other engineers'
//!   tests run on the same machine, so nothing here uses a fixed port).
//! * [`connect`] / [`connect_as`] / [`io_queues`]: a controller brought up the way Linux does it
//!   (admin Connect, CC.EN = 1, CSTS.RDY), then Set Features Number of Queues and I/O queues.
//! * [`blocks`]: verifiable data: every block carries its LBA and a seed, the rest is
//!   pseudo-random, so a misplaced, stale or torn block is told apart from the right one.
//! * Raw connections ([`raw_ic`], [`raw_io_queue`], [`expect_fatal`], ...): hand-made PDUs for
//!   the malformed-input and digest tests.
//! * [`target_bin`]: the `tessera-target` binary for the daemon tests (see its doc for how it is
//!   found and built); [`daemon_port`]: a port to put in a daemon's layout without a
//!   bind-drop-reuse race; [`TestDir`]: a test's directory, kept with its logs printed when the
//!   test fails.
//!
//! Everything that waits is bounded ([`within`], [`STEP`]): a hung target fails a test, it never
//! hangs the suite. Bounds only bound waiting; no test asserts that something is fast (the suite
//! runs on 2 shared cores, often next to a build).
//!
//! Run: `cargo test --release -p tessera-tests` (about 10 s of tests once built). Tests of known
//! target bugs are `#[ignore = "BUG: ..."]` so the suite stays green; `-- --ignored` runs them
//! (they fail until the bug is fixed; then drop the attribute).

// Test helpers: a failed expectation is a test failure, so unwrap/expect/panic are the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use codec::nvme::cmd::IoCommand;
use codec::nvme::fabrics::{CONNECT_DATA_LEN, Connect, ConnectData};
use codec::nvme::sgl::SglDescriptor;
use codec::nvme::{Cqe, Sqe, Status};
use codec::pdu::{CapsuleCmd, ConnParams, Fes, H2CData, IcReq, Pdu, PduCodec, R2T, Role};
use tessera::initiator::{
    Controller, ControllerOptions, InitiatorError, Queue, RawConn, RawEvent, hostid_from_nqn,
};
use tessera::server::{Target, TargetOptions};
use tessera::subsystem::Registry;
use tessera::transport::TransportConfig;

pub use tessera::config::STANDALONE_GENERATION;

/// The host NQN most tests connect as.
pub const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:5b0a3c2e-7d41-4f6a-9e2b-1c8d7f3a6e01";
/// A second host, for allow lists and "wrong host" checks.
pub const HOSTNQN2: &str = "nqn.2026-11.dev.tessera:host:second";
/// The subsystem of [`STD_YAML`].
pub const SUBNQN: &str = "nqn.2026-11.dev.tessera:test";
/// The well-known discovery NQN (the codec's).
pub use codec::nvme::fabrics::DISCOVERY_NQN;

/// Bound on any single step of a test (connect, one command, a read of the next PDU). Generous:
/// the suite runs on 2 shared cores, but a hang still fails within seconds.
pub const STEP: Duration = Duration::from_secs(10);

/// The listener every YAML layout of these tests declares. The in-process harness never binds
/// it (it binds 127.0.0.1:0 instead); the yaml crate only requires one to be declared.
pub const PLACEHOLDER_LISTENER: &str = "listeners:\n  - address: 127.0.0.1\n    port: 4420\n";

/// NSIDs of [`STD_YAML`]: RAM with 512- and 4096-byte blocks, and a null namespace.
pub const NS_RAM512: u32 = 1;
pub const NS_RAM4K: u32 = 2;
pub const NS_NULL: u32 = 3;
/// NSIDs of [`std_yaml_with_files`]: file backends with 512- and 4096-byte blocks.
pub const NS_FILE512: u32 = 4;
pub const NS_FILE4K: u32 = 5;

/// Size of each RAM and file namespace of the standard layout.
pub const STD_NS_BYTES: u64 = 16 * 1024 * 1024;

/// One subsystem open to any host, with RAM (512 B and 4 KiB blocks) and null namespaces.
pub const STD_YAML: &str = "listeners:
  - address: 127.0.0.1
    port: 4420
subsystems:
  - nqn: nqn.2026-11.dev.tessera:test
    serial: TESTSERIAL0001
    model: Tessera test
    allow_any_host: true
    namespaces:
      - nsid: 1
        block_size: 512
        backend: { kind: ram, size: 16MiB }
      - nsid: 2
        block_size: 4096
        backend: { kind: ram, size: 16MiB }
      - nsid: 3
        block_size: 512
        backend: { kind: null, size: 1GiB }
";

/// [`STD_YAML`] plus two file namespaces (4: 512-byte blocks, 5: 4 KiB blocks) in `dir`.
pub fn std_yaml_with_files(dir: &Path) -> String {
    format!(
        "{STD_YAML}      - nsid: 4
        block_size: 512
        backend: {{ kind: file, path: {}, size: 16MiB, create: true }}
      - nsid: 5
        block_size: 4096
        backend: {{ kind: file, path: {}, size: 16MiB, create: true }}
",
        dir.join("ns4.img").display(),
        dir.join("ns5.img").display()
    )
}

/// Runs `f`, failing the test if it takes longer than [`STEP`].
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    within_for(STEP, what, f).await
}

/// Runs `f`, failing the test if it takes longer than `limit`.
pub async fn within_for<T>(limit: Duration, what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

// -------------------------------------------------------------------------------------------
// The target
// -------------------------------------------------------------------------------------------

/// A target serving a YAML layout, in this process, on ephemeral loopback ports.
pub struct TestTarget {
    pub target: Target,
    /// The first listener.
    pub addr: SocketAddr,
}

impl TestTarget {
    /// Serves `yaml` on one listener with the default transport limits.
    pub async fn start(yaml: &str) -> Self {
        Self::start_with(yaml, TransportConfig::default(), 1).await
    }

    /// Serves `yaml` on `listeners` loopback listeners with transport limits `cfg`.
    pub async fn start_with(yaml: &str, cfg: TransportConfig, listeners: usize) -> Self {
        let layout = yaml::parse_str("test-layout.yaml", yaml)
            .unwrap_or_else(|e| panic!("test layout does not load: {e}\n{yaml}"));
        let registry = tessera::config::build_registry(&layout)
            .unwrap_or_else(|e| panic!("test layout does not open: {e}"));
        Self::start_registry(registry, cfg, listeners).await
    }

    /// Serves a registry built by the test (e.g. with an internal subsystem).
    pub async fn start_registry(
        registry: Arc<Registry>,
        cfg: TransportConfig,
        listeners: usize,
    ) -> Self {
        let listen: Vec<SocketAddr> = (0..listeners)
            .map(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
            .collect();
        let opts = TargetOptions {
            transport: cfg,
            // Two reactors: a controller's admin and I/O queues may then live on different
            // threads, as they do on a real server.
            reactors: 2,
            ..TargetOptions::default()
        };
        let target = within("target start", Target::start_with(registry, &listen, opts))
            .await
            .expect("target starts on 127.0.0.1:0");
        let addr = target.addrs[0];
        TestTarget { target, addr }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.target.registry
    }

    pub fn addrs(&self) -> &[SocketAddr] {
        &self.target.addrs
    }

    /// Stops the target (bounded).
    pub async fn stop(self) {
        within("target shutdown", self.target.shutdown()).await;
    }
}

// -------------------------------------------------------------------------------------------
// Controllers and queues
// -------------------------------------------------------------------------------------------

/// Small transport limits: 8 KiB per R2T, 4 KiB per H2CData PDU, 4 KiB in-capsule, so that a
/// 128 KiB write takes many R2Ts and H2CData PDUs.
pub fn small_limits() -> TransportConfig {
    TransportConfig {
        r2t_len_max: 8192,
        max_h2c_data: 4096,
        io_incapsule: 4096,
        ..TransportConfig::default()
    }
}

/// Controller options for tests: Linux's defaults, with a command timeout of [`STEP`].
pub fn ctrl_opts() -> ControllerOptions {
    let mut o = ControllerOptions::default();
    o.transport.command_timeout = Some(STEP);
    o.transport.connect_timeout = STEP;
    o
}

/// Connects to `subnqn` as [`HOSTNQN`] and enables the controller.
pub async fn connect(addr: SocketAddr, subnqn: &str) -> Controller {
    connect_as(addr, subnqn, HOSTNQN, &ctrl_opts())
        .await
        .unwrap_or_else(|e| panic!("connect to {subnqn} at {addr}: {e}"))
}

/// Connects the admin queue and enables the controller (CC.EN = 1, CSTS.RDY = 1).
pub async fn connect_as(
    addr: SocketAddr,
    subnqn: &str,
    hostnqn: &str,
    opts: &ControllerOptions,
) -> Result<Controller, InitiatorError> {
    within("admin connect and enable", async {
        let c = Controller::connect(addr, subnqn, hostnqn, opts).await?;
        c.enable().await?;
        Ok(c)
    })
    .await
}

/// Asks for `n` I/O queues (must all be granted) and connects QIDs 1..=n with 128 entries.
pub async fn io_queues(ctrl: &Controller, n: u16) -> Vec<Queue> {
    let granted = within("set number of queues", ctrl.set_num_queues(n))
        .await
        .expect("Set Features Number of Queues");
    assert!(granted >= n, "asked for {n} I/O queues, granted {granted}");
    let mut v = Vec::new();
    for qid in 1..=n {
        let q = within("I/O queue connect", ctrl.connect_io_queue(qid, 127))
            .await
            .unwrap_or_else(|e| panic!("I/O queue {qid}: {e}"));
        v.push(q);
    }
    v
}

/// Connect + enable + one I/O queue: the common start of the I/O tests.
pub async fn connect_with_io(addr: SocketAddr, subnqn: &str) -> (Controller, Queue) {
    let c = connect(addr, subnqn).await;
    let mut qs = io_queues(&c, 1).await;
    (c, qs.remove(0))
}

/// The status of a result that must be an NVMe status (not a transport failure).
pub fn status_of<T>(r: Result<T, InitiatorError>) -> Status {
    match r {
        Ok(_) => panic!("expected an NVMe error status, got success"),
        Err(e) => e
            .status()
            .unwrap_or_else(|| panic!("expected an NVMe error status, got {e}")),
    }
}

/// Asserts `got` has the status code (SCT/SC) of `want` and, when `dnr` is given, that DNR.
#[track_caller]
pub fn assert_status(got: Status, want: Status, dnr: Option<bool>) {
    assert!(
        got.same_code(want),
        "status {got} ({:#06x}), expected {want}",
        got.field()
    );
    if let Some(d) = dnr {
        assert_eq!(got.dnr(), d, "DNR of {got}: expected {d}");
    }
}

/// Submits an I/O command built by the codec (CID and SGL are the queue's business).
pub async fn submit_io(
    q: &Queue,
    cmd: &IoCommand,
    data_out: Option<Bytes>,
    data_in_len: u32,
) -> tessera::initiator::Completion {
    let sqe = cmd.to_sqe(0, SglDescriptor::transport(0));
    within("I/O command", q.submit(sqe, data_out, data_in_len))
        .await
        .expect("the queue must stay up")
}

// -------------------------------------------------------------------------------------------
// Data
// -------------------------------------------------------------------------------------------

/// SplitMix64: a tiny, well-mixed PRNG (Steele, Lea, Flood 2014) for test data.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `nlb` blocks of `bs` bytes for LBAs `slba..slba + nlb`: each starts with its LBA and `seed`
/// (little endian), the rest is pseudo-random from both, so every block of every write is
/// different and self-describing.
pub fn blocks(seed: u64, slba: u64, nlb: u32, bs: u32) -> Bytes {
    let bs = bs as usize;
    let mut out = BytesMut::with_capacity(bs * nlb as usize);
    for i in 0..u64::from(nlb) {
        let lba = slba + i;
        let mut st = seed ^ lba.wrapping_mul(0xD6E8_FEB8_6659_FD93);
        let start = out.len();
        out.extend_from_slice(&lba.to_le_bytes());
        out.extend_from_slice(&seed.to_le_bytes());
        while out.len() - start < bs {
            let v = splitmix64(&mut st).to_le_bytes();
            let n = (bs - (out.len() - start)).min(8);
            out.extend_from_slice(&v[..n]);
        }
    }
    out.freeze()
}

/// Asserts that `got` equals `want` block by block, naming the first bad block and what it
/// holds (its LBA and seed tags) instead of dumping megabytes.
#[track_caller]
pub fn assert_blocks(got: &[u8], want: &[u8], slba: u64, bs: u32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bs = bs as usize;
    for (i, (g, w)) in got.chunks(bs).zip(want.chunks(bs)).enumerate() {
        if g != w {
            let tag = |b: &[u8]| {
                let lba = u64::from_le_bytes(b[..8].try_into().unwrap());
                let seed = u64::from_le_bytes(b[8..16].try_into().unwrap());
                format!("lba tag {lba:#x} seed tag {seed:#x}")
            };
            panic!(
                "{what}: block {} (LBA {}) differs: got {}, want {}",
                i,
                slba + i as u64,
                tag(g),
                tag(w)
            );
        }
    }
}

/// Asserts every byte of `b` is zero.
#[track_caller]
pub fn assert_zero(b: &[u8], what: &str) {
    if let Some(i) = b.iter().position(|&x| x != 0) {
        panic!("{what}: byte {i} is {:#04x}, expected zeros", b[i]);
    }
}

/// Most bytes one command moves (MDTS, 128 KiB).
pub const MDTS_BYTES: usize = 128 * 1024;

/// Writes `data` at `slba` in commands of at most MDTS.
pub async fn write_chunked(q: &Queue, nsid: u32, slba: u64, bs: u32, data: &Bytes) {
    let per = MDTS_BYTES / bs as usize;
    for (i, chunk) in data.chunks(per * bs as usize).enumerate() {
        let lba = slba + (i * per) as u64;
        within(
            "write",
            q.write(nsid, lba, bs, data.slice_ref(chunk), false),
        )
        .await
        .unwrap_or_else(|e| panic!("nsid {nsid} write at {lba}: {e}"));
    }
}

/// Reads `nlb` blocks at `slba` in commands of at most MDTS.
pub async fn read_chunked(q: &Queue, nsid: u32, slba: u64, nlb: u32, bs: u32) -> Vec<u8> {
    let per = u32::try_from(MDTS_BYTES / bs as usize).unwrap();
    let mut out = Vec::with_capacity(nlb as usize * bs as usize);
    let mut done = 0;
    while done < nlb {
        let n = (nlb - done).min(per);
        let lba = slba + u64::from(done);
        let d = within("read", q.read(nsid, lba, n, bs))
            .await
            .unwrap_or_else(|e| panic!("nsid {nsid} read at {lba}: {e}"));
        out.extend_from_slice(&d);
        done += n;
    }
    out
}

// -------------------------------------------------------------------------------------------
// Raw connections
// -------------------------------------------------------------------------------------------

/// How long a raw connection waits for the target's next PDU.
pub const RAW_TIMEOUT: Duration = Duration::from_secs(5);

/// A TCP connection that completed ICReq/ICResp with the given digests.
pub async fn raw_ic(addr: SocketAddr, hdgst: bool, ddgst: bool) -> RawConn {
    raw_ic_with(
        addr,
        IcReq {
            pfv: 0,
            hpda: 0,
            hdgst,
            ddgst,
            maxr2t: 0,
        },
    )
    .await
}

/// A TCP connection that completed ICReq/ICResp with `icreq`.
pub async fn raw_ic_with(addr: SocketAddr, icreq: IcReq) -> RawConn {
    let (c, _) = within(
        "raw IC exchange",
        RawConn::connect_ic(addr, icreq, RAW_TIMEOUT),
    )
    .await
    .expect("ICReq/ICResp");
    c
}

/// A Fabrics Connect capsule (data in-capsule, as every NVMe/TCP host sends it).
pub fn connect_pdu(cid: u16, connect: Connect, data: &ConnectData) -> Pdu {
    let len = u32::try_from(CONNECT_DATA_LEN).unwrap();
    let mut sqe = connect.to_sqe(cid, SglDescriptor::in_capsule(len));
    sqe.set_cid(cid);
    Pdu::CapsuleCmd(CapsuleCmd {
        sqe,
        data: Bytes::copy_from_slice(&data.to_bytes()),
    })
}

/// Connect fields for `qid` with `sqsize`, SQ flow control disabled as Linux does.
pub fn connect_cmd(qid: u16, sqsize: u16, kato_ms: u32) -> Connect {
    Connect {
        recfmt: 0,
        qid,
        sqsize,
        cattr: codec::nvme::fabrics::CATTR_DISABLE_SQ_FLOW_CONTROL,
        kato_ms,
    }
}

/// Connect data for `hostnqn` (with its usual HOSTID) to `subnqn`, asking for `cntlid`.
pub fn connect_data(subnqn: &str, hostnqn: &str, cntlid: u16) -> ConnectData {
    ConnectData {
        hostid: hostid_from_nqn(hostnqn),
        cntlid,
        subnqn: subnqn.to_owned(),
        hostnqn: hostnqn.to_owned(),
    }
}

/// The next PDU, which must be a response capsule.
pub async fn recv_cqe(c: &mut RawConn) -> Cqe {
    match c.recv().await {
        Ok(RawEvent::Pdu(Pdu::CapsuleResp(r))) => r.cqe,
        other => panic!("expected a CapsuleResp, got {other:?}"),
    }
}

/// A raw I/O queue `qid` of `ctrl` (which must be enabled with queues granted), with digests.
pub async fn raw_io_queue(ctrl: &Controller, qid: u16, hdgst: bool, ddgst: bool) -> RawConn {
    let ic = IcReq {
        pfv: 0,
        hpda: 0,
        hdgst,
        ddgst,
        maxr2t: 0,
    };
    raw_io_queue_ic(ctrl, qid, ic).await
}

/// A raw I/O queue `qid` of `ctrl` whose ICReq is `ic`.
pub async fn raw_io_queue_ic(ctrl: &Controller, qid: u16, ic: IcReq) -> RawConn {
    let mut c = raw_ic_with(ctrl.addr(), ic).await;
    let pdu = connect_pdu(
        1,
        connect_cmd(qid, 127, 0),
        &connect_data(ctrl.subnqn(), ctrl.hostnqn(), ctrl.cntlid()),
    );
    c.send_pdu(&pdu).await.unwrap();
    let cqe = recv_cqe(&mut c).await;
    assert!(
        cqe.status().is_success(),
        "I/O queue Connect: {}",
        cqe.status()
    );
    c
}

/// Reads a whole C2HData transfer for `cid` (then its CapsuleResp unless SUCCESS was set);
/// returns the data and the completion status.
pub async fn raw_read_data(c: &mut RawConn, cid: u16) -> (Vec<u8>, Status) {
    let mut got = Vec::new();
    loop {
        match c.recv().await {
            Ok(RawEvent::Pdu(Pdu::C2HData(d))) => {
                assert_eq!(d.cccid, cid, "C2HData CCCID");
                assert_eq!(d.datao as usize, got.len(), "C2HData arrives in order");
                got.extend_from_slice(&d.data);
                if d.success {
                    return (got, Status::SUCCESS);
                }
            }
            Ok(RawEvent::Pdu(Pdu::CapsuleResp(r))) => {
                assert_eq!(r.cqe.cid(), cid, "response CID");
                return (got, r.cqe.status());
            }
            other => panic!("read data for CID {cid}: got {other:?}"),
        }
    }
}

/// Answers one R2T with H2CData PDUs of at most `chunk` bytes taken from `data` (the whole
/// command's data), the last one flagged LAST_PDU.
pub async fn raw_answer_r2t(c: &mut RawConn, r2t: &R2T, data: &Bytes, chunk: usize) {
    let start = r2t.r2to as usize;
    let end = start + r2t.r2tl as usize;
    let mut off = start;
    while off < end {
        let n = (end - off).min(chunk);
        let pdu = Pdu::H2CData(H2CData {
            cccid: r2t.cccid,
            ttag: r2t.ttag,
            datao: u32::try_from(off).unwrap(),
            last: off + n == end,
            data: data.slice(off..off + n),
        });
        c.send_pdu(&pdu).await.unwrap();
        off += n;
    }
}

/// An I/O command capsule with `cid`; in-capsule `data` if any, else a transport SGL of
/// `transport_len` bytes (data through R2T, or read data).
pub fn io_capsule(cmd: &IoCommand, cid: u16, data: Bytes, transport_len: u32) -> Pdu {
    let sgl = if data.is_empty() {
        SglDescriptor::transport(transport_len)
    } else {
        SglDescriptor::in_capsule(u32::try_from(data.len()).unwrap())
    };
    let mut sqe: Sqe = cmd.to_sqe(cid, sgl);
    sqe.set_cid(cid);
    Pdu::CapsuleCmd(CapsuleCmd { sqe, data })
}

/// The bytes a host sends for `pdu` on an established connection with `params` (digests,
/// limits): for hand-made and corrupted PDUs.
pub fn encode_host(pdu: &Pdu, params: ConnParams) -> Vec<u8> {
    let mut codec = PduCodec::new_established(Role::Host, params);
    let mut out = BytesMut::new();
    let tail = codec
        .encode_head(pdu, &mut out)
        .expect("a PDU a host may send");
    if let Some(t) = tail {
        out.extend_from_slice(&t.data);
        out.extend_from_slice(t.trailer());
    }
    out.to_vec()
}

/// Connection parameters with the given digests (and MAXH2CDATA large enough for any test).
pub fn digests(hdgst: bool, ddgst: bool) -> ConnParams {
    ConnParams {
        hdgst,
        ddgst,
        max_h2c_data: 1 << 20,
        ..ConnParams::default()
    }
}

/// Expects a C2HTermReq with `fes` (and `fei`, when given), then the end of the connection.
pub async fn expect_fatal(c: &mut RawConn, fes: Fes, fei: Option<u32>, what: &str) {
    let t = match c.recv().await {
        Ok(RawEvent::Pdu(Pdu::C2HTermReq(t))) => t,
        other => panic!("{what}: expected a C2HTermReq, got {other:?}"),
    };
    assert_eq!(t.fes, fes, "{what}: FES");
    if let Some(fei) = fei {
        assert_eq!(t.fei, fei, "{what}: FEI");
    }
    expect_eof(c, what).await;
}

/// Expects the target to close the connection (anything else, or silence, fails).
pub async fn expect_eof(c: &mut RawConn, what: &str) {
    match c.recv().await {
        Ok(RawEvent::Eof) => {}
        Err(InitiatorError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("{what}: expected the target to close the connection, got {other:?}"),
    }
}

/// The target still serves: a fresh controller connects, identifies, writes and reads back.
pub async fn assert_still_serving(addr: SocketAddr) {
    let (c, q) = connect_with_io(addr, SUBNQN).await;
    let id = within("identify", c.identify_controller_parsed())
        .await
        .expect("Identify Controller on a fresh connection");
    assert_eq!(id.subnqn, SUBNQN);
    let data = blocks(0xA11E, 100, 8, 512);
    within("write", q.write(NS_RAM512, 100, 512, data.clone(), false))
        .await
        .expect("write on a fresh connection");
    let got = within("read", q.read(NS_RAM512, 100, 8, 512))
        .await
        .expect("read on a fresh connection");
    assert_blocks(&got, &data, 100, 512, "fresh connection read back");
    q.close().await;
    within("disconnect", c.disconnect()).await.unwrap();
}

// -------------------------------------------------------------------------------------------
// The daemon binary
// -------------------------------------------------------------------------------------------

// Shared with the target's multi-process tests (`target/tests/`), which include the same files.
#[path = "support/daemons.rs"]
mod daemons;
#[path = "support/kept_dir.rs"]
mod kept_dir;

/// [`daemon_port`]: a loopback port for a daemon's layout, from this process's block outside
/// the ephemeral range; [`Proc`]: a child killed when dropped; [`sibling_bin`],
/// [`manager_bin`]: another package's binary next to the test's own.
pub use daemons::{Proc, daemon_port, manager_bin, sibling_bin};
/// [`TestDir`]: a test's directory, kept with its logs printed when the test fails.
pub use kept_dir::{KeptDir as TestDir, log_tails, tail};

/// The `tessera-target` binary of this build, built on first use.
///
/// `CARGO_BIN_EXE_*` only exists for binaries of the test's own package, and `cargo test -p
/// tessera-tests` does not build other packages' binaries (`cargo test --workspace` does, because
/// `tessera-target` has integration tests of its own). The test executable lives in
/// `<target-dir>/<profile>/deps/`; the binary belongs in `<target-dir>/<profile>/`.
///
/// Resolution, once per test process (a `OnceLock`):
/// 1. `$TESSERA_TARGET_BIN`, if set: that binary, as is.
/// 2. `<target-dir>/<profile>/tessera-target`, if it is newer than every source it is built from
///    (the `src/` trees and manifests of target, codec, hw, yaml and manager, and Cargo.lock):
///    e.g. just built by `cargo test --workspace`. Rebuilding it with another feature set (dev
///    dependencies change `serde`'s features) would cost a minute for nothing.
/// 3. Otherwise `cargo build -p tessera-target --bin tessera-target` for that target directory
///    and profile, with the `cargo` that runs the tests (`$CARGO`): never a stale binary.
pub fn target_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("TESSERA_TARGET_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executable in <target-dir>/<profile>/deps");
        let bin = profile_dir.join("tessera-target");
        if is_fresh(&bin) {
            return bin;
        }
        let target_dir = profile_dir.parent().expect("<target-dir>");
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("profile directory name");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.arg("build")
            .arg("--manifest-path")
            .arg(workspace_dir().join("Cargo.toml"))
            .args(["--quiet", "-p", "tessera-target", "--bin", "tessera-target"])
            .env("CARGO_TARGET_DIR", target_dir);
        match profile {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        let out = cmd.output().expect("run cargo build for tessera-target");
        assert!(
            out.status.success(),
            "cargo build of tessera-target failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(bin.is_file(), "{} was not built", bin.display());
        bin
    })
}

/// Whether `bin` exists and is newer than every file it is built from.
fn is_fresh(bin: &Path) -> bool {
    fn newest(p: &Path, acc: &mut std::time::SystemTime) {
        let Ok(meta) = std::fs::metadata(p) else {
            return;
        };
        if meta.is_dir() {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                newest(&e.path(), acc);
            }
        } else if let Ok(m) = meta.modified() {
            *acc = (*acc).max(m);
        }
    }
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return false;
    };
    let ws = workspace_dir();
    let mut latest = std::time::SystemTime::UNIX_EPOCH;
    for f in ["Cargo.toml", "Cargo.lock", "yaml/default.yaml"] {
        newest(&ws.join(f), &mut latest);
    }
    for krate in ["target", "codec", "hw", "yaml", "target/daemon", "manager"] {
        newest(&ws.join(krate).join("src"), &mut latest);
        newest(&ws.join(krate).join("Cargo.toml"), &mut latest);
    }
    built > latest
}

/// The workspace root: the parent of this crate's directory, taken lexically (not through
/// `..`, which a symlinked checkout would resolve elsewhere).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace root")
        .to_path_buf()
}

/// The repository's `examples/` directory.
pub fn examples_dir() -> PathBuf {
    workspace_dir().join("examples")
}
