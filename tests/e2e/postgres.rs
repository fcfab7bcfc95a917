//! The task store in PostgreSQL, where it differs from SQLite: the
//! database restarted under a running engine, a wrong URL, a schema newer
//! than the binary. (The task scenarios themselves run on PostgreSQL in
//! `tasks::postgres`.)

use crate::tasks::Harness;
use coderclaw::tasks::ErrorCode;
use coderclaw::tasks::TaskStore;
use coderclaw::tasks::store::{PG_SCHEMA_VERSION, PgTaskStore};
use coderclaw_core::task::{TaskStatus, TaskSubmitRequest};
use coderclaw_e2e::postgres::Postgres;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// PostgreSQL crashes and comes back while tasks are being submitted: a
/// submission is either acknowledged, and then its task is stored and
/// completes, or refused as `unavailable` (to send again); nothing else.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_restarted_under_load_loses_no_acknowledged_task() {
    let Some(pg) = Postgres::start() else { return };
    restarted_under_load(&pg, Harness::on_postgres(Default::default(), &pg.url())).await;
}

/// The same with two cluster nodes: both reconnect, their leases (longer
/// than the restart) hold, and no acknowledged task is lost or doubled.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_restarted_under_a_loaded_cluster_loses_no_acknowledged_task() {
    let Some(pg) = Postgres::start() else { return };
    let h = Harness::on_cluster_with(Default::default(), &pg.url(), Duration::from_secs(10));
    restarted_under_load(&pg, h).await;
    let (db, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let twice: i64 = db
        .query_one(
            "SELECT COUNT(*) FROM tasks t WHERE (SELECT COUNT(*) FROM task_events e WHERE e.task_id = t.id
                 AND e.event = 'status' AND e.status = 'COMPLETED') > 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(twice, 0, "a task completed twice");
    // Appends cut off by the restart were made again, once: each outcome
    // is recorded once, and the chain is whole.
    assert_eq!(crate::cluster::outcomes_not_recorded_once(&db).await, vec![]);
    let dir = tempfile::tempdir().unwrap();
    let reader = coderclaw::home::Home::open(dir.path()).unwrap();
    reader.audit().use_store(coderclaw::tasks::store::PgSharedState::open(&pg.url()).unwrap());
    assert!(reader.audit().verify().unwrap() > 150);
}

async fn restarted_under_load(pg: &Postgres, h: Harness) {
    let rt = Arc::new(h.user("dev", &["developer"]));
    let submitting = {
        let rt = rt.clone();
        tokio::spawn(async move {
            let (mut acknowledged, mut refused, mut slowest) = (Vec::new(), 0, Duration::ZERO);
            for i in 0..150 {
                let t0 = Instant::now();
                let submitted = rt.submit_task(TaskSubmitRequest::skill("team/echo", json!(i))).await;
                slowest = slowest.max(t0.elapsed());
                match submitted {
                    Ok(t) => acknowledged.push(t.id),
                    Err(e) => {
                        assert_eq!(e.code, ErrorCode::Unavailable, "{e}");
                        refused += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (acknowledged, refused, slowest)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    pg.restart();
    let (acknowledged, refused, slowest) = submitting.await.unwrap();
    eprintln!("{} acknowledged, {refused} refused, slowest {slowest:?}", acknowledged.len());
    assert!(acknowledged.len() >= 100, "{} acknowledged, {refused} refused", acknowledged.len());
    // The restart was met: a submission waited for the reconnection.
    assert!(slowest > Duration::from_millis(50) || refused > 0, "slowest submission {slowest:?}");
    // Each acknowledged task is stored and completes (reads may meet the
    // restart once; they are asked again).
    let start = Instant::now();
    for id in &acknowledged {
        loop {
            match rt.get_task_state(id).await {
                Ok(Some(t)) if t.status == TaskStatus::Completed => break,
                Ok(Some(t)) => assert!(!t.status.is_terminal(), "{id}: {:?} {:?}", t.status, t.error),
                Ok(None) => panic!("acknowledged task {id} is not stored"),
                Err(e) => assert_eq!(e.code, ErrorCode::Internal, "{e}"),
            }
            assert!(start.elapsed() < Duration::from_secs(120), "{id} never completed\n{}", pg.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A database that cannot be reached, or a URL that is not one: an error
/// naming the URL and what to check, never the password.
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_database_url_is_refused_naming_it_and_hiding_the_password() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("postgres://app:s3cret-pw@127.0.0.1:{closed}/coderclaw");
    let e = PgTaskStore::open(&url, Arc::new(|_, _| {})).err().expect("refused").to_string();
    assert!(e.contains(&format!("postgres://app:***@127.0.0.1:{closed}/coderclaw")), "{e}");
    assert!(e.contains("check that PostgreSQL runs"), "{e}");
    assert!(!e.contains("s3cret-pw"), "{e}");
    let e = PgTaskStore::open("postgres://app:s3cret-pw@[::1", Arc::new(|_, _| {})).err().expect("refused").to_string();
    assert!(e.contains("not a URL") && !e.contains("s3cret-pw"), "{e}");
}

/// A database migrated by a newer coderclaw is refused, naming both
/// versions; one at this build's version opens again unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_with_a_newer_schema_is_refused_naming_both_versions() {
    let Some(pg) = Postgres::start() else { return };
    drop(PgTaskStore::open(&pg.url(), Arc::new(|_, _| {})).unwrap());
    drop(PgTaskStore::open(&pg.url(), Arc::new(|_, _| {})).unwrap());
    let (client, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let versions: i64 = client.query_one("SELECT COUNT(*) FROM coderclaw_schema", &[]).await.unwrap().get(0);
    assert_eq!(versions, i64::from(PG_SCHEMA_VERSION), "each migration once");
    let newer = PG_SCHEMA_VERSION + 1;
    client.execute("INSERT INTO coderclaw_schema (version) VALUES ($1)", &[&newer]).await.unwrap();
    let e = PgTaskStore::open(&pg.url(), Arc::new(|_, _| {})).err().expect("refused").to_string();
    assert!(e.contains(&format!("schema is version {newer}, newer than this coderclaw's {PG_SCHEMA_VERSION}")), "{e}");
}

/// PostgreSQL gone for good: a read fails, saying so, within a bounded
/// time; it never holds its caller (an HTTP handler) for ever.
#[tokio::test(flavor = "multi_thread")]
async fn reads_fail_in_bounded_time_while_postgres_is_gone() {
    let Some(pg) = Postgres::start() else { return };
    let store = PgTaskStore::open(&pg.url(), Arc::new(|_, _| {})).unwrap();
    assert!(store.get("none").unwrap().is_none());
    pg.stop();
    // The first read may meet the broken connection; the next waits for a
    // new one, up to its bound.
    for _ in 0..2 {
        let store = store.clone();
        let read = tokio::task::spawn_blocking(move || store.get("none"));
        let answer = tokio::time::timeout(Duration::from_secs(60), read).await.expect("a read hung").unwrap();
        let e = answer.expect_err("no answer without PostgreSQL").to_string();
        assert!(e.contains(&format!("127.0.0.1:{}", pg.port)), "{e}");
    }
}
