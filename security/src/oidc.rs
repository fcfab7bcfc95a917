//! OIDC ID-token validation: the signature against the issuer's published
//! keys (JWKS over HTTP(S)), then `iss`, `aud`, `exp` and `nbf`.
//!
//! Accepted algorithms are the asymmetric ones issuers use: RS256 (GitHub,
//! Google), ES256 and EdDSA (Ed25519). `none` and shared-secret (HS*)
//! tokens are refused. The algorithm must agree with the key type the JWKS
//! publishes for the token's `kid`; an unknown `kid` makes one refetch (the
//! issuer may have rotated keys) and is then refused.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use coderclaw_core::clock::now_ms;
use coderclaw_core::policy::OidcIssuer;
use coderclaw_net::HttpClient;
use http_body_util::Full;
use hyper::body::Bytes;
use ring::signature::{self, UnparsedPublicKey};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_MS: u64 = 30_000;
/// Largest discovery or JWKS document accepted.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// Longest a JWKS or discovery fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a token was refused. The variants are what an operator needs to fix
/// a setup; the token itself is never quoted.
#[derive(Debug, Error)]
pub enum OidcError {
    /// Not three base64url parts with JSON header and claims.
    #[error("the ID token is malformed: {0}")]
    Malformed(String),
    /// `alg` is not one of RS256, ES256, EdDSA.
    #[error("the ID token uses algorithm {0:?}: only RS256, ES256 and EdDSA are accepted")]
    Algorithm(String),
    /// No configured issuer has this `iss`.
    #[error("issuer {0:?} is not configured under identity.oidc")]
    UnknownIssuer(String),
    /// The provider of this issuer is not enabled.
    #[error("identity provider `{0}` is not enabled in identity.providers")]
    ProviderDisabled(String),
    /// `kid` not in the issuer's JWKS, even after a refetch.
    #[error("the issuer publishes no key with kid {0:?}")]
    UnknownKey(String),
    /// The key type does not fit the algorithm.
    #[error("key {kid:?} is a {kty} key and cannot verify {alg}")]
    KeyMismatch {
        /// Key id.
        kid: String,
        /// Key type.
        kty: String,
        /// Token algorithm.
        alg: String,
    },
    /// The signature does not verify.
    #[error("the ID token's signature does not verify")]
    BadSignature,
    /// `aud` does not contain the configured audience.
    #[error("the ID token is for audience {found}, not {expected:?}")]
    Audience {
        /// Configured.
        expected: String,
        /// Found in the token.
        found: String,
    },
    /// `exp` is in the past.
    #[error("the ID token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("the ID token is not valid yet")]
    NotYetValid,
    /// Fetching the discovery document or the JWKS failed.
    #[error("cannot fetch {url}: {message}")]
    Fetch {
        /// What was fetched.
        url: String,
        /// Why it failed.
        message: String,
    },
}

/// A validated identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcIdentity {
    /// The configured issuer's name.
    pub issuer: String,
    /// `sub`.
    pub subject: String,
    /// `email`, when present.
    pub email: Option<String>,
    /// User id: `issuer-name:subject`.
    pub user: String,
    /// Expiry of the token, Unix milliseconds.
    pub expires_at_ms: u64,
    /// The token's string claims (`sub`, `repository`, `ref`, ...), signed,
    /// for the issuer's role rules.
    pub claims: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: Audience,
    exp: u64,
    nbf: Option<u64>,
    email: Option<String>,
    /// Every other claim (role rules match the string ones).
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Discovery {
    jwks_uri: String,
}

/// Validates ID tokens for the configured issuers, caching each issuer's
/// keys for the verifier's lifetime.
#[derive(Clone)]
pub struct OidcVerifier {
    issuers: Vec<OidcIssuer>,
    enabled: Vec<coderclaw_core::policy::Provider>,
    keys: Arc<Mutex<HashMap<String, Vec<Jwk>>>>,
}

impl OidcVerifier {
    /// A verifier for `issuers`, accepting only `enabled` providers.
    pub fn new(issuers: Vec<OidcIssuer>, enabled: Vec<coderclaw_core::policy::Provider>) -> Self {
        OidcVerifier { issuers, enabled, keys: Arc::default() }
    }

    /// This verifier for other `issuers` and `enabled` providers (the
    /// configuration changed), keeping the keys fetched so far: they are
    /// cached per issuer URL, and an issuer removed is no longer consulted.
    pub fn reconfigured(&self, issuers: Vec<OidcIssuer>, enabled: Vec<coderclaw_core::policy::Provider>) -> Self {
        OidcVerifier { issuers, enabled, keys: self.keys.clone() }
    }

    /// Validates `token`; returns the identity and the issuer entry.
    pub async fn verify(&self, token: &str) -> Result<(OidcIdentity, OidcIssuer), OidcError> {
        let mut parts = token.trim().split('.');
        let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(OidcError::Malformed("expected three dot-separated parts".into()));
        };
        let decode = |part: &str, what: &str| {
            URL_SAFE_NO_PAD.decode(part).map_err(|_| OidcError::Malformed(format!("the {what} is not base64url")))
        };
        let header: Header =
            serde_json::from_slice(&decode(h, "header")?).map_err(|e| OidcError::Malformed(format!("header: {e}")))?;
        let claims: Claims =
            serde_json::from_slice(&decode(c, "claims")?).map_err(|e| OidcError::Malformed(format!("claims: {e}")))?;
        let sig = decode(s, "signature")?;
        if !matches!(header.alg.as_str(), "RS256" | "ES256" | "EdDSA") {
            return Err(OidcError::Algorithm(header.alg));
        }
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.issuer_url().is_some_and(|u| u.trim_end_matches('/') == claims.iss.trim_end_matches('/')))
            .ok_or_else(|| OidcError::UnknownIssuer(claims.iss.clone()))?;
        if !self.enabled.contains(&issuer.provider) {
            return Err(OidcError::ProviderDisabled(issuer.provider.as_str().into()));
        }
        let kid = header.kid.unwrap_or_default();
        let jwk = self.key_for(issuer, &kid).await?;
        let signed = &token.trim()[..h.len() + 1 + c.len()];
        verify_signature(&jwk, &kid, &header.alg, signed.as_bytes(), &sig)?;

        // Claims are checked only after the signature: unsigned data never
        // decides anything.
        let auds = match claims.aud {
            Audience::One(a) => vec![a],
            Audience::Many(v) => v,
        };
        if !auds.contains(&issuer.audience) {
            return Err(OidcError::Audience { expected: issuer.audience.clone(), found: format!("{auds:?}") });
        }
        let now = now_ms();
        let exp_ms = claims.exp.saturating_mul(1000);
        if exp_ms.saturating_add(LEEWAY_MS) <= now {
            return Err(OidcError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| nbf.saturating_mul(1000) > now + LEEWAY_MS) {
            return Err(OidcError::NotYetValid);
        }
        let mut strings: std::collections::BTreeMap<String, String> = claims
            .other
            .into_iter()
            .filter_map(|(k, v)| match v {
                serde_json::Value::String(s) => Some((k, s)),
                _ => None,
            })
            .collect();
        strings.insert("sub".into(), claims.sub.clone());
        let identity = OidcIdentity {
            issuer: issuer.name.clone(),
            user: format!("{}:{}", issuer.name, claims.sub),
            subject: claims.sub,
            email: claims.email,
            expires_at_ms: exp_ms,
            claims: strings,
        };
        Ok((identity, issuer.clone()))
    }

    async fn key_for(&self, issuer: &OidcIssuer, kid: &str) -> Result<Jwk, OidcError> {
        let find = |keys: &[Jwk]| keys.iter().find(|k| k.kid.as_deref().unwrap_or("") == kid).cloned();
        if let Some(k) = self.keys.lock().unwrap_or_else(|p| p.into_inner()).get(&issuer.name).and_then(|v| find(v)) {
            return Ok(k);
        }
        let fresh = fetch_jwks(issuer).await?;
        let found = find(&fresh);
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).insert(issuer.name.clone(), fresh);
        found.ok_or_else(|| OidcError::UnknownKey(kid.to_owned()))
    }
}

fn verify_signature(jwk: &Jwk, kid: &str, alg: &str, signed: &[u8], sig: &[u8]) -> Result<(), OidcError> {
    let mismatch = || OidcError::KeyMismatch { kid: kid.to_owned(), kty: jwk.kty.clone(), alg: alg.to_owned() };
    if jwk.alg.as_deref().is_some_and(|a| a != alg) {
        return Err(mismatch());
    }
    let b64 = |v: &Option<String>| {
        v.as_deref()
            .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
            .ok_or_else(|| OidcError::Malformed(format!("key {kid:?} is incomplete")))
    };
    let ok = match (alg, jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("RS256", "RSA", _) => {
            let key = signature::RsaPublicKeyComponents { n: b64(&jwk.n)?, e: b64(&jwk.e)? };
            key.verify(&signature::RSA_PKCS1_2048_8192_SHA256, signed, sig).is_ok()
        }
        ("ES256", "EC", Some("P-256")) => {
            let mut point = vec![4u8];
            point.extend(b64(&jwk.x)?);
            point.extend(b64(&jwk.y)?);
            UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point).verify(signed, sig).is_ok()
        }
        ("EdDSA", "OKP", Some("Ed25519")) => {
            UnparsedPublicKey::new(&signature::ED25519, b64(&jwk.x)?).verify(signed, sig).is_ok()
        }
        _ => return Err(mismatch()),
    };
    if ok { Ok(()) } else { Err(OidcError::BadSignature) }
}

async fn fetch_jwks(issuer: &OidcIssuer) -> Result<Vec<Jwk>, OidcError> {
    let uri = match &issuer.jwks_uri {
        Some(u) => u.clone(),
        None => {
            let base = issuer.issuer_url().unwrap_or_default().trim_end_matches('/');
            let url = format!("{base}/.well-known/openid-configuration");
            let doc: Discovery = serde_json::from_slice(&fetch(&url, None, "signing keys").await?)
                .map_err(|e| OidcError::Fetch { url, message: format!("not a discovery document: {e}") })?;
            doc.jwks_uri
        }
    };
    let jwks: Jwks = serde_json::from_slice(&fetch(&uri, None, "signing keys").await?)
        .map_err(|e| OidcError::Fetch { url: uri.clone(), message: format!("not a JWKS document: {e}") })?;
    Ok(jwks.keys)
}

/// GETs `url` (with `bearer`, if given): https verified against the web
/// PKI roots, or http to loopback only. `what` names what is fetched, for
/// the refusal.
async fn fetch(url: &str, bearer: Option<&str>, what: &str) -> Result<Vec<u8>, OidcError> {
    Ok(fetch_with_headers(url, bearer, what).await?.1)
}

/// How far `issuer`'s clock is ahead of this machine's (negative: behind),
/// in seconds, from the `Date` of its discovery document. Tokens carry
/// `exp`, `nbf` and `iat` in the issuer's time: a skew of more than a
/// minute refuses good tokens or keeps expired ones.
pub async fn clock_skew(issuer: &OidcIssuer) -> Result<i64, OidcError> {
    let base = issuer.issuer_url().unwrap_or_default().trim_end_matches('/');
    let url = format!("{base}/.well-known/openid-configuration");
    let (headers, _) = fetch_with_headers(&url, None, "discovery documents").await?;
    let fail = |message: String| OidcError::Fetch { url: url.clone(), message };
    let date = headers.get(hyper::header::DATE).ok_or_else(|| fail("the reply has no Date header".into()))?;
    let date = date.to_str().ok().and_then(|d| httpdate::parse_http_date(d).ok());
    let theirs = date.ok_or_else(|| fail("its Date header is not an HTTP date".into()))?;
    let secs = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    Ok(secs(theirs) - secs(std::time::SystemTime::now()))
}

async fn fetch_with_headers(
    url: &str,
    bearer: Option<&str>,
    what: &str,
) -> Result<(hyper::HeaderMap, Vec<u8>), OidcError> {
    let fail = |message: String| OidcError::Fetch { url: url.to_owned(), message };
    let client = HttpClient::new(url, None).map_err(|e| fail(e.to_string()))?.with_fetch_timeout(FETCH_TIMEOUT);
    // Keys fetched in clear text could be swapped, and a bearer token read,
    // by anyone on the path: plain http only to this machine (a local test
    // or sidecar).
    if !client.is_https() && !client.is_loopback() {
        return Err(fail(format!("{what} are fetched over https only (http only on loopback)")));
    }
    let request = HttpClient::bearer(client.request(hyper::Method::GET, ""), bearer)
        .header(hyper::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::new()))
        .map_err(|e| fail(e.to_string()))?;
    let (parts, body) = client.fetch(request, MAX_DOCUMENT_BYTES).await.map_err(|e| fail(e.to_string()))?;
    if !parts.status.is_success() {
        return Err(fail(format!("HTTP {}", parts.status)));
    }
    Ok((parts.headers, body.to_vec()))
}

/// The environment variables a GitHub Actions runner sets for a job with
/// `permissions: id-token: write`.
pub const GITHUB_ACTIONS_REQUEST_URL: &str = "ACTIONS_ID_TOKEN_REQUEST_URL";
/// See [`GITHUB_ACTIONS_REQUEST_URL`].
pub const GITHUB_ACTIONS_REQUEST_TOKEN: &str = "ACTIONS_ID_TOKEN_REQUEST_TOKEN";

/// Asks the GitHub Actions runner for the workflow's OIDC ID token with
/// `audience` (`request_url` and `request_token` from the job's
/// environment): no stored secret needed. The request token travels over
/// https, or plain http only to loopback.
pub async fn github_actions_id_token(
    request_url: &str,
    request_token: &str,
    audience: &str,
) -> Result<String, OidcError> {
    let sep = if request_url.contains('?') { '&' } else { '?' };
    let url = format!("{request_url}{sep}audience={}", coderclaw_net::server::percent_encode(audience));
    let body = fetch(&url, Some(request_token), "ID tokens").await?;
    let fail = |message: String| OidcError::Fetch { url: request_url.to_owned(), message };
    #[derive(Deserialize)]
    struct Reply {
        value: String,
    }
    let reply: Reply = serde_json::from_slice(&body).map_err(|e| fail(format!("not the runner's token reply: {e}")))?;
    Ok(reply.value)
}
