//! Opening the state directory (`$CODERCLAW_HOME`, else `~/.coderclaw`) and
//! the security model for a command.

use anyhow::{Context, Result};
use coderclaw::home::Home;
use coderclaw::security::Security;
use coderclaw::tasks::store::PgSharedState;
use coderclaw_core::decision::Subject;
use coderclaw_core::rbac::Permission;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(crate) use crate::settings::state_dir;

/// Opens the state directory (keys, trust store, installed skills,
/// caches). On a cluster node the audit log, trust and installed skills
/// are the cluster's, in its database (applied here once the security
/// model is open); also returned, for the identities.
fn open_shared() -> Result<(Home, Option<Arc<PgSharedState>>)> {
    let home = Home::open(state_dir()?)?;
    let Some(url) = crate::task::configured_cluster()? else { return Ok((home, None)) };
    let shared = PgSharedState::open_node(&url).context(
        "this machine is a cluster node (mode distributed-cluster): its audit log, trust, users and sessions are \
         the cluster's",
    )?;
    home.audit().use_store(shared.clone());
    home.share_trust(shared.clone());
    home.share_skills(shared.clone());
    Ok((home, Some(shared)))
}

/// The session token to act in, if one was given. Without one the local
/// OS user acts with `security.defaultRoles` (unless `requireAuth` is on).
pub(crate) fn session() -> Option<&'static str> {
    crate::settings::get().session.as_deref()
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
    let (home, shared) = open_shared()?;
    let security = Security::open(Arc::new(home), workspace)?;
    if let Some(shared) = shared {
        security.share_identities(shared)?;
        security.sync_cluster()?;
    }
    Ok(Arc::new(security))
}

/// Fails on the first role name the configuration does not define.
pub(crate) fn check_roles(security: &Security, roles: &[String]) -> Result<()> {
    for r in roles {
        security.policy()?.roles.permissions(r).map_err(|e| anyhow::anyhow!("{e}"))?;
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
