//! Results as JSON records (one per `tessera bench --json` run) and the markdown report
//! `ci/bench` prints: the I/O table, the baselines, memory and idle CPU, and the aims.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::cluster::ClusterShape;
use super::fmt_size;
use super::stats::Latency;
use super::workload::RwMode;

/// One measurement, as `tessera bench --json` prints it (one JSON object per line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Io(IoRecord),
    Baseline(BaselineRecord),
    Hold(HoldRecord),
    Rebuild(RebuildRecord),
}

/// A rebuild timed by `ci/bench` (its `cluster_rebuild` step): copies made `rebuilding` at once,
/// timed from the manager's status until every one is `in_sync` again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RebuildRecord {
    /// How the copies went out of the write set and came back (free text).
    pub how: String,
    /// Copies rebuilt, and how many of them whole (the primary had no record of what they
    /// missed).
    pub copies: u32,
    pub whole: u32,
    /// Bytes the primaries copied (the sum of their "rebuild started" totals).
    pub bytes: u64,
    /// From the server's return (`state: up`) until no copy is `rebuilding` or `stale`.
    pub seconds: f64,
    /// From the first "rebuild started" to the last "rebuild done" in the primaries' logs, when
    /// known: the copying alone, without the two map publications around it.
    #[serde(default)]
    pub copy_seconds: Option<f64>,
    /// The host load running meanwhile (free text; empty: none).
    #[serde(default)]
    pub load: String,
    /// `--rebuild-rate` of the servers (bytes a second; 0: unlimited).
    pub rate: u64,
}

impl RebuildRecord {
    /// Bytes a second, by the whole time to `in_sync`.
    pub fn rate_to_in_sync(&self) -> f64 {
        self.bytes as f64 / self.seconds.max(1e-9)
    }

    /// Bytes a second while copying, when the copy window is known.
    pub fn copy_rate(&self) -> Option<f64> {
        self.copy_seconds.map(|s| self.bytes as f64 / s.max(1e-9))
    }
}

/// An NVMe workload run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IoRecord {
    /// Free text from `--label` (ci/bench: the backend, "null" or "ram").
    pub label: String,
    pub rw: RwMode,
    pub read_pct: u8,
    pub bs: u64,
    pub qd: u32,
    pub queues: u16,
    pub hdgst: bool,
    pub ddgst: bool,
    /// Map generation stamped in every command (`--generation`; 0: unstamped).
    #[serde(default)]
    pub generation: u64,
    /// Through a cluster server's portal (`--manager`): which server, how much forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterShape>,
    /// Length of the measured window (after warmup).
    pub seconds: f64,
    /// Commands completed in the window.
    pub ios: u64,
    pub iops: f64,
    pub mib_s: f64,
    pub latency: Latency,
    /// This tool's CPU time (all threads) per I/O in the window.
    pub bench_cpu_us_per_io: f64,
    /// The target's CPU time per I/O (with `--target-pid`).
    pub target_cpu_us_per_io: Option<f64>,
    /// With `--verify`: reads checked against what was written, and reads of blocks this run
    /// had not written (content unknown, not checked).
    pub verified: Option<u64>,
    pub unverified: Option<u64>,
    /// One side of an optimisation's before/after pair (`--opt`): kept out of the main table
    /// and the aims, shown in the optimisations table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opt: Option<OptTag>,
}

/// `--opt NAME=on|off`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OptTag {
    pub name: String,
    pub on: bool,
}

impl OptTag {
    pub fn parse(s: &str) -> Result<OptTag, String> {
        let (name, v) = s
            .split_once('=')
            .ok_or_else(|| format!("--opt {s:?}: expected NAME=on or NAME=off"))?;
        let on = match v {
            "on" => true,
            "off" => false,
            _ => return Err(format!("--opt {s:?}: the value is on or off")),
        };
        if name.is_empty() {
            return Err(format!("--opt {s:?}: empty name"));
        }
        Ok(OptTag {
            name: name.to_string(),
            on,
        })
    }
}

impl IoRecord {
    pub fn digests(&self) -> &'static str {
        match (self.hdgst, self.ddgst) {
            (false, false) => "off",
            (true, true) => "hdr+data",
            (true, false) => "hdr",
            (false, true) => "data",
        }
    }

    pub fn workload(&self) -> String {
        let mut s = format!("{} {}", fmt_size(self.bs), self.rw.name());
        if self.rw == RwMode::Randrw {
            let _ = write!(s, " {}%r", self.read_pct);
        }
        let _ = write!(s, " QD{}", self.qd);
        if self.queues > 1 {
            let _ = write!(s, "x{}q", self.queues);
        }
        s
    }

    /// Same workload, backend, cluster path and shape; digests and stamp aside.
    fn same_shape(&self, o: &IoRecord) -> bool {
        self.label == o.label
            && self.rw == o.rw
            && self.read_pct == o.read_pct
            && self.bs == o.bs
            && self.qd == o.qd
            && self.queues == o.queues
            && self.cluster_key() == o.cluster_key()
    }

    /// Digests off and unstamped: what the "cost" column compares against.
    fn is_plain(&self) -> bool {
        !self.hdgst && !self.ddgst && self.generation == 0
    }

    /// The cluster path, as far as it tells runs apart (the generation of the map aside).
    #[allow(clippy::type_complexity)]
    fn cluster_key(&self) -> Option<(u32, &str, &str, u32, u32, Option<&str>)> {
        self.cluster.as_ref().map(|c| {
            (
                c.servers,
                c.via.as_str(),
                c.volume.as_str(),
                c.replicas,
                c.forwarded_extents,
                c.select.as_deref(),
            )
        })
    }

    /// The "backend" column: the label, the stamp, the cluster path.
    pub fn backend(&self) -> String {
        let mut s = self.label.clone();
        if self.generation != 0 {
            let _ = write!(s, ", stamped g{}", self.generation);
        }
        if let Some(c) = &self.cluster {
            let _ = write!(s, " ({})", c.describe());
        }
        s
    }
}

/// Which machine limit a baseline measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BaselineMode {
    /// Server to client bulk stream: the direction of read data.
    Stream,
    /// Client to server bulk stream: the direction of write data.
    StreamWrite,
    /// 72-byte request, 4096 + 24-byte answer, one at a time: a 4K read's wire exchange.
    Pingpong,
    /// The same ping-pong with both ends busy-polling non-blocking sockets (SPDK's way):
    /// no sleep and no wake-up per exchange.
    PingpongSpin,
    /// The server-to-client stream with both ends busy-polling.
    StreamSpin,
    /// The client-to-server stream with both ends busy-polling.
    StreamWriteSpin,
}

impl BaselineMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Stream => "TCP stream, server to client (read direction)",
            Self::StreamWrite => "TCP stream, client to server (write direction)",
            Self::Pingpong => "ping-pong 72 B / 4120 B (a 4K read's capsule and C2HData)",
            Self::PingpongSpin => "ping-pong 72 B / 4120 B, both ends busy-polling",
            Self::StreamSpin => "TCP stream, server to client, both ends busy-polling",
            Self::StreamWriteSpin => "TCP stream, client to server, both ends busy-polling",
        }
    }
}

/// A baseline run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineRecord {
    pub mode: BaselineMode,
    pub seconds: f64,
    /// Payload bytes moved in the window (both directions for ping-pong).
    pub bytes: u64,
    pub mib_s: f64,
    pub mb_s: f64,
    pub gb_s: f64,
    /// Ping-pong: exchanges completed, per second, and their round-trip latency.
    pub round_trips: u64,
    pub rate: f64,
    pub latency: Option<Latency>,
    pub bench_cpu_pct: f64,
}

/// Idle connections held open against the target (memory and idle CPU).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldRecord {
    /// Controllers (host connections), each with an admin queue and `io_queues` I/O queues.
    pub controllers: u32,
    pub io_queues: u16,
    /// SQSIZE + 1 of each I/O queue.
    pub queue_size: u32,
    pub tcp_connections: u32,
    /// Target RSS before connecting and once every connection is up and settled.
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    /// Target CPU over the hold, as a percentage of one core.
    pub seconds: f64,
    pub target_cpu_pct: f64,
}

impl HoldRecord {
    pub fn rss_per_controller_kib(&self) -> f64 {
        self.rss_after_kib.saturating_sub(self.rss_before_kib) as f64
            / f64::from(self.controllers.max(1))
    }

    pub fn rss_per_tcp_kib(&self) -> f64 {
        self.rss_after_kib.saturating_sub(self.rss_before_kib) as f64
            / f64::from(self.tcp_connections.max(1))
    }
}

/// SPDK's 4K randread QD32 figure on this machine class (the issue's aim).
pub const SPDK_4K_RANDREAD_IOPS: f64 = 826_000.0;

/// One aim of the issue, as measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Aim {
    pub aim: String,
    pub measured: String,
    /// `None`: not measured in this run.
    pub reached: Option<bool>,
}

fn baseline(records: &[Record], mode: BaselineMode) -> Option<&BaselineRecord> {
    records.iter().find_map(|r| match r {
        Record::Baseline(b) if b.mode == mode => Some(b),
        _ => None,
    })
}

/// The machine's bandwidth limit in one direction: the faster of the sleeping and the polling
/// stream (the data path polls while I/O flows, so either may be the better bound).
fn best_stream(records: &[Record], read: bool) -> Option<&BaselineRecord> {
    let modes = if read {
        [BaselineMode::Stream, BaselineMode::StreamSpin]
    } else {
        [BaselineMode::StreamWrite, BaselineMode::StreamWriteSpin]
    };
    modes
        .iter()
        .filter_map(|&m| baseline(records, m))
        .max_by(|a, b| a.mib_s.total_cmp(&b.mib_s))
}

/// The machine's round trip: the faster (lower p50) of the two ping-pongs.
fn best_pingpong(records: &[Record]) -> Option<&BaselineRecord> {
    [BaselineMode::Pingpong, BaselineMode::PingpongSpin]
        .iter()
        .filter_map(|&m| baseline(records, m))
        .filter(|b| b.latency.is_some())
        .min_by(|a, b| {
            let p = |x: &BaselineRecord| x.latency.map_or(f64::MAX, |l| l.p50_us);
            p(a).total_cmp(&p(b))
        })
}

/// The I/O runs of the main tables and the aims (optimisation pairs aside).
fn ios(records: &[Record]) -> impl Iterator<Item = &IoRecord> {
    records.iter().filter_map(|r| match r {
        Record::Io(i) if i.opt.is_none() => Some(i),
        _ => None,
    })
}

/// The optimisation before/after runs (`--opt`).
fn opt_ios(records: &[Record]) -> impl Iterator<Item = &IoRecord> {
    records.iter().filter_map(|r| match r {
        Record::Io(i) if i.opt.is_some() => Some(i),
        _ => None,
    })
}

/// What each optimisation buys: for every `--opt` name and workload, the run without it and
/// the run with it (medians when repeated), side by side.
pub fn opt_table(records: &[Record]) -> String {
    let mut t = String::from(
        "| optimisation | workload | backend | without: IOPS | MiB/s | p50 µs | target CPU µs/IO | with: IOPS | MiB/s | p50 µs | target CPU µs/IO | gain: IOPS | p50 |\n\
         |---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    let cpu = |r: &IoRecord| {
        r.target_cpu_us_per_io
            .map_or_else(|| "–".to_string(), |v| format!("{v:.2}"))
    };
    let mut seen: Vec<(String, String, String)> = Vec::new();
    for r in opt_ios(records) {
        let Some(tag) = &r.opt else { continue };
        let key = (tag.name.clone(), r.workload(), r.label.clone());
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let side = |on: bool| {
            opt_ios(records).find(|o| {
                o.opt
                    .as_ref()
                    .is_some_and(|t| t.name == tag.name && t.on == on)
                    && o.workload() == r.workload()
                    && o.label == r.label
            })
        };
        let (Some(off), Some(on)) = (side(false), side(true)) else {
            continue;
        };
        let pct = |a: f64, b: f64| {
            if a > 0.0 {
                format!("{:+.0}%", 100.0 * (b / a - 1.0))
            } else {
                "–".into()
            }
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            tag.name,
            r.workload(),
            r.label,
            iops_str(off.iops),
            f1(off.mib_s),
            f1(off.latency.p50_us),
            cpu(off),
            iops_str(on.iops),
            f1(on.mib_s),
            f1(on.latency.p50_us),
            cpu(on),
            pct(off.iops, on.iops),
            pct(off.latency.p50_us, on.latency.p50_us),
        );
    }
    t
}

fn rebuilds(records: &[Record]) -> impl Iterator<Item = &RebuildRecord> {
    records.iter().filter_map(|r| match r {
        Record::Rebuild(b) => Some(b),
        _ => None,
    })
}

/// One rebuild in words: what, how much, how fast (MB/s: 10^6 bytes a second).
pub fn rebuild_text(r: &RebuildRecord) -> String {
    let copy = r.copy_rate().map_or(String::new(), |c| {
        format!(
            "{:.0} MB/s copying ({:.2} s), ",
            c / 1e6,
            r.copy_seconds.unwrap_or(0.0)
        )
    });
    let load = if r.load.is_empty() {
        "no host load".to_string()
    } else {
        format!("with {}", r.load)
    };
    let rate = if r.rate == 0 {
        "unlimited".to_string()
    } else {
        format!("{} B/s", r.rate)
    };
    format!(
        "{} copies ({} whole), {:.1} MiB: {}{:.0} MB/s to in_sync ({:.2} s), {}, rate {}; {}",
        r.copies,
        r.whole,
        r.bytes as f64 / 1048576.0,
        copy,
        r.rate_to_in_sync() / 1e6,
        r.seconds,
        load,
        rate,
        r.how
    )
}

fn holds(records: &[Record]) -> impl Iterator<Item = &HoldRecord> {
    records.iter().filter_map(|r| match r {
        Record::Hold(h) => Some(h),
        _ => None,
    })
}

/// The ratio of `r` to the machine's limit, as the table's "vs limit" column says it: latency
/// against the ping-pong round trip for QD1 reads, bandwidth against the stream otherwise.
pub fn vs_limit(r: &IoRecord, records: &[Record]) -> Option<String> {
    if r.qd == 1 && r.queues == 1 && r.read_pct == 100 {
        // Medians: on a shared 2-core machine a few scheduling delays move the mean a lot.
        let pp = best_pingpong(records)?.latency?;
        if pp.p50_us > 0.0 {
            return Some(format!(
                "p50 lat {:.2}x ping-pong",
                r.latency.p50_us / pp.p50_us
            ));
        }
        return None;
    }
    let s = best_stream(records, r.read_pct != 0).or_else(|| best_stream(records, true))?;
    (s.mib_s > 0.0).then(|| format!("bw {:.0}% of stream", 100.0 * r.mib_s / s.mib_s))
}

/// The plain run (digests off, unstamped) of the same workload as `r`, when `r` is not plain.
fn plain_of<'a>(r: &IoRecord, records: &'a [Record]) -> Option<&'a IoRecord> {
    if r.is_plain() {
        return None;
    }
    ios(records).find(|o| o.is_plain() && o.same_shape(r))
}

/// Throughput lost to digests or to the generation stamp (and its check): 1 - IOPS(on) /
/// IOPS(off) of the same workload, in percent.
pub fn digest_cost_pct(r: &IoRecord, records: &[Record]) -> Option<f64> {
    let off = plain_of(r, records)?;
    (off.iops > 0.0).then(|| 100.0 * (1.0 - r.iops / off.iops))
}

/// CPU added by digests or by the stamp: host plus target CPU time per I/O of the same
/// workload, on against off, in percent. Steadier than the IOPS figure on a shared machine
/// (time spent waiting for the CPU is not CPU time).
pub fn digest_cpu_pct(r: &IoRecord, records: &[Record]) -> Option<f64> {
    let off = plain_of(r, records)?;
    let on_cpu = r.bench_cpu_us_per_io + r.target_cpu_us_per_io?;
    let off_cpu = off.bench_cpu_us_per_io + off.target_cpu_us_per_io?;
    (off_cpu > 0.0).then(|| 100.0 * (on_cpu / off_cpu - 1.0))
}

/// Target CPU added per I/O by the stamp (the generation check runs on the target only), in
/// percent.
pub fn target_cpu_cost_pct(r: &IoRecord, records: &[Record]) -> Option<f64> {
    let off = plain_of(r, records)?;
    let (on, off) = (r.target_cpu_us_per_io?, off.target_cpu_us_per_io?);
    (off > 0.0).then(|| 100.0 * (on / off - 1.0))
}

fn f1(v: f64) -> String {
    format!("{v:.1}")
}

fn iops_str(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1}K", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}

/// The I/O table: one row per workload x backend x digests x stamp, for the single target
/// (`cluster = false`) or for the runs through a cluster server's portal (`cluster = true`;
/// target CPU is then the sum over every storage server). Same columns either way.
pub fn io_table(records: &[Record], cluster: bool) -> String {
    let mut t = String::from(
        "| workload | backend | digests | IOPS | MiB/s | mean µs | p50 µs | p99 µs | p99.9 µs \
         | max µs | bench CPU µs/IO | target CPU µs/IO | vs limit | cost of digests or stamp: \
         IOPS / CPU |\n\
         |---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|\n",
    );
    for r in ios(records).filter(|r| r.cluster.is_some() == cluster) {
        let l = &r.latency;
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {} | {} | {} |",
            r.workload(),
            r.backend(),
            r.digests(),
            iops_str(r.iops),
            f1(r.mib_s),
            f1(l.mean_us),
            f1(l.p50_us),
            f1(l.p99_us),
            f1(l.p999_us),
            f1(l.max_us),
            r.bench_cpu_us_per_io,
            r.target_cpu_us_per_io
                .map_or_else(|| "–".to_string(), |v| format!("{v:.2}")),
            vs_limit(r, records).unwrap_or_else(|| "–".into()),
            match (digest_cost_pct(r, records), digest_cpu_pct(r, records)) {
                (Some(c), Some(p)) => format!("{c:.1}% / {p:+.1}%"),
                (Some(c), None) => format!("{c:.1}%"),
                _ => "–".into(),
            },
        );
    }
    t
}

/// The baselines: what this machine does without NVMe/TCP.
pub fn baseline_table(records: &[Record]) -> String {
    let mut t = String::from(
        "| limit of this machine | MiB/s | MB/s | GB/s | round trips/s | mean µs | p50 µs \
         | p99 µs | bench CPU % |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for r in records {
        let Record::Baseline(b) = r else { continue };
        let lat = |f: fn(&Latency) -> f64| b.latency.as_ref().map_or("–".into(), |l| f1(f(l)));
        let _ = writeln!(
            t,
            "| {} | {} | {} | {:.2} | {} | {} | {} | {} | {:.0} |",
            b.mode.name(),
            f1(b.mib_s),
            f1(b.mb_s),
            b.gb_s,
            if b.round_trips > 0 {
                iops_str(b.rate)
            } else {
                "–".into()
            },
            lat(|l| l.mean_us),
            lat(|l| l.p50_us),
            lat(|l| l.p99_us),
            b.bench_cpu_pct,
        );
    }
    t
}

/// Memory and idle CPU of the target.
pub fn memory_table(records: &[Record]) -> String {
    let mut t = String::from(
        "| target with | TCP connections | RSS before MiB | RSS after MiB | per extra controller \
         KiB | per extra TCP connection KiB | target CPU % of a core |\n\
         |---|--:|--:|--:|--:|--:|--:|\n",
    );
    for h in holds(records) {
        let _ = writeln!(
            t,
            "| {} controller(s) x (admin + {} I/O queue(s) of {}) | {} | {:.1} | {:.1} | {:.0} \
             | {:.0} | {:.2} |",
            h.controllers,
            h.io_queues,
            h.queue_size,
            h.tcp_connections,
            h.rss_before_kib as f64 / 1024.0,
            h.rss_after_kib as f64 / 1024.0,
            h.rss_per_controller_kib(),
            h.rss_per_tcp_kib(),
            h.target_cpu_pct,
        );
    }
    t
}

fn find_io<'a>(
    records: &'a [Record],
    label: &str,
    rw: &[RwMode],
    bs: u64,
    qd: u32,
) -> Option<&'a IoRecord> {
    ios(records).find(|r| {
        r.label == label
            && rw.contains(&r.rw)
            && r.bs == bs
            && r.qd == qd
            && r.is_plain()
            && r.cluster.is_none()
    })
}

/// QD1 4K reads through the cluster: pairs of the same volume (label, extents chosen) read
/// through a server that holds none of it (every I/O forwarded) and through one that holds all
/// of it (local). Returns (forwarded, local).
fn forwarded_local_pairs(records: &[Record]) -> Vec<(&IoRecord, &IoRecord)> {
    let qd1_4k = |r: &&IoRecord| {
        r.qd == 1 && r.queues == 1 && r.bs == 4096 && r.read_pct == 100 && r.is_plain()
    };
    let mut out = Vec::new();
    for f in ios(records).filter(qd1_4k) {
        let Some(fc) = &f.cluster else { continue };
        if fc.forwarded_extents == 0 || fc.forwarded_extents != fc.extents {
            continue;
        }
        let local = ios(records).filter(qd1_4k).find(|l| {
            l.label == f.label
                && l.cluster.as_ref().is_some_and(|lc| {
                    lc.volume == fc.volume
                        && lc.servers == fc.servers
                        && lc.select == fc.select
                        && lc.forwarded_extents == 0
                })
        });
        if let Some(l) = local {
            out.push((f, l));
        }
    }
    out
}

/// Writes through the primary of the extents written (nothing forwarded by the routing
/// server), several copies against one: pairs of runs of the same workload, label, servers,
/// routing server and extent choice, the volume with one copy first. Returns (1 copy, N copies).
fn replica_pairs(records: &[Record]) -> Vec<(&IoRecord, &IoRecord)> {
    let local_write = |r: &IoRecord| {
        r.read_pct == 0
            && r.is_plain()
            && r.cluster
                .as_ref()
                .is_some_and(|c| c.forwarded_extents == 0 && c.extents > 0)
    };
    let mut out = Vec::new();
    for n in ios(records).filter(|r| local_write(r)) {
        let Some(nc) = &n.cluster else { continue };
        if nc.replicas < 2 {
            continue;
        }
        let one = ios(records).filter(|r| local_write(r)).find(|o| {
            o.label == n.label
                && o.rw == n.rw
                && o.bs == n.bs
                && o.qd == n.qd
                && o.queues == n.queues
                && o.cluster.as_ref().is_some_and(|oc| {
                    oc.replicas == 1
                        && oc.servers == nc.servers
                        && oc.via == nc.via
                        && oc.select == nc.select
                })
        });
        if let Some(o) = one {
            out.push((o, n));
        }
    }
    out
}

/// The cluster's ratios: several copies against one (writes through the primary) and
/// forwarded against local reads, each pair side by side with B / A of p50, p99 and IOPS.
pub fn ratio_table(records: &[Record]) -> String {
    let mut t = String::from(
        "| comparison (B vs A) | workload | path | A: IOPS | p50 µs | p99 µs | B: IOPS | p50 µs \
         | p99 µs | B/A: p50 | p99 | IOPS |\n\
         |---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    let ratio = |b: f64, a: f64| {
        if a > 0.0 {
            format!("{:.2}x", b / a)
        } else {
            "–".into()
        }
    };
    let mut row = |what: String, path: String, a: &IoRecord, b: &IoRecord| {
        let _ = writeln!(
            t,
            "| {what} | {} | {path} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            a.workload(),
            iops_str(a.iops),
            f1(a.latency.p50_us),
            f1(a.latency.p99_us),
            iops_str(b.iops),
            f1(b.latency.p50_us),
            f1(b.latency.p99_us),
            ratio(b.latency.p50_us, a.latency.p50_us),
            ratio(b.latency.p99_us, a.latency.p99_us),
            ratio(b.iops, a.iops),
        );
    };
    for (one, n) in replica_pairs(records) {
        let (Some(oc), Some(nc)) = (&one.cluster, &n.cluster) else {
            continue;
        };
        row(
            format!("{} copies vs 1", nc.replicas),
            format!(
                "{} servers, via {}{}; volumes {} vs {}",
                nc.servers,
                nc.via,
                nc.select
                    .as_ref()
                    .map_or_else(String::new, |s| format!(", extents {s}")),
                oc.volume,
                nc.volume
            ),
            one,
            n,
        );
    }
    for (f, l) in forwarded_local_pairs(records) {
        let (Some(fc), Some(lc)) = (&f.cluster, &l.cluster) else {
            continue;
        };
        row(
            "forwarded vs local".into(),
            format!(
                "{} servers, volume {}{}: via {} vs via {}",
                fc.servers,
                fc.volume,
                fc.select
                    .as_ref()
                    .map_or_else(String::new, |s| format!(" (extents {s})")),
                fc.via,
                lc.via
            ),
            l,
            f,
        );
    }
    t
}

/// The issue's aims, checked against `records`.
pub fn aims(records: &[Record]) -> Vec<Aim> {
    let mut out = Vec::new();
    let mut labels: Vec<&str> = Vec::new();
    for r in ios(records).filter(|r| r.cluster.is_none()) {
        if !labels.contains(&r.label.as_str()) {
            labels.push(&r.label);
        }
    }
    let stream = best_stream(records, true);
    let stream_w = best_stream(records, false).or(stream);
    let pp = best_pingpong(records).and_then(|b| b.latency);
    let kb = 1024;
    for label in &labels {
        for (rw, pct, what, lim) in [
            (RwMode::Read, 90.0, "read", stream),
            (RwMode::Write, 70.0, "write", stream_w),
        ] {
            let r = find_io(records, label, &[rw], 128 * kb, 8);
            let aim = format!("{label}: 128K seq {what} >= {pct:.0}% of the plain TCP stream");
            out.push(match (r, lim) {
                (Some(r), Some(s)) if s.mib_s > 0.0 => {
                    let ratio = 100.0 * r.mib_s / s.mib_s;
                    Aim {
                        aim,
                        measured: format!("{ratio:.0}% ({:.0} of {:.0} MiB/s)", r.mib_s, s.mib_s),
                        reached: Some(ratio >= pct),
                    }
                }
                _ => Aim {
                    aim,
                    measured: "not measured".into(),
                    reached: None,
                },
            });
        }
        let aim = format!("{label}: QD1 4K read latency <= 2x the ping-pong round trip (p50)");
        let r = find_io(records, label, &[RwMode::Randread, RwMode::Read], 4 * kb, 1);
        out.push(match (r, pp) {
            (Some(r), Some(p)) if p.p50_us > 0.0 && p.mean_us > 0.0 => {
                let x = r.latency.p50_us / p.p50_us;
                Aim {
                    aim,
                    measured: format!(
                        "p50 {x:.2}x ({:.1} vs {:.1} µs); mean {:.2}x ({:.1} vs {:.1} µs)",
                        r.latency.p50_us,
                        p.p50_us,
                        r.latency.mean_us / p.mean_us,
                        r.latency.mean_us,
                        p.mean_us
                    ),
                    reached: Some(x <= 2.0),
                }
            }
            _ => Aim {
                aim,
                measured: "not measured".into(),
                reached: None,
            },
        });
        let aim = format!("{label}: 4K randread QD32 >= 826K IOPS (SPDK)");
        out.push(
            match find_io(records, label, &[RwMode::Randread], 4 * kb, 32) {
                Some(r) => Aim {
                    aim,
                    measured: format!(
                        "{} IOPS ({:.0}% of SPDK)",
                        iops_str(r.iops),
                        100.0 * r.iops / SPDK_4K_RANDREAD_IOPS
                    ),
                    reached: Some(r.iops >= SPDK_4K_RANDREAD_IOPS),
                },
                None => Aim {
                    aim,
                    measured: "not measured".into(),
                    reached: None,
                },
            },
        );
    }
    for (small, limit) in [(true, 10.0), (false, 15.0)] {
        let costs: Vec<(String, f64)> = ios(records)
            .filter(|r| (r.bs <= 4 * kb) == small && (r.hdgst || r.ddgst))
            .filter_map(|r| {
                let cpu = digest_cpu_pct(r, records)
                    .map_or_else(String::new, |p| format!(", CPU per I/O {p:+.1}%"));
                digest_cost_pct(r, records)
                    .map(|c| (format!("{} {}{cpu}", r.label, r.workload()), c))
            })
            .collect();
        let aim = format!(
            "digests cost <= {limit:.0}% at {}",
            if small { "4K" } else { "128K" }
        );
        let worst = costs
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(w, c)| (w.clone(), *c));
        out.push(match worst {
            Some((w, c)) => Aim {
                aim,
                measured: format!("worst {c:.1}% ({w})"),
                reached: Some(c <= limit),
            },
            None => Aim {
                aim,
                measured: "not measured".into(),
                reached: None,
            },
        });
    }
    // The generation check: stamped runs against the same runs unstamped (single target).
    let stamped: Vec<(&IoRecord, f64, Option<f64>, Option<f64>)> = ios(records)
        .filter(|r| r.generation != 0 && !r.hdgst && !r.ddgst && r.cluster.is_none())
        .filter_map(|r| {
            Some((
                r,
                digest_cost_pct(r, records)?,
                target_cpu_cost_pct(r, records),
                plain_of(r, records).map(|p| 100.0 * (r.latency.p50_us / p.latency.p50_us - 1.0)),
            ))
        })
        .collect();
    let aim = "generation check <= 1% cost (stamped vs unstamped)".to_string();
    out.push(if stamped.is_empty() {
        Aim {
            aim,
            measured: "not measured".into(),
            reached: None,
        }
    } else {
        let measured = stamped
            .iter()
            .map(|(r, iops, cpu, p50)| {
                let mut m = format!("{} {}: IOPS {:+.1}%", r.label, r.workload(), -iops);
                if let Some(c) = cpu {
                    let _ = write!(m, ", target CPU/IO {c:+.1}%");
                }
                if let Some(p) = p50 {
                    let _ = write!(m, ", p50 {p:+.1}%");
                }
                m
            })
            .collect::<Vec<_>>()
            .join("; ");
        // Judged on the target's CPU per I/O where known (the check is target CPU work, and
        // CPU time does not count waiting for a CPU), else on IOPS.
        let worst = stamped
            .iter()
            .map(|(_, iops, cpu, _)| cpu.unwrap_or(*iops))
            .fold(f64::MIN, f64::max);
        Aim {
            aim,
            measured,
            reached: Some(worst <= 1.0),
        }
    });
    let aim = "cluster: forwarded 4K read <= 1.5x the latency of a local one (QD1 p50)".to_string();
    let pairs = forwarded_local_pairs(records);
    out.push(if pairs.is_empty() {
        Aim {
            aim,
            measured: "not measured".into(),
            reached: None,
        }
    } else {
        let worst = pairs
            .iter()
            .map(|(f, l)| f.latency.p50_us / l.latency.p50_us)
            .fold(f64::MIN, f64::max);
        Aim {
            aim,
            measured: pairs
                .iter()
                .map(|(f, l)| {
                    format!(
                        "p50 {:.2}x ({:.1} via {} vs {:.1} µs via {}); mean {:.2}x ({:.1} vs {:.1} µs)",
                        f.latency.p50_us / l.latency.p50_us,
                        f.latency.p50_us,
                        f.cluster.as_ref().map_or("?", |c| c.via.as_str()),
                        l.latency.p50_us,
                        l.cluster.as_ref().map_or("?", |c| c.via.as_str()),
                        f.latency.mean_us / l.latency.mean_us,
                        f.latency.mean_us,
                        l.latency.mean_us,
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
            reached: Some(worst <= 1.5),
        }
    });
    let aim = "replicated: 4K write QD1 latency <= 1.5x one copy's (p50, through the primary)"
        .to_string();
    let pairs: Vec<_> = replica_pairs(records)
        .into_iter()
        .filter(|(o, _)| o.qd == 1 && o.queues == 1 && o.bs == 4096)
        .collect();
    out.push(if pairs.is_empty() {
        Aim {
            aim,
            measured: "not measured".into(),
            reached: None,
        }
    } else {
        let worst = pairs
            .iter()
            .map(|(o, n)| n.latency.p50_us / o.latency.p50_us)
            .fold(f64::MIN, f64::max);
        Aim {
            aim,
            measured: pairs
                .iter()
                .map(|(o, n)| {
                    format!(
                        "{} copies: p50 {:.2}x ({:.1} vs {:.1} µs); p99 {:.2}x ({:.1} vs {:.1} µs)",
                        n.cluster.as_ref().map_or(0, |c| c.replicas),
                        n.latency.p50_us / o.latency.p50_us,
                        n.latency.p50_us,
                        o.latency.p50_us,
                        n.latency.p99_us / o.latency.p99_us,
                        n.latency.p99_us,
                        o.latency.p99_us,
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
            reached: Some(worst <= 1.5),
        }
    });
    // ci/bench's cluster_rebuild: copies of a server taken out of the write set and back.
    let aim = "replicated: rebuild throughput >= 1 GB/s with hosts running".to_string();
    let rebuilds: Vec<_> = rebuilds(records).collect();
    out.push(if rebuilds.is_empty() {
        Aim {
            aim,
            measured: "not measured".into(),
            reached: None,
        }
    } else {
        // Judged on the copy rate (the map publications around it are the manager's).
        let worst = rebuilds
            .iter()
            .map(|r| r.copy_rate().unwrap_or_else(|| r.rate_to_in_sync()))
            .fold(f64::MAX, f64::min);
        Aim {
            aim,
            measured: rebuilds
                .iter()
                .map(|r| rebuild_text(r))
                .collect::<Vec<_>>()
                .join("; "),
            reached: Some(worst >= 1e9),
        }
    });
    let one = holds(records).find(|h| h.controllers == 1);
    let many = holds(records).filter(|h| h.controllers > 1).last();
    out.push(match one {
        Some(h) => Aim {
            aim: "idle target (1 connection) < 1% of a core".into(),
            measured: format!("{:.2}% over {:.0} s", h.target_cpu_pct, h.seconds),
            reached: Some(h.target_cpu_pct < 1.0),
        },
        None => Aim {
            aim: "idle target (1 connection) < 1% of a core".into(),
            measured: "not measured".into(),
            reached: None,
        },
    });
    out.push(match one {
        Some(h) => Aim {
            aim: "RSS <= 64 MiB idle".into(),
            measured: format!("{:.1} MiB", h.rss_before_kib as f64 / 1024.0),
            reached: Some(h.rss_before_kib <= 64 * 1024),
        },
        None => Aim {
            aim: "RSS <= 64 MiB idle".into(),
            measured: "not measured".into(),
            reached: None,
        },
    });
    out.push(match many {
        Some(h) => Aim {
            aim: "RSS <= 1 MiB per extra idle connection (controller with its queues)".into(),
            measured: format!(
                "{:.0} KiB per controller ({:.0} KiB per TCP connection, {} controllers)",
                h.rss_per_controller_kib(),
                h.rss_per_tcp_kib(),
                h.controllers
            ),
            reached: Some(h.rss_per_controller_kib() <= 1024.0),
        },
        None => Aim {
            aim: "RSS <= 1 MiB per extra idle connection (controller with its queues)".into(),
            measured: "not measured".into(),
            reached: None,
        },
    });
    out
}

pub fn aims_table(aims: &[Aim]) -> String {
    let mut t = String::from("| aim | measured | reached |\n|---|---|---|\n");
    for a in aims {
        let _ = writeln!(
            t,
            "| {} | {} | {} |",
            a.aim,
            a.measured,
            match a.reached {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "–",
            }
        );
    }
    t
}

/// The whole markdown report.
pub fn markdown(records: &[Record]) -> String {
    let mut s = String::new();
    if ios(records).any(|r| r.cluster.is_none()) {
        s.push_str(&io_table(records, false));
        s.push('\n');
    }
    if ios(records).any(|r| r.cluster.is_some()) {
        s.push_str("Cluster: through one storage server's portal (target CPU: all servers).\n\n");
        s.push_str(&io_table(records, true));
        s.push('\n');
        if !replica_pairs(records).is_empty() || !forwarded_local_pairs(records).is_empty() {
            s.push_str("Cluster ratios (medians of repeats):\n\n");
            s.push_str(&ratio_table(records));
            s.push('\n');
        }
    }
    if opt_ios(records).next().is_some() {
        s.push_str("What each optimisation buys (each pair interleaved, medians of repeats):\n\n");
        s.push_str(&opt_table(records));
        s.push('\n');
    }
    if records.iter().any(|r| matches!(r, Record::Baseline(_))) {
        s.push_str(&baseline_table(records));
        s.push('\n');
    }
    if holds(records).next().is_some() {
        s.push_str(&memory_table(records));
        s.push('\n');
    }
    if ios(records).next().is_some() || records.iter().any(|r| !matches!(r, Record::Io(_))) {
        s.push_str(&aims_table(&aims(records)));
    }
    s
}

/// Reduces repeated runs of the same shape (workload, backend and digests; or baseline mode; or
/// number of held controllers) to their median run, by IOPS, bandwidth or target CPU: on a
/// shared machine one run can be hit by someone else's compile, and the median of three is
/// not. Order of first appearance is kept.
pub fn median_of_repeats(records: &[Record]) -> Vec<Record> {
    fn key(r: &Record) -> String {
        match r {
            Record::Io(i) => format!(
                "io/{:?}/{}/{}/{}/{}/{}/{}/{}/{}/{}/{:?}",
                i.opt,
                i.label,
                i.rw.name(),
                i.read_pct,
                i.bs,
                i.qd,
                i.queues,
                i.hdgst,
                i.ddgst,
                i.generation,
                i.cluster_key()
            ),
            Record::Baseline(b) => format!("baseline/{:?}", b.mode),
            Record::Hold(h) => format!("hold/{}/{}", h.controllers, h.io_queues),
            Record::Rebuild(b) => format!("rebuild/{}/{}", b.how, b.load),
        }
    }
    fn score(r: &Record) -> f64 {
        match r {
            Record::Io(i) => i.iops,
            Record::Baseline(b) if b.round_trips > 0 => b.rate,
            Record::Baseline(b) => b.mib_s,
            Record::Hold(h) => h.target_cpu_pct,
            Record::Rebuild(b) => b.copy_rate().unwrap_or_else(|| b.rate_to_in_sync()),
        }
    }
    let mut keys: Vec<String> = Vec::new();
    let mut groups: Vec<Vec<&Record>> = Vec::new();
    for r in records {
        let k = key(r);
        match keys.iter().position(|x| *x == k) {
            Some(i) => groups[i].push(r),
            None => {
                keys.push(k);
                groups.push(vec![r]);
            }
        }
    }
    groups
        .into_iter()
        .filter_map(|mut g| {
            g.sort_by(|a, b| score(a).total_cmp(&score(b)));
            // The lower median for an even count.
            g.get((g.len() - 1) / 2).map(|r| (*r).clone())
        })
        .collect()
}

/// Reads JSON records, one per line (blank lines ignored).
pub fn parse_records(text: &str) -> Result<Vec<Record>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", n + 1)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(label: &str, rw: RwMode, bs: u64, qd: u32, digests: bool, iops: f64) -> Record {
        Record::Io(IoRecord {
            label: label.into(),
            rw,
            read_pct: rw.read_pct(50),
            bs,
            qd,
            queues: 1,
            hdgst: digests,
            ddgst: digests,
            generation: 0,
            cluster: None,
            seconds: 5.0,
            ios: 0,
            iops,
            mib_s: iops * bs as f64 / 1_048_576.0,
            latency: Latency {
                mean_us: 1e6 / iops * f64::from(qd),
                p50_us: 1e6 / iops * f64::from(qd),
                ..Latency::default()
            },
            bench_cpu_us_per_io: 1.5,
            target_cpu_us_per_io: Some(2.25),
            verified: None,
            unverified: None,
            opt: None,
        })
    }

    fn sample() -> Vec<Record> {
        vec![
            io("ram", RwMode::Randread, 4096, 1, false, 25_000.0),
            io("ram", RwMode::Randread, 4096, 1, true, 20_000.0),
            io("ram", RwMode::Read, 131_072, 8, false, 10_000.0),
            io("ram", RwMode::Read, 131_072, 8, true, 9_000.0),
            io("ram", RwMode::Write, 131_072, 8, false, 5_000.0),
            Record::Baseline(BaselineRecord {
                mode: BaselineMode::Stream,
                seconds: 5.0,
                bytes: 0,
                mib_s: 2500.0,
                mb_s: 2621.4,
                gb_s: 2.62,
                round_trips: 0,
                rate: 0.0,
                latency: None,
                bench_cpu_pct: 100.0,
            }),
            Record::Baseline(BaselineRecord {
                mode: BaselineMode::Pingpong,
                seconds: 5.0,
                bytes: 0,
                mib_s: 100.0,
                mb_s: 104.8,
                gb_s: 0.1,
                round_trips: 250_000,
                rate: 50_000.0,
                latency: Some(Latency {
                    mean_us: 20.0,
                    p50_us: 20.0,
                    ..Latency::default()
                }),
                bench_cpu_pct: 50.0,
            }),
            Record::Hold(HoldRecord {
                controllers: 1,
                io_queues: 1,
                queue_size: 128,
                tcp_connections: 2,
                rss_before_kib: 10 * 1024,
                rss_after_kib: 10 * 1024 + 200,
                seconds: 5.0,
                target_cpu_pct: 0.05,
            }),
        ]
    }

    #[test]
    fn table_rows_ratios_and_digest_cost() {
        let recs = sample();
        let t = io_table(&recs, false);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2 + 5, "header, rule, one row per run:\n{t}");
        assert!(lines.iter().all(|l| l.starts_with('|') && l.ends_with('|')));
        let cols = lines[0].matches('|').count();
        assert!(lines.iter().all(|l| l.matches('|').count() == cols), "{t}");
        // QD1 4K read: mean 40 µs vs a 20 µs ping-pong.
        assert!(
            lines[2].starts_with("| 4K randread QD1 | ram | off | 25.0K |"),
            "{}",
            lines[2]
        );
        assert!(lines[2].contains("p50 lat 2.00x ping-pong"), "{}", lines[2]);
        // Digests on: 20K instead of 25K is a 20% cost.
        // (CPU per I/O is the same in the sample: +0.0%.)
        assert!(lines[3].contains("| hdr+data |") && lines[3].ends_with("| 20.0% / +0.0% |"));
        // 128K read: 1250 MiB/s of a 2500 MiB/s stream.
        assert!(lines[4].contains("bw 50% of stream"), "{}", lines[4]);
        // Write falls back to the read-direction stream when stream-write was not run.
        assert!(lines[6].contains("bw 25% of stream"), "{}", lines[6]);
        assert!(lines[6].contains("| 1.50 | 2.25 |"));
    }

    #[test]
    fn aims_are_judged() {
        let a = aims(&sample());
        let get = |prefix: &str| {
            a.iter()
                .find(|x| x.aim.starts_with(prefix))
                .expect("every aim is listed")
        };
        assert_eq!(get("ram: 128K seq read").reached, Some(false));
        // Exactly 2x (40 µs against 20 µs) is within the aim.
        assert_eq!(get("ram: QD1 4K read").reached, Some(true));
        assert_eq!(get("ram: 4K randread QD32").reached, None);
        assert_eq!(get("digests cost <= 10%").reached, Some(false));
        assert_eq!(get("digests cost <= 15%").reached, Some(true));
        assert_eq!(get("idle target").reached, Some(true));
        assert_eq!(get("RSS <= 64 MiB").reached, Some(true));
        assert_eq!(get("RSS <= 1 MiB").reached, None);
        let md = markdown(&sample());
        assert!(md.contains("| aim | measured | reached |"));
        assert!(md.contains("**no**"));
    }

    fn edit(mut r: Record, f: impl FnOnce(&mut IoRecord)) -> Record {
        if let Record::Io(i) = &mut r {
            f(i);
        }
        r
    }

    fn through(servers: u32, via: &str, volume: &str, extents: u32, fwd: u32) -> ClusterShape {
        ClusterShape {
            servers,
            via: via.into(),
            volume: volume.into(),
            replicas: 1,
            select: None,
            extents,
            forwarded_extents: fwd,
            forwarded_pct: 100.0 * f64::from(fwd) / f64::from(extents),
            generation: 1,
        }
    }

    #[test]
    fn stamp_cost_against_the_unstamped_run() {
        let mut recs = sample();
        recs.push(edit(
            io("ram", RwMode::Randread, 4096, 1, false, 24_750.0),
            |i| {
                i.generation = 1;
                i.target_cpu_us_per_io = Some(2.25 * 1.005);
            },
        ));
        let t = io_table(&recs, false);
        let row = t
            .lines()
            .find(|l| l.contains("stamped g1"))
            .expect("a stamped row");
        assert!(
            row.starts_with("| 4K randread QD1 | ram, stamped g1 | off |"),
            "{row}"
        );
        // 24.75K against 25K: 1% lost; CPU (1.5 + 2.26125) against 3.75: +0.3%.
        assert!(row.ends_with("| 1.0% / +0.3% |"), "{row}");
        let a = aims(&recs);
        let g = a
            .iter()
            .find(|x| x.aim.starts_with("generation check"))
            .expect("listed");
        // Judged on the target's CPU per I/O: +0.5%.
        assert_eq!(g.reached, Some(true), "{g:?}");
        assert!(
            g.measured.contains("IOPS -1.0%, target CPU/IO +0.5%"),
            "{g:?}"
        );
        // Stamped runs stay out of the digest aims and of the per-backend aims.
        let d = a
            .iter()
            .find(|x| x.aim.starts_with("digests cost <= 10%"))
            .expect("listed");
        assert!(d.measured.starts_with("worst 20.0%"), "{d:?}");
        assert_eq!(
            median_of_repeats(&recs).len(),
            recs.len(),
            "stamped and unstamped are different shapes"
        );
    }

    #[test]
    fn cluster_rows_and_the_forwarded_to_local_ratio() {
        let mut recs = sample();
        let c = |via: &str, fwd: u32, p50: f64| {
            edit(
                io("ram, all on s2", RwMode::Randread, 4096, 1, false, 10_000.0),
                |i| {
                    i.cluster = Some(through(2, via, "fwd", 2, fwd));
                    i.latency.p50_us = p50;
                },
            )
        };
        recs.push(c("s1", 2, 90.0));
        recs.push(c("s2", 0, 60.0));
        recs.push(edit(
            io("ram", RwMode::Randread, 4096, 32, false, 100_000.0),
            |i| i.cluster = Some(through(2, "s1", "bench", 16, 8)),
        ));
        let single = io_table(&recs, false);
        assert!(!single.contains("fwd via"), "{single}");
        let cl = io_table(&recs, true);
        let rows: Vec<&str> = cl.lines().skip(2).collect();
        assert_eq!(rows.len(), 3, "{cl}");
        assert!(
            rows[0]
                .starts_with("| 4K randread QD1 | ram, all on s2 (2 servers, 100% fwd via s1) |"),
            "{}",
            rows[0]
        );
        assert!(
            rows[2].contains("(2 servers, 50% fwd via s1)"),
            "{}",
            rows[2]
        );
        let a = aims(&recs);
        let f = a
            .iter()
            .find(|x| x.aim.starts_with("cluster: forwarded"))
            .expect("listed");
        assert_eq!(f.reached, Some(true), "{f:?}");
        assert!(
            f.measured
                .starts_with("p50 1.50x (90.0 via s1 vs 60.0 µs via s2)"),
            "{f:?}"
        );
        // Cluster labels make no per-backend aims of their own.
        assert!(!a.iter().any(|x| x.aim.starts_with("ram, all on s2")));
        let md = markdown(&recs);
        assert!(md.contains("Cluster: through one storage server's portal"));
        // The three cluster runs stay three shapes (and apart from the single target's).
        assert_eq!(median_of_repeats(&recs).len(), recs.len());
    }

    #[test]
    fn replicated_writes_against_one_copy() {
        let mut recs = sample();
        let w = |volume: &str, replicas: u32, qd: u32, iops: f64, p50: f64| {
            edit(io("ram", RwMode::Randwrite, 4096, qd, false, iops), |i| {
                let mut c = through(3, "s1", volume, 2, 0);
                c.replicas = replicas;
                c.select = Some("primary:s1".into());
                i.cluster = Some(c);
                i.latency.p50_us = p50;
                i.latency.p99_us = 2.0 * p50;
            })
        };
        recs.push(w("r1", 1, 1, 50_000.0, 20.0));
        recs.push(w("r2", 2, 1, 30_000.0, 32.0));
        recs.push(w("r1", 1, 32, 400_000.0, 80.0));
        recs.push(w("r2", 2, 32, 200_000.0, 160.0));
        // A write that the routing server forwards pairs with nothing.
        recs.push(edit(w("r2", 2, 1, 1.0, 99.0), |i| {
            if let Some(c) = &mut i.cluster {
                c.via = "s2".into();
                c.forwarded_extents = 2;
            }
        }));
        let t = ratio_table(&recs);
        let rows: Vec<&str> = t.lines().skip(2).collect();
        assert_eq!(rows.len(), 2, "{t}");
        assert!(
            rows[0].starts_with(
                "| 2 copies vs 1 | 4K randwrite QD1 | 3 servers, via s1, extents primary:s1; \
                 volumes r1 vs r2 | 50.0K | 20.0 | 40.0 | 30.0K | 32.0 | 64.0 | 1.60x | 1.60x \
                 | 0.60x |"
            ),
            "{}",
            rows[0]
        );
        assert!(rows[1].contains("| 4K randwrite QD32 |") && rows[1].ends_with("| 0.50x |"));
        let a = aims(&recs);
        let r = a
            .iter()
            .find(|x| x.aim.starts_with("replicated: 4K write QD1"))
            .expect("listed");
        // 32 µs against 20: 1.6x, above the aim.
        assert_eq!(r.reached, Some(false), "{r:?}");
        assert!(
            r.measured
                .starts_with("2 copies: p50 1.60x (32.0 vs 20.0 µs)"),
            "{r:?}"
        );
        let rb = a
            .iter()
            .find(|x| x.aim.starts_with("replicated: rebuild"))
            .expect("listed");
        assert_eq!(rb.reached, None, "never a made-up figure");
        let md = markdown(&recs);
        assert!(md.contains("Cluster ratios"), "{md}");
        assert!(
            md.contains("2 copies, extents primary:s1, 0% fwd via s1"),
            "{md}"
        );
        // The two volumes stay two shapes each.
        assert_eq!(median_of_repeats(&recs).len(), recs.len());
    }

    #[test]
    fn a_rebuild_record_fills_the_rebuild_aim() {
        let line = r#"{"kind":"rebuild","how":"s3 down then up","copies":4,"whole":2,"bytes":268435456,"seconds":0.5,"copy_seconds":0.25,"load":"4K randrw QD4","rate":0}"#;
        let recs = parse_records(line).expect("parses");
        let a = aims(&recs);
        let rb = a
            .iter()
            .find(|x| x.aim.starts_with("replicated: rebuild"))
            .expect("listed");
        // 256 MiB in 0.25 s of copying: 1074 MB/s.
        assert_eq!(rb.reached, Some(true), "{rb:?}");
        assert!(
            rb.measured
                .starts_with("4 copies (2 whole), 256.0 MiB: 1074 MB/s copying (0.25 s), 537 MB/s to in_sync (0.50 s), with 4K randrw QD4, rate unlimited"),
            "{rb:?}"
        );
        let slow: Vec<Record> = recs
            .into_iter()
            .map(|r| match r {
                Record::Rebuild(mut b) => {
                    b.copy_seconds = None;
                    Record::Rebuild(b)
                }
                other => other,
            })
            .collect();
        let a = aims(&slow);
        let rb = a
            .iter()
            .find(|x| x.aim.starts_with("replicated: rebuild"))
            .expect("listed");
        assert_eq!(rb.reached, Some(false), "537 MB/s is below the aim: {rb:?}");
    }

    #[test]
    fn records_of_older_runs_still_parse() {
        // docs/bench-baseline.json predates `generation` and `cluster`.
        let old = r#"{"kind":"io","label":"ram","rw":"randread","read_pct":100,"bs":4096,"qd":1,"queues":1,"hdgst":false,"ddgst":false,"seconds":5.0,"ios":1,"iops":1.0,"mib_s":0.0,"latency":{"mean_us":1.0,"min_us":1.0,"p50_us":1.0,"p99_us":1.0,"p999_us":1.0,"max_us":1.0},"bench_cpu_us_per_io":1.0,"target_cpu_us_per_io":null,"verified":null,"unverified":null}"#;
        let r = parse_records(old).expect("parses");
        let Record::Io(i) = &r[0] else {
            unreachable!("an I/O record")
        };
        assert_eq!((i.generation, i.cluster.is_none()), (0, true));
    }

    #[test]
    fn repeats_reduce_to_their_median() {
        let mut recs = sample();
        recs.push(io("ram", RwMode::Randread, 4096, 1, false, 5_000.0));
        recs.push(io("ram", RwMode::Randread, 4096, 1, false, 30_000.0));
        let m = median_of_repeats(&recs);
        assert_eq!(m.len(), sample().len(), "one record per shape");
        let Record::Io(first) = &m[0] else {
            unreachable!("the first shape is an I/O run")
        };
        assert_eq!(first.iops, 25_000.0, "the median of 5K, 25K and 30K");
        assert_eq!(median_of_repeats(&sample()), sample(), "nothing to reduce");
    }

    #[test]
    fn records_round_trip_through_json_lines() {
        let recs = sample();
        let text: String = recs
            .iter()
            .map(|r| serde_json::to_string(r).expect("serializable") + "\n")
            .collect();
        assert!(text.contains(r#""kind":"io""#) && text.contains(r#""mode":"pingpong""#));
        assert_eq!(parse_records(&text).expect("parses"), recs);
        assert!(parse_records("{\"kind\":\"nope\"}").is_err());
    }

    fn tagged(r: Record, name: &str, on: bool) -> Record {
        match r {
            Record::Io(mut i) => {
                i.opt = Some(OptTag {
                    name: name.into(),
                    on,
                });
                Record::Io(i)
            }
            other => other,
        }
    }

    #[test]
    fn optimisation_pairs_get_their_own_table_and_stay_out_of_the_aims() {
        let mut recs = sample();
        let main_rows = io_table(&recs, false).lines().count();
        recs.push(tagged(
            io("ram", RwMode::Randread, 4096, 32, false, 400_000.0),
            "zero-copy",
            false,
        ));
        recs.push(tagged(
            io("ram", RwMode::Randread, 4096, 32, false, 500_000.0),
            "zero-copy",
            true,
        ));
        // An unpaired run is left out.
        recs.push(tagged(
            io("ram", RwMode::Read, 131_072, 8, false, 1.0),
            "lonely",
            true,
        ));
        assert_eq!(io_table(&recs, false).lines().count(), main_rows);
        let t = opt_table(&recs);
        let rows: Vec<&str> = t.lines().skip(2).collect();
        assert_eq!(rows.len(), 1, "{t}");
        assert!(
            rows[0].starts_with("| zero-copy | 4K randread QD32 | ram | 400.0K |"),
            "{}",
            rows[0]
        );
        assert!(rows[0].contains("| 500.0K |"), "{}", rows[0]);
        assert!(rows[0].contains("| +25% |"), "{}", rows[0]);
        // The aims ignore the tagged runs (the 128K read aim still uses the untagged one).
        let md = markdown(&recs);
        assert!(md.contains("What each optimisation buys"), "{md}");
        assert!(!md.contains("lonely"), "{md}");
        assert!(OptTag::parse("x=maybe").is_err());
        assert!(OptTag::parse("=on").is_err());
        assert_eq!(
            OptTag::parse("polling=off"),
            Ok(OptTag {
                name: "polling".into(),
                on: false
            })
        );
    }

    #[test]
    fn the_limit_is_the_better_of_the_sleeping_and_the_polling_baseline() {
        let mut recs = sample();
        let ratio = |recs: &[Record]| {
            let r = match &recs[2] {
                Record::Io(i) => i.clone(),
                _ => unreachable!(),
            };
            vs_limit(&r, recs).expect("a ratio")
        };
        // 128K read at 1250 MiB/s against the 2500 MiB/s stream.
        assert_eq!(ratio(&recs), "bw 50% of stream");
        recs.push(Record::Baseline(BaselineRecord {
            mode: BaselineMode::StreamSpin,
            seconds: 5.0,
            bytes: 0,
            mib_s: 5000.0,
            mb_s: 5242.9,
            gb_s: 5.24,
            round_trips: 0,
            rate: 0.0,
            latency: None,
            bench_cpu_pct: 100.0,
        }));
        assert_eq!(ratio(&recs), "bw 25% of stream");
    }
}
