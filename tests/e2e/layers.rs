//! The dependency rule of docs/architecture.md, read from `cargo metadata`:
//! each crate may depend only on the layers below it. A new crate of ours
//! fails this test until the rule names it.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// Each crate of ours and the crates of ours it may depend on (normal and
/// build dependencies; dev-dependencies are the tests' business).
const ALLOWED: &[(&str, &[&str])] = &[
    ("coderclaw-core", &[]),
    ("coderclaw-net", &[]),
    ("coderclaw-sandbox", &["coderclaw-core"]),
    ("coderclaw-registry", &["coderclaw-core", "coderclaw-net"]),
    ("coderclaw-registry-server", &["coderclaw-core", "coderclaw-net", "coderclaw-registry"]),
    ("coderclaw-security", &["coderclaw-core", "coderclaw-net", "coderclaw-registry"]),
    ("coderclaw-tasks", &["coderclaw-core", "coderclaw-security"]),
    ("coderclaw-transport", &["coderclaw-core", "coderclaw-net", "coderclaw-security", "coderclaw-tasks"]),
    (
        "coderclaw",
        &[
            "coderclaw-core",
            "coderclaw-net",
            "coderclaw-registry",
            "coderclaw-sandbox",
            "coderclaw-security",
            "coderclaw-tasks",
            "coderclaw-transport",
        ],
    ),
    (
        "coderclaw-cli",
        &["coderclaw", "coderclaw-core", "coderclaw-net", "coderclaw-registry", "coderclaw-registry-server"],
    ),
    ("coderclaw-sdk", &["coderclaw-sdk-macros"]),
    ("coderclaw-sdk-macros", &[]),
    // Test and example crates: only what a user of the facade has.
    (
        "coderclaw-e2e",
        &["coderclaw", "coderclaw-core", "coderclaw-net", "coderclaw-registry", "coderclaw-registry-server"],
    ),
    ("coderclaw-examples", &["coderclaw", "coderclaw-core"]),
];

/// Our crates' dependencies on our crates, by package name.
fn our_dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is in the repository root");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline", "--manifest-path"])
        .arg(root.join("Cargo.toml"))
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let packages = meta["packages"].as_array().expect("packages");
    let ours: BTreeSet<String> = packages.iter().map(|p| p["name"].as_str().unwrap().to_owned()).collect();
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].as_str() != Some("dev"))
                .map(|d| d["name"].as_str().unwrap().to_owned())
                .filter(|d| ours.contains(d))
                .collect();
            (p["name"].as_str().unwrap().to_owned(), deps)
        })
        .collect()
}

#[test]
fn each_crate_depends_only_on_the_layers_below_it() {
    let rule: BTreeMap<&str, BTreeSet<&str>> =
        ALLOWED.iter().map(|(name, deps)| (*name, deps.iter().copied().collect())).collect();
    let mut broken = Vec::new();
    for (name, deps) in our_dependencies() {
        let Some(allowed) = rule.get(name.as_str()) else {
            broken.push(format!("{name}: not in the dependency rule (tests/e2e/layers.rs, docs/architecture.md)"));
            continue;
        };
        for d in deps.iter().filter(|d| !allowed.contains(d.as_str())) {
            broken.push(format!("{name} depends on {d}, which the rule does not allow"));
        }
    }
    assert!(broken.is_empty(), "dependency rule broken:\n{}", broken.join("\n"));
}

#[test]
fn the_sandbox_reaches_no_policy_task_transport_or_registry_crate() {
    // Transitively, not just directly: the sandbox must stay usable (and
    // reviewable) without the layers that decide what it may do.
    let deps = our_dependencies();
    let mut seen = BTreeSet::new();
    let mut todo = vec!["coderclaw-sandbox".to_owned()];
    while let Some(n) = todo.pop() {
        for d in deps.get(&n).into_iter().flatten() {
            if seen.insert(d.clone()) {
                todo.push(d.clone());
            }
        }
    }
    assert_eq!(seen, BTreeSet::from(["coderclaw-core".to_owned()]), "the sandbox reaches {seen:?}");
}

#[test]
fn library_messages_name_no_cli_command() {
    // The libraries say what happened; which `coderclaw` command fixes it
    // is the CLI's business (cli/src/hints.rs): an embedder or a remote
    // client has no such command. Comments and the lockfile's own header
    // (a file people read) may name commands.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root");
    let mut found = Vec::new();
    for krate in ["core", "sandbox", "security", "tasks", "transport", "host", "registry"] {
        let mut dirs = vec![root.join(krate).join("src")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("a source directory") {
                let path = entry.expect("a directory entry").path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let text = std::fs::read_to_string(&path).expect("a source file");
                for (n, line) in text.lines().enumerate() {
                    let code = line.trim_start();
                    if code.starts_with("//") || code.contains("\"# ") {
                        continue;
                    }
                    if code.contains("`coderclaw ") || code.contains("(coderclaw ") {
                        found.push(format!("{}:{}: {}", path.strip_prefix(root).unwrap().display(), n + 1, code));
                    }
                }
            }
        }
    }
    assert!(found.is_empty(), "library texts that name a CLI command:\n{}", found.join("\n"));
}
