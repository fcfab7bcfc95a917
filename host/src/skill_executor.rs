//! The executor that runs installed skills and agents as tasks: the task's
//! session is checked again, the package verified against the trust store,
//! the run decided (and audited) by the security model, and only then is
//! anything compiled and run, under exactly the decided grant. An agent's
//! nested `skills.invoke` calls are decided for the same session.

use coderclaw_core::decision::{Action, Offer, Target};
use coderclaw_core::manifest::{Kind, Manifest};
use coderclaw_core::principal::Principal;
use coderclaw_core::task::{FailureCode, SkillInfo, TaskFailure, TaskState, TaskTarget};
use coderclaw_core::task_link::{BoxFuture, Caller};
use coderclaw_sandbox::Host;
use coderclaw_security::home::HomeError;
use coderclaw_security::identity::IdentityError;
use coderclaw_security::security::{Security, SecurityError};
use coderclaw_tasks::{TaskExecutor, TaskRun};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;

/// Runs installed packages from one state directory for one workspace.
pub struct SkillExecutor {
    shared: Arc<Shared>,
}

/// What every task's run needs; shared by the runs in flight.
struct Shared {
    security: Arc<Security>,
    host: Host,
    workspace: PathBuf,
    offer: Offer,
}

impl SkillExecutor {
    /// Runs tasks with `host`, decided by `security` for `workspace`, with
    /// what `offer` gives (directories, environment, limit ceiling).
    pub fn new(security: Arc<Security>, host: Host, workspace: PathBuf, offer: Offer) -> Arc<Self> {
        Arc::new(Self { shared: Arc::new(Shared { security, host, workspace, offer }) })
    }
}

impl Shared {
    fn manifest(&self, id: &str) -> Option<Manifest> {
        self.security.home().info(id).ok().map(|i| i.manifest)
    }

    /// Everything up to the first guest instruction; blocking (SQLite,
    /// signature check, compilation).
    fn prepare(&self, task: &TaskState) -> Result<(coderclaw_sandbox::Skill, coderclaw_core::Grant), TaskFailure> {
        let subject = self.security.revalidate(&Principal::of_task(task)).map_err(|e| {
            let code = match e {
                SecurityError::Denied(_) | SecurityError::Identity(IdentityError::UnknownSession) => {
                    FailureCode::Unauthenticated
                }
                _ => FailureCode::Internal,
            };
            TaskFailure::new(code, e.to_string())
        })?;
        let id = task.target.id();
        let package = self.security.home().load_installed(id).map_err(|e| {
            let code =
                if matches!(e, HomeError::NotInstalled(_)) { FailureCode::NotInstalled } else { FailureCode::Internal };
            TaskFailure::new(code, e.to_string())
        })?;
        let manifest = package.manifest();
        if manifest.kind != task.target.kind() {
            let (article, kind) = if manifest.kind == Kind::Agent { ("an", "agent") } else { ("a", "skill") };
            let message = format!("{id} is {article} {kind}: submit it as {kind} (--{kind} {id})");
            return Err(TaskFailure::new(FailureCode::NotInstalled, message));
        }
        let target = Target::from_manifest(manifest);
        let decision = self
            .security
            .decide(&subject, target, Action::Run, Some(&self.workspace), &self.offer)
            .map_err(|e| TaskFailure::new(FailureCode::Internal, e.to_string()))?;
        if !decision.allowed {
            let message = format!("policy refuses {id}: {}", decision.reasons_text());
            return Err(TaskFailure::new(FailureCode::Denied, message));
        }
        let skill = self.host.load_verified(&package).map_err(sandbox_failure)?;
        for nested in &manifest.capabilities.skills {
            self.register_nested(nested.as_str())?;
        }
        Ok((skill, decision.grant))
    }

    /// Makes installed skill `id` invocable by agents; each invocation is
    /// decided for the calling task's session.
    fn register_nested(&self, id: &str) -> Result<(), TaskFailure> {
        let Ok(package) = self.security.home().load_installed(id) else {
            // Not installed: the agent's invoke is refused with that reason.
            return Ok(());
        };
        let skill = self.host.load_verified(&package).map_err(sandbox_failure)?;
        let manifest = package.manifest().clone();
        let (security, workspace, offer) = (self.security.clone(), self.workspace.clone(), self.offer.clone());
        self.host.register_authorized(id, skill, move |caller: &Caller<'_>| {
            let principal = caller.principal.ok_or("nested skills run only inside tasks")?;
            let subject = security.revalidate(principal).map_err(|e| e.to_string())?;
            let action = Action::Nested { parent: caller.agent.to_owned() };
            match security.decide(&subject, Target::from_manifest(&manifest), action, Some(&workspace), &offer) {
                Ok(d) if d.allowed => Ok(d.grant),
                Ok(d) => Err(d.reasons_text()),
                Err(e) => Err(e.to_string()),
            }
        });
        Ok(())
    }
}

impl TaskExecutor for SkillExecutor {
    fn resumable(&self, target: &TaskTarget) -> bool {
        self.shared.manifest(target.id()).is_some_and(|m| m.resumable)
    }

    fn execute(&self, task: TaskState, run: TaskRun) -> BoxFuture<Result<Value, TaskFailure>> {
        let this = self.shared.clone();
        Box::pin(async move {
            let input = task.input.to_string();
            let prepared = {
                let this = this.clone();
                tokio::task::spawn_blocking(move || this.prepare(&task)).await.map_err(|e| {
                    TaskFailure::new(FailureCode::Internal, format!("internal error while planning: {e}"))
                })??
            };
            let (skill, grant) = prepared;
            run.running()?;
            let output = this
                .host
                .run_for_task(&skill, &input, &grant, run.sink(), run.link())
                .await
                .map_err(sandbox_failure)?;
            Ok(serde_json::from_str(&output).unwrap_or(Value::String(output)))
        })
    }

    fn skills(&self) -> Vec<SkillInfo> {
        let installed = self.shared.security.home().installed().unwrap_or_default();
        installed
            .into_iter()
            .map(|i| SkillInfo {
                id: i.id,
                version: i.version,
                kind: i.manifest.kind,
                description: i.manifest.description.clone(),
                dangerous: i.manifest.dangerous || !i.manifest.capabilities.shell.is_empty(),
                resumable: i.manifest.resumable,
                input_schema: i.manifest.input_schema.clone(),
            })
            .collect()
    }

    fn missing_required_skills(&self) -> Vec<String> {
        self.shared.security.missing_required_skills().unwrap_or_default()
    }
}

/// A sandbox error as the task's failure, with its kind.
fn sandbox_failure(e: coderclaw_sandbox::Error) -> TaskFailure {
    TaskFailure::new(e.failure_code(), e.to_string())
}
