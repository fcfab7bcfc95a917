//! Signed skill packages (`.ccpkg`): one file holding a component, its
//! canonical manifest and one or more Ed25519 signatures. The byte layout is
//! documented in `docs/package-format.md`.
//!
//! Verification hashes each part once, checks the signatures over a 32-byte
//! digest (not over the file), and only then hands out a [`VerifiedPackage`],
//! the one type the host accepts for signed loading.

use crate::digest::Digest;
use crate::keys::{KeyId, PublicKey, SecretKey};
use crate::manifest::{Manifest, ManifestError};
use ed25519_dalek::{Signature, Signer};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

/// First 8 bytes of every package: name and format version 1.
pub const MAGIC: &[u8; 8] = b"CCPKG\x00\x01\n";
/// Domain separation of the package digest.
const DIGEST_DOMAIN: &[u8] = b"coderclaw package v1\x00";
/// Domain separation of the signed message.
const SIGNATURE_DOMAIN: &[u8] = b"coderclaw signature v1\x00";
/// Largest manifest accepted, in bytes.
pub const MAX_MANIFEST_BYTES: u32 = 1 << 20;
/// Most signatures a package may carry.
pub const MAX_SIGNATURES: u32 = 16;

/// Why a package was rejected. Each reason is distinct so that a user (and a
/// test) can tell a tampered component from an untrusted signer.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PackageError {
    /// Not a coderclaw package at all.
    #[error("not a coderclaw package (bad magic bytes): expected a signed .ccpkg file")]
    BadMagic,
    /// The file ends before a field it declares.
    #[error("the package is truncated: it ends inside the {0}")]
    Truncated(&'static str),
    /// Bytes after the last signature.
    #[error("the package has {0} unexpected trailing bytes")]
    TrailingBytes(usize),
    /// A length field is out of range.
    #[error("the package's {0} is out of range")]
    BadLength(&'static str),
    /// The manifest inside is invalid or not canonical.
    #[error("{0}")]
    Manifest(String),
    /// No signature present.
    #[error("the package carries no signature")]
    Unsigned,
    /// A signature does not match the package's contents: the component, the
    /// manifest or the signature itself was changed after signing.
    #[error(
        "signature by key {key_id} does not match the package's contents: the component, the manifest or the signature was altered after signing"
    )]
    BadSignature {
        /// The key the signature claims.
        key_id: String,
    },
    /// Every signature is by a key the trust store does not know.
    #[error("no signature is by a trusted key (signed by {signers})")]
    UnknownSigner {
        /// Key ids that signed.
        signers: String,
        /// The package's namespace.
        namespace: String,
    },
    /// The signer is trusted, but not for this namespace.
    #[error(
        "key {key_id} is trusted, but not for namespace `{namespace}`: trust it for that namespace or get the package from its publisher"
    )]
    WrongNamespace {
        /// The signer.
        key_id: String,
        /// The package's namespace.
        namespace: String,
    },
    /// The signer's key was revoked.
    #[error("key {key_id} was revoked: packages it signed are no longer accepted")]
    Revoked {
        /// The revoked key.
        key_id: String,
    },
}

/// What the verifier needs to know about a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    /// The public key.
    pub key: PublicKey,
    /// Namespaces whose packages it may sign.
    pub namespaces: Vec<String>,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// What an install may do beyond a fresh install of a newer version; the
/// gates themselves are the security service's (`Security::install_verified`).
#[derive(Debug, Clone, Copy, Default)]
pub struct InstallGates {
    /// Accept a version that asks for more capabilities than the installed one.
    pub accept_capabilities: bool,
    /// Allow an older version than the installed one.
    pub allow_downgrade: bool,
}

/// Where verification looks keys up (the trust store implements it).
pub trait KeyLookup {
    /// The key with this id, if the store knows it (revoked or not).
    fn lookup(&self, id: &KeyId) -> Option<TrustedKey>;
}

/// One signature record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureRecord {
    /// Who signed.
    pub key_id: KeyId,
    /// When (seconds since the Unix epoch).
    pub timestamp: u64,
    /// The Ed25519 signature.
    pub signature: [u8; 64],
}

/// A package taken apart but not yet trusted.
#[derive(Debug, Clone)]
pub struct Package {
    manifest_bytes: Vec<u8>,
    component: Vec<u8>,
    signatures: Vec<SignatureRecord>,
}

/// A package whose signature checked out against a trusted, unrevoked key
/// for its namespace. Only [`Package::verify`] makes one.
#[derive(Debug, Clone)]
pub struct VerifiedPackage {
    manifest: Manifest,
    component: Vec<u8>,
    component_digest: Digest,
    digest: Digest,
    signer: KeyId,
    signed_at: u64,
}

impl VerifiedPackage {
    /// The manifest (as signed).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    /// The component bytes.
    pub fn component(&self) -> &[u8] {
        &self.component
    }
    /// SHA-256 of the component bytes (the compiled-code cache key).
    pub fn component_digest(&self) -> Digest {
        self.component_digest
    }
    /// The package digest the signature covers.
    pub fn digest(&self) -> Digest {
        self.digest
    }
    /// The trusted key that signed.
    pub fn signer(&self) -> &KeyId {
        &self.signer
    }
    /// When it was signed (Unix seconds).
    pub fn signed_at(&self) -> u64 {
        self.signed_at
    }
}

/// The digest a signature covers: SHA-256 over a domain tag and the
/// SHA-256s of the canonical manifest and of the component.
pub fn package_digest(manifest: &[u8], component_digest: &Digest) -> Digest {
    let mut h = Sha256::new();
    h.update(DIGEST_DOMAIN);
    h.update(Sha256::digest(manifest));
    h.update(component_digest.as_bytes());
    Digest::from_bytes(h.finalize().into())
}

fn signed_message(digest: &Digest, key_id: &KeyId, timestamp: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNATURE_DOMAIN.len() + 32 + 1 + key_id.as_str().len() + 8);
    m.extend_from_slice(SIGNATURE_DOMAIN);
    m.extend_from_slice(digest.as_bytes());
    m.push(key_id.as_str().len() as u8);
    m.extend_from_slice(key_id.as_str().as_bytes());
    m.extend_from_slice(&timestamp.to_le_bytes());
    m
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], PackageError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or(PackageError::Truncated(what))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, PackageError> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, PackageError> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }
}

impl Package {
    /// Signs `component` with `manifest` by `key` at `timestamp`.
    pub fn sign(manifest: &Manifest, component: Vec<u8>, key: &SecretKey, timestamp: u64) -> Package {
        let manifest_bytes = manifest.canonical_json();
        let digest = package_digest(&manifest_bytes, &Digest::of(&component));
        let key_id = key.public().id();
        let signature = key.signing_key().sign(&signed_message(&digest, &key_id, timestamp)).to_bytes();
        Package { manifest_bytes, component, signatures: vec![SignatureRecord { key_id, timestamp, signature }] }
    }

    /// The file bytes (layout: `docs/package-format.md`).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.manifest_bytes.len() + self.component.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.manifest_bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.manifest_bytes);
        out.extend_from_slice(&(self.component.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.component);
        out.extend_from_slice(&(self.signatures.len() as u32).to_le_bytes());
        for s in &self.signatures {
            out.push(s.key_id.as_str().len() as u8);
            out.extend_from_slice(s.key_id.as_str().as_bytes());
            out.extend_from_slice(&s.timestamp.to_le_bytes());
            out.extend_from_slice(&s.signature);
        }
        out
    }

    /// Takes a file apart. Checks structure only; trust nothing yet.
    pub fn parse(bytes: &[u8]) -> Result<Package, PackageError> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(MAGIC.len(), "magic").map_err(|_| PackageError::BadMagic)? != MAGIC {
            return Err(PackageError::BadMagic);
        }
        let manifest_len = r.u32("manifest length")?;
        if manifest_len == 0 || manifest_len > MAX_MANIFEST_BYTES {
            return Err(PackageError::BadLength("manifest length"));
        }
        let manifest_bytes = r.take(manifest_len as usize, "manifest")?.to_vec();
        let component_len =
            usize::try_from(r.u64("component length")?).map_err(|_| PackageError::BadLength("component length"))?;
        let component = r.take(component_len, "component")?.to_vec();
        let count = r.u32("signature count")?;
        if count > MAX_SIGNATURES {
            return Err(PackageError::BadLength("signature count"));
        }
        let mut signatures = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let id_len = r.take(1, "signature key id")?[0] as usize;
            let id = std::str::from_utf8(r.take(id_len, "signature key id")?)
                .ok()
                .and_then(|s| KeyId::parse(s).ok())
                .ok_or(PackageError::BadLength("signature key id"))?;
            let timestamp = r.u64("signature timestamp")?;
            let signature: [u8; 64] = r.take(64, "signature")?.try_into().expect("64 bytes");
            signatures.push(SignatureRecord { key_id: id, timestamp, signature });
        }
        if r.at != bytes.len() {
            return Err(PackageError::TrailingBytes(bytes.len() - r.at));
        }
        Ok(Package { manifest_bytes, component, signatures })
    }

    /// The manifest, parsed but unverified (for `verify` output on failure).
    pub fn manifest(&self) -> Result<Manifest, PackageError> {
        Manifest::from_canonical_json(&self.manifest_bytes)
            .map_err(|e: ManifestError| PackageError::Manifest(e.to_string()))
    }

    /// The digest the signatures cover (hashes the component once).
    pub fn digest(&self) -> Digest {
        package_digest(&self.manifest_bytes, &Digest::of(&self.component))
    }

    /// The signature records, unverified.
    pub fn signatures(&self) -> &[SignatureRecord] {
        &self.signatures
    }

    /// Checks the package against the trust store: some signature must be
    /// cryptographically valid, by a known, unrevoked key trusted for the
    /// manifest's namespace. The reasons are checked in that order so the
    /// error names the most relevant one.
    pub fn verify(self, keys: &(impl KeyLookup + ?Sized)) -> Result<VerifiedPackage, PackageError> {
        let manifest = self.manifest()?;
        if self.signatures.is_empty() {
            return Err(PackageError::Unsigned);
        }
        let component_digest = Digest::of(&self.component);
        let digest = package_digest(&self.manifest_bytes, &component_digest);
        let namespace = manifest.id.namespace().to_owned();
        let mut best: Option<PackageError> = None;
        for s in &self.signatures {
            let Some(trusted) = keys.lookup(&s.key_id) else { continue };
            let sig = Signature::from_bytes(&s.signature);
            let message = signed_message(&digest, &s.key_id, s.timestamp);
            let outcome = if trusted.revoked {
                Err(PackageError::Revoked { key_id: s.key_id.to_string() })
            } else if trusted.key.verifying_key().verify_strict(&message, &sig).is_err() {
                Err(PackageError::BadSignature { key_id: s.key_id.to_string() })
            } else if !trusted.namespaces.contains(&namespace) {
                Err(PackageError::WrongNamespace { key_id: s.key_id.to_string(), namespace: namespace.clone() })
            } else {
                Ok((s.key_id.clone(), s.timestamp))
            };
            match outcome {
                Ok((signer, signed_at)) => {
                    return Ok(VerifiedPackage {
                        manifest,
                        component: self.component,
                        component_digest,
                        digest,
                        signer,
                        signed_at,
                    });
                }
                Err(e) => {
                    best = Some(match best {
                        Some(b) if rank(&b) >= rank(&e) => b,
                        _ => e,
                    })
                }
            }
        }
        Err(best.unwrap_or_else(|| PackageError::UnknownSigner {
            signers: self.signatures.iter().map(|s| s.key_id.to_string()).collect::<Vec<_>>().join(", "),
            namespace,
        }))
    }
}

/// Which failure to report when several signatures fail: the one closest
/// to acceptance.
fn rank(e: &PackageError) -> u8 {
    match e {
        PackageError::Revoked { .. } => 3,
        PackageError::WrongNamespace { .. } => 2,
        PackageError::BadSignature { .. } => 1,
        _ => 0,
    }
}

impl KeyLookup for std::collections::HashMap<KeyId, TrustedKey> {
    fn lookup(&self, id: &KeyId) -> Option<TrustedKey> {
        self.get(id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn manifest(id: &str) -> Manifest {
        Manifest::from_toml(
            &format!(
                "id = \"{id}\"\nversion = \"1.0.0\"\nkind = \"skill\"\ndescription = \"d\"\n[capabilities]\nhttp = [\"https://api.github.com\"]\n"
            ),
            "m",
        )
        .unwrap()
    }

    fn trust(entries: &[(&SecretKey, &[&str], bool)]) -> HashMap<KeyId, TrustedKey> {
        entries
            .iter()
            .map(|(k, ns, revoked)| {
                let namespaces = ns.iter().map(|s| s.to_string()).collect();
                (k.public().id(), TrustedKey { key: k.public(), namespaces, revoked: *revoked })
            })
            .collect()
    }

    fn signed(key: &SecretKey) -> Vec<u8> {
        Package::sign(&manifest("team/scanner"), b"\0asm component bytes".to_vec(), key, 1_700_000_000).to_bytes()
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let key = SecretKey::from_seed([1; 32]);
        let bytes = signed(&key);
        let v = Package::parse(&bytes).unwrap().verify(&trust(&[(&key, &["team"], false)])).unwrap();
        assert_eq!(v.manifest().id.as_str(), "team/scanner");
        assert_eq!(v.component(), b"\0asm component bytes");
        assert_eq!(v.component_digest(), Digest::of(b"\0asm component bytes"));
        assert_eq!(v.signer(), &key.public().id());
        assert_eq!(v.signed_at(), 1_700_000_000);
        assert_eq!(Package::parse(&bytes).unwrap().to_bytes(), bytes, "parse/serialise is lossless");
    }

    #[test]
    fn each_tampering_gets_its_own_reason() {
        let key = SecretKey::from_seed([1; 32]);
        let other = SecretKey::from_seed([2; 32]);
        let trusted = trust(&[(&key, &["team"], false)]);
        let good = signed(&key);
        let verify = |bytes: &[u8], t: &HashMap<KeyId, TrustedKey>| Package::parse(bytes).and_then(|p| p.verify(t));

        // A flipped byte in the component (its last byte, just before the signature count).
        let sig_block = 4 + 1 + 16 + 8 + 64;
        let mut comp = good.clone();
        let i = comp.len() - sig_block - 1;
        comp[i] ^= 1;
        assert!(matches!(verify(&comp, &trusted), Err(PackageError::BadSignature { .. })));

        // The manifest widened (another http host), still valid and canonical.
        let p = Package::parse(&good).unwrap();
        let mut wide = manifest("team/scanner");
        wide.capabilities.http.insert(crate::HostPattern::parse("https://evil.example").unwrap());
        let widened = Package { manifest_bytes: wide.canonical_json(), ..p.clone() }.to_bytes();
        assert!(matches!(verify(&widened, &trusted), Err(PackageError::BadSignature { .. })));

        // A flipped byte in the signature.
        let mut sig = good.clone();
        let last = sig.len() - 1;
        sig[last] ^= 0x80;
        assert!(matches!(verify(&sig, &trusted), Err(PackageError::BadSignature { .. })));

        // The signature of another package by the same key.
        let another = Package::sign(&manifest("team/scanner"), b"other".to_vec(), &key, 1).to_bytes();
        let swapped = Package { signatures: Package::parse(&another).unwrap().signatures, ..p.clone() }.to_bytes();
        assert!(matches!(verify(&swapped, &trusted), Err(PackageError::BadSignature { .. })));

        // Truncated anywhere.
        for cut in [3, 10, good.len() / 2, good.len() - 1] {
            assert!(
                matches!(verify(&good[..cut], &trusted), Err(PackageError::BadMagic | PackageError::Truncated(_))),
                "cut at {cut}"
            );
        }
        // Trailing garbage.
        let mut long = good.clone();
        long.push(0);
        assert_eq!(verify(&long, &trusted).unwrap_err(), PackageError::TrailingBytes(1));

        // Valid signature by a key nobody trusts.
        let by_other = signed(&other);
        assert!(matches!(verify(&by_other, &trusted), Err(PackageError::UnknownSigner { .. })));
        // Trusted, but for another namespace.
        let elsewhere = trust(&[(&key, &["other-team"], false)]);
        assert!(matches!(verify(&good, &elsewhere), Err(PackageError::WrongNamespace { .. })));
        // Revoked.
        let revoked = trust(&[(&key, &["team"], true)]);
        assert!(matches!(verify(&good, &revoked), Err(PackageError::Revoked { .. })));

        // Every message is distinct and names what to do.
        let messages: std::collections::BTreeSet<String> = [&comp, &by_other]
            .iter()
            .map(|b| verify(b, &trusted).unwrap_err().to_string())
            .chain([
                verify(&good, &elsewhere).unwrap_err().to_string(),
                verify(&good, &revoked).unwrap_err().to_string(),
            ])
            .collect();
        assert_eq!(messages.len(), 4);
    }

    #[test]
    fn a_second_trusted_signature_is_enough() {
        let key = SecretKey::from_seed([1; 32]);
        let other = SecretKey::from_seed([2; 32]);
        let mut p = Package::parse(&signed(&other)).unwrap();
        p.signatures.extend(Package::parse(&signed(&key)).unwrap().signatures);
        let v = Package::parse(&p.to_bytes()).unwrap().verify(&trust(&[(&key, &["team"], false)])).unwrap();
        assert_eq!(v.signer(), &key.public().id());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        #[test]
        fn any_single_byte_mutation_fails_verification(index in 0usize..10_000, flip in 1u8..=255) {
            let key = SecretKey::from_seed([1; 32]);
            let mut bytes = signed(&key);
            let i = index % bytes.len();
            bytes[i] ^= flip;
            let outcome = Package::parse(&bytes).and_then(|p| p.verify(&trust(&[(&key, &["team"], false)])));
            proptest::prop_assert!(outcome.is_err(), "mutating byte {} by {:#x} still verified", i, flip);
        }
    }
}
