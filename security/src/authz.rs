//! Authorisation: the pure decision function and the permission checks,
//! with the facts gathered here and every answer audited.

use crate::audit::AuditResult;
use crate::security::{Security, SecurityError};
use coderclaw_core::clock::now_ms;
use coderclaw_core::decision::{self, Action, Decision, DecisionInput, Offer, Subject, Target, check_permission};
use coderclaw_core::rbac::Permission;
use serde_json::json;
use std::path::Path;

/// An answer given, its audit record queued; see [`Security::check_queued`]
/// and [`Security::decide_queued`].
#[must_use = "await `durable` before acting on the answer"]
pub struct Queued<T> {
    /// The answer.
    pub answer: T,
    /// Resolves once the answer's record is on disk.
    pub durable: coderclaw_core::task_link::BoxFuture<Result<(), SecurityError>>,
}

/// A permission check answered (allowed, or why not), its record queued.
pub type QueuedCheck = Queued<Result<(), SecurityError>>;

impl Security {
    /// Decides a run (or a nested invocation) and records the decision.
    pub fn decide(
        &self,
        subject: &Subject,
        target: Target<'_>,
        action: Action,
        workspace: Option<&Path>,
        offer: &Offer,
    ) -> Result<Decision, SecurityError> {
        let (d, record) = self.decided(subject, target, action, workspace, offer)?;
        self.audit(record)?;
        Ok(d)
    }

    /// [`Security::decide`] for a caller that must not block a thread on
    /// the record: the decision is made and its record queued at once (in
    /// order with every other); `durable` resolves once it is on disk.
    /// Start the run only after that.
    pub fn decide_queued(
        &self,
        subject: &Subject,
        target: Target<'_>,
        action: Action,
        workspace: Option<&Path>,
        offer: &Offer,
    ) -> Result<Queued<Decision>, SecurityError> {
        let (answer, record) = self.decided(subject, target, action, workspace, offer)?;
        Ok(Queued { answer, durable: self.queue_record(record) })
    }

    /// What [`Security::decide`] would answer now, without recording it:
    /// for showing a caller what it may run (an MCP tool list), never for
    /// letting anything run.
    pub fn preview(
        &self,
        subject: &Subject,
        target: Target<'_>,
        action: Action,
        workspace: Option<&Path>,
        offer: &Offer,
    ) -> Result<Decision, SecurityError> {
        Ok(self.decided(subject, target, action, workspace, offer)?.0)
    }

    /// A decision and the record that says so.
    fn decided(
        &self,
        subject: &Subject,
        target: Target<'_>,
        action: Action,
        workspace: Option<&Path>,
        offer: &Offer,
    ) -> Result<(Decision, crate::audit::AuditEvent), SecurityError> {
        let policy = self.policy()?;
        let d = decision::decide(&DecisionInput {
            subject,
            target,
            action: action.clone(),
            workspace,
            policies: policy.policies(),
            offer,
            now_ms: now_ms(),
        });
        let (name, parent) = match (&action, target.kind) {
            (Action::Nested { parent }, _) => ("skill.invoke", Some(parent.as_str())),
            (Action::Run, coderclaw_core::manifest::Kind::Agent) => ("agent.invoke", None),
            (Action::Run, coderclaw_core::manifest::Kind::Skill) => ("skill.execute", None),
        };
        let result = if d.allowed { AuditResult::Allowed } else { AuditResult::Denied };
        let reason = if d.allowed { "allowed by policy".to_owned() } else { d.reasons_text() };
        let metadata = json!({
            "parent": parent,
            "reasons": d.reasons.iter().map(|r| r.code).collect::<Vec<_>>(),
            "grant": decision::grant_json(&d.grant),
            "narrowed": d.narrowed,
            "device_trust": subject.device_trust,
            "roles": subject.roles,
        });
        Ok((d, self.event(name, result, subject, "skill", target.id).reason(reason).metadata(metadata)))
    }

    /// Queues `record`; the future resolves once it is on disk.
    fn queue_record(
        &self,
        record: crate::audit::AuditEvent,
    ) -> coderclaw_core::task_link::BoxFuture<Result<(), SecurityError>> {
        let queued = self.home.audit().append_durable(record);
        Box::pin(async move { queued.await.map(|_| ()).map_err(SecurityError::from) })
    }

    /// Checks a permission for an action on a resource and records it.
    pub fn require(
        &self,
        subject: &Subject,
        permission: Permission,
        action: &str,
        resource: (&str, &str),
    ) -> Result<(), SecurityError> {
        self.check(subject, permission, action, resource, true)
    }

    /// Checks a permission for work in this workspace. Refusals are always
    /// recorded; grants only with `audit_allowed` (reads skip it).
    pub fn check(
        &self,
        subject: &Subject,
        permission: Permission,
        action: &str,
        resource: (&str, &str),
        audit_allowed: bool,
    ) -> Result<(), SecurityError> {
        let (answer, record) = self.checked(subject, permission, action, resource);
        if answer.is_ok() && !audit_allowed {
            return Ok(());
        }
        self.audit(record)?;
        answer
    }

    /// The answer to a permission check and the record that says so.
    fn checked(
        &self,
        subject: &Subject,
        permission: Permission,
        action: &str,
        resource: (&str, &str),
    ) -> (Result<(), SecurityError>, crate::audit::AuditEvent) {
        let policy = match self.policy() {
            Ok(p) => p,
            Err(e) => {
                let reason = format!("no policy in force: {e}");
                let record = self.event(action, AuditResult::Denied, subject, resource.0, resource.1).reason(&reason);
                return (Err(e), record);
            }
        };
        let d = check_permission(subject, permission, self.workspace.as_deref(), policy.policies(), now_ms());
        let result = if d.allowed { AuditResult::Allowed } else { AuditResult::Denied };
        let reason = if d.allowed { format!("{permission} granted") } else { d.reasons_text() };
        let record = self.event(action, result, subject, resource.0, resource.1).reason(&reason);
        (if d.allowed { Ok(()) } else { Err(SecurityError::Denied(reason)) }, record)
    }

    /// [`Security::check`] with the record always written, for a caller
    /// that must not block a thread on it: the answer is known at once and
    /// the record queued at once (in order with every other); `durable`
    /// resolves once it is on disk. Act on the answer, and tell the client,
    /// only after that.
    pub fn check_queued(
        &self,
        subject: &Subject,
        permission: Permission,
        action: &str,
        resource: (&str, &str),
    ) -> QueuedCheck {
        let (answer, record) = self.checked(subject, permission, action, resource);
        Queued { answer, durable: self.queue_record(record) }
    }

    /// Managing the state directory (trust store, installs, keys, users,
    /// devices): needs `permission` in a session, except for the
    /// session-less owner of the state directory while `requireAuth` is off
    /// — they can edit its files directly, so refusing them would protect
    /// nothing. With `requireAuth` on, everyone needs a session.
    pub fn require_owner_or(
        &self,
        subject: &Subject,
        permission: Permission,
        action: &str,
        resource: (&str, &str),
    ) -> Result<(), SecurityError> {
        if subject.session.is_none() && !self.policy()?.config.security.require_auth {
            return Ok(());
        }
        self.require(subject, permission, action, resource)
    }

    /// [`Security::require_owner_or`] with `admin:all` (users, devices, sessions).
    pub fn require_admin(&self, subject: &Subject, action: &str, resource: (&str, &str)) -> Result<(), SecurityError> {
        self.require_owner_or(subject, Permission::AdminAll, action, resource)
    }
}
