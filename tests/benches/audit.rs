//! Audit log append rate with durable commits (WAL, synchronous=FULL): one
//! writer, four with a handle each, and 4 and 64 threads sharing one handle
//! (group commit); four writers each keeping 256 appends in flight (as the
//! task engine's async callers do: each record still counts only once it
//! is on disk); and the cost of verifying the chain. Prints figures.
//!
//! `cargo bench -p coderclaw-e2e --bench audit`

use coderclaw::audit::{AuditEvent, AuditLog, AuditResult};
use std::time::Instant;

fn event(i: usize) -> AuditEvent {
    AuditEvent::new("skill.verify", AuditResult::Allowed, "skill", &format!("team/s{i}"))
        .user("bench")
        .reason("signature valid")
        .metadata(serde_json::json!({ "digest": "ab".repeat(32) }))
}

/// `writers` threads appending `total` records between them, each through
/// its own handle (as separate processes would) or all through one (as the
/// threads of one server do: their appends are group-committed).
fn append_rate(writers: usize, shared: bool, total: usize) -> std::path::PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    let path = dir.join("audit.db");
    let one = std::sync::Arc::new(AuditLog::open(&path).unwrap());
    let per_writer = total / writers;
    // Writers open their handles first; only the appends are timed.
    let ready = std::sync::Arc::new(std::sync::Barrier::new(writers + 1));
    let handles: Vec<_> = (0..writers)
        .map(|_| {
            let (path, ready, one) = (path.clone(), ready.clone(), one.clone());
            std::thread::spawn(move || {
                let log = if shared { one } else { std::sync::Arc::new(AuditLog::open(&path).unwrap()) };
                ready.wait();
                for i in 0..per_writer {
                    log.append(event(i)).unwrap();
                }
            })
        })
        .collect();
    ready.wait();
    let started = Instant::now();
    for h in handles {
        h.join().unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let how = if shared { "one shared handle" } else { "a handle each" };
    println!(
        "audit append, durable, {writers} writer(s), {how}: {:>8.0} records/s ({} records)",
        (per_writer * writers) as f64 / secs,
        per_writer * writers
    );
    path
}

/// `writers` threads sharing one handle, each keeping `window` appends in
/// flight with [`AuditLog::append_durable`] and waiting for each to be on
/// disk before reusing its place.
fn pipelined_rate(writers: usize, window: usize, total: usize) {
    let dir = tempfile::tempdir().unwrap();
    let log = std::sync::Arc::new(AuditLog::open(dir.path().join("audit.db")).unwrap());
    let per_writer = total / writers;
    let started = Instant::now();
    let handles: Vec<_> = (0..writers)
        .map(|_| {
            let log = log.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                rt.block_on(async {
                    let mut in_flight = std::collections::VecDeque::new();
                    for i in 0..per_writer {
                        in_flight.push_back(log.append_durable(event(i)));
                        if in_flight.len() >= window {
                            in_flight.pop_front().unwrap().await.unwrap();
                        }
                    }
                    for durable in in_flight {
                        durable.await.unwrap();
                    }
                });
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "audit append, durable, {writers} writer(s), {window} in flight each: {:>8.0} records/s ({} records)",
        (per_writer * writers) as f64 / secs,
        per_writer * writers
    );
    let t = Instant::now();
    let n = log.verify().unwrap();
    println!("   audit verify of {n} records: {:?}", t.elapsed());
}

fn main() {
    pipelined_rate(4, 256, 100_000);
    for (writers, shared, total) in [(1, true, 2000), (4, false, 2000), (4, true, 20_000), (64, true, 20_000)] {
        let path = append_rate(writers, shared, total);
        let log = AuditLog::open(&path).unwrap();
        let t = Instant::now();
        let n = log.verify().unwrap();
        println!("   audit verify of {n} records: {:?}", t.elapsed());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
