//! The state directory: `$CODERCLAW_HOME`, else `~/.coderclaw`.

use anyhow::{Result, bail};
use coderclaw_host::home::Home;
use std::path::PathBuf;

/// Every environment variable the CLI reads about its state, in one place.
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

/// Opens the state directory (keys, trust store, installed skills, caches).
pub fn open() -> Result<Home> {
    Ok(Home::open(state_dir()?)?)
}
