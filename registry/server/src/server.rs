//! The registry's HTTP API on hyper (see `docs/registry-api.md` and
//! `docs/registry-openapi.json`, served at `/v1/openapi.json`).
//!
//! Reads of a public namespace need no token; a private namespace needs a
//! token of that namespace (any scope). Publishing, yanking and the
//! organisation policy need a token with the matching scope. Errors are
//! JSON `{"error": {"code", "message"}}`.

use crate::store::{RegistryStore, TokenInfo};
use bytes::Bytes;
use coderclaw_core::audit_head::SignedHead;
use coderclaw_core::manifest::Kind;
use coderclaw_core::signed_policy::SignedOrgPolicy;
use coderclaw_net::server::{BodyError, bearer_token, bytes_response, json_response, query_pairs, read_body};
use coderclaw_net::throttle::FailureThrottle;
use coderclaw_net::{Body, RunningServer};
use coderclaw_registry::api::{ApiError, ErrorCode, YankRequest};
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tracing::Instrument;

/// The OpenAPI document of the registry API.
pub const OPENAPI_JSON: &str = include_str!("../../../docs/registry-openapi.json");

/// How the registry listens. Defaults: 127.0.0.1:7421, 64 MiB uploads, no TLS.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Address to bind.
    pub listen: SocketAddr,
    /// Largest package accepted (413 above).
    pub max_upload_bytes: usize,
    /// PEM certificate chain and key: serve https.
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 7421)), max_upload_bytes: 64 << 20, tls: None }
    }
}

/// Serves `store` in the background.
pub async fn serve(store: Arc<RegistryStore>, config: RegistryConfig) -> Result<RunningServer, String> {
    let tls = match &config.tls {
        Some((cert, key)) => Some(coderclaw_net::tls::acceptor(cert, key)?),
        None => None,
    };
    let listen = config.listen;
    let config = Arc::new(config);
    let throttle = Arc::new(FailureThrottle::default());
    coderclaw_net::serve(listen, tls, move |peer, req| {
        let (store, config, throttle) = (store.clone(), config.clone(), throttle.clone());
        async move { handle(store, &config, &throttle, peer, req).await }
    })
    .await
}

fn err(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError::new(code, message)
}

fn error_response(e: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = json_response(status, &serde_json::json!({ "error": e }));
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    }
    if e.code == ErrorCode::RateLimited {
        r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(60u64));
    }
    r
}

async fn handle(
    store: Arc<RegistryStore>,
    config: &RegistryConfig,
    throttle: &FailureThrottle,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let span = tracing::info_span!("registry", method = %req.method(), path = %req.uri().path(), %peer);
    match route(store, config, throttle, peer, req).instrument(span).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(code = ?e.code, message = %e.message, "refused");
            error_response(&e)
        }
    }
}

fn required(who: Option<TokenInfo>) -> Result<TokenInfo, ApiError> {
    who.ok_or_else(|| {
        err(
            ErrorCode::Unauthenticated,
            "this call needs a token: send `Authorization: Bearer <token>` (see `coderclaw registry token create`)",
        )
    })
}

fn can_read(store: &RegistryStore, who: Option<&TokenInfo>, namespace: &str) -> Result<(), ApiError> {
    if store.namespace_is_public(namespace)? || who.is_some_and(|t| t.namespace == namespace) {
        return Ok(());
    }
    // Private namespaces are indistinguishable from missing ones.
    Err(crate::store::not_found_namespace(namespace))
}

async fn body(req: Request<Incoming>, max: usize) -> Result<Bytes, ApiError> {
    read_body(req.into_body(), max).await.map_err(|e| match e {
        BodyError::TooLarge(_) => err(ErrorCode::PayloadTooLarge, format!("{e}: the registry's upload limit")),
        BodyError::Read(_) => err(ErrorCode::InvalidRequest, e.to_string()),
    })
}

fn ok(value: &impl serde::Serialize) -> Result<Response<Body>, ApiError> {
    Ok(json_response(StatusCode::OK, value))
}

fn json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| err(ErrorCode::InvalidRequest, format!("the request body is not valid JSON for this call: {e}")))
}

/// Store calls touch SQLite and the disk: off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| err(ErrorCode::Internal, e.to_string()))?
}

fn search_params(query: &str) -> Result<(String, Option<Kind>, Option<String>), ApiError> {
    let (mut q, mut kind, mut namespace) = (String::new(), None, None);
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "q" => q = v,
            "kind" => kind = Some(v.parse().map_err(|e: String| err(ErrorCode::InvalidRequest, e))?),
            "namespace" => namespace = Some(v),
            other => {
                return Err(err(
                    ErrorCode::InvalidRequest,
                    format!("unknown query parameter `{other}`: use q, kind, namespace"),
                ));
            }
        }
    }
    Ok((q, kind, namespace))
}

async fn route(
    store: Arc<RegistryStore>,
    config: &RegistryConfig,
    throttle: &FailureThrottle,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let segments: Vec<String> = path.split('/').skip(1).map(str::to_owned).collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = req.method().clone();
    if segs == ["v1", "openapi.json"] && method == Method::GET {
        return Ok(bytes_response(StatusCode::OK, "application/json", Bytes::from_static(OPENAPI_JSON.as_bytes())));
    }
    // An unknown, expired or revoked token is refused even where none is
    // needed: the caller should know its token is no good.
    let who = match bearer_token(&req).map_err(|m| err(ErrorCode::Unauthenticated, m))? {
        Some(t) => {
            if let (Err(t), _) = throttle.check(peer.ip()) {
                return Err(err(
                    ErrorCode::RateLimited,
                    format!(
                        "too many failed authentications from this address: further attempts are refused for {} s",
                        t.retry_after.as_secs().max(1)
                    ),
                ));
            }
            let store = store.clone();
            let checked = blocking(move || store.authenticate(&t)).await;
            if checked.is_err()
                && let coderclaw_net::throttle::Failure::LimitReached { failures, .. } = throttle.failed(peer.ip())
            {
                tracing::warn!(%peer, failures, "failed registry authentications: refusing this peer for a while");
            }
            Some(checked?)
        }
        None => None,
    };
    match (&method, segs.as_slice()) {
        (&Method::GET, ["v1", "search"]) | (&Method::GET, ["v1", "agents"]) => {
            let (q, mut kind, namespace) = search_params(req.uri().query().unwrap_or(""))?;
            if segs[1] == "agents" {
                kind = Some(Kind::Agent);
            }
            let hits = blocking(move || {
                if let Some(ns) = &namespace {
                    can_read(&store, who.as_ref(), ns)?;
                }
                let readable = |ns: &str| can_read(&store, who.as_ref(), ns).is_ok();
                store.search(&q, kind, namespace.as_deref(), readable)
            })
            .await?;
            ok(&hits)
        }
        (&Method::POST, ["v1", "packages"]) => {
            let who = required(who)?;
            // Refuse before reading up to the upload limit.
            if who.scope != crate::store::Scope::Publish {
                return Err(err(
                    ErrorCode::InsufficientScope,
                    format!("token {} has scope `{}`: publishing needs a `publish` token", who.id, who.scope.as_str()),
                ));
            }
            let bytes = body(req, config.max_upload_bytes).await?;
            let reply = blocking(move || store.publish(&who, &bytes)).await?;
            let status = if reply.already_published { StatusCode::OK } else { StatusCode::CREATED };
            Ok(json_response(status, &reply))
        }
        (&Method::GET, ["v1", "packages", ns, name]) => {
            let (ns, id) = (ns.to_string(), format!("{ns}/{name}"));
            let info = blocking(move || {
                can_read(&store, who.as_ref(), &ns)?;
                store.package(&id)
            })
            .await?;
            ok(&info)
        }
        (&Method::GET, ["v1", "packages", ns, name, version, "download"]) => {
            let (ns, id, version) = (ns.to_string(), format!("{ns}/{name}"), version.to_string());
            let (sha, bytes) = blocking(move || {
                can_read(&store, who.as_ref(), &ns)?;
                let v = semver::Version::parse(&version)
                    .map_err(|e| err(ErrorCode::InvalidRequest, format!("`{version}` is not a version: {e}")))?;
                let sha = store.file_of(&id, &v)?;
                let bytes = store.blob(&sha)?;
                Ok((sha, bytes))
            })
            .await?;
            let mut r = bytes_response(StatusCode::OK, "application/octet-stream", Bytes::from(bytes));
            if let Ok(v) = header::HeaderValue::from_str(&sha) {
                r.headers_mut().insert("x-coderclaw-sha256", v);
            }
            Ok(r)
        }
        (&Method::POST, ["v1", "packages", ns, name, version, "yank"]) => {
            let who = required(who)?;
            let (id, version) = (format!("{ns}/{name}"), version.to_string());
            let request: YankRequest = json(&body(req, 64 << 10).await?)?;
            let v = blocking(move || store.yank(&who, &id, &version, &request.reason)).await?;
            ok(&v)
        }
        (&Method::GET, ["v1", "namespaces", ns, "keys"]) => {
            let ns = ns.to_string();
            let keys = blocking(move || {
                can_read(&store, who.as_ref(), &ns)?;
                store.keys(&ns)
            })
            .await?;
            ok(&keys)
        }
        (&Method::GET, ["v1", "namespaces", ns, "policy"]) => {
            let ns = ns.to_string();
            // `null` when the namespace has published none.
            let doc = blocking(move || {
                can_read(&store, who.as_ref(), &ns)?;
                store.org_policy(&ns)
            })
            .await?;
            ok(&doc)
        }
        (&Method::PUT, ["v1", "namespaces", ns, "policy"]) => {
            let who = required(who)?;
            let ns = ns.to_string();
            let doc: SignedOrgPolicy = json(&body(req, 1 << 20).await?)?;
            if doc.namespace != ns {
                return Err(err(
                    ErrorCode::InvalidRequest,
                    format!("the document is for `{}`, the URL for `{ns}`", doc.namespace),
                ));
            }
            let serial = doc.serial;
            blocking(move || store.put_org_policy(&who, &doc)).await?;
            ok(&serde_json::json!({ "namespace": ns, "serial": serial }))
        }
        (&Method::POST, ["v1", "namespaces", ns, "audit-heads"]) => {
            let who = required(who)?;
            let ns = ns.to_string();
            let head: SignedHead = json(&body(req, 16 << 10).await?)?;
            let seq = head.seq;
            blocking(move || store.put_audit_head(&who, &ns, &head)).await?;
            ok(&serde_json::json!({ "witnessed": seq }))
        }
        (&Method::GET, ["v1", "namespaces", ns, "audit-heads", device]) => {
            let (ns, device) = (ns.to_string(), device.to_string());
            // `null` when none was witnessed.
            let head = blocking(move || {
                can_read(&store, who.as_ref(), &ns)?;
                store.audit_head(&ns, &device)
            })
            .await?;
            ok(&head)
        }
        (&Method::GET, ["v1", "namespaces", ns, "audit-heads", device, "history"]) => {
            let (ns, device) = (ns.to_string(), device.to_string());
            let heads = blocking(move || {
                can_read(&store, who.as_ref(), &ns)?;
                store.audit_head_history(&ns, &device)
            })
            .await?;
            ok(&heads)
        }
        (_, ["v1", ..]) => Err(err(ErrorCode::NotFound, format!("no route {method} {path}: see /v1/openapi.json"))),
        _ => Err(err(ErrorCode::NotFound, format!("no route {method} {path}: the API lives under /v1"))),
    }
}
