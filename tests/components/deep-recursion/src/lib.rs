//! Recurses without bound: must trap, not crash the host.
//!
//! Two ways to run out of stack in Rust on wasm:
//! - `{"frames": "small"}` (default): scalar frames live on the wasm call
//!   stack, so the engine's `max_wasm_stack` guard trips (a stack overflow);
//! - `{"frames": "big"}`: by-value arrays live on Rust's shadow stack in
//!   linear memory, which runs off the bottom of memory (an out-of-bounds trap).

use coderclaw_sdk::{SkillError, skill};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize, Default)]
#[serde(default)]
struct Input {
    frames: Option<String>,
}

#[inline(never)]
fn small(n: u64, limit: u64) -> u64 {
    if n == limit {
        return n;
    }
    // Not a tail call and not an associative accumulation, so LLVM cannot
    // turn the recursion into a loop.
    small(n + 1, limit).wrapping_mul(31).rotate_left((n % 7) as u32)
}

#[inline(never)]
#[allow(unconditional_recursion)] // the point of this component
fn big(depth: u64, pad: [u64; 16]) -> u64 {
    let next = std::hint::black_box(pad);
    std::hint::black_box(big(depth + 1, next)) + next[(depth % 16) as usize]
}

#[skill]
fn run(input: Input) -> Result<Value, SkillError> {
    let depth = match input.frames.as_deref() {
        Some("big") => big(0, [1; 16]),
        _ => small(0, std::hint::black_box(u64::MAX)),
    };
    Ok(json!({ "depth": depth }))
}
