//! The cluster part of the benchmark: what a run through one storage server's portal touches
//! (how many servers, which share of the volume that server forwards to its peers), and getting
//! a test cluster ready for measuring (every server acked the newest generation, nothing moving;
//! optionally every extent of a volume placed on one server, by extent moves).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use manager::api::{Role, Status};
use manager::client::Client;
use manager::map::{ClusterMap, ReplicaState, ServerState};
use serde::{Deserialize, Serialize};

/// How often the manager is polled while waiting.
const POLL: Duration = Duration::from_millis(50);

/// `--extents`: which extents of the volume a run touches, by the part one server plays in
/// them (`ROLE[:SERVER]`; the server defaults to the routing one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentSelect {
    pub role: ExtentRole,
    /// `None`: the server whose portal the run goes through.
    pub server: Option<String>,
}

/// The part a server plays in an extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentRole {
    /// `primary`: the server is the extent's primary (it orders the writes and fans them out).
    Primary,
    /// `copy`: the server holds an `in_sync` copy (it serves reads locally).
    Copy,
    /// `no-copy`: the server holds no copy at all (every I/O through it is forwarded).
    NoCopy,
}

impl ExtentSelect {
    /// `primary`, `copy`, `no-copy`, each optionally followed by `:SERVER`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (role, server) = match s.split_once(':') {
            Some((r, srv)) if !srv.is_empty() => (r, Some(srv.to_string())),
            Some(_) => return Err(format!("--extents {s:?}: empty server id after ':'")),
            None => (s, None),
        };
        let role = match role {
            "primary" => ExtentRole::Primary,
            "copy" => ExtentRole::Copy,
            "no-copy" => ExtentRole::NoCopy,
            _ => {
                return Err(format!(
                    "--extents {s:?}: expected primary, copy or no-copy, optionally with \
                     :SERVER (e.g. primary:s1)"
                ));
            }
        };
        Ok(Self { role, server })
    }

    fn role_name(&self) -> &'static str {
        match self.role {
            ExtentRole::Primary => "primary",
            ExtentRole::Copy => "copy",
            ExtentRole::NoCopy => "no-copy",
        }
    }
}

/// Where a run through a cluster server's portal goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterShape {
    /// Storage servers `up` in the map.
    pub servers: u32,
    /// The server whose portal the run went through (the routing server).
    pub via: String,
    /// The volume behind the namespace.
    pub volume: String,
    /// Copies of every extent of the volume (`replicas:`).
    #[serde(default = "one")]
    pub replicas: u32,
    /// `--extents` with its server resolved (`primary:s1`): the run touched only those extents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select: Option<String>,
    /// Extents the run touches: all of the volume's, or those `--extents` chose.
    pub extents: u32,
    /// Of those, extents whose I/Os of the run's direction leave the routing server: reads of
    /// an extent of which it holds no `in_sync` copy, writes of an extent it is not the primary
    /// of (both or either for a mix). They go over an internal (stamped) NVMe/TCP connection.
    pub forwarded_extents: u32,
    /// Share of the touched bytes whose I/Os are forwarded (weighted by the read share for a
    /// mix): the share of forwarded I/Os for a uniform random workload. A primary's writes to
    /// the other copies are not counted: they happen whatever server the host uses.
    pub forwarded_pct: f64,
    /// Generation of the map this was read from.
    pub generation: u64,
}

fn one() -> u32 {
    1
}

impl ClusterShape {
    /// "2 servers, 50% fwd via s1"; with copies or a selection, "3 servers, 2 copies, extents
    /// primary:s1, 0% fwd via s1".
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} server{}",
            self.servers,
            if self.servers == 1 { "" } else { "s" }
        );
        if self.replicas != 1 || self.select.is_some() {
            s += &format!(
                ", {} cop{}",
                self.replicas,
                if self.replicas == 1 { "y" } else { "ies" }
            );
        }
        if let Some(sel) = &self.select {
            s += &format!(", extents {sel}");
        }
        s + &format!(", {:.0}% fwd via {}", self.forwarded_pct, self.via)
    }
}

fn err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |e| format!("manager: {what}: {e}")
}

/// The shape of a run against namespace `nsid` of subsystem `nqn` through the portal `portal`,
/// `read_pct` percent reads, on the extents `select` chooses (all without), from the manager's
/// committed map; with `select`, also the byte ranges of the namespace it chose.
pub async fn shape(
    manager: &str,
    portal: SocketAddr,
    nqn: &str,
    nsid: u32,
    read_pct: u8,
    select: Option<&ExtentSelect>,
) -> Result<(ClusterShape, Vec<(u64, u64)>), String> {
    let map = Client::new(manager)
        .map(&Role::Client)
        .await
        .map_err(err("GET /v1/map"))?;
    shape_of(&map, portal, nqn, nsid, read_pct, select)
}

/// [`shape`] on a map at hand.
pub fn shape_of(
    map: &ClusterMap,
    portal: SocketAddr,
    nqn: &str,
    nsid: u32,
    read_pct: u8,
    select: Option<&ExtentSelect>,
) -> Result<(ClusterShape, Vec<(u64, u64)>), String> {
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
    let selected_server = match select {
        Some(ExtentSelect {
            server: Some(id), ..
        }) => {
            map.server(id)
                .ok_or_else(|| format!("--extents: no server `{id}` in the cluster map"))?;
            id.as_str()
        }
        _ => via.id.as_str(),
    };
    let read_share = f64::from(read_pct.min(100)) / 100.0;
    let (mut extents, mut fwd_extents) = (0u32, 0u32);
    let (mut bytes, mut fwd_bytes) = (0u64, 0.0f64);
    let mut ranges = Vec::new();
    for (i, ext) in vol.extents.iter().enumerate() {
        let (start, len) = vol
            .extent_range(i)
            .ok_or_else(|| format!("volume {}: extent {i} is past its end", vol.name))?;
        if let Some(sel) = select {
            let holds = |in_sync_only: bool| {
                ext.replicas.iter().any(|r| {
                    r.server == selected_server
                        && (!in_sync_only || r.state == ReplicaState::InSync)
                })
            };
            let chosen = match sel.role {
                ExtentRole::Primary => map
                    .primary(ext)
                    .is_some_and(|p| p.server == selected_server),
                ExtentRole::Copy => holds(true),
                ExtentRole::NoCopy => !holds(false),
            };
            if !chosen {
                continue;
            }
            ranges.push((start, len));
        }
        let writer = map
            .write_owner(ext)
            .ok_or_else(|| format!("volume {}: extent {i} has no copy", vol.name))?;
        let read_fwd = !ext
            .replicas
            .iter()
            .any(|r| r.server == via.id && r.state == ReplicaState::InSync);
        let write_fwd = writer.server != via.id;
        extents += 1;
        bytes += len;
        if (read_pct > 0 && read_fwd) || (read_pct < 100 && write_fwd) {
            fwd_extents += 1;
        }
        let share = read_share * f64::from(u8::from(read_fwd))
            + (1.0 - read_share) * f64::from(u8::from(write_fwd));
        fwd_bytes += share * len as f64;
    }
    if let Some(sel) = select
        && ranges.is_empty()
    {
        return Err(format!(
            "--extents {}:{selected_server}: no extent of volume {} matches",
            sel.role_name(),
            vol.name
        ));
    }
    let shape = ClusterShape {
        servers: u32::try_from(
            map.servers
                .iter()
                .filter(|s| s.state == ServerState::Up)
                .count(),
        )
        .unwrap_or(u32::MAX),
        via: via.id.clone(),
        volume: vol.name.clone(),
        replicas: vol.replicas,
        select: select.map(|s| format!("{}:{selected_server}", s.role_name())),
        extents,
        forwarded_extents: fwd_extents,
        forwarded_pct: if bytes == 0 {
            0.0
        } else {
            100.0 * fwd_bytes / bytes as f64
        },
        generation: map.generation,
    };
    Ok((shape, ranges))
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
        let (s, ranges) = shape_of(&m, p1, "nqn.x:v", 1, 100, None).expect("shape");
        assert!(ranges.is_empty(), "no selection, no ranges");
        assert_eq!((s.servers, s.extents, s.forwarded_extents), (2, 3, 2));
        assert!((s.forwarded_pct - 200.0 / 3.0).abs() < 1e-9);
        assert_eq!(
            (s.via.as_str(), s.replicas, s.select.as_deref()),
            ("s1", 1, None)
        );
        assert_eq!(s.describe(), "2 servers, 67% fwd via s1");
        let (s, _) = shape_of(&m, p2, "nqn.x:v", 1, 0, None).expect("shape");
        assert_eq!(s.forwarded_extents, 1);
        assert!(shape_of(&m, p1, "nqn.x:v", 2, 100, None).is_err());
        let p9: SocketAddr = "127.0.0.1:9".parse().expect("address");
        assert!(shape_of(&m, p9, "nqn.x:v", 1, 100, None).is_err());
    }

    /// Three servers; a volume of 3 extents with 2 copies: (s1, s2), (s2, s3), (s3, s1), the
    /// copy of extent 2 on s1 stale.
    fn replicated() -> ClusterMap {
        let server = |k: u32| {
            serde_json::json!({"id": format!("s{k}"), "portal": format!("127.0.0.1:{}", 4529 + k),
                "internal": format!("127.0.0.1:{}", 4539 + k), "state": "up",
                "pool_bytes": 1073741824, "cntlid_min": k * 1000 + 1, "cntlid_max": k * 1000 + 999})
        };
        let copy = |srv: &str, off: u64| serde_json::json!({"server": srv, "offset": off});
        serde_json::from_value(serde_json::json!({
            "generation": 5,
            "servers": [server(1), server(2), server(3)],
            "subsystems": [{"nqn": "nqn.x:r", "hosts": "any"}],
            "volumes": [{
                "name": "r2", "uuid": "000102030405060708090a0b0c0d0e0f",
                "size_bytes": 3145728, "block_size": 512, "extent_size": 1048576,
                "replicas": 2, "subsystem": "nqn.x:r", "nsid": 1,
                "extents": [
                    {"replicas": [copy("s1", 0), copy("s2", 0)], "moving": null},
                    {"replicas": [copy("s2", 1048576), copy("s3", 0)], "moving": null},
                    {"replicas": [copy("s3", 1048576),
                                  {"server": "s1", "offset": 1048576, "state": "stale"}],
                     "moving": null}
                ]
            }]
        }))
        .expect("a valid map")
    }

    #[test]
    fn extents_chosen_by_the_part_a_server_plays() {
        let m = replicated();
        let p = |k: u16| SocketAddr::from(([127, 0, 0, 1], 4529 + k));
        let sel = |s: &str| ExtentSelect::parse(s).expect("parses");
        let mb = 1u64 << 20;
        // Writes through s1 to the extents it leads: one extent, nothing forwarded.
        let (s, r) = shape_of(&m, p(1), "nqn.x:r", 1, 0, Some(&sel("primary"))).expect("shape");
        assert_eq!(r, [(0, mb)]);
        assert_eq!((s.extents, s.forwarded_extents, s.replicas), (1, 0, 2));
        assert_eq!(s.select.as_deref(), Some("primary:s1"));
        assert_eq!(
            s.describe(),
            "3 servers, 2 copies, extents primary:s1, 0% fwd via s1"
        );
        // Reads through s1 of the extents s1 holds no copy of (its stale copy counts as
        // one: it still holds the space): extent 1 only, every read forwarded.
        let (s, r) = shape_of(&m, p(1), "nqn.x:r", 1, 100, Some(&sel("no-copy"))).expect("shape");
        assert_eq!(r, [(mb, mb)]);
        assert_eq!((s.extents, s.forwarded_extents), (1, 1));
        assert!((s.forwarded_pct - 100.0).abs() < 1e-9);
        // The same extent through s2, which leads it: local.
        let (s, r) =
            shape_of(&m, p(2), "nqn.x:r", 1, 100, Some(&sel("no-copy:s1"))).expect("shape");
        assert_eq!(r, [(mb, mb)]);
        assert_eq!(
            (s.forwarded_extents, s.select.as_deref()),
            (0, Some("no-copy:s1"))
        );
        // In-sync copies on s1: extent 0 only (extent 2's is stale). Reads through s3 of all
        // three: extent 0 forwarded (no copy on s3); writes: extents 0 and 1 (s3 leads 2 only).
        let (_, r) = shape_of(&m, p(1), "nqn.x:r", 1, 100, Some(&sel("copy"))).expect("shape");
        assert_eq!(r, [(0, mb)]);
        let (s, _) = shape_of(&m, p(3), "nqn.x:r", 1, 100, None).expect("shape");
        assert_eq!(s.forwarded_extents, 1);
        let (s, _) = shape_of(&m, p(3), "nqn.x:r", 1, 0, None).expect("shape");
        assert_eq!(s.forwarded_extents, 2);
        // Half reads: extent 0 both ways, extent 1 writes only: (1 + 0.5) / 3.
        let (s, _) = shape_of(&m, p(3), "nqn.x:r", 1, 50, None).expect("shape");
        assert_eq!(s.forwarded_extents, 2);
        assert!((s.forwarded_pct - 50.0).abs() < 1e-9, "{}", s.forwarded_pct);
        // Nothing chosen, unknown server, bad selectors.
        let e = shape_of(&m, p(1), "nqn.x:r", 1, 0, Some(&sel("primary:s9")))
            .expect_err("no such server");
        assert!(e.contains("no server `s9`"), "{e}");
        // With s3 down, extent 2 has no primary (its other copy is stale): s3 leads nothing.
        let mut down = m.clone();
        down.servers[2].state = ServerState::Down;
        let e = shape_of(&down, p(1), "nqn.x:r", 1, 0, Some(&sel("primary:s3")))
            .expect_err("nothing chosen");
        assert!(
            e.contains("primary:s3: no extent of volume r2 matches"),
            "{e}"
        );
        assert!(ExtentSelect::parse("leader").is_err());
        assert!(ExtentSelect::parse("copy:").is_err());
        assert_eq!(
            sel("copy:s3"),
            ExtentSelect {
                role: ExtentRole::Copy,
                server: Some("s3".into())
            }
        );
    }
}
