//! Runs one allowlisted program on the host through the `shell` capability.
//! This is the dangerous skill of the product text: it gets nothing unless
//! the grant names the program.
//!
//! Input: `{"program": "git", "args": ["status"], "cwd": ".", "timeout_ms": 5000}`.

use coderclaw_sdk::shell::Command;
use coderclaw_sdk::{SkillError, log, skill};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    program: String,
    #[serde(default)]
    args: Vec<String>,
    cwd: Option<String>,
    timeout_ms: Option<u64>,
}

#[derive(Serialize)]
struct Output {
    exit_code: Option<i32>,
    success: bool,
    stdout: String,
    stderr: String,
    truncated: bool,
}

#[skill]
fn run(input: Input) -> Result<Output, SkillError> {
    log::info(&format!("running {} with {} argument(s)", input.program, input.args.len()));
    let mut cmd = Command::new(&input.program).args(input.args);
    if let Some(cwd) = input.cwd {
        cmd = cmd.cwd(cwd);
    }
    if let Some(ms) = input.timeout_ms {
        cmd = cmd.timeout(Duration::from_millis(ms));
    }
    let out = cmd.run()?;
    Ok(Output {
        exit_code: out.exit_code,
        success: out.success(),
        stdout: out.stdout_lossy(),
        stderr: out.stderr_lossy(),
        truncated: out.truncated,
    })
}
