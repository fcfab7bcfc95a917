//! An agent: reviews a workspace by invoking two skills through
//! `skills.invoke` — the security scanner and the word counter — and
//! combining their reports into one verdict.
//!
//! Input: `{"path": ".", "scanner": "team/security-scanner", "counter": "team/word-count",
//!          "max_lines_per_file": 2000}` (all optional).

use coderclaw_sdk::{SkillError, agent, log, progress, skills};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default = "default_path")]
    path: String,
    #[serde(default = "default_scanner")]
    scanner: String,
    #[serde(default = "default_counter")]
    counter: String,
    #[serde(default = "default_max_lines")]
    max_lines_per_file: u64,
}

fn default_path() -> String {
    ".".into()
}
fn default_scanner() -> String {
    "team/security-scanner".into()
}
fn default_counter() -> String {
    "team/word-count".into()
}
fn default_max_lines() -> u64 {
    2000
}

#[derive(Serialize)]
struct Review {
    verdict: &'static str,
    secrets_found: usize,
    files_reviewed: u64,
    total_lines: u64,
    findings: Vec<Value>,
    oversized_files: Vec<String>,
    notes: Vec<String>,
}

#[agent]
fn run(input: Input) -> Result<Review, SkillError> {
    log::info(&format!("reviewing {} with {} and {}", input.path, input.scanner, input.counter));
    progress(0.0, "scanning for secrets");
    let scan: Value = skills::invoke(&input.scanner, &json!({ "path": input.path }))?;
    progress(0.5, "counting lines");
    let counts: Value = skills::invoke(&input.counter, &json!({ "path": input.path }))?;
    progress(1.0, "combining reports");

    let findings = scan["findings"].as_array().cloned().unwrap_or_default();
    let oversized_files: Vec<String> = counts["per_file"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["lines"].as_u64().unwrap_or(0) > input.max_lines_per_file)
        .filter_map(|f| f["path"].as_str().map(str::to_owned))
        .collect();

    let mut notes = Vec::new();
    if !findings.is_empty() {
        notes
            .push(format!("{} possible secret(s) committed: rotate them and remove them from history", findings.len()));
    }
    if !oversized_files.is_empty() {
        notes.push(format!(
            "{} file(s) longer than {} lines: consider splitting them",
            oversized_files.len(),
            input.max_lines_per_file
        ));
    }
    Ok(Review {
        verdict: if findings.is_empty() { "pass" } else { "fail" },
        secrets_found: findings.len(),
        files_reviewed: counts["files"].as_u64().unwrap_or(0),
        total_lines: counts["total"]["lines"].as_u64().unwrap_or(0),
        findings,
        oversized_files,
        notes,
    })
}
