//! The security model wired to the state directory: policy files loaded
//! (keeping the last good version of a broken file), identities
//! authenticated into a [`Subject`], and every decision made by the pure
//! [`coderclaw_core::decision`] function and recorded in the audit log.
//!
//! Files:
//!
//! ```text
//! <state>/config.yaml                    security configuration (optional)
//! <state>/org-policy.yaml                organisation policy (optional)
//! <workspace>/.coderClaw/security.yaml   repository policy (optional)
//! <state>/policy/last-good/              last good copy of each policy file
//! <state>/device.key                     this machine's device key (0600)
//! <state>/identity.db                    users, tokens, devices, sessions
//! ```
//!
//! Without a session token the local OS user acts with
//! `security.defaultRoles` on this machine's device, unless
//! `security.requireAuth` is on.

use crate::audit::{AuditEvent, AuditResult};
use crate::home::Home;
use crate::identity::{Device, IdentityError, IdentityStore};
pub use crate::install::{InstallGates, Installed};
use crate::oidc::{OidcError, OidcVerifier};
use coderclaw_core::Digest;
use coderclaw_core::TrustLevel;
use coderclaw_core::decision::{Policies, Subject};
use coderclaw_core::keys::{KeyError, SecretKey};
use coderclaw_core::policy::{OrgPolicy, PolicyError, RepoPolicy, SecurityConfig};
use coderclaw_core::rbac::Roles;
use serde_json::json;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// A security failure: a refusal, or a setup problem that stops the host.
#[derive(Debug, Error)]
pub enum SecurityError {
    /// A policy file is broken and there is no last good version to keep.
    #[error("{0}\n(no earlier good version of this file is known, so nothing runs until it is fixed)")]
    Policy(PolicyError),
    /// Identity storage or authentication.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// OIDC validation.
    #[error(transparent)]
    Oidc(#[from] OidcError),
    /// Refused, with every reason.
    #[error("denied: {0}")]
    Denied(String),
    /// The device key.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A role the configuration does not define.
    #[error(transparent)]
    Role(#[from] coderclaw_core::rbac::RbacError),
    /// The audit log could not record the action; it was not done.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// The state directory.
    #[error(transparent)]
    Home(#[from] crate::home::HomeError),
    /// A file in the state directory.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The device id decisions see for a caller on another machine.
pub const REMOTE_DEVICE: &str = "remote-peer";

/// The organisation policies that configured registries distributed and
/// this client cached (`coderclaw registry sync`), each verified again
/// against the admin keys in `registries.<name>.namespace-keys`. A cached
/// policy that fails verification stops the host: running without a
/// policy the team set would fail open.
fn registry_org_policies(state: &Path, config: &SecurityConfig) -> Result<Vec<(PathBuf, OrgPolicy)>, SecurityError> {
    let cache = coderclaw_registry::cache::ClientCache::new(state);
    let mut out = Vec::new();
    for (name, entry) in &config.registries {
        for (namespace, keys) in entry.admin_keys() {
            let file = PathBuf::from(format!("registry {name}, namespace {namespace}"));
            let refuse = |message: String| {
                SecurityError::Denied(format!(
                    "the cached organisation policy of `{namespace}` from registry {name} {message}: \
                     run `coderclaw registry sync --registry {name}` to fetch it again"
                ))
            };
            let Some(doc) = cache.policy(name, namespace).map_err(|e| refuse(format!("cannot be read ({e})")))? else {
                continue;
            };
            let policy = doc.verify(namespace, &keys).map_err(|e| refuse(format!("is refused ({e})")))?;
            out.push((file, policy.clone()));
        }
    }
    Ok(out)
}

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

impl PolicySet {
    /// The policies as the decision function takes them.
    pub fn policies(&self) -> Policies<'_> {
        Policies { config: &self.config, roles: &self.roles, repo: &self.repo, org: &self.org }
    }
}

/// The security model bound to one state directory and workspace.
pub struct Security {
    pub(crate) home: Arc<Home>,
    pub(crate) identity: IdentityStore,
    pub(crate) policy: PolicySet,
    pub(crate) local_device: Device,
    pub(crate) actor: String,
    /// The workspace whose policy was loaded: where permission checks of a
    /// scoped session are judged.
    pub(crate) workspace: Option<PathBuf>,
    /// One verifier, so a long-lived host fetches each issuer's keys once.
    pub(crate) oidc: OidcVerifier,
}

impl Security {
    /// Loads the configuration, the organisation policy and the policy of
    /// `workspace` (if any), and registers this machine's device.
    pub fn open(home: Arc<Home>, workspace: Option<&Path>) -> Result<Security, SecurityError> {
        let actor = crate::home::local_user();
        let mut loader = Loader { home: &home, actor: &actor, sources: Vec::new() };
        let (config, roles) = loader
            .load(&home.root().join("config.yaml"), SecurityConfig::from_yaml)?
            .unwrap_or_else(|| (SecurityConfig::default(), Roles::resolve(&Default::default()).expect("built-ins")));
        let mut org = loader.load(&home.root().join("org-policy.yaml"), OrgPolicy::from_yaml)?.unwrap_or_default();
        for (file, policy) in registry_org_policies(home.root(), &config)? {
            org.merge(&policy);
            loader.sources.push(PolicySource { file, status: "loaded", problem: None });
        }
        let repo = match workspace {
            Some(w) => loader
                .load(&w.join(".coderClaw").join("security.yaml"), |t, f| RepoPolicy::from_yaml(t, f, &roles))?
                .unwrap_or_default(),
            None => RepoPolicy::default(),
        };
        let policy = PolicySet { config, roles, org, repo, sources: loader.sources };
        let identity = IdentityStore::open(home.root())?;
        let local_device = local_device(&home, &identity)?;
        let ident = &policy.config.identity;
        let oidc = OidcVerifier::new(ident.oidc.clone(), ident.providers.clone());
        let workspace = workspace.map(Path::to_path_buf);
        Ok(Security { home, identity, policy, local_device, actor, workspace, oidc })
    }

    /// The state directory.
    pub fn home(&self) -> &Home {
        &self.home
    }

    /// The state directory, shared (for a runtime assembled over this service).
    pub fn shared_home(&self) -> &Arc<Home> {
        &self.home
    }

    /// The workspace whose repository policy is in force, if any.
    pub fn workspace(&self) -> Option<&Path> {
        self.workspace.as_deref()
    }

    /// The policies in force.
    pub fn policy(&self) -> &PolicySet {
        &self.policy
    }

    /// The raw identity store. Reads and writes here skip the permission
    /// checks and the audit log that the administration calls (`add_user`,
    /// `create_token`, ...) make: for seeding a test or a tool that has
    /// already checked.
    pub fn dangerous_identity_store(&self) -> &IdentityStore {
        &self.identity
    }

    /// This machine's device, with its effective trust.
    pub fn local_device(&self) -> Device {
        let mut d = self.local_device.clone();
        d.trust = self.effective_trust(&d);
        d
    }

    /// A device's trust as decisions see it: `autoTrustLocal` makes the
    /// local device `trusted` whatever is stored.
    pub fn effective_trust(&self, device: &Device) -> TrustLevel {
        if device.local && self.policy.config.device_trust.auto_trust_local {
            TrustLevel::Trusted
        } else {
            device.trust
        }
    }

    pub(crate) fn audit(&self, event: AuditEvent) -> Result<(), SecurityError> {
        self.home.audit().append(event)?;
        Ok(())
    }

    pub(crate) fn event(&self, action: &str, result: AuditResult, s: &Subject, kind: &str, id: &str) -> AuditEvent {
        let mut e = AuditEvent::new(action, result, kind, id).user(&s.user).device(&s.device);
        if let Some(session) = &s.session {
            e = e.session(&session.id);
        }
        e
    }

    /// Records an action `by` did after its permission check passed (user
    /// and token changes, answers to waiting tasks).
    pub fn audit_done(
        &self,
        by: &Subject,
        action: &str,
        resource: (&str, &str),
        reason: &str,
    ) -> Result<(), SecurityError> {
        self.audit(self.event(action, AuditResult::Allowed, by, resource.0, resource.1).reason(reason))
    }

    /// Records an action refused outside the decision function (a package
    /// from a registry that failed its checks, a capability increase not
    /// accepted).
    pub fn audit_refused(
        &self,
        by: &Subject,
        action: &str,
        resource: (&str, &str),
        reason: &str,
    ) -> Result<(), SecurityError> {
        self.audit(self.event(action, AuditResult::Denied, by, resource.0, resource.1).reason(reason))
    }
}

/// A local credential.
#[derive(Clone, Copy)]
pub enum LocalSecret<'a> {
    /// A password.
    Password(&'a str),
    /// A locally issued API token.
    Token(&'a str),
}

/// This machine's device: its key is created on first use.
fn local_device(home: &Home, identity: &IdentityStore) -> Result<Device, SecurityError> {
    let path = home.root().join("device.key");
    let key = match SecretKey::read(&path) {
        Ok(k) => k,
        Err(KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            let k = SecretKey::generate()?;
            k.write_new(&path)?;
            k
        }
        Err(e) => return Err(e.into()),
    };
    let public = key.public();
    // Known already on every command but the first: a read, no write lock.
    if let Ok(known) = identity.device(public.id().as_str()) {
        return Ok(known);
    }
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".into());
    Ok(identity.register_device(public.id().as_str(), &name, &public.to_string(), true)?)
}

/// Loads policy files, keeping the last good version of a broken one.
struct Loader<'a> {
    home: &'a Home,
    actor: &'a str,
    sources: Vec<PolicySource>,
}

impl Loader<'_> {
    fn load<T>(
        &mut self,
        file: &Path,
        parse: impl Fn(&str, &str) -> Result<T, PolicyError>,
    ) -> Result<Option<T>, SecurityError> {
        let shown = file.display().to_string();
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.sources.push(PolicySource { file: file.into(), status: "absent", problem: None });
                return Ok(None);
            }
            Err(source) => return Err(SecurityError::Io { path: file.into(), source }),
        };
        let digest = Digest::of(text.as_bytes()).to_hex();
        let dir = self.home.root().join("policy").join("last-good");
        let keep = dir.join(format!("{}.yaml", &Digest::of(shown.as_bytes()).to_hex()[..16]));
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
                    Some(v) => {
                        tracing::warn!("policy file {shown} is invalid ({problem}); using its last good version");
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

fn save_last_good(dir: &Path, file: &Path, text: &str) -> Result<(), SecurityError> {
    let io = |source| SecurityError::Io { path: file.to_path_buf(), source };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
    // A crash never leaves a half-written "good" copy.
    coderclaw_core::fsutil::write_durably_with_mode(file, text.as_bytes(), 0o600).map_err(io)
}
