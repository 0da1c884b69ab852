//! The operator commands of the `tessera` CLI, against the manager's control API:
//! `tessera status`, `tessera volume create|resize`, `tessera server add`,
//! `tessera extent move`, `tessera reload`. Every change goes through the same manager code
//! path as a YAML reload, and a change that cannot be applied is refused whole (the manager's
//! message is printed and the exit code is 1).

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use manager::api::{AddServerRequest, CreateVolumeRequest, Role};
use manager::client::Client;
use manager::map::ClusterMap;

/// Default control address of `tessera-manager`.
pub const DEFAULT_MANAGER: &str = "127.0.0.1:7700";

#[derive(Args, Debug, Clone)]
pub struct ManagerArg {
    /// The manager's control address.
    #[arg(long, default_value = DEFAULT_MANAGER, global = true)]
    pub manager: String,
}

#[derive(Subcommand, Debug, Clone)]
pub enum VolumeCmd {
    /// Create a volume (extents striped over the servers).
    Create {
        name: String,
        /// Size, e.g. 1GiB, 512MiB or bytes.
        #[arg(long)]
        size: String,
        /// Subsystem NQN the volume is a namespace of.
        #[arg(long)]
        subsystem: String,
        #[arg(long)]
        nsid: Option<u32>,
        #[arg(long)]
        block_size: Option<u32>,
        /// Extent size, e.g. 64MiB.
        #[arg(long)]
        extent_size: Option<String>,
    },
    /// Grow a volume.
    Resize {
        name: String,
        #[arg(long)]
        size: String,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum ServerCmd {
    /// Add a storage server; new extents may be placed on it.
    Add {
        id: String,
        #[arg(long)]
        portal: SocketAddr,
        #[arg(long)]
        internal: SocketAddr,
        /// Pool size, e.g. 2GiB.
        #[arg(long)]
        pool: String,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum ExtentCmd {
    /// Move an extent to another server (copy, then switch).
    Move {
        volume: String,
        extent: usize,
        /// Destination server id.
        #[arg(long)]
        to: String,
    },
}

/// The operator subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum AdminCmd {
    /// Show the cluster: generation, servers, volumes and their extents, reports, moves.
    Status,
    #[command(subcommand)]
    Volume(VolumeCmd),
    #[command(subcommand)]
    Server(ServerCmd),
    #[command(subcommand)]
    Extent(ExtentCmd),
    /// Ask the manager to re-read its cluster YAML and apply the differences.
    Reload,
}

fn size(s: &str) -> Result<u64, String> {
    yaml::parse_size(s).map_err(|e| format!("size `{s}`: {e}"))
}

/// Runs one operator command; prints the result or the manager's error.
pub async fn run(manager: &str, cmd: AdminCmd) -> ExitCode {
    let client = Client::new(manager);
    let r: Result<(), String> = async {
        match cmd {
            AdminCmd::Status => status(&client).await,
            AdminCmd::Volume(VolumeCmd::Create {
                name,
                size: sz,
                subsystem,
                nsid,
                block_size,
                extent_size,
            }) => {
                let req = CreateVolumeRequest {
                    name,
                    size: size(&sz)?,
                    block_size,
                    extent_size: extent_size.as_deref().map(size).transpose()?,
                    replicas: None,
                    subsystem,
                    nsid,
                    hosts: None,
                };
                let m = client.create_volume(&req).await.map_err(|e| e.to_string())?;
                println!("created volume {} (generation {})", req.name, m.generation);
                Ok(())
            }
            AdminCmd::Volume(VolumeCmd::Resize { name, size: sz }) => {
                let m = client
                    .resize_volume(&name, size(&sz)?)
                    .await
                    .map_err(|e| e.to_string())?;
                println!("resized volume {name} (generation {})", m.generation);
                Ok(())
            }
            AdminCmd::Server(ServerCmd::Add {
                id,
                portal,
                internal,
                pool,
            }) => {
                let req = AddServerRequest {
                    id,
                    portal,
                    internal,
                    pool_bytes: size(&pool)?,
                };
                let m = client.add_server(&req).await.map_err(|e| e.to_string())?;
                println!("added server {} (generation {})", req.id, m.generation);
                Ok(())
            }
            AdminCmd::Extent(ExtentCmd::Move { volume, extent, to }) => {
                let m = client
                    .move_extent(&volume, extent, &to)
                    .await
                    .map_err(|e| e.to_string())?;
                println!(
                    "moving {volume} extent {extent} to {to} (generation {}; the switch follows when the copy converges)",
                    m.generation
                );
                Ok(())
            }
            AdminCmd::Reload => {
                let m = client.reload().await.map_err(|e| e.to_string())?;
                println!("reloaded (generation {})", m.generation);
                Ok(())
            }
        }
    }
    .await;
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tessera: {e}");
            ExitCode::from(1)
        }
    }
}

async fn status(client: &Client) -> Result<(), String> {
    let s = client.status().await.map_err(|e| e.to_string())?;
    let map = client.map(&Role::Client).await.map_err(|e| e.to_string())?;
    println!(
        "generation {} (committed {}, servers at {})",
        s.generation, s.committed, s.servers_generation
    );
    if let Some(p) = &s.publishing {
        println!(
            "publishing generation {}: phase {}, waiting for {:?}, {} queued",
            p.generation, p.phase, p.waiting, p.queued
        );
    }
    println!("servers:");
    for srv in &s.servers {
        let entry = map.server(&srv.id);
        println!(
            "  {:<8} {:<9} acked {:<5} portal {:<21} internal {:<21} pool {} ({} free){}",
            srv.id,
            format!("{:?}", srv.state).to_lowercase(),
            srv.acked,
            entry.map_or_else(String::new, |e| e.portal.to_string()),
            entry.map_or_else(String::new, |e| e.internal.to_string()),
            entry.map_or(0, |e| e.pool_bytes),
            map.free_bytes(&srv.id),
            if srv.late { "  LATE" } else { "" }
        );
    }
    print_volumes(&map);
    println!(
        "mismatch reports: stale {}, behind {}, unstamped {}",
        s.reports.stale, s.reports.behind, s.reports.unstamped
    );
    for m in &s.moves {
        println!(
            "moving: {} extent {} from {} to {}",
            m.volume, m.extent, m.from, m.to
        );
    }
    Ok(())
}

fn print_volumes(map: &ClusterMap) {
    println!("volumes:");
    for v in &map.volumes {
        println!(
            "  {} {} bytes, {}-byte blocks, {} extents of {} bytes, {} nsid {}",
            v.name,
            v.size_bytes,
            v.block_size,
            v.extents.len(),
            v.extent_size,
            v.subsystem,
            v.nsid
        );
        let owners: Vec<String> = v
            .extents
            .iter()
            .map(|e| {
                let o = e.replicas.first().map_or("-", |r| r.server.as_str());
                match &e.moving {
                    Some(m) => format!("{o}->{}", m.to.server),
                    None => o.to_string(),
                }
            })
            .collect();
        println!("    extents: {}", owners.join(" "));
    }
}
