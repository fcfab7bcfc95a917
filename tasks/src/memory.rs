//! Session memory: what a skill keeps between the tasks of one session
//! (`memory.get`/`memory.put` in the guest), bounded per skill and session,
//! durable before a write is acknowledged.

use crate::store::{StoreError, TaskStore, Write};
use coderclaw_core::clock::now_ms;
use coderclaw_core::principal::Principal;
use coderclaw_core::task_link::MemoryFault;
use std::sync::Arc;

/// Most keys one skill may keep in one session's memory.
pub(crate) const MAX_MEMORY_KEYS: u64 = 1000;

/// One session's memory in the task store.
pub(crate) struct SessionMemory {
    store: Arc<dyn TaskStore>,
    session: String,
}

impl SessionMemory {
    /// The memory of the session `principal` acts in.
    pub(crate) fn new(store: Arc<dyn TaskStore>, principal: &Principal) -> Self {
        SessionMemory { store, session: principal.key.to_stored() }
    }

    /// `skill`'s value of `key`.
    pub(crate) async fn get(self, skill: String, key: String) -> Result<Option<String>, MemoryFault> {
        let SessionMemory { store, session } = self;
        tokio::task::spawn_blocking(move || store.memory_get(&session, &skill, &key))
            .await
            .map_err(|e| MemoryFault::Failed(e.to_string()))?
            .map_err(|e| MemoryFault::Failed(e.to_string()))
    }

    /// Sets (Some) or deletes (None) `skill`'s `key`, once it is on disk;
    /// returns whether the key existed. A new key past [`MAX_MEMORY_KEYS`]
    /// is refused.
    pub(crate) async fn put(self, skill: String, key: String, value: Option<String>) -> Result<bool, MemoryFault> {
        let SessionMemory { store, session } = self;
        let fail = |e: String| MemoryFault::Failed(e);
        let (s2, sk2, k2, st2) = (session.clone(), skill.clone(), key.clone(), store.clone());
        // Checked before the write is queued: tasks of one session writing
        // new keys at the same moment can pass the limit by a few (the
        // writer commits batches and cannot refuse one write).
        let (existed, count) = tokio::task::spawn_blocking(move || {
            Ok::<_, StoreError>((st2.memory_get(&s2, &sk2, &k2)?.is_some(), st2.memory_len(&s2, &sk2)?))
        })
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(|e| fail(e.to_string()))?;
        if value.is_some() && !existed && count >= MAX_MEMORY_KEYS {
            return Err(MemoryFault::TooLarge(format!(
                "this skill's memory in this session is full ({MAX_MEMORY_KEYS} keys)"
            )));
        }
        let write = Write::Memory { session, skill, key, value, at_ms: now_ms() };
        let ack = store.queue_durable(write).map_err(|e| fail(e.to_string()))?;
        ack.await.map_err(|_| fail("the task store's writer stopped".into()))?.map_err(fail)?;
        Ok(existed)
    }
}
