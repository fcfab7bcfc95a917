//! A change to a cluster's trust, signed by the device key of the machine
//! that made it: "key K may sign packages of namespace N" or "key K is
//! revoked". Nodes apply a published change only when its signature holds
//! and its signer is one of the machines they were told to accept
//! (`cluster.nodeKeys`), so whoever can write the cluster's database
//! cannot make the nodes trust a key.

use crate::keys::{PublicKey, SecretKey};
use ed25519_dalek::{Signature, Signer, Verifier};
use serde::{Deserialize, Serialize};

const DOMAIN: &[u8] = b"coderclaw trust change v1\x00";

/// What changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "lowercase")]
pub enum TrustChange {
    /// `key` may sign packages of `namespace`.
    Add {
        /// The namespace.
        namespace: String,
        /// The key (`ed25519:…`).
        key: String,
    },
    /// The key with this id is revoked: its signatures are refused.
    Revoke {
        /// The key's id.
        key_id: String,
    },
}

/// A change and its publisher's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedTrustChange {
    /// The change.
    #[serde(flatten)]
    pub change: TrustChange,
    /// The publishing machine's device key (`ed25519:…`).
    pub publisher: String,
    /// Ed25519 signature over the change, hex.
    pub signature: String,
}

fn message(change: &TrustChange) -> Vec<u8> {
    let parts: [&[u8]; 3] = match change {
        TrustChange::Add { namespace, key } => [b"add", namespace.as_bytes(), key.as_bytes()],
        TrustChange::Revoke { key_id } => [b"revoke", key_id.as_bytes(), b""],
    };
    let mut m = DOMAIN.to_vec();
    for part in parts {
        m.extend_from_slice(&(part.len() as u64).to_le_bytes());
        m.extend_from_slice(part);
    }
    m
}

impl SignedTrustChange {
    /// Signs `change` with this machine's device key.
    pub fn sign(change: TrustChange, device_key: &SecretKey) -> Self {
        let signature = hex::encode(device_key.signing_key().sign(&message(&change)).to_bytes());
        SignedTrustChange { change, publisher: device_key.public().to_string(), signature }
    }

    /// Checks the signature against the publisher it names; returns the
    /// publisher's key.
    pub fn verify(&self) -> Result<PublicKey, String> {
        let key = PublicKey::parse(&self.publisher).map_err(|e| e.to_string())?;
        let mut raw = [0u8; 64];
        hex::decode_to_slice(&self.signature, &mut raw)
            .map_err(|_| "the signature is not 64 bytes of hex".to_owned())?;
        key.verifying_key()
            .verify(&message(&self.change), &Signature::from_bytes(&raw))
            .map_err(|_| format!("the signature does not match the change (publisher {})", key.id()))?;
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_verify_and_edits_do_not() {
        let device = SecretKey::from_seed([9; 32]);
        let other = SecretKey::from_seed([8; 32]).public().to_string();
        let add = SignedTrustChange::sign(TrustChange::Add { namespace: "team".into(), key: other.clone() }, &device);
        assert_eq!(add.verify().unwrap(), device.public());
        let forged = [
            SignedTrustChange {
                change: TrustChange::Add { namespace: "evil".into(), key: other.clone() },
                ..add.clone()
            },
            SignedTrustChange { change: TrustChange::Revoke { key_id: "abc".into() }, ..add.clone() },
            SignedTrustChange { publisher: SecretKey::from_seed([7; 32]).public().to_string(), ..add.clone() },
        ];
        for f in forged {
            assert!(f.verify().is_err(), "{f:?}");
        }
        let text = serde_json::to_string(&add).unwrap();
        assert_eq!(serde_json::from_str::<SignedTrustChange>(&text).unwrap(), add);
    }
}
