//! Spins forever without calling the host: only the epoch deadline stops it.

use coderclaw_sdk::{SkillError, skill};
use serde_json::Value;

#[skill]
fn run(_input: Value) -> Result<Value, SkillError> {
    let mut x: u64 = 0;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}
