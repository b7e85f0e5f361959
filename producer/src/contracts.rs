//! The registry of task contracts: `schemas/payloads/<task>.schema.json`, one JSON Schema
//! per task, loaded once at start. Every payload is validated against its task's schema
//! before it is published; a task with no schema is refused unless the operator allows
//! unknown tasks.

use std::collections::BTreeMap;
use std::path::Path;

use jsonschema::Validator;
use serde_json::Value;
use warren_core::TaskName;
use warren_core::message::check_payload;

use crate::problem::Violation;
use crate::request::{Payload, pointer};

/// The file name ending that marks a payload schema.
const SUFFIX: &str = ".schema.json";

/// Keywords that describe a schema without constraining what it accepts: a schema made of
/// nothing else accepts every payload, so a payload sent as text need not be parsed to be
/// checked against it.
const ANNOTATIONS: &[&str] = &[
    "$schema",
    "$id",
    "$comment",
    "title",
    "description",
    "examples",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
];

/// One task's compiled payload schema.
struct Contract {
    validator: Validator,
    /// True when the schema constrains nothing (see [`ANNOTATIONS`]).
    accepts_all: bool,
}

impl Contract {
    fn compile(schema: &Value) -> Result<Self, String> {
        let validator = jsonschema::validator_for(schema).map_err(|e| e.to_string())?;
        let accepts_all = match schema {
            Value::Bool(b) => *b,
            Value::Object(keywords) => keywords.keys().all(|k| ANNOTATIONS.contains(&k.as_str())),
            _ => false,
        };
        Ok(Self {
            validator,
            accepts_all,
        })
    }
}

/// Every known task's compiled payload schema.
pub struct Contracts {
    schemas: BTreeMap<String, Contract>,
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
    /// payload through. So is a file whose name is not a task name's: no request could use
    /// its contract, and the mistake would only show as "unknown task" answers.
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
            let Some(file_name) = path.file_name() else {
                continue;
            };
            let Some(task) = file_name.to_str() else {
                if file_name.to_string_lossy().ends_with(SUFFIX) {
                    return Err(format!(
                        "{}: the file name is not UTF-8, so it names no task; a contract is \
                         <task>.schema.json",
                        path.display()
                    ));
                }
                continue;
            };
            let Some(task) = task.strip_suffix(SUFFIX) else {
                continue;
            };
            check_task_name(task).map_err(|reason| {
                format!(
                    "{}: `{task}` is not a task name ({reason}), so no request could use this \
                     contract; name the file <task>.schema.json after a valid task name",
                    path.display()
                )
            })?;
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let schema: Value = serde_json::from_str(&text)
                .map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
            let contract = Contract::compile(&schema)
                .map_err(|e| format!("{} is not a valid JSON Schema: {e}", path.display()))?;
            schemas.insert(task.to_owned(), contract);
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
                check_task_name(&task)
                    .map_err(|reason| format!("`{task}` is not a task name: {reason}"))?;
                Contract::compile(&schema)
                    .map(|c| (task.clone(), c))
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
    ///
    /// A payload given as text is parsed for the check only when the schema constrains it.
    pub fn check(&self, task: &str, payload: Payload<'_>, at: &str) -> Result<(), Vec<Violation>> {
        let Some(contract) = self.schemas.get(task) else {
            if self.allow_unknown {
                // The enqueue checks the name, with every other option of the job.
                return Ok(());
            }
            // A name that no task can have is answered with the rule it breaks, worded as
            // the enqueue's own check words it, rather than as a contract to add. The check
            // runs only on a miss: every name in the registry was checked when it was loaded,
            // so a name found there is valid, and a good job pays for no second check.
            if let Err(reason) = check_task_name(task) {
                return Err(vec![Violation::new(pointer(at, "task"), reason)]);
            }
            return Err(vec![Violation::new(
                pointer(at, "task"),
                format!(
                    "unknown task `{task}`: no schemas/payloads/{task}{SUFFIX} is loaded; \
                     add its contract there (or start the service with --allow-unknown-tasks)"
                ),
            )]);
        };
        let parsed;
        let payload = match payload {
            _ if contract.accepts_all => return Ok(()),
            Payload::Tree(value) => value,
            Payload::Text(text) => match serde_json::from_str::<Value>(text.get()) {
                Ok(value) => {
                    parsed = value;
                    &parsed
                }
                Err(e) => {
                    // Worded as the enqueue's own check of the payload words it.
                    let reason = check_payload(text.get())
                        .err()
                        .map_or_else(|| e.to_string(), |p| p.to_string());
                    return Err(vec![Violation::new(
                        pointer(at, "payload"),
                        format!("not JSON a worker can read: {reason}"),
                    )]);
                }
            },
        };
        let validator = &contract.validator;
        // The common case, a valid payload, takes the validator's short-circuiting path;
        // the errors are collected only for a payload that fails it.
        if validator.is_valid(payload) {
            return Ok(());
        }
        let base = pointer(at, "payload");
        let violations: Vec<Violation> = validator
            .iter_errors(payload)
            .map(|e| Violation::new(format!("{base}{}", e.instance_path), e.to_string()))
            .collect();
        Err(violations)
    }
}

/// Whether `task` is a valid task name; if not, the rule it breaks.
fn check_task_name(task: &str) -> Result<(), &'static str> {
    TaskName::new(task).map(drop).map_err(|e| e.reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use serde_json::value::RawValue;

    #[test]
    fn the_repository_contracts_load_and_name_the_offending_field() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/payloads");
        let c = Contracts::load(&dir, false).unwrap();
        assert!(c.tasks().any(|t| t == "warren.sleep"));
        assert!(c.check("warren.sleep", tree(&json!({"ms": 5})), "").is_ok());
        let v = c
            .check("warren.sleep", tree(&json!({"ms": "5"})), "/jobs/1")
            .unwrap_err();
        assert_eq!(v[0].pointer, "/jobs/1/payload/ms");
        let v = c.check("no.such", tree(&json!(1)), "").unwrap_err();
        assert_eq!(v[0].pointer, "/task");
        assert!(v[0].detail.contains("unknown task `no.such`"));
        let open = Contracts::load(&dir, true).unwrap();
        assert!(open.check("no.such", tree(&json!(1)), "").is_ok());
    }

    fn tree(value: &Value) -> Payload<'_> {
        Payload::Tree(value)
    }

    fn text(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    #[test]
    fn a_payload_sent_as_text_is_checked_as_its_tree_would_be() {
        let c = Contracts::from_schemas(
            [
                (
                    "any".to_owned(),
                    json!({"title": "anything", "$comment": "no rules"}),
                ),
                ("all".to_owned(), json!(true)),
                ("none".to_owned(), json!(false)),
                (
                    "ms".to_owned(),
                    json!({"type": "object", "properties": {"ms": {"type": "integer"}}}),
                ),
            ],
            false,
        )
        .unwrap();
        let [any, all, none, ms] = ["any", "all", "none", "ms"].map(|t| &c.schemas[t]);
        assert!(any.accepts_all && all.accepts_all);
        assert!(!none.accepts_all && !ms.accepts_all);

        let bad = text(r#"{"ms": "soon"}"#);
        let v = c.check("ms", Payload::Text(&bad), "/jobs/3").unwrap_err();
        assert_eq!(v[0].pointer, "/jobs/3/payload/ms");
        let good = text(r#"{"ms": 5}"#);
        assert!(c.check("ms", Payload::Text(&good), "").is_ok());
        assert!(c.check("none", Payload::Text(&good), "").is_err());
        assert!(c.check("any", Payload::Text(&bad), "").is_ok());
        // Text a worker could not read is refused where the schema has to look at it.
        let unreadable = text(r#"{"ms": 1e400}"#);
        let v = c.check("ms", Payload::Text(&unreadable), "").unwrap_err();
        assert_eq!(v[0].pointer, "/payload");
        assert!(
            v[0].detail.contains("not JSON a worker can read"),
            "{}",
            v[0].detail
        );
    }
}
