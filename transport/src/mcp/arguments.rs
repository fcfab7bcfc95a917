//! Tool arguments checked against the skill's signed input schema before
//! any task is made: a call that does not match gets the protocol's
//! invalid-params error naming where and why, and nothing runs. Schemas
//! resolve no references outside themselves (no file or network reads).

use coderclaw_core::input_schema::SchemaCache;
use rmcp::model::ErrorData;
use serde_json::{Value, json};

/// Compiled input schemas, shared by every call of a server.
#[derive(Default)]
pub(super) struct Schemas {
    cache: SchemaCache,
}

impl Schemas {
    /// `Ok` when `arguments` match `tool`'s `schema`; else the
    /// invalid-params error listing the first mismatches (path, keyword,
    /// message), or saying the schema itself cannot be used.
    pub(super) fn check(&self, tool: &str, schema: &Value, arguments: &Value) -> Result<(), ErrorData> {
        match self.cache.get(schema).as_ref() {
            Ok(schema) => schema.check(arguments).map_err(|m| {
                ErrorData::invalid_params(
                    format!("the arguments do not match {tool}'s input schema: {m}"),
                    Some(json!({ "problems": m.0 })),
                )
            }),
            Err(e) => Err(ErrorData::invalid_params(
                format!("{tool}'s signed input schema is not one this host can use ({e}): nothing was run"),
                None,
            )),
        }
    }

    /// Why `output` does not match `schema`, if it does not.
    pub(super) fn output_mismatch(&self, schema: &Value, output: &Value) -> Option<String> {
        match self.cache.get(schema).as_ref() {
            Ok(schema) => schema.check(output).err().map(|m| m.to_string()),
            Err(e) => Some(format!("the output schema is not one this host can use ({e})")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_that_violate_the_schema_are_refused_saying_where() {
        let schema = json!({
            "type": "object",
            "additionalProperties": false,
            "properties": {"path": {"type": "string"}, "max_files": {"type": "integer", "minimum": 1}}
        });
        let schemas = Schemas::default();
        assert!(schemas.check("t", &schema, &json!({"path": "."})).is_ok());
        let e = schemas.check("t", &schema, &json!({"path": 5, "max_files": 0})).unwrap_err();
        assert!(e.message.contains("/path") && e.message.contains("/max_files"), "{}", e.message);
        let e = schemas.check("t", &schema, &json!({"surprise": true})).unwrap_err();
        assert!(e.message.contains("surprise"), "{}", e.message);
    }

    #[test]
    fn a_schema_that_reaches_outside_itself_refuses_the_call() {
        // A local file that would refuse an object, were it read.
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("strings-only.json");
        std::fs::write(&outside, r#"{"type": "string"}"#).unwrap();
        let schema = json!({"$ref": format!("file://{}", outside.display())});
        let e = Schemas::default().check("t", &schema, &json!({})).unwrap_err();
        assert!(e.message.contains("not one this host can use"), "{}", e.message);
    }
}
