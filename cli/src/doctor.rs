//! `coderclaw doctor`: a checklist of what this machine needs and can
//! enforce, each line with the fix when it is not as it should be.

use crate::home;
use crate::output::print_json;
use anyhow::Result;
use coderclaw::confine::{self, MAX_FILE_BYTES, MAX_PROCESSES};
use coderclaw_core::Confinement;
use coderclaw_core::policy::{BrokenPolicy, SecurityConfig};
use serde::Serialize;
use serde_json::json;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Duration;

/// Check this machine: toolchain, state directory, policy files,
/// registries, shell confinement, OIDC clocks.
///
/// Each line is `ok`, `warn` (works, but not as it should) or `fail`
/// (something is refused until fixed), with the fix. Exit code 3 when a
/// check fails, else 0.
///
/// Checks: cargo and the wasm32-wasip2 target (to build skills); the state
/// directory and signing keys readable by you alone; each policy file
/// loaded, absent or kept at its last good version; each configured
/// registry reachable and how old its cached organisation policies are;
/// the kernel confinement of shell.exec children against
/// `shell.confinement`; the clock of each OIDC issuer against this one.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The project whose .coderClaw/security.yaml is checked too (default:
    /// the current directory).
    #[arg(long, value_name = "DIR")]
    workspace: Option<std::path::PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Serialize)]
struct Check {
    check: &'static str,
    status: Status,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

fn check(check: &'static str, status: Status, detail: impl Into<String>, fix: Option<String>) -> Check {
    Check { check, status, detail: detail.into(), fix }
}

/// How long a registry or issuer gets to answer.
const NETWORK_WAIT: Duration = Duration::from_secs(5);
/// A cached organisation policy older than this is reported.
const POLICY_STALE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Clock difference beyond which tokens are misjudged.
const MAX_SKEW_SECS: i64 = 60;

pub(crate) fn main(args: Args) -> Result<ExitCode> {
    let state = home::state_dir()?;
    let neutral = if state.is_dir() { state.clone() } else { std::env::temp_dir() };
    let mut checks = toolchain(&neutral);
    checks.extend(state_directory(&state));
    let config = crate::install::client_config();
    let workspace = home::workspace(args.workspace.as_deref())?;
    match home::open_security(Some(&workspace)) {
        Ok(security) => {
            checks.extend(policy_files(&security, config.as_ref().ok()));
            let shell = security.policy().map(|p| p.policies().config.shell.clone()).unwrap_or_default();
            checks.push(shell_confinement(&shell));
        }
        Err(e) => checks.push(check(
            "policy",
            Status::Fail,
            format!("{e:#}"),
            Some("fix the file it names (the message gives the line and key); nothing runs until then".into()),
        )),
    }
    if let Ok(config) = &config {
        let rt = crate::runtime()?;
        checks.extend(registries(&rt, &state, config));
        checks.extend(oidc_clocks(&rt, config));
    }
    let failed = checks.iter().any(|c| c.status == Status::Fail);
    if args.json {
        print_json(&json!({ "ok": !failed, "checks": checks }))?;
    } else {
        for c in &checks {
            let status = match c.status {
                Status::Ok => "ok  ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            println!("{status}  {:<18} {}", c.check, c.detail);
            if let Some(fix) = &c.fix {
                println!("      {:<18} fix: {fix}", "");
            }
        }
    }
    Ok(if failed { ExitCode::from(3) } else { ExitCode::SUCCESS })
}

/// Runs a toolchain command from `dir` (not the current directory, whose
/// `rust-toolchain.toml` a repository controls), for at most 10 seconds.
fn quick(program: &std::ffi::OsStr, args: &[&str], dir: &Path) -> Option<String> {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let started = std::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(Some(_)) | Err(_) => return None,
            Ok(None) if started.elapsed() > Duration::from_secs(10) => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(child.stdout.take()?, 4096), &mut out).ok()?;
    Some(out.trim().to_owned())
}

fn toolchain(dir: &Path) -> Vec<Check> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let version = quick(&cargo, &["--version"], dir);
    let Some(version) = version else {
        return vec![check(
            "toolchain",
            Status::Warn,
            "cargo not found: skills cannot be built here (installed ones still run)",
            Some("install Rust from https://rustup.rs".into()),
        )];
    };
    let mut out = vec![check("toolchain", Status::Ok, version, None)];
    let libdir = quick("rustc".as_ref(), &["--print", "target-libdir", "--target", "wasm32-wasip2"], dir);
    let installed = libdir.as_deref().is_some_and(|d| std::fs::read_dir(d).is_ok_and(|mut e| e.next().is_some()));
    out.push(if installed {
        check("wasm target", Status::Ok, "wasm32-wasip2 installed", None)
    } else {
        check(
            "wasm target",
            Status::Warn,
            "wasm32-wasip2 is not installed: `skill build` and `skill new` crates cannot build",
            Some("rustup target add wasm32-wasip2".into()),
        )
    });
    out
}

fn state_directory(state: &Path) -> Vec<Check> {
    let mode = |p: &Path| std::fs::metadata(p).ok().map(|m| m.permissions().mode() & 0o777);
    let Some(dir_mode) = mode(state) else {
        return vec![check(
            "state directory",
            Status::Ok,
            format!("{} does not exist yet (created private on first use)", state.display()),
            None,
        )];
    };
    let mut out = vec![if dir_mode & 0o077 == 0 {
        check("state directory", Status::Ok, format!("{} is yours alone ({dir_mode:o})", state.display()), None)
    } else {
        check(
            "state directory",
            Status::Warn,
            format!(
                "{} is open to others ({dir_mode:o}): its files are private (0600), but their names and sizes are not",
                state.display()
            ),
            Some(format!("chmod 700 {}", state.display())),
        )
    }];
    let keys = state.join("keys");
    let open: Vec<String> = std::fs::read_dir(&keys)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| mode(&e.path()).is_some_and(|m| m & 0o077 != 0))
        .map(|e| e.path().display().to_string())
        .collect();
    out.push(if open.is_empty() {
        check("signing keys", Status::Ok, "readable by you alone", None)
    } else {
        check(
            "signing keys",
            Status::Fail,
            format!("readable by others: {}", open.join(", ")),
            Some(format!("chmod 600 {}", open.join(" "))),
        )
    });
    out
}

fn policy_files(security: &coderclaw::security::Security, config: Option<&SecurityConfig>) -> Vec<Check> {
    let deny = config.is_some_and(|c| c.security.broken_policy == BrokenPolicy::Deny);
    let set = match security.policy() {
        Ok(set) => set,
        Err(e) => {
            return vec![check(
                "policy",
                Status::Fail,
                e.to_string(),
                Some("fix the file it names; nothing runs until then".into()),
            )];
        }
    };
    set.sources
        .iter()
        .map(|s| {
            let file = s.file.display().to_string();
            match s.status {
                "kept-last-good" => check(
                    "policy file",
                    if deny { Status::Fail } else { Status::Warn },
                    format!(
                        "{file} is invalid ({}); its last good version is in force",
                        s.problem.as_deref().unwrap_or("?")
                    ),
                    Some(format!("fix {file} (the error names the line and key)")),
                ),
                status => check("policy file", Status::Ok, format!("{file}: {status}"), None),
            }
        })
        .collect()
}

fn shell_confinement(shell: &coderclaw_core::policy::ShellSection) -> Check {
    let support = confine::support();
    let missing = support.missing();
    let detail = format!(
        "Landlock ABI {}, namespaces {}, rlimits {MAX_PROCESSES} processes and {MAX_FILE_BYTES} bytes per file",
        support.landlock_abi,
        if support.namespaces.is_ok() { "available" } else { "unavailable" }
    );
    match (missing.is_empty(), shell.confinement) {
        (true, _) => {
            check("shell confinement", Status::Ok, format!("shell.exec children fully confined: {detail}"), None)
        }
        (false, Confinement::BestEffort) => check(
            "shell confinement",
            Status::Warn,
            format!("shell.exec children run without {} (best-effort): {detail}", missing.join(", ")),
            Some("run on Linux 6.7+ with unprivileged user namespaces enabled".into()),
        ),
        (false, Confinement::Required) => check(
            "shell confinement",
            Status::Fail,
            format!("shell.exec is refused: missing {} ({detail})", missing.join(", ")),
            Some("run on Linux 6.7+ with unprivileged user namespaces, or set shell.confinement: best-effort".into()),
        ),
    }
}

fn registries(rt: &tokio::runtime::Runtime, state: &Path, config: &SecurityConfig) -> Vec<Check> {
    let cache = coderclaw_registry::cache::ClientCache::new(state);
    let mut out = Vec::new();
    if config.registries.is_empty() {
        out.push(check("registries", Status::Ok, "none configured", None));
    }
    for (name, entry) in &config.registries {
        let reached = coderclaw_registry::RegistryClient::new(&entry.url, None, None).map_err(|e| e.to_string());
        let reached = reached.and_then(|client| {
            rt.block_on(async { tokio::time::timeout(NETWORK_WAIT, client.search("", None, None)).await })
                .map_err(|_| format!("no answer within {NETWORK_WAIT:?}"))?
                .map_err(|e| e.to_string())
        });
        out.push(match reached {
            Ok(_) => check("registry", Status::Ok, format!("{name} ({}) answers", entry.url), None),
            Err(e) => check(
                "registry",
                Status::Warn,
                format!("{name} ({}) cannot be reached: {e}; installs use the offline cache", entry.url),
                Some(format!("check the URL in config.yaml, or `coderclaw registry remove {name}`")),
            ),
        });
        for namespace in entry.namespace_keys.keys() {
            let [file, _] = cache.policy_files(name, namespace);
            let age = std::fs::metadata(&file).ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok());
            out.push(match age {
                Some(age) if age <= POLICY_STALE => {
                    check("org policy", Status::Ok, format!("{namespace} from {name}: synced {} ago", human(age)), None)
                }
                Some(age) => check(
                    "org policy",
                    Status::Warn,
                    format!("{namespace} from {name}: last synced {} ago", human(age)),
                    Some(format!("coderclaw registry sync --registry {name}")),
                ),
                None => check(
                    "org policy",
                    Status::Warn,
                    format!("{namespace} from {name}: never synced"),
                    Some(format!("coderclaw registry sync --registry {name}")),
                ),
            });
        }
    }
    out
}

fn oidc_clocks(rt: &tokio::runtime::Runtime, config: &SecurityConfig) -> Vec<Check> {
    config
        .identity
        .oidc
        .iter()
        .map(|issuer| {
            let name = issuer.name.clone();
            let skew =
                rt.block_on(async { tokio::time::timeout(NETWORK_WAIT, coderclaw::oidc::clock_skew(issuer)).await });
            match skew {
                Ok(Ok(s)) if s.abs() <= MAX_SKEW_SECS => {
                    check("oidc clock", Status::Ok, format!("{name}: within {}s of this machine", s.abs()), None)
                }
                Ok(Ok(s)) => check(
                    "oidc clock",
                    Status::Warn,
                    format!(
                        "{name}: its clock is {}s {} this machine's: its tokens are misjudged",
                        s.abs(),
                        if s > 0 { "ahead of" } else { "behind" }
                    ),
                    Some("synchronise this machine's clock (NTP: timedatectl set-ntp true)".into()),
                ),
                Ok(Err(e)) => check(
                    "oidc clock",
                    Status::Warn,
                    format!("{name}: cannot ask it ({e})"),
                    Some("check identity.oidc in config.yaml and the network".into()),
                ),
                Err(_) => check("oidc clock", Status::Warn, format!("{name}: no answer within {NETWORK_WAIT:?}"), None),
            }
        })
        .collect()
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}min", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}
