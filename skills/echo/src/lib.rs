//! Returns its input unchanged, wrapped as `{"echo": <input>}`. The smallest
//! real skill: used by the benchmarks and the quickstart.

use coderclaw_sdk::{SkillError, skill};
use serde_json::{Value, json};

#[skill]
fn run(input: Value) -> Result<Value, SkillError> {
    Ok(json!({ "echo": input }))
}
