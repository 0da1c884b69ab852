//! The manager's Prometheus metrics: `GET /metrics` on their own address (`--metrics`, default
//! [`DEFAULT_METRICS_ADDR`]), in the Prometheus text format, encoded by `prometheus-client`.
//!
//! Counters are counted where things happen (requests, authentication failures, mismatch
//! reports, extent moves); gauges (generations, servers by state, the publication in progress,
//! watch streams) are read from the manager's state when scraped.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use super::Shared;
use crate::map::{ClusterMap, ServerState};

/// Default metrics address (the target's is 127.0.0.1:9420).
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9421";

/// Labels of `tessera_manager_http_requests_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    /// The route's pattern (`/v1/volumes/{name}/resize`), `other` for unknown paths.
    route: &'static str,
    method: String,
    status: u16,
}

/// A label named `kind`, `state`, `phase`, `event` or `status`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EventLabel {
    event: &'static str,
}
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StatusLabel {
    status: u16,
}

/// The manager's metrics.
pub(crate) struct Metrics {
    registry: Registry,
    generation: Gauge,
    committed: Gauge,
    servers_generation: Gauge,
    servers: Family<StateLabel, Gauge>,
    publishing: Family<PhaseLabel, Gauge>,
    queued: Gauge,
    acks_pending: Gauge,
    watch_streams: Family<KindLabel, Gauge>,
    requests: Family<RequestLabels, Counter>,
    auth_failures: Family<StatusLabel, Counter>,
    reports: Family<KindLabel, Counter>,
    moves: Family<EventLabel, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("tessera_manager");
        let m = Self {
            generation: Gauge::default(),
            committed: Gauge::default(),
            servers_generation: Gauge::default(),
            servers: Family::default(),
            publishing: Family::default(),
            queued: Gauge::default(),
            acks_pending: Gauge::default(),
            watch_streams: Family::default(),
            requests: Family::default(),
            auth_failures: Family::default(),
            reports: Family::default(),
            moves: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "generation",
            "Newest durable map generation (being published, queued or committed)",
            m.generation.clone(),
        );
        registry.register(
            "committed_generation",
            "Generation of the committed map (the clients' map)",
            m.committed.clone(),
        );
        registry.register(
            "servers_generation",
            "Generation of the map every server gets (phase 1a done)",
            m.servers_generation.clone(),
        );
        registry.register(
            "servers",
            "Storage servers in the newest map, by state",
            m.servers.clone(),
        );
        registry.register(
            "publication_in_progress",
            "1 while a map is being published, labelled by its phase (1a: old owners, 1b: all \
             servers)",
            m.publishing.clone(),
        );
        registry.register(
            "publications_queued",
            "Durable maps waiting behind the publication in progress",
            m.queued.clone(),
        );
        registry.register(
            "acks_pending",
            "Acks the publication in progress still waits for",
            m.acks_pending.clone(),
        );
        registry.register(
            "watch_streams",
            "Open watch streams (server: a storage server's own stream; client: any other)",
            m.watch_streams.clone(),
        );
        registry.register(
            "http_requests",
            "Control API requests answered, by route, method and HTTP status",
            m.requests.clone(),
        );
        registry.register(
            "auth_failures",
            "Control API requests refused for their credential (401: missing or unknown; 403: \
             not allowed for this caller)",
            m.auth_failures.clone(),
        );
        registry.register(
            "mismatch_reports",
            "Stamp mismatches reported by servers (POST /v1/report counts), by kind",
            m.reports.clone(),
        );
        registry.register(
            "extent_moves",
            "Extent moves started, finished (switched to the new owner) and aborted (cancelled \
             without a switch), counted from durable maps",
            m.moves.clone(),
        );
        Self { registry, ..m }
    }

    /// Counts `count` mismatches of `kind` reported by a server.
    pub(crate) fn count_reports(&self, kind: &'static str, count: u64) {
        self.reports
            .get_or_create(&KindLabel { kind })
            .inc_by(count);
    }

    /// Counts the extent moves that `next` starts, finishes or aborts relative to `head`.
    pub(crate) fn count_moves(&self, head: &ClusterMap, next: &ClusterMap) {
        let mut started = 0;
        let mut finished = 0;
        let mut aborted = 0;
        for v in &next.volumes {
            let before = head.volumes.iter().find(|o| o.name == v.name);
            for (i, ext) in v.extents.iter().enumerate() {
                let old = before.and_then(|o| o.extents.get(i));
                let was = old.and_then(|o| o.moving.as_ref());
                match (was, &ext.moving) {
                    (None, Some(_)) => started += 1,
                    (Some(m), None) => {
                        let to_new = ext
                            .replicas
                            .first()
                            .is_some_and(|r| r.server == m.to.server && r.offset == m.to.offset);
                        if to_new {
                            finished += 1;
                        } else {
                            aborted += 1;
                        }
                    }
                    (Some(a), Some(b)) if a != b => {
                        aborted += 1;
                        started += 1;
                    }
                    _ => {}
                }
            }
        }
        // Extents of a removed volume that were moving: aborted.
        for v in &head.volumes {
            if !next.volumes.iter().any(|n| n.name == v.name) {
                aborted += v.extents.iter().filter(|e| e.moving.is_some()).count();
            }
        }
        for (event, n) in [
            ("started", started),
            ("finished", finished),
            ("aborted", aborted),
        ] {
            if n > 0 {
                self.moves
                    .get_or_create(&EventLabel { event })
                    .inc_by(n as u64);
            }
        }
    }

    /// Creates the label sets that should read 0 before anything happened, so that a scrape
    /// shows every series from the start.
    fn touch(&self) {
        for event in ["started", "finished", "aborted"] {
            let _ = self.moves.get_or_create(&EventLabel { event });
        }
        for kind in ["stale", "behind", "unstamped"] {
            let _ = self.reports.get_or_create(&KindLabel { kind });
        }
        for status in [401, 403] {
            let _ = self.auth_failures.get_or_create(&StatusLabel { status });
        }
    }
}

/// Gauges from the manager's state, then the text.
fn render(shared: &Shared) -> String {
    let m = &shared.metrics;
    m.touch();
    {
        let inner = shared.lock();
        let coord = &inner.coord;
        m.generation.set(gauge_value(inner.head.generation));
        m.committed.set(gauge_value(coord.client_map().generation));
        m.servers_generation
            .set(gauge_value(coord.server_map(None).generation));
        for (state, label) in [
            (ServerState::Up, "up"),
            (ServerState::Down, "down"),
            (ServerState::Draining, "draining"),
        ] {
            let n = inner
                .head
                .servers
                .iter()
                .filter(|s| s.state == state)
                .count();
            m.servers
                .get_or_create(&StateLabel { state: label })
                .set(gauge_value(n as u64));
        }
        let publishing = coord.publishing();
        for phase in [crate::coord::Phase::OldOwners, crate::coord::Phase::Servers] {
            let label = match phase {
                crate::coord::Phase::OldOwners => "1a",
                crate::coord::Phase::Servers => "1b",
            };
            let on = publishing.as_ref().is_some_and(|p| p.1 == phase);
            m.publishing
                .get_or_create(&PhaseLabel { phase: label })
                .set(i64::from(on));
        }
        let (pending, queued) = publishing
            .as_ref()
            .map_or((0, 0), |p| (p.2.len() as u64, p.3 as u64));
        m.acks_pending.set(gauge_value(pending));
        m.queued.set(gauge_value(queued));
    }
    let (clients, servers) = shared.watchers().open();
    m.watch_streams
        .get_or_create(&KindLabel { kind: "client" })
        .set(gauge_value(clients as u64));
    m.watch_streams
        .get_or_create(&KindLabel { kind: "server" })
        .set(gauge_value(servers as u64));
    let mut out = String::new();
    // Writing to a String cannot fail; an encoder error would be a bug of ours: say so.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &m.registry) {
        tracing::error!("encoding the metrics failed: {e}");
    }
    out
}

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The route pattern of `path` (bounded label values: never the raw path).
fn route_of(path: &str) -> &'static str {
    const ROUTES: [&str; 10] = [
        "/v1/map",
        "/v1/watch",
        "/v1/ack",
        "/v1/report",
        "/v1/move-ready",
        "/v1/status",
        "/v1/volumes",
        "/v1/servers",
        "/v1/extents/move",
        "/v1/reload",
    ];
    if let Some(r) = ROUTES.iter().find(|r| **r == path) {
        return r;
    }
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["", "v1", "volumes", _, "resize"] => "/v1/volumes/{name}/resize",
        ["", "v1", "servers", _, "state"] => "/v1/servers/{id}/state",
        _ => "other",
    }
}

/// Middleware (outermost): counts every control API answer, and the authentication failures.
pub(crate) async fn count_requests(
    State(s): State<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    let route = route_of(req.uri().path());
    let method = req.method().as_str().to_string();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let m = &s.metrics;
    if matches!(status, 401 | 403) {
        m.auth_failures.get_or_create(&StatusLabel { status }).inc();
    }
    m.requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status,
        })
        .inc();
    resp
}

/// `GET /metrics`.
async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        render(&s),
    )
        .into_response()
}

/// Binds `addr` for the metrics endpoint.
///
/// # Errors
/// The address cannot be bound (the message names it).
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen for metrics on {addr}: {e}"),
        )
    })
}

/// Serves `GET /metrics` on `listener` until the manager stops.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut closing = shared.tick.subscribe();
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(shared);
    let r = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = closing.wait_for(|t| t.closing).await;
        })
        .await;
    if let Err(e) = r {
        tracing::warn!("metrics endpoint stopped: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::route_of;

    #[test]
    fn routes_are_patterns() {
        assert_eq!(route_of("/v1/ack"), "/v1/ack");
        assert_eq!(
            route_of("/v1/volumes/vol-a/resize"),
            "/v1/volumes/{name}/resize"
        );
        assert_eq!(route_of("/v1/servers/s1/state"), "/v1/servers/{id}/state");
        assert_eq!(route_of("/v1/nope"), "other");
        assert_eq!(route_of("/v1/volumes/a/b/resize"), "other");
    }
}
