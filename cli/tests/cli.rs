//! The `coderclaw` binary, run as a user would: real processes, real
//! components built from source, a real HTTP server on loopback.

use coderclaw_e2e::{LoopbackServer, guest};
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Output};

struct Cli {
    home: tempfile::TempDir,
}

impl Cli {
    fn new() -> Self {
        Self { home: tempfile::tempdir().unwrap() }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_coderclaw"))
            .args(args)
            .env("CODERCLAW_HOME", self.home.path())
            .env_remove("CODERCLAW_LOG")
            .output()
            .expect("coderclaw runs")
    }

    /// Runs `skill run <component> ... --json` and returns (exit code, report).
    fn run_json(&self, component: &str, extra: &[&str]) -> (i32, Value) {
        let path = guest(component);
        let mut args = vec!["skill", "run", path.to_str().unwrap(), "--json"];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        let report = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("--json output is JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
        (out.status.code().unwrap(), report)
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "one two three\nfour\n").unwrap();
    std::fs::write(dir.path().join("creds.env"), "TOKEN=ghp_0123456789abcdefghijklmnopqrstuvwxyzAB\n").unwrap();
    dir
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn echo_prints_its_output_and_exits_zero() {
    let cli = Cli::new();
    let out = cli.run(&["skill", "run", p(&guest("echo")), "--input", r#"{"hi": 1}"#]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, json!({"echo": {"hi": 1}}));
}

#[test]
fn word_count_and_scanner_with_a_read_grant() {
    let cli = Cli::new();
    let ws = workspace();
    let grant = format!("{}::.", p(ws.path()));
    let (code, report) = cli.run_json("word-count", &["--input", "{}", "--allow-read", &grant]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["output"]["total"]["words"], 5);
    assert_eq!(report["output"]["files"], 2);

    let (code, report) = cli.run_json("security-scanner", &["--allow-read", &grant]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["output"]["findings"][0]["rule"], "github-token");
    assert_eq!(report["output"]["findings"][0]["file"], "./creds.env");
}

#[test]
fn second_run_uses_the_compiled_code_cache() {
    let cli = Cli::new();
    let (_, first) = cli.run_json("echo", &[]);
    let (_, second) = cli.run_json("echo", &[]);
    assert_eq!(first["load"], "compiled");
    assert_eq!(second["load"], "disk-cache");
    assert_eq!(first["digest"], second["digest"]);
}

#[test]
fn shell_exec_is_denied_without_a_grant_and_runs_with_one() {
    let cli = Cli::new();
    let ws = workspace();
    let read = format!("{}::.", p(ws.path()));
    let input = r#"{"program": "ls"}"#;

    let denied = cli.run(&["skill", "run", p(&guest("shell-exec")), "--input", input, "--allow-read", &read]);
    assert_eq!(denied.status.code(), Some(3), "skill error exit code");
    let stderr = text(&denied.stderr);
    assert!(stderr.contains("shell DENIED: ls"), "the denial is shown: {stderr}");
    assert!(stderr.contains("error:") && stderr.contains("no shell grant"), "{stderr}");
    assert!(denied.stdout.is_empty());

    let (code, report) = cli.run_json("shell-exec", &["--input", input, "--allow-read", &read, "--allow-shell", "ls"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["output"]["stdout"], "a.txt\ncreds.env\n");
    let shell_event = report["events"].as_array().unwrap().iter().find(|e| e["type"] == "capability").unwrap();
    assert_eq!(shell_event["allowed"], true);
}

#[test]
fn http_fetch_only_reaches_allowlisted_hosts() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(LoopbackServer::start("pong")).unwrap();
    let cli = Cli::new();
    let input = json!({"url": format!("{}/ping", server.url())}).to_string();

    let (code, report) = cli.run_json("http-fetch", &["--input", &input]);
    assert_eq!(code, 3, "{report}");
    assert_eq!(report["error"]["code"], "denied");
    assert_eq!(server.hits(), 0);

    let (code, report) = cli.run_json("http-fetch", &["--input", &input, "--allow-http", &server.url()]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["output"]["body"], "pong");
    assert_eq!(server.hits(), 1);
}

#[test]
fn env_is_passed_only_when_granted() {
    let cli = Cli::new();
    let input = r#"{"env": ["CODERCLAW_TEST_TOKEN"]}"#;
    let run = |extra: &[&str]| {
        let mut args: Vec<String> =
            vec!["skill".into(), "run".into(), p(&guest("fs-escape")).into(), "--input".into(), input.into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = Command::new(env!("CARGO_BIN_EXE_coderclaw"))
            .args(&args)
            .env("CODERCLAW_HOME", cli.home.path())
            .env("CODERCLAW_TEST_TOKEN", "s3cret")
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    assert_eq!(run(&[])["env"]["CODERCLAW_TEST_TOKEN"], Value::Null);
    assert_eq!(run(&["--allow-env", "CODERCLAW_TEST_TOKEN"])["env"]["CODERCLAW_TEST_TOKEN"], "s3cret");

    let out = cli.run(&["skill", "run", p(&guest("echo")), "--allow-env", "CODERCLAW_SURELY_UNSET_VAR"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("CODERCLAW_SURELY_UNSET_VAR: it is not set"), "{}", text(&out.stderr));
}

#[test]
fn agent_runs_with_skills_supplied_on_the_command_line() {
    let cli = Cli::new();
    let ws = workspace();
    let read = format!("{}::.", p(ws.path()));
    let scanner = format!("team/security-scanner={}", p(&guest("security-scanner")));
    let counter = format!("team/word-count={}", p(&guest("word-count")));
    let (code, report) =
        cli.run_json("code-reviewer", &["--allow-read", &read, "--with-skill", &scanner, "--with-skill", &counter]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["output"]["verdict"], "fail");
    assert_eq!(report["output"]["secrets_found"], 1);
    assert_eq!(report["output"]["files_reviewed"], 2);
    let nested: Vec<&Value> = report["events"].as_array().unwrap().iter().filter(|e| e["depth"] == 1).collect();
    assert!(!nested.is_empty(), "nested skills' events are reported with depth 1");
}

#[test]
fn runaway_and_broken_components_fail_cleanly() {
    let cli = Cli::new();
    let (code, report) = cli.run_json("infinite-loop", &["--timeout", "300ms"]);
    assert_eq!(code, 4, "{report}");
    assert_eq!(report["error"]["code"], "timeout");

    let (code, report) = cli.run_json("memory-bomb", &["--memory", "16MiB"]);
    assert_eq!(code, 4, "{report}");
    assert_eq!(report["error"]["code"], "memory-limit");

    let junk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(junk.path(), b"not wasm").unwrap();
    let out = cli.run(&["skill", "run", p(junk.path())]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("is not a WebAssembly file"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_arguments_are_explained() {
    let cli = Cli::new();
    let echo = guest("echo");
    let cases: &[(&[&str], &str)] = &[
        (&["--input", "{not json"], "the input is not valid JSON"),
        (&["--memory", "lots"], "is not a size"),
        (&["--timeout", "30"], "is not a duration"),
        (&["--allow-http", "ftp://x"], "scheme must be http or https"),
        (&["--allow-read", "/definitely/not/here"], "not an existing directory"),
        (&["--with-skill", "oops"], "write ID=PATH"),
    ];
    for (extra, message) in cases {
        let mut args = vec!["skill", "run", p(&echo)];
        args.extend_from_slice(extra);
        let out = cli.run(&args);
        assert_ne!(out.status.code(), Some(0), "{extra:?}");
        assert!(text(&out.stderr).contains(message), "{extra:?}: {}", text(&out.stderr));
    }
}

#[test]
fn every_command_explains_itself() {
    let cli = Cli::new();
    for (args, needle) in [
        (vec!["--help"], "can touch nothing"),
        (vec!["skill", "--help"], "run"),
        (vec!["skill", "run", "--help"], "--allow-shell"),
        (vec!["skill", "build", "--help"], "wasm32-wasip2"),
        (vec!["skill", "new", "--help"], "coderclaw-sdk"),
        (vec!["quickstart", "--help"], "sample workspace"),
    ] {
        let out = cli.run(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(text(&out.stdout).contains(needle), "{args:?} --help mentions {needle}");
    }
}

#[test]
fn new_skill_builds_and_runs_out_of_the_box() {
    let cli = Cli::new();
    let parent = tempfile::tempdir().unwrap();
    let out = cli.run(&["skill", "new", "hello-skill", "--dir", p(parent.path())]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let crate_dir = parent.path().join("hello-skill");
    let again = cli.run(&["skill", "new", "hello-skill", "--dir", p(parent.path())]);
    assert!(text(&again.stderr).contains("already exists"));
    assert!(text(&cli.run(&["skill", "new", "Bad_Name"]).stderr).contains("not a valid skill name"));

    let out = cli.run(&["skill", "build", p(&crate_dir), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let built: Value = serde_json::from_slice(&out.stdout).unwrap();
    let wasm = built[0]["path"].as_str().unwrap();
    let bytes = std::fs::read(wasm).unwrap();
    assert_eq!(built[0]["sha256"], sha256sum(&bytes));

    let out = cli.run(&["skill", "run", wasm, "--input", r#"{"name": "coderclaw"}"#]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, json!({"greeting": "hello, coderclaw!"}));
}

/// SHA-256 computed independently of the CLI, through `sha256sum`.
fn sha256sum(bytes: &[u8]) -> String {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), bytes).unwrap();
    let out = Command::new("sha256sum").arg(f.path()).output().unwrap();
    text(&out.stdout).split_whitespace().next().unwrap().to_owned()
}
