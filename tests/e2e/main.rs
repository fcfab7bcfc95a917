//! End-to-end tests of the host library on real components built from
//! source: the example skills, every capability from its denied side, the
//! resource limits and the compiled-code cache.

mod audit;
mod cache;
mod capabilities;
mod cluster;
mod confinement;
mod layers;
mod limits;
mod mcp;
mod oidc;
mod postgres;
mod registry;
mod signed;
mod skills;
mod tasks;
mod transports;
mod workspaces;

use coderclaw::{Error, Grant, Host, Skill};
use coderclaw_e2e::guest;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::OnceLock;

/// One compiled-code cache for this test binary, so each component is
/// compiled once rather than once per test.
pub fn shared_cache() -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir")).path().to_path_buf()
}

/// A host sharing this binary's compiled-code cache. These tests run the
/// raw components built from source, so they open the unsigned door
/// explicitly; signed loading is tested in `signed.rs`.
pub fn host() -> Host {
    Host::builder().compiled_cache(shared_cache()).dangerous_allow_unsigned().build().expect("host builds")
}

/// Loads a guest component by crate name.
pub fn load(host: &Host, name: &str) -> Skill {
    host.load_file(guest(name)).unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

/// Runs and parses the JSON output.
pub async fn run_json(host: &Host, skill: &Skill, input: Value, grant: &Grant) -> Result<Value, Error> {
    let out = host.run(skill, &input.to_string(), grant).await?;
    Ok(serde_json::from_str(&out).expect("skills return JSON"))
}

/// A workspace with known contents: two text files and a planted secret.
pub fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("README.md"), "hello world\nsecond line here\n").unwrap();
    std::fs::write(dir.path().join("src/lib.rs"), "pub fn f() {}\n").unwrap();
    std::fs::write(dir.path().join("deploy.env"), "KEY=AKIAIOSFODNN7EXAMPLE\n").unwrap();
    dir
}
