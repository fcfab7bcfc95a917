//! The policy files in force: the security configuration, the
//! organisation policy (local file and the signed ones registries
//! distributed), and the repository policy. A broken file keeps its last
//! good version (audited); with none, nothing runs.
//!
//! ```text
//! <state>/config.yaml                    security configuration (optional)
//! <state>/org-policy.yaml                organisation policy (optional)
//! <workspace>/.coderClaw/security.yaml   repository policy (optional)
//! <state>/policy/last-good/              last good copy of each policy file
//! ```

use crate::audit::{AuditEvent, AuditResult};
use crate::home::Home;
use crate::security::SecurityError;
use coderclaw_core::Digest;
use coderclaw_core::decision::Policies;
use coderclaw_core::fsutil::{FileIdentity, FinalLink, MAX_CONFIG_BYTES, read_text_bounded};
use coderclaw_core::policy::{BrokenPolicy, OrgPolicy, PolicyError, RepoPolicy, SecurityConfig};
use coderclaw_core::rbac::Roles;
use serde_json::json;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// How one policy file was loaded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PolicySource {
    /// The file.
    pub file: PathBuf,
    /// `loaded`, `absent` or `kept-last-good`.
    pub status: &'static str,
    /// Why the last good version was kept.
    pub problem: Option<String>,
}

/// The policies in force.
#[derive(Debug, Clone)]
pub struct PolicySet {
    /// Security configuration.
    pub config: SecurityConfig,
    /// Its roles, resolved.
    pub roles: Roles,
    /// Organisation policy.
    pub org: OrgPolicy,
    /// Repository policy.
    pub repo: RepoPolicy,
    /// Where each came from.
    pub sources: Vec<PolicySource>,
}

/// Every file a load read (or found absent), as it was when read: what
/// tells whether the answer of that load still holds.
#[derive(Debug, Clone, Default)]
pub(crate) struct Watchlist {
    files: Vec<Watched>,
    /// A file kept changing while it was read: look again next time.
    unsettled: bool,
}

impl Watchlist {
    /// Whether any file has been written, replaced, created or removed
    /// since: one `stat` per file, no read.
    pub(crate) fn is_stale(&self) -> bool {
        self.unsettled || self.files.iter().any(|w| FileIdentity::at(&w.file, w.link) != w.seen)
    }
}

/// One file a policy set depends on.
#[derive(Debug, Clone)]
struct Watched {
    file: PathBuf,
    link: FinalLink,
    seen: Option<FileIdentity>,
}

impl PolicySet {
    /// The policies as the decision function takes them.
    pub fn policies(&self) -> Policies<'_> {
        Policies { config: &self.config, roles: &self.roles, repo: &self.repo, org: &self.org }
    }
}

/// Loads the configuration, the organisation policies and the policy of
/// `workspace` (if any), as `actor` for the audit log; with the files the
/// answer (a set, or why there is none) depends on.
pub(crate) fn load(
    home: &Home,
    actor: &str,
    workspace: Option<&Path>,
) -> (Result<PolicySet, SecurityError>, Watchlist) {
    let mut loader = Loader { home, actor, sources: Vec::new(), watched: Watchlist::default(), deny_broken: false };
    let set = load_with(&mut loader, workspace);
    (set, loader.watched)
}

fn load_with(loader: &mut Loader<'_>, workspace: Option<&Path>) -> Result<PolicySet, SecurityError> {
    let home = loader.home;
    let (config, roles) = loader
        .load(&home.root().join("config.yaml"), FinalLink::Follow, SecurityConfig::from_yaml)?
        .unwrap_or_else(|| (SecurityConfig::default(), Roles::resolve(&Default::default()).expect("built-ins")));
    loader.deny_broken = config.security.broken_policy == BrokenPolicy::Deny;
    // A broken config.yaml whose last good version says `deny` stops here.
    if loader.deny_broken
        && let Some(broken) = loader.sources.iter().find(|s| s.status == "kept-last-good")
    {
        return Err(broken_denied(broken));
    }
    let mut org =
        loader.load(&home.root().join("org-policy.yaml"), FinalLink::Follow, OrgPolicy::from_yaml)?.unwrap_or_default();
    for (file, policy) in registry_org_policies(home, &config, &mut loader.watched.files)? {
        org.merge(&policy);
        loader.sources.push(PolicySource { file, status: "loaded", problem: None });
    }
    let repo = match workspace {
        Some(w) => loader
            .load(&w.join(".coderClaw").join("security.yaml"), FinalLink::Refuse, |t, f| {
                RepoPolicy::from_yaml(t, f, &roles)
            })?
            .unwrap_or_default(),
        None => RepoPolicy::default(),
    };
    Ok(PolicySet { config, roles, org, repo, sources: std::mem::take(&mut loader.sources) })
}

/// The organisation policies that configured registries distributed and
/// this client cached (`coderclaw registry sync`), each verified again
/// against the admin keys in `registries.<name>.namespace-keys`. A cached
/// policy that fails verification stops the host: running without a
/// policy the team set would fail open. So does one that was enforced
/// before and is gone now (a deleted state file).
fn registry_org_policies(
    home: &Home,
    config: &SecurityConfig,
    watched: &mut Vec<Watched>,
) -> Result<Vec<(PathBuf, OrgPolicy)>, SecurityError> {
    let cache = coderclaw_registry::cache::ClientCache::new(home.root());
    let mut out = Vec::new();
    for (name, entry) in &config.registries {
        for (namespace, keys) in entry.admin_keys() {
            for file in cache.policy_files(name, namespace) {
                watched.push(Watched::now(file, FinalLink::Follow));
            }
            let file = PathBuf::from(format!("registry {name}, namespace {namespace}"));
            let refuse = |problem: String| SecurityError::CachedPolicy {
                registry: name.clone(),
                namespace: namespace.to_owned(),
                problem,
            };
            let Some(doc) = cache.policy(name, namespace).map_err(|e| refuse(format!("cannot be read ({e})")))? else {
                if let Some(serial) = home.org_policy_seen(name, namespace)? {
                    return Err(refuse(format!(
                        "was enforced here before (serial {serial}) and its stored copy is gone; \
                         nothing runs without it"
                    )));
                }
                continue;
            };
            let policy = doc.verify(namespace, &keys).map_err(|e| refuse(format!("is refused ({e})")))?;
            if home.org_policy_seen(name, namespace)?.is_none_or(|s| s < doc.serial) {
                home.record_org_policy_seen(name, namespace, doc.serial)?;
            }
            out.push((file, policy.clone()));
        }
    }
    Ok(out)
}

/// Loads policy files, keeping the last good version of a broken one.
struct Loader<'a> {
    home: &'a Home,
    actor: &'a str,
    sources: Vec<PolicySource>,
    watched: Watchlist,
    /// `security.brokenPolicy: deny`: a broken file stops everything.
    deny_broken: bool,
}

impl Watched {
    fn now(file: PathBuf, link: FinalLink) -> Watched {
        let seen = FileIdentity::at(&file, link);
        Watched { file, link, seen }
    }
}

/// Reads of a file that changes while being read, before giving up.
const SETTLE_ATTEMPTS: usize = 3;

/// How long an emptied policy file is given to be written before it is
/// read again.
const EMPTIED_SETTLE: std::time::Duration = std::time::Duration::from_millis(25);

impl Loader<'_> {
    /// The text of `file` (`None` when absent), read while it did not
    /// change: its identity is the same before and after the read, and that
    /// identity is what the watchlist holds.
    ///
    /// An edit that truncates and then writes (`>`, most editors) can be
    /// read in between, and an empty file is all defaults: when the file
    /// `held` a policy before, an empty read is taken only once it stays
    /// empty [`EMPTIED_SETTLE`] later.
    fn read_settled(&mut self, file: &Path, link: FinalLink, held: bool) -> Result<Option<String>, SecurityError> {
        let mut waited = false;
        for _ in 0..SETTLE_ATTEMPTS {
            let before = Watched::now(file.to_path_buf(), link);
            let text = match read_text_bounded(file, MAX_CONFIG_BYTES, link) {
                Ok(t) => Some(t),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(source) => {
                    self.watched.files.push(before);
                    return Err(SecurityError::Io { path: file.into(), source });
                }
            };
            if FileIdentity::at(file, link) != before.seen {
                continue;
            }
            if held && !waited && text.as_deref().is_some_and(|t| t.trim().is_empty()) {
                waited = true;
                std::thread::sleep(EMPTIED_SETTLE);
                continue;
            }
            self.watched.files.push(before);
            return Ok(text);
        }
        self.watched.unsettled = true;
        let source = std::io::Error::other(format!("it kept changing while being read ({SETTLE_ATTEMPTS} tries)"));
        Err(SecurityError::Io { path: file.into(), source })
    }

    fn load<T>(
        &mut self,
        file: &Path,
        link: FinalLink,
        parse: impl Fn(&str, &str) -> Result<T, PolicyError>,
    ) -> Result<Option<T>, SecurityError> {
        let shown = file.display().to_string();
        let dir = self.home.root().join("policy").join("last-good");
        let keep = dir.join(format!("{}.yaml", &Digest::of(shown.as_bytes()).to_hex()[..16]));
        let held = std::fs::read_to_string(&keep).is_ok_and(|t| !t.trim().is_empty());
        let Some(text) = self.read_settled(file, link, held)? else {
            self.sources.push(PolicySource { file: file.into(), status: "absent", problem: None });
            return Ok(None);
        };
        let digest = Digest::of(text.as_bytes()).to_hex();
        match parse(&text, &shown) {
            Ok(v) => {
                let previous = std::fs::read(&keep).ok().map(|b| Digest::of(&b).to_hex());
                if previous.as_deref() != Some(digest.as_str()) {
                    save_last_good(&dir, &keep, &text)?;
                    self.home.audit().append(
                        AuditEvent::new("policy.load", AuditResult::Allowed, "policy", &shown)
                            .user(self.actor)
                            .reason("new policy version loaded")
                            .metadata(json!({ "sha256": digest })),
                    )?;
                }
                self.sources.push(PolicySource { file: file.into(), status: "loaded", problem: None });
                Ok(Some(v))
            }
            Err(problem) => {
                let kept = std::fs::read_to_string(&keep).ok().and_then(|t| parse(&t, &shown).ok());
                let reason = match kept {
                    Some(_) if self.deny_broken => format!("{problem}; security.brokenPolicy is deny: refusing to run"),
                    Some(_) => format!("{problem}; keeping the last good version"),
                    None => format!("{problem}; no last good version: refusing to run"),
                };
                self.home.audit().append(
                    AuditEvent::new("policy.load", AuditResult::Error, "policy", &shown)
                        .user(self.actor)
                        .reason(&reason)
                        .metadata(json!({ "sha256": digest })),
                )?;
                match kept {
                    Some(_) if self.deny_broken => {
                        let source = PolicySource {
                            file: file.into(),
                            status: "kept-last-good",
                            problem: Some(problem.to_string()),
                        };
                        Err(broken_denied(&source))
                    }
                    Some(v) => {
                        // Callers say so where their users look (every CLI run, `status`).
                        tracing::info!("policy file {shown} is invalid ({problem}); using its last good version");
                        self.sources.push(PolicySource {
                            file: file.into(),
                            status: "kept-last-good",
                            problem: Some(problem.to_string()),
                        });
                        Ok(Some(v))
                    }
                    None => Err(SecurityError::Policy(problem)),
                }
            }
        }
    }
}

/// The refusal of `security.brokenPolicy: deny` for a broken file.
fn broken_denied(source: &PolicySource) -> SecurityError {
    SecurityError::Denied(format!(
        "policy file {} is invalid ({}) and security.brokenPolicy is deny: nothing runs until it is fixed",
        source.file.display(),
        source.problem.as_deref().unwrap_or("it does not parse")
    ))
}

fn save_last_good(dir: &Path, file: &Path, text: &str) -> Result<(), SecurityError> {
    let io = |source| SecurityError::Io { path: file.to_path_buf(), source };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
    // A crash never leaves a half-written "good" copy.
    coderclaw_core::fsutil::write_durably_with_mode(file, text.as_bytes(), 0o600).map_err(io)
}
