//! The Model Context Protocol adapter: the installed skills and agents
//! this caller's policy allows to run become MCP tools, and each call is a
//! task through the same service as every other transport (authenticated,
//! decided, audited, durable, cancellable). Nothing here grants, trusts,
//! installs or changes policy: a model cannot widen its own sandbox.
//!
//! Served over stdio by `coderclaw mcp` ([`McpServer::serve_stdio`]) and
//! over Streamable HTTP at `/mcp` of `coderclaw serve` ([`http`]).

mod arguments;
mod call;
pub mod http;
pub mod tools;
mod watch;

use coderclaw_core::decision::Subject;
use coderclaw_core::manifest::Kind;
use coderclaw_core::task::SkillInfo;
use coderclaw_tasks::{ErrorCode, RuntimeError, TaskService};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorData, Extensions, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{NotificationContext, RequestContext, RoleServer};
use rmcp::{Peer, ServerHandler, ServiceExt};
use serde::Serialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tools::{POLICY_CHECK, TASK_STATUS, named};

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

/// Who the calls of a connection are made by.
#[derive(Clone)]
enum Caller {
    /// The holder of this token, or the local user without one (stdio).
    Token(Option<String>),
    /// A subject the embedder authenticated (an in-process transport).
    Fixed(Box<Subject>),
    /// Whoever each HTTP request authenticated as ([`http::Authenticated`]);
    /// a request without one is refused, never taken as the local user.
    PerRequest,
}

/// The MCP server for one connection.
#[derive(Clone)]
pub struct McpServer {
    service: Arc<TaskService>,
    caller: Caller,
    /// Held while a handler of this connection exists: the tool list
    /// watcher stops when it is gone.
    alive: Arc<()>,
    /// The input schemas calls are checked against.
    schemas: Arc<arguments::Schemas>,
    /// Whether this connection's tool list watcher was started (once,
    /// however often the client says it is initialized).
    watching: Arc<AtomicBool>,
}

impl McpServer {
    fn make(service: Arc<TaskService>, caller: Caller, schemas: Arc<arguments::Schemas>) -> Self {
        McpServer { service, caller, alive: Arc::new(()), schemas, watching: Default::default() }
    }

    /// Serves `service` as the holder of `token` (or the local user).
    pub fn new(service: Arc<TaskService>, token: Option<String>) -> Self {
        Self::make(service, Caller::Token(token), Default::default())
    }

    /// Serves `service` to `who`, authenticated by the embedder: for an
    /// in-process transport (the caller is who the embedder says; a
    /// caller on another machine must be [`Security::as_remote`]).
    ///
    /// [`Security::as_remote`]: coderclaw_security::security::Security::as_remote
    pub fn for_subject(service: Arc<TaskService>, who: Subject) -> Self {
        Self::make(service, Caller::Fixed(Box::new(who)), Default::default())
    }

    /// Serves `service` to whoever each HTTP request authenticated as.
    fn per_request(service: Arc<TaskService>, schemas: Arc<arguments::Schemas>) -> Self {
        Self::make(service, Caller::PerRequest, schemas)
    }

    /// The caller of a request, with the client's name for the audit log.
    fn who(&self, extensions: &Extensions, peer: &Peer<RoleServer>) -> Result<Subject, RuntimeError> {
        let mut who = match &self.caller {
            Caller::Token(token) => self.service.authenticate(token.as_deref())?,
            Caller::Fixed(who) => (**who).clone(),
            Caller::PerRequest => extensions
                .get::<::http::request::Parts>()
                .and_then(|parts| parts.extensions.get::<http::Authenticated>())
                .map(|a| a.0.clone())
                .ok_or_else(|| RuntimeError::new(ErrorCode::Unauthenticated, "this MCP request carries no session"))?,
        };
        who.client = peer.peer_info().and_then(|info| client_name(&info.client_info));
        Ok(who)
    }

    /// Every installed skill and agent, offered or left out (and why), in
    /// id order, for the holder of the token this server was made with:
    /// what `coderclaw mcp --list` shows.
    pub fn entries(&self) -> Result<Vec<ToolEntry>, RuntimeError> {
        match &self.caller {
            Caller::Token(token) => self.entries_for(&self.service.authenticate(token.as_deref())?),
            Caller::Fixed(who) => self.entries_for(who),
            Caller::PerRequest => {
                Err(RuntimeError::new(ErrorCode::Unauthenticated, "entries of an HTTP connection need a request"))
            }
        }
    }

    /// [`McpServer::entries`] for `who`: what `tools/list` answers.
    fn entries_for(&self, who: &Subject) -> Result<Vec<ToolEntry>, RuntimeError> {
        let runnable = named(self.service.runnable(who)?, |(info, _)| &info.id);
        Ok(runnable
            .into_iter()
            .map(|(name, (info, decided))| {
                let (tool, left_out) = match decided {
                    Ok(d) if d.allowed => (Some(tools::skill_tool(&name, &info, &d)), None),
                    Ok(d) => (None, Some(d.reasons_text())),
                    Err(e) => (None, Some(e)),
                };
                ToolEntry { name, id: info.id, kind: info.kind, left_out, tool }
            })
            .collect())
    }

    /// The installed skill or agent tool `name` stands for (or, `or_id`,
    /// the one with that id), with its tool name, without deciding
    /// anything: a call's task is decided (and audited) as any other.
    fn target(&self, who: &Subject, name: &str, or_id: bool) -> Result<Option<(String, SkillInfo)>, RuntimeError> {
        let installed = named(self.service.installed(who)?, |info| &info.id);
        Ok(installed.into_iter().find(|(n, info)| n == name || (or_id && info.id == name)))
    }

    /// Serves MCP over this process's stdin and stdout until the client
    /// closes them.
    pub async fn serve_stdio(self) -> Result<(), String> {
        let running = self.serve(rmcp::transport::stdio()).await.map_err(|e| e.to_string())?;
        running.waiting().await.map_err(|e| e.to_string())?;
        Ok(())
    }

    /// `coderclaw_policy_check`: the decision a call of `tool` (a tool
    /// name or a skill id) would get now, unrecorded.
    fn policy_check(&self, who: &Subject, arguments: &serde_json::Map<String, Value>) -> Result<Value, String> {
        let asked = string_argument(arguments, "tool")?;
        let Some((name, info)) = self.target(who, asked, true).map_err(|e| e.message)? else {
            return Err(format!("no tool or installed skill `{asked}`: list the tools to see what is installed"));
        };
        let decided = self.service.preview(who, &info.id).unwrap_or_else(|| Err("this host cannot preview".into()));
        Ok(match decided {
            Ok(d) => json!({
                "tool": name,
                "id": info.id,
                "version": info.version,
                "allowed": d.allowed,
                "reasons": d.reasons,
                "explanation": d.reasons_text(),
                "grant": coderclaw_core::decision::grant_json(&d.grant),
                "narrowed": d.narrowed,
                "device_trust": who.device_trust,
                "roles": who.roles,
            }),
            Err(why) => json!({ "tool": name, "id": info.id, "allowed": false, "explanation": why }),
        })
    }

    /// `coderclaw_task_status`: one of the caller's tasks.
    fn task_status(&self, who: &Subject, arguments: &serde_json::Map<String, Value>) -> Result<Value, String> {
        let id = string_argument(arguments, "task")?;
        let state = self.service.get(who, id).map_err(|e| format!("{}: {}", e.code.as_str(), e.message))?;
        serde_json::to_value(state).map_err(|e| e.to_string())
    }
}

/// The client as it named itself, for the audit log.
fn client_name(info: &Implementation) -> Option<String> {
    coderclaw_core::task::client_label(&format!("mcp:{} {}", info.name, info.version))
}

fn string_argument<'a>(arguments: &'a serde_json::Map<String, Value>, key: &str) -> Result<&'a str, String> {
    arguments.get(key).and_then(Value::as_str).ok_or_else(|| format!("argument `{key}` (a string) is required"))
}

fn protocol_error(e: RuntimeError) -> ErrorData {
    match e.code {
        ErrorCode::Unauthenticated | ErrorCode::Forbidden => ErrorData::invalid_request(e.message, None),
        ErrorCode::InvalidRequest | ErrorCode::NotFound => ErrorData::invalid_params(e.message, None),
        _ => ErrorData::internal_error(e.message, None),
    }
}

/// A helper tool's answer: its JSON as structured content and text.
fn helper_result(answer: Result<Value, String>) -> CallToolResult {
    match answer {
        Ok(value) => {
            let mut result = CallToolResult::success(vec![ContentBlock::text(value.to_string())]);
            result.structured_content = Some(value);
            result
        }
        Err(why) => CallToolResult::error(vec![ContentBlock::text(why)]),
    }
}

impl ServerHandler for McpServer {
    // Logging: deprecated by a newer protocol revision, still what current
    // clients show for a tool's log lines.
    #[allow(deprecated)]
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder().enable_tools().enable_tool_list_changed().enable_logging();
        ServerConfig::new(capabilities.build())
            .with_server_info(Implementation::new("coderclaw", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Each tool is a signed WebAssembly skill run by coderclaw in a sandbox with the grant its \
                 policy decides for you; every call is an audited task. coderclaw_policy_check explains a \
                 decision; coderclaw_task_status reads a task.",
            )
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        if self.watching.swap(true, Ordering::SeqCst) {
            return;
        }
        watch::spawn(self.service.clone(), context.peer, Arc::downgrade(&self.alive));
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let who = self.who(&context.extensions, &context.peer).map_err(protocol_error)?;
        let entries = self.entries_for(&who).map_err(protocol_error)?;
        let mut offered: Vec<Tool> = entries.into_iter().filter_map(|e| e.tool).collect();
        // A caller who may run nothing is offered nothing (the helpers stay
        // callable by name, and `coderclaw mcp --list` says why).
        if !offered.is_empty() {
            offered.extend(tools::helper_tools());
        }
        Ok(ListToolsResult::with_all_items(offered))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let who = self.who(&context.extensions, &context.peer).map_err(protocol_error)?;
        let arguments = request.arguments.unwrap_or_default();
        match request.name.as_ref() {
            POLICY_CHECK => return Ok(helper_result(self.policy_check(&who, &arguments)).into()),
            TASK_STATUS => return Ok(helper_result(self.task_status(&who, &arguments)).into()),
            _ => {}
        }
        let Some((_, target)) = self.target(&who, &request.name, false).map_err(protocol_error)? else {
            return Err(ErrorData::invalid_params(
                format!("no tool `{}`: list the tools to see what is installed", request.name),
                None,
            ));
        };
        let arguments = Value::Object(arguments);
        // A skill left out of the list, called by name anyway, is refused by
        // its task's decision: a tool error with the reasons, and audited;
        // its schema is not told. An offered one's arguments must match it.
        if matches!(self.service.preview(&who, &target.id), Some(Ok(d)) if d.allowed) {
            self.schemas.check(&request.name, &target.input_schema, &arguments)?;
        }
        match call::call(&self.service, &self.schemas, &who, &target, arguments, &context).await {
            Ok(result) => Ok(result.into()),
            Err(e) => {
                Ok(CallToolResult::error(vec![ContentBlock::text(format!("{}: {}", e.code.as_str(), e.message))])
                    .into())
            }
        }
    }
}
