//! The policy files, as written in YAML:
//!
//! - the repository policy `.coderClaw/security.yaml` ([`RepoPolicy`]),
//! - the organisation policy (`organizationPolicy:`, [`OrgPolicy`]),
//! - the host's security configuration (`config.yaml` in the state
//!   directory, [`SecurityConfig`]).
//!
//! Parsing is strict: unknown keys and bad values are errors that name the
//! file, the line and the key. After parsing, [`SecurityConfig::validate`]
//! and [`RepoPolicy::validate`] check the meaning (role names exist,
//! permission lists are real) and name the offending key path.
//!
//! Skill and agent ids in policies match either a full id (`team/shell-exec`
//! matches only that skill) or a bare name (`shell-exec` matches that name
//! in any namespace).

use crate::manifest::Millis;
use crate::rbac::{Permission, RbacError, RoleDef, Roles};
use crate::trust::TrustLevel;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

/// A policy or configuration file that cannot be used. The message names
/// the file, and the line and key where they are known.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum PolicyError {
    /// The YAML does not parse or does not fit the schema.
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        /// The file (as given by the caller).
        file: String,
        /// 1-based line, 0 when unknown.
        line: u64,
        /// 1-based column, 0 when unknown.
        column: u64,
        /// What is wrong, including the key.
        message: String,
    },
    /// The file parses but a value makes no sense (e.g. an unknown role).
    #[error("{file}: {key}: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// Key path, e.g. `skillPolicies[0].allowedRoles`.
        key: String,
        /// What is wrong and what to do.
        message: String,
    },
}

/// Parses one YAML document into `T`, mapping errors to [`PolicyError`].
pub fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str, file: &str) -> Result<T, PolicyError> {
    // An empty file is an empty mapping: every key takes its default.
    let text = if text.trim().is_empty() { "{}" } else { text };
    serde_saphyr::from_str::<T>(text).map_err(|e| {
        let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
        // The library's message may carry a source snippet; keep the first line.
        let first = e.to_string().lines().next().unwrap_or("invalid YAML").trim().to_owned();
        let message = strip_position(&first).to_owned();
        PolicyError::Syntax { file: file.to_owned(), line, column, message }
    })
}

/// `error: line 2 column 1: unknown field` → `unknown field`: the position
/// is already in front.
fn strip_position(message: &str) -> &str {
    let m = message.strip_prefix("error: ").unwrap_or(message);
    match m.strip_prefix("line ").and_then(|rest| rest.split_once(": ")) {
        Some((position, rest)) if position.contains(" column ") => rest,
        _ => m,
    }
}

/// `.coderClaw/security.yaml`: what a repository allows. Absent keys add no
/// restriction of their own; the host configuration's defaults still apply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RepoPolicy {
    /// Enforce device trust for every run in this repository. `false` cannot
    /// switch off enforcement that the host or organisation turned on.
    #[serde(default)]
    pub enforce_trust: Option<bool>,
    /// Minimum device trust when trust is enforced.
    #[serde(default)]
    pub minimum_trust_level: Option<TrustLevel>,
    /// Only sessions holding one of these roles may run anything here.
    #[serde(default)]
    pub allowed_roles: Option<Vec<String>>,
    /// Only these users may run anything here.
    #[serde(default)]
    pub allowed_users: Option<Vec<String>>,
    /// These users may run nothing here, whatever their roles (even admin).
    #[serde(default)]
    pub denied_users: Vec<String>,
    /// Per-agent rules.
    #[serde(default)]
    pub agent_policies: Vec<AgentPolicy>,
    /// Per-skill rules.
    #[serde(default)]
    pub skill_policies: Vec<SkillPolicy>,
}

/// Rules for one agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentPolicy {
    /// `name` or `namespace/name`.
    pub agent_id: String,
    /// Only these roles may invoke it.
    #[serde(default)]
    pub allowed_roles: Option<Vec<String>>,
    /// These roles may not invoke it (beats `allowedRoles`).
    #[serde(default)]
    pub denied_roles: Vec<String>,
    /// The device must be at least this trusted, whether or not trust is
    /// enforced globally.
    #[serde(default)]
    pub require_device_trust: Option<TrustLevel>,
}

/// Rules for one skill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SkillPolicy {
    /// `name` or `namespace/name`.
    pub skill_id: String,
    /// Treat the skill as dangerous: the device must meet the host's
    /// `deviceTrust.minimumLevel` even when trust is not enforced. `false`
    /// cannot make a skill whose manifest says dangerous safe.
    #[serde(default)]
    pub dangerous: Option<bool>,
    /// The session must hold every one of these permissions.
    #[serde(default)]
    pub required_permissions: Vec<Permission>,
    /// Only these roles may run it.
    #[serde(default)]
    pub allowed_roles: Option<Vec<String>>,
    /// The device must be at least this trusted.
    #[serde(default)]
    pub trust_level: Option<TrustLevel>,
    /// Argument rules per shell program, on top of the manifest's
    /// (`shellRules: { git: { subcommands: [status, log] } }`).
    #[serde(default)]
    pub shell_rules: BTreeMap<String, crate::shell_policy::ProgramRule>,
}

/// The organisation policy file: one `organizationPolicy:` key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OrgPolicyFile {
    /// The policy.
    #[serde(default)]
    pub organization_policy: OrgPolicy,
}

/// What an organisation requires of every host and repository.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OrgPolicy {
    /// Enforce device trust everywhere (repositories cannot switch it off).
    #[serde(default)]
    pub enforce_trust: Option<bool>,
    /// Minimum device trust when enforced; repositories can only raise it.
    #[serde(default)]
    pub minimum_trust_level: Option<TrustLevel>,
    /// Skills every host must have installed: they cannot be removed, and
    /// `coderclaw policy check` reports the missing ones.
    #[serde(default)]
    pub required_skills: Vec<String>,
    /// Skills that may never run, for anyone.
    #[serde(default)]
    pub denied_skills: Vec<String>,
}

/// The host's security configuration: the security parts of section 7 of
/// the product text, in one file.
///
/// ```yaml
/// security:
///   enforceTrust: true
///   requireAuth: true
///   defaultRoles: [developer]
/// identity:
///   providers: [local, oidc]
///   oidc:
///     - name: corp
///       issuer: https://login.example.com
///       audience: coderclaw
/// deviceTrust:
///   minimumLevel: verified
///   autoTrustLocal: true
/// roles:
///   custom-developer:
///     inherits: developer
///     additionalPermissions: [config:write]
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecurityConfig {
    /// `security:`.
    #[serde(default)]
    pub security: SecuritySection,
    /// `identity:`.
    #[serde(default)]
    pub identity: IdentitySection,
    /// `deviceTrust:`.
    #[serde(default)]
    pub device_trust: DeviceTrustSection,
    /// Custom roles.
    #[serde(default)]
    pub roles: BTreeMap<String, RoleDef>,
    /// Team registries by name, for `--registry <name>`.
    #[serde(default)]
    pub registries: BTreeMap<String, RegistryEntry>,
    /// The registry commands use when none is named (a name under
    /// `registries:`; `coderclaw registry add NAME URL --default` sets it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_registry: Option<String>,
    /// `shell:`: how `shell.exec` children are confined.
    #[serde(default)]
    pub shell: ShellSection,
    /// `audit:`: where the audit log's signed heads are witnessed.
    #[serde(default)]
    pub audit: AuditSection,
    /// `workspaces:`: directories on this server that remote tasks may
    /// name, by name.
    #[serde(default)]
    pub workspaces: BTreeMap<String, NamedWorkspace>,
    /// `uploads:`: bounds of uploaded workspace snapshots.
    #[serde(default)]
    pub uploads: UploadsSection,
    /// `cluster:`: the machines this node believes, when it is one.
    #[serde(default)]
    pub cluster: ClusterSection,
}

/// `cluster:` in the configuration of a cluster node (mode
/// distributed-cluster).
///
/// ```yaml
/// cluster:
///   nodeKeys:               # device keys (`coderclaw device show`) of the cluster's machines
///     - ed25519:3b6a27bc…
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterSection {
    /// The device keys of the machines whose trust changes (`trust add`,
    /// `trust revoke` made there) this node applies, and whose signatures
    /// on the cluster's audit checkpoints it accepts. This machine's own
    /// key always counts; with none listed, no other machine's.
    #[serde(default)]
    pub node_keys: Vec<String>,
}

impl ClusterSection {
    /// The ids of the listed keys, or the first entry that is not a key.
    pub fn node_key_ids(&self) -> Result<Vec<String>, String> {
        self.node_keys
            .iter()
            .map(|k| {
                crate::keys::PublicKey::parse(k)
                    .map(|k| k.id().to_string())
                    .map_err(|e| format!("cluster.nodeKeys: {k:?} is not a public key ({e})"))
            })
            .collect()
    }
}

/// One of `workspaces:` in the configuration: a directory on the server a
/// task may run in when its submission names it and the session has one
/// of `roles`.
///
/// ```yaml
/// workspaces:
///   main:
///     path: /srv/checkouts/main     # absolute
///     roles: [ci, developer]        # who may name it (none listed: nobody)
///     write: false                  # tasks may change it (default read-only)
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamedWorkspace {
    /// The directory, absolute.
    pub path: std::path::PathBuf,
    /// Roles that may run tasks in it.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Tasks may write it.
    #[serde(default)]
    pub write: bool,
}

/// `uploads:` in the configuration.
///
/// ```yaml
/// uploads:
///   maxBytes: 64MiB        # one snapshot's tar
///   maxFiles: 20000        # entries in one snapshot
///   maxTotalBytes: 1GiB    # all snapshots kept at once
///   keepUnused: 1h         # an upload no task names is deleted after this
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UploadsSection {
    /// Largest tar accepted (413 above); 0 turns uploads off.
    #[serde(default = "default_upload_bytes")]
    pub max_bytes: crate::manifest::Size,
    /// Most entries (files and directories) in one snapshot.
    #[serde(default = "default_upload_files")]
    pub max_files: u64,
    /// Most bytes all kept snapshots may hold together.
    #[serde(default = "default_upload_total")]
    pub max_total_bytes: crate::manifest::Size,
    /// How long an upload that no unfinished task names is kept.
    #[serde(default = "default_keep_unused")]
    pub keep_unused: Millis,
}

fn default_upload_bytes() -> crate::manifest::Size {
    crate::manifest::Size(64 << 20)
}

fn default_upload_files() -> u64 {
    20_000
}

fn default_upload_total() -> crate::manifest::Size {
    crate::manifest::Size(1 << 30)
}

fn default_keep_unused() -> Millis {
    Millis(3600 * 1000)
}

impl Default for UploadsSection {
    fn default() -> Self {
        Self {
            max_bytes: default_upload_bytes(),
            max_files: default_upload_files(),
            max_total_bytes: default_upload_total(),
            keep_unused: default_keep_unused(),
        }
    }
}

/// `audit:` in the configuration.
///
/// ```yaml
/// audit:
///   witnessFile: /var/log/coderclaw/audit-heads.jsonl   # a file this user may append to but should not rewrite
///   witnessRegistry: team-registry                      # `audit witness` and `audit verify` use it
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuditSection {
    /// Every checkpoint's signed head is appended here (one JSON line).
    #[serde(default)]
    pub witness_file: Option<std::path::PathBuf>,
    /// The team registry (a name under `registries:`) that witnesses heads.
    #[serde(default)]
    pub witness_registry: Option<String>,
}

/// `shell:` in the configuration.
///
/// ```yaml
/// shell:
///   confinement: required     # or best-effort: run without a layer the kernel lacks (audited)
///   network: [git]            # programs whose children keep the host's network
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ShellSection {
    /// Default `required`.
    #[serde(default)]
    pub confinement: crate::shell_policy::Confinement,
    /// Default none: a child has no network at all.
    #[serde(default)]
    pub network: Vec<String>,
}

/// One team registry the client knows.
///
/// ```yaml
/// registries:
///   team-registry:
///     url: http://registry.example:7421
///     namespace-keys:
///       team: ["ed25519:…"]   # may sign the team's organisation policy
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryEntry {
    /// Base URL (http or https).
    pub url: String,
    /// Per namespace, the admin keys whose signature this client accepts on
    /// that namespace's organisation policy. Packages are still verified
    /// against the trust store (`coderclaw trust`), never against these.
    #[serde(default, rename = "namespace-keys")]
    pub namespace_keys: BTreeMap<String, Vec<String>>,
}

impl RegistryEntry {
    /// Each namespace with its admin keys, parsed (a configuration that
    /// loaded has only valid keys: [`SecurityConfig::validate`] checks them).
    pub fn admin_keys(&self) -> impl Iterator<Item = (&str, Vec<crate::keys::PublicKey>)> {
        self.namespace_keys.iter().map(|(ns, keys)| {
            (ns.as_str(), keys.iter().filter_map(|k| crate::keys::PublicKey::parse(k).ok()).collect())
        })
    }
}

/// `security:` in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecuritySection {
    /// Enforce `deviceTrust.minimumLevel` for every run (default false).
    #[serde(default)]
    pub enforce_trust: bool,
    /// Require a session token for every command that runs or inspects
    /// something (default false: the local OS user acts with `defaultRoles`).
    #[serde(default)]
    pub require_auth: bool,
    /// Roles of a local user without a session, and of new users and OIDC
    /// identities that are not given roles (default `[developer]`).
    #[serde(default = "default_roles")]
    pub default_roles: Vec<String>,
    /// What happens to a dangerous skill that no `skillPolicies` entry
    /// names (default `deny`).
    #[serde(default)]
    pub dangerous_skills_without_policy: DangerousDefault,
    /// Roles that may run unsigned code (`--dangerous-allow-unsigned`);
    /// default `[developer, admin]`, so `ci` and `readonly` sessions never do.
    #[serde(default = "default_unsigned_roles")]
    pub unsigned_roles: Vec<String>,
    /// What a policy file that does not parse does: keep its last good
    /// version, said on every run (`keep-last-good`, the default), or stop
    /// everything until it is fixed (`deny`: fail closed).
    #[serde(default)]
    pub broken_policy: BrokenPolicy,
}

/// `security.brokenPolicy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BrokenPolicy {
    /// Keep the last good version of a broken file (audited, warned).
    #[default]
    KeepLastGood,
    /// Refuse to run anything while a policy file is broken.
    Deny,
}

fn default_roles() -> Vec<String> {
    vec!["developer".to_owned()]
}

fn default_unsigned_roles() -> Vec<String> {
    vec!["developer".to_owned(), "admin".to_owned()]
}

impl Default for SecuritySection {
    fn default() -> Self {
        Self {
            enforce_trust: false,
            require_auth: false,
            default_roles: default_roles(),
            dangerous_skills_without_policy: DangerousDefault::Deny,
            unsigned_roles: default_unsigned_roles(),
            broken_policy: BrokenPolicy::KeepLastGood,
        }
    }
}

/// The default for dangerous skills without a policy entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DangerousDefault {
    /// Refuse them.
    #[default]
    Deny,
    /// Let them run under the other checks.
    Allow,
}

/// `identity:` in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IdentitySection {
    /// Providers that may authenticate users (default `[local]`).
    #[serde(default = "default_providers")]
    pub providers: Vec<Provider>,
    /// OIDC issuers whose ID tokens are accepted.
    #[serde(default)]
    pub oidc: Vec<OidcIssuer>,
    /// How long a new session lives (default 12h).
    #[serde(default = "default_session_ttl")]
    pub session_ttl: Millis,
}

fn default_providers() -> Vec<Provider> {
    vec![Provider::Local]
}

fn default_session_ttl() -> Millis {
    Millis(12 * 3600 * 1000)
}

impl Default for IdentitySection {
    fn default() -> Self {
        Self { providers: default_providers(), oidc: Vec::new(), session_ttl: default_session_ttl() }
    }
}

/// An identity provider kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Users and tokens in the local state directory.
    Local,
    /// Any OIDC issuer listed under `identity.oidc`.
    Oidc,
    /// GitHub's OIDC issuer (Actions tokens).
    Github,
    /// Google's OIDC issuer.
    Google,
}

impl Provider {
    /// The written form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Oidc => "oidc",
            Self::Github => "github",
            Self::Google => "google",
        }
    }
}

/// An OIDC issuer whose ID tokens are accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OidcIssuer {
    /// Short name; user ids become `name:subject`.
    pub name: String,
    /// Which provider this is (default `oidc`); `github` and `google` fill
    /// in their issuer URL when `issuer` is omitted.
    #[serde(default = "default_provider_oidc")]
    pub provider: Provider,
    /// The `iss` claim tokens must carry.
    #[serde(default)]
    pub issuer: Option<String>,
    /// The `aud` claim tokens must carry.
    pub audience: String,
    /// Where the signing keys are; default: from the issuer's discovery
    /// document (`/.well-known/openid-configuration`).
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Roles of identities from this issuer (default: `security.defaultRoles`).
    /// Ignored when `roleRules` are given.
    #[serde(default)]
    pub roles: Option<Vec<String>>,
    /// Roles by the token's signed claims (e.g. a GitHub Actions token's
    /// `repository`, `ref`, `workflow`, `environment`): an identity holds
    /// the roles of every rule all of whose claims it carries, and one that
    /// matches no rule is refused. Empty: `roles` for everyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub role_rules: Vec<ClaimRule>,
}

/// Roles for the identities whose token carries every one of `claims`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRule {
    /// Claim name → the exact value it must have (`ref: refs/heads/main`).
    pub claims: std::collections::BTreeMap<String, String>,
    /// The roles given.
    pub roles: Vec<String>,
}

impl ClaimRule {
    /// Whether `claims` (a token's string claims) has every claim of this rule.
    pub fn matches(&self, claims: &std::collections::BTreeMap<String, String>) -> bool {
        !self.claims.is_empty() && self.claims.iter().all(|(k, v)| claims.get(k) == Some(v))
    }
}

fn default_provider_oidc() -> Provider {
    Provider::Oidc
}

impl OidcIssuer {
    /// The roles an identity with these signed `claims` holds under
    /// `roleRules` (every matching rule's, in order, once each); `None`
    /// when the issuer has no rules (then `roles` apply).
    pub fn roles_by_claims(&self, claims: &std::collections::BTreeMap<String, String>) -> Option<Vec<String>> {
        if self.role_rules.is_empty() {
            return None;
        }
        let mut roles: Vec<String> = Vec::new();
        for rule in self.role_rules.iter().filter(|r| r.matches(claims)) {
            for role in &rule.roles {
                if !roles.contains(role) {
                    roles.push(role.clone());
                }
            }
        }
        Some(roles)
    }

    /// The issuer URL, with the well-known ones filled in.
    pub fn issuer_url(&self) -> Option<&str> {
        self.issuer.as_deref().or(match self.provider {
            Provider::Github => Some("https://token.actions.githubusercontent.com"),
            Provider::Google => Some("https://accounts.google.com"),
            Provider::Oidc | Provider::Local => None,
        })
    }
}

/// `deviceTrust:` in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeviceTrustSection {
    /// Minimum trust when enforced, and for dangerous skills (default `verified`).
    #[serde(default = "default_minimum_level")]
    pub minimum_level: TrustLevel,
    /// Make this machine's own device `trusted` (default true).
    #[serde(default = "yes")]
    pub auto_trust_local: bool,
}

fn default_minimum_level() -> TrustLevel {
    TrustLevel::Verified
}

fn yes() -> bool {
    true
}

impl Default for DeviceTrustSection {
    fn default() -> Self {
        Self { minimum_level: default_minimum_level(), auto_trust_local: true }
    }
}

impl SecurityConfig {
    /// Parses and validates `text`; `file` names it in errors.
    pub fn from_yaml(text: &str, file: &str) -> Result<(SecurityConfig, Roles), PolicyError> {
        let config: SecurityConfig = parse_yaml(text, file)?;
        let roles = config.validate(file)?;
        Ok((config, roles))
    }

    /// Resolves the roles and checks every role name and issuer; returns
    /// the resolved roles.
    pub fn validate(&self, file: &str) -> Result<Roles, PolicyError> {
        let invalid = |key: String, message: String| PolicyError::Invalid { file: file.to_owned(), key, message };
        let roles = Roles::resolve(&self.roles).map_err(|e| {
            let key = match &e {
                RbacError::UnknownParent { role, .. } | RbacError::UnknownRole(role) => format!("roles.{role}"),
                RbacError::BuiltinRedefined(role) => format!("roles.{role}"),
                _ => "roles".to_owned(),
            };
            invalid(key, e.to_string())
        })?;
        check_roles(&roles, &self.security.default_roles, "security.defaultRoles", file)?;
        check_roles(&roles, &self.security.unsigned_roles, "security.unsignedRoles", file)?;
        for (name, r) in &self.registries {
            let key = format!("registries.{name}");
            if !(r.url.starts_with("http://") || r.url.starts_with("https://")) {
                return Err(invalid(format!("{key}.url"), format!("`{}` is not an http:// or https:// URL", r.url)));
            }
            for (ns, keys) in &r.namespace_keys {
                for k in keys {
                    crate::keys::PublicKey::parse(k)
                        .map_err(|e| invalid(format!("{key}.namespace-keys.{ns}"), e.to_string()))?;
                }
            }
        }
        if let Some(name) = &self.default_registry
            && !self.registries.contains_key(name)
        {
            return Err(invalid("defaultRegistry".into(), format!("`{name}` is not a registry under `registries:`")));
        }
        for (i, issuer) in self.identity.oidc.iter().enumerate() {
            let key = format!("identity.oidc[{i}]");
            if issuer.provider == Provider::Local {
                return Err(invalid(key, "`local` is not an OIDC provider: use oidc, github or google".into()));
            }
            if issuer.issuer_url().is_none() {
                return Err(invalid(key, "an `oidc` provider needs `issuer` (its URL)".into()));
            }
            let enabled = self.identity.providers.contains(&issuer.provider);
            if !enabled {
                return Err(invalid(
                    key,
                    format!("provider `{}` is not listed in identity.providers", issuer.provider.as_str()),
                ));
            }
            if let Some(r) = &issuer.roles {
                check_roles(&roles, r, &format!("identity.oidc[{i}].roles"), file)?;
            }
        }
        for (name, w) in &self.workspaces {
            let key = format!("workspaces.{name}");
            if !crate::task::is_workspace_name(name) {
                return Err(invalid(key, "a workspace name is letters, digits, `-` and `_`, at most 64".into()));
            }
            if !w.path.is_absolute() {
                return Err(invalid(format!("{key}.path"), format!("`{}` is not an absolute path", w.path.display())));
            }
            check_roles(&roles, &w.roles, &format!("{key}.roles"), file)?;
        }
        if self.uploads.max_bytes.0 > self.uploads.max_total_bytes.0 {
            return Err(invalid(
                "uploads.maxBytes".into(),
                "is larger than uploads.maxTotalBytes: no upload could ever be kept".into(),
            ));
        }
        if self.identity.session_ttl.0 == 0 {
            return Err(invalid("identity.sessionTtl".into(), "must be greater than zero".into()));
        }
        if let Err(problem) = self.cluster.node_key_ids() {
            return Err(invalid(
                "cluster.nodeKeys".into(),
                format!("{problem}: list the machines' device public keys (`ed25519:…`)"),
            ));
        }
        Ok(roles)
    }
}

impl RepoPolicy {
    /// Parses and validates `text` against the host's roles.
    pub fn from_yaml(text: &str, file: &str, roles: &Roles) -> Result<RepoPolicy, PolicyError> {
        let policy: RepoPolicy = parse_yaml(text, file)?;
        policy.validate(file, roles)?;
        Ok(policy)
    }

    /// Checks that every role named exists.
    pub fn validate(&self, file: &str, roles: &Roles) -> Result<(), PolicyError> {
        if let Some(r) = &self.allowed_roles {
            check_roles(roles, r, "allowedRoles", file)?;
        }
        for (i, a) in self.agent_policies.iter().enumerate() {
            check_policy_id(&a.agent_id, &format!("agentPolicies[{i}].agentId"), file)?;
            if let Some(r) = &a.allowed_roles {
                check_roles(roles, r, &format!("agentPolicies[{i}].allowedRoles"), file)?;
            }
            check_roles(roles, &a.denied_roles, &format!("agentPolicies[{i}].deniedRoles"), file)?;
        }
        for (i, s) in self.skill_policies.iter().enumerate() {
            check_policy_id(&s.skill_id, &format!("skillPolicies[{i}].skillId"), file)?;
            if let Some(r) = &s.allowed_roles {
                check_roles(roles, r, &format!("skillPolicies[{i}].allowedRoles"), file)?;
            }
        }
        Ok(())
    }
}

impl OrgPolicy {
    /// The `deniedSkills` entry that names `id`, if any.
    pub fn denies(&self, id: &str) -> Option<&str> {
        self.denied_skills.iter().find(|d| id_matches(d, id)).map(String::as_str)
    }

    /// The `requiredSkills` entry that names `id`, if any.
    pub fn requires(&self, id: &str) -> Option<&str> {
        self.required_skills.iter().find(|r| id_matches(r, id)).map(String::as_str)
    }

    /// Adds `other`'s requirements to this policy: the stricter of each
    /// setting wins, lists are joined. Used to apply a team's distributed
    /// policy on top of the local one.
    pub fn merge(&mut self, other: &OrgPolicy) {
        // None < Some(false) < Some(true): the stricter setting wins.
        self.enforce_trust = self.enforce_trust.max(other.enforce_trust);
        self.minimum_trust_level = self.minimum_trust_level.max(other.minimum_trust_level);
        for (mine, theirs) in
            [(&mut self.required_skills, &other.required_skills), (&mut self.denied_skills, &other.denied_skills)]
        {
            for s in theirs {
                if !mine.contains(s) {
                    mine.push(s.clone());
                }
            }
        }
    }

    /// Parses an organisation policy file (`organizationPolicy:` at the top).
    pub fn from_yaml(text: &str, file: &str) -> Result<OrgPolicy, PolicyError> {
        let policy = parse_yaml::<OrgPolicyFile>(text, file)?.organization_policy;
        for (key, ids) in [("requiredSkills", &policy.required_skills), ("deniedSkills", &policy.denied_skills)] {
            for (i, id) in ids.iter().enumerate() {
                check_policy_id(id, &format!("organizationPolicy.{key}[{i}]"), file)?;
            }
        }
        Ok(policy)
    }
}

/// A policy names a skill as `namespace/name` or a bare `name` (any
/// namespace). Anything else could never match, and a deny list that
/// silently matches nothing fails open: it is a configuration error.
fn check_policy_id(id: &str, key: &str, file: &str) -> Result<(), PolicyError> {
    let valid =
        if id.contains('/') { crate::grant::is_skill_id(id) } else { crate::grant::is_skill_id(&format!("x/{id}")) };
    if valid {
        return Ok(());
    }
    Err(PolicyError::Invalid {
        file: file.to_owned(),
        key: key.to_owned(),
        message: format!(
            "`{id}` can never name a skill: write namespace/name or a bare name, in lowercase letters, digits and `-`"
        ),
    })
}

fn check_roles(roles: &Roles, names: &[String], key: &str, file: &str) -> Result<(), PolicyError> {
    match names.iter().find(|n| roles.permissions(n).is_err()) {
        Some(unknown) => Err(PolicyError::Invalid {
            file: file.to_owned(),
            key: key.to_owned(),
            message: format!(
                "unknown role `{unknown}`: define it under `roles:` in the configuration or use one of {}",
                roles.names().collect::<Vec<_>>().join(", ")
            ),
        }),
        None => Ok(()),
    }
}

/// Whether a policy id (`shell-exec` or `team/shell-exec`) names `id`
/// (`team/shell-exec`).
pub fn id_matches(policy_id: &str, id: &str) -> bool {
    if policy_id.contains('/') { policy_id == id } else { id.rsplit('/').next() == Some(policy_id) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The repository policy of the product text, section 3.
    const PRODUCT_REPO_POLICY: &str = include_str!("../tests/fixtures/product-repo-policy.yaml");

    fn roles() -> Roles {
        Roles::resolve(&BTreeMap::new()).unwrap()
    }

    #[test]
    fn merging_takes_the_stricter_setting_and_joins_lists() {
        let mut local = OrgPolicy { denied_skills: vec!["a".into()], ..OrgPolicy::default() };
        let team = OrgPolicy {
            enforce_trust: Some(true),
            minimum_trust_level: Some(TrustLevel::Verified),
            required_skills: vec!["scanner".into()],
            denied_skills: vec!["a".into(), "b".into()],
        };
        local.merge(&team);
        assert_eq!(local, OrgPolicy { denied_skills: vec!["a".into(), "b".into()], ..team.clone() });
        // A later, looser policy cannot undo what the first one set.
        local.merge(&OrgPolicy {
            enforce_trust: Some(false),
            minimum_trust_level: Some(TrustLevel::Untrusted),
            ..OrgPolicy::default()
        });
        assert_eq!((local.enforce_trust, local.minimum_trust_level), (Some(true), Some(TrustLevel::Verified)));
    }

    #[test]
    fn product_text_policies_parse() {
        let p = RepoPolicy::from_yaml(PRODUCT_REPO_POLICY, "security.yaml", &roles()).unwrap();
        assert_eq!(p.enforce_trust, Some(true));
        assert_eq!(p.minimum_trust_level, Some(TrustLevel::Verified));
        assert_eq!(p.agent_policies[0].require_device_trust, Some(TrustLevel::Verified));
        assert_eq!(p.skill_policies[0].required_permissions, vec![Permission::SkillExecute]);

        let org = OrgPolicy::from_yaml(
            "organizationPolicy:\n  enforceTrust: true\n  minimumTrustLevel: verified\n  requiredSkills: [security-scanner]\n  deniedSkills: [dangerous-exec]\n",
            "org.yaml",
        )
        .unwrap();
        assert_eq!(org.denied_skills, vec!["dangerous-exec"]);

        // A deny list entry that can never match is an error, not a silent no-op.
        let e = OrgPolicy::from_yaml("organizationPolicy:\n  deniedSkills: [ok, Team/Echo]\n", "org.yaml").unwrap_err();
        assert!(e.to_string().contains("organizationPolicy.deniedSkills[1]"), "{e}");
        let e =
            RepoPolicy::from_yaml("skillPolicies:\n  - skillId: Shell Exec\n", "security.yaml", &roles()).unwrap_err();
        assert!(e.to_string().contains("skillPolicies[0].skillId"), "{e}");

        let (config, roles) = SecurityConfig::from_yaml(
            "security:\n  enforceTrust: true\n  requireAuth: true\n  defaultRoles: [developer]\nidentity:\n  providers: [oidc, github]\ndeviceTrust:\n  minimumLevel: verified\n  autoTrustLocal: true\nroles:\n  custom-developer:\n    inherits: developer\n    additionalPermissions:\n      - config:write\n",
            "config.yaml",
        )
        .unwrap();
        assert!(config.security.require_auth);
        assert!(roles.allows(&["custom-developer".into()], Permission::ConfigWrite));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_file_line_and_key() {
        let err = RepoPolicy::from_yaml(
            "enforceTrust: true\nminimumTrust: verified\n",
            "repo/.coderClaw/security.yaml",
            &roles(),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("repo/.coderClaw/security.yaml:2:"), "{text}");
        assert!(text.contains("minimumTrust"), "{text}");

        let err = RepoPolicy::from_yaml("minimumTrustLevel: sorta\n", "s.yaml", &roles()).unwrap_err().to_string();
        assert!(err.starts_with("s.yaml:1:") && err.contains("sorta"), "{err}");

        let err = RepoPolicy::from_yaml(
            "skillPolicies:\n  - skillId: x\n    requiredPermissions: [skill:run]\n",
            "s.yaml",
            &roles(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("s.yaml:3:") && err.contains("skill:run"), "{err}");

        let err =
            RepoPolicy::from_yaml("skillPolicies:\n  - skillId: x\n    allowedRoles: [dev]\n", "s.yaml", &roles())
                .unwrap_err()
                .to_string();
        assert!(err.contains("skillPolicies[0].allowedRoles") && err.contains("`dev`"), "{err}");

        let err = SecurityConfig::from_yaml("security:\n  defaultRoles: [nobody]\n", "c.yaml").unwrap_err().to_string();
        assert!(err.contains("security.defaultRoles"), "{err}");
        let err = SecurityConfig::from_yaml("roles:\n  a:\n    inherits: b\n  b:\n    inherits: a\n", "c.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cycle"), "{err}");
        let err = SecurityConfig::from_yaml(
            "identity:\n  oidc:\n    - name: x\n      issuer: http://i\n      audience: a\n",
            "c.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("identity.oidc[0]") && err.contains("not listed"), "{err}");
        let err = SecurityConfig::from_yaml(
            "identity:\n  providers: [local]\n  oidc:\n    - name: x\n      provider: local\n      issuer: https://i\n      audience: a\n",
            "c.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not an OIDC provider"), "{err}");
    }

    #[test]
    fn an_empty_file_is_all_defaults() {
        assert_eq!(RepoPolicy::from_yaml("", "s.yaml", &roles()).unwrap(), RepoPolicy::default());
        let (c, _) = SecurityConfig::from_yaml("# nothing\n", "c.yaml").unwrap();
        assert_eq!(c, SecurityConfig::default());
        assert_eq!(c.security.default_roles, vec!["developer"]);
        assert_eq!(c.device_trust.minimum_level, TrustLevel::Verified);
    }

    #[test]
    fn ids_match_by_full_id_or_bare_name() {
        assert!(id_matches("shell-exec", "team/shell-exec"));
        assert!(id_matches("team/shell-exec", "team/shell-exec"));
        assert!(!id_matches("other/shell-exec", "team/shell-exec"));
        assert!(!id_matches("shell", "team/shell-exec"));
    }
}
