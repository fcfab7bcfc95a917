//! Where a task runs. A task that names no workspace runs in the one the
//! runtime was opened for; a remote submission can instead name one of the
//! server's configured workspaces (`workspaces:` in config.yaml, allowed
//! per role) or a snapshot of the client's directory it uploaded.
//!
//! Uploads are plain tar (no compression, so a snapshot holds no more than
//! was sent), named by the SHA-256 of the bytes as sent, kept per user
//! under `<state>/uploads/`, unpacked once with only regular files and
//! directories at relative paths (no links, devices, `..` or absolute
//! names, no name twice), offered read-only, and deleted when the last
//! unfinished task naming them finishes (or, if no task ever names them,
//! after `uploads.keepUnused`).

use coderclaw_core::decision::{Offer, OfferedDir, Subject};
use coderclaw_core::policy::{NamedWorkspace, UploadsSection};
use coderclaw_core::task::{FailureCode, TaskFailure, UploadInfo, WorkspaceRef, upload_digest};
use coderclaw_core::{Access, Digest};
use coderclaw_security::security::Security;
use coderclaw_tasks::{ErrorCode, RuntimeError};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The offer key of the directory a task works in.
pub const WORKSPACE_DIR: &str = "workspace";

/// Where one task runs: the directory its decision is checked against
/// (session scope) and what the host offers it.
#[derive(Debug, Clone)]
pub struct Place {
    /// The workspace directory.
    pub workspace: PathBuf,
    /// The host's offer with the workspace directory in it.
    pub offer: Offer,
}

/// The workspaces tasks of one runtime can run in.
pub struct Workspaces {
    security: Arc<Security>,
    default: Place,
    uploads: PathBuf,
    /// Held while an upload is checked against the total and moved in.
    admitting: Mutex<()>,
}

impl Workspaces {
    /// Tasks that name no workspace run in `default`; uploads are kept
    /// under `<state>/uploads`.
    pub fn new(security: Arc<Security>, default: Place) -> Self {
        let uploads = security.home().root().join("uploads");
        Self { security, default, uploads, admitting: Mutex::new(()) }
    }

    /// Whether `who` may name `workspace` now.
    pub fn admit(&self, who: &Subject, workspace: &WorkspaceRef) -> Result<(), RuntimeError> {
        self.locate(&who.user, &who.roles, workspace).map(|_| ())
    }

    /// Where a task of `user` with `roles` that named `workspace` runs,
    /// checked again when it starts (a role or a configured workspace may
    /// have gone since it was submitted).
    pub fn place(&self, user: &str, roles: &[String], workspace: Option<&WorkspaceRef>) -> Result<Place, TaskFailure> {
        let Some(workspace) = workspace else { return Ok(self.default.clone()) };
        let (dir, access) = self.locate(user, roles, workspace).map_err(|e| {
            let code = if e.code == ErrorCode::Internal { FailureCode::Internal } else { FailureCode::Denied };
            TaskFailure::new(code, e.message)
        })?;
        let mut offer = self.default.offer.clone();
        offer.dirs.insert(WORKSPACE_DIR.to_owned(), OfferedDir { host: dir.clone(), guest: ".".into(), access });
        Ok(Place { workspace: dir, offer })
    }

    fn locate(
        &self,
        user: &str,
        roles: &[String],
        workspace: &WorkspaceRef,
    ) -> Result<(PathBuf, Access), RuntimeError> {
        workspace.check().map_err(|m| RuntimeError::new(ErrorCode::InvalidRequest, m))?;
        match workspace {
            WorkspaceRef::Name(name) => {
                let policy =
                    self.security.policy().map_err(|e| RuntimeError::new(ErrorCode::Internal, e.to_string()))?;
                let configured = &policy.config.workspaces;
                let Some(w) = configured.get(name) else {
                    // Only the names this session could use: the others are
                    // none of its business.
                    let usable = configured.iter().filter(|(_, w)| w.roles.iter().any(|r| roles.contains(r)));
                    let known = usable.map(|(n, _)| n.as_str()).collect::<Vec<_>>();
                    let hint = if known.is_empty() {
                        "none is configured for your roles (workspaces: in the server's config.yaml)".to_owned()
                    } else {
                        format!("yours are {}", known.join(", "))
                    };
                    return Err(RuntimeError::new(ErrorCode::NotFound, format!("no workspace `{name}`: {hint}")));
                };
                if !w.roles.iter().any(|r| roles.contains(r)) {
                    return Err(RuntimeError::new(ErrorCode::Forbidden, refusal(name, w, roles)));
                }
                if !w.path.is_dir() {
                    return Err(RuntimeError::new(
                        ErrorCode::Internal,
                        format!("workspace `{name}` is configured at {}, which is not a directory", w.path.display()),
                    ));
                }
                // Keys, sessions, the audit log and every user's uploads
                // live there: no task may see them through a workspace.
                let state = self.security.home().root();
                let (dir, state) = (canonical(&w.path), canonical(state));
                if dir.starts_with(&state) || state.starts_with(&dir) {
                    return Err(RuntimeError::new(
                        ErrorCode::Internal,
                        format!(
                            "workspace `{name}` overlaps this server's state directory: tasks there could read its \
                             keys, sessions and uploads; configure another path"
                        ),
                    ));
                }
                Ok((w.path.clone(), if w.write { Access::ReadWrite } else { Access::Read }))
            }
            WorkspaceRef::Upload(text) => {
                let digest = upload_digest(text).expect("checked above");
                let dir = self.upload_dir(user, &digest);
                if !dir.is_dir() {
                    return Err(RuntimeError::new(
                        ErrorCode::NotFound,
                        format!(
                            "no upload {text} of yours: upload the snapshot again (uploads go when their task \
                             finishes, or when no task names them for a while)"
                        ),
                    ));
                }
                Ok((dir, Access::Read))
            }
        }
    }

    /// Keeps `tar` for `user`: checks every entry, unpacks it beside the
    /// others and moves it in only when all of it is there.
    pub fn upload(&self, user: &str, tar: &[u8]) -> Result<UploadInfo, RuntimeError> {
        let limits = self.limits()?;
        if tar.len() as u64 > limits.max_bytes.0 {
            return Err(too_large(tar.len() as u64, limits.max_bytes.0));
        }
        let digest = Digest::of(tar);
        let final_dir = self.upload_dir(user, &digest);
        let info = |files| UploadInfo { digest: format!("sha256:{}", digest.to_hex()), bytes: tar.len() as u64, files };
        {
            let _held = self.admitting.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(files) = already_kept(&final_dir) {
                return Ok(info(files));
            }
        }
        // What is unpacked is never more than was sent plus the entries'
        // cost: refused before any of it is written when it cannot fit.
        let kept = self.total_bytes();
        if kept + tar.len() as u64 > limits.max_total_bytes.0 {
            return Err(over_total(kept, tar.len() as u64, limits.max_total_bytes.0));
        }
        let incoming = self.uploads.join(".incoming");
        mkdir(&incoming)?;
        let staging = tempfile::Builder::new().prefix("upload-").tempdir_in(&incoming).map_err(io("staging"))?;
        let unpacked = unpack(tar, staging.path(), limits.max_files)?;
        let _held = self.admitting.lock().unwrap_or_else(|p| p.into_inner());
        let kept = self.total_bytes();
        if kept + unpacked.bytes > limits.max_total_bytes.0 {
            return Err(over_total(kept, unpacked.bytes, limits.max_total_bytes.0));
        }
        if let Some(files) = already_kept(&final_dir) {
            // The same bytes arrived meanwhile.
            return Ok(info(files));
        }
        mkdir(final_dir.parent().expect("under uploads"))?;
        let staged = staging.keep();
        if let Err(e) = std::fs::rename(&staged, &final_dir) {
            let _ = std::fs::remove_dir_all(&staged);
            return Err(io("moving the upload in")(e));
        }
        let meta = serde_json::json!({ "files": unpacked.files, "bytes": unpacked.bytes });
        std::fs::write(sidecar(&final_dir), meta.to_string()).map_err(io("recording the upload"))?;
        tracing::info!(user, digest = %digest, files = unpacked.files, bytes = unpacked.bytes, "upload kept");
        Ok(info(unpacked.files))
    }

    /// Deletes `user`'s upload `workspace` (no unfinished task names it).
    pub fn release(&self, user: &str, workspace: &WorkspaceRef) {
        let WorkspaceRef::Upload(text) = workspace else { return };
        let Some(digest) = upload_digest(text) else { return };
        remove_upload(&self.upload_dir(user, &digest));
    }

    /// Deletes uploads no unfinished task names that were sent longer than
    /// `uploads.keepUnused` ago, and staging left by an interrupted upload.
    pub fn sweep(&self, in_use: &HashSet<(String, WorkspaceRef)>) {
        let Ok(limits) = self.limits() else { return };
        let keep = Duration::from_millis(limits.keep_unused.0);
        let used: HashSet<PathBuf> = in_use
            .iter()
            .filter_map(|(user, w)| match w {
                WorkspaceRef::Upload(d) => upload_digest(d).map(|d| self.upload_dir(user, &d)),
                WorkspaceRef::Name(_) => None,
            })
            .collect();
        let _held = self.admitting.lock().unwrap_or_else(|p| p.into_inner());
        for staged in entries(&self.uploads.join(".incoming")) {
            if older_than(&staged, keep) {
                let _ = std::fs::remove_dir_all(&staged);
            }
        }
        for user_dir in entries(&self.uploads).into_iter().filter(|d| !is_hidden(d)) {
            for upload in entries(&user_dir).into_iter().filter(|p| p.is_dir()) {
                if !used.contains(&upload) && older_than(&sidecar(&upload), keep) {
                    tracing::info!(upload = %upload.display(), "unused upload deleted");
                    remove_upload(&upload);
                }
            }
            let _ = std::fs::remove_dir(&user_dir);
        }
    }

    fn limits(&self) -> Result<UploadsSection, RuntimeError> {
        let policy = self.security.policy().map_err(|e| RuntimeError::new(ErrorCode::Internal, e.to_string()))?;
        let limits = policy.config.uploads.clone();
        if limits.max_bytes.0 == 0 {
            return Err(RuntimeError::new(
                ErrorCode::Forbidden,
                "this server takes no uploads (uploads.maxBytes is 0): name one of its workspaces instead",
            ));
        }
        Ok(limits)
    }

    /// Bytes all kept uploads hold, from their records.
    fn total_bytes(&self) -> u64 {
        let mut total = 0;
        for user_dir in entries(&self.uploads).into_iter().filter(|d| !is_hidden(d)) {
            for upload in entries(&user_dir).into_iter().filter(|p| p.is_dir()) {
                let record = std::fs::read(sidecar(&upload)).ok();
                let value: Option<serde_json::Value> = record.and_then(|b| serde_json::from_slice(&b).ok());
                total += value.and_then(|v| v["bytes"].as_u64()).unwrap_or(0);
            }
        }
        total
    }

    /// `<state>/uploads/<user key>/<hex>`: users never share an upload, so
    /// a digest says nothing about what another user sent.
    fn upload_dir(&self, user: &str, digest: &Digest) -> PathBuf {
        let user_key = Digest::of(user.as_bytes()).to_hex();
        self.uploads.join(&user_key[..32]).join(digest.to_hex())
    }
}

/// `path` with links resolved, or as written if it cannot be.
fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

fn refusal(name: &str, w: &NamedWorkspace, roles: &[String]) -> String {
    let allowed = if w.roles.is_empty() { "no role".to_owned() } else { w.roles.join(", ") };
    format!(
        "workspace `{name}` is for {allowed}; this session has {}: ask an administrator for one of those roles",
        if roles.is_empty() { "none".to_owned() } else { roles.join(", ") }
    )
}

fn over_total(kept: u64, adds: u64, max: u64) -> RuntimeError {
    RuntimeError::new(
        ErrorCode::QuotaExceeded,
        format!(
            "the server keeps {} of uploads and this one adds {}, over uploads.maxTotalBytes ({}): wait for running \
             tasks to finish, then send it again",
            coderclaw_core::units::format_size(kept),
            coderclaw_core::units::format_size(adds),
            coderclaw_core::units::format_size(max)
        ),
    )
}

fn too_large(got: u64, max: u64) -> RuntimeError {
    RuntimeError::new(
        ErrorCode::PayloadTooLarge,
        format!(
            "the snapshot is {}, over this server's uploads.maxBytes ({}): leave build output out (.gitignore) or \
             name one of the server's workspaces",
            coderclaw_core::units::format_size(got),
            coderclaw_core::units::format_size(max)
        ),
    )
}

/// Longest path inside a snapshot, in bytes.
const MAX_PATH_BYTES: usize = 1024;

/// Deepest path inside a snapshot, in components.
const MAX_DEPTH: usize = 64;

/// What a file or directory costs on disk beyond its content (a block),
/// charged to the uploads' total.
const ENTRY_COST: u64 = 4096;

struct Unpacked {
    files: u64,
    bytes: u64,
}

/// Unpacks `tar` into the empty directory `into`, refusing anything but
/// regular files and directories at fresh relative paths, and more than
/// `max_files` entries.
fn unpack(tar: &[u8], into: &Path, max_files: u64) -> Result<Unpacked, RuntimeError> {
    let bad = |m: String| RuntimeError::new(ErrorCode::InvalidRequest, format!("the upload is refused: {m}"));
    let mut archive = tar::Archive::new(tar);
    let (mut seen, mut dirs) = (HashSet::new(), HashSet::new());
    let (mut files, mut bytes, mut entries) = (0u64, 0u64, 0u64);
    for entry in archive.entries().map_err(|e| bad(format!("not a tar archive ({e})")))? {
        let mut entry = entry.map_err(|e| bad(format!("not a tar archive ({e})")))?;
        let kind = entry.header().entry_type();
        if kind == tar::EntryType::XGlobalHeader {
            continue;
        }
        let raw = entry.path().map_err(|e| bad(format!("an entry's name cannot be read ({e})")))?.into_owned();
        let shown = coderclaw_core::task::printable(&raw.to_string_lossy(), 200).unwrap_or_default();
        let relative = relative_path(&raw).ok_or_else(|| {
            bad(format!("`{shown}` is not a relative path inside the snapshot (no `..`, no leading `/`)"))
        })?;
        if relative.as_os_str().is_empty() {
            continue;
        }
        if relative.as_os_str().len() > MAX_PATH_BYTES || relative.components().count() > MAX_DEPTH {
            return Err(bad(format!(
                "`{shown}` is longer than {MAX_PATH_BYTES} bytes or deeper than {MAX_DEPTH} directories"
            )));
        }
        if !seen.insert(relative.clone()) {
            return Err(bad(format!("`{shown}` appears twice")));
        }
        // Every directory made counts, the ones a path implies too: a few
        // deep names must not make millions of directories.
        let made_dirs = relative.ancestors().skip(1).filter(|a| !a.as_os_str().is_empty());
        let implied = made_dirs.filter(|a| dirs.insert(a.to_path_buf())).count() as u64;
        let own = u64::from(kind != tar::EntryType::Directory || dirs.insert(relative.clone()));
        entries += implied + own;
        bytes += (implied + own) * ENTRY_COST;
        if entries > max_files {
            return Err(bad(format!("it has more than {max_files} files and directories (uploads.maxFiles)")));
        }
        let target = into.join(&relative);
        match kind {
            tar::EntryType::Directory => std::fs::create_dir_all(&target).map_err(io_bad(&shown))?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(io_bad(&shown))?;
                }
                let mode = entry.header().mode().unwrap_or(0o644);
                let mut file = create_file(&target, mode).map_err(io_bad(&shown))?;
                let mut buf = [0u8; 64 * 1024];
                loop {
                    let n = entry.read(&mut buf).map_err(|e| bad(format!("`{shown}` is cut short ({e})")))?;
                    if n == 0 {
                        break;
                    }
                    file.write_all(&buf[..n]).map_err(io("unpacking the upload"))?;
                    bytes += n as u64;
                }
                files += 1;
            }
            other => {
                return Err(bad(format!(
                    "`{shown}` is a {}: a snapshot holds only regular files and directories",
                    kind_name(other)
                )));
            }
        }
    }
    Ok(Unpacked { files, bytes })
}

fn kind_name(kind: tar::EntryType) -> &'static str {
    match kind {
        tar::EntryType::Symlink => "symbolic link",
        tar::EntryType::Link => "hard link",
        tar::EntryType::Char | tar::EntryType::Block => "device",
        tar::EntryType::Fifo => "named pipe",
        tar::EntryType::GNUSparse => "sparse file",
        _ => "special entry",
    }
}

/// `raw` without `.` components, if it stays inside: only plain names.
fn relative_path(raw: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// A new file (never an existing one, never through a link), owner-only
/// writable; executable if it was.
fn create_file(path: &Path, mode: u32) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let perm = if mode & 0o100 != 0 { 0o755 } else { 0o644 };
    std::fs::OpenOptions::new().write(true).create_new(true).mode(perm).open(path)
}

fn io_bad(shown: &str) -> impl Fn(std::io::Error) -> RuntimeError + '_ {
    move |e| {
        RuntimeError::new(
            ErrorCode::InvalidRequest,
            format!("the upload is refused: `{shown}` cannot be unpacked ({e})"),
        )
    }
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> RuntimeError {
    move |e| RuntimeError::new(ErrorCode::Internal, format!("{what}: {e}"))
}

fn mkdir(dir: &Path) -> Result<(), RuntimeError> {
    std::fs::create_dir_all(dir).map_err(io("creating the uploads directory"))
}

/// The record kept beside an upload (not inside it: the task sees only
/// what was sent).
fn sidecar(upload: &Path) -> PathBuf {
    upload.with_extension("json")
}

/// The file count of `upload` if it is kept already; sent again, it is
/// kept as long again. Call with `admitting` held.
fn already_kept(upload: &Path) -> Option<u64> {
    if !upload.is_dir() {
        return None;
    }
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(sidecar(upload)).ok()?).ok()?;
    if let Ok(f) = std::fs::OpenOptions::new().append(true).open(sidecar(upload)) {
        let _ = f.set_modified(SystemTime::now());
    }
    record["files"].as_u64()
}

fn remove_upload(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(upload = %dir.display(), error = %e, "upload not deleted");
    }
    let _ = std::fs::remove_file(sidecar(dir));
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default()
}

fn is_hidden(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// Whether `path` was last changed longer than `age` ago (a file that is
/// gone counts as old).
fn older_than(path: &Path, age: Duration) -> bool {
    let modified = std::fs::metadata(path).and_then(|m| m.modified());
    modified.map_or(true, |t| t.elapsed().is_ok_and(|e| e >= age))
}

#[cfg(test)]
mod tests {
    use super::*;
    use coderclaw_security::home::Home;

    fn workspaces(config: &str) -> (tempfile::TempDir, Workspaces) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.yaml"), config).unwrap();
        let home = Arc::new(Home::open(dir.path()).unwrap());
        let security = Arc::new(Security::open(home, None).unwrap());
        let place = Place { workspace: dir.path().to_path_buf(), offer: Offer::default() };
        (dir, Workspaces::new(security, place))
    }

    fn tar_with(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, body) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, *body).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn upload_ref(info: &UploadInfo) -> WorkspaceRef {
        WorkspaceRef::Upload(info.digest.clone())
    }

    #[test]
    fn an_upload_is_kept_per_user_and_released() {
        let (_dir, w) = workspaces("");
        let tar = tar_with(&[("a.txt", b"alpha"), ("d/b.txt", b"beta")]);
        let info = w.upload("alice", &tar).unwrap();
        assert_eq!((info.files, info.bytes), (2, tar.len() as u64));
        assert_eq!(w.upload("alice", &tar).unwrap(), info, "the same bytes: the same upload");
        let place = w.place("alice", &[], Some(&upload_ref(&info))).unwrap();
        assert_eq!(std::fs::read_to_string(place.workspace.join("d/b.txt")).unwrap(), "beta");
        assert_eq!(place.offer.dirs[WORKSPACE_DIR].access, Access::Read);
        assert!(w.place("bob", &[], Some(&upload_ref(&info))).is_err(), "another user's upload is not found");
        w.release("alice", &upload_ref(&info));
        assert!(!place.workspace.exists());
        assert!(w.place("alice", &[], Some(&upload_ref(&info))).is_err());
    }

    #[test]
    fn the_sweep_keeps_what_tasks_name_and_recent_uploads() {
        let (_dir, w) = workspaces("uploads:\n  keepUnused: 1ms\n");
        let named = w.upload("alice", &tar_with(&[("a", b"1")])).unwrap();
        let unnamed = w.upload("alice", &tar_with(&[("b", b"2")])).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let in_use = HashSet::from([("alice".to_owned(), upload_ref(&named))]);
        w.sweep(&in_use);
        assert!(w.place("alice", &[], Some(&upload_ref(&named))).is_ok(), "named by a task: kept");
        assert!(w.place("alice", &[], Some(&upload_ref(&unnamed))).is_err(), "unused past keepUnused: gone");
        assert_eq!(w.total_bytes(), 1 + ENTRY_COST, "content and what the entry takes on disk");

        let (_dir, w) = workspaces("");
        let recent = w.upload("alice", &tar_with(&[("c", b"3")])).unwrap();
        w.sweep(&HashSet::new());
        assert!(w.place("alice", &[], Some(&upload_ref(&recent))).is_ok(), "within keepUnused: kept");
    }

    #[test]
    fn uploads_can_be_switched_off() {
        let (_dir, w) = workspaces("uploads:\n  maxBytes: 0\n");
        let err = w.upload("alice", &tar_with(&[("a", b"1")])).unwrap_err();
        assert_eq!(err.code, ErrorCode::Forbidden, "{err}");
    }

    #[test]
    fn relative_paths_stay_inside() {
        assert_eq!(relative_path(Path::new("./a/./b")), Some(PathBuf::from("a/b")));
        assert_eq!(relative_path(Path::new("a/../b")), None);
        assert_eq!(relative_path(Path::new("/etc/passwd")), None);
        assert_eq!(relative_path(Path::new("..")), None);
    }
}
