//! The executor that runs installed skills and agents as tasks: the task's
//! principal is checked again, then the [`Planner`] verifies, decides
//! (audited) and compiles, and the run gets exactly the decided grant. An
//! agent's nested `skills.invoke` calls are decided for the same principal.

use crate::plan::{NestedCaller, Planner, sandbox_failure};
use coderclaw_core::decision::Offer;
use coderclaw_core::principal::Principal;
use coderclaw_core::task::{FailureCode, SkillInfo, TaskFailure, TaskState, TaskTarget};
use coderclaw_core::task_link::BoxFuture;
use coderclaw_sandbox::Host;
use coderclaw_security::security::Security;
use coderclaw_tasks::{TaskExecutor, TaskRun};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;

/// Runs installed packages from one state directory for one workspace.
pub struct SkillExecutor {
    planner: Arc<Planner>,
}

impl SkillExecutor {
    /// Runs tasks with `host`, decided by `security` for `workspace`, with
    /// what `offer` gives (directories, environment, limit ceiling).
    pub fn new(security: Arc<Security>, host: Host, workspace: PathBuf, offer: Offer) -> Arc<Self> {
        Arc::new(Self { planner: Arc::new(Planner::new(security, host, workspace, offer)) })
    }
}

/// Everything up to the first guest instruction; blocking (SQLite,
/// signature check, compilation).
fn prepare(planner: &Planner, task: &TaskState) -> Result<crate::plan::PreparedRun, TaskFailure> {
    let subject = tracing::debug_span!("plan.session").in_scope(|| planner.revalidate(&Principal::of_task(task)))?;
    planner.prepare(&subject, task.target.id(), Some(task.target.kind()), NestedCaller::Task)
}

impl TaskExecutor for SkillExecutor {
    fn resumable(&self, target: &TaskTarget) -> bool {
        let info = self.planner.security().home().info(target.id());
        info.is_ok_and(|i| i.manifest.resumable)
    }

    fn execute(&self, task: TaskState, run: TaskRun) -> BoxFuture<Result<Value, TaskFailure>> {
        let planner = self.planner.clone();
        Box::pin(async move {
            let input = task.input.to_string();
            let (task_id, user) = (task.id.clone(), task.user.clone());
            let prepared = {
                let planner = planner.clone();
                tokio::task::spawn_blocking(move || prepare(&planner, &task)).await.map_err(|e| {
                    TaskFailure::new(FailureCode::Internal, format!("internal error while planning: {e}"))
                })??
            };
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
            })
            .collect()
    }

    fn missing_required_skills(&self) -> Vec<String> {
        self.planner.security().missing_required_skills().unwrap_or_default()
    }
}
