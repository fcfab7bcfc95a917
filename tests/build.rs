//! Builds every guest component from source (the example skills and the
//! hostile test components) for wasm32-wasip2, and tells the test code where
//! each one is through `CODERCLAW_GUEST_<NAME>` variables. No built .wasm is
//! ever committed.

use std::path::{Path, PathBuf};
use std::process::Command;

const WORKSPACES: &[(&str, &[&str])] = &[
    ("skills", &["echo", "word-count", "shell-exec", "http-fetch", "security-scanner", "code-reviewer"]),
    (
        "tests/components",
        &["infinite-loop", "memory-bomb", "deep-recursion", "fs-escape", "shell-without-grant", "panicker", "asker"],
    ),
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().expect("tests/ lives in the repository root").to_path_buf();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    // OUT_DIR is <target>/<profile>/build/<pkg>/out: share one guest target
    // dir per outer target dir so guests are not rebuilt per profile.
    let guest_target = out_dir.ancestors().nth(4).unwrap_or(&out_dir).join("wasm-guests");

    for rerun in ["wit", "sdk/src", "sdk/Cargo.toml", "sdk/macros/src", "sdk/macros/Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", root.join(rerun).display());
    }
    for (ws, members) in WORKSPACES {
        println!("cargo:rerun-if-changed={}", root.join(ws).join("Cargo.toml").display());
        for m in *members {
            println!("cargo:rerun-if-changed={}", root.join(ws).join(m).join("src").display());
            println!("cargo:rerun-if-changed={}", root.join(ws).join(m).join("Cargo.toml").display());
        }
        build_workspace(&root.join(ws), &guest_target);
        for m in *members {
            let file = guest_target.join("wasm32-wasip2/release").join(format!("{}.wasm", m.replace('-', "_")));
            assert!(file.is_file(), "building {ws} did not produce {}", file.display());
            let var = format!("CODERCLAW_GUEST_{}", m.replace('-', "_").to_uppercase());
            println!("cargo:rustc-env={var}={}", file.display());
        }
    }
}

fn build_workspace(dir: &Path, target_dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .args(["--target", "wasm32-wasip2"])
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    // The outer build's flags and wrappers (clippy, coverage) are for the
    // host target, not for the guests.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("cannot run cargo to build the guest components");
    assert!(
        status.success(),
        "building the guest components in {} failed; if the wasm32-wasip2 target is missing, run `rustup target add wasm32-wasip2`",
        dir.display()
    );
}
