//! Installing from team registries: `coderclaw skill install [id[@req]]`,
//! `skill update`, `skill publish`, `skill yank`, and `registry sync`.
//!
//! The registry is not trusted to vouch for itself. Every package it sends
//! must have the SHA-256 its index lists, and then its signature must verify
//! against this client's own trust store. Its digest must also match what
//! the lockfile pins. Metadata and organisation policies older than what
//! this client has seen are refused (no rollback). Downloads are cached,
//! so installs work while the registry is down.

use crate::home;
use crate::output::print_json;
use anyhow::{Context, Result, anyhow, bail};
use coderclaw::security::{InstallGates, Security};
use coderclaw_core::Digest;
use coderclaw_core::decision::Subject;
use coderclaw_core::package::{Package, VerifiedPackage};
use coderclaw_core::policy::{RegistryEntry, SecurityConfig};
use coderclaw_core::rbac::Permission;
use coderclaw_registry::RegistryClient;
use coderclaw_registry::api::{PackageInfo, VersionInfo};
use coderclaw_registry::cache::ClientCache;
use coderclaw_registry::client::RegistryClientError;
use coderclaw_registry::lockfile::{LockedSkill, Lockfile};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// Environment variable holding the registry token.
pub(crate) const ENV_REGISTRY_TOKEN: &str = "CODERCLAW_REGISTRY_TOKEN";

/// Which registry, and how to talk to it.
#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct RegistryArgs {
    /// A registry name from `registries:` in $CODERCLAW_HOME/config.yaml,
    /// or a URL (http://host:7421).
    #[arg(long, value_name = "NAME|URL")]
    pub registry: Option<String>,
    /// Registry token (publish, yank, or read for a private namespace).
    #[arg(long, value_name = "TOKEN", env = ENV_REGISTRY_TOKEN, hide_env_values = true)]
    pub token: Option<String>,
    /// Extra PEM CA certificates trusted for an https registry.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

/// A registry resolved from a name or URL.
pub(crate) struct Registry {
    /// As the user wrote it (the name recorded in lockfiles and caches).
    pub name: String,
    /// Its configuration, when it came from config.yaml.
    pub entry: Option<RegistryEntry>,
    /// The client.
    pub client: RegistryClient,
}

/// `registries:` of the configuration, read without opening the security
/// model (whose start-up checks the cached policies this may refresh).
pub(crate) fn configured_registries() -> Result<BTreeMap<String, RegistryEntry>> {
    let path = home::state_dir()?.join("config.yaml");
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(SecurityConfig::from_yaml(&text, &path.display().to_string())?.0.registries),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(anyhow!("{}: {e}", path.display())),
    }
}

impl RegistryArgs {
    /// The registry named by --registry, else `from_lockfile` (a lockfile's
    /// entry). A lockfile comes with the repository, so it may only name a
    /// registry this user configured (by name, or by a URL that a
    /// configured entry has): otherwise a cloned repository could send the
    /// token in $CODERCLAW_REGISTRY_TOKEN to a server of its choosing.
    pub(crate) fn open(&self, from_lockfile: Option<&str>) -> Result<Registry> {
        let name = match (self.registry.as_deref(), from_lockfile) {
            (Some(chosen), _) => chosen.to_owned(),
            (None, Some(locked)) if is_url(locked) => {
                let all = configured_registries()?;
                let found = all.iter().find(|(_, e)| e.url.trim_end_matches('/') == locked.trim_end_matches('/'));
                match found {
                    Some((name, _)) => name.clone(),
                    None => bail!(
                        "the lockfile names the registry {locked}, which is not in your configuration: \
                         add it under `registries:` in config.yaml, or pass --registry to choose one"
                    ),
                }
            }
            (None, Some(locked)) => locked.to_owned(),
            (None, None) => {
                bail!("which registry? pass --registry <name|url> (names come from `registries:` in config.yaml)")
            }
        };
        let name = name.as_str();
        let (url, entry) = if is_url(name) {
            (name.to_owned(), None)
        } else {
            let all = configured_registries()?;
            let entry = all.get(name).cloned().ok_or_else(|| {
                let known: Vec<&str> = all.keys().map(String::as_str).collect();
                anyhow!(
                    "unknown registry `{name}`: add it under `registries:` in {} (known: {}) or pass its URL",
                    home::state_dir().map(|d| d.join("config.yaml").display().to_string()).unwrap_or_default(),
                    if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                )
            })?;
            (entry.url.clone(), Some(entry))
        };
        let client = RegistryClient::new(&url, self.token.clone(), self.ca.as_deref())?;
        Ok(Registry { name: name.to_owned(), entry, client })
    }
}

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// Fetches, verifies and caches the organisation policy of every namespace
/// the registry's configuration lists admin keys for. An unreachable
/// registry leaves the cached policies in force; a policy that fails
/// verification or is older than the cached one is refused.
pub(crate) async fn sync_policies(reg: &Registry, cache: &ClientCache) -> Result<Vec<Value>> {
    let mut report = Vec::new();
    let Some(entry) = &reg.entry else { return Ok(report) };
    for (namespace, keys) in entry.admin_keys() {
        let doc = match reg.client.org_policy(namespace).await {
            Ok(Some(doc)) => doc,
            Ok(None) => {
                report.push(json!({"namespace": namespace, "status": "none published"}));
                continue;
            }
            Err(e @ (RegistryClientError::Unreachable(_) | RegistryClientError::Api(_))) => {
                // Like a registry that is down: the cached policy (if any)
                // stays in force; nothing is loosened.
                eprintln!(
                    "warning: the organisation policy of `{namespace}` could not be fetched from {} ({e}): the cached one stays in force",
                    reg.name
                );
                report
                    .push(json!({"namespace": namespace, "status": format!("not fetched ({e}); cached policy kept")}));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        doc.verify(namespace, &keys).map_err(|e| {
            anyhow!("registry {} served an organisation policy for `{namespace}` that is refused: {e}; the cached policy stays in force", reg.name)
        })?;
        cache.accept_policy(&reg.name, &doc)?;
        report.push(json!({"namespace": namespace, "status": "verified", "serial": doc.serial, "policy": doc.policy}));
    }
    Ok(report)
}

/// What one install or update did.
struct Outcome {
    id: String,
    version: String,
    action: &'static str,
    digest: String,
    note: Option<String>,
}

impl Outcome {
    fn json(&self) -> Value {
        json!({"id": self.id, "version": self.version, "action": self.action, "digest": self.digest, "note": self.note})
    }
}

/// Everything one install command works with.
struct Installer {
    security: Arc<Security>,
    subject: Subject,
    cache: ClientCache,
    lock_path: PathBuf,
    lock: Lockfile,
    gates: InstallGates,
    json: bool,
}

/// What a package must be: from the index, or pinned by the lockfile
/// (which also pins the signer).
#[derive(Clone, Copy)]
struct Expected<'a> {
    id: &'a str,
    version: &'a semver::Version,
    sha256: &'a str,
    digest: &'a str,
    signer: Option<&'a str>,
}

/// A registry's answer about a package, and whether it came from the cache
/// because the registry was unreachable.
struct Metadata {
    info: PackageInfo,
    offline: bool,
}

impl Installer {
    fn warn(&self, message: &str) {
        eprintln!("warning: {message}");
    }

    async fn metadata(&self, reg: &Registry, id: &str) -> Result<Metadata> {
        match reg.client.package(id).await {
            Ok(info) => {
                if info.id != id {
                    bail!("registry {} answered about {} when asked about {id}: refusing", reg.name, info.id);
                }
                self.cache.accept_metadata(&reg.name, &info)?;
                Ok(Metadata { info, offline: false })
            }
            Err(RegistryClientError::Unreachable(e)) => match self.cache.metadata(&reg.name, id)? {
                Some(info) => {
                    self.warn(&format!("registry {} is unreachable ({e}): using the cached index of {id}", reg.name));
                    Ok(Metadata { info, offline: true })
                }
                None => bail!(
                    "registry {} is unreachable ({e}) and {id} is not in the local cache: nothing was installed",
                    reg.name
                ),
            },
            Err(e) => Err(anyhow!("{id}: {e}")),
        }
    }

    /// Downloads a package file (the caller looked in the cache first); its
    /// SHA-256 must be `sha256` (what the index or lockfile lists). It is
    /// cached by [`Installer::fetch_verified`] only once it verified.
    async fn bytes(
        &self,
        reg: &Registry,
        id: &str,
        version: &semver::Version,
        sha256: &str,
        offline: bool,
    ) -> Result<Vec<u8>> {
        if offline {
            bail!(
                "registry {} is unreachable and {id} {version} is not in the local cache: nothing was installed",
                reg.name
            );
        }
        let bytes = reg.client.download(id, version).await.map_err(|e| match e {
            RegistryClientError::Unreachable(e) => anyhow!(
                "registry {} is unreachable ({e}) and {id} {version} is not in the local cache: nothing was installed",
                reg.name
            ),
            other => anyhow!("{id} {version}: {other}"),
        })?;
        let got = Digest::of(&bytes).to_hex();
        if got != sha256 {
            bail!(
                "registry {} sent {id} {version} with SHA-256 {got}, not the {sha256} it lists: the stored package was altered; nothing was installed",
                reg.name
            );
        }
        Ok(bytes)
    }

    /// Gets and verifies a package, auditing a refusal; verified
    /// downloads go to the cache for offline installs. The install gates
    /// come after, in [`Installer::install_package`].
    async fn fetch_verified(
        &self,
        reg: &Registry,
        expected: &Expected<'_>,
        offline: bool,
        cached: Option<Vec<u8>>,
    ) -> Result<(Vec<u8>, VerifiedPackage)> {
        let Expected { id, version, sha256, digest, signer } = *expected;
        let outcome = async {
            let fetched = cached.is_none();
            let bytes = match cached {
                Some(b) => b,
                None => self.bytes(reg, id, version, sha256, offline).await?,
            };
            let verified = self.verify(&bytes, id, version, digest)?;
            if let Some(s) = signer.filter(|s| verified.signer().as_str() != *s) {
                bail!(
                    "{id} {version} is signed by {}, the lockfile says {s}: nothing was installed",
                    verified.signer()
                );
            }
            if fetched {
                self.cache.put_blob(&bytes)?;
            }
            Ok((bytes, verified))
        }
        .await;
        if let Err(e) = &outcome {
            let reason = format!("from registry {}: {e:#}", reg.name);
            self.security.audit_refused(&self.subject, "skill.install", ("skill", id), &reason)?;
        }
        outcome
    }

    /// Installs through the security model's gates (denied skills,
    /// rollback, capability increase); returns a note on an accepted increase.
    fn install_package(&self, verified: &VerifiedPackage, bytes: &[u8]) -> Result<Option<String>> {
        let installed = self.security.install_verified(&self.subject, verified, bytes, self.gates)?;
        let accepted = installed.accepted_capabilities;
        if accepted.is_empty() {
            return Ok(None);
        }
        if !self.json {
            let shown: String = accepted.iter().map(|d| format!("\n  + {d}")).collect();
            eprintln!(
                "{} {} asks for more than before:{shown}\n(accepted with --accept-capabilities)",
                verified.manifest().id,
                verified.manifest().version
            );
        }
        Ok(Some(format!("accepted capability increase: {}", accepted.join("; "))))
    }

    /// Verifies against this client's trust store and checks the package
    /// is what was asked for.
    fn verify(&self, bytes: &[u8], id: &str, version: &semver::Version, digest: &str) -> Result<VerifiedPackage> {
        let verified = Package::parse(bytes).and_then(|p| p.verify(self.security.home())).with_context(|| {
            format!("{id} {version} failed verification against your trust store: nothing was installed")
        })?;
        let m = verified.manifest();
        if m.id.as_str() != id || &m.version != version {
            bail!("the package served as {id} {version} is {} {}: nothing was installed", m.id, m.version);
        }
        if verified.digest().to_hex() != digest {
            bail!(
                "{id} {version} has digest {}, not the {digest} expected: nothing was installed",
                verified.digest().to_hex()
            );
        }
        Ok(verified)
    }

    /// An agent runs only the skills its manifest lists that are installed:
    /// says which of them are not, and how to install them.
    fn hint_missing_skills(&self, id: &str, registry: &str) {
        let Ok(agent) = self.security.home().info(id) else { return };
        for skill in &agent.manifest.capabilities.skills {
            if self.security.home().info(skill.as_str()).is_err() {
                eprintln!(
                    "note: {id} invokes {skill}, which is not installed: coderclaw skill install {skill} --registry {registry}"
                );
            }
        }
    }

    /// Moving below the locked version is a rollback too (the installed
    /// version is the security model's check).
    fn check_lock_rollback(&self, id: &str, to: &semver::Version) -> Result<()> {
        match self.lock.get(id).map(|l| &l.version).filter(|v| *v > to && !self.gates.allow_downgrade) {
            Some(v) => bail!(
                "{id} {v} is locked; moving to the older {to} is a rollback: refused (pass --allow-downgrade to do it on purpose)"
            ),
            None => Ok(()),
        }
    }

    /// Installs the best match of `req` for `id` and locks it. With
    /// `only_newer` (an update), a best match not above the locked version
    /// (e.g. the locked one was yanked) leaves everything as it is. Without
    /// a requirement (`*`), the lockfile records `^<installed version>`, so
    /// `skill update` does not cross a major version on its own.
    async fn install(
        &mut self,
        reg: &Registry,
        id: &str,
        req: &semver::VersionReq,
        only_newer: bool,
    ) -> Result<Outcome> {
        self.security.check_not_denied(&self.subject, "skill.install", id)?;
        let meta = self.metadata(reg, id).await?;
        let chosen = meta.info.resolve(req).cloned().ok_or_else(|| no_match(&meta.info, req))?;
        if let Some(locked) = self.lock.get(id).filter(|l| only_newer && l.version >= chosen.version) {
            let (version, digest) = (locked.version.to_string(), locked.digest.clone());
            return Ok(Outcome { id: id.to_owned(), version, action: "unchanged", digest, note: None });
        }
        self.check_lock_rollback(id, &chosen.version)?;
        let installed = self.security.home().info(id).ok();
        let recorded = if *req == semver::VersionReq::STAR {
            semver::VersionReq::parse(&format!("^{}", chosen.version))?
        } else {
            req.clone()
        };
        // Nothing to do when this exact package is installed and locked
        // (lockfile values are only ever written from verified packages).
        let locked = self.lock.get(id).filter(|l| l.digest == chosen.digest && l.sha256 == chosen.sha256);
        if installed.is_some_and(|i| i.digest.to_hex() == chosen.digest) && locked.is_some() {
            let signer = locked.map(|l| l.signer.clone()).unwrap_or_default();
            self.lock_entry(reg, id, &recorded, &chosen, &signer)?;
            return Ok(self.outcome(id, &chosen, "unchanged", None));
        }
        let expected =
            Expected { id, version: &chosen.version, sha256: &chosen.sha256, digest: &chosen.digest, signer: None };
        let cached = self.cache.blob(&chosen.sha256);
        let (bytes, verified) = self.fetch_verified(reg, &expected, meta.offline, cached).await?;
        let note = self.install_package(&verified, &bytes)?;
        self.lock_entry(reg, id, &recorded, &chosen, verified.signer().as_str())?;
        Ok(self.outcome(id, &chosen, "installed", note))
    }

    fn lock_entry(
        &mut self,
        reg: &Registry,
        id: &str,
        req: &semver::VersionReq,
        v: &VersionInfo,
        signer: &str,
    ) -> Result<()> {
        self.lock.upsert(LockedSkill {
            id: id.to_owned(),
            version: v.version.clone(),
            requirement: req.clone(),
            digest: v.digest.clone(),
            sha256: v.sha256.clone(),
            signer: signer.to_owned(),
            registry: reg.name.clone(),
        });
        self.lock.write(&self.lock_path)?;
        Ok(())
    }

    fn outcome(&self, id: &str, v: &VersionInfo, action: &'static str, note: Option<String>) -> Outcome {
        Outcome { id: id.to_owned(), version: v.version.to_string(), action, digest: v.digest.clone(), note }
    }

    /// Installs exactly what the lockfile entry pins.
    async fn install_locked(&self, reg: &Registry, entry: &LockedSkill) -> Result<Outcome> {
        let id = entry.id.as_str();
        self.security.check_not_denied(&self.subject, "skill.install", id)?;
        let done = |action, note| Outcome {
            id: id.to_owned(),
            version: entry.version.to_string(),
            action,
            digest: entry.digest.clone(),
            note,
        };
        if self.security.home().info(id).is_ok_and(|i| i.digest.to_hex() == entry.digest) {
            return Ok(done("unchanged", None));
        }
        let mut note = None;
        // The index says whether the pinned version was yanked; a cached
        // package installs without it when the registry is down.
        let cached = self.cache.blob(&entry.sha256);
        let meta = match self.metadata(reg, id).await {
            Ok(m) => Some(m),
            Err(e) if cached.is_some() => {
                self.warn(&format!("{e}; installing the cached package without checking whether it was yanked"));
                None
            }
            Err(e) => return Err(e),
        };
        if let Some(meta) = &meta {
            let v = meta.info.exact(&entry.version).ok_or_else(|| {
                anyhow!("{id} {} (locked) is not in registry {}: nothing was installed", entry.version, reg.name)
            })?;
            if v.yanked {
                let reason = v.yank_reason.clone().unwrap_or_default();
                let message =
                    format!("{id} {} is yanked ({reason}); installing it because the lockfile pins it", entry.version);
                self.warn(&message);
                note = Some(message);
            }
        }
        let offline = meta.as_ref().is_none_or(|m| m.offline);
        let expected = Expected {
            id,
            version: &entry.version,
            sha256: &entry.sha256,
            digest: &entry.digest,
            signer: Some(&entry.signer),
        };
        let (bytes, verified) = self.fetch_verified(reg, &expected, offline, cached).await?;
        let gate = self.install_package(&verified, &bytes)?;
        Ok(done("installed", note.or(gate)))
    }
}

fn no_match(info: &PackageInfo, req: &semver::VersionReq) -> anyhow::Error {
    let list: Vec<String> = info
        .versions
        .iter()
        .map(|v| if v.yanked { format!("{} (yanked)", v.version) } else { v.version.to_string() })
        .collect();
    anyhow!("no version of {} matches `{req}` (yanked versions are skipped): published {}", info.id, list.join(", "))
}

/// `id` or `id@req`.
fn parse_spec(spec: &str) -> Result<(String, semver::VersionReq)> {
    let (id, req) = match spec.split_once('@') {
        Some((id, req)) => (
            id,
            semver::VersionReq::parse(req)
                .with_context(|| format!("`{req}` is not a version requirement (e.g. ^1.2, =1.0.3)"))?,
        ),
        None => (spec, semver::VersionReq::STAR),
    };
    coderclaw_core::manifest::SkillId::parse(id).map_err(|e| anyhow!("{e}"))?;
    Ok((id.to_owned(), req))
}

/// Install skills: from a package file, from a registry, or exactly what
/// the lockfile says.
///
///   coderclaw skill install ./scanner-1.2.0.ccpkg
///   coderclaw skill install team/security-scanner@^1 --registry team-registry
///   coderclaw skill install                # everything in .coderClaw/skills.lock
///
/// From a registry: resolves the highest version matching the requirement
/// that is not yanked, downloads it (or takes it from the local cache),
/// checks its SHA-256, verifies its signature against YOUR trust store
/// (the registry does not vouch for itself), installs it and records it in
/// the workspace's .coderClaw/skills.lock (without a requirement, as
/// ^<version>). With no argument, installs exactly the locked versions;
/// their digests must match. Refused: skills
/// the organisation policy denies, moving to an older version (unless
/// --allow-downgrade), and asking for more capabilities than the installed
/// version (unless --accept-capabilities, after showing the difference).
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub(crate) struct InstallArgs {
    /// A .ccpkg file, or `namespace/name[@<semver requirement>]`.
    pub package: Option<String>,
    #[command(flatten)]
    pub common: InstallOptions,
    /// Allow moving a skill to an older version than installed or locked.
    #[arg(long)]
    pub allow_downgrade: bool,
}

/// What `skill install` and `skill update` share.
#[derive(clap::Args, Debug)]
pub(crate) struct InstallOptions {
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// The project whose .coderClaw/skills.lock is used (default: the current directory).
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Accept a new version that asks for more capabilities than the installed one.
    #[arg(long)]
    pub accept_capabilities: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Move locked skills to the newest version their requirement allows.
///
/// For each skill in .coderClaw/skills.lock (or only `id`), asks the
/// skill's registry for the highest non-yanked version within the locked
/// requirement and installs it as `skill install` would (verification,
/// capability gate, organisation policy), updating the lockfile.
#[derive(clap::Args, Debug)]
pub(crate) struct UpdateArgs {
    /// Only this skill.
    pub id: Option<String>,
    #[command(flatten)]
    pub common: InstallOptions,
}

/// Publish a signed package to a registry (needs a `publish` token).
///
/// The registry checks the signature against the keys its namespace
/// authorises and never lets a version be published twice with different
/// bytes.
#[derive(clap::Args, Debug)]
pub(crate) struct PublishArgs {
    /// The package file (.ccpkg, from `coderclaw skill sign`).
    pub package: PathBuf,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Yank a published version (needs a `yank` token): new installs skip it;
/// lockfiles that pin it still install it, with a warning.
#[derive(clap::Args, Debug)]
pub(crate) struct YankArgs {
    /// `namespace/name@<version>`.
    pub spec: String,
    /// Why (shown to whoever installs it from a lockfile).
    #[arg(long)]
    pub reason: String,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// The workspace's lockfile: where it is and what it says.
fn lockfile(workspace: Option<&Path>) -> Result<(PathBuf, Lockfile)> {
    let path = Lockfile::path(&home::workspace(workspace)?);
    let lock = Lockfile::read(&path)?;
    Ok((path, lock))
}

/// Opens the security model, so call it after the organisation policies
/// were refreshed: it enforces the cached ones.
fn installer(lock: (PathBuf, Lockfile), gates: InstallGates, json: bool) -> Result<Installer> {
    let (security, subject) = home::open_checked_as(Permission::ConfigWrite, "skill.install", ("skill", "-"))?;
    let cache = ClientCache::new(security.home().root());
    let (lock_path, lock) = lock;
    Ok(Installer { security, subject, cache, lock_path, lock, gates, json })
}

fn report(outcomes: &[Outcome], json_out: bool) -> Result<ExitCode> {
    if json_out {
        print_json(&outcomes.iter().map(Outcome::json).collect::<Vec<_>>())?;
    } else if outcomes.is_empty() {
        println!(
            "nothing to install: the lockfile is empty (install with `coderclaw skill install <id> --registry <name>`)"
        );
    } else {
        for o in outcomes {
            println!("{:<10} {} {} (sha256:{})", o.action, o.id, o.version, o.digest);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Refreshes the organisation policies of `reg` before anything is
/// installed from it, so a newly denied skill is refused now.
fn refresh_policies(rt: &tokio::runtime::Runtime, reg: &Registry) -> Result<()> {
    let cache = ClientCache::new(&home::state_dir()?);
    rt.block_on(sync_policies(reg, &cache))?;
    Ok(())
}

pub(crate) fn install(args: InstallArgs) -> Result<ExitCode> {
    let InstallArgs { package, common: c, allow_downgrade } = args;
    let gates = InstallGates { accept_capabilities: c.accept_capabilities, allow_downgrade };
    if let Some(p) = package.as_deref().filter(|p| p.ends_with(".ccpkg") || Path::new(p).is_file()) {
        if c.registry.registry.is_some() {
            bail!("{p} is a package file: --registry is for installing by id (namespace/name)");
        }
        return crate::package::install_file(Path::new(p), gates, c.json);
    }
    let rt = crate::runtime()?;
    match package {
        Some(spec) => {
            let (id, req) = parse_spec(&spec)?;
            let reg = c.registry.open(None)?;
            refresh_policies(&rt, &reg)?;
            let mut inst = installer(lockfile(c.workspace.as_deref())?, gates, c.json)?;
            let outcome = rt.block_on(inst.install(&reg, &id, &req, false))?;
            if !c.json {
                inst.hint_missing_skills(&id, &reg.name);
            }
            if let Some(n) = outcome.note.as_ref().filter(|_| !c.json) {
                eprintln!("note: {n}");
            }
            report(&[outcome], c.json)
        }
        None => {
            let lock = lockfile(c.workspace.as_deref())?;
            let registries = lockfile_registries(&rt, &c.registry, &lock.1)?;
            let inst = installer(lock, gates, c.json)?;
            let mut outcomes = Vec::new();
            for entry in &inst.lock.skills {
                outcomes.push(rt.block_on(inst.install_locked(&registries[&entry.registry], entry))?);
            }
            report(&outcomes, c.json)
        }
    }
}

/// Opens, once each, the registries the lockfile names, and refreshes
/// their organisation policies before anything is installed from them.
fn lockfile_registries(
    rt: &tokio::runtime::Runtime,
    args: &RegistryArgs,
    lock: &Lockfile,
) -> Result<BTreeMap<String, Registry>> {
    let mut out = BTreeMap::new();
    for s in &lock.skills {
        if !out.contains_key(&s.registry) {
            let reg = args.open(Some(&s.registry))?;
            refresh_policies(rt, &reg)?;
            out.insert(s.registry.clone(), reg);
        }
    }
    Ok(out)
}

pub(crate) fn update(args: UpdateArgs) -> Result<ExitCode> {
    let UpdateArgs { id, common: c } = args;
    let rt = crate::runtime()?;
    let lock = lockfile(c.workspace.as_deref())?;
    let registries = lockfile_registries(&rt, &c.registry, &lock.1)?;
    let gates = InstallGates { accept_capabilities: c.accept_capabilities, allow_downgrade: false };
    let mut inst = installer(lock, gates, c.json)?;
    let entries: Vec<LockedSkill> =
        inst.lock.skills.iter().filter(|s| id.as_deref().is_none_or(|id| s.id == id)).cloned().collect();
    if let (Some(id), true) = (&id, entries.is_empty()) {
        bail!(
            "{id} is not in {}: install it first with `coderclaw skill install {id} --registry <name>`",
            inst.lock_path.display()
        );
    }
    let mut outcomes = Vec::new();
    for entry in entries {
        // What is installed first matches the lockfile; then it moves up.
        let reg = &registries[&entry.registry];
        rt.block_on(inst.install_locked(reg, &entry))?;
        outcomes.push(rt.block_on(inst.install(reg, &entry.id, &entry.requirement, true))?);
    }
    report(&outcomes, c.json)
}

pub(crate) fn publish(args: PublishArgs) -> Result<ExitCode> {
    let bytes = std::fs::read(&args.package).with_context(|| format!("cannot read {}", args.package.display()))?;
    let manifest = Package::parse(&bytes)
        .and_then(|p| p.manifest())
        .with_context(|| format!("{} is not a valid package", args.package.display()))?;
    let reg = args.registry.open(None)?;
    if args.registry.token.is_none() {
        bail!("publishing needs a `publish` token: pass --token or set {ENV_REGISTRY_TOKEN}");
    }
    let reply = crate::runtime()?
        .block_on(reg.client.publish(bytes))
        .with_context(|| format!("{} {} was not published", manifest.id, manifest.version))?;
    if args.json {
        print_json(&reply)?;
    } else if reply.already_published {
        println!("{} {} was already published with these exact bytes: nothing changed", reply.id, reply.version);
    } else {
        println!(
            "published {} {} to {} (sha256:{}, signed by {})",
            reply.id, reply.version, reg.name, reply.digest, reply.signer
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn yank(args: YankArgs) -> Result<ExitCode> {
    let (id, version) = args
        .spec
        .split_once('@')
        .ok_or_else(|| anyhow!("`{}`: give the exact version to yank, as namespace/name@1.2.3", args.spec))?;
    let version = semver::Version::parse(version).with_context(|| format!("`{version}` is not a version"))?;
    let reg = args.registry.open(None)?;
    let v = crate::runtime()?.block_on(reg.client.yank(id, &version, &args.reason))?;
    if args.json {
        print_json(&v)?;
    } else {
        println!("yanked {id} {} on {}: new installs skip it", v.version, reg.name);
    }
    Ok(ExitCode::SUCCESS)
}
