//! The session's key-value store: what a skill remembers across tasks of
//! one session (and no other). Granted only when the manifest asks for it:
//!
//! ```toml
//! [capabilities]
//! session-memory = true
//! ```
//!
//! Without the grant, or outside a task, every call returns
//! [`MemoryError::Denied`].
//!
//! ```no_run
//! let runs: u64 = coderclaw_sdk::memory::get("runs")?.and_then(|v| v.parse().ok()).unwrap_or(0);
//! coderclaw_sdk::memory::set("runs", &(runs + 1).to_string())?;
//! # Ok::<(), coderclaw_sdk::memory::MemoryError>(())
//! ```

use crate::__private::bindings::coderclaw::skill::memory as wit;
use std::fmt;

/// Why a memory call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryError {
    /// No session-memory grant, or not running as a task.
    Denied(String),
    /// A key or value over the host's limits, or a full store.
    TooLarge(String),
    /// The host could not read or write the store.
    Failed(String),
}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryError::Denied(m) => write!(f, "memory denied: {m}"),
            MemoryError::TooLarge(m) => write!(f, "memory value too large: {m}"),
            MemoryError::Failed(m) => write!(f, "memory failed: {m}"),
        }
    }
}

impl std::error::Error for MemoryError {}

impl From<wit::MemoryError> for MemoryError {
    fn from(e: wit::MemoryError) -> Self {
        match e {
            wit::MemoryError::Denied(m) => MemoryError::Denied(m),
            wit::MemoryError::TooLarge(m) => MemoryError::TooLarge(m),
            wit::MemoryError::Failed(m) => MemoryError::Failed(m),
        }
    }
}

impl From<MemoryError> for crate::SkillError {
    fn from(e: MemoryError) -> Self {
        match e {
            MemoryError::Denied(m) => crate::SkillError::Denied(m),
            other => crate::SkillError::Failed(other.to_string()),
        }
    }
}

/// The value stored under `key`, if any.
pub fn get(key: &str) -> Result<Option<String>, MemoryError> {
    wit::get(key).map_err(Into::into)
}

/// Stores `value` under `key`, replacing what was there.
pub fn set(key: &str, value: &str) -> Result<(), MemoryError> {
    wit::set(key, value).map_err(Into::into)
}

/// Removes `key`; true when it existed.
pub fn delete(key: &str) -> Result<bool, MemoryError> {
    wit::delete(key).map_err(Into::into)
}
