//! The GitHub Action (`action.yml` + `action/run.sh`) run as GitHub runs a
//! composite action's step: its inputs as INPUT_* variables, the
//! GITHUB_OUTPUT and GITHUB_STEP_SUMMARY files, the real `coderclaw` on
//! PATH, against a real `coderclaw serve` (remote-enabled) and the
//! in-process engine (local-only).

mod common;

use common::{Cli, free_port, login, p, sign, start_server, text, trusted_key};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn install_echo(cli: &Cli, dir: &Path) {
    trusted_key(cli, "team-key", "team");
    let out = cli.run(&["skill", "install", p(&sign(cli, "echo", "team-key", dir))]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// What one run of the step left: exit code, its log, outputs, summary.
struct Step {
    code: Option<i32>,
    log: String,
    outputs: BTreeMap<String, String>,
    summary: String,
}

/// Runs the action's task step with `inputs` (name → value), as the
/// runner would: `bash $GITHUB_ACTION_PATH/action/run.sh`.
fn run_step(cli: &Cli, workspace: &Path, inputs: &[(&str, &str)]) -> Step {
    let files = tempfile::tempdir().unwrap();
    let (output, summary) = (files.path().join("output"), files.path().join("summary"));
    std::fs::write(&output, "").unwrap();
    std::fs::write(&summary, "").unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_coderclaw")).parent().unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(repo().join("action/run.sh"))
        .current_dir(workspace)
        .env("PATH", path)
        .env("CODERCLAW_HOME", cli.home.path())
        .env("GITHUB_ACTION_PATH", repo())
        .env("GITHUB_OUTPUT", &output)
        .env("GITHUB_STEP_SUMMARY", &summary)
        .env("GITHUB_REPOSITORY", "org/repo")
        .env("GITHUB_RUN_ID", "42")
        .env("GITHUB_JOB", "scan")
        .env_remove("CODERCLAW_REMOTE")
        .env_remove("CODERCLAW_TOKEN");
    for (name, value) in inputs {
        cmd.env(format!("INPUT_{}", name.to_uppercase()), value);
    }
    let out = cmd.output().unwrap();
    let log = format!("{}{}", text(&out.stdout), text(&out.stderr));
    Step {
        code: out.status.code(),
        log,
        outputs: parse_outputs(&std::fs::read_to_string(&output).unwrap()),
        summary: std::fs::read_to_string(&summary).unwrap(),
    }
}

/// GITHUB_OUTPUT's `name=value` and `name<<DELIMITER` … `DELIMITER` lines.
fn parse_outputs(text: &str) -> BTreeMap<String, String> {
    let mut outputs = BTreeMap::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some((name, delimiter)) = line.split_once("<<") {
            let value: Vec<&str> = lines.by_ref().take_while(|l| *l != delimiter).collect();
            outputs.insert(name.to_owned(), value.join("\n"));
        } else if let Some((name, value)) = line.split_once('=') {
            outputs.insert(name.to_owned(), value.to_owned());
        }
    }
    outputs
}

#[test]
fn the_action_declares_every_input_its_step_reads() {
    let action: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(repo().join("action.yml")).unwrap()).unwrap();
    assert_eq!(action["runs"]["using"], "composite");
    let steps = action["runs"]["steps"].as_array().unwrap();
    let run = steps.iter().find(|s| s["id"] == "run").expect("the task step");
    assert_eq!(run["run"], "bash \"$GITHUB_ACTION_PATH/action/run.sh\"");
    let inputs = action["inputs"].as_object().unwrap();
    for name in ["task", "skill", "agent", "input", "mode", "remote", "token", "audience"] {
        assert!(inputs.contains_key(name), "input {name}");
        let var = format!("INPUT_{}", name.to_uppercase());
        assert_eq!(run["env"][&var], format!("${{{{ inputs.{name} }}}}"), "{var}");
    }
    for output in ["task-id", "status", "output"] {
        assert_eq!(action["outputs"][output]["value"], format!("${{{{ steps.run.outputs.{output} }}}}"));
    }
}

#[test]
fn remote_enabled_writes_outputs_and_a_summary_and_fails_the_step_unless_completed() {
    let (cli, tmp) = (Cli::new(), tempfile::tempdir().unwrap());
    install_echo(&cli, tmp.path());
    let server = start_server(&cli, p(tmp.path()), free_port());
    let token = login(&cli);
    let remote = [("mode", "remote-enabled"), ("remote", server.1.as_str()), ("token", token.as_str())];

    let mut inputs = remote.to_vec();
    inputs.extend([("task", "PR 7 scan"), ("skill", "team/echo"), ("input", "{\"n\": 1}")]);
    let step = run_step(&cli, tmp.path(), &inputs);
    assert_eq!(step.code, Some(0), "{}", step.log);
    assert_eq!(step.outputs["status"], "COMPLETED", "{:?}", step.outputs);
    assert_eq!(serde_json::from_str::<Value>(&step.outputs["output"]).unwrap(), json!({ "echo": { "n": 1 } }));
    let id = &step.outputs["task-id"];
    assert!(
        step.log.contains(&format!("task {id} submitted")) && step.log.contains("RUNNING"),
        "progress: {}",
        step.log
    );
    assert!(step.summary.contains("| Status | COMPLETED |") && step.summary.contains(id), "{}", step.summary);
    assert!(step.summary.contains("```json"), "{}", step.summary);
    let state = cli.run(&["task", "status", id, "--remote", &server.1, "--token", &token, "--json"]);
    let state: Value = serde_json::from_slice(&state.stdout).unwrap();
    assert_eq!(state["description"], "PR 7 scan");
    assert_eq!(state["metadata"]["github-run"], "org/repo#42/scan");

    // A task that fails fails the step, and says why in the summary.
    let mut inputs = remote.to_vec();
    inputs.push(("skill", "team/not-installed"));
    let step = run_step(&cli, tmp.path(), &inputs);
    assert_eq!(step.code, Some(1), "{}", step.log);
    assert_eq!(step.outputs["status"], "FAILED");
    assert_eq!(step.outputs["output"], "");
    assert!(step.summary.contains("| Error | `not-installed`"), "{}", step.summary);

    // Bad inputs are refused before anything is submitted.
    for (bad, says) in [
        (vec![("mode", "remote-enabled"), ("skill", "team/echo")], "needs the remote input"),
        (vec![("mode", "sideways"), ("skill", "team/echo")], "local-only or remote-enabled"),
        (vec![("skill", "team/echo"), ("agent", "team/x")], "not both"),
        (vec![], "say what to run"),
    ] {
        let step = run_step(&cli, tmp.path(), &bad);
        assert_eq!(step.code, Some(2), "{says}: {}", step.log);
        assert!(step.log.contains("::error") && step.log.contains(says), "{says}: {}", step.log);
    }
}

#[test]
fn local_only_runs_the_in_process_engine_on_the_runner() {
    let (cli, tmp) = (Cli::new(), tempfile::tempdir().unwrap());
    install_echo(&cli, tmp.path());
    let step = run_step(&cli, tmp.path(), &[("skill", "team/echo"), ("input", "[1, 2]")]);
    assert_eq!(step.code, Some(0), "{}", step.log);
    assert_eq!(step.outputs["status"], "COMPLETED");
    assert_eq!(serde_json::from_str::<Value>(&step.outputs["output"]).unwrap(), json!({ "echo": [1, 2] }));
    assert!(step.summary.contains("team/echo"), "{}", step.summary);
}

/// README's hand-written CI step: its `env` and `run`, as GitHub would run
/// them (the expressions filled in, the secrets and server this test's).
fn readme_ci_step() -> (Vec<String>, String) {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let after = readme.split("A CI job (GitHub Actions) that fails when the task fails, by hand:").nth(1).unwrap();
    let yaml = after.split("```yaml\n").nth(1).unwrap().split("```").next().unwrap();
    let steps: Vec<Value> = serde_saphyr::from_str(yaml).unwrap();
    let env: Vec<String> = steps[0]["env"].as_object().unwrap().keys().cloned().collect();
    let run = steps[0]["run"].as_str().unwrap().replace("${{ github.event.number }}", "7");
    (env, run)
}

#[test]
fn the_readmes_ci_recipe_runs_verbatim_with_a_ci_session() {
    let (cli, tmp) = (Cli::new(), tempfile::tempdir().unwrap());
    trusted_key(&cli, "team-key", "team");
    for skill in ["word-count", "security-scanner", "code-reviewer"] {
        let out = cli.run(&["skill", "install", p(&sign(&cli, skill, "team-key", tmp.path()))]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    std::fs::write(tmp.path().join("notes.md"), "one two three\n").unwrap();
    let server = start_server(&cli, p(tmp.path()), free_port());
    let added = cli.run_stdin(&["user", "add", "ci-bot", "--role", "ci", "--password-stdin"], "ci password\n");
    assert_eq!(added.status.code(), Some(0), "{}", text(&added.stderr));
    let session = cli.run_stdin(&["login", "--user", "ci-bot", "--password-stdin"], "ci password");
    let token = text(&session.stdout).trim().to_owned();

    let (env, run) = readme_ci_step();
    assert_eq!(env, ["CODERCLAW_REMOTE", "CODERCLAW_TOKEN"], "the recipe's environment");
    let bin = Path::new(env!("CARGO_BIN_EXE_coderclaw")).parent().unwrap();
    let out = std::process::Command::new("bash")
        .args(["-e", "-c", &run])
        .current_dir(tmp.path())
        .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()))
        .env("CODERCLAW_HOME", tempfile::tempdir().unwrap().path())
        .env("CODERCLAW_REMOTE", &server.1)
        .env("CODERCLAW_TOKEN", &token)
        .output()
        .unwrap();
    let log = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "the recipe as written: {log}");
    assert!(log.contains("COMPLETED"), "{log}");

    // The same session may not run the skill directly: the recipe's choice
    // of an agent is the point.
    let direct = cli.run(&[
        "task",
        "submit",
        "--skill",
        "team/security-scanner",
        "--wait",
        "--remote",
        &server.1,
        "--token",
        &token,
    ]);
    assert_ne!(direct.status.code(), Some(0));
    assert!(text(&direct.stderr).contains("skill:execute"), "{}", text(&direct.stderr));
    // The nested calls were decided for the agent and audited.
    let audit = cli.run(&["audit", "query", "--action", "skill.invoke", "--json"]);
    let records: Value = serde_json::from_slice(&audit.stdout).unwrap_or(json!([]));
    let nested: Vec<&Value> = records.as_array().into_iter().flatten().collect();
    assert!(nested.len() >= 2 && nested.iter().all(|r| r["result"] == "allowed"), "{records}");
}
