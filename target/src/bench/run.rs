//! The NVMe workload: one controller, `--queues` I/O queues, each keeping `--qd` commands in
//! flight from one task (pipelined through [`Queue::start`]), all on one thread.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use codec::nvme::cmd::{IoCommand, Rw};
use codec::nvme::sgl::SglDescriptor;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use tessera::initiator::{Controller, ControllerOptions, DEFAULT_IO_SQSIZE, NLB_MAX, Queue};

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
}

/// One planned command.
enum Planned {
    Read {
        unit: u64,
        expect: u32,
    },
    Write {
        unit: u64,
        generation: u32,
        data: Bytes,
    },
}

/// One finished command, as the statistics see it.
#[derive(Clone, Copy)]
struct Rec {
    end: Instant,
    lat: Duration,
}

/// Checks a read against the version map: how it went.
enum Checked {
    Verified,
    Unknown,
}

/// State shared by the queue loops (one thread: `Cell`s, no atomics).
struct Ctx<'a> {
    o: &'a IoOpts,
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
    done_bytes: Cell<u64>,
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
    let mut queues = Vec::with_capacity(usize::from(o.queues));
    for qid in 1..=o.queues {
        queues.push(
            ctrl.connect_io_queue(qid, sqsize)
                .await
                .map_err(|e| format!("connecting I/O queue {qid}: {e}"))?,
        );
    }
    let mut buf = vec![0u8; bs];
    pattern::fill(&mut buf, 0, 0);

    let t0 = Instant::now();
    let start = t0 + o.warmup;
    let ctx = Ctx {
        o,
        lba,
        nlb,
        bs,
        wl: RefCell::new(wl),
        vmap,
        write_buf: Bytes::from(buf),
        stop: Cell::new(false),
        budget: Cell::new(o.ios.unwrap_or(u64::MAX)),
        start,
        end: o.ios.is_none().then(|| start + o.time),
        done_total: Cell::new(0),
        done_bytes: Cell::new(0),
    };
    let snap = |pids: &[u32]| (stats::self_cpu(), stats::procs_cpu_ns(pids));
    let first = Cell::new(snap(&o.target_pids));
    let last = Cell::new(None);
    let loops = futures::future::try_join_all(queues.iter().map(|q| queue_loop(q, &ctx)));
    let control = async {
        let mut next_tick = t0 + Duration::from_secs(1);
        let (mut prev, mut prev_bytes, mut stalled) = (0u64, 0u64, Duration::ZERO);
        let mut measuring = o.warmup.is_zero();
        loop {
            let mut wake = next_tick;
            if !measuring {
                wake = wake.min(start);
            }
            if let Some(end) = ctx.end
                && !ctx.stop.get()
            {
                wake = wake.min(end);
            }
            tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await;
            let now = Instant::now();
            if !measuring && now >= start {
                first.set(snap(&o.target_pids));
                measuring = true;
            }
            if let Some(end) = ctx.end
                && !ctx.stop.get()
                && now >= end
            {
                last.set(Some(snap(&o.target_pids)));
                ctx.stop.set(true);
            }
            if now < next_tick {
                continue;
            }
            next_tick += Duration::from_secs(1);
            let (n, b) = (ctx.done_total.get(), ctx.done_bytes.get());
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
                return format!("no I/O completed for {} s", stalled.as_secs());
            }
            (prev, prev_bytes) = (n, b);
        }
    };
    let per_queue = tokio::select! {
        r = loops => r,
        e = control => Err(e),
    };
    if o.progress {
        eprintln!();
    }
    for q in &queues {
        q.close().await;
    }
    let per_queue = per_queue?;
    let (cpu0, tgt0) = first.get();
    let (cpu1, tgt1) = last.get().unwrap_or_else(|| snap(&o.target_pids));

    let mut hist = stats::new_histogram();
    let (mut ios, mut bytes, mut verified, mut unverified) = (0u64, 0u64, 0u64, 0u64);
    let mut last_end = None;
    for q in &per_queue {
        hist.add(&q.hist)
            .map_err(|e| format!("merging histograms: {e:?}"))?;
        ios += q.ios;
        bytes += q.bytes;
        verified += q.verified;
        unverified += q.unverified;
        last_end = last_end.max(q.last_end);
    }
    let seconds = match ctx.end {
        Some(end) => end.duration_since(start).as_secs_f64(),
        None => last_end.map_or(0.0, |e| e.duration_since(start).as_secs_f64()),
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
    })
}

impl Ctx<'_> {
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

    fn plan(&self) -> Result<Planned, String> {
        let mut wl = self.wl.borrow_mut();
        let dir = wl.next_dir();
        let Some(vmap) = &self.vmap else {
            let unit = wl.next_unit();
            return Ok(match dir {
                Dir::Read => Planned::Read { unit, expect: 0 },
                Dir::Write => Planned::Write {
                    unit,
                    generation: 0,
                    data: self.write_buf.clone(),
                },
            });
        };
        let mut vmap = vmap.borrow_mut();
        for _ in 0..CLAIM_TRIES_MAX {
            let unit = wl.next_unit();
            if !vmap.claim(unit) {
                continue;
            }
            return Ok(match dir {
                Dir::Read => Planned::Read {
                    unit,
                    expect: vmap.expected(unit),
                },
                Dir::Write => {
                    let generation = vmap.new_generation();
                    let mut b = vec![0u8; self.bs];
                    pattern::fill(&mut b, unit, generation);
                    Planned::Write {
                        unit,
                        generation,
                        data: Bytes::from(b),
                    }
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
}

/// Keeps `qd` commands in flight on `q` until the run stops, then drains.
async fn queue_loop(q: &Queue, ctx: &Ctx<'_>) -> Result<QStats, String> {
    let qd = usize::try_from(ctx.o.qd).unwrap_or(1);
    let mut inflight = FuturesUnordered::new();
    let mut s = QStats {
        hist: stats::new_histogram(),
        ios: 0,
        bytes: 0,
        verified: 0,
        unverified: 0,
        last_end: None,
    };
    loop {
        while inflight.len() < qd && ctx.take() {
            inflight.push(one_io(q, ctx, ctx.plan()?));
        }
        let Some(done) = inflight.next().await else {
            return Ok(s);
        };
        let (recs, checked) = done?;
        match checked {
            Some(Checked::Verified) => s.verified += 1,
            Some(Checked::Unknown) => s.unverified += 1,
            None => {}
        }
        for r in recs.into_iter().flatten() {
            ctx.done_total.set(ctx.done_total.get() + 1);
            ctx.done_bytes.set(ctx.done_bytes.get() + ctx.o.bs);
            let in_window = r.end >= ctx.start && ctx.end.is_none_or(|e| r.end < e);
            if in_window {
                stats::record(&mut s.hist, r.lat);
                s.ios += 1;
                s.bytes += ctx.o.bs;
                s.last_end = s.last_end.max(Some(r.end));
            }
        }
    }
}

/// Submits one command and waits for it; `None` for the read-back slot when not verifying.
type IoDone = ([Option<Rec>; 2], Option<Checked>);

async fn submit(
    q: &Queue,
    ctx: &Ctx<'_>,
    dir: Dir,
    unit: u64,
    data: Option<Bytes>,
) -> Result<(Rec, Bytes), String> {
    let slba = ctx.slba(unit);
    let rw = Rw::new(ctx.o.nsid, slba, ctx.nlb, ctx.o.generation);
    let (cmd, data_in) = match dir {
        Dir::Read => (
            IoCommand::Read(rw),
            u32::try_from(ctx.bs).unwrap_or(u32::MAX),
        ),
        Dir::Write => (IoCommand::Write(rw), 0),
    };
    let sqe = cmd.to_sqe(0, SglDescriptor::transport(0));
    let t = Instant::now();
    let c = q
        .start(sqe, data, data_in)
        .await
        .map_err(|e| format!("queue {}: {e}", q.qid()))?
        .await
        .map_err(|e| format!("queue {}: {e}", q.qid()))?;
    let end = Instant::now();
    if !c.status().is_success() {
        return Err(format!(
            "{} of {} at LBA {slba} failed: {}",
            if dir == Dir::Read { "read" } else { "write" },
            fmt_size(ctx.o.bs),
            c.status()
        ));
    }
    if dir == Dir::Read && c.data.len() != ctx.bs {
        return Err(format!(
            "read at LBA {slba} returned {} bytes, {} expected",
            c.data.len(),
            ctx.bs
        ));
    }
    Ok((Rec { end, lat: end - t }, c.data))
}

fn verify_read(ctx: &Ctx<'_>, unit: u64, expect: u32, data: &[u8]) -> Result<Checked, String> {
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

async fn one_io(q: &Queue, ctx: &Ctx<'_>, p: Planned) -> Result<IoDone, String> {
    let verifying = ctx.vmap.is_some();
    match p {
        Planned::Read { unit, expect } => {
            let r = submit(q, ctx, Dir::Read, unit, None).await;
            ctx.release(unit);
            let (rec, data) = r?;
            let checked = if verifying {
                Some(verify_read(ctx, unit, expect, &data)?)
            } else {
                None
            };
            Ok(([Some(rec), None], checked))
        }
        Planned::Write {
            unit,
            generation,
            data,
        } => {
            let w = submit(q, ctx, Dir::Write, unit, Some(data)).await;
            let Some(vmap) = &ctx.vmap else {
                return Ok(([Some(w?.0), None], None));
            };
            let w = match w {
                Ok((rec, _)) => rec,
                Err(e) => {
                    ctx.release(unit);
                    return Err(e);
                }
            };
            vmap.borrow_mut().written(unit, generation);
            // Read it back while the block is still ours.
            let r = submit(q, ctx, Dir::Read, unit, None).await;
            ctx.release(unit);
            let (rec, back) = r?;
            let checked = verify_read(ctx, unit, generation, &back)?;
            Ok(([Some(w), Some(rec)], Some(checked)))
        }
    }
}
