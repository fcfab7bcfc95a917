//! The state directory: `$CODERCLAW_HOME`, else `~/.coderclaw`.

use anyhow::{Context, Result, bail};
use coderclaw_host::home::Home;
use coderclaw_host::security::Security;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// The session to act in. Without one the local OS user acts with the
/// configuration's `security.defaultRoles` (unless `requireAuth` is on).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SessionArgs {
    /// Session token from `coderclaw login` (or set CODERCLAW_SESSION).
    #[arg(long, value_name = "TOKEN", env = "CODERCLAW_SESSION", hide_env_values = true)]
    pub session: Option<String>,
}

/// Opens the state directory and the security model for `workspace`
/// (whose `.coderClaw/security.yaml` applies).
pub fn open_security(workspace: Option<&Path>) -> Result<Arc<Security>> {
    let home = Arc::new(open()?);
    Ok(Arc::new(Security::open(home, workspace)?))
}

/// The workspace directory: `dir`, or the current directory, canonical.
pub fn workspace(dir: Option<&Path>) -> Result<PathBuf> {
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    dir.canonicalize().with_context(|| format!("workspace {}: not an existing directory", dir.display()))
}
