//! `tessera`: the project's command-line tools.
//!
//! * `tessera bench` — NVMe/TCP load generator (spdk_nvme_perf-like) on the project's own
//!   initiator; `--baseline` measures the machine's limit instead; `--hold-connections N`
//!   measures what idle connections cost the target.
//! * `tessera bench-baseline-server` — the server side of `--baseline`.
//! * `tessera bench-report` — the markdown table (and JSON) of many `bench --json` records.
//! * `tessera bench-cluster` — gets a test cluster ready for `ci/bench` (every server acked the
//!   newest map; optionally a volume's extents all moved to one server).
//! * `tessera status|volume|server|extent|reload` — operator commands against the manager
//!   (`cli`).
//! * `tessera target status|apply FILE|reload` — a standalone target's control socket
//!   (`target_ctl`).

mod bench;
mod cli;
mod target_ctl;

use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use bench::report::{self, BaselineMode, Record};
use bench::workload::RwMode;

#[derive(Parser, Debug)]
#[command(name = "tessera", version, about = "Tessera tools")]
struct Cli {
    /// `--manager` / `--credential` given before an operator subcommand.
    #[command(flatten)]
    m: TopManager,
    #[command(subcommand)]
    cmd: Cmd,
}

/// The operator flags before the subcommand (`tessera --manager X status`); after it, the
/// subcommand's own win.
#[derive(Args, Debug)]
struct TopManager {
    /// The manager's control address, for the operator commands [default: 127.0.0.1:7700].
    #[arg(long = "manager", id = "top_manager", value_name = "ADDR")]
    manager: Option<String>,
    /// The operator's credential file (mode 0600) [env: TESSERA_CREDENTIAL].
    #[arg(long = "credential", id = "top_credential", value_name = "FILE")]
    credential: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Drive I/O against an NVMe/TCP subsystem and report IOPS, bandwidth and latency.
    Bench(BenchArgs),
    /// Serve `tessera bench --baseline` (plain TCP stream and ping-pong).
    BenchBaselineServer(ServerArgs),
    /// Merge `tessera bench --json` records (one per line) into the ci/bench report; repeated
    /// runs of one shape count as their median run.
    BenchReport(ReportArgs),
    /// Wait until a test cluster is ready to measure (every server acked the newest generation,
    /// nothing moving); optionally move every extent of a volume to one server first.
    BenchCluster(ClusterArgs),
    /// Show the cluster (manager control API): generation, servers, volumes, reports, moves.
    Status(ManagerOnly),
    /// Create or resize a volume.
    Volume {
        #[command(subcommand)]
        cmd: cli::VolumeCmd,
        #[command(flatten)]
        m: cli::ManagerArg,
    },
    /// Add a storage server, or set a server's state.
    Server {
        #[command(subcommand)]
        cmd: cli::ServerCmd,
        #[command(flatten)]
        m: cli::ManagerArg,
    },
    /// Move an extent (copy, then switch).
    Extent {
        #[command(subcommand)]
        cmd: cli::ExtentCmd,
        #[command(flatten)]
        m: cli::ManagerArg,
    },
    /// Ask the manager to re-read its cluster YAML and apply the differences.
    Reload(ManagerOnly),
    /// A standalone tessera-target, through its control socket: status, apply, reload.
    Target {
        #[command(subcommand)]
        cmd: target_ctl::TargetCmd,
        #[command(flatten)]
        c: target_ctl::ControlArg,
    },
}

#[derive(Args, Debug)]
struct ManagerOnly {
    #[command(flatten)]
    m: cli::ManagerArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Digest {
    /// Header digest (CRC32C over every PDU header).
    Hdr,
    /// Data digest (CRC32C over every PDU's data).
    Data,
    /// Neither.
    None,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Target address.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    addr: IpAddr,
    /// Target port.
    #[arg(long, default_value_t = 4420)]
    port: u16,
    /// Subsystem NQN.
    #[arg(long, default_value = "nqn.2026-11.dev.tessera:default")]
    nqn: String,
    /// Host NQN to connect as.
    #[arg(long, default_value = "nqn.2026-11.dev.tessera:bench")]
    hostnqn: String,
    /// Namespace ID.
    #[arg(long, default_value_t = 1)]
    nsid: u32,
    /// Access pattern.
    #[arg(long, value_enum, default_value_t = RwMode::Randread)]
    rw: RwMode,
    /// Percentage of reads for randrw.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    mix: u8,
    /// I/O size (bytes, or with K/M suffix: 4k, 128K).
    #[arg(long, default_value = "4k", value_parser = bench::parse_size)]
    bs: u64,
    /// Commands in flight per queue.
    #[arg(long, default_value_t = 1)]
    qd: u32,
    /// I/O queues (one TCP connection each) on the one controller.
    #[arg(long, default_value_t = 1)]
    queues: u16,
    /// Seconds measured (after --warmup).
    #[arg(long, default_value_t = 5.0, conflicts_with = "ios")]
    time: f64,
    /// Stop after this many I/Os instead of after --time.
    #[arg(long)]
    ios: Option<u64>,
    /// Seconds run before measuring.
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Digests to ask for: hdr, data, hdr,data or none.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "none")]
    digest: Vec<Digest>,
    /// Pin this process to a CPU.
    #[arg(long)]
    core: Option<usize>,
    /// Keep polling the sockets this many µs after the last completion before sleeping in
    /// poll(2) (0: sleep at once; use 0 when the tool and the target share one CPU).
    #[arg(long, value_name = "US", default_value_t = 100)]
    poll_us: u64,
    /// Most write data sent in the command capsule (default: the 8 KiB our target and Linux
    /// nvmet advertise); larger writes go through R2T. 0: every write waits for an R2T.
    #[arg(long, value_name = "BYTES", value_parser = bench::parse_size)]
    incapsule: Option<u64>,
    /// Keep SQ flow control on (Connect CATTR bit 2 clear, unlike Linux): the target then
    /// completes every read with a response capsule after its C2HData instead of SUCCESS.
    #[arg(long)]
    sq_flow_control: bool,
    /// Tag the record as one side of an optimisation's before/after pair, e.g.
    /// `zero-copy=off` (ci/bench sets the matching switches; the report pairs them up).
    #[arg(long, value_name = "NAME=on|off")]
    opt: Option<String>,
    /// Print one JSON record on stdout instead of the human summary.
    #[arg(long)]
    json: bool,
    /// Write a pattern encoding (block, generation), read every write back, and check every
    /// read of a block this run wrote. Fails on the first mismatch.
    #[arg(long)]
    verify: bool,
    /// Seed of the offset generator.
    #[arg(long, default_value_t = 0x7e55_e7a)]
    seed: u64,
    /// Free text kept in the JSON record (ci/bench: the backend).
    #[arg(long, default_value = "")]
    label: String,
    /// PID of the target on this machine: report its CPU time per I/O (or, with
    /// --hold-connections, its RSS and idle CPU). A cluster: every storage server's PID,
    /// comma-separated; their CPU time is summed (--hold-connections uses the first).
    #[arg(long, value_delimiter = ',')]
    target_pid: Vec<u32>,
    /// Stamp every command with this map generation in CDW2/CDW3 (0: unstamped, as a Linux
    /// host). A standalone tessera-target is at generation 1 and checks stamped commands.
    #[arg(long, default_value_t = 0)]
    generation: u64,
    /// The target is a cluster storage server managed here (e.g. 127.0.0.1:7740): the record
    /// names the routing server, the servers up and the share of the volume it forwards.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["baseline", "hold_connections"])]
    manager: Option<String>,
    /// Only the extents of the volume in which a server plays a part (needs --manager):
    /// `primary` (it is the extent's primary: writes through it are local and it fans them
    /// out to the other copies), `copy` (it holds an in-sync copy: reads through it are local)
    /// or `no-copy` (it holds none: every I/O through it is forwarded), each optionally
    /// followed by `:SERVER`; the server defaults to the one whose portal is --port.
    #[arg(long, value_name = "ROLE[:SERVER]", requires = "manager")]
    extents: Option<String>,
    /// Measure the machine instead of the target: run against `bench-baseline-server`.
    #[arg(long, value_enum, conflicts_with_all = ["hold_connections", "verify", "ios"])]
    baseline: Option<BaselineMode>,
    /// Open this many controllers (admin + --queues I/O queues each), hold them idle for
    /// --time seconds, and report the target's RSS and CPU (needs --target-pid).
    #[arg(long, requires = "target_pid", conflicts_with_all = ["verify", "ios"])]
    hold_connections: Option<u32>,
}

#[derive(Args, Debug)]
struct ClusterArgs {
    /// The manager's control address.
    #[arg(long, value_name = "ADDR")]
    manager: String,
    /// Servers that must be listed and have acked the newest generation.
    #[arg(long, default_value_t = 1)]
    servers: usize,
    /// Move every extent of this volume to --on first (one move at a time, each waited for).
    #[arg(long, value_name = "VOLUME", requires = "on")]
    place: Option<String>,
    /// The server to move --place's extents to.
    #[arg(long, value_name = "SERVER", requires = "place")]
    on: Option<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
}

#[derive(Args, Debug)]
struct ServerArgs {
    /// Address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    addr: IpAddr,
    /// Port to listen on.
    #[arg(long)]
    port: u16,
    /// Pin this process to a CPU.
    #[arg(long)]
    core: Option<usize>,
}

#[derive(Args, Debug)]
struct ReportArgs {
    /// Files of JSON records, one per line ("-" for stdin).
    #[arg(required = true)]
    input: Vec<PathBuf>,
    /// Also write the records, the aims and `--meta` as one JSON document here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// KEY=VALUE facts kept in the JSON document (machine, date, load...).
    #[arg(long, value_parser = parse_kv)]
    meta: Vec<(String, String)>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))
}

fn secs(v: f64, what: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v).map_err(|_| format!("--{what} {v}: not a duration"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outer = cli::ManagerArg {
        manager: cli.m.manager,
        credential: cli.m.credential,
    };
    let r = match cli.cmd {
        Cmd::Bench(a) => bench_main(&a),
        Cmd::BenchBaselineServer(a) => server_main(&a),
        Cmd::BenchReport(a) => report_main(&a),
        Cmd::BenchCluster(a) => cluster_main(&a),
        Cmd::Status(a) => return admin(a.m.or(&outer), cli::AdminCmd::Status),
        Cmd::Volume { cmd, m } => return admin(m.or(&outer), cli::AdminCmd::Volume(cmd)),
        Cmd::Server { cmd, m } => return admin(m.or(&outer), cli::AdminCmd::Server(cmd)),
        Cmd::Extent { cmd, m } => return admin(m.or(&outer), cli::AdminCmd::Extent(cmd)),
        Cmd::Reload(a) => return admin(a.m.or(&outer), cli::AdminCmd::Reload),
        Cmd::Target { cmd, c } => return target_ctl::run(&cmd, &c),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tessera: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Operator commands against the manager (see `cli`).
fn admin(m: cli::ManagerArg, cmd: cli::AdminCmd) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(cli::run(&m, cmd)),
        Err(e) => {
            eprintln!("tessera: runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn pin(core: Option<usize>) -> Result<(), String> {
    if let Some(c) = core {
        bench::pin_to_cpu(c).map_err(|e| format!("--core {c}: {e}"))?;
    }
    Ok(())
}

fn server_main(a: &ServerArgs) -> Result<(), String> {
    pin(a.core)?;
    let rt = bench::runtime().map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(bench::baseline::serve(SocketAddr::new(a.addr, a.port)))
        .map_err(|e| format!("bench-baseline-server: {e}"))
}

fn bench_main(a: &BenchArgs) -> Result<(), String> {
    pin(a.core)?;
    let rt = bench::runtime().map_err(|e| format!("runtime: {e}"))?;
    let addr = SocketAddr::new(a.addr, a.port);
    let time = secs(a.time, "time")?;
    let warmup = secs(a.warmup, "warmup")?;
    let record = if let Some(mode) = a.baseline {
        Record::Baseline(rt.block_on(bench::baseline::run(addr, mode, time, warmup))?)
    } else if let Some(n) = a.hold_connections {
        let o = bench::hold::HoldOpts {
            addr,
            nqn: a.nqn.clone(),
            hostnqn: a.hostnqn.clone(),
            controllers: n,
            queues: a.queues,
            time,
            target_pid: *a
                .target_pid
                .first()
                .ok_or("--hold-connections needs --target-pid")?,
        };
        Record::Hold(rt.block_on(bench::hold::run(&o))?)
    } else {
        let has = |d| a.digest.contains(&d);
        let mut o = bench::run::IoOpts {
            addr,
            nqn: a.nqn.clone(),
            hostnqn: a.hostnqn.clone(),
            nsid: a.nsid,
            rw: a.rw,
            mix: a.mix,
            bs: a.bs,
            qd: a.qd,
            queues: a.queues,
            time,
            ios: a.ios,
            warmup,
            hdgst: has(Digest::Hdr),
            ddgst: has(Digest::Data),
            verify: a.verify,
            seed: a.seed,
            label: a.label.clone(),
            generation: a.generation,
            target_pids: a.target_pid.clone(),
            progress: std::io::stderr().is_terminal(),
            poll: std::time::Duration::from_micros(a.poll_us),
            incapsule: a
                .incapsule
                .map(|v| u32::try_from(v).map_err(|_| "--incapsule too large".to_string()))
                .transpose()?,
            sq_flow_control: a.sq_flow_control,
            opt: a
                .opt
                .as_deref()
                .map(bench::report::OptTag::parse)
                .transpose()?,
            ranges: None,
        };
        let select = a
            .extents
            .as_deref()
            .map(bench::cluster::ExtentSelect::parse)
            .transpose()?;
        // The map is read before the run: the path measured is the one it describes.
        let shape = match &a.manager {
            Some(m) => {
                let read_pct = a.rw.read_pct(a.mix);
                let (shape, ranges) = rt.block_on(bench::cluster::shape(
                    m,
                    addr,
                    &a.nqn,
                    a.nsid,
                    read_pct,
                    select.as_ref(),
                ))?;
                o.ranges = select.is_some().then_some(ranges);
                Some(shape)
            }
            None => None,
        };
        let mut r = rt.block_on(bench::run::run(&o))?;
        r.cluster = shape;
        Record::Io(r)
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&record).map_err(|e| format!("JSON: {e}"))?
        );
    } else {
        print!("{}", human(&record));
    }
    Ok(())
}

/// The summary for a person at a terminal.
fn human(r: &Record) -> String {
    match r {
        Record::Io(i) => {
            let l = &i.latency;
            let mut s = format!(
                "{}{} on {} queue(s), digests {}, {:.1} s: {:.0} IOPS, {:.1} MiB/s\n\
                 latency µs: mean {:.1}  min {:.1}  p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}\n\
                 CPU per I/O: bench {:.2} µs",
                i.workload(),
                if i.backend().is_empty() {
                    String::new()
                } else {
                    format!(" ({})", i.backend())
                },
                i.queues,
                i.digests(),
                i.seconds,
                i.iops,
                i.mib_s,
                l.mean_us,
                l.min_us,
                l.p50_us,
                l.p99_us,
                l.p999_us,
                l.max_us,
                i.bench_cpu_us_per_io,
            );
            if let Some(t) = i.target_cpu_us_per_io {
                s += &format!(", target {t:.2} µs");
            }
            s.push('\n');
            if let (Some(v), Some(u)) = (i.verified, i.unverified) {
                s += &format!("verify: {v} checked, {u} reads of blocks not written by this run\n");
            }
            s
        }
        Record::Baseline(b) => {
            let mut s = format!(
                "{}: {:.1} MiB/s ({:.1} MB/s, {:.2} GB/s), bench CPU {:.0}%\n",
                b.mode.name(),
                b.mib_s,
                b.mb_s,
                b.gb_s,
                b.bench_cpu_pct
            );
            if let Some(l) = &b.latency {
                s += &format!(
                    "round trips: {:.0}/s, µs: mean {:.1}  p50 {:.1}  p99 {:.1}  max {:.1}\n",
                    b.rate, l.mean_us, l.p50_us, l.p99_us, l.max_us
                );
            }
            s
        }
        Record::Hold(h) => format!(
            "{} controller(s), {} TCP connections: target RSS {:.1} -> {:.1} MiB \
             ({:.0} KiB per controller), target CPU {:.2}% of a core over {:.1} s\n",
            h.controllers,
            h.tcp_connections,
            h.rss_before_kib as f64 / 1024.0,
            h.rss_after_kib as f64 / 1024.0,
            h.rss_per_controller_kib(),
            h.target_cpu_pct,
            h.seconds
        ),
        Record::Rebuild(b) => format!("rebuild: {}\n", bench::report::rebuild_text(b)),
    }
}

fn cluster_main(a: &ClusterArgs) -> Result<(), String> {
    let rt = bench::runtime().map_err(|e| format!("runtime: {e}"))?;
    let timeout = secs(a.timeout, "timeout")?;
    let place = a.place.as_deref().zip(a.on.as_deref());
    let g = rt.block_on(bench::cluster::prepare(
        &a.manager, a.servers, place, timeout,
    ))?;
    match place {
        Some((v, on)) => eprintln!("cluster ready at generation {g}: every extent of {v} on {on}"),
        None => eprintln!(
            "cluster ready at generation {g}: {} server(s) acked",
            a.servers
        ),
    }
    Ok(())
}

fn report_main(a: &ReportArgs) -> Result<(), String> {
    let mut records = Vec::new();
    for p in &a.input {
        let text = if p.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin()).map_err(|e| format!("stdin: {e}"))?
        } else {
            std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?
        };
        records.extend(report::parse_records(&text).map_err(|e| format!("{}: {e}", p.display()))?);
    }
    let records = report::median_of_repeats(&records);
    print!("{}", report::markdown(&records));
    if let Some(out) = &a.json {
        let meta: serde_json::Map<String, serde_json::Value> = a
            .meta
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        let doc = serde_json::json!({
            "meta": meta,
            "records": records,
            "aims": report::aims(&records),
        });
        let text = serde_json::to_string_pretty(&doc).map_err(|e| format!("JSON: {e}"))?;
        std::fs::write(out, text + "\n").map_err(|e| format!("{}: {e}", out.display()))?;
    }
    Ok(())
}
