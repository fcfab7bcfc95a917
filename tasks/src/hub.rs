//! The stream hub: live subscribers per task, fed with each committed
//! batch, and the streams that replay a task's history and then follow it.

use crate::store::TaskStore;
use coderclaw_core::task::{TaskEventKind, TaskUpdateEvent};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Subscribers per task, fed by the writer after each commit.
#[derive(Default)]
pub(crate) struct Hub {
    subs: Mutex<HashMap<String, Sub>>,
}

/// One task's subscribers, and the last seq published to them.
struct Sub {
    tx: broadcast::Sender<TaskUpdateEvent>,
    last: u64,
}

/// Events a slow subscriber may fall behind before it re-reads the store.
/// Every subscribed task allocates this many slots up front (about 150
/// bytes each), and a short task has about five events: 20,000 tasks
/// streamed at once hold 48 MB at 16 slots, 770 MB at 256.
const STREAM_BUFFER: usize = 16;

impl Hub {
    pub(crate) fn subscribe(&self, id: &str) -> broadcast::Receiver<TaskUpdateEvent> {
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        subs.entry(id.to_owned())
            .or_insert_with(|| Sub { tx: broadcast::channel(STREAM_BUFFER).0, last: 0 })
            .tx
            .subscribe()
    }

    pub(crate) fn publish(&self, events: Vec<TaskUpdateEvent>) {
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        if subs.is_empty() {
            return;
        }
        let mut finished = HashSet::new();
        for e in events {
            let terminal = e.event == TaskEventKind::Status && e.status.is_terminal();
            if let Some(sub) = subs.get_mut(&e.task_id) {
                if terminal {
                    finished.insert(e.task_id.clone());
                }
                sub.last = sub.last.max(e.seq);
                let _ = sub.tx.send(e);
            }
        }
        // Dropping the sender ends the streams once they drain.
        for id in finished {
            subs.remove(&id);
        }
    }

    pub(crate) fn release(&self, id: &str) {
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        if subs.get(id).is_some_and(|sub| sub.tx.receiver_count() == 0) {
            subs.remove(id);
        }
    }

    /// The streamed tasks, each with the last seq published to it.
    pub(crate) fn following(&self) -> Vec<(String, u64)> {
        let subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        subs.iter().map(|(id, sub)| (id.clone(), sub.last)).collect()
    }
}

/// One open stream: the backlog read from the store, then live events
/// from the hub (re-reading the store when it lags behind).
pub(crate) struct StreamState {
    /// Keeps the engine (and so its dispatcher) alive while a stream is
    /// open: a stream of a queued task must see it run.
    pub(crate) _engine: Arc<crate::engine::Inner>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) store: Arc<dyn TaskStore>,
    pub(crate) id: String,
    /// Always Some until dropped; taken in `drop` so the hub sees the
    /// receiver gone before it checks for remaining subscribers.
    pub(crate) rx: Option<broadcast::Receiver<TaskUpdateEvent>>,
    pub(crate) backlog: VecDeque<TaskUpdateEvent>,
    pub(crate) last: u64,
    pub(crate) done: bool,
}

impl Drop for StreamState {
    fn drop(&mut self) {
        drop(self.rx.take());
        self.hub.release(&self.id);
    }
}

/// The stream's next event, in seq order, ending after the final status.
pub(crate) async fn next_event(mut s: StreamState) -> Option<(TaskUpdateEvent, StreamState)> {
    loop {
        if let Some(e) = s.backlog.pop_front() {
            if e.seq <= s.last {
                continue;
            }
            s.last = e.seq;
            s.done = e.event == TaskEventKind::Status && e.status.is_terminal();
            return Some((e, s));
        }
        if s.done {
            return None;
        }
        let rx = s.rx.as_mut()?;
        match rx.recv().await {
            Ok(e) => s.backlog.push_back(e),
            Err(broadcast::error::RecvError::Lagged(_)) => match s.store.events(&s.id, s.last, u32::MAX) {
                Ok(missed) => s.backlog.extend(missed),
                Err(_) => return None,
            },
            Err(broadcast::error::RecvError::Closed) => {
                let rest = s.store.events(&s.id, s.last, u32::MAX).unwrap_or_default();
                if rest.is_empty() {
                    return None;
                }
                s.backlog.extend(rest);
            }
        }
    }
}
