//! Run an allowlisted program on the host (the dangerous capability).
//!
//! The host runs it only when the program is on the run's shell grant and
//! the working directory is inside a granted directory; otherwise
//! [`ShellError::Denied`] comes back and nothing is executed. Arguments are
//! passed verbatim, without a shell.
//!
//! ```no_run
//! use coderclaw_sdk::shell::Command;
//! let out = Command::new("git").args(["status", "--short"]).cwd(".").run()?;
//! println!("{}", out.stdout_lossy());
//! # Ok::<(), coderclaw_sdk::shell::ShellError>(())
//! ```

use crate::__private::bindings::coderclaw::skill::shell as wit;
use std::fmt;
use std::time::Duration;

/// A program invocation to send to the host.
#[derive(Debug, Clone)]
pub struct Command {
    program: String,
    args: Vec<String>,
    cwd: Option<String>,
    timeout: Option<Duration>,
}

/// What the program did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Exit code; `None` when the program was ended by a signal.
    pub exit_code: Option<i32>,
    /// Captured standard output (capped by the host).
    pub stdout: Vec<u8>,
    /// Captured standard error (capped by the host).
    pub stderr: Vec<u8>,
    /// True when stdout or stderr was cut at the host's cap.
    pub truncated: bool,
}

impl Output {
    /// True when the program exited with code 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }

    /// Standard output as text, invalid UTF-8 replaced.
    pub fn stdout_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Standard error as text, invalid UTF-8 replaced.
    pub fn stderr_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Why a command did not run to completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellError {
    /// Not allowed by the grant; nothing was executed.
    Denied(String),
    /// Killed after its timeout.
    TimedOut(String),
    /// Could not be started.
    Failed(String),
}

impl fmt::Display for ShellError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Denied(m) => write!(f, "shell denied: {m}"),
            Self::TimedOut(m) => write!(f, "shell timed out: {m}"),
            Self::Failed(m) => write!(f, "shell failed: {m}"),
        }
    }
}

impl std::error::Error for ShellError {}

impl From<ShellError> for crate::SkillError {
    fn from(e: ShellError) -> Self {
        match e {
            ShellError::Denied(m) => Self::Denied(m),
            other => Self::Failed(other.to_string()),
        }
    }
}

impl Command {
    /// A command running `program` (a name on the grant's shell allowlist).
    pub fn new(program: impl Into<String>) -> Self {
        Self { program: program.into(), args: Vec::new(), cwd: None, timeout: None }
    }

    /// Append one argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Append several arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Working directory (a guest path inside a granted directory).
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Timeout; the host never allows more than the grant's shell timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Ask the host to run the command and wait for it.
    pub fn run(self) -> Result<Output, ShellError> {
        let cmd = wit::Command {
            program: self.program,
            args: self.args,
            cwd: self.cwd,
            timeout_ms: self.timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        };
        match wit::exec(&cmd) {
            Ok(o) => Ok(Output { exit_code: o.exit_code, stdout: o.stdout, stderr: o.stderr, truncated: o.truncated }),
            Err(wit::ShellError::Denied(m)) => Err(ShellError::Denied(m)),
            Err(wit::ShellError::TimedOut(m)) => Err(ShellError::TimedOut(m)),
            Err(wit::ShellError::Failed(m)) => Err(ShellError::Failed(m)),
        }
    }
}
