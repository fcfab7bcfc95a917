//! Edits to `config.yaml` that commands make (`registry add`, `registry
//! remove`). They work on the text, so the user's comments, order and layout
//! survive; each result is parsed and validated, and must say exactly what
//! was asked, before a caller may write it.

use crate::policy::{PolicyError, RegistryEntry, SecurityConfig};

/// Why an edit was not made.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The file is written in a form these edits do not change safely.
    #[error("{0}")]
    Unsupported(String),
    /// A registry of that name is configured already.
    #[error("a registry named `{0}` is configured already")]
    Exists(String),
    /// No registry of that name is configured.
    #[error("no registry named `{0}` is configured")]
    Missing(String),
    /// The file does not parse or validate, before or after the edit.
    #[error(transparent)]
    Invalid(#[from] PolicyError),
}

const REGISTRIES: &str = "registries";
const DEFAULT_REGISTRY: &str = "defaultRegistry";

/// `text` with registry `name` added (and made the default when `default`).
pub fn add_registry(
    text: &str,
    file: &str,
    name: &str,
    entry: &RegistryEntry,
    default: bool,
) -> Result<String, EditError> {
    let before = SecurityConfig::from_yaml(text, file)?.0;
    if before.registries.contains_key(name) {
        return Err(EditError::Exists(name.to_owned()));
    }
    let mut lines = to_lines(text);
    let start = match block(&lines, REGISTRIES)? {
        Some(start) => {
            // `registries: {}` becomes a block; a comment on the line stays.
            if top_level_value(&lines[start], REGISTRIES) == Some("{}") {
                lines[start] = format!("{REGISTRIES}:");
            }
            start
        }
        None => {
            if lines.last().is_some_and(|l| !l.trim().is_empty()) {
                lines.push(String::new());
            }
            lines.push(format!("{REGISTRIES}:"));
            lines.len() - 1
        }
    };
    let end = block_end(&lines, start);
    let indent = entry_indent(&lines[start + 1..end]).unwrap_or(2);
    let at = last_content(&lines, start, end) + 1;
    lines.splice(at..at, render(name, entry, indent));
    if default {
        set_top_level(&mut lines, DEFAULT_REGISTRY, Some(name))?;
    }
    let result = from_lines(&lines);
    let after = SecurityConfig::from_yaml(&result, file)?.0;
    let as_asked = after.registries.get(name) == Some(entry)
        && after.registries.len() == before.registries.len() + 1
        && (!default || after.default_registry.as_deref() == Some(name));
    if !as_asked {
        return Err(EditError::Unsupported(format!(
            "{file}: the edit would not read back as asked (an unusual layout?): add `{name}` under `{REGISTRIES}:` by hand"
        )));
    }
    Ok(result)
}

/// `text` without registry `name` (and without `defaultRegistry` when it
/// named it).
pub fn remove_registry(text: &str, file: &str, name: &str) -> Result<String, EditError> {
    let before = SecurityConfig::from_yaml(text, file)?.0;
    if !before.registries.contains_key(name) {
        return Err(EditError::Missing(name.to_owned()));
    }
    let mut lines = to_lines(text);
    let start = block(&lines, REGISTRIES)?.ok_or_else(|| {
        EditError::Unsupported(format!("{file}: `{REGISTRIES}:` is not a top-level block: remove `{name}` by hand"))
    })?;
    let end = block_end(&lines, start);
    let indent = entry_indent(&lines[start + 1..end]).unwrap_or(2);
    let first = (start + 1..end).find(|&i| names_key(&lines[i], indent, name)).ok_or_else(|| {
        EditError::Unsupported(format!("{file}: `{name}` is not written one key per line: remove it by hand"))
    })?;
    let last = (first + 1..end).find(|&i| !belongs_to_entry(&lines[i], indent)).unwrap_or(end);
    // Trailing blank and comment lines stay: they may introduce the next entry.
    let last = (first + 1..last).rev().find(|&i| is_content(&lines[i])).map_or(first + 1, |i| i + 1);
    lines.drain(first..last);
    // An emptied block must not read as `registries: null`.
    let end = block_end(&lines, start);
    if !(start + 1..end).any(|i| is_content(&lines[i])) {
        if (start + 1..end).all(|i| lines[i].trim().is_empty()) {
            lines.drain(start..end);
            while lines.last().is_some_and(|l| l.trim().is_empty()) {
                lines.pop();
            }
        } else {
            lines[start] = format!("{REGISTRIES}: {{}}");
        }
    }
    if before.default_registry.as_deref() == Some(name) {
        set_top_level(&mut lines, DEFAULT_REGISTRY, None)?;
    }
    let result = from_lines(&lines);
    let after = SecurityConfig::from_yaml(&result, file)?.0;
    let mut expected = before.registries.clone();
    expected.remove(name);
    if after.registries != expected {
        return Err(EditError::Unsupported(format!(
            "{file}: the edit would not read back as asked (an unusual layout?): remove `{name}` by hand"
        )));
    }
    Ok(result)
}

/// `text` with `defaultRegistry` naming `name` (which must be configured).
pub fn set_default_registry(text: &str, file: &str, name: &str) -> Result<String, EditError> {
    let before = SecurityConfig::from_yaml(text, file)?.0;
    if !before.registries.contains_key(name) {
        return Err(EditError::Missing(name.to_owned()));
    }
    let mut lines = to_lines(text);
    set_top_level(&mut lines, DEFAULT_REGISTRY, Some(name))?;
    let result = from_lines(&lines);
    let after = SecurityConfig::from_yaml(&result, file)?.0;
    if after.default_registry.as_deref() != Some(name) {
        return Err(EditError::Unsupported(format!("{file}: set `{DEFAULT_REGISTRY}: {name}` by hand")));
    }
    Ok(result)
}

fn to_lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

fn from_lines(lines: &[String]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// A line that is neither blank nor only a comment.
fn is_content(line: &str) -> bool {
    let t = line.trim_start();
    !t.is_empty() && !t.starts_with('#')
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// The value after `key:` on a top-level line, comment removed.
fn top_level_value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(key)?.strip_prefix(':')?;
    let value = rest.split(" #").next().unwrap_or_default().trim();
    Some(value)
}

/// The line of the top-level block `key:`, if the file has one. A
/// `key: {}` line becomes an empty block; any other inline value is left
/// for the user to rewrite.
fn block(lines: &[String], key: &str) -> Result<Option<usize>, EditError> {
    let Some(i) = lines.iter().position(|l| top_level_value(l, key).is_some()) else { return Ok(None) };
    match top_level_value(&lines[i], key) {
        Some("") | Some("{}") => Ok(Some(i)),
        _ => Err(EditError::Unsupported(format!(
            "`{key}:` is written inline (flow style): write it as a block, one registry per indented key"
        ))),
    }
}

/// One past the last line of the block starting at `start`: the next
/// top-level content line, or the end.
fn block_end(lines: &[String], start: usize) -> usize {
    (start + 1..lines.len()).find(|&i| is_content(&lines[i]) && indent_of(&lines[i]) == 0).unwrap_or(lines.len())
}

/// The last content line of the block (its header when it is empty).
fn last_content(lines: &[String], start: usize, end: usize) -> usize {
    (start + 1..end).rev().find(|&i| is_content(&lines[i])).unwrap_or(start)
}

/// The indentation of the block's entries (its first content line).
fn entry_indent(block: &[String]) -> Option<usize> {
    block.iter().find(|l| is_content(l)).map(|l| indent_of(l))
}

/// Whether `line` is the key line `name:` at `indent`.
fn names_key(line: &str, indent: usize, name: &str) -> bool {
    if indent_of(line) != indent {
        return false;
    }
    let t = line.trim_start();
    [name.to_owned(), format!("\"{name}\""), format!("'{name}'")]
        .iter()
        .any(|k| t.strip_prefix(k.as_str()).is_some_and(|r| r.starts_with(':')))
}

/// Whether `line` is part of the entry above it (deeper, blank or comment).
fn belongs_to_entry(line: &str, indent: usize) -> bool {
    !is_content(line) || indent_of(line) > indent
}

/// A registry entry as block YAML, `indent` spaces per level. Strings are
/// written as JSON strings, which YAML reads as double-quoted scalars.
fn render(name: &str, entry: &RegistryEntry, indent: usize) -> Vec<String> {
    let pad = |n: usize| " ".repeat(indent * n);
    let quote = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    let mut out = vec![format!("{}{name}:", pad(1)), format!("{}url: {}", pad(2), quote(&entry.url))];
    if !entry.namespace_keys.is_empty() {
        out.push(format!("{}namespace-keys:", pad(2)));
        for (ns, keys) in &entry.namespace_keys {
            let keys: Vec<String> = keys.iter().map(|k| quote(k)).collect();
            out.push(format!("{}{ns}: [{}]", pad(3), keys.join(", ")));
        }
    }
    out
}

/// Sets (or, with `None`, removes) the one-line top-level `key: value`.
fn set_top_level(lines: &mut Vec<String>, key: &str, value: Option<&str>) -> Result<(), EditError> {
    let at = lines.iter().position(|l| top_level_value(l, key).is_some());
    if let Some(i) = at
        && lines.get(i + 1).is_some_and(|l| is_content(l) && indent_of(l) > 0)
    {
        return Err(EditError::Unsupported(format!("`{key}:` spans several lines: set it by hand")));
    }
    match (at, value) {
        (Some(i), Some(v)) => lines[i] = format!("{key}: {v}"),
        (Some(i), None) => {
            lines.remove(i);
        }
        (None, Some(v)) => {
            // Before the first top-level key, so it reads as a setting of
            // the file, not part of the block above.
            let first = lines.iter().position(|l| is_content(l) && indent_of(l) == 0).unwrap_or(lines.len());
            lines.insert(first, format!("{key}: {v}"));
        }
        (None, None) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(url: &str, keys: &[(&str, &str)]) -> RegistryEntry {
        let mut e = RegistryEntry { url: url.to_owned(), ..Default::default() };
        for (ns, k) in keys {
            e.namespace_keys.entry((*ns).to_owned()).or_default().push((*k).to_owned());
        }
        e
    }

    const KEY: &str = "ed25519:3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c";

    #[test]
    fn adding_keeps_comments_and_the_other_entries() {
        let text = "# my settings\nsecurity:\n  requireAuth: false   # for now\n\nregistries:\n    # the old one\n    old:\n        url: http://old:7421\n\nroles: {}\n";
        let out = add_registry(text, "c", "team", &entry("http://127.0.0.1:7421", &[("team", KEY)]), true).unwrap();
        assert!(out.contains("# my settings") && out.contains("# for now") && out.contains("# the old one"), "{out}");
        let (config, _) = SecurityConfig::from_yaml(&out, "c").unwrap();
        assert_eq!(config.registries.len(), 2);
        assert_eq!(config.registries["team"].namespace_keys["team"], [KEY]);
        assert_eq!(config.default_registry.as_deref(), Some("team"));
        // The new entry takes the file's own indentation.
        assert!(out.contains("\n    team:\n        url: \"http://127.0.0.1:7421\""), "{out}");
        assert!(matches!(add_registry(&out, "c", "team", &entry("http://x", &[]), false), Err(EditError::Exists(_))));
    }

    #[test]
    fn adding_to_a_file_without_registries_or_with_an_empty_map() {
        for text in ["", "security:\n  requireAuth: false\n", "registries: {}\n"] {
            let out = add_registry(text, "c", "r", &entry("https://r.example", &[]), false).unwrap();
            let (config, _) = SecurityConfig::from_yaml(&out, "c").unwrap();
            assert_eq!(config.registries["r"].url, "https://r.example", "{text:?} -> {out}");
        }
        let inline = "registries: {a: {url: 'http://a'}}\n";
        assert!(matches!(
            add_registry(inline, "c", "r", &entry("http://r", &[]), false),
            Err(EditError::Unsupported(_))
        ));
    }

    #[test]
    fn removing_takes_the_entry_and_the_default_naming_it_and_nothing_else() {
        let text = "defaultRegistry: b\nregistries:\n  a:\n    url: http://a\n  # b is the team's\n  b:\n    url: http://b\n    namespace-keys:\n      team: [\"KEY\"]\n\n  c:\n    url: http://c\nroles: {}\n"
            .replace("KEY", KEY);
        let out = remove_registry(&text, "c", "b").unwrap();
        let (config, _) = SecurityConfig::from_yaml(&out, "c").unwrap();
        assert_eq!(config.registries.keys().collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(config.default_registry, None);
        assert!(!out.contains("http://b") && out.contains("roles: {}"), "{out}");
        assert!(matches!(remove_registry(&out, "c", "b"), Err(EditError::Missing(_))));
    }

    #[test]
    fn adding_then_removing_gives_the_file_back() {
        for text in
            ["", "security:\n  requireAuth: false\n", "# c\nroles: {}\n", "registries:\n  a:\n    url: http://a\n"]
        {
            let added = add_registry(text, "c", "r", &entry("http://r", &[("team", KEY)]), true).unwrap();
            assert_eq!(remove_registry(&added, "c", "r").unwrap(), text, "{added}");
        }
    }

    #[test]
    fn a_default_must_name_a_configured_registry() {
        let text = "registries:\n  a:\n    url: http://a\n";
        assert!(matches!(set_default_registry(text, "c", "zz"), Err(EditError::Missing(_))));
        let out = set_default_registry(text, "c", "a").unwrap();
        let out = set_default_registry(&out, "c", "a").unwrap();
        assert_eq!(out.matches("defaultRegistry").count(), 1, "{out}");
        assert!(SecurityConfig::from_yaml("defaultRegistry: nope\n", "c").is_err());
    }
}
