//! The NVMe workload: one controller, `--queues` I/O queues ([`DirectQueue`]s), each keeping
//! `--qd` commands in flight, all driven by one polling loop on one thread (the admin queue and
//! its keep-alive stay on the tool's runtime thread).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use codec::nvme::cmd::{IoCommand, Rw};
use codec::nvme::sgl::SglDescriptor;
use hdrhistogram::Histogram;
use tessera::initiator::{
    Controller, ControllerOptions, DEFAULT_IO_SQSIZE, DirectCompletion, DirectQueue, NLB_MAX,
    QueueOptions,
};

use super::pattern::{self, VersionMap};
use super::report::IoRecord;
use super::stats::{self, Latency};
use super::workload::{Dir, RwMode, Workload};
use super::{RUN_GRACE, fmt_size};

/// How often `--verify` retries to find a unit with no I/O in flight before giving up on the
/// namespace as too small for the queue depth.
const CLAIM_TRIES_MAX: u32 = 1000;

/// What to run.
#[derive(Debug, Clone)]
pub struct IoOpts {
    pub addr: SocketAddr,
    pub nqn: String,
    pub hostnqn: String,
    pub nsid: u32,
    pub rw: RwMode,
    pub mix: u8,
    pub bs: u64,
    pub qd: u32,
    pub queues: u16,
    /// Measured time (ignored with `ios`).
    pub time: Duration,
    /// Stop after this many I/Os instead of after `time`.
    pub ios: Option<u64>,
    pub warmup: Duration,
    pub hdgst: bool,
    pub ddgst: bool,
    pub verify: bool,
    pub seed: u64,
    pub label: String,
    /// Map generation stamped in CDW2/CDW3 of every command (0: unstamped).
    pub generation: u64,
    /// PIDs of the target processes on this machine (a cluster has several): their CPU time
    /// per I/O is summed.
    pub target_pids: Vec<u32>,
    /// Print a progress line every second (on a terminal).
    pub progress: bool,
    /// Keep polling the sockets this long after the last I/O before sleeping in `poll(2)`.
    pub poll: Duration,
    /// In-capsule write data limit (None: the initiator's default, 8 KiB).
    pub incapsule: Option<u32>,
    /// Leave SQ flow control on (reads then end with a response capsule, no SUCCESS flag).
    pub sq_flow_control: bool,
    /// Which optimisation's before/after pair this run belongs to (kept in the record).
    pub opt: Option<super::report::OptTag>,
    /// Only these byte ranges `(start, len)` of the namespace (sorted; `--extents`), else all.
    pub ranges: Option<Vec<(u64, u64)>>,
}

/// Checks a read against the version map: how it went.
enum Checked {
    Verified,
    Unknown,
}

/// State of the run (one thread: `Cell`s, no atomics).
struct Ctx {
    o: IoOpts,
    lba: u32,
    nlb: u32,
    bs: usize,
    wl: RefCell<Workload>,
    vmap: Option<RefCell<VersionMap>>,
    /// Payload of every write when not verifying (cloning `Bytes` is a refcount).
    write_buf: Bytes,
    stop: Cell<bool>,
    /// I/Os still to issue (`--ios`), else `u64::MAX`.
    budget: Cell<u64>,
    /// The measured window: completions in `[start, end)` count.
    start: Instant,
    end: Option<Instant>,
    /// Every completion, warmup included (progress line, stall detection).
    done_total: Cell<u64>,
}

/// What one queue loop measured.
struct QStats {
    hist: Histogram<u64>,
    ios: u64,
    bytes: u64,
    verified: u64,
    unverified: u64,
    last_end: Option<Instant>,
}

fn ctx_err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |e| format!("{what}: {e}")
}

/// Connects, runs the workload, disconnects; returns the figures of the measured window.
pub async fn run(o: &IoOpts) -> Result<IoRecord, String> {
    if o.qd == 0 || o.queues == 0 {
        return Err("--qd and --queues must be at least 1".into());
    }
    if o.ios.is_some() && !o.warmup.is_zero() {
        return Err("--warmup applies to --time runs only".into());
    }
    let mut copts = ControllerOptions::default();
    copts.transport.hdgst = o.hdgst;
    copts.transport.ddgst = o.ddgst;
    // One watchdog for the whole run instead of a timer per command (see RUN_GRACE).
    copts.transport.command_timeout = None;
    if let Some(n) = o.incapsule {
        copts.io_incapsule_data_max = n;
    }
    copts.disable_sq_flow_control = !o.sq_flow_control;
    let ctrl = Controller::connect(o.addr, &o.nqn, &o.hostnqn, &copts)
        .await
        .map_err(ctx_err("connecting the admin queue"))?;
    let result = run_on(o, &ctrl).await;
    // Best effort, bounded: a dead target must not hang the report of its death.
    let _ = tokio::time::timeout(Duration::from_secs(5), ctrl.disconnect()).await;
    result
}

async fn run_on(o: &IoOpts, ctrl: &Controller) -> Result<IoRecord, String> {
    ctrl.enable()
        .await
        .map_err(ctx_err("enabling the controller"))?;
    let granted = ctrl
        .set_num_queues(o.queues)
        .await
        .map_err(ctx_err("Set Features Number of Queues"))?;
    if granted < o.queues {
        return Err(format!(
            "the target grants {granted} I/O queues, {} asked",
            o.queues
        ));
    }
    let cap = ctrl.cap().await.map_err(ctx_err("reading CAP"))?;
    let sqsize = cap.mqes.min(DEFAULT_IO_SQSIZE);
    if o.qd > u32::from(sqsize) + 1 {
        return Err(format!(
            "--qd {} exceeds the queue size {} (CAP.MQES {})",
            o.qd,
            u32::from(sqsize) + 1,
            cap.mqes
        ));
    }
    let ns = ctrl
        .identify_namespace_parsed(o.nsid)
        .await
        .map_err(ctx_err("Identify Namespace"))?;
    let lba = ns
        .lba_size()
        .ok_or_else(|| format!("namespace {} reports no valid LBA format", o.nsid))?;
    if ns.nsze == 0 {
        return Err(format!("namespace {} is not active (NSZE 0)", o.nsid));
    }
    let ns_bytes = ns
        .nsze
        .checked_mul(u64::from(lba))
        .ok_or("namespace size overflows")?;
    if o.bs == 0 || !o.bs.is_multiple_of(u64::from(lba)) {
        return Err(format!(
            "--bs {} is not a multiple of the LBA size {lba}",
            o.bs
        ));
    }
    let nlb = u32::try_from(o.bs / u64::from(lba))
        .ok()
        .filter(|&n| n <= NLB_MAX)
        .ok_or_else(|| format!("--bs {} is more than {NLB_MAX} blocks", o.bs))?;
    let bs = usize::try_from(o.bs).map_err(|_| "--bs too large")?;
    let mut wl = Workload::new(ns_bytes, o.bs, o.rw, o.mix, o.seed)?;
    if let Some(r) = &o.ranges {
        wl.restrict(r)?;
    }
    let vmap = if o.verify {
        wl.limit_units(pattern::VERIFY_UNITS_MAX);
        let inflight = u64::from(o.qd) * u64::from(o.queues);
        if wl.units() < 2 * inflight {
            return Err(format!(
                "--verify needs at least {} blocks of {} in the namespace",
                2 * inflight,
                fmt_size(o.bs)
            ));
        }
        Some(RefCell::new(VersionMap::new(wl.units())))
    } else {
        None
    };
    let opts: Vec<_> = (1..=o.queues)
        .map(|qid| ctrl.io_queue_options(qid, sqsize))
        .collect();
    let mut buf = vec![0u8; bs];
    pattern::fill(&mut buf, 0, 0);
    let ctx = Ctx {
        o: o.clone(),
        lba,
        nlb,
        bs,
        wl: RefCell::new(wl),
        vmap,
        write_buf: Bytes::from(buf),
        stop: Cell::new(false),
        budget: Cell::new(o.ios.unwrap_or(u64::MAX)),
        start: Instant::now(),
        end: None,
        done_total: Cell::new(0),
    };
    // The I/O runs on a thread of its own (it inherits the tool's CPU pinning) so that this
    // runtime stays free for the admin queue's keep-alive while the loop polls its sockets.
    tokio::task::spawn_blocking(move || drive(ctx, &opts))
        .await
        .map_err(|e| format!("I/O thread: {e}"))?
}

impl Ctx {
    /// Takes one I/O from the budget; false when the run is over.
    fn take(&self) -> bool {
        if self.stop.get() {
            return false;
        }
        match self.budget.get() {
            0 => false,
            u64::MAX => true,
            n => {
                self.budget.set(n - 1);
                true
            }
        }
    }

    /// The next I/O: what it waits for, and the data of a write.
    fn plan(&self) -> Result<(Phase, Option<Bytes>), String> {
        let mut wl = self.wl.borrow_mut();
        let dir = wl.next_dir();
        let Some(vmap) = &self.vmap else {
            let unit = wl.next_unit();
            return Ok(match dir {
                Dir::Read => (Phase::Read { unit, expect: 0 }, None),
                Dir::Write => (
                    Phase::Write {
                        unit,
                        generation: 0,
                    },
                    Some(self.write_buf.clone()),
                ),
            });
        };
        let mut vmap = vmap.borrow_mut();
        for _ in 0..CLAIM_TRIES_MAX {
            let unit = wl.next_unit();
            if !vmap.claim(unit) {
                continue;
            }
            return Ok(match dir {
                Dir::Read => (
                    Phase::Read {
                        unit,
                        expect: vmap.expected(unit),
                    },
                    None,
                ),
                Dir::Write => {
                    let generation = vmap.new_generation();
                    let mut b = vec![0u8; self.bs];
                    pattern::fill(&mut b, unit, generation);
                    (Phase::Write { unit, generation }, Some(Bytes::from(b)))
                }
            });
        }
        Err("--verify: no free block found (namespace too small for the queue depth)".into())
    }

    fn slba(&self, unit: u64) -> u64 {
        self.wl.borrow().offset(unit) / u64::from(self.lba)
    }

    fn release(&self, unit: u64) {
        if let Some(v) = &self.vmap {
            v.borrow_mut().release(unit);
        }
    }

    fn in_window(&self, end: Instant) -> bool {
        end >= self.start && self.end.is_none_or(|e| end < e)
    }
}

/// What an I/O slot of the tool is waiting for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Read {
        unit: u64,
        expect: u32,
    },
    Write {
        unit: u64,
        generation: u32,
    },
    /// `--verify`: the read-back of a write, while its block is still claimed.
    ReadBack {
        unit: u64,
        generation: u32,
    },
}

/// One queue and the tool's I/Os on it (at most `--qd`; the tag of a command is its index).
struct QState {
    q: DirectQueue,
    phase: Vec<Phase>,
    started: Vec<Instant>,
    free: Vec<u64>,
    stats: QStats,
}

/// Connects the I/O queues, keeps `--qd` commands in flight on each until the run ends, drains
/// them, and returns the figures. Polls the sockets while I/O is in flight (`--poll-us`, like
/// `spdk_nvme_perf`; a wake-up from `epoll_wait` costs more than the I/O here) and sleeps in
/// `poll(2)` once nothing happened for that long.
fn drive(mut ctx: Ctx, opts: &[QueueOptions]) -> Result<IoRecord, String> {
    let o = ctx.o.clone();
    let qd = usize::try_from(o.qd).unwrap_or(1);
    let mut qs = Vec::with_capacity(opts.len());
    for qo in opts {
        let q = DirectQueue::connect(o.addr, qo)
            .map_err(|e| format!("connecting I/O queue {}: {e}", qo.qid))?;
        qs.push(QState {
            q,
            phase: vec![Phase::Read { unit: 0, expect: 0 }; qd],
            started: vec![Instant::now(); qd],
            free: (0..qd as u64).rev().collect(),
            stats: QStats {
                hist: stats::new_histogram(),
                ios: 0,
                bytes: 0,
                verified: 0,
                unverified: 0,
                last_end: None,
            },
        });
    }
    let t0 = Instant::now();
    ctx.start = t0 + o.warmup;
    ctx.end = o.ios.is_none().then(|| ctx.start + o.time);
    let snap = |pids: &[u32]| (stats::self_cpu(), stats::procs_cpu_ns(pids));
    let mut first = snap(&o.target_pids);
    let mut last = None;
    let mut measuring = o.warmup.is_zero();
    let mut next_tick = t0 + Duration::from_secs(1);
    let (mut prev, mut prev_bytes, mut stalled) = (0u64, 0u64, Duration::ZERO);
    let mut done = Vec::with_capacity(256);
    let mut quiet_since = t0;
    let mut pfds: Vec<libc::pollfd> = Vec::with_capacity(qs.len());
    loop {
        let mut busy = false;
        let mut in_flight = 0;
        for st in &mut qs {
            // Top the queue up to --qd.
            while let Some(&tag) = st.free.last()
                && ctx.take()
            {
                st.free.pop();
                let (phase, data) = ctx.plan()?;
                submit(&ctx, st, tag, phase, data)?;
                busy = true;
            }
            if st.q.has_output() {
                st.q.flush()
                    .map_err(|e| format!("queue {}: {e}", st.q.qid()))?;
            }
            let n =
                st.q.poll(&mut done)
                    .map_err(|e| format!("queue {}: {e}", st.q.qid()))?;
            if n > 0 {
                busy = true;
            }
            let now = Instant::now();
            for c in done.drain(..) {
                complete(&ctx, st, c, now)?;
            }
            if st.q.has_output() {
                st.q.flush()
                    .map_err(|e| format!("queue {}: {e}", st.q.qid()))?;
            }
            in_flight += st.q.in_flight();
        }
        let now = Instant::now();
        if busy {
            quiet_since = now;
        }
        if !measuring && now >= ctx.start {
            first = snap(&o.target_pids);
            measuring = true;
        }
        if let Some(end) = ctx.end
            && !ctx.stop.get()
            && now >= end
        {
            last = Some(snap(&o.target_pids));
            ctx.stop.set(true);
        }
        if in_flight == 0 && (ctx.stop.get() || ctx.budget.get() == 0) {
            break;
        }
        if now >= next_tick {
            next_tick += Duration::from_secs(1);
            let n = ctx.done_total.get();
            let b: u64 = n * o.bs;
            if o.progress {
                eprint!(
                    "\r[{:>4} s] {:>10.0} IOPS {:>10.1} MiB/s{}   ",
                    t0.elapsed().as_secs(),
                    (n - prev) as f64,
                    (b - prev_bytes) as f64 / 1_048_576.0,
                    if measuring { "" } else { " (warmup)" }
                );
            }
            stalled = if n == prev {
                stalled + Duration::from_secs(1)
            } else {
                Duration::ZERO
            };
            if stalled >= RUN_GRACE {
                return Err(format!("no I/O completed for {} s", stalled.as_secs()));
            }
            (prev, prev_bytes) = (n, b);
        }
        if !busy && now.duration_since(quiet_since) >= o.poll {
            // Nothing for a while: sleep until a socket is ready (or the next tick).
            pfds.clear();
            for st in &qs {
                let mut events = libc::POLLIN;
                if st.q.has_output() {
                    events |= libc::POLLOUT;
                }
                pfds.push(libc::pollfd {
                    fd: st.q.fd(),
                    events,
                    revents: 0,
                });
            }
            let wait = next_tick
                .saturating_duration_since(now)
                .min(Duration::from_millis(100));
            let ms = libc::c_int::try_from(wait.as_millis().max(1)).unwrap_or(100);
            // SAFETY: `pfds` is a live array of `pfds.len()` initialised pollfd structures;
            // poll only writes their `revents` fields.
            let _ = unsafe {
                libc::poll(
                    pfds.as_mut_ptr(),
                    libc::nfds_t::try_from(pfds.len()).unwrap_or(0),
                    ms,
                )
            };
        }
    }
    if o.progress {
        eprintln!();
    }
    let (cpu0, tgt0) = first;
    let (cpu1, tgt1) = last.unwrap_or_else(|| snap(&o.target_pids));
    let mut hist = stats::new_histogram();
    let (mut ios, mut bytes, mut verified, mut unverified) = (0u64, 0u64, 0u64, 0u64);
    let mut last_end = None;
    for st in &qs {
        let q = &st.stats;
        hist.add(&q.hist)
            .map_err(|e| format!("merging histograms: {e:?}"))?;
        ios += q.ios;
        bytes += q.bytes;
        verified += q.verified;
        unverified += q.unverified;
        last_end = last_end.max(q.last_end);
    }
    let seconds = match ctx.end {
        Some(end) => end.duration_since(ctx.start).as_secs_f64(),
        None => last_end.map_or(0.0, |e| e.duration_since(ctx.start).as_secs_f64()),
    };
    if ios == 0 || seconds <= 0.0 {
        return Err("no I/O completed in the measured window".into());
    }
    let per_io_us = |d: Duration| d.as_secs_f64() * 1e6 / ios as f64;
    Ok(IoRecord {
        label: o.label.clone(),
        rw: o.rw,
        read_pct: o.rw.read_pct(o.mix),
        bs: o.bs,
        qd: o.qd,
        queues: o.queues,
        hdgst: o.hdgst,
        ddgst: o.ddgst,
        generation: o.generation,
        cluster: None,
        seconds,
        ios,
        iops: ios as f64 / seconds,
        mib_s: bytes as f64 / seconds / 1_048_576.0,
        latency: Latency::from_histogram(&hist),
        bench_cpu_us_per_io: per_io_us(cpu1.saturating_sub(cpu0)),
        target_cpu_us_per_io: match (tgt0, tgt1) {
            (Some(a), Some(b)) => Some(per_io_us(Duration::from_nanos(b.saturating_sub(a)))),
            _ => None,
        },
        verified: o.verify.then_some(verified),
        unverified: o.verify.then_some(unverified),
        opt: o.opt.clone(),
    })
}

/// Queues the command of I/O `tag` in `phase` on `st`'s queue.
fn submit(
    ctx: &Ctx,
    st: &mut QState,
    tag: u64,
    phase: Phase,
    data: Option<Bytes>,
) -> Result<(), String> {
    let (unit, write) = match phase {
        Phase::Read { unit, .. } | Phase::ReadBack { unit, .. } => (unit, false),
        Phase::Write { unit, .. } => (unit, true),
    };
    let rw = Rw::new(ctx.o.nsid, ctx.slba(unit), ctx.nlb, ctx.o.generation);
    let (cmd, data_in) = if write {
        (IoCommand::Write(rw), 0)
    } else {
        (
            IoCommand::Read(rw),
            u32::try_from(ctx.bs).unwrap_or(u32::MAX),
        )
    };
    let sqe = cmd.to_sqe(0, SglDescriptor::transport(0));
    let i = usize::try_from(tag).unwrap_or(usize::MAX);
    st.phase[i] = phase;
    st.started[i] = Instant::now();
    st.q.submit(sqe, data, data_in, tag)
        .map_err(|e| format!("queue {}: {e}", st.q.qid()))
}

fn verify_read(ctx: &Ctx, unit: u64, expect: u32, data: &[u8]) -> Result<Checked, String> {
    if expect == 0 {
        return Ok(Checked::Unknown);
    }
    pattern::check(data, unit, expect).map_err(|m| {
        format!(
            "VERIFY FAILED: block {unit} (LBA {}, {}) should hold generation {expect}: {m}",
            ctx.slba(unit),
            fmt_size(ctx.o.bs)
        )
    })?;
    Ok(Checked::Verified)
}

/// One finished command of `st`: statistics, checks, and the next step of its I/O.
fn complete(ctx: &Ctx, st: &mut QState, c: DirectCompletion, now: Instant) -> Result<(), String> {
    let tag = c.tag;
    let i = usize::try_from(tag).unwrap_or(usize::MAX);
    let (Some(&phase), Some(&t)) = (st.phase.get(i), st.started.get(i)) else {
        return Err(format!(
            "queue {}: completion for unknown I/O {tag}",
            st.q.qid()
        ));
    };
    let (unit, write) = match phase {
        Phase::Read { unit, .. } | Phase::ReadBack { unit, .. } => (unit, false),
        Phase::Write { unit, .. } => (unit, true),
    };
    let status = c.cqe.status();
    if !status.is_success() {
        ctx.release(unit);
        return Err(format!(
            "{} of {} at LBA {} failed: {status}",
            if write { "write" } else { "read" },
            fmt_size(ctx.o.bs),
            ctx.slba(unit),
        ));
    }
    if !write && c.data.len() != ctx.bs {
        return Err(format!(
            "read at LBA {} returned {} bytes, {} expected",
            ctx.slba(unit),
            c.data.len(),
            ctx.bs
        ));
    }
    ctx.done_total.set(ctx.done_total.get() + 1);
    if ctx.in_window(now) {
        stats::record(&mut st.stats.hist, now - t);
        st.stats.ios += 1;
        st.stats.bytes += ctx.o.bs;
        st.stats.last_end = st.stats.last_end.max(Some(now));
    }
    match phase {
        Phase::Read { unit, expect } => {
            ctx.release(unit);
            if ctx.vmap.is_some() {
                match verify_read(ctx, unit, expect, &c.data)? {
                    Checked::Verified => st.stats.verified += 1,
                    Checked::Unknown => st.stats.unverified += 1,
                }
            }
        }
        Phase::Write { unit, generation } => {
            if let Some(vmap) = &ctx.vmap {
                vmap.borrow_mut().written(unit, generation);
                // Read it back while the block is still ours.
                return submit(ctx, st, tag, Phase::ReadBack { unit, generation }, None);
            }
        }
        Phase::ReadBack { unit, generation } => {
            ctx.release(unit);
            match verify_read(ctx, unit, generation, &c.data)? {
                Checked::Verified => st.stats.verified += 1,
                Checked::Unknown => st.stats.unverified += 1,
            }
        }
    }
    st.free.push(tag);
    Ok(())
}
