//! A transport adapter of your own: anything that implements
//! `coderclaw::tasks::Transport` carries the runtime interface, and
//! `CoderClawRuntime` works over it unchanged. This one wraps another
//! transport, retries the calls that are safe to repeat when the server
//! was unreachable, and counts every call with its time: the kind of layer
//! a team adds for its own metrics, a queue in front of a server, or a
//! test double.
//!
//! Run: `cargo run -p coderclaw-examples --example custom_transport -- COMPONENT.wasm SKILL.toml [INPUT]`
//! (the adapter wraps the in-process transport here; it wraps
//! `coderclaw::tasks::connect(url, …)` just the same).

use anyhow::bail;
use coderclaw::tasks::{
    CoderClawRuntime, ErrorCode, LocalTransport, RuntimeError, RuntimeFuture, Transport, UpdateStream,
};
use coderclaw_core::task::{
    RuntimeStatus, SkillInfo, TaskFilter, TaskState, TaskStatus, TaskSubmitRequest, TaskUpdateEvent, UploadInfo,
};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Retries and measures the calls of the transport it wraps.
struct Measured<T> {
    inner: T,
    calls: Mutex<BTreeMap<&'static str, (u32, Duration)>>,
}

impl<T: Transport> Measured<T> {
    fn new(inner: T) -> Self {
        Self { inner, calls: Mutex::new(BTreeMap::new()) }
    }

    /// Runs `call` (again, up to 3 times with backoff, when `idempotent`
    /// and the server was unreachable) and counts it under `name`.
    fn measure<'a, V: Send + 'a, F, Fut>(
        &'a self,
        name: &'static str,
        idempotent: bool,
        call: F,
    ) -> RuntimeFuture<'a, V>
    where
        F: Fn() -> Fut + Send + 'a,
        Fut: Future<Output = Result<V, RuntimeError>> + Send + 'a,
    {
        Box::pin(async move {
            let start = Instant::now();
            let mut attempt = 0;
            let result = loop {
                match call().await {
                    Err(e) if idempotent && e.code == ErrorCode::Unavailable && attempt < 3 => {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                    }
                    other => break other,
                }
            };
            let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
            let entry = calls.entry(name).or_default();
            entry.0 += 1;
            entry.1 += start.elapsed();
            result
        })
    }
}

impl<T: Transport> Transport for Measured<T> {
    fn submit_task<'a>(&'a self, req: TaskSubmitRequest) -> RuntimeFuture<'a, TaskState> {
        // Not idempotent: a retried submission could run twice.
        self.measure("submit_task", false, move || self.inner.submit_task(req.clone()))
    }
    fn get_task_state<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, Option<TaskState>> {
        self.measure("get_task_state", true, move || self.inner.get_task_state(id))
    }
    fn stream_task_updates<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, UpdateStream> {
        self.measure("stream_task_updates", true, move || self.inner.stream_task_updates(id))
    }
    fn cancel_task<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, bool> {
        self.measure("cancel_task", true, move || self.inner.cancel_task(id))
    }
    fn abandon_task<'a>(&'a self, id: &'a str, reason: &'a str) -> RuntimeFuture<'a, bool> {
        self.measure("abandon_task", true, move || self.inner.abandon_task(id, reason))
    }
    fn list_tasks<'a>(&'a self, filter: TaskFilter) -> RuntimeFuture<'a, Vec<TaskState>> {
        self.measure("list_tasks", true, move || self.inner.list_tasks(filter.clone()))
    }
    fn get_task_events<'a>(&'a self, id: &'a str, after: u64, limit: u32) -> RuntimeFuture<'a, Vec<TaskUpdateEvent>> {
        self.measure("get_task_events", true, move || self.inner.get_task_events(id, after, limit))
    }
    fn respond<'a>(&'a self, id: &'a str, answer: &'a str) -> RuntimeFuture<'a, TaskState> {
        self.measure("respond", false, move || self.inner.respond(id, answer))
    }
    fn list_agents<'a>(&'a self) -> RuntimeFuture<'a, Vec<SkillInfo>> {
        self.measure("list_agents", true, move || self.inner.list_agents())
    }
    fn list_skills<'a>(&'a self) -> RuntimeFuture<'a, Vec<SkillInfo>> {
        self.measure("list_skills", true, move || self.inner.list_skills())
    }
    fn get_status<'a>(&'a self) -> RuntimeFuture<'a, RuntimeStatus> {
        self.measure("get_status", true, move || self.inner.get_status())
    }
    fn set_paused<'a>(&'a self, id: &'a str, paused: bool) -> RuntimeFuture<'a, TaskState> {
        self.measure("set_paused", false, move || self.inner.set_paused(id, paused))
    }
    fn upload_workspace<'a>(&'a self, tar: coderclaw::tasks::Bytes) -> RuntimeFuture<'a, UploadInfo> {
        // The same bytes give the same digest: sending them again is harmless.
        self.measure("upload_workspace", true, move || self.inner.upload_workspace(tar.clone()))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [component, manifest, rest @ ..] = args.as_slice() else {
        bail!("usage: custom_transport COMPONENT.wasm SKILL.toml [INPUT]");
    };
    let input: serde_json::Value = serde_json::from_str(rest.first().map_or(r#"{"path": "."}"#, String::as_str))?;
    let (local, manifest, _state) =
        coderclaw_examples::signed_runtime(&PathBuf::from(component), &PathBuf::from(manifest))?;

    let measured = Arc::new(Measured::new(LocalTransport::new(local.service().clone(), None)));
    let runtime = CoderClawRuntime::new(measured.clone());
    let skills = runtime.list_skills().await?;
    eprintln!("installed: {}", skills.iter().map(|s| s.id.as_str()).collect::<Vec<_>>().join(", "));
    let task = runtime.submit_task(TaskSubmitRequest::skill(manifest.id.as_str(), input)).await?;
    let done = runtime.wait(&task.id, |e| eprintln!("  #{} {} {}", e.seq, e.status, e.message)).await?;
    if done.status != TaskStatus::Completed {
        bail!("the task ended {}: {:?}", done.status, done.error);
    }
    println!("{}", serde_json::to_string(&done.output)?);
    for (name, (count, time)) in measured.calls.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        eprintln!("{name:<20} {count} call(s), {time:?}");
    }
    Ok(())
}
