//! The team registry through real processes: `coderclaw registry serve` on
//! loopback, admin commands on its data directory, and developers' CLIs
//! (each with its own state directory) publishing and installing.

mod common;

use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running `coderclaw registry serve` on a free loopback port.
struct Registry {
    data: tempfile::TempDir,
    child: Option<Child>,
    url: String,
    admin: Cli,
}

impl Registry {
    fn start() -> Self {
        let data = tempfile::tempdir().unwrap();
        let admin = Cli::new();
        let mut r = Registry { data, child: None, url: String::new(), admin };
        r.restart();
        r
    }

    /// Starts (again) on a new port, with the same data directory.
    fn restart(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_coderclaw"))
            .args(["registry", "serve", "--data", p(self.data.path()), "--listen", "127.0.0.1:0"])
            .env("CODERCLAW_HOME", self.admin.home.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line.split_whitespace().find(|w| w.starts_with("http://")).expect("serve prints its URL");
        self.url = url.to_owned();
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs an admin command on the data directory.
    fn admin(&self, args: &[&str]) -> String {
        let mut all = args.to_vec();
        all.extend(["--data", p(self.data.path())]);
        let out = self.admin.run(&all);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    }

    fn namespace(&self, name: &str, key: &str) {
        self.admin(&["registry", "namespace", "create", name, "--owner", "alice"]);
        self.admin(&["registry", "key", "add", name, key, "--admin"]);
    }

    fn token(&self, namespace: &str, scope: &str) -> String {
        self.admin(&["registry", "token", "create", namespace, "--scope", scope]).trim().to_owned()
    }

    fn blob_dir(&self) -> PathBuf {
        self.data.path().join("blobs")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A publisher: a key (trusted by nobody yet) and a place for packages.
struct Publisher {
    cli: Cli,
    public: String,
    pkgs: tempfile::TempDir,
}

impl Publisher {
    fn new() -> Self {
        let cli = Cli::new();
        let out = cli.run(&["key", "generate", "--name", "team-key"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let public = text(&cli.run(&["key", "export-public", "team-key"]).stdout).trim().to_owned();
        Publisher { cli, public, pkgs: tempfile::tempdir().unwrap() }
    }

    /// Signs guest `skill` with its manifest edited by `edit`.
    fn package(&self, skill: &str, file: &str, edit: impl Fn(String) -> String) -> PathBuf {
        let manifest = self.pkgs.path().join(format!("{file}.toml"));
        std::fs::write(&manifest, edit(std::fs::read_to_string(manifest_path(skill)).unwrap())).unwrap();
        let out_path = self.pkgs.path().join(format!("{file}.ccpkg"));
        let out = self.cli.run(&[
            "skill",
            "sign",
            p(&coderclaw_e2e::guest(skill)),
            "--key",
            "team-key",
            "--manifest",
            p(&manifest),
            "--out",
            p(&out_path),
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        out_path
    }

    /// `skill` at `version` (its manifest otherwise unchanged).
    fn version(&self, skill: &str, version: &str) -> PathBuf {
        self.package(skill, &format!("{skill}-{version}"), |m| {
            m.replace("version = \"0.1.0\"", &format!("version = \"{version}\""))
        })
    }

    fn publish(&self, registry: &Registry, pkg: &Path, token: &str) -> std::process::Output {
        self.cli.run(&["skill", "publish", p(pkg), "--registry", &registry.url, "--token", token, "--json"])
    }
}

/// A developer: trusts the publisher's key for `namespaces` and knows the
/// registry as `team-registry`, with `admin_keys` for its policies.
fn developer(registry: &Registry, publisher: &Publisher, namespaces: &[&str], policy_keys: bool) -> Cli {
    let cli = Cli::new();
    for ns in namespaces {
        let out = cli.run(&["trust", "add", ns, &publisher.public]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    configure(&cli, registry, publisher, policy_keys);
    cli
}

fn configure(cli: &Cli, registry: &Registry, publisher: &Publisher, policy_keys: bool) {
    let keys = if policy_keys {
        format!("\n    namespace-keys:\n      team: [\"{}\"]", publisher.public)
    } else {
        String::new()
    };
    std::fs::write(
        cli.home.path().join("config.yaml"),
        format!("registries:\n  team-registry:\n    url: {}{keys}\n", registry.url),
    )
    .unwrap();
}

fn ok(out: &std::process::Output) -> String {
    assert_eq!(out.status.code(), Some(0), "stderr: {}\nstdout: {}", text(&out.stderr), text(&out.stdout));
    text(&out.stdout)
}

fn refused(out: &std::process::Output, needle: &str) -> String {
    let stderr = text(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "expected a refusal: {}", text(&out.stdout));
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    stderr
}

fn installed(cli: &Cli) -> Vec<(String, String)> {
    let list: Value = serde_json::from_slice(&cli.run(&["skill", "list", "--json"]).stdout).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap().to_owned(), s["version"].as_str().unwrap().to_owned()))
        .collect()
}

#[test]
fn publish_install_and_run_a_skill_and_an_agent_in_two_namespaces() {
    let registry = Registry::start();
    let publisher = Publisher::new();
    registry.namespace("team", &publisher.public);
    registry.namespace("ops", &publisher.public);
    let (team, ops) = (registry.token("team", "publish"), registry.token("ops", "publish"));

    for skill in ["echo", "word-count", "security-scanner", "code-reviewer"] {
        let pkg = publisher.package(skill, skill, |m| m);
        let reply: Value = serde_json::from_str(&ok(&publisher.publish(&registry, &pkg, &team))).unwrap();
        assert_eq!(reply["id"], format!("team/{skill}"));
        assert_eq!(reply["alreadyPublished"], false);
    }
    let ops_echo = publisher.package("echo", "ops-echo", |m| m.replace("team/echo", "ops/echo"));
    ok(&publisher.publish(&registry, &ops_echo, &ops));

    // The team's shared agents, as the product text's team-reviewer.
    let dev = developer(&registry, &publisher, &["team", "ops"], false);
    let agents: Value =
        serde_json::from_str(&ok(&dev.run(&["registry", "agents", "team", "--registry", "team-registry", "--json"])))
            .unwrap();
    assert_eq!(agents.as_array().unwrap().len(), 1, "{agents}");
    assert_eq!(agents[0]["id"], "team/code-reviewer");
    assert_eq!(agents[0]["kind"], "agent");

    let ws = workspace();
    for id in ["team/echo", "team/word-count", "team/security-scanner", "team/code-reviewer", "ops/echo"] {
        let out =
            dev.run(&["skill", "install", id, "--registry", "team-registry", "--workspace", p(ws.path()), "--json"]);
        let report: Value = serde_json::from_str(&ok(&out)).unwrap();
        assert_eq!(report[0]["action"], "installed", "{report}");
    }
    let run = |args: &[&str]| -> Value {
        let mut args = args.to_vec();
        args.extend(["--workspace", p(ws.path())]);
        serde_json::from_str(&ok(&dev.run(&args))).unwrap()
    };
    assert_eq!(run(&["skill", "run", "team/echo", "--input", "7"]), serde_json::json!({"echo": 7}));
    assert_eq!(run(&["skill", "run", "ops/echo", "--input", "8"]), serde_json::json!({"echo": 8}));
    assert_eq!(run(&["skill", "run", "team/code-reviewer"])["verdict"], "fail", "the agent ran its nested skills");

    let lock = std::fs::read_to_string(ws.path().join(".coderClaw/skills.lock")).unwrap();
    for id in ["team/echo", "team/word-count", "team/security-scanner", "team/code-reviewer", "ops/echo"] {
        assert!(lock.contains(&format!("id = \"{id}\"")), "{lock}");
    }
    assert!(lock.contains("registry = \"team-registry\""), "{lock}");
}
