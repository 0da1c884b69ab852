//! `tessera-manager --config cluster.yaml --data-dir DIR [--listen 127.0.0.1:7700]`: the
//! management service. Logs go to stderr (`RUST_LOG` filters, default `info`); SIGTERM or
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
    /// Cluster YAML: generation 1 when the data directory is new, and `POST /v1/reload`.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Directory of the durable store (created if absent).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Control API address (port 0: any free port; the log line "control API listening" names it).
    #[arg(long, value_name = "ADDR", default_value = manager::server::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Log format: `text` or `json` (one object per line) on stderr, or `journald`.
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    log_format: daemon::log::LogFormat,
}

fn main() -> ExitCode {
    let args = Args::parse();
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
    let config = manager::server::Config {
        cluster_file: args.config,
        data_dir: args.data_dir,
        listen: args.listen,
    };
    let mut running = match manager::server::start(&config).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("tessera-manager: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tessera-manager: cannot handle SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The API is listening and the map loaded: ready. The watchdog pings while this runtime
    // runs its tasks (the heartbeat and the pinger both live on it).
    notify::ready();
    tokio::spawn(notify::heartbeat("manager".to_string(), None));
    tokio::spawn(notify::watchdog());
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
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
