//! The skill manifest (`skill.toml`): identity, version, kind, input schema
//! and the capabilities and limits a skill *requests*. Requests are only
//! requests: the grant a run gets is decided by policy, never by asking.
//!
//! ```toml
//! id = "team/security-scanner"
//! version = "1.2.0"
//! kind = "skill"                      # or "agent"
//! description = "Scans the workspace for committed secrets"
//! dangerous = false
//!
//! [input-schema]                      # JSON Schema of the input, as TOML
//! type = "object"
//! properties.path = { type = "string" }
//!
//! [capabilities]
//! fs = [{ path = "workspace", access = "read" }]
//! http = ["https://api.github.com"]
//! env = ["GITHUB_TOKEN"]
//! shell = ["git"]
//! skills = ["team/linter"]
//!
//! [limits]
//! memory = "64MiB"
//! timeout = "30s"
//! ```
//!
//! Parsing is strict: unknown keys, a bad id, version, host pattern, size or
//! duration are errors that name the key and its line.

use crate::grant::{Access, is_skill_id};
use crate::pattern::HostPattern;
use crate::units::{parse_duration, parse_size};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use thiserror::Error;

/// A manifest that could not be read; the message names key and line.
#[derive(Debug, Error)]
pub enum ManifestError {
    /// TOML syntax, an unknown key or an invalid value.
    #[error("{file}: {message}")]
    Invalid {
        /// The file (or "manifest" when parsed from memory).
        file: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The canonical JSON form inside a package is not a valid manifest.
    #[error("the package's manifest is not valid: {0}")]
    Canonical(String),
}

/// `namespace/name`, e.g. `team/security-scanner`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SkillId(String);

impl SkillId {
    /// Parses `namespace/name` (lowercase letters, digits, `-`).
    pub fn parse(s: &str) -> Result<Self, String> {
        if is_skill_id(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!(
                "{s:?} is not a skill id: write namespace/name in lowercase letters, digits and `-` (e.g. team/security-scanner)"
            ))
        }
    }

    /// The namespace (team) part.
    pub fn namespace(&self) -> &str {
        self.0.split_once('/').map(|(ns, _)| ns).unwrap_or_default()
    }

    /// The name part.
    pub fn name(&self) -> &str {
        self.0.split_once('/').map(|(_, n)| n).unwrap_or_default()
    }

    /// The whole id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SkillId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl From<SkillId> for String {
    fn from(id: SkillId) -> String {
        id.0
    }
}

impl fmt::Display for SkillId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Skill or agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A skill: JSON in, JSON out.
    Skill,
    /// An agent: a skill that may invoke other skills.
    Agent,
}

impl Kind {
    /// `skill` or `agent`, as manifests, the APIs and the CLI write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Skill => "skill",
            Kind::Agent => "agent",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "skill" => Ok(Kind::Skill),
            "agent" => Ok(Kind::Agent),
            other => Err(format!("kind `{other}`: use skill or agent")),
        }
    }
}

/// A requested directory. `path` is a logical name the policy maps to a real
/// directory (e.g. `workspace`), not a host path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsRequest {
    /// Logical directory name, e.g. `workspace`.
    pub path: String,
    /// Read-only or read-write.
    pub access: Access,
}

/// Capabilities the skill asks for. Each list is deduplicated and sorted in
/// the canonical form, so the signature covers one spelling only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Directories.
    #[serde(default)]
    pub fs: BTreeSet<FsRequest>,
    /// Outgoing HTTP destinations.
    #[serde(default)]
    pub http: BTreeSet<HostPattern>,
    /// Environment variable names.
    #[serde(default)]
    pub env: BTreeSet<String>,
    /// Shell programs.
    #[serde(default)]
    pub shell: BTreeSet<String>,
    /// Argument rules per shell program (they only restrict). Omitted from
    /// the canonical form when empty, so older signatures still verify.
    #[serde(default, rename = "shell-rules", skip_serializing_if = "BTreeMap::is_empty")]
    pub shell_rules: BTreeMap<String, crate::shell_policy::ProgramRule>,
    /// Skills an agent invokes.
    #[serde(default)]
    pub skills: BTreeSet<SkillId>,
    /// The per-session key-value store (`memory` interface). Omitted from
    /// the canonical form when false, so older signatures still verify.
    #[serde(default, rename = "session-memory", skip_serializing_if = "std::ops::Not::not")]
    pub session_memory: bool,
}

impl Capabilities {
    /// The access asked for per logical directory: a directory listed
    /// twice gets the wider of its accesses, as the grant does.
    pub fn fs_access(&self) -> std::collections::BTreeMap<&str, Access> {
        let mut out = std::collections::BTreeMap::new();
        for d in &self.fs {
            let a = out.entry(d.path.as_str()).or_insert(d.access);
            *a = (*a).max(d.access);
        }
        out
    }
}

/// A byte size written like `64MiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Size(pub u64);

impl TryFrom<String> for Size {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        parse_size(&s).map(Size).map_err(|e| e.to_string())
    }
}

impl From<Size> for String {
    fn from(s: Size) -> String {
        crate::units::format_size(s.0)
    }
}

/// A duration written like `30s`, kept in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Millis(pub u64);

impl TryFrom<String> for Millis {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let d = parse_duration(&s).map_err(|e| e.to_string())?;
        u64::try_from(d.as_millis()).map(Millis).map_err(|_| format!("{s:?} is too long"))
    }
}

impl From<Millis> for String {
    fn from(m: Millis) -> String {
        format!("{}ms", m.0)
    }
}

/// Requested limits; policy may lower them, never raise them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestedLimits {
    /// Memory the skill needs.
    pub memory: Option<Size>,
    /// Time a run needs at most.
    pub timeout: Option<Millis>,
}

/// A parsed, validated manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Manifest {
    /// `namespace/name`.
    pub id: SkillId,
    /// Semantic version.
    pub version: semver::Version,
    /// Skill or agent.
    pub kind: Kind,
    /// One line for listings.
    pub description: String,
    /// Whether the skill is dangerous (e.g. runs programs).
    #[serde(default)]
    pub dangerous: bool,
    /// Safe to re-run from the start when the host restarted mid-run (the
    /// task engine re-runs it instead of failing it). Omitted from the
    /// canonical form when false, so older signatures still verify.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resumable: bool,
    /// JSON Schema of the input.
    #[serde(default = "any_object")]
    pub input_schema: serde_json::Value,
    /// JSON Schema of the output, when declared (an object schema: what
    /// MCP clients are told to expect as the tool's structured result).
    /// Omitted from the canonical form when absent, so older signatures
    /// still verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<serde_json::Value>,
    /// What it asks for.
    #[serde(default)]
    pub capabilities: Capabilities,
    /// Limits it asks for.
    #[serde(default)]
    pub limits: RequestedLimits,
}

fn any_object() -> serde_json::Value {
    serde_json::json!({ "type": "object" })
}

impl Manifest {
    /// Parses `skill.toml` text; `file` names it in errors.
    pub fn from_toml(text: &str, file: &str) -> Result<Self, ManifestError> {
        let m: Manifest = toml::from_str(text)
            .map_err(|e| ManifestError::Invalid { file: file.to_owned(), message: e.to_string() })?;
        m.check().map_err(|message| ManifestError::Invalid { file: file.to_owned(), message })?;
        // Checked when authored: a signed schema the host cannot compile
        // would refuse every input at run time.
        crate::input_schema::InputSchema::compile(&m.input_schema).map_err(|e| ManifestError::Invalid {
            file: file.to_owned(),
            message: format!("key `input-schema`: not a JSON Schema the host can use: {e}"),
        })?;
        if let Some(schema) = &m.output_schema {
            crate::input_schema::InputSchema::compile(schema).map_err(|e| ManifestError::Invalid {
                file: file.to_owned(),
                message: format!("key `output-schema`: not a JSON Schema the host can use: {e}"),
            })?;
        }
        Ok(m)
    }

    /// Checks what serde cannot: non-empty description, sane names.
    fn check(&self) -> Result<(), String> {
        if self.description.trim().is_empty() {
            return Err("key `description`: must not be empty".into());
        }
        if !self.input_schema.is_object() {
            return Err("key `input-schema`: must be a table (a JSON Schema object)".into());
        }
        if self.output_schema.as_ref().is_some_and(|o| o.get("type") != Some(&serde_json::json!("object"))) {
            return Err("key `output-schema`: must be a table with type = \"object\" (skills return objects)".into());
        }
        // The same rules a grant enforces, so a manifest that signs is one
        // the host can grant.
        if let Some(name) = self.capabilities.env.iter().find(|n| !crate::grant::is_env_name(n)) {
            return Err(format!("key `capabilities.env`: {name:?} is not an environment variable name"));
        }
        if let Some(p) = self.capabilities.shell.iter().find(|p| !crate::grant::is_program(p)) {
            return Err(format!("key `capabilities.shell`: {p:?} is not a program name or absolute path"));
        }
        if let Some(p) = self.capabilities.shell_rules.keys().find(|p| !self.capabilities.shell.contains(*p)) {
            return Err(format!("key `capabilities.shell-rules.{p}`: `{p}` is not in `capabilities.shell`"));
        }
        for d in &self.capabilities.fs {
            if d.path.is_empty() || d.path.contains("..") {
                return Err(format!("key `capabilities.fs`: {:?} is not a logical directory name", d.path));
            }
        }
        if self.kind == Kind::Skill && !self.capabilities.skills.is_empty() {
            return Err("key `capabilities.skills`: only agents (kind = \"agent\") may invoke skills".into());
        }
        Ok(())
    }

    /// The canonical form that packages carry and signatures cover: compact
    /// JSON, fields in declaration order, every set sorted.
    pub fn canonical_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest always serialises")
    }

    /// What this manifest asks for beyond `from` (an installed version):
    /// one line per added request, empty when it asks for nothing more. A
    /// raised or newly requested limit counts, as does becoming dangerous,
    /// becoming an agent, or read access turning into read-write.
    pub fn capability_increase(&self, from: &Manifest) -> Vec<String> {
        let (new, old) = (&self.capabilities, &from.capabilities);
        let mut out = Vec::new();
        let before = old.fs_access();
        for (path, access) in new.fs_access() {
            match (before.get(path), access) {
                (None, _) => out.push(format!("fs: {path} ({})", access_name(access))),
                (Some(Access::Read), Access::ReadWrite) => out.push(format!("fs: {path} read -> read-write")),
                _ => {}
            }
        }
        let added = |label: &str, new: Vec<String>, old: Vec<String>, out: &mut Vec<String>| {
            out.extend(new.into_iter().filter(|n| !old.contains(n)).map(|n| format!("{label}: {n}")));
        };
        let strings = |set: &BTreeSet<HostPattern>| set.iter().map(ToString::to_string).collect::<Vec<_>>();
        added("http", strings(&new.http), strings(&old.http), &mut out);
        added("env", new.env.iter().cloned().collect(), old.env.iter().cloned().collect(), &mut out);
        added("shell", new.shell.iter().cloned().collect(), old.shell.iter().cloned().collect(), &mut out);
        let ids = |set: &BTreeSet<SkillId>| set.iter().map(ToString::to_string).collect::<Vec<_>>();
        added("skills", ids(&new.skills), ids(&old.skills), &mut out);
        if new.session_memory && !old.session_memory {
            out.push("session-memory".into());
        }
        if self.dangerous && !from.dangerous {
            out.push("dangerous: false -> true".into());
        }
        if self.kind == Kind::Agent && from.kind == Kind::Skill {
            out.push("kind: skill -> agent".into());
        }
        // Limits compare as they take effect: no request means the host default.
        let memory = |m: &Manifest| m.limits.memory.map_or(crate::Limits::DEFAULT_MEMORY_BYTES, |s| s.0);
        if memory(self) > memory(from) {
            let show = |s: Option<Size>| s.map_or("default".to_owned(), String::from);
            out.push(format!("limits.memory: {} -> {}", show(from.limits.memory), show(self.limits.memory)));
        }
        let default_ms = crate::Limits::DEFAULT_TIMEOUT.as_millis() as u64;
        let timeout = |m: &Manifest| m.limits.timeout.map_or(default_ms, |t| t.0);
        if timeout(self) > timeout(from) {
            let show = |t: Option<Millis>| t.map_or("default".to_owned(), String::from);
            out.push(format!("limits.timeout: {} -> {}", show(from.limits.timeout), show(self.limits.timeout)));
        }
        out
    }

    /// Parses the canonical form back (from a package).
    pub fn from_canonical_json(bytes: &[u8]) -> Result<Self, ManifestError> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| ManifestError::Canonical(e.to_string()))?;
        m.check().map_err(ManifestError::Canonical)?;
        if m.canonical_json() != bytes {
            return Err(ManifestError::Canonical("it is not in canonical form".into()));
        }
        Ok(m)
    }
}

fn access_name(a: Access) -> &'static str {
    match a {
        Access::Read => "read",
        Access::ReadWrite => "read-write",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(extra: &str) -> Manifest {
        let text = format!("id = \"team/x\"\nversion = \"1.0.0\"\nkind = \"skill\"\ndescription = \"d\"\n{extra}");
        Manifest::from_toml(&text, "skill.toml").unwrap()
    }

    #[test]
    fn capability_increase_lists_each_added_request() {
        let old = caps(
            "[capabilities]\nhttp = [\"https://a.example\"]\nfs = [{ path = \"workspace\", access = \"read\" }]\n",
        );
        assert!(old.capability_increase(&old).is_empty());
        let wider = caps(
            "dangerous = true\n[capabilities]\nhttp = [\"https://a.example\", \"https://b.example\"]\n\
             fs = [{ path = \"workspace\", access = \"read-write\" }]\nenv = [\"TOKEN\"]\nshell = [\"git\"]\n\
             [limits]\nmemory = \"512MiB\"\n",
        );
        let diff = wider.capability_increase(&old);
        assert_eq!(
            diff,
            vec![
                "fs: workspace read -> read-write",
                "http: https://b.example:443",
                "env: TOKEN",
                "shell: git",
                "dangerous: false -> true",
                "limits.memory: default -> 512MiB",
            ]
        );
        // Asking for less is never an increase.
        assert!(old.capability_increase(&wider).is_empty());
        // A directory listed twice counts once, with its wider access.
        let twice = caps(
            "[capabilities]\nfs = [{ path = \"workspace\", access = \"read\" }, { path = \"workspace\", access = \"read-write\" }]\n",
        );
        let rw = caps("[capabilities]\nfs = [{ path = \"workspace\", access = \"read-write\" }]\n");
        assert!(rw.capability_increase(&twice).is_empty());
        assert_eq!(twice.capability_increase(&old), ["fs: workspace read -> read-write"]);
        // Limits compare as they take effect: dropping an explicit 16MiB
        // means the 64 MiB default (more); an explicit 16MiB is less.
        let small = caps("[limits]\nmemory = \"16MiB\"\n");
        let none = caps("");
        assert_eq!(none.capability_increase(&small), vec!["limits.memory: 16MiB -> default"]);
        assert!(small.capability_increase(&none).is_empty());
    }

    const GOOD: &str = r#"
id = "team/security-scanner"
version = "1.2.0"
kind = "skill"
description = "Scans for secrets"

[input-schema]
type = "object"
properties.path = { type = "string" }

[capabilities]
fs = [{ path = "workspace", access = "read" }]
http = ["https://api.github.com"]
env = ["GITHUB_TOKEN"]

[limits]
memory = "64MiB"
timeout = "30s"
"#;

    #[test]
    fn a_good_manifest_round_trips_through_canonical_json() {
        let m = Manifest::from_toml(GOOD, "skill.toml").unwrap();
        assert_eq!(m.id.namespace(), "team");
        assert_eq!(m.version, semver::Version::new(1, 2, 0));
        assert_eq!(m.limits.memory, Some(Size(64 << 20)));
        assert_eq!(m.limits.timeout, Some(Millis(30_000)));
        let json = m.canonical_json();
        assert_eq!(Manifest::from_canonical_json(&json).unwrap(), m);
    }

    #[test]
    fn errors_name_the_key_and_line() {
        let cases = [
            (GOOD.replace("team/security-scanner", "Team Scanner"), "line 2", "not a skill id"),
            (GOOD.replace("1.2.0", "1.2"), "line 3", "version"),
            (GOOD.replace("https://api.github.com", "ftp://x"), "line 13", "scheme"),
            (GOOD.replace("64MiB", "64MB"), "line 17", "not a size"),
            (GOOD.replace("30s", "soon"), "line 18", "not a duration"),
            (GOOD.replace("kind = \"skill\"", "kind = \"robot\""), "line 4", "unknown variant"),
            (format!("{GOOD}\nsurprise = 1\n"), "line 20", "unknown field `surprise`"),
            (GOOD.replace("access = \"read\"", "access = \"all\""), "line 12", "unknown variant"),
        ];
        for (text, line, what) in cases {
            let e = Manifest::from_toml(&text, "skill.toml").unwrap_err().to_string();
            assert!(e.contains(line) && e.contains(what) && e.starts_with("skill.toml"), "want {line} / {what}: {e}");
        }
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let e =
            Manifest::from_toml(&GOOD.replace("env = [\"GITHUB_TOKEN\"]", "skills = [\"team/x\"]"), "m").unwrap_err();
        assert!(e.to_string().contains("only agents"), "{e}");
        let e = Manifest::from_toml(&GOOD.replace("Scans for secrets", " "), "m").unwrap_err();
        assert!(e.to_string().contains("`description`"), "{e}");
        // A program a grant could never hold does not sign either.
        let with_shell = GOOD.replace("env = [\"GITHUB_TOKEN\"]", "shell = [\"..\"]");
        let e = Manifest::from_toml(&with_shell, "m").unwrap_err();
        assert!(e.to_string().contains("capabilities.shell"), "{e}");
        assert!(Manifest::from_toml(&with_shell.replace("\"..\"", "\"git\""), "m").is_ok());
    }

    #[test]
    fn non_canonical_json_is_refused() {
        let m = Manifest::from_toml(GOOD, "m").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&m.canonical_json()).unwrap();
        // Same content, other spellings: pretty-printed, keys re-sorted.
        for other in [serde_json::to_vec_pretty(&v).unwrap(), serde_json::to_vec(&v).unwrap()] {
            let e = Manifest::from_canonical_json(&other).unwrap_err();
            assert!(e.to_string().contains("not in canonical form"), "{e}");
        }
        let mut changed = m.clone();
        changed.dangerous = true;
        assert!(Manifest::from_canonical_json(&changed.canonical_json()).unwrap().dangerous);
    }
}
