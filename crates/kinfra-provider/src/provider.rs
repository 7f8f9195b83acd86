//! The [`Provider`] trait: what kinfra needs from a provider, built-in or plugin. It is
//! object-safe (`Arc<dyn Provider>` in the [`crate::registry`]); its futures are
//! [`BoxFuture`]s. A provider builds [`Resource`]s the supervisor drives like any other and
//! runs typed commands on them.

use crate::command::{CommandSpec, ParamErrors, ValidatedParams};
use crate::metadata::{ConfigKind, ProviderMetadata, ResourceTypeSpec};
use crate::result::CommandResult;
use kinfra_core::Secret;
use kinfra_core::resource::{BoxFuture, Resource, ResourceError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::time::Duration;

/// A configured provider instance (`[providers.NAME]`, one account), as a provider sees it.
#[derive(Debug, Clone, Default)]
pub struct InstanceContext {
    /// The instance's name (the key under `[providers]`).
    pub instance: String,
    /// Its token, when it has one (from `token` or `token_file`).
    pub token: Option<Secret>,
    /// Its `base_url` override.
    pub base_url: Option<String>,
    /// The whole `[providers.NAME]` table as JSON (secret keys included: never show it).
    pub config: Map<String, Value>,
}

impl InstanceContext {
    /// The secrets this instance holds, for masking.
    pub fn secrets(&self) -> Vec<&Secret> {
        self.token.iter().collect()
    }
}

/// A resource's declaration: its name and its `[resources.NAME]` table as JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceDecl {
    /// The resource's name.
    pub name: String,
    /// Its config table.
    #[serde(default)]
    pub config: Map<String, Value>,
}

impl ResourceDecl {
    /// Its table read by a provider's `parse`; the problems `parse` finds are a
    /// [`ProviderError::InvalidResource`] naming this resource.
    pub fn parse_config<T>(
        &self,
        parse: impl FnOnce(&Map<String, Value>) -> Result<T, Vec<ResourceProblem>>,
    ) -> Result<T, ProviderError> {
        parse(&self.config).map_err(|problems| ProviderError::InvalidResource {
            resource: self.name.clone(),
            problems,
        })
    }
}

/// One problem with a resource's declaration, naming the key when there is one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{}{message}", key.as_ref().map(|k| format!("`{k}`: ")).unwrap_or_default())]
pub struct ResourceProblem {
    /// The config key at fault.
    #[serde(default)]
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// kinfra's own keys of a `[resources.NAME]` table (not a provider's), let pass by
/// [`check_config`] beside a resource type's keys. The runtime hands a provider only
/// `interval` of them ([`crate::plugin::KINFRA_RESOURCE_KEYS`]); a table written out whole
/// (a test, a tool) may carry the rest.
pub const KINFRA_KEYS: &[&str] = &[
    "provider",
    "interval",
    "on_down",
    "depends_on",
    "restart",
    "health",
    "scale_to_zero",
    "confirm_delete",
    "stop_grace",
];

/// Checks a resource's config table against its type's keys: every unknown key (beside
/// `kinfra_keys`, kinfra's own such as `provider` or `interval`), missing required key and
/// value of the wrong kind is a problem. A provider's `validate_resource` can start here.
pub fn check_config(
    spec: &ResourceTypeSpec,
    config: &Map<String, Value>,
    kinfra_keys: &[&str],
) -> Vec<ResourceProblem> {
    let problem = |key: &str, message: String| ResourceProblem {
        key: Some(key.to_owned()),
        message,
    };
    let mut problems = Vec::new();
    for key in config.keys() {
        if !kinfra_keys.contains(&key.as_str()) && !spec.config.iter().any(|k| &k.name == key) {
            problems.push(problem(
                key,
                format!("unknown key for resource type `{}`", spec.name),
            ));
        }
    }
    for key in &spec.config {
        let Some(value) = config.get(&key.name) else {
            if key.required {
                problems.push(problem(&key.name, "missing (required)".into()));
            }
            continue;
        };
        let fits = match key.kind {
            ConfigKind::String | ConfigKind::Secret => value.is_string(),
            ConfigKind::Integer => value.is_i64() || value.is_u64(),
            ConfigKind::Number => value.is_number(),
            ConfigKind::Boolean => value.is_boolean(),
            ConfigKind::Table => value.is_object(),
            ConfigKind::Array => value.is_array(),
            ConfigKind::Duration => match value.as_str() {
                Some(text) => match kinfra_core::config::parse_duration(text) {
                    Ok(_) => true,
                    Err(reason) => {
                        problems.push(problem(&key.name, reason));
                        continue;
                    }
                },
                None => false,
            },
        };
        if !fits {
            problems.push(problem(
                &key.name,
                format!("expected {}", kind_text(key.kind)),
            ));
        }
    }
    problems
}

/// Adds `more` to `problems`, leaving out each problem on a key already named (by
/// `problems` or an earlier one of `more`): a provider's own parse of a table often finds
/// again, in its own words, what [`check_config`] found first.
pub fn merge_problems(
    problems: &mut Vec<ResourceProblem>,
    more: impl IntoIterator<Item = ResourceProblem>,
) {
    for p in more {
        if !problems.iter().any(|q| q.key == p.key) {
            problems.push(p);
        }
    }
}

/// Every problem with a resource's table, the start of most providers' `validate_resource`:
/// [`check_config`] against `metadata`'s resource type `resource_type` (beside `kinfra_keys`),
/// then what the provider's own `parse` of the table finds, merged by key
/// ([`merge_problems`]).
pub fn config_problems<T>(
    metadata: &ProviderMetadata,
    resource_type: &str,
    config: &Map<String, Value>,
    kinfra_keys: &[&str],
    parse: impl FnOnce(&Map<String, Value>) -> Result<T, Vec<ResourceProblem>>,
) -> Vec<ResourceProblem> {
    let mut problems = Vec::new();
    if let Some(spec) = metadata.resource_type(resource_type) {
        problems.extend(check_config(spec, config, kinfra_keys));
    }
    if let Err(found) = parse(config) {
        merge_problems(&mut problems, found);
    }
    problems
}

/// The duration at `key` of a config table (`"30s"`, `"1m30s"`): `None` when the key is
/// absent or its value is not a duration, which is then a problem pushed to `problems`.
pub fn config_duration(
    config: &Map<String, Value>,
    key: &str,
    problems: &mut Vec<ResourceProblem>,
) -> Option<Duration> {
    let problem = |message: String| ResourceProblem {
        key: Some(key.to_owned()),
        message,
    };
    match config.get(key)? {
        Value::String(text) => match kinfra_core::config::parse_duration(text) {
            Ok(d) => Some(d),
            Err(reason) => {
                problems.push(problem(reason));
                None
            }
        },
        _ => {
            problems.push(problem(format!(
                "expected {}",
                kind_text(ConfigKind::Duration)
            )));
            None
        }
    }
}

/// The duration at `key` of a config table, more than zero; `default` when the key is absent,
/// or when its value is not such a duration, which is then a problem pushed to `problems`.
pub fn config_duration_or(
    config: &Map<String, Value>,
    key: &str,
    default: Duration,
    problems: &mut Vec<ResourceProblem>,
) -> Duration {
    match config_duration(config, key, problems) {
        Some(d) if d.is_zero() => {
            problems.push(ResourceProblem {
                key: Some(key.to_owned()),
                message: "must be more than zero".into(),
            });
            default
        }
        Some(d) => d,
        None => default,
    }
}

fn kind_text(kind: ConfigKind) -> &'static str {
    match kind {
        ConfigKind::String => "a string",
        ConfigKind::Secret => "a string (secret)",
        ConfigKind::Integer => "an integer",
        ConfigKind::Number => "a number",
        ConfigKind::Boolean => "true or false",
        ConfigKind::Duration => "a duration such as \"30s\"",
        ConfigKind::Table => "a table",
        ConfigKind::Array => "an array",
    }
}

/// Why a provider operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The resource's declaration cannot work.
    #[error("resource `{resource}`: {}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    InvalidResource {
        /// The resource.
        resource: String,
        /// What is wrong.
        problems: Vec<ResourceProblem>,
    },
    /// The provider has no such command.
    #[error("provider `{provider}` has no command `{command}`")]
    UnknownCommand {
        /// The provider.
        provider: String,
        /// The command asked for.
        command: String,
    },
    /// The command's parameters are invalid.
    #[error(transparent)]
    Params(#[from] ParamErrors),
    /// The command does not support a dry-run.
    #[error("command `{0}` does not support a dry-run")]
    NoDryRun(String),
    /// A plugin failed.
    #[error(transparent)]
    Plugin(#[from] crate::plugin::PluginError),
    /// The operation on the resource failed.
    #[error(transparent)]
    Resource(#[from] ResourceError),
    /// The command ran and failed.
    #[error("command `{command}` failed: {reason}")]
    Command {
        /// The command.
        command: String,
        /// What went wrong (secrets masked).
        reason: String,
    },
}

impl ProviderError {
    /// [`ProviderError::UnknownCommand`]: the provider `provider` has no command `command`.
    pub fn unknown_command(provider: &str, command: &str) -> Self {
        Self::UnknownCommand {
            provider: provider.to_owned(),
            command: command.to_owned(),
        }
    }
}

/// A provider: metadata, commands, resource validation, resources, command execution.
pub trait Provider: Send + Sync + 'static {
    /// What it is.
    fn metadata(&self) -> &ProviderMetadata;

    /// The commands it offers.
    fn commands(&self) -> &[CommandSpec];

    /// The keys of its instances (`[providers.NAME]`) that name files (`kubeconfig`): kinfra
    /// resolves a relative one against the config file's directory before the provider sees
    /// it, as it does for `token_file`. None by default.
    fn instance_path_keys(&self) -> &[&'static str] {
        &[]
    }

    /// The command `id`, when it has one.
    fn command(&self, id: &str) -> Option<&CommandSpec> {
        self.commands().iter().find(|c| c.id == id)
    }

    /// The commands a resource declared as `decl` offers: the provider's own by default; a
    /// provider whose commands are declared per resource (http-api) adds them.
    fn resource_commands(&self, decl: &ResourceDecl) -> Vec<CommandSpec> {
        let _ = decl;
        self.commands().to_vec()
    }

    /// The requests starting (resuming) the resource of `decl` would send, for `kinfra plan`:
    /// rendered, never sent (reads needed to render them, such as looking an id up by name,
    /// may be made). `Ok(None)` (the default): the provider does not say; plan then falls back
    /// to a `start` command's dry-run, or a note.
    fn planned_start<'a>(
        &'a self,
        instance: &'a InstanceContext,
        decl: &'a ResourceDecl,
    ) -> BoxFuture<'a, Result<Option<Vec<crate::result::PlannedRequest>>, ProviderError>> {
        let _ = (instance, decl);
        Box::pin(async { Ok(None) })
    }

    /// Every problem with a resource's declaration (empty when it is fine).
    fn validate_resource<'a>(
        &'a self,
        instance: &'a InstanceContext,
        decl: &'a ResourceDecl,
    ) -> BoxFuture<'a, Vec<ResourceProblem>>;

    /// The [`Resource`] the supervisor drives for `decl`.
    fn resource(
        &self,
        instance: &InstanceContext,
        decl: &ResourceDecl,
    ) -> Result<Box<dyn Resource>, ProviderError>;

    /// Runs `command` on `resource` with checked `params`. With `dry_run` it sends nothing and
    /// returns the requests it would send, masked.
    fn execute<'a>(
        &'a self,
        instance: &'a InstanceContext,
        resource: &'a ResourceDecl,
        command: &'a CommandSpec,
        params: ValidatedParams,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<CommandResult, ProviderError>>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::ConfigKeySpec;
    use serde_json::json;

    fn key(name: &str, kind: ConfigKind, required: bool) -> ConfigKeySpec {
        if required {
            ConfigKeySpec::required(name, kind, "")
        } else {
            ConfigKeySpec::optional(name, kind, "")
        }
    }

    #[test]
    fn config_is_checked_against_the_resource_type() {
        let spec = ResourceTypeSpec {
            name: "endpoint".into(),
            description: String::new(),
            config: vec![
                key("project_id", ConfigKind::String, true),
                key("endpoint_id", ConfigKind::String, true),
                key("min_cu", ConfigKind::Number, false),
                key("suspend_after", ConfigKind::Duration, false),
                key("autoscale", ConfigKind::Boolean, false),
            ],
        };
        let config = json!({
            "provider": "neon",
            "project_id": 12,
            "min_cu": 0.25,
            "suspend_after": "5 parsecs",
            "autoscale": "yes",
            "colour": "red",
        });
        let Value::Object(config) = config else {
            panic!("not an object");
        };
        let problems: Vec<String> = check_config(&spec, &config, &["provider", "interval"])
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(
            problems,
            [
                "`colour`: unknown key for resource type `endpoint`",
                "`project_id`: expected a string",
                "`endpoint_id`: missing (required)",
                "`suspend_after`: invalid duration `5 parsecs`: unknown unit `parsecs` (use ms, s, m, h or d)",
                "`autoscale`: expected true or false",
            ]
        );
    }

    fn table(value: Value) -> Map<String, Value> {
        let Value::Object(map) = value else {
            panic!("not an object");
        };
        map
    }

    #[test]
    fn a_parse_adds_only_problems_on_keys_not_named_yet() {
        let metadata = ProviderMetadata {
            id: "p".into(),
            name: "p".into(),
            display_name: "P".into(),
            description: String::new(),
            version: "0".into(),
            category: crate::metadata::Category::Custom,
            capabilities: Vec::new(),
            resource_types: vec![ResourceTypeSpec {
                name: "thing".into(),
                description: String::new(),
                config: vec![
                    key("id", ConfigKind::String, true),
                    key("size", ConfigKind::Integer, false),
                ],
            }],
            auth_methods: Vec::new(),
        };
        let config = table(json!({ "id": 7, "size": 3 }));
        let problems: Vec<String> =
            config_problems(&metadata, "thing", &config, &["interval"], |_| {
                Err::<(), _>(vec![
                    ResourceProblem::at("id", "not an id"),
                    ResourceProblem::at("size", "too small"),
                    ResourceProblem::at("size", "still too small"),
                ])
            })
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(problems, ["`id`: expected a string", "`size`: too small"]);
    }

    #[test]
    fn durations_are_read_with_every_problem_named() {
        let config = table(json!({
            "interval": "10s",
            "zero": "0s",
            "bad": "5 parsecs",
            "number": 5,
        }));
        let mut problems = Vec::new();
        let default = Duration::from_secs(30);
        assert_eq!(
            config_duration_or(&config, "interval", default, &mut problems),
            Duration::from_secs(10)
        );
        assert_eq!(
            config_duration_or(&config, "absent", default, &mut problems),
            default
        );
        assert_eq!(
            config_duration_or(&config, "zero", default, &mut problems),
            default
        );
        assert_eq!(
            config_duration(&config, "zero", &mut problems),
            Some(Duration::ZERO)
        );
        assert_eq!(config_duration(&config, "bad", &mut problems), None);
        assert_eq!(config_duration(&config, "number", &mut problems), None);
        let problems: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            problems,
            [
                "`zero`: must be more than zero",
                "`bad`: invalid duration `5 parsecs`: unknown unit `parsecs` (use ms, s, m, h or d)",
                "`number`: expected a duration such as \"30s\"",
            ]
        );
    }
}
