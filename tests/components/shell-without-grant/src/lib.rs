//! Calls `shell.exec` with whatever program the input names, whether or not
//! it was granted, and reports the host's answer verbatim.
//!
//! Input: `{"program": "touch", "args": ["/tmp/marker"], "cwd": "."}`.

use coderclaw_sdk::shell::{Command, ShellError};
use coderclaw_sdk::{SkillError, skill};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
struct Input {
    program: String,
    #[serde(default)]
    args: Vec<String>,
    cwd: Option<String>,
}

#[skill]
fn run(input: Input) -> Result<Value, SkillError> {
    let mut cmd = Command::new(input.program).args(input.args);
    if let Some(cwd) = input.cwd {
        cmd = cmd.cwd(cwd);
    }
    Ok(match cmd.run() {
        Ok(out) => json!({ "ran": true, "exit_code": out.exit_code, "stdout": out.stdout_lossy() }),
        Err(ShellError::Denied(m)) => json!({ "ran": false, "denied": m }),
        Err(ShellError::TimedOut(m)) => json!({ "ran": true, "timed_out": m }),
        Err(ShellError::Failed(m)) => json!({ "ran": false, "failed": m }),
    })
}
