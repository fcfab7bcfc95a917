//! The secure install pipeline: `skill install [id[@req]]`, `skill update`
//! and installing exactly what a lockfile pins.
//!
//! The registry is not trusted to vouch for itself. Every package it sends
//! must have the SHA-256 its index lists, and then its signature must verify
//! against this client's own trust store. Its digest must also match what
//! the lockfile pins. Metadata older than what this client has seen is
//! refused (no rollback). Downloads are cached, so installs work while the
//! registry is down. What is installed goes through the host's install
//! gates ([`InstallTarget`]), which refuse denied skills, rollbacks and
//! unaccepted capability increases and audit every refusal.

// An install error is built once per failed install, after network I/O: its
// size costs nothing, and its fields are what a caller matches on.
#![allow(clippy::result_large_err)]

use crate::api::{PackageInfo, VersionInfo};
use crate::cache::{CacheError, ClientCache};
use crate::client::RegistryClientError;
use crate::lockfile::{LockedSkill, Lockfile, LockfileError};
use crate::registries::Registry;
use coderclaw_core::Digest;
use coderclaw_core::manifest::{Manifest, SkillId};
use coderclaw_core::package::{KeyLookup, Package, PackageError, VerifiedPackage};
use serde::Serialize;
use std::path::PathBuf;

pub use coderclaw_core::package::InstallGates;

/// An error from the host behind [`InstallTarget`] (a refusal it audited,
/// or a failure of its state directory).
pub type TargetError = Box<dyn std::error::Error + Send + Sync>;

/// An installed package, as the pipeline needs to know it.
#[derive(Debug, Clone)]
pub struct InstalledPackage {
    /// Its package digest.
    pub digest: Digest,
    /// Its signed manifest.
    pub manifest: Manifest,
}

/// Where verified packages go: the host's state directory behind its
/// install gates. The facade implements it over the security service for
/// one caller; every method acts as that caller.
pub trait InstallTarget {
    /// The trust store packages must verify against.
    fn keys(&self) -> &dyn KeyLookup;
    /// Refuses (and audits) an id the organisation policy denies.
    fn check_allowed(&self, id: &str) -> Result<(), TargetError>;
    /// What is installed as `id`, if anything.
    fn installed(&self, id: &str) -> Option<InstalledPackage>;
    /// Installs through the gates; returns the accepted capability increase
    /// (empty if none).
    fn install(
        &self,
        verified: &VerifiedPackage,
        bytes: &[u8],
        gates: InstallGates,
    ) -> Result<Vec<String>, TargetError>;
    /// Records a refused install in the audit log.
    fn audit_refused(&self, id: &str, reason: &str) -> Result<(), TargetError>;
}

/// Why an install did not happen. Nothing was installed, except when the
/// lockfile could not be written after the install ([`InstallError::Lockfile`]).
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// `id@req` does not parse.
    #[error("`{spec}`: {reason}")]
    BadSpec {
        /// As given.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// The registry answered about another package.
    #[error("registry {registry} answered about {got} when asked about {asked}: refusing")]
    WrongPackage {
        /// The registry.
        registry: String,
        /// Asked about.
        asked: String,
        /// Answered about.
        got: String,
    },
    /// The registry is down and the cache does not have what is needed.
    #[error(
        "registry {registry} is unreachable ({detail}) and {what} is not in the local cache: nothing was installed"
    )]
    Unreachable {
        /// The registry.
        registry: String,
        /// `id` or `id version`.
        what: String,
        /// Why it is unreachable.
        detail: String,
    },
    /// The registry refused or answered badly.
    #[error("{what}: {source}")]
    Registry {
        /// `id` or `id version`.
        what: String,
        /// What the client saw.
        source: RegistryClientError,
    },
    /// The downloaded bytes are not the ones the index or lockfile lists.
    #[error(
        "registry {registry} sent {id} {version} with SHA-256 {got}, not the {listed} it lists: the stored package was altered; nothing was installed"
    )]
    Altered {
        /// The registry.
        registry: String,
        /// The package.
        id: String,
        /// Its version.
        version: semver::Version,
        /// SHA-256 of what was sent.
        got: String,
        /// SHA-256 listed.
        listed: String,
    },
    /// The signature does not verify against this client's trust store.
    #[error("{id} {version} failed verification against your trust store: {reason}: nothing was installed")]
    Verification {
        /// The package.
        id: String,
        /// Its version.
        version: semver::Version,
        /// Why.
        reason: PackageError,
    },
    /// The package is another id or version than the one served.
    #[error("the package served as {id} {version} is {got_id} {got_version}: nothing was installed")]
    NotAsServed {
        /// Served as.
        id: String,
        /// Served as.
        version: semver::Version,
        /// What it is.
        got_id: String,
        /// What it is.
        got_version: semver::Version,
    },
    /// The package digest is not the expected one.
    #[error("{id} {version} has digest {got}, not the {expected} expected: nothing was installed")]
    DigestMismatch {
        /// The package.
        id: String,
        /// Its version.
        version: semver::Version,
        /// Its digest.
        got: String,
        /// The index's or lockfile's.
        expected: String,
    },
    /// Signed by another key than the lockfile pins.
    #[error("{id} {version} is signed by {signer}, the lockfile says {locked}: nothing was installed")]
    SignerMismatch {
        /// The package.
        id: String,
        /// Its version.
        version: semver::Version,
        /// Who signed it.
        signer: String,
        /// Who the lockfile pins.
        locked: String,
    },
    /// Moving below the locked version without `allow_downgrade`.
    #[error("{id} {locked} is locked; moving to the older {to} is a rollback: refused")]
    LockedRollback {
        /// The skill.
        id: String,
        /// The locked version.
        locked: semver::Version,
        /// The older version.
        to: semver::Version,
    },
    /// No non-yanked version matches.
    #[error("no version of {id} matches `{req}` (yanked versions are skipped): published {published}")]
    NoMatch {
        /// The package.
        id: String,
        /// The requirement.
        req: semver::VersionReq,
        /// What there is.
        published: String,
    },
    /// The locked version is not in the registry.
    #[error("{id} {version} (locked) is not in registry {registry}: nothing was installed")]
    LockedVersionMissing {
        /// The skill.
        id: String,
        /// The locked version.
        version: semver::Version,
        /// The registry.
        registry: String,
    },
    /// The host refused it (organisation policy, rollback, capability
    /// increase) or its state directory failed.
    #[error("{0}")]
    Target(TargetError),
    /// The lockfile.
    #[error(transparent)]
    Lockfile(#[from] LockfileError),
    /// The client cache.
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// What an install or update did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The package was installed.
    Installed,
    /// Already installed and locked as asked.
    Unchanged,
}

impl Action {
    /// As printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Installed => "installed",
            Action::Unchanged => "unchanged",
        }
    }
}

/// What one install or update did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The skill.
    pub id: String,
    /// The version installed or kept.
    pub version: String,
    /// Installed or unchanged.
    pub action: Action,
    /// The package digest.
    pub digest: String,
    /// A yank or an accepted capability increase.
    pub note: Option<String>,
    /// The capability increase accepted with `accept_capabilities`.
    #[serde(skip)]
    pub accepted_capabilities: Vec<String>,
}

/// What a package must be: from the index, or pinned by the lockfile
/// (which also pins the signer).
#[derive(Clone, Copy)]
struct Expected<'a> {
    id: &'a str,
    version: &'a semver::Version,
    sha256: &'a str,
    digest: &'a str,
    signer: Option<&'a str>,
}

/// A registry's answer about a package, and whether it came from the cache
/// because the registry was unreachable.
struct Metadata {
    info: PackageInfo,
    offline: bool,
}

/// One install command's work: a target, the client cache, the workspace's
/// lockfile and the gates.
pub struct Installer<'a> {
    target: &'a dyn InstallTarget,
    cache: ClientCache,
    lock_path: PathBuf,
    lock: Lockfile,
    gates: InstallGates,
    warnings: Vec<String>,
}

impl<'a> Installer<'a> {
    /// An installer into `target` that records what it installs in the
    /// lockfile at `lock_path` (read as `lock`).
    pub fn new(
        target: &'a dyn InstallTarget,
        cache: ClientCache,
        lock_path: PathBuf,
        lock: Lockfile,
        gates: InstallGates,
    ) -> Self {
        Installer { target, cache, lock_path, lock, gates, warnings: Vec::new() }
    }

    /// The lockfile as it is now.
    pub fn lock(&self) -> &Lockfile {
        &self.lock
    }

    /// Where the lockfile is.
    pub fn lock_path(&self) -> &std::path::Path {
        &self.lock_path
    }

    /// What went wrong without stopping the install (the registry was down
    /// and the cache answered, a pinned version was yanked), since the last
    /// call.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// The skills an installed agent invokes that are not installed (an
    /// agent runs only the listed skills that are).
    pub fn missing_skills(&self, agent: &str) -> Vec<String> {
        let Some(agent) = self.target.installed(agent) else { return Vec::new() };
        let skills = &agent.manifest.capabilities.skills;
        skills.iter().filter(|s| self.target.installed(s.as_str()).is_none()).map(|s| s.to_string()).collect()
    }

    async fn metadata(&mut self, reg: &Registry, id: &str) -> Result<Metadata, InstallError> {
        match reg.client.package(id).await {
            Ok(info) => {
                if info.id != id {
                    return Err(InstallError::WrongPackage {
                        registry: reg.name.clone(),
                        asked: id.to_owned(),
                        got: info.id,
                    });
                }
                self.cache.accept_metadata(&reg.name, &info)?;
                Ok(Metadata { info, offline: false })
            }
            Err(RegistryClientError::Unreachable(e)) => match self.cache.metadata(&reg.name, id)? {
                Some(info) => {
                    self.warnings
                        .push(format!("registry {} is unreachable ({e}): using the cached index of {id}", reg.name));
                    Ok(Metadata { info, offline: true })
                }
                None => Err(InstallError::Unreachable { registry: reg.name.clone(), what: id.to_owned(), detail: e }),
            },
            Err(source) => Err(InstallError::Registry { what: id.to_owned(), source }),
        }
    }

    /// Downloads a package file (the caller looked in the cache first); its
    /// SHA-256 must be the one the index or lockfile lists. It is cached by
    /// [`Installer::fetch_verified`] only once it verified.
    async fn download(&self, reg: &Registry, expected: &Expected<'_>, offline: bool) -> Result<Vec<u8>, InstallError> {
        let Expected { id, version, sha256, .. } = *expected;
        let unreachable = |detail: String| InstallError::Unreachable {
            registry: reg.name.clone(),
            what: format!("{id} {version}"),
            detail,
        };
        if offline {
            return Err(unreachable("it did not answer".into()));
        }
        let bytes = reg.client.download(id, version).await.map_err(|e| match e {
            RegistryClientError::Unreachable(e) => unreachable(e),
            source => InstallError::Registry { what: format!("{id} {version}"), source },
        })?;
        let got = Digest::of(&bytes).to_hex();
        if got != sha256 {
            return Err(InstallError::Altered {
                registry: reg.name.clone(),
                id: id.to_owned(),
                version: version.clone(),
                got,
                listed: sha256.to_owned(),
            });
        }
        Ok(bytes)
    }

    /// Gets and verifies a package, auditing a refusal; verified downloads
    /// go to the cache for offline installs. The install gates come after,
    /// in [`Installer::install_package`].
    async fn fetch_verified(
        &self,
        reg: &Registry,
        expected: &Expected<'_>,
        offline: bool,
        cached: Option<Vec<u8>>,
    ) -> Result<(Vec<u8>, VerifiedPackage), InstallError> {
        let outcome = async {
            let fetched = cached.is_none();
            let bytes = match cached {
                Some(b) => b,
                None => self.download(reg, expected, offline).await?,
            };
            let verified = self.verify(&bytes, expected)?;
            if let Some(locked) = expected.signer.filter(|s| verified.signer().as_str() != *s) {
                return Err(InstallError::SignerMismatch {
                    id: expected.id.to_owned(),
                    version: expected.version.clone(),
                    signer: verified.signer().to_string(),
                    locked: locked.to_owned(),
                });
            }
            if fetched {
                self.cache.put_blob(&bytes)?;
            }
            Ok((bytes, verified))
        }
        .await;
        if let Err(e) = &outcome {
            let reason = format!("from registry {}: {}", reg.name, with_sources(e));
            self.target.audit_refused(expected.id, &reason).map_err(InstallError::Target)?;
        }
        outcome
    }

    /// Verifies against the target's trust store and checks the package is
    /// what was asked for.
    fn verify(&self, bytes: &[u8], expected: &Expected<'_>) -> Result<VerifiedPackage, InstallError> {
        let Expected { id, version, digest, .. } = *expected;
        let verified = Package::parse(bytes)
            .and_then(|p| p.verify(self.target.keys()))
            .map_err(|reason| InstallError::Verification { id: id.to_owned(), version: version.clone(), reason })?;
        let m = verified.manifest();
        if m.id.as_str() != id || &m.version != version {
            return Err(InstallError::NotAsServed {
                id: id.to_owned(),
                version: version.clone(),
                got_id: m.id.to_string(),
                got_version: m.version.clone(),
            });
        }
        if verified.digest().to_hex() != digest {
            return Err(InstallError::DigestMismatch {
                id: id.to_owned(),
                version: version.clone(),
                got: verified.digest().to_hex(),
                expected: digest.to_owned(),
            });
        }
        Ok(verified)
    }

    /// Installs through the target's gates; returns the accepted
    /// capability increase.
    fn install_package(&self, verified: &VerifiedPackage, bytes: &[u8]) -> Result<Vec<String>, InstallError> {
        self.target.install(verified, bytes, self.gates).map_err(InstallError::Target)
    }

    /// Moving below the locked version is a rollback too (the installed
    /// version is the target's check).
    fn check_lock_rollback(&self, id: &str, to: &semver::Version) -> Result<(), InstallError> {
        match self.lock.get(id).map(|l| &l.version).filter(|v| *v > to && !self.gates.allow_downgrade) {
            Some(v) => Err(InstallError::LockedRollback { id: id.to_owned(), locked: v.clone(), to: to.clone() }),
            None => Ok(()),
        }
    }

    /// Installs the best match of `req` for `id` and locks it. With
    /// `only_newer` (an update), a best match not above the locked version
    /// (e.g. the locked one was yanked) leaves everything as it is. Without
    /// a requirement (`*`), the lockfile records `^<installed version>`, so
    /// an update does not cross a major version on its own.
    pub async fn install(
        &mut self,
        reg: &Registry,
        id: &str,
        req: &semver::VersionReq,
        only_newer: bool,
    ) -> Result<Outcome, InstallError> {
        self.target.check_allowed(id).map_err(InstallError::Target)?;
        let meta = self.metadata(reg, id).await?;
        let chosen = meta.info.resolve(req).cloned().ok_or_else(|| no_match(&meta.info, req))?;
        if let Some(locked) = self.lock.get(id).filter(|l| only_newer && l.version >= chosen.version) {
            let (version, digest) = (locked.version.to_string(), locked.digest.clone());
            return Ok(outcome(id, version, Action::Unchanged, digest, Vec::new()));
        }
        self.check_lock_rollback(id, &chosen.version)?;
        let installed = self.target.installed(id);
        let recorded = if *req == semver::VersionReq::STAR {
            semver::VersionReq::parse(&format!("^{}", chosen.version)).expect("a caret requirement of a version parses")
        } else {
            req.clone()
        };
        // Nothing to do when this exact package is installed and locked
        // (lockfile values are only ever written from verified packages).
        let locked = self.lock.get(id).filter(|l| l.digest == chosen.digest && l.sha256 == chosen.sha256);
        if installed.is_some_and(|i| i.digest.to_hex() == chosen.digest) && locked.is_some() {
            let signer = locked.map(|l| l.signer.clone()).unwrap_or_default();
            self.lock_entry(reg, id, &recorded, &chosen, &signer)?;
            return Ok(outcome(id, chosen.version.to_string(), Action::Unchanged, chosen.digest, Vec::new()));
        }
        let expected =
            Expected { id, version: &chosen.version, sha256: &chosen.sha256, digest: &chosen.digest, signer: None };
        let cached = self.cache.blob(&chosen.sha256);
        let (bytes, verified) = self.fetch_verified(reg, &expected, meta.offline, cached).await?;
        let accepted = self.install_package(&verified, &bytes)?;
        self.lock_entry(reg, id, &recorded, &chosen, verified.signer().as_str())?;
        Ok(outcome(id, chosen.version.to_string(), Action::Installed, chosen.digest, accepted))
    }

    fn lock_entry(
        &mut self,
        reg: &Registry,
        id: &str,
        req: &semver::VersionReq,
        v: &VersionInfo,
        signer: &str,
    ) -> Result<(), InstallError> {
        self.lock.upsert(LockedSkill {
            id: id.to_owned(),
            version: v.version.clone(),
            requirement: req.clone(),
            digest: v.digest.clone(),
            sha256: v.sha256.clone(),
            signer: signer.to_owned(),
            registry: reg.name.clone(),
        });
        self.lock.write(&self.lock_path)?;
        Ok(())
    }

    /// Installs exactly what the lockfile entry pins.
    pub async fn install_locked(&mut self, reg: &Registry, entry: &LockedSkill) -> Result<Outcome, InstallError> {
        let id = entry.id.as_str();
        self.target.check_allowed(id).map_err(InstallError::Target)?;
        let done = |action, note: Option<String>, accepted| {
            let mut o = outcome(id, entry.version.to_string(), action, entry.digest.clone(), accepted);
            o.note = note.or(o.note);
            o
        };
        if self.target.installed(id).is_some_and(|i| i.digest.to_hex() == entry.digest) {
            return Ok(done(Action::Unchanged, None, Vec::new()));
        }
        let mut note = None;
        // The index says whether the pinned version was yanked; a cached
        // package installs without it when the registry is down.
        let cached = self.cache.blob(&entry.sha256);
        let meta = match self.metadata(reg, id).await {
            Ok(m) => Some(m),
            Err(e) if cached.is_some() => {
                self.warnings
                    .push(format!("{e}; installing the cached package without checking whether it was yanked"));
                None
            }
            Err(e) => return Err(e),
        };
        if let Some(meta) = &meta {
            let v = meta.info.exact(&entry.version).ok_or_else(|| InstallError::LockedVersionMissing {
                id: id.to_owned(),
                version: entry.version.clone(),
                registry: reg.name.clone(),
            })?;
            if v.yanked {
                let reason = v.yank_reason.clone().unwrap_or_default();
                let message =
                    format!("{id} {} is yanked ({reason}); installing it because the lockfile pins it", entry.version);
                self.warnings.push(message.clone());
                note = Some(message);
            }
        }
        let offline = meta.as_ref().is_none_or(|m| m.offline);
        let expected = Expected {
            id,
            version: &entry.version,
            sha256: &entry.sha256,
            digest: &entry.digest,
            signer: Some(&entry.signer),
        };
        let (bytes, verified) = self.fetch_verified(reg, &expected, offline, cached).await?;
        let accepted = self.install_package(&verified, &bytes)?;
        Ok(done(Action::Installed, note, accepted))
    }
}

/// `e` and its sources, as the audit log records a refusal.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

fn outcome(id: &str, version: String, action: Action, digest: String, accepted: Vec<String>) -> Outcome {
    let note = (!accepted.is_empty()).then(|| format!("accepted capability increase: {}", accepted.join("; ")));
    Outcome { id: id.to_owned(), version, action, digest, note, accepted_capabilities: accepted }
}

fn no_match(info: &PackageInfo, req: &semver::VersionReq) -> InstallError {
    let list: Vec<String> = info
        .versions
        .iter()
        .map(|v| if v.yanked { format!("{} (yanked)", v.version) } else { v.version.to_string() })
        .collect();
    InstallError::NoMatch { id: info.id.clone(), req: req.clone(), published: list.join(", ") }
}

/// `id` or `id@req`.
pub fn parse_spec(spec: &str) -> Result<(String, semver::VersionReq), InstallError> {
    let bad = |reason: String| InstallError::BadSpec { spec: spec.to_owned(), reason };
    let (id, req) = match spec.split_once('@') {
        Some((id, req)) => (
            id,
            semver::VersionReq::parse(req)
                .map_err(|_| bad(format!("`{req}` is not a version requirement (e.g. ^1.2, =1.0.3)")))?,
        ),
        None => (spec, semver::VersionReq::STAR),
    };
    SkillId::parse(id).map_err(|e| bad(e.to_string()))?;
    Ok((id.to_owned(), req))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_is_an_id_with_an_optional_requirement() {
        let (id, req) = parse_spec("team/x@^1.2").unwrap();
        assert_eq!((id.as_str(), req.to_string().as_str()), ("team/x", "^1.2"));
        assert_eq!(parse_spec("team/x").unwrap().1, semver::VersionReq::STAR);
        assert!(matches!(parse_spec("team/x@banana"), Err(InstallError::BadSpec { .. })));
        assert!(matches!(parse_spec("../x"), Err(InstallError::BadSpec { .. })));
    }
}
