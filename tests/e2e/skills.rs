//! Each example skill through the library API returns the expected JSON.

use crate::{host, load, run_json, workspace};
use coderclaw::{Access, Grant};
use coderclaw_e2e::LoopbackServer;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn echo_returns_its_input() {
    let host = host();
    let out = run_json(&host, &load(&host, "echo"), json!({"a": [1, 2]}), &Grant::deny_all()).await.unwrap();
    assert_eq!(out, json!({"echo": {"a": [1, 2]}}));
}

#[tokio::test(flavor = "multi_thread")]
async fn word_count_counts_the_granted_workspace() {
    let ws = workspace();
    let host = host();
    let grant = Grant::builder().dir(ws.path(), ".", Access::Read).build().unwrap();
    let out = run_json(&host, &load(&host, "word-count"), json!({"path": "."}), &grant).await.unwrap();
    assert_eq!(out["files"], 3);
    // README: 2 lines, 5 words, 29 bytes; lib.rs: 1, 4, 14; deploy.env: 1, 1, 25.
    assert_eq!(out["total"], json!({"lines": 4, "words": 10, "bytes": 29 + 14 + 25}));
    let only_md =
        run_json(&host, &load(&host, "word-count"), json!({"path": ".", "extensions": ["md"]}), &grant).await.unwrap();
    assert_eq!(only_md["files"], 1);
    assert_eq!(only_md["per_file"][0]["path"], "./README.md");
}

#[tokio::test(flavor = "multi_thread")]
async fn security_scanner_reports_planted_secrets_redacted() {
    let ws = workspace();
    std::fs::write(ws.path().join("src/key.pem"), "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n").unwrap();
    let host = host();
    let grant = Grant::builder().dir(ws.path(), ".", Access::Read).build().unwrap();
    let out = run_json(&host, &load(&host, "security-scanner"), json!({}), &grant).await.unwrap();
    let findings = out["findings"].as_array().unwrap();
    let rules: Vec<&str> = findings.iter().map(|f| f["rule"].as_str().unwrap()).collect();
    assert_eq!(rules, ["aws-access-key-id", "private-key"], "{out}");
    assert_eq!(findings[0]["file"], "./deploy.env");
    assert_eq!(findings[0]["line"], 1);
    assert_eq!(findings[0]["redacted"], "AKIA****************");
    assert!(!out.to_string().contains("IOSFODNN7EXAMPLE"), "the secret itself is never reported");

    let clean = tempfile::tempdir().unwrap();
    std::fs::write(clean.path().join("ok.txt"), "nothing to see\n").unwrap();
    let grant = Grant::builder().dir(clean.path(), ".", Access::Read).build().unwrap();
    let out = run_json(&host, &load(&host, "security-scanner"), json!({}), &grant).await.unwrap();
    assert_eq!(out["findings"], json!([]));
    assert_eq!(out["files_scanned"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn shell_exec_runs_an_allowlisted_program_without_a_shell() {
    let ws = workspace();
    let host = host();
    let grant = Grant::builder().dir(ws.path(), ".", Access::Read).shell("echo").build().unwrap();
    let input = json!({"program": "echo", "args": ["$HOME", "*", "a;b"]});
    let out = run_json(&host, &load(&host, "shell-exec"), input, &grant).await.unwrap();
    assert_eq!(out["exit_code"], 0);
    assert_eq!(out["stdout"], "$HOME * a;b\n", "arguments reach the program verbatim");
}

#[tokio::test(flavor = "multi_thread")]
async fn http_fetch_reaches_an_allowlisted_loopback_server() {
    let server = LoopbackServer::start("hello from loopback").await.unwrap();
    let host = host();
    let grant = Grant::builder().http(&server.url()).unwrap().build().unwrap();
    let out = run_json(&host, &load(&host, "http-fetch"), json!({"url": format!("{}/x", server.url())}), &grant)
        .await
        .unwrap();
    assert_eq!(out["status"], 200);
    assert_eq!(out["body"], "hello from loopback");
    assert_eq!(out["content_type"], "text/plain");
    assert_eq!(server.hits(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn code_reviewer_agent_combines_two_skills() {
    let ws = workspace();
    let host = host();
    let read = Grant::builder().dir(ws.path(), ".", Access::Read);
    host.register("team/security-scanner", load(&host, "security-scanner"), read.clone().build().unwrap());
    host.register("team/word-count", load(&host, "word-count"), read.clone().build().unwrap());
    let grant = read.skill("team/security-scanner").skill("team/word-count").build().unwrap();
    let out = run_json(&host, &load(&host, "code-reviewer"), json!({"path": "."}), &grant).await.unwrap();
    assert_eq!(out["verdict"], "fail");
    assert_eq!(out["secrets_found"], 1);
    assert_eq!(out["files_reviewed"], 3);
    assert_eq!(out["total_lines"], 4);
    assert_eq!(out["findings"][0]["rule"], "aws-access-key-id");
}
