//! The cluster side of [`PgTaskStore`]: nodes, leases, claims, reclaims
//! and commands, on a connection of their own (each operation one
//! transaction), and the notices other nodes send on [`CHANNEL`], on
//! another.
//!
//! A node's lease lives in `cluster_nodes` and covers all its tasks; a
//! task's row says which node holds it (`node`) and its fencing token
//! (`attempt`). Claims and reclaims lock rows `FOR UPDATE SKIP LOCKED`,
//! so nodes never wait on each other's rows, and bump the token, so the
//! previous holder's writes (checked against the token in the same
//! statement) are refused from then on. Times are the database's clock:
//! nodes' clocks may disagree.

use super::audit::{AuditSql, record_outcomes};
use super::{
    CHANNEL, COLUMNS, Conn, PgTaskStore, UNAVAILABLE_AFTER, UPSERT_ROW, add_event, connect, describe, events_payload,
    read_task, reconnect_until, redact_url, rows, upsert_row,
};
use crate::store::{
    ClusterStatus, ClusterStore, Command, Lease, NodeStatus, Notice, Reclaimed, StoreError, StoredTask,
};
use coderclaw_core::audit_head::SignedHead;
use coderclaw_core::clock::now_ms;
use coderclaw_core::task::{FailureCode, TaskEventKind, TaskFailure, TaskState, TaskStatus, TaskUpdateEvent};
use coderclaw_security::audit::AuditSigning;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// An operation on the cluster connection.
pub(super) type ClusterJob = Box<dyn for<'a> FnOnce(&'a mut Conn) -> BoxFuture<'a, ()> + Send>;

/// Statuses a task is not finished in.
const UNFINISHED: &str = "('PENDING', 'PLANNING', 'RUNNING', 'WAITING')";

/// Most tasks one reclaim pass takes.
const RECLAIM_BATCH: i64 = 500;

/// Most sessions one claim looks at; past that many sessions with queued
/// work, the rest wait for a later claim (in session id order).
const CLAIM_SESSIONS: i64 = 1000;

/// This node's side of a shared store.
pub(crate) struct PgCluster {
    node: String,
    lease: Duration,
    /// Signs the checkpoints of the outcomes reclaims record.
    signing: AuditSigning,
    jobs: mpsc::UnboundedSender<ClusterJob>,
    notices: Mutex<Option<mpsc::UnboundedReceiver<Notice>>>,
    /// This run's incarnation of the node name (0 before joining).
    incarnation: AtomicI64,
}

impl PgCluster {
    pub(super) fn new(
        node: String,
        lease: Duration,
        signing: AuditSigning,
        jobs: mpsc::UnboundedSender<ClusterJob>,
        notices: mpsc::UnboundedReceiver<Notice>,
    ) -> Self {
        PgCluster { node, lease, signing, jobs, notices: Mutex::new(Some(notices)), incarnation: AtomicI64::new(0) }
    }
}

/// The advisory lock that keeps a node name to one running node.
const NODE_LOCK: &str = "SELECT pg_try_advisory_lock(hashtext('coderclaw-node'), hashtext($1))";

/// Runs cluster operations one at a time (each is a transaction), on a
/// connection opened again when it is lost (re-taking the node name's
/// lock).
pub(super) async fn job_loop(
    config: tokio_postgres::Config,
    client: Client,
    mut jobs: mpsc::UnboundedReceiver<ClusterJob>,
    url: String,
    node: String,
) {
    let mut client = Some(Conn::new(client));
    while let Some(job) = jobs.recv().await {
        let mut c = match client.take().filter(|c| !c.is_closed()) {
            Some(c) => c,
            None => match reconnect_until(&config, &url, Instant::now() + UNAVAILABLE_AFTER).await {
                Some(c) => {
                    match c.query_one(NODE_LOCK, &[&node]).await.map(|r| r.get::<_, bool>(0)) {
                        Ok(true) => {}
                        Ok(false) => tracing::error!(
                            node,
                            "another process took this node's name while the cluster \
                                                            connection was down"
                        ),
                        Err(e) => tracing::warn!(node, error = %describe(&e), "cannot take the node name's lock again"),
                    }
                    Conn::new(c)
                }
                // Dropped: its caller is told PostgreSQL is unreachable.
                None => continue,
            },
        };
        job(&mut c).await;
        client = Some(c);
    }
}

/// Listens on [`CHANNEL`] and forwards what concerns node `node`; opens
/// the connection again when it is lost, saying so ([`Notice::Reconnected`]).
pub(super) async fn listen_loop(
    config: tokio_postgres::Config,
    url: String,
    node: String,
    notices: mpsc::UnboundedSender<Notice>,
) {
    let mut first = true;
    let mut backoff = Duration::from_millis(100);
    loop {
        let (client, mut connection) = match config.connect(NoTls).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(url, error = %describe(&e), retry_in = ?backoff, "cluster notices: cannot connect");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let (tx, mut payloads) = mpsc::unbounded_channel::<String>();
        let messages = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(AsyncMessage::Notification(n)) => {
                        if tx.send(n.payload().to_owned()).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster notices: connection lost");
                        return;
                    }
                }
            }
        });
        if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
            tracing::warn!(url, error = %describe(&e), "cluster notices: LISTEN failed");
            messages.abort();
            tokio::time::sleep(backoff).await;
            continue;
        }
        backoff = Duration::from_millis(100);
        if !first && notices.send(Notice::Reconnected).is_err() {
            return;
        }
        first = false;
        while let Some(payload) = payloads.recv().await {
            if let Some(notice) = parse_notice(&payload, &node)
                && notices.send(notice).is_err()
            {
                return;
            }
        }
        drop(client);
        tokio::time::sleep(backoff).await;
    }
}

/// What `payload` (sent on [`CHANNEL`]) tells node `me`, if anything.
fn parse_notice(payload: &str, me: &str) -> Option<Notice> {
    let mut words = payload.split(' ');
    match words.next()? {
        "work" => Some(Notice::Work),
        "command" => (words.next()? == me).then_some(Notice::Command),
        "events" => {
            if words.next()? == me {
                return None;
            }
            let ids: Vec<String> = words.map(str::to_owned).collect();
            Some(Notice::Events(if ids.iter().any(|i| i == "*") { None } else { Some(ids) }))
        }
        _ => None,
    }
}

/// `ms` as a PostgreSQL interval expression's argument.
fn millis(d: Duration) -> f64 {
    d.as_millis() as f64
}

impl PgTaskStore {
    fn cluster_side(&self) -> &PgCluster {
        self.cluster.as_ref().expect("ClusterStore is only offered when the store is shared")
    }

    /// Runs `f` on the cluster connection; its answer (or why there was
    /// none) resolves the future.
    fn on_cluster<T: Send + 'static>(
        &self,
        f: impl for<'a> FnOnce(&'a mut Conn) -> BoxFuture<'a, Result<T, tokio_postgres::Error>> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let (tx, rx) = oneshot::channel();
        let job: ClusterJob = Box::new(move |client| {
            Box::pin(async move {
                let _ = tx.send(f(client).await);
            })
        });
        let sent = self.cluster_side().jobs.send(job);
        let url = self.url.clone();
        Box::pin(async move {
            sent.map_err(|_| StoreError::WriterStopped)?;
            match tokio::time::timeout(UNAVAILABLE_AFTER + Duration::from_secs(5), rx).await {
                Ok(Ok(answer)) => answer.map_err(|e| StoreError::Postgres { url, message: describe(&e) }),
                _ => Err(StoreError::Postgres {
                    url,
                    message: format!("no answer within {} s: PostgreSQL is unreachable", UNAVAILABLE_AFTER.as_secs()),
                }),
            }
        })
    }

    /// [`PgTaskStore::on_cluster`], waited for on this thread (for callers
    /// that are not async; bounded like a read).
    fn on_cluster_blocking<T: Send + 'static>(
        &self,
        f: impl for<'a> FnOnce(&'a mut Conn) -> BoxFuture<'a, Result<T, tokio_postgres::Error>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let job: ClusterJob = Box::new(move |client| {
            Box::pin(async move {
                let _ = tx.send(f(client).await);
            })
        });
        self.cluster_side().jobs.send(job).map_err(|_| StoreError::WriterStopped)?;
        let answer = rx.recv_timeout(UNAVAILABLE_AFTER + Duration::from_secs(5)).map_err(|_| StoreError::Postgres {
            url: self.url.clone(),
            message: format!("no answer within {} s: PostgreSQL is unreachable", UNAVAILABLE_AFTER.as_secs()),
        })?;
        answer.map_err(|e| StoreError::Postgres { url: self.url.clone(), message: describe(&e) })
    }
}

/// A status (or other) event of `t` at `seq`, now.
fn event(t: &TaskState, seq: u64, kind: TaskEventKind, message: String) -> TaskUpdateEvent {
    TaskUpdateEvent {
        task_id: t.id.clone(),
        seq,
        timestamp_ms: now_ms(),
        event: kind,
        status: t.status,
        progress: t.progress,
        message,
        data: None,
    }
}

/// Decides and stores what becomes of `held`, taken from lost node `from`
/// (rows locked by the caller's transaction).
async fn reclaim_one(
    tx: &tokio_postgres::Transaction<'_>,
    upsert: &tokio_postgres::Statement,
    insert_event: &tokio_postgres::Statement,
    held: StoredTask,
    from: &str,
    what: &str,
) -> Result<Reclaimed, tokio_postgres::Error> {
    let mut task = held.clone();
    task.lease = Lease { node: None, attempt: held.lease.attempt + 1 };
    let cancel: Option<String> = tx
        .query_opt(
            "SELECT body FROM task_commands WHERE task_id = $1 AND kind = 'cancel' ORDER BY id LIMIT 1",
            &[&held.state.id],
        )
        .await?
        .map(|r| r.get(0));
    let was = held.state.status;
    let mut events = Vec::new();
    let now = now_ms();
    let mut finish = |task: &mut StoredTask, status: TaskStatus, failure: TaskFailure| {
        let s = &mut task.state;
        s.status = status;
        s.completed_at_ms = Some(now);
        s.prompt = None;
        s.paused = false;
        let message = failure.message.clone();
        s.error = Some(failure);
        task.last_seq += 1;
        events.push(event(&task.state, task.last_seq, TaskEventKind::Status, message));
    };
    if let Some(reason) = cancel {
        let message = crate::engine::cancel_message(&reason);
        finish(&mut task, TaskStatus::Cancelled, TaskFailure::new(FailureCode::Cancelled, message));
    } else if was == TaskStatus::Pending {
        // Claimed but not started: back to the queue, nothing to say.
    } else if held.resumable {
        if was == TaskStatus::Waiting {
            task.state.status = TaskStatus::Running;
            task.state.prompt = None;
        }
        task.last_seq += 1;
        let message = format!(
            "node {from} {what} while the task was {was}: re-running from the start on another node (resumable)"
        );
        events.push(event(&task.state, task.last_seq, TaskEventKind::Recovered, message));
    } else {
        let message =
            format!("node {from} {what} while the task was {was}; the task is not resumable, so it was not re-run");
        finish(&mut task, TaskStatus::Failed, TaskFailure::new(FailureCode::NodeLost, message));
    }
    upsert_row(tx, upsert, &task, &task.lease, &held.lease).await?;
    for e in &events {
        add_event(tx, insert_event, e, &Lease::default()).await?;
    }
    tx.execute("DELETE FROM task_commands WHERE task_id = $1", &[&held.state.id]).await?;
    Ok(Reclaimed { task, events, from: from.to_owned() })
}

/// Why a node's tasks are reclaimed, as their messages say it.
const LOST: &str = "was lost (its lease ran out)";
const UNTRACKED: &str = "lost track of the task (it held the task but did not run it)";

/// Reclaims the `locked` rows (`COLUMNS`, locked by `tx`) from their node,
/// which `what` (its lease ran out, or it lost track of them), records
/// the outcomes of those that end in the audit log, and notifies the
/// cluster of them. The caller witnesses the heads returned once `tx` is
/// committed.
async fn reclaim_rows(
    tx: &tokio_postgres::Transaction<'_>,
    locked: Vec<tokio_postgres::Row>,
    me: &str,
    what: &str,
    signing: &AuditSigning,
) -> Result<(Vec<Reclaimed>, Vec<SignedHead>), tokio_postgres::Error> {
    let upsert = tx.prepare(UPSERT_ROW).await?;
    let insert_event = tx.prepare(super::INSERT_EVENT).await?;
    let mut done = Vec::new();
    for row in &locked {
        let held = match read_task(row) {
            Ok(t) => t,
            Err(e) => {
                // Left as it is (and reported each pass); the others go on.
                let id: String = row.get("id");
                tracing::error!(task = %id, error = %e, "cannot reclaim a task whose row cannot be read");
                continue;
            }
        };
        let from = held.lease.node.clone().unwrap_or_default();
        done.push(reclaim_one(tx, &upsert, &insert_event, held, &from, what).await?);
    }
    let finished: Vec<&TaskState> = done.iter().map(|r| &r.task.state).filter(|t| t.status.is_terminal()).collect();
    let mut heads = Vec::new();
    if !finished.is_empty() {
        let sql = AuditSql::in_tx(tx).await?;
        heads = record_outcomes(tx, &sql, &finished, signing).await?.heads;
    }
    if !done.is_empty() {
        tx.execute("SELECT pg_notify($1, 'work')", &[&CHANNEL]).await?;
        let ids: Vec<&str> = done.iter().filter(|r| !r.events.is_empty()).map(|r| r.task.state.id.as_str()).collect();
        if !ids.is_empty() {
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &events_payload(me, &ids)]).await?;
        }
    }
    Ok((done, heads))
}

impl ClusterStore for PgTaskStore {
    fn node(&self) -> &str {
        &self.cluster_side().node
    }

    fn lease(&self) -> Duration {
        self.cluster_side().lease
    }

    fn join(&self, max_concurrent_tasks: u32) -> Result<Vec<Reclaimed>, StoreError> {
        let side = self.cluster_side();
        let (node, lease, signing) = (side.node.clone(), millis(side.lease), side.signing.clone());
        let max = max_concurrent_tasks as i32;
        let url = self.url.clone();
        let answer = self.on_cluster_blocking(move |c| {
            Box::pin(async move {
                let locked: bool = c.query_one(NODE_LOCK, &[&node]).await?.get(0);
                if !locked {
                    return Ok(None);
                }
                let tx = c.client.transaction().await?;
                // Whatever an earlier run under this name held: waited for,
                // not skipped, so no reclaimer elsewhere is half-way through.
                let held = tx
                    .query(
                        &format!("SELECT {COLUMNS} FROM tasks t WHERE node = $1 AND status IN {UNFINISHED} FOR UPDATE"),
                        &[&node],
                    )
                    .await?;
                let incarnation: i64 = tx
                    .query_one(
                        "INSERT INTO cluster_nodes (name, incarnation, state, started_at, heartbeat_at, lease_until,
                            max_concurrent, version)
                         VALUES ($1, 1, 'alive', now(), now(), now() + $2::DOUBLE PRECISION * interval '1 millisecond',
                            $3, $4)
                         ON CONFLICT (name) DO UPDATE SET incarnation = cluster_nodes.incarnation + 1, state = 'alive',
                            started_at = now(), heartbeat_at = now(), lease_until = excluded.lease_until,
                            max_concurrent = excluded.max_concurrent, version = excluded.version
                         RETURNING incarnation",
                        &[&node, &lease, &max, &env!("CARGO_PKG_VERSION")],
                    )
                    .await?
                    .get(0);
                // After the node row: locks are taken in the order every
                // other transaction takes them, the audit log's last.
                let (reclaimed, heads) = reclaim_rows(&tx, held, &node, LOST, &signing).await?;

                tx.commit().await?;
                signing.witness(&heads);
                Ok(Some((incarnation, reclaimed)))
            })
        })?;
        let Some((incarnation, reclaimed)) = answer else {
            return Err(StoreError::NodeTaken { url, node: self.node().to_owned() });
        };
        side.incarnation.store(incarnation, Ordering::SeqCst);
        tracing::info!(node = self.node(), incarnation, "joined the cluster");
        Ok(reclaimed)
    }

    fn heartbeat(&self) -> BoxFuture<'static, Result<bool, StoreError>> {
        let side = self.cluster_side();
        let (node, lease, incarnation) =
            (side.node.clone(), millis(side.lease), side.incarnation.load(Ordering::SeqCst));
        self.on_cluster(move |c| {
            Box::pin(async move {
                let renewed = c
                    .execute(
                        "UPDATE cluster_nodes SET heartbeat_at = now(),
                            lease_until = now() + $2::DOUBLE PRECISION * interval '1 millisecond'
                         WHERE name = $1 AND incarnation = $3 AND state = 'alive'",
                        &[&node, &lease, &incarnation],
                    )
                    .await?;
                Ok(renewed == 1)
            })
        })
    }

    fn claim(&self, max: u32) -> BoxFuture<'static, Result<Vec<StoredTask>, StoreError>> {
        let side = self.cluster_side();
        let (node, incarnation) = (side.node.clone(), side.incarnation.load(Ordering::SeqCst));
        let max = i64::from(max.max(1));
        let url = self.url.clone();
        let claimed = self.on_cluster(move |c| {
            Box::pin(async move {
                const READY: &str = "node IS NULL AND NOT paused AND (status = 'PENDING'
                    OR (resumable AND status IN ('PLANNING', 'RUNNING', 'WAITING')))";
                c.query(
                    &format!(
                        "WITH RECURSIVE sessions(s) AS (
                            (SELECT session_id FROM tasks WHERE {READY} ORDER BY session_id LIMIT 1)
                          UNION ALL
                            SELECT (SELECT session_id FROM tasks WHERE {READY} AND session_id > sessions.s
                                    ORDER BY session_id LIMIT 1)
                            FROM sessions WHERE sessions.s IS NOT NULL
                        ),
                        some_sessions AS (SELECT s FROM sessions WHERE s IS NOT NULL LIMIT {CLAIM_SESSIONS}),
                        candidates AS (
                            SELECT c.id FROM some_sessions
                            LEFT JOIN cluster_sessions served ON served.session_id = some_sessions.s,
                            LATERAL (
                                SELECT id, created_at_ms, row_no,
                                       row_number() OVER (ORDER BY created_at_ms, row_no) AS turn
                                FROM tasks WHERE {READY} AND session_id = some_sessions.s
                                ORDER BY created_at_ms, row_no LIMIT $2) c
                            ORDER BY c.turn, served.served_at NULLS FIRST, c.created_at_ms, c.row_no LIMIT $2
                        ),
                        picked AS (
                            SELECT t.id AS pid FROM tasks t
                            WHERE t.id IN (SELECT id FROM candidates) AND t.{READY}
                              AND EXISTS (SELECT 1 FROM cluster_nodes n
                                          WHERE n.name = $1 AND n.incarnation = $3 AND n.state = 'alive')
                            FOR UPDATE OF t SKIP LOCKED
                        ),
                        claimed AS (
                            UPDATE tasks t SET node = $1, attempt = t.attempt + 1 FROM picked WHERE t.id = picked.pid
                            RETURNING {COLUMNS}
                        ),
                        served AS (
                            INSERT INTO cluster_sessions (session_id, served_at)
                            SELECT DISTINCT session_id, now() FROM claimed ORDER BY session_id
                            ON CONFLICT (session_id) DO UPDATE SET served_at = excluded.served_at
                        )
                        SELECT * FROM claimed"
                    ),
                    &[&node, &max, &incarnation],
                )
                .await
            })
        });
        Box::pin(async move {
            let mut tasks = rows(claimed.await?, read_task, &url)?;
            tasks.sort_by_key(|t| t.state.created_at_ms);
            Ok(tasks)
        })
    }

    fn reclaim(&self) -> BoxFuture<'static, Result<Vec<Reclaimed>, StoreError>> {
        let (node, signing) = (self.cluster_side().node.clone(), self.cluster_side().signing.clone());
        self.on_cluster(move |c| {
            Box::pin(async move {
                let tx = c.client.transaction().await?;
                let lost = tx
                    .query(
                        "UPDATE cluster_nodes SET state = 'lost' WHERE state = 'alive' AND lease_until < now()
                         RETURNING name, (extract(epoch FROM now() - heartbeat_at) * 1000)::BIGINT",
                        &[],
                    )
                    .await?;
                for r in &lost {
                    let (name, silent): (String, i64) = (r.get(0), r.get(1));
                    tracing::warn!(node = %name, silent_ms = silent, "a node's lease ran out: it is lost");
                }
                let held = tx
                    .query(
                        &format!(
                            "SELECT {COLUMNS} FROM tasks t
                             WHERE node IS NOT NULL AND status IN {UNFINISHED}
                               AND NOT EXISTS (SELECT 1 FROM cluster_nodes n WHERE n.name = t.node AND n.state = 'alive')
                             LIMIT {RECLAIM_BATCH} FOR UPDATE OF t SKIP LOCKED"
                        ),
                        &[],
                    )
                    .await?;
                let (done, heads) = reclaim_rows(&tx, held, &node, LOST, &signing).await?;
                tx.commit().await?;
                signing.witness(&heads);
                // Turns only matter among sessions with queued work.
                c.client.execute("DELETE FROM cluster_sessions WHERE served_at < now() - interval '1 day'", &[]).await?;
                Ok(done)
            })
        })
    }

    fn reclaim_orphans(&self, running: Vec<String>) -> BoxFuture<'static, Result<Vec<Reclaimed>, StoreError>> {
        let (node, signing) = (self.cluster_side().node.clone(), self.cluster_side().signing.clone());
        self.on_cluster(move |c| {
            Box::pin(async move {
                let tx = c.client.transaction().await?;
                let held = tx
                    .query(
                        &format!(
                            "SELECT {COLUMNS} FROM tasks t
                             WHERE node = $1 AND status IN {UNFINISHED} AND NOT (id = ANY($2))
                             LIMIT {RECLAIM_BATCH} FOR UPDATE OF t SKIP LOCKED"
                        ),
                        &[&node, &running],
                    )
                    .await?;
                if !held.is_empty() {
                    tracing::warn!(node, tasks = held.len(), "this node held tasks it did not run: reclaiming them");
                }
                let (done, heads) = reclaim_rows(&tx, held, &node, UNTRACKED, &signing).await?;
                tx.commit().await?;
                signing.witness(&heads);
                Ok(done)
            })
        })
    }

    fn write_unheld(
        &self,
        before: &StoredTask,
        after: &StoredTask,
        events: &[TaskUpdateEvent],
    ) -> Result<bool, StoreError> {
        if before.lease.node.is_some() {
            return Ok(false);
        }
        let (before, mut after, events) = (before.clone(), after.clone(), events.to_vec());
        let (node, signing) = (self.cluster_side().node.clone(), self.cluster_side().signing.clone());
        after.lease = Lease { node: None, attempt: before.lease.attempt + 1 };
        self.on_cluster_blocking(move |c| {
            Box::pin(async move {
                let tx = c.client.transaction().await?;
                let upsert = tx.prepare(UPSERT_ROW).await?;
                if upsert_row(&tx, &upsert, &after, &after.lease, &before.lease).await? == 0 {
                    return Ok(false);
                }
                let insert_event = tx.prepare(super::INSERT_EVENT).await?;
                for e in &events {
                    add_event(&tx, &insert_event, e, &Lease::default()).await?;
                }
                if after.state.status == TaskStatus::Pending && !after.state.paused {
                    tx.execute("SELECT pg_notify($1, 'work')", &[&CHANNEL]).await?;
                }
                if !events.is_empty() {
                    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &events_payload(&node, &[&after.state.id])])
                        .await?;
                }
                let mut heads = Vec::new();
                if after.state.status.is_terminal() && !before.state.status.is_terminal() {
                    let sql = AuditSql::in_tx(&tx).await?;
                    heads = record_outcomes(&tx, &sql, &[&after.state], &signing).await?.heads;
                }
                tx.commit().await?;
                signing.witness(&heads);
                Ok(true)
            })
        })
    }

    fn send_command(&self, id: &str, command: &Command) -> Result<Option<String>, StoreError> {
        let (kind, body) = match command {
            Command::Cancel(reason) => ("cancel", reason.clone()),
            Command::Respond(answer) => ("respond", answer.clone()),
        };
        let id = id.to_owned();
        self.on_cluster_blocking(move |c| {
            Box::pin(async move {
                let tx = c.client.transaction().await?;
                let holder = tx
                    .query_opt(
                        &format!(
                            "INSERT INTO task_commands (task_id, node, kind, body, created_at_ms)
                             SELECT id, node, $2, $3, $4 FROM tasks
                             WHERE id = $1 AND node IS NOT NULL AND status IN {UNFINISHED}
                             FOR SHARE
                             RETURNING node"
                        ),
                        &[&id, &kind, &body, &(now_ms() as i64)],
                    )
                    .await?;
                let Some(holder) = holder.map(|r| r.get::<_, String>(0)) else {
                    return Ok(None);
                };
                tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &format!("command {holder}")]).await?;
                tx.commit().await?;
                Ok(Some(holder))
            })
        })
    }

    fn take_commands(&self) -> BoxFuture<'static, Result<Vec<(String, Command)>, StoreError>> {
        let node = self.cluster_side().node.clone();
        self.on_cluster(move |c| {
            Box::pin(async move {
                let mut taken: Vec<(i64, String, Command)> = c
                    .query("DELETE FROM task_commands WHERE node = $1 RETURNING id, task_id, kind, body", &[&node])
                    .await?
                    .iter()
                    .map(|r| {
                        let body: String = r.get(3);
                        let command = if r.get::<_, String>(2) == "cancel" {
                            Command::Cancel(body)
                        } else {
                            Command::Respond(body)
                        };
                        (r.get(0), r.get(1), command)
                    })
                    .collect();
                taken.sort_by_key(|(id, ..)| *id);
                Ok(taken.into_iter().map(|(_, task, command)| (task, command)).collect())
            })
        })
    }

    fn session_load(&self, session: &str) -> Result<(u64, u64), StoreError> {
        let session = session.to_owned();
        let row = self.read(move |c| {
            Box::pin(async move {
                c.query_one(
                    &format!(
                        "SELECT COUNT(*), COALESCE(SUM(octet_length(input)), 0)::BIGINT FROM tasks
                         WHERE session_id = $1 AND status IN {UNFINISHED}"
                    ),
                    &[&session],
                )
                .await
            })
        })?;
        Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
    }

    fn leave(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        let side = self.cluster_side();
        let (node, incarnation) = (side.node.clone(), side.incarnation.load(Ordering::SeqCst));
        let left = self.on_cluster(move |c| {
            Box::pin(async move {
                c.execute(
                    "UPDATE cluster_nodes SET state = 'left', lease_until = now()
                     WHERE name = $1 AND incarnation = $2 AND state = 'alive'",
                    &[&node, &incarnation],
                )
                .await?;
                c.query_one("SELECT pg_advisory_unlock(hashtext('coderclaw-node'), hashtext($1))", &[&node]).await?;
                Ok(())
            })
        });
        // Whatever is still held goes to the others at once.
        let reclaim = self.reclaim();
        Box::pin(async move {
            left.await?;
            reclaim.await.map(|_| ())
        })
    }

    fn notices(&self) -> Option<mpsc::UnboundedReceiver<Notice>> {
        self.cluster_side().notices.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// The nodes and queue of the cluster whose database is `url`, read
/// directly (no node needs to run).
pub async fn cluster_status(url: &str) -> Result<ClusterStatus, StoreError> {
    let shown = redact_url(url);
    let err = |message: String| StoreError::Postgres { url: shown.clone(), message };
    let config: tokio_postgres::Config = url.parse().map_err(|e| err(format!("not a URL: {e}")))?;
    let client = connect(&config).await.map_err(|e| super::not_connected(&shown, &e))?;
    let has_schema: bool = client
        .query_one("SELECT to_regclass('cluster_nodes') IS NOT NULL", &[])
        .await
        .map_err(|e| err(describe(&e)))?
        .get(0);
    if !has_schema {
        return Err(err(
            "no coderclaw cluster here (no cluster_nodes table): no node has used this database yet".into()
        ));
    }
    let nodes = client
        .query(
            &format!(
                "SELECT name, state, (extract(epoch FROM started_at) * 1000)::BIGINT,
                        (extract(epoch FROM heartbeat_at) * 1000)::BIGINT,
                        GREATEST(0, (extract(epoch FROM now() - heartbeat_at) * 1000))::BIGINT,
                        max_concurrent, version,
                        (SELECT COUNT(*) FROM tasks t WHERE t.node = n.name AND t.status IN {UNFINISHED})
                 FROM cluster_nodes n ORDER BY state <> 'alive', name"
            ),
            &[],
        )
        .await
        .map_err(|e| err(describe(&e)))?
        .iter()
        .map(|r| NodeStatus {
            name: r.get(0),
            state: r.get(1),
            started_at_ms: r.get::<_, i64>(2) as u64,
            heartbeat_at_ms: r.get::<_, i64>(3) as u64,
            heartbeat_age_ms: r.get::<_, i64>(4) as u64,
            max_concurrent_tasks: r.get::<_, i32>(5) as u32,
            version: r.get(6),
            running_tasks: r.get::<_, i64>(7) as u64,
        })
        .collect();
    let queue = client
        .query_one(
            "SELECT COUNT(*) FILTER (WHERE NOT paused), COUNT(*) FILTER (WHERE paused) FROM tasks
             WHERE status = 'PENDING' AND node IS NULL",
            &[],
        )
        .await
        .map_err(|e| err(describe(&e)))?;
    Ok(ClusterStatus {
        database: shown.clone(),
        nodes,
        queued_tasks: queue.get::<_, i64>(0) as u64,
        paused_tasks: queue.get::<_, i64>(1) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::{Notice, parse_notice};

    #[test]
    fn a_node_hears_work_its_own_commands_and_the_others_events() {
        assert_eq!(parse_notice("work", "a"), Some(Notice::Work));
        assert_eq!(parse_notice("command a", "a"), Some(Notice::Command));
        assert_eq!(parse_notice("command b", "a"), None);
        assert_eq!(parse_notice("events b t1 t2", "a"), Some(Notice::Events(Some(vec!["t1".into(), "t2".into()]))));
        assert_eq!(parse_notice("events b *", "a"), Some(Notice::Events(None)));
        assert_eq!(parse_notice("events a t1", "a"), None, "its own events it already has");
        assert_eq!(parse_notice("nonsense", "a"), None);
    }
}
