//! Durable file writes: installed packages, kept policies, compiled code,
//! the registry's blobs, the client's lockfile and cache.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// [`write_durably_with_mode`] for files others may read (mode 0644 before
/// the umask): lockfiles, registry blobs and caches.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_durably_with_mode(path, bytes, 0o644)
}

/// Writes `bytes` to `path` (creating its directory) through a new
/// temporary file in the same directory: unique name, created exclusively
/// with `mode` (never following a planted file or link), synced before the
/// rename, and the directory synced after it. A crash leaves either the old
/// file or the whole new one; the temporary file is removed if anything
/// fails.
pub fn write_durably_with_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut raw = [0u8; 8];
    getrandom::fill(&mut raw).map_err(std::io::Error::other)?;
    let tmp = path.with_extension(format!("tmp-{}", hex::encode(raw)));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
