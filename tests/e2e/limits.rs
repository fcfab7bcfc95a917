//! Hard limits: runaway guests are stopped with a clear error and the host
//! keeps serving; bad files are refused without a panic.

use crate::{host, load, run_json};
use coderclaw::{Error, Grant, Host};
use coderclaw_e2e::guest;
use serde_json::json;
use std::time::Duration;

async fn echo_still_works(host: &Host) {
    let out = run_json(host, &load(host, "echo"), json!(1), &Grant::deny_all()).await.unwrap();
    assert_eq!(out, json!({"echo": 1}));
}

#[tokio::test(flavor = "multi_thread")]
async fn infinite_loop_is_stopped_by_the_timeout() {
    let host = host();
    let grant = Grant::builder().timeout(Duration::from_millis(300)).build().unwrap();
    let err = host.run(&load(&host, "infinite-loop"), "{}", &grant).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { timeout, .. } if timeout == Duration::from_millis(300)), "{err}");
    assert_eq!(err.code(), "timeout");
    echo_still_works(&host).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_bomb_stops_at_the_memory_limit() {
    let host = host();
    let grant = Grant::builder().memory(32 << 20).build().unwrap();
    let err = host.run(&load(&host, "memory-bomb"), "{}", &grant).await.unwrap_err();
    assert!(matches!(err, Error::MemoryLimit { limit, .. } if limit == 32 << 20), "{err}");
    assert!(err.to_string().contains("exceeded its memory limit of 33554432 bytes"), "{err}");
    echo_still_works(&host).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deep_recursion_traps_without_killing_the_process() {
    let host = host();
    let skill = load(&host, "deep-recursion");
    // Scalar frames exhaust the wasm stack: the engine's guard reports it.
    let err = host.run(&skill, r#"{"frames": "small"}"#, &Grant::deny_all()).await.unwrap_err();
    assert!(matches!(err, Error::StackOverflow { .. }), "{err}");
    assert!(err.to_string().contains("exhausted its call stack"), "{err}");
    echo_still_works(&host).await;
    // Big frames exhaust Rust's shadow stack in linear memory first.
    let err = host.run(&skill, r#"{"frames": "big"}"#, &Grant::deny_all()).await.unwrap_err();
    assert!(matches!(&err, Error::Trap { message, .. } if message.contains("out of bounds memory access")), "{err}");
    echo_still_works(&host).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn grants_above_the_host_maximum_are_refused() {
    let host = Host::builder().max_memory(128 << 20).dangerous_allow_unsigned().build().unwrap();
    let grant = Grant::builder().memory(256 << 20).build().unwrap();
    let err = host.run(&load(&host, "echo"), "{}", &grant).await.unwrap_err();
    assert!(matches!(err, Error::AboveHostMaximum { what: "memory", .. }), "{err}");
    assert!(err.to_string().contains("256MiB") && err.to_string().contains("128MiB"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_files_get_clear_errors() {
    let host = host();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let text = write("notes.wasm", b"this is not wasm at all");
    let core = write("core.wasm", b"\0asm\x01\0\0\0");
    let real = std::fs::read(guest("echo")).unwrap();
    let truncated = write("truncated.wasm", &real[..real.len() / 2]);

    let cases = [
        (text, "not-wasm", "is not a WebAssembly file"),
        (core, "not-a-component", "core WebAssembly module, not a component"),
        (truncated, "compile", "could not be compiled"),
        (dir.path().join("missing.wasm"), "read", "cannot read"),
    ];
    for (path, code, message) in cases {
        let err = host.load_file(&path).unwrap_err();
        assert_eq!(err.code(), code, "{}: {err}", path.display());
        assert!(err.to_string().contains(message), "{}: {err}", path.display());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_input_is_reported_as_such() {
    let host = host();
    let err = host.run(&load(&host, "word-count"), r#"{"paths": 3}"#, &Grant::deny_all()).await.unwrap_err();
    assert_eq!(err.code(), "invalid-input", "{err}");
    assert!(err.to_string().contains("unknown field `paths`"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_skill_reports_its_panic_message() {
    let host = host();
    let events = std::sync::Arc::new(coderclaw::CollectEvents::default());
    let err = host
        .run_with_events(
            &load(&host, "panicker"),
            r#"{"message": "boom: config missing"}"#,
            &Grant::deny_all(),
            events.clone(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "trap");
    assert!(err.to_string().contains("boom: config missing"), "the panic message is in the error: {err}");
    let lines: Vec<String> = events
        .events()
        .into_iter()
        .filter_map(|e| match e.kind {
            coderclaw::EventKind::Log { message, .. } => Some(message),
            _ => None,
        })
        .collect();
    assert!(lines.iter().any(|l| l == "about to panic"), "guest stdout became a log event: {lines:?}");
    assert!(lines.iter().any(|l| l.contains("boom: config missing")), "guest stderr became a log event: {lines:?}");
    echo_still_works(&host).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn output_over_the_cap_is_dropped_without_breaking_the_guest() {
    let host = host();
    let events = std::sync::Arc::new(coderclaw::CollectEvents::default());
    let panicker = load(&host, "panicker");
    let input = r#"{"noise_bytes": 300000}"#;
    let out = host.run_with_events(&panicker, input, &Grant::deny_all(), events.clone()).await.unwrap();
    assert_eq!(out, r#"{"printed":300000}"#, "printing past the cap does not fail the guest");
    let dropped = events.events().into_iter().find_map(|e| match e.kind {
        coderclaw::EventKind::Log { message, .. } if message.contains("bytes dropped") => Some(message),
        _ => None,
    });
    let dropped = dropped.expect("the host says output was dropped");
    assert!(dropped.contains("guest stdout over 65536 bytes"), "{dropped}");

    // A panic after a flood of stdout is still reported with its message.
    let input = r#"{"noise_bytes": 300000, "message": "late boom"}"#;
    let err = host.run(&panicker, input, &Grant::deny_all()).await.unwrap_err();
    assert!(err.to_string().contains("late boom"), "{err}");
}
