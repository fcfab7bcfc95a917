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
use crate::identity::{Device, IdentityError, IdentityStore, Session};
use crate::oidc::{OidcError, OidcVerifier};
use coderclaw_core::Digest;
use coderclaw_core::TrustLevel;
use coderclaw_core::clock::now_ms;
use coderclaw_core::decision::{
    self, Action, Decision, DecisionInput, Offer, Policies, Subject, Target, check_permission,
};
use coderclaw_core::keys::{KeyError, SecretKey};
use coderclaw_core::package::{Package, VerifiedPackage};
use coderclaw_core::policy::{OrgPolicy, PolicyError, Provider, RepoPolicy, SecurityConfig};
use coderclaw_core::principal::{Origin, Principal, SessionKey};
use coderclaw_core::rbac::{Permission, Roles};
use serde_json::json;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
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

/// What an install may do beyond a fresh install of a newer version.
#[derive(Debug, Clone, Copy, Default)]
pub struct InstallGates {
    /// Accept a version that asks for more capabilities than the installed one.
    pub accept_capabilities: bool,
    /// Allow an older version than the installed one.
    pub allow_downgrade: bool,
}

/// What an install did.
#[derive(Debug, Clone)]
pub struct Installed {
    /// The installed skill.
    pub skill: crate::home::InstalledSkill,
    /// The capability increase accepted with `accept_capabilities` (empty if none).
    pub accepted_capabilities: Vec<String>,
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
    home: Arc<Home>,
    pub(crate) identity: IdentityStore,
    policy: PolicySet,
    local_device: Device,
    actor: String,
    /// The workspace whose policy was loaded: where permission checks of a
    /// scoped session are judged.
    workspace: Option<PathBuf>,
    /// One verifier, so a long-lived host fetches each issuer's keys once.
    oidc: OidcVerifier,
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

    /// Who is acting: the holder of `session_token`, or (without one and
    /// unless `requireAuth` is on) the local OS user with `defaultRoles`.
    /// Unknown, expired and revoked sessions are refused and audited.
    pub fn subject(&self, session_token: Option<&str>) -> Result<Subject, SecurityError> {
        let Some(token) = session_token else {
            if self.policy.config.security.require_auth {
                let reason = "security.requireAuth is on and no session token was given";
                self.audit(
                    AuditEvent::new("auth.session", AuditResult::Denied, "session", "-")
                        .user(&self.actor)
                        .device(&self.local_device.id)
                        .reason(reason),
                )?;
                return Err(SecurityError::Denied(format!(
                    "{reason}: log in with `coderclaw login` and pass --session or CODERCLAW_SESSION"
                )));
            }
            return Ok(Subject {
                user: self.actor.clone(),
                roles: self.policy.config.security.default_roles.clone(),
                device: self.local_device.id.clone(),
                device_trust: self.effective_trust(&self.local_device),
                session: None,
                origin: Origin::Local,
            });
        };
        let session = match self.identity.session_by_token(token) {
            Ok(s) => s,
            Err(e) => {
                self.audit(
                    AuditEvent::new("auth.session", AuditResult::Denied, "session", "-")
                        .device(&self.local_device.id)
                        .reason(format!("unknown or forged session token: {e}")),
                )?;
                return Err(e.into());
            }
        };
        self.session_subject(session)
    }

    /// Who a task submitted by `subject` acts for: its session (or the
    /// session-less local user) and where it came from.
    pub fn principal(subject: &Subject) -> Principal {
        let key = match &subject.session {
            Some(s) => SessionKey::Session(s.id.clone()),
            None => SessionKey::Local(subject.user.clone()),
        };
        Principal { key, origin: subject.origin }
    }

    /// `subject` acting from another machine over the network: the device
    /// it uses is unknown (a session token proves the user, not the
    /// machine), so it counts as an `untrusted` device, whatever device the
    /// session was created on and whatever `autoTrustLocal` says.
    pub fn as_remote(mut subject: Subject) -> Subject {
        subject.origin = Origin::Remote;
        subject.device = REMOTE_DEVICE.to_owned();
        subject.device_trust = TrustLevel::Untrusted;
        subject
    }

    /// Who acts for a task now: the subject behind `principal`, checked
    /// again (a session revoked or expired since submission is refused and
    /// audited; a local principal needs `requireAuth` off and the same local
    /// user), and [`Security::as_remote`] when the task came from another
    /// machine.
    pub fn revalidate(&self, principal: &Principal) -> Result<Subject, SecurityError> {
        let subject = match &principal.key {
            SessionKey::Local(user) => {
                let subject = self.subject(None)?;
                if &subject.user != user {
                    return Err(SecurityError::Denied(format!(
                        "the task was submitted by local user {user}, not {}",
                        subject.user
                    )));
                }
                subject
            }
            SessionKey::Session(id) => self.session_subject(self.identity.session(id)?)?,
        };
        Ok(if principal.is_remote() { Self::as_remote(subject) } else { subject })
    }

    fn session_subject(&self, session: Session) -> Result<Subject, SecurityError> {
        let problem = match session.state(now_ms()) {
            "revoked" => Some("the session was revoked"),
            "expired" => Some("the session has expired"),
            _ => None,
        };
        if let Some(problem) = problem {
            self.audit(
                AuditEvent::new("auth.session", AuditResult::Denied, "session", &session.id)
                    .user(&session.user)
                    .device(&session.device)
                    .session(&session.id)
                    .reason(problem),
            )?;
            return Err(SecurityError::Denied(format!("{problem}: log in again with `coderclaw login`")));
        }
        let device = self.identity.device(&session.device)?;
        Ok(Subject {
            user: session.user.clone(),
            roles: session.roles.clone(),
            device: device.id.clone(),
            device_trust: self.effective_trust(&device),
            session: Some(session.facts()),
            origin: Origin::Local,
        })
    }

    /// Decides a run (or a nested invocation) and records the decision.
    pub fn decide(
        &self,
        subject: &Subject,
        target: Target<'_>,
        action: Action,
        workspace: Option<&Path>,
        offer: &Offer,
    ) -> Result<Decision, SecurityError> {
        let d = decision::decide(&DecisionInput {
            subject,
            target,
            action: action.clone(),
            workspace,
            policies: self.policy.policies(),
            offer,
            now_ms: now_ms(),
        });
        let (name, parent) = match (&action, target.kind) {
            (Action::Nested { parent }, _) => ("skill.invoke", Some(parent.as_str())),
            (Action::Run, coderclaw_core::manifest::Kind::Agent) => ("agent.invoke", None),
            (Action::Run, coderclaw_core::manifest::Kind::Skill) => ("skill.execute", None),
        };
        let result = if d.allowed { AuditResult::Allowed } else { AuditResult::Denied };
        let reason = if d.allowed { "allowed by policy".to_owned() } else { d.reasons_text() };
        let metadata = json!({
            "parent": parent,
            "reasons": d.reasons.iter().map(|r| r.code).collect::<Vec<_>>(),
            "grant": decision::grant_json(&d.grant),
            "narrowed": d.narrowed,
            "device_trust": subject.device_trust,
            "roles": subject.roles,
        });
        self.audit(self.event(name, result, subject, "skill", target.id).reason(reason).metadata(metadata))?;
        Ok(d)
    }

    /// Checks a permission for an action on a resource and records it.
    pub fn require(
        &self,
        subject: &Subject,
        permission: Permission,
        action: &str,
        resource: (&str, &str),
    ) -> Result<(), SecurityError> {
        self.check(subject, permission, action, resource, true)
    }

    /// Checks a permission for work in this workspace. Refusals are always
    /// recorded; grants only with `audit_allowed` (reads skip it).
    pub fn check(
        &self,
        subject: &Subject,
        permission: Permission,
        action: &str,
        resource: (&str, &str),
        audit_allowed: bool,
    ) -> Result<(), SecurityError> {
        let d = check_permission(subject, permission, self.workspace.as_deref(), self.policy.policies(), now_ms());
        if d.allowed && !audit_allowed {
            return Ok(());
        }
        let result = if d.allowed { AuditResult::Allowed } else { AuditResult::Denied };
        let reason = if d.allowed { format!("{permission} granted") } else { d.reasons_text() };
        self.audit(self.event(action, result, subject, resource.0, resource.1).reason(&reason))?;
        if d.allowed { Ok(()) } else { Err(SecurityError::Denied(reason)) }
    }

    /// Managing the state directory (trust store, installs, keys, users,
    /// devices): needs `permission` in a session, except for the
    /// session-less owner of the state directory while `requireAuth` is off
    /// — they can edit its files directly, so refusing them would protect
    /// nothing. With `requireAuth` on, everyone needs a session.
    pub fn require_owner_or(
        &self,
        subject: &Subject,
        permission: Permission,
        action: &str,
        resource: (&str, &str),
    ) -> Result<(), SecurityError> {
        if subject.session.is_none() && !self.policy.config.security.require_auth {
            return Ok(());
        }
        self.require(subject, permission, action, resource)
    }

    /// [`Security::require_owner_or`] with `admin:all` (users, devices, sessions).
    pub fn require_admin(&self, subject: &Subject, action: &str, resource: (&str, &str)) -> Result<(), SecurityError> {
        self.require_owner_or(subject, Permission::AdminAll, action, resource)
    }

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
            let refuse = |reason: String| -> Result<Installed, SecurityError> {
                self.audit_refused(by, "skill.install", ("skill", id), &reason)?;
                Err(SecurityError::Denied(reason))
            };
            let older = current.version > m.version;
            if older && !gates.allow_downgrade {
                return refuse(format!(
                    "{id} {} is installed; {} is older, and moving back is a rollback: refused (--allow-downgrade to do it on purpose)",
                    current.version, m.version
                ));
            }
            let diff = m.capability_increase(&current.manifest);
            if !diff.is_empty() && !gates.accept_capabilities {
                let shown: String = diff.iter().map(|d| format!("\n  + {d}")).collect();
                return refuse(format!(
                    "{id} {} asks for more than the installed {}:{shown}\nnothing was installed: review the change and pass --accept-capabilities to accept it",
                    m.version, current.version
                ));
            }
            accepted = diff;
        }
        let skill = self.home.install_verified(verified, bytes)?;
        Ok(Installed { skill, accepted_capabilities: accepted })
    }

    /// Refuses, and audits, `action` on a skill the organisation denies.
    pub fn check_not_denied(&self, by: &Subject, action: &str, id: &str) -> Result<(), SecurityError> {
        if let Some(d) = self.policy.org.denies(id) {
            let reason = format!("{id} is denied by the organisation policy (deniedSkills: {d})");
            self.audit_refused(by, action, ("skill", id), &reason)?;
            return Err(SecurityError::Denied(reason));
        }
        Ok(())
    }

    /// The organisation's `requiredSkills` entries no installed skill satisfies.
    pub fn missing_required_skills(&self) -> Result<Vec<String>, SecurityError> {
        let installed = self.home.installed()?;
        let org = &self.policy.org;
        Ok(org
            .required_skills
            .iter()
            .filter(|r| !installed.iter().any(|i| coderclaw_core::policy::id_matches(r, &i.id)))
            .cloned()
            .collect())
    }

    /// Uninstalls a skill, refusing one the organisation policy requires.
    pub fn remove_skill(&self, by: &Subject, id: &str) -> Result<crate::home::InstalledSkill, SecurityError> {
        if let Some(r) = self.policy.org.requires(id) {
            let reason = format!("{id} is required by the organisation policy (requiredSkills: {r})");
            self.audit_refused(by, "skill.remove", ("skill", id), &reason)?;
            return Err(SecurityError::Denied(format!("{reason} and cannot be removed")));
        }
        Ok(self.home.remove(id)?)
    }

    pub(crate) fn event(&self, action: &str, result: AuditResult, s: &Subject, kind: &str, id: &str) -> AuditEvent {
        let mut e = AuditEvent::new(action, result, kind, id).user(&s.user).device(&s.device);
        if let Some(session) = &s.session {
            e = e.session(&session.id);
        }
        e
    }

    // --- authentication ---

    fn provider_enabled(&self, p: Provider) -> Result<(), SecurityError> {
        if self.policy.config.identity.providers.contains(&p) {
            Ok(())
        } else {
            Err(SecurityError::Denied(format!(
                "identity provider `{}` is not enabled (identity.providers in config.yaml)",
                p.as_str()
            )))
        }
    }

    /// Logs in with a password or an API token and creates a session on
    /// this machine's device. `roles` narrows the session to some of the
    /// user's roles (default: all of them). Audited, success or not.
    pub fn login_local(
        &self,
        user: &str,
        secret: LocalSecret<'_>,
        roles: Option<&[String]>,
        scope: Option<&Path>,
        ttl: Option<Duration>,
    ) -> Result<(Session, String), SecurityError> {
        let method = match secret {
            LocalSecret::Password(_) => "password",
            LocalSecret::Token(_) => "token",
        };
        let outcome = self.provider_enabled(Provider::Local).and_then(|()| {
            Ok(match secret {
                LocalSecret::Password(p) => self.identity.verify_password(user, p)?,
                LocalSecret::Token(t) => self.identity.verify_token(user, t)?,
            })
        });
        let user_record = match outcome {
            Ok(u) => u,
            Err(e) => {
                self.audit_login(user, method, AuditResult::Denied, &e.to_string(), None)?;
                return Err(e);
            }
        };
        self.start_session(&user_record.name, &user_record.roles, roles, scope, self.session_expiry(ttl), method)
    }

    /// Logs in with an OIDC ID token from a configured issuer.
    pub async fn login_oidc(
        &self,
        id_token: &str,
        roles: Option<&[String]>,
        scope: Option<&Path>,
        ttl: Option<Duration>,
    ) -> Result<(Session, String), SecurityError> {
        let (who, issuer) = match self.oidc.verify(id_token).await {
            Ok(v) => v,
            Err(e) => {
                self.audit_login("-", "oidc", AuditResult::Denied, &e.to_string(), None)?;
                return Err(e.into());
            }
        };
        let held = issuer.roles.clone().unwrap_or_else(|| self.policy.config.security.default_roles.clone());
        // A session never outlives the token it was made from.
        let expires_at_ms = self.session_expiry(ttl).min(who.expires_at_ms);
        self.start_session(&who.user, &held, roles, scope, expires_at_ms, &format!("oidc:{}", who.issuer))
    }

    /// When a session started now with `ttl` (or the configured TTL) ends.
    fn session_expiry(&self, ttl: Option<Duration>) -> u64 {
        let ttl = ttl.map_or(self.policy.config.identity.session_ttl.0, |t| t.as_millis() as u64);
        now_ms().saturating_add(ttl)
    }

    fn start_session(
        &self,
        user: &str,
        held: &[String],
        wanted: Option<&[String]>,
        scope: Option<&Path>,
        expires_at_ms: u64,
        method: &str,
    ) -> Result<(Session, String), SecurityError> {
        let roles = match wanted {
            None => held.to_vec(),
            Some(w) => {
                if let Some(r) = w.iter().find(|r| !held.contains(r)) {
                    let e = IdentityError::RoleNotHeld { user: user.into(), role: r.clone(), held: held.join(", ") };
                    self.audit_login(user, method, AuditResult::Denied, &e.to_string(), None)?;
                    return Err(e.into());
                }
                w.to_vec()
            }
        };
        let (session, token) =
            self.identity.create_session(user, &self.local_device.id, &roles, scope, method, expires_at_ms)?;
        self.audit_login(user, method, AuditResult::Allowed, "session created", Some(&session))?;
        Ok((session, token))
    }

    fn audit_login(
        &self,
        user: &str,
        method: &str,
        result: AuditResult,
        reason: &str,
        session: Option<&Session>,
    ) -> Result<(), SecurityError> {
        let mut e = AuditEvent::new("auth.login", result, "session", session.map_or("-", |s| s.id.as_str()))
            .user(user)
            .device(&self.local_device.id)
            .reason(reason)
            .metadata(json!({
                "method": method,
                "roles": session.map(|s| &s.roles),
                "expires_at_ms": session.map(|s| s.expires_at_ms),
                "scope": session.and_then(|s| s.scope.as_ref()),
            }));
        if let Some(s) = session {
            e = e.session(&s.id);
        }
        self.audit(e)
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
