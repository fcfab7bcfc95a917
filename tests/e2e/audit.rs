//! The hash-chained audit log: any edit or deletion made directly in the
//! database is found and named; concurrent appends keep one valid chain;
//! the state directory records its security-relevant actions.

use coderclaw::audit::{AuditError, AuditEvent, AuditFilter, AuditLog, AuditResult, Signers};
use coderclaw::home::Home;
use coderclaw_core::keys::SecretKey;
use coderclaw_core::manifest::Manifest;
use coderclaw_core::package::Package;
use rusqlite::Connection;
use serde_json::json;
use std::sync::Arc;

fn ten_records(dir: &std::path::Path) -> AuditLog {
    let log = AuditLog::open(dir.join("audit.db")).unwrap();
    for i in 0..10 {
        log.append(
            AuditEvent::new("skill.run", AuditResult::Allowed, "skill", &format!("team/s{i}"))
                .user("alice")
                .reason("granted")
                .metadata(json!({ "i": i })),
        )
        .unwrap();
    }
    log
}

fn broken_at(log: &AuditLog) -> i64 {
    match log.verify() {
        Err(AuditError::Broken { seq, .. }) => seq,
        other => panic!("expected a broken chain, got {other:?}"),
    }
}

#[test]
fn editing_any_field_of_a_stored_record_is_detected_at_that_record() {
    for edit in [
        "UPDATE audit SET action = 'skill.install' WHERE seq = 5",
        "UPDATE audit SET result = 'denied' WHERE seq = 5",
        "UPDATE audit SET reason = 'forged' WHERE seq = 5",
        "UPDATE audit SET user = 'mallory' WHERE seq = 5",
        "UPDATE audit SET user = NULL WHERE seq = 5",
        "UPDATE audit SET metadata = '{\"i\":99}' WHERE seq = 5",
        "UPDATE audit SET timestamp_ms = timestamp_ms - 1000 WHERE seq = 5",
        "UPDATE audit SET resource_id = 'team/other' WHERE seq = 5",
        "UPDATE audit SET prev_hash = (SELECT hash FROM audit WHERE seq = 3) WHERE seq = 5",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let log = ten_records(dir.path());
        assert_eq!(log.verify().unwrap(), 10);
        Connection::open(dir.path().join("audit.db")).unwrap().execute(edit, []).unwrap();
        assert_eq!(broken_at(&log), 5, "{edit}");
    }
}

#[test]
fn rewriting_a_record_with_a_fresh_hash_breaks_the_next_link() {
    let dir = tempfile::tempdir().unwrap();
    let log = ten_records(dir.path());
    let db = Connection::open(dir.path().join("audit.db")).unwrap();
    // Record 5 rewritten consistently: new reason, its hash recomputed, so
    // record 5 alone checks out; record 6's link to it no longer does.
    let mut five = log.query(&Default::default()).unwrap().into_iter().find(|r| r.seq == 5).unwrap();
    five.reason = "forged".into();
    five.hash = five.computed_hash();
    db.execute("UPDATE audit SET reason = ?1, hash = ?2 WHERE seq = 5", [&five.reason, &five.hash]).unwrap();
    assert_eq!(broken_at(&log), 6);
    // Editing record 6's link to the previous hash is caught at record 6.
    let dir = tempfile::tempdir().unwrap();
    let log = ten_records(dir.path());
    let db = Connection::open(dir.path().join("audit.db")).unwrap();
    let h6: String = db.query_row("SELECT prev_hash FROM audit WHERE seq = 6", [], |r| r.get(0)).unwrap();
    // Change the first byte to one it certainly is not.
    let forged = format!("{}{}", if h6.starts_with("ff") { "00" } else { "ff" }, &h6[2..]);
    db.execute("UPDATE audit SET prev_hash = ?1 WHERE seq = 6", [forged]).unwrap();
    assert_eq!(broken_at(&log), 6);
}

#[test]
fn deleting_or_reordering_records_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let log = ten_records(dir.path());
    Connection::open(dir.path().join("audit.db")).unwrap().execute("DELETE FROM audit WHERE seq = 4", []).unwrap();
    assert!(matches!(log.verify(), Err(AuditError::Broken { seq: 4, ref problem }) if problem.contains("missing")));

    let dir = tempfile::tempdir().unwrap();
    let log = ten_records(dir.path());
    let db = Connection::open(dir.path().join("audit.db")).unwrap();
    db.execute_batch(
        "UPDATE audit SET seq = 100 WHERE seq = 7; UPDATE audit SET seq = 7 WHERE seq = 8; UPDATE audit SET seq = 8 WHERE seq = 100;",
    )
    .unwrap();
    assert_eq!(broken_at(&log), 7);
}

#[test]
fn ten_thousand_concurrent_appends_form_one_valid_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    AuditLog::open(&path).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                // Each thread its own handle (its own SQLite connection), as
                // separate processes would have.
                let log = AuditLog::open(&path).unwrap();
                for i in 0..1250 {
                    log.append(AuditEvent::new("task.state", AuditResult::Allowed, "task", &format!("{t}-{i}")))
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let log = AuditLog::open(&path).unwrap();
    assert_eq!(log.verify().unwrap(), 10_000);
    assert_eq!(log.query(&AuditFilter::default()).unwrap().len(), 10_000);
}

#[test]
fn group_committed_appends_from_threads_sharing_a_handle_form_one_checkpointed_chain() {
    let dir = tempfile::tempdir().unwrap();
    let seed = [5u8; 32];
    let device = SecretKey::from_seed(seed).public().id().as_str().to_owned();
    let log = std::sync::Arc::new(AuditLog::open(dir.path().join("audit.db")).unwrap());
    log.enable_checkpoints(SecretKey::from_seed(seed), &device);
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                (0..250)
                    .map(|i| {
                        // Every 50th a trust change: checkpointed inside its batch.
                        let action = if i % 50 == 0 { "trust.add" } else { "task.state" };
                        let r = log
                            .append(AuditEvent::new(action, AuditResult::Allowed, "task", &format!("{t}-{i}")))
                            .unwrap();
                        assert_eq!(r.resource_id, format!("{t}-{i}"), "each caller gets its own record");
                        r.seq
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seqs: Vec<i64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), 4000, "no two callers got the same record");
    let report = log.verify_against(&[], Signers::Device(&device)).unwrap();
    // 80 trust changes, plus one every 100 records.
    assert!(report.checkpoints >= 80, "{report:?}");
    assert_eq!(report.records, 4000 + report.checkpoints);
}

#[test]
fn a_state_directory_opened_without_the_security_service_still_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let home = Arc::new(Home::open(dir.path()).unwrap());
    let device = coderclaw::security::Security::open(home, None).unwrap().local_device().id;
    // An embedder's own handle on the same directory makes a trust change.
    let home = Home::open(dir.path()).unwrap();
    home.trust_add("team", &SecretKey::from_seed([2; 32]).public()).unwrap();
    let report = home.audit().verify_against(&[], Signers::Device(&device)).unwrap();
    let last = home.audit().query(&AuditFilter { limit: Some(1), ..Default::default() }).unwrap();
    assert_eq!(last[0].action, "audit.checkpoint", "the trust change is checkpointed: {report:?}");
}

#[test]
fn the_state_directory_audits_its_actions() {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::open(dir.path()).unwrap();
    let key = SecretKey::from_seed([3; 32]);
    let manifest =
        Manifest::from_toml("id = \"team/a\"\nversion = \"1.0.0\"\nkind = \"skill\"\ndescription = \"a\"\n", "m")
            .unwrap();
    let pkg = Package::sign(&manifest, b"\0asm\x0d\0\x01\0".to_vec(), &key, 1).to_bytes();

    assert!(home.dangerous_install_ungated(&pkg).is_err(), "untrusted at first");
    home.trust_add("team", &key.public()).unwrap();
    home.dangerous_install_ungated(&pkg).unwrap();
    home.load_installed("team/a").unwrap();
    home.trust_revoke(&key.public().id().to_string()).unwrap();
    assert!(home.load_installed("team/a").is_err());

    let log = home.audit();
    let seen: Vec<(String, String)> =
        log.query(&AuditFilter::default()).unwrap().into_iter().map(|r| (r.action, r.result)).collect();
    let expect = [
        ("skill.install", "denied"),
        ("trust.add", "allowed"),
        ("skill.install", "allowed"),
        ("skill.verify", "allowed"),
        ("trust.revoke", "allowed"),
        ("skill.verify", "denied"),
    ];
    assert_eq!(seen, expect.map(|(a, r)| (a.to_owned(), r.to_owned())));
    let denied = log.query(&AuditFilter { result: Some(AuditResult::Denied), ..Default::default() }).unwrap();
    assert!(denied[0].reason.contains("no signature is by a trusted key"), "{}", denied[0].reason);
    assert!(denied[1].reason.contains("revoked"), "{}", denied[1].reason);
    assert_eq!(log.verify().unwrap(), 6);
}

/// Rewrites every record from `from` on: record `from` gets `reason`, and
/// the chain is recomputed after it. With `key`, checkpoints are re-signed
/// too (an attacker who can also read the device key); without, they keep
/// their old signed heads.
fn rewrite(db: &std::path::Path, from: i64, reason: &str, key: Option<&SecretKey>) {
    use coderclaw_core::audit_head::SignedHead;
    let log = AuditLog::open(db).unwrap();
    let mut records = log.query(&AuditFilter::default()).unwrap();
    drop(log);
    let conn = Connection::open(db).unwrap();
    let mut prev = records.iter().find(|r| r.seq == from - 1).map(|r| r.hash.clone()).unwrap();
    for r in records.iter_mut().filter(|r| r.seq >= from) {
        if r.seq == from {
            r.reason = reason.to_owned();
        }
        if r.action == "audit.checkpoint"
            && let Some(key) = key
        {
            let old: SignedHead = serde_json::from_str(&r.metadata).unwrap();
            r.metadata = serde_json::to_string(&SignedHead::sign(&old.device, old.seq, &prev, key)).unwrap();
        }
        r.prev_hash = prev.clone();
        r.hash = r.computed_hash();
        conn.execute(
            "UPDATE audit SET reason = ?1, metadata = ?2, prev_hash = ?3, hash = ?4 WHERE seq = ?5",
            rusqlite::params![r.reason, r.metadata, r.prev_hash, r.hash, r.seq],
        )
        .unwrap();
        prev = r.hash.clone();
    }
}

/// `result` reports record `seq` tampered with, saying `text`; `what` names
/// the attack that would otherwise have passed.
fn assert_broken<T: std::fmt::Debug>(result: Result<T, AuditError>, seq: i64, text: &str, what: &str) {
    match result {
        Err(AuditError::Broken { seq: at, problem }) => {
            assert_eq!(at, seq, "{problem}");
            assert!(problem.contains(text), "{problem}");
        }
        other => panic!("{what}: {other:?}"),
    }
}

#[test]
fn signed_checkpoints_and_witnessed_heads_catch_truncation_and_a_full_rewrite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let heads = dir.path().join("heads.jsonl");
    let seed = [9u8; 32];
    let device = SecretKey::from_seed(seed).public().id().as_str().to_owned();
    let open = || {
        let log = AuditLog::open(&db).unwrap();
        log.enable_checkpoints(SecretKey::from_seed(seed), &device);
        log.set_witness_file(Some(heads.clone()));
        log
    };
    let log = open();
    for i in 0..250 {
        log.append(AuditEvent::new("skill.run", AuditResult::Allowed, "skill", &format!("team/s{i}"))).unwrap();
    }
    log.append(AuditEvent::new("trust.add", AuditResult::Allowed, "key", "k1")).unwrap();
    let witnessed = || -> Vec<(String, coderclaw_core::audit_head::SignedHead)> {
        let found = coderclaw::audit::read_witness_file(&heads).unwrap();
        found.into_iter().map(|h| ("the witness file".to_owned(), h)).collect()
    };
    let report = log.verify_against(&witnessed(), Signers::Device(&device)).unwrap();
    assert_eq!(report.checkpoints, 3, "every 100 records and after the trust change: {report:?}");
    assert_eq!(report.witnessed.len(), 3, "{report:?}");
    drop(log);
    let pristine = std::fs::read(&db).unwrap();
    let restore = || {
        for ext in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.path().join(format!("audit.db{ext}")));
        }
        std::fs::write(&db, &pristine).unwrap();
    };

    // 1. The newest records deleted: the chain still verifies (what the
    //    unkeyed chain alone allowed), the witnessed head does not.
    Connection::open(&db).unwrap().execute("DELETE FROM audit WHERE seq > 150", []).unwrap();
    let log = open();
    assert_eq!(log.verify().unwrap(), 150, "the shorter chain is intact by itself");
    match log.verify_against(&witnessed(), Signers::Device(&device)) {
        Err(AuditError::Truncated { witnessed, last, .. }) => assert_eq!((witnessed, last), (253, 150)),
        other => panic!("truncation not reported: {other:?}"),
    }
    drop(log);

    // 2. Every record from 5 on rewritten and the chain recomputed, by
    //    someone who cannot read the device key: the checkpoints no longer
    //    sign the records before them.
    restore();
    rewrite(&db, 5, "nothing to see", None);
    assert_broken(open().verify(), 101, "not the record before it", "a rewrite without the key passed");

    // 3. The same with the key, checkpoints re-signed: the log is
    //    self-consistent, but differs from what the witness saw.
    restore();
    rewrite(&db, 5, "nothing to see", Some(&SecretKey::from_seed(seed)));
    let log = open();
    log.verify().expect("a full rewrite with the key is self-consistent");
    assert_broken(
        log.verify_against(&witnessed(), Signers::Device(&device)),
        100,
        "rewritten",
        "a full rewrite passed the witness",
    );
    drop(log);

    // 4. Later records rewritten and their checkpoint re-signed with
    //    another key: the log's key is its first checkpoint's.
    restore();
    rewrite(&db, 202, "x", Some(&SecretKey::from_seed([1; 32])));
    assert_broken(open().verify(), 254, "not by the log's key", "a checkpoint by another key passed");

    // 5. The trust change's checkpoint cut off the end (the change kept, its
    //    signed head gone): the schedule says record 253 is followed by one.
    restore();
    Connection::open(&db).unwrap().execute("DELETE FROM audit WHERE seq > 253", []).unwrap();
    assert_broken(open().verify(), 253, "due a signed checkpoint", "a removed checkpoint passed");

    // 6. The log of another device (or one re-signed with a fresh key from
    //    the start) presented as this machine's: its checkpoints are not
    //    signed by this device's key.
    restore();
    assert_broken(
        open().verify_against(&[], Signers::Device("some-other-device")),
        101,
        "not by this machine's device key",
        "a log signed by another device passed",
    );
}
