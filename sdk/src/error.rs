use crate::__private::bindings::coderclaw::skill::types::SkillError as WitSkillError;
use std::fmt;

/// Why a skill did not produce output. Returned from a skill function and
/// from [`crate::skills::invoke`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkillError {
    /// The input did not match what the skill expects.
    InvalidInput(String),
    /// The host refused a capability the skill needed.
    Denied(String),
    /// The skill ran and failed.
    Failed(String),
}

impl SkillError {
    /// A [`SkillError::Failed`] with the given message.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::Failed(message.into())
    }

    /// A [`SkillError::InvalidInput`] with the given message.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::InvalidInput(message.into())
    }

    /// An error for a filesystem operation on `path`. Names the path and,
    /// since a skill only sees the directories its grant preopens, says so
    /// when the path does not exist or is refused.
    ///
    /// ```no_run
    /// use coderclaw_sdk::SkillError;
    /// let text = std::fs::read_to_string("notes.md").map_err(|e| SkillError::io("notes.md", e))?;
    /// # Ok::<(), SkillError>(())
    /// ```
    pub fn io(path: impl AsRef<std::path::Path>, e: std::io::Error) -> Self {
        let path = path.as_ref().display();
        match e.kind() {
            std::io::ErrorKind::PermissionDenied => {
                Self::Denied(format!("{path}: {e} (the host grant does not allow this access)"))
            }
            std::io::ErrorKind::NotFound => Self::Failed(format!(
                "{path}: not found inside the sandbox (a skill sees only the directories granted to it)"
            )),
            _ => Self::Failed(format!("{path}: {e}")),
        }
    }

    pub(crate) fn into_wit(self) -> WitSkillError {
        match self {
            Self::InvalidInput(m) => WitSkillError::InvalidInput(m),
            Self::Denied(m) => WitSkillError::Denied(m),
            Self::Failed(m) => WitSkillError::Failed(m),
        }
    }

    pub(crate) fn from_wit(e: WitSkillError) -> Self {
        match e {
            WitSkillError::InvalidInput(m) => Self::InvalidInput(m),
            WitSkillError::Denied(m) => Self::Denied(m),
            WitSkillError::Failed(m) => Self::Failed(m),
        }
    }
}

impl fmt::Display for SkillError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidInput(m) => write!(f, "invalid input: {m}"),
            Self::Denied(m) => write!(f, "denied: {m}"),
            Self::Failed(m) => write!(f, "failed: {m}"),
        }
    }
}

impl std::error::Error for SkillError {}

/// Filesystem errors: a permission error means the grant did not cover the
/// path, so it becomes [`SkillError::Denied`]; anything else is a failure.
impl From<std::io::Error> for SkillError {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::PermissionDenied => Self::Denied(e.to_string()),
            _ => Self::Failed(e.to_string()),
        }
    }
}
