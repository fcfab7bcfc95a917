//! The `memory` interface: a key-value store per session and skill (the
//! run's signed id). Granted only by `session-memory` in the grant, and
//! only inside a task (which names the session); every other call is
//! `denied`.

use crate::bindings::coderclaw::skill::memory::{Host, MemoryError};
use crate::state::RunState;
use crate::task_link::{MemoryFault, TaskLink};

/// Longest key, in bytes.
pub(crate) const MAX_KEY_BYTES: usize = 256;
/// Longest value, in bytes.
pub(crate) const MAX_VALUE_BYTES: usize = 64 * 1024;

impl RunState {
    fn memory_link(&self, op: &str, key: &str) -> Result<TaskLink, MemoryError> {
        let refuse = |reason: String| {
            self.ctx.capability("memory", format!("{op} {key}"), false, reason.clone());
            Err(MemoryError::Denied(reason))
        };
        if !self.ctx.grant.session_memory() {
            return refuse("this skill has no session-memory grant".into());
        }
        let Some(task) = self.ctx.task.clone() else {
            return refuse("session memory is only available to tasks".into());
        };
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(MemoryError::TooLarge(format!("keys are 1 to {MAX_KEY_BYTES} bytes")));
        }
        Ok(task)
    }
}

fn wit_error(f: MemoryFault) -> MemoryError {
    match f {
        MemoryFault::TooLarge(m) => MemoryError::TooLarge(m),
        MemoryFault::Failed(m) => MemoryError::Failed(m),
    }
}

impl Host for RunState {
    async fn get(&mut self, key: String) -> Result<Option<String>, MemoryError> {
        let task = self.memory_link("get", &key)?;
        task.services.memory_get(self.ctx.name.to_string(), key).await.map_err(wit_error)
    }

    async fn set(&mut self, key: String, value: String) -> Result<(), MemoryError> {
        let task = self.memory_link("set", &key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(MemoryError::TooLarge(format!("values are at most {MAX_VALUE_BYTES} bytes")));
        }
        task.services.memory_put(self.ctx.name.to_string(), key, Some(value)).await.map(|_| ()).map_err(wit_error)
    }

    async fn delete(&mut self, key: String) -> Result<bool, MemoryError> {
        let task = self.memory_link("delete", &key)?;
        task.services.memory_put(self.ctx.name.to_string(), key, None).await.map_err(wit_error)
    }
}
