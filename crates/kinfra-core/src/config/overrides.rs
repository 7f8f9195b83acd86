//! `KINFRA_A__B__C=value` environment overrides, applied to the generic tree before it is
//! deserialized.
//!
//! After the `KINFRA_` prefix, segments are separated by a double underscore and lowercased,
//! so `KINFRA_SERVICES__API__PORT` sets `services.api.port`. Names without `__` after the
//! prefix (`KINFRA_LOG`, `KINFRA_DASHBOARD_TOKEN`) are not overrides. A segment matches an
//! existing key case-insensitively; keys of an `env` table keep the case they are written
//! in. A numeric segment indexes a list (`KINFRA_ROUTES__0__PATH`).
//!
//! The value is typed by the value already at that path (a string stays a string), else by
//! the schema's default there, else guessed: integer, `true`/`false`, float, JSON when it
//! starts with `[` or `{`, else string Values of `env` and `volumes` tables and of
//! secret-looking keys (`token`, `password`, ...) are always strings.

use super::ConfigError;
use super::model::{Config, ResourceConfig, RouteConfig, ServiceConfig, Template};
use super::source::{SourceMap, join_index, join_key};
use crate::secret::is_secret_name;
use serde_json::{Map, Value};

const PREFIX: &str = "KINFRA_";

/// Applies every override in `env` to `tree` (which must be a map), marking the paths it sets
/// in `map` as coming from the variable. Returns problems with the overrides themselves.
pub(crate) fn apply(
    tree: &mut Value,
    map: &mut SourceMap,
    env: &[(String, String)],
) -> Vec<ConfigError> {
    let schema = Schema::new();
    let mut errors = Vec::new();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        if !rest.contains("__") {
            continue;
        }
        if let Err((key, message)) = apply_one(tree, map, &schema, name, rest, raw) {
            errors.push(ConfigError {
                origin: name.clone(),
                line: None,
                column: None,
                key,
                message,
            });
        }
    }
    errors
}

type OverrideResult = Result<(), (Option<String>, String)>;

fn apply_one(
    tree: &mut Value,
    map: &mut SourceMap,
    schema: &Schema,
    var: &str,
    rest: &str,
    raw: &str,
) -> OverrideResult {
    let segments: Vec<&str> = rest.split("__").collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err((
            None,
            "malformed override name: segments are separated by exactly two underscores \
             (KINFRA_SECTION__KEY)"
                .into(),
        ));
    }
    let mut node = tree;
    let mut path = String::new();
    let mut parent_key = String::new();
    let mut keys: Vec<String> = Vec::new();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        if node.is_null() {
            *node = Value::Object(Map::new());
        }
        let next_path;
        node =
            match node {
                Value::Object(obj) => {
                    let key = resolve_key(obj, seg, &parent_key);
                    next_path = join_key(&path, &key);
                    let created = !obj.contains_key(&key);
                    if last {
                        let existing = obj.get(&key).filter(|v| !v.is_null()).cloned();
                        keys.push(key.clone());
                        // `env` and `volumes` tables hold strings, and so do secrets
                        // (which must never be echoed in a type error).
                        let hint = if matches!(parent_key.as_str(), "env" | "volumes")
                            || is_secret_name(&key)
                        {
                            Some(Value::String(String::new()))
                        } else {
                            existing.or_else(|| schema.default_at(&keys))
                        };
                        let value =
                            typed(raw, hint.as_ref()).map_err(|m| (Some(next_path.clone()), m))?;
                        obj.insert(key.clone(), value);
                        map.remove_subtree(&next_path);
                        map.set_origin(&next_path, var);
                        return Ok(());
                    }
                    if created {
                        map.set_origin(&next_path, var);
                    }
                    parent_key = key.clone();
                    keys.push(key.clone());
                    obj.entry(key).or_insert_with(|| Value::Object(Map::new()))
                }
                Value::Array(items) => {
                    let len = items.len();
                    let index = seg.parse::<usize>().ok().filter(|&n| n < len).ok_or_else(
                        || {
                            (
                                Some(path.clone()),
                                format!(
                                    "`{seg}` is not an index of this list (it has {len} item{})",
                                    if len == 1 { "" } else { "s" }
                                ),
                            )
                        },
                    )?;
                    next_path = join_index(&path, index);
                    keys.push(index.to_string());
                    parent_key.clear();
                    if last {
                        let hint = Some(items[index].clone()).filter(|v| !v.is_null());
                        let value =
                            typed(raw, hint.as_ref()).map_err(|m| (Some(next_path.clone()), m))?;
                        items[index] = value;
                        map.remove_subtree(&next_path);
                        map.set_origin(&next_path, var);
                        return Ok(());
                    }
                    &mut items[index]
                }
                other => {
                    return Err((
                        Some(path.clone()),
                        format!(
                            "cannot set `{}` inside a {}",
                            segments[i..].join("__").to_ascii_lowercase(),
                            type_name(other)
                        ),
                    ));
                }
            };
        path = next_path;
    }
    Ok(())
}

/// The key a segment names: an existing key matching it case-insensitively, else the segment
/// lowercased (kept as written inside an `env` table).
fn resolve_key(obj: &Map<String, Value>, seg: &str, parent_key: &str) -> String {
    if obj.contains_key(seg) {
        return seg.to_owned();
    }
    if let Some(k) = obj.keys().find(|k| k.eq_ignore_ascii_case(seg)) {
        return k.clone();
    }
    if parent_key == "env" {
        seg.to_owned()
    } else {
        seg.to_ascii_lowercase()
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "table",
    }
}

fn number(raw: &str) -> Option<Value> {
    let t = raw.trim();
    if let Ok(n) = t.parse::<i64>() {
        return Some(Value::from(n));
    }
    if let Ok(n) = t.parse::<u64>() {
        return Some(Value::from(n));
    }
    let numeric = !t.is_empty()
        && t.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'));
    if numeric && let Some(n) = t.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
        return Some(Value::Number(n));
    }
    None
}

fn boolean(raw: &str) -> Option<Value> {
    match raw.trim() {
        "true" => Some(Value::Bool(true)),
        "false" => Some(Value::Bool(false)),
        _ => None,
    }
}

fn json(raw: &str) -> Option<Result<Value, String>> {
    let t = raw.trim_start();
    if t.starts_with('[') || t.starts_with('{') {
        Some(serde_json::from_str(t).map_err(|e| format!("invalid JSON value: {e}")))
    } else {
        None
    }
}

/// Types `raw` like `hint` (the value there now, or the schema's default), else guesses.
fn typed(raw: &str, hint: Option<&Value>) -> Result<Value, String> {
    let string = || Value::String(raw.to_owned());
    Ok(match hint {
        Some(Value::String(_)) => string(),
        Some(Value::Bool(_)) => boolean(raw).unwrap_or_else(string),
        Some(Value::Number(_)) => number(raw).unwrap_or_else(string),
        Some(Value::Array(_) | Value::Object(_)) => match json(raw) {
            Some(parsed) => parsed?,
            None => string(),
        },
        Some(Value::Null) | None => {
            if let Some(v) = number(raw).or_else(|| boolean(raw)) {
                v
            } else if let Some(parsed) = json(raw) {
                parsed?
            } else {
                string()
            }
        }
    })
}

/// Default values of the schema, used to type an override of a key the file does not set.
struct Schema {
    config: Option<Value>,
    service: Option<Value>,
    resource: Option<Value>,
    route: Option<Value>,
}

impl Schema {
    fn new() -> Self {
        let value = |v: Result<Value, serde_json::Error>| v.ok();
        Self {
            config: value(serde_json::to_value(Config::default())),
            service: value(serde_json::to_value(ServiceConfig::new(""))),
            resource: value(serde_json::to_value(ResourceConfig::new(Template::Docker))),
            route: value(serde_json::to_value(RouteConfig::to("x"))),
        }
    }

    /// The default at a path given as keys (list indexes as digits).
    fn default_at(&self, keys: &[String]) -> Option<Value> {
        let (mut node, rest) = match keys {
            [section, _, rest @ ..] if section == "services" => (self.service.as_ref()?, rest),
            [section, _, rest @ ..] if section == "resources" => (self.resource.as_ref()?, rest),
            [section, _, rest @ ..] if section == "routes" => (self.route.as_ref()?, rest),
            _ => (self.config.as_ref()?, keys),
        };
        for key in rest {
            node = match node {
                Value::Object(o) => o.get(key)?,
                Value::Array(a) => a.get(key.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(node.clone()).filter(|v| !v.is_null())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(tree: Value, env: &[(&str, &str)]) -> (Value, SourceMap, Vec<ConfigError>) {
        let mut tree = tree;
        let mut map = SourceMap::default();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let errors = apply(&mut tree, &mut map, &env);
        (tree, map, errors)
    }

    #[test]
    fn sets_typed_values() {
        let tree = json!({
            "services": {"api": {"command": "x", "port": "auto", "env": {"LOG_LEVEL": "info"}}},
            "routes": [{"path": "/a", "service": "api"}],
        });
        let (tree, map, errors) = run(
            tree,
            &[
                ("KINFRA_DASHBOARD__LISTEN", "127.0.0.1:9999"),
                ("KINFRA_SERVICES__API__PORT", "8080"),
                ("KINFRA_SERVICES__API__ENV__LOG_LEVEL", "debug"),
                ("KINFRA_SERVICES__API__ENV__New_Var", "1"),
                ("KINFRA_SERVICES__WEB__PORT", "3000"),
                ("KINFRA_PROJECT__NAME", "123"),
                ("KINFRA_PROXY__ENABLED", "false"),
                ("KINFRA_BUS__TOKEN", "12345"),
                ("KINFRA_SERVICES__API__BACKOFF__FACTOR", "1.5"),
                ("KINFRA_SERVICES__API__ARGS", "[\"-v\", \"--x\"]"),
                ("KINFRA_ROUTES__0__PATH", "/b"),
                ("KINFRA_DASHBOARD_TOKEN", "ignored"),
                ("KINFRA_LOG", "ignored"),
                ("OTHER__X", "ignored"),
            ],
        );
        assert_eq!(errors, vec![]);
        assert_eq!(tree["dashboard"]["listen"], "127.0.0.1:9999");
        // "auto" was a string, so the override stays a string.
        assert_eq!(tree["services"]["api"]["port"], "8080");
        assert_eq!(tree["services"]["api"]["env"]["LOG_LEVEL"], "debug");
        assert_eq!(tree["services"]["api"]["env"]["New_Var"], "1");
        assert_eq!(tree["services"]["web"]["port"], 3000);
        // The schema says the name is a string.
        assert_eq!(tree["project"]["name"], "123");
        assert_eq!(tree["proxy"]["enabled"], false);
        assert_eq!(tree["bus"]["token"], "12345");
        assert_eq!(tree["services"]["api"]["backoff"]["factor"], 1.5);
        assert_eq!(tree["services"]["api"]["args"], json!(["-v", "--x"]));
        assert_eq!(tree["routes"][0]["path"], "/b");
        assert!(tree.get("dashboard_token").is_none());
        assert!(tree["dashboard"].get("token").is_none());
        assert_eq!(
            map.locate("services.web", super::super::source::Anchor::Key)
                .origin
                .as_deref(),
            Some("KINFRA_SERVICES__WEB__PORT")
        );
    }

    #[test]
    fn reports_bad_overrides() {
        let tree = json!({"dashboard": {"listen": "127.0.0.1:1"}, "routes": []});
        let (_, _, errors) = run(
            tree,
            &[
                ("KINFRA_DASHBOARD__LISTEN__X", "1"),
                ("KINFRA_A____B", "1"),
                ("KINFRA_ROUTES__3__PATH", "/"),
                ("KINFRA_SERVICES__API__ARGS", "[1,"),
            ],
        );
        let got: Vec<(String, Option<String>, String)> = errors
            .into_iter()
            .map(|e| (e.origin, e.key, e.message))
            .collect();
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[0].0, "KINFRA_DASHBOARD__LISTEN__X");
        assert_eq!(got[0].1.as_deref(), Some("dashboard.listen"));
        assert!(got[0].2.contains("inside a string"), "{}", got[0].2);
        assert!(got[1].2.contains("malformed override name"), "{}", got[1].2);
        assert_eq!(got[2].1.as_deref(), Some("routes"));
        assert!(got[2].2.contains("not an index"), "{}", got[2].2);
        assert_eq!(got[3].1.as_deref(), Some("services.api.args"));
        assert!(got[3].2.contains("invalid JSON"), "{}", got[3].2);
    }
}
