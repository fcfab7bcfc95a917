//! Who a task acts for, as a type: the session it was submitted in (or the
//! session-less local user) and whether it came from another machine. It
//! travels down the task path instead of strings with prefixes, and is
//! checked again at run time (`Security::revalidate` in the security crate).

use crate::task::TaskState;
use std::fmt;

/// The session a task belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SessionKey {
    /// The local user, without a session (only while `requireAuth` is off).
    Local(String),
    /// A session, by id (never the token).
    Session(String),
}

/// The prefix that marks a session-less local user in a stored session id.
const LOCAL_PREFIX: &str = "local:";

impl SessionKey {
    /// The form stored with a task and shown to clients as `sessionId`:
    /// the session's id, or `local:<user>`.
    pub fn to_stored(&self) -> String {
        match self {
            SessionKey::Local(user) => format!("{LOCAL_PREFIX}{user}"),
            SessionKey::Session(id) => id.clone(),
        }
    }

    /// Reads [`SessionKey::to_stored`]'s form back. Session ids are UUIDs
    /// and never start with the local prefix.
    pub fn from_stored(stored: &str) -> SessionKey {
        match stored.strip_prefix(LOCAL_PREFIX) {
            Some(user) => SessionKey::Local(user.to_owned()),
            None => SessionKey::Session(stored.to_owned()),
        }
    }

    /// The session id, if this is a session.
    pub fn session_id(&self) -> Option<&str> {
        match self {
            SessionKey::Session(id) => Some(id),
            SessionKey::Local(_) => None,
        }
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_stored())
    }
}

/// Where the caller was when it submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// On this machine.
    #[default]
    Local,
    /// On another machine, over the network: a session token proves the
    /// user, not the device, so it is decided as an untrusted device.
    Remote,
}

/// Who a task acts for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    /// The session.
    pub key: SessionKey,
    /// Where the submission came from.
    pub origin: Origin,
}

impl Principal {
    /// The principal a stored task acts for.
    pub fn of_task(task: &TaskState) -> Principal {
        let origin = if task.remote { Origin::Remote } else { Origin::Local };
        Principal { key: SessionKey::from_stored(&task.session_id), origin }
    }

    /// Whether it came from another machine.
    pub fn is_remote(&self) -> bool {
        self.origin == Origin::Remote
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_session_keys_read_back_as_what_they_were() {
        for key in [SessionKey::Local("alice".into()), SessionKey::Session("0b9ea3ee-86a1".into())] {
            assert_eq!(SessionKey::from_stored(&key.to_stored()), key);
        }
        assert_eq!(SessionKey::Local("alice".into()).session_id(), None);
        assert_eq!(SessionKey::Session("s".into()).session_id(), Some("s"));
    }
}
