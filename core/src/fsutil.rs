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

/// Creates `path` as an empty file only its owner can read and write, or,
/// when it exists, takes away any group or other access it has. Used for
/// SQLite files before they are opened (SQLite gives its journal and WAL
/// files the database file's mode).
pub fn ensure_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            for file in [path.to_path_buf(), with_suffix(path, "-wal"), with_suffix(path, "-shm")] {
                let Ok(meta) = std::fs::symlink_metadata(&file) else { continue };
                let mode = meta.permissions().mode();
                if meta.is_file() && mode & 0o077 != 0 {
                    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode & 0o700))?;
                }
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn with_suffix(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    s.into()
}

/// A data directory's mode, checked before anything is stored in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirAccess {
    /// Only its owner can use it.
    Private,
    /// Others can list and read it (mode given): worth a warning.
    ReadableByOthers(u32),
}

/// Creates `path` (mode 0700 for what is created) and checks it: a
/// directory others can write is refused (they could swap databases, keys
/// or packages), one others can read is reported.
pub fn private_dir(path: &Path) -> Result<DirAccess, String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        // Its owner can change its mode and contents at will.
        return Err(format!(
            "{} belongs to another user (uid {}), who could replace what it holds: use a directory of your own",
            path.display(),
            meta.uid()
        ));
    }
    if mode & 0o022 != 0 {
        return Err(format!(
            "{} is writable by other users (mode {mode:03o}), who could replace what it holds: \
             remove their write permission (chmod go-w {}) or use another directory",
            path.display(),
            path.display()
        ));
    }
    Ok(if mode & 0o044 != 0 { DirAccess::ReadableByOthers(mode) } else { DirAccess::Private })
}

/// Largest configuration or policy file the host reads (1 MiB).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Whether [`read_text_bounded`] may follow a symbolic link at the end of
/// the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalLink {
    /// A file in a repository: a link (possibly out of the repository, to
    /// `/dev/zero` or a FIFO) is refused.
    Refuse,
    /// A file in the user's own state directory: a link is followed, the
    /// target must still be a regular file.
    Follow,
}

/// Reads a UTF-8 text file of at most `max` bytes that must be a regular
/// file: a FIFO, device, directory or (with [`FinalLink::Refuse`]) a
/// symbolic link is refused without blocking, and a file growing while it
/// is read stops at the bound. A missing file is `NotFound` as usual; every
/// other refusal is `InvalidData` saying what the file is.
pub fn read_text_bounded(path: &Path, max: u64, link: FinalLink) -> std::io::Result<String> {
    use std::io::Read;
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut options = std::fs::OpenOptions::new();
    // Non-blocking, so opening a FIFO returns at once rather than waiting
    // for a writer; reads of a regular file are unaffected.
    let mut flags = libc::O_NONBLOCK;
    if link == FinalLink::Refuse {
        flags |= libc::O_NOFOLLOW;
    }
    options.read(true).custom_flags(flags);
    let file = match options.open(path) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(invalid("is a symbolic link; a repository's configuration must be a regular file".into()));
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        let kind = if meta.is_dir() { "a directory" } else { "not a regular file (a FIFO, socket or device)" };
        return Err(invalid(format!("is {kind}")));
    }
    if meta.len() > max {
        return Err(invalid(format!("is {} bytes, more than the {max} bytes allowed", meta.len())));
    }
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(invalid(format!("grew past the {max} bytes allowed while being read")));
    }
    String::from_utf8(bytes).map_err(|_| invalid("is not UTF-8 text".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_directories_and_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a/b");
        assert_eq!(private_dir(&data).unwrap(), DirAccess::Private);
        assert_eq!(std::fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o700);
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(private_dir(&data).unwrap(), DirAccess::ReadableByOthers(0o755));
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(private_dir(&data).unwrap_err().contains("chmod go-w"));
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();

        let db = data.join("x.db");
        ensure_private_file(&db).unwrap();
        assert_eq!(std::fs::metadata(&db).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(data.join("x.db-wal"), "").unwrap();
        std::fs::set_permissions(data.join("x.db-wal"), std::fs::Permissions::from_mode(0o666)).unwrap();
        ensure_private_file(&db).unwrap();
        assert_eq!(std::fs::metadata(&db).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(data.join("x.db-wal")).unwrap().permissions().mode() & 0o777, 0o600);

        // A directory of another user, mode 0700 or not, is theirs to change.
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        let other = if nix::unistd::geteuid().is_root() { 65534 } else { 0 };
        match nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(other)), None) {
            Ok(()) if other != 0 => {
                let e = private_dir(&theirs).unwrap_err();
                assert!(e.contains("belongs to another user"), "{e}");
            }
            // Root's own directories pass (root can change anything anyway);
            // an unprivileged user cannot give a directory away to test it.
            _ => eprintln!("skipped the other-owner case: not running as root"),
        }
    }

    #[test]
    fn only_bounded_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.yaml");
        std::fs::write(&file, "a: 1\n").unwrap();
        assert_eq!(read_text_bounded(&file, 100, FinalLink::Refuse).unwrap(), "a: 1\n");
        let err = read_text_bounded(&file, 3, FinalLink::Refuse).unwrap_err();
        assert!(err.to_string().contains("more than the 3 bytes"), "{err}");

        let link = dir.path().join("zero.yaml");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(read_text_bounded(&link, 100, FinalLink::Refuse).unwrap_err().to_string().contains("symbolic link"));
        assert!(read_text_bounded(&link, 100, FinalLink::Follow).unwrap_err().to_string().contains("not a regular"));

        let fifo = dir.path().join("fifo.yaml");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        // Returns at once (no writer ever comes).
        assert!(read_text_bounded(&fifo, 100, FinalLink::Follow).unwrap_err().to_string().contains("not a regular"));
        assert!(read_text_bounded(dir.path(), 100, FinalLink::Follow).unwrap_err().to_string().contains("directory"));
        let missing = read_text_bounded(&dir.path().join("none"), 100, FinalLink::Refuse).unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
    }
}

/// What tells one file apart from its replacement without reading it: a
/// rename puts another inode there, a write in place moves the change time
/// (which no unprivileged call can set back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileIdentity {
    /// The identity of the file `meta` describes.
    pub fn of(meta: &std::fs::Metadata) -> FileIdentity {
        use std::os::unix::fs::MetadataExt;
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// The identity of whatever is at `path` now (the link itself, not its
    /// target, for [`FinalLink::Refuse`] files), or `None` when nothing can
    /// be seen there.
    pub fn at(path: &Path, link: FinalLink) -> Option<FileIdentity> {
        let meta = match link {
            FinalLink::Follow => std::fs::metadata(path),
            FinalLink::Refuse => std::fs::symlink_metadata(path),
        };
        meta.ok().map(|m| FileIdentity::of(&m))
    }
}
