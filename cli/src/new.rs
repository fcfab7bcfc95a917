//! `coderclaw skill new`: scaffold a skill crate against the SDK.

use anyhow::{Context, Result, bail};
use coderclaw_core::manifest::SkillId;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Create a new skill crate that builds with `coderclaw skill build`.
///
/// Writes NAME/Cargo.toml (a cdylib depending on coderclaw-sdk),
/// NAME/skill.toml (its manifest, id NAMESPACE/NAME) and NAME/src/lib.rs (a
/// working skill to edit). The SDK dependency points at this coderclaw
/// checkout's sdk/ unless --sdk-path says otherwise.
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
    /// Path to the coderclaw-sdk crate to depend on.
    #[arg(long, value_name = "PATH")]
    pub sdk_path: Option<PathBuf>,
}

/// The SDK of the source tree this binary was built from.
fn default_sdk_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("sdk")
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
    let sdk = args.sdk_path.clone().unwrap_or_else(default_sdk_path);
    let sdk = std::fs::canonicalize(&sdk)
        .with_context(|| format!("cannot find coderclaw-sdk at {}: pass --sdk-path", sdk.display()))?;
    if !sdk.join("Cargo.toml").is_file() {
        bail!("{} is not the coderclaw-sdk crate (no Cargo.toml): pass --sdk-path", sdk.display());
    }
    let root = args.dir.join(name);
    if root.exists() {
        bail!("{} already exists: choose another name or remove it", root.display());
    }
    std::fs::create_dir_all(root.join("src")).with_context(|| format!("cannot create {}", root.display()))?;
    std::fs::write(root.join("Cargo.toml"), cargo_toml(name, &sdk))?;
    std::fs::write(root.join("src/lib.rs"), LIB_RS)?;
    std::fs::write(root.join("skill.toml"), skill_toml(&id))?;
    std::fs::write(root.join(".gitignore"), "/target\n")?;
    println!("created {}", root.display());
    println!("next:   coderclaw skill build {}", root.display());
    println!("then:   coderclaw skill sign {} --key <your key>   (see `coderclaw key generate`)", root.display());
    Ok(ExitCode::SUCCESS)
}

fn cargo_toml(name: &str, sdk: &Path) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# A skill is a WebAssembly component: a cdylib built for wasm32-wasip2.
[lib]
crate-type = ["cdylib"]

[dependencies]
coderclaw-sdk = {{ path = {sdk:?} }}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"

[profile.release]
opt-level = "s"
lto = true
panic = "abort"

# A skill is its own workspace, even when created inside another project.
[workspace]
"#,
        sdk = sdk.display().to_string()
    )
}

fn skill_toml(id: &SkillId) -> String {
    format!(
        r#"# The manifest: signed together with the component. Capabilities listed
# here are requests; what a run gets is decided by policy and --allow-* flags.
id = "{id}"
version = "0.1.0"
kind = "skill"
description = "Greets someone"

[input-schema]
type = "object"
required = ["name"]
properties.name = {{ type = "string" }}

[capabilities]
# fs = [{{ path = "workspace", access = "read" }}]
# http = ["https://api.github.com"]

[limits]
memory = "32MiB"
timeout = "10s"
"#
    )
}

const LIB_RS: &str = r#"//! A coderclaw skill. Build: `coderclaw skill build .`
//! Run:   `coderclaw skill run <path printed by build> --input '{"name": "world"}'`

use coderclaw_sdk::{SkillError, log, skill};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    name: String,
}

#[derive(Serialize)]
struct Output {
    greeting: String,
}

#[skill]
fn run(input: Input) -> Result<Output, SkillError> {
    log::info(&format!("greeting {}", input.name));
    Ok(Output { greeting: format!("hello, {}!", input.name) })
}
"#;
