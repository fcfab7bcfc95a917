//! `coderclaw skill new`: scaffold a skill crate against the SDK.

use anyhow::{Context, Result, bail};
use coderclaw_core::manifest::SkillId;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Create a new skill crate that builds with `coderclaw skill build`.
///
/// Writes NAME/Cargo.toml (a cdylib depending on coderclaw-sdk by version,
/// so the crate builds anywhere), NAME/skill.toml (its manifest, id
/// NAMESPACE/NAME) and NAME/src/lib.rs (a working skill to edit).
/// --sdk-path makes it depend on an SDK checkout instead.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Crate name: lowercase letters, digits and `-`, e.g. `lint-checker`.
    pub name: String,
    /// Parent directory to create the crate in.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Namespace of the skill id (your team), e.g. `team` for `team/NAME`.
    #[arg(long, default_value = "local")]
    pub namespace: String,
    /// Depend on the coderclaw-sdk crate in this directory (a coderclaw
    /// checkout's `sdk/`) instead of the released version.
    #[arg(long, value_name = "DIR")]
    pub sdk_path: Option<PathBuf>,
}

/// The SDK release this CLI was built with, as a Cargo requirement
/// (`0.1` for 0.1.x: compatible releases only).
fn sdk_requirement() -> String {
    let version = env!("CARGO_PKG_VERSION");
    let mut parts = version.split('.');
    match (parts.next(), parts.next()) {
        (Some("0"), Some(minor)) => format!("0.{minor}"),
        (Some(major), _) => major.to_owned(),
        _ => version.to_owned(),
    }
}

pub(crate) fn main(args: Args) -> Result<ExitCode> {
    let name = &args.name;
    let valid = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.starts_with(|c: char| c.is_ascii_lowercase());
    if !valid {
        bail!("{name:?} is not a valid skill name: use lowercase letters, digits and `-`, starting with a letter");
    }
    let id = SkillId::parse(&format!("{}/{name}", args.namespace)).map_err(|e| anyhow::anyhow!("--namespace: {e}"))?;
    let sdk = match &args.sdk_path {
        None => SdkSource::Version(sdk_requirement()),
        Some(dir) => SdkSource::Path(sdk_dir(dir)?),
    };
    let root = args.dir.join(name);
    if root.exists() {
        bail!("{} already exists: choose another name or remove it", root.display());
    }
    std::fs::create_dir_all(root.join("src")).with_context(|| format!("cannot create {}", root.display()))?;
    std::fs::write(root.join("Cargo.toml"), cargo_toml(name, &sdk))?;
    std::fs::write(root.join("src/lib.rs"), lib_rs(name))?;
    std::fs::write(root.join("skill.toml"), skill_toml(&id))?;
    std::fs::write(root.join(".gitignore"), "/target\n")?;
    println!("created {}", root.display());
    match &sdk {
        SdkSource::Version(v) => println!("sdk:    coderclaw-sdk {v} (from crates.io; --sdk-path DIR uses a checkout)"),
        SdkSource::Path(p) => println!("sdk:    coderclaw-sdk at {}", p.display()),
    }
    println!("next:   coderclaw skill build {}   (then run what it prints)", root.display());
    println!("share:  coderclaw skill sign {} --key <your key>   (see `coderclaw key generate`)", root.display());
    Ok(ExitCode::SUCCESS)
}

/// Where the scaffold's coderclaw-sdk comes from.
enum SdkSource {
    /// A released version (a Cargo requirement).
    Version(String),
    /// A local crate directory (canonical).
    Path(PathBuf),
}

/// `dir` if it holds the coderclaw-sdk crate, canonicalised.
fn sdk_dir(dir: &Path) -> Result<PathBuf> {
    let sdk = std::fs::canonicalize(dir).with_context(|| {
        format!("--sdk-path {}: no such directory: point it at a coderclaw checkout's sdk/", dir.display())
    })?;
    let manifest = std::fs::read_to_string(sdk.join("Cargo.toml")).unwrap_or_default();
    if !manifest.lines().any(|l| l.trim() == r#"name = "coderclaw-sdk""#) {
        bail!(
            "--sdk-path {}: not the coderclaw-sdk crate (its Cargo.toml does not name it): point it at a coderclaw checkout's sdk/",
            sdk.display()
        );
    }
    Ok(sdk)
}

fn cargo_toml(name: &str, sdk: &SdkSource) -> String {
    let dependency = match sdk {
        SdkSource::Version(v) => format!("{v:?}"),
        SdkSource::Path(p) => format!("{{ path = {:?} }}", p.display().to_string()),
    };
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# A skill is a WebAssembly component: a cdylib built for wasm32-wasip2
# (`coderclaw skill build` runs cargo with that target).
[lib]
crate-type = ["cdylib"]

[dependencies]
coderclaw-sdk = {dependency}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"

# Small components: each host that installs one stores and loads it.
[profile.release]
opt-level = "s"
lto = true
panic = "abort"

# A skill is its own workspace, even when created inside another project.
[workspace]
"#
    )
}

fn skill_toml(id: &SkillId) -> String {
    format!(
        r#"# The manifest, signed together with the component by `coderclaw skill sign`.
# Capabilities listed here are requests: a run gets what policy (and, for
# unsigned development runs, --allow-* flags) grants, never more.
id = "{id}"
version = "0.1.0"
kind = "skill"
# One line, shown by `skill list`/`skill info` and to AI agents as the
# tool's description: say what the skill does.
description = "Greets someone by name"

# JSON Schema of the input. The host refuses an input that does not match
# before the skill runs (`invalid-input`, naming the path and the keyword).
[input-schema]
type = "object"
additionalProperties = false
required = ["name"]
properties.name = {{ type = "string", description = "Who to greet" }}

[capabilities]
# fs = [{{ path = "workspace", access = "read" }}]   # the run's --workspace, read-only
# http = ["https://api.github.com"]                  # exact origins it may call
# env = ["GITHUB_TOKEN"]                             # variables it may read

[limits]
memory = "32MiB"
timeout = "10s"
"#
    )
}

fn lib_rs(name: &str) -> String {
    let file = name.replace('-', "_");
    format!(
        r#"//! A coderclaw skill: JSON in, JSON out, inside the sandbox.
//!
//! Build and run it from this directory (unsigned code runs only with the
//! dangerous flag, and with no capability but what --allow-* flags grant):
//!
//!     coderclaw skill build .
//!     coderclaw skill run target/wasm32-wasip2/release/{file}.wasm --dangerous-allow-unsigned --input '{{"name": "world"}}'
//!
//! (`skill build` prints that run command with the component's actual
//! path: it differs when CARGO_TARGET_DIR is set.)
//!
//! Before `run` is called, the host checks the input against
//! `[input-schema]` in skill.toml; the SDK then deserialises it into `Input`
//! and serialises what `run` returns. Reading files needs
//! `capabilities.fs` in skill.toml and, for unsigned runs,
//! `--allow-read HOST_DIR::GUEST_DIR`.

use coderclaw_sdk::{{SkillError, log, skill}};
use serde::{{Deserialize, Serialize}};

/// What the skill takes: keep it in step with `[input-schema]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {{
    name: String,
}}

/// What the skill returns (a JSON object).
#[derive(Serialize)]
struct Output {{
    greeting: String,
}}

#[skill]
fn run(input: Input) -> Result<Output, SkillError> {{
    // Logs reach the caller as run events (`--json`, `task watch`, MCP logs).
    log::info(&format!("greeting {{}}", input.name));
    Ok(Output {{ greeting: format!("hello, {{}}!", input.name) }})
}}
"#
    )
}
