//! Embedding coderclaw the policy-aware way: a state directory, a signed
//! package verified against its trust store, a run decided by the security
//! model for a caller (and audited), and the component run with exactly the
//! decided grant. This is the path to start from; `embed_raw.rs` shows the
//! low-level sandbox that skips policy.
//!
//! Run: `cargo run -p coderclaw-examples --example embed -- COMPONENT.wasm SKILL.toml [DIR]`
//! e.g. the word-count skill built by `coderclaw skill build skills/word-count`
//! with `skills/word-count/skill.toml`, on DIR (default `.`).

use anyhow::Context;
use coderclaw::home::Home;
use coderclaw::security::{InstallGates, Security};
use coderclaw::{Access, Host, Limits, NestedCaller, Planner, RunEvent};
use coderclaw_core::decision::{Offer, OfferedDir};
use coderclaw_core::keys::SecretKey;
use coderclaw_core::manifest::Manifest;
use coderclaw_core::package::Package;
use std::path::PathBuf;
use std::sync::Arc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: embed COMPONENT.wasm SKILL.toml [DIR]";
    let component = PathBuf::from(args.next().context(usage)?);
    let manifest_file = PathBuf::from(args.next().context(usage)?);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| ".".into())).canonicalize()?;

    // A state directory: keys, trust store, installed packages, audit log.
    // A real embedder opens its users' (~/.coderclaw); this one is fresh.
    let state = tempfile::tempdir()?;
    let home = Arc::new(Home::open(state.path())?);

    // A publisher signs component and manifest together; the embedder
    // trusts the publisher's key for its namespace. (Here both sides are
    // this program, with a throw-away key.)
    let manifest = Manifest::from_toml(&std::fs::read_to_string(&manifest_file)?, &manifest_file.to_string_lossy())?;
    let key = SecretKey::generate()?;
    home.trust_add(manifest.id.namespace(), &key.public())?;
    let package = Package::sign(&manifest, std::fs::read(&component)?, &key, coderclaw_core::clock::now_secs());

    // The security model for this workspace (its .coderClaw/security.yaml
    // applies), and the caller: the local user, without a session.
    let security = Arc::new(Security::open(home.clone(), Some(&dir))?);
    let caller = security.subject(None)?;
    // Installing verifies the signature against the trust store and applies
    // the install gates (denied skills, downgrades, capability increases).
    security.install(&caller, &package.to_bytes(), InstallGates::default())?;

    // What this host can give: the logical directory `workspace`, read-only.
    let dir_offer = OfferedDir { host: dir.clone(), guest: ".".into(), access: Access::Read };
    let offer = Offer {
        dirs: [("workspace".to_owned(), dir_offer)].into(),
        env: Default::default(),
        ceiling: Limits::default(),
    };
    let host = Host::builder()
        .compiled_cache(home.compiled_cache_dir())
        .event_sink(Arc::new(|e: RunEvent| eprintln!("event: {}", serde_json::to_string(&e).unwrap_or_default())))
        .build()?;
    let planner = Planner::new(security.clone(), host.clone(), dir, offer);

    // Verified again, decided for the caller (audited), then compiled.
    let run = planner.prepare(&caller, manifest.id.as_str(), None, NestedCaller::Fixed(caller.clone()))?;
    for note in &run.decision.narrowed {
        eprintln!("not granted: {note}");
    }
    let output = host.run(&run.skill, r#"{"path": ".", "extensions": ["rs", "md"]}"#, run.grant()).await?;
    println!("{output}");
    let records = security.home().audit().verify()?;
    eprintln!("audit log: {records} records, chain intact");
    Ok(())
}
