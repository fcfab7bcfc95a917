//! The HTTP transport's server: REST + Server-Sent Events on hyper, every
//! request authenticated by a bearer session token and authorised by the
//! [`TaskService`]. Errors are JSON `{"error": {"code", "message"}}` with a
//! stable `code`. The API is described by `docs/openapi.json`, served at
//! `/v1/openapi.json`.
//!
//! Every call but the OpenAPI document needs a bearer session token, in
//! both modes: a connection from loopback does not say which local user
//! (or which web page, via the browser) made it, so the session-less local
//! owner of in-process calls does not exist over HTTP. `local-only` also
//! binds loopback only and refuses peers that are not on this machine;
//! `remote-enabled` accepts them. TLS (rustls) when a certificate and key
//! are configured.
//!
//! `/mcp` serves the Model Context Protocol over Streamable HTTP
//! ([`crate::mcp::http`]) and `/v1/ws` upgrades to the WebSocket protocol
//! ([`crate::ws`]), both behind the same authentication.

use crate::mcp::http::{McpHttp, McpHttpConfig};
use crate::ws::server::{Authenticator, WsConfig, WsServer};
use bytes::Bytes;
use coderclaw_core::decision::Subject;
use coderclaw_core::task::{RuntimeMode, TaskFilter, TaskStatus, TaskSubmitRequest};
use coderclaw_net::Body;
use coderclaw_net::server::{BodyError, bytes_response, json_response, query_pairs, read_body};
use coderclaw_tasks::{ErrorCode, MAX_EVENTS_PAGE, RuntimeError, TaskService};
use futures_util::StreamExt;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde::Serialize;
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tracing::Instrument;

/// How long one upload's body may take to arrive.
const UPLOAD_TIME: std::time::Duration = std::time::Duration::from_secs(300);

/// The OpenAPI document of this API (committed at `docs/openapi.json`).
pub const OPENAPI_JSON: &str = include_str!("../../docs/openapi.json");

/// How the server listens. Defaults: 127.0.0.1:7420, local-only, 1 MiB
/// bodies, no TLS.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to bind.
    pub listen: SocketAddr,
    /// local-only or remote-enabled.
    pub mode: RuntimeMode,
    /// Largest request body accepted (413 above).
    pub max_body_bytes: usize,
    /// PEM certificate chain and private key: serve https.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Where MCP at `/mcp` accepts requests from (default: see
    /// [`McpHttpConfig::for_listen`]).
    pub mcp: Option<McpHttpConfig>,
    /// Bounds of the WebSocket endpoint (default:
    /// [`WsConfig::for_body_limit`] of `max_body_bytes`).
    pub ws: Option<WsConfig>,
    /// Where one [`AccessRecord`] per request goes (default: nowhere).
    pub access_log: Option<AccessLog>,
}

/// Receives one record per request answered.
#[derive(Clone)]
pub struct AccessLog(pub Arc<dyn Fn(&AccessRecord) + Send + Sync>);

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessLog")
    }
}

/// One request, as the access log sees it: never a token, a query string
/// or a body; task ids in the path are replaced by `{id}`.
#[derive(Debug, Clone, Serialize)]
pub struct AccessRecord {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path with ids replaced (`/v1/tasks/{id}/events`).
    pub route: String,
    /// The HTTP status answered.
    pub status: u16,
    /// From the request's arrival to its answer (for a stream: to its
    /// first byte).
    pub latency_ms: f64,
    /// The authenticated user, when the request got that far.
    pub user: Option<String>,
    /// The peer's address.
    pub peer: SocketAddr,
}

/// At most the first two segments of `path` (each at most 32 characters,
/// plain text), `/…` marking the rest.
fn unauthenticated_route(path: &str) -> String {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut route: String = segments
        .iter()
        .take(2)
        .map(|s| {
            let clean: String =
                s.chars().filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c)).take(32).collect();
            format!("/{clean}")
        })
        .collect();
    if segments.len() > 2 {
        route.push_str("/…");
    }
    if route.is_empty() { "/".to_owned() } else { route }
}

/// `path` with every segment that is an id (a UUID, or a long run of hex
/// digits) replaced by `{id}`.
pub fn route_template(path: &str) -> String {
    let id_like = |s: &str| {
        let hex = s.chars().filter(char::is_ascii_hexdigit).count();
        s.len() >= 16 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-') && hex >= 16
    };
    let segments: Vec<&str> = path.split('/').map(|s| if id_like(s) { "{id}" } else { s }).collect();
    segments.join("/")
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7420)),
            mode: RuntimeMode::LocalOnly,
            max_body_bytes: 1 << 20,
            tls: None,
            mcp: None,
            ws: None,
            access_log: None,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration contradicts itself.
    #[error("{0}")]
    Config(String),
    /// Mode local-only was asked to listen beyond loopback.
    #[error("mode local-only binds loopback only, not {0}")]
    LocalOnlyBeyondLoopback(std::net::SocketAddr),
    /// Binding or TLS setup failed.
    #[error("{0}")]
    Io(String),
}

pub use coderclaw_net::RunningServer;

/// Binds and starts serving `service` in the background.
pub async fn serve(service: Arc<TaskService>, config: ServerConfig) -> Result<RunningServer, ServerError> {
    if config.mode == RuntimeMode::LocalOnly && !config.listen.ip().is_loopback() {
        return Err(ServerError::LocalOnlyBeyondLoopback(config.listen));
    }
    let tls = match &config.tls {
        Some((cert, key)) => Some(coderclaw_net::tls::acceptor(cert, key).map_err(ServerError::Io)?),
        None => None,
    };
    let listen = config.listen;
    let mcp_config = config.mcp.clone().unwrap_or_else(|| McpHttpConfig::for_listen(listen, tls.is_some()));
    let mcp = Arc::new(McpHttp::new(service.clone(), &mcp_config, config.max_body_bytes));
    let ws_config = config.ws.unwrap_or_else(|| WsConfig::for_body_limit(config.max_body_bytes));
    let adapters = Arc::new(Adapters { mcp, ws: WsServer::new(service.clone(), ws_config) });
    let config = Arc::new(config);
    coderclaw_net::serve(listen, tls, move |peer, req| {
        let (service, config, adapters) = (service.clone(), config.clone(), adapters.clone());
        async move { handle(&service, &config, &adapters, peer, req).await }
    })
    .await
    .map_err(ServerError::Io)
}

/// The protocols served beside REST on the same port.
struct Adapters {
    mcp: Arc<McpHttp>,
    ws: WsServer,
}

fn error_response(e: &RuntimeError) -> Response<Body> {
    let status = StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = json_response(status, &json!({ "error": { "code": e.code, "message": e.message } }));
    if e.code == ErrorCode::Unauthenticated {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    }
    if let Some(secs) = e.retry_after_secs {
        r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
    }
    if e.code == ErrorCode::PayloadTooLarge {
        // The rest of the body is not read: the connection cannot carry
        // another request, and saying so keeps clients from reusing it.
        r.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    }
    r
}

fn ok(value: &impl Serialize) -> Response<Body> {
    json_response(StatusCode::OK, value)
}

fn err(code: ErrorCode, message: impl Into<String>) -> RuntimeError {
    RuntimeError::new(code, message)
}

async fn handle(
    service: &TaskService,
    config: &ServerConfig,
    adapters: &Adapters,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let span = tracing::debug_span!("request", method = %req.method(), path = %req.uri().path(), %peer);
    let started = std::time::Instant::now();
    let (method, path) = (req.method().to_string(), req.uri().path().to_owned());
    let mut user = None;
    let response = match route(service, config, adapters, peer, req, &mut user).instrument(span).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    if let Some(AccessLog(log)) = &config.access_log {
        // Before authentication the path is anyone's text: its first two
        // segments only.
        let route = match &user {
            Some(_) => route_template(&path),
            None => unauthenticated_route(&path),
        };
        log(&AccessRecord {
            method,
            route,
            status: response.status().as_u16(),
            latency_ms: started.elapsed().as_secs_f64() * 1000.0,
            user,
            peer,
        });
    }
    response
}

fn bearer(req: &Request<Incoming>) -> Result<Option<String>, RuntimeError> {
    coderclaw_net::server::bearer_token(req).map_err(|m| err(ErrorCode::Unauthenticated, m))
}

fn authenticate(
    service: &TaskService,
    config: &ServerConfig,
    peer: SocketAddr,
    req: &Request<Incoming>,
) -> Result<Subject, RuntimeError> {
    crate::auth::authenticate(service, config.mode, peer, bearer(req)?.as_deref())
}

/// `GET /v1/ws`: authenticated like any call (the token in `Authorization`,
/// or from a browser as the subprotocol `coderclaw.bearer.<token>`) before
/// the upgrade, and again at every call on the socket.
fn websocket(
    service: &TaskService,
    config: &ServerConfig,
    ws: &WsServer,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, RuntimeError> {
    let token = match bearer(&req)? {
        Some(token) => Some(token),
        None => WsServer::token_from_subprotocols(req.headers()),
    };
    crate::auth::authenticate(service, config.mode, peer, token.as_deref())?;
    let mode = config.mode;
    let auth: Authenticator = Arc::new(move |service| crate::auth::authenticate(service, mode, peer, token.as_deref()));
    ws.upgrade(req, auth)
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>, max: usize) -> Result<T, RuntimeError> {
    let body = read_body(req.into_body(), max).await.map_err(|e| match e {
        BodyError::TooLarge(_) => err(ErrorCode::PayloadTooLarge, e.to_string()),
        BodyError::Read(_) => err(ErrorCode::InvalidRequest, e.to_string()),
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| err(ErrorCode::InvalidRequest, format!("the request body is not valid JSON for this call: {e}")))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct InputBody {
    answer: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AbandonBody {
    reason: String,
}

async fn route(
    service: &TaskService,
    config: &ServerConfig,
    adapters: &Adapters,
    peer: SocketAddr,
    req: Request<Incoming>,
    user: &mut Option<String>,
) -> Result<Response<Body>, RuntimeError> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let method = req.method().clone();
    if segments == ["v1", "openapi.json"] && method == Method::GET {
        return Ok(bytes_response(StatusCode::OK, "application/json", Bytes::from_static(OPENAPI_JSON.as_bytes())));
    }
    if segments == ["v1", "sessions"] && method == Method::POST {
        let body: crate::login::LoginRequest = read_json(req, config.max_body_bytes).await?;
        let reply = crate::login::login(service, config.mode, config.tls.is_some(), peer, body).await?;
        return Ok(json_response(StatusCode::CREATED, &reply));
    }
    if segments == ["v1", "ws"] && method == Method::GET {
        return websocket(service, config, &adapters.ws, peer, req);
    }
    let who = authenticate(service, config, peer, &req)?;
    *user = Some(who.user.clone());
    match (&method, segments.as_slice()) {
        (_, ["mcp"]) => adapters.mcp.handle(who, req).await,
        (&Method::GET, ["v1", "status"]) => Ok(ok(&service.status(&who))),
        (&Method::GET, ["v1", "skills"]) => Ok(ok(&service.skills(&who)?)),
        (&Method::GET, ["v1", "agents"]) => Ok(ok(&service.agents(&who)?)),
        (&Method::POST, ["v1", "tasks"]) => {
            let body: TaskSubmitRequest = read_json(req, config.max_body_bytes).await?;
            let state = service.submit(&who, body).await?;
            Ok(json_response(StatusCode::CREATED, &state))
        }
        (&Method::POST, ["v1", "uploads"]) => {
            let slot = service.begin_upload(&who)?;
            let limit = usize::try_from(slot.max_bytes).unwrap_or(usize::MAX);
            let read = tokio::time::timeout(UPLOAD_TIME, read_body(req.into_body(), limit));
            let too_slow = || {
                let secs = UPLOAD_TIME.as_secs();
                err(ErrorCode::InvalidRequest, format!("the upload did not arrive within {secs} s"))
            };
            let body = read.await.map_err(|_| too_slow())?.map_err(|e| match e {
                BodyError::TooLarge(_) => err(
                    ErrorCode::PayloadTooLarge,
                    format!(
                        "the snapshot is over this server's uploads.maxBytes ({}): leave build output out \
                         (.gitignore) or name one of the server's workspaces",
                        coderclaw_core::units::format_size(limit as u64)
                    ),
                ),
                BodyError::Read(_) => err(ErrorCode::InvalidRequest, e.to_string()),
            })?;
            let info = service.upload_workspace(&who, body).await?;
            Ok(json_response(StatusCode::CREATED, &info))
        }
        (&Method::GET, ["v1", "tasks"]) => {
            let filter = parse_filter(req.uri().query().unwrap_or(""))?;
            Ok(ok(&service.list(&who, filter)?))
        }
        (&Method::GET, ["v1", "tasks", id]) => Ok(ok(&service.get(&who, id)?)),
        (&Method::GET, ["v1", "tasks", id, "events"]) => {
            let (after, limit) = parse_page(req.uri().query().unwrap_or(""))?;
            Ok(ok(&service.events(&who, id, after, limit)?))
        }
        (&Method::GET, ["v1", "tasks", id, "stream"]) => {
            // A reconnecting EventSource says where it got to.
            let after = match req.headers().get("last-event-id") {
                Some(v) => v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()).ok_or_else(|| {
                    err(ErrorCode::InvalidRequest, "Last-Event-ID is not an event id (a sequence number)")
                })?,
                None => 0,
            };
            let stream = service.stream_after(&who, id, after)?;
            let frames = stream.map(|e| {
                let data = serde_json::to_string(&e).unwrap_or_default();
                let text = format!("id: {}\nevent: {}\ndata: {data}\n\n", e.seq, e.event.as_str());
                Ok::<_, Infallible>(Frame::data(Bytes::from(text)))
            });
            Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .header(header::CACHE_CONTROL, "no-cache")
                .body(BodyExt::boxed(StreamBody::new(frames)))
                .map_err(|e| err(ErrorCode::Internal, e.to_string()))
        }
        (&Method::POST, ["v1", "tasks", id, "cancel"]) => {
            let cancelled = service.cancel(&who, id)?;
            let state = service.get(&who, id)?;
            Ok(ok(&json!({ "cancelled": cancelled, "task": state })))
        }
        (&Method::POST, ["v1", "tasks", id, "abandon"]) => {
            let id = id.to_string();
            let body: AbandonBody = read_json(req, config.max_body_bytes).await?;
            let (abandoned, task) = service.abandon(&who, &id, &body.reason)?;
            Ok(ok(&json!({ "abandoned": abandoned, "task": task })))
        }
        (&Method::POST, ["v1", "tasks", id, "input"]) => {
            let id = id.to_string();
            let body: InputBody = read_json(req, config.max_body_bytes).await?;
            Ok(ok(&service.respond(&who, &id, body.answer)?))
        }
        (&Method::POST, ["v1", "tasks", id, "pause"]) => Ok(ok(&service.set_paused(&who, id, true)?)),
        (&Method::POST, ["v1", "tasks", id, "resume"]) => Ok(ok(&service.set_paused(&who, id, false)?)),
        (_, ["v1", ..]) => Err(err(ErrorCode::NotFound, format!("no route {method} {path}: see /v1/openapi.json"))),
        _ => Err(err(ErrorCode::NotFound, format!("no route {method} {path}: the API lives under /v1, MCP at /mcp"))),
    }
}

/// `?after=SEQ&limit=N` of the events endpoint (defaults 0 and 1000).
fn parse_page(query: &str) -> Result<(u64, u32), RuntimeError> {
    let (mut after, mut limit) = (0, MAX_EVENTS_PAGE);
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "after" => {
                after = v
                    .parse()
                    .map_err(|_| err(ErrorCode::InvalidRequest, format!("after `{v}` is not a sequence number")))?
            }
            "limit" => {
                limit = v.parse().ok().filter(|l| (1..=MAX_EVENTS_PAGE).contains(l)).ok_or_else(|| {
                    err(
                        ErrorCode::InvalidRequest,
                        format!("limit `{v}` is not a number between 1 and {MAX_EVENTS_PAGE}"),
                    )
                })?
            }
            other => {
                return Err(err(
                    ErrorCode::InvalidRequest,
                    format!("unknown query parameter `{other}`: use after, limit"),
                ));
            }
        }
    }
    Ok((after, limit))
}

fn parse_filter(query: &str) -> Result<TaskFilter, RuntimeError> {
    let mut filter = TaskFilter::default();
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "status" => filter.status = Some(TaskStatus::parse(&v).map_err(|m| err(ErrorCode::InvalidRequest, m))?),
            "session" => filter.session = Some(v),
            "limit" => {
                filter.limit = Some(v.parse().map_err(|_| {
                    err(ErrorCode::InvalidRequest, format!("limit `{v}` is not a number between 1 and 1000"))
                })?)
            }
            other => {
                return Err(err(
                    ErrorCode::InvalidRequest,
                    format!("unknown query parameter `{other}`: use status, session, limit"),
                ));
            }
        }
    }
    Ok(filter)
}

#[cfg(test)]
mod tests {
    use super::route_template;

    #[test]
    fn ids_are_not_logged_as_routes() {
        assert_eq!(route_template("/v1/tasks/0b9ea3ee-86a1-4a8f-9d0b-7a3f3f3f3f3f/events"), "/v1/tasks/{id}/events");
        assert_eq!(route_template("/v1/status"), "/v1/status");
        assert_eq!(route_template("/v1/workspaces/deadbeefdeadbeefdeadbeef"), "/v1/workspaces/{id}");
        assert_eq!(super::unauthenticated_route("/v1/tasks/secret-ish-text/x"), "/v1/tasks/…");
        assert_eq!(super::unauthenticated_route("/\u{1b}[2J/v1"), "/2J/v1");
        assert_eq!(super::unauthenticated_route("/"), "/");
    }
}
