//! Client of the control API, used by `tessera-target` (map, watch, ack, report, move-ready)
//! and the `tessera` CLI (status and changes).
//!
//! ```no_run
//! # async fn f() -> Result<(), manager::client::ClientError> {
//! use futures::StreamExt;
//! use manager::{api::Role, client::Client};
//! let c = Client::new("127.0.0.1:7700");
//! let map = c.map(&Role::server("s1")).await?;
//! let mut maps = Box::pin(c.watch(Role::server("s1"), map.generation));
//! while let Some(next) = maps.next().await {
//!     match next {
//!         Ok(map) => c.ack("s1", map.generation).await?, // after installing it
//!         Err(e) => eprintln!("watch: {e} (retrying)"),
//!     }
//! }
//! # Ok(()) }
//! ```

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{
    AckRequest, AddServerRequest, CopiesDivergedRequest, CreateVolumeRequest, Empty, ErrorBody,
    MoveReadyRequest, MoveRequest, RebuildDoneRequest, RebuildProgressRequest,
    ReplicaFailedRequest, ReportRequest, ResizeRequest, Role, ServerStateRequest,
    ServerUnreachableRequest, Status,
};
use crate::map::{ClusterMap, Generation, PoolId, ServerState};

/// Connecting to the manager (loopback or a LAN): longer means it is down.
const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// Whole-request bound for every call but the watch.
const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// The server sends a keep-alive newline every `server::WATCH_KEEPALIVE_MS` (5 s); three missed
/// ones mean the connection is dead even if TCP has not noticed.
const WATCH_IDLE_MS: u64 = 15_000;
/// First reconnect delay of a watch.
const BACKOFF_MIN_MS: u64 = 50;
/// Longest reconnect delay of a watch: a restarted manager is noticed within this.
const BACKOFF_MAX_MS: u64 = 2_000;
/// Longest map line accepted from a watch: a map of [`crate::map::VOLUMES_MAX`] volumes with
/// thousands of extents each is tens of MiB; anything longer is not a map.
pub const MAP_LINE_BYTES_MAX: usize = 64 << 20;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer: connection refused, reset or timed out.
    #[error("manager unreachable: {0}")]
    Unreachable(String),
    /// The manager answered with an error status and `{"error": message}`.
    #[error("manager refused: HTTP {status}: {message}")]
    Http {
        /// HTTP status code (4xx: the request was refused whole).
        status: u16,
        /// The manager's message.
        message: String,
        /// The generation of the manager's newest map when it refused a change against it
        /// ([`crate::api::ErrorBody::generation`]); `None` on other errors and from older
        /// managers.
        generation: Option<u64>,
    },
    /// The answer is not the expected JSON.
    #[error("bad answer from manager: {0}")]
    Decode(String),
}

/// A handle on one manager's control API. Cheap to clone (connections are pooled).
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    /// Sent as `Authorization: Bearer ...` on every call when set.
    token: Option<Token>,
    /// Sent as `pool=` on role=server map fetches and watches when set.
    pool: Option<PoolId>,
}

/// A token that `Debug` does not print.
#[derive(Clone)]
struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

fn unreachable(e: &reqwest::Error) -> ClientError {
    ClientError::Unreachable(error_chain(e))
}

/// reqwest's Display hides the cause ("error sending request"); show the whole chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

impl Client {
    /// A client of the manager at `addr` (`127.0.0.1:7700`, or a base URL `http://...`).
    /// Nothing is sent until the first call.
    #[must_use]
    pub fn new(addr: impl std::fmt::Display) -> Self {
        let text = addr.to_string();
        let base_text = if text.starts_with("http://") || text.starts_with("https://") {
            text
        } else {
            format!("http://{text}")
        };
        // An unparsable address makes every call fail with Unreachable, naming it.
        let base = Url::parse(&base_text).unwrap_or_else(|_| {
            #[allow(clippy::expect_used)]
            Url::parse("http://invalid.invalid/").expect("constant URL parses")
        });
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .build()
            .unwrap_or_default();
        Self {
            http,
            base,
            token: None,
            pool: None,
        }
    }

    /// This client, sending `pool` (the caller's pool identity) with every role=server map
    /// fetch and watch (docs/replication.md, "A server whose data is gone").
    #[must_use]
    pub fn with_pool(mut self, pool: PoolId) -> Self {
        self.pool = Some(pool);
        self
    }

    /// The query of a map fetch or watch for `role` (with the pool, for a server).
    fn role_query(&self, role: &Role) -> Vec<(&'static str, String)> {
        let mut q = role.query();
        if let (Role::Server(_), Some(p)) = (role, self.pool) {
            q.push(("pool", p.to_string()));
        }
        q
    }

    /// A client that presents `token` (a server's or the operator's credential, see
    /// [`crate::credential::read_token`]) on every call.
    #[must_use]
    pub fn with_credential(addr: impl std::fmt::Display, token: impl Into<String>) -> Self {
        let mut c = Self::new(addr);
        c.token = Some(Token(token.into()));
        c
    }

    fn authorize(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(Token(t)) => req.bearer_auth(t),
            None => req,
        }
    }

    /// The base URL calls go to.
    #[must_use]
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    fn url(&self, segments: &[&str]) -> Result<Url, ClientError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| ClientError::Unreachable(format!("bad manager address {}", self.base)))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let mut req = self
            .authorize(self.http.request(method, url))
            .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
            .query(query);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| unreachable(&e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| unreachable(&e))?;
        decode_answer(status, &bytes)
    }

    /// `GET /v1/map`: the map for `role`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn map(&self, role: &Role) -> Result<ClusterMap, ClientError> {
        self.call::<(), _>(
            Method::GET,
            self.url(&["v1", "map"])?,
            &self.role_query(role),
            None,
        )
        .await
    }

    /// `GET /v1/watch`: every map for `role` newer than `after`, as the manager publishes them.
    ///
    /// The stream never ends. When the connection drops (the manager restarts) it reconnects
    /// with backoff (50 ms doubling to 2 s) asking for maps after the last one it yielded, so no
    /// generation is yielded twice; generations may be skipped (each map is a full snapshot).
    /// `Err` items report failed reconnects and bad lines; the stream goes on after them.
    pub fn watch(
        &self,
        role: Role,
        after: Generation,
    ) -> impl Stream<Item = Result<ClusterMap, ClientError>> + Send + 'static {
        let state = WatchState {
            client: self.clone(),
            role,
            after,
            backoff_ms: 0,
            body: None,
            buf: Vec::new(),
        };
        futures::stream::unfold(state, |mut st| async move {
            let item = st.next_item().await;
            Some((item, st))
        })
    }

    /// `POST /v1/ack`: server `server` has installed `generation`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn ack(&self, server: &str, generation: Generation) -> Result<(), ClientError> {
        let body = AckRequest {
            server: server.to_owned(),
            generation,
        };
        let _: Empty = self
            .call(Method::POST, self.url(&["v1", "ack"])?, &[], Some(&body))
            .await?;
        Ok(())
    }

    /// `POST /v1/lease`: a read lease for `server`; its length in milliseconds, counted from
    /// before the call (docs/replication.md, "Read leases").
    ///
    /// # Errors
    /// [`ClientError`]; HTTP 409 while a map that takes reads from `server` waits for its ack.
    pub async fn lease(&self, server: &str) -> Result<u64, ClientError> {
        let body = crate::api::LeaseRequest {
            server: server.to_owned(),
        };
        let g: crate::api::LeaseGrant = self
            .call(Method::POST, self.url(&["v1", "lease"])?, &[], Some(&body))
            .await?;
        Ok(g.lease_ms)
    }

    /// `POST /v1/report`: mismatch counts.
    ///
    /// # Errors
    /// [`ClientError`]; HTTP 429 when reports come faster than the manager counts them.
    pub async fn report(&self, report: &ReportRequest) -> Result<(), ClientError> {
        let _: Empty = self
            .call(
                Method::POST,
                self.url(&["v1", "report"])?,
                &[],
                Some(report),
            )
            .await?;
        Ok(())
    }

    /// `POST /v1/move-ready`: the copy of a moving extent has converged.
    ///
    /// # Errors
    /// [`ClientError`]; 4xx when the extent is not moving or `server` does not own it.
    pub async fn move_ready(&self, req: &MoveReadyRequest) -> Result<(), ClientError> {
        let _: Empty = self
            .call(
                Method::POST,
                self.url(&["v1", "move-ready"])?,
                &[],
                Some(req),
            )
            .await?;
        Ok(())
    }

    /// `POST /v1/replica-failed`: this server (the extent's primary) could not write a copy.
    /// The answer is the map in which that copy is `stale`.
    ///
    /// # Errors
    /// [`ClientError`]; 409 when the sender is not the extent's primary in the manager's map.
    pub async fn replica_failed(
        &self,
        req: &ReplicaFailedRequest,
    ) -> Result<ClusterMap, ClientError> {
        self.call(
            Method::POST,
            self.url(&["v1", "replica-failed"])?,
            &[],
            Some(req),
        )
        .await
    }

    /// `POST /v1/copies-diverged`: this server lost the primary role of an extent while a
    /// write it had applied to its own copy failed. The answer is the map in which every
    /// `in_sync` copy but the primary's is `rebuilding`.
    ///
    /// # Errors
    /// [`ClientError`]; 404 when this server holds no copy of the extent.
    pub async fn copies_diverged(
        &self,
        req: &CopiesDivergedRequest,
    ) -> Result<ClusterMap, ClientError> {
        self.call(
            Method::POST,
            self.url(&["v1", "copies-diverged"])?,
            &[],
            Some(req),
        )
        .await
    }

    /// `POST /v1/rebuild-done`: this server (the extent's primary) copied a `rebuilding` copy.
    /// The answer is the map in which that copy is `in_sync`.
    ///
    /// # Errors
    /// [`ClientError`]; 409 when the sender is not the extent's primary or the copy went stale.
    pub async fn rebuild_done(&self, req: &RebuildDoneRequest) -> Result<ClusterMap, ClientError> {
        self.call(
            Method::POST,
            self.url(&["v1", "rebuild-done"])?,
            &[],
            Some(req),
        )
        .await
    }

    /// `POST /v1/rebuild-progress`: how far this server (the primary) is with a rebuild.
    ///
    /// # Errors
    /// [`ClientError`]; 409 when the copy is not rebuilding (any more).
    pub async fn rebuild_progress(&self, req: &RebuildProgressRequest) -> Result<(), ClientError> {
        let _: crate::api::Empty = self
            .call(
                Method::POST,
                self.url(&["v1", "rebuild-progress"])?,
                &[],
                Some(req),
            )
            .await?;
        Ok(())
    }

    /// `POST /v1/server-unreachable`: this server could not reach peer `server`. The answer
    /// is the manager's current map (with `server` down if the manager lost it too).
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn server_unreachable(
        &self,
        req: &ServerUnreachableRequest,
    ) -> Result<ClusterMap, ClientError> {
        self.call(
            Method::POST,
            self.url(&["v1", "server-unreachable"])?,
            &[],
            Some(req),
        )
        .await
    }

    /// `GET /v1/status`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.call::<(), _>(Method::GET, self.url(&["v1", "status"])?, &[], None)
            .await
    }

    /// `POST /v1/volumes`: the new (durable, being published) map.
    ///
    /// # Errors
    /// [`ClientError`]; 4xx with the reason when the change is refused.
    pub async fn create_volume(
        &self,
        req: &CreateVolumeRequest,
    ) -> Result<ClusterMap, ClientError> {
        self.call(Method::POST, self.url(&["v1", "volumes"])?, &[], Some(req))
            .await
    }

    /// `POST /v1/volumes/{name}/resize` (grow only).
    ///
    /// # Errors
    /// [`ClientError`]; 4xx with the reason when the change is refused.
    pub async fn resize_volume(&self, name: &str, size: u64) -> Result<ClusterMap, ClientError> {
        let url = self.url(&["v1", "volumes", name, "resize"])?;
        self.call(Method::POST, url, &[], Some(&ResizeRequest { size }))
            .await
    }

    /// `POST /v1/volumes/{name}/clear-lost`: clear the `lost` mark of extent `extent` of
    /// `volume`, or of all its extents (operator).
    ///
    /// # Errors
    /// [`ClientError`]; 4xx with the reason when the change is refused.
    pub async fn clear_lost(
        &self,
        volume: &str,
        extent: Option<usize>,
    ) -> Result<ClusterMap, ClientError> {
        let url = self.url(&["v1", "volumes", volume, "clear-lost"])?;
        let body = crate::api::ClearLostRequest { extent };
        self.call(Method::POST, url, &[], Some(&body)).await
    }

    /// `POST /v1/servers`.
    ///
    /// # Errors
    /// [`ClientError`]; 4xx with the reason when the change is refused.
    pub async fn add_server(&self, req: &AddServerRequest) -> Result<ClusterMap, ClientError> {
        self.call(Method::POST, self.url(&["v1", "servers"])?, &[], Some(req))
            .await
    }

    /// `POST /v1/extents/move`: start moving extent `extent` of `volume` to server `to`.
    ///
    /// # Errors
    /// [`ClientError`]; 4xx with the reason when the change is refused.
    pub async fn move_extent(
        &self,
        volume: &str,
        extent: usize,
        to: &str,
    ) -> Result<ClusterMap, ClientError> {
        self.post_move(volume, extent, None, to).await
    }

    /// `POST /v1/extents/move` naming the copy it replaces (`from`): for a volume with several
    /// copies, the copy on `from` leaves the extent once the copy on `to` is rebuilt
    /// (docs/replication.md, "Moving a copy"); for one copy, `from` must be the owner.
    ///
    /// # Errors
    /// [`ClientError`]; 4xx with the reason when the change is refused.
    pub async fn move_copy(
        &self,
        volume: &str,
        extent: usize,
        from: &str,
        to: &str,
    ) -> Result<ClusterMap, ClientError> {
        self.post_move(volume, extent, Some(from), to).await
    }

    async fn post_move(
        &self,
        volume: &str,
        extent: usize,
        from: Option<&str>,
        to: &str,
    ) -> Result<ClusterMap, ClientError> {
        let body = MoveRequest {
            volume: volume.to_owned(),
            extent,
            to: to.to_owned(),
            from: from.map(str::to_owned),
        };
        self.call(
            Method::POST,
            self.url(&["v1", "extents", "move"])?,
            &[],
            Some(&body),
        )
        .await
    }

    /// `POST /v1/servers/{id}/state`: set a server's state (operator).
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn set_server_state(
        &self,
        id: &str,
        state: ServerState,
    ) -> Result<ClusterMap, ClientError> {
        self.call(
            Method::POST,
            self.url(&["v1", "servers", id, "state"])?,
            &[],
            Some(&ServerStateRequest { state }),
        )
        .await
    }

    /// `POST /v1/reload`: re-read the cluster YAML and apply its edits since the last load.
    ///
    /// # Errors
    /// [`ClientError`]; 4xx with the reason when the file or a change is refused.
    pub async fn reload(&self) -> Result<ClusterMap, ClientError> {
        self.call(
            Method::POST,
            self.url(&["v1", "reload"])?,
            &[],
            Some(&Empty {}),
        )
        .await
    }
}

/// A success body as `T`, or an error body as [`ClientError::Http`].
fn decode_answer<T: DeserializeOwned>(status: StatusCode, bytes: &[u8]) -> Result<T, ClientError> {
    if status.is_success() {
        return serde_json::from_slice(bytes).map_err(|e| ClientError::Decode(e.to_string()));
    }
    let (message, generation) = match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(b) => (b.error, b.generation),
        Err(_) => (
            String::from_utf8_lossy(bytes).chars().take(200).collect(),
            None,
        ),
    };
    Err(ClientError::Http {
        status: status.as_u16(),
        message,
        generation,
    })
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// A watch between two yielded items.
struct WatchState {
    client: Client,
    role: Role,
    /// Last generation yielded (or the caller's `after`).
    after: Generation,
    /// Delay before the next connect; 0 right after a map arrived.
    backoff_ms: u64,
    body: Option<ByteStream>,
    /// Bytes of the line being received.
    buf: Vec<u8>,
}

impl WatchState {
    fn grow_backoff(&mut self) {
        self.backoff_ms = (self.backoff_ms.saturating_mul(2)).clamp(BACKOFF_MIN_MS, BACKOFF_MAX_MS);
    }

    async fn connect(&mut self) -> Result<(), ClientError> {
        if self.backoff_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.backoff_ms)).await;
        }
        // Not 0: a connection that drops before any map still backs off next time.
        self.grow_backoff();
        let mut query = self.client.role_query(&self.role);
        query.push(("after", self.after.to_string()));
        let url = self.client.url(&["v1", "watch"])?;
        let resp = self
            .client
            .authorize(self.client.http.get(url))
            .query(&query)
            .send()
            .await
            .map_err(|e| unreachable(&e))?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.bytes().await.map_err(|e| unreachable(&e))?;
            return decode_answer::<Empty>(status, &bytes).map(|_| ());
        }
        self.buf.clear();
        self.body = Some(Box::pin(resp.bytes_stream()));
        Ok(())
    }

    async fn next_item(&mut self) -> Result<ClusterMap, ClientError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let text = line.get(..pos).unwrap_or_default();
                if text.iter().all(u8::is_ascii_whitespace) {
                    continue; // keep-alive
                }
                match serde_json::from_slice::<ClusterMap>(text) {
                    Ok(map) if map.generation <= self.after => continue,
                    Ok(map) => {
                        self.after = map.generation;
                        self.backoff_ms = 0;
                        return Ok(map);
                    }
                    Err(e) => {
                        self.body = None;
                        self.buf.clear();
                        return Err(ClientError::Decode(format!("watch line: {e}")));
                    }
                }
            }
            let Some(body) = self.body.as_mut() else {
                self.connect().await?;
                continue;
            };
            let idle = Duration::from_millis(WATCH_IDLE_MS);
            match tokio::time::timeout(idle, body.next()).await {
                Ok(Some(Ok(chunk))) => {
                    if self.buf.len().saturating_add(chunk.len()) > MAP_LINE_BYTES_MAX {
                        self.body = None;
                        self.buf.clear();
                        return Err(ClientError::Decode(format!(
                            "watch line longer than {MAP_LINE_BYTES_MAX} bytes"
                        )));
                    }
                    self.buf.extend_from_slice(&chunk);
                }
                Ok(Some(Err(_)) | None) | Err(_) => {
                    // The manager went away (restart) or went silent: reconnect.
                    self.body = None;
                    self.buf.clear();
                }
            }
        }
    }
}
