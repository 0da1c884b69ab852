//! The endpoints of the control API table, one handler each.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::auth::Caller;
use super::{ApiError, REPORTS_PER_SECOND_MAX, REQUEST_BYTES_MAX, ReportWindow, Shared};
use crate::api::{
    AckRequest, AddServerRequest, CopiesDivergedRequest, CreateVolumeRequest, Empty, ErrorBody,
    MapQuery, MoveReadyRequest, MoveRequest, MoveStatus, PublishStatus, RebuildDoneRequest,
    RebuildProgressRequest, RebuildingReplica, ReplicaFailedRequest, ReportKind, ReportRequest,
    ResizeRequest, ServerStateRequest, ServerStatus, ServerUnreachableRequest, StaleReplica,
    Status,
};
use crate::coord::Event;
use crate::map::ClusterMap;
use crate::plan::Change;

type S = State<Arc<Shared>>;
type C = Extension<Caller>;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(status = self.status, "{}", self.message);
        } else {
            tracing::debug!(status = self.status, "{}", self.message);
        }
        (
            status,
            Json(ErrorBody {
                error: self.message,
                generation: self.generation,
            }),
        )
            .into_response()
    }
}

/// The request body as `T`, or a 4xx naming what is wrong with it.
fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(t)| t)
        .map_err(|r| ApiError::new(r.status().as_u16(), r.body_text()))
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|r| ApiError::new(r.status().as_u16(), r.body_text()))
}

/// Which map a `role=` query asks for: `Some(server)` for servers (maybe anonymous).
pub(super) fn role_of(q: &MapQuery) -> Result<Option<Option<String>>, ApiError> {
    match (q.role.as_str(), &q.server) {
        ("client", None) => Ok(None),
        ("client", Some(_)) => Err(ApiError::new(
            400,
            "server= is only for role=server (expected role=server&server=ID or role=client)",
        )),
        ("server", s) => Ok(Some(s.clone())),
        (other, _) => Err(ApiError::new(
            400,
            format!("unknown role {other:?} (expected server or client)"),
        )),
    }
}

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/map", get(map))
        .route("/v1/watch", get(super::watch::watch))
        .route("/v1/ack", post(ack))
        .route("/v1/lease", post(lease))
        .route("/v1/report", post(report))
        .route("/v1/move-ready", post(move_ready))
        .route("/v1/replica-failed", post(replica_failed))
        .route("/v1/server-unreachable", post(server_unreachable))
        .route("/v1/rebuild-done", post(rebuild_done))
        .route("/v1/copies-diverged", post(copies_diverged))
        .route("/v1/rebuild-progress", post(rebuild_progress))
        .route("/v1/status", get(status))
        .route("/v1/volumes", post(create_volume))
        .route("/v1/volumes/{name}/resize", post(resize_volume))
        .route("/v1/volumes/{name}/clear-lost", post(clear_lost))
        .route("/v1/servers", post(add_server))
        .route("/v1/servers/{id}/state", post(server_state))
        .route("/v1/extents/move", post(move_extent))
        .route("/v1/reload", post(reload))
        .fallback(|| async {
            ApiError::new(404, "no such endpoint (see docs/cluster-protocol.md)")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                405,
                "method not allowed on this endpoint (see docs/cluster-protocol.md)",
            )
        })
        .layer(DefaultBodyLimit::max(REQUEST_BYTES_MAX))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shared),
            super::auth::authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shared),
            super::metrics::count_requests,
        ))
        .with_state(shared)
}

async fn map(
    State(s): S,
    Extension(caller): C,
    q: Result<Query<MapQuery>, QueryRejection>,
) -> Result<Json<ClusterMap>, ApiError> {
    let q = query(q)?;
    if q.after.is_some() {
        return Err(ApiError::new(400, "after= is only for /v1/watch"));
    }
    let role = role_of(&q)?;
    if let Some(Some(id)) = &role {
        caller.may_read_as(id)?;
        pool_seen(&s, id, q.pool).await?;
    }
    let m = {
        let mut inner = s.lock();
        match role {
            None => inner.coord.client_map(),
            Some(server) => {
                let m = inner.coord.server_map(server.as_deref());
                // A pool change committed but not yet in the map this server gets: it must not
                // start from an older map that may still count on its copies (it asks again).
                if let (Some(id), Some(pool)) = (&server, q.pool) {
                    let recorded = inner.head.server(id).and_then(|e| e.pool);
                    if recorded == Some(pool) && m.server(id).and_then(|e| e.pool) != Some(pool) {
                        return Err(ApiError::new(
                            503,
                            format!(
                                "server {id}: the map recording its pool {pool} is being \
                                 published; retry"
                            ),
                        ));
                    }
                }
                if let Some(id) = server {
                    let _ = inner.coord.handle(Event::ServerFetched {
                        server: id,
                        generation: m.generation,
                    });
                }
                m
            }
        }
    };
    Ok(Json((*m).clone()))
}

/// A server fetching or watching the map sent its pool identity: recorded in the map, and when
/// it differs from the recorded one (the server's pool data is gone) its copies are `stale` and
/// the extents whose only `in_sync` copy it held are marked `lost`, in that same generation,
/// which is committed before this returns, so the map the server gets next never has it serve
/// them (docs/replication.md, "A server whose data is gone" and "The last copy").
pub(super) async fn pool_seen(
    s: &Arc<Shared>,
    id: &str,
    pool: Option<crate::map::PoolId>,
) -> Result<(), ApiError> {
    let Some(pool) = pool else {
        return Ok(());
    };
    let (recorded, replicated, lost) = {
        let inner = s.lock();
        let Some(e) = inner.head.server(id) else {
            return Err(ApiError::new(404, format!("unknown server {id:?}")));
        };
        (
            e.pool,
            crate::plan::holds_replicated_copy(&inner.head, id),
            crate::plan::lost_with(&inner.head, id),
        )
    };
    if recorded == Some(pool) {
        return Ok(());
    }
    // A server holding only single-copy extents has its identity in memory only until the
    // next change: another one now means its data is gone all the same.
    let previous = if recorded.is_none() {
        s.pools_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .copied()
    } else {
        None
    };
    s.note_pool(id, pool);
    let replaced = recorded.or(previous).filter(|p| *p != pool);
    if recorded.is_none() && !replicated && replaced.is_none() {
        // Nothing to rebuild on it: recorded with the next change (Shared::fill_pools).
        return Ok(());
    }
    if let Some(old) = replaced {
        tracing::warn!(server = %id, old = %old, new = %pool,
            "server back with another pool: its data is gone, marking its copies stale");
        for (volume, extent) in &lost {
            tracing::error!(server = %id, volume = %volume, extent = *extent,
                "DATA LOST: the only in_sync copy of this extent was on the server whose pool \
                 is gone; the extent is marked lost and its reads fail until an operator clears \
                 the mark");
        }
    } else {
        tracing::info!(server = %id, pool = %pool, "recording the server's pool identity");
    }
    s.change(Change::PoolSeen {
        id: id.to_owned(),
        pool,
        previous,
    })
    .await
    .map(|_| ())
}

/// The server must be in the newest map (bounds per-server state to the map's servers).
pub(super) fn known_server(s: &Shared, id: &str) -> Result<(), ApiError> {
    if s.lock().head.server(id).is_some() {
        Ok(())
    } else {
        Err(ApiError::new(404, format!("unknown server {id:?}")))
    }
}

async fn ack(
    State(s): S,
    Extension(caller): C,
    b: Result<Json<AckRequest>, JsonRejection>,
) -> Result<Json<Empty>, ApiError> {
    let req = body(b)?;
    caller.speaks_for(&req.server, "ack")?;
    known_server(&s, &req.server)?;
    tracing::debug!(server = %req.server, generation = req.generation, "ack");
    let id = req.server.clone();
    let actions = s.feed(Event::Ack {
        server: req.server,
        generation: req.generation,
    });
    super::run_actions(&s, actions);
    rebuild_if_due(&s, &id);
    Ok(Json(Empty {}))
}

/// A read lease for the server named in the body (docs/replication.md, "Read leases"): 409
/// while a map that takes reads from it waits for its ack.
async fn lease(
    State(s): S,
    Extension(caller): C,
    b: Result<Json<crate::api::LeaseRequest>, JsonRejection>,
) -> Result<Json<crate::api::LeaseGrant>, ApiError> {
    let req = body(b)?;
    caller.speaks_for(&req.server, "lease")?;
    known_server(&s, &req.server)?;
    match s.grant_lease(&req.server) {
        Ok(lease_ms) => Ok(Json(crate::api::LeaseGrant { lease_ms })),
        Err(g) => Err(ApiError::new(
            409,
            format!(
                "no read lease for {}: a map that takes reads of its copies away (generation \
                 {g}) waits for its ack; install it first",
                req.server
            ),
        )
        .at_generation(g)),
    }
}

/// A server that acks a map while its watch stream is open is back: its `stale` copies that
/// can be rebuilt become `rebuilding` in a new generation, in the background (the ack answers
/// at once). The manager does it on its own, as SPDK and Ceph users expect; an operator who
/// wants a server to stay out sets it `draining` or `down` (docs/replication.md, "Rebuild").
fn rebuild_if_due(s: &Arc<Shared>, id: &str) {
    if !s.watchers().server_watching(id) {
        return;
    }
    let due = crate::plan::rebuild_due(&s.lock().head, id);
    if !due || !s.rebuild_queued(id, true) {
        return;
    }
    let s = Arc::clone(s);
    let id = id.to_owned();
    tokio::spawn(async move {
        tracing::info!(server = %id, "server back with stale copies: marking them rebuilding");
        let r = s.change(Change::RebuildStart { id: id.clone() }).await;
        s.rebuild_queued(&id, false);
        if let Err(e) = r {
            tracing::warn!(server = %id, status = e.status, "marking copies rebuilding failed: {}", e.message);
        }
    });
}

/// The primary copied a `rebuilding` copy: the answer is the map in which it is `in_sync`
/// (docs/replication.md, "Rebuild").
async fn rebuild_done(
    State(s): S,
    Extension(caller): C,
    b: Result<Json<RebuildDoneRequest>, JsonRejection>,
) -> Result<Json<ClusterMap>, ApiError> {
    let req = body(b)?;
    caller.speaks_for(&req.primary, "rebuild-done report")?;
    known_server(&s, &req.primary)?;
    tracing::info!(primary = %req.primary, volume = %req.volume, extent = req.extent,
        copy = %req.server, generation = req.generation, "rebuild done: marking the copy in_sync");
    let key = (req.volume.clone(), req.extent, req.server.clone());
    let m = s.change(Change::RebuildDone(req)).await?;
    s.rebuild_progress().remove(&key);
    Ok(Json(m))
}

/// A server lost the primary role of an extent while a write it had applied to its own copy
/// failed: the answer is the map in which every `in_sync` copy but the primary's is
/// `rebuilding` (docs/replication.md, "A primary that loses the role mid-write").
async fn copies_diverged(
    State(s): S,
    Extension(caller): C,
    b: Result<Json<CopiesDivergedRequest>, JsonRejection>,
) -> Result<Json<ClusterMap>, ApiError> {
    let req = body(b)?;
    caller.speaks_for(&req.server, "copies-diverged report")?;
    known_server(&s, &req.server)?;
    tracing::warn!(server = %req.server, volume = %req.volume, extent = req.extent,
        generation = req.generation,
        "copies may differ after a failed write of a former primary: rebuilding them whole");
    Ok(Json(s.change(Change::CopiesDiverged(req)).await?))
}

/// Progress of a rebuild, kept in memory for `GET /v1/status`.
async fn rebuild_progress(
    State(s): S,
    Extension(caller): C,
    b: Result<Json<RebuildProgressRequest>, JsonRejection>,
) -> Result<Json<Empty>, ApiError> {
    let req = body(b)?;
    caller.speaks_for(&req.primary, "rebuild-progress report")?;
    known_server(&s, &req.primary)?;
    let rebuilding = {
        let inner = s.lock();
        inner
            .head
            .volume(&req.volume)
            .and_then(|v| v.extents.get(req.extent))
            .is_some_and(|e| {
                inner
                    .head
                    .primary(e)
                    .is_some_and(|p| p.server == req.primary)
                    && e.replicas.iter().any(|r| {
                        r.server == req.server && r.state == crate::map::ReplicaState::Rebuilding
                    })
            })
    };
    if !rebuilding {
        return Err(ApiError::new(
            409,
            format!(
                "extent {} of volume {:?}: server {:?} is not its primary or server {:?}'s copy \
                 is not rebuilding",
                req.extent, req.volume, req.primary, req.server
            ),
        ));
    }
    s.rebuild_progress().insert(
        (req.volume, req.extent, req.server),
        (req.done_bytes.min(req.total_bytes), req.total_bytes),
    );
    Ok(Json(Empty {}))
}

async fn report(
    State(s): S,
    Extension(caller): C,
    b: Result<Json<ReportRequest>, JsonRejection>,
) -> Result<Json<Empty>, ApiError> {
    let req = body(b)?;
    caller.speaks_for(&req.server, "mismatch report")?;
    known_server(&s, &req.server)?;
    let now = Instant::now();
    let mut inner = s.lock();
    let w = inner
        .report_windows
        .entry(req.server.clone())
        .or_insert(ReportWindow {
            start: now,
            count: 0,
        });
    if now.duration_since(w.start) >= Duration::from_secs(1) {
        *w = ReportWindow {
            start: now,
            count: 0,
        };
    }
    if w.count >= REPORTS_PER_SECOND_MAX {
        return Err(ApiError::new(
            429,
            format!(
                "more than {REPORTS_PER_SECOND_MAX} reports per second from server {:?} \
                 (expected batched reports, at most 10 per second)",
                req.server
            ),
        ));
    }
    w.count += 1;
    let c = &mut inner.reports;
    let counter = match req.kind {
        ReportKind::Stale => &mut c.stale,
        ReportKind::Behind => &mut c.behind,
        ReportKind::Unstamped => &mut c.unstamped,
    };
    *counter = counter.saturating_add(req.count);
    s.metrics.count_reports(
        match req.kind {
            ReportKind::Stale => "stale",
            ReportKind::Behind => "behind",
            ReportKind::Unstamped => "unstamped",
        },
        req.count,
    );
    tracing::debug!(server = %req.server, kind = ?req.kind, stamp = req.stamp, current = req.current, count = req.count, "mismatch report");
    Ok(Json(Empty {}))
}

async fn move_ready(
    State(s): S,
    Extension(caller): C,
    b: Result<Json<MoveReadyRequest>, JsonRejection>,
) -> Result<Json<Empty>, ApiError> {
    let req = body(b)?;
    caller.speaks_for(&req.server, "move-ready")?;
    s.change(Change::SwitchMove(req)).await?;
    Ok(Json(Empty {}))
}

/// A primary's write to a copy failed: the answer is the map in which that copy is `stale`
/// (the current one when it already is; docs/replication.md, "Failure").
async fn replica_failed(
    State(s): S,
    Extension(caller): C,
    b: Result<Json<ReplicaFailedRequest>, JsonRejection>,
) -> Result<Json<ClusterMap>, ApiError> {
    let req = body(b)?;
    caller.speaks_for(&req.primary, "replica-failed report")?;
    known_server(&s, &req.primary)?;
    // A copy's server with no watch stream open is gone (killed, cut off, restarting): all
    // its copies that are not a primary go stale in this one generation, rather than one
    // generation per extent as each primary's writes find them.
    let server_gone = !s.watchers().server_watching(&req.server);
    tracing::info!(primary = %req.primary, volume = %req.volume, extent = req.extent,
        copy = %req.server, generation = req.generation, server_gone, "replica write failed: marking the copy stale");
    Ok(Json(
        s.change(Change::ReplicaFailed { req, server_gone }).await?,
    ))
}

/// How long the manager must itself have had no watch stream from a server before a peer's
/// `server-unreachable` report marks it `down` (one slow peer does not take a live server out).
pub(super) const SERVER_LOST: Duration = Duration::from_secs(3);

/// A server could not reach a peer: the answer is the current map, in which the peer is
/// `down` if the manager has had no watch stream from it for [`SERVER_LOST`]
/// (docs/replication.md, "Failover").
async fn server_unreachable(
    State(s): S,
    Extension(caller): C,
    b: Result<Json<ServerUnreachableRequest>, JsonRejection>,
) -> Result<Json<ClusterMap>, ApiError> {
    let req = body(b)?;
    caller.speaks_for(&req.from, "server-unreachable report")?;
    known_server(&s, &req.from)?;
    known_server(&s, &req.server)?;
    if req.from == req.server {
        return Err(ApiError::new(
            400,
            format!("server {} reports itself unreachable", req.from),
        ));
    }
    let head = Arc::clone(&s.lock().head);
    if head
        .server(&req.server)
        .is_some_and(|e| e.state == crate::map::ServerState::Down)
    {
        return Ok(Json((*head).clone()));
    }
    // Only a server that is the primary of an extent with other copies is marked down this
    // way: the next copy takes over. (A single copy's server is down either way.)
    let primary_somewhere = head.volumes.iter().any(|v| {
        v.replicas > 1
            && v.extents
                .iter()
                .any(|e| head.primary(e).is_some_and(|r| r.server == req.server))
    });
    let lost = s.watchers().server_lost_for(&req.server);
    match lost {
        Some(d) if d >= SERVER_LOST && primary_somewhere => {
            tracing::warn!(server = %req.server, from = %req.from, lost_ms = d.as_millis(),
                "server unreachable and without a watch stream: marking it down");
            Ok(Json(
                s.change(Change::SetServerState {
                    id: req.server,
                    state: crate::map::ServerState::Down,
                })
                .await?,
            ))
        }
        _ => {
            tracing::info!(server = %req.server, from = %req.from, watching = lost.is_none(),
                primary_somewhere, "server-unreachable report: not marking it down (yet)");
            Ok(Json((*head).clone()))
        }
    }
}

async fn status(State(s): S) -> Json<Status> {
    let inner = s.lock();
    let head = &inner.head;
    let coord = &inner.coord;
    let servers = head
        .servers
        .iter()
        .map(|e| ServerStatus {
            id: e.id.clone(),
            acked: coord.acked(&e.id),
            state: e.state,
            late: coord.is_late(&e.id),
        })
        .collect();
    let mut moves = Vec::new();
    let mut stale_replicas = Vec::new();
    let mut rebuilding_replicas = Vec::new();
    let mut lost_extents = Vec::new();
    let mut progress = s.rebuild_progress();
    // Progress of copies no longer rebuilding goes (the map is the truth).
    progress.retain(|(v, e, server), _| {
        head.volume(v)
            .and_then(|v| v.extents.get(*e))
            .is_some_and(|e| {
                e.replicas
                    .iter()
                    .any(|r| &r.server == server && r.state == crate::map::ReplicaState::Rebuilding)
            })
    });
    for v in &head.volumes {
        for (i, ext) in v.extents.iter().enumerate() {
            if ext.lost {
                lost_extents.push(crate::api::LostExtent {
                    volume: v.name.clone(),
                    extent: i,
                });
            }
            for r in &ext.replicas {
                match r.state {
                    crate::map::ReplicaState::Stale => stale_replicas.push(StaleReplica {
                        volume: v.name.clone(),
                        extent: i,
                        server: r.server.clone(),
                    }),
                    crate::map::ReplicaState::Rebuilding => {
                        let p = progress.get(&(v.name.clone(), i, r.server.clone()));
                        rebuilding_replicas.push(RebuildingReplica {
                            volume: v.name.clone(),
                            extent: i,
                            server: r.server.clone(),
                            primary: head.primary(ext).map(|p| p.server.clone()),
                            done_bytes: p.map(|p| p.0),
                            total_bytes: p.map(|p| p.1),
                        });
                    }
                    crate::map::ReplicaState::InSync => {}
                }
            }
            if let (Some(m), Some(owner)) = (&ext.moving, ext.replicas.first()) {
                moves.push(MoveStatus {
                    volume: v.name.clone(),
                    extent: i,
                    from: owner.server.clone(),
                    to: m.to.server.clone(),
                    copy: false,
                });
            }
            if let Some((to, from)) = crate::plan::pending_copy_move(ext) {
                moves.push(MoveStatus {
                    volume: v.name.clone(),
                    extent: i,
                    from: from.to_owned(),
                    to: to.server.clone(),
                    copy: true,
                });
            }
        }
    }
    let publishing = coord
        .publishing()
        .map(|(generation, phase, waiting, queued)| PublishStatus {
            generation,
            phase: phase.to_string(),
            waiting,
            queued,
        });
    Json(Status {
        generation: head.generation,
        committed: coord.client_map().generation,
        servers_generation: coord.server_map(None).generation,
        servers,
        reports: inner.reports.clone(),
        moves,
        publishing,
        stale_replicas,
        rebuilding_replicas,
        lost_extents,
    })
}

async fn create_volume(
    State(s): S,
    Extension(caller): C,
    b: Result<Json<CreateVolumeRequest>, JsonRejection>,
) -> Result<Json<ClusterMap>, ApiError> {
    caller.operator("create volumes")?;
    let req = body(b)?;
    Ok(Json(s.change(Change::CreateVolume(req)).await?))
}

async fn resize_volume(
    State(s): S,
    Extension(caller): C,
    name: Result<Path<String>, PathRejection>,
    b: Result<Json<ResizeRequest>, JsonRejection>,
) -> Result<Json<ClusterMap>, ApiError> {
    caller.operator("resize volumes")?;
    let Path(name) = name.map_err(|r| ApiError::new(r.status().as_u16(), r.body_text()))?;
    let req = body(b)?;
    Ok(Json(
        s.change(Change::ResizeVolume {
            name,
            size: req.size,
        })
        .await?,
    ))
}

/// The operator acknowledges that an extent's data is gone: the `lost` mark is cleared in a
/// new generation (docs/replication.md, "The last copy").
async fn clear_lost(
    State(s): S,
    Extension(caller): C,
    name: Result<Path<String>, PathRejection>,
    b: Result<Json<crate::api::ClearLostRequest>, JsonRejection>,
) -> Result<Json<ClusterMap>, ApiError> {
    caller.operator("clear lost marks")?;
    let Path(name) = name.map_err(|r| ApiError::new(r.status().as_u16(), r.body_text()))?;
    let req = body(b)?;
    tracing::warn!(volume = %name, extent = ?req.extent,
        "clearing the lost mark: the operator acknowledges the data loss");
    Ok(Json(
        s.change(Change::ClearLost {
            volume: name,
            extent: req.extent,
        })
        .await?,
    ))
}

async fn add_server(
    State(s): S,
    Extension(caller): C,
    b: Result<Json<AddServerRequest>, JsonRejection>,
) -> Result<Json<ClusterMap>, ApiError> {
    caller.operator("add servers")?;
    let req = body(b)?;
    Ok(Json(s.change(Change::AddServer(req)).await?))
}

async fn server_state(
    State(s): S,
    Extension(caller): C,
    id: Result<Path<String>, PathRejection>,
    b: Result<Json<ServerStateRequest>, JsonRejection>,
) -> Result<Json<ClusterMap>, ApiError> {
    caller.operator("set server states")?;
    let Path(id) = id.map_err(|r| ApiError::new(r.status().as_u16(), r.body_text()))?;
    let req = body(b)?;
    Ok(Json(
        s.change(Change::SetServerState {
            id,
            state: req.state,
        })
        .await?,
    ))
}

async fn move_extent(
    State(s): S,
    Extension(caller): C,
    b: Result<Json<MoveRequest>, JsonRejection>,
) -> Result<Json<ClusterMap>, ApiError> {
    caller.operator("move extents")?;
    let req = body(b)?;
    // One copy: copy-then-switch; several: a copy moved by add-rebuild-drop, which names the
    // copy it replaces (`plan::edit_start_move`; docs/replication.md, "Moving a copy").
    Ok(Json(s.change(Change::StartMove(req)).await?))
}

async fn reload(
    State(s): S,
    Extension(caller): C,
    b: Result<Json<Empty>, JsonRejection>,
) -> Result<Json<ClusterMap>, ApiError> {
    caller.operator("reload the cluster file")?;
    body(b)?;
    Ok(Json(s.reload().await?))
}
