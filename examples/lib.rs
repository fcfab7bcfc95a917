//! Embedding examples for the `coderclaw` crate: `embed.rs` (the policy-aware path),
//! `embed_raw.rs` (the sandbox alone, skipping policy), `remote.rs` (a client
//! of `coderclaw serve` over HTTP, WebSocket and gRPC, with a network login) and
//! `custom_transport.rs` (a transport adapter of your own).
//!
//! [`signed_runtime`] is the setup the last two share.

use anyhow::Context;
use coderclaw::LocalRuntime;
use coderclaw::home::Home;
use coderclaw::security::{InstallGates, Security};
use coderclaw_core::Access;
use coderclaw_core::decision::{Offer, OfferedDir};
use coderclaw_core::keys::SecretKey;
use coderclaw_core::manifest::Manifest;
use coderclaw_core::package::Package;
use std::path::Path;
use std::sync::Arc;

/// A task runtime in a fresh state directory (dropped with the returned
/// guard) with one skill installed: `component` and `manifest` signed
/// with a throw-away key that the trust store trusts for the skill's
/// namespace. Tasks run in the current directory, read-only.
pub fn signed_runtime(
    component: &Path,
    manifest: &Path,
) -> anyhow::Result<(LocalRuntime, Manifest, tempfile::TempDir)> {
    let workspace = std::env::current_dir()?;
    let state = tempfile::tempdir()?;
    let home = Arc::new(Home::open(state.path())?);
    let text = std::fs::read_to_string(manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let manifest = Manifest::from_toml(&text, &manifest.to_string_lossy())?;
    let key = SecretKey::generate()?;
    home.trust_add(manifest.id.namespace(), &key.public())?;
    let bytes = std::fs::read(component).with_context(|| format!("reading {}", component.display()))?;
    let package = Package::sign(&manifest, bytes, &key, coderclaw_core::clock::now_secs());
    let security = Arc::new(Security::open(home.clone(), Some(&workspace))?);
    security.install(&security.subject(None)?, &package.to_bytes(), InstallGates::default())?;
    let dir = OfferedDir { host: workspace.clone(), guest: ".".into(), access: Access::Read };
    let offer =
        Offer { dirs: [("workspace".to_owned(), dir)].into(), env: Default::default(), ceiling: Default::default() };
    let runtime = LocalRuntime::builder_for(security).workspace(&workspace).offer(offer).open()?;
    Ok((runtime, manifest, state))
}
