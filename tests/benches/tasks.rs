//! Task engine throughput: submit → COMPLETED with the signed `echo` skill,
//! durable (group-committed SQLite WAL), via the in-process transport and
//! over HTTP on loopback; p50/p99 submission (acknowledgement) latency;
//! SSE fan-out to many subscribers of one task; one task alone, with the
//! median time of each stage (from the engine's tracing spans); the
//! server's memory after many tasks. Prints figures.
//!
//! cargo bench -p coderclaw-e2e --bench tasks [-- N] [PHASE ...]
//!
//! PHASE picks parts to run (all by default): `alone` (one task at a time,
//! with stages), `local`, `memory`, `http`, `fanout`, `transports` (HTTP,
//! WebSocket and gRPC side by side, 64 clients with a connection each,
//! each task first as one `run_task`, then as `submit_task` + `wait`;
//! `transports:http`, `transports:websocket`, `transports:grpc` for one);
//! for profiling one.

use coderclaw::tasks::http_server::{ServerConfig, serve};
use coderclaw::tasks::{CoderClawRuntime, HttpTransport, LocalTransport, RunUpdate, Transport};
use coderclaw_core::task::{TaskStatus, TaskSubmitRequest};
use futures_util::StreamExt;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::span;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

// As the `coderclaw` binary: the figures are the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Wall time of every span closed while `on`, by span name.
#[derive(Default)]
struct StageTimes {
    on: AtomicBool,
    samples: Mutex<HashMap<&'static str, Vec<Duration>>>,
}

struct Opened(Instant);

struct StageLayer(Arc<StageTimes>);

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for StageLayer {
    fn on_new_span(&self, _: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        if self.0.on.load(Ordering::Relaxed)
            && let Some(span) = ctx.span(id)
        {
            span.extensions_mut().insert(Opened(Instant::now()));
        }
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(opened) = span.extensions().get::<Opened>().map(|o| o.0) else { return };
        let mut samples = self.0.samples.lock().unwrap();
        samples.entry(span.name()).or_default().push(opened.elapsed());
    }
}

/// The stages of one task, in order, as (span name, what it is).
const STAGES: &[(&str, &str)] = &[
    ("authenticate", "authenticate (token → subject)"),
    ("persist", "persist + ack (tasks.db commit)"),
    ("plan.session", "plan: session check"),
    ("skill.read", "plan: load (row + package file; cache miss)"),
    ("skill.verify", "plan: verify (digest + signature; cache miss)"),
    ("plan.load", "plan: load + verify (cached: generation + stat)"),
    ("plan.decide", "plan: decide (audited)"),
    ("load", "plan: compiled skill (memory cache)"),
    ("instantiate", "instantiate"),
    ("call", "run (guest call)"),
    ("outcome.audit", "outcome audited"),
    ("tasks.commit", "tasks.db batch commit (each)"),
    ("audit.append", "audit append, blocking, durable (each)"),
    ("audit.commit", "audit batch commit (each)"),
];

/// Resident memory of this process, from /proc (KiB).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or("VmRSS: 0 kB");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// `n` tasks, each submitted and awaited; at most `clients` at once (the
/// HTTP bench: 64 keep-alive clients), or all at once with `None`.
async fn end_to_end<T: Transport + 'static>(
    rt: Arc<CoderClawRuntime<T>>,
    n: usize,
    clients: Option<usize>,
    label: &str,
) {
    let start = Instant::now();
    let mut handles = Vec::new();
    let clients = Arc::new(tokio::sync::Semaphore::new(clients.unwrap_or(tokio::sync::Semaphore::MAX_PERMITS)));
    for i in 0..n {
        let (rt, clients) = (rt.clone(), clients.clone());
        handles.push(tokio::spawn(async move {
            let _client = clients.acquire_owned().await.unwrap();
            let t0 = Instant::now();
            let t = rt.submit_task(TaskSubmitRequest::skill("team/echo", json!(i))).await.unwrap();
            let ack = t0.elapsed();
            let done = rt.wait(&t.id, |_| {}).await.unwrap();
            assert_eq!(done.status, TaskStatus::Completed, "{:?}", done.error);
            ack
        }));
    }
    let mut acks = Vec::new();
    for h in handles {
        acks.push(h.await.unwrap());
    }
    let elapsed = start.elapsed();
    println!(
        "{label}: {n} tasks submit→COMPLETED in {:.2}s = {:.0} tasks/s",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
    coderclaw_e2e::print_latency(&format!("{label}: submit acknowledged"), acks);
}

/// `clients` clients, each with its own connection (made by `connect`),
/// each submitting its next task once its last one is COMPLETED, `n` tasks
/// in all: tasks/s, and the p50/p99 of the acknowledgement and of submit →
/// COMPLETED. With `run_task`, each task is one `run_task` (one call over
/// gRPC), otherwise `submit_task` then `wait` (three calls everywhere).
async fn clients_each_connected(
    connect: impl Fn() -> Arc<dyn Transport>,
    clients: usize,
    n: usize,
    run_task: bool,
    label: &str,
) {
    let start = Instant::now();
    let mut handles = Vec::new();
    for c in 0..clients {
        let rt = CoderClawRuntime::new(connect());
        let share = n / clients + usize::from(c < n % clients);
        handles.push(tokio::spawn(async move {
            let mut acks = Vec::with_capacity(share);
            let mut totals = Vec::with_capacity(share);
            for i in 0..share {
                let t0 = Instant::now();
                let req = TaskSubmitRequest::skill("team/echo", json!(i));
                let done = if run_task {
                    let mut updates = rt.run_task(req);
                    let mut done = None;
                    while let Some(u) = updates.next().await {
                        match u.unwrap() {
                            RunUpdate::Accepted(_) => acks.push(t0.elapsed()),
                            RunUpdate::Finished(t) => done = Some(t),
                            RunUpdate::Event(_) => {}
                        }
                    }
                    done.unwrap()
                } else {
                    let t = rt.submit_task(req).await.unwrap();
                    acks.push(t0.elapsed());
                    rt.wait(&t.id, |_| {}).await.unwrap()
                };
                assert_eq!(done.status, TaskStatus::Completed, "{:?}", done.error);
                totals.push(t0.elapsed());
            }
            (acks, totals)
        }));
    }
    let (mut acks, mut totals) = (Vec::new(), Vec::new());
    for h in handles {
        let (a, t) = h.await.unwrap();
        acks.extend(a);
        totals.extend(t);
    }
    let elapsed = start.elapsed();
    println!(
        "{label}: {n} tasks by {clients} clients in {:.2}s = {:.0} tasks/s",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
    coderclaw_e2e::print_latency(&format!("{label}: submit acknowledged"), acks);
    coderclaw_e2e::print_latency(&format!("{label}: submit→COMPLETED"), totals);
}

/// One task at a time, `n` times: submit → COMPLETED latency, and the
/// median of each stage.
async fn one_at_a_time<T: Transport + 'static>(rt: &CoderClawRuntime<T>, n: usize, times: &StageTimes, label: &str) {
    times.samples.lock().unwrap().clear();
    times.on.store(true, Ordering::Relaxed);
    let mut total = Vec::new();
    for i in 0..n {
        let t0 = Instant::now();
        let t = rt.submit_task(TaskSubmitRequest::skill("team/echo", json!(i))).await.unwrap();
        let done = rt.wait(&t.id, |_| {}).await.unwrap();
        assert_eq!(done.status, TaskStatus::Completed, "{:?}", done.error);
        total.push(t0.elapsed());
    }
    times.on.store(false, Ordering::Relaxed);
    coderclaw_e2e::print_latency(&format!("{label}: one task alone, submit→COMPLETED"), total);
    print_stages(times, n);
}

/// The median and p99 of each stage recorded since the samples were
/// cleared, and how often it ran per task.
fn print_stages(times: &StageTimes, n: usize) {
    let mut samples = std::mem::take(&mut *times.samples.lock().unwrap());
    for (name, what) in STAGES {
        if let Some(mut v) = samples.remove(name) {
            v.sort();
            let p99 = v[(v.len() * 99 / 100).min(v.len() - 1)];
            println!(
                "    {what:<46} median {:>9.1?}  p99 {:>9.1?}  ({:.2} per task)",
                v[v.len() / 2],
                p99,
                v.len() as f64 / n as f64
            );
        }
    }
}

fn main() {
    let n: usize = std::env::args().filter_map(|a| a.parse().ok()).next().unwrap_or(2000);
    let picked: Vec<String> =
        std::env::args().skip(1).filter(|a| !a.starts_with('-') && a.parse::<usize>().is_err()).collect();
    let run = |phase: &str| picked.is_empty() || picked.iter().any(|p| p == phase);
    let times = Arc::new(StageTimes::default());
    // Only the stages' spans: enabling every span (h2's and hyper's trace
    // spans included) would time the transports' instrumentation, which
    // the `coderclaw` binary (at `warn`) never turns on.
    let stages = tracing_subscriber::filter::filter_fn(|m| m.is_span() && STAGES.iter().any(|(n, _)| *n == m.name()));
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(StageLayer(times.clone()).with_filter(stages)),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let service = coderclaw_e2e::echo_service(dir.path());
        // Warm the compiled-code cache.
        let local = Arc::new(CoderClawRuntime::new(LocalTransport::new(service.clone(), None)));
        end_to_end(local.clone(), 50, None, "warm-up").await;
        if run("alone") {
            one_at_a_time(&local, 300, &times, "local").await;
        }
        if run("local") {
            end_to_end(local.clone(), n, None, "local transport, all submitted at once").await;
            // Acknowledgement latency at full load: as many clients as keep
            // the engine saturated, each submitting its next task once its
            // last one is done (all at once measures the burst's queue).
            times.samples.lock().unwrap().clear();
            times.on.store(true, Ordering::Relaxed);
            end_to_end(local.clone(), n, Some(64), "local transport, 64 clients").await;
            times.on.store(false, Ordering::Relaxed);
            println!("  stages at full load:");
            print_stages(&times, n);
        }
        if run("memory") {
            let rss_before = rss_kib();
            let memory_rounds = 5;
            for _ in 0..memory_rounds {
                end_to_end(local.clone(), n, None, "local transport (memory round)").await;
            }
            println!(
                "memory: resident {} KiB before, {} KiB after {} more tasks",
                rss_before,
                rss_kib(),
                n * memory_rounds
            );
        }
        if run("transports") {
            transports(n, None).await;
        }
        for only in ["HTTP + SSE", "WebSocket", "gRPC"] {
            let phase = format!("transports:{}", only.split(' ').next().unwrap().to_lowercase());
            if picked.contains(&phase) {
                transports(n, Some(only)).await;
            }
        }
        if !(run("alone") || run("http") || run("fanout")) {
            return;
        }

        let dir = tempfile::tempdir().unwrap();
        let service = coderclaw_e2e::echo_service(dir.path());
        let server =
            serve(service.clone(), ServerConfig { listen: "127.0.0.1:0".parse().unwrap(), ..Default::default() })
                .await
                .unwrap();
        let token = coderclaw_e2e::developer_token(&service);
        let http = Arc::new(CoderClawRuntime::new(HttpTransport::new(&server.url(), Some(token)).unwrap()));
        end_to_end(http.clone(), 50, Some(64), "warm-up").await;
        if run("alone") {
            one_at_a_time(&http, 300, &times, "HTTP").await;
        }
        if run("http") {
            end_to_end(http.clone(), n, Some(64), "HTTP transport (loopback, 64 clients)").await;
        }
        if !run("fanout") {
            return;
        }

        // SSE fan-out: 900 subscribers of one task (under the server's
        // default cap of 1024 connections, with the clients' pool open).
        let subscribers = 900;
        let mut req = TaskSubmitRequest::skill("team/echo", json!("fan-out"));
        req.paused = true;
        let task = http.submit_task(req).await.unwrap();
        let mut streams = Vec::new();
        for _ in 0..subscribers {
            streams.push(http.stream_task_updates(&task.id).await.unwrap());
        }
        let start = Instant::now();
        service.dangerous_engine().resume(&task.id).unwrap();
        let mut done = Vec::new();
        for mut s in streams {
            done.push(tokio::spawn(async move {
                let mut count = 0;
                while let Some(e) = s.next().await {
                    e.unwrap();
                    count += 1;
                }
                count
            }));
        }
        let mut events = 0;
        for d in done {
            events += d.await.unwrap();
        }
        println!(
            "SSE fan-out: {subscribers} subscribers received {events} events, all streams ended {:.1} ms after resume",
            start.elapsed().as_secs_f64() * 1e3
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    });
}

/// HTTP, WebSocket and gRPC against one server process each, 64 clients
/// with a connection of their own (as 64 CI jobs would be), in turn.
async fn transports(n: usize, only: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let service = coderclaw_e2e::echo_service(dir.path());
    let server = serve(service.clone(), ServerConfig { listen: "127.0.0.1:0".parse().unwrap(), ..Default::default() })
        .await
        .unwrap();
    let grpc_config =
        coderclaw::tasks::grpc::server::GrpcConfig { listen: "127.0.0.1:0".parse().unwrap(), ..Default::default() };
    let grpc = coderclaw::tasks::grpc::server::serve(service.clone(), grpc_config).await.unwrap();
    let token = coderclaw_e2e::developer_token(&service);
    let mut kinds = vec![
        ("HTTP + SSE", server.url()),
        ("WebSocket", server.url().replace("http://", "ws://")),
        ("gRPC", format!("grpc://{}", grpc.addr)),
    ];
    kinds.retain(|(label, _)| only.is_none_or(|o| o == *label));
    let connect = |url: &str| {
        let (url, token) = (url.to_owned(), token.clone());
        move || coderclaw::tasks::connect(&url, Some(token.clone()), None).unwrap()
    };
    for (label, url) in &kinds {
        clients_each_connected(connect(url), 64, 256, true, &format!("{label} warm-up")).await;
    }
    for (label, url) in &kinds {
        clients_each_connected(connect(url), 64, n, true, &format!("{label} run_task (64 clients)")).await;
    }
    for (label, url) in &kinds {
        clients_each_connected(connect(url), 64, n, false, &format!("{label} submit + wait (64 clients)")).await;
    }
}
