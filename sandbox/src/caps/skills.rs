//! `skills.invoke` for agents: the nested run is authorised on its own (the
//! agent's grant must list the skill id, the host must know the skill, and
//! a skill registered with an authoriser must be allowed by it now) and
//! runs under the skill's grant narrowed to the agent's, with at most the
//! agent's remaining time.

use crate::bindings::coderclaw::skill::skills::Host;
use crate::bindings::coderclaw::skill::types::SkillError as WitSkillError;
use crate::host::RunEnv;
use crate::state::RunState;
use crate::task_link::Caller;
use crate::{Error, SkillError};
use std::time::Instant;

/// Deepest chain of agent → skill → ... invocations.
pub(crate) const MAX_DEPTH: u32 = 4;

impl Host for RunState {
    async fn invoke(&mut self, id: String, input: String) -> Result<String, WitSkillError> {
        let ctx = self.ctx.clone();
        let deny = |reason: String| {
            ctx.capability("skills", id.clone(), false, reason.clone());
            Err(WitSkillError::Denied(reason))
        };
        if !ctx.grant.allows_skill(&id) {
            return deny(format!("skill `{id}` is not in this agent's skills grant"));
        }
        if ctx.depth + 1 > MAX_DEPTH {
            return deny(format!("invoking `{id}` would nest skills deeper than {MAX_DEPTH} levels"));
        }
        let Some((skill, authorize)) = ctx.host.registered(&id) else {
            return deny(format!("skill `{id}` is not registered on this host"));
        };
        let agent = ctx.name.to_string();
        let task = ctx.task.as_ref().map(|t| (t.task_id.clone(), t.principal.clone()));
        let registered = match tokio::task::spawn_blocking(move || {
            let (task_id, principal) = task.as_ref().map(|(t, p)| (t.as_str(), p)).unzip();
            authorize(&Caller { agent: &agent, task_id, principal })
        })
        .await
        {
            Ok(Ok(g)) => g,
            Ok(Err(reasons)) => return deny(format!("refused `{id}`: {reasons}")),
            Err(e) => return deny(format!("deciding `{id}` failed: {e}")),
        };
        let registered = match crate::caps::wasi::resolve_grant(&registered) {
            Ok(g) => g,
            Err(e) => return deny(e.to_string()),
        };
        let grant = registered.narrowed_to(&ctx.grant);
        ctx.capability("skills", id.clone(), true, format!("running with:\n{grant}"));
        let remaining = ctx.deadline.saturating_duration_since(Instant::now());
        let env = RunEnv { sink: ctx.sink.clone(), task: ctx.task.clone() };
        let run = ctx.host.clone().run_nested(skill, input, grant, env, ctx.depth + 1, remaining);
        match Box::pin(run).await {
            Ok(out) => Ok(out),
            Err(Error::Skill { error, .. }) => Err(match error {
                SkillError::InvalidInput(m) => WitSkillError::InvalidInput(m),
                SkillError::Denied(m) => WitSkillError::Denied(m),
                SkillError::Failed(m) => WitSkillError::Failed(m),
            }),
            // The agent gave the skill an input its schema refuses.
            Err(refused @ Error::InputRefused { .. }) => Err(WitSkillError::InvalidInput(refused.to_string())),
            Err(other) => Err(WitSkillError::Failed(other.to_string())),
        }
    }
}
