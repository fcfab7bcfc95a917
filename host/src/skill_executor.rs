//! The executor that runs installed skills and agents as tasks: the task's
//! principal is checked again, then the [`Planner`] verifies, decides
//! (audited) and compiles, and the run gets exactly the decided grant. An
//! agent's nested `skills.invoke` calls are decided for the same principal.

use crate::plan::{Planner, sandbox_failure};
use crate::workspaces::{Place, Workspaces};
use coderclaw_core::decision::{Decision, Offer, Subject};
use coderclaw_core::principal::Principal;
use coderclaw_core::task::{
    CLIENT_METADATA, SkillInfo, TaskFailure, TaskState, TaskTarget, UploadInfo, WorkspaceRef, client_label,
};
use coderclaw_core::task_link::BoxFuture;
use coderclaw_sandbox::Host;
use coderclaw_security::security::Security;
use coderclaw_tasks::{ErrorCode, RuntimeError, TaskExecutor, TaskRun};
use serde_json::Value;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

/// Runs installed packages from one state directory, in the workspace it
/// was opened for or the one a task names.
pub struct SkillExecutor {
    planner: Arc<Planner>,
    workspaces: Arc<Workspaces>,
}

impl SkillExecutor {
    /// Runs tasks with `host`, decided by `security` for `workspace`, with
    /// what `offer` gives (directories, environment, limit ceiling); a task
    /// that names another workspace gets that one instead of `workspace`.
    pub fn new(security: Arc<Security>, host: Host, workspace: PathBuf, offer: Offer) -> Arc<Self> {
        let place = Place { workspace: workspace.clone(), offer: offer.clone() };
        let workspaces = Arc::new(Workspaces::new(security.clone(), place));
        Arc::new(Self { planner: Arc::new(Planner::new(security, host, workspace, offer)), workspaces })
    }
}

impl TaskExecutor for SkillExecutor {
    fn resumable(&self, target: &TaskTarget) -> bool {
        let home = self.planner.security().home();
        // Asked at every submission: the verified package answers without a read.
        if let Ok(Some(package)) = home.cached_installed(target.id()) {
            return package.manifest().resumable;
        }
        home.info(target.id()).is_ok_and(|i| i.manifest.resumable)
    }

    fn execute(&self, task: TaskState, run: TaskRun) -> BoxFuture<Result<Value, TaskFailure>> {
        let (planner, workspaces) = (self.planner.clone(), self.workspaces.clone());
        Box::pin(async move {
            let input = task.input.to_string();
            let (task_id, user) = (task.id.clone(), task.user.clone());
            let mut subject =
                tracing::debug_span!("plan.session").in_scope(|| planner.revalidate(&Principal::of_task(&task)))?;
            // The submitter's program, as it named itself, for the audit log.
            subject.client = task.metadata.get(CLIENT_METADATA).and_then(Value::as_str).and_then(client_label);
            let place = workspaces.place(&task.user, &subject.roles, task.workspace.as_ref())?;
            let _nested = planner.enter_task(&task_id, place.clone());
            let prepared = planner.prepare_task(&subject, task.target.id(), Some(task.target.kind()), &place).await?;
            run.running()?;
            let sink = crate::denial_audit::audit_denials(run.sink(), planner.security().clone(), Some(task_id), user);
            let output = planner
                .host()
                .run_for_task(&prepared.skill, &input, prepared.grant(), sink, run.link())
                .await
                .map_err(sandbox_failure)?;
            Ok(serde_json::from_str(&output).unwrap_or(Value::String(output)))
        })
    }

    fn skills(&self) -> Vec<SkillInfo> {
        let installed = self.planner.security().home().installed().unwrap_or_default();
        installed
            .into_iter()
            .map(|i| SkillInfo {
                id: i.id,
                version: i.version.to_string(),
                kind: i.manifest.kind,
                description: i.manifest.description.clone(),
                dangerous: i.manifest.dangerous || !i.manifest.capabilities.shell.is_empty(),
                resumable: i.manifest.resumable,
                input_schema: i.manifest.input_schema.clone(),
                output_schema: i.manifest.output_schema.clone(),
            })
            .collect()
    }

    fn preview(&self, subject: &Subject, id: &str) -> Option<Result<Decision, String>> {
        Some(self.planner.preview(subject, id).map_err(|e| e.message))
    }

    fn missing_required_skills(&self) -> Vec<String> {
        self.planner.security().missing_required_skills().unwrap_or_default()
    }

    fn policy_warnings(&self) -> Vec<String> {
        self.planner.security().policy_warnings()
    }

    fn admit_workspace(&self, who: &Subject, workspace: &WorkspaceRef) -> Result<(), RuntimeError> {
        self.workspaces.admit(who, workspace)
    }

    fn upload_workspace(&self, user: &str, tar: bytes::Bytes) -> BoxFuture<Result<UploadInfo, RuntimeError>> {
        let (workspaces, user) = (self.workspaces.clone(), user.to_owned());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || workspaces.upload(&user, &tar))
                .await
                .map_err(|e| RuntimeError::new(ErrorCode::Internal, format!("keeping the upload: {e}")))?
        })
    }

    fn release_workspace(&self, user: &str, workspace: &WorkspaceRef) {
        self.workspaces.release(user, workspace);
    }

    fn sweep_workspaces(&self, in_use: &HashSet<(String, WorkspaceRef)>) {
        self.workspaces.sweep(in_use);
    }
}
