//! The security model wired to the state directory: the policies in force
//! (`policy_files`), this machine's device (`device`), identities
//! authenticated into a [`Subject`] (`authn`), and every decision made by
//! the pure [`coderclaw_core::decision`] function and recorded in the audit
//! log (`authz`).
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
use crate::identity::{Device, IdentityBackend, IdentityError, IdentityStore};
pub use crate::install::{InstallGate, InstallGates, Installed};
use crate::oidc::{OidcError, OidcVerifier};
pub use crate::policy_files::{PolicySet, PolicySource};
use coderclaw_core::TrustLevel;
use coderclaw_core::decision::Subject;
use coderclaw_core::keys::KeyError;
use coderclaw_core::policy::PolicyError;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// A security failure: a refusal, or a setup problem that stops the host.
#[derive(Debug, Error)]
pub enum SecurityError {
    /// A policy file is broken and there is no last good version to keep.
    #[error("{0}\n(no earlier good version of this file is known, so nothing runs until it is fixed)")]
    Policy(PolicyError),
    /// A policy file changed while running and no policy could be loaded
    /// from it (the first refusal said why in full).
    #[error("denied: no policy in force ({0}); nothing is allowed until the file is fixed")]
    NoPolicy(String),
    /// Identity storage or authentication.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// OIDC validation.
    #[error(transparent)]
    Oidc(#[from] OidcError),
    /// Refused, with every reason.
    #[error("denied: {0}")]
    Denied(String),
    /// An install gate refused the package (the reason lists the change).
    #[error("denied: {reason}")]
    InstallRefused {
        /// Which gate.
        gate: InstallGate,
        /// Why, with the versions and the capability difference.
        reason: String,
    },
    /// A cached organisation policy from a registry cannot be read or no
    /// longer verifies: nothing runs until it is fetched again.
    #[error("denied: the cached organisation policy of `{namespace}` from registry {registry} {problem}")]
    CachedPolicy {
        /// The registry it came from.
        registry: String,
        /// Its namespace.
        namespace: String,
        /// What is wrong with it.
        problem: String,
    },
    /// No valid session where one is needed (none given while
    /// `requireAuth` is on, or revoked or expired).
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
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
    /// Too many failed authentications from this network address.
    #[error("too many failed authentications from this address: further attempts are refused for {retry_after_secs} s")]
    RateLimited {
        /// Seconds until attempts are checked again.
        retry_after_secs: u64,
    },
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

/// The security model bound to one state directory and workspace.
pub struct Security {
    pub(crate) home: Arc<Home>,
    pub(crate) identity: IdentityStore,
    /// The policies in force (or why there are none), read again when one
    /// of their files changes.
    policy: std::sync::RwLock<InForce>,
    /// Held while the policies are read again, so one reload runs at a time.
    policy_reload: std::sync::Mutex<()>,
    pub(crate) local_device: Device,
    pub(crate) actor: String,
    /// The workspace whose policy was loaded: where permission checks of a
    /// scoped session are judged.
    pub(crate) workspace: Option<PathBuf>,
    /// One verifier, so a long-lived host fetches each issuer's keys once;
    /// replaced (keeping the keys) when the configuration changes.
    oidc: std::sync::RwLock<OidcVerifier>,
    /// Failed authentications per network peer.
    pub(crate) throttle: coderclaw_net::throttle::FailureThrottle,
}

impl Security {
    /// Loads the configuration, the organisation policy and the policy of
    /// `workspace` (if any), and registers this machine's device.
    pub fn open(home: Arc<Home>, workspace: Option<&Path>) -> Result<Security, SecurityError> {
        let actor = crate::home::local_user();
        let identity = IdentityStore::open(home.root())?;
        let (local_device, device_key) = crate::device::local_device(&home, &identity)?;
        // The device key signs the audit log's checkpoints; enabled before
        // the policy load so its `policy.*` records are checkpointed too.
        home.audit().enable_checkpoints(device_key, &local_device.id);
        let (policy, watched) = crate::policy_files::load(&home, &actor, workspace);
        let policy = Arc::new(policy?);
        home.audit().set_witness_file(policy.config.audit.witness_file.clone());
        let ident = &policy.config.identity;
        let oidc = std::sync::RwLock::new(OidcVerifier::new(ident.oidc.clone(), ident.providers.clone()));
        let workspace = workspace.map(Path::to_path_buf);
        let throttle = Default::default();
        let in_force = InForce { set: Ok(policy), watched };
        let (policy, policy_reload) = (std::sync::RwLock::new(in_force), Default::default());
        Ok(Security { home, identity, policy, policy_reload, local_device, actor, workspace, oidc, throttle })
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

    /// The policy files in force at their last good version because the
    /// file is broken, one line each; empty when none is (or when no
    /// policy loads at all: that is an error of its own).
    pub fn policy_warnings(&self) -> Vec<String> {
        let Ok(set) = self.policy() else { return Vec::new() };
        set.sources
            .iter()
            .filter(|s| s.status == "kept-last-good")
            .map(|s| {
                format!(
                    "policy file {} is invalid ({}); using its last good version",
                    s.file.display(),
                    s.problem.as_deref().unwrap_or("it does not parse")
                )
            })
            .collect()
    }

    /// The policies in force now. Each call looks at every policy file
    /// (one `stat` each); when one was written, replaced, created or removed
    /// since it was read, all are read again (and a new version audited as at
    /// start), so an edited policy holds from the next task on. A file that
    /// no longer parses keeps its last good version; with none, this is the
    /// error and nothing is allowed until a policy file changes again (the
    /// failure is remembered, so it is read and audited once, not per call).
    pub fn policy(&self) -> Result<Arc<PolicySet>, SecurityError> {
        let current = || {
            let in_force = self.policy.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            (!in_force.watched.is_stale()).then(|| in_force.answer())
        };
        if let Some(answer) = current() {
            return answer;
        }
        let _one = self.policy_reload.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(answer) = current() {
            return answer;
        }
        let _span = tracing::info_span!("policy.reload").entered();
        let (fresh, watched) = crate::policy_files::load(&self.home, &self.actor, self.workspace.as_deref());
        let (set, answer) = match fresh {
            Ok(set) => {
                let set = Arc::new(set);
                self.home.audit().set_witness_file(set.config.audit.witness_file.clone());
                self.oidc_reconfigure(&set);
                (Ok(set.clone()), Ok(set))
            }
            Err(e) => {
                tracing::error!(error = %e, "no policy in force: nothing is allowed until it is fixed");
                (Err(e.to_string()), Err(e))
            }
        };
        *self.policy.write().unwrap_or_else(std::sync::PoisonError::into_inner) = InForce { set, watched };
        answer
    }

    /// The OIDC verifier for the configuration in force.
    pub(crate) fn oidc(&self) -> Result<OidcVerifier, SecurityError> {
        self.policy()?;
        Ok(self.oidc.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
    }

    fn oidc_reconfigure(&self, set: &PolicySet) {
        let mut oidc = self.oidc.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let ident = &set.config.identity;
        *oidc = oidc.reconfigured(ident.oidc.clone(), ident.providers.clone());
    }

    /// From now on, users, tokens, devices and sessions are `shared`'s (a
    /// cluster's database): a session opened on any node is valid on every
    /// node, and revoked on all at once. This machine's device is
    /// registered there (its trust there is the cluster's); only it is
    /// local to this machine.
    pub fn share_identities(&self, shared: Arc<dyn IdentityBackend>) -> Result<(), SecurityError> {
        let d = &self.local_device;
        self.identity.use_backend(shared, &d.id);
        self.identity.register_device(&d.id, &d.name, &d.public_key, true)?;
        Ok(())
    }

    /// Applies the cluster's trust changes (those signed by this machine
    /// or by a machine `cluster.nodeKeys` lists), then its installed skills
    /// (verified against that trust), to this state directory. Returns how
    /// many trust and skill changes were applied; nothing outside a cluster.
    pub fn sync_cluster(&self) -> Result<(usize, usize), SecurityError> {
        let publishers = self.cluster_signers()?;
        let trust = self.home.sync_trust(&publishers)?;
        let skills = self.home.sync_skills()?;
        Ok((trust, skills))
    }

    /// The device key ids a cluster's shared state may be signed by: this
    /// machine's and those `cluster.nodeKeys` in config.yaml lists.
    pub fn cluster_signers(&self) -> Result<Vec<String>, SecurityError> {
        let mut ids = self.policy()?.config.cluster.node_key_ids().map_err(SecurityError::NoPolicy)?;
        ids.push(self.local_device.id.clone());
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// Whether identities are a cluster's (see [`Security::share_identities`]).
    pub fn shares_identities(&self) -> bool {
        self.identity.is_shared()
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
    /// Without a policy in force, nothing is trusted beyond what is stored.
    pub fn effective_trust(&self, device: &Device) -> TrustLevel {
        match self.policy() {
            Ok(policy) => trust_under(&policy, device),
            Err(_) => device.trust,
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
        if let Some(client) = &s.client {
            e = e.metadata(serde_json::json!({ "client": client }));
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

/// The answer of the last policy load, and the files it depends on.
struct InForce {
    /// The policies, or why none could be loaded.
    set: Result<Arc<PolicySet>, String>,
    watched: crate::policy_files::Watchlist,
}

impl InForce {
    fn answer(&self) -> Result<Arc<PolicySet>, SecurityError> {
        self.set.clone().map_err(SecurityError::NoPolicy)
    }
}

/// `device`'s trust under `policy` (see [`Security::effective_trust`]).
pub(crate) fn trust_under(policy: &PolicySet, device: &Device) -> TrustLevel {
    if device.local && policy.config.device_trust.auto_trust_local { TrustLevel::Trusted } else { device.trust }
}

/// A local credential.
#[derive(Clone, Copy)]
pub enum LocalSecret<'a> {
    /// A password.
    Password(&'a str),
    /// A locally issued API token.
    Token(&'a str),
}

/// How a client on the network logs in (no `Debug`: it holds a secret).
#[derive(Clone, Copy)]
pub enum RemoteLogin<'a> {
    /// A local user with a password or an API token.
    Local {
        /// The user.
        user: &'a str,
        /// Their password or API token.
        secret: LocalSecret<'a>,
    },
    /// An OIDC ID token from a configured issuer.
    Oidc {
        /// The ID token (a JWT).
        id_token: &'a str,
    },
}
