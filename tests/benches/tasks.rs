//! Task engine throughput: submit → COMPLETED with the signed `echo` skill,
//! durable (group-committed SQLite WAL), via the in-process transport and
//! over HTTP on loopback; p50/p99 submission (acknowledgement) latency;
//! SSE fan-out to many subscribers of one task. Prints figures.
//!
//! cargo bench -p coderclaw-e2e --bench tasks [-- N]

use coderclaw::home::Home;
use coderclaw::security::LocalSecret;
use coderclaw::tasks::http_server::{ServerConfig, serve};
use coderclaw::tasks::{CoderClawRuntime, EngineConfig, HttpTransport, LocalTransport, TaskService, Transport};
use coderclaw::{Host, LocalRuntime};
use coderclaw_core::keys::SecretKey;
use coderclaw_core::manifest::Manifest;
use coderclaw_core::package::Package;
use coderclaw_core::task::{TaskStatus, TaskSubmitRequest};
use coderclaw_e2e::guest;
use futures_util::StreamExt;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn setup(dir: &std::path::Path) -> Arc<TaskService> {
    let key = SecretKey::from_seed(*b"coderclaw test key: team--------");
    let home = Arc::new(Home::open(dir).unwrap());
    home.trust_add("team", &key.public()).unwrap();
    let manifest =
        Manifest::from_toml("id = \"team/echo\"\nversion = \"1.0.0\"\nkind = \"skill\"\ndescription = \"e\"\n", "echo")
            .unwrap();
    home.dangerous_install_ungated(
        &Package::sign(&manifest, std::fs::read(guest("echo")).unwrap(), &key, 1).to_bytes(),
    )
    .unwrap();
    let host = Host::builder().compiled_cache(home.compiled_cache_dir()).max_instances(256).build().unwrap();
    // One session submits every task at once: its quota of unfinished tasks
    // (1000 by default) is raised to the whole run.
    let config = EngineConfig { max_concurrent_tasks: 64, max_unfinished_per_session: 1_000_000, ..Default::default() };
    LocalRuntime::builder(home).config(config).host(host).open().unwrap().service().clone()
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

fn main() {
    let n: usize = std::env::args().filter_map(|a| a.parse().ok()).next().unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let service = setup(dir.path());
        // Warm the compiled-code cache.
        let local = Arc::new(CoderClawRuntime::new(LocalTransport::new(service.clone(), None)));
        end_to_end(local.clone(), 50, None, "warm-up").await;
        end_to_end(local, n, None, "local transport").await;

        let dir = tempfile::tempdir().unwrap();
        let service = setup(dir.path());
        let server =
            serve(service.clone(), ServerConfig { listen: "127.0.0.1:0".parse().unwrap(), ..Default::default() })
                .await
                .unwrap();
        let security = service.security();
        security
            .dangerous_identity_store()
            .add_user("bench", &["developer".to_owned()], Some("bench password"))
            .unwrap();
        let (_, token) =
            security.login_local("bench", LocalSecret::Password("bench password"), None, None, None).unwrap();
        let http = Arc::new(CoderClawRuntime::new(HttpTransport::new(&server.url(), Some(token)).unwrap()));
        end_to_end(http.clone(), 50, Some(64), "warm-up").await;
        end_to_end(http.clone(), n, Some(64), "HTTP transport (loopback, 64 clients)").await;

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
