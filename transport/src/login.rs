//! Logging in over the network: `POST /v1/sessions` on `coderclaw serve`
//! turns a password, an API token or an OIDC ID token into a session, so a
//! CI runner or a developer on another machine needs no shell on the
//! server. Only over https or from this machine (a password must not cross
//! the network in clear text), throttled per peer like bearer tokens, and
//! every attempt audited by the login itself.

use coderclaw_net::HttpClient;
use coderclaw_security::security::{LocalSecret, RemoteLogin, SecurityError};
use coderclaw_tasks::{ErrorCode, RuntimeError, TaskService};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// The body of `POST /v1/sessions`: exactly one of `password`, `apiToken`
/// and `idToken` (the first two with `user`).
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoginRequest {
    /// The local user (with `password` or `apiToken`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Their password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// An API token of theirs (`coderclaw user token create`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_token: Option<String>,
    /// An OIDC ID token from an issuer in config.yaml (it names the user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    /// Hold only these of the user's roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Session lifetime in seconds (default: identity.sessionTtl).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("LoginRequest")
            .field("user", &self.user)
            .field("password", &secret(&self.password))
            .field("api_token", &secret(&self.api_token))
            .field("id_token", &secret(&self.id_token))
            .field("roles", &self.roles)
            .field("ttl_secs", &self.ttl_secs)
            .finish()
    }
}

/// What a login returns: the session token (shown once) and the session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginReply {
    /// The bearer token for every later call.
    pub token: String,
    /// The session: id, user, roles, expiry.
    pub session: Value,
}

fn invalid(message: &str) -> RuntimeError {
    RuntimeError::new(ErrorCode::InvalidRequest, message)
}

impl LoginRequest {
    fn credential(&self) -> Result<RemoteLogin<'_>, RuntimeError> {
        let user = self.user.as_deref();
        match (&self.password, &self.api_token, &self.id_token, user) {
            (Some(p), None, None, Some(user)) => Ok(RemoteLogin::Local { user, secret: LocalSecret::Password(p) }),
            (None, Some(t), None, Some(user)) => Ok(RemoteLogin::Local { user, secret: LocalSecret::Token(t) }),
            (None, None, Some(id_token), None) => Ok(RemoteLogin::Oidc { id_token }),
            (None, None, Some(_), Some(_)) => Err(invalid("an idToken names its user: leave out `user`")),
            (Some(_), None, None, None) | (None, Some(_), None, None) => {
                Err(invalid("say who logs in: `user` with `password` or `apiToken`"))
            }
            _ => Err(invalid("send exactly one of `password`, `apiToken` and `idToken`")),
        }
    }
}

/// Password and API-token checks running at once, server-wide.
static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// Serves `POST /v1/sessions` from `peer` with `body`, on a server that
/// speaks TLS when `tls`.
pub async fn login(
    service: &TaskService,
    mode: coderclaw_core::task::RuntimeMode,
    tls: bool,
    peer: SocketAddr,
    body: LoginRequest,
) -> Result<LoginReply, RuntimeError> {
    crate::auth::peer_allowed(mode, peer)?;
    if !tls && !peer.ip().is_loopback() {
        return Err(RuntimeError::new(
            ErrorCode::Forbidden,
            "log in over https: this server speaks plain http, and a credential must not cross the network in clear \
             text (serve with --tls-cert/--tls-key)",
        ));
    }
    body.credential()?;
    let ttl = body.ttl_secs.map(Duration::from_secs);
    let security = service.shared_security().clone();
    let (session, token) = if body.id_token.is_some() {
        // Fetching the issuer's keys waits on the network, not the CPU.
        let roles = (!body.roles.is_empty()).then_some(body.roles.as_slice());
        security.login_from_peer(peer.ip(), body.credential()?, roles, ttl).await
    } else {
        // Argon2id takes tens of milliseconds of CPU on purpose: not on an
        // async worker (it would stall every connection it serves), and only
        // a few at once (a flood of guesses waits instead of taking every core).
        // The slot goes with the hash, not with the request: a client that
        // hangs up does not free it while the hash still runs.
        let slot = HASHING.acquire().await.map_err(|e| RuntimeError::new(ErrorCode::Internal, e.to_string()))?;
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let roles = (!body.roles.is_empty()).then_some(body.roles.as_slice());
            let credential = body.credential().expect("checked above");
            handle.block_on(security.login_from_peer(peer.ip(), credential, roles, ttl))
        })
        .await
        .map_err(|e| RuntimeError::new(ErrorCode::Internal, format!("logging in: {e}")))?
    }
    .map_err(login_error)?;
    let session = serde_json::to_value(&session).map_err(|e| RuntimeError::new(ErrorCode::Internal, e.to_string()))?;
    Ok(LoginReply { token, session })
}

fn login_error(e: SecurityError) -> RuntimeError {
    match e {
        SecurityError::RateLimited { .. } => e.into(),
        // The issuer's keys could not be fetched: not the caller's fault.
        SecurityError::Oidc(coderclaw_security::oidc::OidcError::Fetch { .. }) => {
            let mut r = RuntimeError::new(ErrorCode::Unavailable, e.to_string());
            r.retry_after_secs = Some(5);
            r
        }
        SecurityError::Identity(_)
        | SecurityError::Oidc(_)
        | SecurityError::Unauthenticated(_)
        | SecurityError::Denied(_) => RuntimeError::new(ErrorCode::Unauthenticated, e.to_string()),
        other => RuntimeError::new(ErrorCode::Internal, other.to_string()),
    }
}

/// Logs in at the `coderclaw serve` at `url` (http or https; `ca` an extra
/// PEM CA): a session token for `--remote` calls. Refuses to send a
/// credential over plain http to another machine.
pub async fn login_remote(url: &str, ca: Option<&Path>, request: &LoginRequest) -> Result<LoginReply, RuntimeError> {
    let http = HttpClient::new(url, ca).map_err(crate::runtime::client_error)?;
    http.check_credentials_allowed().map_err(crate::runtime::client_error)?;
    let body = serde_json::to_vec(request).map_err(|e| invalid(&e.to_string()))?;
    let request = http
        .request(http::Method::POST, "/v1/sessions")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .map_err(|e| invalid(&e.to_string()))?;
    let (parts, bytes) = http.fetch(request, 1 << 20).await.map_err(crate::runtime::client_error)?;
    if !parts.status.is_success() {
        return Err(crate::http_client::reply_error(&parts, &bytes));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        RuntimeError::new(ErrorCode::Internal, format!("the server's reply is not what this client expects: {e}"))
    })
}
