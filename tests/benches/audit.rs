//! Audit log append rate with durable commits (WAL, synchronous=FULL): one
//! writer, four with a handle each, and 4 and 64 threads sharing one handle
//! (group commit); and the cost of verifying the chain. Prints figures.
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

fn main() {
    for (writers, shared, total) in [(1, true, 2000), (4, false, 2000), (4, true, 20_000), (64, true, 20_000)] {
        let path = append_rate(writers, shared, total);
        let log = AuditLog::open(&path).unwrap();
        let t = Instant::now();
        let n = log.verify().unwrap();
        println!("   audit verify of {n} records: {:?}", t.elapsed());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
