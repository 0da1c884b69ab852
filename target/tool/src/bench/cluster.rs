//! The cluster part of the benchmark: what a run through one storage server's portal touches
//! (how many servers, which share of the volume that server forwards to its peers), and getting
//! a test cluster ready for measuring (every server acked the newest generation, nothing moving;
//! optionally every extent of a volume placed on one server, by extent moves).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use manager::api::{Role, Status};
use manager::client::Client;
use manager::map::{ClusterMap, ServerState};
use serde::{Deserialize, Serialize};

/// How often the manager is polled while waiting.
const POLL: Duration = Duration::from_millis(50);

/// Where a run through a cluster server's portal goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterShape {
    /// Storage servers `up` in the map.
    pub servers: u32,
    /// The server whose portal the run went through (the routing server).
    pub via: String,
    /// The volume behind the namespace.
    pub volume: String,
    pub extents: u32,
    /// Extents owned by another server than `via`: every I/O to them is forwarded over an
    /// internal (stamped) NVMe/TCP connection.
    pub forwarded_extents: u32,
    /// Share of the volume's bytes owned by other servers: the share of forwarded I/Os for a
    /// uniform random workload.
    pub forwarded_pct: f64,
    /// Generation of the map this was read from.
    pub generation: u64,
}

impl ClusterShape {
    /// "2 servers, 50% forwarded via s1".
    pub fn describe(&self) -> String {
        format!(
            "{} server{}, {:.0}% fwd via {}",
            self.servers,
            if self.servers == 1 { "" } else { "s" },
            self.forwarded_pct,
            self.via
        )
    }
}

fn err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |e| format!("manager: {what}: {e}")
}

/// The shape of a run against namespace `nsid` of subsystem `nqn` through the portal `portal`,
/// from the manager's committed map.
pub async fn shape(
    manager: &str,
    portal: SocketAddr,
    nqn: &str,
    nsid: u32,
) -> Result<ClusterShape, String> {
    let map = Client::new(manager)
        .map(&Role::Client)
        .await
        .map_err(err("GET /v1/map"))?;
    shape_of(&map, portal, nqn, nsid)
}

/// [`shape`] on a map at hand.
pub fn shape_of(
    map: &ClusterMap,
    portal: SocketAddr,
    nqn: &str,
    nsid: u32,
) -> Result<ClusterShape, String> {
    let via = map
        .servers
        .iter()
        .find(|s| s.portal == portal)
        .ok_or_else(|| format!("no server of the cluster map has the portal {portal}"))?;
    let vol = map
        .volumes
        .iter()
        .find(|v| v.subsystem == nqn && v.nsid == nsid)
        .ok_or_else(|| format!("no volume of the cluster map is namespace {nsid} of {nqn}"))?;
    let (mut fwd_extents, mut fwd_bytes) = (0u32, 0u64);
    for i in 0..vol.extents.len() {
        let owner = vol
            .owner(i)
            .ok_or_else(|| format!("volume {}: extent {i} has no owner", vol.name))?;
        if owner.server != via.id {
            fwd_extents += 1;
            fwd_bytes += vol.extent_range(i).map_or(0, |(_, len)| len);
        }
    }
    Ok(ClusterShape {
        servers: u32::try_from(
            map.servers
                .iter()
                .filter(|s| s.state == ServerState::Up)
                .count(),
        )
        .unwrap_or(u32::MAX),
        via: via.id.clone(),
        volume: vol.name.clone(),
        extents: u32::try_from(vol.extents.len()).unwrap_or(u32::MAX),
        forwarded_extents: fwd_extents,
        forwarded_pct: if vol.size_bytes == 0 {
            0.0
        } else {
            100.0 * fwd_bytes as f64 / vol.size_bytes as f64
        },
        generation: map.generation,
    })
}

/// Settled: the newest generation is committed, nothing is being published or moved, and at
/// least `servers` servers are listed, every `up` one having acked that generation.
fn settled(s: &Status, servers: usize) -> bool {
    s.generation == s.committed
        && s.publishing.is_none()
        && s.moves.is_empty()
        && s.servers.len() >= servers
        && s.servers
            .iter()
            .filter(|x| x.state == ServerState::Up)
            .all(|x| x.acked >= s.generation)
}

/// Waits until the cluster is settled (see [`settled`]); returns its generation.
pub async fn wait_settled(
    client: &Client,
    servers: usize,
    deadline: Instant,
) -> Result<u64, String> {
    loop {
        let last = match client.status().await {
            Ok(s) if settled(&s, servers) => return Ok(s.generation),
            Ok(s) => {
                format!(
                    "generation {} (committed {}), acks {:?}, {} move(s), publishing {:?}",
                    s.generation,
                    s.committed,
                    s.servers
                        .iter()
                        .map(|x| (x.id.as_str(), x.acked))
                        .collect::<Vec<_>>(),
                    s.moves.len(),
                    s.publishing.as_ref().map(|p| (&p.phase, &p.waiting))
                )
            }
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(format!("the cluster did not settle in time: {last}"));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Gets a test cluster ready: `servers` servers acked the newest generation; with `place =
/// Some((volume, server))`, every extent of `volume` is first moved to `server` (one move at a
/// time, each waited for). Returns the settled generation.
pub async fn prepare(
    manager: &str,
    servers: usize,
    place: Option<(&str, &str)>,
    timeout: Duration,
) -> Result<u64, String> {
    let client = Client::new(manager);
    let deadline = Instant::now() + timeout;
    let mut generation = wait_settled(&client, servers, deadline).await?;
    let Some((volume, on)) = place else {
        return Ok(generation);
    };
    let map = client
        .map(&Role::Client)
        .await
        .map_err(err("GET /v1/map"))?;
    if map.server(on).is_none() {
        return Err(format!("no server `{on}` in the cluster map"));
    }
    let vol = map
        .volume(volume)
        .ok_or_else(|| format!("no volume `{volume}` in the cluster map"))?;
    let away: Vec<usize> = (0..vol.extents.len())
        .filter(|&i| vol.owner(i).is_some_and(|o| o.server != on))
        .collect();
    for i in away {
        client
            .move_extent(volume, i, on)
            .await
            .map_err(|e| format!("moving extent {i} of {volume} to {on}: {e}"))?;
        loop {
            generation = wait_settled(&client, servers, deadline).await?;
            let m = client
                .map(&Role::Client)
                .await
                .map_err(err("GET /v1/map"))?;
            if m.owner(volume, i).is_some_and(|o| o.server == on) {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!("extent {i} of {volume} did not reach {on} in time"));
            }
            tokio::time::sleep(POLL).await;
        }
    }
    Ok(generation)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> ClusterMap {
        serde_json::from_value(serde_json::json!({
            "generation": 3,
            "servers": [
                {"id": "s1", "portal": "127.0.0.1:4530", "internal": "127.0.0.1:4540",
                 "state": "up", "pool_bytes": 1073741824, "cntlid_min": 1, "cntlid_max": 999},
                {"id": "s2", "portal": "127.0.0.1:4531", "internal": "127.0.0.1:4541",
                 "state": "up", "pool_bytes": 1073741824, "cntlid_min": 1001,
                 "cntlid_max": 1999}
            ],
            "subsystems": [{"nqn": "nqn.x:v", "hosts": "any"}],
            "volumes": [{
                "name": "v", "uuid": "000102030405060708090a0b0c0d0e0f",
                "size_bytes": 3145728, "block_size": 512, "extent_size": 1048576,
                "replicas": 1, "subsystem": "nqn.x:v", "nsid": 1,
                "extents": [
                    {"replicas": [{"server": "s1", "offset": 0}], "moving": null},
                    {"replicas": [{"server": "s2", "offset": 0}], "moving": null},
                    {"replicas": [{"server": "s2", "offset": 1048576}], "moving": null}
                ]
            }]
        }))
        .expect("a valid map")
    }

    #[test]
    fn forwarded_share_is_counted_from_the_routing_server() {
        let m = map();
        let p1: SocketAddr = "127.0.0.1:4530".parse().expect("address");
        let p2: SocketAddr = "127.0.0.1:4531".parse().expect("address");
        let s = shape_of(&m, p1, "nqn.x:v", 1).expect("shape");
        assert_eq!((s.servers, s.extents, s.forwarded_extents), (2, 3, 2));
        assert!((s.forwarded_pct - 200.0 / 3.0).abs() < 1e-9);
        assert_eq!(s.via, "s1");
        assert_eq!(s.describe(), "2 servers, 67% fwd via s1");
        let s = shape_of(&m, p2, "nqn.x:v", 1).expect("shape");
        assert_eq!(s.forwarded_extents, 1);
        assert!(shape_of(&m, p1, "nqn.x:v", 2).is_err());
        let p9: SocketAddr = "127.0.0.1:9".parse().expect("address");
        assert!(shape_of(&m, p9, "nqn.x:v", 1).is_err());
    }
}
