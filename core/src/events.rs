//! Events a run emits while it works: the guest's `log` and `progress`
//! calls and the host's capability decisions. The embedder provides the
//! sink; the task engine turns these into the task stream.

use serde::Serialize;
use std::sync::{Arc, Mutex};

/// Severity of a guest log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Very detailed.
    Trace,
    /// Detailed.
    Debug,
    /// Normal.
    Info,
    /// Something looks wrong.
    Warn,
    /// Something failed.
    Error,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum EventKind {
    /// The guest logged a line.
    Log {
        /// Severity.
        level: LogLevel,
        /// The line (truncated to [`MAX_MESSAGE_BYTES`]).
        message: String,
    },
    /// The guest reported progress.
    Progress {
        /// 0.0..=1.0.
        fraction: f32,
        /// What is happening.
        message: String,
    },
    /// A capability was used or refused (shell, HTTP, nested skill).
    Capability {
        /// `shell`, `http` or `skills`.
        capability: &'static str,
        /// What was asked, e.g. the program and arguments or the URL.
        target: String,
        /// Whether the grant allowed it.
        allowed: bool,
        /// Why it was refused, or how it ended.
        detail: String,
    },
}

/// One event, tagged with the skill that emitted it. Nested invocations
/// from agents have `depth` > 0.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunEvent {
    /// The skill's name as loaded.
    pub skill: Arc<str>,
    /// 0 for the top-level run, 1 for a skill an agent invoked, ...
    pub depth: u32,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Longest log or progress message kept; longer ones are cut.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// Receives run events. Called on the run's task: keep it fast.
pub trait EventSink: Send + Sync + 'static {
    /// Handle one event.
    fn emit(&self, event: RunEvent);
}

/// Drops every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct DiscardEvents;

impl EventSink for DiscardEvents {
    fn emit(&self, _event: RunEvent) {}
}

/// Keeps events in memory, at most a fixed number (the rest are counted);
/// handy for tests and short runs.
#[derive(Debug)]
pub struct CollectEvents {
    max: usize,
    kept: Mutex<(Vec<RunEvent>, u64)>,
}

impl Default for CollectEvents {
    /// Keeps up to 10,000 events.
    fn default() -> Self {
        Self::bounded(10_000)
    }
}

impl CollectEvents {
    /// Keeps the first `max` events and counts the rest.
    pub fn bounded(max: usize) -> Self {
        Self { max, kept: Mutex::new((Vec::new(), 0)) }
    }

    /// A copy of the events kept so far.
    pub fn events(&self) -> Vec<RunEvent> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).0.clone()
    }

    /// How many events were dropped past the bound.
    pub fn dropped(&self) -> u64 {
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).1
    }
}

impl EventSink for CollectEvents {
    fn emit(&self, event: RunEvent) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if kept.0.len() < self.max {
            kept.0.push(event);
        } else {
            kept.1 += 1;
        }
    }
}

impl<F: Fn(RunEvent) + Send + Sync + 'static> EventSink for F {
    fn emit(&self, event: RunEvent) {
        self(event)
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("…[truncated]");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collected_events_are_bounded_and_the_rest_counted() {
        let sink = CollectEvents::bounded(3);
        for i in 0..10 {
            let kind = EventKind::Log { level: LogLevel::Info, message: i.to_string() };
            sink.emit(RunEvent { skill: "s".into(), depth: 0, kind });
        }
        assert_eq!(sink.events().len(), 3);
        assert_eq!(sink.dropped(), 7);
    }
}
