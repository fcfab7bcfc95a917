//! Tool arguments checked against the skill's signed input schema before
//! any task is made: a call that does not match gets the protocol's
//! invalid-params error naming where and why, and nothing runs. Schemas
//! resolve no references outside themselves (no file or network reads).

use rmcp::model::ErrorData;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Compiled schemas kept at most (then the cache starts over).
const MAX_CACHED: usize = 256;
/// Mismatches reported per call at most.
const MAX_ERRORS: usize = 8;

/// Compiled input schemas by their JSON text; `None` for a schema that
/// does not compile (the skill's own parsing then judges its input).
#[derive(Default)]
pub(super) struct Schemas {
    compiled: Mutex<HashMap<String, Arc<Option<jsonschema::Validator>>>>,
}

impl Schemas {
    fn validator(&self, schema: &Value) -> Arc<Option<jsonschema::Validator>> {
        let key = schema.to_string();
        let mut compiled = self.compiled.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(v) = compiled.get(&key) {
            return v.clone();
        }
        let validator = match jsonschema::validator_for(schema) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(error = %e, "an input schema does not compile: its skill's arguments go unchecked");
                None
            }
        };
        if compiled.len() >= MAX_CACHED {
            compiled.clear();
        }
        let validator = Arc::new(validator);
        compiled.insert(key, validator.clone());
        validator
    }

    /// Where and why `value` does not match `schema` (the first few);
    /// empty when it does, or when the schema does not compile.
    pub(super) fn mismatches(&self, schema: &Value, value: &Value) -> Vec<String> {
        let validator = self.validator(schema);
        let Some(validator) = validator.as_ref() else {
            return Vec::new();
        };
        validator
            .iter_errors(value)
            .take(MAX_ERRORS)
            .map(|e| {
                let at = e.instance_path().to_string();
                if at.is_empty() { e.to_string() } else { format!("at {at}: {e}") }
            })
            .collect()
    }

    /// `Ok` when `arguments` match `tool`'s `schema`; else the
    /// invalid-params error listing the first mismatches.
    pub(super) fn check(&self, tool: &str, schema: &Value, arguments: &Value) -> Result<(), ErrorData> {
        let problems = self.mismatches(schema, arguments);
        if problems.is_empty() {
            return Ok(());
        }
        Err(ErrorData::invalid_params(
            format!("the arguments do not match {tool}'s input schema: {}", problems.join("; ")),
            Some(json!({ "problems": problems })),
        ))
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
    fn a_schema_that_reaches_outside_itself_is_not_followed() {
        // A local file that would refuse an object, were it read.
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("strings-only.json");
        std::fs::write(&outside, r#"{"type": "string"}"#).unwrap();
        let schema = json!({"$ref": format!("file://{}", outside.display())});
        assert!(Schemas::default().check("t", &schema, &json!({})).is_ok(), "unchecked: the file is not read");
    }
}
