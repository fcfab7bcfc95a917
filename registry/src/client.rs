//! [`RegistryClient`]: the registry API from the client side. It returns
//! what the registry says; checking it (digest, signature against the
//! client's own trust store, no rollback) is the caller's job, because the
//! registry is not trusted to vouch for itself.

use crate::api::{ApiError, ErrorCode, NamespaceKey, PackageInfo, PublishReply, SearchHit, VersionInfo, YankRequest};
use bytes::Bytes;
use coderclaw_core::audit_head::SignedHead;
use coderclaw_core::manifest::Kind;
use coderclaw_core::signed_policy::SignedOrgPolicy;
use coderclaw_net::server::percent_encode;
use coderclaw_net::{ClientError, HttpClient};
use http::{Method, header};
use http_body_util::Full;
use serde::de::DeserializeOwned;
use std::path::Path;
use std::time::Duration;

/// Largest JSON reply read.
const MAX_JSON: usize = 16 << 20;
/// Largest package downloaded.
const MAX_PACKAGE: usize = 256 << 20;
/// Longest a request may take, reply included: a registry that stalls is
/// treated as down (so installs fall back to the cache).
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

/// What went wrong talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryClientError {
    /// The registry answered with an error.
    #[error("the registry refused: {0} ({code})", code = .0.code.as_str())]
    Api(ApiError),
    /// The registry could not be reached.
    #[error("{0}")]
    Unreachable(String),
    /// This client will not send the token this way.
    #[error("{0}")]
    Insecure(String),
    /// The reply was not what this client understands.
    #[error("the registry's reply is not what this client expects: {0}")]
    BadReply(String),
}

impl RegistryClientError {
    /// The API error code, when the registry answered.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            RegistryClientError::Api(e) => Some(e.code),
            _ => None,
        }
    }
}

/// A client of one registry.
pub struct RegistryClient {
    http: HttpClient,
    token: Option<String>,
}

impl RegistryClient {
    /// A client of the registry at `url`, sending `token` when given; `ca`
    /// is an extra PEM CA file for https.
    pub fn new(url: &str, token: Option<String>, ca: Option<&Path>) -> Result<Self, RegistryClientError> {
        let http = HttpClient::new(url, ca)
            .map_err(|e| RegistryClientError::Unreachable(e.to_string()))?
            .with_fetch_timeout(FETCH_TIMEOUT);
        if token.is_some() {
            http.check_credentials_allowed().map_err(|e| RegistryClientError::Insecure(e.to_string()))?;
        }
        Ok(Self { http, token })
    }

    async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&'static str>,
        body: Vec<u8>,
        max: usize,
    ) -> Result<(http::response::Parts, Bytes), RegistryClientError> {
        let mut b = HttpClient::bearer(self.http.request(method, path), self.token.as_deref());
        if let Some(ct) = content_type {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        let request = b.body(Full::new(Bytes::from(body))).map_err(|e| RegistryClientError::BadReply(e.to_string()))?;
        let (parts, bytes) = self.http.fetch(request, max).await.map_err(|e| match e {
            ClientError::Reply { .. } => RegistryClientError::BadReply(e.to_string()),
            _ => RegistryClientError::Unreachable(e.to_string()),
        })?;
        if !parts.status.is_success() {
            #[derive(serde::Deserialize)]
            struct Envelope {
                error: ApiError,
            }
            let e = serde_json::from_slice::<Envelope>(&bytes).map(|e| e.error).unwrap_or_else(|_| {
                ApiError::new(
                    ErrorCode::Internal,
                    format!("HTTP {}: {}", parts.status, String::from_utf8_lossy(&bytes)),
                )
            });
            return Err(RegistryClientError::Api(e));
        }
        Ok((parts, bytes))
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, RegistryClientError> {
        let ct = body.as_ref().map(|_| "application/json");
        let (_, bytes) = self.raw(method, path, ct, body.unwrap_or_default(), MAX_JSON).await?;
        serde_json::from_slice(&bytes).map_err(|e| RegistryClientError::BadReply(e.to_string()))
    }

    fn package_path(id: &str) -> Result<String, RegistryClientError> {
        let skill = coderclaw_core::manifest::SkillId::parse(id)
            .map_err(|e| RegistryClientError::Api(ApiError::new(ErrorCode::InvalidRequest, e)))?;
        Ok(format!("/v1/packages/{}/{}", skill.namespace(), skill.name()))
    }

    /// Every version of `id`.
    pub async fn package(&self, id: &str) -> Result<PackageInfo, RegistryClientError> {
        self.json(Method::GET, &Self::package_path(id)?, None).await
    }

    /// The package file of `id` `version`.
    pub async fn download(&self, id: &str, version: &semver::Version) -> Result<Vec<u8>, RegistryClientError> {
        let path = format!("{}/{version}/download", Self::package_path(id)?);
        let (_, bytes) = self.raw(Method::GET, &path, None, Vec::new(), MAX_PACKAGE).await?;
        Ok(bytes.to_vec())
    }

    /// Publishes a package file.
    pub async fn publish(&self, package: Vec<u8>) -> Result<PublishReply, RegistryClientError> {
        let (_, bytes) =
            self.raw(Method::POST, "/v1/packages", Some("application/octet-stream"), package, MAX_JSON).await?;
        serde_json::from_slice(&bytes).map_err(|e| RegistryClientError::BadReply(e.to_string()))
    }

    /// Yanks `id` `version`.
    pub async fn yank(
        &self,
        id: &str,
        version: &semver::Version,
        reason: &str,
    ) -> Result<VersionInfo, RegistryClientError> {
        let body = serde_json::to_vec(&YankRequest { reason: reason.to_owned() }).unwrap_or_default();
        self.json(Method::POST, &format!("{}/{version}/yank", Self::package_path(id)?), Some(body)).await
    }

    /// Packages matching `query`, of `kind`, in `namespace`.
    pub async fn search(
        &self,
        query: &str,
        kind: Option<Kind>,
        namespace: Option<&str>,
    ) -> Result<Vec<SearchHit>, RegistryClientError> {
        let mut q = vec![format!("q={}", percent_encode(query))];
        if let Some(k) = kind {
            q.push(format!("kind={k}"));
        }
        if let Some(ns) = namespace {
            q.push(format!("namespace={}", percent_encode(ns)));
        }
        self.json(Method::GET, &format!("/v1/search?{}", q.join("&")), None).await
    }

    /// The shared agents of `namespace`.
    pub async fn agents(&self, namespace: &str) -> Result<Vec<SearchHit>, RegistryClientError> {
        self.json(Method::GET, &format!("/v1/agents?namespace={}", percent_encode(namespace)), None).await
    }

    /// The keys of `namespace`.
    pub async fn keys(&self, namespace: &str) -> Result<Vec<NamespaceKey>, RegistryClientError> {
        self.json(Method::GET, &format!("/v1/namespaces/{}/keys", percent_encode(namespace)), None).await
    }

    /// The signed organisation policy of `namespace`, `None` if it has none.
    pub async fn org_policy(&self, namespace: &str) -> Result<Option<SignedOrgPolicy>, RegistryClientError> {
        self.json(Method::GET, &format!("/v1/namespaces/{}/policy", percent_encode(namespace)), None).await
    }

    /// Has the registry witness a signed audit head of this device.
    pub async fn put_audit_head(&self, namespace: &str, head: &SignedHead) -> Result<(), RegistryClientError> {
        let body = serde_json::to_vec(head).map_err(|e| RegistryClientError::BadReply(e.to_string()))?;
        let path = format!("/v1/namespaces/{}/audit-heads", percent_encode(namespace));
        let _: serde_json::Value = self.json(Method::POST, &path, Some(body)).await?;
        Ok(())
    }

    /// The newest audit head the registry witnessed for `device`.
    pub async fn audit_head(&self, namespace: &str, device: &str) -> Result<Option<SignedHead>, RegistryClientError> {
        let path = format!("/v1/namespaces/{}/audit-heads/{}", percent_encode(namespace), percent_encode(device));
        self.json(Method::GET, &path, None).await
    }

    /// Every audit head the registry holds for `device`, oldest first.
    pub async fn audit_head_history(
        &self,
        namespace: &str,
        device: &str,
    ) -> Result<Vec<SignedHead>, RegistryClientError> {
        let path =
            format!("/v1/namespaces/{}/audit-heads/{}/history", percent_encode(namespace), percent_encode(device));
        self.json(Method::GET, &path, None).await
    }

    /// Publishes a signed organisation policy.
    pub async fn put_org_policy(&self, doc: &SignedOrgPolicy) -> Result<(), RegistryClientError> {
        let body = serde_json::to_vec(doc).map_err(|e| RegistryClientError::BadReply(e.to_string()))?;
        let _: serde_json::Value = self
            .json(Method::PUT, &format!("/v1/namespaces/{}/policy", percent_encode(&doc.namespace)), Some(body))
            .await?;
        Ok(())
    }
}
