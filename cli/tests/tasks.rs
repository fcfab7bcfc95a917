//! The task commands and `coderclaw serve` as real processes: a local
//! submit that runs to its end, and a server killed with SIGKILL mid-task
//! and restarted on the same state directory.

mod common;

use common::{Cli, Server, login, p, sign, sign_with, start_server, text, trusted_key, workspace};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

fn install_signed(cli: &Cli, dir: &std::path::Path) {
    trusted_key(cli, "team-key", "team");
    let echo = sign(cli, "echo", "team-key", dir);
    let manifest = dir.join("asker.toml");
    std::fs::write(&manifest, "id = \"team/asker\"\nversion = \"1.0.0\"\nkind = \"skill\"\ndescription = \"asks\"\n[limits]\ntimeout = \"600s\"\n").unwrap();
    let asker = sign_with(cli, "asker", "team-key", &manifest, dir);
    for pkg in [echo, asker] {
        let out = cli.run(&["skill", "install", p(&pkg)]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
}

#[test]
fn a_local_submit_runs_to_the_end_and_its_exit_code_says_how_it_ended() {
    let cli = Cli::new();
    let tmp = tempfile::tempdir().unwrap();
    install_signed(&cli, tmp.path());
    let ws = p(tmp.path());
    let out = cli.run(&[
        "task",
        "submit",
        "--skill",
        "team/echo",
        "--input",
        "{\"x\": 1}",
        "--wait",
        "--json",
        "--workspace",
        ws,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let state: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(state["status"], "COMPLETED");
    assert_eq!(state["output"], serde_json::json!({ "echo": { "x": 1 } }));
    let id = state["id"].as_str().unwrap();

    let events: Value =
        serde_json::from_slice(&cli.run(&["task", "events", id, "--json", "--workspace", ws]).stdout).unwrap();
    let statuses: Vec<&str> = events.as_array().unwrap().iter().map(|e| e["status"].as_str().unwrap()).collect();
    assert_eq!(statuses.first(), Some(&"PENDING"));
    assert_eq!(statuses.last(), Some(&"COMPLETED"));

    // WAITING with the engine in this process: the answer comes from stdin.
    let asked = cli.run_stdin(
        &["task", "submit", "--skill", "team/asker", "--input", "{\"ask\": \"go?\"}", "--json", "--workspace", ws],
        "yes, go\n",
    );
    assert_eq!(asked.status.code(), Some(0), "{}", text(&asked.stderr));
    let answered: Value = serde_json::from_slice(&asked.stdout).unwrap();
    assert_eq!(answered["output"], serde_json::json!({ "answer": "yes, go" }));

    let out = cli.run(&["task", "submit", "--skill", "team/missing", "--wait", "--workspace", ws]);
    assert_eq!(out.status.code(), Some(3), "a FAILED task exits 3");
    assert!(text(&out.stdout).contains("team/missing"), "{}", text(&out.stdout));
    let out = cli.run(&["task", "submit", "--skill", "team/echo", "--input", "{oops", "--workspace", ws]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("not valid JSON"), "{}", text(&out.stderr));
    let out = cli.run(&["status", "--json", "--workspace", ws]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((status["totalTasks"].as_u64(), status["healthy"].as_bool()), (Some(3), Some(true)));
}

/// The signed skills installed, a server on a free port, and a developer's
/// token: (port, server, token).
fn serve_signed(cli: &Cli, workspace: &std::path::Path) -> (u16, Server, String) {
    install_signed(cli, workspace);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = start_server(cli, p(workspace), port);
    (port, server, login(cli))
}

fn remote_json(cli: &Cli, url: &str, token: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--remote", url, "--token", token, "--json"]);
    let out = cli.run(&all);
    assert_eq!(out.status.code(), Some(0), "{:?}: {}", args, text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn kill_9_mid_task_then_restart_leaves_nothing_hanging_and_the_audit_chain_verifies() {
    let (cli, tmp) = (Cli::new(), tempfile::tempdir().unwrap());
    let ws = p(tmp.path());
    let (port, mut server, token) = serve_signed(&cli, tmp.path());
    let url = server.1.clone();
    let anonymous = cli.run(&["task", "list", "--remote", &url]);
    assert_eq!(anonymous.status.code(), Some(1));
    assert!(text(&anonymous.stderr).contains("unauthenticated"), "{}", text(&anonymous.stderr));
    assert!(text(&anonymous.stderr).contains("hint: log in with `coderclaw login`"), "{}", text(&anonymous.stderr));

    // A task that waits for input (in flight when the server dies), and
    // acknowledged echo tasks.
    let waiting =
        remote_json(&cli, &url, &token, &["task", "submit", "--skill", "team/asker", "--input", "{\"ask\": \"ok?\"}"]);
    let waiting_id = waiting["id"].as_str().unwrap().to_owned();
    let mut acknowledged = vec![waiting_id.clone()];
    for i in 0..5 {
        let t = remote_json(&cli, &url, &token, &["task", "submit", "--skill", "team/echo", "--input", &i.to_string()]);
        acknowledged.push(t["id"].as_str().unwrap().to_owned());
    }
    let start = Instant::now();
    while remote_json(&cli, &url, &token, &["task", "status", &waiting_id])["status"] != "WAITING" {
        assert!(start.elapsed() < Duration::from_secs(30), "never reached WAITING");
        std::thread::sleep(Duration::from_millis(50));
    }
    nix_kill9(server.0.id());
    let _ = server.0.wait();

    let _server = start_server(&cli, ws, port);
    let start = Instant::now();
    let tasks = loop {
        let tasks = remote_json(&cli, &url, &token, &["task", "list"]);
        let busy = tasks
            .as_array()
            .unwrap()
            .iter()
            .any(|t| !["COMPLETED", "FAILED", "CANCELLED"].contains(&t["status"].as_str().unwrap()));
        if !busy {
            break tasks;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "tasks left hanging: {tasks}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let ids: Vec<&str> = tasks.as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    for id in &acknowledged {
        assert!(ids.contains(&id.as_str()), "acknowledged task {id} is present");
    }
    let interrupted = remote_json(&cli, &url, &token, &["task", "status", &waiting_id]);
    assert_eq!(
        (
            interrupted["status"].as_str(),
            interrupted["error"]["code"].as_str(),
            interrupted["error"]["message"].as_str()
        ),
        (Some("FAILED"), Some("host-restarted"), Some("host restarted"))
    );
    let out = cli.run(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
}

/// At full load: 64 clients submitting 5,000 tasks, the server killed
/// with SIGKILL midway. After a restart every acknowledged task is there
/// and final, and the audit chain verifies.
#[test]
fn kill_9_at_full_load_loses_no_acknowledged_task() {
    use coderclaw::tasks::{CoderClawRuntime, ErrorCode, HttpTransport};
    use coderclaw_core::task::TaskSubmitRequest;
    use std::sync::{Arc, Mutex};

    let (cli, tmp) = (Cli::new(), tempfile::tempdir().unwrap());
    let ws = p(tmp.path());
    let (port, mut server, token) = serve_signed(&cli, tmp.path());
    let url = server.1.clone();
    let (total, clients, kill_after) = (5000usize, 64usize, 2000usize);
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let rt = Arc::new(CoderClawRuntime::new(HttpTransport::new(&url, Some(token.clone())).unwrap()));
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut workers = Vec::new();
        for _ in 0..clients {
            let (rt, next, acknowledged) = (rt.clone(), next.clone(), acknowledged.clone());
            workers.push(tokio::spawn(async move {
                let mut i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                while i < total {
                    match rt.submit_task(TaskSubmitRequest::skill("team/echo", serde_json::json!(i))).await {
                        Ok(t) => acknowledged.lock().unwrap().push(t.id),
                        // The session's quota of unfinished tasks: again, later.
                        Err(e) if e.code == ErrorCode::QuotaExceeded => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                        // The server is gone: what was not acknowledged may be lost.
                        Err(_) => return,
                    }
                    i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }));
        }
        let start = Instant::now();
        while acknowledged.lock().unwrap().len() < kill_after {
            assert!(start.elapsed() < Duration::from_secs(120), "the load never got going");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        nix_kill9(server.0.id());
        for w in workers {
            w.await.unwrap();
        }
    });
    let _ = server.0.wait();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= kill_after && acknowledged.len() < total, "killed midway: {}", acknowledged.len());

    let _server = start_server(&cli, ws, port);
    runtime.block_on(async {
        let rt = CoderClawRuntime::new(HttpTransport::new(&url, Some(token.clone())).unwrap());
        let start = Instant::now();
        for id in &acknowledged {
            loop {
                let t =
                    rt.get_task_state(id).await.unwrap().unwrap_or_else(|| panic!("acknowledged task {id} is missing"));
                if t.status.is_terminal() {
                    break;
                }
                assert!(start.elapsed() < Duration::from_secs(120), "task {id} left {}", t.status);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let out = cli.run(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
}

fn nix_kill9(pid: u32) {
    let status = Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    assert!(status.success());
}

#[test]
fn a_repository_cannot_redirect_tasks_and_local_respond_is_refused_before_anything_opens() {
    let cli = Cli::new();
    let ws = workspace();
    std::fs::create_dir_all(ws.path().join(".coderClaw")).unwrap();
    std::fs::write(ws.path().join(".coderClaw/runtime.yaml"), "transport:\n  url: https://collector.example\n")
        .unwrap();
    let out = cli.run(&["task", "list", "--workspace", p(ws.path())]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("transport.url") && stderr.contains("may not set this"), "{stderr}");

    std::fs::remove_file(ws.path().join(".coderClaw/runtime.yaml")).unwrap();
    let out = cli.run(&["task", "respond", "00000000-0000-4000-8000-000000000000", "yes", "--workspace", p(ws.path())]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("waits in the process that runs it"), "{}", text(&out.stderr));
    assert!(!cli.home.path().join("tasks.db").exists(), "no engine was opened");
}

/// A remote task runs on the server, not on the client's checkout: on a
/// named server workspace, or on an uploaded snapshot of what git would
/// track, which is deleted when the task ends.
#[test]
fn a_remote_task_names_its_workspace_or_uploads_a_snapshot() {
    let cli = Cli::new();
    let server_ws = workspace();
    let (port, _server, token) = serve_signed(&cli, server_ws.path());
    let wc = sign(&cli, "word-count", "team-key", server_ws.path());
    let out = cli.run(&["skill", "install", p(&wc)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let url = format!("http://127.0.0.1:{port}");

    let checkout = tempfile::tempdir().unwrap();
    std::fs::write(checkout.path().join("a.txt"), "one two three\n").unwrap();
    std::fs::write(checkout.path().join(".gitignore"), "private.txt\n").unwrap();
    std::fs::write(checkout.path().join("private.txt"), "do not send\n").unwrap();
    let submit = |extra: &[&str]| {
        let mut args =
            vec!["task", "submit", "--skill", "team/word-count", "--wait", "--remote", &url, "--token", &token];
        args.extend(extra);
        cli.run(&args)
    };
    let out = submit(&["--workspace-upload", "--workspace", p(checkout.path()), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let done: Value = serde_json::from_slice(&out.stdout).unwrap();
    let files: Vec<&str> =
        done["output"]["per_file"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert!(files.iter().any(|f| f.ends_with("a.txt")), "{files:?}");
    assert!(!files.iter().any(|f| f.contains("private")), ".gitignore is honoured: {files:?}");
    assert!(done["workspace"]["upload"].as_str().unwrap().starts_with("sha256:"), "{done}");
    let out = submit(&["--workspace-upload", "--workspace", p(checkout.path())]);
    let said = text(&out.stderr);
    assert!(said.contains("uploading") && said.contains("2 files") && said.contains("uploaded sha256:"), "{said}");
    let uploads = cli.home.path().join("uploads");
    let kept = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&uploads)
            .unwrap()
            .filter_map(|u| u.ok())
            .filter(|u| !u.file_name().to_string_lossy().starts_with('.'))
            .flat_map(|u| std::fs::read_dir(u.path()).unwrap().filter_map(|e| e.ok()).map(|e| e.path()))
            .collect()
    };
    for _ in 0..100 {
        if kept().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let kept = kept();
    assert!(kept.is_empty(), "uploads outlived their tasks: {kept:?}");

    // A named workspace of the server's; one the session may not use.
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("b.txt"), "four five\n").unwrap();
    let config = format!(
        "workspaces:\n  shared:\n    path: {}\n    roles: [developer]\n  ops:\n    path: {}\n    roles: [admin]\n",
        shared.path().display(),
        shared.path().display()
    );
    std::fs::write(cli.home.path().join("config.yaml"), config).unwrap();
    let out = submit(&["--server-workspace", "shared", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let done: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done["output"]["total"]["words"], 2, "{done}");
    let out = submit(&["--server-workspace", "ops"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("workspace `ops` is for admin"), "{}", text(&out.stderr));
    // Both at once, or without a server, is a usage error.
    let out = submit(&["--server-workspace", "shared", "--workspace-upload"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = cli.run(&[
        "task",
        "submit",
        "--skill",
        "team/word-count",
        "--workspace-upload",
        "--workspace",
        p(checkout.path()),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--workspace-upload needs --remote"), "{}", text(&out.stderr));
}

/// SIGTERM (what systemd, Kubernetes and Docker send) stops `coderclaw
/// serve` cleanly: a task that outlives `deployment.shutdownGrace` is
/// CANCELLED saying why, everything is on disk (the audit chain verifies),
/// and the process exits 0. (Queued and resumable tasks: the engine test
/// `shutdown_lets_running_tasks_finish_then_stops_the_rest_and_keeps_the_queue`.)
#[test]
fn sigterm_lets_running_tasks_have_the_grace_period_then_cancels_them_and_exits_0() {
    let (cli, tmp) = (Cli::new(), tempfile::tempdir().unwrap());
    let ws = p(tmp.path());
    install_signed(&cli, tmp.path());
    std::fs::create_dir_all(tmp.path().join(".coderClaw")).unwrap();
    std::fs::write(tmp.path().join(".coderClaw/runtime.yaml"), "deployment:\n  shutdownGrace: 2s\n").unwrap();
    let port = common::free_port();
    let log = tmp.path().join("serve.log");
    let mut server = Command::new(env!("CARGO_BIN_EXE_coderclaw"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--workspace", ws])
        .env("CODERCLAW_HOME", cli.home.path())
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    while !std::fs::read_to_string(&log).unwrap().contains("serving http://") {
        assert!(start.elapsed() < Duration::from_secs(30), "{}", std::fs::read_to_string(&log).unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    let token = login(&cli);
    let waiting =
        remote_json(&cli, &url, &token, &["task", "submit", "--skill", "team/asker", "--input", "{\"ask\": \"ok?\"}"]);
    let waiting_id = waiting["id"].as_str().unwrap().to_owned();
    while remote_json(&cli, &url, &token, &["task", "status", &waiting_id])["status"] != "WAITING" {
        assert!(start.elapsed() < Duration::from_secs(30), "never reached WAITING");
        std::thread::sleep(Duration::from_millis(50));
    }

    let term = Instant::now();
    let status = Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = server.wait().unwrap();
    let took = term.elapsed();
    let said = std::fs::read_to_string(&log).unwrap();
    assert_eq!(exit.code(), Some(0), "{said}");
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(15), "{took:?}: {said}");
    let announced = "SIGTERM: shutting down: no new tasks; 1 running get up to 2s to finish \
                     (deployment.shutdownGrace; SIGTERM again stops them now)";
    assert!(said.contains(announced), "{said}");
    let report = "stopped: 0 finished, 1 cancelled, 0 resumable to re-run at the next start, 0 queued kept";
    assert!(said.contains(report), "{said}");

    // What the next server finds.
    let _server = start_server(&cli, ws, port);
    let cancelled = remote_json(&cli, &url, &token, &["task", "status", &waiting_id]);
    assert_eq!(cancelled["status"], "CANCELLED", "{cancelled}");
    assert!(cancelled["error"]["message"].as_str().unwrap().contains("the server shut down"), "{cancelled}");
    let out = cli.run(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
}

/// `serve --access-log` prints one line per request (method, route with ids
/// masked, status, latency, user; never the token), and edits to
/// config.yaml are taken without a restart and said on stderr: a new role,
/// a broken edit (the last good version stays), a SIGHUP.
#[test]
fn serve_logs_each_request_and_says_what_a_configuration_edit_changed() {
    let (cli, tmp) = (Cli::new(), tempfile::tempdir().unwrap());
    install_signed(&cli, tmp.path());
    let token = login(&cli);
    let port = common::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_coderclaw"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--workspace", p(tmp.path()), "--access-log"])
        .env("CODERCLAW_HOME", cli.home.path())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let said = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let (said, stderr) = (said.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
                said.lock().unwrap().push_str(&format!("{line}\n"));
            }
        })
    };
    let wait_for = |needle: &str| {
        let start = Instant::now();
        while !said.lock().unwrap().contains(needle) {
            assert!(start.elapsed() < Duration::from_secs(20), "no {needle:?} in:\n{}", said.lock().unwrap());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for("serving http://127.0.0.1");
    let url = format!("http://127.0.0.1:{port}");
    let state = remote_json(&cli, &url, &token, &["task", "submit", "--skill", "team/echo", "--input", "{}", "--wait"]);
    let id = state["id"].as_str().unwrap();
    remote_json(&cli, &url, &token, &["task", "status", id]);
    wait_for("access GET /v1/tasks/{id} 200");
    wait_for("access POST /v1/tasks");
    let refused = cli.run(&["status", "--remote", &url, "--token", "ccs_forged", "--json"]);
    assert_ne!(refused.status.code(), Some(0));
    wait_for("access GET /v1/status 401");
    {
        let log = said.lock().unwrap();
        assert!(log.contains("user=dev peer=127.0.0.1:"), "{log}");
        assert!(!log.contains(&token) && !log.contains("ccs_forged") && !log.contains(id), "no token, no id: {log}");
    }

    let config = cli.home.path().join("config.yaml");
    std::fs::write(&config, "roles:\n  auditor:\n    inherits: readonly\n").unwrap();
    wait_for("reload: roles: added [\"auditor\"]");
    std::fs::write(&config, "roles:\n  auditor: [\n").unwrap();
    wait_for("config.yaml is invalid");
    wait_for("keeping its last good version");
    let status = remote_json(&cli, &url, &token, &["status"]);
    // A developer learns that a file is broken, not which or how.
    let warning = status["policyWarnings"][0].as_str().unwrap();
    assert!(warning.contains("last good version is in force") && !warning.contains("config.yaml"), "{status}");
    let hup = Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
    assert!(hup.success());
    wait_for("SIGHUP: configuration and policy files unchanged");
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
}
