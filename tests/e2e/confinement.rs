//! `shell.exec` from the attacker's side: an allowed program must not become
//! a shell. Each test drives real programs through the shipped `shell-exec`
//! skill or the hostile `shell-without-grant` component, and checks the
//! effect on the machine (a marker file, a listener, `/proc`), not only the
//! answer.

use crate::{host, load, run_json, workspace};
use coderclaw::{Access, Grant};
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Runs `git` in `dir` outside the sandbox (test setup).
fn git(dir: &Path, args: &[&str]) {
    let ok = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .status()
        .expect("git runs")
        .success();
    assert!(ok, "git {args:?}");
}

/// An executable file with `body`, outside every granted directory.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A git repository whose own `.git/config` tries to run `marker`-touching
/// programs: an fsmonitor hook, a hooks directory with pre-commit, and an
/// alias to a shell command.
fn hostile_repo(marker: &Path) -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    let r = repo.path();
    git(r, &["init", "-q"]);
    git(r, &["config", "user.name", "t"]);
    git(r, &["config", "user.email", "t@example.invalid"]);
    let touch = format!("#!/bin/sh\ntouch {}\n", marker.display());
    let hooks = r.join("myhooks");
    std::fs::create_dir(&hooks).unwrap();
    script(&hooks, "pre-commit", &touch);
    script(&r.join(".git/hooks"), "pre-commit", &touch);
    let monitor = script(r, "monitor.sh", &touch);
    git(r, &["config", "core.fsmonitor", monitor.to_str().unwrap()]);
    git(r, &["config", "core.hooksPath", hooks.to_str().unwrap()]);
    git(r, &["config", "alias.st", &format!("!touch {}", marker.display())]);
    std::fs::write(r.join("file.txt"), "x\n").unwrap();
    repo
}

async fn exec(grant: &Grant, program: &str, args: &[&str]) -> Value {
    let host = host();
    let input = json!({"program": program, "args": args});
    run_json(&host, &load(&host, "shell-without-grant"), input, grant).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allowed_program_cannot_be_made_to_run_another() {
    let outside = tempfile::tempdir().unwrap();
    let marker = outside.path().join("ran");
    let repo = hostile_repo(&marker);
    let grant = Grant::builder()
        .dir(repo.path(), ".", Access::ReadWrite)
        .shell("git")
        .shell("find")
        .shell("tar")
        .shell("env")
        .shell("xargs")
        .build()
        .unwrap();
    let m = marker.to_str().unwrap();
    let refused: &[(&str, &[&str], &str)] = &[
        ("git", &["-c", &format!("alias.x=!touch {m}"), "x"], "-c"),
        ("git", &["-c", &format!("core.sshCommand=touch {m}"), "fetch", "ssh://h/x"], "-c"),
        ("git", &["--config-env=core.pager=HOME", "log"], "--config-env"),
        ("git", &["--exec-path=/tmp", "status"], "--exec-path"),
        ("git", &["-C", "/", "status"], "-C"),
        ("git", &["clone", &format!("--upload-pack=touch {m}"), "x", "y"], "--upload-pack"),
        ("git", &["st"], "aliases"),
        ("find", &[".", "-exec", "touch", m, ";"], "-exec"),
        ("tar", &["-cf", "/dev/null", &format!("--to-command=touch {m}"), "."], "--to-command"),
        ("env", &["touch", m], "runs other programs"),
        ("xargs", &["touch", m], "runs other programs"),
    ];
    for (program, args, why) in refused {
        let out = exec(&grant, program, args).await;
        assert_eq!(out["ran"], false, "{program} {args:?}: {out}");
        assert!(out["denied"].as_str().unwrap_or_default().contains(why), "{program} {args:?}: {out}");
        assert!(!marker.exists(), "{program} {args:?} ran another program");
    }

    // Plain commands in the hostile repository run, but its fsmonitor and
    // hooks (from .git/config, .git/hooks and core.hooksPath) do not.
    for args in [&["status"][..], &["add", "file.txt"], &["commit", "-q", "-m", "x"], &["log", "--oneline"]] {
        let out = exec(&grant, "git", args).await;
        assert_eq!(out["ran"], true, "git {args:?}: {out}");
        assert_eq!(out["exit_code"], 0, "git {args:?}: {out}");
        assert!(!marker.exists(), "git {args:?} ran the repository's own program");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_and_writes_outside_the_grant_fail_in_the_kernel() {
    let ws = workspace();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "TOPSECRET\n").unwrap();
    let read_only = Grant::builder().dir(ws.path(), ".", Access::Read).shell("ls").shell("head").shell("touch");
    let grant = read_only.build().unwrap();
    let o = outside.path().to_str().unwrap();
    let secret = format!("{o}/secret");

    // Inside the grant, reading works.
    let out = exec(&grant, "ls", &["."]).await;
    assert_eq!(out["exit_code"], 0, "{out}");
    assert!(out["stdout"].as_str().unwrap().contains("README.md"), "{out}");

    for (program, args) in
        [("ls", vec![o]), ("head", vec![secret.as_str()]), ("head", vec!["/etc/shadow"]), ("ls", vec!["/proc/1/root/"])]
    {
        let out = exec(&grant, program, &args).await;
        assert_ne!(out["exit_code"], 0, "{program} {args:?} read outside the grant: {out}");
        assert!(!out["stdout"].as_str().unwrap_or_default().contains("TOPSECRET"), "{out}");
    }

    // Writing: neither outside, nor inside a read-only grant.
    let planted = outside.path().join("planted");
    let inside = ws.path().join("planted");
    for target in [&planted, &inside] {
        let out = exec(&grant, "touch", &[target.to_str().unwrap()]).await;
        assert_ne!(out["exit_code"], 0, "{out}");
        assert!(!target.exists(), "touch wrote {}", target.display());
    }
    // A read-write grant lets the same call write inside it, and only there.
    let rw = Grant::builder().dir(ws.path(), ".", Access::ReadWrite).shell("touch").build().unwrap();
    let out = exec(&rw, "touch", &[inside.to_str().unwrap()]).await;
    assert_eq!(out["exit_code"], 0, "{out}");
    assert!(inside.exists());
    let out = exec(&rw, "touch", &[planted.to_str().unwrap()]).await;
    assert_ne!(out["exit_code"], 0, "{out}");
    assert!(!planted.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn children_have_no_network_and_cannot_signal_the_host() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/repo.git", listener.local_addr().unwrap());
    let ws = workspace();
    let tools = tempfile::tempdir().unwrap();
    let signal = script(tools.path(), "signal.sh", "#!/bin/sh\nkill -0 \"$1\" && echo reachable\n");
    let signal = signal.to_str().unwrap();
    let grant = Grant::builder().dir(ws.path(), ".", Access::ReadWrite).shell("git").shell(signal).build().unwrap();

    let out = exec(&grant, "git", &["ls-remote", &url]).await;
    assert_ne!(out["exit_code"], 0, "{out}");
    let accepted = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
    assert!(accepted.is_err(), "a shell.exec child reached a loopback listener");

    let out = exec(&grant, signal, &[&std::process::id().to_string()]).await;
    assert_eq!(out["ran"], true, "{out}");
    assert!(!out["stdout"].as_str().unwrap().contains("reachable"), "the child could signal the host: {out}");
}

/// Processes whose command line holds `tag`.
fn processes_with(tag: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(tag)
        {
            found.push(format!("{}: {}", entry.file_name().to_string_lossy(), String::from_utf8_lossy(&cmdline)));
        }
    }
    found
}

/// Waits up to 3 s for every process tagged `tag` to be gone.
async fn assert_all_gone(tag: &str, case: &str) {
    let until = Instant::now() + Duration::from_secs(3);
    loop {
        let left = processes_with(tag);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < until, "{case}: processes outlived the call: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_descendant_outlives_the_call_setsid_or_not() {
    let ws = workspace();
    let tools = tempfile::tempdir().unwrap();
    // Unique durations tag this test's sleepers in /proc.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let tag = format!("{}.{:06}", 300 + std::process::id() % 100, nanos % 1_000_000);
    let body = format!(
        "#!/bin/sh\nsetsid sleep {tag}1 </dev/null >/dev/null 2>&1 &\nsleep {tag}2 </dev/null >/dev/null 2>&1 &\n\
         echo started\n[ \"$1\" = wait ] && sleep {tag}3\nexit 0\n"
    );
    let spawner = script(tools.path(), "spawner.sh", &body);
    let spawner = spawner.to_str().unwrap();
    let host = host();
    let skill = load(&host, "shell-exec");
    let grant = |timeout_ms| {
        Grant::builder()
            .dir(ws.path(), ".", Access::Read)
            .shell(spawner)
            .shell_timeout(Duration::from_millis(timeout_ms))
            .build()
            .unwrap()
    };

    // Normal exit: the program returns at once, its background children do not.
    let out = run_json(&host, &skill, json!({"program": spawner}), &grant(10_000)).await.unwrap();
    assert_eq!(out["exit_code"], 0, "{out}");
    assert!(out["stdout"].as_str().unwrap().contains("started"), "{out}");
    assert_all_gone(&tag, "normal exit").await;

    // Timeout: killed after 500 ms.
    let err = host.run(&skill, &json!({"program": spawner, "args": ["wait"]}).to_string(), &grant(500)).await;
    assert!(err.unwrap_err().to_string().contains("timed out"));
    assert_all_gone(&tag, "timeout").await;

    // Cancel: the run's future is dropped while the program waits.
    let input = json!({"program": spawner, "args": ["wait"]}).to_string();
    let long = grant(60_000);
    let run = host.run(&skill, &input, &long);
    assert!(tokio::time::timeout(Duration::from_millis(1500), run).await.is_err(), "the run ended by itself");
    assert_all_gone(&tag, "cancel").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn children_cannot_reach_pathname_unix_sockets_or_make_namespaces() {
    // A listening socket outside the grant, like the session bus or docker.sock.
    let outside = tempfile::tempdir().unwrap();
    let path = outside.path().join("bus.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let ws = workspace();
    let perl = "/usr/bin/perl";
    let grant = Grant::builder().dir(ws.path(), ".", Access::Read).shell(perl).build().unwrap();
    let connect = "use IO::Socket::UNIX; IO::Socket::UNIX->new(Peer => $ARGV[0]) ? print 'connected' : print 'refused'";
    let out = exec(&grant, perl, &["-e", connect, path.to_str().unwrap()]).await;
    assert_eq!(out["ran"], true, "{out}");
    assert_eq!(out["stdout"], "refused", "{out}");
    assert!(listener.accept().is_err(), "the listener saw a connection from a shell.exec child");
    // unshare(CLONE_NEWUSER) is refused: no nested namespaces.
    let out = exec(&grant, perl, &["-e", "print syscall(272, 0x10000000)"]).await;
    assert_eq!(out["stdout"], "-1", "{out}");
}
