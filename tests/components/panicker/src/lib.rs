//! Prints `noise_bytes` of stdout in 100-byte lines, then "about to panic",
//! then panics with the input's message (if any; otherwise returns). The
//! host must report the panic message, not just "unreachable", and must
//! not break a guest that prints more than the output cap.

use coderclaw_sdk::{SkillError, skill};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
struct Input {
    message: Option<String>,
    #[serde(default)]
    noise_bytes: usize,
}

#[skill]
fn run(input: Input) -> Result<Value, SkillError> {
    let line = "x".repeat(99);
    for _ in 0..input.noise_bytes / 100 {
        println!("{line}");
    }
    println!("about to panic");
    match input.message {
        Some(message) => panic!("{message}"),
        None => Ok(json!({ "printed": input.noise_bytes })),
    }
}
