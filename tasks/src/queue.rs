//! The fair queue: PENDING tasks waiting for a slot, one FIFO per session,
//! sessions served in turn.

use std::collections::{HashMap, VecDeque};

/// Queued task ids, served round-robin by session so one session's burst
/// does not starve the others.
#[derive(Default)]
pub(crate) struct Queue {
    by_session: HashMap<String, VecDeque<String>>,
    /// Sessions with queued tasks, served round-robin.
    turn: VecDeque<String>,
}

impl Queue {
    pub(crate) fn push(&mut self, session: &str, id: String) {
        let q = self.by_session.entry(session.to_owned()).or_default();
        if q.is_empty() {
            self.turn.push_back(session.to_owned());
        }
        q.push_back(id);
    }

    pub(crate) fn pop(&mut self) -> Option<String> {
        let session = self.turn.pop_front()?;
        let q = self.by_session.get_mut(&session)?;
        let id = q.pop_front();
        if q.is_empty() {
            self.by_session.remove(&session);
        } else {
            self.turn.push_back(session);
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::Queue;

    #[test]
    fn sessions_take_turns_and_each_keeps_its_order() {
        let mut q = Queue::default();
        for id in ["a1", "a2", "a3"] {
            q.push("a", id.to_owned());
        }
        q.push("b", "b1".to_owned());
        q.push("c", "c1".to_owned());
        q.push("b", "b2".to_owned());
        let order: Vec<String> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, ["a1", "b1", "c1", "a2", "b2", "a3"]);
        assert!(q.pop().is_none());
        q.push("a", "a4".to_owned());
        assert_eq!(q.pop().as_deref(), Some("a4"), "an emptied session queues again");
    }
}
