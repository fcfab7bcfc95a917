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

    /// Signs `text` as the team's organisation policy and publishes it.
    fn publish_policy(&self, registry: &Registry, text: &str, token: &str) {
        let policy = self.pkgs.path().join("org.yaml");
        std::fs::write(&policy, text).unwrap();
        let file = p(&policy);
        let args = ["registry", "policy", "publish", "team", "--file", file, "--key", "team-key"];
        ok(&self.cli.run(&[&args[..], &["--registry", &registry.url, "--token", token]].concat()));
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

/// The audit log's refused installs.
fn refused_installs(cli: &Cli) -> Value {
    let args = ["audit", "query", "--action", "skill.install", "--result", "denied", "--json"];
    serde_json::from_str(&ok(&cli.run(&args))).unwrap()
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
    // The agent first: it says which of the skills it invokes are missing.
    let out = dev.run(&[
        "skill",
        "install",
        "team/code-reviewer",
        "--registry",
        "team-registry",
        "--workspace",
        p(ws.path()),
    ]);
    ok(&out);
    assert!(
        text(&out.stderr).contains("invokes team/security-scanner, which is not installed"),
        "{}",
        text(&out.stderr)
    );
    for id in ["team/echo", "team/word-count", "team/security-scanner", "ops/echo"] {
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
    // Installed without a requirement: locked as ^<version>, so update stays below 0.2.
    assert!(lock.contains("requirement = \"^0.1.0\""), "{lock}");
}

#[test]
fn publishing_needs_the_right_token_and_an_authorised_key() {
    let registry = Registry::start();
    let publisher = Publisher::new();
    registry.namespace("team", &publisher.public);
    registry.namespace("ops", &publisher.public);
    let pkg = publisher.package("echo", "echo", |m| m);

    refused(&publisher.publish(&registry, &pkg, "ccr_not-a-token"), "unauthenticated");
    refused(&publisher.publish(&registry, &pkg, &registry.token("ops", "publish")), "wrong_namespace");
    refused(&publisher.publish(&registry, &pkg, &registry.token("team", "read")), "insufficient_scope");
    let expiring = registry
        .admin(&["registry", "token", "create", "team", "--scope", "publish", "--expires", "1s"])
        .trim()
        .to_owned();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    refused(&publisher.publish(&registry, &pkg, &expiring), "token_expired");
    let revoked = registry.token("team", "publish");
    let list: Value = serde_json::from_str(&registry.admin(&["registry", "token", "list", "team", "--json"])).unwrap();
    let id = list.as_array().unwrap().last().unwrap()["id"].as_str().unwrap().to_owned();
    registry.admin(&["registry", "token", "revoke", &id]);
    refused(&publisher.publish(&registry, &pkg, &revoked), "token_revoked");

    // Signed by a key the namespace does not list.
    let stranger = Publisher::new();
    let foreign = stranger.package("echo", "echo", |m| m);
    let publish = registry.token("team", "publish");
    refused(&stranger.publish(&registry, &foreign, &publish), "signature_rejected");
    // A revoked namespace key signs nothing new.
    let key_id: Value = serde_json::from_str(&registry.admin(&["registry", "key", "list", "team", "--json"])).unwrap();
    registry.admin(&["registry", "key", "revoke", "team", key_id[0]["keyId"].as_str().unwrap()]);
    refused(&publisher.publish(&registry, &pkg, &publish), "signature_rejected");

    // Nothing was published by any of these.
    let search: Value =
        serde_json::from_str(&ok(&publisher.cli.run(&["registry", "search", "--registry", &registry.url, "--json"])))
            .unwrap();
    assert_eq!(search, serde_json::json!([]));
}

#[test]
fn a_version_is_published_once_and_yanking_does_not_free_it() {
    let registry = Registry::start();
    let publisher = Publisher::new();
    registry.namespace("team", &publisher.public);
    let token = registry.token("team", "publish");
    let first = publisher.package("echo", "echo", |m| m);
    ok(&publisher.publish(&registry, &first, &token));
    // The same bytes again: a no-op, not an error (CI retries).
    let again: Value = serde_json::from_str(&ok(&publisher.publish(&registry, &first, &token))).unwrap();
    assert_eq!(again["alreadyPublished"], true);
    let other = publisher.package("echo", "echo-b", |m| m.replace("Returns its input", "Returns its input, again"));
    refused(&publisher.publish(&registry, &other, &token), "version_exists");
    let yank = registry.token("team", "yank");
    ok(&publisher.cli.run(&[
        "skill",
        "yank",
        "team/echo@0.1.0",
        "--reason",
        "broken",
        "--registry",
        &registry.url,
        "--token",
        &yank,
    ]));
    refused(&publisher.publish(&registry, &other, &token), "version_exists");
}

#[test]
fn tampered_storage_is_refused_and_installs_nothing() {
    let registry = Registry::start();
    let publisher = Publisher::new();
    registry.namespace("team", &publisher.public);
    let token = registry.token("team", "publish");
    ok(&publisher.publish(&registry, &publisher.package("echo", "echo", |m| m), &token));
    let dev = developer(&registry, &publisher, &["team"], false);
    let ws = workspace();
    let install =
        || dev.run(&["skill", "install", "team/echo", "--registry", "team-registry", "--workspace", p(ws.path())]);

    // Bytes changed in the blob store: the SHA-256 no longer matches the index.
    let blob = std::fs::read_dir(registry.blob_dir()).unwrap().next().unwrap().unwrap().path();
    let original = std::fs::read(&blob).unwrap();
    let mut flipped = original.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    std::fs::write(&blob, &flipped).unwrap();
    refused(&install(), "the stored package was altered");
    assert!(installed(&dev).is_empty());
    assert!(!ws.path().join(".coderClaw/skills.lock").exists());
    assert!(!dev.home.path().join("registry/blobs").exists(), "refused bytes are not cached");
    let audit = refused_installs(&dev);
    let reason = audit[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("the stored package was altered"), "the refusal is audited: {audit}");

    // A registry fully under someone else's control: the blob swapped for a
    // package signed by another key, and the index rewritten to match. A
    // client that saw the old index refuses the rewrite; a new client
    // refuses the signature.
    let stranger = Publisher::new();
    let forged = std::fs::read(stranger.package("echo", "echo", |m| m)).unwrap();
    let forged_sha = coderclaw_core::Digest::of(&forged).to_hex();
    let forged_pkg = coderclaw_core::package::Package::parse(&forged).unwrap();
    std::fs::write(registry.blob_dir().join(format!("{forged_sha}.ccpkg")), &forged).unwrap();
    let db = rusqlite::Connection::open(registry.data.path().join("registry.db")).unwrap();
    db.execute("UPDATE packages SET sha256 = ?1, digest = ?2", [&forged_sha, &forged_pkg.digest().to_hex()]).unwrap();
    refused(&install(), "published versions never change");
    let fresh = developer(&registry, &publisher, &["team"], false);
    let out = fresh.run(&["skill", "install", "team/echo", "--registry", "team-registry", "--workspace", p(ws.path())]);
    refused(&out, "failed verification against your trust store");
    assert!(installed(&dev).is_empty() && installed(&fresh).is_empty());
    assert!(!ws.path().join(".coderClaw/skills.lock").exists());
}

#[test]
fn semver_yanks_lockfile_rollback_and_the_capability_gate() {
    let registry = Registry::start();
    let publisher = Publisher::new();
    registry.namespace("team", &publisher.public);
    let (token, yank) = (registry.token("team", "publish"), registry.token("team", "yank"));
    for v in ["0.1.0", "0.2.0"] {
        ok(&publisher.publish(&registry, &publisher.version("echo", v), &token));
    }
    // 1.0.0 asks for a network destination the 0.x versions did not.
    let wider = publisher.package("echo", "echo-1.0.0", |m| {
        format!("{}\n[capabilities]\nhttp = [\"https://api.example.com\"]\n", m.replace("0.1.0", "1.0.0"))
    });
    ok(&publisher.publish(&registry, &wider, &token));

    let dev = developer(&registry, &publisher, &["team"], false);
    let ws = workspace();
    let run = |cli: &Cli, args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--registry", "team-registry", "--workspace", p(ws.path())]);
        cli.run(&all)
    };
    ok(&run(&dev, &["skill", "install", "team/echo@<1"]));
    assert_eq!(installed(&dev), vec![("team/echo".to_owned(), "0.2.0".to_owned())]);
    let lock = std::fs::read_to_string(ws.path().join(".coderClaw/skills.lock")).unwrap();
    assert!(lock.contains("version = \"0.2.0\"") && lock.contains("requirement = \"<1\""), "{lock}");

    // Rollback refused unless asked for.
    refused(&run(&dev, &["skill", "install", "team/echo@=0.1.0"]), "rollback");
    assert_eq!(installed(&dev)[0].1, "0.2.0");

    // Yanked: skipped by new resolutions, still installed from the lockfile.
    ok(&publisher.cli.run(&[
        "skill",
        "yank",
        "team/echo@0.2.0",
        "--reason",
        "leaks input",
        "--registry",
        &registry.url,
        "--token",
        &yank,
    ]));
    let fresh_ws = workspace();
    let fresh = developer(&registry, &publisher, &["team"], false);
    ok(&fresh.run(&[
        "skill",
        "install",
        "team/echo@<1",
        "--registry",
        "team-registry",
        "--workspace",
        p(fresh_ws.path()),
    ]));
    assert_eq!(installed(&fresh)[0].1, "0.1.0", "the yanked 0.2.0 is not resolved");

    let clean = developer(&registry, &publisher, &["team"], false);
    let out = clean.run(&["skill", "install", "--workspace", p(ws.path())]);
    ok(&out);
    assert!(text(&out.stderr).contains("is yanked (leaks input)"), "{}", text(&out.stderr));
    assert_eq!(installed(&clean)[0].1, "0.2.0");
    let package_bytes = |cli: &Cli| {
        let dir = cli.home.path().join("packages");
        let files: Vec<Vec<u8>> =
            std::fs::read_dir(dir).unwrap().map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect();
        files
    };
    assert_eq!(package_bytes(&clean), package_bytes(&dev), "the lockfile reproduces byte-identical packages");

    // The lockfile's requirement (<1) keeps `update` below 1.0.0.
    let updated: Value = serde_json::from_str(&ok(&run(&dev, &["skill", "update", "--json"]))).unwrap();
    assert_eq!(updated[0]["version"], "0.2.0", "{updated}");
    // 1.0.0 asks for more: refused with the difference, then accepted.
    let gate = refused(&run(&dev, &["skill", "install", "team/echo@^1"]), "--accept-capabilities");
    assert!(gate.contains("+ http: https://api.example.com:443"), "{gate}");
    assert_eq!(installed(&dev)[0].1, "0.2.0");
    ok(&run(&dev, &["skill", "install", "team/echo@^1", "--accept-capabilities"]));
    assert_eq!(installed(&dev)[0].1, "1.0.0");
    ok(&run(&dev, &["skill", "install", "team/echo@=0.1.0", "--allow-downgrade"]));
    assert_eq!(installed(&dev)[0].1, "0.1.0");
}

#[test]
fn installs_from_the_cache_while_the_registry_is_down() {
    let mut registry = Registry::start();
    let publisher = Publisher::new();
    registry.namespace("team", &publisher.public);
    let token = registry.token("team", "publish");
    ok(&publisher.publish(&registry, &publisher.package("echo", "echo", |m| m), &token));
    ok(&publisher.publish(&registry, &publisher.package("word-count", "word-count", |m| m), &token));
    let dev = developer(&registry, &publisher, &["team"], false);
    let ws = workspace();
    let install =
        |id: &str| dev.run(&["skill", "install", id, "--registry", "team-registry", "--workspace", p(ws.path())]);
    ok(&install("team/echo"));
    ok(&dev.run(&["skill", "remove", "team/echo"]));

    registry.stop();
    let out = install("team/echo");
    ok(&out);
    assert!(text(&out.stderr).contains("unreachable"), "says it used the cache: {}", text(&out.stderr));
    assert_eq!(installed(&dev), vec![("team/echo".to_owned(), "0.1.0".to_owned())]);
    refused(&install("team/word-count"), "is not in the local cache");
}

#[test]
fn organisation_policy_from_the_registry_is_verified_cached_and_enforced() {
    let registry = Registry::start();
    let publisher = Publisher::new();
    registry.namespace("team", &publisher.public);
    let token = registry.token("team", "publish");
    for skill in ["echo", "word-count"] {
        ok(&publisher.publish(&registry, &publisher.package(skill, skill, |m| m), &token));
    }
    let dev = developer(&registry, &publisher, &["team"], true);
    let ws = workspace();
    let install =
        |id: &str| dev.run(&["skill", "install", id, "--registry", "team-registry", "--workspace", p(ws.path())]);
    ok(&install("team/echo"));

    publisher.publish_policy(
        &registry,
        "organizationPolicy:\n  requiredSkills: [word-count]\n  deniedSkills: [echo]\n",
        &token,
    );
    ok(&dev.run(&["registry", "sync", "--registry", "team-registry"]));

    // Denied: neither run, nor installed (by id or from the lockfile).
    let run = dev.run(&["skill", "run", "team/echo", "--input", "1", "--workspace", p(ws.path())]);
    assert_ne!(run.status.code(), Some(0));
    assert!(text(&run.stderr).contains("[denied-skill]"), "{}", text(&run.stderr));
    refused(&install("team/echo"), "denied by the organisation policy");
    // Removing it is allowed; the lockfile still pins it, and installs nothing.
    ok(&dev.run(&["skill", "remove", "team/echo"]));
    refused(&dev.run(&["skill", "install", "--workspace", p(ws.path())]), "denied by the organisation policy");
    assert!(installed(&dev).is_empty());
    // Required and missing: reported.
    let status = dev.run(&["status", "--workspace", p(ws.path())]);
    assert!(text(&status.stdout).contains("word-count"), "{}{}", text(&status.stdout), text(&status.stderr));
    ok(&install("team/word-count"));

    // A policy edited on the registry (its signature no longer matches) is
    // refused, and the verified one stays in force.
    let db = rusqlite::Connection::open(registry.data.path().join("registry.db")).unwrap();
    db.execute("UPDATE org_policies SET document = replace(document, '\"echo\"', '\"nothing\"')", []).unwrap();
    refused(&dev.run(&["registry", "sync", "--registry", "team-registry"]), "altered after signing");
    refused(&install("team/echo"), "altered after signing");
    let shown: Value = serde_json::from_str(&ok(&dev.run(&["registry", "policy", "show", "--json"]))).unwrap();
    assert_eq!(shown["policy"]["deniedSkills"], serde_json::json!(["echo"]), "the verified policy stays in force");

    // The cached copy edited on this machine stops the host instead of
    // running without the team's policy.
    let cached = dev.home.path().join("policy/org/team-registry/team.json");
    let text_now = std::fs::read_to_string(&cached).unwrap();
    std::fs::write(&cached, text_now.replace("\"echo\"", "\"nothing\"")).unwrap();
    refused(&dev.run(&["skill", "list"]), "coderclaw registry sync");
    std::fs::write(&cached, &text_now).unwrap();
    ok(&dev.run(&["skill", "list"]));
    db.execute("UPDATE org_policies SET document = replace(document, '\"nothing\"', '\"echo\"')", []).unwrap();

    // The policy is state, not cache: clearing the download cache keeps it
    // in force...
    std::fs::remove_dir_all(dev.home.path().join("registry")).unwrap();
    let echo_manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../skills/echo/skill.toml");
    let check = |cli: &Cli| text(&cli.run(&["policy", "check", "--skill", echo_manifest, "--json"]).stdout);
    assert!(check(&dev).contains("denied-skill"), "{}", check(&dev));
    // ...and once enforced, its absence stops the host until a sync
    // restores it, rather than silently lifting deniedSkills.
    std::fs::remove_file(&cached).unwrap();
    let out = dev.run(&["skill", "run", "team/echo", "--input", "1", "--workspace", p(ws.path())]);
    assert_ne!(out.status.code(), Some(0));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("stored copy is gone") && stderr.contains("coderclaw registry sync"), "{stderr}");
    ok(&dev.run(&["registry", "sync", "--registry", "team-registry"]));
    refused(&install("team/echo"), "denied by the organisation policy");
}

#[test]
fn registry_metadata_older_than_seen_is_refused() {
    let mut registry = Registry::start();
    let publisher = Publisher::new();
    registry.namespace("team", &publisher.public);
    let token = registry.token("team", "publish");
    ok(&publisher.publish(&registry, &publisher.version("echo", "0.1.0"), &token));
    // A backup of the registry as it was, before 0.2.0 (a fix) was published.
    let backup = tempfile::tempdir().unwrap();
    registry.stop();
    for entry in std::fs::read_dir(registry.data.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, backup.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    registry.restart();
    ok(&publisher.publish(&registry, &publisher.version("echo", "0.2.0"), &token));
    let dev = developer(&registry, &publisher, &["team"], false);
    let ws = workspace();
    let install =
        || dev.run(&["skill", "install", "team/echo", "--registry", "team-registry", "--workspace", p(ws.path())]);
    ok(&install());

    // The registry is restored from the backup: it no longer knows 0.2.0.
    registry.stop();
    for entry in std::fs::read_dir(backup.path()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, registry.data.path().join(path.file_name().unwrap())).unwrap();
    }
    registry.restart();
    configure(&dev, &registry, &publisher, false);
    refused(&install(), "older than what this client has seen");
    assert_eq!(installed(&dev), vec![("team/echo".to_owned(), "0.2.0".to_owned())]);
}

#[test]
fn a_lockfile_cannot_send_the_token_to_a_registry_the_user_did_not_configure() {
    let registry = Registry::start();
    let publisher = Publisher::new();
    let dev = developer(&registry, &publisher, &["team"], false);
    let ws = workspace();
    std::fs::create_dir_all(ws.path().join(".coderClaw")).unwrap();
    let hash = "a".repeat(64);
    std::fs::write(
        ws.path().join(".coderClaw/skills.lock"),
        format!(
            "version = 1\n[[skill]]\nid = \"team/echo\"\nversion = \"0.1.0\"\nrequirement = \"^0.1\"\n\
             digest = \"{hash}\"\nsha256 = \"{hash}\"\nsigner = \"0123456789abcdef\"\nregistry = \"http://127.0.0.1:9\"\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coderclaw"));
    let out = cmd
        .args(["skill", "install", "--workspace", p(ws.path())])
        .env("CODERCLAW_HOME", dev.home.path())
        .env("CODERCLAW_REGISTRY_TOKEN", "ccr_secret")
        .output()
        .unwrap();
    refused(&out, "which is not in your configuration");
}

#[test]
fn package_files_pass_the_same_install_gates() {
    let publisher = Publisher::new();
    let dev = Cli::new();
    ok(&dev.run(&["trust", "add", "team", &publisher.public]));
    let file = |pkg: &Path, extra: &[&str]| {
        let mut args = vec!["skill", "install", p(pkg)];
        args.extend_from_slice(extra);
        dev.run(&args)
    };
    ok(&file(&publisher.version("echo", "0.2.0"), &[]));
    let older = publisher.version("echo", "0.1.0");
    refused(&file(&older, &[]), "rollback");
    assert_eq!(installed(&dev)[0].1, "0.2.0");
    ok(&file(&older, &["--allow-downgrade"]));
    assert_eq!(installed(&dev)[0].1, "0.1.0");

    let wider = publisher.package("echo", "echo-wide", |m| {
        format!("{}\n[capabilities]\nhttp = [\"https://api.example.com\"]\n", m.replace("0.1.0", "0.3.0"))
    });
    let gate = refused(&file(&wider, &[]), "--accept-capabilities");
    assert!(gate.contains("+ http: https://api.example.com:443"), "{gate}");
    assert_eq!(installed(&dev)[0].1, "0.1.0");
    ok(&file(&wider, &["--accept-capabilities"]));
    assert_eq!(installed(&dev)[0].1, "0.3.0");

    let audit = refused_installs(&dev);
    assert_eq!(audit.as_array().unwrap().len(), 2, "both refusals are audited: {audit}");
}

#[test]
fn a_lockfile_install_refuses_a_package_signed_by_another_key_than_locked() {
    let registry = Registry::start();
    let publisher = Publisher::new();
    registry.namespace("team", &publisher.public);
    ok(&publisher.publish(&registry, &publisher.package("echo", "echo", |m| m), &registry.token("team", "publish")));
    let dev = developer(&registry, &publisher, &["team"], false);
    let ws = workspace();
    ok(&dev.run(&["skill", "install", "team/echo", "--registry", "team-registry", "--workspace", p(ws.path())]));
    ok(&dev.run(&["skill", "remove", "team/echo"]));
    // The lockfile now pins another signer (a key rotation that was not
    // meant to happen, or an edited lockfile): the package is refused.
    let lock_path = ws.path().join(".coderClaw/skills.lock");
    let lock = std::fs::read_to_string(&lock_path).unwrap();
    let signer = lock.lines().find_map(|l| l.strip_prefix("signer = \"")).unwrap().trim_end_matches('"').to_owned();
    std::fs::write(&lock_path, lock.replace(&signer, "0123456789abcdef")).unwrap();
    refused(&dev.run(&["skill", "install", "--workspace", p(ws.path())]), "the lockfile says 0123456789abcdef");
    assert!(installed(&dev).is_empty());
}

#[test]
fn audit_heads_witnessed_by_the_registry_and_a_file_catch_a_log_cut_short() {
    let registry = Registry::start();
    let publisher = Publisher::new();
    registry.namespace("team", &publisher.public);
    let token = registry.token("team", "read");
    let dev = developer(&registry, &publisher, &["team"], true);
    let heads = dev.home.path().join("witness/heads.jsonl");
    std::fs::create_dir_all(heads.parent().unwrap()).unwrap();
    let config = std::fs::read_to_string(dev.home.path().join("config.yaml")).unwrap();
    let config = format!("{config}audit:\n  witnessFile: {}\n  witnessRegistry: team-registry\n", heads.display());
    std::fs::write(dev.home.path().join("config.yaml"), config).unwrap();
    for name in ["a", "b"] {
        ok(&dev.run(&["key", "generate", "--name", name]));
    }
    let witnessed = ok(&dev.run(&["audit", "witness", "--token", &token, "--json"]));
    let seq = serde_json::from_str::<Value>(&witnessed).unwrap()["witnessed"].as_u64().unwrap();
    let verified = ok(&dev.run(&["audit", "verify", "--token", &token]));
    assert!(verified.contains(&format!("matches registry team-registry at record {seq}")), "{verified}");
    assert!(verified.contains("matches witness file"), "{verified}");
    assert!(std::fs::read_to_string(&heads).unwrap().lines().count() >= 2, "key changes are checkpointed");

    // The newest records deleted (the unkeyed chain alone still verifies).
    let db = dev.home.path().join("audit.db");
    let cut = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg(format!("DELETE FROM audit WHERE seq > {}", seq - 3))
        .output()
        .unwrap();
    assert!(cut.status.success(), "{}", text(&cut.stderr));
    // Without witnesses the chain is intact, and says what it cannot see.
    let blind = dev.run(&["audit", "verify", "--registry", "http://127.0.0.1:9", "--namespace", "x", "--json"]);
    assert_ne!(blind.status.code(), Some(0), "an unreachable witness is an error, not a pass");
    let out = dev.run(&["audit", "verify", "--token", &token]);
    assert_eq!(out.status.code(), Some(1), "{}{}", text(&out.stdout), text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("cut short") && stderr.contains(&format!("saw record {seq}")), "{stderr}");
    // And the shorter log is not witnessed again (the registry would refuse
    // its head too: tests/e2e/registry.rs).
    let refused = dev.run(&["audit", "witness", "--token", &token]);
    assert_ne!(refused.status.code(), Some(0));
    let stderr = text(&refused.stderr);
    assert!(stderr.contains("cut short") && stderr.contains("was not witnessed"), "{stderr}");
}

/// `registry add` writes config.yaml in place (comments kept), shows each
/// namespace's keys by fingerprint, and trusts a namespace's keys only when
/// exactly those fingerprints are confirmed; with `--default`, no command
/// needs `--registry`; `skill search` and `skill info --registry` show what
/// a skill asks for before it is installed; `skill install --required`
/// installs what the organisation policy requires; `registry remove` takes
/// the entry back out.
#[test]
fn a_registry_is_added_its_keys_confirmed_by_fingerprint_and_used_by_default() {
    let registry = Registry::start();
    let publisher = Publisher::new();
    registry.namespace("team", &publisher.public);
    let token = registry.token("team", "publish");
    for skill in ["echo", "word-count", "shell-exec"] {
        ok(&publisher.publish(&registry, &publisher.package(skill, skill, |m| m), &token));
    }
    let fingerprint = text(&publisher.cli.run(&["key", "list", "--json"]).stdout);
    let fingerprint: Value = serde_json::from_str(&fingerprint).unwrap();
    let fingerprint = fingerprint[0]["key_id"].as_str().or(fingerprint[0]["id"].as_str()).unwrap().to_owned();

    let dev = Cli::new();
    let config = dev.home.path().join("config.yaml");
    std::fs::write(&config, "# mine: keep this\nsecurity:\n  requireAuth: false  # for now\n").unwrap();
    let add = |extra: &[&str]| {
        let mut args = vec!["registry", "add", "team-registry", registry.url.as_str()];
        args.extend(extra);
        dev.run(&args)
    };
    // Without a confirmed fingerprint nothing is trusted or written.
    refused(&add(&["--trust", "team"]), "--fingerprint");
    refused(&add(&["--trust", "team", "--json"]), "pass each fingerprint you checked with --fingerprint");
    refused(&add(&["--trust", "Bad\u{1b}[2J"]), "not a namespace name");
    refused(&add(&["--trust", "team", "--fingerprint", "0123456789abcdef"]), "does not match any fingerprint given");
    let both = [fingerprint.as_str(), "0123456789abcdef"];
    refused(&add(&["--trust", "team", "--fingerprint", both[0], "--fingerprint", both[1]]), "matches no active key");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "# mine: keep this\nsecurity:\n  requireAuth: false  # for now\n"
    );
    assert!(text(&dev.run(&["trust", "list"]).stdout).contains("empty"), "nothing trusted");

    let out = ok(&add(&["--default", "--trust", "team", "--fingerprint", &fingerprint]));
    assert!(out.contains(&format!("{fingerprint}  admin (signs packages and the organisation policy)")), "{out}");
    assert!(out.contains(&format!("trusted {fingerprint} for team")), "{out}");
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(written.starts_with("# mine: keep this\ndefaultRegistry: team-registry\nsecurity:"), "{written}");
    assert!(written.contains("# for now"), "{written}");
    assert!(written.contains(&publisher.public), "the admin key is listed for the namespace's policy: {written}");
    refused(&add(&[]), "configured already");
    let listed: Value = serde_json::from_str(&ok(&dev.run(&["registry", "list", "--json"]))).unwrap();
    assert_eq!((listed[0]["name"].as_str(), listed[0]["default"].as_bool()), (Some("team-registry"), Some(true)));

    // Before installing: what each asks for, from the default registry.
    let found = ok(&dev.run(&["skill", "search", "shell"]));
    assert!(
        found.contains("team/shell-exec") && found.contains("requests: fs workspace (read); shell git, ls  DANGEROUS"),
        "{found}"
    );
    let info = ok(&dev.run(&["skill", "info", "team/word-count"]));
    assert!(
        info.contains("registry:  team-registry") && info.contains("signature: verified against your trust store"),
        "{info}"
    );
    // Someone who trusts nobody sees the registry's claim labelled as such.
    let stranger = Cli::new();
    let claim = ok(&stranger.run(&["skill", "info", "team/word-count", "--registry", &registry.url]));
    assert!(claim.contains("signature: NOT verified") && claim.contains("registry's claim"), "{claim}");
    assert!(info.contains("max_files") && info.contains("fs      workspace (read)"), "{info}");
    assert!(installed(&dev).is_empty(), "info installs nothing");

    // No --registry anywhere: the default serves.
    let ws = workspace();
    ok(&dev.run(&["skill", "install", "team/echo", "--workspace", p(ws.path())]));
    publisher.publish_policy(&registry, "organizationPolicy:\n  requiredSkills: [word-count, team/echo]\n", &token);
    let out = ok(&dev.run(&["skill", "install", "--required", "--workspace", p(ws.path())]));
    assert!(out.contains("team/word-count"), "{out}");
    assert_eq!(installed(&dev).len(), 2, "echo was there; word-count came: {:?}", installed(&dev));
    let out = ok(&dev.run(&["skill", "install", "--required", "--workspace", p(ws.path())]));
    assert!(out.contains("nothing to install"), "{out}");

    ok(&dev.run(&["registry", "remove", "team-registry"]));
    let written = std::fs::read_to_string(&config).unwrap();
    assert_eq!(written, "# mine: keep this\nsecurity:\n  requireAuth: false  # for now\n");
    refused(&dev.run(&["skill", "search", "echo"]), "pass --registry");
    refused(&dev.run(&["registry", "remove", "team-registry"]), "no registry named `team-registry`");
}

/// A key revoked on this machine is not trusted again by adding a registry
/// that still lists it.
#[test]
fn a_key_revoked_here_stays_revoked_when_a_registry_lists_it() {
    let registry = Registry::start();
    let publisher = Publisher::new();
    registry.namespace("team", &publisher.public);
    let dev = Cli::new();
    ok(&dev.run(&["trust", "add", "team", &publisher.public]));
    let listed: Value = serde_json::from_str(&ok(&dev.run(&["trust", "list", "--json"]))).unwrap();
    let id = listed[0]["key_id"].as_str().unwrap().to_owned();
    ok(&dev.run(&["trust", "revoke", &id]));
    let out = dev.run(&["registry", "add", "r", &registry.url, "--trust", "team", "--fingerprint", &id]);
    refused(&out, "was revoked on this machine and stays revoked");
    assert!(!dev.home.path().join("config.yaml").exists(), "nothing was added");
    let listed: Value = serde_json::from_str(&ok(&dev.run(&["trust", "list", "--json"]))).unwrap();
    assert!(listed[0]["revoked_at"].is_u64(), "{listed}");
}

/// A registry that lists a key under another key's fingerprint is refused
/// before anything is shown as trustworthy.
#[test]
fn a_registry_listing_a_key_under_a_false_fingerprint_is_refused() {
    let registry = Registry::start();
    let publisher = Publisher::new();
    registry.namespace("team", &publisher.public);
    let db = rusqlite::Connection::open(registry.data.path().join("registry.db")).unwrap();
    let changed = db.execute("UPDATE namespace_keys SET key_id = '0123456789abcdef'", []).unwrap();
    assert_eq!(changed, 1);
    let dev = Cli::new();
    refused(
        &dev.run(&["registry", "add", "r", &registry.url, "--trust", "team", "--fingerprint", "0123456789abcdef"]),
        "is listed as 0123456789abcdef but its fingerprint is",
    );
    assert!(!dev.home.path().join("config.yaml").exists());
}
