//! Allocates and touches memory until something stops it. Reports how much
//! it got if the allocator ever says no without trapping (it should not).

use coderclaw_sdk::{SkillError, skill};
use serde_json::{Value, json};

#[skill]
fn run(_input: Value) -> Result<Value, SkillError> {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let chunk = vec![0xA5u8; 1 << 20];
        hoard.push(std::hint::black_box(chunk));
        if hoard.len() > 1 << 16 {
            return Ok(json!({ "allocated_mib": hoard.len() }));
        }
    }
}
