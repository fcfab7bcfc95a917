//! The engine as one node of a cluster (a store with a [`ClusterStore`]):
//! it claims queued tasks instead of keeping a queue, renews its lease,
//! reclaims lost nodes' tasks, and reaches tasks other nodes hold through
//! commands (cancel, answers) and the store (streams, edits of tasks no
//! node holds).
//!
//! The in-memory live map holds only the tasks this node holds; every
//! write of one carries its lease, so once another node reclaimed it the
//! writes are fenced and the run here is stopped.

use crate::engine::{EngineError, Inner, cancel_message};
use crate::live::Live;
use crate::store::{ClusterStore, Command, Notice, Reclaimed, StoreError, StoredTask, Write};
use coderclaw_core::task::{FailureCode, TaskEventKind, TaskFailure, TaskState, TaskStatus};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

/// Most tasks one claim takes (at most the free slots).
const CLAIM_MAX: usize = 64;

/// How often an idle node looks for work it was not told about.
const CLAIM_POLL: Duration = Duration::from_millis(500);

/// How often a node looks for commands and events it was not told about.
const NOTICE_POLL: Duration = Duration::from_millis(500);

/// Attempts at changing a task that keeps changing hands.
const HAND_OFF_TRIES: usize = 5;

/// The engine's cluster-side state.
#[derive(Default)]
pub(crate) struct NodeState {
    /// Claims under way (their tasks are not live yet).
    claiming: AtomicUsize,
    /// Left the cluster (shut down): no more heartbeats.
    pub(crate) left: AtomicBool,
    /// Streams of other nodes' tasks waiting to be fed, and whether a
    /// feeder runs.
    follow: Mutex<Follow>,
}

#[derive(Default)]
struct Follow {
    running: bool,
    all: bool,
    ids: HashSet<String>,
}

/// Starts the node's background work: heartbeats and reclaims, notices,
/// and (with `run_queue`) claiming.
pub(crate) fn start(inner: &Arc<Inner>, notices: Option<mpsc::UnboundedReceiver<Notice>>, run_queue: bool) {
    tokio::spawn(upkeep(Arc::downgrade(inner)));
    if let Some(rx) = notices {
        tokio::spawn(listen(Arc::downgrade(inner), rx));
    }
    if run_queue {
        tokio::spawn(dispatch(Arc::downgrade(inner)));
    }
}

fn cluster(inner: &Inner) -> &dyn ClusterStore {
    inner.store.cluster().expect("the cluster engine runs on a shared store")
}

/// Claims tasks for free slots, answered WAITING tasks first.
async fn dispatch(weak: Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let slots = inner.slots.clone();
        drop(inner);
        let Ok(mut permit) = slots.clone().acquire_owned().await else { return };
        loop {
            let Some(inner) = weak.upgrade() else { return };
            let notified = inner.wake.notified();
            let resumed = inner.resumes.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
            if let Some(tx) = resumed {
                match tx.send(permit) {
                    Ok(()) => break,
                    Err(back) => {
                        permit = back;
                        continue;
                    }
                }
            }
            if !inner.is_draining() {
                let mut permits = vec![permit];
                while permits.len() < CLAIM_MAX {
                    match slots.clone().try_acquire_owned() {
                        Ok(p) => permits.push(p),
                        Err(_) => break,
                    }
                }
                inner.node.claiming.fetch_add(1, Ordering::SeqCst);
                let claimed = cluster(&inner).claim(permits.len() as u32).await;
                let adopted = match claimed {
                    Ok(tasks) => {
                        let any = !tasks.is_empty();
                        for task in tasks {
                            let Some(p) = permits.pop() else { break };
                            inner.adopt(task, p);
                        }
                        any
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot claim tasks");
                        false
                    }
                };
                inner.node.claiming.fetch_sub(1, Ordering::SeqCst);
                if adopted {
                    // Unused permits go back with `permits`.
                    break;
                }
                permit = permits.swap_remove(0);
            }
            let _ = tokio::time::timeout(CLAIM_POLL, notified).await;
        }
    }
}

/// Renews the lease every quarter of it; reclaims lost nodes' tasks every
/// half. A node that could not renew for a whole lease (or finds itself
/// declared lost) stops its runs and joins again.
async fn upkeep(weak: Weak<Inner>) {
    let lease = match weak.upgrade() {
        Some(inner) => cluster(&inner).lease(),
        None => return,
    };
    let beat = (lease / 4).max(Duration::from_millis(50));
    let mut renewed = Instant::now();
    let mut reclaimed = Instant::now();
    let mut joined = true;
    loop {
        tokio::time::sleep(beat).await;
        let Some(inner) = weak.upgrade() else { return };
        if inner.node.left.load(Ordering::SeqCst) {
            return;
        }
        if !joined {
            let max = inner.config.max_concurrent_tasks;
            let store = inner.store.clone();
            drop(inner);
            let rejoined = tokio::task::spawn_blocking(move || {
                store.cluster().map(|c| c.join(max)).unwrap_or(Err(StoreError::WriterStopped))
            })
            .await;
            let Some(inner) = weak.upgrade() else { return };
            match rejoined {
                Ok(Ok(list)) => {
                    joined = true;
                    renewed = Instant::now();
                    inner.reclaimed(list);
                    inner.wake.notify_one();
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot join the cluster again yet"),
                Err(e) => tracing::warn!(error = %e, "cannot join the cluster again yet"),
            }
            continue;
        }
        let heartbeat = cluster(&inner).heartbeat();
        drop(inner);
        // The lease runs from when the heartbeat was sent, at the latest.
        let sent = Instant::now();
        let beat_result = tokio::time::timeout(lease / 2, heartbeat).await;
        let Some(inner) = weak.upgrade() else { return };
        match beat_result {
            Ok(Ok(true)) => renewed = sent,
            Ok(Ok(false)) => {
                inner.lost_lease("the cluster declared this node lost (its lease ran out)");
                joined = false;
                continue;
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {:?}", lease / 2),
                };
                tracing::warn!(error = %why, "heartbeat failed");
                // Stop before any other node may take the tasks over.
                if renewed.elapsed() >= lease * 3 / 4 {
                    inner.lost_lease("this node could not renew its lease in time");
                    joined = false;
                    continue;
                }
            }
        }
        if reclaimed.elapsed() >= lease / 2 {
            reclaimed = Instant::now();
            let reclaim = cluster(&inner).reclaim();
            drop(inner);
            let result = reclaim.await;
            let Some(inner) = weak.upgrade() else { return };
            inner.reclaimed_or_warn(result, "cannot reclaim lost nodes' tasks");
            // Tasks this node holds but does not run (a claim whose reply
            // was lost): given up by the same rules. Only while no claim is
            // under way: a later one runs after this on the same connection.
            if inner.node.claiming.load(Ordering::SeqCst) == 0 {
                let running: Vec<String> = inner.lock_live().iter().map(|(id, _)| id.clone()).collect();
                let orphans = cluster(&inner).reclaim_orphans(running);
                drop(inner);
                let result = orphans.await;
                let Some(inner) = weak.upgrade() else { return };
                inner.reclaimed_or_warn(result, "cannot check for tasks this node holds but does not run");
            }
        }
    }
}

/// Acts on notices from other nodes, and looks for commands and events
/// now and then in case a notice was lost.
async fn listen(weak: Weak<Inner>, mut rx: mpsc::UnboundedReceiver<Notice>) {
    let mut polled = Instant::now();
    loop {
        let notice = match tokio::time::timeout(NOTICE_POLL, rx.recv()).await {
            Ok(Some(n)) => Some(n),
            Ok(None) => return,
            Err(_) => None,
        };
        let Some(inner) = weak.upgrade() else { return };
        // The fallback poll runs however busy the notices keep this loop.
        let notice = if polled.elapsed() >= NOTICE_POLL { None } else { notice };
        if notice.is_none() {
            polled = Instant::now();
        }
        match notice {
            Some(Notice::Work) => inner.wake.notify_one(),
            Some(Notice::Command) => inner.take_commands().await,
            Some(Notice::Events(ids)) => inner.follow(ids),
            Some(Notice::Reconnected) | None => {
                if notice.is_some() {
                    inner.wake.notify_one();
                }
                inner.take_commands().await;
                inner.follow(None);
            }
        }
    }
}

impl Inner {
    /// Runs `task`, just claimed for this node, on `permit`.
    fn adopt(self: &Arc<Self>, task: StoredTask, permit: OwnedSemaphorePermit) {
        let id = task.state.id.clone();
        self.lock_live().insert(id.clone(), Live::new(task));
        self.start(id, permit);
    }

    /// Tasks whose writes were fenced: another node holds them now. Their
    /// runs here stop; they leave memory without an outcome (the new
    /// holder gives them theirs).
    pub(crate) fn fenced(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let mut live = self.lock_live();
        for id in ids {
            if let Some(entry) = live.remove(id) {
                if let Some(abort) = entry.abort {
                    abort.abort();
                }
                tracing::warn!(task = %id, "this node lost the task (its lease ran out and another node reclaimed \
                                            it): its run here is stopped and its late writes refused");
            }
        }
    }

    /// This node lost its lease: every task it holds may be another's
    /// now, so its runs stop here.
    fn lost_lease(&self, why: &str) {
        let entries = self.lock_live().take_all();
        tracing::error!(tasks = entries.len(), "{why}: stopping this node's runs; joining the cluster again");
        for entry in entries {
            if let Some(abort) = entry.abort {
                abort.abort();
            }
        }
    }

    /// Records what reclaims did: outcomes audited, events streamed here.
    pub(crate) fn reclaimed(&self, list: Vec<Reclaimed>) {
        for r in list {
            let state = &r.task.state;
            if state.status.is_terminal() {
                tracing::warn!(task = %state.id, from = %r.from, status = %state.status, "reclaimed a lost node's task");
                tokio::spawn(self.audit_outcome(state));
            } else {
                tracing::info!(task = %state.id, from = %r.from, "re-queued a lost node's task");
            }
            self.hub.publish(r.events);
        }
    }

    /// [`Inner::reclaimed`] for a reclaim pass that may have failed (`what`
    /// says which).
    fn reclaimed_or_warn(&self, result: Result<Vec<Reclaimed>, StoreError>, what: &str) {
        match result {
            Ok(list) => self.reclaimed(list),
            Err(e) => tracing::warn!(error = %e, "{what}"),
        }
    }

    /// Applies the commands other nodes queued for this one.
    async fn take_commands(&self) {
        let commands = match cluster(self).take_commands().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read commands for this node");
                return;
            }
        };
        for (id, command) in commands {
            let result = match command {
                Command::Cancel(reason) => self.cancel_here(&id, &reason).map(|_| ()),
                Command::Respond(answer) => self.respond_here(&id, answer).map(|_| ()),
            };
            if let Err(e) = result {
                tracing::info!(task = %id, error = %e, "a command from another node no longer applies");
            }
        }
    }

    /// Feeds open streams of tasks other nodes hold (`ids`, or all) with
    /// their new events from the store.
    /// One feeder at a time: notices arriving meanwhile are merged into
    /// its next round, so a busy cluster costs one read per streamed task
    /// per round, not one per notice.
    pub(crate) fn follow(self: &Arc<Self>, ids: Option<Vec<String>>) {
        if self.hub.following().is_empty() {
            return;
        }
        {
            let mut f = self.node.follow.lock().unwrap_or_else(|p| p.into_inner());
            match ids {
                Some(ids) => f.ids.extend(ids),
                None => f.all = true,
            }
            if f.running {
                return;
            }
            f.running = true;
        }
        let inner = self.clone();
        self.runtime.spawn_blocking(move || {
            loop {
                let (all, ids) = {
                    let mut f = inner.node.follow.lock().unwrap_or_else(|p| p.into_inner());
                    if !f.all && f.ids.is_empty() {
                        f.running = false;
                        return;
                    }
                    (std::mem::take(&mut f.all), std::mem::take(&mut f.ids))
                };
                let wanted: Vec<(String, u64)> = {
                    let live = inner.lock_live();
                    inner
                        .hub
                        .following()
                        .into_iter()
                        .filter(|(id, _)| !live.contains(id) && (all || ids.contains(id)))
                        .collect()
                };
                for (id, last) in wanted {
                    match inner.store.events(&id, last, crate::MAX_EVENTS_PAGE) {
                        Ok(events) if !events.is_empty() => inner.hub.publish(events),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(task = %id, error = %e, "cannot follow a task on another node"),
                    }
                }
            }
        });
    }

    /// Changes task `stored`, which no node holds, with `op` (as if it
    /// were live here) and stores the result if nobody changed it
    /// meanwhile; the new state, or None when it changed hands.
    fn edit_unheld(
        &self,
        stored: StoredTask,
        op: impl FnOnce(&Self, &mut Live, &mut dyn FnMut(Write) -> Result<(), StoreError>) -> Result<(), EngineError>,
    ) -> Result<Option<TaskState>, EngineError> {
        let before = stored.clone();
        let mut entry = Live::new(stored);
        let mut writes = Vec::new();
        op(self, &mut entry, &mut |w| {
            writes.push(w);
            Ok(())
        })?;
        let events: Vec<_> = writes
            .into_iter()
            .filter_map(|w| match w {
                Write::Task { event, .. } => event,
                Write::Event { event, .. } => Some(event),
                _ => None,
            })
            .collect();
        if !cluster(self).write_unheld(&before, &entry.task, &events)? {
            return Ok(None);
        }
        self.hub.publish(events);
        Ok(Some(entry.task.state))
    }

    /// Cancels task `id`, which this node does not hold.
    pub(crate) fn cancel_elsewhere(
        &self,
        cluster: &dyn ClusterStore,
        id: &str,
        reason: &str,
    ) -> Result<bool, EngineError> {
        for _ in 0..HAND_OFF_TRIES {
            let stored = self.get(id)?;
            if stored.state.status.is_terminal() {
                return Ok(false);
            }
            if stored.lease.node.is_some() {
                match cluster.send_command(id, &Command::Cancel(reason.to_owned()))? {
                    // Its node cancels it (unless it is already finishing).
                    Some(_) => return Ok(true),
                    None => continue,
                }
            }
            let message = cancel_message(reason);
            let cancelled = self.edit_unheld(stored, |inner, entry, sink| {
                inner.change_into(
                    entry,
                    TaskStatus::Cancelled,
                    TaskEventKind::Status,
                    &message,
                    None,
                    |s| {
                        s.error = Some(TaskFailure::new(FailureCode::Cancelled, message.clone()));
                    },
                    sink,
                )
            })?;
            if let Some(state) = cancelled {
                tokio::spawn(self.audit_outcome(&state));
                return Ok(true);
            }
        }
        Err(changing_hands(id))
    }

    /// Answers task `id`, which this node does not hold.
    pub(crate) fn respond_elsewhere(
        &self,
        cluster: &dyn ClusterStore,
        id: &str,
        answer: String,
    ) -> Result<TaskState, EngineError> {
        let stored = self.get(id)?;
        let status = stored.state.status;
        if status != TaskStatus::Waiting {
            return Err(EngineError::Conflict(format!("task {id} is {status}, not waiting for input")));
        }
        if stored.lease.node.is_none() {
            return Err(EngineError::Conflict(format!(
                "task {id} is moving to another node (its node was lost): it runs again from the start and will \
                 ask again"
            )));
        }
        match cluster.send_command(id, &Command::Respond(answer))? {
            // As its node applies it.
            Some(_) => {
                let mut state = stored.state;
                state.status = TaskStatus::Running;
                state.prompt = None;
                Ok(state)
            }
            None => Err(changing_hands(id)),
        }
    }

    /// Pauses or resumes task `id`, which this node does not hold.
    pub(crate) fn set_paused_elsewhere(&self, id: &str, paused: bool) -> Result<TaskState, EngineError> {
        for _ in 0..HAND_OFF_TRIES {
            let stored = self.get(id)?;
            let status = stored.state.status;
            if status != TaskStatus::Pending {
                return Err(EngineError::Conflict(format!(
                    "task {id} is {status}: only PENDING tasks can be paused or resumed"
                )));
            }
            if let Some(node) = &stored.lease.node {
                return Err(EngineError::Conflict(format!(
                    "task {id} was claimed by node {node} and is starting: it can no longer be paused or resumed"
                )));
            }
            if stored.state.paused == paused {
                let what = if paused { "paused" } else { "not paused" };
                return Err(EngineError::Conflict(format!("task {id} is already {what}")));
            }
            let kind = if paused { TaskEventKind::Paused } else { TaskEventKind::Resumed };
            let edited = self.edit_unheld(stored, |inner, entry, sink| {
                inner.update_into(entry, kind, kind.as_str(), None, |s| s.paused = paused, sink)
            })?;
            if let Some(state) = edited {
                return Ok(state);
            }
        }
        Err(changing_hands(id))
    }
}

fn changing_hands(id: &str) -> EngineError {
    EngineError::Conflict(format!("task {id} kept changing hands between nodes: try again"))
}
