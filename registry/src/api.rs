//! The registry's wire types, shared by the server and the client. JSON
//! field names are camelCase; errors are `{"error": {"code", "message"}}`
//! with a stable [`ErrorCode`]. See `docs/registry-api.md`.

use serde::{Deserialize, Serialize};

/// Stable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed.
    InvalidRequest,
    /// The uploaded file is not a valid package.
    BadPackage,
    /// No token, or a token the registry does not know.
    Unauthenticated,
    /// The token expired.
    TokenExpired,
    /// The token was revoked.
    TokenRevoked,
    /// The token's scope does not allow this.
    InsufficientScope,
    /// The token is for another namespace.
    WrongNamespace,
    /// The package's signature is not by a key the namespace authorises.
    SignatureRejected,
    /// No such namespace, package or version.
    NotFound,
    /// This version was published already, with other bytes.
    VersionExists,
    /// An organisation policy not newer than the one the registry holds.
    StalePolicy,
    /// The upload is over the size limit.
    PayloadTooLarge,
    /// The registry failed.
    Internal,
    /// Too many failed authentications from this address.
    RateLimited,
}

impl ErrorCode {
    /// The code as the API writes it (`version_exists`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::BadPackage => "bad_package",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::TokenRevoked => "token_revoked",
            ErrorCode::InsufficientScope => "insufficient_scope",
            ErrorCode::WrongNamespace => "wrong_namespace",
            ErrorCode::SignatureRejected => "signature_rejected",
            ErrorCode::NotFound => "not_found",
            ErrorCode::VersionExists => "version_exists",
            ErrorCode::StalePolicy => "stale_policy",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Internal => "internal",
            ErrorCode::RateLimited => "rate_limited",
        }
    }

    /// The HTTP status this code is sent with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest | ErrorCode::BadPackage => 400,
            ErrorCode::Unauthenticated | ErrorCode::TokenExpired | ErrorCode::TokenRevoked => 401,
            ErrorCode::InsufficientScope | ErrorCode::WrongNamespace | ErrorCode::SignatureRejected => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::VersionExists | ErrorCode::StalePolicy => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::Internal => 500,
            ErrorCode::RateLimited => 429,
        }
    }
}

/// An error as the API sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// Stable code.
    pub code: ErrorCode,
    /// For people.
    pub message: String,
}

impl ApiError {
    /// An error with `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// One published version of a package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    /// Semantic version.
    pub version: semver::Version,
    /// The package digest (what the signature covers).
    pub digest: String,
    /// SHA-256 of the package file: the blob's address.
    pub sha256: String,
    /// File size in bytes.
    pub size: u64,
    /// Key id of the signer the registry accepted.
    pub signer: String,
    /// When it was published (Unix seconds).
    pub published_at: u64,
    /// Set when yanked: new installs skip it.
    pub yanked: bool,
    /// Why it was yanked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yank_reason: Option<String>,
    /// The manifest, as signed.
    pub manifest: coderclaw_core::manifest::Manifest,
}

/// A package (one id) with every version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PackageInfo {
    /// `namespace/name`.
    pub id: String,
    /// `skill` or `agent`, of the newest version.
    pub kind: coderclaw_core::manifest::Kind,
    /// The registry's change counter at this package's last change. It
    /// only grows: a client refuses metadata older than what it has seen.
    pub serial: u64,
    /// Every version, oldest first.
    pub versions: Vec<VersionInfo>,
}

impl PackageInfo {
    /// The highest version matching `req` that is not yanked.
    pub fn resolve(&self, req: &semver::VersionReq) -> Option<&VersionInfo> {
        self.versions.iter().filter(|v| !v.yanked && req.matches(&v.version)).max_by(|a, b| a.version.cmp(&b.version))
    }

    /// The version `v`, yanked or not.
    pub fn exact(&self, v: &semver::Version) -> Option<&VersionInfo> {
        self.versions.iter().find(|x| &x.version == v)
    }
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchHit {
    /// `namespace/name`.
    pub id: String,
    /// `skill` or `agent`.
    pub kind: coderclaw_core::manifest::Kind,
    /// Description of the newest version.
    pub description: String,
    /// The newest version that is not yanked, if any.
    pub latest: Option<semver::Version>,
    /// What that version's signed manifest asks for (absent from
    /// registries older than this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<coderclaw_core::manifest::Capabilities>,
    /// Whether that version is marked dangerous (runs programs).
    #[serde(default)]
    pub dangerous: bool,
}

/// What a publish returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishReply {
    /// `namespace/name`.
    pub id: String,
    /// The version.
    pub version: String,
    /// The package digest.
    pub digest: String,
    /// SHA-256 of the file.
    pub sha256: String,
    /// The signer the registry accepted.
    pub signer: String,
    /// True when these exact bytes were already published (nothing changed).
    pub already_published: bool,
}

/// Body of a yank.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct YankRequest {
    /// Why (shown to people installing it from a lockfile).
    pub reason: String,
}

/// A key a namespace accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceKey {
    /// Key id.
    pub key_id: String,
    /// `ed25519:<hex>`.
    pub public_key: String,
    /// May sign the namespace's organisation policy.
    pub admin: bool,
    /// When it was added (Unix seconds).
    pub added_at: u64,
    /// When it was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::ErrorCode::{self, *};

    #[test]
    fn as_str_is_the_wire_name_and_the_status_fits() {
        let all = [
            InvalidRequest,
            BadPackage,
            Unauthenticated,
            TokenExpired,
            TokenRevoked,
            InsufficientScope,
            WrongNamespace,
            SignatureRejected,
            NotFound,
            VersionExists,
            StalePolicy,
            PayloadTooLarge,
            Internal,
        ];
        for code in all {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str(), "{code:?}");
            let back: ErrorCode = serde_json::from_value(code.as_str().into()).unwrap();
            assert_eq!(back, code);
            assert!((400..600).contains(&code.http_status()));
        }
    }
}
