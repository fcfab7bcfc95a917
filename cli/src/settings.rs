//! The settings a command runs with, resolved once at start-up from the
//! global arguments and the environment. The configuration files are read
//! by the libraries' own loaders when a command opens them (the policy
//! files keep their last good version; `runtime.yaml` layers through
//! `RuntimeConfig::resolve`), so a broken file cannot stop a command that
//! does not use it.

use anyhow::{Result, anyhow};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::OnceLock;

/// Environment variable naming the state directory.
pub(crate) const ENV_HOME: &str = "CODERCLAW_HOME";

/// What every command may need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    /// `$CODERCLAW_HOME`, else `$HOME/.coderclaw`; None when neither is set.
    pub state_dir: Option<PathBuf>,
    /// The session to act in (`--session` or `CODERCLAW_SESSION`).
    pub session: Option<String>,
}

impl Settings {
    /// From the global `--session` (clap has already applied its
    /// environment variable) and `env`. Empty values count as unset.
    pub(crate) fn resolve(session: Option<String>, env: &dyn Fn(&str) -> Option<OsString>) -> Settings {
        // Paths are OS strings: a state directory that is not UTF-8 is
        // still the one the user named, never silently another.
        let set = |v: Option<OsString>| v.filter(|v| !v.is_empty());
        let state_dir = set(env(ENV_HOME))
            .map(PathBuf::from)
            .or_else(|| set(env("HOME")).map(|home| PathBuf::from(home).join(".coderclaw")));
        Settings { state_dir, session: session.filter(|s| !s.is_empty()) }
    }
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Records the settings once, at start-up.
pub(crate) fn install(settings: Settings) {
    let _ = SETTINGS.set(settings);
}

/// The settings of this process.
pub(crate) fn get() -> &'static Settings {
    SETTINGS.get_or_init(|| Settings::resolve(None, &|k| std::env::var_os(k)))
}

/// The state directory, or why there is none.
pub(crate) fn state_dir() -> Result<PathBuf> {
    get().state_dir.clone().ok_or_else(|| anyhow!("cannot find a state directory: set {ENV_HOME} or HOME"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<OsString> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| OsString::from(v))
    }

    #[test]
    fn coderclaw_home_wins_over_home_and_empty_values_are_unset() {
        let s = Settings::resolve(Some(String::new()), &env(&[(ENV_HOME, "state/cc"), ("HOME", "users/alice")]));
        assert_eq!(s, Settings { state_dir: Some("state/cc".into()), session: None });
        let s = Settings::resolve(Some("ccs_x".into()), &env(&[(ENV_HOME, ""), ("HOME", "users/alice")]));
        assert_eq!(s.state_dir, Some(PathBuf::from("users/alice/.coderclaw")));
        assert_eq!(s.session.as_deref(), Some("ccs_x"));
        assert_eq!(Settings::resolve(None, &env(&[])).state_dir, None);
    }
}
