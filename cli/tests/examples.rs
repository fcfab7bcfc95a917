//! The example scripts in `examples/` run end to end with this build's
//! binary: the security-policy walk-through and the team setup (registry,
//! namespace, keys, tokens, organisation policy, a server, a developer and
//! a CI bot) on loopback.

mod common;

use common::{guest, text};
use std::path::Path;
use std::process::Command;

fn run_script(script: &str, args: &[&Path]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg(root.join("examples").join(script))
        .args(args)
        .current_dir(&root)
        .env("CODERCLAW", env!("CARGO_BIN_EXE_coderclaw"))
        .env_remove("CODERCLAW_HOME")
        .env_remove("CODERCLAW_SESSION")
        .env_remove("CODERCLAW_REMOTE")
        .env_remove("CODERCLAW_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{script}:\n{}\n{}", text(&out.stdout), text(&out.stderr));
}

#[test]
fn the_security_policy_walk_through_runs() {
    let wasm_dir = guest("word-count").parent().unwrap().to_path_buf();
    assert!(wasm_dir.join("shell_exec.wasm").exists(), "{}", wasm_dir.display());
    run_script("security-policy.sh", &[&wasm_dir]);
}

#[test]
fn the_team_setup_script_runs_on_loopback() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../skills/word-count/skill.toml");
    run_script("team-setup.sh", &[&guest("word-count"), &manifest]);
}
