//! The distributed-cluster mode in-process: engines as nodes of one
//! cluster on a real PostgreSQL, sharing a state directory. The task
//! scenarios run across two nodes in `tasks::cluster`; the multi-process
//! faults (kill -9, SIGSTOP) are in the CLI tests (`cli/tests/cluster.rs`).

use crate::tasks::{Store, TEST_LEASE, fixture_on_cluster, service_on_store};
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
    let a = PgTaskStore::open_cluster(&pg.url(), "a", TEST_LEASE, on_commit).unwrap();
    let b = PgTaskStore::open_cluster(&pg.url(), "b", TEST_LEASE, Arc::new(|_, _| {})).unwrap();
    let refused = PgTaskStore::open_cluster(&pg.url(), "a", TEST_LEASE, Arc::new(|_, _| {})).unwrap();
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
