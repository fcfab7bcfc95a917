//! `serve` saying what changed when config.yaml or a policy file is edited.
//! The security model already reads an edited file at the next request
//! (atomically: the whole set, or the last good version of a broken file);
//! this looks once a second, or at once on SIGHUP, and logs the change.

use coderclaw::security::PolicySet;
use coderclaw::security::Security;
use std::collections::BTreeSet;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

/// How often the files are looked at without a SIGHUP.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Logs on stderr each change of the policies in force, until aborted.
pub(crate) async fn watch(security: Arc<Security>) {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut last: Result<Arc<PolicySet>, String> = security.policy().map_err(|e| e.to_string());
    loop {
        let asked = async {
            match hangup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        let by_signal = tokio::select! {
            () = asked => true,
            () = tokio::time::sleep(LOOK_EVERY) => false,
        };
        let check = security.clone();
        let Ok(now) = tokio::task::spawn_blocking(move || check.policy().map_err(|e| e.to_string())).await else {
            continue;
        };
        let lines = changes(&last, &now);
        // A closed stderr loses these lines, never the server.
        let mut err = std::io::stderr();
        if by_signal && lines.is_empty() {
            let _ = writeln!(err, "SIGHUP: configuration and policy files unchanged");
        }
        for line in lines {
            let _ = writeln!(err, "reload: {line}");
        }
        last = now;
    }
}

/// What differs between two answers of `Security::policy`, one line each.
fn changes(before: &Result<Arc<PolicySet>, String>, after: &Result<Arc<PolicySet>, String>) -> Vec<String> {
    match (before, after) {
        (Ok(a), Ok(b)) if Arc::ptr_eq(a, b) => Vec::new(),
        (Err(a), Err(b)) if a == b => Vec::new(),
        (_, Err(e)) => vec![format!("{e}: nothing runs until it is fixed")],
        (Err(_), Ok(b)) => {
            let mut lines = vec!["the policy files load again".to_owned()];
            lines.extend(sources(b, None));
            lines
        }
        (Ok(a), Ok(b)) => {
            let mut lines = sources(b, Some(a));
            let roles = |s: &PolicySet| s.config.roles.keys().cloned().collect::<BTreeSet<_>>();
            let registries = |s: &PolicySet| s.config.registries.keys().cloned().collect::<BTreeSet<_>>();
            for (what, old, new) in [("roles", roles(a), roles(b)), ("registries", registries(a), registries(b))] {
                let added: Vec<&String> = new.difference(&old).collect();
                let removed: Vec<&String> = old.difference(&new).collect();
                if !added.is_empty() || !removed.is_empty() {
                    lines.push(format!("{what}: added {added:?}, removed {removed:?}"));
                }
            }
            if a.config != b.config && lines.is_empty() {
                lines.push("config.yaml changed".to_owned());
            }
            if a.org != b.org {
                lines.push("the organisation policy changed".to_owned());
            }
            if a.repo != b.repo {
                lines.push("the repository policy changed".to_owned());
            }
            if lines.is_empty() {
                lines.push("policy files re-read; the policies in force are the same".to_owned());
            }
            lines
        }
    }
}

/// Each file of `now` whose status is new or other than in `before`.
fn sources(now: &PolicySet, before: Option<&PolicySet>) -> Vec<String> {
    now.sources
        .iter()
        .filter(|s| before.is_none_or(|b| !b.sources.contains(s)))
        .map(|s| match s.status {
            "kept-last-good" => format!(
                "{} is invalid ({}): keeping its last good version",
                s.file.display(),
                s.problem.as_deref().unwrap_or("?")
            ),
            status => format!("{}: {status}", s.file.display()),
        })
        .collect()
}
