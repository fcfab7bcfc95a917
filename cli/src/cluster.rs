//! `coderclaw cluster`: the nodes of a distributed-cluster deployment.

use crate::output::print_json;
use anyhow::{Context, Result};
use coderclaw_core::units::{format_duration, format_utc};
use std::process::ExitCode;
use std::time::Duration;

/// Look at a distributed-cluster deployment (mode distributed-cluster):
/// several `coderclaw serve` nodes sharing one PostgreSQL database.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum Command {
    Status(StatusArgs),
}

/// List the cluster's nodes (state, last heartbeat, tasks held) and its
/// queue, read from the database (no node needs to be up).
///
/// A node is `alive` while its heartbeat renews its lease, `lost` once the
/// lease ran out (its tasks were reclaimed by the others), `left` after a
/// clean shutdown.
#[derive(clap::Args, Debug)]
pub(crate) struct StatusArgs {
    /// The cluster's PostgreSQL URL (default: cluster.database in
    /// $CODERCLAW_HOME/runtime.yaml, or CODERCLAW_CLUSTER_DATABASE).
    #[arg(long, value_name = "URL", hide_env_values = true, env = "CODERCLAW_CLUSTER_DATABASE")]
    pub database: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub(crate) fn main(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Status(args) => status(args),
    }
}

fn status(args: StatusArgs) -> Result<ExitCode> {
    let url = match args.database {
        Some(url) => url,
        None => crate::task::cluster_database()?.context(
            "no cluster database configured: pass --database URL, set CODERCLAW_CLUSTER_DATABASE, or cluster.database \
             in $CODERCLAW_HOME/runtime.yaml",
        )?,
    };
    let rt = crate::runtime()?;
    let status = rt.block_on(coderclaw::tasks::store::cluster_status(&url))?;
    if args.json {
        print_json(&status)?;
        return Ok(ExitCode::SUCCESS);
    }
    let alive = status.nodes.iter().filter(|n| n.state == "alive").count();
    println!(
        "cluster {}: {alive} of {} nodes alive; {} tasks queued ({} paused)",
        status.database,
        status.nodes.len(),
        status.queued_tasks + status.paused_tasks,
        status.paused_tasks
    );
    if status.nodes.is_empty() {
        println!("no node has joined yet: start one with `coderclaw serve --mode distributed-cluster --node NAME`");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<20} {:<6} {:>14} {:>8} {:>4}  {:<10} SINCE", "NODE", "STATE", "HEARTBEAT", "TASKS", "MAX", "VERSION");
    for n in &status.nodes {
        let age = match n.heartbeat_age_ms {
            ms if ms < 60_000 => format!("{:.1}s ago", ms as f64 / 1000.0),
            ms => format!("{} ago", format_duration(Duration::from_secs(ms / 1000))),
        };
        println!(
            "{:<20} {:<6} {:>14} {:>8} {:>4}  {:<10} {}",
            n.name,
            n.state,
            age,
            n.running_tasks,
            n.max_concurrent_tasks,
            n.version,
            format_utc(n.started_at_ms)
        );
    }
    Ok(ExitCode::SUCCESS)
}
