//! `coderclaw doctor`: what this machine can enforce, and whether the host
//! configuration and the kernel agree.

use crate::home;
use crate::output::print_json;
use anyhow::Result;
use coderclaw::confine::{self, MAX_FILE_BYTES, MAX_PROCESSES};
use coderclaw_core::Confinement;
use serde_json::json;
use std::process::ExitCode;

/// Reports the kernel confinement `shell.exec` children get on this machine.
///
/// Exit code 0 when shell.exec children run fully confined, 3 when they
/// would be refused (a layer is missing and `shell.confinement` is
/// `required`), 0 with a warning under `best-effort`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn main(args: Args) -> Result<ExitCode> {
    let security = home::open_security(None)?;
    let shell = security.policy()?.policies().config.shell.clone();
    let support = confine::support();
    let missing = support.missing();
    let verdict = match (missing.is_empty(), shell.confinement) {
        (true, _) => "confined",
        (false, Confinement::BestEffort) => "best-effort",
        (false, Confinement::Required) => "refused",
    };
    if args.json {
        print_json(&json!({
            "shell": {
                "verdict": verdict,
                "configured": shell.confinement,
                "landlock_abi": support.landlock_abi,
                "namespaces": support.namespaces.as_ref().map(|()| "available").unwrap_or_else(|e| e),
                "missing": missing,
                "network_programs": shell.network,
                "rlimits": { "processes": MAX_PROCESSES, "file_bytes": MAX_FILE_BYTES, "cpu": "shell timeout + 1 s" },
            }
        }))?;
    } else {
        println!(
            "shell.exec confinement (configured: {})",
            serde_json::to_value(shell.confinement)?.as_str().unwrap_or("?")
        );
        println!("  Landlock ABI:  {} (6 needed: files, TCP, scoped signals and sockets)", support.landlock_abi);
        match &support.namespaces {
            Ok(()) => println!("  namespaces:    user, PID, IPC and network available"),
            Err(e) => println!("  namespaces:    unavailable ({e})"),
        }
        println!(
            "  rlimits:       {MAX_PROCESSES} processes, {MAX_FILE_BYTES} bytes per file, CPU = shell timeout + 1 s"
        );
        if !shell.network.is_empty() {
            println!("  network for:   {}", shell.network.join(", "));
        }
        match verdict {
            "confined" => println!("shell.exec children run fully confined"),
            "best-effort" => println!("warning: shell.exec children run without {} (best-effort)", missing.join(", ")),
            _ => println!("shell.exec children are refused: missing {}", missing.join(", ")),
        }
    }
    Ok(if verdict == "refused" { ExitCode::from(3) } else { ExitCode::SUCCESS })
}
