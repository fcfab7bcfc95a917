//! `notifications/tools/list_changed`: the tools a caller is offered
//! follow the installed skills, the trust store and the policy, which any
//! process may change (`coderclaw skill install`, `trust revoke`, an edited
//! `security.yaml`). A session's watcher looks twice a second and tells the
//! client to list again when one of them changed.

use coderclaw_security::security::{PolicySet, Security};
use coderclaw_tasks::TaskService;
use rmcp::{Peer, RoleServer};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often a session looks for changes.
const LOOK_EVERY: Duration = Duration::from_millis(500);

/// What the offered tools depend on, as last seen.
struct Seen {
    /// The trust store's and installed skills' generation.
    generation: Option<i64>,
    /// The policy in force (held, so its address cannot be reused).
    policy: Option<Arc<PolicySet>>,
}

impl Seen {
    fn now(security: &Security) -> Seen {
        Seen { generation: security.home().generation().ok(), policy: security.policy().ok() }
    }

    fn same(&self, other: &Seen) -> bool {
        let policy = match (&self.policy, &other.policy) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (a, b) => a.is_none() == b.is_none(),
        };
        self.generation == other.generation && policy
    }
}

/// Watches for the session whose handler holds `alive`, until the handler
/// is gone or the client stops listening.
pub(super) fn spawn(service: Arc<TaskService>, peer: Peer<RoleServer>, alive: Weak<()>) {
    tokio::spawn(async move {
        let mut seen: Option<Seen> = None;
        let mut tick = tokio::time::interval(LOOK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if alive.upgrade().is_none() {
                return;
            }
            // Reading the policy stats its files; off the async workers.
            let svc = service.clone();
            let Ok(now) = tokio::task::spawn_blocking(move || Seen::now(svc.security())).await else {
                return;
            };
            // The first look (at once: an interval's first tick is immediate)
            // is what the client listed against.
            let Some(before) = &seen else {
                seen = Some(now);
                continue;
            };
            if !now.same(before) {
                seen = Some(now);
                tracing::debug!("the offered tools may have changed: telling the client");
                if peer.notify_tool_list_changed().await.is_err() {
                    return;
                }
            }
        }
    });
}
