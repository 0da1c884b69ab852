//! Moving one copy of a replicated extent: add, rebuild, drop (docs/replication.md, "Moving a
//! copy").
//!
//! `POST /v1/extents/move {volume, extent, to, from}` on a volume with several copies appends a
//! copy on `to` (`rebuilding` since the new generation, `replaces: from`); the extent's primary
//! rebuilds it whole (a copy new to its view has no dirty record: `rebuild::reconcile` in the
//! target), and host writes reach it as any `rebuilding` copy. When the manager accepts that
//! copy's rebuild-done report ([`rebuild_done`]), the same generation marks it `in_sync` and
//! removes `from`'s copy from the extent (its pool range is free from then on); if that copy
//! was the primary, the next live `in_sync` copy is the primary in that map.

use std::fmt;

use super::alloc::{Domain, Held, Pools};
use super::{PlanError, extent_mut, finish, replica};
use crate::api::{MoveRequest, RebuildDoneRequest};
use crate::map::{ClusterMap, Replica, ReplicaState, ServerState};

/// Why a move of a copy is refused. Each names the field or copy at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyMoveError {
    /// A replicated volume's move without `from`.
    FromRequired {
        /// Volume name.
        volume: String,
        /// Its copies per extent.
        replicas: u32,
    },
    /// `from` on a single-copy volume that is not the extent's owner.
    FromNotOwner {
        /// Volume name.
        volume: String,
        /// Extent index.
        extent: usize,
        /// The `from` given.
        from: String,
        /// The owner.
        owner: String,
    },
    /// `from` holds no copy of the extent.
    FromHoldsNone {
        /// Volume name.
        volume: String,
        /// Extent index.
        extent: usize,
        /// The `from` given.
        from: String,
    },
    /// A move of a copy of this extent is pending.
    Pending {
        /// Volume name.
        volume: String,
        /// Extent index.
        extent: usize,
        /// The pending copy's server.
        to: String,
        /// The copy it replaces.
        replaces: String,
    },
    /// The extent has no primary to rebuild the new copy from.
    NoPrimary {
        /// Volume name.
        volume: String,
        /// Extent index.
        extent: usize,
    },
    /// `to` is in a failure domain another remaining copy uses, while another `up` server with
    /// room is in a domain none uses (the placement rule).
    SharedDomain {
        /// Volume name.
        volume: String,
        /// Extent index.
        extent: usize,
        /// The destination.
        to: String,
        /// Its rack.
        rack: String,
        /// A server in a domain no remaining copy uses.
        instead: String,
    },
}

impl CopyMoveError {
    /// The HTTP status: 400 for a request missing a field, 409 for a conflict with the map.
    #[must_use]
    pub fn http_status(&self) -> u16 {
        match self {
            Self::FromRequired { .. } => 400,
            _ => 409,
        }
    }
}

impl fmt::Display for CopyMoveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FromRequired { volume, replicas } => write!(
                f,
                "volume {volume:?} has {replicas} copies per extent: a move must name the copy \
                 it replaces (\"from\": a server holding a copy of the extent; `tessera extent \
                 move --from SERVER`)"
            ),
            Self::FromNotOwner {
                volume,
                extent,
                from,
                owner,
            } => write!(
                f,
                "\"from\": {from:?} is not the owner of extent {extent} of volume {volume:?} \
                 (its one copy is on {owner:?})"
            ),
            Self::FromHoldsNone {
                volume,
                extent,
                from,
            } => write!(
                f,
                "\"from\": server {from:?} holds no copy of extent {extent} of volume {volume:?}"
            ),
            Self::Pending {
                volume,
                extent,
                to,
                replaces,
            } => write!(
                f,
                "extent {extent} of volume {volume:?} already has a copy move pending: the copy \
                 on {to:?} replacing the one on {replaces:?} (it ends when that copy is rebuilt, \
                 or is replaced by a new move once {to:?} is marked down)"
            ),
            Self::NoPrimary { volume, extent } => write!(
                f,
                "extent {extent} of volume {volume:?} has no in_sync copy on a server not down: \
                 there is nothing to rebuild a new copy from"
            ),
            Self::SharedDomain {
                volume,
                extent,
                to,
                rack,
                instead,
            } => write!(
                f,
                "\"to\": server {to:?} is in rack {rack:?}, which another copy of extent {extent} \
                 of volume {volume:?} uses, while {instead:?} is up with room in a rack none \
                 uses (copies go on distinct racks when they can)"
            ),
        }
    }
}

impl std::error::Error for CopyMoveError {}

impl From<CopyMoveError> for PlanError {
    fn from(e: CopyMoveError) -> Self {
        Self::CopyMove(Box::new(e))
    }
}

/// Whether `req` is a copy move: its volume has several copies. Otherwise the move is the
/// single-copy copy-then-switch, and a `from` it names must be the owner ([`check_from_owner`]).
pub(super) fn is_copy_move(m: &ClusterMap, req: &MoveRequest) -> bool {
    m.volume(&req.volume).is_some_and(|v| v.replicas > 1)
}

/// For a single-copy volume: `from`, when given, is the extent's owner.
pub(super) fn check_from_owner(m: &ClusterMap, req: &MoveRequest) -> Result<(), PlanError> {
    let Some(from) = &req.from else {
        return Ok(());
    };
    let Some(owner) = m.owner(&req.volume, req.extent) else {
        return Ok(()); // unknown volume or extent: the move's own checks name it
    };
    if owner.server != *from {
        return Err(CopyMoveError::FromNotOwner {
            volume: req.volume.clone(),
            extent: req.extent,
            from: from.clone(),
            owner: owner.server.clone(),
        }
        .into());
    }
    Ok(())
}

/// The pending copy move of `ext`, if any: (the new copy, the server of the copy it replaces).
#[must_use]
pub fn pending(ext: &crate::map::ExtentEntry) -> Option<(&Replica, &str)> {
    ext.replicas
        .iter()
        .find_map(|r| r.replaces.as_deref().map(|from| (r, from)))
}

/// Starts moving `req.from`'s copy of the extent to `req.to` (a volume with several copies):
/// appends the new copy, `rebuilding` since the generation this makes, replacing `from`.
pub(super) fn edit_start_copy_move(
    m: &mut ClusterMap,
    req: &MoveRequest,
    held: &[Held],
) -> Result<(), PlanError> {
    let vol = m
        .volume(&req.volume)
        .ok_or_else(|| PlanError::UnknownVolume(req.volume.clone()))?;
    let Some(from) = req.from.clone() else {
        return Err(CopyMoveError::FromRequired {
            volume: req.volume.clone(),
            replicas: vol.replicas,
        }
        .into());
    };
    let since = m.generation.saturating_add(1);
    let down = |m: &ClusterMap, id: &str| m.server(id).is_none_or(|s| s.state == ServerState::Down);
    // A pending copy on a server marked down is given up for this move (its range is freed);
    // any other pending one refuses the move.
    {
        let snapshot = m.clone();
        let (_, ext) = extent_mut(m, &req.volume, req.extent)?;
        if let Some((p, replaces)) = pending(ext) {
            if !down(&snapshot, &p.server) {
                return Err(CopyMoveError::Pending {
                    volume: req.volume.clone(),
                    extent: req.extent,
                    to: p.server.clone(),
                    replaces: replaces.to_owned(),
                }
                .into());
            }
            ext.replicas.retain(|r| r.replaces.is_none());
        }
    }
    let ext = m
        .volume(&req.volume)
        .and_then(|v| v.extents.get(req.extent))
        .ok_or_else(|| PlanError::NoSuchExtent {
            volume: req.volume.clone(),
            extent: req.extent,
            count: vol_count(m, &req.volume),
        })?;
    if !ext.replicas.iter().any(|r| r.server == from) {
        return Err(CopyMoveError::FromHoldsNone {
            volume: req.volume.clone(),
            extent: req.extent,
            from,
        }
        .into());
    }
    let to = super::up_destination(m, &req.to)?;
    if ext.replicas.iter().any(|r| r.server == req.to) {
        return Err(PlanError::AlreadyThere {
            volume: req.volume.clone(),
            extent: req.extent,
            server: req.to.clone(),
        });
    }
    if m.primary(ext).is_none() {
        return Err(CopyMoveError::NoPrimary {
            volume: req.volume.clone(),
            extent: req.extent,
        }
        .into());
    }
    let size = m.volume(&req.volume).map_or(0, |v| v.extent_size);
    let mut pools = Pools::of(m, held);
    // Failure domains, as placement: `to` in a domain no remaining copy uses, when an `up`
    // server with room (holding no copy) is in such a domain.
    if let Some(rack) = to.rack.clone() {
        let remaining: Vec<Domain<'_>> = ext
            .replicas
            .iter()
            .filter(|r| r.server != from)
            .filter_map(|r| m.server(&r.server).map(Domain::of))
            .collect();
        if remaining.contains(&Domain::of(to)) {
            let instead = m.servers.iter().find(|s| {
                s.state == ServerState::Up
                    && !ext.replicas.iter().any(|r| r.server == s.id)
                    && !remaining.contains(&Domain::of(s))
                    && pools.fits(&s.id, size)
            });
            if let Some(instead) = instead {
                return Err(CopyMoveError::SharedDomain {
                    volume: req.volume.clone(),
                    extent: req.extent,
                    to: req.to.clone(),
                    rack,
                    instead: instead.id.clone(),
                }
                .into());
            }
        }
    }
    let offset = pools
        .alloc(&req.to, size)
        .ok_or_else(|| PlanError::NoSpaceOn {
            server: req.to.clone(),
            bytes: size,
        })?;
    let (_, ext) = extent_mut(m, &req.volume, req.extent)?;
    ext.replicas.push(Replica {
        server: req.to.clone(),
        offset,
        state: ReplicaState::Rebuilding,
        rebuilding_since: Some(since),
        replaces: Some(from),
    });
    Ok(())
}

fn vol_count(m: &ClusterMap, volume: &str) -> usize {
    m.volume(volume).map_or(0, |v| v.extents.len())
}

/// `POST /v1/rebuild-done` ([`replica::rebuild_done`]), and, when the copy it makes `in_sync`
/// replaces another ([`Replica::replaces`]), that other copy removed from the extent in the
/// same generation (its pool range is free in the result). If the removed copy was the
/// primary, the next live `in_sync` copy is the primary of the result.
///
/// # Errors
/// As [`replica::rebuild_done`].
pub fn rebuild_done(map: &ClusterMap, req: &RebuildDoneRequest) -> Result<ClusterMap, PlanError> {
    let next = replica::rebuild_done(map, req)?;
    let mut out = next.clone();
    let Some(ext) = out
        .volumes
        .iter_mut()
        .find(|v| v.name == req.volume)
        .and_then(|v| v.extents.get_mut(req.extent))
    else {
        return Ok(next);
    };
    let Some(k) = ext.replicas.iter().position(|r| {
        r.server == req.server && r.state == ReplicaState::InSync && r.replaces.is_some()
    }) else {
        return Ok(next);
    };
    let from = ext.replicas.get_mut(k).and_then(|r| r.replaces.take());
    if let Some(from) = from {
        // The dropped copy led the extent: a write it ordered under the older map may have
        // reached some copies and not others. Not first, no phase 1a fences it (the owner,
        // `replicas[0]`, does not change); first, phase 1a drains its writes, but one whose
        // forward failed is refused its replica-failed report (the newest map no longer
        // names it the primary) and fails, after reaching some copies only. Its
        // copies-diverged report would be refused too (it holds no copy any more). So the drop
        // is treated as a failover: every other live `in_sync` copy but the new primary is
        // rebuilt whole from it (docs/replication.md, "Moving a copy").
        let led = map
            .volume(&req.volume)
            .and_then(|v| v.extents.get(req.extent))
            .is_some_and(|e| map.primary(e).is_some_and(|p| p.server == from));
        ext.replicas.retain(|r| r.server != from);
        if led {
            let since = map.generation.saturating_add(1);
            let mut others = ext.replicas.iter_mut().filter(|r| {
                r.state == ReplicaState::InSync
                    && map
                        .server(&r.server)
                        .is_some_and(|s| s.state != ServerState::Down)
            });
            let _new_primary = others.next();
            for r in others {
                r.state = ReplicaState::Rebuilding;
                r.rebuilding_since = Some(since);
            }
        }
    }
    finish(map, out)
}

#[cfg(test)]
#[path = "copy_move_tests.rs"]
mod tests;
