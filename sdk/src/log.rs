//! Structured logging to the host's event stream (always granted).
//!
//! ```no_run
//! coderclaw_sdk::log::info("scanning the workspace");
//! coderclaw_sdk::log::warn("skipping a file larger than 1 MiB");
//! ```

use crate::__private::bindings::coderclaw::skill::host::{self, LogLevel};

/// Log at trace level.
pub fn trace(message: &str) {
    host::log(LogLevel::Trace, message);
}

/// Log at debug level.
pub fn debug(message: &str) {
    host::log(LogLevel::Debug, message);
}

/// Log at info level.
pub fn info(message: &str) {
    host::log(LogLevel::Info, message);
}

/// Log at warn level.
pub fn warn(message: &str) {
    host::log(LogLevel::Warn, message);
}

/// Log at error level.
pub fn error(message: &str) {
    host::log(LogLevel::Error, message);
}
