//! The `host` interface: `log` and `progress` are always granted (they only
//! report); `request-input` needs a task to ask through.

use crate::bindings::coderclaw::skill::host::{Host, LogLevel as WitLevel};
use crate::bindings::coderclaw::skill::types;
use crate::events::{EventKind, LogLevel, MAX_MESSAGE_BYTES, truncate};
use crate::state::RunState;

impl Host for RunState {
    async fn log(&mut self, level: WitLevel, message: String) {
        let level = match level {
            WitLevel::Trace => LogLevel::Trace,
            WitLevel::Debug => LogLevel::Debug,
            WitLevel::Info => LogLevel::Info,
            WitLevel::Warn => LogLevel::Warn,
            WitLevel::Error => LogLevel::Error,
        };
        self.ctx.emit(EventKind::Log { level, message: truncate(message, MAX_MESSAGE_BYTES) });
    }

    async fn progress(&mut self, fraction: f32, message: String) {
        let fraction = if fraction.is_nan() { 0.0 } else { fraction.clamp(0.0, 1.0) };
        self.ctx.emit(EventKind::Progress { fraction, message: truncate(message, MAX_MESSAGE_BYTES) });
    }

    async fn request_input(&mut self, prompt: String) -> Result<String, String> {
        let Some(task) = self.ctx.task.clone() else {
            return Err("no one to ask: input can only be requested when the skill runs as a task".into());
        };
        let prompt = truncate(prompt, MAX_MESSAGE_BYTES);
        tracing::info!(skill = %self.ctx.name, task = %task.task_id, "input requested");
        task.services.request_input(prompt).await
    }
}

impl types::Host for RunState {}
