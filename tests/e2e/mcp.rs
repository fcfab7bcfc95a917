//! MCP from the sides the stdio tests of the binary do not reach: over
//! Streamable HTTP against a real hyper server on loopback (a session, the
//! Host and Origin checks, MCP sessions kept apart and bounded), a caller
//! from another machine, elicitation, `list_changed` and the audit records
//! naming the client.

use crate::tasks::{Fixture, fixture, fixture_with_policy};
use coderclaw::audit::AuditFilter;
use coderclaw::security::Security;
use coderclaw::tasks::http_server::{RunningServer, ServerConfig, serve};
use coderclaw::tasks::mcp::McpServer;
use coderclaw::tasks::mcp::http::McpHttpConfig;
use coderclaw::tasks::{EngineConfig, ErrorCode};
use coderclaw_core::decision::Subject;
use coderclaw_core::task::TaskSubmitRequest;
use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, ElicitRequestParams, ElicitResult, ElicitationAction,
    ErrorData, Implementation,
};
use rmcp::service::{NotificationContext, RequestContext, RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, ServiceExt};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// An MCP client as an agent would be: named, answering the skill's
/// questions with `answer` when it supports elicitation, counting
/// `list_changed` notifications.
#[derive(Clone, Default)]
struct Agent {
    elicitation: bool,
    answer: Option<&'static str>,
    changed: Arc<AtomicUsize>,
}

impl ClientHandler for Agent {
    fn get_info(&self) -> ClientConfig {
        let capabilities = if self.elicitation {
            ClientCapabilities::builder().enable_elicitation().build()
        } else {
            ClientCapabilities::default()
        };
        ClientConfig::new(capabilities, Implementation::new("e2e-agent", "9.9.9"))
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        let ElicitRequestParams::FormElicitationParams { message, .. } = request else {
            return Ok(ElicitResult::new(ElicitationAction::Decline));
        };
        assert_eq!(message, "colour?", "the skill's own question");
        Ok(match self.answer {
            Some(a) => ElicitResult::new(ElicitationAction::Accept).with_content(json!({ "answer": a })),
            None => ElicitResult::new(ElicitationAction::Decline),
        })
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.changed.fetch_add(1, Ordering::SeqCst);
    }
}

type Client = RunningService<RoleClient, Agent>;

/// `agent` connected in-process to an MCP server for `who`.
async fn connect(f: &Fixture, who: Subject, agent: Agent) -> Client {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let server = McpServer::for_subject(f.service.clone(), who);
    tokio::spawn(async move {
        if let Ok(running) = server.serve(theirs).await {
            let _ = running.waiting().await;
        }
    });
    agent.serve(ours).await.unwrap()
}

fn developer(f: &Fixture) -> Subject {
    f.service.authenticate(Some(&f.login("dev", &["developer"]))).unwrap()
}

async fn names(client: &Client) -> Vec<String> {
    client.list_all_tools().await.unwrap().into_iter().map(|t| t.name.to_string()).collect()
}

fn call(name: &str, arguments: Value) -> CallToolRequestParams {
    CallToolRequestParams::new(name.to_owned()).with_arguments(arguments.as_object().unwrap().clone())
}

fn text_of(result: &rmcp::model::CallToolResult) -> String {
    serde_json::to_string(&result.content).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_from_another_machine_is_offered_nothing_and_refused_as_an_untrusted_device() {
    let f = fixture_with_policy(EngineConfig::default(), "enforceTrust: true\nminimumTrustLevel: verified\n");
    let here = developer(&f);
    let local = connect(&f, here.clone(), Agent::default()).await;
    assert!(names(&local).await.contains(&"team_echo".to_owned()), "the local developer may run echo");

    let remote = connect(&f, Security::as_remote(here), Agent::default()).await;
    assert_eq!(names(&remote).await, Vec::<String>::new(), "an untrusted device may run nothing here");
    let refused = remote.call_tool(call("team_echo", json!({"x": 1}))).await.unwrap();
    assert_eq!(refused.is_error, Some(true));
    assert!(text_of(&refused).contains("untrusted"), "{}", text_of(&refused));
    let why = remote.call_tool(call("coderclaw_policy_check", json!({"tool": "team_echo"}))).await.unwrap();
    let why = why.structured_content.unwrap();
    assert_eq!((why["allowed"].clone(), why["device_trust"].clone()), (json!(false), json!("untrusted")), "{why}");
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_caller_that_submitted_a_task_can_give_it_up() {
    let f = fixture(EngineConfig::default());
    let alice = f.service.authenticate(Some(&f.login("alice", &["developer"]))).unwrap();
    let bob = f.service.authenticate(Some(&f.login("bob", &["developer"]))).unwrap();
    let task = f.service.submit(&alice, TaskSubmitRequest::skill("team/spin", json!({}))).await.unwrap();
    let refused = f.service.abandon(&bob, &task.id, "not mine").unwrap_err();
    assert_eq!(refused.code, ErrorCode::NotFound, "another session's task does not exist for it");
    assert!(!f.service.get(&alice, &task.id).unwrap().status.is_terminal(), "still running");
    assert!(f.service.abandon(&alice, &task.id, "the MCP client went away").unwrap().0);
    let records =
        f.home.audit().query(&AuditFilter { action: Some("task.abandon".into()), ..AuditFilter::default() }).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].reason, "the MCP client went away");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_without_skill_execute_sees_no_tools_and_is_refused_by_name() {
    let f = fixture(EngineConfig::default());
    // The built-in `ci` role may submit tasks and invoke agents, not run skills.
    let ci = f.service.authenticate(Some(&f.login("pipeline", &["ci"]))).unwrap();
    let client = connect(&f, ci, Agent::default()).await;
    assert_eq!(names(&client).await, Vec::<String>::new());
    let refused = client.call_tool(call("team_echo", json!({}))).await.unwrap();
    assert_eq!(refused.is_error, Some(true));
    assert!(text_of(&refused).contains("skill:execute"), "{}", text_of(&refused));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_skill_question_is_asked_of_the_user_through_elicitation_or_the_task_is_cancelled_saying_why() {
    let f = fixture(EngineConfig::default());
    let who = developer(&f);
    let asks = || call("team_asker", json!({"ask": "colour?"}));

    let answering =
        connect(&f, who.clone(), Agent { elicitation: true, answer: Some("blue"), ..Agent::default() }).await;
    let answered = answering.call_tool(asks()).await.unwrap();
    assert_eq!(answered.structured_content, Some(json!({"answer": "blue"})), "{answered:?}");

    let declining = connect(&f, who.clone(), Agent { elicitation: true, ..Agent::default() }).await;
    let declined = declining.call_tool(asks()).await.unwrap();
    assert_eq!(declined.is_error, Some(true));
    assert!(text_of(&declined).contains("declined"), "{}", text_of(&declined));

    let unable = connect(&f, who.clone(), Agent::default()).await;
    let refused = unable.call_tool(asks()).await.unwrap();
    assert_eq!(refused.is_error, Some(true));
    assert!(text_of(&refused).contains("no elicitation support"), "{}", text_of(&refused));

    // The reason is kept with the task, not only "cancelled".
    let task = refused.structured_content.unwrap()["task"].as_str().unwrap().to_owned();
    let status =
        unable.call_tool(call("coderclaw_task_status", json!({"task": task}))).await.unwrap().structured_content;
    let status = status.unwrap();
    assert_eq!(status["status"], "CANCELLED", "{status}");
    assert!(status["error"]["message"].as_str().unwrap().contains("no elicitation support"), "{status}");

    // Every call is audited under the client's name.
    let submitted =
        f.home.audit().query(&AuditFilter { action: Some("task.submit".into()), ..AuditFilter::default() }).unwrap();
    assert_eq!(submitted.len(), 3);
    for r in &submitted {
        let metadata: Value = serde_json::from_str(&r.metadata).unwrap();
        assert_eq!(metadata["client"], "mcp:e2e-agent 9.9.9", "{r:?}");
    }
    let decided =
        f.home.audit().query(&AuditFilter { action: Some("skill.execute".into()), ..AuditFilter::default() }).unwrap();
    assert!(decided.iter().all(|r| r.metadata.contains("mcp:e2e-agent 9.9.9")), "{decided:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_is_told_when_the_tools_change_and_a_removed_skill_is_gone_from_the_list() {
    let f = fixture(EngineConfig::default());
    let agent = Agent::default();
    let client = connect(&f, developer(&f), agent.clone()).await;
    assert!(names(&client).await.contains(&"team_crasher".to_owned()));
    let changed = || agent.changed.load(Ordering::SeqCst);
    // Saying "initialized" again does not start another watcher.
    for _ in 0..3 {
        client.peer().notify_initialized().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(changed(), 0, "nothing changed, nothing said");

    f.home.remove("team/crasher").unwrap();
    let removed_at = Instant::now();
    while changed() == 0 {
        assert!(removed_at.elapsed() < Duration::from_secs(3), "no list_changed after a removal");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!names(&client).await.contains(&"team_crasher".to_owned()), "gone from the list");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(changed(), 1, "one change, one notification (one watcher)");

    // Revoking the team's key leaves nothing runnable.
    let key = f.home.trust_list().unwrap().into_iter().next().unwrap();
    f.home.trust_revoke(&key.key_id).unwrap();
    let seen = changed();
    let revoked_at = Instant::now();
    while changed() == seen {
        assert!(revoked_at.elapsed() < Duration::from_secs(3), "no list_changed after a revocation");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(names(&client).await, Vec::<String>::new());
}

async fn http_server(f: &Fixture, max_sessions: usize) -> RunningServer {
    let listen = "127.0.0.1:0".parse().unwrap();
    let mut mcp = McpHttpConfig::for_listen(listen, false);
    mcp.max_sessions = max_sessions;
    serve(f.service.clone(), ServerConfig { listen, mcp: Some(mcp), ..ServerConfig::default() }).await.unwrap()
}

fn http_client(url: &str, token: &str) -> StreamableHttpClientTransport<reqwest::Client> {
    StreamableHttpClientTransport::from_config(StreamableHttpClientTransportConfig::with_uri(url).auth_header(token))
}

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;

/// A raw POST to /mcp: (status, session id, body).
async fn post(url: &str, token: Option<&str>, headers: &[(&str, &str)], body: &str) -> (u16, Option<String>, String) {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_owned());
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = req.send().await.unwrap();
    let session = response.headers().get("mcp-session-id").map(|v| v.to_str().unwrap().to_owned());
    (response.status().as_u16(), session, response.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_over_http_needs_a_session_refuses_forged_hosts_and_origins_and_keeps_sessions_apart() {
    let f = fixture(EngineConfig::default());
    let server = http_server(&f, 3).await;
    let url = format!("{}/mcp", server.url());
    let (alice, mallory) = (f.login("alice", &["developer"]), f.login("mallory", &["developer"]));

    // The official client with a bearer session: tools and a call.
    let client = Agent::default().serve(http_client(&url, &alice)).await.unwrap();
    assert!(names(&client).await.contains(&"team_echo".to_owned()));
    let echoed = client.call_tool(call("team_echo", json!({"x": 1}))).await.unwrap();
    assert_eq!(echoed.structured_content, Some(json!({"echo": {"x": 1}})));
    client.cancel().await.unwrap();

    let (status, _, body) = post(&url, None, &[], INITIALIZE).await;
    assert_eq!(status, 401, "no session, no MCP: {body}");
    let (status, _, body) = post(&url, Some("not-a-token"), &[], INITIALIZE).await;
    assert_eq!(status, 401, "{body}");
    let (status, _, _) = post(&url, Some(&alice), &[("origin", "http://evil.example")], INITIALIZE).await;
    assert_eq!(status, 403, "a web page of another origin is refused");
    let (status, _, _) = post(&url, Some(&alice), &[("host", "evil.example")], INITIALIZE).await;
    assert_eq!(status, 403, "a rebound name is refused");
    let own = server.url().to_string();
    let (status, _, _) = post(&url, Some(&alice), &[("origin", own.trim_end_matches('/'))], INITIALIZE).await;
    assert_eq!(status, 200, "this server's own origin passes");

    // Alice's MCP session does not exist for Mallory.
    let (status, session, _) = post(&url, Some(&alice), &[], INITIALIZE).await;
    assert_eq!(status, 200);
    let session = session.expect("a session id");
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    let headers = [("mcp-session-id", session.as_str()), ("mcp-protocol-version", "2025-11-25")];
    let (status, _, body) = post(&url, Some(&mallory), &headers, list).await;
    assert_eq!(status, 404, "another caller's session: {body}");
    let http = reqwest::Client::new();
    let as_mallory = |method: reqwest::Method| {
        http.request(method, &url)
            .bearer_auth(&mallory)
            .header("mcp-session-id", &session)
            .header("accept", "text/event-stream")
    };
    let listen = as_mallory(reqwest::Method::GET).send().await.unwrap();
    assert_eq!(listen.status(), 404, "nobody reads another caller's notifications");
    let close = as_mallory(reqwest::Method::DELETE).send().await.unwrap();
    assert_eq!(close.status(), 404, "nobody closes another caller's session");
    let made_up = [("mcp-session-id", "00000000-0000-4000-8000-000000000000"), ("mcp-protocol-version", "2025-11-25")];
    let (status, _, _) = post(&url, Some(&alice), &made_up, list).await;
    assert_eq!(status, 404, "an id nobody was given");
    let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let (status, _, body) = post(&url, Some(&alice), &headers, initialized).await;
    assert!(status == 202 || status == 200, "{status} {body}");
    let (status, _, body) = post(&url, Some(&alice), &headers, list).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("team_echo"), "{body}");

    // Malformed JSON-RPC and unknown methods: the protocol's errors, and the
    // session goes on.
    let (status, _, body) = post(&url, Some(&alice), &headers, "{not json").await;
    assert!((400..500).contains(&status), "{status} {body}");
    let unknown = r#"{"jsonrpc":"2.0","id":3,"method":"tools/destroy_everything"}"#;
    let (_, _, body) = post(&url, Some(&alice), &headers, unknown).await;
    assert!(body.contains("-32601"), "method not found: {body}");
    let (status, _, body) = post(&url, Some(&alice), &headers, list).await;
    assert_eq!(status, 200, "{body}");

    // Sessions are bounded: three open (two here, one above), the next refused.
    let (status, _, _) = post(&url, Some(&alice), &[], INITIALIZE).await;
    assert_eq!(status, 200);
    let (status, _, body) = post(&url, Some(&alice), &[], INITIALIZE).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("MCP sessions are open"), "{body}");
    server.shutdown();
}
