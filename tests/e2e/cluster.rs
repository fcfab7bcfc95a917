//! The distributed-cluster mode in-process: engines as nodes of one
//! cluster on a real PostgreSQL, sharing a state directory. The task
//! scenarios run across two nodes in `tasks::cluster`; the multi-process
//! faults (kill -9, SIGSTOP) are in the CLI tests (`cli/tests/cluster.rs`).

use crate::tasks::{Store, TEST_LEASE, fixture_on, fixture_on_cluster, service_on_store};
use coderclaw::audit::{AuditError, AuditSigning, Signers};
use coderclaw::tasks::store::{ClusterStore, Lease, PgTaskStore, StoredTask, Write};
use coderclaw::tasks::{CoderClawRuntime, EngineConfig, LocalTransport, TaskService, TaskStore};
use coderclaw_core::task::{
    FailureCode, TaskEventKind, TaskState, TaskStatus, TaskSubmitRequest, TaskTarget, TaskUpdateEvent,
};
use coderclaw_e2e::postgres::Postgres;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

async fn sql(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// Tasks with other than exactly one final status event.
async fn not_ended_once(db: &tokio_postgres::Client) -> Vec<(String, i64)> {
    db.query(
        "SELECT t.id, (SELECT COUNT(*) FROM task_events e WHERE e.task_id = t.id AND e.event = 'status'
                AND e.status IN ('COMPLETED', 'FAILED', 'CANCELLED')) AS n
         FROM tasks t",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .filter(|(_, n): &(String, i64)| *n != 1)
    .collect()
}

/// Final tasks whose outcome is not recorded in the cluster's audit log
/// exactly once, as the status it ended in (`task.completed`, ...), with
/// what the log holds for them.
pub(crate) async fn outcomes_not_recorded_once(db: &tokio_postgres::Client) -> Vec<(String, String, Vec<String>)> {
    db.query(
        "SELECT t.id, t.status, ARRAY(SELECT a.action FROM audit a WHERE a.resource_type = 'task'
                AND a.resource_id = t.id AND a.action IN ('task.completed', 'task.failed', 'task.cancelled')
                ORDER BY a.seq)
         FROM tasks t WHERE t.status IN ('COMPLETED', 'FAILED', 'CANCELLED')",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .filter(|(_, status, actions): &(String, String, Vec<String>)| {
        *actions != [format!("task.{}", status.to_ascii_lowercase())]
    })
    .collect()
}

fn local(service: &Arc<TaskService>) -> CoderClawRuntime<LocalTransport> {
    CoderClawRuntime::new(LocalTransport::new(service.clone(), None))
}

/// Both nodes claim from the one queue, and every task ends exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn both_nodes_claim_from_one_queue_and_each_task_ends_once() {
    let Some(pg) = Postgres::start() else { return };
    let f = fixture_on_cluster(EngineConfig { max_concurrent_tasks: 4, ..Default::default() }, &pg.url());
    let rt = local(&f.service);
    let mut ids = Vec::new();
    for i in 0..200 {
        ids.push(rt.submit_task(TaskSubmitRequest::skill("team/echo", json!({ "i": i }))).await.unwrap().id);
    }
    for id in &ids {
        let done = rt.wait(id, |_| {}).await.unwrap();
        assert_eq!(done.status, TaskStatus::Completed, "{:?}", done.error);
    }
    let db = sql(&pg.url()).await;
    let by_node: Vec<(String, i64)> = db
        .query("SELECT node, COUNT(*) FROM tasks GROUP BY node ORDER BY node", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, Option<String>>(0).unwrap_or_default(), r.get(1)))
        .collect();
    assert_eq!(by_node.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["a", "b"], "{by_node:?}");
    assert!(by_node.iter().all(|(_, n)| *n > 0), "{by_node:?}");
    assert_eq!(not_ended_once(&db).await, vec![]);
    assert_eq!(outcomes_not_recorded_once(&db).await, vec![]);
}

/// Sessions take turns across the cluster: a session that queued 6 tasks
/// does not hold back another's 2, whichever node claims them.
#[tokio::test(flavor = "multi_thread")]
async fn sessions_take_turns_across_the_cluster_and_pause_holds_on_every_node() {
    let Some(pg) = Postgres::start() else { return };
    // Nodes a and b take no work: everything queues.
    let f = fixture_on_cluster(EngineConfig { run_queue: false, ..Default::default() }, &pg.url());
    let alice = CoderClawRuntime::new(LocalTransport::new(f.service.clone(), Some(f.login("alice", &["developer"]))));
    let bob_token = f.login("bob", &["developer"]);
    let bob = CoderClawRuntime::new(LocalTransport::new(f.peers[0].clone(), Some(bob_token.clone())));
    let mut order = Vec::new();
    for i in 0..6 {
        order.push(alice.submit_task(TaskSubmitRequest::skill("team/echo", json!({ "a": i }))).await.unwrap().id);
    }
    let b1 = bob.submit_task(TaskSubmitRequest::skill("team/echo", json!({ "b": 1 }))).await.unwrap().id;
    let held = bob.submit_task(TaskSubmitRequest::skill("team/echo", json!({ "b": 2 }))).await.unwrap().id;
    // Paused through node b, resumed through node a later: no node runs it meanwhile.
    assert!(bob.pause_task(&held).await.unwrap().paused);
    let bob_on_a = CoderClawRuntime::new(LocalTransport::new(f.service.clone(), Some(bob_token)));
    let refused = bob_on_a.pause_task(&held).await.unwrap_err();
    assert!(refused.message.contains("already paused"), "{refused:?}");

    // Node c runs one task at a time.
    let config = EngineConfig { max_concurrent_tasks: 1, ..Default::default() };
    let _c = service_on_store(&f.home, f.workspace.path(), config, Some(Store::Cluster(&pg.url(), "c", TEST_LEASE)));
    let done = alice.wait(&order[5], |_| {}).await.unwrap();
    assert_eq!(done.status, TaskStatus::Completed);
    let started = |id: &str| f.engine.get(id).unwrap().started_at_ms;
    let b1_started = bob.wait(&b1, |_| {}).await.unwrap().started_at_ms.unwrap();
    assert!(
        b1_started <= started(&order[1]).unwrap(),
        "bob's first task waited behind alice's second: sessions do not take turns"
    );
    assert_eq!(f.engine.get(&held).unwrap().status, TaskStatus::Pending, "a paused task never runs");
    bob_on_a.resume_task(&held).await.unwrap();
    let resumed = bob.wait(&held, |_| {}).await.unwrap();
    assert_eq!(resumed.status, TaskStatus::Completed);
}

/// A task built by hand, as a submission stores it.
fn queued_task(id: &str) -> (StoredTask, TaskUpdateEvent) {
    let state = TaskState {
        id: id.to_owned(),
        description: String::new(),
        status: TaskStatus::Pending,
        target: TaskTarget::Skill("team/echo".into()),
        input: json!({}),
        session_id: "local".into(),
        user: "dev".into(),
        remote: false,
        parent_task_id: None,
        metadata: Default::default(),
        paused: false,
        workspace: None,
        progress: None,
        prompt: None,
        output: None,
        error: None,
        created_at_ms: 1,
        started_at_ms: None,
        completed_at_ms: None,
    };
    let event = status_event(&state, 1, TaskEventKind::Submitted);
    (StoredTask { state, resumable: false, last_seq: 1, lease: Lease::default() }, event)
}

fn status_event(s: &TaskState, seq: u64, kind: TaskEventKind) -> TaskUpdateEvent {
    TaskUpdateEvent {
        task_id: s.id.clone(),
        seq,
        timestamp_ms: 1,
        event: kind,
        status: s.status,
        progress: None,
        message: String::new(),
        data: None,
    }
}

/// A node whose lease ran out (frozen, cut off) while it held a task: the
/// task is reclaimed (FAILED `node-lost`: not resumable), and the node's
/// late writes are refused by fencing, its row and history unchanged; its
/// next heartbeat learns it was lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_late_write_from_a_node_that_lost_its_lease_is_fenced() {
    let Some(pg) = Postgres::start() else { return };
    let fenced = Arc::new(Mutex::new(Vec::new()));
    let seen = fenced.clone();
    let on_commit = Arc::new(move |_: Vec<TaskUpdateEvent>, f: Vec<String>| seen.lock().unwrap().extend(f));
    let a = PgTaskStore::open_cluster(&pg.url(), "a", TEST_LEASE, AuditSigning::default(), on_commit).unwrap();
    let b =
        PgTaskStore::open_cluster(&pg.url(), "b", TEST_LEASE, AuditSigning::default(), Arc::new(|_, _| {})).unwrap();
    let refused =
        PgTaskStore::open_cluster(&pg.url(), "a", TEST_LEASE, AuditSigning::default(), Arc::new(|_, _| {})).unwrap();
    a.join(4).unwrap();
    b.join(4).unwrap();
    let e = ClusterStore::join(&*refused, 4).unwrap_err().to_string();
    assert!(e.contains("node name `a` is in use by another running node"), "{e}");

    let (task, submitted) = queued_task("t1");
    let stored = a.queue_durable(Write::Task { task: Box::new(task), event: Some(submitted) }).unwrap();
    stored.await.unwrap().unwrap();
    let claimed = a.claim(4).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].lease, Lease { node: Some("a".into()), attempt: 1 });
    assert!(b.claim(4).await.unwrap().is_empty(), "a held task is nobody else's");
    let mut running = claimed[0].clone();
    running.state.status = TaskStatus::Running;
    running.last_seq += 1;
    let event = status_event(&running.state, running.last_seq, TaskEventKind::Status);
    let write = a.queue_durable(Write::Task { task: Box::new(running.clone()), event: Some(event) }).unwrap();
    write.await.unwrap().unwrap();

    // a stops renewing; its lease runs out.
    let db = sql(&pg.url()).await;
    db.execute("UPDATE cluster_nodes SET lease_until = now() - interval '1 second' WHERE name = 'a'", &[])
        .await
        .unwrap();
    let reclaimed = b.reclaim().await.unwrap();
    assert_eq!(reclaimed.len(), 1);
    let failed = &reclaimed[0].task.state;
    assert_eq!(
        (failed.status, failed.error.as_ref().map(|e| e.code)),
        (TaskStatus::Failed, Some(FailureCode::NodeLost))
    );
    assert!(failed.error.as_ref().unwrap().message.contains("node a was lost"), "{failed:?}");

    // a, unaware, finishes the task it believes it holds.
    let mut late = running;
    late.state.status = TaskStatus::Completed;
    late.state.output = Some(json!({ "late": true }));
    let event = status_event(&late.state, late.last_seq + 1, TaskEventKind::Status);
    let note = TaskUpdateEvent { seq: late.last_seq + 2, event: TaskEventKind::Log, ..event.clone() };
    let write = a.queue_durable(Write::Task { task: Box::new(late.clone()), event: Some(event) }).unwrap();
    let log = a.queue_durable(Write::Event { event: note, lease: late.lease.clone() }).unwrap();
    write.await.unwrap().unwrap();
    log.await.unwrap().unwrap();
    // Reported right after the acknowledgements.
    let reported_by = Instant::now() + Duration::from_secs(5);
    while fenced.lock().unwrap().is_empty() && Instant::now() < reported_by {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut reported = fenced.lock().unwrap().clone();
    reported.dedup();
    assert_eq!(reported, ["t1"], "the fenced task is reported to the engine");
    let now = b.get("t1").unwrap().unwrap();
    assert_eq!(now.state.status, TaskStatus::Failed);
    assert_eq!(now.state.output, None);
    assert_eq!(not_ended_once(&db).await, vec![]);
    let kinds: Vec<_> = b.events("t1", 0, 100).unwrap().iter().map(|e| (e.event, e.status)).collect();
    let expected = [
        (TaskEventKind::Submitted, TaskStatus::Pending),
        (TaskEventKind::Status, TaskStatus::Running),
        (TaskEventKind::Status, TaskStatus::Failed),
    ];
    assert_eq!(kinds, expected, "nothing from a after it lost the task");
    // The outcome recorded is the reclaim's, in its transaction; a's
    // fenced completion recorded nothing.
    let recorded: Vec<String> = db
        .query("SELECT action FROM audit WHERE resource_id = 't1' ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(recorded, ["task.failed"]);
    assert!(!a.heartbeat().await.unwrap(), "a learns it was declared lost");
    assert_eq!(a.join(4).unwrap().len(), 0, "and joins again, holding nothing");
    assert!(a.heartbeat().await.unwrap());
}

/// A node lost while holding a WAITING task (not resumable) and a running
/// resumable one: the first ends FAILED `node-lost`, the second runs again
/// from the start (a `recovered` event says why), within two leases.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_nodes_tasks_are_reclaimed_by_the_rules_within_two_leases() {
    let Some(pg) = Postgres::start() else { return };
    // a runs everything; b only watches (and reclaims).
    let f = fixture_on_cluster(EngineConfig { run_queue: false, ..Default::default() }, &pg.url());
    let a = service_on_store(
        &f.home,
        f.workspace.path(),
        Default::default(),
        Some(Store::Cluster(&pg.url(), "runner", TEST_LEASE)),
    );
    let on_a = local(&a);
    let asking = on_a.submit_task(TaskSubmitRequest::skill("team/asker", json!({ "ask": "ok?" }))).await.unwrap();
    let spinning = on_a.submit_task(TaskSubmitRequest::skill("team/resumable-spin", json!({}))).await.unwrap();
    let started = Instant::now();
    while on_a.get_task_state(&asking.id).await.unwrap().unwrap().status != TaskStatus::Waiting
        || on_a.get_task_state(&spinning.id).await.unwrap().unwrap().status != TaskStatus::Running
    {
        assert!(started.elapsed() < Duration::from_secs(30), "never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let db = sql(&pg.url()).await;
    let lost = Instant::now();
    // Declared lost, as a reclaimer does once its lease ran out (only
    // expiring the lease would race the runner's next heartbeat, which
    // renews it; expiry itself is tested above, with no heartbeat running).
    db.execute(
        "UPDATE cluster_nodes SET state = 'lost', lease_until = now() - interval '1 millisecond' WHERE name = 'runner'",
        &[],
    )
    .await
    .unwrap();
    // Through node a of the fixture, which never held either.
    let watcher = local(&f.service);
    let failed = watcher.wait(&asking.id, |_| {}).await.unwrap();
    let took = lost.elapsed();
    assert_eq!(failed.error.as_ref().map(|e| e.code), Some(FailureCode::NodeLost), "{failed:?}");
    assert!(took <= TEST_LEASE * 2, "reclaimed after {took:?}, lease {TEST_LEASE:?}");
    let history = watcher.get_task_events(&spinning.id, 0, 1000).await.unwrap();
    assert!(
        history.iter().any(|e| e.event == TaskEventKind::Recovered && e.message.contains("node runner was lost")),
        "{history:?}"
    );
    // The runner noticed, stopped its runs, joined again, and (the only
    // node running tasks) runs the resumable one again.
    let again = Instant::now();
    loop {
        let attempt: i64 =
            db.query_one("SELECT attempt FROM tasks WHERE id = $1", &[&spinning.id]).await.unwrap().get(0);
        let status = watcher.get_task_state(&spinning.id).await.unwrap().unwrap().status;
        if attempt >= 3 && status == TaskStatus::Running {
            break;
        }
        assert!(again.elapsed() < Duration::from_secs(30), "never re-run (attempt {attempt}, {status})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(watcher.cancel_task(&spinning.id).await.unwrap(), "cancelled across nodes");
    let cancelled = watcher.wait(&spinning.id, |_| {}).await.unwrap();
    assert_eq!(cancelled.status, TaskStatus::Cancelled);
    assert_eq!(not_ended_once(&db).await, vec![]);
    assert_eq!(outcomes_not_recorded_once(&db).await, vec![]);
}

/// A node shutting down hands its running resumable task to the others at
/// once (its lease released), long before the lease would run out.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_shutting_down_releases_its_resumable_task_at_once() {
    let Some(pg) = Postgres::start() else { return };
    let lease = Duration::from_secs(30);
    let f = crate::tasks::fixture_on_cluster_with(
        EngineConfig { run_queue: false, ..Default::default() },
        &pg.url(),
        lease,
    );
    let runner = service_on_store(
        &f.home,
        f.workspace.path(),
        Default::default(),
        Some(Store::Cluster(&pg.url(), "runner", lease)),
    );
    let on_runner = local(&runner);
    let task = on_runner.submit_task(TaskSubmitRequest::skill("team/resumable-spin", json!({}))).await.unwrap();
    let started = Instant::now();
    while on_runner.get_task_state(&task.id).await.unwrap().unwrap().status != TaskStatus::Running {
        assert!(started.elapsed() < Duration::from_secs(30), "never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let taker = service_on_store(
        &f.home,
        f.workspace.path(),
        Default::default(),
        Some(Store::Cluster(&pg.url(), "taker", lease)),
    );
    let stopping = Instant::now();
    let report = runner.shutdown(Duration::from_millis(100), std::future::pending()).await.unwrap();
    assert_eq!(report.requeued, std::slice::from_ref(&task.id));
    let db = sql(&pg.url()).await;
    loop {
        let row = db.query_one("SELECT node FROM tasks WHERE id = $1", &[&task.id]).await.unwrap();
        if row.get::<_, Option<String>>(0).as_deref() == Some("taker")
            && local(&taker).get_task_state(&task.id).await.unwrap().unwrap().status == TaskStatus::Running
        {
            break;
        }
        assert!(stopping.elapsed() < Duration::from_secs(10), "not taken over (lease {lease:?})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let nodes: Vec<(String, String)> = db
        .query("SELECT name, state FROM cluster_nodes ORDER BY name", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(nodes.contains(&("runner".to_owned(), "left".to_owned())), "{nodes:?}");
    assert!(local(&taker).cancel_task(&task.id).await.unwrap());
    let cancelled = local(&taker).wait(&task.id, |_| {}).await.unwrap();
    assert_eq!(cancelled.status, TaskStatus::Cancelled);
    assert_eq!(not_ended_once(&db).await, vec![]);
}

/// A task the database says a node holds, which that node does not run (a
/// claim whose reply was lost): the node gives it up by the reclaim rules
/// within a lease, instead of holding it for ever.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_a_node_holds_but_does_not_run_is_given_up() {
    let Some(pg) = Postgres::start() else { return };
    // Nobody claims: both nodes only watch.
    let f = fixture_on_cluster(EngineConfig { run_queue: false, ..Default::default() }, &pg.url());
    let rt = local(&f.service);
    let queued = rt.submit_task(TaskSubmitRequest::skill("team/echo", json!({}))).await.unwrap();
    let started = rt.submit_task(TaskSubmitRequest::skill("team/echo", json!({}))).await.unwrap();
    let db = sql(&pg.url()).await;
    // As if node a had claimed both (and started one) and lost the replies.
    db.execute("UPDATE tasks SET node = 'a', attempt = attempt + 1 WHERE id = $1", &[&queued.id]).await.unwrap();
    db.execute("UPDATE tasks SET node = 'a', attempt = attempt + 1, status = 'RUNNING' WHERE id = $1", &[&started.id])
        .await
        .unwrap();
    let given_up = Instant::now();
    loop {
        let node: Option<String> =
            db.query_one("SELECT node FROM tasks WHERE id = $1", &[&queued.id]).await.unwrap().get(0);
        let failed = rt.get_task_state(&started.id).await.unwrap().unwrap();
        if node.is_none() && failed.status == TaskStatus::Failed {
            assert_eq!(failed.error.unwrap().code, FailureCode::NodeLost);
            break;
        }
        assert!(given_up.elapsed() < TEST_LEASE * 3, "still held: queued by {node:?}, the other {:?}", failed.status);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rt.get_task_state(&queued.id).await.unwrap().unwrap().status, TaskStatus::Pending, "back in the queue");
}

/// Two nodes with state directories (and device keys) of their own append
/// to one audit chain in the database while they run tasks: it verifies
/// whole, its checkpoints signed by both keys, each task's outcome in it
/// once; a record edited or deleted in the database is named.
#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_keeps_one_audit_chain_and_an_edited_record_is_named() {
    let Some(pg) = Postgres::start() else { return };
    let url = pg.url();
    let config = EngineConfig { max_concurrent_tasks: 4, ..Default::default() };
    let a = fixture_on(config.clone(), "", Some(Store::Cluster(&url, "a", TEST_LEASE)));
    let b = fixture_on(config, "", Some(Store::Cluster(&url, "b", TEST_LEASE)));
    assert!(a.home.audit().is_shared() && b.home.audit().is_shared());
    let (on_a, on_b) = (local(&a.service), local(&b.service));
    let mut submitting = Vec::new();
    for i in 0..60 {
        let rt = if i % 2 == 0 { &on_a } else { &on_b };
        submitting.push(rt.submit_task(TaskSubmitRequest::skill("team/echo", json!({ "i": i }))));
    }
    let ids: Vec<String> =
        futures_util::future::join_all(submitting).await.into_iter().map(|t| t.unwrap().id).collect();
    // One cancelled through b, wherever it runs.
    let asking = on_a.submit_task(TaskSubmitRequest::skill("team/asker", json!({ "ask": "ok?" }))).await.unwrap();
    assert!(on_b.cancel_task(&asking.id).await.unwrap());
    for id in &ids {
        assert_eq!(on_a.wait(id, |_| {}).await.unwrap().status, TaskStatus::Completed);
    }
    assert_eq!(on_a.wait(&asking.id, |_| {}).await.unwrap().status, TaskStatus::Cancelled);
    // Each node signs a checkpoint of the chain as it stands.
    let head_a = a.home.audit().checkpoint().unwrap().unwrap();
    let head_b = b.home.audit().checkpoint().unwrap().unwrap();
    assert!(head_b.seq > head_a.seq, "one chain: b's head {} follows a's {}", head_b.seq, head_a.seq);
    let db = sql(&url).await;
    assert_eq!(outcomes_not_recorded_once(&db).await, vec![]);

    let nodes = [head_a.device.clone(), head_b.device.clone()];
    let report = a.home.audit().verify_against(&[], Signers::OneOf(&nodes)).unwrap();
    assert!(report.records >= 61, "{report:?}");
    // A machine that does not list b's key does not accept its checkpoints.
    match a.home.audit().verify_against(&[], Signers::OneOf(&nodes[..1])) {
        Err(AuditError::Broken { problem, .. }) => assert!(problem.contains("cluster.nodeKeys"), "{problem}"),
        other => panic!("a checkpoint by an unlisted key was accepted: {other:?}"),
    }
    assert_eq!(report.signers.len(), 2, "both nodes' keys sign: {report:?}");
    assert!(report.signed_by(&head_a.device) && report.signed_by(&head_b.device), "{report:?}");
    // From b's side too, and heads it witnessed match.
    let witnessed = vec![("a".to_owned(), head_a.clone()), ("b".to_owned(), head_b.clone())];
    let from_b = b.home.audit().verify_against(&witnessed, Signers::OneOf(&nodes)).unwrap();
    assert_eq!(from_b.witnessed.len(), 2, "{from_b:?}");

    // Edited in the database: named.
    db.execute("UPDATE audit SET reason = 'nothing happened' WHERE seq = 7", &[]).await.unwrap();
    match a.home.audit().verify() {
        Err(AuditError::Broken { seq: 7, problem }) => assert!(problem.contains("do not match its hash"), "{problem}"),
        other => panic!("an edited record went unnoticed: {other:?}"),
    }
    // Rewritten with its hash recomputed: the next record's link breaks.
    let mut seventh = a.home.audit().query(&Default::default()).unwrap().remove(6);
    seventh.reason = "nothing happened".into();
    db.execute("UPDATE audit SET hash = $1 WHERE seq = 7", &[&seventh.computed_hash()]).await.unwrap();
    match a.home.audit().verify() {
        Err(AuditError::Broken { seq: 8, problem }) => assert!(problem.contains("link"), "{problem}"),
        other => panic!("a rewritten record went unnoticed: {other:?}"),
    }
    // Deleted: the gap is named.
    db.execute("DELETE FROM audit WHERE seq = 7", &[]).await.unwrap();
    match a.home.audit().verify() {
        Err(AuditError::Broken { seq: 7, problem }) => assert!(problem.contains("record 7 is missing"), "{problem}"),
        other => panic!("a deleted record went unnoticed: {other:?}"),
    }
}

/// Trust is the cluster's, for the machines each node accepts: a key
/// trusted on node a reaches node b once b lists a's device key in
/// `cluster.nodeKeys` (and a node joining later), with its record in the
/// cluster's audit log; a change written into the database by anyone
/// else (unsigned, or signed by an unlisted key) is refused everywhere; a
/// key revoked on node b is refused on node a from then on.
#[tokio::test(flavor = "multi_thread")]
async fn trust_changed_on_one_node_applies_on_the_nodes_that_accept_it() {
    use coderclaw_core::trust_change::{SignedTrustChange, TrustChange};
    let Some(pg) = Postgres::start() else { return };
    let url = pg.url();
    let a = fixture_on(EngineConfig::default(), "", Some(Store::Cluster(&url, "a", TEST_LEASE)));
    let b = fixture_on(EngineConfig::default(), "", Some(Store::Cluster(&url, "b", TEST_LEASE)));
    let device = |f: &crate::tasks::Fixture| f.service.security().local_device().public_key;
    let accept = |f: &crate::tasks::Fixture, keys: &[String]| {
        let text = format!("cluster:\n  nodeKeys: [{}]\n", keys.join(", "));
        std::fs::write(f.home.root().join("config.yaml"), text).unwrap();
    };
    let db = sql(&url).await;
    let acme = coderclaw_core::keys::SecretKey::from_seed(*b"coderclaw test key: acme--------").public();
    let has_acme = |f: &crate::tasks::Fixture| {
        f.home.trust_list().unwrap().iter().any(|e| e.key_id == acme.id().as_str() && e.namespaces == ["acme"])
    };
    a.home.trust_add("acme", &acme).unwrap();
    assert!(has_acme(&a));
    // b does not list a yet: refused, and the refusal audited.
    b.service.security().sync_cluster().unwrap();
    assert!(!has_acme(&b), "a change by a machine b does not list was applied");
    let refused: i64 = db
        .query_one("SELECT COUNT(*) FROM audit WHERE action = 'trust.sync' AND result = 'denied'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(refused >= 1);
    accept(&b, &[device(&a)]);
    let reached = Instant::now();
    while !has_acme(&b) {
        assert!(reached.elapsed() < Duration::from_secs(5), "the key trusted on a never reached b");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recorded: Vec<(String, String)> = db
        .query("SELECT action, resource_id FROM audit WHERE action IN ('trust.add', 'trust.revoke') ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(recorded, [("trust.add".to_owned(), acme.id().to_string())]);

    // Rows written into the database by someone else: refused by both.
    let evil = coderclaw_core::keys::SecretKey::from_seed(*b"coderclaw test key: evil--------");
    let add_evil = TrustChange::Add { namespace: "team".into(), key: evil.public().to_string() };
    let self_signed = serde_json::to_string(&SignedTrustChange::sign(add_evil.clone(), &evil)).unwrap();
    let mut forged = SignedTrustChange::sign(add_evil, &evil);
    forged.publisher = device(&a);
    let forged = serde_json::to_string(&forged).unwrap();
    for row in [self_signed, forged, "{\"change\":\"add\"}".to_owned()] {
        db.execute(
            "INSERT INTO cluster_trust (seq, signed, at_ms) SELECT MAX(seq) + 1, $1, 0 FROM cluster_trust",
            &[&row],
        )
        .await
        .unwrap();
    }
    for f in [&a, &b] {
        f.service.security().sync_cluster().unwrap();
        let trust = f.home.trust_list().unwrap();
        assert!(
            !trust.iter().any(|e| e.key_id == evil.public().id().as_str()),
            "a forged change was applied: {trust:?}"
        );
    }

    // The team key (trusted on each node before it joined) revoked on b,
    // which a accepts: node a refuses the skills it signed from then on.
    accept(&a, &[device(&b)]);
    let on_a = local(&a.service);
    let before = on_a.submit_task(TaskSubmitRequest::skill("team/echo", json!({}))).await.unwrap();
    assert_eq!(on_a.wait(&before.id, |_| {}).await.unwrap().status, TaskStatus::Completed);
    let team = b.home.trust_list().unwrap().into_iter().find(|e| e.namespaces == ["team"]).unwrap();
    b.home.trust_revoke(&team.key_id).unwrap();
    let revoked = Instant::now();
    while a.home.trust_list().unwrap().iter().any(|e| e.key_id == team.key_id && e.revoked_at.is_none()) {
        assert!(revoked.elapsed() < Duration::from_secs(5), "the key revoked on b is still trusted on a");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = on_a.submit_task(TaskSubmitRequest::skill("team/echo", json!({}))).await;
    let refused = match after {
        Ok(t) => on_a.wait(&t.id, |_| {}).await.unwrap().error.map(|e| e.message).unwrap_or_default(),
        Err(e) => e.message,
    };
    assert!(refused.contains("revoked"), "a skill signed by the revoked key still runs on a: {refused}");

    // A node joining later, accepting a and b, starts with the cluster's trust.
    let c = fixture_on(EngineConfig::default(), "", None);
    accept(&c, &[device(&a), device(&b)]);
    drop(c.service);
    let joined =
        service_on_store(&c.home, c.workspace.path(), Default::default(), Some(Store::Cluster(&url, "c", TEST_LEASE)));
    let trust = c.home.trust_list().unwrap();
    assert!(trust.iter().any(|e| e.key_id == acme.id().as_str() && e.revoked_at.is_none()), "{trust:?}");
    assert!(trust.iter().any(|e| e.key_id == team.key_id && e.revoked_at.is_some()), "{trust:?}");
    drop(joined);
    assert_eq!(a.home.audit().verify().unwrap(), b.home.audit().verify().unwrap(), "one chain");
}

/// Users and sessions are the cluster's: a session opened on node a
/// works on node b, and once revoked through b it is refused on a at the
/// next request; neither node's state directory holds the user.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_opened_on_one_node_is_valid_and_revoked_on_every_node() {
    let Some(pg) = Postgres::start() else { return };
    let url = pg.url();
    let a = fixture_on(EngineConfig::default(), "", Some(Store::Cluster(&url, "a", TEST_LEASE)));
    let b = fixture_on(EngineConfig::default(), "", Some(Store::Cluster(&url, "b", TEST_LEASE)));
    let token = a.login("alice", &["developer"]);
    let on_b = CoderClawRuntime::new(LocalTransport::new(b.service.clone(), Some(token.clone())));
    let task = on_b.submit_task(TaskSubmitRequest::skill("team/echo", json!({}))).await.unwrap();
    assert_eq!(on_b.wait(&task.id, |_| {}).await.unwrap().user, "alice");
    // Only in the database: a state directory's identity.db never saw her.
    for f in [&a, &b] {
        let local = coderclaw::identity::IdentityStore::open(f.home.root()).unwrap();
        assert!(local.user("alice").is_err(), "a user of the cluster is in a node's state directory");
    }
    let security = b.service.security();
    let session = security.dangerous_identity_store().session_by_token(&token).unwrap();
    security.dangerous_identity_store().revoke_session(&session.id).unwrap();
    let on_a = CoderClawRuntime::new(LocalTransport::new(a.service.clone(), Some(token)));
    let refused = on_a.submit_task(TaskSubmitRequest::skill("team/echo", json!({}))).await.unwrap_err();
    assert_eq!(refused.code, coderclaw::tasks::ErrorCode::Unauthenticated, "{refused:?}");
    // Both nodes' devices are the cluster's; each is local only to its own machine.
    let devices = security.dangerous_identity_store().devices().unwrap();
    assert!(devices.len() >= 2, "{devices:?}");
    assert_eq!(devices.iter().filter(|d| d.local).count(), 1, "{devices:?}");
    // New roles through a: b's next request with her new session is refused.
    let again = b.login("bob", &["developer"]);
    a.service.security().dangerous_identity_store().set_roles("bob", &["readonly".into()]).unwrap();
    let on_b = CoderClawRuntime::new(LocalTransport::new(b.service.clone(), Some(again)));
    let refused = on_b.submit_task(TaskSubmitRequest::skill("team/echo", json!({}))).await.unwrap_err();
    assert_eq!(refused.code, coderclaw::tasks::ErrorCode::Unauthenticated, "{refused:?}");
    a.service.security().dangerous_identity_store().remove_user("bob").unwrap();
    assert!(b.service.security().dangerous_identity_store().user("bob").is_err());
}

/// A skill installed on one node is installed on every node, which then
/// runs its tasks; one removed is removed everywhere. A package published
/// to the database that a node's trust does not accept (a rogue writer,
/// a key only another node trusts) is refused there, audited, and never
/// run.
#[tokio::test(flavor = "multi_thread")]
async fn a_skill_installed_on_one_node_runs_on_every_node_and_an_untrusted_one_nowhere() {
    use coderclaw::shared::{SharedSkills, SkillChange};
    use coderclaw_core::manifest::Manifest;
    use coderclaw_core::package::Package;
    let Some(pg) = Postgres::start() else { return };
    let url = pg.url();
    let config = EngineConfig { max_concurrent_tasks: 2, ..Default::default() };
    let a = fixture_on(config.clone(), "", Some(Store::Cluster(&url, "a", TEST_LEASE)));
    let b = fixture_on(config, "", Some(Store::Cluster(&url, "b", TEST_LEASE)));
    let sign = |id: &str, key: &coderclaw_core::keys::SecretKey| {
        let text = format!(
            "id = \"{id}\"\nversion = \"1.0.0\"\nkind = \"skill\"\ndescription = \"echo\"\n[input-schema]\ndescription = \"any\"\n"
        );
        let manifest = Manifest::from_toml(&text, "echo").unwrap();
        let bytes = std::fs::read(coderclaw_e2e::guest("echo")).unwrap();
        Package::sign(&manifest, bytes, key, 1_763_000_000).to_bytes()
    };
    let team = coderclaw_core::keys::SecretKey::from_seed(*b"coderclaw test key: team--------");
    a.home.dangerous_install_ungated(&sign("team/echo2", &team)).unwrap();
    let arrived = Instant::now();
    while b.home.info("team/echo2").is_err() {
        assert!(arrived.elapsed() < Duration::from_secs(5), "the skill installed on a never reached b");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Either node may claim them: each must have the skill.
    let rt = local(&a.service);
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(rt.submit_task(TaskSubmitRequest::skill("team/echo2", json!({ "i": i }))).await.unwrap().id);
    }
    for id in &ids {
        let done = rt.wait(id, |_| {}).await.unwrap();
        assert_eq!(done.status, TaskStatus::Completed, "{:?}", done.error);
    }
    let db = sql(&url).await;
    let nodes: i64 = db
        .query_one("SELECT COUNT(DISTINCT node) FROM tasks WHERE target_id = 'team/echo2'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(nodes, 2, "both nodes ran the skill installed on a");

    // A rogue writer publishes a package signed by a key no node trusts.
    let stranger = coderclaw_core::keys::SecretKey::from_seed(*b"coderclaw test key: stranger----");
    let rogue = sign("team/rogue", &stranger);
    let shared = coderclaw::tasks::store::PgSharedState::open(&url).unwrap();
    let digest = Package::parse(&rogue).unwrap().digest();
    shared.publish_skill(&SkillChange::Install { id: "team/rogue".into(), digest }, Some(&rogue)).unwrap();
    b.service.security().sync_cluster().unwrap();
    assert!(b.home.info("team/rogue").is_err(), "a package no trusted key signed was installed");
    let refused: i64 = db
        .query_one(
            "SELECT COUNT(*) FROM audit WHERE action = 'skill.install' AND resource_id = 'team/rogue' AND result = 'denied'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(refused >= 1, "the refusal is audited");

    // Removed on b: removed on a.
    b.home.remove("team/echo2").unwrap();
    let removed = Instant::now();
    while a.home.info("team/echo2").is_ok() {
        assert!(removed.elapsed() < Duration::from_secs(5), "the skill removed on b is still installed on a");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
