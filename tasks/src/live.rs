//! The tasks not yet final, in memory: each one's row as last queued, how
//! to stop its run, who waits for its input; and each session's load (its
//! unfinished tasks and their input bytes), kept as tasks come and go so a
//! quota check costs one lookup however many tasks are live.

use crate::store::StoredTask;
use coderclaw_core::task::{TaskState, TaskStatus, TaskUpdateEvent};
use std::collections::HashMap;
use std::time::Instant;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

/// A task not yet final.
pub(crate) struct Live {
    pub(crate) task: StoredTask,
    pub(crate) abort: Option<AbortHandle>,
    pub(crate) waiter: Option<oneshot::Sender<String>>,
    /// Run events stored and dropped so far (this process).
    pub(crate) budget: EventBudget,
    /// Since when the task is paused or WAITING (this process).
    pub(crate) idle_since: Option<Instant>,
    /// Its run returned and its outcome is being recorded: no longer
    /// cancellable.
    pub(crate) finishing: bool,
    /// Its input's size as JSON text, for the session quota.
    input_bytes: u64,
    /// The session it counts against, as when it entered (the row's copy
    /// is replaced with every change).
    session: String,
    /// Its committed events, while few and small: a new stream replays
    /// them without reading the store.
    history: Option<Vec<TaskUpdateEvent>>,
    history_bytes: usize,
}

/// Most committed events a live task keeps in memory for new streams...
const MAX_HISTORY_EVENTS: usize = 16;
/// ...and most bytes of their messages and data; past either, streams read
/// the store.
const MAX_HISTORY_BYTES: usize = 4096;

#[derive(Default)]
pub(crate) struct EventBudget {
    pub(crate) events: u64,
    pub(crate) bytes: u64,
    pub(crate) dropped: u64,
}

impl Live {
    /// A task read back from the store: it has events only the store holds.
    pub(crate) fn new(task: StoredTask) -> Live {
        Live::with_history(task, None)
    }

    /// A task being submitted now: none of its events is committed yet.
    pub(crate) fn submitted(task: StoredTask) -> Live {
        Live::with_history(task, Some(Vec::new()))
    }

    fn with_history(task: StoredTask, history: Option<Vec<TaskUpdateEvent>>) -> Live {
        let idle_since = (task.state.paused || task.state.status == TaskStatus::Waiting).then(Instant::now);
        let input_bytes = input_bytes(&task.state);
        let session = task.state.session_id.clone();
        Live {
            task,
            abort: None,
            waiter: None,
            budget: EventBudget::default(),
            idle_since,
            finishing: false,
            input_bytes,
            session,
            history,
            history_bytes: 0,
        }
    }

    /// Adds event `e`, just committed, to the history new streams replay,
    /// or gives the history up when it grows past its bounds.
    pub(crate) fn committed(&mut self, e: &TaskUpdateEvent) {
        let Some(history) = &mut self.history else { return };
        let bytes = e.message.len() + e.data.as_ref().map_or(0, |d| json_len(d) as usize);
        if history.len() >= MAX_HISTORY_EVENTS || self.history_bytes + bytes > MAX_HISTORY_BYTES {
            self.history = None;
            return;
        }
        self.history_bytes += bytes;
        history.push(e.clone());
    }

    /// Every committed event of this task, in order, if all are in memory.
    pub(crate) fn history(&self) -> Option<&[TaskUpdateEvent]> {
        self.history.as_deref()
    }
}

/// The size of a task's input as JSON text.
pub(crate) fn input_bytes(s: &TaskState) -> u64 {
    json_len(&s.input)
}

/// What one session's unfinished tasks hold.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SessionLoad {
    pub(crate) tasks: usize,
    pub(crate) input_bytes: u64,
}

/// Every live task by id, with the load of each session. Tasks enter and
/// leave only through [`LiveTasks::insert`] and [`LiveTasks::remove`], which
/// keep the loads exact (a task's session and input never change).
#[derive(Default)]
pub(crate) struct LiveTasks {
    tasks: HashMap<String, Live>,
    load: HashMap<String, SessionLoad>,
}

impl LiveTasks {
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.tasks.contains_key(id)
    }

    /// Every task, leaving none (a node that lost its lease).
    pub(crate) fn take_all(&mut self) -> Vec<Live> {
        let ids: Vec<String> = self.tasks.keys().cloned().collect();
        ids.iter().filter_map(|id| self.remove(id)).collect()
    }

    pub(crate) fn get(&self, id: &str) -> Option<&Live> {
        self.tasks.get(id)
    }

    pub(crate) fn get_mut(&mut self, id: &str) -> Option<&mut Live> {
        self.tasks.get_mut(id)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &Live)> {
        self.tasks.iter()
    }

    /// The load of `session` now.
    pub(crate) fn load(&self, session: &str) -> SessionLoad {
        self.load.get(session).copied().unwrap_or_default()
    }

    /// Adds `live` under `id` unless a task is there already; the entry.
    pub(crate) fn insert(&mut self, id: String, live: Live) -> &mut Live {
        match self.tasks.entry(id) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let load = self.load.entry(live.session.clone()).or_default();
                load.tasks += 1;
                load.input_bytes += live.input_bytes;
                v.insert(live)
            }
        }
    }

    pub(crate) fn remove(&mut self, id: &str) -> Option<Live> {
        let live = self.tasks.remove(id)?;
        if let Some(load) = self.load.get_mut(&live.session) {
            debug_assert!(load.tasks > 0 && load.input_bytes >= live.input_bytes, "session load drifted");
            load.tasks = load.tasks.saturating_sub(1);
            load.input_bytes = load.input_bytes.saturating_sub(live.input_bytes);
            if load.tasks == 0 {
                self.load.remove(&live.session);
            }
        }
        Some(live)
    }
}

/// Tasks that just finished, newest kept: a client that waited for its
/// task reads it right after the final event, and the row it would read
/// from the store is this one (a final task never changes again).
/// Bounded in count and in bytes of input and output.
#[derive(Default)]
pub(crate) struct Finished {
    tasks: HashMap<String, (StoredTask, u64)>,
    order: std::collections::VecDeque<String>,
    bytes: u64,
}

/// Most finished tasks kept in memory.
const MAX_FINISHED: usize = 1024;
/// Most bytes of input and output they hold; a bigger task is not kept.
const MAX_FINISHED_BYTES: u64 = 8 << 20;

impl Finished {
    pub(crate) fn get(&self, id: &str) -> Option<&StoredTask> {
        self.tasks.get(id).map(|(t, _)| t)
    }

    /// Keeps `live`, the task as it finished (its row; not its history),
    /// dropping the oldest as needed.
    pub(crate) fn keep(&mut self, live: Live) {
        let s = &live.task.state;
        let output = s.output.as_ref().map_or(0, json_len);
        let error = s.error.as_ref().map_or(0, |e| e.message.len() as u64);
        let size = live.input_bytes + output + json_len(&s.metadata) + s.description.len() as u64 + error;
        if size > MAX_FINISHED_BYTES / 8 {
            return;
        }
        while self.tasks.len() >= MAX_FINISHED || self.bytes + size > MAX_FINISHED_BYTES {
            let Some(old) = self.order.pop_front() else { break };
            if let Some((_, n)) = self.tasks.remove(&old) {
                self.bytes -= n;
            }
        }
        let id = live.task.state.id.clone();
        self.order.push_back(id.clone());
        self.bytes += size;
        self.tasks.insert(id, (live.task, size));
    }
}

/// The length of `v` as JSON text, without building the text.
fn json_len(v: &impl serde::Serialize) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    let _ = serde_json::to_writer(&mut n, v);
    n.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use coderclaw_core::task::TaskTarget;

    fn task(id: &str, session: &str, input: &str) -> Live {
        let state = TaskState {
            id: id.into(),
            description: String::new(),
            status: TaskStatus::Pending,
            target: TaskTarget::Skill("team/echo".into()),
            input: input.into(),
            session_id: session.into(),
            user: "u".into(),
            remote: false,
            parent_task_id: None,
            metadata: Default::default(),
            paused: false,
            workspace: None,
            progress: None,
            prompt: None,
            output: None,
            error: None,
            created_at_ms: 0,
            started_at_ms: None,
            completed_at_ms: None,
        };
        Live::submitted(StoredTask { state, resumable: false, last_seq: 1, lease: Default::default() })
    }

    fn event(seq: u64, message: &str) -> TaskUpdateEvent {
        TaskUpdateEvent {
            task_id: "t".into(),
            seq,
            timestamp_ms: 0,
            event: coderclaw_core::task::TaskEventKind::Log,
            status: TaskStatus::Running,
            progress: None,
            message: message.into(),
            data: None,
        }
    }

    #[test]
    fn history_is_kept_while_few_and_small_and_never_partial() {
        let mut t = task("t", "s", "");
        for seq in 1..=4 {
            t.committed(&event(seq, "short"));
        }
        assert_eq!(t.history().map(|h| h.iter().map(|e| e.seq).collect::<Vec<_>>()), Some(vec![1, 2, 3, 4]));
        // One event too big: the history is given up, not cut.
        t.committed(&event(5, &"x".repeat(MAX_HISTORY_BYTES)));
        assert!(t.history().is_none());
        t.committed(&event(6, "short"));
        assert!(t.history().is_none(), "never resumed with a gap");
        let mut many = task("m", "s", "");
        for seq in 1..=MAX_HISTORY_EVENTS as u64 + 1 {
            many.committed(&event(seq, ""));
        }
        assert!(many.history().is_none());
        // A task recovered from the store has events only the store holds,
        // even a PENDING one with only its submission.
        let recovered = Live::new(task("r", "s", "").task);
        assert!(recovered.history().is_none());
    }

    #[test]
    fn finished_tasks_are_bounded_in_count_and_bytes() {
        let mut done = Finished::default();
        for i in 0..MAX_FINISHED + 10 {
            done.keep(task(&format!("t{i}"), "s", "x"));
        }
        assert_eq!(done.tasks.len(), MAX_FINISHED);
        assert!(done.get("t0").is_none() && done.get(&format!("t{}", MAX_FINISHED + 9)).is_some(), "oldest go first");
        // A task whose input is too big for the cache is not kept.
        let big = "x".repeat((MAX_FINISHED_BYTES / 8) as usize);
        done.keep(task("big", "s", &big));
        assert!(done.get("big").is_none());
        // Bytes: tasks of just under an eighth of the bound each; at most
        // eight fit, the oldest make room.
        let eighth = "y".repeat((MAX_FINISHED_BYTES / 8 - 16) as usize);
        for i in 0..12 {
            done.keep(task(&format!("q{i}"), "s", &eighth));
        }
        assert!(done.bytes <= MAX_FINISHED_BYTES, "{}", done.bytes);
        assert!(done.get("q11").is_some() && done.get("q3").is_none());
        assert_eq!(done.tasks.len(), done.order.len());
    }

    #[test]
    fn session_loads_follow_inserts_and_removals() {
        let mut live = LiveTasks::default();
        live.insert("a1".into(), task("a1", "a", "xx"));
        live.insert("a2".into(), task("a2", "a", "xxxx"));
        live.insert("b1".into(), task("b1", "b", ""));
        // Inserting an id again changes nothing.
        live.insert("a1".into(), task("a1", "a", "a much longer input"));
        assert_eq!(live.load("a"), SessionLoad { tasks: 2, input_bytes: 4 + 6 });
        assert_eq!(live.load("b"), SessionLoad { tasks: 1, input_bytes: 2 });
        assert!(live.remove("a1").is_some());
        assert!(live.remove("a1").is_none(), "removed once");
        assert_eq!(live.load("a"), SessionLoad { tasks: 1, input_bytes: 6 });
        live.remove("a2");
        live.remove("b1");
        assert_eq!((live.load("a"), live.load("b")), (SessionLoad::default(), SessionLoad::default()));
        assert!(live.load.is_empty(), "no session kept without tasks");
    }
}
