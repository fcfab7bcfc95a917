//! The task model shared by the task engine, its transports and their
//! clients: the lifecycle state machine, what a submission carries, what a
//! task looks like, the events it emits and the runtime's status.
//!
//! The state machine is the product's:
//!
//! ```text
//! PENDING → PLANNING → RUNNING ⇄ WAITING
//!                      RUNNING → COMPLETED
//! any non-terminal → FAILED | CANCELLED
//! ```
//!
//! COMPLETED, FAILED and CANCELLED are final: [`TaskStatus::transition`]
//! refuses every move out of them, so a late result can never overwrite a
//! cancellation.

use crate::manifest::Kind;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

/// Where a task is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskStatus {
    /// Accepted and durable, waiting in the queue.
    Pending,
    /// Being resolved and authorised (skill lookup, signature, policy).
    Planning,
    /// The skill or agent is executing.
    Running,
    /// Paused until someone answers the task's input request.
    Waiting,
    /// Finished with output. Final.
    Completed,
    /// Finished with an error. Final.
    Failed,
    /// Stopped by a user. Final.
    Cancelled,
}

/// A move the state machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a task cannot go from {from} to {to}")]
pub struct IllegalTransition {
    /// The status the task has.
    pub from: TaskStatus,
    /// The status that was asked for.
    pub to: TaskStatus,
}

impl TaskStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [TaskStatus; 7] = [
        TaskStatus::Pending,
        TaskStatus::Planning,
        TaskStatus::Running,
        TaskStatus::Waiting,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ];

    /// COMPLETED, FAILED and CANCELLED never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled)
    }

    /// Whether the state machine allows `self → next`.
    pub fn can_move_to(self, next: TaskStatus) -> bool {
        use TaskStatus::*;
        match (self, next) {
            (from, _) if from.is_terminal() => false,
            (_, Failed | Cancelled) => true,
            (Pending, Planning) | (Planning, Running) | (Running, Waiting) | (Waiting, Running) => true,
            (Running, Completed) => true,
            _ => false,
        }
    }

    /// `next` if the state machine allows it, else the error naming both.
    pub fn transition(self, next: TaskStatus) -> Result<TaskStatus, IllegalTransition> {
        if self.can_move_to(next) { Ok(next) } else { Err(IllegalTransition { from: self, to: next }) }
    }

    /// The wire name (`RUNNING`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "PENDING",
            TaskStatus::Planning => "PLANNING",
            TaskStatus::Running => "RUNNING",
            TaskStatus::Waiting => "WAITING",
            TaskStatus::Completed => "COMPLETED",
            TaskStatus::Failed => "FAILED",
            TaskStatus::Cancelled => "CANCELLED",
        }
    }

    /// Parses a wire name, case-insensitively.
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|t| t.as_str().eq_ignore_ascii_case(s)).ok_or_else(|| {
            format!("unknown task status `{s}`: expected one of {}", Self::ALL.map(TaskStatus::as_str).join(", "))
        })
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What runs: an installed skill or an agent, by id (`team/name`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TaskTarget {
    /// A skill.
    Skill(String),
    /// An agent (a component that may invoke skills).
    Agent(String),
}

impl TaskTarget {
    /// The id.
    pub fn id(&self) -> &str {
        match self {
            TaskTarget::Skill(id) | TaskTarget::Agent(id) => id,
        }
    }

    /// What the target must be.
    pub fn kind(&self) -> Kind {
        match self {
            TaskTarget::Skill(_) => Kind::Skill,
            TaskTarget::Agent(_) => Kind::Agent,
        }
    }
}

/// A request to run something, as a client sends it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskSubmitRequest {
    /// What the task is for, for people reading lists and logs.
    #[serde(default)]
    pub description: String,
    /// The JSON input handed to the skill or agent.
    #[serde(default)]
    pub input: Value,
    /// Run this agent. Exactly one of `agentId` and `skillId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Run this skill. Exactly one of `agentId` and `skillId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skill_id: Option<String>,
    /// The session to run under. Servers take it from the bearer token; a
    /// different value here is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The task this one was started from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_task_id: Option<String>,
    /// Free-form labels (e.g. `source: ci-pipeline`), kept with the task.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, Value>,
    /// Queue the task paused: it does not start until resumed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// Where the task runs: one of the server's named workspaces or an
    /// uploaded snapshot. Left out: the workspace the runtime was started
    /// in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<WorkspaceRef>,
}

/// Where a task runs, as a submission names it.
///
/// ```json
/// {"name": "main"}                   a workspace under `workspaces:` in the server's config.yaml
/// {"upload": "sha256:<64 hex>"}      a snapshot this user uploaded (POST /v1/uploads)
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum WorkspaceRef {
    /// A workspace the server's operator configured, by name.
    Name(String),
    /// An uploaded snapshot, by the SHA-256 of its tar (`sha256:<hex>`).
    Upload(String),
}

impl WorkspaceRef {
    /// What is wrong with it, if anything (checked at submission).
    pub fn check(&self) -> Result<(), String> {
        match self {
            WorkspaceRef::Name(n) if !is_workspace_name(n) => Err(format!(
                "`{}` is not a workspace name: letters, digits, `-` and `_`, at most 64",
                printable(n, 64).unwrap_or_default()
            )),
            WorkspaceRef::Upload(d) if upload_digest(d).is_none() => Err(format!(
                "`{}` is not an upload digest: expected sha256:<64 hex digits>, as POST /v1/uploads returned",
                printable(d, 80).unwrap_or_default()
            )),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for WorkspaceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkspaceRef::Name(n) => write!(f, "workspace {n}"),
            WorkspaceRef::Upload(d) => write!(f, "upload {d}"),
        }
    }
}

/// The digest `sha256:<64 lowercase hex>` names, if it is one.
pub fn upload_digest(text: &str) -> Option<crate::Digest> {
    let hex = text.strip_prefix("sha256:")?;
    let lower = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    lower.then(|| crate::Digest::from_hex(hex)).flatten()
}

/// Whether `name` may name a workspace: 1 to 64 ASCII letters, digits,
/// `-` and `_`.
pub fn is_workspace_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What the server kept of an upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadInfo {
    /// `sha256:<hex>` of the tar as sent: name it in `workspace.upload`.
    pub digest: String,
    /// Bytes of the tar.
    pub bytes: u64,
    /// Regular files in the snapshot.
    pub files: u64,
}

/// The metadata key naming the program that submitted a task, as it
/// named itself (`mcp:claude-code 1.2.0`); the audit records of its run
/// carry it.
pub const CLIENT_METADATA: &str = "client";

/// Longest client name kept.
pub const MAX_CLIENT_NAME: usize = 128;

/// A client's name as kept in audit records: self-declared, so only
/// printable characters (no control, bidirectional or zero-width ones that
/// could make a record read as something else), at most
/// [`MAX_CLIENT_NAME`] of them; `None` when nothing is left.
pub fn client_label(declared: &str) -> Option<String> {
    printable(declared, MAX_CLIENT_NAME)
}

/// Text a client chose, as kept in records: printable characters only (no
/// control, bidirectional or zero-width ones), at most `max` of them,
/// trimmed; `None` when nothing is left.
pub fn printable(text: &str, max: usize) -> Option<String> {
    let invisible =
        |c: char| matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{feff}');
    let kept: String = text.chars().filter(|&c| !c.is_control() && !invisible(c)).take(max).collect();
    let kept = kept.trim();
    (!kept.is_empty()).then(|| kept.to_owned())
}

/// Longest `description` accepted.
pub const MAX_DESCRIPTION_BYTES: usize = 4096;

impl TaskSubmitRequest {
    /// A request to run skill `id` on `input`.
    pub fn skill(id: impl Into<String>, input: Value) -> Self {
        Self { skill_id: Some(id.into()), input, ..Self::default() }
    }

    /// A request to run agent `id` on `input`.
    pub fn agent(id: impl Into<String>, input: Value) -> Self {
        Self { agent_id: Some(id.into()), input, ..Self::default() }
    }

    /// The target, or what is wrong with the request.
    pub fn target(&self) -> Result<TaskTarget, String> {
        let target = match (&self.skill_id, &self.agent_id) {
            (Some(s), None) => TaskTarget::Skill(s.clone()),
            (None, Some(a)) => TaskTarget::Agent(a.clone()),
            (Some(_), Some(_)) => return Err("give either skillId or agentId, not both".into()),
            (None, None) => return Err("say what to run: skillId or agentId".into()),
        };
        if !crate::grant::is_skill_id(target.id()) {
            return Err(format!("`{}` is not a skill id: expected namespace/name", target.id()));
        }
        if self.description.len() > MAX_DESCRIPTION_BYTES {
            return Err(format!("description is longer than {MAX_DESCRIPTION_BYTES} bytes"));
        }
        if let Some(w) = &self.workspace {
            w.check()?;
        }
        Ok(target)
    }
}

/// A task as stored and reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskState {
    /// UUID (v4).
    pub id: String,
    /// What it is for.
    pub description: String,
    /// Where it is in its lifecycle.
    pub status: TaskStatus,
    /// What runs.
    pub target: TaskTarget,
    /// The JSON input.
    pub input: Value,
    /// The session it runs under.
    pub session_id: String,
    /// The user of that session.
    pub user: String,
    /// Submitted over the network from another machine. The device such a
    /// caller uses is unknown, so the task is decided as from an
    /// `untrusted` device whatever device its session was created on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remote: bool,
    /// The task this one was started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_task_id: Option<String>,
    /// Labels from the submission.
    #[serde(default)]
    pub metadata: BTreeMap<String, Value>,
    /// Held in the queue until resumed (PENDING only).
    #[serde(default)]
    pub paused: bool,
    /// Where it runs, when the submission named a workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<WorkspaceRef>,
    /// Last reported progress, 0.0..=1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f32>,
    /// What the task is waiting for (WAITING only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The JSON output (COMPLETED, or FAILED `skill-verdict`: the findings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Why it failed or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskFailure>,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// When it left the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    /// When it reached a final status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at_ms: Option<u64>,
}

/// Why a task FAILED or was CANCELLED, as a client can act on it: the
/// `code` says what kind of failure without reading the text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFailure {
    /// What kind of failure.
    pub code: FailureCode,
    /// What happened, for a person.
    pub message: String,
    /// For a denial: the decision's reason codes (`device-trust`,
    /// `role-not-allowed`, ...), so a client can act on each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

impl TaskFailure {
    /// A failure of kind `code`.
    pub fn new(code: FailureCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), reasons: Vec::new() }
    }

    /// This failure, with the decision's reason codes.
    pub fn with_reasons(mut self, reasons: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.reasons = reasons.into_iter().map(Into::into).collect();
        self
    }
}

impl fmt::Display for TaskFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TaskFailure {}

/// The output field by which a skill says its run failed (the convention
/// documented in `wit/skill.wit`): `"failed": true` in an output object.
pub const VERDICT_FIELD: &str = "failed";

/// The failure a skill's output declares, if it declares one: an object
/// with `"failed": true`. The message is its `summary` when it gives a
/// string one, else the number of its `findings`.
pub fn skill_verdict(output: &serde_json::Value) -> Option<TaskFailure> {
    if output.get(VERDICT_FIELD) != Some(&serde_json::Value::Bool(true)) {
        return None;
    }
    // The skill's own text: no control characters reach a terminal or a log.
    let summary = output.get("summary").and_then(serde_json::Value::as_str).and_then(|s| printable(s, 500));
    let findings = output.get("findings").and_then(serde_json::Value::as_array).map(Vec::len);
    let message = match (summary, findings) {
        (Some(s), _) => format!("the skill reported failure: {s}"),
        (None, Some(1)) => "the skill reported failure: 1 finding".to_owned(),
        (None, Some(n)) => format!("the skill reported failure: {n} findings"),
        (None, None) => "the skill reported failure".to_owned(),
    };
    Some(TaskFailure::new(FailureCode::SkillVerdict, message))
}

/// The stable set of task failure kinds (`error.code` in every transport).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureCode {
    /// The security model refused the run (policy, roles, device trust).
    Denied,
    /// The task's session is no longer valid (expired, revoked, unknown).
    Unauthenticated,
    /// The target is not installed, or is installed as the other kind.
    NotInstalled,
    /// The skill refused its input.
    InvalidInput,
    /// The skill ran and reported a failure of its own.
    SkillError,
    /// The run outlived its time limit.
    Timeout,
    /// The guest exceeded its memory limit.
    MemoryLimit,
    /// The guest crashed (a trap, a panic, a stack overflow).
    Trap,
    /// Cancelled by a client.
    Cancelled,
    /// The host stopped while the task ran and the skill is not resumable.
    HostRestarted,
    /// The host failed (a store, a package file, compilation).
    Internal,
    /// Paused or WAITING for input longer than the host allows.
    Expired,
    /// The cluster node running it was lost (its lease ran out) and the
    /// skill is not resumable.
    NodeLost,
    /// The skill ran to its end and returned a failure verdict (an output
    /// object with `"failed": true`, e.g. a scanner's findings): the task
    /// keeps that output.
    SkillVerdict,
}

impl FailureCode {
    /// Every code, in a stable order (for documentation and tests).
    pub const ALL: [FailureCode; 14] = [
        FailureCode::Denied,
        FailureCode::Unauthenticated,
        FailureCode::NotInstalled,
        FailureCode::InvalidInput,
        FailureCode::SkillError,
        FailureCode::Timeout,
        FailureCode::MemoryLimit,
        FailureCode::Trap,
        FailureCode::Cancelled,
        FailureCode::HostRestarted,
        FailureCode::Internal,
        FailureCode::Expired,
        FailureCode::NodeLost,
        FailureCode::SkillVerdict,
    ];

    /// The wire name (`memory-limit`).
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCode::Denied => "denied",
            FailureCode::Unauthenticated => "unauthenticated",
            FailureCode::NotInstalled => "not-installed",
            FailureCode::InvalidInput => "invalid-input",
            FailureCode::SkillError => "skill-error",
            FailureCode::Timeout => "timeout",
            FailureCode::MemoryLimit => "memory-limit",
            FailureCode::Trap => "trap",
            FailureCode::Cancelled => "cancelled",
            FailureCode::HostRestarted => "host-restarted",
            FailureCode::Internal => "internal",
            FailureCode::Expired => "expired",
            FailureCode::NodeLost => "node-lost",
            FailureCode::SkillVerdict => "skill-verdict",
        }
    }

    /// The code named `name`, if any.
    pub fn parse(name: &str) -> Option<FailureCode> {
        FailureCode::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

impl fmt::Display for FailureCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of thing a [`TaskUpdateEvent`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskEventKind {
    /// The task was accepted.
    Submitted,
    /// The status changed (see `status`).
    Status,
    /// The skill reported progress.
    Progress,
    /// The skill logged a line, or the host noted a capability use.
    Log,
    /// The skill asked for input; `message` is the prompt.
    InputRequested,
    /// Someone answered the input request.
    InputProvided,
    /// A queued task was paused.
    Paused,
    /// A paused task was resumed.
    Resumed,
    /// The host restarted while the task was in flight.
    Recovered,
}

impl TaskEventKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskEventKind::Submitted => "submitted",
            TaskEventKind::Status => "status",
            TaskEventKind::Progress => "progress",
            TaskEventKind::Log => "log",
            TaskEventKind::InputRequested => "input-requested",
            TaskEventKind::InputProvided => "input-provided",
            TaskEventKind::Paused => "paused",
            TaskEventKind::Resumed => "resumed",
            TaskEventKind::Recovered => "recovered",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        use TaskEventKind::*;
        [Submitted, Status, Progress, Log, InputRequested, InputProvided, Paused, Resumed, Recovered]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// One entry of a task's history, and one message of its stream. Events of
/// a task are numbered 1, 2, 3, ... in the order they happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskUpdateEvent {
    /// The task.
    pub task_id: String,
    /// Position in the task's history, from 1, without gaps.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// What happened.
    pub event: TaskEventKind,
    /// The task's status after this event.
    pub status: TaskStatus,
    /// Progress after this event, if any was reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f32>,
    /// Human-readable detail (log line, prompt, error, ...).
    #[serde(default)]
    pub message: String,
    /// Structured detail (the output on COMPLETED, the level of a log line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// Which tasks to list.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskFilter {
    /// Only tasks with this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TaskStatus>,
    /// Only tasks of this session (admins may name any session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// At most this many, newest first (default 100, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// A skill or agent the runtime can run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SkillInfo {
    /// `namespace/name`.
    pub id: String,
    /// Semver version.
    pub version: String,
    /// `skill` or `agent`.
    pub kind: Kind,
    /// What it does.
    pub description: String,
    /// Needs an explicit policy entry and trusted device.
    pub dangerous: bool,
    /// May be re-run from the start after a host restart.
    pub resumable: bool,
    /// JSON Schema of the input.
    pub input_schema: Value,
    /// JSON Schema of the output, when the manifest declares one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
}

/// How a runtime accepts work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeMode {
    /// Loopback only; remote sessions are refused.
    #[default]
    LocalOnly,
    /// Accepts remote connections; every call needs a session.
    RemoteEnabled,
    /// Like remote-enabled, as one node of a cluster sharing a PostgreSQL
    /// database (the queue, tasks and events).
    DistributedCluster,
}

impl RuntimeMode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeMode::LocalOnly => "local-only",
            RuntimeMode::RemoteEnabled => "remote-enabled",
            RuntimeMode::DistributedCluster => "distributed-cluster",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "local-only" => Ok(RuntimeMode::LocalOnly),
            "remote-enabled" => Ok(RuntimeMode::RemoteEnabled),
            "distributed-cluster" => Ok(RuntimeMode::DistributedCluster),
            other => Err(format!("unknown mode `{other}`: expected local-only, remote-enabled or distributed-cluster")),
        }
    }
}

/// Health and load of a runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeStatus {
    /// coderclaw version.
    pub version: String,
    /// Seconds since the runtime started.
    pub uptime_secs: u64,
    /// Tasks in PLANNING, RUNNING or WAITING.
    pub active_tasks: u64,
    /// Tasks queued (PENDING).
    pub queued_tasks: u64,
    /// Tasks ever stored.
    pub total_tasks: u64,
    /// How many tasks run at once.
    pub max_concurrent_tasks: u32,
    /// local-only or remote-enabled.
    pub mode: RuntimeMode,
    /// The task store answers and the scheduler runs.
    pub healthy: bool,
    /// Organisation `requiredSkills` that are not installed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_required_skills: Vec<String>,
    /// Policy files in force at their last good version because the file
    /// itself is broken, one line each (file and problem).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_warnings: Vec<String>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_client_label_keeps_printable_characters_only_and_is_short() {
        assert_eq!(super::client_label("mcp:claude-code 2.1.0").as_deref(), Some("mcp:claude-code 2.1.0"));
        assert_eq!(super::client_label("evil\u{202e}gpj.exe\n\u{200b}x").as_deref(), Some("evilgpj.exex"));
        assert_eq!(super::client_label(&"a".repeat(10_000)).map(|l| l.len()), Some(super::MAX_CLIENT_NAME));
        assert_eq!(super::client_label(" \u{feff}\t"), None);
    }

    use super::*;
    use TaskStatus::*;

    #[test]
    fn failure_codes_round_trip_by_their_wire_names() {
        for code in FailureCode::ALL {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json.as_str(), Some(code.as_str()));
            assert_eq!(FailureCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(FailureCode::parse("policy"), None);
        let f: TaskFailure = serde_json::from_str(r#"{"code":"memory-limit","message":"m"}"#).unwrap();
        assert_eq!(f, TaskFailure::new(FailureCode::MemoryLimit, "m"));
    }

    #[test]
    fn the_product_transitions_are_legal_and_nothing_else_is() {
        let legal = [
            (Pending, Planning),
            (Planning, Running),
            (Running, Waiting),
            (Waiting, Running),
            (Running, Completed),
            (Pending, Failed),
            (Planning, Failed),
            (Running, Failed),
            (Waiting, Failed),
            (Pending, Cancelled),
            (Planning, Cancelled),
            (Running, Cancelled),
            (Waiting, Cancelled),
        ];
        for from in TaskStatus::ALL {
            for to in TaskStatus::ALL {
                let ok = legal.contains(&(from, to));
                assert_eq!(from.transition(to).is_ok(), ok, "{from} -> {to}");
                if !ok {
                    assert_eq!(
                        from.transition(to).unwrap_err().to_string(),
                        format!("a task cannot go from {from} to {to}")
                    );
                }
            }
        }
    }

    #[test]
    fn statuses_round_trip_their_wire_names() {
        for s in TaskStatus::ALL {
            assert_eq!(TaskStatus::parse(&s.as_str().to_lowercase()), Ok(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert!(TaskStatus::parse("DONE").unwrap_err().contains("PENDING, PLANNING"));
    }

    #[test]
    fn a_request_names_exactly_one_valid_target() {
        assert_eq!(
            TaskSubmitRequest::skill("team/echo", Value::Null).target(),
            Ok(TaskTarget::Skill("team/echo".into()))
        );
        let mut both = TaskSubmitRequest::skill("team/echo", Value::Null);
        both.agent_id = Some("team/agent".into());
        assert!(both.target().unwrap_err().contains("not both"));
        assert!(TaskSubmitRequest::default().target().unwrap_err().contains("skillId or agentId"));
        assert!(TaskSubmitRequest::skill("echo", Value::Null).target().unwrap_err().contains("namespace/name"));
        let unknown = serde_json::from_str::<TaskSubmitRequest>(r#"{"skillId":"a/b","agent":"x"}"#);
        assert!(unknown.unwrap_err().to_string().contains("unknown field `agent`"));
    }
}
