//! The low-level path: the sandbox alone, with a hand-built grant. This
//! SKIPS POLICY — no signature, no trust store, no roles, no repository or
//! organisation policy, no audit. Use it only where you decide the grant
//! yourself; `embed.rs` is the path that decides it.
//!
//! Run: `cargo run -p coderclaw-examples --example embed_raw -- [COMPONENT] [DIR]`
//! (defaults: the word-count example skill, built from source, on `.`).

use coderclaw::{Access, Grant, Host, RunEvent};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let component = args.next().map(PathBuf::from).unwrap_or_else(|| coderclaw_e2e::guest("word-count"));
    let dir = args.next().unwrap_or_else(|| ".".into());

    // One host per process: shared engine, compiled-code cache, event sink.
    let host = Host::builder()
        .compiled_cache(std::env::temp_dir().join("coderclaw-embed-cache"))
        // The example runs a raw component built from source; real embedders
        // load signed packages with `host.load_verified(...)` instead.
        .dangerous_allow_unsigned()
        .event_sink(Arc::new(|e: RunEvent| eprintln!("event: {}", serde_json::to_string(&e).unwrap_or_default())))
        .build()?;
    let skill = host.load_file(&component)?;

    // Deny-all, plus exactly what this run needs.
    let grant = Grant::builder().dir(&dir, ".", Access::Read).timeout(Duration::from_secs(10)).build()?;
    let output = host.run(&skill, r#"{"path": ".", "extensions": ["rs", "md"]}"#, &grant).await?;
    println!("{output}");
    Ok(())
}
