//! MCP `tools/call` of the signed `echo` skill, each call a durable,
//! decided, audited task: p50/p99 latency one call at a time and with 16
//! calls in flight, and calls/s, over an in-process byte stream (what
//! `coderclaw mcp` serves on stdio, without the pipe) and over Streamable
//! HTTP on loopback (`coderclaw serve`'s /mcp). For comparison, the same
//! task submitted through the in-process runtime interface. Prints figures.
//!
//! cargo bench -p coderclaw-e2e --bench mcp [-- N]

use coderclaw::tasks::http_server::{ServerConfig, serve};
use coderclaw::tasks::mcp::McpServer;
use coderclaw::tasks::{CoderClawRuntime, LocalTransport, TaskService};
use coderclaw_core::task::{TaskStatus, TaskSubmitRequest};
use rmcp::model::CallToolRequestParams;
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{Peer, ServiceExt};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

// As the `coderclaw` binary: the figures are the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn echo(i: usize) -> CallToolRequestParams {
    CallToolRequestParams::new("team_echo").with_arguments(json!({ "i": i }).as_object().unwrap().clone())
}

/// `n` calls, `concurrent` in flight; each call's latency.
async fn calls(peer: &Peer<RoleClient>, n: usize, concurrent: usize) -> (Duration, Vec<Duration>) {
    let start = Instant::now();
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrent));
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let (peer, slots) = (peer.clone(), slots.clone());
        handles.push(tokio::spawn(async move {
            let _slot = slots.acquire_owned().await.unwrap();
            let t0 = Instant::now();
            let result = peer.call_tool(echo(i)).await.unwrap();
            assert_ne!(result.is_error, Some(true), "{result:?}");
            t0.elapsed()
        }));
    }
    let mut latencies = Vec::with_capacity(n);
    for h in handles {
        latencies.push(h.await.unwrap());
    }
    (start.elapsed(), latencies)
}

async fn report(label: &str, client: &RunningService<RoleClient, ()>, n: usize) {
    calls(client.peer(), 50, 1).await; // warm-up
    let (_, one) = calls(client.peer(), n, 1).await;
    coderclaw_e2e::print_latency(&format!("{label}: 1 at a time"), one);
    let (elapsed, sixteen) = calls(client.peer(), n, 16).await;
    coderclaw_e2e::print_latency(&format!("{label}: 16 concurrent"), sixteen);
    println!(
        "{label}: 16 concurrent: {n} calls in {:.2}s = {:.0} calls/s",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
}

/// The same task through the in-process runtime interface, one at a time.
async fn local_submit(service: &Arc<TaskService>, n: usize) {
    let rt = CoderClawRuntime::new(LocalTransport::new(service.clone(), None));
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n + 50 {
        let t0 = Instant::now();
        let t = rt.submit_task(TaskSubmitRequest::skill("team/echo", json!({ "i": i }))).await.unwrap();
        let done = rt.wait(&t.id, |_| {}).await.unwrap();
        assert_eq!(done.status, TaskStatus::Completed);
        if i >= 50 {
            latencies.push(t0.elapsed());
        }
    }
    coderclaw_e2e::print_latency("local submit → COMPLETED (baseline)", latencies);
}

fn main() {
    let n: usize = std::env::args().filter_map(|a| a.parse().ok()).next().unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let service = coderclaw_e2e::echo_service(dir.path());
        local_submit(&service, n).await;

        // The stdio server's framing over an in-process byte stream.
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let server = McpServer::new(service.clone(), None);
        tokio::spawn(async move {
            if let Ok(running) = server.serve(theirs).await {
                let _ = running.waiting().await;
            }
        });
        let client = ().serve(ours).await.unwrap();
        report("MCP stdio framing", &client, n).await;
        client.cancel().await.unwrap();

        let token = coderclaw_e2e::developer_token(&service);
        let listen = "127.0.0.1:0".parse().unwrap();
        let server = serve(service.clone(), ServerConfig { listen, ..Default::default() }).await.unwrap();
        let config = StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", server.url())).auth_header(token);
        let client = ().serve(StreamableHttpClientTransport::from_config(config)).await.unwrap();
        report("MCP HTTP (loopback)", &client, n).await;
        client.cancel().await.unwrap();
        server.shutdown();
    });
}
