//! `coderclaw mcp` driven by the official Rust MCP SDK's client over the
//! real binary's stdio: the tools offered are exactly the skills policy
//! lets this caller run, described from their signed manifests; a call is
//! a task; a refused skill is absent and refused by name.

mod common;

use common::{Cli, p, sign, text, trusted_key};
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{ConfigureCommandExt, StreamableHttpClientTransport, TokioChildProcess};
use serde_json::{Value, json};

fn installed(cli: &Cli, dir: &std::path::Path) {
    trusted_key(cli, "team-key", "team");
    for skill in ["echo", "word-count", "shell-exec"] {
        let pkg = sign(cli, skill, "team-key", dir);
        let out = cli.run(&["skill", "install", p(&pkg)]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
}

/// Signs component `skill` as `id` (a one-line description and limits);
/// returns the package.
fn signed_as(cli: &Cli, skill: &str, id: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let name = id.rsplit('/').next().unwrap();
    let manifest = dir.join(format!("{name}.toml"));
    let text = format!(
        "id = \"{id}\"\nversion = \"1.0.0\"\nkind = \"skill\"\ndescription = \"{name}\"\n[limits]\ntimeout = \"300s\"\n"
    );
    std::fs::write(&manifest, text).unwrap();
    let signed = common::sign_with(cli, skill, "team-key", &manifest, dir);
    let pkg = dir.join(format!("{name}.ccpkg"));
    std::fs::rename(signed, &pkg).unwrap();
    pkg
}

fn install(cli: &Cli, pkg: &std::path::Path) {
    let out = cli.run(&["skill", "install", p(pkg)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

fn manifest(skill: &str) -> coderclaw_core::manifest::Manifest {
    let text = std::fs::read_to_string(common::manifest_path(skill)).unwrap();
    coderclaw_core::manifest::Manifest::from_toml(&text, skill).unwrap()
}

fn manifest_schema(skill: &str) -> Value {
    manifest(skill).input_schema
}

fn manifest_output_schema(skill: &str) -> Value {
    manifest(skill).output_schema.expect("an output schema")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_mcp_client_sees_the_allowed_skills_as_tools_and_calls_them_as_tasks() {
    let (cli, tmp) = (Cli::new(), tempfile::tempdir().unwrap());
    installed(&cli, tmp.path());
    let ws = tempfile::tempdir().unwrap();
    std::fs::write(ws.path().join("notes.txt"), "one two\nthree\n").unwrap();

    // Why each skill is offered or not, without a client.
    let listed = cli.run(&["mcp", "--list", "--json", "--workspace", p(ws.path())]);
    assert_eq!(listed.status.code(), Some(0), "{}", text(&listed.stderr));
    let entries: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let shell = entries.as_array().unwrap().iter().find(|e| e["id"] == "team/shell-exec").unwrap();
    assert!(shell["left_out"].as_str().unwrap().contains("dangerous"), "{shell}");

    let command = tokio::process::Command::new(env!("CARGO_BIN_EXE_coderclaw")).configure(|c| {
        c.args(["mcp", "--workspace", p(ws.path())]).env("CODERCLAW_HOME", cli.home.path()).env_remove("CODERCLAW_LOG");
    });
    let client = ().serve(TokioChildProcess::new(command).unwrap()).await.unwrap();
    let info = client.peer_info().unwrap();
    assert_eq!(info.server_info.as_ref().map(|s| s.name.as_str()), Some("coderclaw"));

    let tools = client.list_all_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    let helpers = ["coderclaw_policy_check", "coderclaw_task_status"];
    assert_eq!(names, ["team_echo", "team_word-count", helpers[0], helpers[1]], "shell-exec is not offered");
    let word_count = tools.iter().find(|t| t.name == "team_word-count").unwrap();
    assert_eq!(Value::Object((*word_count.input_schema).clone()), manifest_schema("word-count"));
    let hints = word_count.annotations.as_ref().unwrap();
    assert_eq!(hints.read_only_hint, Some(true), "a read-only workspace grant");

    let counted = client.call_tool(CallToolRequestParams::new("team_word-count")).await.unwrap();
    assert_ne!(counted.is_error, Some(true), "{counted:?}");
    assert_eq!(counted.structured_content.as_ref().unwrap()["files"], 1, "{counted:?}");

    let echoed = client
        .call_tool(CallToolRequestParams::new("team_echo").with_arguments(json!({"x": 1}).as_object().unwrap().clone()))
        .await
        .unwrap();
    assert_eq!(echoed.structured_content, Some(json!({"echo": {"x": 1}})));

    // A refused skill called by name anyway: a tool error naming why.
    let refused = client.call_tool(CallToolRequestParams::new("team_shell-exec")).await.unwrap();
    assert_eq!(refused.is_error, Some(true));
    let why = serde_json::to_string(&refused.content).unwrap();
    assert!(why.contains("denied") && why.contains("dangerous"), "{why}");

    // An unknown tool is a protocol error, and the session goes on.
    let unknown = client.call_tool(CallToolRequestParams::new("team_nothing")).await;
    assert!(matches!(unknown, Err(rmcp::ServiceError::McpError(_))), "{unknown:?}");
    // So are arguments the signed schema refuses, and no task is made.
    let args = json!({"path": 5, "surprise": true}).as_object().unwrap().clone();
    let wrong = client.call_tool(CallToolRequestParams::new("team_word-count").with_arguments(args)).await;
    let Err(rmcp::ServiceError::McpError(e)) = wrong else { panic!("{wrong:?}") };
    assert_eq!(e.code, rmcp::model::ErrorCode::INVALID_PARAMS);
    assert!(e.message.contains("/path") && e.message.contains("surprise"), "{}", e.message);
    assert_eq!(client.list_all_tools().await.unwrap().len(), 4);

    // Each call was an audited task, the refused one too.
    client.cancel().await.unwrap();
    let tasks = cli.run(&["task", "list", "--json", "--workspace", p(ws.path())]);
    let tasks: Value = serde_json::from_slice(&tasks.stdout).unwrap();
    let mut ended: Vec<(String, String)> = tasks
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["target"]["skill"].as_str().unwrap_or("?").to_owned(), t["status"].as_str().unwrap().to_owned()))
        .collect();
    ended.sort();
    let refused = tasks.as_array().unwrap().iter().find(|t| t["status"] == "FAILED").unwrap();
    assert_eq!(refused["error"]["code"], "denied", "{refused}");
    let expected = [("team/echo", "COMPLETED"), ("team/shell-exec", "FAILED"), ("team/word-count", "COMPLETED")];
    assert_eq!(ended, expected.map(|(a, b)| (a.to_owned(), b.to_owned())), "{tasks}");
    let audit = cli.run(&["audit", "verify"]);
    assert_eq!(audit.status.code(), Some(0), "{}", text(&audit.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_the_client_abandons_cancels_its_task_within_a_second() {
    let (cli, tmp) = (Cli::new(), tempfile::tempdir().unwrap());
    trusted_key(&cli, "team-key", "team");
    install(&cli, &signed_as(&cli, "infinite-loop", "team/spin", tmp.path()));
    let ws = tempfile::tempdir().unwrap();
    let command = tokio::process::Command::new(env!("CARGO_BIN_EXE_coderclaw")).configure(|c| {
        c.args(["mcp", "--workspace", p(ws.path())]).env("CODERCLAW_HOME", cli.home.path()).env_remove("CODERCLAW_LOG");
    });
    let client = ().serve(TokioChildProcess::new(command).unwrap()).await.unwrap();
    // Dropping the call sends notifications/cancelled.
    let call = client.call_tool(CallToolRequestParams::new("team_spin"));
    assert!(tokio::time::timeout(std::time::Duration::from_millis(500), call).await.is_err(), "it spins");
    let cancelled_at = std::time::Instant::now();
    // The engine belongs to the MCP server while it runs: watch the audit log.
    loop {
        let records = cli.run(&["audit", "query", "--action", "task.cancelled", "--json"]);
        let records: Value = serde_json::from_slice(&records.stdout).unwrap_or(json!([]));
        if records.as_array().is_some_and(|r| r.len() == 1) {
            break;
        }
        assert!(cancelled_at.elapsed() < std::time::Duration::from_secs(1), "not cancelled within 1 s: {records}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The session is still usable after the cancellation.
    assert_eq!(client.list_all_tools().await.unwrap().len(), 3, "spin and the two helpers");
    client.cancel().await.unwrap();
    let tasks = cli.run(&["task", "list", "--json", "--workspace", p(ws.path())]);
    let tasks: Value = serde_json::from_slice(&tasks.stdout).unwrap();
    assert_eq!(tasks[0]["status"], "CANCELLED", "{tasks}");
}

/// A Python with the official MCP SDK from PyPI.
fn python_with_mcp_sdk() -> std::path::PathBuf {
    common::python_venv("mcp-python-sdk", &["mcp==2.3.0"])
}

/// Everything the Python client expects installed (see mcp_client.py),
/// a workspace with one text file, and the package it installs itself.
fn python_fixture(cli: &Cli, dir: &std::path::Path) -> (tempfile::TempDir, std::path::PathBuf) {
    installed(cli, dir);
    install(cli, &signed_as(cli, "asker", "team/asker", dir));
    install(cli, &signed_as(cli, "infinite-loop", "team/spin", dir));
    let ws = tempfile::tempdir().unwrap();
    std::fs::write(ws.path().join("notes.txt"), "one two\nthree\n").unwrap();
    (ws, signed_as(cli, "echo", "team/extra", dir))
}

/// Runs the official Python SDK's client with `args`; what it saw.
fn python_client(cli: &Cli, args: &[&str]) -> Value {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/mcp_client.py");
    let out = std::process::Command::new(python_with_mcp_sdk())
        .arg(&script)
        .args(args)
        .env("CODERCLAW_HOME", cli.home.path())
        .env_remove("CODERCLAW_LOG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", text(&out.stdout), text(&out.stderr));
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    let word_count_output = manifest_output_schema("word-count");
    assert_eq!(seen["word_count_schema"], manifest_schema("word-count"), "the schema as signed");
    assert_eq!(seen["word_count_output_schema"], word_count_output, "the output schema as signed");
    assert_eq!(seen["counted"]["files"], 1);
    assert!(seen["cancelled_within_s"].as_f64().unwrap() < 1.0, "{seen}");
    seen
}

#[test]
fn the_official_python_sdk_drives_coderclaw_mcp_over_stdio() {
    let (cli, tmp) = (Cli::new(), tempfile::tempdir().unwrap());
    let (ws, extra) = python_fixture(&cli, tmp.path());
    let seen = python_client(&cli, &["stdio", env!("CARGO_BIN_EXE_coderclaw"), p(ws.path()), p(&extra)]);
    assert_eq!(seen["progress"][0][0], 0.5, "{seen}");
}

#[test]
fn the_official_python_sdk_drives_coderclaw_serve_over_streamable_http() {
    let (cli, tmp) = (Cli::new(), tempfile::tempdir().unwrap());
    let (ws, extra) = python_fixture(&cli, tmp.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = common::start_server(&cli, p(ws.path()), port);
    let token = common::login(&cli);
    let url = format!("{}/mcp", server.1);
    let seen = python_client(&cli, &["http", env!("CARGO_BIN_EXE_coderclaw"), &url, &token, p(&extra)]);
    assert_eq!(seen["progress"][0][0], 0.5, "{seen}");
    // Every call was audited under the client's name.
    let submitted = cli.run(&["audit", "query", "--action", "task.submit", "--json"]);
    let submitted: Value = serde_json::from_slice(&submitted.stdout).unwrap();
    let records = submitted.as_array().unwrap();
    assert!(records.len() >= 4, "{submitted}");
    for r in records {
        assert!(r["metadata"].to_string().contains("mcp:"), "named client: {r}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rmcp_over_streamable_http_against_coderclaw_serve() {
    let (cli, tmp) = (Cli::new(), tempfile::tempdir().unwrap());
    installed(&cli, tmp.path());
    let ws = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = common::start_server(&cli, p(ws.path()), port);
    let token = common::login(&cli);
    let config = StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", server.1)).auth_header(token);
    let client = ().serve(StreamableHttpClientTransport::from_config(config)).await.unwrap();
    let tools = client.list_all_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(names, ["team_echo", "team_word-count", "coderclaw_policy_check", "coderclaw_task_status"]);
    let args = json!({"x": [1, 2]}).as_object().unwrap().clone();
    let echoed = client.call_tool(CallToolRequestParams::new("team_echo").with_arguments(args)).await.unwrap();
    assert_eq!(echoed.structured_content, Some(json!({"echo": {"x": [1, 2]}})));
    let why = client
        .call_tool(
            CallToolRequestParams::new("coderclaw_policy_check")
                .with_arguments(json!({"tool": "team/shell-exec"}).as_object().unwrap().clone()),
        )
        .await
        .unwrap();
    let why = why.structured_content.unwrap();
    assert_eq!(why["allowed"], false, "{why}");
    assert!(why["explanation"].as_str().unwrap().contains("dangerous"), "{why}");
    client.cancel().await.unwrap();
}

#[test]
fn a_session_that_may_not_submit_tasks_is_offered_no_tools() {
    let (cli, tmp) = (Cli::new(), tempfile::tempdir().unwrap());
    installed(&cli, tmp.path());
    let added = cli.run_stdin(&["user", "add", "reader", "--role", "readonly", "--password-stdin"], "read only pw\n");
    assert_eq!(added.status.code(), Some(0), "{}", text(&added.stderr));
    let login = cli.run_stdin(&["login", "--user", "reader", "--password-stdin", "--json"], "read only pw");
    assert_eq!(login.status.code(), Some(0), "{}", text(&login.stderr));
    let token: Value = serde_json::from_slice(&login.stdout).unwrap();
    let ws = tempfile::tempdir().unwrap();
    let token = token["token"].as_str().unwrap();
    let listed = cli.run(&["--session", token, "mcp", "--list", "--json", "--workspace", p(ws.path())]);
    assert_eq!(listed.status.code(), Some(0), "{}", text(&listed.stderr));
    let entries: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), 3);
    for e in entries {
        assert!(e["left_out"].as_str().is_some_and(|w| w.contains("task:submit")), "{e}");
    }
}
