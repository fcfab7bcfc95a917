//! The task engine end to end: real signed packages in a real state
//! directory, the security model deciding every run, tasks persisted in
//! SQLite. The scenario bodies are written once against the `Transport`
//! trait and run over the in-process transport, HTTP + SSE and WebSocket
//! (a real hyper server on loopback) and gRPC (a real tonic server).

use coderclaw::audit::AuditFilter;
use coderclaw::home::Home;
use coderclaw::security::{LocalSecret, Security};
use coderclaw::tasks::grpc::server::GrpcConfig;
use coderclaw::tasks::http_server::{RunningServer, ServerConfig, serve};
use coderclaw::tasks::{
    CoderClawRuntime, EngineConfig, ErrorCode, GrpcTransport, HttpTransport, LocalTransport, RunUpdate, TaskEngine,
    TaskService, Transport, WsTransport,
};
use coderclaw::{Host, LocalRuntime};
use coderclaw_core::decision::{Offer, OfferedDir};
use coderclaw_core::keys::SecretKey;
use coderclaw_core::manifest::Manifest;
use coderclaw_core::package::Package;
use coderclaw_core::task::{FailureCode, TaskEventKind, TaskFailure, TaskFilter, TaskStatus, TaskSubmitRequest};
use coderclaw_core::{Access, Limits};
use coderclaw_e2e::guest;
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn team_key() -> SecretKey {
    SecretKey::from_seed(*b"coderclaw test key: team--------")
}

/// Test packages: (id, component, manifest body after the id line).
const PACKAGES: &[(&str, &str, &str)] = &[
    ("team/echo", "echo", "kind = \"skill\"\ndescription = \"echo\"\n[input-schema]\ndescription = \"any\"\n"),
    (
        "team/strict-echo",
        "echo",
        concat!(
            "kind = \"skill\"\ndescription = \"echo, of a declared shape\"\n[input-schema]\ntype = \"object\"\n",
            "additionalProperties = false\nrequired = [\"n\"]\nproperties.n = { type = \"integer\", minimum = 1 }\n"
        ),
    ),
    ("team/spin", "infinite-loop", "kind = \"skill\"\ndescription = \"spins\"\n[limits]\ntimeout = \"60s\"\n"),
    (
        "team/asker",
        "asker",
        "kind = \"skill\"\ndescription = \"asks\"\n[capabilities]\nsession-memory = true\n[limits]\ntimeout = \"60s\"\n",
    ),
    (
        "team/other-asker",
        "asker",
        "kind = \"skill\"\ndescription = \"asks too\"\n[capabilities]\nsession-memory = true\n[limits]\ntimeout = \"60s\"\n",
    ),
    ("team/forgetful", "asker", "kind = \"skill\"\ndescription = \"asks, no memory grant\"\n"),
    (
        "team/resumable-spin",
        "infinite-loop",
        "kind = \"skill\"\ndescription = \"spins, safe to re-run\"\nresumable = true\n[limits]\ntimeout = \"60s\"\n",
    ),
    ("team/crasher", "panicker", "kind = \"skill\"\ndescription = \"panics\"\n"),
    (
        "team/probe",
        "fs-escape",
        "kind = \"skill\"\ndescription = \"probes its workspace\"\n[capabilities]\nfs = [{ path = \"workspace\", access = \"read-write\" }]\n",
    ),
    ("team/hog", "memory-bomb", "kind = \"skill\"\ndescription = \"eats memory\"\n[limits]\nmemory = \"32MiB\"\n"),
    (
        "team/sleeper",
        "shell-exec",
        concat!(
            "kind = \"skill\"\ndescription = \"runs sleep\"\ndangerous = true\n[capabilities]\n",
            "fs = [{ path = \"workspace\", access = \"read\" }]\nshell = [\"",
            env!("CARGO_TARGET_TMPDIR"),
            "/sleeper.sh\", \"sleep\"]\n[limits]\ntimeout = \"120s\"\n"
        ),
    ),
];

pub(crate) struct Fixture {
    _dir: tempfile::TempDir,
    pub workspace: tempfile::TempDir,
    pub home: Arc<Home>,
    pub service: Arc<TaskService>,
    pub engine: TaskEngine,
    /// Other nodes of its cluster, when it is one.
    pub peers: Vec<Arc<TaskService>>,
}

fn install(home: &Home) {
    for (id, component, rest) in PACKAGES {
        let text = format!("id = \"{id}\"\nversion = \"1.0.0\"\n{rest}");
        let manifest = Manifest::from_toml(&text, id).unwrap();
        let bytes = std::fs::read(guest(component)).unwrap();
        home.dangerous_install_ungated(&Package::sign(&manifest, bytes, &team_key(), 1_763_000_000).to_bytes())
            .unwrap();
    }
}

pub(crate) fn fixture(config: EngineConfig) -> Fixture {
    fixture_with_policy(config, "")
}

/// A fixture whose repository policy also has `extra` at the top level.
pub(crate) fn fixture_with_policy(config: EngineConfig, extra: &str) -> Fixture {
    fixture_on(config, extra, None)
}

/// A fixture whose tasks are kept in the PostgreSQL database at `url`.
pub(crate) fn fixture_on_postgres(config: EngineConfig, url: &str) -> Fixture {
    fixture_on(config, "", Some(Store::Postgres(url)))
}

/// A lease short enough for tests to see nodes lost.
pub(crate) const TEST_LEASE: Duration = Duration::from_secs(2);

/// Two nodes of a cluster on PostgreSQL at `url`, sharing one state
/// directory: the fixture's service is node `a`, its peer node `b`.
pub(crate) fn fixture_on_cluster(config: EngineConfig, url: &str) -> Fixture {
    fixture_on_cluster_with(config, url, TEST_LEASE)
}

/// [`fixture_on_cluster`] with nodes holding their tasks for `lease`.
pub(crate) fn fixture_on_cluster_with(config: EngineConfig, url: &str, lease: Duration) -> Fixture {
    let mut f = fixture_on(config.clone(), "", Some(Store::Cluster(url, "a", lease)));
    f.peers.push(service_on_store(&f.home, f.workspace.path(), config, Some(Store::Cluster(url, "b", lease))));
    f
}

/// Where a fixture's tasks live, if not in its state directory.
#[derive(Clone, Copy)]
pub(crate) enum Store<'a> {
    /// One engine on PostgreSQL at this URL.
    Postgres(&'a str),
    /// A cluster node on PostgreSQL at this URL, with this name and lease.
    Cluster(&'a str, &'a str, Duration),
}

pub(crate) fn fixture_on(config: EngineConfig, extra: &str, postgres: Option<Store>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let workspace = tempfile::tempdir().unwrap();
    std::fs::create_dir(workspace.path().join(".coderClaw")).unwrap();
    std::fs::write(
        workspace.path().join(".coderClaw/security.yaml"),
        format!(
            "{extra}skillPolicies:\n  - skillId: team/sleeper\n    dangerous: true\n    allowedRoles: [developer]\n"
        ),
    )
    .unwrap();
    let home = Arc::new(Home::open(dir.path()).unwrap());
    home.trust_add("team", &team_key().public()).unwrap();
    install(&home);
    let service = service_on_store(&home, workspace.path(), config, postgres);
    Fixture { _dir: dir, workspace, home, engine: service.dangerous_engine().clone(), service, peers: vec![] }
}

/// An engine and its service over `home`, running tasks in `workspace`.
fn service_on(home: &Arc<Home>, workspace: &std::path::Path, config: EngineConfig) -> Arc<TaskService> {
    service_on_store(home, workspace, config, None)
}

/// [`service_on`], its tasks in PostgreSQL if `postgres` says so.
pub(crate) fn service_on_store(
    home: &Arc<Home>,
    workspace: &std::path::Path,
    config: EngineConfig,
    postgres: Option<Store>,
) -> Arc<TaskService> {
    let host = Host::builder().compiled_cache(crate::shared_cache()).build().unwrap();
    let offer = Offer {
        dirs: [(
            "workspace".to_owned(),
            OfferedDir { host: workspace.to_path_buf(), guest: ".".into(), access: Access::Read },
        )]
        .into(),
        env: Default::default(),
        ceiling: Limits { timeout: Duration::from_secs(600), ..Limits::default() },
    };
    let mut runtime = LocalRuntime::builder(home.clone()).workspace(workspace).offer(offer).config(config).host(host);
    match postgres {
        Some(Store::Postgres(url)) => runtime = runtime.postgres(url),
        Some(Store::Cluster(url, node, lease)) => runtime = runtime.cluster(url, node, lease),
        None => {}
    }
    runtime.open().unwrap().service().clone()
}

impl Fixture {
    /// A user with `roles` and a session token for them.
    pub(crate) fn login(&self, user: &str, roles: &[&str]) -> String {
        let security = self.service.security();
        let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
        security.dangerous_identity_store().add_user(user, &roles, Some("correct horse battery")).unwrap();
        security.login_local(user, LocalSecret::Password("correct horse battery"), None, None, None).unwrap().1
    }

    pub(crate) async fn http(&self) -> RunningServer {
        let config = ServerConfig { listen: "127.0.0.1:0".parse().unwrap(), ..ServerConfig::default() };
        serve(self.service.clone(), config).await.unwrap()
    }

    pub(crate) async fn grpc(&self) -> RunningServer {
        let config = GrpcConfig { listen: "127.0.0.1:0".parse().unwrap(), ..GrpcConfig::default() };
        coderclaw::tasks::grpc::server::serve(self.service.clone(), config).await.unwrap()
    }
}

/// A self-signed certificate for `localhost` and its key, as PEM files in
/// `dir`: (certificate, key).
pub(crate) fn self_signed_localhost(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    (cert_file, key_file)
}

/// Waits until the task reaches `status` (polling the transport).
async fn wait_for<T: Transport>(rt: &CoderClawRuntime<T>, id: &str, status: TaskStatus) {
    let start = Instant::now();
    loop {
        let t = rt.get_task_state(id).await.unwrap().unwrap();
        if t.status == status {
            return;
        }
        assert!(!t.status.is_terminal(), "task ended {} ({:?}) while waiting for {status}", t.status, t.error);
        assert!(start.elapsed() < Duration::from_secs(30), "task stuck in {}", t.status);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---- scenarios, one body for both transports ----

async fn echo_completes_with_ordered_events<T: Transport>(rt: &CoderClawRuntime<T>) {
    let mut req = TaskSubmitRequest::skill("team/echo", json!({ "hello": "world" }));
    req.description = "say hello".into();
    req.metadata.insert("source".into(), json!("ci-pipeline"));
    let task = rt.submit_task(req).await.unwrap();
    assert_eq!(task.status, TaskStatus::Pending);
    assert_eq!(uuid_version(&task.id), Some('4'), "{}", task.id);
    let mut seen = Vec::new();
    let done = rt.wait(&task.id, |e| seen.push(e.clone())).await.unwrap();
    assert_eq!(done.status, TaskStatus::Completed, "{:?}", done.error);
    assert_eq!(done.output, Some(json!({ "echo": { "hello": "world" } })));
    assert_eq!(done.metadata["source"], "ci-pipeline");
    assert!(done.started_at_ms.is_some() && done.completed_at_ms >= done.started_at_ms);
    let seqs: Vec<u64> = seen.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seen.len() as u64).collect::<Vec<_>>(), "the stream delivers every event in order");
    let statuses: Vec<TaskStatus> =
        seen.iter().filter(|e| e.event == TaskEventKind::Status).map(|e| e.status).collect();
    assert_eq!(statuses, [TaskStatus::Planning, TaskStatus::Running, TaskStatus::Completed]);
    assert_eq!(rt.get_task_events(&task.id, 0, 1000).await.unwrap(), seen, "history equals the stream");
}

/// `run_task`: the acknowledgement, every event in order, then the final
/// state, and nothing after it; a refused submission is one error.
async fn run_task_acknowledges_streams_and_ends_with_the_final_state<T: Transport>(rt: &CoderClawRuntime<T>) {
    let mut updates = rt.run_task(TaskSubmitRequest::skill("team/echo", json!({ "run": 1 })));
    let Some(Ok(RunUpdate::Accepted(accepted))) = updates.next().await else { panic!("no acknowledgement first") };
    assert_eq!(accepted.status, TaskStatus::Pending);
    let (mut seen, mut finished) = (Vec::new(), None);
    while let Some(update) = updates.next().await {
        assert!(finished.is_none(), "nothing follows the final state");
        match update.unwrap() {
            RunUpdate::Event(e) => seen.push(e),
            RunUpdate::Finished(t) => finished = Some(t),
            RunUpdate::Accepted(t) => panic!("acknowledged twice: {t:?}"),
        }
    }
    let done = finished.expect("the run ends with the final state");
    assert_eq!((done.id.as_str(), done.status), (accepted.id.as_str(), TaskStatus::Completed), "{:?}", done.error);
    assert_eq!(done.output, Some(json!({ "echo": { "run": 1 } })));
    assert_eq!(seen.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=seen.len() as u64).collect::<Vec<_>>());
    assert_eq!(seen.last().map(|e| e.status), Some(TaskStatus::Completed));
    assert_eq!(rt.get_task_events(&done.id, 0, 1000).await.unwrap(), seen, "history equals the run's events");

    let mut refused = rt.run_task(TaskSubmitRequest::default());
    let err = refused.next().await.unwrap().unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidRequest, "{err}");
    assert!(refused.next().await.is_none(), "a refused submission ends the run");
}

/// 12,000 log lines against the default budget of 10,000 events per task:
/// the rest are counted and dropped, the history says so, and it reads in
/// pages of at most 1000.
async fn a_flood_of_log_lines_is_bounded_and_its_history_paged<T: Transport>(rt: &CoderClawRuntime<T>) {
    let task =
        rt.submit_task(TaskSubmitRequest::skill("team/forgetful", json!({ "flood": [12_000, 10] }))).await.unwrap();
    let mut streamed = 0u64;
    let done = rt.wait(&task.id, |_| streamed += 1).await.unwrap();
    assert_eq!(done.status, TaskStatus::Completed, "{:?}", done.error);
    let (mut all, mut after, mut pages) = (Vec::new(), 0, 0);
    loop {
        let page = rt.get_task_events(&task.id, after, 1000).await.unwrap();
        assert!(page.len() <= 1000, "a page holds at most 1000 events, got {}", page.len());
        let Some(last) = page.last() else { break };
        assert!(page.first().unwrap().seq > after);
        after = last.seq;
        pages += 1;
        all.extend(page);
    }
    assert_eq!(all.len() as u64, streamed, "the stream and the history agree");
    let logs = all.iter().filter(|e| e.event == TaskEventKind::Log).count();
    assert!((10_000..=10_003).contains(&logs), "{logs} log events kept");
    assert!(pages >= 10, "{pages} pages");
    let notes: Vec<&str> =
        all.iter().map(|e| e.message.as_str()).filter(|m| m.contains("event limit reached")).collect();
    assert_eq!(notes.len(), 1, "one note when the limit is reached");
    let truncated = all.iter().rev().find(|e| e.message.starts_with("truncated:")).expect("a truncated event");
    assert_eq!(truncated.message, "truncated: 2000 events dropped");
    assert_eq!(all.last().unwrap().status, TaskStatus::Completed, "the final status is never dropped");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_byte_budget_and_the_message_cap_bound_a_task_of_big_lines() {
    let f = fixture(EngineConfig { max_event_bytes_per_task: 200_000, ..Default::default() });
    let rt = CoderClawRuntime::new(LocalTransport::new(f.service.clone(), None));
    let task =
        rt.submit_task(TaskSubmitRequest::skill("team/forgetful", json!({ "flood": [300, 40_000] }))).await.unwrap();
    assert_eq!(rt.wait(&task.id, |_| {}).await.unwrap().status, TaskStatus::Completed);
    let events = rt.get_task_events(&task.id, 0, 1000).await.unwrap();
    let bytes: usize = events.iter().map(|e| e.message.len()).sum();
    assert!(bytes < 250_000, "{bytes} bytes of messages kept for one task");
    assert!(events.iter().all(|e| e.message.len() <= 16 * 1024 + 32), "a message is capped at 16 KiB");
    assert!(events.iter().any(|e| e.message.starts_with("truncated: ")), "{:?}", events.last());
}

async fn cancel_stops_a_spinning_guest<T: Transport>(rt: &CoderClawRuntime<T>) {
    let task = rt.submit_task(TaskSubmitRequest::skill("team/spin", json!({}))).await.unwrap();
    wait_for(rt, &task.id, TaskStatus::Running).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    assert!(rt.cancel_task(&task.id).await.unwrap());
    let done = rt.wait(&task.id, |_| {}).await.unwrap();
    assert_eq!(done.status, TaskStatus::Cancelled);
    assert!(start.elapsed() < Duration::from_secs(1), "took {:?}", start.elapsed());
    assert!(!rt.cancel_task(&task.id).await.unwrap(), "a finished task is not cancelled again");
    assert_eq!(rt.get_task_state(&task.id).await.unwrap().unwrap().status, TaskStatus::Cancelled);
}

async fn waiting_round_trip<T: Transport>(rt: &CoderClawRuntime<T>) {
    let task =
        rt.submit_task(TaskSubmitRequest::skill("team/asker", json!({ "ask": "deploy? (yes/no)" }))).await.unwrap();
    wait_for(rt, &task.id, TaskStatus::Waiting).await;
    let waiting = rt.get_task_state(&task.id).await.unwrap().unwrap();
    assert_eq!(waiting.prompt.as_deref(), Some("deploy? (yes/no)"));
    let resumed = rt.respond(&task.id, "yes").await.unwrap();
    assert_eq!(resumed.status, TaskStatus::Running);
    let done = rt.wait(&task.id, |_| {}).await.unwrap();
    assert_eq!(done.output, Some(json!({ "answer": "yes" })));
    let err = rt.respond(&task.id, "again").await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Conflict, "{err}");
    let events = rt.get_task_events(&task.id, 0, 1000).await.unwrap();
    assert!(events.iter().any(|e| e.event == TaskEventKind::InputRequested));
    let provided = events.iter().find(|e| e.event == TaskEventKind::InputProvided).unwrap();
    assert_eq!(provided.message, "input provided (3 bytes)", "the answer itself is not in the history");
    assert_eq!(provided.status, TaskStatus::Running);
}

async fn bad_requests_are_refused<T: Transport>(rt: &CoderClawRuntime<T>) {
    let err = rt.submit_task(TaskSubmitRequest::default()).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidRequest);
    assert!(err.message.contains("skillId or agentId"), "{err}");
    assert_eq!(rt.get_task_state("0b9ea3ee-86a1-4a8f-9d0b-7a3f3f3f3f3f").await.unwrap(), None);
    // A skill that is not installed fails in PLANNING, with the reason.
    let task = rt.submit_task(TaskSubmitRequest::skill("team/nope", json!({}))).await.unwrap();
    let done = rt.wait(&task.id, |_| {}).await.unwrap();
    assert_eq!(done.status, TaskStatus::Failed);
    let failure = done.error.unwrap();
    assert_eq!(failure.code, FailureCode::NotInstalled, "{failure:?}");
    assert!(failure.message.contains("team/nope"), "{failure:?}");
}

/// The signed input schema is enforced before the guest runs (the echo
/// guest itself takes anything, so only the host can refuse these).
async fn inputs_that_fail_the_signed_schema_never_reach_the_guest<T: Transport>(rt: &CoderClawRuntime<T>) {
    for (input, path, keyword) in [
        (json!({"n": 0}), "/n", "minimum"),
        (json!({"n": "1"}), "/n", "type"),
        (json!({"n": 1, "surprise": true}), "the input", "additionalProperties"),
        (json!({}), "the input", "required"),
        (json!([1]), "the input", "type"),
        // Over 64 KiB: checked on the blocking pool, within the time limit.
        (json!({"n": 0, "pad": "x".repeat(100_000)}), "/n", "minimum"),
    ] {
        let task = rt.submit_task(TaskSubmitRequest::skill("team/strict-echo", input.clone())).await.unwrap();
        let done = rt.wait(&task.id, |_| {}).await.unwrap();
        assert_eq!(done.status, TaskStatus::Failed, "{input}: {:?}", done.output);
        let failure = done.error.unwrap();
        assert_eq!(failure.code, FailureCode::InvalidInput, "{input}: {failure:?}");
        let m = &failure.message;
        assert!(m.contains("refused its input before running"), "{input}: {m}");
        assert!(m.contains(&format!("at {path}:")) && m.contains(&format!("keyword `{keyword}`")), "{input}: {m}");
        assert_eq!(done.output, None, "{input}");
    }
    let task = rt.submit_task(TaskSubmitRequest::skill("team/strict-echo", json!({"n": 2}))).await.unwrap();
    let done = rt.wait(&task.id, |_| {}).await.unwrap();
    assert_eq!(done.output, Some(json!({"echo": {"n": 2}})), "{:?}", done.error);
}

fn uuid_version(id: &str) -> Option<char> {
    (id.len() == 36).then(|| id.chars().nth(14)).flatten()
}

/// Which transport a scenario runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    Local,
    Http,
    Ws,
    Grpc,
}

/// A fixture served over one transport: clients holding any token.
pub(crate) struct Harness {
    pub f: Fixture,
    pub via: Via,
    /// The base URL of the transport (empty for local).
    pub url: String,
    _servers: Vec<RunningServer>,
}

impl Harness {
    pub(crate) async fn start(via: Via, config: EngineConfig) -> Self {
        let f = fixture(config);
        let (url, servers) = match via {
            Via::Local => (String::new(), vec![]),
            Via::Http => {
                let s = f.http().await;
                (s.url(), vec![s])
            }
            Via::Ws => {
                let s = f.http().await;
                (s.url().replace("http://", "ws://"), vec![s])
            }
            Via::Grpc => {
                let s = f.grpc().await;
                (format!("grpc://{}", s.addr), vec![s])
            }
        };
        Self { f, via, url, _servers: servers }
    }

    /// In-process, its tasks in PostgreSQL at `url`.
    pub(crate) fn on_postgres(config: EngineConfig, url: &str) -> Self {
        Self { f: fixture_on_postgres(config, url), via: Via::Local, url: String::new(), _servers: vec![] }
    }

    /// In-process on node `a` of a two-node cluster on PostgreSQL at `url`.
    pub(crate) fn on_cluster(config: EngineConfig, url: &str) -> Self {
        Self::on_cluster_with(config, url, TEST_LEASE)
    }

    /// [`Harness::on_cluster`] with nodes holding their tasks for `lease`.
    pub(crate) fn on_cluster_with(config: EngineConfig, url: &str, lease: Duration) -> Self {
        Self { f: fixture_on_cluster_with(config, url, lease), via: Via::Local, url: String::new(), _servers: vec![] }
    }

    /// A client acting with `token` (locally, no token is the local owner).
    pub(crate) fn connect(&self, token: Option<&str>) -> CoderClawRuntime<Arc<dyn Transport>> {
        let token = token.map(str::to_owned);
        let transport: Arc<dyn Transport> = match self.via {
            Via::Local => Arc::new(LocalTransport::new(self.f.service.clone(), token)),
            Via::Http => Arc::new(HttpTransport::new(&self.url, token).unwrap()),
            Via::Ws => Arc::new(WsTransport::new(&self.url, token, None).unwrap()),
            Via::Grpc => Arc::new(GrpcTransport::new(&self.url, token, None).unwrap()),
        };
        CoderClawRuntime::new(transport)
    }

    /// A new user with `roles`, and a client holding their session.
    pub(crate) fn user(&self, name: &str, roles: &[&str]) -> CoderClawRuntime<Arc<dyn Transport>> {
        self.connect(Some(&self.f.login(name, roles)))
    }
}

/// One session cannot see, follow, answer, pause or cancel another's task,
/// and does not find it in its list.
async fn sessions_are_isolated(h: &Harness) {
    let alice = h.user("alice", &["developer"]);
    let bob = h.user("bob", &["developer"]);
    let task = alice.submit_task(TaskSubmitRequest::skill("team/asker", json!({ "ask": "secret?" }))).await.unwrap();
    wait_for(&alice, &task.id, TaskStatus::Waiting).await;
    assert_eq!(bob.get_task_state(&task.id).await.unwrap(), None);
    assert_eq!(bob.stream_task_updates(&task.id).await.err().unwrap().code, ErrorCode::NotFound);
    assert_eq!(bob.respond(&task.id, "yes").await.unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(bob.cancel_task(&task.id).await.unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(bob.pause_task(&task.id).await.unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(bob.get_task_events(&task.id, 0, 10).await.unwrap_err().code, ErrorCode::NotFound);
    assert!(bob.list_tasks(TaskFilter::default()).await.unwrap().iter().all(|t| t.id != task.id));
    let theirs = TaskFilter { session: Some(task.session_id.clone()), ..Default::default() };
    assert!(bob.list_tasks(theirs).await.unwrap_or_default().iter().all(|t| t.id != task.id));
    assert_eq!(alice.get_task_state(&task.id).await.unwrap().unwrap().status, TaskStatus::Waiting);
    alice.respond(&task.id, "mine").await.unwrap();
    assert_eq!(alice.wait(&task.id, |_| {}).await.unwrap().output, Some(json!({ "answer": "mine" })));
}

/// A session gives up its own task (saying why, audited), and no other
/// session can.
async fn a_session_gives_up_its_own_task_and_no_other(h: &Harness) {
    let alice = h.user("alice", &["developer"]);
    let bob = h.user("bob", &["developer"]);
    let task = alice.submit_task(TaskSubmitRequest::skill("team/spin", json!({}))).await.unwrap();
    wait_for(&alice, &task.id, TaskStatus::Running).await;
    let err = bob.abandon_task(&task.id, "not mine").await.unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound, "{err}");
    assert_eq!(alice.get_task_state(&task.id).await.unwrap().unwrap().status, TaskStatus::Running);
    assert!(alice.abandon_task(&task.id, "the job was cancelled\u{202e}\n").await.unwrap());
    let done = alice.wait(&task.id, |_| {}).await.unwrap();
    assert_eq!(done.status, TaskStatus::Cancelled);
    let message = done.error.unwrap().message;
    assert!(message.contains("the job was cancelled") && !message.contains('\u{202e}'), "{message}");
    assert!(!alice.abandon_task(&task.id, "again").await.unwrap(), "a finished task is not given up again");
    let audit = AuditFilter { action: Some("task.abandon".into()), ..Default::default() };
    let records = h.f.home.audit().query(&audit).unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].user.as_deref(), Some("alice"));
}

/// The task's state once final (5 s at most), read from the engine.
async fn finished_in_engine(h: &Harness, id: &str) -> coderclaw_core::task::TaskState {
    let mut done = h.f.engine.get(id).unwrap();
    for _ in 0..100 {
        if done.status.is_terminal() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        done = h.f.engine.get(id).unwrap();
    }
    done
}

/// A client whose role may submit and execute but not read tasks.
fn submitter_without_task_read(h: &Harness) -> CoderClawRuntime<Arc<dyn Transport>> {
    std::fs::write(
        h.f.home.root().join("config.yaml"),
        "roles:\n  submitter:\n    additionalPermissions: [task:submit, skill:execute]\n",
    )
    .unwrap();
    h.user("sub", &["submitter"])
}

/// A session that may submit but not read still gets the state of the
/// task it gives up (the reply is the abandon's, not a read).
async fn a_session_without_task_read_gives_up_its_task(h: &Harness) {
    let submitter = submitter_without_task_read(h);
    let task = submitter.submit_task(TaskSubmitRequest::skill("team/spin", json!({}))).await.unwrap();
    let err = submitter.get_task_state(&task.id).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Forbidden, "{err}");
    assert!(submitter.abandon_task(&task.id, "interrupted").await.unwrap());
    let done = finished_in_engine(h, &task.id).await;
    assert_eq!(done.status, TaskStatus::Cancelled);
}

/// A session that may submit but not read runs a task with `run_task`:
/// it gets the acknowledgement, then the refusal to read, and the task
/// runs all the same.
async fn run_task_without_task_read_is_acknowledged_then_refused(h: &Harness) {
    let submitter = submitter_without_task_read(h);
    let mut updates = submitter.run_task(TaskSubmitRequest::skill("team/echo", json!(2)));
    let Some(Ok(RunUpdate::Accepted(task))) = updates.next().await else { panic!("no acknowledgement first") };
    let err = updates.next().await.unwrap().unwrap_err();
    assert_eq!(err.code, ErrorCode::Forbidden, "{err}");
    assert!(err.message.contains("task:read"), "{err}");
    assert!(updates.next().await.is_none());
    let done = finished_in_engine(h, &task.id).await;
    assert_eq!(done.status, TaskStatus::Completed);
}

/// 401, 403, 404, 413 and 400, each with its stable code.
async fn refusals_have_stable_codes(h: &Harness) {
    let forged = h.connect(Some("ccs_forged"));
    assert_eq!(forged.get_status().await.unwrap_err().code, ErrorCode::Unauthenticated);
    let err = forged.submit_task(TaskSubmitRequest::skill("team/echo", json!(1))).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Unauthenticated, "{err}");
    if h.via != Via::Local {
        // Loopback is not an identity: without a token nothing is answered.
        let anonymous = h.connect(None);
        let err = anonymous.list_tasks(TaskFilter::default()).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::Unauthenticated, "{err}");
    }
    let reader = h.user("reader", &["readonly"]);
    let err = reader.submit_task(TaskSubmitRequest::skill("team/echo", json!(1))).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Forbidden, "{err}");
    let dev = h.user("dev", &["developer"]);
    assert_eq!(dev.get_task_state("0b9ea3ee-86a1-4a8f-9d0b-7a3f3f3f3f3f").await.unwrap(), None);
    assert_eq!(dev.cancel_task("0b9ea3ee-86a1-4a8f-9d0b-7a3f3f3f3f3f").await.unwrap_err().code, ErrorCode::NotFound);
    let both =
        TaskSubmitRequest { agent_id: Some("team/echo".into()), ..TaskSubmitRequest::skill("team/echo", json!(1)) };
    let err = dev.submit_task(both).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidRequest, "{err}");
    if h.via != Via::Local {
        // Over the 1 MiB request limit of every network transport.
        let big = TaskSubmitRequest::skill("team/echo", json!("x".repeat(2 << 20)));
        let err = dev.submit_task(big).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::PayloadTooLarge, "{err}");
    }
    // Still usable after every refusal.
    assert_eq!(echo_once(&dev).await.status, TaskStatus::Completed);
}

/// 1,000 submissions at once: each stored once, each run once.
async fn a_thousand_concurrent_submissions_each_run_once(h: &Harness) {
    let rt = Arc::new(h.user("dev", &["developer"]));
    let mut handles = Vec::new();
    for i in 0..1000 {
        let rt = rt.clone();
        handles.push(tokio::spawn(async move {
            rt.submit_task(TaskSubmitRequest::skill("team/echo", json!(i))).await.unwrap().id
        }));
    }
    let mut ids = Vec::new();
    for h in handles {
        ids.push(h.await.unwrap());
    }
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 1000);
    for id in &ids {
        let done = rt.wait(id, |_| {}).await.unwrap();
        assert_eq!(done.status, TaskStatus::Completed, "{:?}", done.error);
    }
    let all = h.f.engine.list(&TaskFilter { limit: Some(1000), ..Default::default() }).unwrap();
    assert_eq!(all.len(), 1000);
    assert!(all.iter().all(|t| t.status == TaskStatus::Completed));
}

/// The scenario suite with the tasks in PostgreSQL (a cluster of its own
/// per test; skipped only with CODERCLAW_SKIP_PG=1): one engine, and two
/// cluster nodes sharing the queue (the client talks to node `a`; either
/// runs the tasks, so cancel, answers and streams cross nodes).
macro_rules! on_postgres {
    (clients: [$($client:ident),*], harness: [$($harness:ident),*]) => {
        on_postgres!(@with postgres, on_postgres, [$($client),*], [$($harness),*]);
        on_postgres!(@with cluster, on_cluster, [$($client),*], [$($harness),*]);
    };
    (@with $module:ident, $open:ident, [$($client:ident),*], [$($harness:ident),*]) => {
        mod $module {
            use coderclaw_e2e::postgres::Postgres;
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $client() {
                let Some(pg) = Postgres::start() else { return };
                let h = super::Harness::$open(Default::default(), &pg.url());
                super::$client(&h.user("dev", &["developer"])).await;
            })*
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $harness() {
                let Some(pg) = Postgres::start() else { return };
                let config = super::EngineConfig { max_concurrent_tasks: 16, ..Default::default() };
                super::$harness(&super::Harness::$open(config, &pg.url())).await;
            })*
        }
    };
}

/// The scenario suite, unchanged over every transport, and in-process on
/// PostgreSQL: the client-only scenarios with a developer's session, the
/// harness ones with the fixture.
macro_rules! every_transport {
    (clients: [$($client:ident),*], harness: [$($harness:ident),*]) => {
        every_transport!(@via local, Local, [$($client),*], [$($harness),*]);
        every_transport!(@via http, Http, [$($client),*], [$($harness),*]);
        every_transport!(@via ws, Ws, [$($client),*], [$($harness),*]);
        every_transport!(@via grpc, Grpc, [$($client),*], [$($harness),*]);
        on_postgres!(clients: [$($client),*], harness: [$($harness),*]);
    };
    (@via $module:ident, $via:ident, [$($client:ident),*], [$($harness:ident),*]) => {
        mod $module {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $client() {
                let h = super::Harness::start(super::Via::$via, Default::default()).await;
                super::$client(&h.user("dev", &["developer"])).await;
            })*
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $harness() {
                let config = super::EngineConfig { max_concurrent_tasks: 16, ..Default::default() };
                super::$harness(&super::Harness::start(super::Via::$via, config).await).await;
            })*
        }
    };
}

every_transport!(
    clients: [
        echo_completes_with_ordered_events,
        run_task_acknowledges_streams_and_ends_with_the_final_state,
        a_flood_of_log_lines_is_bounded_and_its_history_paged,
        cancel_stops_a_spinning_guest,
        waiting_round_trip,
        bad_requests_are_refused,
        inputs_that_fail_the_signed_schema_never_reach_the_guest
    ],
    harness: [
        sessions_are_isolated,
        refusals_have_stable_codes,
        a_session_gives_up_its_own_task_and_no_other,
        a_session_without_task_read_gives_up_its_task,
        run_task_without_task_read_is_acknowledged_then_refused,
        a_thousand_concurrent_submissions_each_run_once
    ]
);

// ---- engine-specific ----

/// Whether a `sleep ARG` process is alive (not a zombie).
fn sleep_exists(arg: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|p| {
        let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let parts: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let alive = std::fs::read_to_string(p.path().join("stat")).is_ok_and(|s| !s.contains(") Z "));
        alive && parts.len() >= 2 && parts[0].ends_with(b"sleep") && parts[1] == arg.as_bytes()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_kills_a_running_shell_childs_whole_process_group() {
    let f = fixture(Default::default());
    let rt = CoderClawRuntime::new(LocalTransport::new(f.service.clone(), None));
    let marker = format!("60.{}", std::process::id());
    // `sleep` is the script's child, not the host's: killing only the direct
    // child (kill_on_drop) would leave it running. (A shell is never run by
    // shell.exec, so the script is a program of its own, outside the grant.)
    let script = concat!(env!("CARGO_TARGET_TMPDIR"), "/sleeper.sh");
    let tmp = format!("{script}.{}", std::process::id());
    std::fs::write(&tmp, "#!/bin/sh\nsleep \"$1\" &\nwait\n").unwrap();
    let mode = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755);
    std::fs::set_permissions(&tmp, mode).unwrap();
    std::fs::rename(&tmp, script).unwrap();
    let input = json!({ "program": script, "args": [marker], "timeout_ms": 100_000 });
    let task = rt.submit_task(TaskSubmitRequest::skill("team/sleeper", input)).await.unwrap();
    let start = Instant::now();
    while !sleep_exists(&marker) {
        let t = rt.get_task_state(&task.id).await.unwrap().unwrap();
        assert!(!t.status.is_terminal(), "{:?}", t.error);
        assert!(start.elapsed() < Duration::from_secs(30), "sleep never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cancelled = Instant::now();
    assert!(rt.cancel_task(&task.id).await.unwrap());
    while sleep_exists(&marker) {
        assert!(cancelled.elapsed() < Duration::from_secs(1), "the child outlived the cancel");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(rt.wait(&task.id, |_| {}).await.unwrap().status, TaskStatus::Cancelled);
}

#[tokio::test(flavor = "multi_thread")]
async fn session_memory_is_per_session_and_skill_and_needs_the_grant() {
    let f = fixture(Default::default());
    let (alice, bob) = (f.login("alice", &["developer"]), f.login("bob", &["developer"]));
    let as_alice = CoderClawRuntime::new(LocalTransport::new(f.service.clone(), Some(alice)));
    let as_bob = CoderClawRuntime::new(LocalTransport::new(f.service.clone(), Some(bob)));
    let count_with = |rt, skill: &'static str| async move {
        let rt: &CoderClawRuntime<LocalTransport> = rt;
        let t = rt.submit_task(TaskSubmitRequest::skill(skill, json!({ "count": "runs" }))).await.unwrap();
        let done = rt.wait(&t.id, |_| {}).await.unwrap();
        assert_eq!(done.status, TaskStatus::Completed, "{:?}", done.error);
        done.output.unwrap()["count"].clone()
    };
    let count = |rt| count_with(rt, "team/asker");
    assert_eq!(count(&as_alice).await, 1);
    assert_eq!(count(&as_alice).await, 2);
    assert_eq!(count(&as_bob).await, 1, "bob's session does not see alice's memory");
    // Another skill in alice's session has its own keys: same key, its own count.
    assert_eq!(count_with(&as_alice, "team/other-asker").await, 1, "skills do not share memory");
    assert_eq!(count(&as_alice).await, 3);

    let t = as_alice.submit_task(TaskSubmitRequest::skill("team/forgetful", json!({ "count": "runs" }))).await.unwrap();
    let done = as_alice.wait(&t.id, |_| {}).await.unwrap();
    assert_eq!(done.status, TaskStatus::Failed);
    assert!(done.error.unwrap().message.contains("no session-memory grant"));

    // Isolation of the tasks themselves: bob cannot see alice's task.
    assert_eq!(as_bob.get_task_state(&t.id).await.unwrap(), None);
    assert_eq!(as_bob.cancel_task(&t.id).await.unwrap_err().code, ErrorCode::NotFound);
    let bobs = as_bob.list_tasks(TaskFilter::default()).await.unwrap();
    assert_eq!(bobs.len(), 1);
    let err = as_bob.list_tasks(TaskFilter { session: Some("someone-else".into()), ..Default::default() }).await;
    assert_eq!(err.unwrap_err().code, ErrorCode::Forbidden);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_concurrency_limit_queues_and_paused_tasks_wait() {
    let f = fixture(EngineConfig { max_concurrent_tasks: 1, ..Default::default() });
    let rt = CoderClawRuntime::new(LocalTransport::new(f.service.clone(), None));
    let spin = rt.submit_task(TaskSubmitRequest::skill("team/spin", json!({}))).await.unwrap();
    wait_for(&rt, &spin.id, TaskStatus::Running).await;
    let echo = rt.submit_task(TaskSubmitRequest::skill("team/echo", json!(1))).await.unwrap();
    let mut paused_req = TaskSubmitRequest::skill("team/echo", json!(2));
    paused_req.paused = true;
    let paused = rt.submit_task(paused_req).await.unwrap();
    let later = rt.submit_task(TaskSubmitRequest::skill("team/echo", json!(3))).await.unwrap();
    rt.cancel_task(&spin.id).await.unwrap();
    let spin_ended = rt.wait(&spin.id, |_| {}).await.unwrap().completed_at_ms.unwrap();
    let echo_done = rt.wait(&echo.id, |_| {}).await.unwrap();
    assert_eq!(echo_done.status, TaskStatus::Completed);
    assert!(echo_done.started_at_ms.unwrap() >= spin_ended, "one slot: echo left the queue only after spin ended");
    // `later` was queued after the paused task and has run to the end: the
    // queue went past the paused task, which is still waiting.
    assert_eq!(rt.wait(&later.id, |_| {}).await.unwrap().status, TaskStatus::Completed);
    let held = rt.get_task_state(&paused.id).await.unwrap().unwrap();
    assert!(held.paused && held.status == TaskStatus::Pending, "{held:?}");
    f.engine.resume(&paused.id).unwrap();
    assert_eq!(rt.wait(&paused.id, |_| {}).await.unwrap().status, TaskStatus::Completed);
}

#[tokio::test(flavor = "multi_thread")]
async fn http_refuses_what_it_should_with_stable_codes() {
    let f = fixture(Default::default());
    let developer = f.login("dev", &["developer"]);
    let readonly = f.login("reader", &["readonly"]);
    let server = f.http().await;
    let url = server.url();
    let client = |token: Option<&str>| HttpTransport::new(&url, token.map(str::to_owned)).unwrap();

    let forged = CoderClawRuntime::new(client(Some("ccs_forged")));
    assert_eq!(forged.get_status().await.unwrap_err().code, ErrorCode::Unauthenticated);
    // Loopback is not an identity: without a token nothing is answered,
    // even though requireAuth is off and the in-process owner may act.
    let anonymous = CoderClawRuntime::new(client(None));
    let err = anonymous.submit_task(TaskSubmitRequest::skill("team/echo", json!(1))).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Unauthenticated, "{err}");
    assert_eq!(anonymous.list_tasks(TaskFilter::default()).await.unwrap_err().code, ErrorCode::Unauthenticated);
    let reader = CoderClawRuntime::new(client(Some(&readonly)));
    let err = reader.submit_task(TaskSubmitRequest::skill("team/echo", json!(1))).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Forbidden, "{err}");
    let denials = f.home.audit().query(&AuditFilter { action: Some("task.submit".into()), ..Default::default() });
    assert!(denials.unwrap().iter().any(|r| r.result == "denied" && r.user.as_deref() == Some("reader")));

    // Raw requests for the body checks.
    let raw = |body: Vec<u8>, token: String| {
        let url = url.clone();
        async move {
            let addr = url.trim_start_matches("http://").to_owned();
            let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.unwrap();
            tokio::spawn(conn);
            let req = hyper::Request::post("/v1/tasks")
                .header("host", addr)
                .header("authorization", format!("Bearer {token}"))
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            let status = resp.status().as_u16();
            let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
            (status, serde_json::from_slice::<Value>(&body).unwrap())
        }
    };
    let (status, body) = raw(vec![b' '; 2 << 20], developer.clone()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("payload_too_large")));
    let (status, body) = raw(b"{\"skillId\": ".to_vec(), developer.clone()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_request")));
    assert!(body["error"]["message"].as_str().unwrap().contains("not valid JSON"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn local_only_will_not_listen_beyond_loopback() {
    let f = fixture(Default::default());
    let config = ServerConfig { listen: "0.0.0.0:0".parse().unwrap(), ..ServerConfig::default() };
    let err = serve(f.service.clone(), config).await.err().expect("refused");
    assert!(err.to_string().contains("local-only binds loopback only"), "{err}");
    let remote = ServerConfig {
        listen: "0.0.0.0:0".parse().unwrap(),
        mode: coderclaw_core::task::RuntimeMode::RemoteEnabled,
        ..ServerConfig::default()
    };
    assert!(serve(f.service.clone(), remote).await.is_ok(), "remote-enabled may");
}

#[tokio::test(flavor = "multi_thread")]
async fn reopening_fails_interrupted_tasks_and_keeps_pending_ones() {
    let f = fixture(Default::default());
    let rt = CoderClawRuntime::new(LocalTransport::new(f.service.clone(), None));
    let waiting = rt.submit_task(TaskSubmitRequest::skill("team/asker", json!({ "ask": "?" }))).await.unwrap();
    wait_for(&rt, &waiting.id, TaskStatus::Waiting).await;
    let mut req = TaskSubmitRequest::skill("team/echo", json!(7));
    req.paused = true;
    let paused = rt.submit_task(req).await.unwrap();

    // A second engine on the same state directory, as after a crash of the
    // first (the real kill -9 of `coderclaw serve` is in the CLI tests).
    let reopened = service_on(&f.home, f.workspace.path(), Default::default());
    let rt = CoderClawRuntime::new(LocalTransport::new(reopened.clone(), None));
    let failed = rt.get_task_state(&waiting.id).await.unwrap().unwrap();
    assert_eq!(failed.status, TaskStatus::Failed);
    assert_eq!(failed.error, Some(TaskFailure::new(FailureCode::HostRestarted, "host restarted")));
    let still = rt.get_task_state(&paused.id).await.unwrap().unwrap();
    assert_eq!((still.status, still.paused), (TaskStatus::Pending, true), "paused tasks stay paused");
    reopened.dangerous_engine().resume(&paused.id).unwrap();
    assert_eq!(rt.wait(&paused.id, |_| {}).await.unwrap().status, TaskStatus::Completed);
}

/// Shutting down: no submission is taken and no queued task started;
/// started tasks get the grace period (cut short here by a second
/// signal); then the ones still running stop, a resumable one left to
/// re-run, the others CANCELLED saying why; queued ones are kept; and the
/// next engine finds all of it on disk.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_lets_running_tasks_finish_then_stops_the_rest_and_keeps_the_queue() {
    let f = fixture(EngineConfig { max_concurrent_tasks: 4, ..Default::default() });
    let rt = CoderClawRuntime::new(LocalTransport::new(f.service.clone(), None));
    let sleep = json!({ "program": "sleep", "args": ["3"], "timeout_ms": 20_000 });
    let quick = rt.submit_task(TaskSubmitRequest::skill("team/sleeper", sleep)).await.unwrap();
    let spin = rt.submit_task(TaskSubmitRequest::skill("team/spin", json!({}))).await.unwrap();
    let again = rt.submit_task(TaskSubmitRequest::skill("team/resumable-spin", json!({}))).await.unwrap();
    let asker = rt.submit_task(TaskSubmitRequest::skill("team/asker", json!({ "ask": "?" }))).await.unwrap();
    let mut req = TaskSubmitRequest::skill("team/echo", json!("later"));
    req.paused = true;
    let queued = rt.submit_task(req).await.unwrap();
    wait_for(&rt, &spin.id, TaskStatus::Running).await;
    wait_for(&rt, &again.id, TaskStatus::Running).await;
    wait_for(&rt, &asker.id, TaskStatus::Waiting).await;

    wait_for(&rt, &quick.id, TaskStatus::Running).await;
    let start = Instant::now();
    let hurry = tokio::time::sleep(Duration::from_secs(6));
    let report = f.service.shutdown(Duration::from_secs(600), hurry).await.unwrap();
    assert!(start.elapsed() < Duration::from_secs(30), "the second signal cut the grace short: {:?}", start.elapsed());
    let mut cancelled = report.cancelled.clone();
    cancelled.sort();
    let mut expected = vec![spin.id.clone(), asker.id.clone()];
    expected.sort();
    assert_eq!(cancelled, expected, "{report:?}");
    assert_eq!((report.requeued.clone(), report.finished, report.queued), (vec![again.id.clone()], 1, 1));
    let err = rt.submit_task(TaskSubmitRequest::skill("team/echo", json!(1))).await.unwrap_err();
    assert_eq!((err.code, err.retry_after_secs), (ErrorCode::Unavailable, Some(5)), "{err}");
    assert!(err.message.contains("shutting down"), "{err}");
    f.engine.resume(&queued.id).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(f.engine.get(&queued.id).unwrap().status, TaskStatus::Pending, "nothing starts while shutting down");

    // The next engine on the same state directory.
    let reopened = service_on(&f.home, f.workspace.path(), Default::default());
    let rt = CoderClawRuntime::new(LocalTransport::new(reopened.clone(), None));
    assert_eq!(rt.get_task_state(&quick.id).await.unwrap().unwrap().status, TaskStatus::Completed);
    for id in [&spin.id, &asker.id] {
        let done = rt.get_task_state(id).await.unwrap().unwrap();
        assert_eq!(done.status, TaskStatus::Cancelled);
        let error = done.error.unwrap();
        assert_eq!(error.code, FailureCode::Cancelled);
        assert!(error.message.contains("the server shut down"), "{error:?}");
    }
    let mut events = Vec::new();
    for _ in 0..100 {
        events = rt.get_task_events(&again.id, 0, 1000).await.unwrap();
        if events.iter().any(|e| e.event == TaskEventKind::Recovered) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(events.iter().any(|e| e.message.contains("re-runs from the start")), "{events:?}");
    assert!(events.iter().any(|e| e.event == TaskEventKind::Recovered), "re-run at the next start: {events:?}");
    assert!(!rt.get_task_state(&again.id).await.unwrap().unwrap().status.is_terminal());
    assert_eq!(rt.wait(&queued.id, |_| {}).await.unwrap().status, TaskStatus::Completed, "the queue was kept");
    reopened.dangerous_engine().cancel(&again.id, "test over").unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_fan_out_reaches_every_subscriber() {
    let f = fixture(Default::default());
    let server = f.http().await;
    let token = f.login("dev", &["developer"]);
    let rt = Arc::new(CoderClawRuntime::new(HttpTransport::new(&server.url(), Some(token)).unwrap()));
    let mut req = TaskSubmitRequest::skill("team/echo", json!("fan"));
    req.paused = true;
    let task = rt.submit_task(req).await.unwrap();
    let mut streams = Vec::new();
    for _ in 0..50 {
        streams.push(rt.stream_task_updates(&task.id).await.unwrap());
    }
    f.engine.resume(&task.id).unwrap();
    for mut s in streams {
        let mut last = None;
        while let Some(e) = s.next().await {
            last = Some(e.unwrap());
        }
        assert_eq!(last.unwrap().status, TaskStatus::Completed);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_committed_openapi_document_covers_every_route() {
    let doc: Value = serde_json::from_str(coderclaw::tasks::http_server::OPENAPI_JSON).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for route in [
        "/v1/tasks",
        "/v1/tasks/{id}",
        "/v1/tasks/{id}/events",
        "/v1/tasks/{id}/stream",
        "/v1/tasks/{id}/cancel",
        "/v1/tasks/{id}/abandon",
        "/v1/sessions",
        "/v1/tasks/{id}/input",
        "/v1/tasks/{id}/pause",
        "/v1/tasks/{id}/resume",
        "/v1/agents",
        "/v1/skills",
        "/v1/status",
        "/v1/ws",
    ] {
        assert!(paths.contains_key(route), "{route} is documented");
    }
    // And the other way: everything documented is served.
    let f = fixture(Default::default());
    let server = f.http().await;
    let token = f.login("dev", &["developer"]);
    assert_eq!(coderclaw_e2e::unrouted_operations(&server.url(), Some(&token), &doc).await, Vec::<String>::new());
    let codes = &doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"];
    for code in ["unauthenticated", "forbidden", "not_found", "invalid_request", "conflict", "payload_too_large"] {
        assert!(codes.as_array().unwrap().iter().any(|c| c == code), "{code}");
    }
    let documented: Vec<&str> = doc["components"]["schemas"]["TaskFailure"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let codes: Vec<&str> = coderclaw_core::task::FailureCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(documented, codes, "the task failure codes are documented, in order");
    assert_eq!(
        doc["components"]["schemas"]["TaskState"]["properties"]["error"]["$ref"],
        "#/components/schemas/TaskFailure"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn input_and_session_memory_are_refused_outside_a_task() {
    let host = crate::host();
    let asker = crate::load(&host, "asker");
    let granted = coderclaw_core::Grant::builder().session_memory().build().unwrap();
    let err = host.run(&asker, r#"{"ask": "?"}"#, &granted).await.unwrap_err();
    assert!(err.to_string().contains("no one to ask"), "{err}");
    let err = host.run(&asker, r#"{"count": "k"}"#, &granted).await.unwrap_err();
    assert!(err.to_string().contains("only available to tasks"), "{err}");
    let err = host.run(&asker, r#"{"count": "k"}"#, &coderclaw_core::Grant::deny_all()).await.unwrap_err();
    assert!(err.to_string().contains("no session-memory grant"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_serves_https_that_a_client_trusting_the_ca_can_use_and_others_cannot() {
    let f = fixture(Default::default());
    let token = f.login("dev", &["developer"]);
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = self_signed_localhost(dir.path());
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: Some((cert_file.clone(), key_file)),
        ..ServerConfig::default()
    };
    let server = serve(f.service.clone(), config).await.unwrap();
    assert!(server.url().starts_with("https://"));
    let url = format!("https://localhost:{}", server.addr.port());

    let trusting = HttpTransport::with_ca(&url, Some(token.clone()), Some(&cert_file)).unwrap();
    let rt = CoderClawRuntime::new(trusting);
    let task = rt.submit_task(TaskSubmitRequest::skill("team/echo", json!("tls"))).await.unwrap();
    assert_eq!(rt.wait(&task.id, |_| {}).await.unwrap().status, TaskStatus::Completed);

    // The web PKI roots alone do not vouch for a self-signed server.
    let untrusting = CoderClawRuntime::new(HttpTransport::new(&url, Some(token)).unwrap());
    let err = untrusting.get_status().await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable);
    assert!(err.message.contains("TLS"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_from_another_machine_is_decided_as_from_an_untrusted_device() {
    let f = fixture_with_policy(Default::default(), "enforceTrust: true\nminimumTrustLevel: verified\n");
    let token = f.login("dev", &["developer"]);
    let rt = CoderClawRuntime::new(LocalTransport::new(f.service.clone(), Some(token.clone())));
    let here = f.service.authenticate(Some(&token)).unwrap();
    let local = f.service.submit(&here, TaskSubmitRequest::skill("team/echo", json!(1))).await.unwrap();
    assert!(!local.remote);
    assert_eq!(rt.wait(&local.id, |_| {}).await.unwrap().status, TaskStatus::Completed, "this machine is trusted");

    // The same session, used from another machine (what the HTTP server
    // makes of a non-loopback peer): the token proves the user, not the device.
    let elsewhere = Security::as_remote(here);
    let remote = f.service.submit(&elsewhere, TaskSubmitRequest::skill("team/echo", json!(1))).await.unwrap();
    assert!(remote.remote, "the task records where it came from");
    let done = rt.wait(&remote.id, |_| {}).await.unwrap();
    assert_eq!(done.status, TaskStatus::Failed);
    let failure = done.error.unwrap();
    assert_eq!(failure.code, FailureCode::Denied, "a policy refusal, not a crash: {failure:?}");
    assert_eq!(failure.reasons, ["device-trust"], "with the decision's reason codes: {failure:?}");
    assert!(failure.message.contains("untrusted"), "{failure:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn another_session_cannot_answer_pause_or_watch_a_waiting_task() {
    let f = fixture(Default::default());
    let (alice, bob) = (f.login("alice", &["developer"]), f.login("bob", &["developer"]));
    let as_alice = CoderClawRuntime::new(LocalTransport::new(f.service.clone(), Some(alice)));
    let as_bob = CoderClawRuntime::new(LocalTransport::new(f.service.clone(), Some(bob)));
    let t = as_alice.submit_task(TaskSubmitRequest::skill("team/asker", json!({ "ask": "deploy?" }))).await.unwrap();
    wait_for(&as_alice, &t.id, TaskStatus::Waiting).await;

    assert_eq!(as_bob.respond(&t.id, "yes").await.unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(as_bob.get_task_events(&t.id, 0, 1000).await.unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(as_bob.stream_task_updates(&t.id).await.err().map(|e| e.code), Some(ErrorCode::NotFound));
    assert_eq!(as_bob.cancel_task(&t.id).await.unwrap_err().code, ErrorCode::NotFound);
    let carol = f.service.authenticate(Some(&f.login("carol", &["developer"]))).unwrap();
    assert_eq!(f.service.set_paused(&carol, &t.id, true).unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(as_alice.get_task_state(&t.id).await.unwrap().unwrap().status, TaskStatus::Waiting, "untouched");
    // A refused caller leaves no "allowed" record behind.
    for user in ["bob", "carol"] {
        let records = f.home.audit().query(&AuditFilter { user: Some(user.into()), ..Default::default() }).unwrap();
        assert!(records.iter().all(|r| r.result != "allowed" || r.action.starts_with("auth.")), "{records:?}");
    }

    as_alice.respond(&t.id, "yes").await.unwrap();
    assert_eq!(as_alice.wait(&t.id, |_| {}).await.unwrap().output.unwrap()["answer"], "yes");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scoped_session_uses_the_task_service_inside_its_scope_only() {
    let f = fixture(Default::default());
    let security = f.service.security();
    security
        .dangerous_identity_store()
        .add_user("sam", &["developer".to_owned()], Some("correct horse battery"))
        .unwrap();
    let login = |scope: &std::path::Path| {
        security.login_local("sam", LocalSecret::Password("correct horse battery"), None, Some(scope), None).unwrap().1
    };
    let inside = CoderClawRuntime::new(LocalTransport::new(f.service.clone(), Some(login(f.workspace.path()))));
    let t = inside.submit_task(TaskSubmitRequest::skill("team/echo", json!(1))).await.unwrap();
    assert_eq!(inside.wait(&t.id, |_| {}).await.unwrap().status, TaskStatus::Completed);

    let elsewhere = tempfile::tempdir().unwrap();
    let outside = CoderClawRuntime::new(LocalTransport::new(f.service.clone(), Some(login(elsewhere.path()))));
    let err = outside.submit_task(TaskSubmitRequest::skill("team/echo", json!(1))).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Forbidden);
    assert!(err.message.contains("limited to"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_tells_a_policy_refusal_from_a_guest_crash_by_code_over_http() {
    let f = fixture(Default::default());
    let token = f.login("dev", &["developer"]);
    let server = f.http().await;
    let rt = CoderClawRuntime::new(HttpTransport::new(&server.url(), Some(token.clone())).unwrap());
    let outcome = |id: &'static str, input: Value| {
        let rt = &rt;
        async move {
            let t = rt.submit_task(TaskSubmitRequest::skill(id, input)).await.unwrap();
            let done = rt.wait(&t.id, |_| {}).await.unwrap();
            assert_eq!(done.status, TaskStatus::Failed, "{id}: {done:?}");
            (done.id.clone(), done.error.unwrap())
        }
    };
    let (crashed, crash) = outcome("team/crasher", json!({ "message": "boom" })).await;
    assert_eq!(crash.code, FailureCode::Trap, "{crash:?}");
    assert!(crash.message.contains("boom"), "{crash:?}");
    let (_, hog) = outcome("team/hog", json!({})).await;
    assert_eq!(hog.code, FailureCode::MemoryLimit, "{hog:?}");
    let (_, missing) = outcome("team/nope", json!({})).await;
    assert_eq!(missing.code, FailureCode::NotInstalled, "{missing:?}");
    // The wire form a client that is not ours reads: `error.code`.
    let addr = server.url().trim_start_matches("http://").to_owned();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(format!("/v1/tasks/{crashed}"))
        .header("host", addr)
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
    let task: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(task["error"]["code"], "trap", "{task}");
    assert_eq!(task["status"], "FAILED");
}

#[tokio::test(flavor = "multi_thread")]
async fn either_transport_serves_as_a_dyn_transport_including_pause_and_resume() {
    let f = fixture(Default::default());
    let token = f.login("dev", &["developer"]);
    let server = f.http().await;
    let transports: Vec<(&str, Arc<dyn Transport>)> = vec![
        ("local", Arc::new(LocalTransport::new(f.service.clone(), Some(token.clone())))),
        ("http", Arc::new(HttpTransport::new(&server.url(), Some(token)).unwrap())),
    ];
    for (name, t) in transports {
        let req = TaskSubmitRequest { paused: true, ..TaskSubmitRequest::skill("team/echo", json!({ "via": name })) };
        let task = t.submit_task(req).await.unwrap();
        let paused = t.get_task_state(&task.id).await.unwrap().unwrap();
        assert!(paused.paused && paused.status == TaskStatus::Pending, "{name}: {paused:?}");
        let again = t.set_paused(&task.id, true).await.unwrap_err();
        assert_eq!(again.code, ErrorCode::Conflict, "{name}: pausing twice is a conflict: {again}");
        let resumed = t.set_paused(&task.id, false).await.unwrap();
        assert!(!resumed.paused, "{name}: {resumed:?}");
        let mut stream = t.stream_task_updates(&task.id).await.unwrap();
        while let Some(e) = stream.next().await {
            e.unwrap();
        }
        let done = t.get_task_state(&task.id).await.unwrap().unwrap();
        assert_eq!(done.status, TaskStatus::Completed, "{name}: {done:?}");
        assert_eq!(done.output, Some(json!({ "echo": { "via": name } })), "{name}");
    }
}

/// One raw GET with `token` from source address `from`: status and the
/// Retry-After header.
async fn raw_status(server: std::net::SocketAddr, from: &str, token: &str) -> (u16, Option<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut tcp = socket.connect(server).await.unwrap();
    let req =
        format!("GET /v1/status HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut reply = String::new();
    tcp.read_to_string(&mut reply).await.unwrap();
    let status = reply.split(' ').nth(1).unwrap().parse().unwrap();
    let retry = reply.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("retry-after: ").map(str::to_owned));
    (status, retry)
}

#[tokio::test(flavor = "multi_thread")]
async fn five_thousand_bad_tokens_are_throttled_per_peer_and_audited_in_aggregate() {
    let f = fixture(Default::default());
    let good = f.login("dev", &["developer"]);
    let server = f.http().await;
    let bad = CoderClawRuntime::new(HttpTransport::new(&server.url(), Some("ccs_guessed".into())).unwrap());
    let before = f.home.audit().query(&AuditFilter::default()).unwrap().len();
    let mut codes = std::collections::BTreeMap::new();
    for _ in 0..5000 {
        *codes.entry(bad.get_status().await.unwrap_err().code.as_str()).or_insert(0) += 1;
    }
    assert_eq!(codes.get("unauthenticated"), Some(&10), "{codes:?}");
    assert_eq!(codes.get("rate_limited"), Some(&4990), "{codes:?}");
    let written = f.home.audit().query(&AuditFilter::default()).unwrap().len() - before;
    assert!(written <= 5, "{written} audit records for 5,000 bad tokens");
    let throttle = f.home.audit().query(&AuditFilter { action: Some("auth.throttle".into()), ..Default::default() });
    assert!(throttle.unwrap().iter().any(|r| r.reason.contains("10 failed authentications")));

    // Over HTTP: 429 with Retry-After, even for a good token from that peer;
    // another peer (127.0.0.2) is served.
    let (status, retry) = raw_status(server.addr, "127.0.0.1", &good).await;
    assert_eq!(status, 429);
    assert!(retry.is_some_and(|s| (1..=60).contains(&s.trim().parse::<u64>().unwrap())));
    assert_eq!(raw_status(server.addr, "127.0.0.2", &good).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_waiting_for_input_give_up_their_slot_and_take_one_back_when_answered() {
    let f = fixture(EngineConfig { max_concurrent_tasks: 2, ..Default::default() });
    let alice = CoderClawRuntime::new(LocalTransport::new(f.service.clone(), Some(f.login("alice", &["developer"]))));
    let bob = CoderClawRuntime::new(LocalTransport::new(f.service.clone(), Some(f.login("bob", &["developer"]))));
    // Alice fills every slot with tasks that wait for a person.
    let mut waiting = Vec::new();
    for i in 0..2 {
        let t = alice.submit_task(TaskSubmitRequest::skill("team/asker", json!({ "ask": format!("q{i}") }))).await;
        waiting.push(t.unwrap().id);
    }
    for id in &waiting {
        wait_for(&alice, id, TaskStatus::Waiting).await;
    }
    // Bob is not starved: his task runs while hers wait.
    let echo = bob.submit_task(TaskSubmitRequest::skill("team/echo", json!(1))).await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(20), bob.wait(&echo.id, |_| {})).await;
    assert_eq!(done.expect("bob's task ran while alice's waited").unwrap().status, TaskStatus::Completed);
    // Answered, hers take slots back and finish.
    for id in &waiting {
        alice.respond(id, "yes").await.unwrap();
    }
    for id in &waiting {
        let done = alice.wait(id, |_| {}).await.unwrap();
        assert_eq!(done.output, Some(json!({ "answer": "yes" })));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn paused_and_waiting_tasks_expire() {
    let f = fixture(EngineConfig { idle_expiry: Duration::from_millis(300), ..Default::default() });
    let rt = CoderClawRuntime::new(LocalTransport::new(f.service.clone(), None));
    let asking = rt.submit_task(TaskSubmitRequest::skill("team/asker", json!({ "ask": "anyone?" }))).await.unwrap();
    let mut paused = TaskSubmitRequest::skill("team/echo", json!(1));
    paused.paused = true;
    let paused = rt.submit_task(paused).await.unwrap();
    for id in [&asking.id, &paused.id] {
        let done = tokio::time::timeout(Duration::from_secs(10), rt.wait(id, |_| {})).await.unwrap().unwrap();
        assert_eq!(done.status, TaskStatus::Failed);
        let error = done.error.unwrap();
        assert_eq!(error.code, coderclaw_core::task::FailureCode::Expired, "{error:?}");
    }
    assert_eq!(rt.respond(&asking.id, "late").await.unwrap_err().code, ErrorCode::Conflict);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_session_cannot_hold_more_than_its_quota_of_unfinished_tasks() {
    let config =
        EngineConfig { max_unfinished_per_session: 3, max_input_bytes_per_session: 10_000, ..Default::default() };
    let f = fixture(config);
    let alice = CoderClawRuntime::new(LocalTransport::new(f.service.clone(), Some(f.login("alice", &["developer"]))));
    let bob = CoderClawRuntime::new(LocalTransport::new(f.service.clone(), Some(f.login("bob", &["developer"]))));
    let paused = |input: serde_json::Value| {
        let mut r = TaskSubmitRequest::skill("team/echo", input);
        r.paused = true;
        r
    };
    for _ in 0..3 {
        alice.submit_task(paused(json!(1))).await.unwrap();
    }
    let err = alice.submit_task(paused(json!(1))).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::QuotaExceeded, "{err}");
    assert!(err.message.contains("3 unfinished tasks"), "{err}");
    // Another session is not affected; input bytes count too.
    bob.submit_task(paused(json!(1))).await.unwrap();
    let err = bob.submit_task(paused(json!("x".repeat(20_000)))).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::QuotaExceeded, "{err}");
    assert!(err.message.contains("bytes of input"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_capability_denied_inside_a_task_is_an_audit_record_naming_skill_task_and_reason() {
    let f = fixture(Default::default());
    let rt = CoderClawRuntime::new(LocalTransport::new(f.service.clone(), None));
    let input = json!({ "program": "env", "args": ["touch", "/tmp/x"] });
    let task = rt.submit_task(TaskSubmitRequest::skill("team/sleeper", input)).await.unwrap();
    assert_eq!(rt.wait(&task.id, |_| {}).await.unwrap().status, TaskStatus::Failed);
    let denials = f.home.audit().query(&AuditFilter { action: Some("capability.denied".into()), ..Default::default() });
    let denials = denials.unwrap();
    let record = denials.iter().find(|r| r.metadata.contains(&task.id)).expect("the denial is audited");
    assert_eq!(record.resource_id, "team/sleeper");
    assert_eq!(record.result, "denied");
    assert!(
        record.reason.contains("shell env touch /tmp/x") && record.reason.contains("not in this skill's shell grant"),
        "{record:?}"
    );
}

/// Submits echo for `rt` and waits for its end.
async fn echo_once<T: Transport>(rt: &CoderClawRuntime<T>) -> coderclaw_core::task::TaskState {
    let t = rt.submit_task(TaskSubmitRequest::skill("team/echo", json!("x"))).await.unwrap();
    rt.wait(&t.id, |_| {}).await.unwrap()
}

/// The task failed with `code`; its message.
fn failed_with(done: coderclaw_core::task::TaskState, code: FailureCode) -> String {
    let error = done.error.expect("an error");
    assert_eq!((done.status, error.code), (TaskStatus::Failed, code), "{}", error.message);
    error.message
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_revoked_by_another_process_stops_the_very_next_task() {
    let f = fixture(EngineConfig::default());
    let rt = CoderClawRuntime::new(LocalTransport::new(f.service.clone(), None));
    assert_eq!(echo_once(&rt).await.status, TaskStatus::Completed, "verified once, then cached");
    assert_eq!(echo_once(&rt).await.status, TaskStatus::Completed);
    // Another handle on the state directory: its own SQLite connection, as
    // `coderclaw trust revoke` in another process has.
    let other = Home::open(f.home.root()).unwrap();
    other.trust_revoke(&team_key().public().id().to_string()).unwrap();
    let message = failed_with(echo_once(&rt).await, FailureCode::Denied);
    assert!(message.contains("revoked"), "{message}");
    failed_with(echo_once(&rt).await, FailureCode::Denied);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_package_file_replaced_on_disk_is_refused_at_the_next_task() {
    let f = fixture(EngineConfig::default());
    let rt = CoderClawRuntime::new(LocalTransport::new(f.service.clone(), None));
    assert_eq!(echo_once(&rt).await.status, TaskStatus::Completed);
    let digest = f.home.info("team/echo").unwrap().digest;
    let file = f.home.root().join("packages").join(format!("{}.ccpkg", digest.to_hex()));
    let original = std::fs::read(&file).unwrap();

    // 1. Written in place, same length, one byte of the component changed.
    let mut tampered = original.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0xff;
    std::fs::write(&file, &tampered).unwrap();
    failed_with(echo_once(&rt).await, FailureCode::Denied);
    std::fs::write(&file, &original).unwrap();
    assert_eq!(echo_once(&rt).await.status, TaskStatus::Completed, "the installed bytes back");

    // 2. Renamed over it: another validly signed package (a newer version).
    let manifest = Manifest::from_toml(
        "id = \"team/echo\"\nversion = \"2.0.0\"\nkind = \"skill\"\ndescription = \"echo\"\n[input-schema]\ndescription = \"any\"\n",
        "team/echo",
    )
    .unwrap();
    let newer = Package::sign(&manifest, std::fs::read(guest("echo")).unwrap(), &team_key(), 1_763_000_000);
    let swap = file.with_extension("swap");
    std::fs::write(&swap, newer.to_bytes()).unwrap();
    std::fs::rename(&swap, &file).unwrap();
    let message = failed_with(echo_once(&rt).await, FailureCode::Denied);
    assert!(message.contains("2.0.0"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_revoked_or_expired_elsewhere_is_refused_at_the_next_task() {
    let f = fixture(EngineConfig::default());
    let identity_db = f.home.root().join("identity.db");
    for how in ["revoked", "expired"] {
        let user = format!("dev-{how}");
        let token = f.login(&user, &["developer"]);
        let rt = CoderClawRuntime::new(LocalTransport::new(f.service.clone(), Some(token)));
        assert_eq!(echo_once(&rt).await.status, TaskStatus::Completed);
        let mut later = TaskSubmitRequest::skill("team/echo", json!("later"));
        later.paused = true;
        let later = rt.submit_task(later).await.unwrap();
        // As the sqlite3 shell or another coderclaw process would: the
        // triggers count the change, so the cached session is dropped.
        let change = if how == "revoked" {
            "UPDATE sessions SET revoked_at_ms = 1 WHERE user = ?1"
        } else {
            "UPDATE sessions SET expires_at_ms = 1 WHERE user = ?1"
        };
        assert_eq!(rusqlite::Connection::open(&identity_db).unwrap().execute(change, [&user]).unwrap(), 1);
        let refused = rt.submit_task(TaskSubmitRequest::skill("team/echo", json!("now"))).await.unwrap_err();
        assert_eq!(refused.code, ErrorCode::Unauthenticated, "{how}: {}", refused.message);
        assert!(refused.message.contains(how), "{}", refused.message);
        // The task submitted before is refused when it would start.
        f.engine.resume(&later.id).unwrap();
        let start = Instant::now();
        let mut done = f.engine.get(&later.id).unwrap();
        while !done.status.is_terminal() {
            assert!(start.elapsed() < Duration::from_secs(30), "never finished");
            tokio::time::sleep(Duration::from_millis(10)).await;
            done = f.engine.get(&later.id).unwrap();
        }
        failed_with(done, FailureCode::Unauthenticated);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_file_edited_while_running_holds_from_the_next_task() {
    let f = fixture(EngineConfig::default());
    let rt = CoderClawRuntime::new(LocalTransport::new(f.service.clone(), None));
    assert_eq!(echo_once(&rt).await.status, TaskStatus::Completed);
    let org = f.home.root().join("org-policy.yaml");
    let repo = f.workspace.path().join(".coderClaw/security.yaml");
    let config = f.home.root().join("config.yaml");

    // The organisation denies the skill: created, then removed.
    std::fs::write(&org, "organizationPolicy:\n  deniedSkills: [team/echo]\n").unwrap();
    let message = failed_with(echo_once(&rt).await, FailureCode::Denied);
    assert!(message.contains("team/echo"), "{message}");
    std::fs::remove_file(&org).unwrap();
    assert_eq!(echo_once(&rt).await.status, TaskStatus::Completed, "the denial is gone with its file");

    // The repository restricts it to a role the local user does not hold.
    let before = std::fs::read_to_string(&repo).unwrap();
    std::fs::write(&repo, format!("{before}  - skillId: team/echo\n    allowedRoles: [admin]\n")).unwrap();
    failed_with(echo_once(&rt).await, FailureCode::Denied);
    std::fs::write(&repo, &before).unwrap();
    assert_eq!(echo_once(&rt).await.status, TaskStatus::Completed);

    // The configuration starts requiring a session: the session-less
    // submission is refused before anything is stored.
    std::fs::write(&config, "security:\n  requireAuth: true\n").unwrap();
    let refused = rt.submit_task(TaskSubmitRequest::skill("team/echo", json!("x"))).await.unwrap_err();
    assert_eq!(refused.code, ErrorCode::Unauthenticated, "{}", refused.message);

    // A configuration that does not parse and never had a good version:
    // nothing is allowed until it is fixed.
    std::fs::remove_file(&config).unwrap();
    std::fs::remove_dir_all(f.home.root().join("policy/last-good")).unwrap();
    std::fs::write(&config, "security: [unclosed\n").unwrap();
    let refused = rt.submit_task(TaskSubmitRequest::skill("team/echo", json!("x"))).await.unwrap_err();
    assert!(refused.message.contains("config.yaml"), "{}", refused.message);
    // Remembered: refused again without reading or auditing it again.
    let loads = || {
        let filter = AuditFilter { action: Some("policy.load".into()), ..Default::default() };
        f.home.audit().query(&filter).unwrap().len()
    };
    let audited = loads();
    for _ in 0..20 {
        let refused = rt.submit_task(TaskSubmitRequest::skill("team/echo", json!("x"))).await.unwrap_err();
        assert!(refused.message.contains("no policy in force"), "{}", refused.message);
    }
    assert_eq!(loads(), audited, "a broken file is read and audited once, not per call");
    // An edit that truncates and then writes, seen in between: the empty
    // file where a policy was is read again before it counts as defaults.
    std::fs::write(&org, "organizationPolicy:\n  deniedSkills: [team/echo]\n").unwrap();
    std::fs::remove_file(&config).unwrap();
    failed_with(echo_once(&rt).await, FailureCode::Denied);
    std::fs::write(&org, "").unwrap();
    let writer = {
        let org = org.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            std::fs::write(&org, "organizationPolicy:\n  deniedSkills: [team/echo, team/other]\n").unwrap();
        })
    };
    failed_with(echo_once(&rt).await, FailureCode::Denied);
    writer.join().unwrap();
    std::fs::remove_file(&org).unwrap();
    // An empty file that never held a policy is the defaults.
    std::fs::write(&config, "").unwrap();
    assert_eq!(echo_once(&rt).await.status, TaskStatus::Completed, "fixed");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_client_sees_an_outcome_before_its_audit_record_is_on_disk() {
    let f = fixture(EngineConfig { max_concurrent_tasks: 32, ..Default::default() });
    let rt = Arc::new(CoderClawRuntime::new(LocalTransport::new(f.service.clone(), None)));
    let mut clients = Vec::new();
    for i in 0..200 {
        let (rt, home) = (rt.clone(), f.home.clone());
        clients.push(tokio::spawn(async move {
            // Every other one names a skill that is not installed and fails
            // at plan time: both outcomes count.
            let skill = if i % 2 == 0 { "team/echo" } else { "team/not-installed" };
            let t = rt.submit_task(TaskSubmitRequest::skill(skill, json!(i))).await.unwrap();
            let mut updates = rt.stream_task_updates(&t.id).await.unwrap();
            while let Some(e) = updates.next().await {
                let e = e.unwrap();
                if !e.status.is_terminal() {
                    continue;
                }
                let action = format!("task.{}", e.status.as_str().to_ascii_lowercase());
                let filter = AuditFilter { action: Some(action.clone()), ..Default::default() };
                let on_disk = home.audit().query(&filter).unwrap();
                assert!(on_disk.iter().any(|r| r.resource_id == t.id), "{} streamed {action} before its record", t.id);
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nested_skill_whose_key_is_revoked_is_refused_at_the_agents_next_task() {
    let f = fixture(EngineConfig::default());
    // The agent and its nested skills are signed by different keys, so
    // revoking one leaves the agent itself loadable.
    let tools = SecretKey::from_seed(*b"coderclaw test key: tools-------");
    f.home.trust_add("team", &tools.public()).unwrap();
    f.home.dangerous_install_ungated(&crate::signed::package("code-reviewer", &team_key())).unwrap();
    for skill in ["security-scanner", "word-count"] {
        f.home.dangerous_install_ungated(&crate::signed::package(skill, &tools)).unwrap();
    }
    let rt = CoderClawRuntime::new(LocalTransport::new(f.service.clone(), None));
    let review = || async {
        let t = rt.submit_task(TaskSubmitRequest::agent("team/code-reviewer", json!({}))).await.unwrap();
        rt.wait(&t.id, |_| {}).await.unwrap()
    };
    let first = review().await;
    assert_eq!(first.status, TaskStatus::Completed, "{:?}", first.error);
    f.home.trust_revoke(&tools.public().id().to_string()).unwrap();
    let second = review().await;
    let seen = format!("{:?} {:?}", second.error, second.output);
    assert!(seen.contains("revoked"), "the nested call is refused for the revoked key: {seen}");
}
