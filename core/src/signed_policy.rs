//! An organisation policy as a team registry distributes it: signed by a
//! namespace admin key, numbered so that a client never goes back to an
//! older one.
//!
//! The signature covers SHA-256 of a domain tag and the compact JSON of
//! `{namespace, serial, issuedAt, policy}`; the verifier recomputes that
//! from the parsed fields, so a document whose fields were edited after
//! signing fails whatever its formatting.

use crate::digest::Digest;
use crate::keys::{KeyId, PublicKey, SecretKey};
use crate::policy::OrgPolicy;
use ed25519_dalek::{Signature, Signer};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Domain separation of the signed message.
const DOMAIN: &[u8] = b"coderclaw org policy v1\x00";

/// A signed organisation policy document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SignedOrgPolicy {
    /// The namespace (team) it governs as published; it applies to every
    /// skill the client runs, like a local organisation policy.
    pub namespace: String,
    /// Increases with every new version; clients refuse a lower one.
    pub serial: u64,
    /// When it was signed (Unix seconds).
    pub issued_at: u64,
    /// The policy.
    pub policy: OrgPolicy,
    /// The signing key.
    pub key_id: String,
    /// Ed25519 signature, hex.
    pub signature: String,
}

/// Why a signed policy was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SignedPolicyError {
    /// Not signed by any of the keys allowed to sign it.
    #[error(
        "the organisation policy of `{namespace}` is signed by key {key_id}, which is not one of its admin keys ({allowed})"
    )]
    UnknownKey {
        /// The namespace.
        namespace: String,
        /// Who signed.
        key_id: String,
        /// The allowed key ids.
        allowed: String,
    },
    /// The signature does not match the contents.
    #[error("the organisation policy of `{0}` was altered after signing (its signature does not match)")]
    BadSignature(String),
    /// For another namespace than the one asked for.
    #[error("the organisation policy is for `{found}`, not `{expected}`")]
    WrongNamespace {
        /// Asked for.
        expected: String,
        /// In the document.
        found: String,
    },
}

fn message(namespace: &str, serial: u64, issued_at: u64, policy: &OrgPolicy) -> Vec<u8> {
    let body = serde_json::json!({
        "namespace": namespace, "serial": serial, "issuedAt": issued_at, "policy": policy,
    });
    let mut m = DOMAIN.to_vec();
    m.extend_from_slice(Digest::of(&serde_json::to_vec(&body).expect("policies serialise")).as_bytes());
    m
}

impl SignedOrgPolicy {
    /// Signs `policy` for `namespace` as version `serial`.
    pub fn sign(namespace: &str, serial: u64, issued_at: u64, policy: OrgPolicy, key: &SecretKey) -> Self {
        let sig = key.signing_key().sign(&message(namespace, serial, issued_at, &policy));
        SignedOrgPolicy {
            namespace: namespace.to_owned(),
            serial,
            issued_at,
            policy,
            key_id: key.public().id().to_string(),
            signature: hex::encode(sig.to_bytes()),
        }
    }

    /// Checks that the document is for `namespace` and signed by one of
    /// `keys`; returns the policy.
    pub fn verify(&self, namespace: &str, keys: &[PublicKey]) -> Result<&OrgPolicy, SignedPolicyError> {
        if self.namespace != namespace {
            return Err(SignedPolicyError::WrongNamespace {
                expected: namespace.to_owned(),
                found: self.namespace.clone(),
            });
        }
        let key =
            KeyId::parse(&self.key_id).ok().and_then(|id| keys.iter().find(|k| k.id() == id)).ok_or_else(|| {
                SignedPolicyError::UnknownKey {
                    namespace: namespace.to_owned(),
                    key_id: self.key_id.clone(),
                    allowed: keys.iter().map(|k| k.id().to_string()).collect::<Vec<_>>().join(", "),
                }
            })?;
        let bad = || SignedPolicyError::BadSignature(namespace.to_owned());
        let mut bytes = [0u8; 64];
        hex::decode_to_slice(&self.signature, &mut bytes).map_err(|_| bad())?;
        let m = message(&self.namespace, self.serial, self.issued_at, &self.policy);
        key.verifying_key().verify_strict(&m, &Signature::from_bytes(&bytes)).map_err(|_| bad())?;
        Ok(&self.policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> OrgPolicy {
        OrgPolicy { denied_skills: vec!["dangerous-exec".into()], ..OrgPolicy::default() }
    }

    #[test]
    fn signed_policy_verifies_and_edits_are_refused() {
        let key = SecretKey::from_seed([7; 32]);
        let doc = SignedOrgPolicy::sign("team", 3, 100, policy(), &key);
        assert_eq!(doc.verify("team", &[key.public()]).unwrap(), &policy());

        let mut edited = doc.clone();
        edited.policy.denied_skills.clear();
        assert_eq!(edited.verify("team", &[key.public()]), Err(SignedPolicyError::BadSignature("team".into())));
        let mut older = doc.clone();
        older.serial = 1;
        assert!(older.verify("team", &[key.public()]).is_err());

        let other = SecretKey::from_seed([8; 32]);
        assert!(matches!(doc.verify("team", &[other.public()]), Err(SignedPolicyError::UnknownKey { .. })));
        assert!(matches!(doc.verify("other", &[key.public()]), Err(SignedPolicyError::WrongNamespace { .. })));
    }
}
