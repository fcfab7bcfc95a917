//! Output helpers: run events as one line each on stderr, JSON on stdout.

use coderclaw::{EventKind, LogLevel, RunEvent};

/// One human-readable line for an event.
pub(crate) fn event_line(e: &RunEvent) -> String {
    let who = if e.depth > 0 { format!("{}[{}]", e.skill, e.depth) } else { e.skill.to_string() };
    match &e.kind {
        EventKind::Log { level, message } => format!("{who} {}: {message}", level_name(*level)),
        EventKind::Progress { fraction, message } => format!("{who} progress {:>3.0}% {message}", fraction * 100.0),
        EventKind::Capability { capability, target, allowed, detail } => {
            let verdict = if *allowed { "allowed" } else { "DENIED" };
            let detail = detail.lines().next().unwrap_or_default();
            format!("{who} {capability} {verdict}: {target} ({detail})")
        }
    }
}

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    }
}

/// Prints a value as pretty JSON on stdout.
pub(crate) fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}
