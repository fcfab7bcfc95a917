//! What a store shared by several nodes adds to [`super::TaskStore`]: node
//! membership with leases, claiming queued tasks, reclaiming a lost node's
//! tasks, and messages between nodes (commands to a task's node, notices
//! of new work and new events).
//!
//! A node's lease covers every task it holds: one heartbeat renews them
//! all. A node whose lease ran out (dead, frozen, cut off) is lost; any
//! node then reclaims its tasks, bumping each one's fencing token, so the
//! lost node's late writes are refused.

use super::{StoreError, StoredTask};
use coderclaw_core::task::TaskUpdateEvent;
use futures_util::future::BoxFuture;
use std::time::Duration;
use tokio::sync::mpsc;

/// A request for the node running a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Cancel it, for this reason.
    Cancel(String),
    /// Answer its input request.
    Respond(String),
}

/// Something another node did that this one may care about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A task became claimable.
    Work,
    /// A command for this node was queued.
    Command,
    /// These tasks have new events (None: some tasks, which not said).
    Events(Option<Vec<String>>),
    /// The notice connection was re-established: anything may have been
    /// missed meanwhile.
    Reconnected,
}

/// A task taken from a lost node, as it is now stored.
#[derive(Debug, Clone)]
pub struct Reclaimed {
    /// The task after the reclaim.
    pub task: StoredTask,
    /// The events the reclaim stored (a final status when it ended).
    pub events: Vec<TaskUpdateEvent>,
    /// The node it was taken from.
    pub from: String,
}

/// One node as the cluster sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// Its name.
    pub name: String,
    /// `alive`, `lost` (its lease ran out) or `left` (shut down).
    pub state: String,
    /// When it joined, Unix ms.
    pub started_at_ms: u64,
    /// Its last heartbeat, Unix ms (the database's clock).
    pub heartbeat_at_ms: u64,
    /// How long ago that was, ms (the database's clock).
    pub heartbeat_age_ms: u64,
    /// Tasks it holds that are not final.
    pub running_tasks: u64,
    /// Its `maxConcurrentTasks`.
    pub max_concurrent_tasks: u32,
    /// Its coderclaw version.
    pub version: String,
}

/// The cluster at a glance.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// The database, its password hidden.
    pub database: String,
    /// Every node that ever joined, alive first.
    pub nodes: Vec<NodeStatus>,
    /// PENDING tasks no node holds yet.
    pub queued_tasks: u64,
    /// Of those, paused.
    pub paused_tasks: u64,
}

/// A store shared by the nodes of a cluster.
pub trait ClusterStore: Send + Sync {
    /// This node's name.
    fn node(&self) -> &str;
    /// How long a heartbeat keeps this node's tasks.
    fn lease(&self) -> Duration;
    /// Joins the cluster as this node: refused while another running node
    /// has the name; whatever an earlier run under the name held is
    /// reclaimed first (returned).
    fn join(&self, max_concurrent_tasks: u32) -> Result<Vec<Reclaimed>, StoreError>;
    /// Renews this node's lease; false when it was lost meanwhile (its
    /// tasks may be reclaimed: it must stop them and join again).
    fn heartbeat(&self) -> BoxFuture<'static, Result<bool, StoreError>>;
    /// Claims at most `max` claimable tasks for this node, fairly across
    /// sessions cluster-wide: each session's oldest first, and the session
    /// served longest ago before the others.
    fn claim(&self, max: u32) -> BoxFuture<'static, Result<Vec<StoredTask>, StoreError>>;
    /// Marks nodes whose lease ran out lost and reclaims their tasks:
    /// queued ones go back to the queue, resumable ones are re-queued to
    /// run from the start, the rest FAILED `node-lost` (CANCELLED if a
    /// cancel was waiting for them).
    fn reclaim(&self) -> BoxFuture<'static, Result<Vec<Reclaimed>, StoreError>>;
    /// Reclaims, by the same rules, tasks this node holds that are not in
    /// `running` (the engine lost track of them: a claim whose reply was
    /// lost, a write wrongly taken as fenced).
    fn reclaim_orphans(&self, running: Vec<String>) -> BoxFuture<'static, Result<Vec<Reclaimed>, StoreError>>;
    /// Stores `after` and `events` for a task no node holds, if it is
    /// still as `before` (same fencing token); bumps the token. False when
    /// it changed meanwhile.
    fn write_unheld(
        &self,
        before: &StoredTask,
        after: &StoredTask,
        events: &[TaskUpdateEvent],
    ) -> Result<bool, StoreError>;
    /// Queues `command` for the node holding task `id` and wakes it;
    /// returns that node, or None when no node holds it (any more).
    fn send_command(&self, id: &str, command: &Command) -> Result<Option<String>, StoreError>;
    /// Takes the commands queued for this node, oldest first.
    fn take_commands(&self) -> BoxFuture<'static, Result<Vec<(String, Command)>, StoreError>>;
    /// Unfinished tasks of `session` and the bytes of their input,
    /// cluster-wide.
    fn session_load(&self, session: &str) -> Result<(u64, u64), StoreError>;
    /// Leaves the cluster (shutdown): whatever this node still holds is
    /// reclaimed at once by the others.
    fn leave(&self) -> BoxFuture<'static, Result<(), StoreError>>;
    /// The notices from other nodes; the first call takes the receiver.
    fn notices(&self) -> Option<mpsc::UnboundedReceiver<Notice>>;
}
