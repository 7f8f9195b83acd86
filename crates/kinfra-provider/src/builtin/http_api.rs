//! The `http-api` provider: any HTTP/REST API as a resource, its endpoints, auth, state mapping and commands declared in config.
//!
//! An instance (`[providers.NAME] provider = "http-api"`) gives the `base_url`, the `token` and
//! how it is sent (`auth` = `bearer` | `api-key` | `basic` | `custom-header` | `none`), and a
//! `rate_limit`. A resource declares its `start`, `stop`, `status` and `health` endpoints
//! (`{ method, path, body }`, paths with `{key}` filled from the resource's string keys), where
//! the state is in the status answer (`state_pointer`, a JSON pointer) and what the provider's
//! words mean (`state_map`), and typed `commands`.
//!
//! A started resource lives while its observe loop maps the status to a live state; its run
//! ends when the status maps to `stopped` or `failed`. Unknown provider values never fail it:
//! `…ING` reads as starting/stopping, anything else keeps the last state with a warning line.
//!
//! Asynchronous APIs: with an `operation` table (on the resource, or on the instance for all
//! its resources; see [`OperationSpec`]) a start, stop or command answered `202 Accepted` (or
//! with an id at `operation.id`) is polled to its end: start and stop return only then (the
//! resource stays `starting` / `stopping`), a failed or timed-out operation fails them with the
//! provider's reason, and a command's result carries the operation's id and final state.

use crate::command::{CommandSpec, ParamKind, ParamSpec, ParamValue, ValidatedParams, validate};
use crate::http::{
    Auth, HttpConfig, HttpError, HttpRequest, HttpResponse, Method, Url, redact_url,
};
use crate::metadata::{
    AuthMethod, Capability, Category, ConfigKeySpec, ConfigKind, ProviderMetadata, ResourceTypeSpec,
};
use crate::observe::{self, ObserveConfig, ObserveError, ObservedStatus};
use crate::operation::{
    OperationError, OperationStates, OperationStatus, OperationTracker, json_text, operation_url,
};
use crate::provider::{
    InstanceContext, KINFRA_KEYS, Provider, ProviderError, ResourceDecl, ResourceProblem,
    check_config,
};
use crate::rest::{RestApi, RestClients, TokenNeed, encode_segment};
use crate::result::{CommandResult, PlannedRequest, mask_text};
use crate::retry::{Backoff, RetryPolicy};
use crate::run_slot::{AbortOnDrop, LogRing, lock};
use kinfra_core::Secret;
use kinfra_core::event::ExitInfo;
use kinfra_core::resource::{
    BoxFuture, Connection, Observed, OutputLine, Resource, ResourceError, Run, SyncFacts,
};
use kinfra_core::state::Health;
use kinfra_core::status::{LastSync, LogStream};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::warn;

/// The provider's id.
pub const ID: &str = "http-api";
/// The one resource type it runs.
pub const RESOURCE_TYPE: &str = "api";
/// The observe interval when the resource sets none.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// How long an operation may take when its `timeout` is not set.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(600);
/// The first delay between operation polls when its `interval` is not set.
pub const DEFAULT_OPERATION_INTERVAL: Duration = Duration::from_secs(1);
/// The cap of the delay between operation polls (unless `interval` is longer).
const OPERATION_MAX_INTERVAL: Duration = Duration::from_secs(15);
/// Output lines kept for [`Resource::logs`].
const LOG_LINES: usize = 500;
/// Observes of `stopped` right after a start (before any live state) that end the run.
const STALE_STOPPED_OBSERVES: u32 = 3;

/// A kinfra state a provider's value maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MappedState {
    /// Up and serving.
    Running,
    /// Coming up.
    Starting,
    /// Going down.
    Stopping,
    /// Down.
    Stopped,
    /// Scaled to zero; wakes on demand.
    Sleeping,
    /// Broken.
    Failed,
    /// Under maintenance (up, not to be touched).
    Maintenance,
}

impl MappedState {
    /// The contract name, e.g. `running`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Starting => "starting",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Sleeping => "sleeping",
            Self::Failed => "failed",
            Self::Maintenance => "maintenance",
        }
    }

    /// The state named `name` (any case).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "running" => Self::Running,
            "starting" => Self::Starting,
            "stopping" => Self::Stopping,
            "stopped" => Self::Stopped,
            "sleeping" => Self::Sleeping,
            "failed" => Self::Failed,
            "maintenance" => Self::Maintenance,
            _ => return None,
        })
    }

    fn observed(self) -> Observed {
        match self {
            Self::Running | Self::Starting | Self::Stopping | Self::Maintenance => {
                Observed::Running
            }
            Self::Stopped | Self::Sleeping => Observed::Idle,
            Self::Failed => Observed::Exited(ExitInfo {
                code: Some(1),
                signal: None,
            }),
        }
    }
}

/// A declared endpoint: `{ method, path, body? }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// The method.
    pub method: Method,
    /// The path template (`/projects/{project_id}`), joined to the instance's `base_url`.
    pub path: String,
    /// The JSON body; its strings are templates too.
    pub body: Option<Value>,
}

/// A command declared in a resource's config.
#[derive(Debug, Clone, PartialEq)]
pub struct DeclaredCommand {
    /// Its typed spec.
    pub spec: CommandSpec,
    /// The request it sends. Parameters not used in the path go to the body (or, for GET,
    /// the query) unless a body is declared.
    pub endpoint: Endpoint,
}

/// How the asynchronous operations a start, stop or command begins are followed
/// (`operation = { status, id, pointer, done, failed, reason, interval, timeout }` on the
/// resource, or on the instance for all its resources).
///
/// An answer begins an operation when it is a `202 Accepted`, or when `id` finds an id in it.
/// The operation is polled at `status` (a path template where `{id}` is the operation's id),
/// else at the 202's `Operation-Location` / `Location`, until the value at `pointer` is one of
/// `done` or `failed`, or `timeout` passes.
#[derive(Debug, Clone, PartialEq)]
pub struct OperationSpec {
    /// The path template polled; `None`: the 202's `Operation-Location` or `Location`.
    pub status: Option<String>,
    /// JSON pointer to the operation's id in the answer that began it; without it the
    /// `Operation-Id` header.
    pub id: Option<String>,
    /// How a poll answer is read.
    pub states: OperationStates,
    /// The first delay between polls (growing up to 15 s, or `interval` when longer).
    pub interval: Duration,
    /// The longest an operation may take.
    pub timeout: Duration,
}

impl OperationSpec {
    fn tracker(&self) -> OperationTracker {
        OperationTracker {
            backoff: Backoff {
                initial: self.interval,
                max: self.interval.max(OPERATION_MAX_INTERVAL),
            },
            timeout: self.timeout,
        }
    }
}

/// An operation followed to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackedOperation {
    /// Its id (the polled path when the provider named none).
    pub id: String,
    /// The state it ended in, in the provider's words.
    pub state: String,
    /// Polls made.
    pub polls: u32,
}

/// What became of an answer that may have begun an operation.
#[derive(Debug)]
enum Settled {
    /// It began none (or no `operation` is configured).
    NoOperation,
    /// It began one (its id, when known) but names nowhere to poll it.
    Unfollowable(Option<String>),
    /// It began one, followed to its successful end.
    Done(TrackedOperation),
}

/// A resource's config, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiSpec {
    /// The `start` endpoint.
    pub start: Option<Endpoint>,
    /// The `stop` endpoint.
    pub stop: Option<Endpoint>,
    /// The `status` endpoint.
    pub status: Option<Endpoint>,
    /// The `health` endpoint.
    pub health: Option<Endpoint>,
    /// Where the state is in the status answer (a JSON pointer); the whole answer without it.
    pub state_pointer: Option<String>,
    /// Provider value → kinfra state.
    pub state_map: BTreeMap<String, MappedState>,
    /// The declared commands.
    pub commands: Vec<DeclaredCommand>,
    /// The resource's string keys, for `{key}` in templates.
    pub vars: BTreeMap<String, String>,
    /// The observe interval.
    pub interval: Duration,
    /// How its operations are followed (the instance's when the resource sets none).
    pub operation: Option<OperationSpec>,
}

fn parse_method(text: &str) -> Option<Method> {
    let upper = text.to_ascii_uppercase();
    match upper.as_str() {
        "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" => {
            Method::from_bytes(upper.as_bytes()).ok()
        }
        _ => None,
    }
}

/// The `{name}` placeholders of `template`.
fn placeholders(template: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { break };
        names.push(after[..close].to_owned());
        rest = &after[close + 1..];
    }
    names
}

fn parse_endpoint(
    key: &str,
    value: &Value,
    known: &dyn Fn(&str) -> bool,
    problems: &mut Vec<ResourceProblem>,
) -> Option<Endpoint> {
    let Some(table) = value.as_object() else {
        problems.push(ResourceProblem::at(
            key,
            "expected a table { method, path, body }",
        ));
        return None;
    };
    let mut ok = true;
    for k in table.keys() {
        if !matches!(k.as_str(), "method" | "path" | "body") {
            problems.push(ResourceProblem::at(
                format!("{key}.{k}"),
                "unknown key (expected method, path, body)",
            ));
            ok = false;
        }
    }
    let method = match table.get("method") {
        None => Some(Method::GET),
        Some(m) => match m.as_str().and_then(parse_method) {
            Some(m) => Some(m),
            None => {
                problems.push(ResourceProblem::at(
                    format!("{key}.method"),
                    "expected GET, POST, PUT, PATCH, DELETE or HEAD",
                ));
                None
            }
        },
    };
    let path = match table.get("path").and_then(Value::as_str) {
        Some(p) => {
            for name in placeholders(p) {
                if !known(&name) {
                    problems.push(ResourceProblem::at(
                        format!("{key}.path"),
                        format!("`{{{name}}}` names no string key of the resource"),
                    ));
                    ok = false;
                }
            }
            Some(p.to_owned())
        }
        None => {
            problems.push(ResourceProblem::at(
                format!("{key}.path"),
                "missing (required), a string",
            ));
            None
        }
    };
    match (ok, method, path) {
        (true, Some(method), Some(path)) => Some(Endpoint {
            method,
            path,
            body: table.get("body").cloned(),
        }),
        _ => None,
    }
}

fn parse_pointer(
    key: &str,
    value: Option<&Value>,
    problems: &mut Vec<ResourceProblem>,
) -> Option<String> {
    match value {
        None => None,
        Some(Value::String(p)) if p.is_empty() || p.starts_with('/') => Some(p.clone()),
        Some(_) => {
            problems.push(ResourceProblem::at(
                key,
                "expected a JSON pointer such as \"/status\"",
            ));
            None
        }
    }
}

fn parse_duration_key(
    key: &str,
    value: Option<&Value>,
    default: Duration,
    problems: &mut Vec<ResourceProblem>,
) -> Duration {
    match value {
        None => default,
        Some(Value::String(text)) => match kinfra_core::config::parse_duration(text) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                problems.push(ResourceProblem::at(key, "must be more than zero"));
                default
            }
            Err(reason) => {
                problems.push(ResourceProblem::at(key, reason));
                default
            }
        },
        Some(_) => {
            problems.push(ResourceProblem::at(
                key,
                "expected a duration such as \"30s\"",
            ));
            default
        }
    }
}

fn parse_values(
    key: &str,
    value: Option<&Value>,
    problems: &mut Vec<ResourceProblem>,
) -> Vec<String> {
    match value {
        None => Vec::new(),
        Some(Value::Array(items)) => {
            let values: Vec<String> = items.iter().filter_map(json_text).collect();
            if values.len() != items.len() {
                problems.push(ResourceProblem::at(key, "expected an array of strings"));
            }
            values
        }
        Some(_) => {
            problems.push(ResourceProblem::at(key, "expected an array of strings"));
            Vec::new()
        }
    }
}

/// Parses an `operation` table; `known` says which `{name}`s its `status` path may use
/// besides `{id}`.
fn parse_operation(
    value: &Value,
    known: &dyn Fn(&str) -> bool,
    problems: &mut Vec<ResourceProblem>,
) -> Option<OperationSpec> {
    let Some(table) = value.as_object() else {
        problems.push(ResourceProblem::at(
            "operation",
            "expected a table { status, id, pointer, done, failed, reason, interval, timeout }",
        ));
        return None;
    };
    let before = problems.len();
    for k in table.keys() {
        if !matches!(
            k.as_str(),
            "status" | "id" | "pointer" | "done" | "failed" | "reason" | "interval" | "timeout"
        ) {
            problems.push(ResourceProblem::at(
                format!("operation.{k}"),
                "unknown key (expected status, id, pointer, done, failed, reason, interval, timeout)",
            ));
        }
    }
    let status = match table.get("status") {
        None => None,
        Some(Value::String(path)) => {
            for name in placeholders(path) {
                if name != "id" && !known(&name) {
                    problems.push(ResourceProblem::at(
                        "operation.status",
                        format!(
                            "`{{{name}}}` is neither `{{id}}` nor a string key of the resource"
                        ),
                    ));
                }
            }
            Some(path.clone())
        }
        Some(_) => {
            problems.push(ResourceProblem::at(
                "operation.status",
                "expected a path such as \"/operations/{id}\"",
            ));
            None
        }
    };
    let id = parse_pointer("operation.id", table.get("id"), problems);
    let pointer = match table.get("pointer") {
        None => {
            problems.push(ResourceProblem::at(
                "operation.pointer",
                "missing (required): the JSON pointer to the operation's state, e.g. \"/status\"",
            ));
            None
        }
        found => parse_pointer("operation.pointer", found, problems),
    };
    let done = parse_values("operation.done", table.get("done"), problems);
    match table.get("done") {
        None => problems.push(ResourceProblem::at(
            "operation.done",
            "missing (required): the states meaning the operation finished, e.g. [\"finished\"]",
        )),
        Some(Value::Array(items)) if items.is_empty() => problems.push(ResourceProblem::at(
            "operation.done",
            "name at least one state meaning the operation finished",
        )),
        Some(_) => {}
    }
    let failed = parse_values("operation.failed", table.get("failed"), problems);
    let reason = parse_pointer("operation.reason", table.get("reason"), problems);
    let interval = parse_duration_key(
        "operation.interval",
        table.get("interval"),
        DEFAULT_OPERATION_INTERVAL,
        problems,
    );
    let timeout = parse_duration_key(
        "operation.timeout",
        table.get("timeout"),
        DEFAULT_OPERATION_TIMEOUT,
        problems,
    );
    if problems.len() > before {
        return None;
    }
    Some(OperationSpec {
        status,
        id,
        states: OperationStates {
            pointer: pointer?,
            done,
            failed,
            reason,
        },
        interval,
        timeout,
    })
}

/// A parameter's kind from its `kind` (and, by kind, `values`, `min`, `max`).
fn parse_param_kind(
    pkey: &str,
    item: &Value,
    problems: &mut Vec<ResourceProblem>,
) -> Option<ParamKind> {
    let text = item.get("kind").and_then(Value::as_str).unwrap_or("string");
    let bound = |name: &str, problems: &mut Vec<ResourceProblem>| match item.get(name) {
        None => None,
        Some(v) if v.is_number() => Some(v.clone()),
        Some(_) => {
            problems.push(ResourceProblem::at(
                format!("{pkey}.{name}"),
                "expected a number",
            ));
            None
        }
    };
    Some(match text {
        "string" => ParamKind::String,
        "integer" | "int" => ParamKind::Integer {
            min: bound("min", problems).and_then(|v| v.as_i64()),
            max: bound("max", problems).and_then(|v| v.as_i64()),
        },
        "number" => ParamKind::Number {
            min: bound("min", problems).and_then(|v| v.as_f64()),
            max: bound("max", problems).and_then(|v| v.as_f64()),
        },
        "boolean" | "bool" => ParamKind::Boolean,
        "duration" => ParamKind::Duration,
        "secret" => ParamKind::Secret,
        "enum" => {
            let key = format!("{pkey}.values");
            let values = parse_values(&key, item.get("values"), problems);
            if values.is_empty() {
                problems.push(ResourceProblem::at(
                    &key,
                    "an enum needs its values, e.g. [\"small\", \"large\"]",
                ));
                return None;
            }
            ParamKind::Enum { values }
        }
        other => {
            problems.push(ResourceProblem::at(
                format!("{pkey}.kind"),
                format!(
                    "`{other}`: expected string, integer, number, boolean, enum, duration or secret"
                ),
            ));
            return None;
        }
    })
}

fn parse_command(
    index: usize,
    value: &Value,
    vars: &BTreeMap<String, String>,
    problems: &mut Vec<ResourceProblem>,
) -> Option<DeclaredCommand> {
    let key = format!("commands[{index}]");
    let Some(table) = value.as_object() else {
        problems.push(ResourceProblem::at(
            &key,
            "expected a table { id, method, path, params, description }",
        ));
        return None;
    };
    let before = problems.len();
    for k in table.keys() {
        if !matches!(
            k.as_str(),
            "id" | "method" | "path" | "body" | "params" | "description" | "confirm"
        ) {
            problems.push(ResourceProblem::at(format!("{key}.{k}"), "unknown key"));
        }
    }
    let id = table.get("id").and_then(Value::as_str).unwrap_or_default();
    if id.is_empty() {
        problems.push(ResourceProblem::at(
            format!("{key}.id"),
            "missing (required), a string",
        ));
    }
    let mut params = Vec::new();
    match table.get("params") {
        None => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let pkey = format!("{key}.params[{i}]");
                let name = item.get("name").and_then(Value::as_str);
                let required = item
                    .get("required")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let Some(name) = name.filter(|n| !n.is_empty()) else {
                    problems.push(ResourceProblem::at(
                        format!("{pkey}.name"),
                        "missing (required), a string",
                    ));
                    continue;
                };
                let Some(kind) = parse_param_kind(&pkey, item, problems) else {
                    continue;
                };
                params.push(ParamSpec {
                    name: name.to_owned(),
                    kind,
                    required,
                    default: item.get("default").cloned(),
                    description: item
                        .get("description")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                });
            }
        }
        Some(_) => problems.push(ResourceProblem::at(
            format!("{key}.params"),
            "expected an array",
        )),
    }
    let confirm = match table.get("confirm") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            problems.push(ResourceProblem::at(
                format!("{key}.confirm"),
                "expected true or false",
            ));
            false
        }
    };
    let endpoint_value = Value::Object(
        table
            .iter()
            .filter(|(k, _)| matches!(k.as_str(), "method" | "path" | "body"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    );
    let names: Vec<String> = params.iter().map(|p| p.name.clone()).collect();
    let known = |n: &str| vars.contains_key(n) || names.iter().any(|p| p == n);
    let endpoint = parse_endpoint(&key, &endpoint_value, &known, problems);
    if problems.len() > before {
        return None;
    }
    let description = table.get("description").and_then(Value::as_str);
    let mut spec = CommandSpec::new(id, id, description.unwrap_or_default())
        .in_category("custom")
        .for_resource_type(RESOURCE_TYPE)
        .with_params(params)
        .with_dry_run();
    if confirm {
        spec = spec.needs_confirmation();
    }
    Some(DeclaredCommand {
        spec,
        endpoint: endpoint?,
    })
}

impl ApiSpec {
    /// Parses a resource's config; every problem at once.
    pub fn parse(config: &Map<String, Value>) -> Result<Self, Vec<ResourceProblem>> {
        let mut problems = Vec::new();
        let vars: BTreeMap<String, String> = config
            .iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
            .collect();
        let known = |n: &str| vars.contains_key(n);
        let mut endpoint = |key: &str| {
            config
                .get(key)
                .and_then(|v| parse_endpoint(key, v, &known, &mut problems))
        };
        let start = endpoint("start");
        let stop = endpoint("stop");
        let status = endpoint("status");
        // `health` is also kinfra's own key (its probes): a table with a `path` is ours.
        let health = match config.get("health") {
            Some(v) if v.get("path").is_some() => {
                parse_endpoint("health", v, &known, &mut problems)
            }
            _ => None,
        };
        let state_pointer = match config.get("state_pointer") {
            None => None,
            Some(Value::String(p)) if p.is_empty() || p.starts_with('/') => Some(p.clone()),
            Some(_) => {
                problems.push(ResourceProblem::at(
                    "state_pointer",
                    "expected a JSON pointer such as \"/project/status\"",
                ));
                None
            }
        };
        let mut state_map = BTreeMap::new();
        match config.get("state_map") {
            None => {}
            Some(Value::Object(map)) => {
                for (value, state) in map {
                    match state.as_str().and_then(MappedState::parse) {
                        Some(s) => {
                            state_map.insert(value.clone(), s);
                        }
                        None => problems.push(ResourceProblem::at(
                            format!("state_map.{value}"),
                            "expected running, starting, stopping, stopped, sleeping, failed or maintenance",
                        )),
                    }
                }
            }
            Some(_) => problems.push(ResourceProblem::at("state_map", "expected a table")),
        }
        let mut commands: Vec<DeclaredCommand> = Vec::new();
        match config.get("commands") {
            None => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(c) = parse_command(i, item, &vars, &mut problems) {
                        if commands.iter().any(|d| d.spec.id == c.spec.id) {
                            problems.push(ResourceProblem::at(
                                format!("commands[{i}].id"),
                                format!("`{}` is declared twice", c.spec.id),
                            ));
                        } else {
                            commands.push(c);
                        }
                    }
                }
            }
            Some(_) => problems.push(ResourceProblem::at(
                "commands",
                "expected an array of tables",
            )),
        }
        let interval = parse_duration_key(
            "interval",
            config.get("interval"),
            DEFAULT_INTERVAL,
            &mut problems,
        );
        let operation = config
            .get("operation")
            .and_then(|v| parse_operation(v, &known, &mut problems));
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            start,
            stop,
            status,
            health,
            state_pointer,
            state_map,
            commands,
            vars,
            interval,
            operation,
        })
    }

    /// Maps the provider's `value` to a kinfra state: through `state_map`, then a kinfra state
    /// name, then `…ING` (starting or stopping). `None` when it means nothing known.
    pub fn map_state(&self, value: &str) -> Option<MappedState> {
        if let Some(s) = self.state_map.get(value) {
            return Some(*s);
        }
        if let Some((_, s)) = self
            .state_map
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(value))
        {
            return Some(*s);
        }
        if let Some(s) = MappedState::parse(value) {
            return Some(s);
        }
        let upper = value.to_ascii_uppercase();
        if upper.ends_with("ING") {
            let down = [
                "STOP",
                "SUSPEND",
                "PAUS",
                "DELET",
                "TERMINAT",
                "SHUT",
                "SCALING_DOWN",
                "DEPROVISION",
            ];
            return Some(if down.iter().any(|d| upper.contains(d)) {
                MappedState::Stopping
            } else {
                MappedState::Starting
            });
        }
        None
    }

    /// The state value in a status answer, by `state_pointer`.
    fn state_value(&self, answer: &Value) -> Option<String> {
        let found = match &self.state_pointer {
            Some(p) => answer.pointer(p)?,
            None => answer,
        };
        match found {
            Value::String(s) => Some(s.clone()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    /// The command `id`, when the resource declares it.
    pub fn command(&self, id: &str) -> Option<&DeclaredCommand> {
        self.commands.iter().find(|c| c.spec.id == id)
    }
}

/// Where and how an instance's requests go.
#[derive(Debug, Clone)]
struct Target {
    /// The instance's API, with its auth.
    api: RestApi,
    /// The instance's `operation`, for resources that set none.
    operation: Option<OperationSpec>,
}

fn config_str<'a>(ctx: &'a InstanceContext, key: &str) -> Option<&'a str> {
    ctx.config.get(key).and_then(Value::as_str)
}

/// The instance's auth and `operation`, its base URL and `rate_limit` checked; every problem
/// at once.
fn instance_parts(
    ctx: &InstanceContext,
) -> Result<(Auth, Option<OperationSpec>), Vec<ResourceProblem>> {
    let mut problems = ctx
        .api_access(None, TokenNeed::Optional)
        .err()
        .unwrap_or_default();
    let kind = config_str(ctx, "auth").unwrap_or(if ctx.token.is_some() {
        "bearer"
    } else {
        "none"
    });
    let mut token = || match &ctx.token {
        Some(t) => Some(t.clone()),
        None => {
            problems.push(ResourceProblem::at(
                "token",
                format!("auth `{kind}` needs a token (token or token_file)"),
            ));
            None
        }
    };
    let auth = match kind {
        "none" => Some(Auth::None),
        "bearer" => token().map(Auth::Bearer),
        "basic" => {
            let password = token();
            match (config_str(ctx, "user"), password) {
                (Some(user), Some(password)) => Some(Auth::Basic {
                    user: user.to_owned(),
                    password,
                }),
                (None, _) => {
                    problems.push(ResourceProblem::at(
                        "user",
                        "missing (required by auth = \"basic\")",
                    ));
                    None
                }
                _ => None,
            }
        }
        "custom-header" => {
            let value = token();
            match (config_str(ctx, "auth_header"), value) {
                (Some(name), Some(value)) => Some(Auth::Header {
                    name: name.to_owned(),
                    value,
                }),
                (None, _) => {
                    problems.push(ResourceProblem::at(
                        "auth_header",
                        "missing (required by auth = \"custom-header\")",
                    ));
                    None
                }
                _ => None,
            }
        }
        "api-key" => {
            let value = token();
            match (
                config_str(ctx, "auth_header"),
                config_str(ctx, "auth_query"),
                value,
            ) {
                (Some(name), None, Some(value)) => Some(Auth::Header {
                    name: name.to_owned(),
                    value,
                }),
                (None, Some(name), Some(value)) => Some(Auth::Query {
                    name: name.to_owned(),
                    value,
                }),
                (Some(_), Some(_), _) => {
                    problems.push(ResourceProblem::at(
                        "auth_query",
                        "set auth_header or auth_query, not both",
                    ));
                    None
                }
                (None, None, _) => {
                    problems.push(ResourceProblem::at(
                        "auth_header",
                        "auth = \"api-key\" needs auth_header or auth_query",
                    ));
                    None
                }
                _ => None,
            }
        }
        other => {
            problems.push(ResourceProblem::at(
                "auth",
                format!("`{other}`: expected bearer, api-key, basic, custom-header or none"),
            ));
            None
        }
    };
    // The instance's resources differ: its status path may use any of their keys.
    let operation = ctx
        .config
        .get("operation")
        .and_then(|v| parse_operation(v, &|_| true, &mut problems));
    match auth {
        Some(auth) if problems.is_empty() => Ok((auth, operation)),
        _ => Err(problems),
    }
}

/// Every `{name}` used in the resource's endpoint and command templates.
fn template_keys(config: &Map<String, Value>) -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::String(s) => out.extend(placeholders(s)),
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            Value::Object(map) => map.values().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for key in ["start", "stop", "status", "health", "commands", "operation"] {
        if let Some(v) = config.get(key) {
            walk(v, &mut out);
        }
    }
    out
}

/// `template` with every `{name}` replaced by `value(name)` (left as it is when unknown).
fn render(template: &str, value: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) => {
                let name = &after[..close];
                match value(name) {
                    Some(v) => out.push_str(&v),
                    None => {
                        out.push('{');
                        out.push_str(name);
                        out.push('}');
                    }
                }
                rest = &after[close + 1..];
            }
            None => {
                out.push_str(&rest[open..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// A body's strings rendered; a string that is exactly `{name}` becomes the typed value.
fn render_body(body: &Value, value: &dyn Fn(&str) -> Option<Value>) -> Value {
    match body {
        Value::String(s) => {
            let names = placeholders(s);
            if names.len() == 1
                && *s == format!("{{{}}}", names[0])
                && let Some(v) = value(&names[0])
            {
                return v;
            }
            Value::String(render(s, &|n| {
                value(n).map(|v| match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                })
            }))
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| render_body(v, value)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), render_body(v, value)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn param_text(value: &ParamValue) -> String {
    match value.to_json_exposed() {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

impl Target {
    /// The request for `endpoint` with `vars` and `params` filled in.
    fn request(
        &self,
        endpoint: &Endpoint,
        vars: &BTreeMap<String, String>,
        params: Option<&ValidatedParams>,
    ) -> Result<HttpRequest, HttpError> {
        let mut used = Vec::new();
        let path = render(&endpoint.path, &|name| {
            if let Some(v) = params.and_then(|p| p.get(name)) {
                return Some(encode_segment(&param_text(v)));
            }
            vars.get(name).map(|v| encode_segment(v))
        });
        for name in placeholders(&endpoint.path) {
            used.push(name);
        }
        let mut request = self
            .api
            .request(
                endpoint.method.clone(),
                &format!("/{}", path.trim_start_matches('/')),
                &[],
                None,
            )
            .map_err(|e| e.http)?;
        let typed = |name: &str| -> Option<Value> {
            if let Some(v) = params.and_then(|p| p.get(name)) {
                return Some(v.to_json_exposed());
            }
            vars.get(name).map(|v| Value::String(v.clone()))
        };
        let mut body = endpoint.body.as_ref().map(|b| render_body(b, &typed));
        if let (Some(params), None) = (params, &endpoint.body) {
            let rest: Map<String, Value> = params
                .iter()
                .filter(|(name, _)| !used.iter().any(|u| u == name))
                .map(|(name, v)| (name.to_owned(), v.to_json_exposed()))
                .collect();
            if !rest.is_empty() {
                if endpoint.method == Method::GET || endpoint.method == Method::HEAD {
                    let mut pairs = request.url.query_pairs_mut();
                    for (name, v) in &rest {
                        let v = match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        pairs.append_pair(name, &v);
                    }
                } else {
                    body = Some(Value::Object(rest));
                }
            }
        }
        request.body = body;
        Ok(request)
    }

    /// The operation `response` (the answer to `request`) began, when `spec` says how to
    /// follow it: its id and where to poll it (`None` when nothing says where).
    fn begun(
        &self,
        spec: &OperationSpec,
        vars: &BTreeMap<String, String>,
        request: &HttpRequest,
        response: &HttpResponse,
    ) -> Option<(Option<String>, Option<Url>)> {
        let from_body = spec.id.as_deref().and_then(|pointer| {
            let answer: Value = serde_json::from_slice(&response.body).ok()?;
            json_text(answer.pointer(pointer)?).filter(|id| !id.is_empty())
        });
        if response.status != 202 && from_body.is_none() {
            return None;
        }
        let id = from_body.or_else(|| response.header("operation-id").map(str::to_owned));
        let url = match (&spec.status, &id) {
            (Some(path), Some(id)) => {
                let mut vars = vars.clone();
                vars.insert("id".into(), id.clone());
                let endpoint = Endpoint {
                    method: Method::GET,
                    path: path.clone(),
                    body: None,
                };
                self.request(&endpoint, &vars, None).ok().map(|r| r.url)
            }
            _ => None,
        };
        Some((id, url.or_else(|| operation_url(response, &request.url))))
    }

    /// One poll of the operation at `url`: its state value and what it means. The instance's
    /// credentials go only to the instance's own origin.
    async fn poll_operation(
        &self,
        states: &OperationStates,
        url: &Url,
    ) -> Result<(String, OperationStatus), HttpError> {
        let mut request = HttpRequest::get(url.clone());
        if Url::parse(self.api.base()).is_ok_and(|base| base.origin() == url.origin()) {
            request = request.auth(self.api.auth().clone());
        }
        let response = self.api.send_once(&request).await.map_err(|e| e.http)?;
        let answer: Value = response.json()?;
        states.read(&answer).ok_or_else(|| HttpError::Decode {
            url: response.url.clone(),
            reason: format!("no operation state at `{}`", states.pointer),
        })
    }

    /// Follows the operation `response` (to `request`) began, when `spec` (the resource's or
    /// else the instance's `operation`) says how; `began` hears of it before the first poll.
    async fn settle(
        &self,
        spec: Option<&OperationSpec>,
        vars: &BTreeMap<String, String>,
        request: &HttpRequest,
        response: &HttpResponse,
        began: &(dyn Fn(&str, &Url) + Sync),
    ) -> Result<Settled, String> {
        let Some(spec) = spec.or(self.operation.as_ref()) else {
            return Ok(Settled::NoOperation);
        };
        let Some((id, url)) = self.begun(spec, vars, request, response) else {
            return Ok(Settled::NoOperation);
        };
        let Some(url) = url else {
            return Ok(Settled::Unfollowable(id.map(|id| self.mask(&id))));
        };
        let id = self.mask(&id.unwrap_or_else(|| url.path().to_owned()));
        began(&id, &url);
        self.follow(spec, &id, &url).await.map(Settled::Done)
    }

    /// Polls the operation `id` at `url` until it is done (its final state), failed or timed
    /// out; the error is said in words naming the operation, secrets masked.
    async fn follow(
        &self,
        spec: &OperationSpec,
        id: &str,
        url: &Url,
    ) -> Result<TrackedOperation, String> {
        let last = Mutex::new(String::new());
        let tracked = spec
            .tracker()
            .track(|| {
                let last = &last;
                async move {
                    let (value, status) = self.poll_operation(&spec.states, url).await?;
                    *lock(last) = value;
                    Ok(status)
                }
            })
            .await;
        let state = std::mem::take(&mut *lock(&last));
        match tracked {
            Ok(polls) => Ok(TrackedOperation {
                id: id.to_owned(),
                state,
                polls,
            }),
            Err(error) => Err(self.mask(&match error {
                OperationError::Failed { reason } => {
                    format!("operation {id} failed ({state}): {reason}")
                }
                OperationError::Timeout { after, polls } => format!(
                    "operation {id} still pending after {} ({polls} polls, last state `{state}`)",
                    kinfra_core::config::format_duration(after)
                ),
                OperationError::Poll(error) => format!("polling operation {id} failed: {error}"),
            })),
        }
    }

    fn mask(&self, text: &str) -> String {
        self.api.mask(text)
    }
}

/// The `http-api` provider. Instances share one HTTP client; each instance has its own token
/// bucket (its `rate_limit`).
pub struct HttpApiProvider {
    metadata: ProviderMetadata,
    clients: RestClients,
}

impl std::fmt::Debug for HttpApiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpApiProvider").finish_non_exhaustive()
    }
}

/// The `http-api` provider with the default HTTP timeouts.
pub fn provider() -> Arc<dyn Provider> {
    Arc::new(HttpApiProvider::new())
}

fn endpoint_key(name: &str, what: &str) -> ConfigKeySpec {
    ConfigKeySpec::optional(
        name,
        ConfigKind::Table,
        format!("{what}: {{ method, path, body }}; `{{key}}` in the path is the resource's key"),
    )
}

fn metadata() -> ProviderMetadata {
    ProviderMetadata {
        id: ID.into(),
        name: ID.into(),
        display_name: "HTTP API".into(),
        description: "Any HTTP/REST API as a resource: start, stop, status and health endpoints, \
                      the state read by a JSON pointer and mapped by a table, typed commands \
                      declared in config."
            .into(),
        version: env!("CARGO_PKG_VERSION").into(),
        category: Category::Custom,
        capabilities: vec![Capability::Monitor, Capability::DryRun],
        resource_types: vec![ResourceTypeSpec {
            name: RESOURCE_TYPE.into(),
            description: "An API-managed thing, observed through its status endpoint.".into(),
            config: vec![
                endpoint_key("start", "Called to bring it up"),
                endpoint_key("stop", "Called to bring it down"),
                endpoint_key("status", "Read every `interval` for the state"),
                endpoint_key("health", "A 2xx answer is healthy"),
                ConfigKeySpec::optional(
                    "state_pointer",
                    ConfigKind::String,
                    "JSON pointer to the state in the status answer, e.g. /project/status",
                ),
                ConfigKeySpec::optional(
                    "state_map",
                    ConfigKind::Table,
                    "Provider value → running, starting, stopping, stopped, sleeping, failed or maintenance",
                ),
                ConfigKeySpec::optional(
                    "operation",
                    ConfigKind::Table,
                    "How a 202 (or an id at `id`) is followed: { status = \"/operations/{id}\", id, pointer = \"/status\", done = [..], failed = [..], reason, interval, timeout = \"10m\" }; start and stop wait for it",
                ),
                ConfigKeySpec::optional(
                    "commands",
                    ConfigKind::Array,
                    "Typed commands: [{ id, method, path, body, params = [{ name, kind, required, default, description, values, min, max }], description, confirm }]",
                ),
            ],
        }],
        auth_methods: vec![
            AuthMethod::Bearer,
            AuthMethod::ApiKey,
            AuthMethod::Basic,
            AuthMethod::CustomHeader,
            AuthMethod::None,
        ],
    }
}

impl Default for HttpApiProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpApiProvider {
    /// The provider with the default HTTP timeouts.
    pub fn new() -> Self {
        Self::with_http_config(HttpConfig::default())
    }

    /// The provider with `config`'s HTTP timeouts.
    pub fn with_http_config(config: HttpConfig) -> Self {
        Self {
            metadata: metadata(),
            clients: RestClients::new("the HTTP API", None, TokenNeed::Optional)
                .with_http_config(config),
        }
    }

    /// The retry policy of start, stop and commands (the observe loop has its own backoff).
    pub fn with_retry(self, retry: RetryPolicy) -> Self {
        Self {
            clients: self.clients.with_retry(retry),
            ..self
        }
    }

    /// Where and how `ctx`'s requests go; its problems are said as `resource`'s.
    fn target(&self, ctx: &InstanceContext, resource: &str) -> Result<Target, ProviderError> {
        let (auth, operation) =
            instance_parts(ctx).map_err(|problems| ProviderError::InvalidResource {
                resource: resource.to_owned(),
                problems,
            })?;
        Ok(Target {
            api: self.clients.api(ctx)?.with_auth(auth),
            operation,
        })
    }

    /// The commands `decl` declares, as typed specs (http-api commands are per resource).
    pub fn resource_commands(decl: &ResourceDecl) -> Result<Vec<CommandSpec>, ProviderError> {
        let spec = decl.parse_config(ApiSpec::parse)?;
        Ok(spec.commands.into_iter().map(|c| c.spec).collect())
    }

    /// Validates `params` against the declared command `id` (every problem at once) and runs
    /// it (see [`Provider::execute`]).
    pub async fn run_command(
        &self,
        instance: &InstanceContext,
        decl: &ResourceDecl,
        id: &str,
        params: &Map<String, Value>,
        dry_run: bool,
    ) -> Result<CommandResult, ProviderError> {
        let spec = decl.parse_config(ApiSpec::parse)?;
        let command = spec
            .command(id)
            .ok_or_else(|| ProviderError::unknown_command(ID, id))?
            .spec
            .clone();
        let params = validate(&command, params)?;
        self.execute(instance, decl, &command, params, dry_run)
            .await
    }

    /// The [`HttpApiResource`] for `decl` (the concrete type behind [`Provider::resource`]).
    pub fn api_resource(
        &self,
        instance: &InstanceContext,
        decl: &ResourceDecl,
    ) -> Result<HttpApiResource, ProviderError> {
        let spec = decl.parse_config(ApiSpec::parse)?;
        let target = self.target(instance, &decl.name)?;
        let (events, _) = broadcast::channel(256);
        Ok(HttpApiResource {
            inner: Arc::new(Inner {
                name: decl.name.clone(),
                spec,
                target,
                last: Mutex::new(None),
                logs: LogRing::new(LOG_LINES),
                events,
                live: Mutex::new(None),
                runs: AtomicU64::new(0),
            }),
        })
    }
}

impl Provider for HttpApiProvider {
    fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    /// Empty: http-api commands are declared per resource (see
    /// [`HttpApiProvider::resource_commands`]).
    fn commands(&self) -> &[CommandSpec] {
        &[]
    }

    /// The commands `decl` declares (none when its declaration does not parse).
    fn resource_commands(&self, decl: &ResourceDecl) -> Vec<CommandSpec> {
        HttpApiProvider::resource_commands(decl).unwrap_or_default()
    }

    fn validate_resource<'a>(
        &'a self,
        instance: &'a InstanceContext,
        decl: &'a ResourceDecl,
    ) -> BoxFuture<'a, Vec<ResourceProblem>> {
        Box::pin(async move {
            let mut problems = Vec::new();
            if let Some(spec) = self.metadata.resource_type(RESOURCE_TYPE) {
                // The resource's own string keys used in a template (`{project_id}`) are its.
                let used = template_keys(&decl.config);
                problems.extend(
                    check_config(spec, &decl.config, KINFRA_KEYS)
                        .into_iter()
                        .filter(|p| {
                            !p.key.as_ref().is_some_and(|k| {
                                used.contains(k) && decl.config.get(k).is_some_and(Value::is_string)
                            })
                        }),
                );
            }
            if let Err(found) = ApiSpec::parse(&decl.config) {
                for p in found {
                    if !problems.contains(&p) {
                        problems.push(p);
                    }
                }
            }
            if let Err(found) = instance_parts(instance) {
                problems.extend(found);
            }
            problems
        })
    }

    fn resource(
        &self,
        instance: &InstanceContext,
        decl: &ResourceDecl,
    ) -> Result<Box<dyn Resource>, ProviderError> {
        Ok(Box::new(self.api_resource(instance, decl)?))
    }

    /// The start endpoint, rendered (when the resource declares one).
    fn planned_start<'a>(
        &'a self,
        instance: &'a InstanceContext,
        decl: &'a ResourceDecl,
    ) -> BoxFuture<'a, Result<Option<Vec<PlannedRequest>>, ProviderError>> {
        Box::pin(async move {
            let spec = decl.parse_config(ApiSpec::parse)?;
            let Some(endpoint) = &spec.start else {
                return Ok(Some(Vec::new()));
            };
            let target = self.target(instance, &decl.name)?;
            let request =
                target
                    .request(endpoint, &spec.vars, None)
                    .map_err(|e| ProviderError::Command {
                        command: "start".into(),
                        reason: target.mask(&e.to_string()),
                    })?;
            Ok(Some(vec![request.planned()]))
        })
    }

    fn execute<'a>(
        &'a self,
        instance: &'a InstanceContext,
        resource: &'a ResourceDecl,
        command: &'a CommandSpec,
        params: ValidatedParams,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<CommandResult, ProviderError>> {
        Box::pin(async move {
            let spec = resource.parse_config(ApiSpec::parse)?;
            let declared = spec
                .command(&command.id)
                .ok_or_else(|| ProviderError::unknown_command(ID, &command.id))?;
            let target = self.target(instance, &resource.name)?;
            let mut secrets = target.api.secrets();
            secrets.extend(params.secrets());
            let values: Vec<&str> = secrets.iter().map(|s| s.expose()).collect();
            let failed = |reason: String| ProviderError::Command {
                command: command.id.clone(),
                reason: mask_text(&reason, &values),
            };
            let request = target
                .request(&declared.endpoint, &spec.vars, Some(&params))
                .map_err(|e| failed(e.to_string()))?;
            if dry_run {
                return Ok(CommandResult::planned(&[request.planned()], &secrets));
            }
            let response = target
                .api
                .send(&request)
                .await
                .map_err(|e| failed(e.to_string()))?;
            let mut result = CommandResult::ok(response.data());
            let settled = target
                .settle(
                    spec.operation.as_ref(),
                    &spec.vars,
                    &request,
                    &response,
                    &|_, _| {},
                )
                .await
                .map_err(failed)?;
            match settled {
                Settled::NoOperation => {
                    result.operation = response
                        .header("operation-id")
                        .or_else(|| response.header("location"))
                        .filter(|_| response.status == 202)
                        .map(str::to_owned);
                }
                Settled::Unfollowable(id) => {
                    result.warnings.push(
                        "the answer began an operation but names nowhere to poll it \
                         (set operation.status); not waited for"
                            .into(),
                    );
                    result.operation = id;
                }
                Settled::Done(op) => {
                    result.operation = Some(op.id);
                    result.operation_state = Some(op.state);
                }
            }
            Ok(result.mask(&secrets))
        })
    }
}

/// A live run: its exit (set once) and the observe loop's status.
struct Live {
    id: String,
    exit: watch::Sender<Option<ExitInfo>>,
    observed: watch::Receiver<ObservedStatus>,
    /// The observe loop (ends with the run; aborted when the resource is dropped).
    _task: Option<AbortOnDrop>,
}

struct Inner {
    name: String,
    spec: ApiSpec,
    target: Target,
    /// The last provider value and what it mapped to.
    last: Mutex<Option<(String, MappedState)>>,
    logs: LogRing,
    events: broadcast::Sender<OutputLine>,
    live: Mutex<Option<Live>>,
    runs: AtomicU64,
}

/// Waits for the run's exit; `None` when its sender is gone without one.
async fn wait_exit(exit: &mut watch::Receiver<Option<ExitInfo>>) -> Option<ExitInfo> {
    match exit.wait_for(Option::is_some).await {
        Ok(info) => *info,
        Err(_) => None,
    }
}

impl Inner {
    fn line(&self, stream: LogStream, text: String) {
        let line = OutputLine {
            stream,
            text: self.target.mask(&text),
        };
        self.logs.push(line.clone());
        let _ = self.events.send(line);
    }

    /// One GET of `status`: the provider's value.
    async fn fetch_state(&self, endpoint: &Endpoint) -> Result<String, HttpError> {
        let request = self.target.request(endpoint, &self.spec.vars, None)?;
        let response = self
            .target
            .api
            .send_once(&request)
            .await
            .map_err(|e| e.http)?;
        let answer: Value = response.json()?;
        self.spec
            .state_value(&answer)
            .ok_or_else(|| HttpError::Decode {
                url: response.url.clone(),
                reason: match &self.spec.state_pointer {
                    Some(p) => format!("no state (a string) at `{p}`"),
                    None => "the answer is not a state string".into(),
                },
            })
    }

    /// Maps `value` and records it: unknown values keep the last state with a warning line.
    fn record(&self, value: &str) -> Option<MappedState> {
        let mapped = self.spec.map_state(value);
        let mut last = lock(&self.last);
        let previous = last.as_ref().map(|(_, s)| *s);
        match mapped {
            Some(state) => {
                let changed = last.as_ref().is_none_or(|(v, s)| v != value || *s != state);
                *last = Some((value.to_owned(), state));
                drop(last);
                if changed {
                    self.line(
                        LogStream::System,
                        format!("provider state `{value}` → {}", state.as_str()),
                    );
                }
                Some(state)
            }
            None => {
                drop(last);
                let kept = previous.map(MappedState::as_str).unwrap_or("unknown");
                warn!(resource = %self.name, value, kept, "Unknown provider state; keeping the last state.");
                self.line(
                    LogStream::Stderr,
                    format!("warning: unknown provider state `{value}`; keeping {kept}"),
                );
                previous
            }
        }
    }

    async fn call(&self, what: &str, endpoint: &Endpoint) -> Result<(), ResourceError> {
        let request = self
            .target
            .request(endpoint, &self.spec.vars, None)
            .map_err(|e| ResourceError::op(what, self.target.mask(&e.to_string())))?;
        self.line(
            LogStream::System,
            format!("{what}: {} {}", request.method, request.redacted_url()),
        );
        let response = self
            .target
            .api
            .send(&request)
            .await
            .map_err(|e| ResourceError::op(what, e.text))?;
        let began = |id: &str, url: &Url| {
            self.line(
                LogStream::System,
                format!(
                    "{what}: operation {id} accepted; polling {}",
                    redact_url(url)
                ),
            );
        };
        let settled = self
            .target
            .settle(
                self.spec.operation.as_ref(),
                &self.spec.vars,
                &request,
                &response,
                &began,
            )
            .await;
        match settled {
            Ok(Settled::NoOperation) => Ok(()),
            Ok(Settled::Unfollowable(id)) => {
                self.line(
                    LogStream::Stderr,
                    format!(
                        "warning: {what}: the answer began operation {} but names nowhere to \
                         poll it (set operation.status); not waiting for it",
                        id.as_deref().unwrap_or("(no id)")
                    ),
                );
                Ok(())
            }
            Ok(Settled::Done(op)) => {
                self.line(
                    LogStream::System,
                    format!(
                        "{what}: operation {} ended `{}` after {} polls",
                        op.id, op.state, op.polls
                    ),
                );
                Ok(())
            }
            Err(reason) => {
                self.line(LogStream::Stderr, format!("{what}: {reason}"));
                Err(ResourceError::op(what, reason))
            }
        }
    }

    fn current_run(&self) -> Option<(String, watch::Receiver<Option<ExitInfo>>)> {
        let live = lock(&self.live);
        live.as_ref()
            .filter(|l| l.exit.borrow().is_none())
            .map(|l| (l.id.clone(), l.exit.subscribe()))
    }

    /// A [`Run`] following the live run's exit and output.
    fn run_handle(
        &self,
        id: String,
        mut exit: watch::Receiver<Option<ExitInfo>>,
        adopted: bool,
    ) -> Run {
        let (out_tx, out_rx) = mpsc::channel(256);
        let (exit_tx, exit_rx) = oneshot::channel();
        let mut events = self.events.subscribe();
        tokio::spawn(async move {
            let info = loop {
                tokio::select! {
                    info = wait_exit(&mut exit) => break info,
                    line = events.recv() => match line {
                        Ok(line) => { let _ = out_tx.send(line).await; }
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => {
                            break wait_exit(&mut exit).await;
                        }
                    },
                }
            };
            while let Ok(line) = events.try_recv() {
                let _ = out_tx.send(line).await;
            }
            drop(out_tx);
            if let Some(info) = info {
                let _ = exit_tx.send(info);
            }
        });
        Run {
            id,
            pid: None,
            adopted,
            output: out_rx,
            exit: exit_rx,
        }
    }
}

/// A resource of the `http-api` provider (see the module docs).
pub struct HttpApiResource {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for HttpApiResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpApiResource")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

impl Drop for HttpApiResource {
    fn drop(&mut self) {
        // The observe loop holds the resource's state: it must not outlive it.
        lock(&self.inner.live).take();
    }
}

impl HttpApiResource {
    /// The last kinfra state and the provider's value it came from.
    pub fn state(&self) -> Option<(String, MappedState)> {
        lock(&self.inner.last).clone()
    }

    /// The live run's observe status (`last_sync`, `provider_state`), when a run is live.
    pub fn observed(&self) -> Option<watch::Receiver<ObservedStatus>> {
        lock(&self.inner.live).as_ref().map(|l| l.observed.clone())
    }

    /// The parsed config.
    pub fn spec(&self) -> &ApiSpec {
        &self.inner.spec
    }
}

impl Resource for HttpApiResource {
    fn kind(&self) -> &'static str {
        "http-api"
    }

    fn name(&self) -> &str {
        &self.inner.name
    }

    fn start(&self) -> BoxFuture<'_, Result<Run, ResourceError>> {
        Box::pin(async move {
            let inner = &self.inner;
            if let Some((id, exit)) = inner.current_run() {
                return Ok(inner.run_handle(id, exit, true));
            }
            if let Some(endpoint) = &inner.spec.start {
                inner.call("start", endpoint).await?;
            }
            let n = inner.runs.fetch_add(1, Ordering::Relaxed) + 1;
            let id = format!("{}#{n}", inner.name);
            let (exit_tx, exit_rx) = watch::channel(None::<ExitInfo>);
            // Subscribe the run before the loop can publish anything.
            let run = inner.run_handle(id.clone(), exit_rx.clone(), false);
            let Some(status) = inner.spec.status.clone() else {
                // Nothing to observe: it runs until stopped.
                *lock(&inner.last) = Some(("".into(), MappedState::Running));
                let (_, observed) = watch::channel(ObservedStatus::default());
                *lock(&inner.live) = Some(Live {
                    id,
                    exit: exit_tx,
                    observed,
                    _task: None,
                });
                return Ok(run);
            };
            let stale_stopped = Arc::new(AtomicU32::new(0));
            let observe_fn = {
                let inner = inner.clone();
                let exit_tx = exit_tx.clone();
                move || {
                    let inner = inner.clone();
                    let exit_tx = exit_tx.clone();
                    let status = status.clone();
                    let stale_stopped = stale_stopped.clone();
                    Box::pin(async move {
                        let value = inner
                            .fetch_state(&status)
                            .await
                            .map_err(ObserveError::from)?;
                        let ended = match inner.record(&value) {
                            Some(MappedState::Failed) => Some(1),
                            Some(MappedState::Stopped) => {
                                // Right after a start the API may still say stopped.
                                let seen_live = stale_stopped.load(Ordering::Relaxed) == u32::MAX;
                                let stale = stale_stopped
                                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                                        Some(if n == u32::MAX { n } else { n + 1 })
                                    })
                                    .unwrap_or(0);
                                (seen_live || stale + 1 >= STALE_STOPPED_OBSERVES).then_some(0)
                            }
                            Some(_) => {
                                stale_stopped.store(u32::MAX, Ordering::Relaxed);
                                None
                            }
                            None => None,
                        };
                        if let Some(code) = ended {
                            exit_tx.send_if_modified(|e| {
                                if e.is_none() {
                                    *e = Some(ExitInfo {
                                        code: Some(code),
                                        signal: None,
                                    });
                                    true
                                } else {
                                    false
                                }
                            });
                        }
                        Ok(value)
                    })
                        as std::pin::Pin<
                            Box<
                                dyn std::future::Future<Output = Result<String, ObserveError>>
                                    + Send,
                            >,
                        >
                }
            };
            let mut stop_rx = exit_rx;
            let stop = async move {
                let _ = stop_rx.wait_for(Option::is_some).await;
            };
            let (observed, task) =
                observe::spawn(ObserveConfig::every(inner.spec.interval), observe_fn, stop);
            *lock(&inner.live) = Some(Live {
                id,
                exit: exit_tx,
                observed,
                _task: Some(AbortOnDrop(task)),
            });
            Ok(run)
        })
    }

    fn stop(&self, grace: Duration) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let called = match &inner.spec.stop {
                Some(endpoint) => inner.call("stop", endpoint).await,
                None => Ok(()),
            };
            let live = lock(&inner.live)
                .as_ref()
                .map(|l| (l.exit.clone(), l.exit.subscribe()));
            if let Some((exit_tx, mut exit_rx)) = live {
                if called.is_ok() && inner.spec.status.is_some() && inner.spec.stop.is_some() {
                    // The observe loop ends the run when the status says stopped.
                    let _ = tokio::time::timeout(grace, exit_rx.wait_for(Option::is_some)).await;
                }
                exit_tx.send_if_modified(|e| {
                    if e.is_none() {
                        *e = Some(ExitInfo {
                            code: Some(0),
                            signal: None,
                        });
                        true
                    } else {
                        false
                    }
                });
            }
            called
        })
    }

    fn status(&self) -> BoxFuture<'_, Result<Observed, ResourceError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let Some(endpoint) = &inner.spec.status else {
                let live = inner.current_run().is_some();
                return Ok(if live {
                    Observed::Running
                } else {
                    Observed::Idle
                });
            };
            match inner.fetch_state(endpoint).await {
                Ok(value) => Ok(inner
                    .record(&value)
                    .map(MappedState::observed)
                    .unwrap_or(Observed::Idle)),
                Err(error) => {
                    let last = lock(&inner.last).as_ref().map(|(_, s)| *s);
                    match (crate::retry::classify(&error), last) {
                        (crate::retry::Failure::RateLimited(_), Some(state)) => {
                            Ok(state.observed())
                        }
                        _ => Err(ResourceError::op(
                            "status",
                            inner.target.mask(&error.to_string()),
                        )),
                    }
                }
            }
        })
    }

    fn health(&self) -> BoxFuture<'_, Result<Health, ResourceError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let Some(endpoint) = &inner.spec.health else {
                return Ok(Health::Unknown);
            };
            let request = inner
                .target
                .request(endpoint, &inner.spec.vars, None)
                .map_err(|e| ResourceError::op("health", inner.target.mask(&e.to_string())))?;
            Ok(match inner.target.api.send_once(&request).await {
                Ok(_) => Health::Healthy,
                Err(error) => {
                    inner.line(LogStream::Stderr, format!("health check failed: {error}"));
                    Health::Unhealthy
                }
            })
        })
    }

    fn has_own_health(&self) -> bool {
        self.inner.spec.health.is_some()
    }

    fn connection(&self) -> Connection {
        let base = self.inner.target.api.base();
        let url = Url::parse(base).ok();
        Connection {
            host: url
                .as_ref()
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_default(),
            port: url.as_ref().and_then(Url::port_or_known_default),
            url: Some(Secret::new(base)),
            fields: BTreeMap::new(),
        }
    }

    fn logs(&self, tail: usize) -> BoxFuture<'_, Result<Vec<OutputLine>, ResourceError>> {
        Box::pin(async move { Ok(self.inner.logs.tail(tail)) })
    }

    /// From the live run's observe loop: the last poll's outcome (its error masked) and the
    /// provider's raw value (the last one recorded when the loop has none yet).
    fn sync(&self) -> Option<SyncFacts> {
        let observed = lock(&self.inner.live)
            .as_ref()
            .map(|l| l.observed.borrow().clone())?;
        let provider_state = observed.provider_state.or_else(|| {
            lock(&self.inner.last)
                .as_ref()
                .map(|(value, _)| value.clone())
                .filter(|v| !v.is_empty())
        });
        let last_sync = observed.last_sync.map(|s| LastSync {
            error: s.error.map(|e| self.inner.target.mask(&e)),
            ..s
        });
        (last_sync.is_some() || provider_state.is_some()).then_some(SyncFacts {
            last_sync,
            provider_state,
        })
    }

    fn remove(&self, _volumes: bool) -> BoxFuture<'_, Result<(), ResourceError>> {
        // Nothing was created by kinfra: the API owns the thing.
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(config: Value) -> ApiSpec {
        let Value::Object(map) = config else {
            panic!("not an object")
        };
        ApiSpec::parse(&map).expect("valid spec")
    }

    #[test]
    fn unknown_values_map_by_their_ing_or_not_at_all() {
        let s = spec(json!({ "state_map": { "ACTIVE": "running", "IDLE": "sleeping" } }));
        assert_eq!(s.map_state("ACTIVE"), Some(MappedState::Running));
        assert_eq!(s.map_state("idle"), Some(MappedState::Sleeping));
        assert_eq!(s.map_state("stopped"), Some(MappedState::Stopped));
        assert_eq!(s.map_state("PROVISIONING"), Some(MappedState::Starting));
        assert_eq!(s.map_state("SUSPENDING"), Some(MappedState::Stopping));
        assert_eq!(s.map_state("WEIRD"), None);
    }

    #[test]
    fn templates_fill_keys_and_typed_body_values() {
        let vars: BTreeMap<String, String> = [("id".to_owned(), "a b".to_owned())].into();
        let path = render("/p/{id}/x/{nope}", &|n| {
            vars.get(n).map(|v| encode_segment(v))
        });
        assert_eq!(path, "/p/a%20b/x/{nope}");
        let body = render_body(&json!({"n": "{n}", "t": "n={n}"}), &|n| {
            (n == "n").then(|| json!(3))
        });
        assert_eq!(body, json!({"n": 3, "t": "n=3"}));
    }
}
