//! Prometheus metrics: `GET /metrics` on a loopback HTTP port (127.0.0.1:9420 by default),
//! in the Prometheus text exposition format, encoded by `prometheus-client`.
//!
//! A scrape reads counters the target keeps anyway (each controller's SMART counters, the
//! generation state's mismatch counters, the reactors' connection counts) and each namespace's
//! [`NsStats`]: one shard per reactor thread on its own cache line, relaxed atomic adds, and a
//! clock read for one command in [`LATENCY_SAMPLE_EVERY`] only (`IoProbe`, two lines in
//! controller/io.rs). Metric names follow Prometheus conventions:
//! `tessera_` prefix, base units (bytes), `_total` on counters.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `tessera_connections` | gauge | |
//! | `tessera_subsystems`, `tessera_namespaces` | gauge | |
//! | `tessera_controllers` | gauge | `subnqn` |
//! | `tessera_controller_read_commands_total`, `..._write_commands_total` | counter | `subnqn`, `cntlid`, `hostnqn` |
//! | `tessera_controller_read_bytes_total`, `..._written_bytes_total` | counter | same |
//! | `tessera_controller_io_errors_total` | counter | same |
//! | `tessera_namespace_commands_total`, `tessera_namespace_bytes_total` | counter | `subnqn`, `nsid`, `op` |
//! | `tessera_namespace_latency_seconds` | histogram | same |
//! | `tessera_generation` | gauge | |
//! | `tessera_generation_mismatches_total` | counter | `kind` (stale, behind, unstamped) |
//! | `tessera_generation_checks_total` | counter | |
//! | `tessera_mismatch_reports_total` | counter | `outcome` (sent, dropped) |
//! | `tessera_discovery_genctr` | gauge | |
//! | `tessera_keep_alive_expiries_total` | counter | |
//! | `tessera_c2h_term_reqs_total` | counter | `reason` (the FES, e.g. `pdu_sequence_error`) |
//! | `tessera_nvme_error_statuses_total` | counter | `sct`, `sc` (hex, e.g. `0x0`, `0x0b`) |
//! | `tessera_controller_io_queues` | gauge | `subnqn`, `cntlid`, `hostnqn` |
//! | `tessera_commands_in_flight` | gauge | |
//! | `tessera_dhchap_authentications_total` | counter | `outcome` (success, failure) |
//! | `tessera_reloads_total` | counter | `outcome` (applied, refused) |
//! | `tessera_path_errors_total` | counter | `reason` (unmapped, unreachable, map_settling) |
//! | `tessera_extent_moves_total` | counter | `outcome` (done, failed, cancelled) |
//! | `tessera_forwarded_commands_total` | counter | |
//! | `tessera_reads_confirmed_total` | counter | |
//!
//! The event counters are bumped on their (rare) paths only: the transport and the controllers
//! call [`count_term_req`], [`count_error_status`], [`count_keep_alive_expiry`],
//! [`count_no_path`] and [`count_auth`], the control interface [`count_reload`], the mover
//! [`count_extent_move`]; a successful command costs nothing. A forwarded command adds to its
//! reactor's shard ([`count_forwarded`], next to the network round trip it costs anyway). `tessera_commands_in_flight`
//! sums what each connection publishes through its [`InFlight`] (one relaxed store per wake-up
//! of the connection's task when its count changed).
//!
//! A controller's counters live as long as the controller: its series end when the host
//! disconnects (Prometheus treats a series that reappears with lower values as a reset).
//!
//! The HTTP side is a few lines on tokio rather than an HTTP framework: one request per
//! connection, `GET /metrics` or 404, request head bounded in size and time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::subsystem::Registry;

/// Namespace statistics are split in this many shards, one per thread that serves I/O (more
/// threads share them round-robin), each on its own cache line: a reactor updates its own.
const SHARDS: usize = 16;
/// Latency buckets: upper bounds 8 µs × 2^i, i = 0..BUCKETS (8 µs to 4.2 s), then +Inf.
const BUCKETS: usize = 20;
const BUCKET0_US: u64 = 8;
/// One command in this many (per shard) is timed, so that most commands read no clock.
pub const LATENCY_SAMPLE_EVERY: u64 = 8;

/// One shard of a namespace's statistics; index 0 reads, 1 writes.
#[derive(Default)]
#[repr(align(128))]
struct Shard {
    ops: [AtomicU64; 2],
    bytes: [AtomicU64; 2],
    lat: [[AtomicU64; BUCKETS + 1]; 2],
    lat_sum_us: [AtomicU64; 2],
}

/// A namespace's read and write statistics: successful commands, their bytes, and a sampled
/// latency histogram (from the command's dispatch to the backend until its completion).
pub struct NsStats {
    shards: Box<[Shard]>,
}

impl Default for NsStats {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }
}

impl std::fmt::Debug for NsStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NsStats").finish_non_exhaustive()
    }
}

fn shard_index() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

impl NsStats {
    fn shard(&self) -> &Shard {
        &self.shards[shard_index() % self.shards.len()]
    }

    /// Sums over the shards: (ops, bytes, latency sum in µs, per-bucket counts) of `dir`.
    fn totals(&self, dir: usize) -> (u64, u64, u64, [u64; BUCKETS + 1]) {
        let mut t = (0, 0, 0, [0u64; BUCKETS + 1]);
        for s in self.shards.iter() {
            t.0 += s.ops[dir].load(Ordering::Relaxed);
            t.1 += s.bytes[dir].load(Ordering::Relaxed);
            t.2 += s.lat_sum_us[dir].load(Ordering::Relaxed);
            for (b, c) in t.3.iter_mut().zip(&s.lat[dir]) {
                *b += c.load(Ordering::Relaxed);
            }
        }
        t
    }
}

/// A Read or Write in flight, for its namespace's statistics ([`IoProbe::start`] when it is
/// dispatched, [`IoProbe::finish`] with its outcome).
pub struct IoProbe {
    dir: usize,
    bytes: u64,
    t0: Option<std::time::Instant>,
}

impl IoProbe {
    /// For a Read or Write of `ns`; `None` for other commands.
    pub fn start(
        ns: &crate::subsystem::namespace::Namespace,
        cmd: &codec::nvme::cmd::IoCommand,
    ) -> Option<Self> {
        use codec::nvme::cmd::IoCommand;
        let (dir, rw) = match cmd {
            IoCommand::Read(rw) => (0, rw),
            IoCommand::Write(rw) => (1, rw),
            _ => return None,
        };
        let shard = ns.stats.shard();
        let n = shard.ops[dir].load(Ordering::Relaxed);
        Some(Self {
            dir,
            bytes: u64::from(rw.nlb) << ns.lba_shift,
            t0: n
                .is_multiple_of(LATENCY_SAMPLE_EVERY)
                .then(std::time::Instant::now),
        })
    }

    fn record(&self, stats: &NsStats, c: &crate::controller::exec::Completion) {
        if !c.status.is_success() {
            return;
        }
        let s = stats.shard();
        s.ops[self.dir].fetch_add(1, Ordering::Relaxed);
        s.bytes[self.dir].fetch_add(self.bytes, Ordering::Relaxed);
        if let Some(t0) = self.t0 {
            let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
            let b = (0..BUCKETS)
                .find(|&i| us <= BUCKET0_US << i)
                .unwrap_or(BUCKETS);
            s.lat[self.dir][b].fetch_add(1, Ordering::Relaxed);
            s.lat_sum_us[self.dir].fetch_add(us, Ordering::Relaxed);
        }
    }

    /// Records `o` (now if done, when it completes if pending) and returns it.
    pub fn finish(
        probe: Option<Self>,
        ns: &Arc<crate::subsystem::namespace::Namespace>,
        o: crate::controller::exec::Outcome,
    ) -> crate::controller::exec::Outcome {
        use crate::controller::exec::Outcome;
        let Some(p) = probe else { return o };
        match o {
            Outcome::Done(c) => {
                p.record(&ns.stats, &c);
                Outcome::Done(c)
            }
            Outcome::Pending(f) => {
                let ns = Arc::clone(ns);
                Outcome::Pending(Box::pin(async move {
                    let c = f.await;
                    p.record(&ns.stats, &c);
                    c
                }))
            }
            other => other,
        }
    }
}

/// Event counters of the whole process (the daemon runs one target).
struct Events {
    keep_alive_expiries: AtomicU64,
    /// By FES value; the last slot for values the spec does not define.
    term_reqs: [AtomicU64; 8],
    /// By (SCT << 8) | SC.
    statuses: [AtomicU64; 8 * 256],
}

static EVENTS: Events = Events {
    keep_alive_expiries: AtomicU64::new(0),
    term_reqs: [const { AtomicU64::new(0) }; 8],
    statuses: [const { AtomicU64::new(0) }; 8 * 256],
};

/// A controller was torn down because its keep-alive timer expired.
pub fn count_keep_alive_expiry() {
    EVENTS.keep_alive_expiries.fetch_add(1, Ordering::Relaxed);
}

/// A C2HTermReq with this FES was sent.
pub fn count_term_req(fes: codec::pdu::Fes) {
    let i = usize::from(fes.0).min(7);
    EVENTS.term_reqs[i].fetch_add(1, Ordering::Relaxed);
}

/// A command completed with this (non-success) status.
pub fn count_error_status(status: codec::nvme::Status) {
    let i = (usize::from(status.sct() & 7) << 8) | usize::from(status.sc());
    EVENTS.statuses[i].fetch_add(1, Ordering::Relaxed);
}

/// Outcome counters of rare control-path events (authentication, reloads, moves, path errors).
struct Outcomes {
    /// DH-HMAC-CHAP transactions: [succeeded, failed].
    auth: [AtomicU64; 2],
    /// Reloads and applies: [applied, refused].
    reloads: [AtomicU64; 2],
    /// Final copies of extent moves this server ran as their source: by [`MoveOutcome`].
    moves: [AtomicU64; 3],
    /// Commands completed with Internal Path Error, by [`crate::subsystem::volume::NoPath`].
    no_path: [AtomicU64; 3],
}

static OUTCOMES: Outcomes = Outcomes {
    auth: [const { AtomicU64::new(0) }; 2],
    reloads: [const { AtomicU64::new(0) }; 2],
    moves: [const { AtomicU64::new(0) }; 3],
    no_path: [const { AtomicU64::new(0) }; 3],
};

/// A DH-HMAC-CHAP transaction on a queue ended: `ok` if the host (and, when asked, the
/// controller) authenticated, else it failed (the controller's AUTH_Failure1, or the host's
/// AUTH_Failure2).
pub fn count_auth(ok: bool) {
    OUTCOMES.auth[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
}

/// A reload or an apply ended: `applied` if the layout is now in force, else it was refused
/// (the configuration in force is unchanged).
pub fn count_reload(applied: bool) {
    OUTCOMES.reloads[usize::from(!applied)].fetch_add(1, Ordering::Relaxed);
}

/// How an extent move ended on the server that copies the extent out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveOutcome {
    /// The final copy is done: the extent switched to its new owner.
    Done,
    /// The final copy failed: the extent stays served here, and the switch is tried again when
    /// the manager sends the map again.
    Failed,
    /// The move was switched or cancelled without this server (its copy is dropped).
    Cancelled,
}

impl MoveOutcome {
    const ALL: [Self; 3] = [Self::Done, Self::Failed, Self::Cancelled];

    fn label(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// A switch of an extent this server was moving out ended (the mover's final copy).
pub fn count_extent_move(outcome: MoveOutcome) {
    OUTCOMES.moves[outcome as usize].fetch_add(1, Ordering::Relaxed);
}

/// One counter on a cache line of its own.
#[repr(align(128))]
struct Padded(AtomicU64);

/// Pieces of commands forwarded to the server that owns their extent, sharded like
/// [`NsStats`] (a reactor adds to its own shard).
static FORWARDED: [Padded; SHARDS] = [const { Padded(AtomicU64::new(0)) }; SHARDS];

/// A piece of a command is being forwarded to the server that owns its extent (each try).
pub fn count_forwarded() {
    FORWARDED[shard_index() % SHARDS]
        .0
        .fetch_add(1, Ordering::Relaxed);
}

/// Reads served from this server's own copy without a read lease, confirmed with the other
/// copies (docs/replication.md, "Read leases"): rare, a relaxed add.
static READS_CONFIRMED: AtomicU64 = AtomicU64::new(0);

/// A read of a replicated extent is being confirmed with the other copies (no read lease).
pub fn count_read_confirmed() {
    READS_CONFIRMED.fetch_add(1, Ordering::Relaxed);
}

/// A command is completing with Internal Path Error for this reason.
pub fn count_no_path(why: crate::subsystem::volume::NoPath) {
    use crate::subsystem::volume::NoPath;
    let i = match why {
        NoPath::Unmapped => 0,
        NoPath::Unreachable => 1,
        NoPath::MapSettling => 2,
    };
    OUTCOMES.no_path[i].fetch_add(1, Ordering::Relaxed);
}

/// The commands one queue holds, published by its connection for scrapes.
///
/// The connection stores its command table's size (a relaxed store to a slot of its own, once
/// per wake-up of its task, and only when the size changed): no read-modify-write and no line
/// shared with another queue on the data path. A scrape sums the slots of the live queues.
#[derive(Debug)]
pub struct InFlight {
    slot: Arc<Slot>,
    last: u32,
}

/// One queue's published command count, on its own cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Slot(std::sync::atomic::AtomicU32);

/// The live queues' slots (a dead queue's slot is dropped at the next registration or scrape).
static QUEUES: std::sync::Mutex<Vec<std::sync::Weak<Slot>>> = std::sync::Mutex::new(Vec::new());

fn queues() -> std::sync::MutexGuard<'static, Vec<std::sync::Weak<Slot>>> {
    let mut q = QUEUES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    q.retain(|w| w.strong_count() > 0);
    q
}

impl Default for InFlight {
    /// A new queue's slot (once per connection).
    fn default() -> Self {
        let slot = Arc::new(Slot::default());
        queues().push(Arc::downgrade(&slot));
        Self { slot, last: 0 }
    }
}

impl InFlight {
    /// The queue holds `n` commands now.
    #[inline]
    pub fn set(&mut self, n: usize) {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        if n != self.last {
            self.last = n;
            self.slot.0.store(n, Ordering::Relaxed);
        }
    }

    /// The commands the live queues hold.
    fn total() -> u64 {
        queues()
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .map(|s| u64::from(s.0.load(Ordering::Relaxed)))
            .sum()
    }
}

/// The target's default metrics address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9420";

/// A request head larger than this is refused.
const HEAD_MAX: usize = 8192;
/// A client has this long to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// What a scrape reads: the registry, and the live connection count.
pub struct Source {
    pub registry: Arc<Registry>,
    pub connections: Box<dyn Fn() -> usize + Send + Sync>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("metrics::Source").finish_non_exhaustive()
    }
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(v).encode(m)
}

/// One counter family: `rows` are (labels, value).
fn counters<L: prometheus_client::encoding::EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(L, u64)],
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        m.encode_family(labels)?
            .encode_counter::<NoLabelSet, u64, u64>(v, None)?;
    }
    Ok(())
}

impl prometheus_client::collector::Collector for Source {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let r = &self.registry;
        let subsystems = r.subsystems();
        let conns = (self.connections)();
        gauge(
            &mut enc,
            "tessera_connections",
            "NVMe/TCP connections being served",
            conns as u64,
        )?;
        gauge(
            &mut enc,
            "tessera_subsystems",
            "NVM subsystems served (discovery not counted)",
            subsystems.len() as u64,
        )?;
        let namespaces: usize = subsystems.values().map(|s| s.namespaces().len()).sum();
        gauge(
            &mut enc,
            "tessera_namespaces",
            "Namespaces served, all subsystems",
            namespaces as u64,
        )?;

        let mut m = enc.encode_descriptor(
            "tessera_controllers",
            "Live controllers per subsystem",
            None,
            MetricType::Gauge,
        )?;
        for s in subsystems.values() {
            let labels = [("subnqn", s.nqn.as_str())];
            ConstGauge::new(s.controllers().len() as u64).encode(m.encode_family(&labels)?)?;
        }

        // Per controller: (labels, counters).
        let ctrls: Vec<_> = subsystems
            .values()
            .flat_map(|s| s.controllers())
            .map(|c| {
                let nqn = c.subsys.as_ref().map(|s| s.nqn.clone()).unwrap_or_default();
                let labels = vec![
                    ("subnqn".to_string(), nqn),
                    ("cntlid".to_string(), c.cntlid.to_string()),
                    ("hostnqn".to_string(), c.hostnqn.clone()),
                ];
                (labels, c)
            })
            .collect();
        type Field = fn(&crate::controller::ctrl::Counters) -> u64;
        let families: [(&str, &str, Field); 5] = [
            (
                "tessera_controller_read_commands",
                "Read commands completed successfully",
                |c| c.read_cmds.load(Ordering::Relaxed),
            ),
            (
                "tessera_controller_write_commands",
                "Write commands completed successfully",
                |c| c.write_cmds.load(Ordering::Relaxed),
            ),
            (
                "tessera_controller_read_bytes",
                "Bytes read by successful Read commands",
                |c| c.bytes_read.load(Ordering::Relaxed),
            ),
            (
                "tessera_controller_written_bytes",
                "Bytes written by successful Write commands",
                |c| c.bytes_written.load(Ordering::Relaxed),
            ),
            (
                "tessera_controller_io_errors",
                "Read and Write commands the backend failed",
                |c| c.errors.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, field) in families {
            let rows: Vec<_> = ctrls
                .iter()
                .map(|(l, c)| (l.clone(), field(&c.counters)))
                .collect();
            counters(&mut enc, name, help, &rows)?;
        }

        let mut m = enc.encode_descriptor(
            "tessera_controller_io_queues",
            "I/O queues connected per controller",
            None,
            MetricType::Gauge,
        )?;
        for (labels, c) in &ctrls {
            let n = crate::subsystem::lock(&c.io_queues).len();
            ConstGauge::new(n as u64).encode(m.encode_family(labels)?)?;
        }
        gauge(
            &mut enc,
            "tessera_commands_in_flight",
            "Commands the queues hold, from their capsule to their completion (each queue's count as of its last wake-up)",
            InFlight::total(),
        )?;

        self.encode_namespaces(&mut enc, &subsystems)?;

        let g = &r.generation;
        gauge(
            &mut enc,
            "tessera_generation",
            "Cluster map generation this server serves (standalone: fixed)",
            g.current(),
        )?;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        counters(
            &mut enc,
            "tessera_generation_mismatches",
            "Commands refused for their generation stamp, by kind",
            &[
                ([("kind", "stale")], load(&g.stale_seen)),
                ([("kind", "behind")], load(&g.behind_seen)),
                ([("kind", "unstamped")], load(&g.unstamped_rejected)),
            ],
        )?;
        counters(
            &mut enc,
            "tessera_generation_checks",
            "Commands checked against the generation",
            &[(NoLabels, load(&g.checked))],
        )?;
        counters(
            &mut enc,
            "tessera_mismatch_reports",
            "Mismatch reports to the manager, by outcome",
            &[
                ([("outcome", "sent")], load(&g.reports_sent)),
                ([("outcome", "dropped")], load(&g.reports_dropped)),
            ],
        )?;
        gauge(
            &mut enc,
            "tessera_discovery_genctr",
            "Discovery log generation counter (moves when subsystems or portals change)",
            r.genctr(),
        )?;

        self.encode_outcomes(&mut enc)?;
        counters(
            &mut enc,
            "tessera_keep_alive_expiries",
            "Controllers torn down because their keep-alive timer expired",
            &[(NoLabels, EVENTS.keep_alive_expiries.load(Ordering::Relaxed))],
        )?;
        let reasons: Vec<_> = EVENTS
            .term_reqs
            .iter()
            .enumerate()
            .map(|(fes, n)| {
                let fes = codec::pdu::Fes(u16::try_from(fes).unwrap_or(u16::MAX));
                let reason = fes.name().map_or_else(
                    || "other".to_string(),
                    |n| n.to_ascii_lowercase().replace(' ', "_"),
                );
                ([("reason", reason)], n.load(Ordering::Relaxed))
            })
            .filter(|(l, n)| *n > 0 || l[0].1 != "other")
            .collect();
        counters(
            &mut enc,
            "tessera_c2h_term_reqs",
            "C2HTermReq PDUs sent (the connection is then closed), by fatal error status",
            &reasons,
        )?;
        let statuses: Vec<_> = EVENTS
            .statuses
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let n = n.load(Ordering::Relaxed);
                (n > 0).then(|| {
                    let labels = [
                        ("sct", format!("{:#x}", i >> 8)),
                        ("sc", format!("{:#04x}", i & 0xff)),
                    ];
                    (labels, n)
                })
            })
            .collect();
        counters(
            &mut enc,
            "tessera_nvme_error_statuses",
            "Commands completed with an error status, by status code type and status code",
            &statuses,
        )
    }
}

impl Source {
    fn encode_outcomes(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let o = &OUTCOMES;
        counters(
            enc,
            "tessera_dhchap_authentications",
            "DH-HMAC-CHAP transactions on queues, by outcome",
            &[
                ([("outcome", "success")], load(&o.auth[0])),
                ([("outcome", "failure")], load(&o.auth[1])),
            ],
        )?;
        counters(
            enc,
            "tessera_reloads",
            "Layout reloads and applies, by outcome (refused: the configuration in force is unchanged)",
            &[
                ([("outcome", "applied")], load(&o.reloads[0])),
                ([("outcome", "refused")], load(&o.reloads[1])),
            ],
        )?;
        let moves: Vec<_> = MoveOutcome::ALL
            .iter()
            .map(|&m| ([("outcome", m.label())], load(&o.moves[m as usize])))
            .collect();
        counters(
            enc,
            "tessera_extent_moves",
            "Switches of extents this server moved out (final copies), by outcome",
            &moves,
        )?;
        let forwarded = FORWARDED.iter().map(|p| load(&p.0)).sum();
        counters(
            enc,
            "tessera_forwarded_commands",
            "Pieces of commands forwarded to the server that owns their extent (cluster mode; each try)",
            &[(NoLabels, forwarded)],
        )?;
        counters(
            enc,
            "tessera_reads_confirmed",
            "Reads of replicated extents served from this server's copy without a read lease, confirmed with the other copies (cluster mode)",
            &[(NoLabels, load(&READS_CONFIRMED))],
        )?;
        counters(
            enc,
            "tessera_path_errors",
            "Commands completed with Internal Path Error (no path to the extent's owner now), by reason",
            &[
                ([("reason", "unmapped")], load(&o.no_path[0])),
                ([("reason", "unreachable")], load(&o.no_path[1])),
                ([("reason", "map_settling")], load(&o.no_path[2])),
            ],
        )
    }

    fn encode_namespaces(
        &self,
        enc: &mut DescriptorEncoder,
        subsystems: &crate::subsystem::SubsystemMap,
    ) -> std::fmt::Result {
        // (labels, read totals, write totals) per namespace.
        let mut rows = Vec::new();
        for s in subsystems.values() {
            for ns in s.namespaces().values() {
                let labels = |op: &str| {
                    vec![
                        ("subnqn".to_string(), s.nqn.clone()),
                        ("nsid".to_string(), ns.nsid.to_string()),
                        ("op".to_string(), op.to_string()),
                    ]
                };
                rows.push((labels("read"), ns.stats.totals(0)));
                rows.push((labels("write"), ns.stats.totals(1)));
            }
        }
        let ops: Vec<_> = rows.iter().map(|(l, t)| (l.clone(), t.0)).collect();
        counters(
            enc,
            "tessera_namespace_commands",
            "Successful Read and Write commands per namespace",
            &ops,
        )?;
        let bytes: Vec<_> = rows.iter().map(|(l, t)| (l.clone(), t.1)).collect();
        counters(
            enc,
            "tessera_namespace_bytes",
            "Bytes moved by successful Read and Write commands per namespace",
            &bytes,
        )?;
        let mut m = enc.encode_descriptor(
            "tessera_namespace_latency_seconds",
            "Read and Write latency from dispatch to the backend until completion (one command in 8 sampled)",
            None,
            MetricType::Histogram,
        )?;
        for (labels, (_, _, sum_us, counts)) in &rows {
            let buckets: Vec<(f64, u64)> = counts
                .iter()
                .enumerate()
                .map(|(i, &c)| {
                    let le = if i < BUCKETS {
                        (BUCKET0_US << i) as f64 / 1e6
                    } else {
                        f64::INFINITY
                    };
                    (le, c)
                })
                .collect();
            let count = counts.iter().sum();
            m.encode_family(labels)?.encode_histogram::<NoLabelSet>(
                *sum_us as f64 / 1e6,
                count,
                &buckets,
                None,
            )?;
        }
        Ok(())
    }
}

/// An empty label set (a family with one unlabelled series).
#[derive(Debug, Clone, Copy)]
struct NoLabels;

impl prometheus_client::encoding::EncodeLabelSet for NoLabels {
    fn encode(
        &self,
        _: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        Ok(())
    }
}

/// The metrics of `source` in the Prometheus text format.
pub fn render(source: Arc<Source>) -> String {
    let mut reg = prometheus_client::registry::Registry::default();
    reg.register_collector(Box::new(source));
    let mut out = String::new();
    // Writing to a String cannot fail; an encoder error would be a bug of ours: say so.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &reg) {
        out = format!("# encoding failed: {e}\n");
    }
    out
}

/// Binds `addr` for [`serve`].
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen for metrics on {addr}: {e}"),
        )
    })
}

/// Serves `GET /metrics` on `listener` until dropped.
pub async fn serve(listener: TcpListener, source: Arc<Source>) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                tokio::spawn(answer(s, Arc::clone(&source)));
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut s: TcpStream, source: Arc<Source>) {
    let mut head = Vec::with_capacity(512);
    let read = tokio::time::timeout(HEAD_TIMEOUT, async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.ok()?;
            if n == 0 || head.len() + n > HEAD_MAX {
                return None;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Some(())
    })
    .await;
    if !matches!(read, Ok(Some(()))) {
        return;
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next(), parts.next());
    let path = path.map(|p| p.split(|&b| b == b'?').next().unwrap_or_default());
    let (status, ctype, body) = match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            render(source),
        ),
        (Some(b"GET"), _) => (
            "404 Not Found",
            "text/plain",
            "not found: try /metrics\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.shutdown().await;
}
