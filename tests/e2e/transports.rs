//! The WebSocket and gRPC adapters from the attacker's side: refused before
//! any work without a session, a session revoked while its socket or
//! channel is open, malformed and oversized messages, a slow reader, the
//! per-socket subscription bound, and TLS (wss, grpcs). The shared
//! scenario suite over all four transports is in `tasks.rs`.

use crate::tasks::{Harness, Via, fixture, self_signed_localhost};
use coderclaw::tasks::grpc::server::GrpcConfig;
use coderclaw::tasks::http_server::{ServerConfig, serve};
use coderclaw::tasks::ws::server::WsConfig;
use coderclaw::tasks::{CoderClawRuntime, ErrorCode, GrpcTransport, RunUpdate, WsTransport};
use coderclaw_core::task::{TaskFilter, TaskStatus, TaskSubmitRequest};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::ClientRequestBuilder;

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A raw WebSocket to `/v1/ws` on `addr` with `token`, over a socket whose
/// receive buffer is `recv_buffer` bytes when given.
async fn raw_socket(addr: std::net::SocketAddr, token: &str, recv_buffer: Option<u32>) -> Socket {
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(size) = recv_buffer {
        tcp.set_recv_buffer_size(size).unwrap();
    }
    let tcp = tcp.connect(addr).await.unwrap();
    let uri: http::Uri = format!("ws://{addr}/v1/ws").parse().unwrap();
    let request = ClientRequestBuilder::new(uri)
        .with_sub_protocol("coderclaw.v1")
        .with_header("Authorization", format!("Bearer {token}"));
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4096)
        .max_message_size(Some(64 << 20));
    tokio_tungstenite::client_async_with_config(request, tcp, Some(config)).await.unwrap().0
}

/// The next text message as JSON (pings and pongs skipped).
async fn next_json(ws: &mut Socket) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("a reply within 10 s") {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_oversized_websocket_messages_get_typed_errors_and_the_socket_stays_usable() {
    let f = fixture(Default::default());
    let token = f.login("dev", &["developer"]);
    let server = f.http().await;
    let mut ws = raw_socket(server.addr, &token, None).await;
    let cases: Vec<(Message, Value, &str)> = vec![
        (Message::text("{nope"), Value::Null, "not JSON"),
        (Message::text("[1, 2]"), Value::Null, "JSON object"),
        (Message::text(r#"{"op": "status"}"#), Value::Null, "no `id`"),
        (Message::text(r#"{"id": "a", "op": "launch"}"#), json!("a"), "launch"),
        (Message::text(r#"{"id": "b", "op": "get", "taskId": "x", "evil": 1}"#), json!("b"), "evil"),
        (
            Message::text(r#"{"id": "c", "op": "submit", "task": {"skillId": "team/echo", "agentId": "team/echo"}}"#),
            json!("c"),
            "not both",
        ),
        (Message::Binary(vec![0u8; 16].into()), Value::Null, "text messages"),
    ];
    for (message, id, says) in cases {
        ws.send(message).await.unwrap();
        let reply = next_json(&mut ws).await;
        assert_eq!(reply["type"], "error", "{reply}");
        assert_eq!(reply["id"], id, "{reply}");
        assert_eq!(reply["error"]["code"], "invalid_request", "{reply}");
        assert!(reply["error"]["message"].as_str().unwrap().contains(says), "{says}: {reply}");
    }
    // Over the 1 MiB request limit: refused by id, and the socket goes on.
    let big = json!({ "id": 7, "op": "submit", "task": { "skillId": "team/echo", "input": "x".repeat(1_500_000) } });
    ws.send(Message::text(big.to_string())).await.unwrap();
    let reply = next_json(&mut ws).await;
    assert_eq!(
        (reply["id"].clone(), reply["error"]["code"].clone()),
        (json!(7), json!("payload_too_large")),
        "{reply}"
    );
    ws.send(Message::text(r#"{"id": 8, "op": "status"}"#)).await.unwrap();
    let reply = next_json(&mut ws).await;
    assert_eq!((reply["type"].clone(), reply["result"]["healthy"].clone()), (json!("result"), json!(true)), "{reply}");
    assert!(f.engine.list(&TaskFilter::default()).unwrap().is_empty(), "no refused message made a task");
    // Beyond four times the limit the frame itself is refused: close 1009.
    let _ = ws.send(Message::text("x".repeat(5 << 20))).await;
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap() {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.map(|c| u16::from(c.code)), Some(1009));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_reader_that_does_not_read_is_disconnected_not_buffered() {
    let f = fixture(Default::default());
    let token = f.login("dev", &["developer"]);
    let ws_config = WsConfig { send_timeout: Duration::from_millis(300), ..WsConfig::for_body_limit(1 << 20) };
    let config = ServerConfig { listen: "127.0.0.1:0".parse().unwrap(), ws: Some(ws_config), ..Default::default() };
    let server = serve(f.service.clone(), config).await.unwrap();
    // A task with about 4 MiB of events, followed 16 times on one socket
    // that reads nothing through a 4 KiB receive buffer.
    let rt =
        CoderClawRuntime::new(WsTransport::new(&format!("ws://{}", server.addr), Some(token.clone()), None).unwrap());
    let flood =
        rt.submit_task(TaskSubmitRequest::skill("team/forgetful", json!({ "flood": [300, 14_000] }))).await.unwrap();
    let done = rt.wait(&flood.id, |_| {}).await.unwrap();
    assert_eq!(done.status, TaskStatus::Completed);
    let total = rt.get_task_events(&flood.id, 0, 1000).await.unwrap().len();
    let mut slow = raw_socket(server.addr, &token, Some(4096)).await;
    for i in 0..16 {
        let subscribe = json!({ "id": i, "op": "subscribe", "taskId": flood.id });
        slow.send(Message::text(subscribe.to_string())).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Now read: what was in flight arrives, then the socket ends, long
    // before all 16 × `total` events.
    let start = Instant::now();
    let mut events = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.next()).await.expect("the server ended the socket") {
            Some(Ok(Message::Text(t))) => {
                let m: Value = serde_json::from_str(&t).unwrap();
                if m["type"] == "event" {
                    events += 1;
                }
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
        assert!(start.elapsed() < Duration::from_secs(20), "still reading after 20 s: {events} events");
    }
    assert!(events < 16 * total, "{events} of {} events delivered to a reader that stopped", 16 * total);
    // The server serves others meanwhile.
    let other = CoderClawRuntime::new(WsTransport::new(&format!("ws://{}", server.addr), Some(token), None).unwrap());
    assert!(other.get_status().await.unwrap().healthy);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_socket_follows_a_bounded_number_of_tasks() {
    let f = fixture(Default::default());
    let token = f.login("dev", &["developer"]);
    let ws_config = WsConfig { max_subscriptions: 2, ..WsConfig::for_body_limit(1 << 20) };
    let config = ServerConfig { listen: "127.0.0.1:0".parse().unwrap(), ws: Some(ws_config), ..Default::default() };
    let server = serve(f.service.clone(), config).await.unwrap();
    let rt = CoderClawRuntime::new(WsTransport::new(&format!("ws://{}", server.addr), Some(token), None).unwrap());
    let paused = TaskSubmitRequest { paused: true, ..TaskSubmitRequest::skill("team/echo", json!(1)) };
    let task = rt.submit_task(paused).await.unwrap();
    let first = rt.stream_task_updates(&task.id).await.unwrap();
    let _second = rt.stream_task_updates(&task.id).await.unwrap();
    let third = rt.stream_task_updates(&task.id).await.err().expect("a third is refused");
    assert_eq!(third.code, ErrorCode::QuotaExceeded, "{third}");
    // Dropping a stream unsubscribes it, which frees its slot.
    drop(first);
    let start = Instant::now();
    loop {
        match rt.stream_task_updates(&task.id).await {
            Ok(_) => break,
            Err(e) if e.code == ErrorCode::QuotaExceeded && start.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the freed slot was not given back: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_session_nothing_is_done_on_either_transport() {
    let h = Harness::start(Via::Grpc, Default::default()).await;
    let server = h.f.http().await;
    // The WebSocket upgrade is refused before it happens.
    for token in [None, Some("ccs_forged")] {
        let addr = server.addr;
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let uri: http::Uri = format!("ws://{addr}/v1/ws").parse().unwrap();
        let mut request = ClientRequestBuilder::new(uri).with_sub_protocol("coderclaw.v1");
        if let Some(t) = token {
            request = request.with_header("Authorization", format!("Bearer {t}"));
        }
        match tokio_tungstenite::client_async(request, tcp).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 401, "{token:?}");
                let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
                assert_eq!(body["error"]["code"], "unauthenticated");
            }
            other => panic!("{token:?}: the upgrade was not refused: {:?}", other.map(|r| r.1.status())),
        }
    }
    // A browser offering only its token as a subprotocol (no coderclaw.v1)
    // is refused too: the server would have to echo the token.
    let token = h.f.login("dev", &["developer"]);
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let uri: http::Uri = format!("ws://{}/v1/ws", server.addr).parse().unwrap();
    let request = ClientRequestBuilder::new(uri).with_sub_protocol(format!("coderclaw.bearer.{token}"));
    match tokio_tungstenite::client_async(request, tcp).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 400),
        other => panic!("upgraded without coderclaw.v1: {:?}", other.map(|r| r.1.status())),
    }
    // gRPC: no token, a forged one, a malformed header.
    for token in [None, Some("ccs_forged".to_owned())] {
        let rt = h.connect(token.as_deref());
        let err = rt.submit_task(TaskSubmitRequest::skill("team/echo", json!(1))).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::Unauthenticated, "{token:?}: {err}");
        let mut run = rt.run_task(TaskSubmitRequest::skill("team/echo", json!(1)));
        let err = run.next().await.unwrap().unwrap_err();
        assert_eq!(err.code, ErrorCode::Unauthenticated, "RunTask {token:?}: {err}");
        assert!(run.next().await.is_none());
    }
    assert!(h.f.engine.list(&TaskFilter::default()).unwrap().is_empty(), "no task was made");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_revoked_while_its_socket_or_channel_is_open_is_refused_at_the_next_call() {
    for via in [Via::Ws, Via::Grpc] {
        let h = Harness::start(via, Default::default()).await;
        let token = h.f.login("dev", &["developer"]);
        let rt = h.connect(Some(&token));
        assert!(rt.get_status().await.unwrap().healthy, "{via:?}");
        let session = h.f.service.authenticate(Some(&token)).unwrap();
        h.f.service.security().dangerous_identity_store().revoke_session(&session.session.unwrap().id).unwrap();
        let err = rt.submit_task(TaskSubmitRequest::skill("team/echo", json!(1))).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::Unauthenticated, "{via:?}: {err}");
    }
    // A WebSocket subscription of a session revoked meanwhile ends, saying
    // why, even while its task sends nothing.
    let h = Harness::start(Via::Ws, Default::default()).await;
    let token = h.f.login("dev", &["developer"]);
    let rt = h.connect(Some(&token));
    let task = rt.submit_task(TaskSubmitRequest::skill("team/spin", json!({}))).await.unwrap();
    let mut stream = rt.stream_task_updates(&task.id).await.unwrap();
    while stream.next().await.unwrap().unwrap().status != TaskStatus::Running {}
    let session = h.f.service.authenticate(Some(&token)).unwrap();
    h.f.service.security().dangerous_identity_store().revoke_session(&session.session.unwrap().id).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("the subscription ended");
    assert_eq!(ended.unwrap().unwrap_err().code, ErrorCode::Unauthenticated);
    h.f.engine.cancel(&task.id, "test over").unwrap();
}

/// gRPC RunTask asks for the session again before it sends the final
/// state: a session revoked while its task ran gets UNAUTHENTICATED, not
/// the task's output (as a GetTask then would).
#[tokio::test(flavor = "multi_thread")]
async fn run_task_asks_for_the_session_again_before_the_final_state() {
    let h = Harness::start(Via::Grpc, Default::default()).await;
    let token = h.f.login("dev", &["developer"]);
    let rt = h.connect(Some(&token));
    let mut updates = rt.run_task(TaskSubmitRequest::skill("team/asker", json!({ "ask": "?" })));
    let Some(Ok(RunUpdate::Accepted(task))) = updates.next().await else { panic!("no acknowledgement") };
    let start = Instant::now();
    while h.f.engine.get(&task.id).unwrap().status != TaskStatus::Waiting {
        assert!(start.elapsed() < Duration::from_secs(30), "never WAITING");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let session = h.f.service.authenticate(Some(&token)).unwrap();
    h.f.service.security().dangerous_identity_store().revoke_session(&session.session.unwrap().id).unwrap();
    h.f.engine.respond(&task.id, "yes".into()).unwrap();
    let mut last = None;
    while let Some(update) = updates.next().await {
        last = Some(update);
    }
    match last {
        Some(Err(e)) => assert_eq!(e.code, ErrorCode::Unauthenticated, "{e}"),
        other => panic!("the final state reached a revoked session: {other:?}"),
    }
    assert_eq!(h.f.engine.get(&task.id).unwrap().status, TaskStatus::Completed, "the task itself ran to its end");
}

#[tokio::test(flavor = "multi_thread")]
async fn wss_and_grpcs_serve_clients_that_trust_the_ca_and_no_others() {
    let f = fixture(Default::default());
    let token = f.login("dev", &["developer"]);
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = self_signed_localhost(dir.path());
    let tls = Some((cert_file.clone(), key_file));
    let http = serve(
        f.service.clone(),
        ServerConfig { listen: "127.0.0.1:0".parse().unwrap(), tls: tls.clone(), ..Default::default() },
    )
    .await
    .unwrap();
    let grpc_config = GrpcConfig { listen: "127.0.0.1:0".parse().unwrap(), tls, ..Default::default() };
    let grpc = coderclaw::tasks::grpc::server::serve(f.service.clone(), grpc_config).await.unwrap();
    let urls = [format!("wss://localhost:{}", http.addr.port()), format!("grpcs://localhost:{}", grpc.addr.port())];
    for url in &urls {
        let rt = CoderClawRuntime::new(coderclaw::tasks::connect(url, Some(token.clone()), Some(&cert_file)).unwrap());
        let task = rt.submit_task(TaskSubmitRequest::skill("team/echo", json!("tls"))).await.unwrap();
        assert_eq!(rt.wait(&task.id, |_| {}).await.unwrap().status, TaskStatus::Completed, "{url}");
        let untrusting = CoderClawRuntime::new(coderclaw::tasks::connect(url, Some(token.clone()), None).unwrap());
        let err = untrusting.get_status().await.unwrap_err();
        assert_eq!(err.code, ErrorCode::Unavailable, "{url}: {err}");
    }
    // Plain ws:// or grpc:// with a token to another machine is refused by the client.
    for url in ["ws://192.0.2.1:7420", "grpc://192.0.2.1:7421"] {
        let refused = coderclaw::tasks::connect(url, Some(token.clone()), None).err().expect("refused");
        assert_eq!(refused.code, ErrorCode::InvalidRequest, "{url}");
        assert!(refused.message.contains("never sent over plain"), "{url}: {refused}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_is_had_over_the_network_with_a_password_and_guesses_are_throttled() {
    use coderclaw::tasks::{LoginRequest, login_remote};
    let f = fixture(Default::default());
    let store = f.service.security().dangerous_identity_store();
    store.add_user("dev", &["developer".to_owned()], Some("correct horse battery")).unwrap();
    let server = f.http().await;
    let url = server.url();
    let with = |password: &str| LoginRequest {
        user: Some("dev".into()),
        password: Some(password.into()),
        ..Default::default()
    };
    // A client may shorten its session, never lengthen it past the configured TTL.
    let ten_years = LoginRequest { ttl_secs: Some(10 * 365 * 24 * 3600), ..with("correct horse battery") };
    let long = login_remote(&url, None, &ten_years).await.unwrap();
    let lifetime = long.session["expires_at_ms"].as_u64().unwrap() - long.session["created_at_ms"].as_u64().unwrap();
    assert!(lifetime <= 30 * 24 * 3600 * 1000, "{lifetime} ms");
    let short = LoginRequest { ttl_secs: Some(60), ..with("correct horse battery") };
    let short = login_remote(&url, None, &short).await.unwrap();
    let lifetime = short.session["expires_at_ms"].as_u64().unwrap() - short.session["created_at_ms"].as_u64().unwrap();
    assert!(lifetime <= 60_000, "{lifetime} ms");
    let reply = login_remote(&url, None, &with("correct horse battery")).await.unwrap();
    assert_eq!(reply.session["user"], "dev");
    assert_eq!(reply.session["method"], "password");
    // The token works on every transport of the server.
    let rt = CoderClawRuntime::new(coderclaw::tasks::connect(&url, Some(reply.token.clone()), None).unwrap());
    let task = rt.submit_task(TaskSubmitRequest::skill("team/echo", json!(1))).await.unwrap();
    assert_eq!(rt.wait(&task.id, |_| {}).await.unwrap().status, TaskStatus::Completed);

    // A session from an API token ends no later than the token.
    let (_, api_token) = store.create_token("dev", Some(Duration::from_secs(3600))).unwrap();
    let by_token = LoginRequest { user: Some("dev".into()), api_token: Some(api_token), ..Default::default() };
    let reply = login_remote(&url, None, &by_token).await.unwrap();
    assert_eq!(reply.session["method"], "token");
    let lifetime = reply.session["expires_at_ms"].as_u64().unwrap() - reply.session["created_at_ms"].as_u64().unwrap();
    assert!(lifetime <= 3600 * 1000, "the session outlives its token: {lifetime} ms");

    // Malformed requests say what to send, and count as nothing.
    let both = LoginRequest { api_token: Some("x".into()), ..with("y") };
    assert_eq!(login_remote(&url, None, &both).await.unwrap_err().code, ErrorCode::InvalidRequest);
    let oidc_with_user =
        LoginRequest { user: Some("dev".into()), id_token: Some("a.b.c".into()), ..Default::default() };
    assert_eq!(login_remote(&url, None, &oidc_with_user).await.unwrap_err().code, ErrorCode::InvalidRequest);
    let not_held = LoginRequest { roles: vec!["admin".into()], ..with("correct horse battery") };
    assert_eq!(login_remote(&url, None, &not_held).await.unwrap_err().code, ErrorCode::Unauthenticated);

    // Guessing: refused, then rate-limited, and then even the right
    // password waits (the limit is per peer, checked before the password).
    let mut limited = false;
    for _ in 0..12 {
        let e = login_remote(&url, None, &with("wrong")).await.unwrap_err();
        match e.code {
            ErrorCode::Unauthenticated => {}
            ErrorCode::RateLimited => {
                limited = true;
                assert!(e.retry_after_secs.is_some(), "{e:?}");
            }
            other => panic!("{other}: {e}"),
        }
    }
    assert!(limited, "twelve wrong passwords within a minute are throttled");
    let e = login_remote(&url, None, &with("correct horse battery")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::RateLimited, "{e}");
    let audit = coderclaw::audit::AuditFilter { action: Some("auth.login".into()), ..Default::default() };
    let denied = f.home.audit().query(&audit).unwrap().into_iter().filter(|r| r.result == "denied").count();
    assert!((10..=12).contains(&denied), "each attempt under the limit audited, none past it: {denied}");

    // A credential never crosses the network in clear text: plain http
    // from another machine is refused before the password is looked at.
    let remote_peer: std::net::SocketAddr = "192.0.2.7:40000".parse().unwrap();
    let mode = coderclaw_core::task::RuntimeMode::RemoteEnabled;
    let e = coderclaw::tasks::login::login(&f.service, mode, false, remote_peer, with("correct horse battery"))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Forbidden);
    assert!(e.message.contains("log in over https"), "{e}");
    // And the client will not send one there.
    let e = login_remote("http://192.0.2.7:7420", None, &with("x")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidRequest, "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_issuer_is_unavailable_not_a_wrong_login_and_is_not_throttled() {
    use base64::Engine as _;
    use coderclaw::tasks::{LoginRequest, login_remote};
    let f = fixture(Default::default());
    // An issuer whose keys cannot be fetched (nothing listens on port 1).
    std::fs::write(
        f.home.root().join("config.yaml"),
        "identity:\n  providers: [local, oidc]\n  oidc:\n    - name: corp\n      issuer: http://127.0.0.1:1\n      \
         audience: coderclaw\n      jwksUri: http://127.0.0.1:1/keys\n      roles: [ci]\n",
    )
    .unwrap();
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let claims = json!({ "iss": "http://127.0.0.1:1", "sub": "x", "aud": "coderclaw", "exp": 4_000_000_000u64 });
    let token = format!("{}.{}.{}", b64(json!({ "alg": "RS256", "kid": "k" })), b64(claims), b64(json!("sig")));
    let server = f.http().await;
    let request = LoginRequest { id_token: Some(token), ..Default::default() };
    for _ in 0..12 {
        let e = login_remote(&server.url(), None, &request).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Unavailable, "{e}");
        assert_eq!(e.retry_after_secs, Some(5), "{e:?}");
    }
}

/// A gRPC connection that never sends (all of) the HTTP/2 preface gives its slot
/// back after the handshake timeout (10 s) instead of holding it for ever:
/// with a cap of two connections, two silent ones no longer lock out a
/// real client.
#[tokio::test(flavor = "multi_thread")]
async fn silent_grpc_connections_are_closed_and_free_their_slots() {
    use tokio::io::AsyncReadExt;
    let f = fixture(Default::default());
    let config = GrpcConfig { listen: "127.0.0.1:0".parse().unwrap(), max_connections: 2, ..GrpcConfig::default() };
    let server = coderclaw::tasks::grpc::server::serve(f.service.clone(), config).await.unwrap();
    use tokio::io::AsyncWriteExt;
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    // One byte, or most of the preface, does not buy more time.
    silent[1].write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let start = Instant::now();
    for conn in &mut silent {
        let mut buf = [0u8; 64];
        // The server's SETTINGS may come first; then the close.
        let closed = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a silent connection was kept for {:?}", start.elapsed());
    }
    assert!(start.elapsed() >= Duration::from_secs(9), "closed too early: {:?}", start.elapsed());
    let url = format!("grpc://{}", server.addr);
    let rt = CoderClawRuntime::new(
        coderclaw::tasks::GrpcTransport::new(&url, Some(f.login("dev", &["developer"])), None).unwrap(),
    );
    rt.get_status().await.unwrap();
}

/// A gRPC client whose connection broke opens a new one at its next call
/// instead of failing for good; the call that met the break is
/// UNAVAILABLE (worth trying again), not an internal error.
#[tokio::test(flavor = "multi_thread")]
async fn a_grpc_client_reconnects_after_its_connection_breaks() {
    let h = Harness::start(Via::Grpc, Default::default()).await;
    let server = h.url.trim_start_matches("grpc://").to_owned();
    // A relay in front of the server whose connections the test cuts.
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let relayed: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
    let accepting = {
        let relayed = relayed.clone();
        tokio::spawn(async move {
            loop {
                let (mut client, _) = relay.accept().await.unwrap();
                let server = server.clone();
                relayed.lock().unwrap().push(tokio::spawn(async move {
                    let mut upstream = tokio::net::TcpStream::connect(server).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }));
            }
        })
    };
    let token = h.f.login("dev", &["developer"]);
    let rt = CoderClawRuntime::new(GrpcTransport::new(&format!("grpc://{relay_addr}"), Some(token), None).unwrap());
    rt.get_status().await.unwrap();
    assert_eq!(relayed.lock().unwrap().len(), 1, "one connection carries the calls");
    rt.get_status().await.unwrap();
    assert_eq!(relayed.lock().unwrap().len(), 1, "one connection carries the calls");
    for cut in relayed.lock().unwrap().drain(..) {
        cut.abort();
    }
    // The break may be seen by the next call or before it; either way the
    // call after that goes through on a new connection.
    if let Err(err) = rt.get_status().await {
        assert_eq!(err.code, ErrorCode::Unavailable, "{err}");
    }
    let task = rt.submit_task(TaskSubmitRequest::skill("team/echo", json!(3))).await.unwrap();
    assert_eq!(rt.wait(&task.id, |_| {}).await.unwrap().status, TaskStatus::Completed);
    assert_eq!(relayed.lock().unwrap().len(), 1, "a new connection");
    accepting.abort();
}

/// SSE resumed with `Last-Event-ID`: the events after that one, and a
/// reconnect after the final event (what an EventSource does when a
/// finished stream closes) ends at once instead of hanging; a malformed
/// id is refused.
#[tokio::test(flavor = "multi_thread")]
async fn an_sse_stream_resumes_after_last_event_id_and_ends_when_nothing_is_left() {
    let f = fixture(Default::default());
    let token = f.login("dev", &["developer"]);
    let server = f.http().await;
    let rt = CoderClawRuntime::new(coderclaw::tasks::HttpTransport::new(&server.url(), Some(token.clone())).unwrap());
    let task = rt.submit_task(TaskSubmitRequest::skill("team/echo", json!({}))).await.unwrap();
    let done = rt.wait(&task.id, |_| {}).await.unwrap();
    assert_eq!(done.status, TaskStatus::Completed);
    let all = rt.get_task_events(&task.id, 0, 1000).await.unwrap();
    let last = all.last().unwrap().seq;
    let stream = |after: &str| {
        reqwest::Client::new()
            .get(format!("{}/v1/tasks/{}/stream", server.url(), task.id))
            .bearer_auth(&token)
            .header("Last-Event-ID", after)
            .send()
    };
    let ids = |body: &str| -> Vec<u64> {
        body.lines().filter_map(|l| l.strip_prefix("id: ")).map(|s| s.trim().parse().unwrap()).collect()
    };
    let body = tokio::time::timeout(Duration::from_secs(10), async {
        stream(&(last - 2).to_string()).await.unwrap().text().await.unwrap()
    })
    .await
    .expect("a resumed stream of a finished task ends");
    assert_eq!(ids(&body), [last - 1, last], "{body}");
    let body = tokio::time::timeout(Duration::from_secs(10), async {
        stream(&last.to_string()).await.unwrap().text().await.unwrap()
    })
    .await
    .expect("a stream resumed after the final event ends at once (it hung)");
    assert_eq!(ids(&body), Vec::<u64>::new(), "{body}");
    let refused = stream("soon").await.unwrap();
    assert_eq!(refused.status(), 400);
    assert!(refused.text().await.unwrap().contains("Last-Event-ID is not an event id"));
}
