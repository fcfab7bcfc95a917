//! The `coderclaw` binary, run as a user would: real processes, real
//! components built from source, a real HTTP server on loopback.

mod common;

use coderclaw_e2e::{LoopbackServer, guest};
use common::*;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;

#[test]
fn echo_prints_its_output_and_exits_zero() {
    let cli = Cli::new();
    let out = cli.run(&["skill", "run", p(&guest("echo")), "--dangerous-allow-unsigned", "--input", r#"{"hi": 1}"#]);
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

    // Findings are a failure verdict by default: exit 5, output kept.
    let (code, report) = cli.run_json("security-scanner", &["--allow-read", &grant]);
    assert_eq!(code, 5, "{report}");
    assert_eq!((report["ok"].as_bool(), report["verdict"]["code"].as_str()), (Some(false), Some("skill-verdict")));
    assert!(report["verdict"]["message"].as_str().unwrap().contains("1 possible secret(s)"), "{report}");
    assert_eq!(report["output"]["findings"][0]["rule"], "github-token");
    assert_eq!(report["output"]["findings"][0]["file"], "./creds.env");
    let quiet = ["--allow-read", &grant, "--input", r#"{"fail_on_findings": false}"#];
    let (code, report) = cli.run_json("security-scanner", &quiet);
    assert_eq!((code, report["output"]["failed"].as_bool()), (0, Some(false)), "{report}");
}

/// A skill's failure verdict fails the task (`skill-verdict`, output kept)
/// and the command (exit 5), for `skill run` and `task submit` alike; SARIF
/// output carries the findings in the 2.1.0 shape code scanning takes.
#[test]
fn a_failure_verdict_fails_the_task_and_the_command_and_keeps_the_findings() {
    let cli = Cli::new();
    let pkgs = tempfile::tempdir().unwrap();
    trusted_key(&cli, "k", "team");
    assert_eq!(
        cli.run(&["skill", "install", p(&sign(&cli, "security-scanner", "k", pkgs.path()))]).status.code(),
        Some(0)
    );
    let ws = workspace();
    let out = cli.run(&["skill", "run", "team/security-scanner", "--workspace", p(ws.path())]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("error: the skill reported failure: 1 possible secret(s)"),
        "{}",
        text(&out.stderr)
    );
    let output: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((output["failed"].as_bool(), output["findings"][0]["line"].as_u64()), (Some(true), Some(1)));

    let submit = |input: &str| {
        let args = ["task", "submit", "--skill", "team/security-scanner", "--input", input, "--wait", "--json"];
        cli.run(&[&args[..], &["--workspace", p(ws.path())]].concat())
    };
    let out = submit(r#"{"format": "sarif"}"#);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    let state: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((state["status"].as_str(), state["error"]["code"].as_str()), (Some("FAILED"), Some("skill-verdict")));
    let sarif = &state["output"]["sarif"];
    assert_eq!(sarif["version"], "2.1.0");
    let run = &sarif["runs"][0];
    let rules: Vec<&str> =
        run["tool"]["driver"]["rules"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    let result = &run["results"][0];
    assert_eq!(result["ruleId"], "github-token");
    assert_eq!(rules[result["ruleIndex"].as_u64().unwrap() as usize], "github-token");
    let location = &result["locations"][0]["physicalLocation"];
    assert_eq!(
        (location["artifactLocation"]["uri"].as_str(), location["region"]["startLine"].as_u64()),
        (Some("creds.env"), Some(1))
    );
    assert!(!sarif.to_string().contains("ghp_0123456789"), "the secret is redacted in SARIF too");
    // Valid against the official SARIF 2.1.0 schema, by a validator this
    // project did not write (and the same validator refuses a broken log).
    let python = python_venv("sarif-venv", &["jsonschema==4.23.0"]);
    let dir = tempfile::tempdir().unwrap();
    let (good, bad) = (dir.path().join("scan.sarif"), dir.path().join("bad.sarif"));
    std::fs::write(&good, sarif.to_string()).unwrap();
    let mut broken = sarif.clone();
    broken["runs"][0]["results"][0]["level"] = json!("fatal");
    std::fs::write(&bad, broken.to_string()).unwrap();
    let validate = |file: &Path| {
        let script = "import json, sys, jsonschema\n\
            schema = json.load(open(sys.argv[1]))\n\
            log = json.load(open(sys.argv[2]))\n\
            errors = list(jsonschema.validators.validator_for(schema)(schema).iter_errors(log))\n\
            print('\\n'.join(e.message for e in errors))\n\
            sys.exit(1 if errors else 0)\n";
        Command::new(&python).args(["-c", script]).arg(sarif_schema()).arg(file).output().unwrap()
    };
    let out = validate(&good);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
    let out = validate(&bad);
    assert_eq!(out.status.code(), Some(1), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("'fatal' is not one of"), "{}", text(&out.stdout));
    let out = submit(r#"{"fail_on_findings": false}"#);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
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

    let denied = cli.run(&[
        "skill",
        "run",
        p(&guest("shell-exec")),
        "--dangerous-allow-unsigned",
        "--input",
        input,
        "--allow-read",
        &read,
    ]);
    assert_eq!(denied.status.code(), Some(3), "skill error exit code");
    let stderr = text(&denied.stderr);
    assert!(stderr.contains("shell DENIED: ls"), "the denial is shown: {stderr}");
    assert!(stderr.contains("error:") && stderr.contains("no shell grant"), "{stderr}");
    assert!(denied.stdout.is_empty());

    // Granting a program makes the build dangerous: no policy names it, so it is refused.
    let grant = ["--input", input, "--allow-read", &read, "--allow-shell", "ls", "--workspace", p(ws.path())];
    let (code, report) = cli.run_json("shell-exec", &grant);
    assert_eq!(code, 3, "{report}");
    assert_eq!(report["reasons"][0]["code"], "dangerous-without-policy", "{report}");

    allow_shell_exec(ws.path());
    let (code, report) = cli.run_json("shell-exec", &grant);
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
        args.push("--dangerous-allow-unsigned".into());
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

    let out = cli.run(&[
        "skill",
        "run",
        p(&guest("echo")),
        "--dangerous-allow-unsigned",
        "--allow-env",
        "CODERCLAW_SURELY_UNSET_VAR",
    ]);
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

    // Unsigned builds never take a signed id's policy: each nested call was
    // decided (and audited) as local/<name>.
    let audit: Value =
        serde_json::from_slice(&cli.run(&["audit", "query", "--action", "skill.invoke", "--json"]).stdout).unwrap();
    let mut ids: Vec<&str> = audit.as_array().unwrap().iter().map(|r| r["resource_id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["local/security-scanner", "local/word-count"]);

    // Policy decides each nested call when it is made: a rule against the
    // counter refuses it inside the agent's run.
    std::fs::create_dir_all(ws.path().join(".coderClaw")).unwrap();
    std::fs::write(
        ws.path().join(".coderClaw/security.yaml"),
        "skillPolicies:\n  - skillId: word-count\n    allowedRoles: [admin]\n",
    )
    .unwrap();
    let with_policy =
        ["--allow-read", &read, "--with-skill", &scanner, "--with-skill", &counter, "--workspace", p(ws.path())];
    let (code, report) = cli.run_json("code-reviewer", &with_policy);
    assert_eq!(code, 3, "{report}");
    let refused = report["events"].as_array().unwrap().iter().find(|e| e["allowed"] == false).expect("a refusal event");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("refused `team/word-count`: skillPolicies for `word-count` allows roles [admin]"),
        "{refused}"
    );
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
    let out = cli.run(&["skill", "run", p(junk.path()), "--dangerous-allow-unsigned"]);
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
        (&["--input", "{not json"], "the input from --input is not valid JSON"),
        (&["--memory", "lots"], "is not a size"),
        (&["--timeout", "30"], "is not a duration"),
        (&["--allow-http", "ftp://x"], "scheme must be http or https"),
        (&["--allow-read", "/definitely/not/here"], "not an existing directory"),
        (&["--with-skill", "oops"], "\"oops\" is not a skill id"),
    ];
    for (extra, message) in cases {
        let mut args = vec!["skill", "run", p(&echo), "--dangerous-allow-unsigned"];
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
        (vec!["skill", "--help"], "Install skills"),
        (vec!["skill", "install", "--help"], "does not vouch for itself"),
        (vec!["skill", "publish", "--help"], "never lets a version"),
        (vec!["skill", "update", "--help"], "requirement"),
        (vec!["registry", "--help"], "scoped tokens"),
        (vec!["registry", "serve", "--help"], "blobs"),
        (vec!["skill", "run", "--help"], "--allow-shell"),
        (vec!["skill", "sign", "--help"], "Ed25519"),
        (vec!["skill", "verify", "--help"], "trust store"),
        (vec!["key", "--help"], "never printed"),
        (vec!["trust", "--help"], "revoked key"),
        (vec!["audit", "--help"], "hash-chained"),
        (vec!["skill", "build", "--help"], "wasm32-wasip2"),
        (vec!["skill", "new", "--help"], "coderclaw-sdk"),
        (vec!["quickstart", "--help"], "sample workspace"),
    ] {
        let out = cli.run(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(text(&out.stdout).contains(needle), "{args:?} --help mentions {needle}");
    }
}

/// `coderclaw completions SHELL` prints a script each shell accepts, naming
/// the subcommands and their flags; the bash one is parsed by bash and
/// completes a subcommand.
#[test]
fn completion_scripts_are_printed_for_each_shell() {
    let cli = Cli::new();
    for (shell, marker) in [
        ("bash", "complete -F _coderclaw"),
        ("zsh", "#compdef coderclaw"),
        ("fish", "complete -c coderclaw"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let out = cli.run(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(script.contains(marker), "{shell}: {marker}");
        assert!(script.contains("quickstart") && script.contains("--grpc-listen"), "{shell}: names commands and flags");
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("coderclaw.bash");
    std::fs::write(&script, cli.run(&["completions", "bash"]).stdout).unwrap();
    let probe = format!(
        "source {}; COMP_WORDS=(coderclaw qui); COMP_CWORD=1; _coderclaw coderclaw qui coderclaw; echo \"${{COMPREPLY[@]}}\"",
        script.display()
    );
    let out = std::process::Command::new("bash").args(["-c", &probe]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "quickstart", "bash completes `qui`");
    let out = cli.run(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("possible values: bash"), "{}", text(&out.stderr));
}

#[test]
fn new_skill_builds_and_runs_out_of_the_box() {
    let cli = Cli::new();
    let parent = tempfile::tempdir().unwrap();
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("sdk");
    let out = cli.run(&["skill", "new", "hello-skill", "--dir", p(parent.path()), "--sdk-path", p(&sdk)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let crate_dir = parent.path().join("hello-skill");
    let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
    let sdk = std::fs::canonicalize(&sdk).unwrap();
    assert!(manifest.contains(&format!("coderclaw-sdk = {{ path = {:?} }}", sdk.display().to_string())), "{manifest}");
    for wrong in [parent.path().to_path_buf(), parent.path().join("nowhere")] {
        let out = cli.run(&["skill", "new", "other", "--dir", p(parent.path()), "--sdk-path", p(&wrong)]);
        assert_eq!(out.status.code(), Some(1));
        assert!(text(&out.stderr).contains("--sdk-path"), "{}", text(&out.stderr));
        assert!(!parent.path().join("other").exists(), "nothing is written for a wrong --sdk-path");
    }
    let again = cli.run(&["skill", "new", "hello-skill", "--dir", p(parent.path())]);
    assert!(text(&again.stderr).contains("already exists"));
    assert!(text(&cli.run(&["skill", "new", "Bad_Name"]).stderr).contains("not a valid skill name"));

    let out = cli.run(&["skill", "build", p(&crate_dir), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let built: Value = serde_json::from_slice(&out.stdout).unwrap();
    let wasm = built[0]["path"].as_str().unwrap();
    let bytes = std::fs::read(wasm).unwrap();
    assert_eq!(built[0]["sha256"], sha256sum(&bytes));

    let out = cli.run(&["skill", "run", wasm, "--dangerous-allow-unsigned", "--input", r#"{"name": "coderclaw"}"#]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, json!({"greeting": "hello, coderclaw!"}));

    // The scaffold's manifest signs as is: sign the crate directory, install, run by id.
    trusted_key(&cli, "me", "local");
    let pkg = parent.path().join("hello.ccpkg");
    let out = cli.run(&["skill", "sign", p(&crate_dir), "--key", "me", "--out", p(&pkg)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(cli.run(&["skill", "install", p(&pkg)]).status.code(), Some(0));
    let out = cli.run(&["skill", "run", "local/hello-skill", "--input", r#"{"name": "team"}"#]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), json!({"greeting": "hello, team!"}));
}

/// SHA-256 computed independently of the CLI, through `sha256sum`.
fn sha256sum(bytes: &[u8]) -> String {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), bytes).unwrap();
    let out = Command::new("sha256sum").arg(f.path()).output().unwrap();
    text(&out.stdout).split_whitespace().next().unwrap().to_owned()
}

// --- signed packages ---

#[test]
fn every_example_skill_signs_verifies_installs_and_runs() {
    let cli = Cli::new();
    let pkgs = tempfile::tempdir().unwrap();
    trusted_key(&cli, "team-key", "team");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(LoopbackServer::start("signed pong")).unwrap();
    // http-fetch's manifest asks for api.github.com; this test's copy asks
    // for the loopback server instead (there is no network here).
    let fetch_manifest = pkgs.path().join("http-fetch.toml");
    let original = std::fs::read_to_string(manifest_path("http-fetch")).unwrap();
    std::fs::write(&fetch_manifest, original.replace("https://api.github.com", &server.url())).unwrap();
    for skill in ["echo", "word-count", "shell-exec", "http-fetch", "security-scanner", "code-reviewer"] {
        let pkg = if skill == "http-fetch" {
            sign_with(&cli, skill, "team-key", &fetch_manifest, pkgs.path())
        } else {
            sign(&cli, skill, "team-key", pkgs.path())
        };
        let verified = cli.run(&["skill", "verify", p(&pkg)]);
        assert_eq!(verified.status.code(), Some(0), "{}", text(&verified.stderr));
        assert!(text(&verified.stdout).contains(&format!("team/{skill}")));
        let installed = cli.run(&["skill", "install", p(&pkg)]);
        assert_eq!(installed.status.code(), Some(0), "{}", text(&installed.stderr));
    }
    let list: Value = serde_json::from_slice(&cli.run(&["skill", "list", "--json"]).stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 6);

    let ws = workspace();
    allow_shell_exec(ws.path());
    let run = |args: &[&str]| -> Value {
        let mut args = args.to_vec();
        args.extend(["--workspace", p(ws.path())]);
        let out = cli.run(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(run(&["skill", "run", "team/echo", "--input", "3"]), json!({"echo": 3}));
    // The manifest's logical `workspace` is --workspace: no --allow-* flag.
    // a.txt, creds.env and .coderClaw/security.yaml.
    assert_eq!(run(&["skill", "run", "team/word-count"])["files"], 3);
    let scan = run(&["skill", "run", "team/security-scanner", "--input", r#"{"fail_on_findings": false}"#]);
    assert_eq!(scan["findings"][0]["rule"], "github-token");
    let ls = run(&["skill", "run", "team/shell-exec", "--input", r#"{"program": "ls"}"#]);
    assert_eq!(ls["stdout"], "a.txt\ncreds.env\n");
    let input = json!({"url": server.url()}).to_string();
    assert_eq!(run(&["skill", "run", "team/http-fetch", "--input", &input])["body"], "signed pong");
    // The agent's manifest lists its skills; installed ones are invocable.
    let review = run(&["skill", "run", "team/code-reviewer"]);
    assert_eq!(review["verdict"], "fail");

    // --allow-* flags do not widen a signed skill.
    let out = cli.run(&["skill", "run", "team/echo", "--allow-shell", "rm"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("is a signed skill"), "{}", text(&out.stderr));

    let removed = cli.run(&["skill", "remove", "team/echo"]);
    assert_eq!(removed.status.code(), Some(0));
    let gone = cli.run(&["skill", "run", "team/echo"]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(text(&gone.stderr).contains("team/echo is not installed"), "{}", text(&gone.stderr));
}

#[test]
fn verify_and_info_print_exactly_the_requested_capabilities() {
    let cli = Cli::new();
    let pkgs = tempfile::tempdir().unwrap();
    let key_id = trusted_key(&cli, "k", "team");
    let pkg = sign(&cli, "shell-exec", "k", pkgs.path());
    let verified: Value = serde_json::from_slice(&cli.run(&["skill", "verify", p(&pkg), "--json"]).stdout).unwrap();
    assert_eq!(verified["ok"], true);
    let expected = json!({
        "fs": [{"path": "workspace", "access": "read"}], "http": [], "env": [], "shell": ["git", "ls"], "skills": []
    });
    assert_eq!(verified["package"]["capabilities"], expected);
    assert_eq!(verified["package"]["signer"], key_id);
    assert_eq!(verified["package"]["namespace"], "team");
    assert_eq!(verified["package"]["dangerous"], true);
    cli.run(&["skill", "install", p(&pkg)]);
    let info: Value = serde_json::from_slice(&cli.run(&["skill", "info", "team/shell-exec", "--json"]).stdout).unwrap();
    assert_eq!(info, verified["package"], "install records exactly what was verified");

    // Asking is not getting: a dangerous skill no policy names is refused.
    let ws = workspace();
    let out =
        cli.run(&["skill", "run", "team/shell-exec", "--input", r#"{"program": "ls"}"#, "--workspace", p(ws.path())]);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains("dangerous-without-policy"), "{}", text(&out.stderr));
}

#[test]
fn tampered_or_untrusted_packages_are_refused_and_nothing_is_installed() {
    let cli = Cli::new();
    let pkgs = tempfile::tempdir().unwrap();
    trusted_key(&cli, "team-key", "team");
    let good = std::fs::read(sign(&cli, "echo", "team-key", pkgs.path())).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = pkgs.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let mut component = good.clone();
    let i = good.len() - 200; // inside the component, before the signature block
    component[i] ^= 0x40;
    let mut signature = good.clone();
    let last = signature.len() - 1;
    signature[last] ^= 0x01;

    // A valid signature by a key nobody trusts; a key trusted only for `other`.
    let out = cli.run(&["key", "generate", "--name", "stranger"]);
    assert_eq!(out.status.code(), Some(0));
    let stranger = sign(&cli, "echo", "stranger", &pkgs.path().join("..").canonicalize().unwrap());
    trusted_key(&cli, "other-key", "other");
    let other = std::fs::read(sign(&cli, "echo", "other-key", pkgs.path())).unwrap();

    let cases = [
        (write("component.ccpkg", &component), "does not match the package's contents"),
        (write("signature.ccpkg", &signature), "does not match the package's contents"),
        (write("truncated.ccpkg", &good[..good.len() / 3]), "truncated"),
        (stranger, "no signature is by a trusted key"),
        (write("other.ccpkg", &other), "not for namespace `team`"),
    ];
    for (path, reason) in &cases {
        let v = cli.run(&["skill", "verify", p(path)]);
        assert_eq!(v.status.code(), Some(1), "{}", p(path));
        assert!(text(&v.stderr).contains(reason), "verify {}: want {reason:?}: {}", p(path), text(&v.stderr));
        let i = cli.run(&["skill", "install", p(path)]);
        assert_eq!(i.status.code(), Some(1));
        assert!(text(&i.stderr).contains(reason), "install: {}", text(&i.stderr));
        let in_name = p(path).matches(reason).count();
        assert_eq!(text(&i.stderr).matches(reason).count(), 1 + in_name, "said once: {}", text(&i.stderr));
    }
    let list: Value = serde_json::from_slice(&cli.run(&["skill", "list", "--json"]).stdout).unwrap();
    assert_eq!(list, json!([]), "nothing was installed");

    // Revocation also stops what is already installed.
    let good_path = write("good.ccpkg", &good);
    assert_eq!(cli.run(&["skill", "install", p(&good_path)]).status.code(), Some(0));
    assert_eq!(cli.run(&["skill", "run", "team/echo"]).status.code(), Some(0));
    let trust: Value = serde_json::from_slice(&cli.run(&["trust", "list", "--json"]).stdout).unwrap();
    let team_id =
        trust.as_array().unwrap().iter().find(|e| e["namespaces"] == json!(["team"])).unwrap()["key_id"].clone();
    assert_eq!(cli.run(&["trust", "revoke", team_id.as_str().unwrap()]).status.code(), Some(0));
    let revoked = cli.run(&["skill", "run", "team/echo"]);
    assert_eq!(revoked.status.code(), Some(1));
    assert!(text(&revoked.stderr).contains("was revoked"), "{}", text(&revoked.stderr));
    assert!(text(&cli.run(&["skill", "verify", p(&good_path)]).stderr).contains("was revoked"));
}

#[test]
fn unsafe_or_corrupt_key_files_are_reported() {
    let cli = Cli::new();
    let pkgs = tempfile::tempdir().unwrap();
    trusted_key(&cli, "k", "team");
    let key_file = cli.home.path().join("keys/k.key");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let sign_echo = || {
        let out_path = pkgs.path().join("x.ccpkg");
        cli.run(&[
            "skill",
            "sign",
            p(&guest("echo")),
            "--key",
            "k",
            "--manifest",
            p(&manifest_path("echo")),
            "--out",
            p(&out_path),
        ])
    };
    let out = sign_echo();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("readable by other users") && text(&out.stderr).contains("chmod 600"),
        "{}",
        text(&out.stderr)
    );
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&key_file, "coderclaw-secret-key v1\nshort\n").unwrap();
    let out = sign_echo();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("corrupt"), "{}", text(&out.stderr));
    let out = cli.run(&["skill", "sign", p(&guest("echo")), "--key", "nope", "--manifest", p(&manifest_path("echo"))]);
    assert!(text(&out.stderr).contains("no signing key named \"nope\""), "{}", text(&out.stderr));
}

#[test]
fn unsigned_files_need_the_dangerous_flag() {
    let cli = Cli::new();
    let out = cli.run(&["skill", "run", p(&guest("echo"))]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not a signed package") && text(&out.stderr).contains("--dangerous-allow-unsigned")
    );
    let compiled = cli.home.path().join("cache/compiled");
    assert!(!compiled.exists() || coderclaw_e2e::cached_files(&compiled).is_empty(), "nothing was compiled");
}

// --- audit log ---

#[test]
fn audit_query_shows_decisions_and_verify_names_a_tampered_record() {
    let cli = Cli::new();
    let pkgs = tempfile::tempdir().unwrap();
    let pkg = {
        let out = cli.run(&["key", "generate", "--name", "k"]);
        assert_eq!(out.status.code(), Some(0));
        sign(&cli, "echo", "k", pkgs.path())
    };
    assert_eq!(cli.run(&["skill", "install", p(&pkg)]).status.code(), Some(1), "not trusted yet");
    trusted_key(&cli, "k2", "team");
    let public = text(&cli.run(&["key", "export-public", "k"]).stdout).trim().to_owned();
    assert_eq!(cli.run(&["trust", "add", "team", &public]).status.code(), Some(0));
    assert_eq!(cli.run(&["skill", "install", p(&pkg)]).status.code(), Some(0));
    assert_eq!(cli.run(&["skill", "run", "team/echo"]).status.code(), Some(0));

    let installs: Value =
        serde_json::from_slice(&cli.run(&["audit", "query", "--action", "skill.install", "--json"]).stdout).unwrap();
    let results: Vec<&str> = installs.as_array().unwrap().iter().map(|r| r["result"].as_str().unwrap()).collect();
    assert_eq!(results, ["denied", "allowed"]);
    assert!(installs[0]["reason"].as_str().unwrap().contains("no signature is by a trusted key"));
    let denied: Value =
        serde_json::from_slice(&cli.run(&["audit", "query", "--result", "denied", "--json"]).stdout).unwrap();
    assert_eq!(denied.as_array().unwrap().len(), 1);
    let recent: Value =
        serde_json::from_slice(&cli.run(&["audit", "query", "--since", "1h", "--json"]).stdout).unwrap();
    assert!(recent.as_array().unwrap().iter().any(|r| r["action"] == "skill.verify"), "runs verify and are audited");

    let ok = cli.run(&["audit", "verify"]);
    assert_eq!(ok.status.code(), Some(0));
    assert!(text(&ok.stdout).contains("hash chain intact"));

    // The refused install rewritten as allowed is found at its record.
    let seq = denied[0]["seq"].as_i64().unwrap();
    let db = cli.home.path().join("audit.db");
    let sql = format!("UPDATE audit SET result = 'allowed' WHERE seq = {seq}");
    let edit = Command::new("sqlite3").arg(&db).arg(sql).output().unwrap();
    assert!(edit.status.success(), "{}", text(&edit.stderr));
    let bad = cli.run(&["audit", "verify"]);
    assert_eq!(bad.status.code(), Some(1));
    let stderr = text(&bad.stderr);
    assert!(stderr.contains(&format!("audit record {seq} has been tampered with")), "{stderr}");
}

/// No terminal escapes on stderr when it is not a terminal (a log file, a
/// CI step), unless `--color always` (or CODERCLAW_COLOR) asks; `never`
/// wins over a terminal, and NO_COLOR does not override an explicit ask.
#[test]
fn stderr_has_no_escapes_off_a_terminal_unless_asked() {
    use std::os::unix::fs::PermissionsExt;
    let cli = Cli::new();
    // Every command warns about a state directory others can read.
    std::fs::set_permissions(cli.home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = cli.run(&["trust", "list"]);
    let said = text(&out.stderr);
    assert!(said.contains("readable by other users"), "{said}");
    assert!(!said.contains('\x1b'), "escapes in a piped stderr: {said:?}");
    let out = cli.run(&["--color", "always", "trust", "list"]);
    assert!(text(&out.stderr).contains('\x1b'), "--color always: {:?}", text(&out.stderr));
    let out = Command::new(env!("CARGO_BIN_EXE_coderclaw"))
        .args(["trust", "list"])
        .env("CODERCLAW_HOME", cli.home.path())
        .env("CODERCLAW_COLOR", "always")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(text(&out.stderr).contains('\x1b'), "CODERCLAW_COLOR=always: {:?}", text(&out.stderr));
    let out = cli.run(&["trust", "list", "--color", "sometimes"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("possible values: auto, always, never"), "{}", text(&out.stderr));
}

/// `coderclaw man`: the main page on stdout, and with --dir one page per
/// command and subcommand, each titled with its full name and carrying
/// the same text as its --help.
#[test]
fn man_pages_cover_every_command() {
    let cli = Cli::new();
    let out = cli.run(&["man"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let main_page = text(&out.stdout);
    assert!(main_page.contains(".TH coderclaw 1"), "{main_page}");
    assert!(main_page.contains("skill") && main_page.contains("cluster"), "{main_page}");
    let dir = tempfile::tempdir().unwrap();
    let out = cli.run(&["man", "--dir", dir.path().join("man1").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("manual pages to"), "{}", text(&out.stderr));
    let page = |name: &str| std::fs::read_to_string(dir.path().join("man1").join(format!("{name}.1")));
    let run = page("coderclaw-skill-run").unwrap();
    assert!(run.contains(".TH coderclaw\\-skill\\-run 1") || run.contains(".TH coderclaw-skill-run 1"), "{run}");
    assert!(run.contains("dangerous\\-allow\\-unsigned") || run.contains("dangerous-allow-unsigned"), "{run}");
    for name in ["coderclaw-user-passwd", "coderclaw-key-rotate", "coderclaw-audit-verify", "coderclaw-man"] {
        assert!(page(name).is_ok(), "no page for {name}");
    }
    assert!(page("coderclaw-help").is_err(), "`help` is not a command of its own");
    let count = std::fs::read_dir(dir.path().join("man1")).unwrap().count();
    assert!(count > 60, "{count} pages");
}

/// `--input @FILE` and `--input -` (stdin), for runs and tasks alike; a
/// file that is not JSON is refused naming it, a missing one naming it.
#[test]
fn input_comes_inline_from_a_file_or_from_stdin() {
    let cli = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("input.json");
    std::fs::write(&file, r#"{"from": "file"}"#).unwrap();
    let echo = guest("echo");
    let run = |input: &str, stdin: &str| {
        let args = ["skill", "run", echo.to_str().unwrap(), "--dangerous-allow-unsigned", "--json", "--input", input];
        cli.run_stdin(&args, stdin)
    };
    let out = run(&format!("@{}", file.display()), "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(r#""from": "file""#) || text(&out.stdout).contains(r#""from":"file""#),
        "{}",
        text(&out.stdout)
    );
    let out = run("-", r#"{"from": "stdin"}"#);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("stdin"), "{}", text(&out.stdout));
    std::fs::write(&file, "not json").unwrap();
    let out = run(&format!("@{}", file.display()), "");
    assert_eq!(out.status.code(), Some(1));
    let said = text(&out.stderr);
    assert!(said.contains("input.json") && said.contains("not valid JSON"), "{said}");
    let out = run("@/nonexistent/input.json", "");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot read /nonexistent/input.json"), "{}", text(&out.stderr));
    // task submit takes the same forms (refused before any engine opens).
    let out = cli.run_stdin(&["task", "submit", "--skill", "team/echo", "--input", "-"], "{broken");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("the input from stdin is not valid JSON"), "{}", text(&out.stderr));
}

/// The signed `[input-schema]` is shown by `skill info` and enforced before
/// the guest runs, for `skill run` and `task submit` alike: a refusal names
/// the failing path and keyword, exits 3, and `--json` lists each problem.
#[test]
fn input_that_fails_the_signed_schema_is_refused_before_the_skill_runs() {
    let cli = Cli::new();
    let pkgs = tempfile::tempdir().unwrap();
    trusted_key(&cli, "k", "team");
    let pkg = sign(&cli, "word-count", "k", pkgs.path());
    assert_eq!(cli.run(&["skill", "install", p(&pkg)]).status.code(), Some(0));
    let info = text(&cli.run(&["skill", "info", "team/word-count"]).stdout);
    assert!(info.contains("input (checked against this schema before the skill runs)"), "{info}");
    assert!(info.contains("max_files") && info.contains("integer") && info.contains("(no other keys)"), "{info}");

    let ws = workspace();
    let run = |input: &str, json: bool| {
        let mut args = vec!["skill", "run", "team/word-count", "--input", input, "--workspace", p(ws.path())];
        if json {
            args.push("--json");
        }
        cli.run(&args)
    };
    // The guest would take both (it ignores unknown keys, and 0 files is a
    // number to it): only the host's check refuses them.
    let out = run(r#"{"max_files": 0, "verbose": true}"#, false);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let said = text(&out.stderr);
    assert!(said.contains("team/word-count refused its input before running"), "{said}");
    assert!(said.contains("at /max_files:") && said.contains("keyword `minimum`"), "{said}");
    assert!(said.contains("keyword `additionalProperties`"), "{said}");
    assert!(said.contains("coderclaw skill info team/word-count"), "{said}");
    let out = run(r#"{"max_files": "ten"}"#, true);
    assert_eq!(out.status.code(), Some(3));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["error"]["code"], "invalid-input");
    assert_eq!(report["error"]["problems"][0]["path"], "/max_files");
    assert_eq!(report["error"]["problems"][0]["keyword"], "type");
    assert!(!text(&out.stdout).contains("\"ten\""), "the input's values are not echoed back");
    assert_eq!(run(r#"{"max_files": 1}"#, false).status.code(), Some(0));

    let out = cli.run(&[
        "task",
        "submit",
        "--skill",
        "team/word-count",
        "--input",
        r#"{"max_files": 0}"#,
        "--wait",
        "--json",
        "--workspace",
        p(ws.path()),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let state: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((state["status"].as_str(), state["error"]["code"].as_str()), (Some("FAILED"), Some("invalid-input")));
    assert!(state["error"]["message"].as_str().unwrap().contains("keyword `minimum`"), "{state}");
}

/// The README's "Writing a skill" commands, run as written in an empty
/// directory outside this checkout, with the SDK as a registry would serve
/// it (`cargo package` output, patched in by `.cargo/config.toml`): the
/// scaffold holds no path into the repository and builds, runs and signs.
#[test]
fn the_readmes_writing_a_skill_section_works_as_written_outside_the_repository() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let packaged = tmp.path().join("packaged");
    let target = tmp.path().join("package-target");
    let out = Command::new(env!("CARGO"))
        .current_dir(repo)
        .args(["package", "-p", "coderclaw-sdk-macros", "-p", "coderclaw-sdk", "--no-verify", "--allow-dirty"])
        .arg("--target-dir")
        .arg(&target)
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo package: {}", text(&out.stderr));
    std::fs::create_dir(&packaged).unwrap();
    let version = env!("CARGO_PKG_VERSION");
    let mut patch = String::from("[patch.crates-io]\n");
    for name in ["coderclaw-sdk-macros", "coderclaw-sdk"] {
        let file = target.join("package").join(format!("{name}-{version}.crate"));
        let status = Command::new("tar").arg("xzf").arg(&file).arg("-C").arg(&packaged).status().unwrap();
        assert!(status.success(), "unpacking {}", file.display());
        let dir = packaged.join(format!("{name}-{version}"));
        patch += &format!("{name} = {{ path = {:?} }}\n", dir.display().to_string());
    }
    let work = tmp.path().join("work");
    std::fs::create_dir_all(work.join(".cargo")).unwrap();
    std::fs::write(work.join(".cargo/config.toml"), patch).unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_coderclaw"), bin.join("coderclaw")).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let home = tempfile::tempdir().unwrap();
    let shell = |line: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(line)
            .current_dir(&work)
            .env("PATH", &path)
            .env("CODERCLAW_HOME", home.path())
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CODERCLAW_LOG")
            .output()
            .unwrap()
    };

    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let section = readme.split("\n## Writing a skill\n").nth(1).expect("the README has the section");
    let block = section.split("```sh\n").nth(1).unwrap().split("```").next().unwrap();
    let lines: Vec<&str> = block.lines().filter(|l| l.starts_with("coderclaw ")).collect();
    assert!(lines.len() >= 4, "{block}");
    let mut printed_run = None;
    for line in lines {
        let out = shell(line);
        assert_eq!(out.status.code(), Some(0), "{line}\n{}{}", text(&out.stdout), text(&out.stderr));
        if line.starts_with("coderclaw skill run") {
            assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), json!({"greeting": "hello, you!"}));
        }
        if line.starts_with("coderclaw skill build") {
            let stdout = text(&out.stdout);
            printed_run = stdout.lines().find_map(|l| l.strip_prefix("run it:").map(|c| c.trim().to_owned()));
        }
    }
    // The command `skill build` printed works as written too.
    let printed_run = printed_run.expect("skill build prints the command that runs the component");
    let out = shell(&printed_run);
    assert_eq!(out.status.code(), Some(0), "{printed_run}\n{}", text(&out.stderr));
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), json!({"greeting": "hello, world!"}));
    assert!(work.join("my-skill-0.1.0.ccpkg").is_file());
    // Nothing in the crate points into this checkout: the SDK is a version.
    let requirement = format!("coderclaw-sdk = \"{}\"", version.rsplit_once('.').unwrap().0);
    for file in ["Cargo.toml", "skill.toml", "src/lib.rs"] {
        let text = std::fs::read_to_string(work.join("my-skill").join(file)).unwrap();
        assert!(!text.contains(repo.to_str().unwrap()), "{file}: {text}");
    }
    let manifest = std::fs::read_to_string(work.join("my-skill/Cargo.toml")).unwrap();
    assert!(manifest.contains(&requirement) && !manifest.contains("path ="), "{manifest}");
}
