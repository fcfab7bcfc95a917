//! Prints a line to stdout, then panics with the input's message: the host
//! must report the panic message, not just "unreachable".

use coderclaw_sdk::{SkillError, skill};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
struct Input {
    message: String,
}

#[skill]
fn run(input: Input) -> Result<Value, SkillError> {
    println!("about to panic");
    panic!("{}", input.message);
}
