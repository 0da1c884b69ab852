//! The cluster file against the map: generation 1 at first start, and `POST /v1/reload` later.
//!
//! One source of truth (docs/cluster.md, "YAML and API changes"): the map. A reload applies the
//! operator's *edits of the file* since the last load (the manager records the file it last
//! applied), on top of whatever the map has become meanwhile through the API or the manager
//! itself. A field the file did not change is left as the map has it, and an object the file
//! does not declare is kept. Edits go through the same checks as the API calls, all into one new
//! generation; the first one refused refuses the whole reload.

use yaml::{Cluster, DeclaredState};

use super::{
    Held, PlanError, VolumeSpec, edit_add_server, edit_create_volume, edit_resize, finish,
    server_mut,
};
use crate::api::AddServerRequest;
use crate::map::{ClusterMap, ServerState};

/// The map's host policy for a declared one.
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

/// [`reload_from`] without a recorded previous file: every declared field is applied.
///
/// # Errors
/// See [`reload_from`].
pub fn reload(map: &ClusterMap, cluster: &Cluster) -> Result<ClusterMap, PlanError> {
    reload_from(map, None, cluster)
}

/// Applies the edits from `previous` (the file at the last load; `None`: unknown, every field
/// counts as edited) to `cluster` on `map`: new servers, subsystems and volumes, grown volumes
/// and pools, changed server states and host policies. Objects in the map that the file does not
/// declare (made through the API) are kept. Removing what `previous` declared, shrinking, moving
/// a server ahead of one the map has before it (their CNTLID ranges follow the map's order), or
/// changing a volume's geometry, subsystem, NSID or UUID, or a server's addresses, is refused.
///
/// # Errors
/// The first edit that cannot be applied.
pub fn reload_from(
    map: &ClusterMap,
    previous: Option<&Cluster>,
    cluster: &Cluster,
) -> Result<ClusterMap, PlanError> {
    reload_holding(map, previous, cluster, &[])
}

/// [`reload_from`], allocating nothing in `held`.
pub(super) fn reload_holding(
    map: &ClusterMap,
    previous: Option<&Cluster>,
    cluster: &Cluster,
    held: &[Held],
) -> Result<ClusterMap, PlanError> {
    let mut m = map.clone();
    servers(&mut m, previous, cluster)?;
    subsystems(&mut m, previous, cluster)?;
    volumes(&mut m, previous, cluster, held)?;
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

/// A reload may not drop what the file declared at the last load: the first `what` named in
/// `previous` (None: no previous file) and missing from `now` is refused.
fn refuse_removal<'a>(
    what: &'static str,
    previous: Option<impl Iterator<Item = &'a str>>,
    now: impl Iterator<Item = &'a str> + Clone,
) -> Result<(), PlanError> {
    match previous
        .into_iter()
        .flatten()
        .find(|p| !now.clone().any(|n| n == *p))
    {
        Some(gone) => Err(PlanError::ReloadRemoves {
            what,
            name: gone.to_string(),
        }),
        None => Ok(()),
    }
}

/// Whether the file edited a field: the object is new to it, or the value differs.
fn edited<T: PartialEq, D>(prev: Option<&D>, now: &D, field: impl Fn(&D) -> T) -> bool {
    prev.is_none_or(|p| field(p) != field(now))
}

fn servers(
    m: &mut ClusterMap,
    previous: Option<&Cluster>,
    cluster: &Cluster,
) -> Result<(), PlanError> {
    refuse_removal(
        "server",
        previous.map(|p| p.servers.iter().map(|x| x.id.as_str())),
        cluster.servers.iter().map(|x| x.id.as_str()),
    )?;
    // Servers both in the map and in the file keep the map's relative order.
    let mut last: Option<(usize, &str)> = None;
    for d in &cluster.servers {
        if let Some(k) = m.servers.iter().position(|s| s.id == d.id) {
            if let Some((lk, lid)) = last
                && k < lk
            {
                return Err(changes(
                    "server",
                    &d.id,
                    "the position",
                    format!(
                        "the file declares it after {lid}, the map has it before; CNTLID ranges \
                         follow the map's order, so new servers go at the end"
                    ),
                ));
            }
            last = Some((k, &d.id));
        }
    }
    for d in &cluster.servers {
        let prev = previous.and_then(|p| p.servers.iter().find(|p| p.id == d.id));
        if m.server(&d.id).is_none() {
            edit_add_server(
                m,
                &AddServerRequest {
                    id: d.id.clone(),
                    portal: d.portal,
                    internal: d.internal,
                    pool_bytes: d.pool_bytes,
                    rack: d.rack.clone(),
                },
            )?;
            server_mut(m, &d.id)?.state = state_of(d.state);
            continue;
        }
        let s = server_mut(m, &d.id)?;
        if edited(prev, d, |x| (x.portal, x.internal))
            && (s.portal != d.portal || s.internal != d.internal)
        {
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
        if edited(prev, d, |x| x.pool_bytes) {
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
        }
        if edited(prev, d, |x| x.state) {
            s.state = state_of(d.state);
        }
        // A rack only steers where new copies go: existing copies stay where they are.
        if edited(prev, d, |x| x.rack.clone()) {
            s.rack.clone_from(&d.rack);
        }
    }
    Ok(())
}

fn subsystems(
    m: &mut ClusterMap,
    previous: Option<&Cluster>,
    cluster: &Cluster,
) -> Result<(), PlanError> {
    refuse_removal(
        "subsystem",
        previous.map(|p| p.subsystems.iter().map(|x| x.nqn.as_str())),
        cluster.subsystems.iter().map(|x| x.nqn.as_str()),
    )?;
    for d in &cluster.subsystems {
        let prev = previous.and_then(|p| p.subsystems.iter().find(|p| p.nqn == d.nqn));
        let hosts = d.hosts.clone();
        match m.subsystems.iter_mut().find(|s| s.nqn == d.nqn) {
            Some(s) => {
                if edited(prev, d, |x| x.hosts.clone()) {
                    s.hosts = hosts;
                }
            }
            None => m.subsystems.push(crate::map::SubsystemEntry {
                nqn: d.nqn.clone(),
                hosts,
            }),
        }
    }
    Ok(())
}

fn volumes(
    m: &mut ClusterMap,
    previous: Option<&Cluster>,
    cluster: &Cluster,
    held: &[Held],
) -> Result<(), PlanError> {
    refuse_removal(
        "volume",
        previous.map(|p| p.volumes.iter().map(|x| x.name.as_str())),
        cluster.volumes.iter().map(|x| x.name.as_str()),
    )?;
    for d in &cluster.volumes {
        let prev = previous.and_then(|p| p.volumes.iter().find(|p| p.name == d.name));
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
            edit_create_volume(m, &spec, held)?;
            continue;
        };
        let fixed: [(&'static str, String, String, bool); 6] = [
            (
                "uuid",
                yaml::hex16(&v.uuid),
                yaml::hex16(&d.uuid),
                edited(prev, d, |x| x.uuid),
            ),
            (
                "block_size",
                v.block_size.to_string(),
                d.block_size.to_string(),
                edited(prev, d, |x| x.block_size),
            ),
            (
                "extent_size",
                v.extent_size.to_string(),
                d.extent_size.to_string(),
                edited(prev, d, |x| x.extent_size),
            ),
            (
                "replicas",
                v.replicas.to_string(),
                d.replicas.to_string(),
                edited(prev, d, |x| x.replicas),
            ),
            (
                "subsystem",
                v.subsystem.clone(),
                d.subsystem.clone(),
                edited(prev, d, |x| x.subsystem.clone()),
            ),
            (
                "nsid",
                v.nsid.to_string(),
                d.nsid.to_string(),
                edited(prev, d, |x| x.nsid),
            ),
        ];
        for (field, old, new, was_edited) in fixed {
            if was_edited && old != new {
                return Err(changes(
                    "volume",
                    &d.name,
                    field,
                    format!("{old} in the map, {new} in the file; only size may grow"),
                ));
            }
        }
        if edited(prev, d, |x| x.size_bytes) && d.size_bytes != v.size_bytes {
            edit_resize(m, &d.name, d.size_bytes, held)?;
        }
    }
    Ok(())
}
