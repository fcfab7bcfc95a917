//! The WebSocket and gRPC transports through the real binary: the task
//! commands with `--remote ws://…` and `--remote grpc://…` against
//! `coderclaw serve --grpc-listen`, and clients nobody here wrote (Python's
//! `websockets`, `grpcio`, `grpcio-health-checking` and `grpcio-reflection`
//! from PyPI) submitting and streaming a task.

mod common;

use common::{Cli, Server, free_port, login, p, sign, sign_with, start_server_with, text, trusted_key};
use serde_json::{Value, json};

fn install_signed(cli: &Cli, dir: &std::path::Path) {
    trusted_key(cli, "team-key", "team");
    let echo = sign(cli, "echo", "team-key", dir);
    let manifest = dir.join("spin.toml");
    std::fs::write(&manifest, "id = \"team/spin\"\nversion = \"1.0.0\"\nkind = \"skill\"\ndescription = \"spins\"\n[limits]\ntimeout = \"300s\"\n").unwrap();
    let spin = sign_with(cli, "infinite-loop", "team-key", &manifest, dir);
    for pkg in [echo, spin] {
        let out = cli.run(&["skill", "install", p(&pkg)]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
}

/// A server with REST, WebSocket and gRPC; its HTTP URL, gRPC address and
/// a developer token.
fn serve_all(cli: &Cli, dir: &std::path::Path) -> (Server, String, String) {
    install_signed(cli, dir);
    let grpc = format!("127.0.0.1:{}", free_port());
    let server = start_server_with(cli, p(dir), free_port(), &["--grpc-listen", &grpc]);
    (server, grpc, login(cli))
}

fn remote(cli: &Cli, url: &str, token: &str, args: &[&str]) -> (i32, Value, String) {
    let mut all = args.to_vec();
    all.extend(["--remote", url, "--token", token, "--json"]);
    let out = cli.run(&all);
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), json, text(&out.stderr))
}

#[test]
fn the_task_commands_work_over_websocket_and_grpc() {
    let (cli, tmp) = (Cli::new(), tempfile::tempdir().unwrap());
    let (server, grpc, token) = serve_all(&cli, tmp.path());
    let ws = server.1.replace("http://", "ws://");
    for url in [ws.as_str(), &format!("grpc://{grpc}")] {
        let (code, done, err) = remote(
            &cli,
            url,
            &token,
            &["task", "submit", "--skill", "team/echo", "--input", "{\"n\": 12345678901234567890}", "--wait"],
        );
        assert_eq!(code, 0, "{url}: {err}");
        assert_eq!(done["status"], "COMPLETED", "{url}: {done}");
        assert_eq!(done["output"], json!({ "echo": { "n": 12345678901234567890u64 } }), "{url}: every digit kept");
        let id = done["id"].as_str().unwrap();
        let (code, state, err) = remote(&cli, url, &token, &["task", "status", id]);
        assert_eq!((code, &state["status"]), (0, &json!("COMPLETED")), "{url}: {err}");
        let (code, list, err) = remote(&cli, url, &token, &["task", "list"]);
        assert_eq!(code, 0, "{url}: {err}");
        assert!(list.as_array().unwrap().iter().any(|t| t["id"] == id), "{url}: {list}");

        // A spinning task cancelled over the same transport.
        let (code, spin, err) = remote(&cli, url, &token, &["task", "submit", "--skill", "team/spin", "--input", "{}"]);
        assert_eq!(code, 0, "{url}: {err}");
        let id = spin["id"].as_str().unwrap();
        let (code, _, err) = remote(&cli, url, &token, &["task", "cancel", id]);
        assert_eq!(code, 0, "{url}: {err}");
        let (_, state, _) = remote(&cli, url, &token, &["task", "status", id]);
        assert_eq!(state["status"], "CANCELLED", "{url}: {state}");
        // Cancelling it again cancels nothing: exit 1, saying how it ended.
        let (code, again, err) = remote(&cli, url, &token, &["task", "cancel", id]);
        assert_eq!((code, &again["cancelled"], &again["status"]), (1, &json!(false), &json!("CANCELLED")), "{url}");
        assert!(err.contains(&format!("task {id} had already finished (CANCELLED)")), "{url}: {err}");

        // A forged token is refused with the REST code, and the CLI says so.
        let (code, _, err) = remote(&cli, url, "ccs_forged", &["task", "list"]);
        assert_ne!(code, 0, "{url}");
        assert!(err.contains("unauthenticated"), "{url}: {err}");
    }
    let (code, _, err) = remote(&cli, "ftp://127.0.0.1:1", &token, &["task", "list"]);
    assert_ne!(code, 0);
    assert!(err.contains("http(s)://, ws(s):// or grpc(s)://"), "{err}");
}

/// A Python with the clients from PyPI.
fn python_with_clients() -> std::path::PathBuf {
    common::python_venv(
        "transport-python-clients",
        &[
            "websockets==17.4",
            "grpcio==1.85.1",
            "grpcio-tools==1.85.1",
            "grpcio-health-checking==1.85.1",
            "grpcio-reflection==1.85.1",
        ],
    )
}

fn python_client(args: &[&str]) -> Value {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/transport_clients.py");
    let out = std::process::Command::new(python_with_clients()).arg(&script).args(args).output().unwrap();
    assert!(out.status.success(), "{}\n{}", text(&out.stdout), text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn assert_streamed_to_completion(seen: &Value) {
    assert_eq!(seen["submitted_status"].as_str().unwrap().trim_start_matches("TASK_STATUS_"), "PENDING", "{seen}");
    let statuses: Vec<&str> = seen["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().trim_start_matches("TASK_STATUS_"))
        .collect();
    assert_eq!(statuses, ["PLANNING", "RUNNING", "COMPLETED"], "{seen}");
    let seqs: Vec<u64> = seen["seqs"].as_array().unwrap().iter().map(|s| s.as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "in order: {seen}");
    assert_eq!(seen["output"], json!({ "echo": { "from": "python" } }), "{seen}");
    assert_eq!(seen["usable_after_errors"], true, "{seen}");
}

#[test]
fn pythons_websockets_package_submits_and_streams_a_task() {
    let (cli, tmp) = (Cli::new(), tempfile::tempdir().unwrap());
    let (server, _, token) = serve_all(&cli, tmp.path());
    let seen = python_client(&["ws", &server.1, &token]);
    assert_streamed_to_completion(&seen);
    assert_eq!(seen["subprotocol"], "coderclaw.v1", "{seen}");
    assert_eq!(seen["browser_subprotocol"], "coderclaw.v1", "the token is never echoed: {seen}");
    assert_eq!(seen["browser_status"], "result", "{seen}");
    assert_eq!(seen["malformed"], "invalid_request", "{seen}");
    assert_eq!(seen["unknown_op"], "invalid_request", "{seen}");
    assert_eq!(seen["not_found"], "not_found", "{seen}");
    assert_eq!(seen["anonymous"], 401, "refused before the upgrade: {seen}");
}

#[test]
fn pythons_grpcio_submits_and_streams_a_task_and_finds_health_and_reflection() {
    let (cli, tmp) = (Cli::new(), tempfile::tempdir().unwrap());
    let (_server, grpc, token) = serve_all(&cli, tmp.path());
    let proto = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../transport/proto");
    let seen = python_client(&["grpc", &grpc, &token, p(&proto)]);
    assert_streamed_to_completion(&seen);
    // RunTask: the acknowledgement, the events, the final state.
    let kinds: Vec<&str> = seen["run_kinds"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
    assert!(kinds.len() >= 5 && kinds[0] == "accepted" && kinds[kinds.len() - 1] == "finished", "{seen}");
    assert!(kinds[1..kinds.len() - 1].iter().all(|k| *k == "event"), "{seen}");
    assert_eq!(seen["run_status"], "TASK_STATUS_COMPLETED", "{seen}");
    assert_eq!(seen["run_output"], json!({ "echo": { "run": "python" } }), "{seen}");
    assert_eq!(seen["anonymous"], "UNAUTHENTICATED", "{seen}");
    assert_eq!(seen["not_found"], "NOT_FOUND", "{seen}");
    assert_eq!(seen["bad_input"], "INVALID_ARGUMENT", "{seen}");
    assert_eq!(seen["health"], "SERVING", "{seen}");
    let services: Vec<&str> =
        seen["reflected_services"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert!(services.contains(&"coderclaw.v1.Runtime") && services.contains(&"grpc.health.v1.Health"), "{seen}");
    assert_eq!(seen["reflected_file"], "coderclaw/v1/runtime.proto", "{seen}");
}

/// Sends `signal` (`TERM`, `INT`) to `pid`.
fn kill(signal: &str, pid: u32) {
    let status = std::process::Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().unwrap();
    assert!(status.success());
}

/// Waits for the one RUNNING task of the session; its id.
fn running_task(cli: &Cli, url: &str, token: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        let (_, tasks, _) = remote(cli, url, token, &["task", "list", "--status", "RUNNING"]);
        if let Some(id) = tasks.as_array().and_then(|t| t.first()).and_then(|t| t["id"].as_str()) {
            return id.to_owned();
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(30), "no task started running");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn an_interrupted_wait_gives_its_task_up_unless_detached() {
    let (cli, tmp) = (Cli::new(), tempfile::tempdir().unwrap());
    let (server, grpc, token) = serve_all(&cli, tmp.path());
    let ws = server.1.replace("http://", "ws://");
    let cases =
        [(format!("grpc://{grpc}"), "TERM", false, 143), (ws, "INT", true, 130), (server.1.clone(), "INT", false, 130)];
    for (url, signal, detach, exit) in cases {
        let mut args = vec![
            "task",
            "submit",
            "--skill",
            "team/spin",
            "--input",
            "{}",
            "--wait",
            "--remote",
            &url,
            "--token",
            &token,
        ];
        if detach {
            args.push("--detach");
        }
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_coderclaw"))
            .args(&args)
            .env("CODERCLAW_HOME", cli.home.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let id = running_task(&cli, &url, &token);
        kill(signal, child.id());
        let out = child.wait_with_output().unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(exit), "{url} {signal}: {stderr}");
        let (_, state, _) = remote(&cli, &url, &token, &["task", "status", &id]);
        if detach {
            assert!(stderr.contains("detached") && stderr.contains(&id), "{url}: {stderr}");
            assert_eq!(state["status"], "RUNNING", "{url}: a detached task keeps running: {state}");
            let (code, _, err) = remote(&cli, &url, &token, &["task", "cancel", &id]);
            assert_eq!(code, 0, "{err}");
        } else {
            assert!(stderr.contains(&format!("SIG{signal}: task {id} cancelled")), "{url}: {stderr}");
            assert_eq!(state["status"], "CANCELLED", "{url}: {state}");
            let reason = state["error"]["message"].as_str().unwrap_or_default();
            assert!(reason.contains(&format!("interrupted (SIG{signal})")), "{url}: {state}");
        }
    }
    let audit = cli.run(&["audit", "query", "--action", "task.abandon", "--json"]);
    let records: Value = serde_json::from_slice(&audit.stdout).unwrap();
    assert_eq!(records.as_array().map(Vec::len), Some(2), "each give-up audited: {records}");
}

#[test]
fn login_over_the_network_gives_a_token_for_remote_calls() {
    let (cli, tmp) = (Cli::new(), tempfile::tempdir().unwrap());
    install_signed(&cli, tmp.path());
    let server = common::start_server(&cli, p(tmp.path()), free_port());
    let added = cli.run_stdin(&["user", "add", "ci-bot", "--role", "developer", "--password-stdin"], "bot password\n");
    assert_eq!(added.status.code(), Some(0), "{}", text(&added.stderr));
    let out = cli.run_stdin(&["login", "--remote", &server.1, "--user", "ci-bot", "--password-stdin"], "bot password");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("for ci-bot with roles [developer]"), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_owned();
    let (code, done, err) =
        remote(&cli, &server.1, &token, &["task", "submit", "--skill", "team/echo", "--input", "1", "--wait"]);
    assert_eq!((code, &done["status"]), (0, &json!("COMPLETED")), "{err}");
    assert_eq!(done["user"], "ci-bot");
    let wrong = cli.run_stdin(&["login", "--remote", &server.1, "--user", "ci-bot", "--password-stdin"], "guess");
    assert_ne!(wrong.status.code(), Some(0));
    assert!(text(&wrong.stderr).contains("unauthenticated"), "{}", text(&wrong.stderr));
}

#[test]
fn github_actions_login_outside_a_job_says_what_it_needs() {
    let cli = Cli::new();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_coderclaw"));
    let out = cmd
        .args(["login", "--github-actions"])
        .env("CODERCLAW_HOME", cli.home.path())
        .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL")
        .env_remove("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert!(err.contains("ACTIONS_ID_TOKEN_REQUEST_URL") && err.contains("id-token: write"), "{err}");
}
