//! `GET /v1/watch`: newline-delimited JSON maps over a chunked response, pushed when the
//! coordinator publishes (the watch channel wakes every stream; each sends its role's map if it
//! is newer than the last one it sent). No polling: an idle stream only sends a keep-alive
//! newline every [`WATCH_KEEPALIVE_MS`].
//!
//! Limits: a storage server's own streams (`role=server&server=ID`, from that server) have a
//! reserved path of [`SERVER_WATCHES_MAX`] per server, where a new stream ends the oldest; every
//! other stream counts against [`WATCHES_PER_CALLER_MAX`] for its caller and [`WATCHERS_MAX`]
//! in all. So no number of other streams can keep a server from its map updates.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio::sync::watch::Receiver;

use super::auth::Caller;
use super::routes::role_of;
use super::{
    ApiError, SERVER_WATCHES_MAX, Shared, Tick, WATCH_KEEPALIVE_MS, WATCHERS_MAX,
    WATCHES_PER_CALLER_MAX,
};
use crate::api::MapQuery;
use crate::coord::Event;
use crate::map::{ClusterMap, Generation};

/// The open watch streams, for the limits.
#[derive(Debug, Default)]
pub(super) struct Watchers {
    /// Client streams (all but servers' own).
    clients: usize,
    /// Client streams per caller key.
    per_caller: HashMap<String, usize>,
    /// Each server's own streams, oldest first.
    servers: HashMap<String, VecDeque<u64>>,
    next_stream: u64,
    /// Since when each server without a stream of its own has had none (from its last stream's
    /// end, or from the first time it was asked about).
    lost_since: HashMap<String, std::time::Instant>,
}

impl Watchers {
    /// Whether server `id` has its own stream open.
    pub(super) fn server_watching(&self, id: &str) -> bool {
        self.servers.contains_key(id)
    }

    /// How long server `id` has had no stream of its own (`None`: it has one now).
    pub(super) fn server_lost_for(&mut self, id: &str) -> Option<std::time::Duration> {
        if self.servers.contains_key(id) {
            return None;
        }
        let since = *self
            .lost_since
            .entry(id.to_owned())
            .or_insert_with(std::time::Instant::now);
        Some(since.elapsed())
    }

    /// Open streams: (clients', servers' own).
    pub(super) fn open(&self) -> (usize, usize) {
        (self.clients, self.servers.values().map(VecDeque::len).sum())
    }
}

/// What a stream holds in [`Watchers`].
#[derive(Debug)]
enum SlotKind {
    Client(String),
    Server { id: String, stream: u64 },
}

/// Holds a watcher's place for as long as its stream lives.
struct WatcherSlot {
    shared: Arc<Shared>,
    kind: SlotKind,
}

impl WatcherSlot {
    /// A server stream ended by a newer one of the same server.
    fn evicted(&self) -> bool {
        match &self.kind {
            SlotKind::Client(_) => false,
            SlotKind::Server { id, stream } => !self
                .shared
                .watchers()
                .servers
                .get(id)
                .is_some_and(|q| q.contains(stream)),
        }
    }
}

impl Drop for WatcherSlot {
    fn drop(&mut self) {
        let mut w = self.shared.watchers();
        match &self.kind {
            SlotKind::Client(key) => {
                w.clients = w.clients.saturating_sub(1);
                if let Some(n) = w.per_caller.get_mut(key) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        w.per_caller.remove(key);
                    }
                }
            }
            SlotKind::Server { id, stream } => {
                if let Some(q) = w.servers.get_mut(id) {
                    q.retain(|s| s != stream);
                    if q.is_empty() {
                        w.servers.remove(id);
                        w.lost_since.insert(id.clone(), std::time::Instant::now());
                    }
                }
            }
        }
    }
}

/// Takes a place for a new stream, or says why there is none.
fn admit(
    s: &Arc<Shared>,
    caller: &Caller,
    peer: SocketAddr,
    own_server: Option<&str>,
) -> Result<WatcherSlot, ApiError> {
    let mut w = s.watchers();
    if let Some(id) = own_server {
        let stream = w.next_stream;
        w.next_stream = w.next_stream.wrapping_add(1);
        w.lost_since.remove(id);
        let q = w.servers.entry(id.to_owned()).or_default();
        q.push_back(stream);
        let mut evicted = false;
        while q.len() > SERVER_WATCHES_MAX {
            q.pop_front();
            evicted = true;
        }
        drop(w);
        if evicted {
            tracing::info!(
                server = id,
                "new watch stream replaces the oldest of this server"
            );
            // Wakes the evicted stream so that it ends now.
            s.tick.send_modify(|_| {});
        }
        return Ok(WatcherSlot {
            shared: Arc::clone(s),
            kind: SlotKind::Server {
                id: id.to_owned(),
                stream,
            },
        });
    }
    let key = match caller {
        Caller::Anyone => format!("peer {}", peer.ip()),
        Caller::Operator => "the operator".to_owned(),
        Caller::Server(id) => format!("server {id}"),
    };
    let mine = w.per_caller.get(&key).copied().unwrap_or(0);
    if mine >= WATCHES_PER_CALLER_MAX {
        return Err(ApiError::new(
            429,
            format!(
                "{key} already has {WATCHES_PER_CALLER_MAX} watch streams open (the most per \
                 caller); close one first"
            ),
        ));
    }
    if w.clients >= WATCHERS_MAX {
        return Err(ApiError::new(
            503,
            format!("more than {WATCHERS_MAX} watch streams are open; retry later"),
        ));
    }
    w.clients += 1;
    *w.per_caller.entry(key.clone()).or_insert(0) += 1;
    Ok(WatcherSlot {
        shared: Arc::clone(s),
        kind: SlotKind::Client(key),
    })
}

struct WatchState {
    slot: WatcherSlot,
    rx: Receiver<Tick>,
    /// `None`: client role; `Some(id)`: server role (maybe anonymous).
    role: Option<Option<String>>,
    last: Generation,
}

impl WatchState {
    fn current(&self) -> Arc<ClusterMap> {
        let shared = &self.slot.shared;
        let mut inner = shared.lock();
        match &self.role {
            None => inner.coord.client_map(),
            Some(server) => {
                let m = inner.coord.server_map(server.as_deref());
                if let Some(id) = server
                    && m.generation > self.last
                {
                    let _ = inner.coord.handle(Event::ServerFetched {
                        server: id.clone(),
                        generation: m.generation,
                    });
                }
                m
            }
        }
    }

    /// The next line: a newer map, a keep-alive, or `None` when the manager stops.
    async fn next_line(&mut self) -> Option<Bytes> {
        loop {
            if self.rx.borrow_and_update().closing || self.slot.evicted() {
                return None;
            }
            let map = self.current();
            if map.generation > self.last {
                self.last = map.generation;
                let mut line = match serde_json::to_vec(&*map) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("cannot encode map {}: {e}", map.generation);
                        return None;
                    }
                };
                line.push(b'\n');
                return Some(Bytes::from(line));
            }
            tokio::select! {
                changed = self.rx.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                () = tokio::time::sleep(Duration::from_millis(WATCH_KEEPALIVE_MS)) => {
                    return Some(Bytes::from_static(b"\n"));
                }
            }
        }
    }
}

pub(super) async fn watch(
    State(s): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    q: Result<Query<MapQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|r| ApiError::new(r.status().as_u16(), r.body_text()))?;
    let role = role_of(&q)?;
    // A server's own stream: that server's credential (or anyone, with authentication off).
    let own_server = match &role {
        Some(Some(id)) => {
            caller.may_read_as(id)?;
            super::routes::known_server(&s, id)?;
            super::routes::pool_seen(&s, id, q.pool).await?;
            matches!(caller, Caller::Anyone | Caller::Server(_)).then_some(id.as_str())
        }
        _ => None,
    };
    let slot = admit(&s, &caller, peer, own_server)?;
    let state = WatchState {
        rx: s.tick.subscribe(),
        slot,
        role,
        last: q.after.unwrap_or(0),
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        let line = st.next_line().await?;
        Some((Ok::<_, Infallible>(line), st))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}
