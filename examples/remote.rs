//! Submitting tasks to a `coderclaw serve` over each of its transports:
//! HTTP + SSE, WebSocket and gRPC, with one client API
//! (`coderclaw::tasks::connect` picks the transport from the URL).
//!
//! Against your own server (after `coderclaw login`, or a token from
//! `POST /v1/sessions`):
//!
//!   cargo run -p coderclaw-examples --example remote -- URL TOKEN SKILL [INPUT]
//!
//! URL is http(s)://HOST:PORT, ws(s)://HOST:PORT or grpc(s)://HOST:PORT.
//!
//! Self-contained (what CI runs): starts a server in this process on
//! loopback with one signed skill, logs in over the network and submits the
//! same task over all three transports:
//!
//!   cargo run -p coderclaw-examples --example remote -- COMPONENT.wasm SKILL.toml [INPUT]

use anyhow::{Context, bail};
use coderclaw::tasks::grpc::server::GrpcConfig;
use coderclaw::tasks::http_server::ServerConfig;
use coderclaw::tasks::{CoderClawRuntime, LoginRequest};
use coderclaw_core::task::{TaskStatus, TaskSubmitRequest};
use futures_util::StreamExt;
use std::path::PathBuf;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [url, token, skill, rest @ ..] if url.contains("://") => {
            let input = rest.first().map_or("{}", String::as_str);
            let done = submit(url, token, skill, input).await?;
            if done != TaskStatus::Completed {
                bail!("the task ended {done}");
            }
            Ok(())
        }
        [component, manifest, rest @ ..] => {
            let input = rest.first().map_or(r#"{"path": "."}"#, String::as_str);
            demo(component.into(), manifest.into(), input).await
        }
        _ => bail!("usage: remote URL TOKEN SKILL [INPUT]  |  remote COMPONENT.wasm SKILL.toml [INPUT]"),
    }
}

/// Submits `skill` with `input` at `url` and follows it to its end,
/// printing its events and its output.
async fn submit(url: &str, token: &str, skill: &str, input: &str) -> anyhow::Result<TaskStatus> {
    let runtime = CoderClawRuntime::new(coderclaw::tasks::connect(url, Some(token.to_owned()), None)?);
    let input = serde_json::from_str(input).context("INPUT is not JSON")?;
    let mut request = TaskSubmitRequest::skill(skill, input);
    request.description = format!("example over {url}");
    let task = runtime.submit_task(request).await?;
    eprintln!("{url}: task {} {}", task.id, task.status);
    let mut events = runtime.stream_task_updates(&task.id).await?;
    while let Some(event) = events.next().await {
        let event = event?;
        eprintln!("  #{} {} {} {}", event.seq, event.event.as_str(), event.status, event.message);
    }
    let done = runtime.get_task_state(&task.id).await?.context("the task is gone")?;
    match (&done.output, &done.error) {
        (Some(output), _) => println!("{}", serde_json::to_string(output)?),
        (None, Some(error)) => eprintln!("  failed [{}]: {}", error.code, error.message),
        (None, None) => {}
    }
    Ok(done.status)
}

/// A server on loopback with the skill in `component` + `manifest`, a user
/// who logs in over the network, and the task over every transport.
async fn demo(component: PathBuf, manifest_file: PathBuf, input: &str) -> anyhow::Result<()> {
    let (local, manifest, _state) = coderclaw_examples::signed_runtime(&component, &manifest_file)?;
    local.security().dangerous_identity_store().add_user("demo", &["developer".to_owned()], Some("demo password"))?;
    let loopback = "127.0.0.1:0".parse()?;
    let http = coderclaw::tasks::http_server::serve(
        local.service().clone(),
        ServerConfig { listen: loopback, ..Default::default() },
    )
    .await?;
    let grpc = coderclaw::tasks::grpc::server::serve(
        local.service().clone(),
        GrpcConfig { listen: loopback, ..Default::default() },
    )
    .await?;

    // A client on another machine would do just this (over https).
    let login =
        LoginRequest { user: Some("demo".into()), password: Some("demo password".into()), ..Default::default() };
    let session = coderclaw::tasks::login_remote(&http.url(), None, &login).await?;
    eprintln!("logged in over the network as {}", session.session["user"]);

    let urls = [http.url(), http.url().replacen("http", "ws", 1), format!("grpc://{}", grpc.addr)];
    for url in &urls {
        let done = submit(url, &session.token, manifest.id.as_str(), input).await?;
        if done != TaskStatus::Completed {
            bail!("{url}: the task ended {done}");
        }
    }
    Ok(())
}
