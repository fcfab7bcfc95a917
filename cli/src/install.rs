//! `coderclaw skill install [id[@req]]`, `skill update`, `skill publish`
//! and `skill yank`: arguments, the registry choice, and what is printed.
//! The install pipeline itself (digest, signature against this client's
//! trust store, lockfile pins, no rollback, offline cache) is
//! `coderclaw_registry::install`, installing through the security model's
//! gates (`coderclaw::GatedInstall`).

use crate::home;
use crate::output::print_json;
use anyhow::{Context, Result, anyhow, bail};
use coderclaw::GatedInstall;
use coderclaw::security::InstallGates;
use coderclaw_core::package::Package;
use coderclaw_core::policy::SecurityConfig;
use coderclaw_core::rbac::Permission;
use coderclaw_registry::cache::ClientCache;
use coderclaw_registry::install::{InstallError, Installer, Outcome, parse_spec};
use coderclaw_registry::lockfile::{LockedSkill, Lockfile};
use coderclaw_registry::registries::{ChooseError, PolicySync, Registry, is_url, sync_policies};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

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

/// The configuration, read without opening the security model (whose
/// start-up checks the cached policies this may refresh); the default when
/// there is no config.yaml.
pub(crate) fn client_config() -> Result<SecurityConfig> {
    let path = config_path()?;
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(SecurityConfig::from_yaml(&text, &path.display().to_string())?.0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SecurityConfig::default()),
        Err(e) => Err(anyhow!("{}: {e}", path.display())),
    }
}

pub(crate) fn config_path() -> Result<PathBuf> {
    Ok(home::state_dir()?.join("config.yaml"))
}

impl RegistryArgs {
    /// The registry named by --registry, else `from_lockfile` (a lockfile's
    /// entry, which may only name a registry this user configured).
    pub(crate) fn open(&self, from_lockfile: Option<&str>) -> Result<Registry> {
        // A URL chosen on the command line needs no configuration (as
        // before): a broken config.yaml does not block it.
        let config = match (self.registry.as_deref(), from_lockfile) {
            (Some(url), _) if is_url(url) => SecurityConfig::default(),
            _ => client_config()?,
        };
        // Named on the command line, else by the lockfile (where its skills
        // came from), else the configured default.
        let chosen = self.registry.as_deref().or(if from_lockfile.is_none() {
            config.default_registry.as_deref()
        } else {
            None
        });
        Registry::choose(chosen, from_lockfile, &config.registries, self.token.clone(), self.ca.as_deref())
            .map_err(|e| {
                let config = config_path().map(|p| p.display().to_string()).unwrap_or_else(|_| "config.yaml".into());
                let hint = match &e {
                    ChooseError::NoneNamed => "pass --registry <name|url>, or set a default with `coderclaw registry add NAME URL --default`".to_owned(),
                    ChooseError::LockfileUrlNotConfigured { url } => {
                        format!("add it with `coderclaw registry add NAME {url}` (it goes in {config}), or pass --registry to choose one")
                    }
                    ChooseError::Unknown { name, .. } => {
                        format!("add it with `coderclaw registry add {name} URL` (it goes in {config}), or pass its URL")
                    }
                    ChooseError::Client(_) => return anyhow!(e),
                };
                anyhow!("{e}: {hint}")
            })
    }
}

/// Syncs `reg`'s organisation policies, warning on stderr about each one
/// the registry could not serve (the cached one stays in force).
pub(crate) fn refresh_policies(rt: &tokio::runtime::Runtime, reg: &Registry) -> Result<Vec<PolicySync>> {
    let cache = ClientCache::new(&home::state_dir()?);
    let report = rt.block_on(sync_policies(reg, &cache))?;
    for warning in report.iter().filter_map(|r| r.kept_cached.as_deref()) {
        eprintln!("warning: {warning}");
    }
    Ok(report)
}

/// Install skills: from a package file, from a registry, or exactly what
/// the lockfile says.
///
///   coderclaw skill install ./scanner-1.2.0.ccpkg
///   coderclaw skill install team/security-scanner@^1 --registry team-registry
///   coderclaw skill install                # everything in .coderClaw/skills.lock
///   coderclaw skill install --required     # what the organisation policy requires and is missing
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
    /// Install the skills the organisation policy requires that are not
    /// installed (its requiredSkills, after refreshing the registry's
    /// policies), from the registry, each verified as any install.
    #[arg(long, conflicts_with = "package")]
    pub required: bool,
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

/// The caller, checked to hold `config.write`, installing through the
/// security model's gates. Opens the security model, so call it after the
/// organisation policies were refreshed: it enforces the cached ones.
fn target() -> Result<GatedInstall> {
    let (security, subject) = home::open_checked_as(Permission::ConfigWrite, "skill.install", ("skill", "-"))?;
    Ok(GatedInstall::new(security, subject))
}

fn installer(target: &GatedInstall, lock: (PathBuf, Lockfile), gates: InstallGates) -> Installer<'_> {
    let cache = ClientCache::new(target.security().home().root());
    Installer::new(target, cache, lock.0, lock.1, gates)
}

/// Runs one install step, printing its warnings whatever the result, and
/// (for a person) the capability increase it accepted.
fn step(
    rt: &tokio::runtime::Runtime,
    inst: &mut Installer<'_>,
    json: bool,
    work: impl AsyncFnOnce(&mut Installer<'_>) -> Result<Outcome, InstallError>,
) -> Result<Outcome> {
    let result = rt.block_on(work(inst));
    for w in inst.take_warnings() {
        eprintln!("warning: {w}");
    }
    let outcome = result?;
    if !json && !outcome.accepted_capabilities.is_empty() {
        let shown: String = outcome.accepted_capabilities.iter().map(|d| format!("\n  + {d}")).collect();
        eprintln!(
            "{} {} asks for more than before:{shown}\n(accepted with --accept-capabilities)",
            outcome.id, outcome.version
        );
    }
    Ok(outcome)
}

fn report(outcomes: &[Outcome], json_out: bool) -> Result<ExitCode> {
    if json_out {
        print_json(&outcomes)?;
    } else if outcomes.is_empty() {
        println!(
            "nothing to install: the lockfile is empty (install with `coderclaw skill install <id> --registry <name>`)"
        );
    } else {
        for o in outcomes {
            println!("{:<10} {} {} (sha256:{})", o.action.as_str(), o.id, o.version, o.digest);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn install(args: InstallArgs) -> Result<ExitCode> {
    let InstallArgs { package, common: c, allow_downgrade, required } = args;
    let gates = InstallGates { accept_capabilities: c.accept_capabilities, allow_downgrade };
    if required {
        return install_required(c, gates);
    }
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
            let target = target()?;
            let mut inst = installer(&target, lockfile(c.workspace.as_deref())?, gates);
            let outcome = step(&rt, &mut inst, c.json, async |i| i.install(&reg, &id, &req, false).await)?;
            if !c.json {
                for skill in inst.missing_skills(&id) {
                    eprintln!(
                        "note: {id} invokes {skill}, which is not installed: coderclaw skill install {skill} --registry {}",
                        reg.name
                    );
                }
                if let Some(n) = &outcome.note {
                    eprintln!("note: {n}");
                }
            }
            report(&[outcome], c.json)
        }
        None => {
            let lock = lockfile(c.workspace.as_deref())?;
            let registries = lockfile_registries(&rt, &c.registry, &lock.1)?;
            let target = target()?;
            let mut inst = installer(&target, lock, gates);
            let mut outcomes = Vec::new();
            for entry in inst.lock().skills.clone() {
                let reg = &registries[&entry.registry];
                outcomes.push(step(&rt, &mut inst, c.json, async |i| i.install_locked(reg, &entry).await)?);
            }
            report(&outcomes, c.json)
        }
    }
}

/// `skill install --required`: the organisation's required skills that are
/// missing, each resolved to one id on the registry (a bare name must be
/// published by exactly one namespace) and installed.
fn install_required(c: InstallOptions, gates: InstallGates) -> Result<ExitCode> {
    let rt = crate::runtime()?;
    let reg = c.registry.open(None)?;
    refresh_policies(&rt, &reg)?;
    let target = target()?;
    let missing = target.security().missing_required_skills()?;
    let mut ids = Vec::new();
    for required in &missing {
        if required.contains('/') {
            ids.push(required.clone());
            continue;
        }
        let hits = rt.block_on(reg.client.search(required, None, None))?;
        let named: Vec<&str> =
            hits.iter().map(|h| h.id.as_str()).filter(|id| coderclaw_core::policy::id_matches(required, id)).collect();
        match named.as_slice() {
            [one] => ids.push((*one).to_owned()),
            [] => bail!("the organisation requires `{required}`, and registry {} has no skill of that name", reg.name),
            many => bail!(
                "the organisation requires `{required}`, which registry {} has in several namespaces ({}): install the one you mean by id",
                reg.name,
                many.join(", ")
            ),
        }
    }
    let mut inst = installer(&target, lockfile(c.workspace.as_deref())?, gates);
    let mut outcomes = Vec::new();
    for id in &ids {
        let req = semver::VersionReq::STAR;
        outcomes.push(step(&rt, &mut inst, c.json, async |i| i.install(&reg, id, &req, false).await)?);
    }
    if outcomes.is_empty() && !c.json {
        println!("nothing to install: every skill the organisation policy requires is installed");
        return Ok(ExitCode::SUCCESS);
    }
    report(&outcomes, c.json)
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
    let target = target()?;
    let mut inst = installer(&target, lock, gates);
    let entries: Vec<LockedSkill> =
        inst.lock().skills.iter().filter(|s| id.as_deref().is_none_or(|id| s.id == id)).cloned().collect();
    if let (Some(id), true) = (&id, entries.is_empty()) {
        bail!(
            "{id} is not in {}: install it first with `coderclaw skill install {id} --registry <name>`",
            inst.lock_path().display()
        );
    }
    let mut outcomes = Vec::new();
    for entry in entries {
        // What is installed first matches the lockfile; then it moves up.
        let reg = &registries[&entry.registry];
        step(&rt, &mut inst, c.json, async |i| i.install_locked(reg, &entry).await)?;
        outcomes
            .push(step(&rt, &mut inst, c.json, async |i| i.install(reg, &entry.id, &entry.requirement, true).await)?);
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
