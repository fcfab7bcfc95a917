//! `.coderClaw/skills.lock`: what a repository installs from registries,
//! exactly. `coderclaw skill install` with no argument installs these
//! versions and no others, and refuses any whose bytes differ.
//!
//! ```toml
//! version = 1
//!
//! [[skill]]
//! id = "team/security-scanner"
//! version = "1.2.0"
//! requirement = "^1"
//! digest = "…"     # package digest (what the signature covers)
//! sha256 = "…"     # SHA-256 of the package file
//! signer = "…"     # key id
//! registry = "team-registry"
//! ```

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The lockfile format version this client writes and reads.
const FORMAT: u32 = 1;

/// One locked package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedSkill {
    /// `namespace/name`.
    pub id: String,
    /// The exact version installed.
    pub version: semver::Version,
    /// What `skill update` may move within.
    pub requirement: semver::VersionReq,
    /// Package digest.
    pub digest: String,
    /// SHA-256 of the package file.
    pub sha256: String,
    /// Key id of the signer.
    pub signer: String,
    /// Registry name (from configuration) or URL.
    pub registry: String,
}

/// The lockfile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lockfile {
    /// Format version.
    pub version: u32,
    /// Locked packages, sorted by id.
    #[serde(default, rename = "skill")]
    pub skills: Vec<LockedSkill>,
}

impl Default for Lockfile {
    fn default() -> Self {
        Self { version: FORMAT, skills: Vec::new() }
    }
}

/// Why the lockfile could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LockfileError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// It does not parse.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl Lockfile {
    /// Where the lockfile of `workspace` lives.
    pub fn path(workspace: &Path) -> PathBuf {
        workspace.join(".coderClaw").join("skills.lock")
    }

    /// Reads the lockfile at `path`; an absent file is an empty lockfile.
    pub fn read(path: &Path) -> Result<Self, LockfileError> {
        // A repository's file: regular, no final symlink, bounded.
        let link = coderclaw_core::fsutil::FinalLink::Refuse;
        let text = match coderclaw_core::fsutil::read_text_bounded(path, coderclaw_core::fsutil::MAX_CONFIG_BYTES, link)
        {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(LockfileError::Io { path: path.into(), source }),
        };
        let lock: Lockfile =
            toml::from_str(&text).map_err(|e| LockfileError::Invalid { path: path.into(), message: e.to_string() })?;
        for (i, s) in lock.skills.iter().enumerate() {
            let bad = |message: String| LockfileError::Invalid {
                path: path.into(),
                message: format!("skill[{i}] ({}): {message}", s.id),
            };
            coderclaw_core::manifest::SkillId::parse(&s.id).map_err(&bad)?;
            for (key, value) in [("digest", &s.digest), ("sha256", &s.sha256)] {
                if value.len() != 64 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad(format!("`{key}` is not a SHA-256 (64 hex digits)")));
                }
            }
        }
        if lock.version != FORMAT {
            return Err(LockfileError::Invalid {
                path: path.into(),
                message: format!("lockfile format {} is not supported (this coderclaw reads {FORMAT})", lock.version),
            });
        }
        Ok(lock)
    }

    /// Writes the lockfile atomically (creating `.coderClaw/`).
    pub fn write(&self, path: &Path) -> Result<(), LockfileError> {
        let io = |source| LockfileError::Io { path: path.into(), source };
        let mut sorted = self.clone();
        sorted.skills.sort_by(|a, b| a.id.cmp(&b.id));
        let text = toml::to_string_pretty(&sorted)
            .map_err(|e| LockfileError::Invalid { path: path.into(), message: e.to_string() })?;
        let header = "# Written by `coderclaw skill install`. `coderclaw skill install` with no argument\n# installs exactly these versions. Change it with `coderclaw skill install|update`.\n";
        coderclaw_core::fsutil::write_durably(path, format!("{header}{text}").as_bytes()).map_err(io)
    }

    /// The entry of `id`.
    pub fn get(&self, id: &str) -> Option<&LockedSkill> {
        self.skills.iter().find(|s| s.id == id)
    }

    /// Adds or replaces the entry of `entry.id`.
    pub fn upsert(&mut self, entry: LockedSkill) {
        self.skills.retain(|s| s.id != entry.id);
        self.skills.push(entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = Lockfile::path(dir.path());
        assert_eq!(Lockfile::read(&path).unwrap(), Lockfile::default());
        let mut lock = Lockfile::default();
        lock.upsert(LockedSkill {
            id: "team/x".into(),
            version: "1.2.0".parse().unwrap(),
            requirement: "^1".parse().unwrap(),
            digest: "d".repeat(64),
            sha256: "5".repeat(64),
            signer: "k".into(),
            registry: "team-registry".into(),
        });
        lock.write(&path).unwrap();
        assert_eq!(Lockfile::read(&path).unwrap(), lock);
        std::fs::write(&path, "version = 1\n[[skill]]\nid = \"team/x\"\n").unwrap();
        let e = Lockfile::read(&path).unwrap_err().to_string();
        assert!(e.contains("skills.lock") && e.contains("missing field"), "{e}");
        let mut bad = lock.clone();
        bad.skills[0].sha256 = "../../etc/passwd".into();
        std::fs::write(&path, toml::to_string(&bad).unwrap()).unwrap();
        let e = Lockfile::read(&path).unwrap_err().to_string();
        assert!(e.contains("`sha256` is not a SHA-256"), "{e}");
    }
}
