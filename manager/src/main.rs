//! `tessera-manager --config cluster.yaml --data-dir DIR [--listen 127.0.0.1:7700]`: the
//! management service. `tessera-manager --check cluster.yaml` validates a cluster file (and its
//! credential files) without starting anything: exit 0, or 1 with `FILE:LINE:COLUMN: ...`. Logs go to stderr (`RUST_LOG` filters, default `info`); SIGTERM or
//! SIGINT stop it cleanly (exit 0).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use daemon::notify;

/// Tessera management service: owns the cluster map and its generation, serves the control API.
#[derive(Debug, Parser)]
#[command(name = "tessera-manager", version)]
struct Args {
    /// Cluster YAML: generation 1 when the data directory is new, the credentials, and
    /// `POST /v1/reload`.
    #[arg(long, value_name = "FILE", required_unless_present = "check")]
    config: Option<PathBuf>,
    /// Directory of the durable store (created if absent).
    #[arg(long, value_name = "DIR", required_unless_present = "check")]
    data_dir: Option<PathBuf>,
    /// Check this cluster YAML (syntax, fields, credential files, room for its volumes) and exit:
    /// 0 when it is valid, 1 with FILE:LINE:COLUMN: FIELD: message otherwise.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["config", "data_dir"])]
    check: Option<PathBuf>,
    /// Phase 1a bound in seconds: an old owner that has not acked a map moving extents away
    /// from it within this is marked down in a new generation (0: wait without a bound).
    #[arg(long, value_name = "SECS", default_value_t = manager::server::OLD_OWNER_TIMEOUT_MS / 1000)]
    old_owner_timeout: u64,
    /// Control API address (port 0: any free port; the log line "control API listening" names it).
    #[arg(long, value_name = "ADDR", default_value = manager::server::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Prometheus metrics (`GET /metrics`) on this address, or `off`. Default: 127.0.0.1:9421,
    /// skipped with a warning when that port is taken (an address given here must bind).
    #[arg(long, value_name = "ADDR|off", value_parser = parse_metrics)]
    metrics: Option<Metrics>,
    /// Log format: `text` or `json` (one object per line) on stderr, or `journald`.
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    log_format: daemon::log::LogFormat,
}

#[derive(Debug, Clone, Copy)]
enum Metrics {
    Off,
    At(SocketAddr),
}

fn parse_metrics(s: &str) -> Result<Metrics, String> {
    if s == "off" {
        return Ok(Metrics::Off);
    }
    s.parse()
        .map(Metrics::At)
        .map_err(|e| format!("`{s}`: expected ADDR:PORT or off ({e})"))
}

/// Starts the metrics endpoint as `--metrics` says. Err: an address given explicitly that
/// cannot be bound.
async fn start_metrics(
    arg: Option<Metrics>,
    running: &manager::server::Running,
) -> Result<(), String> {
    let (addr, explicit) = match arg {
        Some(Metrics::Off) => return Ok(()),
        Some(Metrics::At(a)) => (a, true),
        None => match manager::server::DEFAULT_METRICS_ADDR.parse() {
            Ok(a) => (a, false),
            Err(_) => return Ok(()),
        },
    };
    match running.serve_metrics(addr).await {
        Ok(bound) => {
            // The address comes last: tests and scripts read it from the end of this line.
            tracing::info!(addr = %bound, "serving Prometheus metrics on /metrics");
            Ok(())
        }
        Err(e) if explicit => Err(e.to_string()),
        Err(e) => {
            tracing::warn!(error = %e, "metrics disabled (give --metrics ADDR or --metrics off)");
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(file) = &args.check {
        return match manager::server::check(file) {
            Ok((c, shared)) => {
                // Warnings, not errors: the file is valid; each names its volume's declaration.
                for w in &shared {
                    match c.volumes.iter().find(|v| v.name == w.volume) {
                        Some(v) => eprintln!("tessera-manager: warning: {}: {w}", v.loc),
                        None => eprintln!("tessera-manager: warning: {w}"),
                    }
                }
                println!(
                    "{}: ok (servers {}, subsystems {}, volumes {}; credentials {})",
                    file.display(),
                    c.servers.len(),
                    c.subsystems.len(),
                    c.volumes.len(),
                    if c.operator_credential.is_some() {
                        "configured"
                    } else {
                        "not configured: loopback --listen only"
                    }
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tessera-manager: {e}");
                ExitCode::FAILURE
            }
        };
    }
    daemon::log::init(args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tessera-manager: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let (Some(cluster_file), Some(data_dir)) = (args.config, args.data_dir) else {
        eprintln!("tessera-manager: --config and --data-dir are required (or --check FILE)");
        return ExitCode::FAILURE;
    };
    // The handlers go in before the API listens: a SIGTERM or SIGINT that arrives once a client
    // can connect must stop the manager in order, not kill it by the default action.
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("tessera-manager: cannot handle SIGTERM/SIGINT: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = manager::server::Config {
        cluster_file,
        data_dir,
        listen: args.listen,
        old_owner_timeout_ms: args.old_owner_timeout.saturating_mul(1000),
    };
    let mut running = match manager::server::start(&config).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("tessera-manager: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = start_metrics(args.metrics, &running).await {
        tracing::error!("{e}");
        eprintln!("tessera-manager: {e}");
        let _ = running.shutdown().await;
        return ExitCode::FAILURE;
    }
    // The API is listening and the map loaded: ready. The watchdog pings while this runtime
    // runs its tasks (the heartbeat and the pinger both live on it).
    notify::ready();
    tokio::spawn(notify::heartbeat("manager".to_string(), None));
    tokio::spawn(notify::watchdog());
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
        r = running.wait() => {
            tracing::error!("server stopped: {r:?}");
            return ExitCode::FAILURE;
        }
    }
    notify::stopping();
    match running.shutdown().await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
