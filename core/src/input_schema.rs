//! A skill's signed `[input-schema]`, compiled, and what an input that
//! fails it is told: where (a JSON pointer into the input) and which
//! keyword refused it. The host checks every input against it before the
//! guest runs. Schemas resolve no reference outside themselves (no file
//! or network reads): one that tries does not compile.

use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Mismatches reported per input at most.
const MAX_MISMATCHES: usize = 8;
/// Characters of a mismatch's path and of its message kept at most: an
/// input with thousands of unexpected keys makes one very long message.
const MAX_TEXT_CHARS: usize = 200;
/// Compiled schemas a [`SchemaCache`] keeps at most (then it starts over).
const MAX_CACHED: usize = 256;

/// One way an input fails its schema.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Mismatch {
    /// JSON pointer to the offending value (`""` for the input itself).
    pub path: String,
    /// The schema keyword that refused it (`type`, `required`, `minimum`…).
    pub keyword: String,
    /// What is wrong, with the input's own values masked out (inputs may
    /// carry secrets, and this text reaches logs and task records); key
    /// names may appear. Path and message are cut at 200 characters.
    pub message: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = if self.path.is_empty() { "the input" } else { self.path.as_str() };
        write!(f, "at {at}: {} (keyword `{}`)", self.message, self.keyword)
    }
}

/// The mismatches of one input, at most [`MAX_MISMATCHES`] of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputMismatch(pub Vec<Mismatch>);

impl std::fmt::Display for InputMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, m) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{m}")?;
        }
        Ok(())
    }
}

/// A compiled input schema.
pub struct InputSchema {
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for InputSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InputSchema")
    }
}

impl InputSchema {
    /// Compiles `schema`; the error says why it is not a usable schema.
    pub fn compile(schema: &Value) -> Result<Self, String> {
        let validator = jsonschema::validator_for(schema).map_err(|e| {
            let at = e.schema_path().to_string();
            if at.is_empty() { e.to_string() } else { format!("at {at}: {e}") }
        })?;
        Ok(Self { validator })
    }

    /// `Ok` when `input` matches; else its first mismatches.
    pub fn check(&self, input: &Value) -> Result<(), InputMismatch> {
        let found: Vec<Mismatch> = self
            .validator
            .iter_errors(input)
            .take(MAX_MISMATCHES)
            .map(|e| Mismatch {
                path: bounded(&e.instance_path().to_string()),
                keyword: e.kind().keyword().to_owned(),
                message: bounded(&e.masked().to_string()),
            })
            .collect();
        if found.is_empty() { Ok(()) } else { Err(InputMismatch(found)) }
    }

    /// Checks input text: text that is not JSON fails at the input itself,
    /// and so does an object with a key twice (the check would see one of
    /// the values, and a guest's parser might take the other).
    pub fn check_text(&self, input: &str) -> Result<(), InputMismatch> {
        let at_input = |message: String| {
            InputMismatch(vec![Mismatch { path: String::new(), keyword: "json".into(), message: bounded(&message) }])
        };
        let mut de = serde_json::Deserializer::from_str(input);
        let value = serde::de::DeserializeSeed::deserialize(NoDuplicateKeys, &mut de)
            .and_then(|v| de.end().map(|()| v))
            .map_err(|e| at_input(format!("not JSON ({e})")))?;
        self.check(&value)
    }
}

/// At most [`MAX_TEXT_CHARS`] characters of `s`, marked when cut.
fn bounded(s: &str) -> String {
    match s.char_indices().nth(MAX_TEXT_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Parses a JSON document in one pass, failing on an object with a key
/// twice (`serde_json::Value` alone would keep the last one silently).
struct NoDuplicateKeys;

impl<'de> serde::de::Visitor<'de> for NoDuplicateKeys {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(NoDuplicateKeys)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(NoDuplicateKeys)?;
            if object.insert(key, value).is_some() {
                return Err(serde::de::Error::custom("an object has the same key twice"));
            }
        }
        Ok(Value::Object(object))
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for NoDuplicateKeys {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

/// Compiled schemas by their JSON text, so each schema a process meets is
/// compiled once; a schema that does not compile is remembered as such.
#[derive(Default)]
pub struct SchemaCache {
    compiled: Mutex<HashMap<String, Arc<Result<InputSchema, String>>>>,
}

impl SchemaCache {
    /// `schema` compiled, or why it does not compile.
    pub fn get(&self, schema: &Value) -> Arc<Result<InputSchema, String>> {
        self.get_keyed(schema.to_string(), schema)
    }

    /// [`SchemaCache::get`] remembered under `key`, which must determine
    /// `schema` (a signed package's digest does): a hit serialises nothing.
    pub fn get_keyed(&self, key: String, schema: &Value) -> Arc<Result<InputSchema, String>> {
        if let Some(v) = self.lock().get(&key) {
            return v.clone();
        }
        // Compiled outside the lock: a large schema does not hold up others.
        let compiled = Arc::new(InputSchema::compile(schema));
        let mut cache = self.lock();
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(key, compiled.clone());
        compiled
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Result<InputSchema, String>>>> {
        self.compiled.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> InputSchema {
        InputSchema::compile(&json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["path"],
            "properties": {"path": {"type": "string"}, "max_files": {"type": "integer", "minimum": 1}}
        }))
        .unwrap()
    }

    #[test]
    fn a_mismatch_names_the_path_and_the_keyword() {
        assert!(schema().check(&json!({"path": "."})).is_ok());
        let e = schema().check(&json!({"path": 5, "max_files": 0})).unwrap_err();
        let found: Vec<(&str, &str)> = e.0.iter().map(|m| (m.path.as_str(), m.keyword.as_str())).collect();
        assert!(found.contains(&("/path", "type")) && found.contains(&("/max_files", "minimum")), "{e}");
        let e = schema().check(&json!({"surprise": true})).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("keyword `required`") && text.contains("keyword `additionalProperties`"), "{text}");
        assert!(text.contains("at the input"), "{text}");
    }

    #[test]
    fn the_inputs_values_are_not_repeated_in_the_message() {
        let e = schema().check(&json!({"path": ".", "max_files": "hunter2-secret"})).unwrap_err();
        assert_eq!(e.0[0].path, "/max_files");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn text_that_is_not_json_fails_at_the_input() {
        let e = schema().check_text("{not json").unwrap_err();
        assert_eq!((e.0[0].path.as_str(), e.0[0].keyword.as_str()), ("", "json"));
    }

    #[test]
    fn hostile_inputs_report_a_bounded_number_of_bounded_mismatches() {
        let many: serde_json::Map<String, Value> = (0..10_000).map(|i| (format!("k{i}"), json!(i))).collect();
        let e = schema().check(&Value::Object(many)).unwrap_err();
        assert!(e.0.len() <= MAX_MISMATCHES, "{}", e.0.len());
        assert!(e.to_string().chars().count() < MAX_MISMATCHES * (2 * MAX_TEXT_CHARS + 64), "{}", e.to_string().len());
        let deep_key = "k".repeat(10_000);
        let e = schema().check(&json!({"path": ".", "max_files": {deep_key.clone(): 1}})).unwrap_err();
        assert!(
            e.0.iter().all(
                |m| m.path.chars().count() <= MAX_TEXT_CHARS + 1 && m.message.chars().count() <= MAX_TEXT_CHARS + 1
            )
        );
    }

    #[test]
    fn an_object_with_a_key_twice_is_refused_whichever_value_would_pass() {
        let e = schema().check_text(r#"{"path": 5, "path": "."}"#).unwrap_err();
        assert!(e.to_string().contains("the same key twice"), "{e}");
        let e = schema().check_text(r#"{"path": ".", "max_files": 1, "x": {"a": 1, "a": 2}}"#).unwrap_err();
        assert!(e.to_string().contains("the same key twice"), "{e}");
        assert!(schema().check_text(r#"{"path": ".", "max_files": 1}"#).is_ok());
        assert!(schema().check_text(r#"{"path": "."} trailing"#).is_err(), "one document only");
        assert!(
            schema().check_text(r#"[{"path": "."}, 1.5, null, true, -3]"#).unwrap_err().to_string().contains("type")
        );
    }

    #[test]
    fn a_schema_that_reaches_outside_itself_does_not_compile() {
        // A local file that would refuse an object, were it read.
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("strings-only.json");
        std::fs::write(&outside, r#"{"type": "string"}"#).unwrap();
        let schema = json!({"$ref": format!("file://{}", outside.display())});
        assert!(InputSchema::compile(&schema).is_err());
        assert!(InputSchema::compile(&json!({"$ref": "http://127.0.0.1:1/s.json"})).is_err());
        assert!(InputSchema::compile(&json!({"type": 5})).is_err());
    }

    #[test]
    fn the_cache_compiles_a_schema_once() {
        let cache = SchemaCache::default();
        let a = cache.get(&json!({"type": "object"}));
        let b = cache.get(&json!({"type": "object"}));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(cache.get(&json!({"type": 5})).is_err());
    }
}
