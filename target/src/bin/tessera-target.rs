//! `tessera-target`: the NVMe/TCP storage server.
//!
//! With no arguments it serves the embedded default layout (one 1 GiB RAM namespace on
//! 127.0.0.1:4420); `--config FILE` serves a YAML layout; `--check FILE` validates one and exits.
//! SIGHUP re-reads the layout file and applies the difference (docs/reload.md), as does
//! `tessera target reload` through the control socket (`--control`).
#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tessera::config::build_registry;
use tessera::control::{ControlSocket, LiveConfig};
use tessera::notify;
use tessera::server::{Target, TargetOptions};

#[derive(Parser, Debug)]
#[command(name = "tessera-target", version, about = "Tessera NVMe/TCP target")]
struct Args {
    /// Serve the layout declared in this YAML file (default: the embedded default layout).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate this YAML layout (and that its backends open) without serving it.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    check: Option<PathBuf>,
    /// Reactor threads (one connection lives on one reactor); default: one per usable CPU.
    #[arg(long, default_value_t = 0)]
    reactors: usize,
    /// Pin reactor threads to these CPUs, e.g. `--cpus 0` or `--cpus 0,1`. Each must be a CPU
    /// this process may run on; otherwise the target does not start (exit status 1).
    #[arg(long, value_delimiter = ',')]
    cpus: Vec<usize>,
    /// Adaptive busy polling: after I/O, each reactor keeps polling its sockets for this many
    /// microseconds before it sleeps in epoll again (0: never poll). Polling saves the
    /// scheduler's wake-up (~25 µs per round trip on a VM) while I/O flows; an idle target
    /// still sleeps.
    #[arg(long, value_name = "US", default_value_t = 100)]
    poll_us: u64,
    /// Copy read data into a buffer instead of sending RAM and null namespaces' memory as it
    /// is (for measuring what zero-copy reads buy; slower).
    #[arg(long, hide = true)]
    no_zero_copy: bool,
    /// Cluster mode: the management service's control address (e.g. 127.0.0.1:7700). The
    /// server gets its map (portals, volumes, pool size) from there.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["config", "check"], requires = "server_id")]
    manager: Option<String>,
    /// Cluster mode: this server's id in the cluster map.
    #[arg(long, value_name = "ID", requires = "manager")]
    server_id: Option<String>,
    /// Cluster mode: this server's credential file (mode 0600), when the cluster YAML
    /// configures credentials (docs/cluster.md, "Credentials").
    #[arg(long, value_name = "FILE", requires = "manager")]
    credential: Option<std::path::PathBuf>,
    /// Cluster mode: the pool backend (its size comes from the map): ram, null, file:PATH,
    /// block:PATH (a label with the pool's identity in the device's last 64 KiB) or
    /// block-unlabeled:PATH (a pool from before labels that uses the whole device).
    #[arg(long, default_value = "ram")]
    pool: tessera::cluster::PoolSpec,
    /// Cluster mode, `block:` pools: the directory where the server keeps the map it last
    /// installed (`pool-<identity>.tessera-map.json`; a file pool keeps it beside the pool
    /// file). Default: $STATE_DIRECTORY (systemd's `StateDirectory=`), else /var/lib/tessera.
    /// Created if missing; a directory the server cannot write stops the start.
    #[arg(long, value_name = "DIR", requires = "manager")]
    state_dir: Option<PathBuf>,
    /// The local control socket (line-delimited JSON: status, apply, reload; `tessera target`
    /// drives it), or `off`. Default: `<dir>/<layout file stem>.sock`, `<dir>` being
    /// $RUNTIME_DIRECTORY or /run/tessera (a default that cannot be created is only warned
    /// about; a path given here must work). Standalone targets only.
    #[arg(long, value_name = "PATH|off", conflicts_with = "manager")]
    control: Option<String>,
    /// Log format: `text` on stderr (colours only on a terminal, no timestamp under the
    /// journal), `json` on stderr (one object per line), or `journald` (the journal's native
    /// protocol, one journal field per event field).
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    log_format: daemon::log::LogFormat,
    /// Prometheus metrics (`GET /metrics`) on this address, or `off`. Default: 127.0.0.1:9420,
    /// skipped with a warning when that port is taken (an address given here must bind).
    #[arg(long, value_name = "ADDR|off", value_parser = parse_metrics)]
    metrics: Option<Metrics>,
    /// Cluster mode: deadline of a host command forwarded to a peer, in ms (then the host
    /// gets a retryable path error).
    #[arg(long, value_name = "MS", default_value_t = 5000, requires = "manager")]
    forward_timeout: u64,
    /// Cluster mode: rebuild rate of this server, in MB/s (10^6 bytes) over all the copies it
    /// rebuilds as their primary; 0: unlimited.
    #[arg(
        long,
        value_name = "MB/S",
        default_value_t = tessera::cluster::rebuild::DEFAULT_RATE_MB,
        requires = "manager"
    )]
    rebuild_rate: u64,
    /// Cluster mode: directory of the servers' DH-HMAC-CHAP secrets, `<server-id>.key` each
    /// (`nvme gen-dhchap-key` output): internal connections authenticate with them. Required
    /// when the internal portal is not a loopback address.
    #[arg(long, value_name = "DIR", requires = "manager")]
    dhchap_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy)]
enum Metrics {
    Off,
    At(std::net::SocketAddr),
}

fn parse_metrics(s: &str) -> Result<Metrics, String> {
    if s == "off" {
        return Ok(Metrics::Off);
    }
    s.parse()
        .map(Metrics::At)
        .map_err(|e| format!("`{s}`: expected ADDR:PORT or off ({e})"))
}

/// Starts the metrics endpoint for `target` as `--metrics` says. Err: a message for an address
/// given explicitly that cannot be bound.
async fn start_metrics(arg: Option<Metrics>, target: &Target) -> Result<(), String> {
    let (addr, explicit) = match arg {
        Some(Metrics::Off) => return Ok(()),
        Some(Metrics::At(a)) => (a, true),
        None => match tessera::metrics::DEFAULT_ADDR.parse() {
            Ok(a) => (a, false),
            Err(_) => return Ok(()),
        },
    };
    match tessera::metrics::bind(addr).await {
        Ok(l) => {
            let addr = l.local_addr().unwrap_or(addr);
            let source = std::sync::Arc::new(tessera::metrics::Source {
                registry: std::sync::Arc::clone(&target.registry),
                connections: Box::new(target.connection_counter()),
            });
            tokio::spawn(tessera::metrics::serve(l, source));
            tracing::info!(%addr, "serving Prometheus metrics on /metrics");
            Ok(())
        }
        Err(e) if explicit => Err(e.to_string()),
        Err(e) => {
            tracing::warn!(error = %e, "metrics disabled (give --metrics ADDR or --metrics off)");
            Ok(())
        }
    }
}

/// How often the `STATUS=` line for the service manager is recomputed (it is sent only when it
/// changes).
const STATUS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The `STATUS=` line: what `systemctl status` shows.
fn status_line(target: &Target) -> String {
    let subsystems = target.registry.subsystems();
    let namespaces: usize = subsystems.values().map(|s| s.namespaces().len()).sum();
    format!(
        "{} connection(s), {} subsystem(s), {} namespace(s), generation {}",
        target.connections(),
        subsystems.len(),
        namespaces,
        target.registry.generation.current()
    )
}

/// Serves until SIGTERM/SIGINT, feeding the service manager's watchdog and status line, then
/// says `STOPPING=1`.
async fn serve_until_signal(target: &Target, signals: Signals, live: Option<&LiveConfig>) {
    tokio::spawn(notify::watchdog());
    tokio::select! {
        () = signals.wait(live) => {}
        () = notify::status_loop(STATUS_EVERY, || status_line(target)) => {}
    }
    notify::stopping();
}

fn main() -> ExitCode {
    let args = Args::parse();
    daemon::log::init(args.log_format);

    if let Some(path) = &args.check {
        return match yaml::load(path).map_err(|e| e.to_string()).and_then(|l| {
            tessera::config::check_backends(&l)
                .map(|()| l)
                .map_err(|e| e.to_string())
        }) {
            Ok(layout) => {
                let namespaces: usize = layout.subsystems.iter().map(|s| s.namespaces.len()).sum();
                println!(
                    "{}: OK ({} listener(s), {} subsystem(s), {} namespace(s))",
                    path.display(),
                    layout.listeners.len(),
                    layout.subsystems.len(),
                    namespaces
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        };
    }

    if let (Some(manager), Some(id)) = (&args.manager, &args.server_id) {
        return run_cluster(manager, id, &args);
    }

    let layout = match &args.config {
        Some(path) => match yaml::load(path) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        },
        None => yaml::default_layout(),
    };

    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tessera-target: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let signals = Signals::install();
        let registry = match build_registry(&layout) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        };
        let addrs: Vec<_> = layout.listeners.iter().map(|l| l.socket_addr()).collect();
        let opts = TargetOptions {
            reactors: args.reactors,
            cpus: args.cpus.clone(),
            poll: std::time::Duration::from_micros(args.poll_us),
            transport: tessera::transport::TransportConfig {
                zero_copy_reads: !args.no_zero_copy,
                ..tessera::config::transport_config(&layout)
            },
            ..TargetOptions::default()
        };
        let target = match Target::start_with(registry, &addrs, opts).await {
            Ok(t) => t,
            Err(e) => {
                // Name the listener's place in the layout (e.g. a port already in use).
                let loc = layout
                    .listeners
                    .iter()
                    .find(|l| e.to_string().contains(&l.socket_addr().to_string()))
                    .map(|l| format!("{}: ", l.loc))
                    .unwrap_or_default();
                eprintln!("{loc}{e}");
                return ExitCode::from(1);
            }
        };
        for s in target.registry.subsystems().values() {
            tracing::info!(subnqn = %s.nqn, namespaces = s.namespaces().len(), "serving subsystem");
        }
        let live = Arc::new(LiveConfig::new(
            Arc::clone(&target.registry),
            target.portals(),
            layout,
            args.config.clone(),
        ));
        let control = match start_control(&args, &live) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("tessera-target: {e}");
                target.shutdown().await;
                return ExitCode::from(1);
            }
        };
        if let Err(e) = start_metrics(args.metrics, &target).await {
            eprintln!("tessera-target: {e}");
            target.shutdown().await;
            return ExitCode::from(1);
        }
        // Listeners bound, layout loaded: ready.
        notify::ready();
        serve_until_signal(&target, signals, Some(&live)).await;
        tracing::info!("shutting down");
        if let Some(c) = control {
            c.close();
        }
        target.shutdown().await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// Opens the control socket `--control` asks for. `Ok(None)`: none (`off`, or the default
/// path could not be set up, which is only warned about: an unprivileged user running the
/// target by hand has no /run/tessera).
fn start_control(args: &Args, live: &Arc<LiveConfig>) -> Result<Option<ControlSocket>, String> {
    let (path, explicit) = match args.control.as_deref() {
        Some("off") => return Ok(None),
        Some(p) => (PathBuf::from(p), true),
        None => (
            tessera::control::default_socket_path(args.config.as_deref()),
            false,
        ),
    };
    match ControlSocket::start(&path, Arc::clone(live)) {
        Ok(c) => Ok(Some(c)),
        Err(e) if explicit => Err(format!("--control: {e}")),
        Err(e) => {
            tracing::warn!(
                "no control socket ({e}); `tessera target` cannot reach this target (give \
                 --control PATH, or --control off to silence this)"
            );
            Ok(None)
        }
    }
}

/// The process's SIGTERM, SIGINT and SIGHUP handlers. They are installed before any listener
/// is bound: a signal that arrives once a host can connect (a supervisor stopping a target
/// that just started) must reach the orderly shutdown, not the default action that kills the
/// process on the spot.
struct Signals {
    /// `None`: the handlers could not be installed; the process runs until killed.
    streams: Option<[tokio::signal::unix::Signal; 3]>,
}

impl Signals {
    /// Installs the handlers (needs the runtime).
    fn install() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        let streams = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(term), Ok(int), Ok(hup)) => Some([term, int, hup]),
            _ => {
                tracing::warn!("cannot install signal handlers; the target runs until killed");
                None
            }
        };
        Signals { streams }
    }

    /// Waits for SIGTERM or SIGINT (then the caller drains and stops). SIGHUP, which would
    /// kill the process by default, re-reads the layout file and applies the difference
    /// (`live`); a cluster server (`None`) takes its configuration from the manager, so there
    /// it only says so.
    async fn wait(self, live: Option<&LiveConfig>) {
        let Some([mut term, mut int, mut hup]) = self.streams else {
            std::future::pending::<()>().await;
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = int.recv() => return,
                _ = hup.recv() => match live {
                    // The outcome (changes, or the error that kept the file out) is logged
                    // there.
                    Some(live) => {
                        tracing::info!("SIGHUP: reloading the layout");
                        let _ = live.reload().await;
                    }
                    None => tracing::warn!(
                        "SIGHUP: a cluster server's configuration comes from the manager \
                         (`tessera reload` there); nothing to reload here"
                    ),
                },
            }
        }
    }
}

fn run_cluster(manager: &str, id: &str, args: &Args) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tessera-target: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let signals = Signals::install();
        let opts = TargetOptions {
            reactors: args.reactors,
            cpus: args.cpus.clone(),
            poll: std::time::Duration::from_micros(args.poll_us),
            // A storage server has no layout of its own (the manager assigns its volumes), so
            // it keeps the default transport limits (docs/transport.md).
            transport: tessera::transport::TransportConfig {
                zero_copy_reads: !args.no_zero_copy,
                ..Default::default()
            },
            ..TargetOptions::default()
        };
        let secrets = match &args.dhchap_dir {
            Some(dir) => match tessera::cluster::ClusterSecrets::load(dir, id) {
                Ok(s) => Some(s),
                Err(e) => {
                    eprintln!("tessera-target: {e}");
                    return ExitCode::from(1);
                }
            },
            None => None,
        };
        let credential = match args
            .credential
            .as_deref()
            .map(manager::credential::read_token)
        {
            None => None,
            Some(Ok(token)) => Some(token),
            Some(Err(e)) => {
                eprintln!("tessera-target: {e}");
                return ExitCode::from(1);
            }
        };
        let state_dir = args.state_dir.clone().unwrap_or_else(|| {
            std::env::var_os("STATE_DIRECTORY")
                .filter(|d| !d.is_empty())
                // systemd may list several directories, colon-separated: the first is ours.
                .and_then(|d| {
                    d.to_str()
                        .and_then(|d| d.split(':').next())
                        .map(PathBuf::from)
                })
                .unwrap_or_else(|| PathBuf::from("/var/lib/tessera"))
        });
        let node = match tessera::cluster::start(
            manager, credential, id, &args.pool, &state_dir, opts, secrets,
        )
        .await
        {
            Ok(n) => n,
            Err(e) => {
                eprintln!("tessera-target: {e}");
                return ExitCode::from(1);
            }
        };
        node.shared
            .set_forward_timeout(std::time::Duration::from_millis(args.forward_timeout));
        node.shared
            .rebuilds
            .set_rate(args.rebuild_rate.saturating_mul(1_000_000));
        if let Err(e) = start_metrics(args.metrics, &node.target).await {
            eprintln!("tessera-target: {e}");
            node.target.shutdown().await;
            return ExitCode::from(1);
        }
        // Listeners bound, the map loaded and installed: ready.
        notify::ready();
        serve_until_signal(&node.target, signals, None).await;
        tracing::info!("shutting down");
        node.target.shutdown().await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}
