//! The state directory: `$CODERCLAW_HOME`, else `~/.coderclaw`.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;

/// Every environment variable the CLI reads, in one place.
pub const ENV_HOME: &str = "CODERCLAW_HOME";

pub fn state_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(ENV_HOME).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".coderclaw")),
        None => bail!("cannot find a state directory: set {ENV_HOME} or HOME"),
    }
}

/// Where compiled machine code is cached, keyed by component digest.
pub fn compiled_cache_dir() -> Result<PathBuf> {
    let dir = state_dir()?.join("cache").join("compiled");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}
