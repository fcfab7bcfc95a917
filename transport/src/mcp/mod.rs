//! The Model Context Protocol adapter: the installed skills and agents
//! this caller's policy allows to run become MCP tools, and each call is a
//! task through the same service as every other transport (authenticated,
//! decided, audited, durable, cancellable). Nothing here grants, trusts,
//! installs or changes policy: a model cannot widen its own sandbox.
//!
//! Served over stdio by `coderclaw mcp` ([`McpServer::serve_stdio`]).

use coderclaw_core::Access;
use coderclaw_core::decision::{Decision, Subject};
use coderclaw_core::manifest::Kind;
use coderclaw_core::task::{SkillInfo, TaskEventKind, TaskStatus, TaskSubmitRequest, TaskUpdateEvent};
use coderclaw_tasks::{RuntimeError, TaskService};
use futures_util::StreamExt;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorData, Implementation, ListToolsResult,
    PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{Peer, ServerHandler, ServiceExt};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;

/// One installed skill or agent as this caller sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ToolEntry {
    /// The MCP tool name (`team/word-count` → `team_word-count`).
    pub name: String,
    /// The skill or agent id.
    pub id: String,
    /// `skill` or `agent`.
    pub kind: Kind,
    /// Why it is not offered, when it is not.
    pub left_out: Option<String>,
    /// The tool as listed (offered entries only).
    #[serde(skip)]
    pub tool: Option<Tool>,
}

/// The MCP server for one caller: the holder of `token`, or the local
/// user without one.
#[derive(Clone)]
pub struct McpServer {
    service: Arc<TaskService>,
    token: Option<String>,
}

impl McpServer {
    /// Serves `service` as the holder of `token`.
    pub fn new(service: Arc<TaskService>, token: Option<String>) -> Self {
        McpServer { service, token }
    }

    fn who(&self) -> Result<Subject, RuntimeError> {
        self.service.authenticate(self.token.as_deref())
    }

    /// Every installed skill and agent, offered or left out (and why), in
    /// id order: what `tools/list` answers and `coderclaw mcp --list` shows.
    pub fn entries(&self) -> Result<Vec<ToolEntry>, RuntimeError> {
        let who = self.who()?;
        let runnable = named(self.service.runnable(&who)?, |(info, _)| &info.id);
        Ok(runnable
            .into_iter()
            .map(|(name, (info, decided))| {
                let (tool, left_out) = match decided {
                    Ok(d) if d.allowed => (Some(tool(&name, &info, &d)), None),
                    Ok(d) => (None, Some(d.reasons_text())),
                    Err(e) => (None, Some(e)),
                };
                ToolEntry { name, id: info.id, kind: info.kind, left_out, tool }
            })
            .collect())
    }

    /// The installed skill or agent tool `name` stands for, without deciding
    /// anything: the call's task is decided (and audited) as any other.
    fn target(&self, who: &Subject, name: &str) -> Result<Option<SkillInfo>, RuntimeError> {
        let mut installed = self.service.skills(who)?;
        installed.extend(self.service.agents(who)?);
        Ok(named(installed, |info| &info.id).into_iter().find(|(n, _)| n == name).map(|(_, info)| info))
    }

    /// Serves MCP over this process's stdin and stdout until the client
    /// closes them.
    pub async fn serve_stdio(self) -> Result<(), String> {
        let running = self.serve(rmcp::transport::stdio()).await.map_err(|e| e.to_string())?;
        running.waiting().await.map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Runs `entry` with `arguments` as a task and answers with its outcome;
    /// forwards progress and logs while it runs and cancels it when the
    /// client cancels the call (or goes away).
    async fn call(
        &self,
        who: &Subject,
        target: &SkillInfo,
        arguments: Value,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, RuntimeError> {
        let req = match target.kind {
            Kind::Agent => TaskSubmitRequest::agent(&target.id, arguments),
            Kind::Skill => TaskSubmitRequest::skill(&target.id, arguments),
        };
        let task = self.service.submit(who, req).await?;
        let mut updates = Box::pin(self.service.stream(who, &task.id)?);
        let progress = context.meta.get_progress_token();
        // Cancels the task if this future is dropped (the client went away).
        let mut guard =
            CancelOnDrop { service: self.service.clone(), who: who.clone(), id: task.id.clone(), armed: true };
        let mut cancelled = false;
        loop {
            tokio::select! {
                // The stream then ends with the CANCELLED status.
                _ = context.ct.cancelled(), if !cancelled => {
                    cancelled = true;
                    self.service.cancel(who, &task.id)?;
                }
                next = updates.next() => match next {
                    Some(e) => {
                        if e.status == TaskStatus::Waiting {
                            let why = "the skill asked for input, which this MCP connection cannot answer";
                            self.service.cancel(who, &task.id)?;
                            return Ok(CallToolResult::error(vec![ContentBlock::text(why)]));
                        }
                        forward(&context.peer, progress.clone(), &e).await;
                    }
                    None => break,
                },
            }
        }
        guard.armed = false;
        let done = self.service.get(who, &task.id)?;
        Ok(match (done.status, done.output, done.error) {
            (TaskStatus::Completed, Some(output), _) => {
                let mut result = CallToolResult::success(vec![ContentBlock::text(output.to_string())]);
                // Structured content is an object by the protocol.
                if output.is_object() {
                    result.structured_content = Some(output);
                }
                result
            }
            (status, _, error) => {
                let (code, message) =
                    error.map_or(("internal", format!("the task ended {status}")), |e| (e.code.as_str(), e.message));
                let mut result = CallToolResult::error(vec![ContentBlock::text(format!("{code}: {message}"))]);
                result.structured_content = Some(json!({ "task": task.id, "status": status, "failure": code }));
                result
            }
        })
    }
}

/// Cancels the task of a call whose future was dropped before its end.
struct CancelOnDrop {
    service: Arc<TaskService>,
    who: Subject,
    id: String,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.service.cancel(&self.who, &self.id);
        }
    }
}

/// A run event as an MCP notification: progress when the client asked for
/// it (sent a progress token), logs as log messages (deprecated by a newer
/// protocol revision, still what current clients show).
#[allow(deprecated)]
async fn forward(peer: &Peer<RoleServer>, progress: Option<rmcp::model::ProgressToken>, e: &TaskUpdateEvent) {
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

/// `items` in id order, each with its tool name: the same names for the
/// same installed set, whoever asks and whatever policy allows.
fn named<T>(mut items: Vec<T>, id: impl Fn(&T) -> &String) -> Vec<(String, T)> {
    items.sort_by(|a, b| id(a).cmp(id(b)));
    let mut taken = BTreeSet::new();
    items.into_iter().map(|item| (tool_name(id(&item), &mut taken), item)).collect()
}

/// The tool name for `id`: MCP names allow letters, digits, `_`, `-` and
/// `.`, so the namespace separator becomes `_`; a name already taken (two
/// ids that map alike) gets the first free `_2`, `_3`, ...
pub fn tool_name(id: &str, taken: &mut BTreeSet<String>) -> String {
    let base: String =
        id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect();
    let mut name = base.clone();
    let mut n = 2;
    while !taken.insert(name.clone()) {
        name = format!("{base}_{n}");
        n += 1;
    }
    name
}

/// The tool for `info`, described from its signed manifest, with hints
/// from the grant policy decided (never wider than the grant).
fn tool(name: &str, info: &SkillInfo, d: &Decision) -> Tool {
    let schema = input_schema(&info.input_schema);
    let grant = &d.grant;
    let writes = grant.dirs().iter().any(|dir| dir.access != Access::Read);
    let shell = !grant.shell().is_empty();
    let http = !grant.http().is_empty();
    let annotations = ToolAnnotations::new()
        .read_only(!writes && !shell && !http)
        .destructive(info.dangerous || writes || shell)
        .open_world(http);
    let description =
        format!("{} ({} {}, run by coderclaw as a sandboxed task)", info.description, info.id, info.version);
    Tool::new_with_raw(name.to_owned(), Some(description.into()), Arc::new(schema)).annotate(annotations)
}

/// The manifest's input schema as MCP takes it: tool arguments are always
/// a JSON object, so a schema for anything else (echo takes any value)
/// becomes an object schema that keeps its description.
fn input_schema(manifest: &Value) -> serde_json::Map<String, Value> {
    match manifest {
        Value::Object(o) if o.get("type") == Some(&json!("object")) => o.clone(),
        other => {
            let mut schema = serde_json::Map::from_iter([("type".to_owned(), json!("object"))]);
            if let Some(d) = other.get("description") {
                schema.insert("description".into(), d.clone());
            }
            schema
        }
    }
}

fn protocol_error(e: RuntimeError) -> ErrorData {
    use coderclaw_tasks::ErrorCode;
    match e.code {
        ErrorCode::Unauthenticated | ErrorCode::Forbidden => ErrorData::invalid_request(e.message, None),
        ErrorCode::InvalidRequest | ErrorCode::NotFound => ErrorData::invalid_params(e.message, None),
        _ => ErrorData::internal_error(e.message, None),
    }
}

impl ServerHandler for McpServer {
    // Logging: deprecated by a newer protocol revision, still what current
    // clients show for a tool's log lines.
    #[allow(deprecated)]
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().enable_logging().build())
            .with_server_info(Implementation::new("coderclaw", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Each tool is a signed WebAssembly skill run by coderclaw in a sandbox with the grant its \
                 policy decides for you; every call is an audited task.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let entries = self.entries().map_err(protocol_error)?;
        Ok(ListToolsResult::with_all_items(entries.into_iter().filter_map(|e| e.tool).collect()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let who = self.who().map_err(protocol_error)?;
        let Some(target) = self.target(&who, &request.name).map_err(protocol_error)? else {
            return Err(ErrorData::invalid_params(
                format!("no tool `{}`: list the tools to see what is installed", request.name),
                None,
            ));
        };
        // A skill left out of the list, called by name anyway, is refused by
        // its task's decision: a tool error with the reasons, and audited.
        let arguments = Value::Object(request.arguments.unwrap_or_default());
        match self.call(&who, &target, arguments, &context).await {
            Ok(result) => Ok(result.into()),
            Err(e) => {
                Ok(CallToolResult::error(vec![ContentBlock::text(format!("{}: {}", e.code.as_str(), e.message))])
                    .into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_names_are_valid_and_never_collide() {
        let mut taken = BTreeSet::new();
        assert_eq!(tool_name("team/word-count", &mut taken), "team_word-count");
        assert_eq!(tool_name("team_word-count", &mut taken), "team_word-count_2");
        assert_eq!(tool_name("team/word count", &mut taken), "team_word_count");
        assert_eq!(tool_name("team/word-count", &mut taken), "team_word-count_3");
    }

    #[test]
    fn every_input_schema_is_an_object_schema() {
        let object = json!({"type": "object", "properties": {"path": {"type": "string"}}});
        assert_eq!(Value::Object(input_schema(&object)), object);
        let any = json!({"description": "Any JSON value"});
        assert_eq!(Value::Object(input_schema(&any)), json!({"type": "object", "description": "Any JSON value"}));
        assert_eq!(Value::Object(input_schema(&json!({"type": "string"}))), json!({"type": "object"}));
    }
}
