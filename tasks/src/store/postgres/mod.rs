//! `PgTaskStore`: the same tasks, events and session memory as
//! [`super::SqliteTaskStore`], in a PostgreSQL database, for the cluster
//! mode where several nodes share one store.
//!
//! The engine's store interface is synchronous (its reads are short and
//! SQLite answers them in place), so the store runs its own thread with a
//! small tokio runtime and two connections: a writer that commits queued
//! writes in batches exactly as the SQLite writer does (one transaction,
//! acknowledgements after the commit, committed events to `on_commit` in
//! order), and a reader that answers reads, pipelined. A caller's read
//! waits for its answer on a channel.
//!
//! A lost connection is opened again (with backoff) before the next batch
//! or read; a batch that failed is reported to every durable writer in it
//! and not retried, so nothing is acknowledged that is not stored.

mod audit;
mod cluster;
mod identity;
mod skills;
mod trust;

pub use audit::PgSharedState;
pub use cluster::cluster_status;

use super::{ClusterStore, Lease, OnCommit, Queued, StoreError, StoredTask, TaskStore, Write, settle};
use coderclaw_core::task::{
    FailureCode, TaskEventKind, TaskFailure, TaskFilter, TaskState, TaskStatus, TaskTarget, TaskUpdateEvent,
};
use coderclaw_security::audit::AuditSigning;
use futures_util::future::BoxFuture;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_postgres::{Client, NoTls, Row};

/// The schema, one migration per version, applied in order at open.
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE tasks (
    id TEXT PRIMARY KEY NOT NULL,
    row_no BIGSERIAL NOT NULL,
    description TEXT NOT NULL,
    target_kind TEXT NOT NULL,
    target_id TEXT NOT NULL,
    input TEXT NOT NULL,
    session_id TEXT NOT NULL,
    user_name TEXT NOT NULL,
    parent_task_id TEXT,
    metadata TEXT NOT NULL,
    status TEXT NOT NULL,
    paused BOOLEAN NOT NULL DEFAULT FALSE,
    progress DOUBLE PRECISION,
    prompt TEXT,
    output TEXT,
    error TEXT,
    error_code TEXT,
    error_reasons TEXT,
    created_at_ms BIGINT NOT NULL,
    started_at_ms BIGINT,
    completed_at_ms BIGINT,
    resumable BOOLEAN NOT NULL DEFAULT FALSE,
    remote BOOLEAN NOT NULL DEFAULT FALSE,
    workspace TEXT
);
CREATE INDEX tasks_by_session ON tasks (session_id, created_at_ms);
CREATE INDEX tasks_by_status ON tasks (status);
CREATE TABLE task_events (
    task_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    timestamp_ms BIGINT NOT NULL,
    event TEXT NOT NULL,
    status TEXT NOT NULL,
    progress DOUBLE PRECISION,
    message TEXT NOT NULL,
    data TEXT,
    PRIMARY KEY (task_id, seq)
);
CREATE TABLE skill_memory (
    session_id TEXT NOT NULL,
    skill_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (session_id, skill_id, key)
);
",
    "
ALTER TABLE tasks ADD COLUMN node TEXT, ADD COLUMN attempt BIGINT NOT NULL DEFAULT 0;
CREATE INDEX tasks_ready ON tasks (session_id, created_at_ms, row_no)
    WHERE node IS NULL AND NOT paused AND status IN ('PENDING', 'PLANNING', 'RUNNING', 'WAITING');
CREATE INDEX tasks_held ON tasks (node)
    WHERE node IS NOT NULL AND status IN ('PENDING', 'PLANNING', 'RUNNING', 'WAITING');
CREATE INDEX tasks_unfinished ON tasks (session_id)
    WHERE status IN ('PENDING', 'PLANNING', 'RUNNING', 'WAITING');
CREATE TABLE cluster_nodes (
    name TEXT PRIMARY KEY NOT NULL,
    incarnation BIGINT NOT NULL,
    state TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL,
    lease_until TIMESTAMPTZ NOT NULL,
    max_concurrent INTEGER NOT NULL,
    version TEXT NOT NULL
);
CREATE TABLE task_commands (
    id BIGSERIAL PRIMARY KEY,
    task_id TEXT NOT NULL,
    node TEXT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE TABLE cluster_sessions (
    session_id TEXT PRIMARY KEY NOT NULL,
    served_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX task_commands_by_node ON task_commands (node);
CREATE INDEX task_commands_by_task ON task_commands (task_id);
",
    audit::MIGRATION,
    trust::MIGRATION,
    identity::MIGRATION,
    skills::MIGRATION,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 4096;

/// Longest wait for a connection (each attempt).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a batch (or a read) waits for PostgreSQL to come back before
/// its writers (or reader) are told it failed.
const UNAVAILABLE_AFTER: Duration = Duration::from_secs(30);

/// Longest pause between attempts to reconnect.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A read, run on the store's thread against the reader connection.
type Job = Box<dyn FnOnce(Arc<Conn>) -> BoxFuture<'static, ()> + Send>;

/// A connection and its prepared statements: each SQL text is parsed once
/// per connection, not once per call (parsing and planning was most of
/// PostgreSQL's work under load).
struct Conn {
    client: Client,
    prepared: std::sync::Mutex<std::collections::HashMap<String, tokio_postgres::Statement>>,
}

impl Conn {
    fn new(client: Client) -> Conn {
        Conn { client, prepared: Default::default() }
    }

    fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// `sql`, prepared on this connection (once).
    async fn statement(&self, sql: &str) -> Result<tokio_postgres::Statement, tokio_postgres::Error> {
        if let Some(s) = self.prepared.lock().unwrap_or_else(|p| p.into_inner()).get(sql) {
            return Ok(s.clone());
        }
        let statement = self.client.prepare(sql).await?;
        self.prepared.lock().unwrap_or_else(|p| p.into_inner()).insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let statement = self.statement(sql).await?;
        self.client.query(&statement, params).await
    }

    async fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Row, tokio_postgres::Error> {
        let statement = self.statement(sql).await?;
        self.client.query_one(&statement, params).await
    }

    async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        let statement = self.statement(sql).await?;
        self.client.query_opt(&statement, params).await
    }

    async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let statement = self.statement(sql).await?;
        self.client.execute(&statement, params).await
    }
}

/// The task store in a PostgreSQL database.
pub struct PgTaskStore {
    /// The URL with its password hidden, for messages.
    url: String,
    writes: mpsc::UnboundedSender<Queued>,
    reads: mpsc::UnboundedSender<Job>,
    /// This node's side of the cluster, when the store is shared.
    cluster: Option<cluster::PgCluster>,
    /// Signs the cluster's audit checkpoints; tasks' outcomes are recorded
    /// in the transactions that store them (cluster only).
    signing: Option<AuditSigning>,
}

/// `url` with any password replaced by `***` (URL or key=value form).
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        let authority = match authority.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***@{host}"),
                None => authority.to_owned(),
            },
            None => authority.to_owned(),
        };
        // `?password=…` is accepted too.
        let tail = match tail.split_once('?') {
            Some((path, query)) => {
                let query: Vec<String> = query
                    .split('&')
                    .map(|kv| match kv.split_once('=') {
                        Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                        _ => kv.to_owned(),
                    })
                    .collect();
                format!("{path}?{}", query.join("&"))
            }
            None => tail.to_owned(),
        };
        return format!("{scheme}://{authority}{tail}");
    }
    redact_key_values(url)
}

/// The key=value form (`host=db password='a b'`, spaces allowed around
/// `=`, values in single quotes with backslash escapes), its password
/// value hidden.
fn redact_key_values(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("password") {
        let (before, after) = rest.split_at(at);
        out.push_str(before);
        out.push_str("password");
        let after = &after["password".len()..];
        let trimmed = after.trim_start();
        let Some(value) = trimmed.strip_prefix('=') else {
            rest = after;
            continue;
        };
        out.push_str(" = ***");
        let value = value.trim_start();
        // Skip the value: quoted (backslash escapes) or up to whitespace.
        let end = if let Some(quoted) = value.strip_prefix('\'') {
            let mut escaped = false;
            let mut end = value.len();
            for (i, c) in quoted.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '\'' => {
                        end = i + 2;
                        break;
                    }
                    _ => {}
                }
            }
            end
        } else {
            value.find(char::is_whitespace).unwrap_or(value.len())
        };
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

impl PgTaskStore {
    /// Connects to `url`, brings the schema up to [`SCHEMA_VERSION`]
    /// (refusing a newer one) and starts the store's thread. For one
    /// engine: several on the same database would each run every task.
    pub fn open(url: &str, on_commit: Arc<OnCommit>) -> Result<Arc<PgTaskStore>, StoreError> {
        Self::open_with(url, None, on_commit)
    }

    /// [`PgTaskStore::open`] as node `node` of a cluster: tasks are
    /// claimed under leases that a heartbeat renews every `lease` / 4
    /// (see [`ClusterStore`]). The engine joins the cluster. Each task's
    /// outcome is recorded in the cluster's audit log (see
    /// [`PgSharedState`]) in the transaction that stores it, its
    /// checkpoints signed by `signing`.
    pub fn open_cluster(
        url: &str,
        node: &str,
        lease: Duration,
        signing: AuditSigning,
        on_commit: Arc<OnCommit>,
    ) -> Result<Arc<PgTaskStore>, StoreError> {
        Self::open_with(url, Some((node.to_owned(), lease, signing)), on_commit)
    }

    fn open_with(
        url: &str,
        node: Option<(String, Duration, AuditSigning)>,
        on_commit: Arc<OnCommit>,
    ) -> Result<Arc<PgTaskStore>, StoreError> {
        let shown = redact_url(url);
        let config: tokio_postgres::Config =
            url.parse().map_err(|e| StoreError::Postgres { url: shown.clone(), message: format!("not a URL: {e}") })?;
        let (writes, write_rx) = mpsc::unbounded_channel();
        let (reads, read_rx) = mpsc::unbounded_channel();
        let (cluster_jobs, cluster_rx) = mpsc::unbounded_channel();
        let (notices_tx, notices_rx) = mpsc::unbounded_channel();
        let writer_node = node.as_ref().map(|(n, _, signing)| (n.clone(), signing.clone()));
        let cluster_node = writer_node.clone();
        // Connecting happens on the store's thread (the caller may be on an
        // async runtime, where blocking on another one is not allowed); the
        // caller waits for the outcome.
        let thread_url = shown.clone();
        on_own_thread("coderclaw-task-pg", move |opened_tx| async move {
            let url = thread_url;
            let pg_err = |e: tokio_postgres::Error| not_connected(&url, &e);
            let connected = async {
                let writer = connect(&config).await.map_err(pg_err)?;
                migrate(&writer, &url).await?;
                let reader = connect(&config).await.map_err(pg_err)?;
                Ok::<_, StoreError>((writer, reader))
            };
            let (writer, reader) = match connected.await {
                Ok(c) => c,
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                    return;
                }
            };
            let mut helpers = vec![tokio::spawn(read_loop(config.clone(), reader, read_rx, url.clone()))];
            if let Some((node, _)) = cluster_node {
                let client = match connect(&config).await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = opened_tx.send(Err(pg_err(e)));
                        return;
                    }
                };
                let jobs = cluster::job_loop(config.clone(), client, cluster_rx, url.clone(), node.clone());
                helpers.push(tokio::spawn(jobs));
                helpers.push(tokio::spawn(cluster::listen_loop(config.clone(), url.clone(), node, notices_tx)));
            }
            let _ = opened_tx.send(Ok(()));
            let node = writer_node.as_ref().map(|(n, s)| (n.as_str(), s));
            writer_loop(config, writer, write_rx, &url, node, &*on_commit).await;
            for h in helpers {
                h.abort();
            }
        })?;
        let signing = node.as_ref().map(|(_, _, s)| s.clone());
        let cluster =
            node.map(|(node, lease, signing)| cluster::PgCluster::new(node, lease, signing, cluster_jobs, notices_rx));
        Ok(Arc::new(PgTaskStore { url: shown, writes, reads, cluster, signing }))
    }

    fn enqueue(&self, q: Queued) -> Result<(), StoreError> {
        self.writes.send(q).map_err(|_| StoreError::WriterStopped)
    }

    /// Runs `f` on the reader connection and waits for its answer.
    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(Arc<Conn>) -> BoxFuture<'static, Result<T, tokio_postgres::Error>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let job: Job = Box::new(move |client| {
            Box::pin(async move {
                let _ = tx.send(f(client).await);
            })
        });
        self.reads.send(job).map_err(|_| StoreError::WriterStopped)?;
        // Bounded: a read never holds its caller longer than PostgreSQL
        // may be away (the reader gives a job up after as long).
        let answer = rx.recv_timeout(UNAVAILABLE_AFTER + Duration::from_secs(5)).map_err(|_| StoreError::Postgres {
            url: self.url.clone(),
            message: format!("no answer within {} s: PostgreSQL is unreachable", UNAVAILABLE_AFTER.as_secs()),
        })?;
        answer.map_err(|e| StoreError::Postgres { url: self.url.clone(), message: describe(&e) })
    }
}

/// Runs `body` on a thread named `name` with a small runtime of its own
/// (the caller may be on an async runtime, where blocking on another one
/// is not allowed), and waits for `body` to say it opened, or why not.
fn on_own_thread<F>(
    name: &str,
    body: impl FnOnce(std::sync::mpsc::SyncSender<Result<(), StoreError>>) -> F + Send + 'static,
) -> Result<(), StoreError>
where
    F: std::future::Future<Output = ()>,
{
    let (opened_tx, opened) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime.block_on(body(opened_tx)),
            Err(e) => {
                let _ = opened_tx.send(Err(StoreError::Thread(e.to_string())));
            }
        })
        .map_err(|e| StoreError::Thread(e.to_string()))?;
    opened.recv().map_err(|_| StoreError::WriterStopped)?
}

/// Connecting to `url` (password hidden) failed: what PostgreSQL said,
/// and what to check.
fn not_connected(url: &str, e: &tokio_postgres::Error) -> StoreError {
    StoreError::Postgres {
        url: url.to_owned(),
        message: format!(
            "{}: check that PostgreSQL runs and accepts connections there, and the user, password and database in \
             the URL",
            describe(e)
        ),
    }
}

/// The error with PostgreSQL's own message when it sent one.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

async fn connect(config: &tokio_postgres::Config) -> Result<Client, tokio_postgres::Error> {
    let mut config = config.clone();
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "task store connection closed");
        }
    });
    // Statements are prepared once per connection; a plan made for one
    // set of values (the queue nearly empty, or a session's few tasks)
    // would be wrong for others, so each execution is planned for its own.
    // The server notices a vanished node (a crashed machine, a cut network)
    // in about 25 s, and so frees its node name's lock. Appends to the
    // audit chain and the shared changes read the newest row after taking
    // a lock: that needs each statement to see what committed before it.
    client
        .batch_execute(
            "SET plan_cache_mode = force_custom_plan; SET tcp_keepalives_idle = 10; \
             SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3; \
             SET default_transaction_isolation = 'read committed'",
        )
        .await?;
    Ok(client)
}

/// A new connection, retried with backoff while PostgreSQL is unreachable,
/// until `deadline`.
async fn reconnect_until(config: &tokio_postgres::Config, url: &str, deadline: Instant) -> Option<Client> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match connect(config).await {
            Ok(c) => {
                tracing::info!(url, "task store reconnected");
                return Some(c);
            }
            Err(e) => {
                if Instant::now() + backoff > deadline {
                    return None;
                }
                tracing::warn!(url, error = %describe(&e), retry_in = ?backoff, "task store unreachable");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Whether `e` is the connection's failure rather than the statement's:
/// no SQLSTATE, or class 08 (connection exception) or 57 (the server
/// shutting down or restarting).
fn connection_lost(e: &tokio_postgres::Error) -> bool {
    e.is_closed() || e.code().is_none_or(|c| c.code().starts_with("08") || c.code().starts_with("57"))
}

/// Applies the migrations the database lacks, one node at a time.
async fn migrate(client: &Client, url: &str) -> Result<(), StoreError> {
    let err = |e: tokio_postgres::Error| StoreError::Postgres { url: url.to_owned(), message: describe(&e) };
    // Serialises nodes starting together (the lock ends with the transaction).
    client
        .batch_execute(
            "BEGIN; SELECT pg_advisory_xact_lock(7421001);
             CREATE TABLE IF NOT EXISTS coderclaw_schema (version INTEGER NOT NULL)",
        )
        .await
        .map_err(err)?;
    let found: i32 =
        client.query_one("SELECT COALESCE(MAX(version), 0) FROM coderclaw_schema", &[]).await.map_err(err)?.get(0);
    if found > SCHEMA_VERSION {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(StoreError::SchemaTooNew { url: url.to_owned(), found, supported: SCHEMA_VERSION });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i as i32 + 1;
        if let Err(e) = client.batch_execute(sql).await {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(err(e));
        }
        client.execute("INSERT INTO coderclaw_schema (version) VALUES ($1)", &[&version]).await.map_err(err)?;
        tracing::info!(url, version, "task store schema migrated");
    }
    client.batch_execute("COMMIT").await.map_err(err)
}

async fn read_loop(
    config: tokio_postgres::Config,
    client: Client,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    url: String,
) {
    let mut client = Arc::new(Conn::new(client));
    while let Some(job) = jobs.recv().await {
        if client.is_closed() {
            // A read that met the break failed with it; the next waits here,
            // and is given up (its caller told) if PostgreSQL stays away.
            match reconnect_until(&config, &url, Instant::now() + UNAVAILABLE_AFTER).await {
                Some(c) => client = Arc::new(Conn::new(c)),
                None => continue,
            }
        }
        // Pipelined: many reads in flight on the one connection.
        tokio::spawn(job(client.clone()));
    }
}

/// Commits `batch`, on a new connection if the current one is lost, for
/// at most [`UNAVAILABLE_AFTER`]: every write in a batch is idempotent, so
/// a batch whose commit was cut off is written again whole.
async fn write_batch(
    config: &tokio_postgres::Config,
    client: &mut Option<Conn>,
    batch: &[Queued],
    url: &str,
    node: Option<(&str, &AuditSigning)>,
) -> Result<Vec<usize>, String> {
    let deadline = Instant::now() + UNAVAILABLE_AFTER;
    loop {
        let mut c = match client.take().filter(|c| !c.is_closed()) {
            Some(c) => c,
            None => match reconnect_until(config, url, deadline).await {
                Some(c) => Conn::new(c),
                None => {
                    let waited = UNAVAILABLE_AFTER.as_secs();
                    return Err(format!("task store {url}: PostgreSQL unreachable for {waited} s"));
                }
            },
        };
        let result = commit(&mut c, batch, node).await;
        *client = Some(c);
        match result {
            Ok(fenced) => return Ok(fenced),
            Err(e) if connection_lost(&e) && Instant::now() < deadline => {
                tracing::warn!(url, error = %describe(&e), "task store connection lost; writing the batch again");
                *client = None;
            }
            Err(e) => return Err(format!("task store {url}: {}", describe(&e))),
        }
    }
}

async fn writer_loop(
    config: tokio_postgres::Config,
    client: Client,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    url: &str,
    node: Option<(&str, &AuditSigning)>,
    on_commit: &OnCommit,
) {
    let mut client = Some(Conn::new(client));
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(q) => batch.push(q),
                Err(_) => break,
            }
        }
        let result = write_batch(&config, &mut client, &batch, url, node).await;
        if let Err(e) = &result {
            tracing::error!(url, error = %e, writes = batch.len(), "task store commit failed");
        }
        settle(batch, result, on_commit);
    }
}

/// The row upsert: a new task is inserted; an existing one is updated only
/// while its lease is still the writer's ($26, $27), so a node that lost a
/// task cannot change it. Sets the lease to $24, $25.
const UPSERT_ROW: &str = "INSERT INTO tasks (id, description, target_kind, target_id, input, session_id, user_name,
        parent_task_id, metadata, status, paused, progress, prompt, output, error, created_at_ms, started_at_ms,
        completed_at_ms, resumable, remote, error_code, error_reasons, workspace, node, attempt)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21,
        $22, $23, $24, $25)
     ON CONFLICT (id) DO UPDATE SET status = excluded.status, paused = excluded.paused,
        progress = excluded.progress, prompt = excluded.prompt, output = excluded.output,
        error = excluded.error, error_code = excluded.error_code,
        error_reasons = excluded.error_reasons, started_at_ms = excluded.started_at_ms,
        completed_at_ms = excluded.completed_at_ms, node = excluded.node, attempt = excluded.attempt
     WHERE tasks.node IS NOT DISTINCT FROM $26 AND tasks.attempt = $27";

/// An event, stored only while the task's lease is still $9, $10 (no check
/// when $9 is NULL: the task is not held). One row when it was stored, or
/// already was (a batch written again after a lost commit reply); none
/// only when the lease check failed (fenced).
const INSERT_EVENT: &str =
    "INSERT INTO task_events (task_id, seq, timestamp_ms, event, status, progress, message, data)
     SELECT $1::TEXT, $2::BIGINT, $3::BIGINT, $4::TEXT, $5::TEXT, $6::DOUBLE PRECISION, $7::TEXT, $8::TEXT
     WHERE $9::TEXT IS NULL
        OR EXISTS (SELECT 1 FROM tasks WHERE id = $1 AND node = $9 AND attempt = $10 FOR SHARE)
     ON CONFLICT (task_id, seq) DO UPDATE SET seq = excluded.seq";

/// The channel nodes notify each other on.
const CHANNEL: &str = "coderclaw_cluster";

/// Longest notification payload sent (PostgreSQL's limit is 8000 bytes).
const MAX_PAYLOAD: usize = 7000;

/// Commits `batch` in one transaction; returns the positions of the writes
/// that were fenced (their task's lease is gone). `node`: this node and
/// its audit signing, when the store is shared; other nodes are then told
/// of new work and events, and the outcomes of the tasks that finish are
/// recorded in the cluster's audit log in the same transaction.
async fn commit(
    conn: &mut Conn,
    batch: &[Queued],
    node: Option<(&str, &AuditSigning)>,
) -> Result<Vec<usize>, tokio_postgres::Error> {
    let finishes = |q: &Queued| matches!(&q.write, Write::Task { event: Some(e), .. } if e.event == TaskEventKind::Status && e.status.is_terminal());
    let audit_sql = match node {
        Some(_) if batch.iter().any(finishes) => Some(audit::AuditSql::on(conn).await?),
        _ => None,
    };
    let (upsert, insert_event, release, remember, forget, notify) = tokio::try_join!(
        conn.statement(UPSERT_ROW),
        conn.statement(INSERT_EVENT),
        conn.statement(
            "UPDATE tasks SET node = NULL, attempt = attempt + 1 WHERE id = $1 AND node = $2 AND attempt = $3"
        ),
        conn.statement(
            "INSERT INTO skill_memory (session_id, skill_id, key, value, updated_at_ms) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (session_id, skill_id, key) DO UPDATE SET value = excluded.value,
                 updated_at_ms = excluded.updated_at_ms"
        ),
        conn.statement("DELETE FROM skill_memory WHERE session_id = $1 AND skill_id = $2 AND key = $3"),
        conn.statement("SELECT pg_notify($1, $2)"),
    )?;
    let tx = conn.client.transaction().await?;
    // A task changed several times in the batch has its row written once,
    // as it is last; every event is kept.
    let mut last_row = std::collections::HashMap::new();
    for (i, q) in batch.iter().enumerate() {
        if let Write::Task { task, .. } = &q.write {
            last_row.insert(task.state.id.as_str(), i);
        }
    }
    /// What a statement's row count says about write `i`: fenced when 0.
    enum Check {
        Fenced(usize),
        Nothing,
    }
    // Every statement is sent at once, in order (pipelined: one round trip
    // for the batch, not one per statement); PostgreSQL runs them in that
    // order, so a row is written before its events, as queued.
    let mut statements: Vec<(Check, futures_util::future::BoxFuture<'_, Result<u64, tokio_postgres::Error>>)> =
        Vec::new();
    let mut work = false;
    let mut touched: Vec<&str> = Vec::new();
    // Borrowed by the statements' futures.
    let (t, release, remember, forget, notify) = (&tx, &release, &remember, &forget, &notify);
    for (i, q) in batch.iter().enumerate() {
        match &q.write {
            Write::Task { task, event } => {
                if last_row.get(task.state.id.as_str()) == Some(&i) {
                    statements
                        .push((Check::Fenced(i), Box::pin(upsert_row(&tx, &upsert, task, &task.lease, &task.lease))));
                }
                work |= task.lease.node.is_none() && task.state.status == TaskStatus::Pending && !task.state.paused;
                if let Some(e) = event {
                    // An event of a held task is checked against the lease itself.
                    let check = if task.lease.node.is_some() { Check::Fenced(i) } else { Check::Nothing };
                    statements.push((check, Box::pin(add_event(&tx, &insert_event, e, &task.lease))));
                    touched.push(&e.task_id);
                }
            }
            Write::Event { event, lease } => {
                let check = if lease.node.is_some() { Check::Fenced(i) } else { Check::Nothing };
                statements.push((check, Box::pin(add_event(&tx, &insert_event, event, lease))));
                touched.push(&event.task_id);
            }
            Write::Release { id, lease } => {
                work = true;
                let attempt = lease.attempt as i64;
                let run = async move { t.execute(release, &[id, &lease.node, &attempt]).await };
                statements.push((Check::Nothing, Box::pin(run)));
            }
            Write::Flush => {}
            Write::Memory { session, skill, key, value: Some(v), at_ms } => {
                let at = *at_ms as i64;
                let run = async move { t.execute(remember, &[session, skill, key, v, &at]).await };
                statements.push((Check::Nothing, Box::pin(run)));
            }
            Write::Memory { session, skill, key, value: None, .. } => {
                let run = async move { t.execute(forget, &[session, skill, key]).await };
                statements.push((Check::Nothing, Box::pin(run)));
            }
        }
    }
    if let Some((node, _)) = node {
        // Delivered at commit, to every listening node.
        if work {
            let run = async move { t.execute(notify, &[&CHANNEL, &"work"]).await };
            statements.push((Check::Nothing, Box::pin(run)));
        }
        if !touched.is_empty() {
            let payload = events_payload(node, &touched);
            let run = async move { t.execute(notify, &[&CHANNEL, &payload]).await };
            statements.push((Check::Nothing, Box::pin(run)));
        }
    }
    let (checks, runs): (Vec<Check>, Vec<_>) = statements.into_iter().unzip();
    let counts = futures_util::future::try_join_all(runs).await?;
    let mut fenced: Vec<usize> = checks
        .iter()
        .zip(counts)
        .filter_map(|(check, rows)| match check {
            Check::Fenced(i) if rows == 0 => Some(*i),
            _ => None,
        })
        .collect();
    fenced.dedup();
    let mut heads = None;
    if let (Some(sql), Some((_, signing))) = (&audit_sql, node) {
        let finished: Vec<&TaskState> = batch
            .iter()
            .enumerate()
            .filter(|(i, q)| finishes(q) && !fenced.contains(i))
            .filter_map(|(_, q)| match &q.write {
                Write::Task { task, .. } => Some(&task.state),
                _ => None,
            })
            .collect();
        heads = Some((audit::record_outcomes(&tx, sql, &finished, signing).await?.heads, signing));
    }
    tx.commit().await?;
    if let Some((heads, signing)) = heads {
        signing.witness(&heads);
    }
    Ok(fenced)
}

/// `events NODE ID...`, or `events NODE *` when the ids do not fit.
fn events_payload(node: &str, ids: &[&str]) -> String {
    let mut payload = format!("events {node}");
    let mut seen = std::collections::HashSet::new();
    for id in ids {
        if !seen.insert(*id) {
            continue;
        }
        if payload.len() + id.len() + 1 > MAX_PAYLOAD {
            return format!("events {node} *");
        }
        payload.push(' ');
        payload.push_str(id);
    }
    payload
}

/// Writes `task`'s row with lease `to` if the stored lease is `fence`;
/// returns the rows written (0: fenced).
async fn upsert_row(
    tx: &tokio_postgres::Transaction<'_>,
    statement: &tokio_postgres::Statement,
    task: &StoredTask,
    to: &Lease,
    fence: &Lease,
) -> Result<u64, tokio_postgres::Error> {
    let s = &task.state;
    let json = |v: &Value| v.to_string();
    let progress = s.progress.map(f64::from);
    let created = s.created_at_ms as i64;
    let started = s.started_at_ms.map(|v| v as i64);
    let completed = s.completed_at_ms.map(|v| v as i64);
    let metadata = serde_json::to_string(&s.metadata).unwrap_or_else(|_| "{}".into());
    let reasons = s.error.as_ref().filter(|f| !f.reasons.is_empty()).map(|f| serde_json::json!(f.reasons).to_string());
    let workspace = s.workspace.as_ref().map(|w| serde_json::json!(w).to_string());
    tx.execute(
        statement,
        &[
            &s.id,
            &s.description,
            &s.target.kind().as_str(),
            &s.target.id(),
            &json(&s.input),
            &s.session_id,
            &s.user,
            &s.parent_task_id,
            &metadata,
            &s.status.as_str(),
            &s.paused,
            &progress,
            &s.prompt,
            &s.output.as_ref().map(json),
            &s.error.as_ref().map(|f| f.message.as_str()),
            &created,
            &started,
            &completed,
            &task.resumable,
            &s.remote,
            &s.error.as_ref().map(|f| f.code.as_str()),
            &reasons,
            &workspace,
            &to.node,
            &(to.attempt as i64),
            &fence.node,
            &(fence.attempt as i64),
        ],
    )
    .await
}

/// Stores event `e` if `lease` still holds; returns the rows written.
async fn add_event(
    tx: &tokio_postgres::Transaction<'_>,
    statement: &tokio_postgres::Statement,
    e: &TaskUpdateEvent,
    lease: &Lease,
) -> Result<u64, tokio_postgres::Error> {
    let progress = e.progress.map(f64::from);
    let data = e.data.as_ref().map(Value::to_string);
    tx.execute(
        statement,
        &[
            &e.task_id,
            &(e.seq as i64),
            &(e.timestamp_ms as i64),
            &e.event.as_str(),
            &e.status.as_str(),
            &progress,
            &e.message,
            &data,
            &lease.node,
            &(lease.attempt as i64),
        ],
    )
    .await
}

const COLUMNS: &str = "id, description, target_kind, target_id, input, session_id, user_name, parent_task_id, metadata,
    status, paused, progress, prompt, output, error, error_code, error_reasons, created_at_ms, started_at_ms,
    completed_at_ms, resumable, remote, workspace, node, attempt,
    (SELECT COALESCE(MAX(seq), 0) FROM task_events e WHERE e.task_id = t.id) AS last_seq";

/// A row this code cannot read back, as a store error.
#[derive(Debug, thiserror::Error)]
#[error("{column}: {message}")]
struct Corrupt {
    column: &'static str,
    message: String,
}

fn json_column(r: &Row, column: &'static str) -> Result<Option<Value>, Corrupt> {
    let text: Option<String> = r.get(column);
    text.map(|t| serde_json::from_str(&t).map_err(|e| Corrupt { column, message: e.to_string() })).transpose()
}

fn read_event(r: &Row) -> Result<TaskUpdateEvent, Corrupt> {
    let event: String = r.get("event");
    let status: String = r.get("status");
    Ok(TaskUpdateEvent {
        task_id: r.get("task_id"),
        seq: r.get::<_, i64>("seq") as u64,
        timestamp_ms: r.get::<_, i64>("timestamp_ms") as u64,
        event: TaskEventKind::parse(&event)
            .ok_or_else(|| Corrupt { column: "event", message: format!("unknown kind `{event}`") })?,
        status: TaskStatus::parse(&status).map_err(|message| Corrupt { column: "status", message })?,
        progress: r.get::<_, Option<f64>>("progress").map(|p| p as f32),
        message: r.get("message"),
        data: json_column(r, "data")?,
    })
}

fn read_task(r: &Row) -> Result<StoredTask, Corrupt> {
    let target_id: String = r.get("target_id");
    let target = match r.get::<_, String>("target_kind").as_str() {
        "agent" => TaskTarget::Agent(target_id),
        _ => TaskTarget::Skill(target_id),
    };
    let status: String = r.get("status");
    let metadata = json_column(r, "metadata")?.unwrap_or_default();
    let corrupt = |column: &'static str| move |e: serde_json::Error| Corrupt { column, message: e.to_string() };
    let error = match r.get::<_, Option<String>>("error") {
        None => None,
        Some(message) => {
            let code: Option<String> = r.get("error_code");
            let code = match code {
                Some(c) => FailureCode::parse(&c)
                    .ok_or_else(|| Corrupt { column: "error_code", message: format!("unknown code `{c}`") })?,
                None => FailureCode::Internal,
            };
            let reasons = match json_column(r, "error_reasons")? {
                Some(v) => serde_json::from_value(v).map_err(corrupt("error_reasons"))?,
                None => Vec::new(),
            };
            Some(TaskFailure { code, message, reasons })
        }
    };
    let state = TaskState {
        id: r.get("id"),
        description: r.get("description"),
        status: TaskStatus::parse(&status).map_err(|message| Corrupt { column: "status", message })?,
        target,
        input: json_column(r, "input")?.unwrap_or_default(),
        session_id: r.get("session_id"),
        user: r.get("user_name"),
        remote: r.get("remote"),
        parent_task_id: r.get("parent_task_id"),
        metadata: serde_json::from_value(metadata).map_err(corrupt("metadata"))?,
        paused: r.get("paused"),
        workspace: json_column(r, "workspace")?
            .map(serde_json::from_value)
            .transpose()
            .map_err(corrupt("workspace"))?,
        progress: r.get::<_, Option<f64>>("progress").map(|p| p as f32),
        prompt: r.get("prompt"),
        output: json_column(r, "output")?,
        error,
        created_at_ms: r.get::<_, i64>("created_at_ms") as u64,
        started_at_ms: r.get::<_, Option<i64>>("started_at_ms").map(|v| v as u64),
        completed_at_ms: r.get::<_, Option<i64>>("completed_at_ms").map(|v| v as u64),
    };
    Ok(StoredTask {
        state,
        resumable: r.get("resumable"),
        last_seq: r.get::<_, i64>("last_seq") as u64,
        lease: Lease { node: r.get("node"), attempt: r.get::<_, i64>("attempt") as u64 },
    })
}

/// Rows read by `f`, a corrupt one failing the read.
fn rows<T>(rows: Vec<Row>, f: fn(&Row) -> Result<T, Corrupt>, url: &str) -> Result<Vec<T>, StoreError> {
    rows.iter()
        .map(|r| f(r).map_err(|e| StoreError::Postgres { url: url.to_owned(), message: e.to_string() }))
        .collect()
}

impl TaskStore for PgTaskStore {
    fn send(&self, queued: Queued) -> Result<(), StoreError> {
        self.enqueue(queued)
    }

    fn get(&self, id: &str) -> Result<Option<StoredTask>, StoreError> {
        let id = id.to_owned();
        let found = self.read(move |c| {
            Box::pin(async move { c.query(&format!("SELECT {COLUMNS} FROM tasks t WHERE id = $1"), &[&id]).await })
        })?;
        Ok(rows(found, read_task, &self.url)?.pop())
    }

    fn list(&self, filter: &TaskFilter) -> Result<Vec<StoredTask>, StoreError> {
        let limit = i64::from(filter.limit.unwrap_or(100).clamp(1, 1000));
        let status = filter.status.map(|s| s.as_str().to_owned());
        let session = filter.session.clone();
        let found = self.read(move |c| {
            Box::pin(async move {
                c.query(
                    &format!(
                        "SELECT {COLUMNS} FROM tasks t
                         WHERE ($1::TEXT IS NULL OR status = $1) AND ($2::TEXT IS NULL OR session_id = $2)
                         ORDER BY created_at_ms DESC, row_no DESC LIMIT $3"
                    ),
                    &[&status, &session, &limit],
                )
                .await
            })
        })?;
        rows(found, read_task, &self.url)
    }

    fn unfinished(&self) -> Result<Vec<StoredTask>, StoreError> {
        let found = self.read(move |c| {
            Box::pin(async move {
                c.query(
                    &format!(
                        "SELECT {COLUMNS} FROM tasks t
                         WHERE status IN ('PENDING', 'PLANNING', 'RUNNING', 'WAITING') ORDER BY created_at_ms, row_no"
                    ),
                    &[],
                )
                .await
            })
        })?;
        rows(found, read_task, &self.url)
    }

    fn events(&self, id: &str, after: u64, limit: u32) -> Result<Vec<TaskUpdateEvent>, StoreError> {
        let (id, after, limit) = (id.to_owned(), after as i64, i64::from(limit));
        let found = self.read(move |c| {
            Box::pin(async move {
                c.query(
                    "SELECT task_id, seq, timestamp_ms, event, status, progress, message, data
                     FROM task_events WHERE task_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                    &[&id, &after, &limit],
                )
                .await
            })
        })?;
        rows(found, read_event, &self.url)
    }

    fn counts(&self) -> Result<(u64, u64, u64), StoreError> {
        let row = self.read(move |c| {
            Box::pin(async move {
                c.query_one(
                    "SELECT COUNT(*) FILTER (WHERE status = 'PENDING'),
                            COUNT(*) FILTER (WHERE status IN ('PLANNING', 'RUNNING', 'WAITING')), COUNT(*)
                     FROM tasks",
                    &[],
                )
                .await
            })
        })?;
        Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64, row.get::<_, i64>(2) as u64))
    }

    fn memory_get(&self, session: &str, skill: &str, key: &str) -> Result<Option<String>, StoreError> {
        let (session, skill, key) = (session.to_owned(), skill.to_owned(), key.to_owned());
        let found = self.read(move |c| {
            Box::pin(async move {
                c.query_opt(
                    "SELECT value FROM skill_memory WHERE session_id = $1 AND skill_id = $2 AND key = $3",
                    &[&session, &skill, &key],
                )
                .await
            })
        })?;
        Ok(found.map(|r| r.get(0)))
    }

    fn memory_len(&self, session: &str, skill: &str) -> Result<u64, StoreError> {
        let (session, skill) = (session.to_owned(), skill.to_owned());
        let row = self.read(move |c| {
            Box::pin(async move {
                c.query_one(
                    "SELECT COUNT(*) FROM skill_memory WHERE session_id = $1 AND skill_id = $2",
                    &[&session, &skill],
                )
                .await
            })
        })?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    fn cluster(&self) -> Option<&dyn ClusterStore> {
        self.cluster.is_some().then_some(self as &dyn ClusterStore)
    }

    fn records_outcomes(&self) -> bool {
        self.signing.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn a_password_never_appears_in_a_shown_url() {
        assert_eq!(redact_url("postgres://app:s3cret@db:5432/cc"), "postgres://app:***@db:5432/cc");
        assert_eq!(redact_url("postgresql://app@db/cc?sslmode=require"), "postgresql://app@db/cc?sslmode=require");
        assert_eq!(redact_url("postgres://a:b@c@db/cc"), "postgres://a:***@db/cc");
        assert_eq!(
            redact_url("host=db user=app password=s3cret dbname=cc"),
            "host=db user=app password = *** dbname=cc"
        );
        assert_eq!(
            redact_url("postgres://app@db/cc?password=s3cret&sslmode=require"),
            "postgres://app@db/cc?password=***&sslmode=require"
        );
        for kv in [
            "host=db password = s3cret dbname=cc",
            "host=db password='s3 cret' dbname=cc",
            "host=db password='s3\\'cret' dbname=cc",
        ] {
            let shown = redact_url(kv);
            assert!(
                !shown.contains("s3") && !shown.contains("cret") && shown.ends_with(" dbname=cc"),
                "{kv} -> {shown}"
            );
        }
    }
}
