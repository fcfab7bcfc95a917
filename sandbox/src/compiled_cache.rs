//! Compiled-code cache on disk, keyed by the SHA-256 of the component bytes.
//!
//! Loading native code from disk is the one place this crate needs
//! `unsafe`: wasmtime trusts a deserialised artifact completely. The cache
//! therefore only ever looks a file up by the digest of bytes the caller
//! holds (and, once packages are signed, has verified), only accepts files
//! in a directory it created private to this user, and falls back to a
//! fresh compile on any doubt.

use crate::Digest;
use std::fs;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// A directory of `<digest>.cwasm` files for one engine configuration.
#[derive(Debug, Clone)]
pub(crate) struct CompiledCache {
    dir: PathBuf,
}

impl CompiledCache {
    /// Uses `root/<engine-compatibility-hash>/`, created 0700 if missing.
    /// Artifacts from another wasmtime version or configuration live in
    /// another subdirectory and are never looked at.
    pub(crate) fn open(root: &Path, engine: &Engine) -> std::io::Result<Self> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let dir = root.join(format!("{:016x}", h.finish()));
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        Ok(Self { dir })
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
        match deserialize(engine, &path) {
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
        let bytes = component.serialize().map_err(|e| e.to_string())?;
        let path = self.path(digest);
        coderclaw_core::fsutil::write_durably_with_mode(&path, &bytes, 0o600)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

/// The audited `unsafe` call. Sound because the file (1) is named by the
/// SHA-256 of the component bytes the caller holds, (2) was written by
/// [`CompiledCache::store`] from wasmtime's own `serialize` into a
/// directory only this user can write, and (3) wasmtime itself rejects
/// artifacts from another version or configuration.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: see the function documentation.
    unsafe { Component::deserialize_file(engine, path) }
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
