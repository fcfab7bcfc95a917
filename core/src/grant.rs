//! The capability grant: exactly what one skill run may do.
//!
//! A [`Grant`] is built with [`GrantBuilder`], whose starting point denies
//! everything. The host builds the WASI context and the host imports from
//! the grant and from nothing else.

use crate::pattern::HostPattern;
use crate::shell_policy::{Confinement, ProgramRule};
use crate::units::format_size;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// How a granted directory may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// List and read files; every write fails with a permission error.
    Read,
    /// Read, create, write and remove files below the directory.
    ReadWrite,
}

/// One preopened directory: a host directory and the path the guest sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirGrant {
    /// Directory on the host, as given (the host canonicalises it at run time).
    pub host: PathBuf,
    /// Path under which the guest sees it (e.g. `.` or `/workspace`).
    pub guest: String,
    /// Read-only or read-write.
    pub access: Access,
}

/// Resource limits of one run. Policy may lower them, never raise them past
/// the host's maxima.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Maximum linear memory of the component, in bytes.
    pub memory_bytes: u64,
    /// Wall-clock time the whole run may take.
    pub timeout: Duration,
    /// Longest a single `shell.exec` child may run.
    pub shell_timeout: Duration,
    /// Cap on captured stdout and on captured stderr of a `shell.exec` child.
    pub shell_output_bytes: u64,
}

impl Limits {
    /// Default memory limit: 64 MiB.
    pub const DEFAULT_MEMORY_BYTES: u64 = 64 << 20;
    /// Default run timeout: 30 s.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    /// Default `shell.exec` timeout: 10 s.
    pub const DEFAULT_SHELL_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default `shell.exec` output cap: 1 MiB per stream.
    pub const DEFAULT_SHELL_OUTPUT_BYTES: u64 = 1 << 20;

    /// The smaller of each limit.
    pub fn min(&self, other: &Limits) -> Limits {
        Limits {
            memory_bytes: self.memory_bytes.min(other.memory_bytes),
            timeout: self.timeout.min(other.timeout),
            shell_timeout: self.shell_timeout.min(other.shell_timeout),
            shell_output_bytes: self.shell_output_bytes.min(other.shell_output_bytes),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: Self::DEFAULT_MEMORY_BYTES,
            timeout: Self::DEFAULT_TIMEOUT,
            shell_timeout: Self::DEFAULT_SHELL_TIMEOUT,
            shell_output_bytes: Self::DEFAULT_SHELL_OUTPUT_BYTES,
        }
    }
}

/// What one skill run may do. Build it with [`Grant::builder`].
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Grant {
    dirs: Vec<DirGrant>,
    env: BTreeMap<String, String>,
    http: Vec<HostPattern>,
    shell: BTreeSet<String>,
    skills: BTreeSet<String>,
    #[serde(default)]
    session_memory: bool,
    limits: Limits,
    /// Per program, argument rules that must all pass (manifest and policy).
    #[serde(default)]
    shell_rules: BTreeMap<String, Vec<ProgramRule>>,
    /// Programs whose children keep the host's network (host configuration).
    #[serde(default)]
    shell_network: BTreeSet<String>,
    #[serde(default)]
    confinement: Confinement,
}

/// A grant that cannot be built; each variant names the offending value.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum GrantError {
    /// Two directories were mounted at the same guest path.
    #[error("two directories are granted at the guest path {0:?}: give each a distinct guest path")]
    DuplicateGuestPath(String),
    /// A guest path that is empty or climbs with `..`.
    #[error("guest path {0:?} is not allowed: use `.` or a path without `..` components")]
    BadGuestPath(String),
    /// A shell program that is neither a bare name nor an absolute path.
    #[error("shell program {0:?} is not allowed: name a program (e.g. `git`) or give an absolute path")]
    BadProgram(String),
    /// An environment variable name that WASI cannot carry.
    #[error("environment variable name {0:?} is not allowed: it must be non-empty and contain no `=` or NUL")]
    BadEnvName(String),
    /// A skill id that is not `namespace/name`.
    #[error("skill id {0:?} is not allowed: use namespace/name, e.g. team/security-scanner")]
    BadSkillId(String),
    /// A zero limit: the run could never start.
    #[error("limit {0} must be greater than zero")]
    ZeroLimit(&'static str),
}

/// Builds a [`Grant`]. The starting point denies everything:
///
/// | capability | default |
/// | --- | --- |
/// | filesystem | no directory is preopened: every path fails |
/// | environment | empty: no variable is visible |
/// | outgoing HTTP | no destination: every request gets `HTTP request denied` |
/// | sockets | never granted (not configurable here) |
/// | shell | no program: every `shell.exec` is `denied` and runs nothing |
/// | skills (agents) | none: every `skills.invoke` is `denied` |
/// | session memory | off: every `memory` call is `denied` |
/// | memory | 64 MiB ([`Limits::DEFAULT_MEMORY_BYTES`]) |
/// | timeout | 30 s for the whole run ([`Limits::DEFAULT_TIMEOUT`]) |
/// | shell timeout | 10 s per command ([`Limits::DEFAULT_SHELL_TIMEOUT`]) |
/// | shell output | 1 MiB per stream ([`Limits::DEFAULT_SHELL_OUTPUT_BYTES`]) |
///
/// `log` and `progress` are always available: they only report to the host.
///
/// ```
/// use coderclaw_core::{Access, Grant};
/// use std::time::Duration;
///
/// let grant = Grant::builder()
///     .dir("/home/me/project", ".", Access::Read)
///     .http("https://api.github.com").unwrap()
///     .shell("git")
///     .timeout(Duration::from_secs(10))
///     .build()
///     .unwrap();
/// assert!(grant.allows_program("git"));
/// assert!(!grant.allows_program("rm"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct GrantBuilder {
    grant: Grant,
}

impl GrantBuilder {
    /// Preopen `host` at guest path `guest` with `access`.
    pub fn dir(mut self, host: impl Into<PathBuf>, guest: impl Into<String>, access: Access) -> Self {
        self.grant.dirs.push(DirGrant { host: host.into(), guest: guest.into(), access });
        self
    }

    /// Make environment variable `name` visible with `value`.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.grant.env.insert(name.into(), value.into());
        self
    }

    /// Allow outgoing HTTP to a destination pattern (see [`HostPattern`]).
    pub fn http(self, pattern: &str) -> Result<Self, crate::PatternError> {
        Ok(self.http_pattern(HostPattern::parse(pattern)?))
    }

    /// Allows outgoing HTTP to an already parsed destination.
    pub fn http_pattern(mut self, pattern: HostPattern) -> Self {
        self.grant.http.push(pattern);
        self
    }

    /// Allow `shell.exec` of `program` (a bare name looked up on `PATH`, or an absolute path).
    pub fn shell(mut self, program: impl Into<String>) -> Self {
        self.grant.shell.insert(program.into());
        self
    }

    /// Restrict the arguments `program` may be run with; every rule given
    /// for a program must pass (see [`crate::shell_policy`]).
    pub fn shell_rule(mut self, program: impl Into<String>, rule: ProgramRule) -> Self {
        let rules = self.grant.shell_rules.entry(program.into()).or_default();
        if !rules.contains(&rule) {
            rules.push(rule);
        }
        self
    }

    /// Let `program`'s children use the host's network (only the host
    /// configuration grants this; default: a child has no network at all).
    pub fn shell_network(mut self, program: impl Into<String>) -> Self {
        self.grant.shell_network.insert(program.into());
        self
    }

    /// How strictly the kernel must confine `shell.exec` children (default
    /// [`Confinement::Required`]).
    pub fn confinement(mut self, confinement: Confinement) -> Self {
        self.grant.confinement = confinement;
        self
    }

    /// Allow an agent to invoke skill `id` (`namespace/name`).
    pub fn skill(mut self, id: impl Into<String>) -> Self {
        self.grant.skills.insert(id.into());
        self
    }

    /// The per-session key-value store (`memory` interface).
    pub fn session_memory(mut self) -> Self {
        self.grant.session_memory = true;
        self
    }

    /// Memory limit in bytes.
    pub fn memory(mut self, bytes: u64) -> Self {
        self.grant.limits.memory_bytes = bytes;
        self
    }

    /// Wall-clock limit of the whole run.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.grant.limits.timeout = timeout;
        self
    }

    /// Per-command limit of `shell.exec`.
    pub fn shell_timeout(mut self, timeout: Duration) -> Self {
        self.grant.limits.shell_timeout = timeout;
        self
    }

    /// Cap on captured stdout and stderr of `shell.exec`, per stream.
    pub fn shell_output_bytes(mut self, bytes: u64) -> Self {
        self.grant.limits.shell_output_bytes = bytes;
        self
    }

    /// Replace all limits at once.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.grant.limits = limits;
        self
    }

    /// Check every value and return the grant.
    pub fn build(self) -> Result<Grant, GrantError> {
        let g = self.grant;
        let mut guests = BTreeSet::new();
        for d in &g.dirs {
            let bad = d.guest.is_empty() || Path::new(&d.guest).components().any(|c| c == Component::ParentDir);
            if bad {
                return Err(GrantError::BadGuestPath(d.guest.clone()));
            }
            if !guests.insert(d.guest.as_str()) {
                return Err(GrantError::DuplicateGuestPath(d.guest.clone()));
            }
        }
        if let Some(name) = g.env.keys().find(|n| !is_env_name(n)) {
            return Err(GrantError::BadEnvName(name.clone()));
        }
        if let Some(p) = g.shell.iter().find(|p| !is_program(p)) {
            return Err(GrantError::BadProgram(p.clone()));
        }
        for id in &g.skills {
            if !is_skill_id(id) {
                return Err(GrantError::BadSkillId(id.clone()));
            }
        }
        let l = &g.limits;
        for (name, zero) in [
            ("memory", l.memory_bytes == 0),
            ("timeout", l.timeout.is_zero()),
            ("shell timeout", l.shell_timeout.is_zero()),
            ("shell output", l.shell_output_bytes == 0),
        ] {
            if zero {
                return Err(GrantError::ZeroLimit(name));
            }
        }
        Ok(g)
    }
}

/// A name WASI can carry as an environment variable: non-empty, no `=` or NUL.
pub fn is_env_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['=', '\0'])
}

/// A shell program a grant may name: a bare name (looked up on PATH, never
/// `.` or `..`) or an absolute path; no NUL.
pub fn is_program(p: &str) -> bool {
    let bare = !p.is_empty() && !p.contains('/') && p != "." && p != "..";
    (bare || Path::new(p).is_absolute()) && !p.contains('\0')
}

/// `namespace/name`, each part lowercase ASCII letters, digits and `-`.
pub fn is_skill_id(id: &str) -> bool {
    let part = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !s.starts_with('-')
    };
    matches!(id.split_once('/'), Some((ns, name)) if part(ns) && part(name))
}

impl Grant {
    /// A builder starting from deny-all; see [`GrantBuilder`] for every default.
    pub fn builder() -> GrantBuilder {
        GrantBuilder::default()
    }

    /// The deny-all grant with default limits.
    pub fn deny_all() -> Grant {
        Grant::default()
    }

    /// Preopened directories.
    pub fn dirs(&self) -> &[DirGrant] {
        &self.dirs
    }

    /// Visible environment variables (name → value).
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// Allowed HTTP destinations.
    pub fn http(&self) -> &[HostPattern] {
        &self.http
    }

    /// Programs `shell.exec` may run.
    pub fn shell(&self) -> &BTreeSet<String> {
        &self.shell
    }

    /// Whether the per-session key-value store is granted.
    pub fn session_memory(&self) -> bool {
        self.session_memory
    }

    /// Skills an agent may invoke.
    pub fn skills(&self) -> &BTreeSet<String> {
        &self.skills
    }

    /// Resource limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The argument rules for `program` (all must pass): those given for
    /// any spelling of it (`git` and `/usr/bin/git` are one program here).
    pub fn shell_rules(&self, program: &str) -> Vec<&ProgramRule> {
        let name = crate::shell_policy::program_name(program);
        self.shell_rules
            .iter()
            .filter(|(p, _)| crate::shell_policy::program_name(p) == name)
            .flat_map(|(_, rules)| rules)
            .collect()
    }

    /// Whether `program`'s children keep the host's network.
    pub fn shell_network(&self, program: &str) -> bool {
        self.shell_network.contains(program)
    }

    /// How strictly the kernel must confine `shell.exec` children.
    pub fn confinement(&self) -> Confinement {
        self.confinement
    }

    /// Whether `shell.exec` may run `program` (exact match on the allowlist).
    pub fn allows_program(&self, program: &str) -> bool {
        self.shell.contains(program)
    }

    /// Whether an HTTP request to `scheme://host[:port]` is allowed.
    pub fn allows_http(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        self.http.iter().any(|p| p.matches(scheme, host, port))
    }

    /// Whether an agent may invoke skill `id`.
    pub fn allows_skill(&self, id: &str) -> bool {
        self.skills.contains(id)
    }

    /// The same grant with every directory's host path replaced by
    /// `resolve(path)` (the host canonicalises paths before using them).
    pub fn with_resolved_dirs<E>(&self, mut resolve: impl FnMut(&Path) -> Result<PathBuf, E>) -> Result<Grant, E> {
        let mut g = self.clone();
        for d in &mut g.dirs {
            d.host = resolve(&d.host)?;
        }
        Ok(g)
    }

    /// This grant cut down to what `parent` allows: used for a skill invoked
    /// by an agent, whose grant must never be wider than the agent's.
    ///
    /// Directories survive only when they lie inside one of the parent's
    /// (compared lexically on the given paths; the host canonicalises both
    /// before comparing) and lose write access when the parent's is
    /// read-only. Environment, HTTP, shell and skills keep only what both
    /// allow; every limit is the smaller of the two.
    pub fn narrowed_to(&self, parent: &Grant) -> Grant {
        let dirs = self
            .dirs
            .iter()
            .filter_map(|d| {
                let cover = parent.dirs.iter().filter(|p| d.host.starts_with(&p.host)).map(|p| p.access).max()?;
                Some(DirGrant { access: d.access.min(cover), ..d.clone() })
            })
            .collect();
        Grant {
            dirs,
            env: self
                .env
                .iter()
                .filter(|(k, v)| parent.env.get(*k) == Some(*v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            http: self.http.iter().filter(|p| parent.http.contains(p)).cloned().collect(),
            shell: self.shell.intersection(&parent.shell).cloned().collect(),
            skills: self.skills.intersection(&parent.skills).cloned().collect(),
            session_memory: self.session_memory && parent.session_memory,
            limits: self.limits.min(&parent.limits),
            // Both sides' rules apply; the stricter confinement wins.
            shell_rules: {
                let mut rules = self.shell_rules.clone();
                for (program, extra) in &parent.shell_rules {
                    let mine = rules.entry(program.clone()).or_default();
                    mine.extend(extra.iter().filter(|r| !mine.contains(r)).cloned().collect::<Vec<_>>());
                }
                rules
            },
            shell_network: self.shell_network.intersection(&parent.shell_network).cloned().collect(),
            confinement: self.confinement.min(parent.confinement),
        }
    }
}

/// Environment values may be secrets (tokens): `Debug` shows names only.
impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grant")
            .field("dirs", &self.dirs)
            .field("env", &self.env.keys().map(|k| format!("{k}=<redacted>")).collect::<Vec<_>>())
            .field("http", &self.http.iter().map(ToString::to_string).collect::<Vec<_>>())
            .field("shell", &self.shell)
            .field("skills", &self.skills)
            .field("session_memory", &self.session_memory)
            .field("limits", &self.limits)
            .field("shell_rules", &self.shell_rules)
            .field("shell_network", &self.shell_network)
            .field("confinement", &self.confinement)
            .finish()
    }
}

/// One line per capability, for `--help`-style summaries and logs. Env
/// values are never printed.
impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: Vec<String>| if v.is_empty() { "none".to_owned() } else { v.join(", ") };
        let dirs = self
            .dirs
            .iter()
            .map(|d| {
                let mode = if d.access == Access::Read { "ro" } else { "rw" };
                format!("{} as {} ({mode})", d.host.display(), d.guest)
            })
            .collect();
        writeln!(f, "fs:     {}", list(dirs))?;
        writeln!(f, "env:    {}", list(self.env.keys().cloned().collect()))?;
        writeln!(f, "http:   {}", list(self.http.iter().map(ToString::to_string).collect()))?;
        let shell = self
            .shell
            .iter()
            .map(|p| {
                let mut s = p.clone();
                if !self.shell_rules(p).is_empty() {
                    s.push_str(" (argument rules)");
                }
                if self.shell_network(p) {
                    s.push_str(" (network)");
                }
                s
            })
            .collect();
        writeln!(f, "shell:  {}", list(shell))?;
        writeln!(f, "skills: {}", list(self.skills.iter().cloned().collect()))?;
        writeln!(f, "memory: {}", if self.session_memory { "session key-value store" } else { "none" })?;
        write!(
            f,
            "limits: memory {}, timeout {:?}, shell timeout {:?}, shell output {}",
            format_size(self.limits.memory_bytes),
            self.limits.timeout,
            self.limits.shell_timeout,
            format_size(self.limits.shell_output_bytes)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_grant_denies_everything() {
        let g = Grant::builder().build().unwrap();
        assert!(g.dirs().is_empty());
        assert!(g.env().is_empty());
        assert!(!g.allows_http("https", "example.com", None));
        assert!(!g.allows_program("sh"));
        assert!(!g.allows_skill("team/x"));
        assert_eq!(*g.limits(), Limits::default());
        assert_eq!(g, Grant::deny_all());
    }

    #[test]
    fn invalid_values_are_rejected_by_name() {
        let cases: Vec<(GrantBuilder, &str)> = vec![
            (Grant::builder().dir("/a", "../up", Access::Read), "../up"),
            (Grant::builder().dir("/a", "", Access::Read), "guest path"),
            (Grant::builder().dir("/a", "w", Access::Read).dir("/b", "w", Access::Read), "\"w\""),
            (Grant::builder().shell("./x"), "./x"),
            (Grant::builder().shell("bin/sh"), "bin/sh"),
            (Grant::builder().env("A=B", "c"), "A=B"),
            (Grant::builder().skill("noslash"), "noslash"),
            (Grant::builder().memory(0), "memory"),
            (Grant::builder().timeout(Duration::ZERO), "timeout"),
        ];
        for (builder, needle) in cases {
            let e = builder.build().unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }

    #[test]
    fn debug_and_display_never_show_env_values() {
        let g = Grant::builder().env("GITHUB_TOKEN", "ghp_supersecret").build().unwrap();
        assert!(!format!("{g:?}").contains("supersecret"));
        assert!(!g.to_string().contains("supersecret"));
        assert!(g.to_string().contains("GITHUB_TOKEN"));
    }

    #[test]
    fn narrowing_never_widens() {
        let parent = Grant::builder()
            .dir("/work/repo", ".", Access::Read)
            .env("A", "1")
            .http("https://api.github.com")
            .unwrap()
            .shell("git")
            .skill("team/a")
            .memory(32 << 20)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let child = Grant::builder()
            .dir("/work/repo/src", "src", Access::ReadWrite)
            .dir("/etc", "etc", Access::Read)
            .env("A", "1")
            .env("B", "2")
            .http("https://api.github.com")
            .unwrap()
            .http("https://evil.example")
            .unwrap()
            .shell("git")
            .shell("rm")
            .skill("team/a")
            .skill("team/b")
            .session_memory()
            .memory(128 << 20)
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let n = child.narrowed_to(&parent);
        assert!(!n.session_memory(), "the parent has no session memory to pass on");
        assert!(child.narrowed_to(&Grant::builder().session_memory().build().unwrap()).session_memory());
        assert_eq!(n.dirs().len(), 1);
        assert_eq!(n.dirs()[0].host, PathBuf::from("/work/repo/src"));
        assert_eq!(n.dirs()[0].access, Access::Read, "write downgraded to the parent's read");
        assert_eq!(n.env().keys().collect::<Vec<_>>(), ["A"]);
        assert!(n.allows_http("https", "api.github.com", None));
        assert!(!n.allows_http("https", "evil.example", None));
        assert!(n.allows_program("git") && !n.allows_program("rm"));
        assert!(n.allows_skill("team/a") && !n.allows_skill("team/b"));
        assert_eq!(n.limits().memory_bytes, 32 << 20);
        assert_eq!(n.limits().timeout, Duration::from_secs(5));
    }

    #[test]
    fn skill_ids() {
        assert!(is_skill_id("team/security-scanner"));
        assert!(!is_skill_id("Team/x"));
        assert!(!is_skill_id("team/"));
        assert!(!is_skill_id("a/b/c"));
        assert!(!is_skill_id("-a/b"));
    }
}
