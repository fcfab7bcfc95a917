//! Capability denials inside a run (an HTTP host, a shell program or
//! argument, a skill an agent may not invoke) become audit records with the
//! skill, the task and the reason: the sandbox refuses them, this makes the
//! attempt visible afterwards. A run records at most [`MAX_RECORDED`]
//! denials one by one, then one record saying further ones are only in its
//! events, so a guest cannot turn refusals into unbounded durable writes.
//! A shell child that kept the host's network (`shell.network`) or ran
//! best-effort confined is recorded as `capability.weakened`.

use coderclaw_core::events::{EventKind, EventSink, RunEvent};
use coderclaw_security::audit::{AuditEvent, AuditResult};
use coderclaw_security::security::Security;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// Denials recorded one by one per run; as many weakened capabilities,
/// counted apart (so that children run with the network cannot use up the
/// budget that records denials).
pub const MAX_RECORDED: u32 = 20;

/// `inner`, plus an audit record for each capability denial of the run
/// (task `task`, acting user `user`).
pub fn audit_denials(
    inner: Arc<dyn EventSink>,
    security: Arc<Security>,
    task: Option<String>,
    user: String,
) -> Arc<dyn EventSink> {
    let (weakened, denied) = (AtomicU32::new(0), AtomicU32::new(0));
    Arc::new(move |e: RunEvent| {
        // Also audited: a shell child the host let keep its network, or ran
        // with weaker confinement than required (best-effort).
        let notable = |detail: &str| detail.contains("network granted") || detail.contains("best-effort");
        if let EventKind::Capability { capability, target, allowed: true, detail } = &e.kind
            && notable(detail)
            && weakened.fetch_add(1, Ordering::Relaxed) < MAX_RECORDED
        {
            let event = AuditEvent::new("capability.weakened", AuditResult::Allowed, "skill", &e.skill)
                .user(&user)
                .reason(format!("{capability} {target}: {detail}"))
                .metadata(json!({ "task": task, "capability": capability, "target": target, "depth": e.depth }));
            if let Err(err) = security.home().audit().append(event) {
                tracing::warn!(error = %err, "a weakened capability could not be audited");
            }
        }
        if let EventKind::Capability { capability, target, allowed: false, detail } = &e.kind {
            let n = denied.fetch_add(1, Ordering::Relaxed) + 1;
            let record = |reason: String| {
                let event = AuditEvent::new("capability.denied", AuditResult::Denied, "skill", &e.skill)
                    .user(&user)
                    .reason(reason)
                    .metadata(json!({ "task": task, "capability": capability, "target": target, "depth": e.depth }));
                if let Err(err) = security.home().audit().append(event) {
                    tracing::warn!(error = %err, "a capability denial could not be audited");
                }
            };
            if n <= MAX_RECORDED {
                record(format!("{capability} {target}: {detail}"));
            } else if n == MAX_RECORDED + 1 {
                record(format!("more than {MAX_RECORDED} denials in this run: further ones are in its events only"));
            }
        }
        inner.emit(e);
    })
}
