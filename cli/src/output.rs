//! Output helpers: run events as one line each on stderr, JSON on stdout.

use coderclaw::{EventKind, LogLevel, RunEvent};

/// One human-readable line for an event.
pub(crate) fn event_line(e: &RunEvent) -> String {
    let who = if e.depth > 0 { format!("{}[{}]", e.skill, e.depth) } else { e.skill.to_string() };
    match &e.kind {
        EventKind::Log { level, message } => format!("{who} {}: {message}", level_name(*level)),
        EventKind::Progress { fraction, message } => format!("{who} progress {:>3.0}% {message}", fraction * 100.0),
        EventKind::Capability { capability, target, allowed, detail } => {
            let verdict = if *allowed { "allowed" } else { "DENIED" };
            let detail = detail.lines().next().unwrap_or_default();
            format!("{who} {capability} {verdict}: {target} ({detail})")
        }
    }
}

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    }
}

/// `text` fit for a terminal: no control characters (escape sequences),
/// at most `max` characters; for text a registry or a skill wrote.
pub(crate) fn shown(text: &str, max: usize) -> String {
    coderclaw_core::task::printable(text, max).unwrap_or_default()
}

/// Prints a value as pretty JSON on stdout, each Unix-milliseconds time
/// joined by its ISO 8601 form (`createdAtMs` by `createdAt`,
/// `timestamp_ms` by `timestamp`).
pub(crate) fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut value = serde_json::to_value(v)?;
    with_iso_dates(&mut value);
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}

/// Keys whose values are a skill's or a client's own data: left as they are.
const NOT_OURS: [&str; 4] = ["output", "input", "data", "metadata"];

/// Adds the ISO 8601 form beside every millisecond timestamp field (keys
/// ending `AtMs`, `_at_ms`, `timestampMs`, `timestamp_ms`) whose plain name
/// is free; the numbers stay for scripts that read them.
fn with_iso_dates(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Array(items) => items.iter_mut().for_each(with_iso_dates),
        serde_json::Value::Object(map) => {
            let mut added = Vec::new();
            for (key, value) in map.iter_mut() {
                if NOT_OURS.contains(&key.as_str()) {
                    continue;
                }
                with_iso_dates(value);
                let plain = key
                    .strip_suffix("AtMs")
                    .map(|k| format!("{k}At"))
                    .or_else(|| key.strip_suffix("_at_ms").map(|k| format!("{k}_at")))
                    .or_else(|| key.strip_suffix("Ms").filter(|k| *k == "timestamp").map(str::to_owned))
                    .or_else(|| key.strip_suffix("_ms").filter(|k| *k == "timestamp").map(str::to_owned));
                if let (Some(plain), Some(iso)) =
                    (plain, value.as_u64().and_then(coderclaw_core::units::format_iso8601))
                {
                    added.push((plain, iso));
                }
            }
            for (key, iso) in added {
                map.entry(key).or_insert(serde_json::Value::String(iso));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod iso_tests {
    use super::with_iso_dates;
    use serde_json::json;

    #[test]
    fn millisecond_times_get_their_iso_8601_form_beside_them() {
        let mut v = json!([{"createdAtMs": 1_765_106_400_123_u64, "completed_at_ms": null,
                            "events": [{"timestamp_ms": 0}], "createdAt": "kept", "durationMs": 5}]);
        with_iso_dates(&mut v);
        assert_eq!(v[0]["createdAt"], "kept", "a key already there is not replaced");
        assert_eq!(v[0]["events"][0]["timestamp"], "1970-01-01T00:00:00.000Z");
        assert!(v[0].get("completed_at").is_none(), "null stays null, nothing added");
        assert!(v[0].get("duration").is_none(), "durations are not dates");
        let mut w = json!({"startedAtMs": 1_765_106_400_123_u64, "hugeAtMs": u64::MAX,
                           "output": {"skillAtMs": 0}, "metadata": {"x_at_ms": 0}});
        with_iso_dates(&mut w);
        assert_eq!(w["startedAt"], "2025-12-07T11:20:00.123Z");
        assert!(w.get("hugeAt").is_none(), "not a time");
        assert_eq!(w["output"], json!({"skillAtMs": 0}), "a skill's output is its own");
        assert_eq!(w["metadata"], json!({"x_at_ms": 0}));
    }
}
