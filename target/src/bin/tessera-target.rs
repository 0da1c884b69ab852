//! `tessera-target`: the NVMe/TCP storage server.
//!
//! With no arguments it serves the embedded default layout (one 1 GiB RAM namespace on
//! 127.0.0.1:4420); `--config FILE` serves a YAML layout; `--check FILE` validates one and exits.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tessera::config::build_registry;
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
    /// Pin reactor threads to these CPUs, e.g. `--cpus 0` or `--cpus 0,1`.
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
    /// Cluster mode: the pool backend (its size comes from the map): ram, null, file:PATH or
    /// block:PATH.
    #[arg(long, default_value = "ram")]
    pool: tessera::cluster::PoolSpec,
    /// Cluster mode: directory of the servers' DH-HMAC-CHAP secrets, `<server-id>.key` each
    /// (`nvme gen-dhchap-key` output): internal connections authenticate with them. Required
    /// when the internal portal is not a loopback address.
    #[arg(long, value_name = "DIR", requires = "manager")]
    dhchap_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

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
        wait_for_signal().await;
        tracing::info!("shutting down");
        target.shutdown().await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// Waits for SIGTERM or SIGINT (then the caller drains and stops). SIGHUP, which would kill
/// the process by default, is caught: live reload does not exist yet, so it only says so and
/// the target keeps serving its configuration unchanged.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        // Without signal handlers we can only run until killed.
        std::future::pending::<()>().await;
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => {
                tracing::warn!(
                    "SIGHUP: configuration reload is not supported yet; the configuration is \
                     unchanged and the target keeps serving"
                );
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
        let node = match tessera::cluster::start_with_secrets(
            manager, id, &args.pool, opts, secrets,
        )
        .await
        {
            Ok(n) => n,
            Err(e) => {
                eprintln!("tessera-target: {e}");
                return ExitCode::from(1);
            }
        };
        wait_for_signal().await;
        tracing::info!("shutting down");
        node.target.shutdown().await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}
