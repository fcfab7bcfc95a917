//! The distributed-cluster mode: 1, 2 and 3 nodes (engines with an HTTP
//! server each, in this process, sharing one state directory) on a real
//! PostgreSQL with `synchronous_commit = on`; the signed `echo` skill.
//! Prints throughput and acknowledgement latency per node count, the
//! latency of a cancel sent to another node than the task's, and how long
//! the cluster takes to reclaim a dead node's tasks.
//!
//! cargo bench -p coderclaw-e2e --bench cluster [-- N] [PHASE ...]
//!
//! PHASE: `throughput` (1, 2 and 3 nodes, N tasks each, 64 clients
//! spread over the nodes), `cancel`, `reclaim` (all by default).

use coderclaw::LocalRuntime;
use coderclaw::home::Home;
use coderclaw::tasks::http_server::{ServerConfig, serve};
use coderclaw::tasks::{CoderClawRuntime, EngineConfig, HttpTransport, LocalTransport, TaskService};
use coderclaw_core::task::{TaskStatus, TaskSubmitRequest};
use coderclaw_e2e::postgres::Postgres;
use futures_util::StreamExt;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The lease the nodes run with.
const LEASE: Duration = Duration::from_secs(2);

/// A state directory with `team/echo` and `team/asker` installed.
fn home(dir: &std::path::Path) -> Arc<Home> {
    use coderclaw_core::keys::SecretKey;
    use coderclaw_core::manifest::Manifest;
    use coderclaw_core::package::Package;
    let key = SecretKey::from_seed(*b"coderclaw test key: team--------");
    let home = Arc::new(Home::open(dir).unwrap());
    home.trust_add("team", &key.public()).unwrap();
    for (id, guest) in [("team/echo", "echo"), ("team/asker", "asker")] {
        let text = format!("id = \"{id}\"\nversion = \"1.0.0\"\nkind = \"skill\"\ndescription = \"b\"\n");
        let manifest = Manifest::from_toml(&text, guest).unwrap();
        let component = std::fs::read(coderclaw_e2e::guest(guest)).unwrap();
        home.dangerous_install_ungated(&Package::sign(&manifest, component, &key, 1).to_bytes()).unwrap();
    }
    home
}

/// Node `name` of the cluster at `url`.
fn node(home: &Arc<Home>, url: &str, name: &str, run_queue: bool) -> Arc<TaskService> {
    let host = coderclaw::Host::builder().compiled_cache(home.compiled_cache_dir()).max_instances(256).build().unwrap();
    let config = EngineConfig {
        run_queue,
        max_concurrent_tasks: 64,
        max_unfinished_per_session: 1_000_000,
        ..Default::default()
    };
    let runtime = LocalRuntime::builder(home.clone()).config(config).host(host).cluster(url, name, LEASE);
    runtime.open().unwrap().service().clone()
}

/// `n` tasks from 64 clients, client i talking to node i mod k, each
/// submitting its next task once its last one completed.
async fn throughput(nodes: usize, n: usize) {
    let pg = Postgres::start().expect("the benchmark needs PostgreSQL");
    let dir = tempfile::tempdir().unwrap();
    let home = home(dir.path());
    let mut servers = Vec::new();
    let mut services = Vec::new();
    for i in 0..nodes {
        let service = node(&home, &pg.url(), &format!("n{i}"), true);
        let config = ServerConfig { listen: "127.0.0.1:0".parse().unwrap(), ..Default::default() };
        servers.push(serve(service.clone(), config).await.unwrap());
        services.push(service);
    }
    let token = coderclaw_e2e::developer_token(&services[0]);
    let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let sync: String = client.query_one("SHOW synchronous_commit", &[]).await.unwrap().get(0);
    let fsync: String = client.query_one("SHOW fsync", &[]).await.unwrap().get(0);
    let clients: Vec<Arc<CoderClawRuntime<HttpTransport>>> = (0..64)
        .map(|i| {
            let url = servers[i % nodes].url();
            Arc::new(CoderClawRuntime::new(HttpTransport::new(&url, Some(token.clone())).unwrap()))
        })
        .collect();
    let run = |n: usize| {
        let clients = clients.clone();
        async move {
            let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let start = Instant::now();
            let mut lanes = tokio::task::JoinSet::new();
            for rt in clients {
                let next = next.clone();
                lanes.spawn(async move {
                    let mut acks = Vec::new();
                    while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                        let t0 = Instant::now();
                        let t = rt.submit_task(TaskSubmitRequest::skill("team/echo", json!({}))).await.unwrap();
                        acks.push(t0.elapsed());
                        let done = rt.wait(&t.id, |_| {}).await.unwrap();
                        assert_eq!(done.status, TaskStatus::Completed, "{:?}", done.error);
                    }
                    acks
                });
            }
            let acks: Vec<Duration> = lanes.join_all().await.into_iter().flatten().collect();
            (start.elapsed(), acks)
        }
    };
    run(200).await;
    let (took, acks) = run(n).await;
    println!(
        "{nodes} node(s): {n} tasks submit→COMPLETED in {:.2}s = {:.0} tasks/s (64 HTTP clients; PostgreSQL \
         synchronous_commit={sync}, fsync={fsync})",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    coderclaw_e2e::print_latency(&format!("{nodes} node(s): submit acknowledged"), acks);
}

/// `n` asker tasks submitted through `rt`, once all are WAITING.
async fn askers_waiting(rt: &CoderClawRuntime<LocalTransport>, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(rt.submit_task(TaskSubmitRequest::skill("team/asker", json!({ "ask": "?" }))).await.unwrap().id);
    }
    for id in &ids {
        while rt.get_task_state(id).await.unwrap().unwrap().status != TaskStatus::Waiting {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    ids
}

/// Tasks WAITING on node a, cancelled through node b: from the cancel
/// call to the end of b's stream of the task (its CANCELLED event).
async fn cross_node_cancel(n: usize) {
    let pg = Postgres::start().expect("the benchmark needs PostgreSQL");
    let dir = tempfile::tempdir().unwrap();
    let home = home(dir.path());
    let a = node(&home, &pg.url(), "a", true);
    let b = node(&home, &pg.url(), "b", false);
    let on_a = CoderClawRuntime::new(LocalTransport::new(a.clone(), None));
    let on_b = CoderClawRuntime::new(LocalTransport::new(b.clone(), None));
    let ids = askers_waiting(&on_a, n).await;
    let mut took = Vec::new();
    for id in &ids {
        let mut stream = on_b.stream_task_updates(id).await.unwrap();
        let t0 = Instant::now();
        assert!(on_b.cancel_task(id).await.unwrap());
        let mut last = None;
        while let Some(e) = stream.next().await {
            last = Some(e.unwrap().status);
        }
        took.push(t0.elapsed());
        assert_eq!(last, Some(TaskStatus::Cancelled));
    }
    coderclaw_e2e::print_latency("cross-node cancel (sent to b, task on a, until b streams CANCELLED)", took);
}

/// Forwards TCP connections to `upstream` until cut: a node behind it
/// loses its database as a dead or partitioned node would.
struct Relay {
    addr: std::net::SocketAddr,
    /// Its tasks; None once cut.
    tasks: Arc<std::sync::Mutex<Option<Vec<tokio::task::AbortHandle>>>>,
}

impl Relay {
    async fn start(upstream: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tasks = Arc::new(std::sync::Mutex::new(Some(Vec::new())));
        let held = tasks.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else { continue };
                // Under the lock `cut` takes: none slips past it.
                let mut held = held.lock().unwrap();
                let Some(held) = held.as_mut() else { return };
                let copy = tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                held.push(copy.abort_handle());
            }
        });
        tasks.lock().unwrap().as_mut().unwrap().push(accepting.abort_handle());
        Relay { addr, tasks }
    }

    fn cut(&self) {
        for t in self.tasks.lock().unwrap().take().unwrap_or_default() {
            t.abort();
        }
    }
}

/// Node a (behind a relay) holds `n` WAITING tasks and dies (the relay is
/// cut); node b reclaims them: the time from the death to the last one
/// FAILED `node-lost`, against the lease.
async fn reclaim(n: usize) {
    let pg = Postgres::start().expect("the benchmark needs PostgreSQL");
    let relay = Relay::start(pg.port).await;
    let dir = tempfile::tempdir().unwrap();
    let home = home(dir.path());
    let a_url = format!("postgres://postgres@{}/postgres", relay.addr);
    let a = node(&home, &a_url, "a", true);
    let b = node(&home, &pg.url(), "b", false);
    let on_a = CoderClawRuntime::new(LocalTransport::new(a.clone(), None));
    let on_b = CoderClawRuntime::new(LocalTransport::new(b.clone(), None));
    let ids = askers_waiting(&on_a, n).await;
    let died = Instant::now();
    relay.cut();
    for id in &ids {
        loop {
            let t = on_b.get_task_state(id).await.unwrap().unwrap();
            if t.status == TaskStatus::Failed {
                break;
            }
            assert!(died.elapsed() < LEASE * 10, "never reclaimed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let took = died.elapsed();
    println!(
        "reclaim: {n} tasks of a dead node FAILED node-lost {:.2}s after it died (lease {:.0}s: {:.2} × lease; \
         target ≤ 2 × lease)",
        took.as_secs_f64(),
        LEASE.as_secs_f64(),
        took.as_secs_f64() / LEASE.as_secs_f64()
    );
    drop((a, on_a));
}

fn main() {
    // CODERCLAW_LOG=coderclaw_tasks=info shows the nodes' view.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("CODERCLAW_LOG") {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    let n: usize = std::env::args().filter_map(|a| a.parse().ok()).next().unwrap_or(4000);
    let picked: Vec<String> =
        std::env::args().skip(1).filter(|a| !a.starts_with('-') && a.parse::<usize>().is_err()).collect();
    let run = |phase: &str| picked.is_empty() || picked.iter().any(|p| p == phase);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        if run("throughput") {
            for nodes in 1..=3 {
                throughput(nodes, n).await;
            }
        }
        if run("cancel") {
            cross_node_cancel(200).await;
        }
        if run("reclaim") {
            reclaim(50).await;
        }
    });
}
