//! The state directory: `$CODERCLAW_HOME`, else `~/.coderclaw`.

use anyhow::{Context, Result, bail};
use coderclaw::home::Home;
use coderclaw::security::Security;
use coderclaw_core::decision::Subject;
use coderclaw_core::rbac::Permission;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Every environment variable the CLI reads about its state, in one place.
pub(crate) const ENV_HOME: &str = "CODERCLAW_HOME";

pub(crate) fn state_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(ENV_HOME).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".coderclaw")),
        None => bail!("cannot find a state directory: set {ENV_HOME} or HOME"),
    }
}

/// Opens the state directory (keys, trust store, installed skills, caches).
pub(crate) fn open() -> Result<Home> {
    Ok(Home::open(state_dir()?)?)
}

static SESSION: OnceLock<Option<String>> = OnceLock::new();

/// Records the global --session / CODERCLAW_SESSION once, at start-up.
pub(crate) fn set_session(token: Option<String>) {
    let _ = SESSION.set(token.filter(|t| !t.is_empty()));
}

/// The session token to act in, if one was given. Without one the local
/// OS user acts with `security.defaultRoles` (unless `requireAuth` is on).
pub(crate) fn session() -> Option<&'static str> {
    SESSION.get().and_then(|s| s.as_deref())
}

/// Opens the security model (no workspace policy) and checks that the
/// caller may do `action`: a session holding `permission`, or the
/// session-less owner of the state directory while `requireAuth` is off.
pub(crate) fn open_checked(permission: Permission, action: &str, resource: (&str, &str)) -> Result<Arc<Security>> {
    Ok(open_checked_as(permission, action, resource)?.0)
}

/// [`open_checked`], also returning who is acting (looked up once).
pub(crate) fn open_checked_as(
    permission: Permission,
    action: &str,
    resource: (&str, &str),
) -> Result<(Arc<Security>, Subject)> {
    let security = open_security(None)?;
    let subject = security.subject(session())?;
    security.require_owner_or(&subject, permission, action, resource)?;
    Ok((security, subject))
}

/// Opens the state directory and the security model for `workspace`
/// (whose `.coderClaw/security.yaml` applies).
pub(crate) fn open_security(workspace: Option<&Path>) -> Result<Arc<Security>> {
    let home = Arc::new(open()?);
    Ok(Arc::new(Security::open(home, workspace)?))
}

/// Fails on the first role name the configuration does not define.
pub(crate) fn check_roles(security: &Security, roles: &[String]) -> Result<()> {
    for r in roles {
        security.policy().roles.permissions(r).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}

/// The workspace directory: `dir`, or the current directory, canonical.
pub(crate) fn workspace(dir: Option<&Path>) -> Result<PathBuf> {
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    dir.canonicalize().with_context(|| format!("workspace {}: not an existing directory", dir.display()))
}
