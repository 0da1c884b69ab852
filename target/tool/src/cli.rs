//! The operator commands of the `tessera` CLI, against the manager's control API:
//! `tessera status`, `tessera volume create|resize`, `tessera server add|state`,
//! `tessera extent move`, `tessera reload`. `--manager ADDR` and `--credential FILE` (or the
//! environment variable `TESSERA_CREDENTIAL`) go before or after the subcommand. Every change goes through the same manager code
//! path as a YAML reload, and a change that cannot be applied is refused whole (the manager's
//! message is printed and the exit code is 1).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use manager::api::{AddServerRequest, CreateVolumeRequest, Role};
use manager::client::Client;
use manager::map::{ClusterMap, HostPolicy, ServerState};

/// Default control address of `tessera-manager`.
pub const DEFAULT_MANAGER: &str = "127.0.0.1:7700";
/// Environment variable naming the operator's credential file (when `--credential` is absent).
pub const CREDENTIAL_ENV: &str = "TESSERA_CREDENTIAL";

/// `--manager` and `--credential` after an operator subcommand (the same flags before the
/// subcommand are [`ManagerArg::or`]'s fallback).
#[derive(Args, Debug, Clone, Default)]
pub struct ManagerArg {
    /// The manager's control address [default: 127.0.0.1:7700].
    #[arg(long, value_name = "ADDR", global = true)]
    pub manager: Option<String>,
    /// The operator's credential file (mode 0600) [env: TESSERA_CREDENTIAL].
    #[arg(long, value_name = "FILE", global = true)]
    pub credential: Option<PathBuf>,
}

impl ManagerArg {
    /// These flags, each completed by `outer`'s (given before the subcommand).
    #[must_use]
    pub fn or(self, outer: &ManagerArg) -> ManagerArg {
        ManagerArg {
            manager: self.manager.or_else(|| outer.manager.clone()),
            credential: self.credential.or_else(|| outer.credential.clone()),
        }
    }
}

/// A server state on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    Up,
    Draining,
    Down,
}

impl From<StateArg> for ServerState {
    fn from(s: StateArg) -> Self {
        match s {
            StateArg::Up => Self::Up,
            StateArg::Draining => Self::Draining,
            StateArg::Down => Self::Down,
        }
    }
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
        /// Hosts allowed on a new subsystem: `any`, or host NQNs separated by commas (required
        /// when the subsystem does not exist yet; refused for an existing one).
        #[arg(long, value_name = "any|NQN,...", value_delimiter = ',')]
        hosts: Vec<String>,
    },
    /// Grow a volume.
    Resize {
        name: String,
        #[arg(long)]
        size: String,
    },
    /// Clear the `lost` mark of a volume's extents (all, or `--extent N`): acknowledges that
    /// their data is gone; their blocks then read as the pool holds them (zeros unless
    /// written since).
    ClearLost {
        name: String,
        /// Extent index; default: every extent of the volume.
        #[arg(long)]
        extent: Option<usize>,
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
        /// Failure domain: copies of an extent go to distinct racks when the up servers span
        /// enough of them (without one, the server is a domain of its own).
        #[arg(long)]
        rack: Option<String>,
    },
    /// Set a server's state: `down` (failed: not waited for), `draining` (no new extents), or
    /// `up` again (e.g. after the manager marked it down and it has been repaired).
    State {
        id: String,
        #[arg(value_enum)]
        state: StateArg,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum ExtentCmd {
    /// Move an extent to another server (copy, then switch); for a volume with several
    /// copies, move the copy on `--from` (a copy on `--to` is rebuilt, then `--from`'s leaves).
    Move {
        volume: String,
        extent: usize,
        /// Destination server id.
        #[arg(long)]
        to: String,
        /// The server whose copy the move replaces (required for a volume with several
        /// copies; for one copy, optional and then the owner).
        #[arg(long)]
        from: Option<String>,
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

/// `--hosts` as a host policy: none given, `any`, or a list of NQNs.
fn hosts(list: Vec<String>) -> Result<Option<HostPolicy>, String> {
    match list.as_slice() {
        [] => Ok(None),
        [one] if one == "any" => Ok(Some(HostPolicy::Any)),
        l if l.iter().any(|h| h == "any") => Err(
            "--hosts: `any` cannot be combined with host NQNs (expected `any` or NQN,NQN,...)"
                .to_owned(),
        ),
        _ => Ok(Some(HostPolicy::Only(list))),
    }
}

/// The client for `m`: its address, and the operator credential from `--credential` or
/// `TESSERA_CREDENTIAL` when either is given.
fn client(m: &ManagerArg) -> Result<Client, String> {
    let addr = m.manager.as_deref().unwrap_or(DEFAULT_MANAGER);
    let file = m
        .credential
        .clone()
        .or_else(|| std::env::var_os(CREDENTIAL_ENV).map(PathBuf::from));
    match file {
        None => Ok(Client::new(addr)),
        Some(f) => credential(&f).map(|t| Client::with_credential(addr, t)),
    }
}

fn credential(file: &Path) -> Result<String, String> {
    manager::credential::read_token(file).map_err(|e| e.to_string())
}

/// Runs one operator command; prints the result or the manager's error.
pub async fn run(m: &ManagerArg, cmd: AdminCmd) -> ExitCode {
    let r: Result<(), String> = async {
        let client = client(m)?;
        match cmd {
            AdminCmd::Status => status(&client).await,
            AdminCmd::Volume(VolumeCmd::Create {
                name,
                size: sz,
                subsystem,
                nsid,
                block_size,
                extent_size,
                hosts: host_list,
            }) => {
                let req = CreateVolumeRequest {
                    name,
                    size: size(&sz)?,
                    block_size,
                    extent_size: extent_size.as_deref().map(size).transpose()?,
                    replicas: None,
                    subsystem,
                    nsid,
                    hosts: hosts(host_list)?,
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
            AdminCmd::Volume(VolumeCmd::ClearLost { name, extent }) => {
                let m = client
                    .clear_lost(&name, extent)
                    .await
                    .map_err(|e| e.to_string())?;
                let which = extent.map_or_else(|| "every extent".to_owned(), |i| format!("extent {i}"));
                println!(
                    "cleared the lost mark of {which} of volume {name} (generation {})",
                    m.generation
                );
                Ok(())
            }
            AdminCmd::Server(ServerCmd::Add {
                id,
                portal,
                internal,
                pool,
                rack,
            }) => {
                let req = AddServerRequest {
                    id,
                    portal,
                    internal,
                    pool_bytes: size(&pool)?,
                    rack,
                };
                let m = client.add_server(&req).await.map_err(|e| e.to_string())?;
                println!("added server {} (generation {})", req.id, m.generation);
                Ok(())
            }
            AdminCmd::Server(ServerCmd::State { id, state }) => {
                let m = client
                    .set_server_state(&id, state.into())
                    .await
                    .map_err(|e| e.to_string())?;
                println!(
                    "server {id} is {} (generation {})",
                    format!("{state:?}").to_lowercase(),
                    m.generation
                );
                Ok(())
            }
            AdminCmd::Extent(ExtentCmd::Move {
                volume,
                extent,
                to,
                from: Some(from),
            }) => {
                let m = client
                    .move_copy(&volume, extent, &from, &to)
                    .await
                    .map_err(|e| e.to_string())?;
                let replicated = m.volume(&volume).is_some_and(|v| v.replicas > 1);
                if replicated {
                    println!(
                        "moving {volume} extent {extent}'s copy from {from} to {to} (generation {}; \
                         the copy on {from} leaves once the one on {to} is rebuilt)",
                        m.generation
                    );
                } else {
                    println!(
                        "moving {volume} extent {extent} to {to} (generation {}; the switch follows when the copy converges)",
                        m.generation
                    );
                }
                Ok(())
            }
            AdminCmd::Extent(ExtentCmd::Move {
                volume,
                extent,
                to,
                from: None,
            }) => {
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
            "  {:<8} {:<9} acked {:<5} rack {:<8} portal {:<21} internal {:<21} pool {} ({} free){}",
            srv.id,
            format!("{:?}", srv.state).to_lowercase(),
            srv.acked,
            entry.and_then(|e| e.rack.as_deref()).unwrap_or("-"),
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
            "moving: {} extent {} from {} to {}{}",
            m.volume,
            m.extent,
            m.from,
            m.to,
            if m.copy {
                " (a copy: rebuilding on the destination, then dropped from the source)"
            } else {
                ""
            }
        );
    }
    for r in &s.stale_replicas {
        println!(
            "stale copy: {} extent {} on {} (takes no writes until rebuilt)",
            r.volume, r.extent, r.server
        );
    }
    for l in &s.lost_extents {
        println!(
            "lost extent: {} extent {} (its data is gone: reads fail until `tessera volume \
             clear-lost`)",
            l.volume, l.extent
        );
    }
    for r in &s.rebuilding_replicas {
        println!(
            "rebuilding copy: {} extent {} on {} from {}: {}",
            r.volume,
            r.extent,
            r.server,
            r.primary.as_deref().unwrap_or("(no primary)"),
            rebuild_progress(r.done_bytes, r.total_bytes)
        );
    }
    Ok(())
}

/// `done of total bytes (N %)`, or why there is no figure yet.
fn rebuild_progress(done: Option<u64>, total: Option<u64>) -> String {
    match (done, total) {
        (Some(d), Some(t)) if t > 0 => {
            format!("{d} of {t} bytes ({} %)", d.saturating_mul(100) / t)
        }
        (Some(d), Some(_)) => format!("{d} bytes"),
        _ => "starting (no progress report yet)".to_owned(),
    }
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
