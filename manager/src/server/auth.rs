//! Authentication of the control API (docs/cluster.md, "Credentials"): every call presents
//! `Authorization: Bearer TOKEN`; the token names the caller (the operator or one server), and
//! each endpoint checks what that caller may do.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, Shared};
use crate::credential::{read_token, tokens_equal};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    /// Authentication is off (no credentials configured, loopback only): anyone may do anything.
    Anyone,
    /// The operator credential: reads and changes.
    Operator,
    /// Server `id`'s credential: reads, and acks, reports and move-ready for itself.
    Server(String),
}

impl Caller {
    /// Changes of the cluster (volumes, servers, moves, reload) are the operator's.
    pub(crate) fn operator(&self, what: &str) -> Result<(), ApiError> {
        match self {
            Self::Anyone | Self::Operator => Ok(()),
            Self::Server(id) => Err(ApiError::new(
                403,
                format!(
                    "server {id}'s credential cannot {what} (expected the operator credential)"
                ),
            )),
        }
    }

    /// Messages a server sends about itself (ack, report, move-ready) come from that server.
    pub(crate) fn speaks_for(&self, server: &str, what: &str) -> Result<(), ApiError> {
        match self {
            Self::Anyone => Ok(()),
            Self::Server(id) if id == server => Ok(()),
            Self::Server(id) => Err(ApiError::new(
                403,
                format!(
                    "server {id}'s credential cannot send a {what} for server {server} (expected \
                     server {server}'s own credential)"
                ),
            )),
            Self::Operator => Err(ApiError::new(
                403,
                format!(
                    "the operator credential cannot send a {what} for server {server} (only \
                     server {server} can, with its own credential)"
                ),
            )),
        }
    }

    /// The map as server `server` gets it: that server itself, or the operator (read-only).
    pub(crate) fn may_read_as(&self, server: &str) -> Result<(), ApiError> {
        match self {
            Self::Anyone | Self::Operator => Ok(()),
            Self::Server(id) if id == server => Ok(()),
            Self::Server(id) => Err(ApiError::new(
                403,
                format!("server {id}'s credential cannot ask for server {server}'s map"),
            )),
        }
    }
}

/// The tokens the manager accepts, read from the files the cluster YAML names.
pub(crate) struct Credentials {
    operator: String,
    /// (server id, token).
    servers: Vec<(String, String)>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("servers", &self.servers.len())
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Reads the token files `cluster` names (relative paths from `base`, the cluster file's
    /// directory). `None` when the file configures no credentials.
    ///
    /// # Errors
    /// A file that cannot be used, or two identities with the same token.
    pub(crate) fn load(cluster: &yaml::Cluster, base: &Path) -> Result<Option<Self>, String> {
        let Some(op) = &cluster.operator_credential else {
            return Ok(None);
        };
        let read = |p: &Path| read_token(&base.join(p)).map_err(|e| e.to_string());
        let operator = read(op)?;
        let mut servers: Vec<(String, String)> = Vec::with_capacity(cluster.servers.len());
        for s in &cluster.servers {
            let Some(p) = &s.credential else {
                return Err(format!(
                    "{}: server {} has no credential",
                    cluster.source, s.id
                ));
            };
            let token = read(p)?;
            if tokens_equal(token.as_bytes(), operator.as_bytes()) {
                return Err(format!(
                    "server {}'s credential holds the operator's token (expected a token of its \
                     own: a token identifies its holder)",
                    s.id
                ));
            }
            if let Some((other, _)) = servers
                .iter()
                .find(|(_, t)| tokens_equal(token.as_bytes(), t.as_bytes()))
            {
                return Err(format!(
                    "server {}'s credential holds server {other}'s token (expected a token of \
                     its own: a token identifies its holder)",
                    s.id
                ));
            }
            servers.push((s.id.clone(), token));
        }
        Ok(Some(Self { operator, servers }))
    }

    /// The caller a token belongs to. Every stored token is compared, each in constant time.
    fn identify(&self, presented: &str) -> Option<Caller> {
        let p = presented.as_bytes();
        let mut found = None;
        if tokens_equal(p, self.operator.as_bytes()) {
            found = Some(Caller::Operator);
        }
        for (id, t) in &self.servers {
            if tokens_equal(p, t.as_bytes()) && found.is_none() {
                found = Some(Caller::Server(id.clone()));
            }
        }
        found
    }
}

fn unauthorized(message: &str) -> Response {
    let mut r = ApiError::new(401, message).into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    r
}

/// Middleware: identifies the caller (401 when credentials are configured and the call has no
/// valid one) and hands it to the handler as a request extension.
pub(crate) async fn authenticate(
    State(s): State<Arc<Shared>>,
    mut req: Request,
    next: Next,
) -> Response {
    let creds = s.credentials();
    let caller = match creds {
        None => Caller::Anyone,
        Some(c) => {
            let presented = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            match presented {
                None => {
                    return unauthorized(
                        "missing credential: this manager authenticates every call (expected \
                         Authorization: Bearer TOKEN, with the operator's or a server's token)",
                    );
                }
                Some(t) => match c.identify(t) {
                    Some(caller) => caller,
                    None => {
                        return unauthorized(
                            "unknown credential (expected the token of the operator's or a \
                             server's credential file named in the cluster YAML)",
                        );
                    }
                },
            }
        }
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}
