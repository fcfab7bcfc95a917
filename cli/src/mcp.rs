//! `coderclaw mcp`: the installed skills this caller may run, as Model
//! Context Protocol tools over stdio, for AI agents (Claude Code, Codex,
//! Cursor, VS Code, Zed).

use crate::home;
use crate::output::print_json;
use anyhow::{Result, anyhow};
use coderclaw::tasks::mcp::McpServer;
use std::path::PathBuf;
use std::process::ExitCode;

/// Serve the installed skills and agents as MCP tools over stdio.
///
/// Each tool is one skill or agent that policy lets you (your session, or
/// the local user with security.defaultRoles) run; a refused one is not
/// listed (`--list` shows why). Every call is a task: signature checked,
/// grant decided for you, limits, audit, durable, cancelled when the client
/// cancels the call or goes away. No tool grants, trusts, installs or
/// changes policy.
///
/// stdout carries the protocol; logs go to stderr (CODERCLAW_LOG).
///
/// Example, for Claude Code:
///   claude mcp add coderclaw -- coderclaw mcp --workspace /path/to/repo
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Print the tools you would be offered, and why each left-out skill
    /// is, then exit.
    #[arg(long)]
    pub list: bool,
    /// With --list: JSON output.
    #[arg(long, requires = "list")]
    pub json: bool,
    /// The workspace tasks run in (default: the current directory).
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Let tasks write the workspace (default read-only).
    #[arg(long)]
    pub workspace_write: bool,
}

pub(crate) fn main(args: Args) -> Result<ExitCode> {
    let workspace = home::workspace(args.workspace.as_deref())?;
    let rt = crate::runtime()?;
    rt.block_on(async {
        let local = crate::task::open_local_engine(&workspace, args.workspace_write, !args.list)?;
        let server = McpServer::new(local.service().clone(), home::session().map(str::to_owned));
        if args.list {
            let entries = server.entries().map_err(|e| anyhow!("{}", e.message))?;
            if args.json {
                print_json(&entries)?;
            } else {
                for e in &entries {
                    match &e.left_out {
                        None => println!("{:<32} {} ({:?})", e.name, e.id, e.kind),
                        Some(why) => println!("{:<32} {} left out: {why}", "-", e.id),
                    }
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        server.serve_stdio().await.map_err(|e| anyhow!("MCP over stdio: {e}"))?;
        Ok(ExitCode::SUCCESS)
    })
}
