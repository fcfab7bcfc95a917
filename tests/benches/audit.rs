//! Audit log append rate with durable commits (WAL, synchronous=FULL), one
//! writer and four; and the cost of verifying the chain. Prints figures.
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

fn main() {
    for writers in [1usize, 4] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        AuditLog::open(&path).unwrap();
        let per_writer = 2000 / writers;
        // Writers open their handles first; only the appends are timed.
        let ready = std::sync::Arc::new(std::sync::Barrier::new(writers + 1));
        let handles: Vec<_> = (0..writers)
            .map(|_| {
                let (path, ready) = (path.clone(), ready.clone());
                std::thread::spawn(move || {
                    let log = AuditLog::open(&path).unwrap();
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
        let total = per_writer * writers;
        println!(
            "audit append, durable, {writers} writer(s): {:>8.0} records/s ({total} records)",
            total as f64 / secs
        );
        let log = AuditLog::open(&path).unwrap();
        let t = Instant::now();
        let n = log.verify().unwrap();
        println!("audit verify of {n} records: {:?}", t.elapsed());
    }
}
