//! Compiled-code cache on disk, keyed by the SHA-256 of the component bytes.
//!
//! Loading native code from disk is the one place this crate needs
//! `unsafe`: wasmtime trusts a deserialised artifact completely. The cache
//! therefore only ever looks a file up by the digest of bytes the caller
//! holds (and, once packages are signed, has verified), only accepts files
//! in a directory it created private to this user, and falls back to a
//! fresh compile on any doubt.
//!
//! Each entry is also bound to its component digest by an HMAC-SHA256
//! under a secret key kept beside the cache (`mac.key`, 0600, created on
//! first use): an entry holds `tag ‖ artifact`, the tag covering the digest
//! and the artifact. So another component's compiled code copied under a
//! verified skill's name, an entry restored from another machine or an
//! older backup made with another key, or a damaged entry, is recompiled,
//! never run under the skill's identity. This does not protect against
//! someone who can read the key (this user, or root): they can forge tags,
//! just as they could replace the binary itself.

use crate::Digest;
use ring::hmac;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// A directory of `<digest>.cwasm` files for one engine configuration.
#[derive(Debug, Clone)]
pub(crate) struct CompiledCache {
    dir: PathBuf,
    key: hmac::Key,
}

/// Bytes of an entry's tag.
const TAG_BYTES: usize = 32;
/// What a tag covers, before the digest and the artifact.
const TAG_DOMAIN: &[u8] = b"coderclaw compiled code v1\x00";
/// Largest entry read back: compiled code is a few times the component.
const MAX_ENTRY_BYTES: u64 = 1 << 30;

impl CompiledCache {
    /// Uses `root/<engine-compatibility-hash>/`, created 0700 if missing.
    /// Artifacts from another wasmtime version or configuration live in
    /// another subdirectory and are never looked at.
    pub(crate) fn open(root: &Path, engine: &Engine) -> std::io::Result<Self> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let dir = root.join(format!("{:016x}", h.finish()));
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        let key = mac_key(&root.join("mac.key"))?;
        Ok(Self { dir, key })
    }

    fn tag(&self, digest: &Digest, artifact: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(TAG_DOMAIN);
        ctx.update(digest.to_hex().as_bytes());
        ctx.update(artifact);
        ctx.sign()
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("{}.cwasm", digest.to_hex()))
    }

    /// The compiled component for `digest`, if a trustworthy artifact exists.
    pub(crate) fn load(&self, engine: &Engine, digest: &Digest) -> Option<Component> {
        let path = self.path(digest);
        let meta = fs::symlink_metadata(&path).ok()?;
        if let Err(why) = private_to_us(&self.dir).and_then(|()| private_file(&meta)) {
            tracing::warn!(path = %path.display(), why, "ignoring compiled-code cache entry");
            return None;
        }
        let entry = match read_bounded(&path) {
            Ok(entry) => entry,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable compiled-code cache entry");
                return None;
            }
        };
        let bound = entry.len() > TAG_BYTES && {
            let (tag, artifact) = entry.split_at(TAG_BYTES);
            // Compared in constant time: the tag is the secret's witness.
            let expected = self.tag(digest, artifact);
            expected.as_ref().iter().zip(tag).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
        };
        if !bound {
            tracing::warn!(path = %path.display(), "discarding a compiled-code cache entry not bound to this component");
            let _ = fs::remove_file(&path);
            return None;
        }
        match deserialize(engine, &entry[TAG_BYTES..]) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "discarding unusable compiled-code cache entry");
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores `component` under `digest` (0600; a reader never sees half a file).
    pub(crate) fn store(&self, digest: &Digest, component: &Component) -> Result<(), String> {
        let artifact = component.serialize().map_err(|e| e.to_string())?;
        let mut entry = self.tag(digest, &artifact).as_ref().to_vec();
        entry.extend_from_slice(&artifact);
        let path = self.path(digest);
        coderclaw_core::fsutil::write_durably_with_mode(&path, &entry, 0o600)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

/// The audited `unsafe` call. Sound because the bytes (1) come from the
/// file named by the SHA-256 of the component bytes the caller holds,
/// (2) carry a valid HMAC over that digest and themselves under this
/// cache's secret key, so they were written by [`CompiledCache::store`]
/// from wasmtime's own `serialize` for this component, in a directory only
/// this user can write, and (3) wasmtime itself rejects artifacts from
/// another version or configuration.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: see the function documentation.
    unsafe { Component::deserialize(engine, artifact) }
}

/// Reads an entry, refusing one larger than [`MAX_ENTRY_BYTES`].
fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    fs::File::open(path)?.take(MAX_ENTRY_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_ENTRY_BYTES {
        return Err(std::io::Error::other("larger than any compiled component"));
    }
    Ok(bytes)
}

/// The cache's secret key: read from `path` (a regular file private to this
/// user), or created there (0600) on first use. Created whole or not at
/// all (a private temporary file hard-linked into place), so a process
/// starting at the same moment reads either no key or the complete one.
fn mac_key(path: &Path) -> std::io::Result<hmac::Key> {
    use std::io::Write;
    let invalid = |why: &str| std::io::Error::other(format!("{}: {why}", path.display()));
    if !path.exists() {
        // The secret, and a name for the temporary file no other process
        // or thread picks.
        let mut random = [0u8; 40];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
            .map_err(|_| invalid("no randomness for the key"))?;
        let (secret, nonce) = random.split_at(32);
        let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
        let tmp = path.with_extension(format!("key.{nonce}.tmp"));
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        let written = f.write_all(secret).and_then(|()| f.sync_all()).and_then(|()| fs::hard_link(&tmp, path));
        let _ = fs::remove_file(&tmp);
        match written {
            Ok(()) => return Ok(hmac::Key::new(hmac::HMAC_SHA256, secret)),
            // Another process made it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    let meta = fs::symlink_metadata(path)?;
    if !meta.file_type().is_file() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(invalid("not a regular file of this user"));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(invalid("readable or writable by group or others (it must be 0600)"));
    }
    let mut bytes = Vec::new();
    fs::File::open(path)?.take(64).read_to_end(&mut bytes)?;
    let secret: [u8; 32] = bytes.try_into().map_err(|_| invalid("not a 32-byte key"))?;
    Ok(hmac::Key::new(hmac::HMAC_SHA256, &secret))
}

fn private_to_us(dir: &Path) -> Result<(), &'static str> {
    let meta = fs::metadata(dir).map_err(|_| "cache directory unreadable")?;
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err("cache directory owned by another user");
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err("cache directory writable by group or others");
    }
    Ok(())
}

fn private_file(meta: &fs::Metadata) -> Result<(), &'static str> {
    if !meta.file_type().is_file() {
        return Err("not a regular file");
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err("file owned by another user");
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err("file writable by group or others");
    }
    Ok(())
}
