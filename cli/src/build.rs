//! `coderclaw skill build`: cargo build for wasm32-wasip2, then report each
//! component with its SHA-256.

use crate::output::print_json;
use anyhow::{Context, Result, bail};
use coderclaw::Digest;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

/// Build a skill crate (or a workspace of skills) into WebAssembly components.
///
/// Runs `cargo build --target wasm32-wasip2 --release` in DIR; cargo's
/// progress goes to stderr. Prints each component's path and SHA-256.
/// Needs the target: `rustup target add wasm32-wasip2`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The skill crate or workspace (default: the current directory).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Build without optimisations (faster to build, slower to run).
    #[arg(long)]
    pub debug: bool,
    /// Print a JSON array of {name, path, sha256, bytes}.
    #[arg(long)]
    pub json: bool,
}

/// One built component.
#[derive(Debug, Clone)]
pub(crate) struct Artifact {
    pub name: String,
    pub path: PathBuf,
    pub digest: Digest,
    pub bytes: u64,
}

pub(crate) fn main(args: Args) -> Result<ExitCode> {
    let artifacts = build(&args.dir, !args.debug, false)?;
    if args.json {
        let list: Vec<Value> = artifacts
            .iter()
            .map(|a| json!({ "name": a.name, "path": a.path, "sha256": a.digest.to_hex(), "bytes": a.bytes }))
            .collect();
        print_json(&list)?;
    } else {
        for a in &artifacts {
            println!("{}  sha256:{}  ({} bytes)", a.path.display(), a.digest, a.bytes);
        }
        if let [one] = artifacts.as_slice() {
            let input = example_input(&args.dir.join("skill.toml"));
            println!(
                "run it:  coderclaw skill run {} --dangerous-allow-unsigned --input '{input}'",
                shell_word(&one.path.display().to_string())
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// An input that satisfies the crate's `[input-schema]` as far as its
/// required top-level properties go (`{}` when there is none to read), so
/// the printed run command works as written.
fn example_input(manifest: &Path) -> String {
    let schema = std::fs::read_to_string(manifest)
        .ok()
        .and_then(|text| coderclaw_core::manifest::Manifest::from_toml(&text, "skill.toml").ok())
        .map(|m| m.input_schema)
        .unwrap_or(Value::Null);
    let required = schema.get("required").and_then(Value::as_array).cloned().unwrap_or_default();
    let example: serde_json::Map<String, Value> = required
        .iter()
        .filter_map(Value::as_str)
        .map(|key| {
            let value = match schema["properties"][key]["type"].as_str() {
                Some("integer" | "number") => json!(1),
                Some("boolean") => json!(true),
                Some("array") => json!([]),
                Some("object") => json!({}),
                _ => json!("world"),
            };
            (key.to_owned(), value)
        })
        .collect();
    Value::Object(example).to_string().replace('\'', "'\\''")
}

/// `word` quoted for a POSIX shell when it needs to be.
fn shell_word(word: &str) -> String {
    if word.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:=@".contains(c)) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// Builds every cdylib in `dir` for wasm32-wasip2 and returns the components.
pub(crate) fn build(dir: &Path, release: bool, quiet: bool) -> Result<Vec<Artifact>> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        bail!(
            "{} has no Cargo.toml: point `skill build` at a skill crate (create one with `coderclaw skill new`)",
            dir.display()
        );
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        .args(["--target", "wasm32-wasip2", "--message-format=json-render-diagnostics"])
        .stdout(Stdio::piped())
        .stderr(if quiet { Stdio::null() } else { Stdio::inherit() });
    if release {
        cmd.arg("--release");
    }
    let mut child = cmd.spawn().context("cannot run cargo: is the Rust toolchain installed?")?;
    let stdout = child.stdout.take().context("cargo's stdout was not captured")?;
    let mut paths = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let msg: Value = match serde_json::from_str(&line?) {
            Ok(v) => v,
            Err(_) => continue,
        };
        if msg["reason"] == "compiler-artifact" {
            let files = msg["filenames"].as_array().into_iter().flatten().filter_map(Value::as_str);
            paths.extend(files.filter(|f| f.ends_with(".wasm")).map(PathBuf::from));
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!(
            "cargo build failed in {} (see the messages above). If it says the target is missing, run `rustup target add wasm32-wasip2`; if it cannot find coderclaw-sdk, point the crate at a checkout's SDK (`coderclaw skill new --sdk-path DIR` writes that)",
            dir.display()
        );
    }
    if paths.is_empty() {
        bail!("cargo built no component in {}: a skill crate needs `[lib] crate-type = [\"cdylib\"]`", dir.display());
    }
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            Ok(Artifact { name, digest: Digest::of(&bytes), bytes: bytes.len() as u64, path })
        })
        .collect()
}
