//! Typed commands: a [`CommandSpec`] declares a command's parameters, and [`validate`] checks
//! a parameter map against it before anything is sent, reporting every problem at once.
//! [`parse_cli_params`] turns `--param K=V` strings into typed JSON values by the spec.

use kinfra_core::Secret;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// A command a provider offers on a resource type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandSpec {
    /// Stable id, e.g. `scale`.
    pub id: String,
    /// Name for people.
    pub name: String,
    /// What it does.
    #[serde(default)]
    pub description: String,
    /// Free-form group, e.g. `lifecycle`, `scale`.
    #[serde(default)]
    pub category: String,
    /// The resource type it acts on; `None` for any of the provider's types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<String>,
    /// Its parameters.
    #[serde(default)]
    pub params: Vec<ParamSpec>,
    /// True when it supports a dry-run.
    #[serde(default)]
    pub dry_run: bool,
    /// True when it needs confirmation (`--yes`), e.g. a delete.
    #[serde(default)]
    pub confirm: bool,
}

impl CommandSpec {
    /// A command with no parameters, no category, for any of the provider's resource types,
    /// without a dry-run or a confirmation; the builder methods below add those.
    pub fn new(
        id: impl Into<String>,
        name: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            description: description.into(),
            category: String::new(),
            resource_type: None,
            params: Vec::new(),
            dry_run: false,
            confirm: false,
        }
    }

    /// The same command in the group `category`.
    pub fn in_category(mut self, category: impl Into<String>) -> Self {
        self.category = category.into();
        self
    }

    /// The same command, acting only on the resource type `resource_type`.
    pub fn for_resource_type(mut self, resource_type: impl Into<String>) -> Self {
        self.resource_type = Some(resource_type.into());
        self
    }

    /// The same command with `params`.
    pub fn with_params(mut self, params: Vec<ParamSpec>) -> Self {
        self.params = params;
        self
    }

    /// The same command, supporting a dry-run.
    pub fn with_dry_run(mut self) -> Self {
        self.dry_run = true;
        self
    }

    /// The same command, needing confirmation (`--yes`).
    pub fn needs_confirmation(mut self) -> Self {
        self.confirm = true;
        self
    }
}

/// One parameter of a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamSpec {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: ParamKind,
    /// True when it must be given (and has no default).
    #[serde(default)]
    pub required: bool,
    /// The value used when it is not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// What it means.
    #[serde(default)]
    pub description: String,
}

impl ParamSpec {
    /// A parameter that must be given.
    pub fn required(
        name: impl Into<String>,
        kind: ParamKind,
        description: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            kind,
            required: true,
            default: None,
            description: description.into(),
        }
    }

    /// A parameter that may be left out (no default: see [`ParamSpec::with_default`]).
    pub fn optional(
        name: impl Into<String>,
        kind: ParamKind,
        description: impl Into<String>,
    ) -> Self {
        Self {
            required: false,
            ..Self::required(name, kind, description)
        }
    }

    /// The same parameter, optional, with `value` when it is not given.
    pub fn with_default(mut self, value: Value) -> Self {
        self.required = false;
        self.default = Some(value);
        self
    }
}

/// The kind of a parameter's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ParamKind {
    /// A string.
    String,
    /// An integer, optionally bounded (inclusive).
    Integer {
        /// Lowest value allowed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<i64>,
        /// Highest value allowed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<i64>,
    },
    /// A number, optionally bounded (inclusive).
    Number {
        /// Lowest value allowed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<f64>,
        /// Highest value allowed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<f64>,
    },
    /// `true` or `false`.
    Boolean,
    /// One of `values`.
    Enum {
        /// The values allowed.
        values: Vec<String>,
    },
    /// A duration such as `30s` or `1m30s`.
    Duration,
    /// A secret string: held as a [`Secret`], never shown.
    Secret,
}

impl ParamKind {
    /// What a value of this kind looks like, for messages.
    pub fn expected(&self) -> &'static str {
        match self {
            Self::String => "a string",
            Self::Integer { .. } => "an integer",
            Self::Number { .. } => "a number",
            Self::Boolean => "true or false",
            Self::Enum { .. } => "one of the listed values",
            Self::Duration => "a duration such as \"30s\"",
            Self::Secret => "a string (secret)",
        }
    }
}

/// A checked parameter value.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    /// A string or an enum value.
    String(String),
    /// An integer.
    Integer(i64),
    /// A number.
    Number(f64),
    /// A boolean.
    Boolean(bool),
    /// A duration.
    Duration(Duration),
    /// A secret.
    Secret(Secret),
}

impl ParamValue {
    /// The value as JSON with secrets exposed: only for sending it where it is used (a
    /// plugin, a request body), never for showing it.
    pub fn to_json_exposed(&self) -> Value {
        match self {
            Self::String(s) => Value::String(s.clone()),
            Self::Integer(i) => Value::from(*i),
            Self::Number(n) => Value::from(*n),
            Self::Boolean(b) => Value::Bool(*b),
            Self::Duration(d) => Value::String(format!("{}ms", d.as_millis())),
            Self::Secret(s) => Value::String(s.expose().to_owned()),
        }
    }
}

/// A command's parameters after [`validate`]: every declared parameter that was given or has
/// a default, typed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ValidatedParams {
    values: BTreeMap<String, ParamValue>,
    confirmed: bool,
}

impl ValidatedParams {
    /// True when the caller confirmed the command (`--yes`, `"yes": true`). A command whose
    /// need for confirmation depends on what it would do (scaling down destroys, scaling up
    /// does not) is declared without `confirm` and checks this itself.
    pub fn confirmed(&self) -> bool {
        self.confirmed
    }

    /// The same parameters, confirmed by the caller or not (see [`Self::confirmed`]).
    pub fn with_confirmation(mut self, confirmed: bool) -> Self {
        self.confirmed = confirmed;
        self
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&ParamValue> {
        self.values.get(name)
    }

    /// The string (or enum) value of `name`.
    pub fn str(&self, name: &str) -> Option<&str> {
        match self.values.get(name) {
            Some(ParamValue::String(s)) => Some(s),
            _ => None,
        }
    }

    /// The integer value of `name`.
    pub fn integer(&self, name: &str) -> Option<i64> {
        match self.values.get(name) {
            Some(ParamValue::Integer(i)) => Some(*i),
            _ => None,
        }
    }

    /// All values by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ParamValue)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The secret values, for masking.
    pub fn secrets(&self) -> Vec<&Secret> {
        self.values
            .values()
            .filter_map(|v| match v {
                ParamValue::Secret(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    /// All values as a JSON object, secrets exposed (see [`ParamValue::to_json_exposed`]).
    pub fn to_json_exposed(&self) -> Map<String, Value> {
        self.values
            .iter()
            .map(|(k, v)| (k.clone(), v.to_json_exposed()))
            .collect()
    }
}

/// One problem with one parameter. Values of secret parameters never appear.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamProblem {
    /// The command has no such parameter.
    #[error("parameter `{name}`: unknown parameter")]
    Unknown {
        /// The parameter.
        name: String,
    },
    /// A required parameter was not given.
    #[error("parameter `{name}`: missing (required)")]
    Missing {
        /// The parameter.
        name: String,
    },
    /// The value has the wrong type.
    #[error("parameter `{name}`: expected {expected}, got {got}")]
    WrongType {
        /// The parameter.
        name: String,
        /// What was expected.
        expected: &'static str,
        /// What was given (a JSON type, or the CLI text for non-secrets).
        got: String,
    },
    /// A number outside its bounds.
    #[error("parameter `{name}`: {value} is out of range ({range})")]
    OutOfRange {
        /// The parameter.
        name: String,
        /// The value given.
        value: String,
        /// The bounds, e.g. `0..=10`.
        range: String,
    },
    /// Not one of the enum's values.
    #[error("parameter `{name}`: `{value}` is not one of {}", allowed.join(", "))]
    NotAllowed {
        /// The parameter.
        name: String,
        /// The value given.
        value: String,
        /// The values allowed.
        allowed: Vec<String>,
    },
    /// A duration that does not parse.
    #[error("parameter `{name}`: {reason}")]
    BadDuration {
        /// The parameter.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A `--param` without `=`.
    #[error("`--param {text}`: expected KEY=VALUE")]
    Malformed {
        /// The text given.
        text: String,
    },
}

/// Every problem found in a command's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamErrors {
    /// The command.
    pub command: String,
    /// The problems, in parameter order.
    pub problems: Vec<ParamProblem>,
}

impl fmt::Display for ParamErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid parameters for command `{}`:", self.command)?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ParamErrors {}

fn json_type(v: &Value) -> String {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
    .to_owned()
}

fn range_text<T: fmt::Display>(min: Option<T>, max: Option<T>) -> String {
    match (min, max) {
        (Some(a), Some(b)) => format!("{a}..={b}"),
        (Some(a), None) => format!(">= {a}"),
        (None, Some(b)) => format!("<= {b}"),
        (None, None) => String::new(),
    }
}

/// Checks one value against its spec.
fn check(spec: &ParamSpec, value: &Value) -> Result<ParamValue, ParamProblem> {
    let name = spec.name.clone();
    let wrong = |value: &Value| ParamProblem::WrongType {
        name: spec.name.clone(),
        expected: spec.kind.expected(),
        got: json_type(value),
    };
    match &spec.kind {
        ParamKind::String => value
            .as_str()
            .map(|s| ParamValue::String(s.to_owned()))
            .ok_or_else(|| wrong(value)),
        ParamKind::Secret => value
            .as_str()
            .map(|s| ParamValue::Secret(Secret::new(s)))
            .ok_or_else(|| wrong(value)),
        ParamKind::Boolean => value
            .as_bool()
            .map(ParamValue::Boolean)
            .ok_or_else(|| wrong(value)),
        ParamKind::Integer { min, max } => {
            let Some(i) = value.as_i64() else {
                return Err(wrong(value));
            };
            if min.is_some_and(|m| i < m) || max.is_some_and(|m| i > m) {
                return Err(ParamProblem::OutOfRange {
                    name,
                    value: i.to_string(),
                    range: range_text(*min, *max),
                });
            }
            Ok(ParamValue::Integer(i))
        }
        ParamKind::Number { min, max } => {
            let Some(n) = value.as_f64() else {
                return Err(wrong(value));
            };
            if min.is_some_and(|m| n < m) || max.is_some_and(|m| n > m) {
                return Err(ParamProblem::OutOfRange {
                    name,
                    value: n.to_string(),
                    range: range_text(*min, *max),
                });
            }
            Ok(ParamValue::Number(n))
        }
        ParamKind::Enum { values } => {
            let Some(s) = value.as_str() else {
                return Err(wrong(value));
            };
            if values.iter().any(|v| v == s) {
                Ok(ParamValue::String(s.to_owned()))
            } else {
                Err(ParamProblem::NotAllowed {
                    name,
                    value: s.to_owned(),
                    allowed: values.clone(),
                })
            }
        }
        ParamKind::Duration => {
            let Some(s) = value.as_str() else {
                return Err(wrong(value));
            };
            kinfra_core::config::parse_duration(s)
                .map(ParamValue::Duration)
                .map_err(|reason| ParamProblem::BadDuration { name, reason })
        }
    }
}

/// Checks `params` against `spec`: every unknown parameter, missing required one, wrong type,
/// value out of range, value not in an enum and bad duration is reported, all at once.
/// Defaults fill in what was not given; secrets are held as [`Secret`]s.
pub fn validate(
    spec: &CommandSpec,
    params: &Map<String, Value>,
) -> Result<ValidatedParams, ParamErrors> {
    let mut problems = Vec::new();
    let mut values = BTreeMap::new();
    for name in params.keys() {
        if !spec.params.iter().any(|p| &p.name == name) {
            problems.push(ParamProblem::Unknown { name: name.clone() });
        }
    }
    for p in &spec.params {
        let given = params.get(&p.name).filter(|v| !v.is_null());
        match given.or(p.default.as_ref()) {
            Some(v) => match check(p, v) {
                Ok(value) => {
                    values.insert(p.name.clone(), value);
                }
                Err(problem) => problems.push(problem),
            },
            None if p.required => problems.push(ParamProblem::Missing {
                name: p.name.clone(),
            }),
            None => {}
        }
    }
    if problems.is_empty() {
        Ok(ValidatedParams {
            values,
            confirmed: false,
        })
    } else {
        Err(ParamErrors {
            command: spec.id.clone(),
            problems,
        })
    }
}

/// Splits one `--param` text at the first `=`.
pub fn split_cli_param(text: &str) -> Result<(&str, &str), ParamProblem> {
    text.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| ParamProblem::Malformed {
            text: text.to_owned(),
        })
}

/// Turns CLI `--param K=V` pairs into JSON values typed by the spec's kinds (integers,
/// numbers and booleans parsed; the rest strings). Unknown keys stay strings, so
/// [`validate`] names them; every text that does not parse as its kind is reported at once.
pub fn parse_cli_params(
    spec: &CommandSpec,
    pairs: &[(&str, &str)],
) -> Result<Map<String, Value>, ParamErrors> {
    let mut out = Map::new();
    let mut problems = Vec::new();
    for (key, text) in pairs {
        let kind = spec.params.iter().find(|p| p.name == *key).map(|p| &p.kind);
        let wrong = |expected: &'static str| ParamProblem::WrongType {
            name: (*key).to_owned(),
            expected,
            got: format!("`{text}`"),
        };
        let value = match kind {
            Some(k @ ParamKind::Integer { .. }) => text
                .trim()
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| wrong(k.expected())),
            Some(k @ ParamKind::Number { .. }) => text
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite())
                .map(Value::from)
                .ok_or_else(|| wrong(k.expected())),
            Some(k @ ParamKind::Boolean) => match text.trim() {
                "true" | "yes" | "1" => Ok(Value::Bool(true)),
                "false" | "no" | "0" => Ok(Value::Bool(false)),
                _ => Err(wrong(k.expected())),
            },
            _ => Ok(Value::String((*text).to_owned())),
        };
        match value {
            Ok(v) => {
                out.insert((*key).to_owned(), v);
            }
            Err(p) => problems.push(p),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(ParamErrors {
            command: spec.id.clone(),
            problems,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn param(name: &str, kind: ParamKind, required: bool, default: Option<Value>) -> ParamSpec {
        match (required, default) {
            (true, _) => ParamSpec::required(name, kind, ""),
            (false, None) => ParamSpec::optional(name, kind, ""),
            (false, Some(value)) => ParamSpec::optional(name, kind, "").with_default(value),
        }
    }

    fn spec() -> CommandSpec {
        CommandSpec::new("scale", "Scale", "")
            .in_category("scale")
            .with_dry_run()
            .with_params(vec![
                param(
                    "replicas",
                    ParamKind::Integer {
                        min: Some(0),
                        max: Some(10),
                    },
                    true,
                    None,
                ),
                param(
                    "cpu",
                    ParamKind::Number {
                        min: Some(0.25),
                        max: Some(4.0),
                    },
                    false,
                    None,
                ),
                param(
                    "region",
                    ParamKind::Enum {
                        values: vec!["eu".into(), "us".into()],
                    },
                    false,
                    Some(json!("eu")),
                ),
                param("wait", ParamKind::Duration, false, Some(json!("30s"))),
                param("force", ParamKind::Boolean, false, None),
                param("note", ParamKind::String, false, None),
                param("password", ParamKind::Secret, false, None),
                param("owner", ParamKind::String, true, None),
            ])
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn valid_params_are_typed_and_defaults_filled() -> Result<(), ParamErrors> {
        let p = validate(
            &spec(),
            &obj(json!({"replicas": 3, "owner": "me", "password": "hunter22", "cpu": 0.5})),
        )?;
        assert_eq!(p.integer("replicas"), Some(3));
        assert_eq!(p.str("region"), Some("eu"));
        assert_eq!(
            p.get("wait"),
            Some(&ParamValue::Duration(Duration::from_secs(30)))
        );
        assert_eq!(p.get("cpu"), Some(&ParamValue::Number(0.5)));
        assert_eq!(p.get("force"), None);
        assert_eq!(p.secrets().first().map(|s| s.expose()), Some("hunter22"));
        assert!(!format!("{p:?}").contains("hunter22"));
        assert_eq!(
            p.to_json_exposed().get("password"),
            Some(&json!("hunter22"))
        );
        Ok(())
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = validate(
            &spec(),
            &obj(json!({
                "replicas": 11,
                "cpu": "fast",
                "region": "mars",
                "wait": "5 parsecs",
                "force": "yes",
                "note": 5,
                "password": 1234,
                "colour": "red",
            })),
        );
        let Err(err) = err else {
            panic!("accepted bad params");
        };
        let names: Vec<&str> = err
            .problems
            .iter()
            .map(|p| match p {
                ParamProblem::Unknown { .. } => "unknown",
                ParamProblem::Missing { .. } => "missing",
                ParamProblem::WrongType { .. } => "type",
                ParamProblem::OutOfRange { .. } => "range",
                ParamProblem::NotAllowed { .. } => "enum",
                ParamProblem::BadDuration { .. } => "duration",
                ParamProblem::Malformed { .. } => "malformed",
            })
            .collect();
        assert_eq!(
            names,
            [
                "unknown", "range", "type", "enum", "duration", "type", "type", "type", "missing"
            ]
        );
        let text = err.to_string();
        assert_eq!(text.lines().count(), 10, "{text}");
        for needle in [
            "parameter `colour`: unknown parameter",
            "parameter `replicas`: 11 is out of range (0..=10)",
            "parameter `cpu`: expected a number, got a string",
            "parameter `region`: `mars` is not one of eu, us",
            "parameter `wait`: invalid duration `5 parsecs`",
            "parameter `force`: expected true or false, got a string",
            "parameter `password`: expected a string (secret), got an integer",
            "parameter `owner`: missing (required)",
        ] {
            assert!(text.contains(needle), "{needle} not in\n{text}");
        }
        assert!(!text.contains("1234"), "{text}");
    }

    #[test]
    fn number_bounds_and_integer_strictness() {
        let s = spec();
        let err = validate(&s, &obj(json!({"replicas": 2.5, "owner": "x", "cpu": 0.1})));
        let text = err.map(|_| String::new()).unwrap_or_else(|e| e.to_string());
        assert!(
            text.contains("`replicas`: expected an integer, got a number"),
            "{text}"
        );
        assert!(
            text.contains("`cpu`: 0.1 is out of range (0.25..=4)"),
            "{text}"
        );
    }

    #[test]
    fn cli_params_are_typed_by_the_spec() {
        let s = spec();
        let m = parse_cli_params(
            &s,
            &[
                ("replicas", "3"),
                ("force", "true"),
                ("cpu", "1.5"),
                ("note", "12"),
                ("x", "y"),
            ],
        );
        assert_eq!(
            m.map(Value::Object),
            Ok(json!({"replicas": 3, "force": true, "cpu": 1.5, "note": "12", "x": "y"}))
        );
        let err = parse_cli_params(&s, &[("replicas", "three"), ("force", "maybe")]);
        let text = err.map(|_| String::new()).unwrap_or_else(|e| e.to_string());
        assert!(
            text.contains("parameter `replicas`: expected an integer, got `three`"),
            "{text}"
        );
        assert!(
            text.contains("parameter `force`: expected true or false, got `maybe`"),
            "{text}"
        );
        assert_eq!(split_cli_param("a=b=c"), Ok(("a", "b=c")));
        assert!(split_cli_param("ab").is_err());
        assert!(split_cli_param("=b").is_err());
    }

    #[test]
    fn spec_round_trips_through_json() -> Result<(), serde_json::Error> {
        let s = spec();
        let v = serde_json::to_value(&s)?;
        assert_eq!(
            v["params"][0]["kind"],
            json!({"type": "integer", "min": 0, "max": 10})
        );
        assert_eq!(serde_json::from_value::<CommandSpec>(v)?, s);
        Ok(())
    }
}
