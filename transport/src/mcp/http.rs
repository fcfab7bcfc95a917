//! MCP over Streamable HTTP, at `/mcp` of `coderclaw serve`.
//!
//! The HTTP server authenticates every request first, as for the REST API
//! (a bearer session; a caller on another machine is decided as an
//! untrusted device), and hands the subject to the MCP handler with the
//! request. The MCP session an `initialize` opens belongs to the session
//! that opened it: another token presenting its id is told it does not
//! exist, so nobody reads another caller's notifications. `Host` and
//! `Origin` are checked against allow-lists (DNS rebinding: a web page
//! that resolves its own name to 127.0.0.1 sends its own Host and Origin).
//! Open MCP sessions are bounded.

use super::McpServer;
use coderclaw_core::decision::Subject;
use coderclaw_core::principal::SessionKey;
use coderclaw_net::Body;
use coderclaw_security::security::Security;
use coderclaw_tasks::{ErrorCode, RuntimeError, TaskService};
use http::{Method, Request, Response};
use hyper::body::Incoming;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// The header naming an MCP session.
const SESSION_HEADER: &str = "mcp-session-id";

/// The subject an HTTP request authenticated as, handed to the MCP
/// handler with the request. Only the HTTP server makes one.
#[derive(Clone)]
pub struct Authenticated(pub(crate) Subject);

/// Where MCP over HTTP accepts requests from.
#[derive(Debug, Clone)]
pub struct McpHttpConfig {
    /// `Host` values accepted (`name` or `name:port`). Default: the
    /// loopback names and the address the server listens on.
    pub allowed_hosts: Vec<String>,
    /// Browser `Origin`s accepted (`scheme://host[:port|:*]`). A request
    /// without `Origin` (not from a browser) passes. Default: this
    /// server's own origins only.
    pub allowed_origins: Vec<String>,
    /// Open MCP sessions at most (and [`MAX_SESSIONS_PER_CALLER`] per
    /// caller); an `initialize` beyond is refused (503) until one closes or
    /// expires (5 minutes idle).
    pub max_sessions: usize,
}

impl McpHttpConfig {
    /// The defaults for a server listening on `listen`.
    pub fn for_listen(listen: SocketAddr, tls: bool) -> Self {
        let ip = listen.ip();
        let port = listen.port();
        let host = if ip.is_ipv6() { format!("[{ip}]") } else { ip.to_string() };
        let scheme = if tls { "https" } else { "http" };
        let mut hosts = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
        if !ip.is_unspecified() && !ip.is_loopback() {
            hosts.push(ip.to_string());
        }
        // Port 0: the port bound is not known yet, so any.
        let port = if port == 0 { "*".to_owned() } else { port.to_string() };
        let origins = ["localhost".to_owned(), "127.0.0.1".to_owned(), "[::1]".to_owned(), host]
            .iter()
            .map(|h| format!("{scheme}://{h}:{port}"))
            .collect();
        McpHttpConfig { allowed_hosts: hosts, allowed_origins: origins, max_sessions: 256 }
    }
}

/// The `/mcp` endpoint.
pub struct McpHttp {
    mcp: StreamableHttpService<McpServer, LocalSessionManager>,
    sessions: Arc<LocalSessionManager>,
    /// Which caller's session opened each MCP session.
    owners: Mutex<HashMap<String, SessionKey>>,
    /// Sessions being opened (an `initialize` not yet answered), by caller.
    opening: Mutex<HashMap<SessionKey, usize>>,
    max_sessions: usize,
}

impl McpHttp {
    /// Serves `service`'s tools; requests larger than `max_body_bytes` get 413.
    pub fn new(service: Arc<TaskService>, config: &McpHttpConfig, max_body_bytes: usize) -> McpHttp {
        let sessions = Arc::new(LocalSessionManager::default());
        let transport = StreamableHttpServerConfig::default()
            .with_allowed_hosts(config.allowed_hosts.clone())
            .with_allowed_origins(config.allowed_origins.clone())
            .enforce_origin_validation()
            .with_max_request_body_bytes(max_body_bytes);
        let schemas = Arc::new(super::arguments::Schemas::default());
        let mcp = StreamableHttpService::new(
            move || Ok(McpServer::per_request(service.clone(), schemas.clone())),
            sessions.clone(),
            transport,
        );
        McpHttp {
            mcp,
            sessions,
            owners: Mutex::default(),
            opening: Mutex::default(),
            max_sessions: config.max_sessions,
        }
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, HashMap<String, SessionKey>> {
        self.owners.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Answers one request `who` made.
    pub async fn handle(&self, who: Subject, mut req: Request<Incoming>) -> Result<Response<Body>, RuntimeError> {
        let owner = Security::principal(&who).key;
        let session = req.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        // A session is recorded before its id is answered, so an id this
        // caller did not open is one it must not use: fail closed.
        let opening = match &session {
            Some(id) if self.owners().get(id) != Some(&owner) => {
                return Err(RuntimeError::new(
                    ErrorCode::NotFound,
                    format!("no MCP session {id}: initialize a new one"),
                ));
            }
            None if req.method() == Method::POST => Some(self.reserve(&owner).await?),
            _ => None,
        };
        let method = req.method().clone();
        req.extensions_mut().insert(Authenticated(who));
        let response = self.mcp.handle(req).await;
        let opened = response.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let mut owners = self.owners();
        match (session, opened) {
            (None, Some(id)) => {
                owners.insert(id, owner);
            }
            (Some(id), _) if method == Method::DELETE && response.status().is_success() => {
                owners.remove(&id);
            }
            _ => {}
        }
        drop(owners);
        drop(opening);
        Ok(response)
    }

    /// Room for one more session for `owner`, held by the returned guard
    /// until its `initialize` is answered (so concurrent ones count): at
    /// most `max_sessions` open in all and [`MAX_SESSIONS_PER_CALLER`] per
    /// caller. Sessions that closed or expired are forgotten first.
    async fn reserve(&self, owner: &SessionKey) -> Result<Opening<'_>, RuntimeError> {
        let open: std::collections::HashSet<String> =
            self.sessions.sessions.read().await.keys().map(|id| id.to_string()).collect();
        let mut owners = self.owners();
        owners.retain(|id, _| open.contains(id));
        let mut opening = self.opening.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let total = open.len() + opening.values().sum::<usize>();
        let mine = owners.values().filter(|o| *o == owner).count() + opening.get(owner).copied().unwrap_or(0);
        let refuse = |message: String| {
            let mut e = RuntimeError::new(ErrorCode::Unavailable, message);
            e.retry_after_secs = Some(5);
            Err(e)
        };
        if total >= self.max_sessions {
            return refuse(format!(
                "{total} MCP sessions are open, the most this server keeps: close one (DELETE /mcp) or wait for an \
                 idle one to expire"
            ));
        }
        if mine >= MAX_SESSIONS_PER_CALLER {
            return refuse(format!(
                "this session has {mine} MCP sessions open, the most one caller may: close one (DELETE /mcp)"
            ));
        }
        *opening.entry(owner.clone()).or_default() += 1;
        Ok(Opening { http: self, owner: owner.clone() })
    }
}

/// MCP sessions one caller may have open at once.
pub const MAX_SESSIONS_PER_CALLER: usize = 16;

/// A session being opened, counted until its `initialize` is answered.
struct Opening<'a> {
    http: &'a McpHttp,
    owner: SessionKey,
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        let mut opening = self.http.opening.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = opening.get_mut(&self.owner) {
            *n -= 1;
            if *n == 0 {
                opening.remove(&self.owner);
            }
        }
    }
}
