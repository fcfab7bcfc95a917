//! What a `Store` holds for one run: the WASI context built from the grant,
//! the resource limiter, and the run's context for the coderclaw imports.

use crate::caps::http::HttpGate;
use crate::caps::wasi::ResolvedDir;
use crate::events::{EventKind, EventSink, RunEvent};
use crate::host::HostInner;
use coderclaw_core::Grant;
use std::sync::Arc;
use std::time::Instant;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Immutable facts about a run, shared with the capability implementations.
pub(crate) struct RunContext {
    pub name: Arc<str>,
    pub depth: u32,
    /// The grant, with directory paths canonicalised.
    pub grant: Grant,
    pub dirs: Vec<ResolvedDir>,
    pub sink: Arc<dyn EventSink>,
    /// The task this run belongs to (input requests, session memory).
    pub task: Option<crate::task_link::TaskLink>,
    pub host: Arc<HostInner>,
    pub deadline: Instant,
}

impl RunContext {
    pub(crate) fn emit(&self, kind: EventKind) {
        self.sink.emit(RunEvent { skill: self.name.clone(), depth: self.depth, kind });
    }

    /// Records a capability decision as an event and a trace line.
    pub(crate) fn capability(&self, capability: &'static str, target: String, allowed: bool, detail: String) {
        tracing::info!(skill = %self.name, capability, %target, allowed, %detail, "capability");
        self.emit(EventKind::Capability { capability, target, allowed, detail });
    }
}

/// Per-run memory and table limits. Remembers a refused memory growth so a
/// resulting trap can be reported as "memory limit", not as a crash.
pub(crate) struct RunLimiter {
    pub memory_bytes: usize,
    pub memory_refused: bool,
}

/// Table elements a component may grow to; generous for Rust guests.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl ResourceLimiter for RunLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.memory_refused = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// The `T` of `Store<T>` for every run.
pub(crate) struct RunState {
    pub wasi: WasiCtx,
    pub http: WasiHttpCtx,
    pub http_gate: HttpGate,
    pub table: ResourceTable,
    pub limiter: RunLimiter,
    pub ctx: Arc<RunContext>,
}

impl WasiView for RunState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for RunState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.http_gate }
    }
}
