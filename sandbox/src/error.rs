//! The host's typed errors. Each variant says what went wrong and, where the
//! user can act on it, what to do.

use coderclaw_core::task::FailureCode;
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

/// Everything that can go wrong loading or running a skill.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An unsigned component was offered to a host that only runs signed packages.
    #[error(
        "{name} is not a signed package, and this host runs only signed packages (HostBuilder::dangerous_allow_unsigned allows unsigned code)"
    )]
    UnsignedRefused {
        /// Name of the skill or file.
        name: String,
    },
    /// An installed package is missing or failed verification (bad
    /// signature, untrusted or revoked signer).
    #[error("{name}: {message}")]
    Package {
        /// The skill id.
        name: String,
        /// Why it cannot be loaded.
        message: String,
    },
    /// The bytes are not WebAssembly at all.
    #[error("{name} is not a WebAssembly file (no \\0asm header)")]
    NotWasm {
        /// Name of the skill or file.
        name: String,
    },
    /// A core wasm module was given where a component is required.
    #[error("{name} is a core WebAssembly module, not a component: it must be built for wasm32-wasip2")]
    NotAComponent {
        /// Name of the skill or file.
        name: String,
    },
    /// The component failed validation or compilation.
    #[error("{name} could not be compiled: {message}")]
    Compile {
        /// Name of the skill or file.
        name: String,
        /// wasmtime's explanation.
        message: String,
    },
    /// The component needs imports this host does not provide, or does not
    /// export the coderclaw `run` function.
    #[error("{name} does not fit the coderclaw contract: {message}")]
    Contract {
        /// Name of the skill or file.
        name: String,
        /// What is missing or mismatched.
        message: String,
    },
    /// A directory in the grant could not be opened.
    #[error("granted directory {path} cannot be opened: {message}")]
    GrantDir {
        /// The host directory.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The grant asks for more than the host allows at most.
    #[error("the grant asks for {what} {asked} but this host allows at most {max}: lower the limit")]
    AboveHostMaximum {
        /// Which limit.
        what: &'static str,
        /// What was asked.
        asked: String,
        /// The host maximum.
        max: String,
    },
    /// The run took longer than its timeout and was stopped.
    #[error("{name} was stopped after its timeout of {timeout:?}")]
    Timeout {
        /// The skill.
        name: String,
        /// The timeout that was exceeded.
        timeout: Duration,
    },
    /// The component tried to grow its memory past the limit.
    #[error("{name} exceeded its memory limit of {limit} bytes and was stopped")]
    MemoryLimit {
        /// The skill.
        name: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// The component recursed past the configured wasm stack.
    #[error("{name} exhausted its call stack (deep or infinite recursion) and was stopped")]
    StackOverflow {
        /// The skill.
        name: String,
    },
    /// The component trapped (a panic, an `unreachable`, a bad memory access...).
    #[error("{name} crashed: {message}")]
    Trap {
        /// The skill.
        name: String,
        /// The trap and its wasm backtrace.
        message: String,
    },
    /// Too many runs at once for the instance pool.
    #[error("the host is at its limit of concurrent instances: retry later or raise HostBuilder::max_instances")]
    Busy,
    /// The skill returned an error of its own (the WIT `skill-error`).
    #[error("{name}: {error}")]
    Skill {
        /// The skill.
        name: String,
        /// What the skill said.
        error: SkillError,
    },
    /// The input does not match the skill's signed input schema (or that
    /// schema does not compile): refused before the guest ran.
    #[error("{name} refused its input before running: {reason}")]
    InputRefused {
        /// The skill id.
        name: String,
        /// Where and why, for a person.
        reason: String,
        /// Each mismatch: JSON pointer, keyword, message (empty when the
        /// schema itself is at fault).
        problems: Vec<coderclaw_core::input_schema::Mismatch>,
    },
    /// Setting up the host itself failed.
    #[error("host setup failed: {0}")]
    Setup(String),
}

/// The error a skill returns from `run`, mirroring the WIT `skill-error`.
#[derive(Debug, Clone, PartialEq, Eq, Error, serde::Serialize)]
#[serde(tag = "kind", content = "message", rename_all = "kebab-case")]
pub enum SkillError {
    /// The input did not match what the skill expects.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The host refused a capability the skill needed.
    #[error("denied: {0}")]
    Denied(String),
    /// The skill ran and failed.
    #[error("failed: {0}")]
    Failed(String),
}

impl Error {
    /// The kind of task failure this is, for clients that act on it.
    pub fn failure_code(&self) -> FailureCode {
        match self {
            Error::Timeout { .. } => FailureCode::Timeout,
            Error::MemoryLimit { .. } => FailureCode::MemoryLimit,
            Error::StackOverflow { .. } | Error::Trap { .. } => FailureCode::Trap,
            Error::Skill { error: SkillError::InvalidInput(_), .. } | Error::InputRefused { .. } => {
                FailureCode::InvalidInput
            }
            Error::Skill { error: SkillError::Denied(_), .. } => FailureCode::Denied,
            Error::Skill { error: SkillError::Failed(_), .. } => FailureCode::SkillError,
            Error::UnsignedRefused { .. } => FailureCode::Denied,
            _ => FailureCode::Internal,
        }
    }

    /// A short, stable code for scripts (`--json` output, exit codes).
    pub fn code(&self) -> &'static str {
        match self {
            Error::Read { .. } => "read",
            Error::UnsignedRefused { .. } => "unsigned-refused",
            Error::Package { .. } => "package",
            Error::NotWasm { .. } => "not-wasm",
            Error::NotAComponent { .. } => "not-a-component",
            Error::Compile { .. } => "compile",
            Error::Contract { .. } => "contract",
            Error::GrantDir { .. } => "grant-dir",
            Error::AboveHostMaximum { .. } => "above-host-maximum",
            Error::Timeout { .. } => "timeout",
            Error::MemoryLimit { .. } => "memory-limit",
            Error::StackOverflow { .. } => "stack-overflow",
            Error::Trap { .. } => "trap",
            Error::Busy => "busy",
            Error::Skill { error: SkillError::InvalidInput(_), .. } | Error::InputRefused { .. } => "invalid-input",
            Error::Skill { error: SkillError::Denied(_), .. } => "denied",
            Error::Skill { error: SkillError::Failed(_), .. } => "skill-failed",
            Error::Setup(_) => "setup",
        }
    }
}
