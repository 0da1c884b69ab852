//! `GET /v1/watch`: newline-delimited JSON maps over a chunked response, pushed when the
//! coordinator publishes (the watch channel wakes every stream; each sends its role's map if it
//! is newer than the last one it sent). No polling: an idle stream only sends a keep-alive
//! newline every [`WATCH_KEEPALIVE_MS`].

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio::sync::watch::Receiver;

use super::routes::role_of;
use super::{ApiError, Shared, Tick, WATCH_KEEPALIVE_MS, WATCHERS_MAX};
use crate::api::MapQuery;
use crate::coord::Event;
use crate::map::{ClusterMap, Generation};

/// Counts a watcher for as long as its stream lives.
struct WatcherSlot(Arc<Shared>);

impl Drop for WatcherSlot {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::Relaxed);
    }
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
        let shared = &self.slot.0;
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
            if self.rx.borrow_and_update().closing {
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
    q: Result<Query<MapQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|r| ApiError::new(r.status().as_u16(), r.body_text()))?;
    let role = role_of(&q)?;
    if s.watchers.fetch_add(1, Ordering::Relaxed) >= WATCHERS_MAX {
        s.watchers.fetch_sub(1, Ordering::Relaxed);
        return Err(ApiError::new(
            503,
            format!("more than {WATCHERS_MAX} watch streams are open; retry later"),
        ));
    }
    let state = WatchState {
        rx: s.tick.subscribe(),
        slot: WatcherSlot(Arc::clone(&s)),
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
