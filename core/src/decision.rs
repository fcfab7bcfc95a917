//! The decision function: who may run what, with which capabilities.
//!
//! [`decide`] is pure (no I/O, no clock: the caller passes `now`). It takes
//! the authenticated subject (user, roles, device, session), the skill or
//! agent with the capabilities its signed manifest requests, the policies
//! (host configuration, repository, organisation) and what the host can
//! offer (directories for the manifest's logical names, environment values,
//! limit ceilings), and returns a [`Decision`]: allowed or not, every reason
//! for a refusal, and the [`Grant`] — the intersection of the request and
//! the offer, with limits only ever lowered.
//!
//! Rules, in the words of the policy files:
//! - forbid beats allow: `deniedUsers`, `deniedRoles`, `deniedSkills` and
//!   trust requirements are never overridden, and `enforceTrust: false` or a
//!   lower `minimumTrustLevel` in one file cannot relax another;
//! - `admin:all` passes every role and permission check (`allowedRoles`,
//!   `allowedUsers`, `requiredPermissions`), but not a forbid and not device
//!   trust: trust is about the device, not the person;
//! - a dangerous skill (manifest `dangerous = true`, any `shell` request —
//!   whatever the manifest says — or a policy entry with `dangerous: true`) needs a device at `deviceTrust.minimumLevel`, and
//!   without any `skillPolicies` entry it follows
//!   `security.dangerousSkillsWithoutPolicy` (default `deny`);
//! - a skill invoked by an agent (`skills.invoke`) needs no permission of
//!   its own beyond the agent's, but every skill rule still applies to it.

use crate::grant::{Access, Grant, GrantBuilder, Limits};
use crate::manifest::{Capabilities, Kind, Manifest, RequestedLimits};
use crate::policy::{OrgPolicy, RepoPolicy, SecurityConfig, SkillPolicy, id_matches};
use crate::principal::Origin;
use crate::rbac::{Permission, Roles};
use crate::trust::TrustLevel;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Who asks: an authenticated user on a device, possibly in a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subject {
    /// User id (`alice`, `corp:1234`, or the local OS user).
    pub user: String,
    /// Role names held in this session.
    pub roles: Vec<String>,
    /// Device id.
    pub device: String,
    /// The device's trust level.
    pub device_trust: TrustLevel,
    /// The session, if the subject authenticated into one.
    pub session: Option<SessionFacts>,
    /// Where the caller is: another machine counts as an untrusted device.
    pub origin: Origin,
    /// The program the caller used, as it named itself (an MCP client's
    /// name and version). Recorded in the audit log; never proof of
    /// anything, so no decision reads it.
    pub client: Option<String>,
}

/// What the decision needs to know about a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionFacts {
    /// Session id (not the token).
    pub id: String,
    /// Expiry, milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
    /// Whether it was revoked.
    pub revoked: bool,
    /// The only directory tree the session may work in, if scoped.
    pub scope: Option<PathBuf>,
}

/// The skill or agent asked for, with what its signed manifest requests.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// `namespace/name`.
    pub id: &'a str,
    /// Skill or agent.
    pub kind: Kind,
    /// Whether the manifest marks it dangerous.
    pub dangerous: bool,
    /// Requested capabilities.
    pub capabilities: &'a Capabilities,
    /// Requested limits.
    pub limits: &'a RequestedLimits,
    /// Unsigned code (a development build run with
    /// `--dangerous-allow-unsigned`): its manifest was written by the
    /// caller, so its kind grants nothing.
    pub unsigned: bool,
}

impl<'a> Target<'a> {
    /// The target described by a manifest.
    pub fn from_manifest(m: &'a Manifest) -> Self {
        Target {
            id: m.id.as_str(),
            kind: m.kind,
            dangerous: m.dangerous,
            capabilities: &m.capabilities,
            limits: &m.limits,
            unsigned: false,
        }
    }

    /// An unsigned component described by `m` (built from the caller's
    /// flags, not signed by anyone).
    pub fn unsigned(m: &'a Manifest) -> Self {
        Target { unsigned: true, ..Target::from_manifest(m) }
    }
}

/// How the target is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Submitted directly (a task): needs `task:submit` and `skill:execute`
    /// (skills) or `agent:invoke` (agents).
    Run,
    /// Invoked by the agent `parent` through `skills.invoke`.
    Nested {
        /// The calling agent's id.
        parent: String,
    },
}

/// A directory the host can give for one of the manifest's logical names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedDir {
    /// Directory on the host.
    pub host: PathBuf,
    /// Where the guest sees it.
    pub guest: String,
    /// The most access the host gives.
    pub access: Access,
}

/// What the host can give: nothing here is granted unless the manifest asks.
/// The default offers no directory, no variable and the default limits.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Offer {
    /// Logical directory name (e.g. `workspace`) → directory.
    pub dirs: BTreeMap<String, OfferedDir>,
    /// Environment values the operator passes, by name.
    pub env: BTreeMap<String, String>,
    /// The highest limits the host allows.
    pub ceiling: Limits,
}

/// Every policy in force.
#[derive(Debug, Clone, Copy)]
pub struct Policies<'a> {
    /// The host's security configuration.
    pub config: &'a SecurityConfig,
    /// Its roles, resolved.
    pub roles: &'a Roles,
    /// The repository's policy (default: empty).
    pub repo: &'a RepoPolicy,
    /// The organisation's policy (default: empty).
    pub org: &'a OrgPolicy,
}

/// Everything [`decide`] looks at.
#[derive(Debug, Clone)]
pub struct DecisionInput<'a> {
    /// Who asks.
    pub subject: &'a Subject,
    /// What for.
    pub target: Target<'a>,
    /// How.
    pub action: Action,
    /// The workspace the run works in (checked against a session scope).
    pub workspace: Option<&'a Path>,
    /// The policies.
    pub policies: Policies<'a>,
    /// What the host offers.
    pub offer: &'a Offer,
    /// Now, milliseconds since the Unix epoch.
    pub now_ms: u64,
}

/// One reason a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    /// Stable code, e.g. `device-trust`, `denied-user`.
    pub code: &'static str,
    /// What happened and what to do.
    pub message: String,
}

/// The outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go ahead.
    pub allowed: bool,
    /// The grant to run with ([`Grant::deny_all`] when refused).
    pub grant: Grant,
    /// Every reason for a refusal (empty when allowed).
    pub reasons: Vec<Reason>,
    /// What was requested but not granted, when allowed (e.g. a logical
    /// directory the host does not offer).
    pub narrowed: Vec<String>,
}

impl Decision {
    /// The reasons as one line.
    pub fn reasons_text(&self) -> String {
        self.reasons.iter().map(|r| r.message.as_str()).collect::<Vec<_>>().join("; ")
    }

    /// A JSON view for people and scripts; environment values are redacted.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "allowed": self.allowed,
            "reasons": self.reasons,
            "narrowed": self.narrowed,
            "grant": grant_json(&self.grant),
        })
    }
}

/// A grant as JSON with environment values redacted.
pub fn grant_json(g: &Grant) -> serde_json::Value {
    let l = g.limits();
    serde_json::json!({
        "dirs": g.dirs().iter().map(|d| serde_json::json!({
            "host": d.host, "guest": d.guest, "access": d.access,
        })).collect::<Vec<_>>(),
        "env": g.env().keys().collect::<Vec<_>>(),
        "http": g.http().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "shell": g.shell(),
        "skills": g.skills(),
        "session_memory": g.session_memory(),
        "limits": {
            "memory_bytes": l.memory_bytes,
            "timeout_ms": l.timeout.as_millis() as u64,
            "shell_timeout_ms": l.shell_timeout.as_millis() as u64,
            "shell_output_bytes": l.shell_output_bytes,
        },
    })
}

/// Whether `subject` may use `permission` (e.g. `task:cancel`) for work in
/// `workspace`, with every reason if not. Session validity, session scope
/// and `deniedUsers` apply as in [`decide`]; a scoped session is refused
/// where there is no workspace (state-directory administration).
pub fn check_permission(
    subject: &Subject,
    permission: Permission,
    workspace: Option<&Path>,
    policies: Policies<'_>,
    now_ms: u64,
) -> Decision {
    let mut reasons = Vec::new();
    check_session(subject, workspace, policies, now_ms, &mut reasons);
    check_users_and_roles(subject, policies, &mut reasons);
    if !policies.roles.allows(&subject.roles, permission) {
        reasons.push(missing_permission(subject, permission));
    }
    Decision { allowed: reasons.is_empty(), grant: Grant::deny_all(), reasons, narrowed: Vec::new() }
}

/// Decides one request. See the module documentation for the rules; each
/// family of rules is one function below, and every reason is collected.
pub fn decide(input: &DecisionInput<'_>) -> Decision {
    let DecisionInput { subject, policies, .. } = input;
    let mut reasons = Vec::new();
    check_session(subject, input.workspace, *policies, input.now_ms, &mut reasons);
    check_users_and_roles(subject, *policies, &mut reasons);
    check_run_permissions(input, &mut reasons);
    check_unsigned(input, &mut reasons);
    check_enforced_trust(subject, *policies, &mut reasons);
    check_org_denied(input, &mut reasons);
    let entries = check_skill_policies(input, &mut reasons);
    check_dangerous(input, &entries, &mut reasons);
    check_agent_policies(input, &mut reasons);

    if !reasons.is_empty() {
        return Decision { allowed: false, grant: Grant::deny_all(), reasons, narrowed: Vec::new() };
    }
    match build_grant(&input.target, input.offer, &entries, &input.policies.config.shell) {
        Ok((grant, narrowed)) => Decision { allowed: true, grant, reasons, narrowed },
        Err(message) => Decision {
            allowed: false,
            grant: Grant::deny_all(),
            reasons: vec![Reason { code: "bad-grant", message }],
            narrowed: Vec::new(),
        },
    }
}

/// A run needs `task:submit` and `skill:execute` or `agent:invoke`. Unsigned
/// code always needs `skill:execute` (its kind is the caller's own claim:
/// invoking skills must not turn it into an agent that skips it), plus
/// `agent:invoke` when it invokes skills.
fn check_run_permissions(input: &DecisionInput<'_>, reasons: &mut Vec<Reason>) {
    if input.action != Action::Run {
        return;
    }
    let needed: &[Permission] = match (input.target.kind, input.target.unsigned) {
        (Kind::Skill, _) => &[Permission::TaskSubmit, Permission::SkillExecute],
        (Kind::Agent, false) => &[Permission::TaskSubmit, Permission::AgentInvoke],
        (Kind::Agent, true) => &[Permission::TaskSubmit, Permission::SkillExecute, Permission::AgentInvoke],
    };
    for &p in needed {
        if !input.policies.roles.allows(&input.subject.roles, p) {
            reasons.push(missing_permission(input.subject, p));
        }
    }
}

/// Unsigned code runs only for the roles `security.unsignedRoles` names.
fn check_unsigned(input: &DecisionInput<'_>, reasons: &mut Vec<Reason>) {
    let allowed = &input.policies.config.security.unsigned_roles;
    if input.target.unsigned && !input.subject.roles.iter().any(|r| allowed.contains(r)) {
        reasons.push(Reason {
            code: "unsigned-not-allowed",
            message: format!(
                "unsigned code runs only for the roles security.unsignedRoles names [{}]; this caller has [{}]",
                allowed.join(", "),
                input.subject.roles.join(", ")
            ),
        });
    }
}

/// The organisation's `deniedSkills`.
fn check_org_denied(input: &DecisionInput<'_>, reasons: &mut Vec<Reason>) {
    if input.policies.org.denies(input.target.id).is_some() {
        reasons.push(Reason {
            code: "denied-skill",
            message: format!("`{}` is in the organisation policy's deniedSkills", input.target.id),
        });
    }
}

/// The repository's `skillPolicies` entries that name the target: their
/// required permissions, allowed roles and trust level. Returns the entries.
fn check_skill_policies<'a>(input: &DecisionInput<'a>, reasons: &mut Vec<Reason>) -> Vec<&'a SkillPolicy> {
    let DecisionInput { subject, target, policies, .. } = input;
    let admin = policies.roles.allows(&subject.roles, Permission::AdminAll);
    let entries: Vec<_> = policies.repo.skill_policies.iter().filter(|p| id_matches(&p.skill_id, target.id)).collect();
    for entry in &entries {
        let missing: Vec<_> =
            entry.required_permissions.iter().filter(|p| !policies.roles.allows(&subject.roles, **p)).collect();
        if !missing.is_empty() {
            reasons.push(Reason {
                code: "missing-permission",
                message: format!(
                    "skillPolicies for `{}` require {}; the session's roles [{}] do not grant it",
                    entry.skill_id,
                    missing.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                    subject.roles.join(", ")
                ),
            });
        }
        let source = format!("skillPolicies for `{}`", entry.skill_id);
        require_role(subject, admin, &entry.allowed_roles, &source, reasons);
        if let Some(level) = entry.trust_level {
            let source = format!("skillPolicies for `{}` (trustLevel)", entry.skill_id);
            require_trust(subject, level, &source, reasons);
        }
    }
    entries
}

/// A dangerous target (by manifest, by policy, or because it runs host
/// programs, whatever the manifest claims) needs a policy entry (unless
/// configured otherwise) and the minimum device trust.
fn check_dangerous(input: &DecisionInput<'_>, entries: &[&SkillPolicy], reasons: &mut Vec<Reason>) {
    let DecisionInput { subject, target, policies, .. } = input;
    let dangerous =
        target.dangerous || !target.capabilities.shell.is_empty() || entries.iter().any(|e| e.dangerous == Some(true));
    if !dangerous {
        return;
    }
    if entries.is_empty()
        && policies.config.security.dangerous_skills_without_policy == crate::policy::DangerousDefault::Deny
    {
        reasons.push(Reason {
            code: "dangerous-without-policy",
            message: format!(
                "`{}` is dangerous and no skillPolicies entry names it: add one to .coderClaw/security.yaml \
                 (security.dangerousSkillsWithoutPolicy is deny)",
                target.id
            ),
        });
    }
    let source = format!("dangerous skill `{}` (deviceTrust.minimumLevel)", target.id);
    require_trust(subject, policies.config.device_trust.minimum_level, &source, reasons);
}

/// The repository's `agentPolicies` entries that name an agent target.
fn check_agent_policies(input: &DecisionInput<'_>, reasons: &mut Vec<Reason>) {
    let DecisionInput { subject, target, policies, .. } = input;
    if target.kind != Kind::Agent {
        return;
    }
    let admin = policies.roles.allows(&subject.roles, Permission::AdminAll);
    for entry in policies.repo.agent_policies.iter().filter(|p| id_matches(&p.agent_id, target.id)) {
        let source = format!("agentPolicies for `{}`", entry.agent_id);
        require_role(subject, admin, &entry.allowed_roles, &source, reasons);
        if let Some(denied) = entry.denied_roles.iter().find(|r| subject.roles.contains(r)) {
            reasons.push(Reason {
                code: "role-denied",
                message: format!("agentPolicies for `{}` deny role `{denied}`", entry.agent_id),
            });
        }
        if let Some(level) = entry.require_device_trust {
            let source = format!("agentPolicies for `{}` (requireDeviceTrust)", entry.agent_id);
            require_trust(subject, level, &source, reasons);
        }
    }
}

/// An `allowedRoles` list (`None`: any role) that `admin:all` passes.
fn require_role(
    subject: &Subject,
    admin: bool,
    allowed: &Option<Vec<String>>,
    source: &str,
    reasons: &mut Vec<Reason>,
) {
    let Some(allowed) = allowed else { return };
    if admin || subject.roles.iter().any(|r| allowed.contains(r)) {
        return;
    }
    reasons.push(Reason {
        code: "role-not-allowed",
        message: format!(
            "{source} allows roles [{}]; the session has [{}]",
            allowed.join(", "),
            subject.roles.join(", ")
        ),
    });
}

fn missing_permission(subject: &Subject, p: Permission) -> Reason {
    Reason {
        code: "missing-permission",
        message: format!("permission {p} is not granted by the session's roles [{}]", subject.roles.join(", ")),
    }
}

fn require_trust(subject: &Subject, level: TrustLevel, source: &str, reasons: &mut Vec<Reason>) {
    if subject.device_trust < level {
        reasons.push(Reason {
            code: "device-trust",
            message: format!("device {} is {}; {source} requires {level}", subject.device, subject.device_trust),
        });
    }
}

fn check_session(
    subject: &Subject,
    workspace: Option<&Path>,
    policies: Policies<'_>,
    now_ms: u64,
    reasons: &mut Vec<Reason>,
) {
    match &subject.session {
        None if policies.config.security.require_auth => reasons.push(Reason {
            code: "auth-required",
            message: "security.requireAuth is on and the caller has no session".into(),
        }),
        None => {}
        Some(s) => {
            if s.revoked {
                reasons.push(Reason { code: "session-revoked", message: format!("session {} was revoked", s.id) });
            }
            if now_ms >= s.expires_at_ms {
                reasons.push(Reason {
                    code: "session-expired",
                    message: format!("session {} has expired: log in again", s.id),
                });
            }
            if let Some(scope) = &s.scope {
                let inside = workspace.is_some_and(|w| w.starts_with(scope));
                if !inside {
                    reasons.push(Reason {
                        code: "out-of-scope",
                        message: format!(
                            "session {} is limited to {}; this run's workspace is {}",
                            s.id,
                            scope.display(),
                            workspace.map_or("not set".into(), |w| w.display().to_string())
                        ),
                    });
                }
            }
        }
    }
}

fn check_users_and_roles(subject: &Subject, policies: Policies<'_>, reasons: &mut Vec<Reason>) {
    let repo = policies.repo;
    let admin = policies.roles.allows(&subject.roles, Permission::AdminAll);
    if repo.denied_users.contains(&subject.user) {
        reasons.push(Reason {
            code: "denied-user",
            message: format!("user `{}` is in the repository policy's deniedUsers", subject.user),
        });
    }
    if let Some(users) = &repo.allowed_users
        && !admin
        && !users.contains(&subject.user)
    {
        reasons.push(Reason {
            code: "user-not-allowed",
            message: format!("user `{}` is not in the repository policy's allowedUsers", subject.user),
        });
    }
    require_role(subject, admin, &repo.allowed_roles, "the repository policy", reasons);
}

/// Device trust when enforced by the host, the repository or the
/// organisation: the strictest minimum of the three applies.
fn check_enforced_trust(subject: &Subject, policies: Policies<'_>, reasons: &mut Vec<Reason>) {
    let (config, repo, org) = (policies.config, policies.repo, policies.org);
    let mut sources = Vec::new();
    if config.security.enforce_trust {
        sources.push("security.enforceTrust");
    }
    if repo.enforce_trust == Some(true) {
        sources.push("the repository policy's enforceTrust");
    }
    if org.enforce_trust == Some(true) {
        sources.push("the organisation policy's enforceTrust");
    }
    if sources.is_empty() {
        return;
    }
    let minimum = [Some(config.device_trust.minimum_level), repo.minimum_trust_level, org.minimum_trust_level]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(TrustLevel::Verified);
    require_trust(subject, minimum, &sources.join(" and "), reasons);
}

/// The request intersected with the offer.
fn build_grant(
    target: &Target<'_>,
    offer: &Offer,
    entries: &[&SkillPolicy],
    shell: &crate::policy::ShellSection,
) -> Result<(Grant, Vec<String>), String> {
    let caps = target.capabilities;
    let mut narrowed = Vec::new();
    let mut b: GrantBuilder = Grant::builder();
    // A name requested twice (read and read-write) is one directory.
    for (name, access) in caps.fs_access() {
        match offer.dirs.get(name) {
            Some(dir) => b = b.dir(&dir.host, &dir.guest, access.min(dir.access)),
            None => narrowed.push(format!("directory `{name}`: the host offers no directory by that name")),
        }
    }
    for name in &caps.env {
        match offer.env.get(name) {
            Some(value) => b = b.env(name, value),
            None => narrowed.push(format!("environment variable {name}: not passed by the host")),
        }
    }
    for pattern in &caps.http {
        b = b.http_pattern(pattern.clone());
    }
    for program in &caps.shell {
        b = b.shell(program);
        // Rules are given by program name; a manifest naming `/usr/bin/git`
        // still gets the policy's `git` rules.
        let name = crate::shell_policy::program_name(program);
        let named = |rules: &'_ BTreeMap<String, crate::shell_policy::ProgramRule>| {
            rules
                .iter()
                .filter(|(p, _)| crate::shell_policy::program_name(p) == name)
                .map(|(_, r)| r.clone())
                .collect::<Vec<_>>()
        };
        let mut all = named(&caps.shell_rules);
        all.extend(entries.iter().flat_map(|e| named(&e.shell_rules)));
        for rule in all {
            b = b.shell_rule(program, rule.clone());
        }
        if shell.network.contains(program) {
            b = b.shell_network(program);
        }
    }
    b = b.confinement(shell.confinement);
    for skill in &caps.skills {
        b = b.skill(skill.as_str());
    }
    if caps.session_memory {
        b = b.session_memory();
    }
    let requested = Limits {
        memory_bytes: target.limits.memory.map_or(Limits::DEFAULT_MEMORY_BYTES, |s| s.0),
        timeout: target.limits.timeout.map_or(Limits::DEFAULT_TIMEOUT, |m| Duration::from_millis(m.0)),
        ..Limits::default()
    };
    let grant = b.limits(requested.min(&offer.ceiling)).build().map_err(|e| e.to_string())?;
    Ok((grant, narrowed))
}
