//! The registry install pipeline's target: the security service's install
//! gates, acting for one caller.

use coderclaw_core::decision::Subject;
use coderclaw_core::package::{InstallGates, KeyLookup, VerifiedPackage};
use coderclaw_registry::install::{InstallTarget, InstalledPackage, TargetError};
use coderclaw_security::security::Security;
use std::sync::Arc;

/// [`InstallTarget`] over [`Security`]: verification against its trust
/// store, its organisation policy and install gates, its audit log, all as
/// `subject`.
pub struct GatedInstall {
    security: Arc<Security>,
    subject: Subject,
}

impl GatedInstall {
    /// Installs into `security` as `subject` (who must already have been
    /// checked to hold `config.write`, as for any install).
    pub fn new(security: Arc<Security>, subject: Subject) -> Self {
        GatedInstall { security, subject }
    }

    /// The security service installs go through.
    pub fn security(&self) -> &Arc<Security> {
        &self.security
    }
}

impl InstallTarget for GatedInstall {
    fn keys(&self) -> &dyn KeyLookup {
        self.security.home()
    }

    fn check_allowed(&self, id: &str) -> Result<(), TargetError> {
        Ok(self.security.check_not_denied(&self.subject, "skill.install", id)?)
    }

    fn installed(&self, id: &str) -> Option<InstalledPackage> {
        let skill = self.security.home().info(id).ok()?;
        Some(InstalledPackage { digest: skill.digest, manifest: skill.manifest })
    }

    fn install(
        &self,
        verified: &VerifiedPackage,
        bytes: &[u8],
        gates: InstallGates,
    ) -> Result<Vec<String>, TargetError> {
        Ok(self.security.install_verified(&self.subject, verified, bytes, gates)?.accepted_capabilities)
    }

    fn audit_refused(&self, id: &str, reason: &str) -> Result<(), TargetError> {
        Ok(self.security.audit_refused(&self.subject, "skill.install", ("skill", id), reason)?)
    }
}
