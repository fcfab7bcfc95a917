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

use super::service::{ErrorCode, RuntimeError, TaskService};
use bytes::Bytes;
use coderclaw_core::decision::Subject;
use coderclaw_core::task::{RuntimeMode, TaskFilter, TaskStatus, TaskSubmitRequest};
use futures_util::StreamExt;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use serde::Serialize;
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

/// The OpenAPI document of this API (committed at `docs/openapi.json`).
pub const OPENAPI_JSON: &str = include_str!("../../../docs/openapi.json");

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
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7420)),
            mode: RuntimeMode::LocalOnly,
            max_body_bytes: 1 << 20,
            tls: None,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration contradicts itself.
    #[error("{0}")]
    Config(String),
    /// Binding or TLS setup failed.
    #[error("{0}")]
    Io(String),
}

/// A running server; stops when [`RunningServer::shutdown`] is called or
/// it is dropped.
pub struct RunningServer {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// Whether it serves https.
    pub tls: bool,
    stop: watch::Sender<bool>,
}

impl RunningServer {
    /// The base URL, e.g. `http://127.0.0.1:7420`.
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.addr)
    }

    /// Stops accepting connections.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Binds and starts serving `service` in the background.
pub async fn serve(service: Arc<TaskService>, config: ServerConfig) -> Result<RunningServer, ServerError> {
    if config.mode == RuntimeMode::LocalOnly && !config.listen.ip().is_loopback() {
        return Err(ServerError::Config(format!(
            "mode local-only binds loopback only, not {}: listen on 127.0.0.1 or use --mode remote-enabled",
            config.listen
        )));
    }
    let tls = match &config.tls {
        Some((cert, key)) => Some(tls_acceptor(cert, key)?),
        None => None,
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| ServerError::Io(format!("cannot bind {}: {e}", config.listen)))?;
    let addr = listener.local_addr().map_err(|e| ServerError::Io(e.to_string()))?;
    let (stop, mut stopped) = watch::channel(false);
    let is_tls = tls.is_some();
    let config = Arc::new(config);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => { tracing::warn!(error = %e, "accept failed"); continue; }
                },
                _ = stopped.changed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let (service, config, tls) = (service.clone(), config.clone(), tls.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let (service, config) = (service.clone(), config.clone());
                    async move { Ok::<_, Infallible>(handle(&service, &config, peer, req).await) }
                });
                let http = hyper::server::conn::http1::Builder::new();
                let result = match tls {
                    Some(acceptor) => match acceptor.accept(tcp).await {
                        Ok(stream) => http.serve_connection(hyper_util::rt::TokioIo::new(stream), svc).await,
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                    },
                    None => http.serve_connection(hyper_util::rt::TokioIo::new(tcp), svc).await,
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
            });
        }
    });
    tracing::info!(%addr, tls = is_tls, "serving");
    Ok(RunningServer { addr, tls: is_tls, stop })
}

fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> Result<tokio_rustls::TlsAcceptor, ServerError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let fail = |what: &std::path::Path, e: String| ServerError::Io(format!("TLS: {}: {e}", what.display()));
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| fail(cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(fail(cert, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| fail(key, e.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Io(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServerError::Io(format!("TLS: the certificate and key do not fit together: {e}")))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

type Body = BoxBody<Bytes, Infallible>;

fn json_response(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

fn error_response(e: &RuntimeError) -> Response<Body> {
    let status = StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = json_response(status, &json!({ "error": { "code": e.code, "message": e.message } }));
    if e.code == ErrorCode::Unauthenticated {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
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
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let span = tracing::debug_span!("request", method = %req.method(), path = %req.uri().path(), %peer);
    match route(service, config, peer, req).instrument(span).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

fn bearer(req: &Request<Incoming>) -> Result<Option<String>, RuntimeError> {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else { return Ok(None) };
    let text = value.to_str().map_err(|_| err(ErrorCode::Unauthenticated, "the Authorization header is not text"))?;
    let token = text
        .strip_prefix("Bearer ")
        .ok_or_else(|| err(ErrorCode::Unauthenticated, "use `Authorization: Bearer <session token>`"))?;
    Ok(Some(token.trim().to_owned()))
}

fn authenticate(
    service: &TaskService,
    config: &ServerConfig,
    peer: SocketAddr,
    req: &Request<Incoming>,
) -> Result<Subject, RuntimeError> {
    if config.mode == RuntimeMode::LocalOnly && !peer.ip().is_loopback() {
        return Err(err(ErrorCode::Forbidden, "this server is local-only: remote sessions are refused"));
    }
    let Some(token) = bearer(req)? else {
        return Err(err(
            ErrorCode::Unauthenticated,
            "every call needs a session: send `Authorization: Bearer <token>` (get one with `coderclaw login`; \
             the CLI sends --token or --session)",
        ));
    };
    service.authenticate(Some(&token))
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>, max: usize) -> Result<T, RuntimeError> {
    let body = Limited::new(req.into_body(), max).collect().await.map_err(|e| {
        if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
            err(ErrorCode::PayloadTooLarge, format!("the request body is over {max} bytes"))
        } else {
            err(ErrorCode::InvalidRequest, format!("cannot read the request body: {e}"))
        }
    })?;
    serde_json::from_slice(&body.to_bytes())
        .map_err(|e| err(ErrorCode::InvalidRequest, format!("the request body is not valid JSON for this call: {e}")))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct InputBody {
    answer: String,
}

async fn route(
    service: &TaskService,
    config: &ServerConfig,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, RuntimeError> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let method = req.method().clone();
    if segments == ["v1", "openapi.json"] && method == Method::GET {
        let r = Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(OPENAPI_JSON.as_bytes())).boxed())
            .map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
        return Ok(r);
    }
    let who = authenticate(service, config, peer, &req)?;
    match (&method, segments.as_slice()) {
        (&Method::GET, ["v1", "status"]) => Ok(ok(&service.status(&who))),
        (&Method::GET, ["v1", "skills"]) => Ok(ok(&service.skills(&who)?)),
        (&Method::GET, ["v1", "agents"]) => Ok(ok(&service.agents(&who)?)),
        (&Method::POST, ["v1", "tasks"]) => {
            let body: TaskSubmitRequest = read_json(req, config.max_body_bytes).await?;
            let state = service.submit(&who, body).await?;
            Ok(json_response(StatusCode::CREATED, &state))
        }
        (&Method::GET, ["v1", "tasks"]) => {
            let filter = parse_filter(req.uri().query().unwrap_or(""))?;
            Ok(ok(&service.list(&who, filter)?))
        }
        (&Method::GET, ["v1", "tasks", id]) => Ok(ok(&service.get(&who, id)?)),
        (&Method::GET, ["v1", "tasks", id, "events"]) => Ok(ok(&service.events(&who, id)?)),
        (&Method::GET, ["v1", "tasks", id, "stream"]) => {
            let stream = service.stream(&who, id)?;
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
        (&Method::POST, ["v1", "tasks", id, "input"]) => {
            let id = id.to_string();
            let body: InputBody = read_json(req, config.max_body_bytes).await?;
            Ok(ok(&service.respond(&who, &id, body.answer)?))
        }
        (&Method::POST, ["v1", "tasks", id, "pause"]) => Ok(ok(&service.set_paused(&who, id, true)?)),
        (&Method::POST, ["v1", "tasks", id, "resume"]) => Ok(ok(&service.set_paused(&who, id, false)?)),
        (_, ["v1", ..]) => Err(err(ErrorCode::NotFound, format!("no route {method} {path}: see /v1/openapi.json"))),
        _ => Err(err(ErrorCode::NotFound, format!("no route {method} {path}: the API lives under /v1"))),
    }
}

fn parse_filter(query: &str) -> Result<TaskFilter, RuntimeError> {
    let mut filter = TaskFilter::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match k {
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

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
