//! Recurses without bound: must trap on stack exhaustion, not crash the host.

use coderclaw_sdk::{SkillError, skill};
use serde_json::{Value, json};

#[inline(never)]
#[allow(unconditional_recursion)] // the point of this component
fn descend(depth: u64, pad: [u64; 16]) -> u64 {
    let next = std::hint::black_box(pad);
    std::hint::black_box(descend(depth + 1, next)) + next[(depth % 16) as usize]
}

#[skill]
fn run(_input: Value) -> Result<Value, SkillError> {
    Ok(json!({ "depth": descend(0, [1; 16]) }))
}
