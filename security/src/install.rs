//! Install gates: every path that installs a package goes through
//! [`Security::install`] or [`Security::install_verified`], which refuse
//! denied skills, rollbacks and unaccepted capability increases.

use crate::security::{Security, SecurityError};
use coderclaw_core::decision::Subject;
pub use coderclaw_core::package::InstallGates;
use coderclaw_core::package::{Package, VerifiedPackage};

/// The install gate that refused a package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallGate {
    /// An older version than the installed one, without `allow_downgrade`.
    Rollback,
    /// More capabilities than the installed version, without `accept_capabilities`.
    CapabilityIncrease,
}

/// What an install did.
#[derive(Debug, Clone)]
pub struct Installed {
    /// The installed skill.
    pub skill: crate::home::InstalledSkill,
    /// The capability increase accepted with `accept_capabilities` (empty if none).
    pub accepted_capabilities: Vec<String>,
}

impl Security {
    /// Verifies and installs a package file (see [`Security::install_verified`]).
    pub fn install(&self, by: &Subject, bytes: &[u8], gates: InstallGates) -> Result<Installed, SecurityError> {
        let parsed = Package::parse(bytes);
        let claimed = parsed.as_ref().ok().and_then(|p| p.manifest().ok()).map(|m| m.id.to_string());
        match parsed.and_then(|p| p.verify(self.home.as_ref())) {
            Ok(verified) => self.install_verified(by, &verified, bytes, gates),
            Err(e) => {
                let id = claimed.as_deref().unwrap_or("(unreadable package)");
                self.audit_refused(by, "skill.install", ("skill", id), &e.to_string())?;
                Err(crate::home::HomeError::Package(e).into())
            }
        }
    }

    /// Installs a verified package, every install path's gates in one
    /// place, each refusal audited:
    /// - a skill the organisation policy denies (it could never run, and
    ///   installing it would still put its code on the machine);
    /// - an older version than the installed one, unless `allow_downgrade`;
    /// - asking for more than the installed version did, unless
    ///   `accept_capabilities` (the refusal lists the difference).
    pub fn install_verified(
        &self,
        by: &Subject,
        verified: &VerifiedPackage,
        bytes: &[u8],
        gates: InstallGates,
    ) -> Result<Installed, SecurityError> {
        let m = verified.manifest();
        let id = m.id.as_str();
        self.check_not_denied(by, "skill.install", id)?;
        let mut accepted = Vec::new();
        if let Ok(current) = self.home.info(id) {
            let refuse = |gate: InstallGate, reason: String| -> Result<Installed, SecurityError> {
                self.audit_refused(by, "skill.install", ("skill", id), &reason)?;
                Err(SecurityError::InstallRefused { gate, reason })
            };
            let older = current.version > m.version;
            if older && !gates.allow_downgrade {
                return refuse(
                    InstallGate::Rollback,
                    format!(
                        "{id} {} is installed; {} is older, and moving back is a rollback: refused",
                        current.version, m.version
                    ),
                );
            }
            let diff = m.capability_increase(&current.manifest);
            if !diff.is_empty() && !gates.accept_capabilities {
                let shown: String = diff.iter().map(|d| format!("\n  + {d}")).collect();
                return refuse(
                    InstallGate::CapabilityIncrease,
                    format!(
                        "{id} {} asks for more than the installed {}:{shown}\nnothing was installed: the increase was not accepted",
                        m.version, current.version
                    ),
                );
            }
            accepted = diff;
        }
        let skill = self.home.install_verified(verified, bytes)?;
        Ok(Installed { skill, accepted_capabilities: accepted })
    }

    /// Refuses, and audits, `action` on a skill the organisation denies.
    pub fn check_not_denied(&self, by: &Subject, action: &str, id: &str) -> Result<(), SecurityError> {
        if let Some(d) = self.policy()?.org.denies(id) {
            let reason = format!("{id} is denied by the organisation policy (deniedSkills: {d})");
            self.audit_refused(by, action, ("skill", id), &reason)?;
            return Err(SecurityError::Denied(reason));
        }
        Ok(())
    }

    /// The organisation's `requiredSkills` entries no installed skill satisfies.
    pub fn missing_required_skills(&self) -> Result<Vec<String>, SecurityError> {
        let installed = self.home.installed()?;
        let policy = self.policy()?;
        let org = &policy.org;
        Ok(org
            .required_skills
            .iter()
            .filter(|r| !installed.iter().any(|i| coderclaw_core::policy::id_matches(r, &i.id)))
            .cloned()
            .collect())
    }

    /// Uninstalls a skill, refusing one the organisation policy requires.
    pub fn remove_skill(&self, by: &Subject, id: &str) -> Result<crate::home::InstalledSkill, SecurityError> {
        if let Some(r) = self.policy()?.org.requires(id) {
            let reason = format!("{id} is required by the organisation policy (requiredSkills: {r})");
            self.audit_refused(by, "skill.remove", ("skill", id), &reason)?;
            return Err(SecurityError::Denied(format!("{reason} and cannot be removed")));
        }
        Ok(self.home.remove(id)?)
    }
}
