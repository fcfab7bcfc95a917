//! The cluster's audit log: one hash chain in the `audit` table that every
//! node appends to, the same records (and checkpoints, each node signing
//! with its own device key) as a state directory's `audit.db`.
//!
//! Appends take one transaction-scoped advisory lock, always as the last
//! lock of their transaction and held to its commit, so the chain stays
//! linear across nodes and no two transactions wait on each other's
//! locks in opposite orders. A task's outcome is recorded in the very
//! transaction that stores its final state ([`record_outcomes`]), so a
//! final state is never stored without its record, nor the reverse.

use super::{
    Conn, SCHEMA_VERSION, UNAVAILABLE_AFTER, connect, connection_lost, describe, on_own_thread, reconnect_until,
    redact_url,
};
use crate::store::StoreError;
use coderclaw_core::clock::now_ms;
use coderclaw_core::task::TaskState;
use coderclaw_security::audit::{AuditError, AuditEvent, AuditFilter, AuditRecord, AuditSigning, AuditStore, Chained};
use futures_util::future::BoxFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_postgres::{Row, Statement, Transaction};

/// The schema's audit table (migration 3).
pub(super) const MIGRATION: &str = "
CREATE TABLE audit (
    seq BIGINT PRIMARY KEY,
    timestamp_ms BIGINT NOT NULL,
    action TEXT NOT NULL,
    user_name TEXT,
    device TEXT,
    session TEXT,
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    result TEXT NOT NULL,
    reason TEXT NOT NULL,
    metadata TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    batch TEXT
);
CREATE INDEX audit_batch ON audit (batch) WHERE batch IS NOT NULL;
CREATE INDEX audit_user ON audit (user_name);
CREATE INDEX audit_action ON audit (action);
CREATE INDEX audit_resource ON audit (resource_id);
";

/// The first schema version with everything nodes share besides tasks:
/// the audit table, trust, identities and installed skills.
const SHARED_SCHEMA: i32 = 6;

const COLUMNS: &str = "seq, timestamp_ms, action, user_name, device, session, resource_type, resource_id, result, \
                       reason, metadata, prev_hash, hash";

/// Held from the chain's head being read to the commit.
const LOCK: &str = "SELECT pg_advisory_xact_lock(7421002)";

const LAST: &str = "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1";

const INSERT: &str = "INSERT INTO audit (seq, timestamp_ms, action, user_name, device, session, resource_type, \
                      resource_id, result, reason, metadata, prev_hash, hash, batch)
                      VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";

/// The tasks among $1 whose outcome is already recorded.
const RECORDED: &str = "SELECT resource_id FROM audit WHERE resource_id = ANY($1) AND resource_type = 'task'
                        AND action IN ('task.completed', 'task.failed', 'task.cancelled')";

/// The rows an append stored, by its batch id.
const BATCH: &str = "SELECT seq, timestamp_ms, action, user_name, device, session, resource_type, resource_id, \
                     result, reason, metadata, prev_hash, hash FROM audit WHERE batch = $1 ORDER BY seq";

/// The statements an append runs, prepared on its connection.
pub(super) struct AuditSql {
    lock: Statement,
    last: Statement,
    insert: Statement,
    recorded: Statement,
    batch: Statement,
}

impl AuditSql {
    /// Prepared once per connection (cached).
    pub(super) async fn on(conn: &Conn) -> Result<AuditSql, tokio_postgres::Error> {
        let (lock, last, insert, recorded, batch) = tokio::try_join!(
            conn.statement(LOCK),
            conn.statement(LAST),
            conn.statement(INSERT),
            conn.statement(RECORDED),
            conn.statement(BATCH)
        )?;
        Ok(AuditSql { lock, last, insert, recorded, batch })
    }

    /// Prepared in `tx`, for transactions that run rarely.
    pub(super) async fn in_tx(tx: &Transaction<'_>) -> Result<AuditSql, tokio_postgres::Error> {
        let (lock, last, insert, recorded, batch) = tokio::try_join!(
            tx.prepare(LOCK),
            tx.prepare(LAST),
            tx.prepare(INSERT),
            tx.prepare(RECORDED),
            tx.prepare(BATCH)
        )?;
        Ok(AuditSql { lock, last, insert, recorded, batch })
    }
}

/// Appends `events` to the chain in `tx`, committed (or not) with the
/// rest of `tx`. The caller witnesses the heads once `tx` is committed.
async fn append_locked(
    tx: &Transaction<'_>,
    sql: &AuditSql,
    events: &[&AuditEvent],
    signing: &AuditSigning,
    batch: Option<&str>,
) -> Result<Chained, tokio_postgres::Error> {
    let last = tx.query_opt(&sql.last, &[]).await?.map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1)));
    let chained = signing.chain(last, events, now_ms() as i64);
    let inserts = chained.rows.iter().map(|r| async move {
        tx.execute(
            &sql.insert,
            &[
                &r.seq,
                &r.timestamp_ms,
                &r.action,
                &r.user,
                &r.device,
                &r.session,
                &r.resource_type,
                &r.resource_id,
                &r.result,
                &r.reason,
                &r.metadata,
                &r.prev_hash,
                &r.hash,
                &batch,
            ],
        )
        .await
    });
    // Pipelined: one round trip for every row.
    futures_util::future::try_join_all(inserts).await?;
    Ok(chained)
}

/// Appends `events` in `tx` (see [`append_locked`]), taking the chain's
/// lock, unless batch `batch` is stored already (an attempt whose commit
/// reply was lost): then what it stored. So an append tried again on a
/// new connection is stored once. The flag says whether it was stored
/// now.
pub(super) async fn append_once(
    tx: &Transaction<'_>,
    sql: &AuditSql,
    events: &[&AuditEvent],
    signing: &AuditSigning,
    batch: &str,
) -> Result<(Chained, bool), tokio_postgres::Error> {
    if events.is_empty() {
        return Ok((Chained::default(), true));
    }
    tx.query_one(&sql.lock, &[]).await?;
    let stored: Vec<AuditRecord> = tx.query(&sql.batch, &[&batch]).await?.iter().map(read_record).collect();
    if stored.is_empty() {
        return Ok((append_locked(tx, sql, events, signing, Some(batch)).await?, true));
    }
    let (checkpoints, records): (Vec<AuditRecord>, Vec<AuditRecord>) =
        stored.iter().cloned().partition(|r| r.action == "audit.checkpoint");
    let heads = checkpoints.iter().filter_map(|r| serde_json::from_str(&r.metadata).ok()).collect();
    Ok((Chained { rows: stored, records, heads }, false))
}

/// Records the outcome of each task in `finished` (final, as stored by
/// `tx`) whose outcome is not recorded yet: a batch written again after
/// its commit's reply was lost records nothing twice.
pub(super) async fn record_outcomes(
    tx: &Transaction<'_>,
    sql: &AuditSql,
    finished: &[&TaskState],
    signing: &AuditSigning,
) -> Result<Chained, tokio_postgres::Error> {
    if finished.is_empty() {
        return Ok(Chained::default());
    }
    tx.query_one(&sql.lock, &[]).await?;
    let ids: Vec<&str> = finished.iter().map(|t| t.id.as_str()).collect();
    let recorded: std::collections::HashSet<String> =
        tx.query(&sql.recorded, &[&ids]).await?.iter().map(|r| r.get(0)).collect();
    let events: Vec<AuditEvent> = finished
        .iter()
        .filter(|t| !recorded.contains(&t.id))
        .map(|t| crate::engine::outcome_event(t, t.status, t.error.as_ref()))
        .collect();
    let events: Vec<&AuditEvent> = events.iter().collect();
    append_locked(tx, sql, &events, signing, None).await
}

fn read_record(r: &Row) -> AuditRecord {
    AuditRecord {
        seq: r.get(0),
        timestamp_ms: r.get(1),
        action: r.get(2),
        user: r.get(3),
        device: r.get(4),
        session: r.get(5),
        resource_type: r.get(6),
        resource_id: r.get(7),
        result: r.get(8),
        reason: r.get(9),
        metadata: r.get(10),
        prev_hash: r.get(11),
        hash: r.get(12),
    }
}

/// An attempt at an operation on the shared connection: true once its
/// caller has its answer; false when the connection was lost under it,
/// to be tried again on a new one (every operation is idempotent).
type Job = Box<dyn for<'a> FnMut(&'a mut Conn) -> BoxFuture<'a, bool> + Send>;

/// Records read per round trip while scanning the chain.
const SCAN_PAGE: i64 = 5000;

/// What a cluster's nodes share besides tasks, on one connection (a
/// thread of its own): the audit log (for
/// [`coderclaw_security::audit::AuditLog::use_store`]: a node's own
/// records and the `coderclaw audit` commands), trust (`trust.rs`),
/// identities (`identity.rs`) and installed skills (`skills.rs`).
pub struct PgSharedState {
    url: String,
    /// Writes, one at a time (each a transaction).
    jobs: mpsc::UnboundedSender<Job>,
    /// Reads, pipelined.
    reads: mpsc::UnboundedSender<super::Job>,
}

impl PgSharedState {
    /// Connects to the cluster database at `url`. Its schema must have the
    /// audit table and be no newer than this build's: a node migrates it
    /// when it starts ([`PgSharedState::open_node`]); this only reads the
    /// version.
    pub fn open(url: &str) -> Result<Arc<PgSharedState>, StoreError> {
        Self::open_with(url, false)
    }

    /// [`PgSharedState::open`] for a node starting: the schema is brought up
    /// to this build's first (as the task store does).
    pub fn open_node(url: &str) -> Result<Arc<PgSharedState>, StoreError> {
        Self::open_with(url, true)
    }

    fn open_with(url: &str, migrate: bool) -> Result<Arc<PgSharedState>, StoreError> {
        let shown = redact_url(url);
        let config: tokio_postgres::Config =
            url.parse().map_err(|e| StoreError::Postgres { url: shown.clone(), message: format!("not a URL: {e}") })?;
        let (jobs, mut rx) = mpsc::unbounded_channel::<Job>();
        let (reads, read_rx) = mpsc::unbounded_channel::<super::Job>();
        let thread_url = shown.clone();
        on_own_thread("coderclaw-audit-pg", move |opened_tx| async move {
            let url = thread_url;
            let client = match connect(&config).await {
                Ok(c) => c,
                Err(e) => {
                    let _ = opened_tx.send(Err(super::not_connected(&url, &e)));
                    return;
                }
            };
            let checked = async {
                if migrate {
                    super::migrate(&client, &url).await?;
                }
                check_schema(&client, &url).await
            };
            if let Err(e) = checked.await {
                let _ = opened_tx.send(Err(e));
                return;
            }
            // Reads (a session looked up on every request) run at
            // once, pipelined, on a connection of their own.
            let reader = match connect(&config).await {
                Ok(c) => c,
                Err(e) => {
                    let _ = opened_tx.send(Err(StoreError::Postgres { url, message: describe(&e) }));
                    return;
                }
            };
            let reading = tokio::spawn(super::read_loop(config.clone(), reader, read_rx, url.clone()));
            let _ = opened_tx.send(Ok(()));
            let mut conn = Some(Conn::new(client));
            while let Some(mut job) = rx.recv().await {
                // Given up (its caller told PostgreSQL is
                // unreachable) once PostgreSQL was away this long.
                let deadline = Instant::now() + UNAVAILABLE_AFTER;
                loop {
                    let mut c = match conn.take().filter(|c| !c.is_closed()) {
                        Some(c) => c,
                        None => match reconnect_until(&config, &url, deadline).await {
                            Some(c) => Conn::new(c),
                            None => break,
                        },
                    };
                    let answered = job(&mut c).await;
                    conn = Some(c);
                    if answered || Instant::now() >= deadline {
                        break;
                    }
                    tracing::warn!(url, "shared state connection lost; trying the operation again");
                    conn = None;
                }
            }
            reading.abort();
        })?;
        Ok(Arc::new(PgSharedState { url: shown, jobs, reads }))
    }

    /// Runs `f` on the audit connection and waits for its answer (bounded
    /// by how long PostgreSQL may be away).
    pub(super) fn run<T: Send + 'static>(
        &self,
        f: impl for<'a> Fn(&'a mut Conn) -> BoxFuture<'a, Result<T, tokio_postgres::Error>> + Send + Sync + 'static,
    ) -> Result<T, AuditError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let f = std::sync::Arc::new(f);
        // Set once the caller stopped waiting: the operation is then not
        // done later behind its back (it was told it failed).
        let abandoned = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let given_up = abandoned.clone();
        let job: Job = Box::new(move |c| {
            let (f, tx, given_up) = (f.clone(), tx.clone(), given_up.clone());
            Box::pin(async move {
                if given_up.load(std::sync::atomic::Ordering::SeqCst) {
                    return true;
                }
                match f(c).await {
                    Err(e) if connection_lost(&e) => false,
                    answer => {
                        let _ = tx.send(answer);
                        true
                    }
                }
            })
        });
        let unreachable = || AuditError::Store {
            store: self.url.clone(),
            message: format!("no answer within {} s: PostgreSQL is unreachable", UNAVAILABLE_AFTER.as_secs()),
        };
        self.jobs.send(job).map_err(|_| unreachable())?;
        let answer = rx.recv_timeout(UNAVAILABLE_AFTER + Duration::from_secs(5)).map_err(|_| {
            abandoned.store(true, std::sync::atomic::Ordering::SeqCst);
            unreachable()
        })?;
        answer.map_err(|e| AuditError::Store { store: self.url.clone(), message: describe(&e) })
    }

    /// Runs read `f` on the reader connection (pipelined with other reads)
    /// and waits for its answer; asked again on a new connection when the
    /// connection was lost under it, for as long as PostgreSQL may be away.
    pub(super) fn read<T: Send + 'static>(
        &self,
        f: impl Fn(Arc<Conn>) -> BoxFuture<'static, Result<T, tokio_postgres::Error>> + Send + Sync + 'static,
    ) -> Result<T, AuditError> {
        let f = Arc::new(f);
        let deadline = Instant::now() + UNAVAILABLE_AFTER;
        let unreachable = || AuditError::Store {
            store: self.url.clone(),
            message: format!("no answer within {} s: PostgreSQL is unreachable", UNAVAILABLE_AFTER.as_secs()),
        };
        loop {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let attempt = f.clone();
            let job: super::Job = Box::new(move |c| {
                Box::pin(async move {
                    let _ = tx.send(attempt(c).await);
                })
            });
            self.reads.send(job).map_err(|_| unreachable())?;
            let left = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(5);
            match rx.recv_timeout(left).map_err(|_| unreachable())? {
                Err(e) if connection_lost(&e) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                answer => {
                    return answer.map_err(|e| AuditError::Store { store: self.url.clone(), message: describe(&e) });
                }
            }
        }
    }
}

/// Refuses a database without a cluster's schema, an older one without
/// the audit table, or a newer one than this build's.
async fn check_schema(client: &tokio_postgres::Client, url: &str) -> Result<(), StoreError> {
    let found: i32 = match client.query_one("SELECT COALESCE(MAX(version), 0) FROM coderclaw_schema", &[]).await {
        Ok(r) => r.get(0),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => 0,
        Err(e) => return Err(StoreError::Postgres { url: url.to_owned(), message: describe(&e) }),
    };
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew { url: url.to_owned(), found, supported: SCHEMA_VERSION });
    }
    if found < SHARED_SCHEMA {
        let what = if found == 0 { "no coderclaw cluster".to_owned() } else { format!("schema version {found}") };
        return Err(StoreError::Postgres {
            url: url.to_owned(),
            message: format!(
                "the database has {what}, without the cluster's audit log, trust, identities and skills: start a \
                 cluster node of this coderclaw on it first, which brings the schema up to version {SCHEMA_VERSION}"
            ),
        });
    }
    Ok(())
}

impl AuditStore for PgSharedState {
    fn name(&self) -> String {
        self.url.clone()
    }

    fn shared(&self) -> bool {
        true
    }

    fn append(&self, events: &[&AuditEvent], signing: &AuditSigning) -> Result<Chained, AuditError> {
        let events: Vec<AuditEvent> = events.iter().map(|e| (*e).clone()).collect();
        let (signing, batch) = (signing.clone(), uuid::Uuid::new_v4().to_string());
        self.run(move |c| {
            let (events, signing, batch) = (events.clone(), signing.clone(), batch.clone());
            Box::pin(async move {
                let sql = AuditSql::on(c).await?;
                let tx = c.client.transaction().await?;
                let events: Vec<&AuditEvent> = events.iter().collect();
                let (chained, _) = append_once(&tx, &sql, &events, &signing, &batch).await?;
                tx.commit().await?;
                Ok(chained)
            })
        })
    }

    fn query(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, AuditError> {
        let filter = filter.clone();
        self.read(move |c| {
            let filter = filter.clone();
            Box::pin(async move {
                let mut sql = format!("SELECT {COLUMNS} FROM audit WHERE TRUE");
                let mut args: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> = Vec::new();
                let mut arg =
                    |sql: &mut String, clause: &str, v: Box<dyn tokio_postgres::types::ToSql + Sync + Send>| {
                        args.push(v);
                        sql.push_str(&format!(" AND {clause} ${}", args.len()));
                    };
                if let Some(u) = filter.user {
                    arg(&mut sql, "user_name =", Box::new(u));
                }
                if let Some(a) = filter.action {
                    arg(&mut sql, "action =", Box::new(a));
                }
                if let Some(t) = filter.since_ms {
                    arg(&mut sql, "timestamp_ms >=", Box::new(t));
                }
                if let Some(r) = filter.result {
                    arg(&mut sql, "result =", Box::new(r.as_str().to_owned()));
                }
                sql.push_str(" ORDER BY seq DESC");
                if let Some(n) = filter.limit {
                    sql.push_str(&format!(" LIMIT {n}"));
                }
                let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                    args.iter().map(|a| a.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
                let mut out: Vec<AuditRecord> = c.client.query(&sql, &params).await?.iter().map(read_record).collect();
                out.reverse();
                Ok(out)
            })
        })
    }

    fn scan(&self, each: &mut dyn FnMut(AuditRecord) -> Result<(), AuditError>) -> Result<(), AuditError> {
        // Paged by seq: memory stays bounded however long the chain is.
        let mut after = 0i64;
        loop {
            let page = self.read(move |c| {
                Box::pin(async move {
                    let sql = format!("SELECT {COLUMNS} FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2");
                    Ok(c.query(&sql, &[&after, &SCAN_PAGE]).await?.iter().map(read_record).collect::<Vec<_>>())
                })
            })?;
            let done = (page.len() as i64) < SCAN_PAGE;
            for r in page {
                after = r.seq;
                each(r)?;
            }
            if done {
                return Ok(());
            }
        }
    }

    fn latest_checkpoint(&self) -> Result<Option<String>, AuditError> {
        self.read(|c| {
            Box::pin(async move {
                let sql = "SELECT metadata FROM audit WHERE action = 'audit.checkpoint' ORDER BY seq DESC LIMIT 1";
                Ok(c.query_opt(sql, &[]).await?.map(|r| r.get(0)))
            })
        })
    }
}
