//! What the tools look like: names, schemas and hints, from the signed
//! manifests and the decided grants; and the read-only helper tools.

use coderclaw_core::Access;
use coderclaw_core::decision::Decision;
use coderclaw_core::task::SkillInfo;
use rmcp::model::{Tool, ToolAnnotations};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;

/// Explains the decision a tool's call would get; reads, never changes.
pub const POLICY_CHECK: &str = "coderclaw_policy_check";
/// A task's state, for the caller's own tasks; reads, never changes.
pub const TASK_STATUS: &str = "coderclaw_task_status";

/// `items` in id order, each with its tool name: the same names for the
/// same installed set, whoever asks and whatever policy allows. The helper
/// tools' names are taken first, so no skill can shadow them.
pub fn named<T>(mut items: Vec<T>, id: impl Fn(&T) -> &String) -> Vec<(String, T)> {
    items.sort_by(|a, b| id(a).cmp(id(b)));
    let mut taken = BTreeSet::from([POLICY_CHECK.to_owned(), TASK_STATUS.to_owned()]);
    items.into_iter().map(|item| (tool_name(id(&item), &mut taken), item)).collect()
}

/// The tool name for `id`: MCP names allow letters, digits, `_`, `-` and
/// `.`, so the namespace separator becomes `_`; a name already taken (two
/// ids that map alike) gets the first free `_2`, `_3`, ...
pub fn tool_name(id: &str, taken: &mut BTreeSet<String>) -> String {
    let base: String =
        id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect();
    let mut name = base.clone();
    let mut n = 2;
    while !taken.insert(name.clone()) {
        name = format!("{base}_{n}");
        n += 1;
    }
    name
}

/// The tool for `info`, described from its signed manifest, with hints
/// from the grant policy decided (never wider than the grant).
pub fn skill_tool(name: &str, info: &SkillInfo, d: &Decision) -> Tool {
    let grant = &d.grant;
    let writes = grant.dirs().iter().any(|dir| dir.access != Access::Read);
    let shell = !grant.shell().is_empty();
    let http = !grant.http().is_empty();
    let annotations = ToolAnnotations::new()
        .read_only(!writes && !shell && !http)
        .destructive(info.dangerous || writes || shell)
        .open_world(http);
    let description =
        format!("{} ({} {}, run by coderclaw as a sandboxed task)", info.description, info.id, info.version);
    let mut tool =
        Tool::new_with_raw(name.to_owned(), Some(description.into()), Arc::new(input_schema(&info.input_schema)))
            .annotate(annotations);
    if let Some(Value::Object(output)) = &info.output_schema {
        tool.output_schema = Some(Arc::new(output.clone()));
    }
    tool
}

/// The manifest's input schema as MCP takes it: tool arguments are always
/// a JSON object, so a schema for anything else (echo takes any value)
/// becomes an object schema that keeps its description.
pub fn input_schema(manifest: &Value) -> serde_json::Map<String, Value> {
    match manifest {
        Value::Object(o) if o.get("type") == Some(&json!("object")) => o.clone(),
        other => {
            let mut schema = serde_json::Map::from_iter([("type".to_owned(), json!("object"))]);
            if let Some(d) = other.get("description") {
                schema.insert("description".into(), d.clone());
            }
            schema
        }
    }
}

/// The helper tools: read-only, offered to every caller (each call is
/// still checked against the caller's permissions).
pub fn helper_tools() -> Vec<Tool> {
    let read_only = || ToolAnnotations::new().read_only(true).destructive(false).open_world(false);
    let object = |v: Value| match v {
        Value::Object(o) => Arc::new(o),
        _ => unreachable!("a literal object"),
    };
    vec![
        Tool::new_with_raw(
            POLICY_CHECK,
            Some(
                "Explains what calling a coderclaw tool would be decided for you now: allowed or not, why, and \
                 the grant (directories, programs, hosts, limits). Decides nothing and records nothing."
                    .into(),
            ),
            object(json!({
                "type": "object",
                "required": ["tool"],
                "additionalProperties": false,
                "properties": {
                    "tool": {"type": "string", "description": "A tool name (team_word-count) or a skill id (team/word-count)"}
                }
            })),
        )
        .annotate(read_only()),
        Tool::new_with_raw(
            TASK_STATUS,
            Some(
                "The state of one of your coderclaw tasks (status, progress, output or failure), by the task id \
                 a tool call's result names."
                    .into(),
            ),
            object(json!({
                "type": "object",
                "required": ["task"],
                "additionalProperties": false,
                "properties": {"task": {"type": "string", "description": "The task id"}}
            })),
        )
        .annotate(read_only()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_names_are_valid_and_never_collide() {
        let mut taken = BTreeSet::new();
        assert_eq!(tool_name("team/word-count", &mut taken), "team_word-count");
        assert_eq!(tool_name("team_word-count", &mut taken), "team_word-count_2");
        assert_eq!(tool_name("team/word count", &mut taken), "team_word_count");
        assert_eq!(tool_name("team/word-count", &mut taken), "team_word-count_3");
    }

    #[test]
    fn no_skill_shadows_a_helper_tool() {
        let ids = vec!["coderclaw/policy_check".to_owned(), "coderclaw/task_status".to_owned()];
        let names: Vec<String> = named(ids, |id| id).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["coderclaw_policy_check_2", "coderclaw_task_status_2"]);
    }

    #[test]
    fn every_input_schema_is_an_object_schema() {
        let object = json!({"type": "object", "properties": {"path": {"type": "string"}}});
        assert_eq!(Value::Object(input_schema(&object)), object);
        let any = json!({"description": "Any JSON value"});
        assert_eq!(Value::Object(input_schema(&any)), json!({"type": "object", "description": "Any JSON value"}));
        assert_eq!(Value::Object(input_schema(&json!({"type": "string"}))), json!({"type": "object"}));
    }
}
