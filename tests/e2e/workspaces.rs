//! Where a remote task runs: one of the server's named workspaces (allowed
//! per role) or a snapshot the client uploaded (content-addressed, per
//! user, read-only, deleted with its task), over every transport; and
//! hostile uploads from the attacker's side.

use crate::tasks::{Harness, Via, fixture};
use coderclaw::tasks::http_server::{ServerConfig, serve};
use coderclaw::tasks::{CoderClawRuntime, ErrorCode, Transport};
use coderclaw_core::task::{FailureCode, TaskStatus, TaskSubmitRequest, WorkspaceRef};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Writes `config.yaml` into the fixture's state directory (the running
/// service picks it up at its next decision).
fn configure(h: &Harness, yaml: &str) {
    std::fs::write(h.f.home.root().join("config.yaml"), yaml).unwrap();
}

/// A client directory: a file to read, an ignored secret, git's own files.
fn client_checkout() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "from the client").unwrap();
    std::fs::write(dir.path().join(".gitignore"), "secret.env\ntarget/\n").unwrap();
    std::fs::write(dir.path().join("secret.env"), "TOKEN=hunter2").unwrap();
    std::fs::create_dir_all(dir.path().join("target/debug")).unwrap();
    std::fs::write(dir.path().join("target/debug/big.bin"), vec![0u8; 4096]).unwrap();
    std::fs::create_dir(dir.path().join(".git")).unwrap();
    std::fs::write(dir.path().join(".git/config"), "[core]").unwrap();
    std::fs::create_dir(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/lib.rs"), "pub fn f() {}").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("passwd-link")).unwrap();
    dir
}

async fn probe(rt: &CoderClawRuntime<Arc<dyn Transport>>, workspace: Option<WorkspaceRef>, input: Value) -> Value {
    let mut req = TaskSubmitRequest::skill("team/probe", input);
    req.workspace = workspace;
    let task = rt.submit_task(req).await.unwrap();
    let done = rt.wait(&task.id, |_| {}).await.unwrap();
    assert_eq!(done.status, TaskStatus::Completed, "{:?}", done.error);
    done.output.unwrap()
}

/// Every kept upload directory under the state directory.
fn kept_uploads(home: &Path) -> Vec<PathBuf> {
    let Ok(users) = std::fs::read_dir(home.join("uploads")) else { return Vec::new() };
    users
        .filter_map(|u| u.ok())
        .filter(|u| !u.file_name().to_string_lossy().starts_with('.'))
        .flat_map(|u| std::fs::read_dir(u.path()).unwrap().filter_map(|e| e.ok()).map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect()
}

async fn an_upload_is_the_task_workspace_and_goes_with_it(via: Via) {
    let h = Harness::start(via, Default::default()).await;
    let alice = h.user("alice", &["developer"]);
    let bob = h.user("bob", &["developer"]);
    let checkout = client_checkout();
    let snapshot = coderclaw::snapshot::snapshot(checkout.path(), 1 << 20).unwrap();
    assert_eq!(snapshot.skipped, [PathBuf::from("passwd-link")]);
    let again = coderclaw::snapshot::snapshot(checkout.path(), 1 << 20).unwrap();
    assert_eq!(snapshot.tar, again.tar, "the same files give the same bytes");
    let info = alice.upload_workspace(snapshot.tar.into()).await.unwrap();
    assert!(info.digest.starts_with("sha256:"), "{info:?}");
    assert_eq!(info.files, 3, ".gitignore, notes.txt and src/lib.rs: {info:?}");
    let upload = Some(WorkspaceRef::Upload(info.digest.clone()));

    // Another user cannot name it, nor learn that it exists.
    let mut theirs = TaskSubmitRequest::skill("team/probe", json!({}));
    theirs.workspace = upload.clone();
    let err = bob.submit_task(theirs).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound, "{err}");

    let input = json!({
        "read": ["notes.txt", "src/lib.rs", "secret.env", ".git/config", "target/debug/big.bin", "passwd-link"],
        "write": ["notes.txt", "new.txt"],
        "list": ["."],
    });
    let out = probe(&alice, upload.clone(), input).await;
    assert_eq!(out["read"]["notes.txt"], "ok:15", "{out}");
    assert_eq!(out["read"]["src/lib.rs"], "ok:13", "{out}");
    for left_out in ["secret.env", ".git/config", "target/debug/big.bin", "passwd-link"] {
        assert_eq!(out["read"][left_out], "err:NotFound", "{left_out} was not sent: {out}");
    }
    assert!(out["write"]["notes.txt"].as_str().unwrap().starts_with("err:"), "an upload is read-only: {out}");
    assert!(out["write"]["new.txt"].as_str().unwrap().starts_with("err:"), "{out}");
    assert_eq!(out["list"]["."], "ok:3", "{out}");

    // Deleted once its task is over; naming it again says what to do.
    let root = h.f.home.root().to_path_buf();
    for _ in 0..100 {
        if kept_uploads(&root).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(kept_uploads(&root), Vec::<PathBuf>::new(), "the upload outlived its task");
    let mut later = TaskSubmitRequest::skill("team/probe", json!({}));
    later.workspace = upload;
    let err = alice.submit_task(later).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound, "{err}");
    assert!(err.message.contains("upload the snapshot again"), "{err}");
}

async fn named_workspaces_are_allowed_per_role(via: Via) {
    let h = Harness::start(via, Default::default()).await;
    let (shared, ops) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::write(shared.path().join("README"), "shared checkout").unwrap();
    std::fs::write(ops.path().join("README"), "ops only").unwrap();
    let shared_and_ops = format!(
        "workspaces:\n  shared:\n    path: {}\n    roles: [developer]\n    write: true\n  ops:\n    path: {}\n    roles: [admin]\n",
        shared.path().display(),
        ops.path().display()
    );
    configure(&h, &shared_and_ops);
    let dev = h.user("dev", &["developer"]);
    let input = json!({ "read": ["README"], "write": ["report.txt"] });
    let out = probe(&dev, Some(WorkspaceRef::Name("shared".into())), input.clone()).await;
    assert_eq!(out["read"]["README"], "ok:15", "{out}");
    assert_eq!(out["write"]["report.txt"], "ok:written", "write: true lets tasks write: {out}");
    assert!(shared.path().join("report.txt").exists());
    // Without a name: the server's own workspace, not the named one.
    let out = probe(&dev, None, json!({ "read": ["README"] })).await;
    assert_eq!(out["read"]["README"], "err:NotFound", "{out}");

    let submit = async |name: &str| {
        let mut req = TaskSubmitRequest::skill("team/probe", input.clone());
        req.workspace = Some(WorkspaceRef::Name(name.into()));
        dev.submit_task(req).await.unwrap_err()
    };
    let err = submit("ops").await;
    assert_eq!(err.code, ErrorCode::Forbidden, "{err}");
    assert!(err.message.contains("admin") && err.message.contains("developer"), "{err}");
    let err = submit("nope").await;
    assert_eq!(err.code, ErrorCode::NotFound, "{err}");
    assert!(
        err.message.contains("yours are shared") && !err.message.contains("ops"),
        "lists only what it may use: {err}"
    );
    let err = submit("../ops").await;
    assert_eq!(err.code, ErrorCode::InvalidRequest, "{err}");
    // A workspace around the state directory would show tasks its keys and uploads.
    let state = h.f.home.root().parent().unwrap().to_path_buf();
    configure(&h, &format!("workspaces:\n  everything:\n    path: {}\n    roles: [developer]\n", state.display()));
    let err = submit("everything").await;
    assert_eq!(err.code, ErrorCode::Internal, "{err}");
    assert!(err.message.contains("state directory"), "{err}");
    configure(&h, &shared_and_ops);
    assert!(!ops.path().join("report.txt").exists());

    // A role taken away after submission: refused when the task starts.
    let mut req = TaskSubmitRequest::skill("team/probe", input.clone());
    req.workspace = Some(WorkspaceRef::Name("shared".into()));
    req.paused = true;
    let task = dev.submit_task(req).await.unwrap();
    configure(&h, &format!("workspaces:\n  shared:\n    path: {}\n    roles: [admin]\n", shared.path().display()));
    dev.resume_task(&task.id).await.unwrap();
    let done = dev.wait(&task.id, |_| {}).await.unwrap();
    assert_eq!(done.status, TaskStatus::Failed);
    let failure = done.error.unwrap();
    assert_eq!(failure.code, FailureCode::Denied, "{failure:?}");
}

/// Both scenarios over each transport.
macro_rules! over_every_transport {
    ($($module:ident: $via:ident),*) => {$(
        mod $module {
            #[tokio::test(flavor = "multi_thread")]
            async fn an_upload_is_the_task_workspace_and_goes_with_it() {
                super::an_upload_is_the_task_workspace_and_goes_with_it(crate::tasks::Via::$via).await;
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn named_workspaces_are_allowed_per_role() {
                super::named_workspaces_are_allowed_per_role(crate::tasks::Via::$via).await;
            }
        }
    )*};
}

over_every_transport!(local: Local, http: Http, ws: Ws, grpc: Grpc);

// ---- hostile uploads ----

/// A tar entry written byte by byte, so names the `tar` crate would refuse
/// to write (`..`, absolute) can be sent.
fn raw_entry(name: &str, kind: u8, link: &str, body: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    header[100..107].copy_from_slice(b"0000644");
    header[108..115].copy_from_slice(b"0000000");
    header[116..123].copy_from_slice(b"0000000");
    header[124..135].copy_from_slice(format!("{:011o}", body.len()).as_bytes());
    header[136..147].copy_from_slice(b"00000000000");
    header[156] = kind;
    header[157..157 + link.len()].copy_from_slice(link.as_bytes());
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    let mut out = header.to_vec();
    out.extend_from_slice(body);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// One file `depth` directories down, its name in a GNU long-name entry.
fn deep_tar(depth: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    b.append_data(&mut h, format!("{}f", "d/".repeat(depth)), &b"x"[..]).unwrap();
    b.into_inner().unwrap()
}

fn tar_of(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out: Vec<u8> = entries.concat();
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_uploads_are_refused_and_write_nothing() {
    let h = Harness::start(Via::Http, Default::default()).await;
    configure(&h, "uploads:\n  maxBytes: 64KiB\n  maxFiles: 5\n  maxTotalBytes: 96KiB\n");
    let dev = h.user("dev", &["developer"]);
    let outside = h.f.home.root().join("escaped.txt");
    // An absolute name aimed at a directory the server could write.
    let elsewhere = tempfile::tempdir().unwrap();
    let absolute = elsewhere.path().join("escaped.txt");
    let cases: Vec<(&str, Vec<u8>, ErrorCode, &str)> = vec![
        ("parent", tar_of(&[raw_entry("../escaped.txt", b'0', "", b"x")]), ErrorCode::InvalidRequest, "relative path"),
        (
            "parent inside",
            tar_of(&[raw_entry("a/../../escaped.txt", b'0', "", b"x")]),
            ErrorCode::InvalidRequest,
            "relative path",
        ),
        (
            "absolute",
            tar_of(&[raw_entry(&absolute.to_string_lossy(), b'0', "", b"x")]),
            ErrorCode::InvalidRequest,
            "relative",
        ),
        (
            "symlink then write through it",
            tar_of(&[raw_entry("link", b'2', "/", b""), raw_entry("link/escaped.txt", b'0', "", b"x")]),
            ErrorCode::InvalidRequest,
            "symbolic link",
        ),
        ("hard link", tar_of(&[raw_entry("h", b'1', "/etc/passwd", b"")]), ErrorCode::InvalidRequest, "hard link"),
        ("device", tar_of(&[raw_entry("dev", b'3', "", b"")]), ErrorCode::InvalidRequest, "device"),
        (
            "twice",
            tar_of(&[raw_entry("a.txt", b'0', "", b"first"), raw_entry("a.txt", b'0', "", b"second")]),
            ErrorCode::InvalidRequest,
            "appears twice",
        ),
        (
            "too many entries",
            tar_of(&(0..6).map(|i| raw_entry(&format!("f{i}"), b'0', "", b"x")).collect::<Vec<_>>()),
            ErrorCode::InvalidRequest,
            "maxFiles",
        ),
        (
            "directories a deep name implies count",
            tar_of(&[raw_entry("a/b/c/d/e/f", b'0', "", b"x")]),
            ErrorCode::InvalidRequest,
            "maxFiles",
        ),
        ("too deep (a GNU long name)", deep_tar(70), ErrorCode::InvalidRequest, "deeper than 64"),
        ("not a tar", b"PK\x03\x04 this is a zip".repeat(40), ErrorCode::InvalidRequest, "not a tar"),
        (
            "over maxBytes",
            tar_of(&[raw_entry("big", b'0', "", &[7u8; 70 * 1024])]),
            ErrorCode::PayloadTooLarge,
            "64KiB",
        ),
    ];
    for (what, tar, code, says) in cases {
        let err = dev.upload_workspace(tar.into()).await.unwrap_err();
        assert_eq!(err.code, code, "{what}: {err}");
        assert!(err.message.contains(says), "{what}: {err}");
        assert!(!outside.exists(), "{what} wrote outside the upload");
        assert!(!absolute.exists(), "{what} wrote {}", absolute.display());
        assert_eq!(kept_uploads(h.f.home.root()), Vec::<PathBuf>::new(), "{what} left an upload behind");
    }
    // Still usable; and all uploads together are bounded.
    let first = tar_of(&[raw_entry("a", b'0', "", &[1u8; 60 * 1024])]);
    dev.upload_workspace(first.into()).await.unwrap();
    let second = tar_of(&[raw_entry("b", b'0', "", &[2u8; 60 * 1024])]);
    let err = dev.upload_workspace(second.into()).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::QuotaExceeded, "{err}");
    assert!(err.message.contains("maxTotalBytes"), "{err}");

    // Only a few uploads are received at once, server-wide.
    let who = h.f.service.authenticate(Some(&h.f.login("eve", &["developer"]))).unwrap();
    let held: Vec<_> =
        (0..coderclaw::tasks::MAX_CONCURRENT_UPLOADS).map(|_| h.f.service.begin_upload(&who).unwrap()).collect();
    let err = dev.upload_workspace(tar_of(&[raw_entry("c", b'0', "", b"x")]).into()).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::RateLimited, "{err}");
    assert!(err.retry_after_secs.is_some(), "{err:?}");
    drop(held);

    // Uploading needs task:submit, checked before the body is read.
    let reader = h.user("reader", &["readonly"]);
    let err = reader.upload_workspace(tar_of(&[raw_entry("r", b'0', "", b"x")]).into()).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Forbidden, "{err}");
    // And a session.
    let err = h.connect(None).upload_workspace(tar_of(&[]).into()).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Unauthenticated, "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_workspace_reference_is_refused_before_it_is_stored() {
    let f = fixture(Default::default());
    let server =
        serve(f.service.clone(), ServerConfig { listen: "127.0.0.1:0".parse().unwrap(), ..Default::default() })
            .await
            .unwrap();
    let token = f.login("dev", &["developer"]);
    let http = coderclaw::tasks::HttpTransport::new(&server.url(), Some(token)).unwrap();
    let rt = CoderClawRuntime::new(http);
    for (workspace, says) in [
        (WorkspaceRef::Upload("sha256:abc".into()), "not an upload digest"),
        (WorkspaceRef::Upload(format!("sha256:{}", "A".repeat(64))), "not an upload digest"),
        (WorkspaceRef::Upload(format!("md5:{}", "a".repeat(64))), "not an upload digest"),
        (WorkspaceRef::Name(String::new()), "not a workspace name"),
        (WorkspaceRef::Name("a/b".into()), "not a workspace name"),
        (WorkspaceRef::Name("x".repeat(65)), "not a workspace name"),
    ] {
        let mut req = TaskSubmitRequest::skill("team/probe", json!({}));
        req.workspace = Some(workspace.clone());
        let err = rt.submit_task(req).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidRequest, "{workspace:?}: {err}");
        assert!(err.message.contains(says), "{workspace:?}: {err}");
    }
    assert!(f.engine.list(&Default::default()).unwrap().is_empty(), "nothing was stored");
}
