//! The registry of task contracts: `schemas/payloads/<task>.schema.json`, one JSON Schema
//! per task, loaded once at start. Every payload is validated against its task's schema
//! before it is published; a task with no schema is refused unless the operator allows
//! unknown tasks.

use std::collections::BTreeMap;
use std::path::Path;

use jsonschema::Validator;
use serde_json::Value;

use crate::problem::Violation;
use crate::request::pointer;

/// The file name ending that marks a payload schema.
const SUFFIX: &str = ".schema.json";

/// Every known task's compiled payload schema.
pub struct Contracts {
    schemas: BTreeMap<String, Validator>,
    allow_unknown: bool,
}

impl std::fmt::Debug for Contracts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contracts")
            .field("tasks", &self.schemas.keys().collect::<Vec<_>>())
            .field("allow_unknown", &self.allow_unknown)
            .finish()
    }
}

impl Contracts {
    /// Loads every `<task>.schema.json` in `dir`. A file that is not JSON or not a valid
    /// schema is an error naming it: a broken contract must stop the start, not let every
    /// payload through.
    pub fn load(dir: &Path, allow_unknown: bool) -> Result<Self, String> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            format!(
                "cannot read the payload schemas directory {} (--schemas-dir / WARREN_SCHEMAS_DIR): {e}",
                dir.display()
            )
        })?;
        let mut schemas = BTreeMap::new();
        for entry in entries {
            let path = entry
                .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
                .path();
            let Some(task) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(SUFFIX))
            else {
                continue;
            };
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let schema: Value = serde_json::from_str(&text)
                .map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
            let validator = jsonschema::validator_for(&schema)
                .map_err(|e| format!("{} is not a valid JSON Schema: {e}", path.display()))?;
            schemas.insert(task.to_owned(), validator);
        }
        Ok(Self {
            schemas,
            allow_unknown,
        })
    }

    /// A registry from schemas given in code (for tests and embedding).
    pub fn from_schemas(
        schemas: impl IntoIterator<Item = (String, Value)>,
        allow_unknown: bool,
    ) -> Result<Self, String> {
        let schemas = schemas
            .into_iter()
            .map(|(task, schema)| {
                jsonschema::validator_for(&schema)
                    .map(|v| (task.clone(), v))
                    .map_err(|e| format!("schema of `{task}`: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            schemas,
            allow_unknown,
        })
    }

    /// The tasks that have a schema, sorted.
    pub fn tasks(&self) -> impl Iterator<Item = &str> {
        self.schemas.keys().map(String::as_str)
    }

    /// Checks `payload` against `task`'s schema; the payload of the job at `at` in the body.
    /// Each violation carries the pointer of the offending value (under `<at>/payload`).
    pub fn check(&self, task: &str, payload: &Value, at: &str) -> Result<(), Vec<Violation>> {
        let Some(validator) = self.schemas.get(task) else {
            if self.allow_unknown {
                return Ok(());
            }
            return Err(vec![Violation::new(
                pointer(at, "task"),
                format!(
                    "unknown task `{task}`: no schemas/payloads/{task}{SUFFIX} is loaded; \
                     add its contract there (or start the service with --allow-unknown-tasks)"
                ),
            )]);
        };
        let base = pointer(at, "payload");
        let violations: Vec<Violation> = validator
            .iter_errors(payload)
            .map(|e| Violation::new(format!("{base}{}", e.instance_path), e.to_string()))
            .collect();
        if violations.is_empty() {
            Ok(())
        } else {
            Err(violations)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_repository_contracts_load_and_name_the_offending_field() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/payloads");
        let c = Contracts::load(&dir, false).unwrap();
        assert!(c.tasks().any(|t| t == "warren.sleep"));
        assert!(c.check("warren.sleep", &json!({"ms": 5}), "").is_ok());
        let v = c
            .check("warren.sleep", &json!({"ms": "5"}), "/jobs/1")
            .unwrap_err();
        assert_eq!(v[0].pointer, "/jobs/1/payload/ms");
        let v = c.check("no.such", &json!(1), "").unwrap_err();
        assert_eq!(v[0].pointer, "/task");
        assert!(v[0].detail.contains("unknown task `no.such`"));
        let open = Contracts::load(&dir, true).unwrap();
        assert!(open.check("no.such", &json!(1), "").is_ok());
    }
}
