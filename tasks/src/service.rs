//! The task engine behind the security model: every call authenticates a
//! session, checks the permission it needs (refusals are audited), and a
//! session sees only its own tasks unless it holds `admin:all`. Both
//! transports (in-process and HTTP) go through here.

use crate::engine::{EngineError, Owner, TaskEngine};
use coderclaw_core::decision::{Decision, Subject};
use coderclaw_core::manifest::Kind;
use coderclaw_core::principal::Principal;
use coderclaw_core::rbac::Permission;
use coderclaw_core::task::{
    RuntimeStatus, SkillInfo, TaskFilter, TaskState, TaskSubmitRequest, TaskTarget, TaskUpdateEvent, UploadInfo,
};
use coderclaw_security::security::{Security, SecurityError};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A stable error code, the same in-process and over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No valid session (HTTP 401).
    Unauthenticated,
    /// The session lacks a permission (HTTP 403).
    Forbidden,
    /// No such task for this session (HTTP 404).
    NotFound,
    /// The request is malformed (HTTP 400).
    InvalidRequest,
    /// The task is not in a state that allows this (HTTP 409).
    Conflict,
    /// The body is over the size limit (HTTP 413).
    PayloadTooLarge,
    /// The server failed (HTTP 500).
    Internal,
    /// The server could not be reached (client side only).
    Unavailable,
    /// Too many failed authentications from this address (HTTP 429).
    RateLimited,
    /// The session holds as many unfinished tasks or input bytes as one
    /// session may (HTTP 429).
    QuotaExceeded,
}

impl ErrorCode {
    /// The wire name (`not_found`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::QuotaExceeded => "quota_exceeded",
        }
    }

    /// The HTTP status for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::InvalidRequest => 400,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
            ErrorCode::RateLimited | ErrorCode::QuotaExceeded => 429,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a runtime call failed: a stable code and a message saying what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{message}")]
pub struct RuntimeError {
    /// Stable code for scripts.
    pub code: ErrorCode,
    /// What went wrong and what to do.
    pub message: String,
    /// When to try again (with [`ErrorCode::RateLimited`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

impl RuntimeError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), retry_after_secs: None }
    }
}

impl From<EngineError> for RuntimeError {
    fn from(e: EngineError) -> Self {
        let code = match &e {
            EngineError::NotFound(_) => ErrorCode::NotFound,
            EngineError::Illegal(_) | EngineError::Conflict(_) => ErrorCode::Conflict,
            EngineError::Invalid(_) => ErrorCode::InvalidRequest,
            EngineError::Store(_) => ErrorCode::Internal,
            // Not acknowledged, so safe to send again.
            EngineError::NotStored(_) => ErrorCode::Unavailable,
            EngineError::Quota(_) => ErrorCode::QuotaExceeded,
            EngineError::ShuttingDown => ErrorCode::Unavailable,
        };
        let mut error = RuntimeError::new(code, e.to_string());
        if code == ErrorCode::Unavailable {
            // A restart, under a supervisor, takes seconds.
            error.retry_after_secs = Some(5);
        }
        error
    }
}

impl From<SecurityError> for RuntimeError {
    fn from(e: SecurityError) -> Self {
        use coderclaw_security::audit::AuditError;
        use coderclaw_security::identity::IdentityError;
        // A cluster's database out of reach (or refusing): not done, and
        // a later attempt may succeed.
        if matches!(
            &e,
            SecurityError::Audit(AuditError::Store { .. })
                | SecurityError::Identity(IdentityError::Store { .. })
                | SecurityError::Home(coderclaw_security::home::HomeError::Audit(AuditError::Store { .. }))
        ) {
            let mut error = RuntimeError::new(ErrorCode::Unavailable, e.to_string());
            error.retry_after_secs = Some(5);
            return error;
        }
        let code = match &e {
            SecurityError::Denied(_)
            | SecurityError::InstallRefused { .. }
            | SecurityError::CachedPolicy { .. }
            | SecurityError::NoPolicy(_) => ErrorCode::Forbidden,
            SecurityError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            SecurityError::Identity(_) => ErrorCode::Unauthenticated,
            SecurityError::RateLimited { retry_after_secs } => {
                let mut r = RuntimeError::new(ErrorCode::RateLimited, e.to_string());
                r.retry_after_secs = Some(*retry_after_secs);
                return r;
            }
            _ => ErrorCode::Internal,
        };
        RuntimeError::new(code, e.to_string())
    }
}

/// Longest reason kept when a session gives up its task.
const MAX_ABANDON_REASON: usize = 512;

/// What running a skill would be decided now (unrecorded), or why that
/// cannot be told.
pub type Preview = Result<Decision, String>;

/// The authorised task API.
pub struct TaskService {
    engine: TaskEngine,
    security: Arc<Security>,
    /// Uploads being received at once, server-wide: each may hold up to
    /// `uploads.maxBytes` in memory.
    uploads: Arc<tokio::sync::Semaphore>,
}

/// Uploads received at once, server-wide.
pub const MAX_CONCURRENT_UPLOADS: usize = 4;

/// Leave to receive one upload: its size limit, and a slot among the
/// uploads in progress, held until dropped.
pub struct UploadSlot {
    /// The largest tar accepted (`uploads.maxBytes`).
    pub max_bytes: u64,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl TaskService {
    /// `engine` guarded by `security`.
    pub fn new(engine: TaskEngine, security: Arc<Security>) -> Arc<Self> {
        let uploads = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_UPLOADS));
        Arc::new(Self { engine, security, uploads })
    }

    /// The engine itself, with no authentication, permission check or
    /// visibility rule: for embedders that authorise on their own, and tests.
    pub fn dangerous_engine(&self) -> &TaskEngine {
        &self.engine
    }

    /// Stops the engine for good (see [`TaskEngine::shutdown`]): the
    /// server's owner does this, not a client, so no session is asked for.
    pub async fn shutdown(
        &self,
        grace: std::time::Duration,
        hurry: impl std::future::Future<Output = ()>,
    ) -> Result<crate::ShutdownReport, RuntimeError> {
        Ok(self.engine.shutdown(grace, hurry).await?)
    }

    /// The security model.
    pub fn security(&self) -> &Security {
        &self.security
    }

    /// The security model, to hand to work off the async workers.
    pub fn shared_security(&self) -> &Arc<Security> {
        &self.security
    }

    /// The subject behind a bearer session token (or the local owner
    /// without one, while `requireAuth` is off).
    pub fn authenticate(&self, token: Option<&str>) -> Result<Subject, RuntimeError> {
        let _span = tracing::debug_span!("authenticate").entered();
        Self::auth_error(token, self.security.subject(token))
    }

    /// [`TaskService::authenticate`] for a token sent over the network by
    /// `peer`: failures are throttled per peer and audited in aggregate.
    pub fn authenticate_peer(&self, token: Option<&str>, peer: std::net::IpAddr) -> Result<Subject, RuntimeError> {
        let _span = tracing::debug_span!("authenticate").entered();
        Self::auth_error(token, self.security.subject_from_peer(token, peer))
    }

    fn auth_error(token: Option<&str>, result: Result<Subject, SecurityError>) -> Result<Subject, RuntimeError> {
        result.map_err(|e| {
            if matches!(e, SecurityError::RateLimited { .. }) {
                return e.into();
            }
            let code = if token.is_none()
                || matches!(
                    e,
                    SecurityError::Identity(_) | SecurityError::Denied(_) | SecurityError::Unauthenticated(_)
                ) {
                ErrorCode::Unauthenticated
            } else {
                ErrorCode::Internal
            };
            RuntimeError::new(code, e.to_string())
        })
    }

    /// Checks `permission`. Refusals are always audited; grants only when
    /// `audit_allowed` (mutations), so reads stay cheap.
    fn require(
        &self,
        who: &Subject,
        permission: Permission,
        action: &str,
        resource: &str,
        audit_allowed: bool,
    ) -> Result<(), RuntimeError> {
        self.security.check(who, permission, action, ("task", resource), audit_allowed).map_err(Into::into)
    }

    /// Without a policy in force, nobody is.
    fn is_admin(&self, who: &Subject) -> bool {
        self.security.policy().is_ok_and(|p| p.roles.allows(&who.roles, Permission::AdminAll))
    }

    /// The task if `who` may see it; another session's task is "not found".
    fn visible(&self, who: &Subject, id: &str) -> Result<TaskState, RuntimeError> {
        let task = self.engine.get(id)?;
        if Principal::of_task(&task).key == Security::principal(who).key || self.is_admin(who) {
            Ok(task)
        } else {
            Err(RuntimeError::new(ErrorCode::NotFound, format!("no task {id}")))
        }
    }

    /// Submits a task for `who` (`task:submit`, plus `skill:execute` or
    /// `agent:invoke`). Durable when it returns.
    pub async fn submit(&self, who: &Subject, req: TaskSubmitRequest) -> Result<TaskState, RuntimeError> {
        let target = req.target().map_err(|m| RuntimeError::new(ErrorCode::InvalidRequest, m))?;
        let check = self.security.check_queued(who, Permission::TaskSubmit, "task.submit", ("task", target.id()));
        if let Err(denied) = check.answer {
            check.durable.await?;
            return Err(denied.into());
        }
        let run = match target {
            TaskTarget::Skill(_) => Permission::SkillExecute,
            TaskTarget::Agent(_) => Permission::AgentInvoke,
        };
        if let Err(denied) = self.require(who, run, "task.submit", target.id(), false) {
            check.durable.await?;
            return Err(denied);
        }
        if let Some(workspace) = &req.workspace
            && let Err(refused) = self.engine.executor().admit_workspace(who, workspace)
        {
            check.durable.await?;
            return Err(refused);
        }
        // The task keeps where it came from: the executor decides it again
        // later from the session, which does not know the caller's machine.
        let owner = Owner { principal: Security::principal(who), user: who.user.clone() };
        // The task is stored while its record is being written; neither is
        // acknowledged before both are on disk.
        let (stored, audited) = tokio::join!(self.engine.submit(req, &owner), check.durable);
        let state = stored?;
        if let Err(e) = audited {
            // Not acknowledged: it must not run either.
            let _ = self.engine.cancel(&state.id, "its submission could not be audited");
            return Err(e.into());
        }
        Ok(state)
    }

    /// Leave for `who` to send an upload now (`task:submit`, and a free
    /// slot: `rate_limited` with Retry-After when the server is receiving
    /// as many as it takes at once). Asked before a body is read.
    pub fn begin_upload(&self, who: &Subject) -> Result<UploadSlot, RuntimeError> {
        self.require(who, Permission::TaskSubmit, "workspace.upload", "-", false)?;
        let policy = self.security.policy().map_err(|e| RuntimeError::new(ErrorCode::Internal, e.to_string()))?;
        let slot = self.uploads.clone().try_acquire_owned().map_err(|_| {
            let mut e = RuntimeError::new(
                ErrorCode::RateLimited,
                format!("the server is receiving {MAX_CONCURRENT_UPLOADS} uploads already: send it again shortly"),
            );
            e.retry_after_secs = Some(2);
            e
        })?;
        Ok(UploadSlot { max_bytes: policy.config.uploads.max_bytes.0, _slot: slot })
    }

    /// Keeps `tar` as a workspace snapshot `who` may then name in a
    /// submission (`task:submit`; audited).
    pub async fn upload_workspace(&self, who: &Subject, tar: bytes::Bytes) -> Result<UploadInfo, RuntimeError> {
        let bytes = tar.len().to_string();
        self.security.check(who, Permission::TaskSubmit, "workspace.upload", ("upload", &bytes), true)?;
        self.engine.executor().upload_workspace(&who.user, tar).await
    }

    /// A task's state (`task:read`).
    pub fn get(&self, who: &Subject, id: &str) -> Result<TaskState, RuntimeError> {
        self.require(who, Permission::TaskRead, "task.read", id, false)?;
        self.visible(who, id)
    }

    /// Tasks (`task:read`): the caller's session's, or any session's for
    /// `admin:all`.
    pub fn list(&self, who: &Subject, mut filter: TaskFilter) -> Result<Vec<TaskState>, RuntimeError> {
        self.require(who, Permission::TaskRead, "task.list", "-", false)?;
        let own = Security::principal(who).key.to_stored();
        if !self.is_admin(who) {
            match &filter.session {
                Some(s) if s != &own => {
                    return Err(RuntimeError::new(
                        ErrorCode::Forbidden,
                        "listing another session's tasks needs admin:all",
                    ));
                }
                _ => filter.session = Some(own),
            }
        }
        Ok(self.engine.list(&filter)?)
    }

    /// A page of a task's history: events after seq `after`, at most
    /// `limit` (`task:read`).
    pub fn events(
        &self,
        who: &Subject,
        id: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<TaskUpdateEvent>, RuntimeError> {
        self.get(who, id)?;
        Ok(self.engine.events(id, after, limit)?)
    }

    /// A task's events, live until it finishes (`task:read`).
    pub fn stream(
        &self,
        who: &Subject,
        id: &str,
    ) -> Result<impl Stream<Item = TaskUpdateEvent> + Send + 'static, RuntimeError> {
        self.stream_after(who, id, 0)
    }

    /// [`TaskService::stream`] from the event after seq `after` (a client
    /// resuming, e.g. SSE's `Last-Event-ID`).
    pub fn stream_after(
        &self,
        who: &Subject,
        id: &str,
        after: u64,
    ) -> Result<impl Stream<Item = TaskUpdateEvent> + Send + 'static, RuntimeError> {
        self.get(who, id)?;
        Ok(self.engine.stream_after(id, after)?)
    }

    /// Cancels a task (`task:cancel`); false when it had already finished.
    pub fn cancel(&self, who: &Subject, id: &str) -> Result<bool, RuntimeError> {
        // Visibility first: an "allowed" record must not precede a refusal.
        self.visible(who, id)?;
        self.require(who, Permission::TaskCancel, "task.cancel", id, true)?;
        Ok(self.engine.cancel(id, &format!("by {}", who.user))?)
    }

    /// Gives up on a task a transport submitted for `who` in the call it is
    /// serving, saying why (the client went away, cancelled the call, or
    /// cannot answer the task's question). Needs no `task:cancel`: the call
    /// that submitted it ends, and a task nobody waits for must not hold a
    /// slot until its timeout. Only `who`'s own task; audited.
    ///
    /// The reason may come from a client: it is kept printable (see
    /// [`coderclaw_core::task::printable`]), at most 512 characters.
    ///
    /// Returns whether it was given up (false: it had already finished) and
    /// its state, which the session may see without `task:read`: it is the
    /// answer to its own request.
    pub fn abandon(&self, who: &Subject, id: &str, reason: &str) -> Result<(bool, TaskState), RuntimeError> {
        let reason = coderclaw_core::task::printable(reason, MAX_ABANDON_REASON)
            .unwrap_or_else(|| "abandoned by its session".to_owned());
        let reason = reason.as_str();
        let task = self.engine.get(id)?;
        if Principal::of_task(&task).key != Security::principal(who).key {
            return Err(RuntimeError::new(ErrorCode::NotFound, format!("no task {id}")));
        }
        let abandoned = self.engine.cancel(id, reason)?;
        if abandoned {
            self.security.audit_done(who, "task.abandon", ("task", id), reason)?;
        }
        Ok((abandoned, self.engine.get(id)?))
    }

    /// Answers a WAITING task (`task:submit`). The answer itself is not
    /// recorded anywhere (it may be a secret); its length is.
    pub fn respond(&self, who: &Subject, id: &str, answer: String) -> Result<TaskState, RuntimeError> {
        self.require(who, Permission::TaskSubmit, "task.input", id, false)?;
        self.visible(who, id)?;
        let state = self.engine.respond(id, answer)?;
        self.security.audit_done(who, "task.input", ("task", id), "input provided")?;
        Ok(state)
    }

    /// Pauses (true) or resumes (false) a queued task (`task:submit`).
    pub fn set_paused(&self, who: &Subject, id: &str, paused: bool) -> Result<TaskState, RuntimeError> {
        self.visible(who, id)?;
        self.require(who, Permission::TaskSubmit, if paused { "task.pause" } else { "task.resume" }, id, true)?;
        Ok(if paused { self.engine.pause(id)? } else { self.engine.resume(id)? })
    }

    /// Installed skills and agents (`task:read`).
    pub fn installed(&self, who: &Subject) -> Result<Vec<SkillInfo>, RuntimeError> {
        self.require(who, Permission::TaskRead, "skill.list", "-", false)?;
        Ok(self.engine.skills())
    }

    /// Installed skills (`task:read`).
    pub fn skills(&self, who: &Subject) -> Result<Vec<SkillInfo>, RuntimeError> {
        self.require(who, Permission::TaskRead, "skill.list", "-", false)?;
        Ok(self.engine.skills().into_iter().filter(|s| s.kind == Kind::Skill).collect())
    }

    /// Installed agents (`task:read`).
    pub fn agents(&self, who: &Subject) -> Result<Vec<SkillInfo>, RuntimeError> {
        self.require(who, Permission::TaskRead, "agent.list", "-", false)?;
        Ok(self.engine.skills().into_iter().filter(|s| s.kind == Kind::Agent).collect())
    }

    /// What running installed skill or agent `id` as `who` would be decided
    /// now, unrecorded (`None`: this host cannot preview). For a
    /// transport's own checks; the task it then submits is decided again.
    pub fn preview(&self, who: &Subject, id: &str) -> Option<Preview> {
        self.engine.preview(who, id)
    }

    /// Every installed skill and agent with what running it as `who` would
    /// be decided now (unrecorded): what an MCP client is offered as tools.
    /// Needs `task:read`; a caller without `task:submit` sees everything
    /// refused.
    pub fn runnable(&self, who: &Subject) -> Result<Vec<(SkillInfo, Preview)>, RuntimeError> {
        self.require(who, Permission::TaskRead, "tool.list", "-", false)?;
        let may_submit = self.security.check(who, Permission::TaskSubmit, "tool.list", ("task", "-"), false).is_ok();
        Ok(self
            .engine
            .skills()
            .into_iter()
            .map(|s| {
                let decided = if may_submit {
                    self.engine.preview(who, &s.id).unwrap_or_else(|| Err("this host cannot preview decisions".into()))
                } else {
                    Err("this session may not submit tasks (no task:submit)".to_owned())
                };
                (s, decided)
            })
            .collect())
    }

    /// Health and load (any authenticated session).
    pub fn status(&self, who: &Subject) -> RuntimeStatus {
        let mut status = self.engine.status();
        // Which file is broken, and how, is for those who may read the
        // configuration; the others learn that one is.
        let may_read = self.security.policy().is_ok_and(|p| p.roles.allows(&who.roles, Permission::ConfigRead));
        if !may_read && !status.policy_warnings.is_empty() {
            let n = status.policy_warnings.len();
            status.policy_warnings =
                vec![format!("{n} policy file(s) are invalid; their last good version is in force (ask an admin)")];
        }
        status
    }
}
