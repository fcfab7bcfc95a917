//! Joining a registry: the keys its namespaces publish, and the check that
//! the ones a user is about to trust are the ones they were told about.
//!
//! The registry does not vouch for itself: a key it lists is trusted only
//! after the user compares its fingerprint (the key id, 16 hex digits of
//! SHA-256 of the key) with one obtained another way, or passes it in a
//! script. Fingerprints are computed here from the keys, never taken from
//! the registry's own `keyId` field (a mismatch is refused).

use crate::RegistryClient;
use crate::client::RegistryClientError;
use coderclaw_core::keys::PublicKey;
use serde::Serialize;

/// Namespaces looked at when discovering what a registry serves.
const MAX_NAMESPACES: usize = 64;
/// Keys of one namespace taken at most.
const MAX_KEYS: usize = 256;

/// One key a namespace publishes.
#[derive(Debug, Clone, Serialize)]
pub struct OfferedKey {
    /// The fingerprint (key id) computed from the key.
    pub fingerprint: String,
    /// `ed25519:<hex>`.
    pub public_key: String,
    /// Signs packages of the namespace (every key does) and, when set, its
    /// organisation policy too.
    pub admin: bool,
    /// Revoked by the registry: listed, never trusted.
    pub revoked: bool,
}

/// The keys of one namespace.
#[derive(Debug, Clone, Serialize)]
pub struct NamespaceKeys {
    /// The namespace.
    pub namespace: String,
    /// Its keys, revoked ones included.
    pub keys: Vec<OfferedKey>,
}

impl NamespaceKeys {
    /// The keys that are not revoked.
    pub fn active(&self) -> impl Iterator<Item = &OfferedKey> {
        self.keys.iter().filter(|k| !k.revoked)
    }
}

/// Why a registry's keys were not taken.
#[derive(Debug, thiserror::Error)]
pub enum OnboardError {
    /// The registry could not be asked.
    #[error(transparent)]
    Client(#[from] RegistryClientError),
    /// The registry listed a key that does not parse, or with a key id that
    /// is not the key's.
    #[error("the registry lists a key for `{namespace}` that is refused: {reason}")]
    BadKey {
        /// The namespace.
        namespace: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Nothing to trust.
    #[error("namespace `{0}` has no key that is not revoked")]
    NoKeys(String),
    /// A key to be trusted was not confirmed by a fingerprint.
    #[error("key {fingerprint} of `{namespace}` does not match any fingerprint given")]
    Unconfirmed {
        /// The namespace.
        namespace: String,
        /// The key's fingerprint.
        fingerprint: String,
    },
    /// A fingerprint given matches no key of the namespaces being trusted.
    #[error("fingerprint {0} matches no active key of the namespaces being trusted")]
    UnknownFingerprint(String),
}

/// The keys `namespace` publishes on `client`, each checked to parse and
/// to carry its own key id.
pub async fn namespace_keys(client: &RegistryClient, namespace: &str) -> Result<NamespaceKeys, OnboardError> {
    let listed = client.keys(namespace).await?;
    if listed.len() > MAX_KEYS {
        return Err(OnboardError::BadKey {
            namespace: namespace.to_owned(),
            reason: format!("it lists {} keys (at most {MAX_KEYS} are looked at)", listed.len()),
        });
    }
    let mut keys = Vec::with_capacity(listed.len());
    for k in listed {
        let bad = |reason: String| OnboardError::BadKey { namespace: namespace.to_owned(), reason };
        let key = PublicKey::parse(&k.public_key).map_err(|e| bad(e.to_string()))?;
        let fingerprint = key.id().to_string();
        if fingerprint != k.key_id {
            return Err(bad(format!("it is listed as {} but its fingerprint is {fingerprint}", k.key_id)));
        }
        keys.push(OfferedKey {
            fingerprint,
            public_key: k.public_key,
            admin: k.admin,
            revoked: k.revoked_at.is_some(),
        });
    }
    Ok(NamespaceKeys { namespace: namespace.to_owned(), keys })
}

/// The namespaces `client` serves packages of (that this caller may read),
/// at most [`MAX_NAMESPACES`], sorted.
pub async fn served_namespaces(client: &RegistryClient) -> Result<Vec<String>, OnboardError> {
    let hits = client.search("", None, None).await?;
    // Only ids that parse: a namespace name is then plain text, safe to print.
    let mut namespaces: Vec<String> = hits
        .iter()
        .filter_map(|h| coderclaw_core::manifest::SkillId::parse(&h.id).ok())
        .map(|id| id.namespace().to_owned())
        .collect();
    namespaces.sort();
    namespaces.dedup();
    namespaces.truncate(MAX_NAMESPACES);
    Ok(namespaces)
}

/// Whether `fingerprint` (a key id, or the whole `ed25519:` key) names `key`.
fn names(fingerprint: &str, key: &OfferedKey) -> bool {
    let f = fingerprint.trim();
    f.eq_ignore_ascii_case(&key.fingerprint) || f == key.public_key
}

/// `Ok` when every namespace of `namespaces` has a key that is not revoked.
pub fn check_active(namespaces: &[NamespaceKeys]) -> Result<(), OnboardError> {
    match namespaces.iter().find(|ns| ns.active().next().is_none()) {
        Some(ns) => Err(OnboardError::NoKeys(ns.namespace.clone())),
        None => Ok(()),
    }
}

/// `Ok` when every active key of `namespaces` is named by one of
/// `fingerprints` and every fingerprint names one of those keys: the user
/// confirmed exactly the keys about to be trusted.
pub fn confirm(namespaces: &[NamespaceKeys], fingerprints: &[String]) -> Result<(), OnboardError> {
    check_active(namespaces)?;
    for ns in namespaces {
        if let Some(k) = ns.active().find(|k| !fingerprints.iter().any(|f| names(f, k))) {
            return Err(OnboardError::Unconfirmed {
                namespace: ns.namespace.clone(),
                fingerprint: k.fingerprint.clone(),
            });
        }
    }
    let all: Vec<&OfferedKey> = namespaces.iter().flat_map(NamespaceKeys::active).collect();
    if let Some(f) = fingerprints.iter().find(|f| !all.iter().any(|k| names(f, k))) {
        return Err(OnboardError::UnknownFingerprint(f.clone()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(fingerprint: &str, revoked: bool) -> OfferedKey {
        OfferedKey {
            fingerprint: fingerprint.into(),
            public_key: format!("ed25519:{fingerprint}"),
            admin: false,
            revoked,
        }
    }

    #[test]
    fn exactly_the_active_keys_must_be_confirmed() {
        let team = NamespaceKeys { namespace: "team".into(), keys: vec![key("aa", false), key("bb", true)] };
        let ns = std::slice::from_ref(&team);
        assert!(confirm(ns, &["AA".into()]).is_ok(), "case does not matter");
        assert!(confirm(ns, &["ed25519:aa".into()]).is_ok(), "the whole key is a fingerprint too");
        assert!(matches!(confirm(ns, &[]), Err(OnboardError::Unconfirmed { .. })));
        assert!(matches!(confirm(ns, &["aa".into(), "cc".into()]), Err(OnboardError::UnknownFingerprint(_))));
        assert!(
            matches!(confirm(ns, &["aa".into(), "bb".into()]), Err(OnboardError::UnknownFingerprint(_))),
            "revoked"
        );
        let empty = NamespaceKeys { namespace: "x".into(), keys: vec![key("bb", true)] };
        assert!(matches!(confirm(&[empty], &[]), Err(OnboardError::NoKeys(_))));
    }
}
