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

/// `--color`: when stderr gets colours and other terminal escapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub(crate) enum ColorChoice {
    /// When stderr is a terminal and `NO_COLOR` is unset.
    #[default]
    Auto,
    /// Always (e.g. a CI log that renders them).
    Always,
    /// Never.
    Never,
}

/// What every command may need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    /// `$CODERCLAW_HOME`, else `$HOME/.coderclaw`; None when neither is set.
    pub state_dir: Option<PathBuf>,
    /// The session to act in (`--session` or `CODERCLAW_SESSION`).
    pub session: Option<String>,
    /// Whether stderr gets terminal escapes (colours, dim progress lines).
    pub color: bool,
}

impl Settings {
    /// From the global `--session` and `--color` (clap has already applied
    /// their environment variables), whether stderr is a terminal, and
    /// `env`. Empty values count as unset.
    pub(crate) fn resolve(
        session: Option<String>,
        color: ColorChoice,
        stderr_is_terminal: bool,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Settings {
        // Paths are OS strings: a state directory that is not UTF-8 is
        // still the one the user named, never silently another.
        let set = |v: Option<OsString>| v.filter(|v| !v.is_empty());
        let state_dir = set(env(ENV_HOME))
            .map(PathBuf::from)
            .or_else(|| set(env("HOME")).map(|home| PathBuf::from(home).join(".coderclaw")));
        // https://no-color.org: set and not empty means no colour.
        let color = match color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => stderr_is_terminal && set(env("NO_COLOR")).is_none(),
        };
        Settings { state_dir, session: session.filter(|s| !s.is_empty()), color }
    }
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Records the settings once, at start-up.
pub(crate) fn install(settings: Settings) {
    let _ = SETTINGS.set(settings);
}

/// The settings of this process.
pub(crate) fn get() -> &'static Settings {
    SETTINGS.get_or_init(|| Settings::resolve(None, ColorChoice::Never, false, &|k| std::env::var_os(k)))
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

    fn resolve(session: Option<String>, env: &dyn Fn(&str) -> Option<OsString>) -> Settings {
        Settings::resolve(session, ColorChoice::Auto, true, env)
    }

    #[test]
    fn coderclaw_home_wins_over_home_and_empty_values_are_unset() {
        let s = resolve(Some(String::new()), &env(&[(ENV_HOME, "state/cc"), ("HOME", "users/alice")]));
        assert_eq!(s, Settings { state_dir: Some("state/cc".into()), session: None, color: true });
        let s = resolve(Some("ccs_x".into()), &env(&[(ENV_HOME, ""), ("HOME", "users/alice")]));
        assert_eq!(s.state_dir, Some(PathBuf::from("users/alice/.coderclaw")));
        assert_eq!(s.session.as_deref(), Some("ccs_x"));
        assert_eq!(resolve(None, &env(&[])).state_dir, None);
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color_unless_asked() {
        let none = env(&[]);
        assert!(Settings::resolve(None, ColorChoice::Auto, true, &none).color);
        assert!(!Settings::resolve(None, ColorChoice::Auto, false, &none).color, "not a terminal");
        assert!(!Settings::resolve(None, ColorChoice::Auto, true, &env(&[("NO_COLOR", "1")])).color);
        assert!(Settings::resolve(None, ColorChoice::Auto, true, &env(&[("NO_COLOR", "")])).color, "empty is unset");
        assert!(Settings::resolve(None, ColorChoice::Always, false, &env(&[("NO_COLOR", "1")])).color);
        assert!(!Settings::resolve(None, ColorChoice::Never, true, &none).color);
    }
}
