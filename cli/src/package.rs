//! `coderclaw skill sign | verify | list | info | remove`, and installing a package file.

use crate::build::build;
use crate::home;
use crate::output::print_json;
use anyhow::{Context, Result, bail};
use coderclaw::Host;
use coderclaw::home::{HomeError, InstalledSkill};
use coderclaw::security::InstallGates;
use coderclaw_core::manifest::Manifest;
use coderclaw_core::package::{Package, VerifiedPackage};
use coderclaw_core::rbac::Permission;
use coderclaw_core::units::format_size;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Sign a skill into a package file (`<name>-<version>.ccpkg`).
///
/// Given a skill crate directory, builds it (release, wasm32-wasip2) and
/// reads its skill.toml. Given a .wasm file, reads --manifest (default: a
/// skill.toml beside it). The signature (Ed25519) covers the component and
/// the manifest together, so the capabilities asked for are signed with the code.
#[derive(clap::Args, Debug)]
pub(crate) struct SignArgs {
    /// A skill crate directory or a built .wasm component.
    pub source: PathBuf,
    /// Name of the signing key (see `coderclaw key list`).
    #[arg(long)]
    pub key: String,
    /// The manifest (skill.toml) when signing a .wasm file.
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// Where to write the package (default: `<name>-<version>.ccpkg` here).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Check a package: signature, signer, namespace; print what it asks for.
///
/// Exits 0 only when the package is signed by a key the trust store trusts
/// for the package's namespace and that key is not revoked; otherwise exits
/// 1 and says why. Nothing is installed.
#[derive(clap::Args, Debug)]
pub(crate) struct VerifyArgs {
    /// The package file (.ccpkg).
    pub package: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// List installed skills.
#[derive(clap::Args, Debug)]
pub(crate) struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Show an installed skill: version, digest, signer, requested capabilities.
#[derive(clap::Args, Debug)]
pub(crate) struct InfoArgs {
    /// The skill id, e.g. team/security-scanner (with a registry, optionally
    /// `@<requirement>`, e.g. team/security-scanner@^1).
    pub id: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Describe the version a registry would install instead (also used,
    /// with the default registry, for a skill that is not installed).
    #[command(flatten)]
    pub registry: crate::install::RegistryArgs,
}

/// Uninstall a skill.
#[derive(clap::Args, Debug)]
pub(crate) struct RemoveArgs {
    /// The skill id.
    pub id: String,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

pub(crate) fn read_manifest(path: &Path) -> Result<Manifest> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!("cannot read the manifest {}: every signed skill needs a skill.toml", path.display())
    })?;
    Ok(Manifest::from_toml(&text, &path.display().to_string())?)
}

pub(crate) fn sign(args: SignArgs) -> Result<ExitCode> {
    let security = home::open_checked(Permission::ConfigRead, "key.use", ("key", &args.key))?;
    let home = security.home();
    let key = home.secret_key(&args.key)?;
    let (manifest_path, component_path) = if args.source.is_dir() {
        let built = build(&args.source, true, args.json)?;
        let [one] = built.as_slice() else {
            bail!("{} builds {} components: sign one skill crate at a time", args.source.display(), built.len());
        };
        (args.manifest.clone().unwrap_or_else(|| args.source.join("skill.toml")), one.path.clone())
    } else {
        let beside = args.source.parent().unwrap_or(Path::new(".")).join("skill.toml");
        (args.manifest.clone().unwrap_or(beside), args.source.clone())
    };
    let manifest = read_manifest(&manifest_path)?;
    let component = read(&component_path)?;
    Host::check_component(&component_path.display().to_string(), &component)?;
    let now = coderclaw_core::clock::now_secs();
    let package = Package::sign(&manifest, component, &key, now);
    let (digest, bytes) = (package.digest(), package.to_bytes());
    let out = args.out.unwrap_or_else(|| PathBuf::from(format!("{}-{}.ccpkg", manifest.id.name(), manifest.version)));
    std::fs::write(&out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
    if args.json {
        let report = json!({"package": out, "id": manifest.id.as_str(), "version": manifest.version.to_string(),
            "digest": digest.to_hex(), "signer": key.public().id().to_string(), "bytes": bytes.len()});
        print_json(&report)?;
    } else {
        println!("{}  sha256:{digest}", out.display());
        println!("signed {} {} with key {} ({})", manifest.id, manifest.version, args.key, key.public().id());
    }
    Ok(ExitCode::SUCCESS)
}

/// The facts `verify` and `info` print: the same fields, from the same manifest.
fn describe(m: &Manifest, digest: &str, signer: &str) -> Value {
    let c = &m.capabilities;
    json!({
        "id": m.id.as_str(),
        "namespace": m.id.namespace(),
        "version": m.version.to_string(),
        "kind": m.kind,
        "description": m.description,
        "dangerous": m.dangerous,
        "digest": digest,
        "signer": signer,
        "capabilities": {
            "fs": c.fs.iter().map(|d| json!({"path": d.path, "access": d.access})).collect::<Vec<_>>(),
            "http": c.http.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "env": c.env,
            "shell": c.shell,
            "skills": c.skills,
        },
        "limits": {
            "memory": m.limits.memory.map(|s| format_size(s.0)),
            "timeout_ms": m.limits.timeout.map(|t| t.0),
        },
        "input_schema": m.input_schema,
        "output_schema": m.output_schema,
    })
}

/// A schema's top-level properties, one line each (name, type, required,
/// description), or the schema itself in one line when it has none.
fn schema_lines(schema: &Value) -> Vec<String> {
    use crate::output::shown;
    let Some(props) = schema.get("properties").and_then(Value::as_object).filter(|p| !p.is_empty()) else {
        return vec![shown(&schema.to_string(), 300)];
    };
    let required: Vec<&str> =
        schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    let width = props.keys().map(|k| k.chars().count()).max().unwrap_or(0).min(64);
    let mut lines: Vec<String> = props
        .iter()
        .map(|(name, p)| {
            let ty = match p.get("type") {
                Some(Value::String(t)) => t.clone(),
                Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("|"),
                _ => "any".to_owned(),
            };
            let need = if required.contains(&name.as_str()) { "required" } else { "optional" };
            let about = p
                .get("description")
                .and_then(Value::as_str)
                .map(|d| format!("  {}", shown(d, 200)))
                .unwrap_or_default();
            let (name, ty) = (shown(name, 64), shown(&ty, 32));
            format!("{name:<width$}  {ty:<8} {need}{about}")
        })
        .collect();
    if schema.get("additionalProperties") == Some(&Value::Bool(false)) {
        lines.push("(no other keys)".to_owned());
    }
    lines
}

fn print_description(v: &Value) {
    let list = |v: &Value| {
        let items: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                other => format!(
                    "{} ({})",
                    other["path"].as_str().unwrap_or_default(),
                    other["access"].as_str().unwrap_or_default()
                ),
            })
            .collect();
        if items.is_empty() { "none".to_owned() } else { items.join(", ") }
    };
    println!(
        "{} {} ({})",
        v["id"].as_str().unwrap_or_default(),
        v["version"].as_str().unwrap_or_default(),
        v["kind"].as_str().unwrap_or_default()
    );
    let shown = |key: &str| crate::output::shown(v[key].as_str().unwrap_or_default(), 300);
    println!("  {}", shown("description"));
    println!("  namespace: {}", v["namespace"].as_str().unwrap_or_default());
    println!("  digest:    sha256:{}", v["digest"].as_str().unwrap_or_default());
    println!("  signer:    {}", shown("signer"));
    println!("  dangerous: {}", v["dangerous"]);
    println!("  requests (granted only if policy allows):");
    for cap in ["fs", "http", "env", "shell", "skills"] {
        println!("    {cap:<7} {}", list(&v["capabilities"][cap]));
    }
    let limits = &v["limits"];
    println!(
        "    limits  memory {}, timeout {}",
        limits["memory"].as_str().unwrap_or("default"),
        limits["timeout_ms"].as_u64().map(|t| format!("{t}ms")).unwrap_or_else(|| "default".into())
    );
    println!("  input (checked against this schema before the skill runs):");
    for line in schema_lines(&v["input_schema"]) {
        println!("    {line}");
    }
}

fn describe_verified(p: &VerifiedPackage) -> Value {
    describe(p.manifest(), &p.digest().to_hex(), p.signer().as_str())
}

pub(crate) fn verify(args: VerifyArgs) -> Result<ExitCode> {
    let security = home::open_checked(Permission::ConfigRead, "skill.verify", ("package", "-"))?;
    let bytes = read(&args.package)?;
    let outcome = Package::parse(&bytes).and_then(|p| p.verify(security.home()));
    match outcome {
        Ok(p) => {
            let v = describe_verified(&p);
            if args.json {
                print_json(&json!({"ok": true, "package": v}))?;
            } else {
                println!("OK: signature valid, signer trusted for `{}`", p.manifest().id.namespace());
                print_description(&v);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if args.json {
                print_json(&json!({"ok": false, "error": e.to_string()}))?;
            } else {
                eprintln!("error: {} failed verification: {e}", args.package.display());
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Verifies and installs a package file (replacing any installed version
/// of its id) through the security model's gates: denied skills, rollback
/// and capability increase.
pub(crate) fn install_file(path: &Path, gates: InstallGates, json: bool) -> Result<ExitCode> {
    let (security, by) = home::open_checked_as(Permission::ConfigWrite, "skill.install", ("package", "-"))?;
    let bytes = read(path)?;
    let done = security.install(&by, &bytes, gates).with_context(|| format!("{} was not installed", path.display()))?;
    let installed = done.skill;
    let v = describe_installed(&installed);
    if json {
        print_json(&v)?;
    } else {
        if !done.accepted_capabilities.is_empty() {
            eprintln!("accepted capability increase: {}", done.accepted_capabilities.join("; "));
        }
        println!("installed {} {} (signed by {})", installed.id, installed.version, installed.signer);
        println!("run it:    coderclaw skill run {} --input '{{}}'", installed.id);
    }
    Ok(ExitCode::SUCCESS)
}

fn describe_installed(s: &InstalledSkill) -> Value {
    describe(&s.manifest, &s.digest.to_hex(), &s.signer.to_string())
}

pub(crate) fn list(args: ListArgs) -> Result<ExitCode> {
    let installed = home::open_checked(Permission::ConfigRead, "skill.list", ("skill", "*"))?.home().installed()?;
    if args.json {
        let list: Vec<Value> = installed.iter().map(describe_installed).collect();
        print_json(&list)?;
    } else if installed.is_empty() {
        println!("no skills installed: install a package with `coderclaw skill install <file.ccpkg>`");
    } else {
        for s in installed {
            println!("{:<32} {:<10} {:<6} {}", s.id, s.version, s.manifest.kind.as_str(), s.manifest.description);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn info(args: InfoArgs) -> Result<ExitCode> {
    let security = home::open_checked(Permission::ConfigRead, "skill.info", ("skill", &args.id))?;
    let installed = match args.registry.registry {
        Some(_) => None,
        None => match security.home().info(&args.id) {
            Ok(s) => Some(s),
            Err(HomeError::NotInstalled(_)) if crate::install::client_config()?.default_registry.is_some() => None,
            Err(e) => return Err(e.into()),
        },
    };
    let v = match installed {
        Some(s) => describe_installed(&s),
        None => describe_published(&args, security.home())?,
    };
    if args.json {
        print_json(&v)?;
    } else {
        print_description(&v);
        if let Some(published) = v.get("registry").and_then(Value::as_str) {
            println!("  registry:  {} (published {})", published, v["published"].as_str().unwrap_or_default());
            match v["verification"].as_str() {
                None => println!("  signature: verified against your trust store (what is shown above is signed)"),
                Some(why) => println!(
                    "  signature: NOT verified ({why}): the above is the registry's claim, and installing it would be refused"
                ),
            }
            println!(
                "install:   coderclaw skill install {} --registry {published}",
                v["id"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The version of `args.id` a registry would install, described from its
/// signed manifest (as the registry lists it: nothing is verified or
/// installed here), with whether this machine trusts its signer.
fn describe_published(args: &InfoArgs, keys: &coderclaw::home::Home) -> Result<Value> {
    let (id, req) = coderclaw_registry::install::parse_spec(&args.id)?;
    let reg = args.registry.open(None)?;
    let rt = crate::runtime()?;
    let package = rt.block_on(reg.client.package(&id))?;
    let Some(version) = package.resolve(&req) else {
        bail!("{} has no version matching {req} that is not yanked on registry {}", id, reg.name);
    };
    // The package itself, verified as an install would: what is shown is
    // what was signed, or it says that it is only the registry's word.
    let bytes = rt.block_on(reg.client.download(&id, &version.version))?;
    let verified = Package::parse(&bytes).and_then(|p| p.verify(keys)).map_err(|e| e.to_string()).and_then(|p| {
        let m = p.manifest();
        if m.id.as_str() == id && m.version == version.version {
            Ok(p)
        } else {
            Err(format!("the package served is {} {}, not {id} {}", m.id, m.version, version.version))
        }
    });
    let mut v = match &verified {
        Ok(p) => describe_verified(p),
        Err(_) => describe(&version.manifest, &version.digest, &version.signer),
    };
    v["registry"] = json!(reg.name);
    v["published"] = json!(coderclaw_core::units::format_utc(version.published_at.saturating_mul(1000)));
    v["verified"] = json!(verified.is_ok());
    if let Err(why) = verified {
        v["verification"] = json!(why);
    }
    Ok(v)
}

pub(crate) fn remove(args: RemoveArgs) -> Result<ExitCode> {
    let (security, by) = home::open_checked_as(Permission::ConfigWrite, "skill.remove", ("skill", &args.id))?;
    let s = security.remove_skill(&by, &args.id)?;
    println!("removed {} {}", s.id, s.version);
    Ok(ExitCode::SUCCESS)
}
