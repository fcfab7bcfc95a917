//! Every capability proven from its denied side: without the grant the
//! skill is refused, and nothing happens on the host.

use crate::{host, load, run_json, workspace};
use coderclaw::{Access, CollectEvents, Error, EventKind, Grant, SkillError};
use coderclaw_e2e::LoopbackServer;
use serde_json::{Value, json};
use std::sync::Arc;

fn outcome<'a>(out: &'a Value, op: &str, path: &str) -> &'a str {
    out[op][path].as_str().unwrap_or_else(|| panic!("no {op} outcome for {path}: {out}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn no_read_grant_means_no_files() {
    let ws = workspace();
    let host = host();
    // Even run from inside the workspace, nothing is visible without a grant.
    let out = run_json(
        &host,
        &load(&host, "fs-escape"),
        json!({"read": ["README.md", "/etc/passwd"], "list": [".", "/"]}),
        &Grant::deny_all(),
    )
    .await
    .unwrap();
    for (op, path) in [("read", "README.md"), ("read", "/etc/passwd"), ("list", "."), ("list", "/")] {
        assert!(outcome(&out, op, path).starts_with("err:"), "{op} {path}: {out}");
    }
    let err = host
        .run(&load(&host, "word-count"), &json!({"path": ws.path()}).to_string(), &Grant::deny_all())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not found inside the sandbox"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn paths_cannot_escape_the_preopen() {
    let parent = tempfile::tempdir().unwrap();
    let ws = parent.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    std::fs::write(ws.join("inside.txt"), "in").unwrap();
    std::fs::write(parent.path().join("outside.txt"), "secret outside").unwrap();
    std::os::unix::fs::symlink("/", ws.join("root-link")).unwrap();
    std::os::unix::fs::symlink(parent.path().join("outside.txt"), ws.join("outside-link")).unwrap();

    let host = host();
    let grant = Grant::builder().dir(&ws, ".", Access::Read).build().unwrap();
    let escapes = [
        "../outside.txt",
        "../../etc/passwd",
        "/etc/passwd",
        "root-link/etc/passwd",
        "outside-link",
        "./../ws/../outside.txt",
    ];
    let input =
        json!({"read": escapes.iter().chain(["inside.txt"].iter()).collect::<Vec<_>>(), "list": ["root-link", ".."]});
    let out = run_json(&host, &load(&host, "fs-escape"), input, &grant).await.unwrap();
    for path in escapes {
        assert!(outcome(&out, "read", path).starts_with("err:"), "escape via {path} succeeded: {out}");
    }
    assert!(outcome(&out, "list", "root-link").starts_with("err:"), "{out}");
    assert!(outcome(&out, "list", "..").starts_with("err:"), "{out}");
    assert_eq!(outcome(&out, "read", "inside.txt"), "ok:2", "the granted file is readable");
}

#[tokio::test(flavor = "multi_thread")]
async fn read_only_grant_refuses_writes() {
    let ws = workspace();
    let host = host();
    let skill = load(&host, "fs-escape");
    let input = json!({"write": ["new.txt", "README.md"]});

    let ro = Grant::builder().dir(ws.path(), ".", Access::Read).build().unwrap();
    let out = run_json(&host, &skill, input.clone(), &ro).await.unwrap();
    assert!(outcome(&out, "write", "new.txt").starts_with("err:"), "{out}");
    assert!(outcome(&out, "write", "README.md").starts_with("err:"), "{out}");
    assert!(!ws.path().join("new.txt").exists(), "nothing was created on the host");
    assert_eq!(std::fs::read_to_string(ws.path().join("README.md")).unwrap(), "hello world\nsecond line here\n");

    let rw = Grant::builder().dir(ws.path(), ".", Access::ReadWrite).build().unwrap();
    let out = run_json(&host, &skill, input, &rw).await.unwrap();
    assert_eq!(outcome(&out, "write", "new.txt"), "ok:written");
    assert_eq!(std::fs::read_to_string(ws.path().join("new.txt")).unwrap(), "written by fs-escape");
}

#[tokio::test(flavor = "multi_thread")]
async fn only_granted_env_vars_are_visible() {
    // HOME, PATH and USER are set in this test process; the guest must not see them.
    let host = host();
    let grant = Grant::builder().env("GRANTED_VAR", "visible").build().unwrap();
    let out =
        run_json(&host, &load(&host, "fs-escape"), json!({"env": ["GRANTED_VAR", "HOME", "PATH", "USER"]}), &grant)
            .await
            .unwrap();
    assert_eq!(out["env"]["GRANTED_VAR"], "visible");
    for name in ["HOME", "PATH", "USER"] {
        assert_eq!(out["env"][name], Value::Null, "{name} leaked into the guest");
    }
    assert_eq!(out["all_env_names"], json!(["GRANTED_VAR"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn http_outside_the_allowlist_is_denied_before_connecting() {
    let server = LoopbackServer::start("must not be reached").await.unwrap();
    let host = host();
    let fetch = load(&host, "http-fetch");
    let url = json!({"url": server.url()});

    for grant in [
        Grant::deny_all(),
        Grant::builder().http("https://api.github.com").unwrap().build().unwrap(),
        // Right host, wrong port; right host and port, wrong scheme.
        Grant::builder().http(&format!("http://127.0.0.1:{}", server.addr.port() + 1)).unwrap().build().unwrap(),
        Grant::builder().http(&format!("https://127.0.0.1:{}", server.addr.port())).unwrap().build().unwrap(),
    ] {
        let events = Arc::new(CollectEvents::default());
        let err = host.run_with_events(&fetch, &url.to_string(), &grant, events.clone()).await.unwrap_err();
        assert!(
            matches!(&err, Error::Skill { error: SkillError::Denied(m), .. } if m.contains("not in this skill's http grant")),
            "{err}"
        );
        let denied = events
            .events()
            .iter()
            .any(|e| matches!(&e.kind, EventKind::Capability { capability: "http", allowed: false, .. }));
        assert!(denied, "the denial is reported as an event");
    }
    assert_eq!(server.hits(), 0, "no request reached the server");
}

#[tokio::test(flavor = "multi_thread")]
async fn shell_without_grant_runs_nothing() {
    let ws = workspace();
    let marker = ws.path().join("marker");
    let host = host();
    let skill = load(&host, "shell-without-grant");
    let touch = json!({"program": "touch", "args": [marker]});
    let read = Grant::builder().dir(ws.path(), ".", Access::ReadWrite);

    let cases = [
        (read.clone().build().unwrap(), touch.clone(), "no shell grant"),
        (read.clone().shell("echo").build().unwrap(), touch.clone(), "not in this skill's shell grant (echo)"),
        // `touch` is allowed but only by name: a path to it is another program.
        (
            read.clone().shell("touch").build().unwrap(),
            json!({"program": "/usr/bin/touch", "args": [marker]}),
            "not in this skill's shell grant",
        ),
        // Allowed program, working directory outside the grant.
        (
            read.clone().shell("touch").build().unwrap(),
            json!({"program": "touch", "args": [marker], "cwd": "/tmp"}),
            "not inside a granted directory",
        ),
        (
            read.clone().shell("touch").build().unwrap(),
            json!({"program": "touch", "args": [marker], "cwd": ".."}),
            "climbs out",
        ),
        // A shell grant without any directory has no place to run.
        (Grant::builder().shell("touch").build().unwrap(), touch.clone(), "no directory is granted"),
    ];
    for (grant, input, reason) in cases {
        let out = run_json(&host, &skill, input.clone(), &grant).await.unwrap();
        assert_eq!(out["ran"], false, "{input}: {out}");
        assert!(out["denied"].as_str().unwrap_or_default().contains(reason), "{input}: expected {reason:?}, got {out}");
        assert!(!marker.exists(), "{input}: the program ran although denied");
    }

    // The same call with the grant does run: the denials above were the grant's doing.
    let out = run_json(&host, &skill, touch, &read.shell("touch").build().unwrap()).await.unwrap();
    assert_eq!(out["ran"], true, "{out}");
    assert!(marker.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn shell_output_is_capped_and_long_commands_are_killed() {
    let ws = workspace();
    let host = host();
    let skill = load(&host, "shell-exec");
    let grant = Grant::builder()
        .dir(ws.path(), ".", Access::Read)
        .shell("head")
        .shell("sleep")
        .shell_output_bytes(1000)
        .shell_timeout(std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    let out = run_json(&host, &skill, json!({"program": "head", "args": ["-c", "100000", "/dev/zero"]}), &grant)
        .await
        .unwrap();
    assert_eq!(out["stdout"].as_str().unwrap().len(), 1000);
    assert_eq!(out["truncated"], true);

    let started = std::time::Instant::now();
    let err = host.run(&skill, &json!({"program": "sleep", "args": ["30"]}).to_string(), &grant).await.unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "the child was killed, not waited for");
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_invoke_only_granted_registered_skills_never_wider() {
    let ws = workspace();
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("hidden.env"), "AKIAIOSFODNN7EXAMPLE\n").unwrap();
    let host = host();
    // The scanner is registered with access to both directories...
    let wide =
        Grant::builder().dir(ws.path(), ".", Access::Read).dir(other.path(), "/other", Access::Read).build().unwrap();
    host.register("team/security-scanner", load(&host, "security-scanner"), wide);
    host.register(
        "team/word-count",
        load(&host, "word-count"),
        Grant::builder().dir(ws.path(), ".", Access::Read).build().unwrap(),
    );
    let reviewer = load(&host, "code-reviewer");

    // ...but an agent without `team/security-scanner` in its grant cannot call it.
    let no_skills = Grant::builder().dir(ws.path(), ".", Access::Read).skill("team/word-count").build().unwrap();
    let err = host.run(&reviewer, "{}", &no_skills).await.unwrap_err();
    assert!(err.to_string().contains("`team/security-scanner` is not in this agent's skills grant"), "{err}");

    // A granted but unregistered id is refused too.
    let unregistered = Grant::builder()
        .dir(ws.path(), ".", Access::Read)
        .skill("team/security-scanner")
        .skill("team/nope")
        .build()
        .unwrap();
    let err = host.run(&reviewer, r#"{"counter": "team/nope"}"#, &unregistered).await.unwrap_err();
    assert!(err.to_string().contains("`team/nope` is not registered on this host"), "{err}");

    // Narrowing: the agent only has the workspace, so the nested scanner
    // cannot read /other even though its registered grant includes it.
    let agent = Grant::builder()
        .dir(ws.path(), ".", Access::Read)
        .skill("team/security-scanner")
        .skill("team/word-count")
        .build()
        .unwrap();
    let out = run_json(&host, &reviewer, json!({"path": "."}), &agent).await.unwrap();
    assert_eq!(out["secrets_found"], 1, "only the workspace's key: {out}");
    let err = host.run(&reviewer, r#"{"path": "/other"}"#, &agent).await.unwrap_err();
    assert!(err.to_string().contains("not found inside the sandbox"), "{err}");

    // An authoriser decides each call: it sees the calling agent, and its
    // refusal reaches the agent as `denied` with the reasons.
    let callers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = callers.clone();
    host.register_authorized("team/word-count", load(&host, "word-count"), move |caller: &coderclaw::Caller<'_>| {
        seen.lock().unwrap().push(caller.agent.to_owned());
        Err("[device-trust] device d is untrusted".to_owned())
    });
    let err = host.run(&reviewer, "{}", &agent).await.unwrap_err();
    assert!(err.to_string().contains("refused `team/word-count`: [device-trust]"), "{err}");
    assert_eq!(*callers.lock().unwrap(), ["code_reviewer.wasm"], "decided once, for the calling agent");
}

#[tokio::test(flavor = "multi_thread")]
async fn sockets_are_never_granted() {
    // A real listener on loopback: the guest's connect must fail and the
    // listener must never see a connection, even under the widest grant
    // this host can give (every directory, env, http and shell capability).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let ws = workspace();
    let host = host();
    let wide = Grant::builder()
        .dir(ws.path(), ".", Access::ReadWrite)
        .env("A", "1")
        .http(&format!("http://{addr}"))
        .unwrap()
        .shell("ls")
        .build()
        .unwrap();
    for grant in [Grant::deny_all(), wide] {
        let out = run_json(&host, &load(&host, "fs-escape"), json!({"connect": [addr]}), &grant).await.unwrap();
        assert!(outcome(&out, "connect", &addr).starts_with("err:"), "a raw socket connected: {out}");
    }
    let accepted = tokio::time::timeout(std::time::Duration::from_millis(200), listener.accept()).await;
    assert!(accepted.is_err(), "the listener saw a connection from the guest");
}

/// A shell capability event says how the program ended: `exit code 1`,
/// not Rust's `Some(1)`.
#[tokio::test(flavor = "multi_thread")]
async fn a_shell_event_says_how_the_program_ended() {
    let ws = workspace();
    let host = host();
    let skill = load(&host, "shell-exec");
    let grant = Grant::builder().dir(ws.path(), ".", Access::Read).shell("true").shell("false").build().unwrap();
    // (Killed by a signal reads "killed by a signal": the program is PID 1
    // of its namespace, which no signal from inside it kills.)
    for (input, ended) in
        [(json!({"program": "true"}), "exit code 0; "), (json!({"program": "false"}), "exit code 1; ")]
    {
        let events = Arc::new(CollectEvents::default());
        host.run_with_events(&skill, &input.to_string(), &grant, events.clone()).await.unwrap();
        let details: Vec<String> = events
            .events()
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Capability { capability: "shell", detail, .. } => Some(detail.clone()),
                _ => None,
            })
            .collect();
        assert!(details.len() == 1 && details[0].starts_with(ended), "{input}: {details:?}");
    }
}
