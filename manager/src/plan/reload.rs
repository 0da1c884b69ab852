//! The cluster file against the map: generation 1 at first start, and `POST /v1/reload` later.
//! Differences go through the same edits as the API calls, all into one new generation; the
//! first one refused refuses the whole reload.

use yaml::{Cluster, DeclaredState};

use super::{
    PlanError, VolumeSpec, edit_add_server, edit_create_volume, edit_resize, finish, server_mut,
};
use crate::api::AddServerRequest;
use crate::map::{ClusterMap, HostPolicy, ServerState};

/// The map's host policy for a declared one.
fn hosts_of(h: &yaml::HostPolicy) -> HostPolicy {
    match h {
        yaml::HostPolicy::Any => HostPolicy::Any,
        yaml::HostPolicy::Only(list) => HostPolicy::Only(list.clone()),
    }
}

fn state_of(s: DeclaredState) -> ServerState {
    match s {
        DeclaredState::Up => ServerState::Up,
        DeclaredState::Down => ServerState::Down,
        DeclaredState::Draining => ServerState::Draining,
    }
}

/// Generation 1, built from the cluster file.
///
/// # Errors
/// What [`reload`] refuses, e.g. not enough pool space for the declared volumes.
pub fn initial_map(cluster: &Cluster) -> Result<ClusterMap, PlanError> {
    reload(&ClusterMap::empty(), cluster)
}

/// Applies the differences between `cluster` and `map`: new servers, subsystems and volumes,
/// grown volumes and pools, changed server states and host policies. Removing anything, shrinking,
/// re-ordering servers (their CNTLID ranges follow the order) or changing a volume's geometry,
/// subsystem, NSID or UUID, or a server's addresses, is refused.
///
/// # Errors
/// The first difference that cannot be applied.
pub fn reload(map: &ClusterMap, cluster: &Cluster) -> Result<ClusterMap, PlanError> {
    let mut m = map.clone();
    servers(&mut m, cluster)?;
    subsystems(&mut m, cluster)?;
    volumes(&mut m, cluster)?;
    finish(map, m)
}

fn changes(what: &'static str, name: &str, field: &'static str, detail: String) -> PlanError {
    PlanError::ReloadChanges {
        what,
        name: name.to_owned(),
        field,
        detail,
    }
}

fn servers(m: &mut ClusterMap, cluster: &Cluster) -> Result<(), PlanError> {
    for (k, s) in m.servers.iter().enumerate() {
        match cluster.servers.iter().position(|d| d.id == s.id) {
            None => {
                return Err(PlanError::ReloadRemoves {
                    what: "server",
                    name: s.id.clone(),
                });
            }
            Some(pos) if pos != k => {
                return Err(changes(
                    "server",
                    &s.id,
                    "the position",
                    format!(
                        "it is server {} in the map and {} in the file, counting from 0; CNTLID \
                         ranges follow the order, so new servers go at the end",
                        k, pos
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    for d in &cluster.servers {
        if m.server(&d.id).is_none() {
            edit_add_server(
                m,
                &AddServerRequest {
                    id: d.id.clone(),
                    portal: d.portal,
                    internal: d.internal,
                    pool_bytes: d.pool_bytes,
                },
            )?;
        }
        let s = server_mut(m, &d.id)?;
        if s.portal != d.portal || s.internal != d.internal {
            return Err(changes(
                "server",
                &d.id,
                "the addresses",
                format!(
                    "portal {} internal {} in the map, {} and {} in the file",
                    s.portal, s.internal, d.portal, d.internal
                ),
            ));
        }
        if d.pool_bytes < s.pool_bytes {
            return Err(changes(
                "server",
                &d.id,
                "pool",
                format!(
                    "shrinking from {} to {} bytes is not supported",
                    s.pool_bytes, d.pool_bytes
                ),
            ));
        }
        s.pool_bytes = d.pool_bytes;
        s.state = state_of(d.state);
    }
    Ok(())
}

fn subsystems(m: &mut ClusterMap, cluster: &Cluster) -> Result<(), PlanError> {
    if let Some(s) = m
        .subsystems
        .iter()
        .find(|s| !cluster.subsystems.iter().any(|d| d.nqn == s.nqn))
    {
        return Err(PlanError::ReloadRemoves {
            what: "subsystem",
            name: s.nqn.clone(),
        });
    }
    for d in &cluster.subsystems {
        let hosts = hosts_of(&d.hosts);
        match m.subsystems.iter_mut().find(|s| s.nqn == d.nqn) {
            Some(s) => s.hosts = hosts,
            None => m.subsystems.push(crate::map::SubsystemEntry {
                nqn: d.nqn.clone(),
                hosts,
            }),
        }
    }
    Ok(())
}

fn volumes(m: &mut ClusterMap, cluster: &Cluster) -> Result<(), PlanError> {
    if let Some(v) = m
        .volumes
        .iter()
        .find(|v| !cluster.volumes.iter().any(|d| d.name == v.name))
    {
        return Err(PlanError::ReloadRemoves {
            what: "volume",
            name: v.name.clone(),
        });
    }
    for d in &cluster.volumes {
        let Some(v) = m.volume(&d.name) else {
            let spec = VolumeSpec {
                name: d.name.clone(),
                size_bytes: d.size_bytes,
                block_size: d.block_size,
                extent_size: d.extent_size,
                replicas: d.replicas,
                subsystem: d.subsystem.clone(),
                nsid: Some(d.nsid),
                hosts: None,
                uuid: Some(d.uuid),
            };
            edit_create_volume(m, &spec)?;
            continue;
        };
        let fixed: [(&'static str, String, String); 6] = [
            ("uuid", yaml::hex16(&v.uuid), yaml::hex16(&d.uuid)),
            (
                "block_size",
                v.block_size.to_string(),
                d.block_size.to_string(),
            ),
            (
                "extent_size",
                v.extent_size.to_string(),
                d.extent_size.to_string(),
            ),
            ("replicas", v.replicas.to_string(), d.replicas.to_string()),
            ("subsystem", v.subsystem.clone(), d.subsystem.clone()),
            ("nsid", v.nsid.to_string(), d.nsid.to_string()),
        ];
        for (field, old, new) in fixed {
            if old != new {
                return Err(changes(
                    "volume",
                    &d.name,
                    field,
                    format!("{old} in the map, {new} in the file; only size may grow"),
                ));
            }
        }
        if d.size_bytes != v.size_bytes {
            edit_resize(m, &d.name, d.size_bytes)?;
        }
    }
    Ok(())
}
