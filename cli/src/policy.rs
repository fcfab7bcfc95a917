//! `coderclaw policy check`: what the security model would decide for a
//! skill, with the grant and every reason, without running anything.

use crate::grant_args::{HOST_MAX, WorkspaceArgs};
use crate::home;
use crate::output::print_json;
use anyhow::Result;
use clap::Subcommand;
use coderclaw_core::TrustLevel;
use coderclaw_core::clock::now_ms;
use coderclaw_core::decision::{Action, DecisionInput, Target, decide};
use serde_json::json;
use std::collections::BTreeMap;
use std::process::ExitCode;

/// Inspect the security policy in force.
#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    Check(CheckArgs),
}

/// Show what policy decides for running a skill: allowed or not, the grant
/// it would run with, and every reason for a refusal. Nothing runs, and the
/// check itself is not recorded (loading a changed policy file is).
///
/// The subject is you (your session, or the local user with
/// security.defaultRoles on this device); --user, --role and --device-trust
/// ask "what if" for someone else. Also lists the policy files in force and
/// the organisation's requiredSkills that are not installed.
///
/// Exit codes: 0 allowed, 3 denied, 1 error.
///
/// Example:
///   coderclaw policy check --skill team/shell-exec --role developer --device-trust untrusted
#[derive(clap::Args, Debug)]
pub(crate) struct CheckArgs {
    /// An installed skill id, or a skill.toml to check before installing.
    #[arg(long, value_name = "ID|FILE")]
    pub skill: String,
    /// Decide for this user instead of yourself.
    #[arg(long)]
    pub user: Option<String>,
    /// Decide for these roles instead of yours (repeatable).
    #[arg(long = "role", value_name = "ROLE")]
    pub roles: Vec<String>,
    /// Decide for a device at this trust level instead of this one.
    #[arg(long, value_name = "LEVEL")]
    pub device_trust: Option<TrustLevel>,
    #[command(flatten)]
    pub workspace: WorkspaceArgs,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

pub(crate) fn main(cmd: Command) -> Result<ExitCode> {
    let Command::Check(args) = cmd;
    let workspace = args.workspace.dir()?;
    let security = home::open_security(Some(&workspace))?;
    let mut subject = security.subject(home::session())?;
    if let Some(u) = &args.user {
        subject.user = u.clone();
    }
    if !args.roles.is_empty() {
        home::check_roles(&security, &args.roles)?;
        subject.roles = args.roles.clone();
    }
    if let Some(t) = args.device_trust {
        subject.device_trust = t;
    }
    let manifest = if args.skill.ends_with(".toml") {
        crate::package::read_manifest(std::path::Path::new(&args.skill))?
    } else {
        security.home().info(&args.skill)?.manifest
    };
    // As `skill run` without --allow-env: requested variables show as not passed.
    let offer = args.workspace.offer(&workspace, BTreeMap::new(), HOST_MAX);
    let policy = security.policy()?;
    let d = decide(&DecisionInput {
        subject: &subject,
        target: Target::from_manifest(&manifest),
        action: Action::Run,
        workspace: Some(&workspace),
        policies: policy.policies(),
        offer: &offer,
        now_ms: now_ms(),
    });
    let missing = security.missing_required_skills()?;
    if args.json {
        let mut v = d.to_json();
        v["skill"] = json!(manifest.id.as_str());
        v["subject"] = json!(subject);
        v["policy_files"] = json!(policy.sources);
        v["missing_required_skills"] = json!(missing);
        print_json(&v)?;
    } else {
        println!("{}: {}", manifest.id, if d.allowed { "ALLOWED" } else { "DENIED" });
        println!(
            "subject: user {} roles [{}] device {} ({})",
            subject.user,
            subject.roles.join(", "),
            subject.device,
            subject.device_trust
        );
        for r in &d.reasons {
            println!("  - [{}] {}", r.code, r.message);
            if let Some(hint) = crate::hints::for_reason(r.code) {
                println!("    hint: {hint}");
            }
        }
        if d.allowed {
            println!("grant:\n{}", d.grant);
            for n in &d.narrowed {
                println!("  not granted: {n}");
            }
        }
        for s in &policy.sources {
            let problem = s.problem.as_deref().map(|p| format!(" ({p})")).unwrap_or_default();
            println!("policy {}: {}{problem}", s.file.display(), s.status);
        }
        for m in &missing {
            println!("organisation requires skill {m}, which is not installed");
        }
    }
    Ok(if d.allowed { ExitCode::SUCCESS } else { ExitCode::from(3) })
}
