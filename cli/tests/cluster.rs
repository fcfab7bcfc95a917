//! The distributed-cluster mode as real `coderclaw serve` processes on a
//! real PostgreSQL: three nodes sharing 2,000 tasks, a node killed with
//! SIGKILL, a node frozen with SIGSTOP past its lease, cancel and answers
//! through other nodes, an SSE stream resumed on another node with
//! `Last-Event-ID`.
//!
//! The nodes share one state directory (installed skills, keys), as nodes
//! on one machine may; their tasks, users and sessions, trust and audit log
//! are in the database.

mod common;

use coderclaw::tasks::{CoderClawRuntime, HttpTransport, Transport};
use coderclaw_core::task::{TaskStatus, TaskSubmitRequest};
use coderclaw_e2e::postgres::Postgres;
use common::{Cli, free_port, login, p, sign_with, text, trusted_key};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The lease the nodes run with (cluster.lease in runtime.yaml).
const LEASE: Duration = Duration::from_secs(2);

/// A node: its process, name, base URL and log file.
struct Node {
    child: Child,
    name: String,
    url: String,
    log: PathBuf,
}

impl Node {
    fn said(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill {signal} {}", self.name);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test's cluster: PostgreSQL, the shared state directory, skills.
struct Cluster {
    pg: Postgres,
    cli: Cli,
    ws: tempfile::TempDir,
    token: String,
}

impl Cluster {
    /// With the short [`LEASE`], for the tests that lose nodes.
    fn start() -> Option<Cluster> {
        Self::start_with_lease(LEASE)
    }

    /// Nodes holding their tasks for `lease`.
    fn start_with_lease(lease: Duration) -> Option<Cluster> {
        let pg = Postgres::start()?;
        let (cli, ws) = (Cli::new(), tempfile::tempdir().unwrap());
        // This machine is a node: its users, sessions, trust and audit log
        // are the cluster's from the first command on.
        let config = format!(
            "mode: distributed-cluster\ncluster:\n  lease: {}ms\n  database: {}\n",
            lease.as_millis(),
            pg.url()
        );
        std::fs::write(cli.home.path().join("runtime.yaml"), config).unwrap();
        trusted_key(&cli, "team-key", "team");
        let packages = [
            ("team/echo", "echo", "description = \"echo\"\n[input-schema]\ndescription = \"any\"\n"),
            ("team/asker", "asker", "description = \"asks\"\n[limits]\ntimeout = \"600s\"\n"),
            (
                "team/resumable-asker",
                "asker",
                "description = \"asks\"\nresumable = true\n[limits]\ntimeout = \"600s\"\n",
            ),
            ("team/spin", "infinite-loop", "description = \"spins\"\n[limits]\ntimeout = \"6s\"\n"),
        ];
        for (id, component, rest) in packages {
            let dir = ws.path().join(id.replace('/', "-"));
            std::fs::create_dir_all(&dir).unwrap();
            let manifest = dir.join("skill.toml");
            std::fs::write(&manifest, format!("id = \"{id}\"\nversion = \"1.0.0\"\nkind = \"skill\"\n{rest}")).unwrap();
            let pkg = sign_with(&cli, component, "team-key", &manifest, &dir);
            let out = cli.run(&["skill", "install", p(&pkg)]);
            assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        }
        let token = login(&cli);
        Some(Cluster { pg, cli, ws, token })
    }

    /// Starts node `name`, once it serves.
    fn node(&self, name: &str) -> Node {
        let port = free_port();
        let log = self.ws.path().join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_coderclaw"))
            .args(["serve", "--mode", "distributed-cluster", "--node", name, "--workspace", p(self.ws.path())])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("CODERCLAW_HOME", self.cli.home.path())
            .env("CODERCLAW_CLUSTER_DATABASE", self.pg.url())
            .env("CODERCLAW_LOG", "coderclaw_tasks=info")
            .stderr(std::fs::File::create(&log).unwrap())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let node = Node { child, name: name.to_owned(), url: format!("http://127.0.0.1:{port}"), log };
        let start = Instant::now();
        while !node.said().contains("serving http://") {
            assert!(start.elapsed() < Duration::from_secs(30), "{name} never served: {}", node.said());
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(node.said().contains(&format!("distributed-cluster node {name} of postgres://")), "{}", node.said());
        node
    }

    fn client(&self, node: &Node) -> CoderClawRuntime<Arc<dyn Transport>> {
        self.client_as(node, &self.token)
    }

    fn client_as(&self, node: &Node, token: &str) -> CoderClawRuntime<Arc<dyn Transport>> {
        let transport: Arc<dyn Transport> = Arc::new(HttpTransport::new(&node.url, Some(token.to_owned())).unwrap());
        CoderClawRuntime::new(transport)
    }

    /// Another session of the test's user.
    fn session(&self) -> String {
        let out = self.cli.run_stdin(&["login", "--user", "dev", "--password-stdin", "--json"], "dev password");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let session: Value = serde_json::from_slice(&out.stdout).unwrap();
        session["token"].as_str().unwrap().to_owned()
    }

    fn status(&self) -> Value {
        let out = self.cli.run(&["cluster", "status", "--json", "--database", &self.pg.url()]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    async fn sql(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.pg.url(), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
}

/// Polls `f` until it is true (at most `within`), or fails with `what`.
async fn eventually(within: Duration, what: &str, mut f: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < within, "{what} (after {within:?})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

async fn status_of(rt: &CoderClawRuntime<Arc<dyn Transport>>, id: &str) -> TaskStatus {
    rt.get_task_state(id).await.unwrap().unwrap().status
}

/// Tasks with other than exactly one final status event.
async fn not_ended_once(db: &tokio_postgres::Client) -> Vec<String> {
    db.query(
        "SELECT t.id FROM tasks t WHERE (SELECT COUNT(*) FROM task_events e WHERE e.task_id = t.id
             AND e.event = 'status' AND e.status IN ('COMPLETED', 'FAILED', 'CANCELLED')) <> 1",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Three nodes; 2,000 tasks submitted round-robin through them: every one
/// COMPLETED, exactly once, and every node ran some. `cluster status`
/// shows the nodes alive, then gone (`left`) after SIGTERM.
#[test]
fn three_nodes_share_two_thousand_tasks_and_each_completes_once() {
    // The default lease: with 2 s, a node starved of CPU (three nodes,
    // PostgreSQL and the other tests on two cores) can miss a heartbeat and
    // be declared lost, its tasks failed `node-lost` (as designed, tested
    // below), which is not what this test is about.
    let Some(c) = Cluster::start_with_lease(Duration::from_secs(10)) else { return };
    // The CLI commands above made the cluster's schema; a database no node
    // or command has used yet:
    runtime().block_on(async { c.sql().await.batch_execute("CREATE DATABASE unused").await.unwrap() });
    let unused = format!("{}/unused", c.pg.url().rsplit_once('/').unwrap().0);
    let out = c.cli.run(&["cluster", "status", "--database", &unused]);
    let said = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("no node has used this database yet"), "{said}");
    assert!(said.contains("hint: start a node on it: `coderclaw serve --mode distributed-cluster"), "{said}");
    let nodes = [c.node("n1"), c.node("n2"), c.node("n3")];
    // A name is one running node's.
    let twin = Command::new(env!("CARGO_BIN_EXE_coderclaw"))
        .args(["serve", "--mode", "distributed-cluster", "--node", "n2", "--listen", "127.0.0.1:0"])
        .args(["--workspace", p(c.ws.path())])
        .env("CODERCLAW_HOME", c.cli.home.path())
        .env("CODERCLAW_CLUSTER_DATABASE", c.pg.url())
        .output()
        .unwrap();
    let said = text(&twin.stderr);
    assert_eq!(twin.status.code(), Some(1), "{said}");
    assert!(said.contains("node name `n2` is in use by another running node"), "{said}");
    assert!(said.contains("hint: pass --node NAME"), "{said}");
    let status = c.status();
    let alive: Vec<&str> = status["nodes"].as_array().unwrap().iter().map(|n| n["state"].as_str().unwrap()).collect();
    assert_eq!(alive, ["alive"; 3], "{status}");
    let rt = runtime();
    // Four sessions (one session may hold at most 1,000 unfinished tasks,
    // cluster-wide), each talking to every node.
    let tokens: Vec<String> = (0..4).map(|_| c.session()).collect();
    rt.block_on(async {
        let clients: Vec<_> = tokens.iter().flat_map(|t| nodes.iter().map(|n| Arc::new(c.client_as(n, t)))).collect();
        let started = Instant::now();
        let mut submitting = tokio::task::JoinSet::new();
        for lane in 0..32 {
            let clients = clients.clone();
            submitting.spawn(async move {
                let mut ids = Vec::new();
                for i in (lane..2000).step_by(32) {
                    let req = TaskSubmitRequest::skill("team/echo", json!({ "i": i }));
                    // Round-robin over the nodes, each lane one session.
                    ids.push(clients[(lane % 4) * 3 + i % 3].submit_task(req).await.unwrap().id);
                }
                ids
            });
        }
        let ids: Vec<String> = submitting.join_all().await.into_iter().flatten().collect();
        assert_eq!(ids.len(), 2000);
        let db = c.sql().await;
        let waiting = Instant::now();
        loop {
            let done: i64 =
                db.query_one("SELECT COUNT(*) FROM tasks WHERE status = 'COMPLETED'", &[]).await.unwrap().get(0);
            if done == 2000 {
                break;
            }
            if waiting.elapsed() > Duration::from_secs(120) {
                let by_status: Vec<(String, i64, Option<String>)> = db
                    .query("SELECT status, COUNT(*), MIN(error) FROM tasks GROUP BY status", &[])
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2)))
                    .collect();
                let logs: Vec<String> = nodes.iter().map(|n| n.said()).collect();
                panic!(
                    "2,000 tasks never all completed: {by_status:?}
{}",
                    logs.join(
                        "
---
"
                    )
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!("2,000 tasks on 3 nodes in {:?}", started.elapsed());
        assert_eq!(not_ended_once(&db).await, Vec::<String>::new());
        let per_node: Vec<i64> = db
            .query("SELECT COUNT(*) FROM tasks GROUP BY node ORDER BY node", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(per_node.len(), 3, "every node ran some: {per_node:?}");
        // Any node answers and streams any task: submitted to n1, followed on n3.
        let one = clients[0].submit_task(TaskSubmitRequest::skill("team/echo", json!({}))).await.unwrap();
        let done = clients[2].wait(&one.id, |_| {}).await.unwrap();
        assert_eq!(done.status, TaskStatus::Completed);
    });
    for n in &nodes {
        n.signal("-TERM");
    }
    for mut n in nodes {
        let exit = n.child.wait().unwrap();
        assert_eq!(exit.code(), Some(0), "{}", n.said());
        assert!(n.said().contains("left the cluster"), "{}", n.said());
    }
    let status = c.status();
    let states: Vec<&str> = status["nodes"].as_array().unwrap().iter().map(|n| n["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["left"; 3], "{status}");
    let human = c.cli.run(&["cluster", "status", "--database", &c.pg.url()]);
    let said = text(&human.stdout);
    assert!(said.contains("0 of 3 nodes alive; 0 tasks queued") && said.contains("n2"), "{said}");

    // One audit chain for the cluster: every outcome in it, verified whole.
    let out = c.cli.run(&["audit", "verify", "--database", &c.pg.url(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["records"].as_u64().unwrap() > 2001, "{report}");
    assert!(report["report"]["checkpoints"].as_u64().unwrap() > 20, "{report}");
    assert!(report["log"].as_str().unwrap().starts_with("postgres://"), "{report}");
    let out = c.cli.run(&["audit", "query", "--database", &c.pg.url(), "--action", "task.completed", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let completed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(completed.len(), 2001, "one record per completed task");
    runtime().block_on(async {
        let db = c.sql().await;
        db.execute("UPDATE audit SET result = 'denied' WHERE seq = 42", &[]).await.unwrap();
    });
    let out = c.cli.run(&["audit", "verify", "--database", &c.pg.url()]);
    let said = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("audit record 42 has been tampered with"), "{said}");
}

/// Reads a task's SSE stream from `url` on a thread: each event's (seq,
/// kind) on the channel, which closes when the stream ends or breaks.
fn sse(url: &str, token: &str, id: &str, last_event_id: Option<u64>) -> mpsc::Receiver<(u64, String)> {
    let addr = url.trim_start_matches("http://").to_owned();
    let mut request = format!(
        "GET /v1/tasks/{id}/stream HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n"
    );
    if let Some(last) = last_event_id {
        request.push_str(&format!("Last-Event-ID: {last}\r\n"));
    }
    request.push_str("\r\n");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut seq = None;
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            if let Some(s) = line.strip_prefix("id: ") {
                seq = s.trim().parse::<u64>().ok();
            } else if let (Some(kind), Some(s)) = (line.strip_prefix("event: "), seq.take())
                && tx.send((s, kind.trim().to_owned())).is_err()
            {
                return;
            }
        }
    });
    rx
}

/// Every event left on `rx` until the stream ends.
fn to_the_end(rx: &mpsc::Receiver<(u64, String)>) -> Vec<(u64, String)> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Ok(e) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        seen.push(e);
    }
    seen
}

/// Waits for an event of `kind` on `rx`; every (seq, kind) seen up to it.
fn until(rx: &mpsc::Receiver<(u64, String)>, kind: &str) -> Vec<(u64, String)> {
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(e) => {
                let found = e.1 == kind;
                seen.push(e);
                if found {
                    return seen;
                }
            }
            Err(e) => panic!("no `{kind}` event ({e}); saw {seen:?}"),
        }
    }
}

/// Node A runs three WAITING tasks; B and C join. A cancel sent to B stops
/// A's task; A is killed with SIGKILL: within two leases its resumable
/// task runs again elsewhere (an SSE stream on C, opened before, sees it
/// ask again) and the other FAILED `node-lost`. C is killed too; the
/// stream resumes on B with `Last-Event-ID`, without repeats, and the
/// answer sent through B completes the task wherever it runs.
#[test]
fn a_killed_nodes_tasks_are_reclaimed_and_streams_resume_on_another_node() {
    let Some(c) = Cluster::start() else { return };
    let a = c.node("a");
    let rt = runtime();
    let on_a = c.client(&a);
    let (plain, resumable, doomed) = rt.block_on(async {
        let mut ids = Vec::new();
        for skill in ["team/asker", "team/resumable-asker", "team/asker"] {
            let req = TaskSubmitRequest::skill(skill, json!({ "ask": "go on?" }));
            ids.push(on_a.submit_task(req).await.unwrap().id);
        }
        for id in &ids {
            eventually(Duration::from_secs(30), "never WAITING", async || {
                status_of(&on_a, id).await == TaskStatus::Waiting
            })
            .await;
        }
        (ids[0].clone(), ids[1].clone(), ids[2].clone())
    });
    let (b, cc) = (c.node("b"), c.node("c"));
    let (on_b, on_c) = (c.client(&b), c.client(&cc));
    let stream = sse(&cc.url, &c.token, &resumable, None);
    let before = until(&stream, "input-requested");
    rt.block_on(async {
        // Cross-node cancel: sent to b, applied by a.
        let sent = Instant::now();
        assert!(on_b.cancel_task(&doomed).await.unwrap());
        eventually(Duration::from_secs(5), "the cancel never reached node a", async || {
            status_of(&on_b, &doomed).await == TaskStatus::Cancelled
        })
        .await;
        eprintln!("cross-node cancel took {:?}", sent.elapsed());
        let cancelled = on_c.get_task_state(&doomed).await.unwrap().unwrap();
        assert!(cancelled.error.unwrap().message.contains("cancelled: by dev"));
    });

    a.signal("-KILL");
    let killed = Instant::now();
    let rerun = until(&stream, "input-requested");
    let took = killed.elapsed();
    assert!(rerun.iter().any(|(_, kind)| kind == "recovered"), "{rerun:?}");
    assert!(took <= LEASE * 2 + Duration::from_secs(1), "re-run after {took:?} (lease {LEASE:?})");
    rt.block_on(async {
        let failed = on_b.get_task_state(&plain).await.unwrap().unwrap();
        assert_eq!(failed.status, TaskStatus::Failed, "{failed:?}");
        let error = failed.error.unwrap();
        assert_eq!(error.code.as_str(), "node-lost");
        assert!(error.message.contains("node a was lost"), "{}", error.message);
    });

    // The stream's own node dies; the client resumes on b where it got to.
    let last = rerun.last().unwrap().0;
    assert!(before.iter().chain(&rerun).map(|(s, _)| s).is_sorted(), "{before:?} {rerun:?}");
    let holder: String = rt.block_on(async {
        c.sql().await.query_one("SELECT node FROM tasks WHERE id = $1", &[&resumable]).await.unwrap().get(0)
    });
    drop(cc);
    let resumed = sse(&b.url, &c.token, &resumable, Some(last));
    let mut rest = Vec::new();
    if holder == "c" {
        // It was c's too: reclaimed once more, b runs it.
        rest = until(&resumed, "input-requested");
    }
    rt.block_on(async {
        let answered = on_b.respond(&resumable, "yes").await.unwrap();
        assert_eq!(answered.status, TaskStatus::Running);
    });
    rest.extend(to_the_end(&resumed));
    assert_eq!(rest.first().map(|(s, _)| *s), Some(last + 1), "resumed right after {last}: {rest:?}");
    assert!(rest.iter().map(|(s, _)| s).is_sorted(), "{rest:?}");
    assert!(rest.iter().any(|(_, k)| k == "input-provided"), "{rest:?}");
    assert_eq!(rest.last().map(|(_, k)| k.as_str()), Some("status"), "{rest:?}");
    rt.block_on(async {
        let done = on_b.get_task_state(&resumable).await.unwrap().unwrap();
        assert_eq!(done.status, TaskStatus::Completed, "{done:?}");
        assert_eq!(not_ended_once(&c.sql().await).await, Vec::<String>::new());
    });
    let status = c.status();
    let a_state = status["nodes"].as_array().unwrap().iter().find(|n| n["name"] == "a").unwrap()["state"].clone();
    assert_eq!(a_state, "lost", "{status}");
}

/// A node frozen (SIGSTOP) past its lease while it runs a task: another
/// node reclaims the task (FAILED `node-lost`); when the frozen node
/// resumes, past the task's own time limit, its late outcome is refused
/// (fencing) and the task keeps its one final state; the node notices it
/// was lost, joins again and serves on.
#[test]
fn a_frozen_node_past_its_lease_is_fenced_when_it_wakes() {
    let Some(c) = Cluster::start() else { return };
    let a = c.node("a");
    let rt = runtime();
    let on_a = c.client(&a);
    let id = rt.block_on(async {
        let id = on_a.submit_task(TaskSubmitRequest::skill("team/spin", json!({}))).await.unwrap().id;
        eventually(Duration::from_secs(30), "never RUNNING", async || {
            status_of(&on_a, &id).await == TaskStatus::Running
        })
        .await;
        id
    });
    let started = Instant::now();
    let b = c.node("b");
    let on_b = c.client(&b);
    a.signal("-STOP");
    rt.block_on(async {
        eventually(LEASE * 3, "the frozen node's task was never reclaimed", async || {
            status_of(&on_b, &id).await == TaskStatus::Failed
        })
        .await;
    });
    // Past the task's 6 s limit: on waking, a's run times out at once.
    std::thread::sleep(Duration::from_secs(8).saturating_sub(started.elapsed()));
    a.signal("-CONT");
    rt.block_on(async {
        eventually(Duration::from_secs(15), "the woken node never noticed it was lost", async || {
            a.said().contains("declared this node lost") && a.said().matches("joined the cluster").count() >= 2
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let task = on_b.get_task_state(&id).await.unwrap().unwrap();
        assert_eq!(task.error.as_ref().map(|e| e.code.as_str()), Some("node-lost"), "{task:?}\n{}", a.said());
        assert_eq!(not_ended_once(&c.sql().await).await, Vec::<String>::new(), "{}", a.said());
        // a serves on: it takes new work.
        let again = on_a.submit_task(TaskSubmitRequest::skill("team/echo", json!({}))).await.unwrap();
        let done = on_a.wait(&again.id, |_| {}).await.unwrap();
        assert_eq!(done.status, TaskStatus::Completed);
    });
    let alive = c.status()["nodes"].as_array().unwrap().iter().filter(|n| n["state"] == "alive").count();
    assert_eq!(alive, 2);
}

/// The cluster settings are the machine's, never a repository's: a
/// cloned repository cannot point this machine's tasks at its database.
#[test]
fn a_repository_cannot_set_the_cluster_database() {
    let cli = Cli::new();
    let ws = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(ws.path().join(".coderClaw")).unwrap();
    std::fs::write(
        ws.path().join(".coderClaw/runtime.yaml"),
        "cluster:\n  database: postgres://attacker:pw@evil.example/db\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_coderclaw"))
        .args(["serve", "--mode", "distributed-cluster", "--listen", "127.0.0.1:0", "--workspace", p(ws.path())])
        .env("CODERCLAW_HOME", cli.home.path())
        .output()
        .unwrap();
    let said = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("cluster") && said.contains("a repository's runtime.yaml may not set this"), "{said}");
    assert!(!said.contains("attacker:pw"), "the password is never echoed: {said}");
    let without = Command::new(env!("CARGO_BIN_EXE_coderclaw"))
        .args(["serve", "--mode", "distributed-cluster", "--listen", "127.0.0.1:0"])
        .env("CODERCLAW_HOME", cli.home.path())
        .env_remove("CODERCLAW_CLUSTER_DATABASE")
        .current_dir(Path::new("/"))
        .output()
        .unwrap();
    let said = text(&without.stderr);
    assert_eq!(without.status.code(), Some(1), "{said}");
    assert!(said.contains("mode distributed-cluster needs the PostgreSQL database"), "{said}");
    let wrong = Command::new(env!("CARGO_BIN_EXE_coderclaw"))
        .args(["serve", "--mode", "distributed-cluster", "--listen", "127.0.0.1:0"])
        .env("CODERCLAW_HOME", cli.home.path())
        .env("CODERCLAW_CLUSTER_DATABASE", format!("postgres://app:s3cret@127.0.0.1:{}/db", free_port()))
        .current_dir(Path::new("/"))
        .output()
        .unwrap();
    let said = text(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(1), "{said}");
    assert!(said.contains("postgres://app:***@127.0.0.1") && !said.contains("s3cret"), "{said}");
}

/// On a machine configured as a cluster node, `trust add` and
/// `skill install` are the cluster's (the key published with its record
/// in the cluster's audit log), `audit` reads the cluster's log, and
/// another node's machine has the key and the skill at its next command.
#[test]
fn a_cluster_nodes_trust_skill_and_audit_commands_are_the_clusters() {
    let Some(pg) = Postgres::start() else { return };
    let node_config = format!("mode: distributed-cluster\ncluster:\n  database: {}\n", pg.url());
    let (one, two) = (Cli::new(), Cli::new());
    for cli in [&one, &two] {
        std::fs::write(cli.home.path().join("runtime.yaml"), &node_config).unwrap();
    }
    // Each machine accepts the other's changes (its device key listed).
    let device = |cli: &Cli| {
        let out = cli.run(&["device", "show", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let d: Value = serde_json::from_slice(&out.stdout).unwrap();
        d["public_key"].as_str().unwrap().to_owned()
    };
    let (one_key, two_key) = (device(&one), device(&two));
    std::fs::write(one.home.path().join("config.yaml"), format!("cluster:\n  nodeKeys: [{two_key}]\n")).unwrap();
    std::fs::write(two.home.path().join("config.yaml"), format!("cluster:\n  nodeKeys: [{one_key}]\n")).unwrap();
    let key = trusted_key(&one, "team-key", "team");
    let out = one.run(&["audit", "query", "--action", "trust.add", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let records: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["resource_id"], key.as_str());
    let out = one.run(&["audit", "verify", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["log"].as_str().unwrap().starts_with("postgres://"), "{report}");
    // A third machine that lists neither does not accept their checkpoints.
    let three = Cli::new();
    std::fs::write(three.home.path().join("runtime.yaml"), &node_config).unwrap();
    let out = three.run(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("cluster.nodeKeys"), "{}", text(&out.stderr));
    // Nor does it take their trust: the key is not trusted there.
    let trust: Value = serde_json::from_slice(&three.run(&["trust", "list", "--json"]).stdout).unwrap();
    assert!(!trust.to_string().contains(&key), "{trust}");
    let out = two.run(&["trust", "list", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let trust: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(trust.to_string().contains(&key), "the key trusted on one node's machine is not on the other's: {trust}");
    // Installed on the first machine: installed on the second, which
    // verified it against the key it got from the cluster.
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("skill.toml");
    std::fs::write(&manifest, "id = \"team/echo\"\nversion = \"1.0.0\"\nkind = \"skill\"\ndescription = \"echo\"\n[input-schema]\ndescription = \"any\"\n")
        .unwrap();
    let pkg = sign_with(&one, "echo", "team-key", &manifest, dir.path());
    let out = one.run(&["skill", "install", p(&pkg)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = two.run(&["skill", "list", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("team/echo"), "{}", text(&out.stdout));
    // Revoked on the second machine: revoked on the first.
    let out = two.run(&["trust", "revoke", &key]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let trust: Value = serde_json::from_slice(&one.run(&["trust", "list", "--json"]).stdout).unwrap();
    let entry = trust.as_array().unwrap().iter().find(|e| e["key_id"] == key.as_str()).unwrap().clone();
    assert!(!entry["revoked_at"].is_null(), "{entry}");
}
