//! One `tools/call`: a task through the service, its progress and logs
//! forwarded as notifications, its input requests asked of the user
//! through elicitation, cancelled when the client cancels or goes away.

use super::arguments::Schemas;
use coderclaw_core::decision::Subject;
use coderclaw_core::manifest::Kind;
use coderclaw_core::task::{CLIENT_METADATA, SkillInfo, TaskEventKind, TaskStatus, TaskSubmitRequest, TaskUpdateEvent};
use coderclaw_tasks::{RuntimeError, TaskService};
use futures_util::StreamExt;
use rmcp::model::{
    CallToolResult, ContentBlock, ElicitRequestParams, ElicitationAction, ElicitationSchema, ProgressNotificationParam,
    ProgressToken,
};
use rmcp::service::{ElicitationMode, RequestContext, RoleServer};
use rmcp::{Peer, ServiceError};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// How long a user has to answer one input request. The task's own
/// timeout still applies.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs `target` with `arguments` as a task for `who` and answers with
/// its outcome.
pub(super) async fn call(
    service: &Arc<TaskService>,
    schemas: &Schemas,
    who: &Subject,
    target: &SkillInfo,
    arguments: Value,
    context: &RequestContext<RoleServer>,
) -> Result<CallToolResult, RuntimeError> {
    let mut req = match target.kind {
        Kind::Agent => TaskSubmitRequest::agent(&target.id, arguments),
        Kind::Skill => TaskSubmitRequest::skill(&target.id, arguments),
    };
    if let Some(client) = &who.client {
        req.metadata.insert(CLIENT_METADATA.to_owned(), json!(client));
    }
    let task = service.submit(who, req).await?;
    // Gives the task up if this future is dropped (the client went away).
    let mut guard = AbandonOnDrop { service: service.clone(), who: who.clone(), id: task.id.clone(), armed: true };
    let mut updates = Box::pin(service.stream(who, &task.id)?);
    let progress = context.meta.get_progress_token();
    let mut asking: Option<Question<'_>> = None;
    let mut given_up = false;
    loop {
        tokio::select! {
            // The stream then ends with the CANCELLED status.
            _ = context.ct.cancelled(), if !given_up => {
                given_up = true;
                asking = None;
                give_up(service, who, &task.id, "the MCP client cancelled the call");
            }
            answered = async { asking.as_mut().expect("guarded").await }, if asking.is_some() => {
                asking = None;
                match answered {
                    // The stream says how it goes on (or that the task
                    // ended meanwhile, so the answer came too late).
                    Ok(answer) => {
                        if let Err(e) = service.respond(who, &task.id, answer) {
                            tracing::debug!(task = %task.id, error = %e.message, "the answer was not taken");
                        }
                    }
                    Err(why) => {
                        given_up = true;
                        give_up(service, who, &task.id, &why);
                    }
                }
            }
            next = updates.next() => match next {
                Some(e) if e.event == TaskEventKind::InputRequested => {
                    asking = Some(Box::pin(ask(&context.peer, e.message.clone())));
                }
                Some(e) => {
                    // Ended while its question was open (timed out, cancelled
                    // elsewhere): the question no longer matters.
                    if e.status.is_terminal() {
                        asking = None;
                    }
                    forward(&context.peer, progress.clone(), &e).await;
                }
                None => break,
            },
        }
    }
    guard.armed = false;
    let done = service.get(who, &task.id)?;
    Ok(match (done.status, done.output, done.error) {
        (TaskStatus::Completed, Some(output), _) if target.output_schema.is_some() && !output.is_object() => {
            CallToolResult::error(vec![ContentBlock::text(format!(
                "{} returned {output}, not the object its output schema declares",
                target.id
            ))])
        }
        (TaskStatus::Completed, Some(output), _)
            if let Some(problems) = target.output_schema.as_ref().and_then(|s| schemas.output_mismatch(s, &output)) =>
        {
            CallToolResult::error(vec![ContentBlock::text(format!(
                "{}'s output does not match its declared output schema: {problems}",
                target.id
            ))])
        }
        (TaskStatus::Completed, Some(output), _) => {
            let mut result = CallToolResult::success(vec![ContentBlock::text(output.to_string())]);
            // Structured content is an object by the protocol.
            if output.is_object() {
                result.structured_content = Some(output);
            }
            result
        }
        (status, output, error) => {
            let (code, message) =
                error.map_or(("internal", format!("the task ended {status}")), |e| (e.code.as_str(), e.message));
            let mut content = vec![ContentBlock::text(format!("{code}: {message}"))];
            // A failure verdict keeps the skill's output (its findings).
            content.extend(output.map(|o| ContentBlock::text(o.to_string())));
            let mut result = CallToolResult::error(content);
            result.structured_content = Some(json!({ "task": task.id, "status": status, "failure": code }));
            result
        }
    })
}

/// A question being asked of the user: the answer, or why there is none.
type Question<'a> = std::pin::Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>>;

/// Asks the user the skill's question through the client (a form with one
/// string field, `answer`); the answer, or why there is none.
async fn ask(peer: &Peer<RoleServer>, prompt: String) -> Result<String, String> {
    if !peer.supported_elicitation_modes().contains(&ElicitationMode::Form) {
        return Err(format!(
            "the skill asked for input ({prompt:?}) and this MCP client cannot ask its user (no elicitation support)"
        ));
    }
    let schema = ElicitationSchema::builder()
        .required_string("answer")
        .description("The skill's question, answered by you")
        .build()
        .map_err(|e| format!("cannot ask for input: {e}"))?;
    let params = ElicitRequestParams::FormElicitationParams { meta: None, message: prompt, requested_schema: schema };
    let asked = peer.create_elicitation_with_timeout(params, Some(ANSWER_TIMEOUT)).await;
    let response = match asked {
        Ok(r) => r,
        Err(ServiceError::Timeout { .. }) => {
            return Err(format!("nobody answered the skill's question within {}s", ANSWER_TIMEOUT.as_secs()));
        }
        Err(e) => return Err(format!("the skill's question could not be asked: {e}")),
    };
    match response.action {
        ElicitationAction::Accept => match response.content.as_ref().and_then(|c| c.get("answer")) {
            Some(Value::String(answer)) => Ok(answer.clone()),
            Some(other) => Ok(other.to_string()),
            None => Err("the MCP client accepted the question but sent no `answer`".to_owned()),
        },
        ElicitationAction::Decline => Err("the user declined to answer the skill's question".to_owned()),
        ElicitationAction::Cancel => Err("the user dismissed the skill's question".to_owned()),
        other => Err(format!("the MCP client answered the skill's question with {other:?}")),
    }
}

/// Gives up `id` for `who`, saying why; a task that ended meanwhile needs
/// nothing more (the stream then reports how it ended).
fn give_up(service: &TaskService, who: &Subject, id: &str, why: &str) {
    if let Err(e) = service.abandon(who, id, why) {
        tracing::debug!(task = %id, error = %e.message, "the task was not given up");
    }
}

/// Gives up the task of a call whose future was dropped before its end.
struct AbandonOnDrop {
    service: Arc<TaskService>,
    who: Subject,
    id: String,
    armed: bool,
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if self.armed {
            give_up(&self.service, &self.who, &self.id, "the MCP client went away");
        }
    }
}

/// A run event as an MCP notification: progress when the client asked for
/// it (sent a progress token), logs as log messages (deprecated by a newer
/// protocol revision, still what current clients show).
#[allow(deprecated)]
async fn forward(peer: &Peer<RoleServer>, progress: Option<ProgressToken>, e: &TaskUpdateEvent) {
    match e.event {
        TaskEventKind::Progress => {
            if let (Some(token), Some(p)) = (progress, e.progress) {
                let mut n = ProgressNotificationParam::new(token, f64::from(p));
                n.total = Some(1.0);
                n.message = Some(e.message.clone()).filter(|m| !m.is_empty());
                let _ = peer.notify_progress(n).await;
            }
        }
        TaskEventKind::Log => {
            use rmcp::model::{LoggingLevel, LoggingMessageNotificationParam};
            let level = match e.data.as_ref().and_then(|d| d.get("level")).and_then(Value::as_str) {
                Some("error") => LoggingLevel::Error,
                Some("warn") => LoggingLevel::Warning,
                Some("debug") | Some("trace") => LoggingLevel::Debug,
                _ => LoggingLevel::Info,
            };
            let n = LoggingMessageNotificationParam::new(level, json!(e.message)).with_logger(e.task_id.clone());
            let _ = peer.notify_logging_message(n).await;
        }
        _ => {}
    }
}
