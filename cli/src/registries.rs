//! `coderclaw registry add|list|remove`: the registries this machine uses,
//! kept under `registries:` in config.yaml (edited in place, comments kept),
//! and trusting a namespace's keys after their fingerprints are confirmed.

use crate::home;
use crate::install::{client_config, config_path};
use crate::output::print_json;
use anyhow::{Context, Result, bail};
use coderclaw_core::config_edit;
use coderclaw_core::keys::PublicKey;
use coderclaw_core::policy::RegistryEntry;
use coderclaw_core::rbac::Permission;
use coderclaw_registry::RegistryClient;
use coderclaw_registry::onboard::{self, NamespaceKeys};
use serde_json::json;
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

/// Largest config.yaml these commands edit.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Add a team registry to config.yaml, show its keys, and optionally trust them.
///
/// Asks the registry which namespaces it serves and prints each one's keys
/// with their fingerprints. Signer keys sign a namespace's packages;
/// admin keys also sign its organisation policy. Nothing is trusted unless
/// you ask with --trust NAMESPACE: then you confirm the fingerprints
/// (compare them with what your registry's admin gave you), or, in a
/// script, pass each with --fingerprint. Trusting adds the namespace's keys
/// to your trust store (`coderclaw trust list`) and its admin keys to
/// `namespace-keys` (whose policies you accept).
///
///   coderclaw registry add team-registry http://registry.example:7421 --default
///   coderclaw registry add team-registry http://registry.example:7421 --trust team --fingerprint 3f9a0c41b2d87e65
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub(crate) struct AddArgs {
    /// A name for it (letters, digits, `-`, `_`), used as `--registry NAME`.
    pub name: String,
    /// Its base URL (http:// or https://).
    pub url: String,
    /// Use it when a command names no registry.
    #[arg(long)]
    pub default: bool,
    /// Trust this namespace's keys (repeatable).
    #[arg(long = "trust", value_name = "NAMESPACE")]
    pub trust: Vec<String>,
    /// A fingerprint you confirmed (the key id, or the whole `ed25519:` key);
    /// repeat for each key. Without it, you are asked on the terminal.
    #[arg(long = "fingerprint", value_name = "FINGERPRINT")]
    pub fingerprints: Vec<String>,
    /// Registry token, for a registry whose namespaces are private.
    #[arg(long, value_name = "TOKEN", env = crate::install::ENV_REGISTRY_TOKEN, hide_env_values = true)]
    pub token: Option<String>,
    /// Extra PEM CA certificates trusted for an https registry.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// List the registries in config.yaml.
#[derive(clap::Args, Debug)]
pub(crate) struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Remove a registry from config.yaml.
///
/// Keys you trusted through it stay in the trust store (skills they signed
/// may be installed): revoke them with `coderclaw trust revoke KEY_ID`.
#[derive(clap::Args, Debug)]
pub(crate) struct RemoveArgs {
    /// The registry's name.
    pub name: String,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
}

/// config.yaml's text ("" when there is none) and its path.
fn read_config() -> Result<(String, PathBuf)> {
    let path = config_path()?;
    let link = coderclaw_core::fsutil::FinalLink::Follow;
    match coderclaw_core::fsutil::read_text_bounded(&path, MAX_CONFIG_BYTES, link) {
        Ok(text) => Ok((text, path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((String::new(), path)),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

fn write_config(path: &std::path::Path, text: &str) -> Result<()> {
    coderclaw_core::fsutil::write_durably(path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

pub(crate) fn add(args: AddArgs) -> Result<ExitCode> {
    if !valid_name(&args.name) {
        bail!("{:?} is not a registry name: use letters, digits, `-` and `_`", args.name);
    }
    if !coderclaw_registry::registries::is_url(&args.url) {
        bail!("{:?} is not an http:// or https:// URL", args.url);
    }
    if let Some(ns) = args.trust.iter().find(|ns| coderclaw_core::manifest::SkillId::parse(&format!("{ns}/x")).is_err())
    {
        bail!("--trust {ns:?}: not a namespace name (lowercase letters, digits and `-`)");
    }
    let (security, _) = home::open_checked_as(Permission::ConfigWrite, "registry.add", ("registry", &args.name))?;
    let file = config_path()?.display().to_string();
    if client_config()?.registries.contains_key(&args.name) {
        bail!(
            "a registry named `{}` is configured already ({file}): `coderclaw registry remove {}` first",
            args.name,
            args.name
        );
    }
    let client = RegistryClient::new(&args.url, args.token.clone(), args.ca.as_deref())?;
    let rt = crate::runtime()?;
    let served = rt
        .block_on(onboard::served_namespaces(&client))
        .with_context(|| format!("{} did not answer as a coderclaw registry", args.url))?;
    let mut namespaces: Vec<String> = served.clone();
    for ns in &args.trust {
        if !namespaces.contains(ns) {
            namespaces.push(ns.clone());
        }
    }
    let mut listed = Vec::new();
    for ns in &namespaces {
        listed.push(rt.block_on(onboard::namespace_keys(&client, ns))?);
    }
    let to_trust: Vec<NamespaceKeys> = listed.iter().filter(|n| args.trust.contains(&n.namespace)).cloned().collect();
    if !args.json {
        print_keys(&args.url, &listed);
    }
    if !to_trust.is_empty() {
        if args.json && args.fingerprints.is_empty() {
            bail!(
                "with --json the keys are not shown for confirming: pass each fingerprint you checked with --fingerprint"
            );
        }
        refuse_revoked_here(&security, &to_trust)?;
        confirm(&to_trust, &args.fingerprints)?;
    } else if !args.fingerprints.is_empty() {
        bail!("--fingerprint confirms keys to trust: pass --trust NAMESPACE with it");
    }

    let mut entry = RegistryEntry { url: args.url.clone(), ..Default::default() };
    for ns in &to_trust {
        let admins: Vec<String> = ns.active().filter(|k| k.admin).map(|k| k.public_key.clone()).collect();
        if !admins.is_empty() {
            entry.namespace_keys.insert(ns.namespace.clone(), admins);
        }
    }
    // Read now, after the network: an edit made meanwhile is kept.
    let (text, path) = read_config()?;
    let edited = config_edit::add_registry(&text, &file, &args.name, &entry, args.default)?;
    // Keys first: a registry in config.yaml whose keys failed to go in
    // would look onboarded when it is not.
    let mut trusted = Vec::new();
    for ns in &to_trust {
        for k in ns.active() {
            let key = PublicKey::parse(&k.public_key)?;
            security.home().trust_add(&ns.namespace, &key)?;
            trusted.push(json!({ "namespace": ns.namespace, "fingerprint": k.fingerprint, "admin": k.admin }));
        }
    }
    write_config(&path, &edited).context("the keys above are trusted, but the registry was not added")?;
    if args.json {
        print_json(&json!({
            "name": args.name, "url": args.url, "default": args.default,
            "namespaces": listed, "trusted": trusted, "config": file,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "added registry {} ({}) to {file}{}",
        args.name,
        args.url,
        if args.default { ", as the default" } else { "" }
    );
    for t in &trusted {
        println!(
            "trusted {} for {}",
            t["fingerprint"].as_str().unwrap_or_default(),
            t["namespace"].as_str().unwrap_or_default()
        );
    }
    if to_trust.is_empty() && !served.is_empty() {
        println!(
            "nothing trusted yet: after checking a namespace's fingerprints, `coderclaw registry remove {0}` and add it again with --trust NAMESPACE (or `coderclaw trust add NAMESPACE KEY`)",
            args.name
        );
    }
    let pick = if args.default { String::new() } else { format!(" --registry {}", args.name) };
    println!("next: coderclaw skill search{pick}   then   coderclaw skill install NAMESPACE/NAME{pick}");
    Ok(ExitCode::SUCCESS)
}

fn print_keys(url: &str, listed: &[NamespaceKeys]) {
    if listed.is_empty() {
        println!("{url} serves no namespace you can read");
    }
    for ns in listed {
        // Names and keys were checked to be plain text (onboard).
        println!("namespace {}:", ns.namespace);
        if ns.keys.is_empty() {
            println!("  (no keys)");
        }
        for k in &ns.keys {
            let role =
                if k.admin { "admin (signs packages and the organisation policy)" } else { "signer (signs packages)" };
            let state = if k.revoked { "  REVOKED" } else { "" };
            println!("  {}  {role}{state}", k.fingerprint);
        }
    }
}

/// A key revoked in this machine's trust store stays revoked: refused
/// before anything is written, rather than reported as trusted.
fn refuse_revoked_here(security: &coderclaw::security::Security, to_trust: &[NamespaceKeys]) -> Result<()> {
    let trust = security.home().trust_list()?;
    for k in to_trust.iter().flat_map(NamespaceKeys::active) {
        if trust.iter().any(|t| t.key_id == k.fingerprint && t.revoked_at.is_some()) {
            bail!(
                "key {} was revoked on this machine and stays revoked: nothing was added or trusted (ask your registry's admin why it is still listed)",
                k.fingerprint
            );
        }
    }
    Ok(())
}

/// The user confirmed exactly the keys about to be trusted: by
/// --fingerprint, or by answering on the terminal.
fn confirm(to_trust: &[NamespaceKeys], fingerprints: &[String]) -> Result<()> {
    onboard::check_active(to_trust)?;
    if !fingerprints.is_empty() {
        return onboard::confirm(to_trust, fingerprints)
            .context("nothing was added or trusted: pass the fingerprint of each key you checked, and only those");
    }
    if !std::io::stdin().is_terminal() {
        let all: Vec<&str> = to_trust.iter().flat_map(|n| n.active()).map(|k| k.fingerprint.as_str()).collect();
        bail!(
            "trusting keys needs their fingerprints confirmed: compare them with what your registry's admin gave you and pass each with --fingerprint ({})",
            all.join(", ")
        );
    }
    let names: Vec<&str> = to_trust.iter().map(|n| n.namespace.as_str()).collect();
    eprint!("trust the keys above for {}? They will verify every skill of it you install. [y/N] ", names.join(", "));
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().take_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        bail!("nothing was added or trusted");
    }
    Ok(())
}

/// One line from a terminal, bounded.
trait TakeLine {
    fn take_line(&mut self, into: &mut String) -> std::io::Result<()>;
}

impl<R: std::io::BufRead> TakeLine for R {
    fn take_line(&mut self, into: &mut String) -> std::io::Result<()> {
        std::io::Read::take(self, 1024).read_line(into).map(|_| ())
    }
}

pub(crate) fn list(args: ListArgs) -> Result<ExitCode> {
    home::open_checked(Permission::ConfigRead, "registry.list", ("registry", "*"))?;
    let config = client_config()?;
    if args.json {
        let list: Vec<_> = config
            .registries
            .iter()
            .map(|(name, e)| {
                json!({
                    "name": name, "url": e.url,
                    "default": config.default_registry.as_deref() == Some(name.as_str()),
                    "namespaceKeys": e.namespace_keys,
                })
            })
            .collect();
        print_json(&list)?;
    } else if config.registries.is_empty() {
        println!("no registries: add one with `coderclaw registry add NAME URL`");
    } else {
        for (name, e) in &config.registries {
            let default = if config.default_registry.as_deref() == Some(name.as_str()) { "  (default)" } else { "" };
            println!("{name:<20} {}{default}", e.url);
            for (ns, keys) in &e.namespace_keys {
                println!("  policy of {ns}: accepted from {} admin key(s)", keys.len());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn remove(args: RemoveArgs) -> Result<ExitCode> {
    home::open_checked_as(Permission::ConfigWrite, "registry.remove", ("registry", &args.name))?;
    let (text, path) = read_config()?;
    let edited = config_edit::remove_registry(&text, &path.display().to_string(), &args.name)?;
    write_config(&path, &edited)?;
    println!("removed registry {} from {}", args.name, path.display());
    println!("keys trusted through it stay trusted: `coderclaw trust list`, `coderclaw trust revoke KEY_ID`");
    Ok(ExitCode::SUCCESS)
}
