//! Preparing a run of an installed skill, the one way `skill run`, tasks
//! and embedders do it: load the package (its signature verified against
//! the trust store before anything is compiled), have the security model
//! decide the run for a caller (audited), compile, and make the skills an
//! agent may invoke available, each invocation decided again.

use crate::workspaces::Place;
use coderclaw_core::Grant;
use coderclaw_core::decision::{Action, Decision, Offer, Subject, Target};
use coderclaw_core::manifest::{Kind, Manifest};
use coderclaw_core::task::{FailureCode, TaskFailure};
use coderclaw_sandbox::{Caller, Host, Skill};
use coderclaw_security::home::HomeError;
use coderclaw_security::security::{Security, SecurityError};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tracing::Instrument;

/// Who nested invocations are decided for.
#[derive(Clone)]
pub enum NestedCaller {
    /// Always this subject (a run in this process, `skill run`).
    Fixed(Subject),
    /// Whoever the calling task acts for, re-validated at each call; calls
    /// outside a task are refused.
    Task,
}

/// Where a nested skill's code came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Installed here with this digest: checked against the trust store at
    /// each call.
    Installed(coderclaw_core::Digest),
    /// Signed, loaded by the caller (`skill run --with-skill`).
    Loaded,
    /// Unsigned code the operator allowed.
    Unsigned,
}

/// A run that policy allowed, ready to start.
pub struct PreparedRun {
    /// The compiled skill.
    pub skill: Skill,
    /// The decision, with its grant and what was narrowed.
    pub decision: Decision,
}

impl PreparedRun {
    /// The grant to run with: exactly what was decided.
    pub fn grant(&self) -> &Grant {
        &self.decision.grant
    }
}

/// Prepares runs of installed skills from one state directory, by default
/// for one workspace with what the host offers; a task can run elsewhere
/// ([`Planner::prepare_task`]).
#[derive(Clone)]
pub struct Planner {
    security: Arc<Security>,
    host: Host,
    place: Place,
    /// Where each running task works, for its agent's nested calls.
    task_places: Arc<Mutex<HashMap<String, Place>>>,
}

/// While it lives, nested calls of a task are decided for its place.
pub struct TaskPlace {
    places: Arc<Mutex<HashMap<String, Place>>>,
    task_id: String,
}

impl Drop for TaskPlace {
    fn drop(&mut self) {
        self.places.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.task_id);
    }
}

impl Planner {
    /// Runs are decided by `security` for `workspace`, with what `offer`
    /// gives (directories, environment, limit ceiling), and run by `host`.
    pub fn new(security: Arc<Security>, host: Host, workspace: PathBuf, offer: Offer) -> Self {
        let place = Place { workspace, offer };
        Self { security, host, place, task_places: Arc::default() }
    }

    /// Decides nested calls of task `task_id` for `place` until the guard
    /// is dropped.
    pub fn enter_task(&self, task_id: &str, place: Place) -> TaskPlace {
        self.task_places.lock().unwrap_or_else(|p| p.into_inner()).insert(task_id.to_owned(), place);
        TaskPlace { places: self.task_places.clone(), task_id: task_id.to_owned() }
    }

    /// The security service runs are decided by.
    pub fn security(&self) -> &Arc<Security> {
        &self.security
    }

    /// The sandbox runs use.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Prepares a run of installed `id` for `subject`. `kind` is what the
    /// caller asked for, if it asked (a task names a skill or an agent).
    /// Refusals are audited; nothing is compiled before policy allows it.
    pub fn prepare(
        &self,
        subject: &Subject,
        id: &str,
        kind: Option<Kind>,
        nested: NestedCaller,
    ) -> Result<PreparedRun, TaskFailure> {
        let package = tracing::debug_span!("plan.load")
            .in_scope(|| self.security.home().load_installed(id))
            .map_err(package_failure)?;
        check_kind(id, package.manifest(), kind)?;
        let decision = tracing::debug_span!("plan.decide")
            .in_scope(|| {
                self.security.decide(
                    subject,
                    Target::from_manifest(package.manifest()),
                    Action::Run,
                    Some(&self.place.workspace),
                    &self.place.offer,
                )
            })
            .map_err(internal)?;
        if !decision.allowed {
            return Err(refused(id, &decision));
        }
        let skill = self.host.load_verified(&package).map_err(sandbox_failure)?;
        for child in &package.manifest().capabilities.skills {
            self.register_nested(child.as_str(), nested.clone())?;
        }
        Ok(PreparedRun { skill, decision })
    }

    /// What [`Planner::prepare`] would decide for `subject` now, without
    /// recording, compiling or running anything (the package is verified as
    /// for a run).
    pub fn preview(&self, subject: &Subject, id: &str) -> Result<Decision, TaskFailure> {
        let package = self.security.home().load_installed(id).map_err(package_failure)?;
        let target = Target::from_manifest(package.manifest());
        self.security
            .preview(subject, target, Action::Run, Some(&self.place.workspace), &self.place.offer)
            .map_err(internal)
    }

    /// [`Planner::prepare`] for a task working in `place`, on an async
    /// worker: the same checks
    /// in the same order, and the run starts only once the decision's record
    /// is on disk, but nothing holds a thread while waiting for it. Only what
    /// must block goes to the blocking pool: verifying a package (first use,
    /// or after a trust or install change) and loading compiled code not yet
    /// in memory (and an agent's nested skills).
    pub async fn prepare_task(
        self: &Arc<Self>,
        subject: &Subject,
        id: &str,
        kind: Option<Kind>,
        place: &Place,
    ) -> Result<PreparedRun, TaskFailure> {
        let cached = tracing::debug_span!("plan.load")
            .in_scope(|| self.security.home().cached_installed(id))
            .map_err(package_failure)?;
        let package = match cached {
            Some(p) => p,
            None => {
                let owned = id.to_owned();
                self.blocking(move |p| p.security.home().load_installed(&owned)).await?.map_err(package_failure)?
            }
        };
        check_kind(id, package.manifest(), kind)?;
        let decision = async {
            let queued = self
                .security
                .decide_queued(
                    subject,
                    Target::from_manifest(package.manifest()),
                    Action::Run,
                    Some(&place.workspace),
                    &place.offer,
                )
                .map_err(internal)?;
            queued.durable.await.map_err(internal)?;
            Ok::<_, TaskFailure>(queued.answer)
        }
        .instrument(tracing::debug_span!("plan.decide"))
        .await?;
        if !decision.allowed {
            return Err(refused(id, &decision));
        }
        let agent = !package.manifest().capabilities.skills.is_empty();
        let in_memory = if agent { None } else { tracing::debug_span!("load").in_scope(|| self.host.loaded(&package)) };
        let skill = match in_memory {
            Some(skill) => skill,
            None => {
                self.blocking(move |p| {
                    let skill = p.host.load_verified(&package).map_err(sandbox_failure)?;
                    for child in &package.manifest().capabilities.skills {
                        p.register_nested(child.as_str(), NestedCaller::Task)?;
                    }
                    Ok(skill)
                })
                .await??
            }
        };
        Ok(PreparedRun { skill, decision })
    }

    /// Runs `f` on the blocking pool.
    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Planner) -> T + Send + 'static,
    ) -> Result<T, TaskFailure> {
        let planner = self.clone();
        tokio::task::spawn_blocking(move || f(&planner))
            .await
            .map_err(|e| TaskFailure::new(FailureCode::Internal, format!("internal error while planning: {e}")))
    }

    /// Makes installed skill `id` invocable by agents through
    /// `skills.invoke`; each invocation is decided for `caller`, and checked
    /// against the trust store again (a nested skill whose key was revoked,
    /// or that was removed or reinstalled, is refused at its next call). A
    /// skill that is not installed is left out: the agent's invoke is then
    /// refused with that reason.
    pub fn register_nested(&self, id: &str, caller: NestedCaller) -> Result<(), TaskFailure> {
        let Ok(package) = self.security.home().load_installed(id) else { return Ok(()) };
        let skill = self.host.load_verified(&package).map_err(sandbox_failure)?;
        let origin = Origin::Installed(package.digest());
        self.register(id, skill, package.manifest().clone(), origin, caller);
        Ok(())
    }

    /// Makes an already compiled `skill` invocable as `id`, decided on
    /// `manifest` for `caller` at each invocation (and never wider than the
    /// calling agent's grant: the sandbox checks that). `unsigned` code is
    /// decided as such (`security.unsignedRoles`).
    pub fn register_compiled(&self, id: &str, skill: Skill, manifest: Manifest, unsigned: bool, caller: NestedCaller) {
        let origin = if unsigned { Origin::Unsigned } else { Origin::Loaded };
        self.register(id, skill, manifest, origin, caller);
    }

    fn register(&self, id: &str, skill: Skill, manifest: Manifest, origin: Origin, caller: NestedCaller) {
        let (security, default, places) = (self.security.clone(), self.place.clone(), self.task_places.clone());
        let owned = id.to_owned();
        self.host.register_authorized(id, skill, move |call: &Caller<'_>| {
            if let Origin::Installed(digest) = origin {
                let now = security.home().load_installed(&owned).map_err(|e| e.to_string())?;
                if now.digest() != digest {
                    let version = &now.manifest().version;
                    return Err(format!("{owned} was reinstalled ({version}) since this agent started: run it again"));
                }
            }
            let subject = match &caller {
                NestedCaller::Fixed(subject) => subject.clone(),
                NestedCaller::Task => {
                    let principal = call.principal.ok_or("nested skills run only inside tasks")?;
                    security.revalidate(principal).map_err(|e| e.to_string())?
                }
            };
            let action = Action::Nested { parent: call.agent.to_owned() };
            let target =
                if origin == Origin::Unsigned { Target::unsigned(&manifest) } else { Target::from_manifest(&manifest) };
            let task_place =
                call.task_id.and_then(|id| places.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned());
            let place = task_place.as_ref().unwrap_or(&default);
            match security.decide(&subject, target, action, Some(&place.workspace), &place.offer) {
                Ok(d) if d.allowed => Ok(d.grant),
                Ok(d) => Err(d.reasons_text()),
                Err(e) => Err(e.to_string()),
            }
        });
    }

    /// The subject a task acts for now, or why it cannot act.
    pub fn revalidate(&self, principal: &coderclaw_core::principal::Principal) -> Result<Subject, TaskFailure> {
        self.security.revalidate(principal).map_err(|e| {
            let code = match e {
                SecurityError::Denied(_)
                | SecurityError::Unauthenticated(_)
                | SecurityError::Identity(coderclaw_security::identity::IdentityError::UnknownSession) => {
                    FailureCode::Unauthenticated
                }
                _ => FailureCode::Internal,
            };
            TaskFailure::new(code, e.to_string())
        })
    }
}

/// Why an installed package cannot be loaded, as a task failure.
fn package_failure(e: HomeError) -> TaskFailure {
    let code = match &e {
        HomeError::NotInstalled(_) => FailureCode::NotInstalled,
        // Refused by the trust store: not a host failure.
        HomeError::Package(_) | HomeError::StoredPackageMismatch { .. } => FailureCode::Denied,
        _ => FailureCode::Internal,
    };
    TaskFailure::new(code, e.to_string())
}

/// Refuses a skill submitted as an agent, or an agent as a skill.
fn check_kind(id: &str, manifest: &Manifest, kind: Option<Kind>) -> Result<(), TaskFailure> {
    if kind.is_none_or(|k| k == manifest.kind) {
        return Ok(());
    }
    let (article, kind) = if manifest.kind == Kind::Agent { ("an", "agent") } else { ("a", "skill") };
    let message = format!("{id} is {article} {kind}: submit it as {kind} (--{kind} {id})");
    Err(TaskFailure::new(FailureCode::NotInstalled, message))
}

fn refused(id: &str, decision: &Decision) -> TaskFailure {
    let message = format!("policy refuses {id}: {}", decision.reasons_text());
    TaskFailure::new(FailureCode::Denied, message).with_reasons(decision.reasons.iter().map(|r| r.code))
}

/// A decision that could not be made: refused when no policy is in force
/// (the policy load was audited), a host failure otherwise.
fn internal(e: SecurityError) -> TaskFailure {
    let code = match e {
        SecurityError::Policy(_) | SecurityError::NoPolicy(_) | SecurityError::CachedPolicy { .. } => {
            FailureCode::Denied
        }
        _ => FailureCode::Internal,
    };
    TaskFailure::new(code, e.to_string())
}

/// A sandbox error as a task failure, with its kind.
pub(crate) fn sandbox_failure(e: coderclaw_sandbox::Error) -> TaskFailure {
    TaskFailure::new(e.failure_code(), e.to_string())
}
