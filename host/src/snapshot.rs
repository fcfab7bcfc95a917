//! A snapshot of a client's directory to upload as a task's workspace
//! (`task submit --workspace-upload`): an uncompressed tar of what git
//! would track, built the same way every time so that the same files give
//! the same digest (and the server keeps one copy).
//!
//! `.gitignore`, `.ignore`, `.git/info/exclude` and the global git excludes
//! are honoured (the `ignore` crate, as ripgrep does), even outside a git
//! repository; `.git` itself is never sent. Symbolic links are left out
//! (the server accepts only files and directories); entries are sorted and
//! carry no owner, time or permission beyond the executable bit.

use std::io::Read;
use std::path::{Path, PathBuf};

/// What [`snapshot`] built.
#[derive(Debug)]
pub struct Snapshot {
    /// The tar.
    pub tar: Vec<u8>,
    /// Regular files in it.
    pub files: u64,
    /// Symbolic links and special files left out.
    pub skipped: Vec<PathBuf>,
}

/// Why a snapshot could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The directory cannot be walked.
    #[error("{dir}: {message}")]
    Walk {
        /// The directory.
        dir: PathBuf,
        /// What failed.
        message: String,
    },
    /// A file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The snapshot grew past `max` bytes.
    #[error(
        "the snapshot of {dir} passes {max}: leave build output and data out with .gitignore, or name one of the \
         server's workspaces (--server-workspace)"
    )]
    TooLarge {
        /// The directory.
        dir: PathBuf,
        /// The limit, formatted.
        max: String,
    },
}

/// Tars what `dir` holds, as git would see it, refusing to grow past
/// `max_bytes`.
pub fn snapshot(dir: &Path, max_bytes: u64) -> Result<Snapshot, SnapshotError> {
    let walk_error = |message: String| SnapshotError::Walk { dir: dir.to_path_buf(), message };
    if !dir.is_dir() {
        return Err(walk_error("not a directory".into()));
    }
    let too_large =
        || SnapshotError::TooLarge { dir: dir.to_path_buf(), max: coderclaw_core::units::format_size(max_bytes) };
    let walker = ignore::WalkBuilder::new(dir)
        .hidden(false)
        .require_git(false)
        .follow_links(false)
        .sort_by_file_name(|a, b| a.cmp(b))
        .filter_entry(|e| e.file_name() != ".git")
        .build();
    let mut builder = tar::Builder::new(Vec::new());
    let (mut files, mut skipped) = (0u64, Vec::new());
    for entry in walker {
        let entry = entry.map_err(|e| walk_error(e.to_string()))?;
        let path = entry.path();
        let Ok(relative) = path.strip_prefix(dir) else { continue };
        if relative.as_os_str().is_empty() {
            continue;
        }
        let Some(kind) = entry.file_type() else { continue };
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        if kind.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            builder.append_data(&mut header, relative, std::io::empty()).map_err(read_error(path))?;
        } else if kind.is_file() {
            let meta = entry.metadata().map_err(|e| walk_error(e.to_string()))?;
            if builder.get_ref().len() as u64 + meta.len() + 1024 > max_bytes {
                return Err(too_large());
            }
            let mut content = Vec::with_capacity(meta.len() as usize);
            std::fs::File::open(path)
                .and_then(|f| f.take(meta.len()).read_to_end(&mut content))
                .map_err(read_error(path))?;
            use std::os::unix::fs::PermissionsExt;
            header.set_mode(if meta.permissions().mode() & 0o100 != 0 { 0o755 } else { 0o644 });
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(content.len() as u64);
            builder.append_data(&mut header, relative, content.as_slice()).map_err(read_error(path))?;
            files += 1;
        } else {
            skipped.push(relative.to_path_buf());
        }
    }
    let tar = builder.into_inner().map_err(read_error(dir))?;
    if tar.len() as u64 > max_bytes {
        return Err(too_large());
    }
    Ok(Snapshot { tar, files, skipped })
}

fn read_error(path: &Path) -> impl Fn(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Read { path: path.to_path_buf(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tar: &[u8]) -> Vec<String> {
        let mut archive = tar::Archive::new(tar);
        archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect()
    }

    #[test]
    fn what_git_would_track_in_a_stable_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join(".gitignore"), "*.log\nbuild/\n").unwrap();
        std::fs::write(d.join("z.rs"), "z").unwrap();
        std::fs::write(d.join("a.rs"), "a").unwrap();
        std::fs::write(d.join("run.log"), "noise").unwrap();
        std::fs::create_dir_all(d.join("build/out")).unwrap();
        std::fs::write(d.join("build/out/x"), "x").unwrap();
        std::fs::create_dir(d.join(".git")).unwrap();
        std::fs::write(d.join(".git/HEAD"), "ref").unwrap();
        std::fs::create_dir(d.join(".github")).unwrap();
        std::fs::write(d.join(".github/ci.yml"), "on: push").unwrap();
        let s = snapshot(d, 1 << 20).unwrap();
        assert_eq!(names(&s.tar), [".github", ".github/ci.yml", ".gitignore", "a.rs", "z.rs"]);
        assert_eq!(s.files, 4);
        // Times do not change the bytes.
        std::fs::write(d.join("a.rs"), "a").unwrap();
        assert_eq!(snapshot(d, 1 << 20).unwrap().tar, s.tar);
    }

    #[test]
    fn a_snapshot_stops_at_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big"), vec![0u8; 8192]).unwrap();
        let err = snapshot(dir.path(), 4096).unwrap_err();
        assert!(matches!(err, SnapshotError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("4KiB"), "{err}");
    }
}
