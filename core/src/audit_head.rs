//! A signed audit-log head: "record `seq` of device `device`'s audit log has
//! hash `hash`", signed by that device's audit key. Checkpoints inside the
//! log carry one; witnesses outside it (a file the admin chooses, the team
//! registry) keep them, so a log rewritten or cut short by someone who can
//! write its file no longer matches what was witnessed.

use crate::keys::{PublicKey, SecretKey};
use ed25519_dalek::{Signature, Signer, Verifier};
use serde::{Deserialize, Serialize};

const DOMAIN: &[u8] = b"coderclaw audit head v1\x00";

/// One signed head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedHead {
    /// The device whose log this is.
    pub device: String,
    /// The record number.
    pub seq: u64,
    /// That record's hash (hex).
    pub hash: String,
    /// The signing key (`ed25519:…`).
    pub key: String,
    /// Ed25519 signature, hex.
    pub signature: String,
}

fn message(device: &str, seq: u64, hash: &str) -> Vec<u8> {
    let mut m = DOMAIN.to_vec();
    for part in [device.as_bytes(), &seq.to_le_bytes(), hash.as_bytes()] {
        m.extend_from_slice(&(part.len() as u64).to_le_bytes());
        m.extend_from_slice(part);
    }
    m
}

impl SignedHead {
    /// Signs the head (`seq`, `hash`) of `device`'s log.
    pub fn sign(device: &str, seq: u64, hash: &str, key: &SecretKey) -> Self {
        let sig = key.signing_key().sign(&message(device, seq, hash));
        SignedHead {
            device: device.to_owned(),
            seq,
            hash: hash.to_owned(),
            key: key.public().to_string(),
            signature: hex::encode(sig.to_bytes()),
        }
    }

    /// Checks the signature against the key the head names; returns it.
    pub fn verify(&self) -> Result<PublicKey, String> {
        let key = PublicKey::parse(&self.key).map_err(|e| e.to_string())?;
        let mut raw = [0u8; 64];
        hex::decode_to_slice(&self.signature, &mut raw)
            .map_err(|_| "the signature is not 64 bytes of hex".to_owned())?;
        key.verifying_key()
            .verify(&message(&self.device, self.seq, &self.hash), &Signature::from_bytes(&raw))
            .map_err(|_| format!("the signature of head {} does not match", self.seq))?;
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_verify_and_edits_do_not() {
        let key = SecretKey::from_seed([7; 32]);
        let head = SignedHead::sign("dev-1", 42, &"ab".repeat(32), &key);
        assert_eq!(head.verify().unwrap(), key.public());
        for edit in [
            SignedHead { seq: 43, ..head.clone() },
            SignedHead { hash: "cd".repeat(32), ..head.clone() },
            SignedHead { device: "dev-2".into(), ..head.clone() },
        ] {
            assert!(edit.verify().is_err(), "{edit:?}");
        }
    }
}
