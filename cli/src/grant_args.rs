//! The --allow-* flags of `skill run`: for an unsigned development build
//! they are the request (a manifest and an offer of exactly them); for a
//! signed skill only --allow-env (offering values) and the limit flags
//! (lowering limits) apply, because its signed manifest is the request.

use anyhow::{Context, Result, bail};
use clap::Args;
use coderclaw::{Access, HostPattern, Limits};
use coderclaw_core::decision::{Offer, OfferedDir};
use coderclaw_core::manifest::{Capabilities, FsRequest, Kind, Manifest, Millis, RequestedLimits, Size, SkillId};
use coderclaw_core::units::{parse_duration, parse_size};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Capabilities for an unsigned development run, and limits.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct GrantArgs {
    /// Unsigned builds: let the skill read DIR. Written HOST or HOST::GUEST;
    /// the guest sees it at GUEST (default: the same path as given).
    #[arg(long = "allow-read", value_name = "DIR[::GUEST]")]
    pub read: Vec<String>,
    /// Unsigned builds: let the skill read and write DIR (as --allow-read).
    #[arg(long = "allow-write", value_name = "DIR[::GUEST]")]
    pub write: Vec<String>,
    /// Unsigned builds: allow outgoing HTTP to a destination: https://api.github.com,
    /// api.github.com (https), http://127.0.0.1:8080, https://*.example.com.
    #[arg(long = "allow-http", value_name = "HOST")]
    pub http: Vec<String>,
    /// Pass environment variable NAME (with its current value) to the skill,
    /// if it asks for it (signed skills: in its manifest).
    #[arg(long = "allow-env", value_name = "NAME")]
    pub env: Vec<String>,
    /// Unsigned builds: let the skill run PROGRAM through shell.exec (makes
    /// the run dangerous: policy must name the skill). Exact name
    /// (looked up on PATH) or absolute path; arguments are never shell-expanded.
    #[arg(long = "allow-shell", value_name = "PROGRAM")]
    pub shell: Vec<String>,
    /// Lower the wall-clock limit of the whole run (it never rises above
    /// what the skill's manifest requests).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub timeout: Option<Duration>,
    /// Lower the memory limit of the component.
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
    pub memory: Option<u64>,
    /// Lower the time limit of one shell.exec command (default 10s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub shell_timeout: Option<Duration>,
}

pub(crate) fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

pub(crate) fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

/// The most any run may get on this host, whatever a manifest requests.
pub(crate) const HOST_MAX: Limits = Limits {
    memory_bytes: coderclaw::DEFAULT_MAX_MEMORY_BYTES,
    timeout: Duration::from_secs(600),
    shell_timeout: Duration::from_secs(600),
    shell_output_bytes: Limits::DEFAULT_SHELL_OUTPUT_BYTES,
};

/// Where a signed skill's logical `workspace` directory is, and how much
/// of it the host offers.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct WorkspaceArgs {
    /// The directory a skill's `workspace` is (default: the current
    /// directory); its .coderClaw/security.yaml applies.
    #[arg(long = "workspace", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Give a skill that asks for read-write access to the workspace that
    /// access (default: read-only). Only for skills you trust with the
    /// workspace's .coderClaw/security.yaml, which they could then rewrite.
    #[arg(long)]
    pub workspace_write: bool,
}

impl WorkspaceArgs {
    /// The workspace directory, canonical.
    pub(crate) fn dir(&self) -> Result<PathBuf> {
        crate::home::workspace(self.dir.as_deref())
    }

    /// What the host offers a signed skill: `workspace` (seen by the guest
    /// as `.`), read-only unless --workspace-write, the environment values
    /// the operator passes, and the limit ceiling.
    ///
    /// Read-only by default because the workspace holds
    /// `.coderClaw/security.yaml`: a skill that could write it could
    /// rewrite the policy that decides its next run.
    pub(crate) fn offer(&self, workspace: &Path, env: BTreeMap<String, String>, ceiling: Limits) -> Offer {
        let access = if self.workspace_write { Access::ReadWrite } else { Access::Read };
        let workspace = OfferedDir { host: workspace.to_path_buf(), guest: ".".into(), access };
        Offer { dirs: BTreeMap::from([("workspace".to_owned(), workspace)]), env, ceiling }
    }
}

impl GrantArgs {
    /// The limit ceiling: the host maxima, lowered by the flags given.
    pub(crate) fn ceiling(&self) -> Limits {
        Limits {
            memory_bytes: self.memory.unwrap_or(HOST_MAX.memory_bytes).min(HOST_MAX.memory_bytes),
            timeout: self.timeout.unwrap_or(HOST_MAX.timeout).min(HOST_MAX.timeout),
            shell_timeout: self.shell_timeout.unwrap_or(HOST_MAX.shell_timeout).min(HOST_MAX.shell_timeout),
            shell_output_bytes: HOST_MAX.shell_output_bytes,
        }
    }

    /// Whether any capability flag (not a limit) was given.
    pub(crate) fn any_capability(&self) -> bool {
        !(self.read.is_empty() && self.write.is_empty() && self.http.is_empty() && self.shell.is_empty())
    }

    /// The values of the --allow-env variables, read from this process.
    pub(crate) fn env_values(&self) -> Result<BTreeMap<String, String>> {
        self.env
            .iter()
            .map(|name| {
                let value = std::env::var(name).with_context(|| {
                    format!("cannot pass environment variable {name}: it is not set (or not UTF-8) here")
                })?;
                Ok((name.clone(), value))
            })
            .collect()
    }

    /// For an unsigned development run the flags are the request: a
    /// manifest asking for exactly them, and an offer of exactly them.
    pub(crate) fn as_request(&self, id: &str, kind: Kind, skills: &[String]) -> Result<(Manifest, Offer)> {
        let mut caps = Capabilities::default();
        let mut offer = Offer { env: self.env_values()?, ceiling: self.ceiling(), ..Offer::default() };
        let dirs = self.read.iter().map(|s| (s, Access::Read)).chain(self.write.iter().map(|s| (s, Access::ReadWrite)));
        for (i, (spec, access)) in dirs.enumerate() {
            let (host, guest) = spec.split_once("::").unwrap_or((spec, spec));
            if !Path::new(host).is_dir() {
                bail!("cannot grant {host:?}: it is not an existing directory");
            }
            let name = format!("arg{i}");
            caps.fs.insert(FsRequest { path: name.clone(), access });
            offer.dirs.insert(name, OfferedDir { host: host.into(), guest: guest.to_owned(), access });
        }
        for pattern in &self.http {
            caps.http.insert(HostPattern::parse(pattern)?);
        }
        caps.env = self.env.iter().cloned().collect();
        caps.shell = self.shell.iter().cloned().collect();
        for s in skills {
            caps.skills.insert(SkillId::parse(s).map_err(|e| anyhow::anyhow!("--with-skill: {e}"))?);
        }
        let limits = RequestedLimits {
            memory: Some(Size(offer.ceiling.memory_bytes.min(self.memory.unwrap_or(Limits::DEFAULT_MEMORY_BYTES)))),
            timeout: Some(Millis(self.timeout.unwrap_or(Limits::DEFAULT_TIMEOUT).as_millis() as u64)),
        };
        let manifest = Manifest {
            id: SkillId::parse(id).map_err(|e| anyhow::anyhow!("{e}"))?,
            version: semver::Version::new(0, 0, 0),
            kind,
            description: "unsigned development build".into(),
            // A shell request makes the run dangerous in the decision itself.
            dangerous: false,
            resumable: false,
            input_schema: serde_json::json!({ "type": "object" }),
            output_schema: None,
            capabilities: caps,
            limits,
        };
        Ok((manifest, offer))
    }
}
