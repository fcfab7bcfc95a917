//! `host.log` and `host.progress`: always granted, they only report.

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
}

impl types::Host for RunState {}
