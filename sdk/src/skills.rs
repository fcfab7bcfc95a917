//! Agents: invoke other skills by id.
//!
//! Each nested invocation is authorised by the host on its own and runs
//! under a grant never wider than the calling agent's.
//!
//! ```no_run
//! use serde_json::{json, Value};
//! let report: Value = coderclaw_sdk::skills::invoke("team/security-scanner", &json!({"path": "."}))?;
//! # Ok::<(), coderclaw_sdk::SkillError>(())
//! ```

use crate::__private::bindings::coderclaw::skill::skills as wit;
use crate::SkillError;
use serde::{Serialize, de::DeserializeOwned};

/// Invoke skill `id` with `input` serialised to JSON; parse its output as `O`.
pub fn invoke<I, O>(id: &str, input: &I) -> Result<O, SkillError>
where
    I: Serialize + ?Sized,
    O: DeserializeOwned,
{
    let input = serde_json::to_string(input)
        .map_err(|e| SkillError::Failed(format!("could not serialise input for {id}: {e}")))?;
    let output = invoke_json(id, &input)?;
    serde_json::from_str(&output)
        .map_err(|e| SkillError::Failed(format!("output of {id} has an unexpected shape: {e}")))
}

/// Invoke skill `id` with raw JSON text; returns its raw JSON output.
pub fn invoke_json(id: &str, input: &str) -> Result<String, SkillError> {
    wit::invoke(id, input).map_err(SkillError::from_wit)
}
