//! Ed25519 signing keys: generation, the one-line public key form, key ids,
//! and secret key files that must be private to their owner.
//!
//! - Public key, one line: `ed25519:<64 hex digits>`.
//! - Key id: the first 16 hex digits of the SHA-256 of the 32 public key bytes.
//! - Secret key file: `coderclaw-secret-key v1` on the first line, the
//!   64-hex-digit seed on the second; mode 0600. Never printed.

use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use thiserror::Error;

const SECRET_HEADER: &str = "coderclaw-secret-key v1";
const PUBLIC_PREFIX: &str = "ed25519:";

/// A key that cannot be read, parsed or written.
#[derive(Debug, Error)]
pub enum KeyError {
    /// The one-line public key is malformed.
    #[error("{0:?} is not a coderclaw public key: expected `ed25519:` and 64 hex digits")]
    BadPublicKey(String),
    /// A key id that is not 16 hex digits.
    #[error("{0:?} is not a key id: expected 16 hex digits")]
    BadKeyId(String),
    /// The secret key file is readable by others.
    #[error("secret key {path} is readable by other users (mode {mode:o}): run `chmod 600 {path}`")]
    Permissions {
        /// The file.
        path: String,
        /// Its mode bits.
        mode: u32,
    },
    /// The secret key file is not in the expected format.
    #[error("secret key {path} is corrupt: {problem}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No randomness from the operating system.
    #[error("cannot get randomness from the operating system: {0}")]
    Random(String),
}

/// A key id: 16 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(String);

impl KeyId {
    /// Parses 16 hex digits.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        if s.len() == 16 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            Ok(Self(s.to_owned()))
        } else {
            Err(KeyError::BadKeyId(s.to_owned()))
        }
    }
    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Serialised as its 16 hex digits.
impl serde::Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An Ed25519 public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Parses the one-line form `ed25519:<hex>`.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let bad = || KeyError::BadPublicKey(s.to_owned());
        let hex_part = s.trim().strip_prefix(PUBLIC_PREFIX).ok_or_else(bad)?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut bytes).map_err(|_| bad())?;
        VerifyingKey::from_bytes(&bytes).map(Self).map_err(|_| bad())
    }
    /// The key's id.
    pub fn id(&self) -> KeyId {
        KeyId(hex::encode(&Sha256::digest(self.0.as_bytes())[..8]))
    }
    /// The dalek key, for verification.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.0
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_PREFIX}{}", hex::encode(self.0.as_bytes()))
    }
}

/// An Ed25519 signing key. `Debug` never shows the secret.
pub struct SecretKey(SigningKey);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({}, <redacted>)", self.public().id())
    }
}

impl SecretKey {
    /// A fresh key from the operating system's randomness.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self::from_seed(seed))
    }

    /// A key from a 32-byte seed (tests use fixed seeds).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&seed))
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.0
    }

    /// Writes the key to a new file, mode 0600 from creation (never briefly
    /// readable by others); refuses to overwrite.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io { path: path.display().to_string(), source };
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
        writeln!(f, "{SECRET_HEADER}\n{}", hex::encode(self.0.to_bytes())).map_err(io)?;
        f.sync_all().map_err(io)
    }

    /// Reads a key file, refusing one that others can read or that is corrupt.
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| KeyError::Io { path: shown.clone(), source })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions { path: shown, mode });
        }
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io { path: shown.clone(), source })?;
        let corrupt = |problem| KeyError::Corrupt { path: shown.clone(), problem };
        let mut lines = text.lines();
        if lines.next() != Some(SECRET_HEADER) {
            return Err(corrupt("the first line is not `coderclaw-secret-key v1`"));
        }
        let mut seed = [0u8; 32];
        let line = lines.next().ok_or_else(|| corrupt("the seed line is missing"))?;
        hex::decode_to_slice(line.trim(), &mut seed).map_err(|_| corrupt("the seed is not 64 hex digits"))?;
        if lines.any(|l| !l.trim().is_empty()) {
            return Err(corrupt("unexpected text after the seed"));
        }
        Ok(Self::from_seed(seed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_text_round_trips_and_ids_are_stable() {
        let k = SecretKey::from_seed([7; 32]);
        let text = k.public().to_string();
        assert!(text.starts_with("ed25519:") && text.len() == 8 + 64);
        let parsed = PublicKey::parse(&text).unwrap();
        assert_eq!(parsed, k.public());
        assert_eq!(parsed.id().as_str().len(), 16);
        assert_eq!(KeyId::parse(parsed.id().as_str()).unwrap(), parsed.id());
        assert!(PublicKey::parse("ed25519:zz").is_err());
        assert!(PublicKey::parse(&text.replace("ed25519:", "rsa:")).is_err());
        assert!(!format!("{k:?}").contains(&hex::encode([7u8; 32])));
    }

    #[test]
    fn key_files_are_private_and_checked() {
        let dir = tempfile_dir();
        let path = dir.join("k.key");
        let k = SecretKey::generate().unwrap();
        k.write_new(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(SecretKey::read(&path).unwrap().public(), k.public());
        assert!(k.write_new(&path).is_err(), "never overwrites");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = SecretKey::read(&path).unwrap_err().to_string();
        assert!(e.contains("readable by other users") && e.contains("chmod 600"), "{e}");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "coderclaw-secret-key v1\nnot-hex\n").unwrap();
        let e = SecretKey::read(&path).unwrap_err().to_string();
        assert!(e.contains("corrupt") && e.contains("64 hex digits"), "{e}");
        std::fs::write(&path, "garbage").unwrap();
        assert!(SecretKey::read(&path).unwrap_err().to_string().contains("first line"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("coderclaw-keys-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
