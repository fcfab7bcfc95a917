//! Between the task model and the proto messages. JSON values travel as
//! JSON text (numbers keep every digit); a field a peer sent that does not
//! parse is `invalid_request` naming the field.

use super::proto;
use coderclaw_core::manifest::Kind;
use coderclaw_core::task::{
    FailureCode, RuntimeMode, RuntimeStatus, SkillInfo, TaskEventKind, TaskFailure, TaskFilter, TaskState, TaskStatus,
    TaskSubmitRequest, TaskTarget, TaskUpdateEvent, WorkspaceRef,
};
use coderclaw_tasks::{ErrorCode, RuntimeError};
use serde_json::Value;
use std::collections::BTreeMap;

const STATUSES: [(TaskStatus, proto::TaskStatus); 7] = [
    (TaskStatus::Pending, proto::TaskStatus::Pending),
    (TaskStatus::Planning, proto::TaskStatus::Planning),
    (TaskStatus::Running, proto::TaskStatus::Running),
    (TaskStatus::Waiting, proto::TaskStatus::Waiting),
    (TaskStatus::Completed, proto::TaskStatus::Completed),
    (TaskStatus::Failed, proto::TaskStatus::Failed),
    (TaskStatus::Cancelled, proto::TaskStatus::Cancelled),
];

const KINDS: [(TaskEventKind, proto::TaskEventKind); 9] = [
    (TaskEventKind::Submitted, proto::TaskEventKind::Submitted),
    (TaskEventKind::Status, proto::TaskEventKind::Status),
    (TaskEventKind::Progress, proto::TaskEventKind::Progress),
    (TaskEventKind::Log, proto::TaskEventKind::Log),
    (TaskEventKind::InputRequested, proto::TaskEventKind::InputRequested),
    (TaskEventKind::InputProvided, proto::TaskEventKind::InputProvided),
    (TaskEventKind::Paused, proto::TaskEventKind::Paused),
    (TaskEventKind::Resumed, proto::TaskEventKind::Resumed),
    (TaskEventKind::Recovered, proto::TaskEventKind::Recovered),
];

fn invalid(message: impl Into<String>) -> RuntimeError {
    RuntimeError::new(ErrorCode::InvalidRequest, message)
}

pub(super) fn status_to(s: TaskStatus) -> i32 {
    STATUSES.iter().find(|(c, _)| *c == s).map_or(0, |(_, p)| *p as i32)
}

pub(super) fn status_from(v: i32) -> Result<TaskStatus, RuntimeError> {
    STATUSES
        .iter()
        .find(|(_, p)| *p as i32 == v)
        .map(|(c, _)| *c)
        .ok_or_else(|| invalid(format!("{v} is not a task status")))
}

fn kind_to(k: TaskEventKind) -> i32 {
    KINDS.iter().find(|(c, _)| *c == k).map_or(0, |(_, p)| *p as i32)
}

fn kind_from(v: i32) -> Result<TaskEventKind, RuntimeError> {
    KINDS
        .iter()
        .find(|(_, p)| *p as i32 == v)
        .map(|(c, _)| *c)
        .ok_or_else(|| invalid(format!("{v} is not an event kind")))
}

fn json_text(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// `text` as JSON; empty means `default`.
fn json_field(field: &str, text: &str, default: Value) -> Result<Value, RuntimeError> {
    if text.is_empty() {
        return Ok(default);
    }
    serde_json::from_str(text).map_err(|e| invalid(format!("{field} is not JSON: {e}")))
}

fn metadata_field(text: &str) -> Result<BTreeMap<String, Value>, RuntimeError> {
    match json_field("metadata_json", text, Value::Object(Default::default()))? {
        Value::Object(map) => Ok(map.into_iter().collect()),
        _ => Err(invalid("metadata_json must be a JSON object")),
    }
}

fn metadata_text(map: &BTreeMap<String, Value>) -> String {
    serde_json::to_string(map).unwrap_or_default()
}

pub(super) fn submit_from(r: proto::SubmitTaskRequest) -> Result<TaskSubmitRequest, RuntimeError> {
    use proto::submit_task_request::Target;
    let (skill_id, agent_id) = match r.target {
        Some(Target::SkillId(s)) => (Some(s), None),
        Some(Target::AgentId(a)) => (None, Some(a)),
        None => (None, None),
    };
    Ok(TaskSubmitRequest {
        description: r.description,
        input: json_field("input_json", &r.input_json, Value::Null)?,
        agent_id,
        skill_id,
        session_id: r.session_id,
        parent_task_id: r.parent_task_id,
        metadata: metadata_field(&r.metadata_json)?,
        paused: r.paused,
        workspace: workspace_from(r.workspace)?,
    })
}

fn workspace_from(w: Option<proto::Workspace>) -> Result<Option<WorkspaceRef>, RuntimeError> {
    use proto::workspace::Place;
    match w.map(|w| w.place) {
        None => Ok(None),
        Some(Some(Place::Name(n))) => Ok(Some(WorkspaceRef::Name(n))),
        Some(Some(Place::Upload(d))) => Ok(Some(WorkspaceRef::Upload(d))),
        Some(None) => Err(invalid("workspace names neither `name` nor `upload`")),
    }
}

fn workspace_to(w: Option<WorkspaceRef>) -> Option<proto::Workspace> {
    use proto::workspace::Place;
    w.map(|w| proto::Workspace {
        place: Some(match w {
            WorkspaceRef::Name(n) => Place::Name(n),
            WorkspaceRef::Upload(d) => Place::Upload(d),
        }),
    })
}

/// The request as sent; both targets at once cannot be written (the proto
/// has one field for either), so it is refused here as the server would.
pub(super) fn submit_to(r: TaskSubmitRequest) -> Result<proto::SubmitTaskRequest, RuntimeError> {
    use proto::submit_task_request::Target;
    let target = match (r.skill_id, r.agent_id) {
        (Some(s), None) => Some(Target::SkillId(s)),
        (None, Some(a)) => Some(Target::AgentId(a)),
        (Some(_), Some(_)) => return Err(invalid("give either skillId or agentId, not both")),
        // The server says what to do.
        (None, None) => None,
    };
    Ok(proto::SubmitTaskRequest {
        description: r.description,
        target,
        input_json: json_text(&r.input),
        session_id: r.session_id,
        parent_task_id: r.parent_task_id,
        metadata_json: metadata_text(&r.metadata),
        paused: r.paused,
        workspace: workspace_to(r.workspace),
    })
}

pub(super) fn task_to(t: TaskState) -> proto::Task {
    use proto::task::Target;
    proto::Task {
        id: t.id,
        description: t.description,
        status: status_to(t.status),
        target: Some(match t.target {
            TaskTarget::Skill(s) => Target::SkillId(s),
            TaskTarget::Agent(a) => Target::AgentId(a),
        }),
        input_json: json_text(&t.input),
        session_id: t.session_id,
        user: t.user,
        remote: t.remote,
        parent_task_id: t.parent_task_id,
        metadata_json: metadata_text(&t.metadata),
        paused: t.paused,
        progress: t.progress,
        prompt: t.prompt,
        output_json: t.output.as_ref().map(json_text),
        error: t.error.map(|f| proto::TaskFailure {
            code: f.code.as_str().to_owned(),
            message: f.message,
            reasons: f.reasons,
        }),
        created_at_ms: t.created_at_ms,
        started_at_ms: t.started_at_ms,
        completed_at_ms: t.completed_at_ms,
        workspace: workspace_to(t.workspace),
    }
}

pub(super) fn task_from(t: proto::Task) -> Result<TaskState, RuntimeError> {
    use proto::task::Target;
    let target = match t.target {
        Some(Target::SkillId(s)) => TaskTarget::Skill(s),
        Some(Target::AgentId(a)) => TaskTarget::Agent(a),
        None => return Err(invalid("a task without a target")),
    };
    let error = match t.error {
        Some(f) => Some(TaskFailure {
            code: FailureCode::parse(&f.code).unwrap_or(FailureCode::Internal),
            message: f.message,
            reasons: f.reasons,
        }),
        None => None,
    };
    Ok(TaskState {
        id: t.id,
        description: t.description,
        status: status_from(t.status)?,
        target,
        input: json_field("input_json", &t.input_json, Value::Null)?,
        session_id: t.session_id,
        user: t.user,
        remote: t.remote,
        parent_task_id: t.parent_task_id,
        metadata: metadata_field(&t.metadata_json)?,
        paused: t.paused,
        workspace: workspace_from(t.workspace)?,
        progress: t.progress,
        prompt: t.prompt,
        output: t.output_json.map(|o| json_field("output_json", &o, Value::Null)).transpose()?,
        error,
        created_at_ms: t.created_at_ms,
        started_at_ms: t.started_at_ms,
        completed_at_ms: t.completed_at_ms,
    })
}

pub(super) fn event_to(e: TaskUpdateEvent) -> proto::TaskEvent {
    proto::TaskEvent {
        task_id: e.task_id,
        seq: e.seq,
        timestamp_ms: e.timestamp_ms,
        event: kind_to(e.event),
        status: status_to(e.status),
        progress: e.progress,
        message: e.message,
        data_json: e.data.as_ref().map(json_text),
    }
}

pub(super) fn event_from(e: proto::TaskEvent) -> Result<TaskUpdateEvent, RuntimeError> {
    Ok(TaskUpdateEvent {
        task_id: e.task_id,
        seq: e.seq,
        timestamp_ms: e.timestamp_ms,
        event: kind_from(e.event)?,
        status: status_from(e.status)?,
        progress: e.progress,
        message: e.message,
        data: e.data_json.map(|d| json_field("data_json", &d, Value::Null)).transpose()?,
    })
}

pub(super) fn filter_from(r: proto::ListTasksRequest) -> Result<TaskFilter, RuntimeError> {
    Ok(TaskFilter { status: r.status.map(status_from).transpose()?, session: r.session, limit: r.limit })
}

pub(super) fn filter_to(f: TaskFilter) -> proto::ListTasksRequest {
    proto::ListTasksRequest { status: f.status.map(status_to), session: f.session, limit: f.limit }
}

pub(super) fn skill_to(s: SkillInfo) -> proto::SkillInfo {
    proto::SkillInfo {
        id: s.id,
        version: s.version,
        kind: s.kind.as_str().to_owned(),
        description: s.description,
        dangerous: s.dangerous,
        resumable: s.resumable,
        input_schema_json: json_text(&s.input_schema),
        output_schema_json: s.output_schema.as_ref().map(json_text),
    }
}

pub(super) fn skill_from(s: proto::SkillInfo) -> Result<SkillInfo, RuntimeError> {
    let kind = match s.kind.as_str() {
        "skill" => Kind::Skill,
        "agent" => Kind::Agent,
        other => return Err(invalid(format!("`{other}` is not a kind"))),
    };
    Ok(SkillInfo {
        id: s.id,
        version: s.version,
        kind,
        description: s.description,
        dangerous: s.dangerous,
        resumable: s.resumable,
        input_schema: json_field("input_schema_json", &s.input_schema_json, Value::Null)?,
        output_schema: s.output_schema_json.map(|o| json_field("output_schema_json", &o, Value::Null)).transpose()?,
    })
}

pub(super) fn runtime_status_to(s: RuntimeStatus) -> proto::RuntimeStatus {
    proto::RuntimeStatus {
        version: s.version,
        uptime_secs: s.uptime_secs,
        active_tasks: s.active_tasks,
        queued_tasks: s.queued_tasks,
        total_tasks: s.total_tasks,
        max_concurrent_tasks: s.max_concurrent_tasks,
        mode: s.mode.as_str().to_owned(),
        healthy: s.healthy,
        missing_required_skills: s.missing_required_skills,
        policy_warnings: s.policy_warnings,
    }
}

pub(super) fn runtime_status_from(s: proto::RuntimeStatus) -> Result<RuntimeStatus, RuntimeError> {
    Ok(RuntimeStatus {
        version: s.version,
        uptime_secs: s.uptime_secs,
        active_tasks: s.active_tasks,
        queued_tasks: s.queued_tasks,
        total_tasks: s.total_tasks,
        max_concurrent_tasks: s.max_concurrent_tasks,
        mode: RuntimeMode::parse(&s.mode).map_err(invalid)?,
        healthy: s.healthy,
        missing_required_skills: s.missing_required_skills,
        policy_warnings: s.policy_warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tasks_events_and_submissions_survive_the_round_trip_with_every_digit() {
        let mut submit = TaskSubmitRequest::skill("team/echo", json!({ "big": 12345678901234567890u64, "f": 0.1 }));
        submit.metadata.insert("source".into(), json!("ci"));
        submit.paused = true;
        assert_eq!(submit_from(submit_to(submit.clone()).unwrap()).unwrap(), submit);
        for status in TaskStatus::ALL {
            assert_eq!(status_from(status_to(status)).unwrap(), status);
        }
        let event = TaskUpdateEvent {
            task_id: "t".into(),
            seq: 3,
            timestamp_ms: 9,
            event: TaskEventKind::InputRequested,
            status: TaskStatus::Waiting,
            progress: Some(0.5),
            message: "m".into(),
            data: Some(json!({ "k": [1, 2] })),
        };
        assert_eq!(event_from(event_to(event.clone())).unwrap(), event);
    }

    #[test]
    fn json_fields_that_do_not_parse_are_refused_by_name() {
        let r = proto::SubmitTaskRequest { input_json: "{nope".into(), ..Default::default() };
        let e = submit_from(r).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert!(e.message.contains("input_json"), "{e}");
        let r = proto::SubmitTaskRequest { metadata_json: "[1]".into(), ..Default::default() };
        assert!(submit_from(r).unwrap_err().message.contains("metadata_json"));
        assert!(status_from(42).is_err());
    }
}
