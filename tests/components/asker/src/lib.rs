//! Uses what only tasks have: `{"ask": PROMPT}` asks for input and returns
//! the answer; `{"count": KEY}` increments a counter in the session's
//! memory and returns it (refused without the session-memory grant);
//! `{"flood": [N, BYTES]}` logs N lines of BYTES bytes each.

use coderclaw_sdk::{SkillError, skill};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Input {
    Ask(String),
    Count(String),
    Flood(u32, u32),
}

#[skill]
fn run(input: Input) -> Result<Value, SkillError> {
    match input {
        Input::Ask(prompt) => {
            coderclaw_sdk::progress(0.5, "waiting for an answer");
            let answer = coderclaw_sdk::request_input(&prompt).map_err(SkillError::Failed)?;
            Ok(json!({ "answer": answer }))
        }
        Input::Flood(lines, bytes) => {
            let line = "x".repeat(bytes as usize);
            for _ in 0..lines {
                coderclaw_sdk::log::info(&line);
            }
            Ok(json!({ "logged": lines }))
        }
        Input::Count(key) => {
            let n: u64 = coderclaw_sdk::memory::get(&key)?.and_then(|v| v.parse().ok()).unwrap_or(0) + 1;
            coderclaw_sdk::memory::set(&key, &n.to_string())?;
            Ok(json!({ "count": n }))
        }
    }
}
